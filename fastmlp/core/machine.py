"""The machine the core runs on: thread-count policy, import-time configuration from the
environment, and info().

Default threads = physical cores (not logical: two threads on one core's hyperthreads slow a
compute-bound kernel down), lowered by OMP_NUM_THREADS or threadpoolctl.threadpool_limits, which
both act through OpenMP's per-thread limit. An explicit OMP_NUM_THREADS is obeyed even above the
core count: the user asked for it.
"""
import os
import platform

from threadpoolctl import threadpool_info

from .._version import __version__
from . import _native


def cgroup_cpu_limit(root="/sys/fs/cgroup", self_cgroup="/proc/self/cgroup"):
    """The CPUs this process's cgroup quota allows (quota / period, rounded up), or None when
    there is no quota: cgroup v2 `cpu.max` ("max 100000" or "200000 100000"), else cgroup v1
    `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1: none). A container limited to 2 CPUs on a
    64-core host then runs 2 threads, not 32. root, self_cgroup: for tests (a fake tree)."""
    try:
        with open(self_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    paths = {}
    for line in lines:                  # "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1)
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path
    candidates = []
    if "" in paths:
        candidates.append(("v2", os.path.join(root, paths[""].lstrip("/"))))
    if "cpu" in paths:
        for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            candidates.append(("v1", os.path.join(root, sub, paths["cpu"].lstrip("/"))))
    candidates += [("v2", root), ("v1", os.path.join(root, "cpu"))]
    for kind, directory in candidates:
        try:
            if kind == "v2":
                with open(os.path.join(directory, "cpu.max")) as f:
                    quota, _, period = f.read().strip().partition(" ")
                if quota == "max":
                    return None
                quota, period = int(quota), int(period or 100000)
            else:
                with open(os.path.join(directory, "cpu.cfs_quota_us")) as f:
                    quota = int(f.read().strip())
                with open(os.path.join(directory, "cpu.cfs_period_us")) as f:
                    period = int(f.read().strip())
                if quota < 0:
                    return None
        except (OSError, ValueError):
            continue
        if quota > 0 and period > 0:
            return max(1, -(-quota // period))
    return None


def physical_cores():
    """Physical cores this process may run on (Linux topology; os.cpu_count() elsewhere),
    at most its cgroup CPU quota (cgroup_cpu_limit)."""
    limit = cgroup_cpu_limit()
    cores = _topology_cores()
    return min(cores, limit) if limit else cores


def _topology_cores():
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "physical_package_id") as f:
                pkg = f.read().strip()
            with open(base + "core_id") as f:
                core = f.read().strip()
        except OSError:
            return len(cpus) or 1
        cores.add((pkg, core))
    return len(cores) or 1


def configure(kernels=_native):
    """Apply FASTMLP_ISA, FASTMLP_GEMM_{KC,MC,NC} and the thread cap. Called once, when
    fastmlp.core is imported."""
    isa = os.environ.get("FASTMLP_ISA", "").strip().lower()
    supported = kernels.supported_isas()
    if isa:
        if isa not in kernels.ISAS:
            raise ImportError(f"FASTMLP_ISA={isa!r} is not an ISA path; expected one of "
                              f"{', '.join(kernels.ISAS)}")
        if isa not in supported:
            raise ImportError(f"FASTMLP_ISA={isa!r}: this CPU does not support it "
                              f"(supported: {', '.join(supported)})")
    kernels.set_isa(isa or supported[-1])

    blocks = {}
    for key in ("kc", "mc", "nc"):
        value = os.environ.get(f"FASTMLP_GEMM_{key.upper()}", "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ImportError(f"FASTMLP_GEMM_{key.upper()}={value!r} must be a positive integer")
            blocks[key] = int(value)
    if blocks:
        for name in kernels.supported_isas():
            current = kernels.gemm_blocks(name)
            current.update(blocks)
            kernels.set_gemm_blocks(name, current["kc"], current["mc"], current["nc"])

    omp_env = os.environ.get("OMP_NUM_THREADS", "").strip()
    kernels._configure_threads(0 if omp_env else physical_cores())


def share_cores(n_processes):
    """n_processes processes of one job share this machine (MPI ranks on one node): the default
    thread count becomes physical_cores() // n_processes (at least 1), so that they do not
    oversubscribe the cores (each rank's OpenMP team would otherwise take every core, and a
    team waiting for a descheduled thread runs many times slower). OMP_NUM_THREADS, when set,
    is obeyed as it is; set_num_threads and n_threads still override."""
    if not os.environ.get("OMP_NUM_THREADS", "").strip():
        _native._configure_threads(max(1, physical_cores() // max(1, int(n_processes))))


def cpu_model():
    """The CPU's marketing name (Linux /proc/cpuinfo), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_id():
    """Vendor, family and model as lscpu prints them ("AuthenticAMD family 25 model 1": Zen 3),
    from /proc/cpuinfo; None elsewhere. The model name alone does not tell Zen 3, 4 and 5 apart."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("vendor_id", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:
                    break
    except OSError:
        return None
    if len(fields) < 3:
        return None
    return f"{fields['vendor_id']} family {fields['cpu family']} model {fields['model']}"


def openmp_runtime():
    """fastmlp's own OpenMP runtime (library, version, internal_api): the library that
    provides the OpenMP entry point fastmlp's compiled core calls (found with dladdr), not
    whichever OpenMP another package loaded first (PyTorch and scikit-learn bring their own);
    its version from threadpoolctl when it lists that library. None if there is none."""
    path = _native.openmp_library()
    if not path:
        return None
    real = os.path.realpath(path)
    version, api = None, "openmp"
    for i in threadpool_info():
        if i.get("user_api") == "openmp" and os.path.realpath(i["filepath"]) == real:
            version, api = i.get("version"), i.get("internal_api", api)
    return dict(library=os.path.basename(real), version=version, internal_api=api)


def info():
    """What fastmlp runs with: version, ISA in use and supported, threads, CPU model and id
    (vendor, family, model), OpenMP runtime, GEMM block sizes."""
    return {
        "version": __version__,
        "isa": _native.get_isa(),
        "supported_isas": list(_native.supported_isas()),
        "num_threads": _native.get_num_threads(),
        "physical_cores": physical_cores(),
        "cpu": cpu_model(),
        "cpu_id": cpu_id(),
        "openmp": openmp_runtime(),
        "gemm_blocks": _native.gemm_blocks(),
    }
