/* simd.h: the ISA layer. The only code that differs between instruction sets lives in the first
 * section of this file: the vector width, five primitives (load, store, their masked forms, FMA)
 * and the GEMM block-size table. Everything else (vector math, GEMM, activations, losses,
 * optimizers) is written once in GCC vector extensions and compiled once per ISA by isa_*.c, which
 * set FM_TARGET_* and a target pragma before including this file. Not a public header.
 *
 * Why vector extensions: arithmetic, comparisons and bit operations on `vf` compile to the widest
 * registers of the target, so the same source gives zmm, ymm or xmm code; only masked memory
 * access and FMA need intrinsics. -ffp-contract=off (setup.py) guarantees that `a * b + c` stays
 * two roundings, so FMAs happen exactly where vfma is written.
 */
#ifndef FASTMLP_SIMD_H
#define FASTMLP_SIMD_H

#include <stdint.h>
#include <string.h>

#include "fastmlp.h"

/* ---- Per-ISA section ------------------------------------------------------------------------
 * Primitives: vload/vstore (unaligned), vload_n/vstore_n (first n lanes; loads zero the rest),
 * vfma (a * b + c, one rounding where the ISA has FMA), vsplat (broadcast), vsqrt (correctly
 * rounded, as sqrtf); optionally a native
 * vtranspose (FM_NATIVE_VTRANSPOSE) where the generic one in gemm_pack.h compiles badly.
 * MR x NR is the micro-kernel's register tile (MR rows broadcast, NR / VLEN vectors wide);
 * KC, MC, NC are the default cache blocks (run-time tunable, see fm_set_blocks). The values come
 * from the sweep in benchmarks/results/sweep_avx512_1thread.json. FM_PACK_B_LD: the row stride
 * (floats) from which a row-major B is packed rather than read in place (gemm_ukernel.h,
 * contract 2); its measurements: benchmarks/results/gemm_rules.md, "pack B from a stride". */
#if defined(FM_TARGET_AVX512)
#include <immintrin.h>
#define VLEN 16
#define FM_MR 12 /* 24 accumulators + 2 B vectors + 1 broadcast of 32 zmm */
#define FM_NR 32
#define FM_KC 384 /* 12 x 384 A micro-panel = 18 KiB in L1 */
#define FM_MC 96
#define FM_NC 512 /* 384 x 512 B panel = 768 KiB in L2 */
#define FM_PACK_B_LD 512 /* 12 rows reuse each B vector: see "pack B from a stride" */
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
static inline __mmask16 vmask_(int n)
{
    return n <= 0 ? 0 : n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}
static inline vf vload(const float *p) { return (vf)_mm512_loadu_ps(p); }
static inline void vstore(float *p, vf x) { _mm512_storeu_ps(p, (__m512)x); }
static inline vf vload_n(const float *p, int n) { return (vf)_mm512_maskz_loadu_ps(vmask_(n), p); }
static inline void vstore_n(float *p, vf x, int n) { _mm512_mask_storeu_ps(p, vmask_(n), (__m512)x); }
static inline vf vfma(vf a, vf b, vf c) { return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
static inline vf vsplat(float x) { return (vf)_mm512_set1_ps(x); }
static inline vf vsqrt(vf x) { return (vf)_mm512_sqrt_ps((__m512)x); }

#elif defined(FM_TARGET_AVX2)
#include <immintrin.h>
#define VLEN 8
#define FM_MR 6 /* 12 accumulators + 2 B vectors + 1 broadcast of 16 ymm */
#define FM_NR 16
#define FM_KC 384
#define FM_MC 96
#define FM_NC 512
#define FM_PACK_B_LD 128 /* 6 rows of reuse: L1 set conflicts in place (same heading) */
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
static inline __m256i vmask_(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vf vload(const float *p) { return (vf)_mm256_loadu_ps(p); }
static inline void vstore(float *p, vf x) { _mm256_storeu_ps(p, (__m256)x); }
/* vmaskmovps is slow on AMD (microcoded stores): whole vectors take the plain path. */
static inline vf vload_n(const float *p, int n)
{
    return n >= VLEN ? vload(p) : (vf)_mm256_maskload_ps(p, vmask_(n));
}
static inline void vstore_n(float *p, vf x, int n)
{
    if (n >= VLEN)
        vstore(p, x);
    else
        _mm256_maskstore_ps(p, vmask_(n), (__m256)x);
}
static inline vf vfma(vf a, vf b, vf c) { return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
static inline vf vsplat(float x) { return (vf)_mm256_set1_ps(x); }
static inline vf vsqrt(vf x) { return (vf)_mm256_sqrt_ps((__m256)x); }
/* 8 x 8 transpose in 24 in-lane shuffles: GCC lowers AVX2's two-source __builtin_shuffle (the
 * generic vtranspose in gemm_pack.h) to permute-and-blend sequences three times as long. */
#define FM_NATIVE_VTRANSPOSE
static inline void vtranspose(vf r[8])
{
    __m256 t[8], s[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps((__m256)r[i], (__m256)r[i + 1]);     /* a0 b0 a1 b1 | a4 b4 a5 b5 */
        t[i + 1] = _mm256_unpackhi_ps((__m256)r[i], (__m256)r[i + 1]); /* a2 b2 a3 b3 | a6 b6 a7 b7 */
    }
    for (int i = 0; i < 8; i += 4) {
        s[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);     /* a0 b0 c0 d0 | a4 b4 c4 d4 */
        s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE); /* a1 b1 c1 d1 | a5 b5 c5 d5 */
        s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = (vf)_mm256_permute2f128_ps(s[i], s[i + 4], 0x20);
        r[i + 4] = (vf)_mm256_permute2f128_ps(s[i], s[i + 4], 0x31);
    }
}

#elif defined(FM_TARGET_NEON)
/* aarch64: NEON is the architecture's baseline, so this path needs no target and no check; it
 * differs from the generic one by its FMA and a register tile sized for NEON's 32 registers. */
#include <arm_neon.h>
#define VLEN 4
#define FM_MR 6 /* 24 accumulators + 4 B vectors + 1 broadcast of 32 q registers */
#define FM_NR 16
#define FM_KC 256
#define FM_MC 96
#define FM_NC 512
#define FM_PACK_B_LD 1024
typedef float vf __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(16)));
static inline int vclamp_(int n) { return n < 0 ? 0 : n > VLEN ? VLEN : n; }
static inline vf vload(const float *p) { return (vf)vld1q_f32(p); }
static inline void vstore(float *p, vf x) { vst1q_f32(p, (float32x4_t)x); }
static inline vf vload_n(const float *p, int n)
{
    if (n >= VLEN) return vload(p);
    vf x = {0};
    memcpy(&x, p, (size_t)vclamp_(n) * sizeof(float));
    return x;
}
static inline void vstore_n(float *p, vf x, int n)
{
    if (n >= VLEN)
        vstore(p, x);
    else
        memcpy(p, &x, (size_t)vclamp_(n) * sizeof(float));
}
static inline vf vfma(vf a, vf b, vf c) { return (vf)vfmaq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b); }
static inline vf vsplat(float x) { return (vf)vdupq_n_f32(x); }
static inline vf vsqrt(vf x) { return (vf)vsqrtq_f32((float32x4_t)x); }

#else /* generic: 4-wide vectors, plain C (GCC vector extensions: SSE2 on x86-64, NEON on
       * aarch64, without FMA) */
#define VLEN 4
#define FM_MR 6
#define FM_NR 8
#define FM_KC 256
#define FM_MC 96
#define FM_NC 512
#define FM_PACK_B_LD 1024
typedef float vf __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(16)));
static inline int vclamp_(int n) { return n < 0 ? 0 : n > VLEN ? VLEN : n; }
static inline vf vload(const float *p) { vf x; memcpy(&x, p, sizeof x); return x; }
static inline void vstore(float *p, vf x) { memcpy(p, &x, sizeof x); }
static inline vf vload_n(const float *p, int n)
{
    vf x = {0};
    memcpy(&x, p, (size_t)vclamp_(n) * sizeof(float));
    return x;
}
static inline void vstore_n(float *p, vf x, int n) { memcpy(p, &x, (size_t)vclamp_(n) * sizeof(float)); }
/* No FMA on the x86-64 baseline: a multiply and an add (two roundings), on every architecture. */
static inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
static inline vf vsplat(float x) { return (vf){x, x, x, x}; }
static inline vf vsqrt(vf x) /* correctly rounded, as every ISA's: lanes of sqrtf */
{
    for (int i = 0; i < VLEN; i++) x[i] = __builtin_sqrtf(x[i]);
    return x;
}
#endif

/* ---- Shared vector helpers (same source for every ISA) ---------------------------------------- */

/* The lanes of the concatenation x|y that m picks (m[l] < VLEN: x[m[l]], else y[m[l] - VLEN]).
 * GCC's __builtin_shuffle takes m as a vector; clang's __builtin_shufflevector only constant
 * indices, so for clang a lane loop, which its optimizer folds into the same shuffle once the
 * callers' loops are unrolled and m is a constant. */
static inline vf vshuffle2(vf x, vf y, vi m)
{
#if defined(__clang__)
    vf r;
    for (int l = 0; l < VLEN; l++) r[l] = m[l] < VLEN ? x[m[l]] : y[m[l] - VLEN];
    return r;
#else
    return __builtin_shuffle(x, y, m);
#endif
}

/* m lanes are all ones or all zeros (the result of a vector comparison). */
static inline vf vselect(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
static inline vf vabs(vf x) { return (vf)((vi)x & 0x7fffffff); }
static inline vf vcopysign(vf mag, vf sgn) { return (vf)(((vi)mag & 0x7fffffff) | ((vi)sgn & (int32_t)0x80000000)); }
static inline float vsum(vf x) /* fixed lane order, so reductions are deterministic */
{
    float s = 0.0f;
    for (int i = 0; i < VLEN; i++) s += x[i];
    return s;
}
static inline float vmaxval(vf x)
{
    float m = x[0];
    for (int i = 1; i < VLEN; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* 2^k for integer lanes k in [-126, 127]. */
static inline vf vpow2i(vi k) { return (vf)((k + 127) << 23); }

/* e^x = 2^n * e^r with n = round(x / ln 2), |r| <= ln2 / 2. e^r - 1 is a degree-7 Taylor
 * polynomial: truncation error below 2^-27 relative on that interval, so the result is within a
 * few ulp. *n_out receives n. The 2^n scaling is done by the callers in two halves so that
 * subnormal results and overflow to inf come out right without special cases. */
static inline vf vexpm1_reduced(vf x, vi *n_out)
{
    const vf magic = vsplat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    /* keep n within [-151, 129]: beyond, the result is 0 or inf anyway */
    x = vselect(x < -105.0f, vsplat(-105.0f), x);
    x = vselect(x > 89.0f, vsplat(89.0f), x);
    vf nf = (x * 1.44269504088896341f + magic) - magic;
    /* ln 2 split in a high part with few bits (n * hi is exact) and a low correction */
    vf r = (x - nf * 0.693359375f) - nf * -2.12194440e-4f;
    vf p = vsplat(1.0f / 5040.0f);
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    *n_out = __builtin_convertvector(nf, vi);
    return r + (r * r) * p;
}

/* e^x, NaN-propagating; within a few ulp, subnormals included. */
static inline vf vexp(vf x)
{
    vi n;
    vf q = vexpm1_reduced(x, &n) + 1.0f;
    vi n1 = n >> 1;
    vf res = (q * vpow2i(n1)) * vpow2i(n - n1);
    return vselect(x != x, x, res);
}

/* e^x - 1 without cancellation near 0: 2^n (e^r - 1) + (2^n - 1). Used for x in [0, 20]. */
static inline vf vexpm1(vf x)
{
    vi n;
    vf q = vexpm1_reduced(x, &n);
    vf s = vpow2i(n);
    return q * s + (s - 1.0f);
}

/* Logistic function of x, and 1 - it, both to full relative precision: with e = exp(-|x|) <= 1,
 * sigmoid(|x|) = 1 / (1 + e) and sigmoid(-|x|) = e / (1 + e). */
static inline void vsigmoid_pair(vf x, vf *s, vf *one_minus_s)
{
    vf e = vexp(-vabs(x));
    vf big = 1.0f / (1.0f + e), small = e / (1.0f + e);
    vi pos = x >= 0.0f;
    *s = vselect(pos, big, small);
    *one_minus_s = vselect(pos, small, big);
    /* NaN: both comparisons are false and e is NaN, so both results are NaN already. */
}

/* tanh x = sign(x) t / (t + 2), t = expm1(2|x|): no cancellation for small |x|; |x| is capped at
 * 10, where tanh already rounds to 1 in float32, so t never overflows. */
static inline vf vtanh(vf x)
{
    vf a = vabs(x);
    a = vselect(a > 10.0f, vsplat(10.0f), a);
    vf t = vexpm1(a + a);
    vf r = t / (t + 2.0f);
    return vselect(x != x, x, vcopysign(r, x));
}

#define GELU_C 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_K 0.044715f

/* ---- Activations on one vector: the GEMM epilogue and the elementwise kernels share these, so
 * a fused and an unfused computation give the same bits. ---- */

static inline vf vact_forward(vf x, int act, float slope)
{
    vf s, sm;
    switch (act) {
    case FM_ACT_RELU: /* x < 0 ? 0 : x keeps NaN */
        return vselect(x < 0.0f, vsplat(0.0f), x);
    case FM_ACT_LEAKY_RELU:
        return vselect(x < 0.0f, x * slope, x);
    case FM_ACT_TANH:
        return vtanh(x);
    case FM_ACT_LOGISTIC:
        vsigmoid_pair(x, &s, &sm);
        return s;
    case FM_ACT_GELU: /* x * sigmoid(2u) */
        vsigmoid_pair(2.0f * GELU_C * (x + GELU_K * (x * x * x)), &s, &sm);
        return x * s;
    default:
        return x;
    }
}

/* dz = dy * act'(.), from the activation output y or (gelu) the pre-activation z. */
static inline vf vact_backward(vf dy, vf y, vf z, int act, float slope)
{
    vf s, sm;
    switch (act) {
    case FM_ACT_RELU:
        return dy * vselect(y > 0.0f, vsplat(1.0f), vsplat(0.0f));
    case FM_ACT_LEAKY_RELU:
        return dy * vselect(y > 0.0f, vsplat(1.0f), vsplat(slope));
    case FM_ACT_TANH: /* 1 - y^2 factored: no cancellation near |y| = 1 */
        return dy * ((1.0f - y) * (1.0f + y));
    case FM_ACT_LOGISTIC:
        return dy * (y * (1.0f - y));
    case FM_ACT_GELU: {
        vsigmoid_pair(2.0f * GELU_C * (z + GELU_K * (z * z * z)), &s, &sm);
        /* z * s(1-s) * du is 0 once |z| > ~10 (s(1-s) underflows), but z^2 in du overflows to
         * inf for |z| > 1.8e19 and 0 * inf would make gelu'(z) NaN there instead of 1 or 0: the
         * z of that term is clamped to +-1e6 (no effect on any smaller z; NaN passes through). */
        vf zc = vselect(z > 1e6f, vsplat(1e6f), vselect(z < -1e6f, vsplat(-1e6f), z));
        vf du = 2.0f * GELU_C * (1.0f + (3.0f * GELU_K) * (zc * zc));
        return dy * (s + zc * (s * sm) * du);
    }
    default:
        return dy;
    }
}

#endif
