"""Fixtures and helpers shared by every test; the tests are grouped in folders by the layer they
test (core, model, io, estimators, datasets, tools), and only tests/estimators needs
scikit-learn.

``isa``: every test that takes it runs once per ISA path: the one named by FASTMLP_ISA if that is
set (CI jobs pinned to one path), else every path this CPU supports, so one local run covers
generic, AVX2 and AVX-512. The fixture switches the active path and restores the previous one.

Helpers (``from conftest import ...``): f32 / f64 conversions, randn, THREAD_COUNTS,
with_threads and bitwise_across_threads for the determinism guarantees (fastmlp.h rule 4),
rewrite_meta for tampered model files.
"""
import json
import os
import struct
import zlib

import numpy as np
import pytest

import fastmlp
from fastmlp import core
from fastmlp.testing import assert_bitwise_equal

# Thread counts the determinism tests compare: 1 against an even, an odd and an oversubscribed
# count (more threads than this machine's cores on any CI runner).
THREAD_COUNTS = (1, 2, 3, 7)


def f32(x):
    return np.asarray(x, dtype=np.float32)


def f64(x):
    return np.asarray(x, dtype=np.float64)


def randn(rng, *shape):
    """float32 standard normal values of the given shape."""
    return rng.standard_normal(shape).astype(np.float32)


def with_threads(n, fn):
    """fn() with fastmlp's thread count set to n, then the default policy again."""
    fastmlp.set_num_threads(n)
    try:
        return fn()
    finally:
        fastmlp.set_num_threads(None)


def bitwise_across_threads(fn, counts=THREAD_COUNTS):
    """Run fn (returning a sequence of arrays) with each thread count; assert every result is
    bitwise the one of counts[0], and return that one."""
    results = {nt: with_threads(nt, fn) for nt in counts}
    first = results[counts[0]]
    for nt in counts[1:]:
        assert len(results[nt]) == len(first)
        for i, (x, y) in enumerate(zip(results[nt], first)):
            assert_bitwise_equal(np.asarray(x), np.asarray(y),
                                 name=f"{nt} threads vs {counts[0]}, output {i}")
    return first


def rewrite_meta(raw, edit):
    """The bytes of a model file with its fastmlp metadata document edited by edit(dict)."""
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    doc = json.loads(header["__metadata__"]["fastmlp"])
    edit(doc)
    header["__metadata__"]["fastmlp"] = json.dumps(doc)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + raw[8 + n:]


def _isas_under_test():
    pinned = os.environ.get("FASTMLP_ISA", "").strip().lower()
    if pinned:
        return [pinned]
    return list(core.supported_isas())


ISAS_UNDER_TEST = _isas_under_test()


def pytest_report_header(config):
    return [
        f"fastmlp: {fastmlp.__file__}",
        f"fastmlp ISA at import: {fastmlp.info()['isa']}; supported: "
        f"{', '.join(core.supported_isas())}; under test: {', '.join(ISAS_UNDER_TEST)}",
    ]


@pytest.fixture(params=ISAS_UNDER_TEST)
def isa(request):
    """Switch every kernel to one ISA path for the test; restore the previous path after it."""
    previous = core.get_isa()
    core.set_isa(request.param)
    try:
        yield request.param
    finally:
        core.set_isa(previous)


@pytest.fixture(autouse=True)
def _restore_thread_policy():
    """A test that changes the thread count cannot leak it into the next one."""
    yield
    fastmlp.set_num_threads(None)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id, so each test (and parameter) has its own stream
    and a failure reproduces exactly."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def pytest_collection_modifyitems(items):
    """A test module's DESELECTED (test id -> reason; tests/estimators/test_sklearn_suite.py)
    marks those tests as strict xfails: one that starts passing shows the list is out of date."""
    for item in items:
        deselected = getattr(getattr(item, "module", None), "DESELECTED", None)
        if not deselected:
            continue
        reason = deselected.get(item.name) or deselected.get(getattr(item, "originalname", ""))
        if reason:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
