/* gemm_dot.h: the narrow-N path (FM_PATH_DOT): dot products along k.
 *
 * C[M, N] = op(A) op(B) for a row-major A and N well under VLEN (the forward pass of a 10-class
 * output layer, 128x256 by 256x10): N-wide vectors would leave most lanes idle. Each element is
 * instead a dot product of a row of A and a row of B^T, both read VLEN values of k at a time
 * (B^T is packed once per thread, unless B is stored transposed). Summation order (fastmlp.h):
 * lane l adds the products of k = l, l + VLEN, ... in k order with one FMA each, from zero, K
 * unblocked; then vsum_lanes adds the lanes as a fixed pairwise tree. The choice of this path
 * depends on N and K only, never on M (rule 4; use_dot in gemm_plan.h). */

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
        w[p] = vshuffle2(w[2 * p], w[2 * p + 1], lo) + vshuffle2(w[2 * p], w[2 * p + 1], hi);
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
         * per FMA the loop waits on loads (85aa6d3: benchmarks/results/gemm_rules.md, "dot
         * path"). "v" (x86) and "w" (aarch64) name any SIMD register. */
#if defined(__x86_64__)
        __asm__("" : "+v"(b));
#elif defined(__aarch64__)
        __asm__("" : "+w"(b));
#endif
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
        if (g->upd) update_block(g, i, rows, 0, n);
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
