/* gemm_impl.h: packed, blocked SGEMM with fused epilogues (Goto/BLIS loop structure).
 * Compiled once per ISA by isa_*.c (after simd.h); everything here is static to that unit.
 *
 * Loops, outermost first, for one thread's share of C:
 *   jc over N by NC -> pc over K by KC -> [pack B block KC x NC into NR-wide panels, L2]
 *     -> ic over M by MC -> pack A block MC x KC into MR-tall micro-panels
 *       -> ir over MR (A micro-panel stays in L1) -> jr over NR (B panel streamed from L2)
 *         -> micro-kernel: MR x NR tile of C in registers, kc broadcast + FMA steps.
 *
 * Contract of the micro-kernel (what the loops guarantee and what it promises):
 *  1. A is read as MR rows: packed (kc steps of MR consecutive floats, rows past M zero-padded)
 *     when the block is reused across several B panels, else in place with its own strides.
 *     An in-place A never has a partial MR block: that one edge panel is packed, so the kernel
 *     always runs full MR rows and never reads outside the operand.
 *  2. B is either packed (kc steps of NR floats, zero-padded past N) or read in place from a
 *     row-major op(B) (row stride ldb); in place, the last panel's loads are masked to nb columns.
 *     A transposed B must be packed; a row-major one is packed only when its rows are at least
 *     FM_PACK_B_LD floats apart and A has rows enough to amortise the copy (see sgemm). With few
 *     B panels (an MLP's narrow layers) A is not packed either: that is the small-problem path.
 *  3. Accumulators start at zero for every K block and add products in k order with one FMA
 *     each; C is combined as alpha*s + beta*C on the first block and C + alpha*s on later ones.
 *     Nothing here depends on M, on the tile's position or on the thread count (fastmlp.h rule 4).
 *  4. Only the valid mr x nr corner of the tile is read or written in C (masked vector stores).
 *  5. The epilogue runs once, on the last K block, on the values about to be stored.
 *
 * Transposes live only in the packing routines (and in where the in-place B pointer points).
 */
#include <stdlib.h>
#include <omp.h>

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
    int tc; /* the product computed is C^T (M, N, A, B as seen by the loops): see sgemm */
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
            r[i] = __builtin_shuffle(x, y, lo);
            r[i + b] = __builtin_shuffle(x, y, hi);
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
             * registers (a scalar gather of one k across MR rows cost 10% of a square
             * product). Rows past mr are zeros. */
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
             * (Zen 4: 128x784x512 NT 4-6% faster, paired runs). */
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

/* The rows x (nv VLEN) product over kc steps (contract 3), rows <= MR. A is read at
 * a + i*ars + k*acs, B at b + k*b_rs. The accumulators are locals that never escape, so they
 * live in registers. rows, full, nv and (for packed A) ars, acs are compile-time constants after
 * inlining: fewer rows for an edge panel (whose padding rows would only multiply zeros), whole
 * or masked B vectors, all of NR or one vector wide (narrow N, e.g. a 10-class output).
 * Without an epilogue to apply (c != NULL), the tile is combined with C and stored straight from
 * the registers (contracts 3, 4); otherwise it goes to tile[MR][NR] for tile_store. */
static inline __attribute__((always_inline)) void
ukernel_product(int rows, ptrdiff_t kc, const float *restrict a, ptrdiff_t ars, ptrdiff_t acs,
                const float *restrict b, ptrdiff_t b_rs, int nb, int full, int nv,
                float *restrict tile, const gemm_args *g, float *c, int mr, int nr, int first)
{
    vf acc[FM_MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < rows; i++)
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++) acc[i][v] = vsplat(0.0f);
    for (ptrdiff_t k = 0; k < kc; k++) {
        vf bv[NV];
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++)
            bv[v] = full ? vload(b + v * VLEN) : vload_n(b + v * VLEN, nb - v * VLEN);
#pragma GCC unroll 16
        for (int i = 0; i < rows; i++) {
            vf ai = vsplat(a[i * ars]);
#pragma GCC unroll 8
            for (int v = 0; v < nv; v++) acc[i][v] = vfma(ai, bv[v], acc[i][v]);
        }
        a += acs;
        b += b_rs;
    }
    if (!c) {
#pragma GCC unroll 16
        for (int i = 0; i < rows; i++)
#pragma GCC unroll 8
            for (int v = 0; v < nv; v++) vstore(tile + i * FM_NR + v * VLEN, acc[i][v]);
        return;
    }
    vf alpha = vsplat(g->alpha), beta = vsplat(g->beta);
    int use_beta = g->beta != 0.0f;
#pragma GCC unroll 16
    for (int i = 0; i < rows; i++) {
        if (i >= mr) break;
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++) {
            float *cp = c + i * g->ldc + v * VLEN;
            int n = nr - v * VLEN;
            vf x = alpha * acc[i][v];
            if (!first)
                x = x + vload_n(cp, n);
            else if (use_beta)
                x = x + beta * vload_n(cp, n);
            if (n >= VLEN)
                vstore(cp, x);
            else
                vstore_n(cp, x, n);
        }
    }
}

/* Packed A (zero-padded to MR rows): B whole, masked, or one vector wide. */
static inline __attribute__((always_inline)) void
run_packed(int rows, ptrdiff_t kc, const float *a, const float *b, ptrdiff_t b_rs, int nb,
           float *tile, const gemm_args *g, float *c, int mr, int nr, int first)
{
    if (nb >= FM_NR)
        ukernel_product(rows, kc, a, 1, FM_MR, b, b_rs, FM_NR, 1, NV, tile, g, c, mr, nr, first);
    else if (nb <= VLEN)
        ukernel_product(rows, kc, a, 1, FM_MR, b, b_rs, nb, 0, 1, tile, g, c, mr, nr, first);
    else
        ukernel_product(rows, kc, a, 1, FM_MR, b, b_rs, nb, 0, NV, tile, g, c, mr, nr, first);
}

/* Rows the micro-kernel multiplies for a packed panel of mr rows: mr rounded up to a third, two
 * thirds or five sixths of MR, or MR. An 8-row edge of a 32-row batch then costs 8 rows, not 12,
 * and a 10-class output's C^T (sgemm) 10, not 12. */
static inline int panel_rows(int mr)
{
    return mr <= FM_MR / 3       ? FM_MR / 3
           : mr <= 2 * FM_MR / 3 ? 2 * FM_MR / 3
           : mr <= 5 * FM_MR / 6 ? 5 * FM_MR / 6
                                 : FM_MR;
}

/* Instantiate the micro-kernel variants: A packed (panel_rows) or in place (always MR rows,
 * contract 1), B vectors whole or masked, NR or one vector wide. c, mr, nr, first: see
 * ukernel_product. */
static void run_tile(ptrdiff_t kc, const float *a, int a_packed, ptrdiff_t ars, ptrdiff_t acs,
                     const float *b, ptrdiff_t b_rs, int nb, float *tile, const gemm_args *g,
                     float *c, int mr, int nr, int first)
{
    int full = nb >= FM_NR, narrow = nb <= VLEN;
    if (a_packed) {
        int rows = panel_rows(mr);
        if (rows == FM_MR / 3)
            run_packed(FM_MR / 3, kc, a, b, b_rs, nb, tile, g, c, mr, nr, first);
        else if (rows == 2 * FM_MR / 3)
            run_packed(2 * FM_MR / 3, kc, a, b, b_rs, nb, tile, g, c, mr, nr, first);
        else if (rows == 5 * FM_MR / 6)
            run_packed(5 * FM_MR / 6, kc, a, b, b_rs, nb, tile, g, c, mr, nr, first);
        else
            run_packed(FM_MR, kc, a, b, b_rs, nb, tile, g, c, mr, nr, first);
    } else if (ars == 1) { /* A^T in place: the MR values of one k are contiguous */
        if (full)
            ukernel_product(FM_MR, kc, a, 1, acs, b, b_rs, FM_NR, 1, NV, tile, g, c, mr, nr, first);
        else if (narrow)
            ukernel_product(FM_MR, kc, a, 1, acs, b, b_rs, nb, 0, 1, tile, g, c, mr, nr, first);
        else
            ukernel_product(FM_MR, kc, a, 1, acs, b, b_rs, nb, 0, NV, tile, g, c, mr, nr, first);
    } else { /* A in place, row-major: MR row streams */
        if (full)
            ukernel_product(FM_MR, kc, a, ars, 1, b, b_rs, FM_NR, 1, NV, tile, g, c, mr, nr, first);
        else if (narrow)
            ukernel_product(FM_MR, kc, a, ars, 1, b, b_rs, nb, 0, 1, tile, g, c, mr, nr, first);
        else
            ukernel_product(FM_MR, kc, a, ars, 1, b, b_rs, nb, 0, NV, tile, g, c, mr, nr, first);
    }
}

/* Combine x, lanes [0, n) of row i of C from column j on, with C; apply the epilogue on the last
 * K block; store (contracts 3-5). */
static inline void store_c(const gemm_args *g, vf x, ptrdiff_t i, ptrdiff_t j, int n, int first,
                           int last)
{
    const fm_epilogue *ep = last ? g->ep : NULL;
    float *c = g->C + i * g->ldc + j;
    x = g->alpha * x;
    if (!first)
        x = x + vload_n(c, n);
    else if (g->beta != 0.0f)
        x = x + g->beta * vload_n(c, n);
    if (ep) {
        if (ep->bias) x = x + vload_n(ep->bias + j, n);
        if (ep->act) x = act_forward(x, ep->act, ep->slope);
        if (ep->grad_act) {
            vf y = ep->y ? vload_n(ep->y + i * ep->ldy + j, n) : vsplat(0.0f);
            vf z = ep->z ? vload_n(ep->z + i * ep->ldz + j, n) : vsplat(0.0f);
            x = act_backward(x, y, z, ep->grad_act, ep->slope);
        }
    }
    if (n >= VLEN)
        vstore(c, x);
    else
        vstore_n(c, x, n);
}

/* The mr x nr tile at (row, col) of the product computed, to C. With g->tc the product is C^T
 * (see sgemm): the tile is transposed VLEN x VLEN in registers, so each of its columns becomes
 * a piece of a row of C. */
static inline void tile_store(const gemm_args *g, const float *tile, ptrdiff_t row, ptrdiff_t col,
                              int mr, int nr, int first, int last)
{
    if (!g->tc) {
        for (int i = 0; i < mr; i++)
            for (int v = 0; v < NV && v * VLEN < nr; v++)
                store_c(g, vload(tile + i * FM_NR + v * VLEN), row + i, col + v * VLEN,
                        nr - v * VLEN, first, last);
        return;
    }
    for (int q = 0; q < mr; q += VLEN)
        for (int jv = 0; jv < nr; jv += VLEN) {
            vf r[VLEN];
            for (int t = 0; t < VLEN; t++)
                r[t] = q + t < mr ? vload(tile + (q + t) * FM_NR + jv) : vsplat(0.0f);
            vtranspose(r);
            for (int t = 0; t < VLEN && jv + t < nr; t++)
                store_c(g, r[t], col + jv + t, row + q, mr - q, first, last);
        }
}

/* One thread's share: rows [m0, m1) and columns [n0, n1) of C. */
static void gemm_range(const gemm_args *g, ptrdiff_t m0, ptrdiff_t m1, ptrdiff_t n0, ptrdiff_t n1,
                       float *apack, float *bpack)
{
    ptrdiff_t K = g->K;
    float tile[FM_MR * FM_NR] __attribute__((aligned(64)));
    /* Packing A pays when its micro-panels are reused across several B panels. */
    int pack_all_a = n1 - n0 > 2 * FM_NR;
    for (ptrdiff_t jc = n0; jc < n1; jc += g->nc) {
        ptrdiff_t nc = min_pd(g->nc, n1 - jc);
        /* K == 0 still runs one (empty) block: beta and the epilogue apply (fastmlp.h rule 1) */
        for (ptrdiff_t pc = 0; pc < K || pc == 0; pc += g->kc) {
            ptrdiff_t kc = min_pd(g->kc, K - pc);
            int first = pc == 0, last = pc + kc >= K;
            if (g->pack_b) pack_b(g, pc, kc, jc, nc, bpack);
            for (ptrdiff_t ic = m0; ic < m1; ic += g->mc) {
                ptrdiff_t mc = min_pd(g->mc, m1 - ic);
                if (pack_all_a) pack_a(g, ic, mc, pc, kc, apack);
                for (ptrdiff_t ir = 0; ir < mc; ir += FM_MR) {
                    int mr = (int)min_pd(FM_MR, mc - ir);
                    const float *a;
                    int a_packed = pack_all_a || mr < FM_MR;
                    if (pack_all_a) {
                        a = apack + ir * kc;
                    } else if (mr < FM_MR) { /* the edge panel (contract 1) */
                        pack_a(g, ic + ir, mr, pc, kc, apack);
                        a = apack;
                    } else {
                        a = g->A + (ic + ir) * a_rs(g) + pc * a_cs(g);
                    }
                    for (ptrdiff_t jr = 0; jr < nc; jr += FM_NR) {
                        int nr = (int)min_pd(FM_NR, nc - jr);
                        /* the epilogue needs the tile in memory; a plain store does not */
                        int direct = !(last && g->ep) && !g->tc;
                        float *c = direct ? g->C + (ic + ir) * g->ldc + jc + jr : NULL;
                        if (g->pack_b)
                            run_tile(kc, a, a_packed, a_rs(g), a_cs(g), bpack + jr * kc, FM_NR,
                                     nr <= VLEN ? nr : FM_NR, tile, g, c, mr, nr, first);
                        else
                            run_tile(kc, a, a_packed, a_rs(g), a_cs(g),
                                     g->B + pc * g->ldb + jc + jr, g->ldb, nr, tile, g, c, mr, nr,
                                     first);
                        if (!direct) tile_store(g, tile, ic + ir, jc + jr, mr, nr, first, last);
                    }
                }
            }
        }
    }
}

/* ---- Narrow N: dot products along k --------------------------------------------------------
 * C[M, N] = op(A) op(B) for a row-major A and N well under VLEN (the forward pass of a 10-class
 * output layer, 128x256 by 256x10): N-wide vectors would leave most lanes idle. Each element is
 * instead a dot product of a row of A and a row of B^T, both read VLEN values of k at a time
 * (B^T is packed once per thread, unless B is stored transposed). Summation order (fastmlp.h):
 * lane l adds the products of k = l, l + VLEN, ... in k order with one FMA each, from zero, K
 * unblocked; then vsum_lanes adds the lanes as a fixed pairwise tree. The choice of this path
 * depends on N and K only, never on M (rule 4). */

/* Shuffle mask of a vsum_lanes round: lanes taken h at a time from x (first half of each 2h
 * group) and y (second half); hi: the upper h of each of x's and y's 2h groups. */
static inline vi half_mask(int h, int hi)
{
    vi m;
    for (int l = 0; l < VLEN; l++) {
        int q = l / (2 * h) * 2 * h, w = l % (2 * h);
        m[l] = (w < h ? q + w : VLEN + q + w - h) + (hi ? h : 0);
    }
    return m;
}

/* p's log2(VLEN) low bits reversed; a closed form so that it folds to a constant once the
 * loops that use it are unrolled (the accumulators then stay in registers). */
static inline int bit_reverse(int p)
{
    int r4 = ((p & 1) << 3) | ((p & 2) << 1) | ((p & 4) >> 1) | ((p & 8) >> 3);
    return r4 >> (VLEN == 16 ? 0 : VLEN == 8 ? 1 : 2);
}

/* One round of vsum_lanes: the 2h vectors w[0 .. 2h) -> h vectors. */
static inline __attribute__((always_inline)) void vsum_round(vf *w, int h)
{
    vi lo = half_mask(h, 0), hi = half_mask(h, 1);
#pragma GCC unroll 8
    for (int p = 0; p < h; p++)
        w[p] = __builtin_shuffle(w[2 * p], w[2 * p + 1], lo) +
               __builtin_shuffle(w[2 * p], w[2 * p + 1], hi);
}

/* v[0 .. n) -> one vector whose lane c is the sum of v[c]'s lanes, as the pairwise tree that
 * adds lane l and lane l + VLEN/2 first, then l + VLEN/4, and so on: the same tree for every c.
 * log2(VLEN) rounds of two-source shuffles each halve the number of vectors (a full transpose
 * and 15 adds would take twice the shuffles); taking v in bit-reversed order leaves sum c in
 * lane c. Lanes from n on are 0. */
static inline __attribute__((always_inline)) vf vsum_lanes(const vf *v, int n)
{
    vf w[VLEN];
#pragma GCC unroll 16
    for (int p = 0; p < VLEN; p++) w[p] = bit_reverse(p) < n ? v[bit_reverse(p)] : vsplat(0.0f);
    /* rounds of half-width VLEN/2 ... 1, each on 2h vectors; spelled out so that every mask is
     * a constant */
    if (VLEN >= 16) vsum_round(w, 8);
    if (VLEN >= 8) vsum_round(w, 4);
    vsum_round(w, 2);
    vsum_round(w, 1);
    return w[0];
}

/* One step of k (kn <= VLEN values, masked below VLEN) of dot_tile. */
static inline __attribute__((always_inline)) void
dot_step(int rows, int n, const float *a, ptrdiff_t lda, const float *bt, ptrdiff_t ldbt, int kn,
         vf acc[][VLEN])
{
    vf av[4];
#pragma GCC unroll 4
    for (int i = 0; i < rows; i++) av[i] = kn == VLEN ? vload(a + i * lda) : vload_n(a + i * lda, kn);
#pragma GCC unroll 16
    for (int j = 0; j < n; j++) {
        vf b = kn == VLEN ? vload(bt + j * ldbt) : vload_n(bt + j * ldbt, kn);
        /* Keep b in a register: GCC would fold the load into each row's FMA, and with one load
         * per FMA the loop waits on loads (Zen 4 loads one zmm per cycle). */
        __asm__("" : "+v"(b));
#pragma GCC unroll 4
        for (int i = 0; i < rows; i++) acc[i][j] = vfma(av[i], b, acc[i][j]);
    }
}

/* rows x n dot products of length K: rows of A at a (stride lda), rows of B^T at bt (stride
 * ldbt). out[i] holds row i's n results in lanes [0, n). rows and n are compile-time constants
 * after inlining, so the rows x n accumulators stay in registers. */
static inline __attribute__((always_inline)) void
dot_tile(int rows, int n, ptrdiff_t K, const float *restrict a, ptrdiff_t lda,
         const float *restrict bt, ptrdiff_t ldbt, vf *out)
{
    vf acc[4][VLEN];
#pragma GCC unroll 4
    for (int i = 0; i < rows; i++)
#pragma GCC unroll 16
        for (int j = 0; j < n; j++) acc[i][j] = vsplat(0.0f);
    ptrdiff_t k = 0;
    for (; k + VLEN <= K; k += VLEN) dot_step(rows, n, a + k, lda, bt + k, ldbt, VLEN, acc);
    if (k < K) dot_step(rows, n, a + k, lda, bt + k, ldbt, (int)(K - k), acc);
#pragma GCC unroll 4
    for (int i = 0; i < rows; i++) out[i] = vsum_lanes(acc[i], n);
}

/* Accumulator registers a dot tile may use: 32 zmm registers on AVX-512, 16 otherwise, less the
 * A rows and one B vector. */
#define DOT_ACC (VLEN >= 16 ? 24 : 10)

/* Rows [m0, m1) of C, with n = N compile-time: tiles of as many rows (up to 4) as the
 * accumulators allow, then single rows. */
static inline __attribute__((always_inline)) void
dot_range_n(int n, const gemm_args *g, const float *bt, ptrdiff_t ldbt, ptrdiff_t m0, ptrdiff_t m1)
{
    const int R = 4 * n <= DOT_ACC ? 4 : 2 * n <= DOT_ACC ? 2 : 1;
    vf out[4];
    for (ptrdiff_t i = m0; i < m1;) {
        int rows = m1 - i >= R ? R : 1;
        if (rows == R)
            dot_tile(R, n, g->K, g->A + i * g->lda, g->lda, bt, ldbt, out);
        else
            dot_tile(1, n, g->K, g->A + i * g->lda, g->lda, bt, ldbt, out);
        for (int r = 0; r < rows; r++) store_c(g, out[r], i + r, 0, n, 1, 1);
        i += rows;
    }
}

#define DOT_CASE(n) case n: if (n <= VLEN) dot_range_n(n, g, bt, ldbt, m0, m1); break;
static void dot_range(const gemm_args *g, const float *bt, ptrdiff_t ldbt, ptrdiff_t m0, ptrdiff_t m1)
{
    switch (g->N) {
        DOT_CASE(1) DOT_CASE(2) DOT_CASE(3) DOT_CASE(4) DOT_CASE(5) DOT_CASE(6) DOT_CASE(7)
        DOT_CASE(8) DOT_CASE(9) DOT_CASE(10) DOT_CASE(11) DOT_CASE(12) DOT_CASE(13)
        DOT_CASE(14) DOT_CASE(15) DOT_CASE(16)
    }
}
#undef DOT_CASE

/* B[K, N] (ldb) -> bt[N, kp], zero-padded from K to kp (a multiple of VLEN): VLEN x VLEN blocks
 * transposed in registers. */
static void pack_bt(const gemm_args *g, ptrdiff_t kp, float *restrict bt)
{
    for (ptrdiff_t k = 0; k < kp; k += VLEN)
        for (ptrdiff_t j0 = 0; j0 < g->N; j0 += VLEN) {
            vf r[VLEN];
            int nj = (int)min_pd(VLEN, g->N - j0);
#pragma GCC unroll 16
            for (int t = 0; t < VLEN; t++)
                r[t] = k + t < g->K ? vload_n(g->B + (k + t) * g->ldb + j0, nj) : vsplat(0.0f);
            vtranspose(r);
            for (int j = 0; j < nj; j++) vstore(bt + (j0 + j) * kp + k, r[j]);
        }
}

/* Whether the dot path pays for C[M, N] = op(A) op(B) with K: it does N * ceil(K / VLEN) FMAs
 * and about 4 N shuffles and adds per row, against K vector FMAs per row for N-wide vectors. */
static int use_dot(int trans_a, ptrdiff_t N, ptrdiff_t K)
{
    return !trans_a && N <= VLEN && 5 * N * ((K + VLEN - 1) / VLEN + 4) < 4 * K;
}

/* Rows the micro-kernel multiplies for m rows of A: whole MR panels and the edge's panel_rows. */
static ptrdiff_t fma_rows(ptrdiff_t m)
{
    int e = (int)(m % FM_MR);
    return m - e + (e ? panel_rows(e) : 0);
}

static float *align64(float *p) { return (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

/* Threads for a product of M x N x K: at most nthreads and units (the pieces the work is split
 * into), and one per quarter MFLOP (see sgemm); at least 1. */
static ptrdiff_t gemm_threads(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, int nthreads, ptrdiff_t units)
{
    double flops = 2.0 * (double)M * (double)N * (double)(K > 0 ? K : 1);
    ptrdiff_t nt = nthreads;
    if ((double)nt > flops / 2.5e5) nt = (ptrdiff_t)(flops / 2.5e5);
    if (nt > units) nt = units;
    return nt < 1 ? 1 : nt;
}

/* Thread t of n_t on the dot path (see use_dot): its rows of C, with its own copy of B^T. */
static void dot_share(const gemm_args *g, float *work, size_t per_thread, ptrdiff_t kp,
                      ptrdiff_t t, ptrdiff_t n_t)
{
    const float *bt = g->B;
    ptrdiff_t ldbt = g->ldb;
    if (!g->tb) {
        float *p = align64(work + (size_t)t * per_thread);
        pack_bt(g, kp, p);
        bt = p, ldbt = kp;
    }
    dot_range(g, bt, ldbt, g->M * t / n_t, g->M * (t + 1) / n_t);
}

static int sgemm_dot(const fm_kernels *self, const gemm_args *g, float *work, int nthreads)
{
    ptrdiff_t kp = (g->K + VLEN - 1) / VLEN * VLEN;
    size_t per_thread = g->tb ? 0 : (size_t)(g->N * kp) + 16; /* align64 moves up to 15 */
    ptrdiff_t nt = gemm_threads(g->M, g->N, g->K, nthreads, g->M);
    float *own = NULL;
    if (per_thread && (!work || per_thread > fm_gemm_thread_floats(self))) {
        own = malloc(per_thread * (size_t)nt * sizeof(float));
        if (!own) return FM_ENOMEM;
        work = own;
    }
    if (nt == 1) { /* see sgemm */
        dot_share(g, work, per_thread, kp, 0, 1);
    } else {
#pragma omp parallel num_threads((int)nt)
        dot_share(g, work, per_thread, kp, omp_get_thread_num(), omp_get_num_threads());
    }
    free(own);
    return FM_OK;
}

/* Where thread t of n_t starts when pan panels of `step` are dealt between threads: panels
 * [pan t / n_t, pan (t + 1) / n_t), so shares differ by at most one panel. */
static ptrdiff_t share_start(ptrdiff_t pan, ptrdiff_t step, ptrdiff_t t, ptrdiff_t n_t)
{
    return pan * t / n_t * step;
}

/* The cost of splitting the n rows (or columns) of C between nt threads, in vector FMA steps:
 * the slowest thread's work beyond an even share when the panels of `step` are dealt as
 * share_start deals them, each row (column) taking K x `other` / VLEN steps; plus `dup` floats
 * of packing that every thread repeats, at PACK_STEPS steps per float (fitted on Zen 4 to the
 * better split measured for 128x256x512 and 128x512x784 NN). */
#define PACK_STEPS 1.5
static double split_cost(ptrdiff_t n, ptrdiff_t step, ptrdiff_t other, ptrdiff_t K, ptrdiff_t nt,
                         double dup)
{
    ptrdiff_t pan = (n + step - 1) / step, most = 0;
    for (ptrdiff_t t = 0; t < nt; t++) {
        ptrdiff_t len = min_pd(share_start(pan, step, t + 1, nt), n) -
                        share_start(pan, step, t, nt);
        if (len > most) most = len;
    }
    return ((double)most - (double)n / (double)nt) * (double)K * (double)other / VLEN +
           PACK_STEPS * dup * (double)(nt - 1) / (double)nt;
}

/* Thread t of n_t: its share of the panels of N (split_n) or of M, packed into its own buffers
 * (a_floats for A, then B's) at work + t * per_thread. */
static void gemm_share(const gemm_args *g, float *work, size_t per_thread, size_t a_floats,
                       int split_n, ptrdiff_t t, ptrdiff_t n_t)
{
    float *apack = align64(work + (size_t)t * per_thread);
    float *bpack = align64(apack + a_floats);
    ptrdiff_t pan = split_n ? (g->N + FM_NR - 1) / FM_NR : (g->M + FM_MR - 1) / FM_MR;
    ptrdiff_t step = split_n ? FM_NR : FM_MR;
    ptrdiff_t lo = share_start(pan, step, t, n_t), hi = share_start(pan, step, t + 1, n_t);
    if (split_n)
        gemm_range(g, 0, g->M, lo, min_pd(hi, g->N), apack, bpack);
    else
        gemm_range(g, lo, min_pd(hi, g->M), 0, g->N, apack, bpack);
}

static int sgemm(const fm_kernels *self, int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N,
                 ptrdiff_t K, float alpha, const float *A, ptrdiff_t lda, const float *B,
                 ptrdiff_t ldb, float beta, float *C, ptrdiff_t ldc, const fm_epilogue *ep,
                 float *work, int nthreads)
{
    if (M <= 0 || N <= 0) return FM_OK;
    if (ep && !ep->bias && !ep->act && !ep->grad_act) ep = NULL; /* nothing to apply */
    if (use_dot(trans_a, N, K)) {
        gemm_args g = {trans_a, trans_b, M, N, K, alpha, beta, A, B, lda, ldb, ldc, C, ep};
        return sgemm_dot(self, &g, work, nthreads);
    }
    /* Narrow N with a transposed A (the weight gradient A^T dZ of a 10-class layer): N-wide
     * vectors would leave most lanes idle (10 of 16), so compute C^T = op(B)^T op(A)^T instead,
     * whose vectors run along M, with A in place as its B, and store its tiles transposed
     * (tile_store). Every element is the same chain of FMAs over k either way (a*b and b*a
     * round alike), so both give the same bits (rule 4) and the choice may depend on M. Worth it
     * from 1.25x fewer FMAs on: 256x10 on AVX-512 takes 10 x 16 vectors per k instead of
     * 256 x 1. (A row-major A would have to be packed transposed: that case takes the dot path.)
     */
    int tc = trans_a && 5 * fma_rows(N) * ((M + VLEN - 1) / VLEN)
                            < 4 * fma_rows(M) * ((N + VLEN - 1) / VLEN);
    if (tc) {
        const float *t = A;
        ptrdiff_t lt = lda, n = N;
        int tt = trans_a;
        trans_a = !trans_b, trans_b = !tt;
        A = B, lda = ldb, B = t, ldb = lt, N = M, M = n;
    }
    /* B must be packed when transposed; otherwise packing pays when its rows are far apart
     * (FM_PACK_B_LD, per ISA: an in-place panel's k steps then fall on few L1 sets, or each on a
     * new page) and there are enough rows of A to amortise the copy. */
    int pack_b = trans_b || (ldb >= FM_PACK_B_LD && M >= 4 * FM_MR);
    gemm_args g = {trans_a, trans_b, M, N, K, alpha, beta, A, B, lda, ldb, ldc, C, ep,
                   self->kc, self->mc, self->nc, pack_b, tc};
    /* K blocks of equal length, at most KC: 784 = 3 x 262 rather than 384 + 384 + 16, whose last
     * short block costs a full pass over C (512x512x784 on 2 threads: 151 -> 188-199 GFLOP/s). */
    if (K > g.kc) {
        ptrdiff_t blocks = (K + g.kc - 1) / g.kc;
        g.kc = (int)((K + blocks - 1) / blocks);
    }

    /* Threads split N or M; each thread owns whole tiles of C (rule 4) and packs into its own
     * buffers, so there is no barrier and no shared scratch. Whatever is not split, each thread
     * reads (or packs) in full, so: N when it has more panels, or enough for every thread,
     * unless split_cost finds M cheaper, because splitting N repeats the packing of A in every
     * thread or deals its panels unevenly (Zen 4, 2 threads, paired runs: 512x256x512 NN 7%
     * faster, 512x512x784 4%, 300x300x300 10%, 1000x100x100 15%; AVX2 alike or unchanged);
     * except
     *  - for a transposed A (the weight gradient X^T dZ, tall and narrow), where splitting M
     *    halves the packing of A and every thread reads the narrow B in place (Zen 4, 2 threads:
     *    784x512x128 TN 170 -> 199 GFLOP/s);
     *  - for a short K, where writing C is the cost: threads that share rows of C write
     *    interleaved pieces of each row, which ran 1.5-2.5x slower than whole rows per thread
     *    (Zen 4, 2 threads: 128x256x10 NT 74 -> 111 GFLOP/s, 512x512x32 73 -> 184; from K = 64
     *    on, no consistent difference).
     * A thread is worth waking only for a quarter MFLOP or more: libgomp's threads spin between
     * calls, so waking one costs about a microsecond. */
    ptrdiff_t pan_n = (N + FM_NR - 1) / FM_NR, pan_m = (M + FM_MR - 1) / FM_MR;
    int split_n = ((trans_a && !trans_b) || K <= 32) ? pan_n > pan_m
                                                     : (pan_n >= pan_m || pan_n >= 2 * nthreads);
    if (split_n && !(trans_a && !trans_b) && K > 32 && nthreads > 1) {
        double dup_a = (double)M * (double)K * (N / nthreads > 2 * FM_NR); /* gemm_range packs A */
        double dup_b = pack_b ? (double)K * (double)N : 0.0;
        split_n = split_cost(N, FM_NR, M, K, nthreads, dup_a) <
                  split_cost(M, FM_MR, N, K, nthreads, dup_b);
    }
    ptrdiff_t nt = gemm_threads(M, N, K, nthreads, split_n ? pan_n : pan_m);

    /* Scratch sized for this problem, not for the largest blocks: a small product then gets a
     * small heap block instead of a fresh mmap (glibc maps requests above its threshold anew on
     * every call, which costs more than an MLP-sized product itself). */
    size_t kc = (size_t)min_pd(g.kc, K > 0 ? K : 1);
    size_t a_floats = (size_t)((min_pd(self->mc, M) + FM_MR - 1) / FM_MR) * FM_MR * kc;
    size_t b_floats = pack_b ? kc * (size_t)((min_pd(self->nc, N) + FM_NR - 1) / FM_NR) * FM_NR : 0;
    size_t per_thread = a_floats + b_floats + 32; /* each align64 below moves up to 15 floats */
    float *own = NULL;
    if (!work) {
        own = malloc(per_thread * (size_t)nt * sizeof(float));
        if (!own) return FM_ENOMEM;
        work = own;
    }

    /* One thread runs its share directly: a libgomp region, even of one thread, ends in a
     * barrier that makes a futex system call (0.4 us, a third of a small product's call). */
    if (nt == 1) {
        gemm_share(&g, work, per_thread, a_floats, split_n, 0, 1);
    } else {
#pragma omp parallel num_threads((int)nt)
        gemm_share(&g, work, per_thread, a_floats, split_n, omp_get_thread_num(),
                   omp_get_num_threads());
    }
    free(own);
    return FM_OK;
}
