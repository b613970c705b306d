"""Thread-count policy and import-time configuration from the environment.

Default threads = physical cores (not logical: two threads on one core's hyperthreads slow a
compute-bound kernel down), lowered by OMP_NUM_THREADS or threadpoolctl.threadpool_limits, which
both act through OpenMP's per-thread limit. An explicit OMP_NUM_THREADS is obeyed even above the
core count: the user asked for it.
"""
import os
import platform


def physical_cores():
    """Physical cores this process may run on (Linux topology; os.cpu_count() elsewhere)."""
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


def configure(kernels):
    """Apply FASTMLP_ISA, FASTMLP_GEMM_{KC,MC,NC} and the thread cap. Called once at import."""
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
        for name in kernels.ISAS:
            current = kernels.gemm_blocks(name)
            current.update(blocks)
            kernels.set_gemm_blocks(name, current["kc"], current["mc"], current["nc"])

    omp_env = os.environ.get("OMP_NUM_THREADS", "").strip()
    kernels._configure_threads(0 if omp_env else physical_cores())


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
