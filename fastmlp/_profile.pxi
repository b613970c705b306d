# Profiling bindings (included by _kernels.pyx): the C side keeps the table (csrc/dispatch.c);
# fastmlp/profiler.py turns it into a report.

cdef extern from "fastmlp.h" nogil:
    ctypedef struct fm_prof_entry:
        int kernel
        int flags
        ptrdiff_t m, n, k
        long calls
        double seconds, flops, bytes
    int fm_profile_start()
    int fm_profile_stop(fm_prof_entry *out, int capacity)
    const char *fm_kernel_name(int kernel)

cdef enum:
    _PROF_CAPACITY = 1024


def _profile_start():
    if fm_profile_start() != FM_OK:
        raise RuntimeError("a fastmlp.profile() is already active; profiles do not nest")


def _profile_stop():
    """Stop profiling; return one dict per (kernel, shape, flags) seen."""
    cdef fm_prof_entry buf[_PROF_CAPACITY]
    cdef int n = fm_profile_stop(buf, _PROF_CAPACITY)
    return [dict(kernel=fm_kernel_name(buf[i].kernel).decode(), flags=buf[i].flags,
                 m=buf[i].m, n=buf[i].n, k=buf[i].k, calls=buf[i].calls,
                 seconds=buf[i].seconds, flops=buf[i].flops, bytes=buf[i].bytes)
            for i in range(n)]
