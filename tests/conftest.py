"""Shared fixtures of the kernel tests.

``isa``: every test that takes it runs once per ISA path: the one named by FASTMLP_ISA if that is
set (CI jobs pinned to one path), else every path this CPU supports, so one local run covers
generic, AVX2 and AVX-512. The fixture switches the active path and restores the previous one.
"""
import os

import numpy as np
import pytest

import fastmlp
from fastmlp import _kernels


def _isas_under_test():
    pinned = os.environ.get("FASTMLP_ISA", "").strip().lower()
    if pinned:
        return [pinned]
    return list(_kernels.supported_isas())


ISAS_UNDER_TEST = _isas_under_test()


def pytest_report_header(config):
    return [
        f"fastmlp: {fastmlp.__file__}",
        f"fastmlp ISA at import: {fastmlp.info()['isa']}; supported: "
        f"{', '.join(_kernels.supported_isas())}; under test: {', '.join(ISAS_UNDER_TEST)}",
    ]


@pytest.fixture(params=ISAS_UNDER_TEST)
def isa(request):
    """Switch every kernel to one ISA path for the test; restore the previous path after it."""
    previous = _kernels.get_isa()
    _kernels.set_isa(request.param)
    try:
        yield request.param
    finally:
        _kernels.set_isa(previous)


@pytest.fixture(autouse=True)
def _restore_thread_policy():
    """A test that changes the thread count cannot leak it into the next one."""
    yield
    fastmlp.set_num_threads(None)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id, so each test (and parameter) has its own stream
    and a failure reproduces exactly."""
    import zlib

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
