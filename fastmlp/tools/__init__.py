"""fastmlp.tools: what people run daily on top of the library.

    cli        the `fastmlp` command (info, train, bench)
    profiler   fastmlp.profile: per-kernel time, FLOPs, bytes and % of the measured peak
    bench      the measurements behind `fastmlp info` / `fastmlp bench` and benchmarks/

The top layer: it may import every other one; nothing but the facade imports it.
"""
