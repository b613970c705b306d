/* update_rate.c: how fast the Adam pass runs on one core, from sizes that fit in L1 to the MLP's
 * 535,818 parameters, against the rate of the vector square root and division it needs (one of
 * each a vector: m / (sqrt(v) + eps)). Prints nanoseconds per vector of the active ISA; times the
 * clock (about peak GFLOP/s / 32 on Zen 4) give cycles. The C core only, no Python.
 *
 *   gcc -O3 -fopenmp -fno-math-errno -ffp-contract=off -std=gnu11 -Icsrc
 *       benchmarks/c/update_rate.c csrc/dispatch.c csrc/pool.c csrc/isa_generic.c
 *       csrc/isa_avx2.c csrc/isa_avx512.c -lm -o /tmp/update_rate      (one line, x86-64)
 *   /tmp/update_rate [generic | avx2 | avx512 (default)] [threads]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fastmlp.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#if defined(__x86_64__)
#include <immintrin.h>
/* 8 independent sqrt -> add -> div chains of 512-bit vectors: the divider's throughput. */
__attribute__((target("avx512f"))) static double divider_ns_per_vector(void)
{
    __m512 a[8], eps = _mm512_set1_ps(1e-8f), one = _mm512_set1_ps(1.0000001f);
    for (int i = 0; i < 8; i++) a[i] = _mm512_set1_ps(1.0f + (float)i);
    long reps = 5000000;
    double t0 = now();
    for (long r = 0; r < reps; r++)
        for (int i = 0; i < 8; i++) a[i] = _mm512_div_ps(one, _mm512_add_ps(_mm512_sqrt_ps(a[i]), eps));
    double t = now() - t0;
    float sink = 0;
    for (int i = 0; i < 8; i++) sink += _mm512_reduce_add_ps(a[i]);
    if (sink == -1.0f) printf("!");
    return t / (double)reps / 8 * 1e9;
}
#endif

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : "avx512";
    int isa = 0, threads = argc > 2 ? atoi(argv[2]) : 1;
    while (isa < FM_ISA_COUNT && strcmp(fm_isa_name(isa), name) != 0) isa++;
    if (fm_set_isa(isa) != FM_OK) { /* FM_ISA_COUNT: no such name */
        fprintf(stderr, "isa %s not available on this CPU or not known\n", name);
        return 1;
    }
    int vlen = isa == FM_ISA_AVX512 ? 16 : isa == FM_ISA_AVX2 ? 8 : 4;
#if defined(__x86_64__)
    if (fm_cpu_supports(FM_ISA_AVX512))
        printf("512-bit sqrt + add + div, 8 chains: %.2f ns a vector\n", divider_ns_per_vector());
#endif
    long sizes[] = {2048, 65536, 535818};
    for (int s = 0; s < 3; s++) {
        long n = sizes[s], reps = 100000000 / n;
        float *p = malloc(4 * n), *g = malloc(4 * n), *m = malloc(4 * n), *v = malloc(4 * n);
        for (long i = 0; i < n; i++) p[i] = 1.0f, g[i] = 0.01f * (float)(i % 7), m[i] = 0, v[i] = 0.1f;
        double best = 1e30;
        for (int k = 0; k < 5; k++) {
            double t0 = now();
            for (long r = 0; r < reps; r++)
                fm_adam_update(n, p, g, m, v, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0, threads);
            double t = (now() - t0) / (double)reps;
            if (t < best) best = t;
        }
        printf("adam_update n=%ld, %s, %d thread(s): best of 5 %.1f us, %.2f ns a vector per thread\n",
               n, fm_isa_name(isa), threads, best * 1e6, best / ((double)n / vlen) * threads * 1e9);
        free(p), free(g), free(m), free(v);
    }
    return 0;
}
