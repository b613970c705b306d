"""Coverage-guided fuzzing of the readers of untrusted files with atheris (pip install atheris):

    python tests/fuzz/fuzz.py load -max_total_time=60 tests/fuzz/corpus/load
    python tests/fuzz/fuzz.py idx|csv|npz ...

The first argument names the target (targets.py); the rest go to libFuzzer. New inputs that
reach new code are added to the corpus folder given; a finding stops the run with a non-zero
exit and writes the input that caused it (crash-*) to the current folder. CI runs each target
for a bounded time (.ci/run).
"""
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
with atheris.instrument_imports():
    import targets


def main():
    name = sys.argv.pop(1)
    target = targets.TARGETS[name]
    atheris.Setup(sys.argv, lambda data: target(bytes(data)))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
