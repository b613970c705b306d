# Profiling bindings (included by _native.pyx): the C side keeps the table (csrc/dispatch.c);
# fastmlp/tools/profiler.py turns it into a report.

cdef enum:
    _PROF_CAPACITY = 1024


def _profile_start():
    if fm_profile_start() != FM_OK:
        raise RuntimeError("a fastmlp.profile() is already active; profiles do not nest")


# The variant bits of a profile entry, by name.
PROFILE_FLAGS = {"trans_a": FM_PROF_TRANS_A, "trans_b": FM_PROF_TRANS_B, "bias": FM_PROF_BIAS,
                 "momentum": FM_PROF_MOMENTUM, "nesterov": FM_PROF_NESTEROV,
                 "weight_decay": FM_PROF_WEIGHT_DECAY, "training": FM_PROF_TRAINING,
                 "update": FM_PROF_UPDATE}


def _profile_stop():
    """Stop profiling; return one dict per (kernel, variant, shape) seen: kernel, act, grad_act
    and path by name (None where they do not apply), flags as a tuple of PROFILE_FLAGS names."""
    cdef fm_prof_entry buf[_PROF_CAPACITY]
    cdef int n = fm_profile_stop(buf, _PROF_CAPACITY)
    cdef int i
    cdef fm_prof_entry *e
    rows = []
    for i in range(n):
        e = &buf[i]
        rows.append(dict(
            kernel=KERNELS[e.kernel],
            act=ACTIVATIONS[e.act] if e.act != FM_ACT_IDENTITY else None,
            grad_act=ACTIVATIONS[e.grad_act] if e.grad_act != FM_ACT_IDENTITY else None,
            path=GEMM_PATHS[e.path] if e.path >= 0 else None,
            flags=tuple(name for name, bit in PROFILE_FLAGS.items() if e.flags & bit),
            m=e.m, n=e.n, k=e.k, calls=e.calls, seconds=e.seconds, flops=e.flops,
            bytes=e.bytes))
    return rows
