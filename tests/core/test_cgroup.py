"""The core count honours cgroup CPU quotas (fastmlp.core.machine.cgroup_cpu_limit), read from
a fake cgroup tree: v2 cpu.max, v1 cfs_quota_us / cfs_period_us, no quota, unreadable files;
and info()["openmp"] names the runtime fastmlp's own core calls."""
import os

import pytest

import fastmlp
from fastmlp.core import machine


def _tree(tmp_path, self_cgroup, files):
    (tmp_path / "self").write_text(self_cgroup)
    for rel, text in files.items():
        p = tmp_path / "fs" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return dict(root=str(tmp_path / "fs"), self_cgroup=str(tmp_path / "self"))


@pytest.mark.parametrize("self_cgroup, files, expected", [
    ("0::/job\n", {"job/cpu.max": "200000 100000\n"}, 2),            # v2: 2 CPUs
    ("0::/job\n", {"job/cpu.max": "150000 100000\n"}, 2),            # 1.5 CPUs: round up
    ("0::/job\n", {"job/cpu.max": "50000 100000\n"}, 1),             # half a CPU: at least 1
    ("0::/job\n", {"job/cpu.max": "max 100000\n"}, None),            # v2: no quota
    ("0::/\n", {"cpu.max": "300000 100000\n"}, 3),                   # v2 at the root
    ("4:cpu,cpuacct:/docker/abc\n", {                                 # v1
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "400000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"}, 4),
    ("4:cpu,cpuacct:/docker/abc\n", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"}, None),
    ("0::/job\n", {"job/cpu.max": "garbage\n"}, None),               # unreadable: no limit
    ("0::/job\n", {}, None),                                          # no controller files
], ids=["v2", "v2 fraction", "v2 below one", "v2 max", "v2 root", "v1", "v1 none", "garbage",
        "missing"])
def test_cgroup_quota(tmp_path, self_cgroup, files, expected):
    assert machine.cgroup_cpu_limit(**_tree(tmp_path, self_cgroup, files)) == expected


def test_physical_cores_is_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(machine, "cgroup_cpu_limit", lambda: 1)
    assert machine.physical_cores() == 1
    monkeypatch.setattr(machine, "cgroup_cpu_limit", lambda: None)
    assert machine.physical_cores() == machine._topology_cores() >= 1


def test_info_names_fastmlps_own_openmp_runtime():
    path = fastmlp.core._native.openmp_library()
    assert path and os.path.exists(path)
    omp = fastmlp.info()["openmp"]
    assert omp["library"] == os.path.basename(os.path.realpath(path))
    assert "omp" in omp["library"]
