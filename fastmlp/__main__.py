"""`python -m fastmlp`: the fastmlp command (fastmlp.cli)."""
from fastmlp.cli import main

main()
