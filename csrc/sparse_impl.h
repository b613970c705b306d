/* sparse_impl.h: the sparse first layer, CSR rows times a dense matrix (sparse_matmul) and its
 * weight gradient (sparse_matmul_tn). Compiled once per ISA by isa_*.c, after simd.h and
 * ops_impl.h (threads_for, parallel_range, vact_forward); contracts in fastmlp.h, "Sparse first
 * layer".
 *
 * Design notes:
 *  a) Every element of C is one scalar chain: c = 0, then c = c + x * y over its terms in a fixed
 *     order, a multiply and an add (two roundings), never an FMA. Vectors run along N, whose
 *     lanes never meet, so neither the vector width nor the blocking of N changes a bit: the
 *     results are the same on every ISA and equal those of a plain float32 loop (the NumPy
 *     twin's). FMAs would buy little here: each term costs a load of a B (or C) vector picked by
 *     an index, and the loads, not the arithmetic, bound the loops.
 *  b) Forward: tasks of SP_ROWS rows of C on the thread team (pool.h; handed out dynamically:
 *     each row has one owner whatever the schedule, so a thread slowed by another process does
 *     not hold the others back). A row is computed SP_NV vectors of columns at a time, the
 *     accumulators in registers, the row's entries read once per block: one load per vector
 *     and term. Wide blocks also fetch B's rows in few, long pieces, which is what counts once
 *     B is out of cache (a first layer's K x N weights often are).
 *  c) Backward (C = A^T D): C's row k gathers the entries with index k from every row of the
 *     batch, so splitting the batch would make threads share C's rows. Instead the tasks (one a
 *     thread) split N's columns: each owns a strip of every row of C, zeroes it and adds its
 *     terms in (r, p) order; nothing is shared, nothing reduced. Each entry updates its whole
 *     strip of C's row (D's row stays in L1): a row of C out of cache is then fetched once per
 *     entry, not once per block of columns. Zeroing C costs O(K N) whatever the batch: with many
 *     features it is a large part of the call.
 *  d) Validation (rule 7) reads the entries of the rows used once, before anything is written;
 *     it also counts them, which sizes the thread team.
 */

#define SP_NV 8    /* vectors of columns per register block: 8 accumulators of 16 registers */
#define SP_ROWS 16 /* rows of C per task (forward) */

/* Rule 7 for the rows used: indptr[i] <= indptr[i + 1] and every index in [0, K) (the caller
 * guarantees that indptr[i] and indptr[i + 1] lie within the arrays). FM_OK or FM_EINVAL;
 * *nnz: the number of entries of those rows. */
static int sparse_check(ptrdiff_t M, ptrdiff_t K, const int64_t *indptr, const int32_t *indices,
                        const ptrdiff_t *rows, int64_t *nnz)
{
    int64_t total = 0;
    for (ptrdiff_t r = 0; r < M; r++) {
        ptrdiff_t i = rows ? rows[r] : r;
        int64_t lo = indptr[i], hi = indptr[i + 1];
        if (lo > hi) return FM_EINVAL;
        int bad = 0; /* no early exit: the loop stays branch-free and vectorizes */
        for (int64_t p = lo; p < hi; p++) bad |= (indices[p] < 0) | ((ptrdiff_t)indices[p] >= K);
        if (bad) return FM_EINVAL;
        total += hi - lo;
    }
    *nnz = total;
    return FM_OK;
}

/* ---- Forward --------------------------------------------------------------------------------- */

typedef struct {
    ptrdiff_t N;
    const int64_t *indptr;
    const int32_t *indices;
    const float *data;
    const ptrdiff_t *rows;
    const float *B;
    ptrdiff_t ldb;
    float *C;
    ptrdiff_t ldc;
    const float *bias; /* NULL: none */
    int act;
    float slope;
} sparse_fwd_args;

/* Columns [j, j + nv VLEN) of one row of C, the last vector n wide (n < VLEN: masked), from the
 * row's cnt entries (idx, val). nv and whether n < VLEN are constants after inlining, so the
 * accumulators stay in registers. */
static inline __attribute__((always_inline)) void
sparse_fwd_block(const sparse_fwd_args *g, int nv, int n, const int32_t *idx, const float *val,
                 int64_t cnt, ptrdiff_t j, float *c)
{
    vf acc[SP_NV];
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++) acc[v] = vsplat(0.0f);
    for (int64_t p = 0; p < cnt; p++) {
        const float *b = g->B + (ptrdiff_t)idx[p] * g->ldb + j;
        vf a = vsplat(val[p]);
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++) {
            vf x = v == nv - 1 && n < VLEN ? vload_n(b + v * VLEN, n) : vload(b + v * VLEN);
            acc[v] = acc[v] + a * x; /* note a: a multiply and an add, on every ISA */
        }
    }
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++) {
        int w = v == nv - 1 ? n : VLEN;
        vf x = acc[v];
        /* as fm_bias_activation does it, so fused and unfused give the same bits */
        if (g->bias) {
            const float *bias = g->bias + j + v * VLEN;
            x = x + (w < VLEN ? vload_n(bias, w) : vload(bias));
        }
        x = vact_forward(x, g->act, g->slope);
        if (w < VLEN)
            vstore_n(c + v * VLEN, x, w);
        else
            vstore(c + v * VLEN, x);
    }
}

/* Rows [r0, r1) of C (a range_fn: ctx is the sparse_fwd_args). */
static void sparse_fwd_rows(void *ctx, ptrdiff_t r0, ptrdiff_t r1)
{
    const sparse_fwd_args *g = ctx;
    const ptrdiff_t N = g->N, W = SP_NV * VLEN;
    for (ptrdiff_t r = r0; r < r1; r++) {
        ptrdiff_t i = g->rows ? g->rows[r] : r;
        int64_t lo = g->indptr[i], cnt = g->indptr[i + 1] - lo;
        const int32_t *idx = g->indices + lo;
        const float *val = g->data + lo;
        float *c = g->C + r * g->ldc;
        ptrdiff_t j = 0;
        for (; j + W <= N; j += W) sparse_fwd_block(g, SP_NV, VLEN, idx, val, cnt, j, c + j);
        /* the rest in at most 1 + 3 + 1 passes over the entries */
        if (j + W / 2 <= N) {
            sparse_fwd_block(g, SP_NV / 2, VLEN, idx, val, cnt, j, c + j);
            j += W / 2;
        }
        for (; j + VLEN <= N; j += VLEN) sparse_fwd_block(g, 1, VLEN, idx, val, cnt, j, c + j);
        if (j < N) sparse_fwd_block(g, 1, (int)(N - j), idx, val, cnt, j, c + j);
    }
}

/* C[M,N] = epilogue(A[rows] @ B) (fastmlp.h) */
static int sparse_matmul(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const int64_t *indptr,
                         const int32_t *indices, const float *data, const ptrdiff_t *rows,
                         const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc,
                         const fm_epilogue *ep, int nthreads)
{
    if (ep && (ep->grad_act != FM_ACT_IDENTITY || ep->update)) return FM_EINVAL; /* forward only */
    int64_t nnz;
    if (sparse_check(M, K, indptr, indices, rows, &nnz) != FM_OK) return FM_EINVAL;
    if (M <= 0 || N <= 0) return FM_OK; /* rule 1: nothing to write */
    sparse_fwd_args g = {N, indptr, indices, data, rows, B, ldb, C, ldc,
                         ep ? ep->bias : NULL, ep ? ep->act : FM_ACT_IDENTITY,
                         ep ? ep->slope : 0.0f};
    /* tasks of SP_ROWS rows on the team (ops_impl.h note d) */
    parallel_range(M, SP_ROWS, threads_for((ptrdiff_t)(nnz + M) * N, nthreads), sparse_fwd_rows,
                   &g);
    return FM_OK;
}

/* ---- Backward: the weight gradient ----------------------------------------------------------- */

typedef struct {
    ptrdiff_t M, K, N;
    const int64_t *indptr;
    const int32_t *indices;
    const float *data;
    const ptrdiff_t *rows;
    const float *D;
    ptrdiff_t ldd;
    float *C;
    ptrdiff_t ldc;
} sparse_tn_args;

/* The VLEN-column blocks [b0, b1) of every row of C (the last one may be partial): zeroed, then
 * for r ascending and p in storage order c[indices[p]] += data[p] * D[r]; each entry updates
 * the whole strip at once (note c). A range_fn: ctx is the sparse_tn_args. */
static void sparse_tn_columns(void *ctx, ptrdiff_t b0, ptrdiff_t b1)
{
    const sparse_tn_args *g = ctx;
    const ptrdiff_t j0 = b0 * VLEN, j1 = b1 * VLEN < g->N ? b1 * VLEN : g->N;
    /* locals: C's stores could alias *g, whose fields would then be reloaded after each one */
    const ptrdiff_t M = g->M, K = g->K, ldd = g->ldd, ldc = g->ldc;
    const int64_t *indptr = g->indptr;
    const int32_t *indices = g->indices;
    const float *data = g->data, *D = g->D;
    const ptrdiff_t *rows = g->rows;
    float *C = g->C;
    const ptrdiff_t full = j0 + (j1 - j0) / VLEN * VLEN; /* [full, j1): the masked tail */
    const int tail = (int)(j1 - full);
    /* memset: the C library's zeroing beats a loop of vector stores when C is large */
    if (j0 == 0 && j1 == ldc)
        memset(C, 0, sizeof(float) * (size_t)K * (size_t)ldc);
    else
        for (ptrdiff_t k = 0; k < K; k++)
            memset(C + k * ldc + j0, 0, sizeof(float) * (size_t)(j1 - j0));
    for (ptrdiff_t r = 0; r < M; r++) {
        ptrdiff_t i = rows ? rows[r] : r;
        const float *d = D + r * ldd;
        for (int64_t p = indptr[i], end = indptr[i + 1]; p < end; p++) {
            float *c = C + (ptrdiff_t)indices[p] * ldc;
            vf a = vsplat(data[p]);
#pragma GCC unroll 4
            for (ptrdiff_t j = j0; j < full; j += VLEN)
                vstore(c + j, vload(c + j) + a * vload(d + j)); /* note a */
            if (tail)
                vstore_n(c + full, vload_n(c + full, tail) + a * vload_n(d + full, tail), tail);
        }
    }
}

/* C[K,N] = A[rows]^T @ D (fastmlp.h) */
static int sparse_matmul_tn(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const int64_t *indptr,
                            const int32_t *indices, const float *data, const ptrdiff_t *rows,
                            const float *D, ptrdiff_t ldd, float *C, ptrdiff_t ldc, int nthreads)
{
    int64_t nnz;
    if (sparse_check(M, K, indptr, indices, rows, &nnz) != FM_OK) return FM_EINVAL;
    if (K <= 0 || N <= 0) return FM_OK; /* rule 1: C is empty */
    sparse_tn_args g = {M, K, N, indptr, indices, data, rows, D, ldd, C, ldc};
    ptrdiff_t nvec = (N + VLEN - 1) / VLEN;
    /* the work: C zeroed (K N) and one vector of terms per entry (nnz N) */
    int nt = threads_for((ptrdiff_t)(nnz + K) * N, nthreads);
    /* one task a thread, of whole vectors (each task reads all of A and D: more would read them
     * again); which task holds a column changes no bit (note a) */
    parallel_range(nvec, (nvec + nt - 1) / nt, nt, sparse_tn_columns, &g);
    return FM_OK;
}
