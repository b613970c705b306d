"""`python -m fastmlp`: the fastmlp command (fastmlp.tools.cli)."""
from fastmlp.tools.cli import main

main()
