/* gemm_pack.h: packing of the GEMM's operands into the panels the micro-kernel reads
 * (gemm_ukernel.h, contracts 1-2), and the problem description every GEMM file shares.
 * Transposes live only here (and in where an in-place B pointer points). Compiled once per ISA
 * by isa_*.c, after simd.h; everything here is static to that unit. */
#define NV (FM_NR / VLEN)

typedef struct {
    int ta, tb;
    ptrdiff_t M, N, K;
    float alpha, beta;
    const float *A, *B;
    ptrdiff_t lda, ldb, ldc;
    float *C;
    const fm_epilogue *ep;
    int kc, mc, nc;
    int pack_b;
    int tc; /* the product computed is C^T (M, N, A, B as seen by the loops): FM_PATH_BLOCKED_CT */
    const update_ctx *upd; /* ep->update's constants, or NULL */
} gemm_args;

/* op(A)[i, k] in place: a + i * rs + k * cs. */
static inline ptrdiff_t a_rs(const gemm_args *g) { return g->ta ? 1 : g->lda; }
static inline ptrdiff_t a_cs(const gemm_args *g) { return g->ta ? g->lda : 1; }

static inline ptrdiff_t min_pd(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }

#ifndef FM_NATIVE_VTRANSPOSE
/* Shuffle mask of one interleave stage: rows x, y -> lanes taken b at a time, alternately from
 * x and y (hi: the second b of each 2b group). A constant once vtranspose is unrolled. */
static inline vi interleave_mask(int b, int hi)
{
    vi m;
    for (int l = 0; l < VLEN; l++) {
        int q = l / (2 * b), w = l % (2 * b);
        m[l] = (w < b ? 0 : VLEN - b) + q * 2 * b + w + (hi ? b : 0);
    }
    return m;
}

/* r[VLEN] rows of a VLEN x VLEN block -> its transpose, in log2(VLEN) stages of two-source
 * shuffles (stage b pairs rows i and i + b). One source for every vector width. */
static inline __attribute__((always_inline)) void vtranspose(vf r[VLEN])
{
#pragma GCC unroll 8
    for (int b = VLEN / 2; b >= 1; b /= 2) {
        vi lo = interleave_mask(b, 0), hi = interleave_mask(b, 1);
#pragma GCC unroll 16
        for (int i = 0; i < VLEN; i++) {
            if (i & b) continue;
            vf x = r[i], y = r[i + b];
            r[i] = vshuffle2(x, y, lo);
            r[i + b] = vshuffle2(x, y, hi);
        }
    }
}
#endif

/* Store lanes [0, MR) of the MR-row groups r[g] (VLEN rows each) as step k of an A micro-panel
 * of kc steps. The last group's vector may be wider than the rows it holds: it is stored whole
 * and its spill into step k + 1 is overwritten by that step's own (later) store; only the
 * panel's last step is stored masked, so nothing is written past the panel. */
#define A_GROUPS ((FM_MR + VLEN - 1) / VLEN)
static inline __attribute__((always_inline)) void
store_a_step(float *restrict dst, ptrdiff_t k, ptrdiff_t kc, const vf *r)
{
    for (int q = 0; q < A_GROUPS; q++) {
        int w = FM_MR - q * VLEN;
        if (w >= VLEN || k + 1 < kc)
            vstore(dst + k * FM_MR + q * VLEN, r[q]);
        else
            vstore_n(dst + k * FM_MR + q * VLEN, r[q], w);
    }
}

/* op(A)[i0 : i0+mc, k0 : k0+kc] -> MR-row micro-panels (contract 1). */
static void pack_a(const gemm_args *g, ptrdiff_t i0, ptrdiff_t mc, ptrdiff_t k0, ptrdiff_t kc,
                   float *restrict dst)
{
    for (ptrdiff_t ip = 0; ip < mc; ip += FM_MR, dst += kc * FM_MR) {
        int mr = (int)min_pd(FM_MR, mc - ip);
        if (g->ta) { /* op(A) = A^T: the MR values of one k are contiguous in A */
            const float *src = g->A + k0 * g->lda + (i0 + ip);
            for (ptrdiff_t k = 0; k < kc; k++) {
                vf r[A_GROUPS];
                for (int q = 0; q < A_GROUPS; q++)
                    r[q] = vload_n(src + k * g->lda + q * VLEN, mr - q * VLEN);
                store_a_step(dst, k, kc, r);
            }
        } else {
            /* MR row streams, each contiguous in k: VLEN x VLEN blocks are transposed in
             * registers rather than gathered one k at a time across MR rows
             * (benchmarks/results/gemm_rules.md, "pack A in registers"). Rows past mr are
             * zeros. */
            const float *src = g->A + (i0 + ip) * g->lda + k0;
            for (ptrdiff_t k = 0; k < kc; k += VLEN) {
                int kn = (int)min_pd(VLEN, kc - k);
                vf r[A_GROUPS][VLEN], step[A_GROUPS];
                for (int q = 0; q < A_GROUPS; q++) {
#pragma GCC unroll 16
                    for (int t = 0; t < VLEN; t++) {
                        int i = q * VLEN + t;
                        const float *p = src + i * g->lda + k;
                        r[q][t] = i >= mr ? vsplat(0.0f) : vload_n(p, kn);
                    }
                    vtranspose(r[q]);
                }
#pragma GCC unroll 16
                for (int t = 0; t < VLEN; t++) {
                    if (t >= kn) break;
                    for (int q = 0; q < A_GROUPS; q++) step[q] = r[q][t];
                    store_a_step(dst, k + t, kc, step);
                }
            }
        }
    }
}

/* op(B)[k0 : k0+kc, j0 : j0+nc] -> NR-column panels (contract 2). */
static void pack_b(const gemm_args *g, ptrdiff_t k0, ptrdiff_t kc, ptrdiff_t j0, ptrdiff_t nc,
                   float *restrict dst)
{
    for (ptrdiff_t jp = 0; jp < nc; jp += FM_NR, dst += kc * FM_NR) {
        int nr = (int)min_pd(FM_NR, nc - jp);
        if (g->tb) {
            /* op(B) = B^T: each column of the panel is a contiguous row of B. VLEN x VLEN
             * blocks go through registers (vtranspose), VLEN rows of B at a time, each read
             * along k: VLEN sequential streams, not NR, which the hardware prefetcher follows
             * (gemm_rules.md, "pack B^T along k"). */
            const float *src = g->B + (j0 + jp) * g->ldb + k0;
            for (int jv = 0; jv < FM_NR; jv += VLEN) {
                for (ptrdiff_t k = 0; k < kc; k += VLEN) {
                    int kn = (int)min_pd(VLEN, kc - k);
                    vf r[VLEN];
#pragma GCC unroll 16
                    for (int t = 0; t < VLEN; t++)
                        r[t] = jv + t < nr ? vload_n(src + (jv + t) * g->ldb + k, kn) : vsplat(0.0f);
                    vtranspose(r);
#pragma GCC unroll 16
                    for (int t = 0; t < VLEN; t++)
                        if (t < kn) vstore(dst + (k + t) * FM_NR + jv, r[t]);
                }
            }
        } else {
            const float *src = g->B + k0 * g->ldb + (j0 + jp);
            for (ptrdiff_t k = 0; k < kc; k++)
                for (int v = 0; v < NV; v++)
                    vstore(dst + k * FM_NR + v * VLEN, vload_n(src + k * g->ldb + v * VLEN, nr - v * VLEN));
        }
    }
}
