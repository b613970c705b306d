/* gemm_ukernel.h: the micro-kernel and how a tile of it reaches C.
 *
 * Contract of the micro-kernel (what the loops guarantee and what it promises):
 *  1. A is read as MR rows: packed (kc steps of MR consecutive floats, rows past M zero-padded)
 *     when the block is reused across several B panels, else in place with its own strides.
 *     An in-place A never has a partial MR block: that one edge panel is packed, so the kernel
 *     always runs full MR rows and never reads outside the operand.
 *  2. B is either packed (kc steps of NR floats, zero-padded past N) or read in place from a
 *     row-major op(B) (row stride ldb); in place, the last panel's loads are masked to nb columns.
 *     A transposed B must be packed; a row-major one is packed only when its rows are at least
 *     FM_PACK_B_LD floats apart and A has rows enough to amortise the copy (plan_matmul). With few
 *     B panels (an MLP's narrow layers) A is not packed either: that is the small-problem path.
 *  3. Accumulators start at zero for every K block and add products in k order with one FMA
 *     each; C is combined as alpha*s + beta*C on the first block and C + alpha*s on later ones.
 *     Nothing here depends on M, on the tile's position or on the thread count (fastmlp.h rule 4).
 *  4. Only the valid mr x nr corner of the tile is read or written in C (masked vector stores).
 *  5. The epilogue runs once, on the last K block, on the values about to be stored; an
 *     update epilogue's optimizer step runs once per element, on a block of C once it is final
 *     (update_block).
 */

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
 * and a 10-class output's C^T (FM_PATH_BLOCKED_CT) 10, not 12. */
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

/* Whether the epilogue works on the tile's values (an update epilogue alone does not: it runs on
 * C afterwards, update_block). */
static inline int tile_epilogue(const fm_epilogue *ep)
{
    return ep && (ep->bias || ep->act != FM_ACT_IDENTITY || ep->grad_act != FM_ACT_IDENTITY);
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
        if (ep->act != FM_ACT_IDENTITY) x = vact_forward(x, ep->act, ep->slope);
        if (ep->grad_act != FM_ACT_IDENTITY) {
            vf y = ep->y ? vload_n(ep->y + i * ep->ldy + j, n) : vsplat(0.0f);
            vf z = ep->z ? vload_n(ep->z + i * ep->ldz + j, n) : vsplat(0.0f);
            x = vact_backward(x, y, z, ep->grad_act, ep->slope);
        }
    }
    if (n >= VLEN)
        vstore(c, x);
    else
        vstore_n(c, x, n);
}

/* The update epilogue (fastmlp.h) on the finished block rows [i0, i0 + rows) x columns
 * [j0, j0 + cols) of C (C's own coordinates): the optimizer steps each element with the gradient
 * just stored there. Run once a block is final, row by row: the gradient is read back from L1 or
 * L2, and the parameter and its state stream in long runs (stepping in the tile loop itself,
 * 32 floats of four arrays a row, measured slower than a pass of its own). */
static void update_block(const gemm_args *g, ptrdiff_t i0, ptrdiff_t rows, ptrdiff_t j0,
                         ptrdiff_t cols)
{
    const fm_update *up = g->ep->update;
    for (ptrdiff_t i = i0; i < i0 + rows; i++)
        for (ptrdiff_t j = j0; j < j0 + cols; j += VLEN) {
            ptrdiff_t at = i * g->ldc + j;
            int n = (int)min_pd(VLEN, j0 + cols - j);
            update_vector(g->upd, vload_n(g->C + at, n), up->p + at, up->s1 ? up->s1 + at : NULL,
                          up->s2 ? up->s2 + at : NULL, n);
        }
}

/* The mr x nr tile at (row, col) of the product computed, to C. With g->tc the product is C^T
 * (FM_PATH_BLOCKED_CT): the tile is transposed VLEN x VLEN in registers, so each of its columns
 * becomes a piece of a row of C. */
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
