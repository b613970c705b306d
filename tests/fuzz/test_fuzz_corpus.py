"""The fuzz corpus replayed: every input the fuzzer kept (tests/fuzz/corpus/<target>/) is fed to
its reader again, which must accept it or refuse it with its documented error (targets.py).
A finding the fuzzer once made stays fixed this way: its input joins the corpus."""
import os

import pytest

from targets import CORPUS, TARGETS


def _inputs():
    for name in sorted(TARGETS):
        folder = os.path.join(CORPUS, name)
        for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            yield name, f


INPUTS = list(_inputs())


def test_the_corpus_has_seeds_for_every_target():
    assert {name for name, _ in INPUTS} == set(TARGETS)


@pytest.mark.parametrize("target,name", INPUTS, ids=[f"{t}/{n}" for t, n in INPUTS])
def test_corpus_input(target, name):
    with open(os.path.join(CORPUS, target, name), "rb") as f:
        TARGETS[target](f.read())
