/* ops_impl.h: every kernel other than GEMM (activations, bias gradient, losses, optimizers) and
 * the peak-FLOP probe. Compiled once per ISA by isa_*.c (after simd.h); contracts in fastmlp.h.
 *
 * Design notes:
 *  a) Elementwise kernels split rows (or flat chunks) between threads; each element's arithmetic
 *     is the same whatever the split, so results do not depend on the thread count.
 *  b) Reductions of results never use an OpenMP reduction clause (its combination order is unspecified):
 *     the bias gradient sums each column in row order; losses sum per-row terms in fixed blocks
 *     of rows and then the blocks in order, in double.
 *  c) Threads are used only above a size where they pay for their wake-up (MIN_PER_THREAD
 *     elements each).
 *  d) The kernels of a training step run on fastmlp's thread team (pool.h) in tasks of about
 *     TASK_ELEMS elements: whoever is running takes the next task, so a descheduled thread
 *     delays a call by one task at most, not by its whole share.
 */
#include <math.h>

#define MIN_PER_THREAD 32768
#define TASK_ELEMS 8192

static inline int threads_for(ptrdiff_t work, int nthreads)
{
    ptrdiff_t nt = work / MIN_PER_THREAD;
    if (nt > nthreads) nt = nthreads;
    return nt < 1 ? 1 : (int)nt;
}

/* f(ctx, lo, hi) over [0, n) in tasks of `chunk` indices on the team (note d). */
typedef void (*range_fn)(void *ctx, ptrdiff_t lo, ptrdiff_t hi);
typedef struct {
    range_fn f;
    void *ctx;
    ptrdiff_t n, chunk;
} range_job;

static void range_task(void *c, ptrdiff_t task, int slot)
{
    const range_job *j = c;
    (void)slot;
    ptrdiff_t lo = task * j->chunk, hi = lo + j->chunk < j->n ? lo + j->chunk : j->n;
    j->f(j->ctx, lo, hi);
}

static void parallel_range(ptrdiff_t n, ptrdiff_t chunk, int nthreads, range_fn f, void *ctx)
{
    if (chunk < 1) chunk = 1;
    range_job j = {f, ctx, n, chunk};
    fm_pool_run(nthreads, (n + chunk - 1) / chunk, range_task, &j);
}

/* Rows per task of an M x N elementwise kernel (note d). */
static inline ptrdiff_t row_chunk(ptrdiff_t N) { return N >= TASK_ELEMS ? 1 : TASK_ELEMS / N; }

/* VLEN-column blocks per task of a kernel that works down the columns of an M-row matrix (note
 * d): at least a cache line (64 bytes) of every row, so that no two tasks share one. */
static inline ptrdiff_t col_chunk(ptrdiff_t M)
{
    ptrdiff_t line = VLEN >= 16 ? 1 : 16 / VLEN;
    ptrdiff_t per = M > 0 ? TASK_ELEMS / (M * VLEN) : line;
    return per < line ? line : per;
}

/* ---- Activations ------------------------------------------------------------------------------ */

typedef struct {
    ptrdiff_t N;
    const float *Z, *bias, *dY, *Y;
    float *out;
    int act;
    float slope;
} act_ctx;

static void bias_activation_rows(void *ctx, ptrdiff_t lo, ptrdiff_t hi)
{
    const act_ctx *c = ctx;
    ptrdiff_t N = c->N;
    for (ptrdiff_t i = lo; i < hi; i++) {
        for (ptrdiff_t j = 0; j < N; j += VLEN) {
            int n = (int)(N - j);
            vf x = vload_n(c->Z + i * N + j, n);
            if (c->bias) x = x + vload_n(c->bias + j, n);
            vstore_n(c->out + i * N + j, vact_forward(x, c->act, c->slope), n);
        }
    }
}

/* Z[M,N], bias[N] -> Y[M,N] = act(Z + bias) */
static void bias_activation(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *bias, int act,
                            float slope, float *Y, int nthreads)
{
    if (M <= 0 || N <= 0) return; /* rule 1, without a loop over empty rows */
    act_ctx c = {N, Z, bias, NULL, NULL, Y, act, slope};
    parallel_range(M, row_chunk(N), threads_for(M * N, nthreads), bias_activation_rows, &c);
}

static void activation_backward_rows(void *ctx, ptrdiff_t lo, ptrdiff_t hi)
{
    const act_ctx *c = ctx;
    ptrdiff_t N = c->N;
    for (ptrdiff_t i = lo; i < hi; i++) {
        for (ptrdiff_t j = 0; j < N; j += VLEN) {
            int n = (int)(N - j);
            vf y = c->Y ? vload_n(c->Y + i * N + j, n) : vsplat(0.0f);
            vf z = c->Z ? vload_n(c->Z + i * N + j, n) : vsplat(0.0f);
            vf dy = vload_n(c->dY + i * N + j, n);
            vstore_n(c->out + i * N + j, vact_backward(dy, y, z, c->act, c->slope), n);
        }
    }
}

/* dY[M,N], Y[M,N] or Z[M,N] -> dZ[M,N] = dY * act'(.) */
static void activation_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                                const float *Z, int act, float slope, float *dZ, int nthreads)
{
    if (M <= 0 || N <= 0) return;
    act_ctx c = {N, Z, NULL, dY, Y, dZ, act, slope};
    parallel_range(M, row_chunk(N), threads_for(M * N, nthreads), activation_backward_rows, &c);
}

typedef struct {
    ptrdiff_t M, N;
    const float *dZ;
    float *db;
} bias_grad_ctx;

/* Column blocks [lo, hi), BIAS_GROUP at a time: each row of a group is BIAS_GROUP contiguous
 * vectors, summed into as many accumulators. One strip of VLEN columns at a time would walk dZ
 * with a stride of a whole row per vector (a new page every row or two, no prefetch) and wait
 * on one chain of adds. Each column is still summed in row order. */
#define BIAS_GROUP 8
static void bias_grad_blocks(void *ctx, ptrdiff_t lo, ptrdiff_t hi)
{
    const bias_grad_ctx *c = ctx;
    for (ptrdiff_t b = lo; b < hi; b += BIAS_GROUP) {
        int nb = (int)(hi - b < BIAS_GROUP ? hi - b : BIAS_GROUP);
        const float *col = c->dZ + b * VLEN;
        int n_last = (int)(c->N - (b + nb - 1) * VLEN); /* lanes of the group's last vector */
        vf s[BIAS_GROUP];
        for (int k = 0; k < BIAS_GROUP; k++) s[k] = vsplat(0.0f);
        if (nb == BIAS_GROUP && n_last >= VLEN) {
            for (ptrdiff_t i = 0; i < c->M; i++)
                for (int k = 0; k < BIAS_GROUP; k++) s[k] = s[k] + vload(col + i * c->N + k * VLEN);
        } else if (nb == 1) { /* a narrow layer's one block: one chain, kept in a register */
            for (ptrdiff_t i = 0; i < c->M; i++) s[0] = s[0] + vload_n(col + i * c->N, n_last);
        } else {
            for (ptrdiff_t i = 0; i < c->M; i++)
                for (int k = 0; k < nb; k++)
                    s[k] = s[k] + vload_n(col + i * c->N + k * VLEN, k < nb - 1 ? VLEN : n_last);
        }
        for (int k = 0; k < nb; k++)
            vstore_n(c->db + (b + k) * VLEN, s[k], k < nb - 1 ? VLEN : n_last);
    }
}

/* dZ[M,N] -> db[N]: column sums, each in row order (note b). Tasks take column blocks, whole
 * groups of them where the columns allow. */
static void bias_grad(ptrdiff_t M, ptrdiff_t N, const float *dZ, float *db, int nthreads)
{
    ptrdiff_t nblk = (N + VLEN - 1) / VLEN;
    if (nblk <= 0) return;
    ptrdiff_t per = col_chunk(M);
    if (per < BIAS_GROUP) per = BIAS_GROUP;
    bias_grad_ctx c = {M, N, dZ, db};
    parallel_range(nblk, per, threads_for(M * N, nthreads), bias_grad_blocks, &c);
}

/* ---- Losses -------------------------------------------------------------------------------------
 * Per-row work is independent; the loss is summed in at most LOSS_BLOCKS blocks of consecutive
 * rows (a block count that depends on M only), each in row order, then the blocks in order. */

#define LOSS_BLOCKS 256

static inline vi viota(void)
{
    vi r;
    for (int l = 0; l < VLEN; l++) r[l] = l;
    return r;
}

typedef struct {
    const float *Z, *T, *w;
    const int32_t *labels;
    float *dZ;
    float inv; /* 1 / M, or 1 / (M N) for the mean squared error */
} loss_ctx;

typedef double (*row_loss_fn)(const loss_ctx *c, ptrdiff_t i, ptrdiff_t N);

typedef struct {
    ptrdiff_t M, N, nb;
    row_loss_fn f;
    const loss_ctx *c;
    double *part;
} sum_rows_ctx;

static void sum_rows_blocks(void *ctx, ptrdiff_t lo, ptrdiff_t hi)
{
    const sum_rows_ctx *s = ctx;
    for (ptrdiff_t b = lo; b < hi; b++) {
        double acc = 0.0;
        for (ptrdiff_t i = s->M * b / s->nb; i < s->M * (b + 1) / s->nb; i++)
            acc += s->f(s->c, i, s->N);
        s->part[b] = acc;
    }
}

static double sum_rows(ptrdiff_t M, ptrdiff_t N, row_loss_fn f, const loss_ctx *c, int nthreads)
{
    double part[LOSS_BLOCKS];
    ptrdiff_t nb = M < LOSS_BLOCKS ? M : LOSS_BLOCKS;
    if (nb == 0) return 0.0;
    /* blocks per task: about TASK_ELEMS elements each (note d) */
    ptrdiff_t rows_per_block = (M + nb - 1) / nb, per = TASK_ELEMS / (rows_per_block * N);
    sum_rows_ctx s = {M, N, nb, f, c, part};
    parallel_range(nb, per, threads_for(M * N, nthreads), sum_rows_blocks, &s);
    double total = 0.0;
    for (ptrdiff_t b = 0; b < nb; b++) total += part[b];
    return total;
}

/* Softmax cross-entropy of row i; returns w_i * loss_i. The label's own term is kept apart so
 * confident predictions keep full precision: 1 - p_y = (sum of the other exponentials) / sum,
 * and when the label holds the maximum, log(sum) = log1p(sum of the others). The exponentials
 * are parked in dZ between the passes, which is why dZ may alias Z (z_y is read first). */
static double softmax_cross_entropy_row(const loss_ctx *c, ptrdiff_t i, ptrdiff_t N)
{
    const float *z = c->Z + i * N;
    float *dz = c->dZ + i * N;
    int32_t y = c->labels[i];
    float w = c->w ? c->w[i] : 1.0f, zy = z[y];

    vf mx = vsplat(-INFINITY);
    for (ptrdiff_t j = 0; j < N; j += VLEN) {
        vf x = vload_n(z + j, (int)(N - j));
        mx = vselect((viota() < (int32_t)(N - j)) & (x > mx), x, mx);
    }
    float m = vmaxval(mx);

    vf others = vsplat(0.0f);
    for (ptrdiff_t j = 0; j < N; j += VLEN) {
        int n = (int)(N - j);
        vf e = vexp(vload_n(z + j, n) - m);
        vstore_n(dz + j, e, n);
        vi keep = (viota() < n) & (viota() + (int32_t)j != y);
        others = others + vselect(keep, e, vsplat(0.0f));
    }
    float oth = vsum(others), total = oth + dz[y];
    double loss = zy == m ? log1p((double)oth) : log((double)total) + ((double)m - (double)zy);

    float scale = w * c->inv, r = 1.0f / total;
    for (ptrdiff_t j = 0; j < N; j += VLEN) {
        int n = (int)(N - j);
        vstore_n(dz + j, (vload_n(dz + j, n) * r) * scale, n);
    }
    dz[y] = -(oth * r) * scale;
    return (double)w * loss;
}

/* Sigmoid cross-entropy with logits of row i. With e = exp(-|z|), both sigmoid(z) and
 * 1 - sigmoid(z) are formed without cancellation, and the gradient (1-t) s - t (1-s) is exact in
 * sign and precise for hard targets. */
static double sigmoid_cross_entropy_row(const loss_ctx *c, ptrdiff_t i, ptrdiff_t N)
{
    const float *z = c->Z + i * N, *t = c->T + i * N;
    float *dz = c->dZ + i * N;
    float w = c->w ? c->w[i] : 1.0f, scale = w * c->inv;
    double loss = 0.0;
    for (ptrdiff_t j = 0; j < N; j++) {
        float e = expf(-fabsf(z[j]));
        float big = 1.0f / (1.0f + e), small = e / (1.0f + e);
        float s = z[j] >= 0.0f ? big : small, sm = z[j] >= 0.0f ? small : big;
        loss += (z[j] > 0.0f ? (double)z[j] : 0.0) - (double)z[j] * t[j] + log1p((double)e);
        dz[j] = ((1.0f - t[j]) * s - t[j] * sm) * scale;
    }
    return (double)w * loss;
}

static double mse_loss_row(const loss_ctx *c, ptrdiff_t i, ptrdiff_t N)
{
    const float *p = c->Z + i * N, *t = c->T + i * N;
    float *dp = c->dZ + i * N;
    float w = c->w ? c->w[i] : 1.0f, scale = w * c->inv;
    double loss = 0.0;
    for (ptrdiff_t j = 0; j < N; j++) {
        float d = p[j] - t[j];
        loss += 0.5 * (double)d * (double)d;
        dp[j] = d * scale;
    }
    return (double)w * loss;
}

/* Poisson deviance (log link) of row i; returns w_i * loss_i. The prediction exp(z) is a float,
 * as the network's output is: where it overflows (z > 88.7) the loss is infinite, not finite
 * beside an infinite gradient. */
static double poisson_loss_row(const loss_ctx *c, ptrdiff_t i, ptrdiff_t N)
{
    const float *z = c->Z + i * N, *t = c->T + i * N;
    float *dz = c->dZ + i * N;
    float w = c->w ? c->w[i] : 1.0f, scale = w * c->inv;
    double loss = 0.0;
    for (ptrdiff_t j = 0; j < N; j++) {
        float p = expf(z[j]);
        double tj = t[j], xlogx = tj > 0.0 ? tj * log(tj) : (tj == 0.0 ? 0.0 : NAN);
        loss += xlogx - tj * (double)z[j] - tj + (double)p;
        dz[j] = (p - t[j]) * scale;
    }
    return (double)w * loss;
}

static int softmax_cross_entropy(ptrdiff_t M, ptrdiff_t N, const float *Z, const int32_t *labels,
                                 const float *w, float *dZ, double *loss, int nthreads)
{
    for (ptrdiff_t i = 0; i < M; i++)
        if (labels[i] < 0 || labels[i] >= N) return FM_EINVAL;
    loss_ctx c = {Z, NULL, w, labels, dZ, M > 0 ? 1.0f / (float)M : 0.0f};
    *loss = M > 0 ? sum_rows(M, N, softmax_cross_entropy_row, &c, nthreads) / (double)M : 0.0;
    return FM_OK;
}

/* A loss of (Z, targets T) whose rows are summed over N and averaged over the M rows. */
static int target_loss(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *T, const float *w,
                       float *dZ, double *loss, int nthreads, row_loss_fn row)
{
    if (M <= 0 || N <= 0) { /* no terms: without a loop over empty rows */
        *loss = 0.0;
        return FM_OK;
    }
    loss_ctx c = {Z, T, w, NULL, dZ, 1.0f / (float)M};
    *loss = sum_rows(M, N, row, &c, nthreads) / (double)M;
    return FM_OK;
}

static int sigmoid_cross_entropy(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *T,
                                 const float *w, float *dZ, double *loss, int nthreads)
{
    return target_loss(M, N, Z, T, w, dZ, loss, nthreads, sigmoid_cross_entropy_row);
}

static int mse_loss(ptrdiff_t M, ptrdiff_t N, const float *P, const float *T, const float *w,
                    float *dP, double *loss, int nthreads)
{
    double mn = (double)M * (double)N;
    loss_ctx c = {P, T, w, NULL, dP, mn > 0 ? (float)(1.0 / mn) : 0.0f};
    *loss = mn > 0 ? sum_rows(M, N, mse_loss_row, &c, nthreads) / mn : 0.0;
    return FM_OK;
}

static int poisson_loss(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *T, const float *w,
                        float *dZ, double *loss, int nthreads)
{
    return target_loss(M, N, Z, T, w, dZ, loss, nthreads, poisson_loss_row);
}

/* ---- Optimizer updates: one pass over parameter, gradient and state (optim_impl.h holds the
 * arithmetic, shared with the GEMM's update epilogue) ---------------------------------------- */

static void update_range(void *ctx, ptrdiff_t lo, ptrdiff_t hi)
{
    const update_ctx *u = ctx;
    for (ptrdiff_t i = lo; i < hi; i += VLEN) {
        int n = (int)(hi - i < VLEN ? hi - i : VLEN);
        update_vector(u, vload_n(u->g + i, n), u->p + i, u->s1 ? u->s1 + i : NULL,
                      u->s2 ? u->s2 + i : NULL, n);
    }
}

static void run_update(ptrdiff_t n, update_ctx *u, const float *g, float *p, float *s1, float *s2,
                       int nthreads)
{
    u->g = g, u->p = p, u->s1 = s1, u->s2 = s2;
    parallel_range(n, 4 * TASK_ELEMS, threads_for(n, nthreads), update_range, u);
}

static void sgd_update(ptrdiff_t n, float *p, const float *g, double lr, double l2, double mom,
                       int nesterov, float *vel, int nthreads)
{
    fm_update up = {.kernel = FM_K_SGD_UPDATE, .lr = lr, .l2 = l2, .momentum = mom,
                    .nesterov = nesterov};
    update_ctx u = update_constants(&up);
    run_update(n, &u, g, p, vel, NULL, nthreads);
}

static void rmsprop_update(ptrdiff_t n, float *p, const float *g, float *sq, double lr,
                           double rho, double eps, double l2, int nthreads)
{
    fm_update up = {.kernel = FM_K_RMSPROP_UPDATE, .lr = lr, .l2 = l2, .rho = rho, .eps = eps};
    update_ctx u = update_constants(&up);
    run_update(n, &u, g, p, sq, NULL, nthreads);
}

static void adam_update(ptrdiff_t n, float *p, const float *g, float *m, float *v, long step,
                        double lr, double b1, double b2, double eps, double l2, double wd,
                        int nthreads)
{
    fm_update up = {.kernel = FM_K_ADAM_UPDATE, .step = step, .lr = lr, .l2 = l2, .beta1 = b1,
                    .beta2 = b2, .eps = eps, .weight_decay = wd};
    update_ctx u = update_constants(&up);
    run_update(n, &u, g, p, m, v, nthreads);
}

/* ---- Peak probe: 12 independent FMA chains per thread (more than latency x ports), timed ---- */

static double measure_peak_gflops(double seconds, int nthreads)
{
    double flops = 0.0, elapsed = 0.0;
#pragma omp parallel num_threads(nthreads) reduction(+ : flops) reduction(max : elapsed)
    {
        vf acc[12], a = vsplat(0.999999f), b = vsplat(1e-6f);
        for (int i = 0; i < 12; i++) acc[i] = vsplat(1.0f + (float)i * 1e-3f);
        double t0 = omp_get_wtime(), t = t0;
        long iters = 0;
        while (t - t0 < seconds) {
            for (int r = 0; r < 4096; r++) {
#pragma GCC unroll 12
                for (int i = 0; i < 12; i++) acc[i] = vfma(acc[i], a, b);
            }
            iters += 4096;
            t = omp_get_wtime();
        }
        float sink = 0.0f;
        for (int i = 0; i < 12; i++) sink += vsum(acc[i]);
        /* keep the chains alive: the sum is compared against a value it cannot have */
        if (sink == -1.0f) iters = 0;
        flops += 2.0 * VLEN * 12.0 * (double)iters;
        elapsed = t - t0;
    }
    return elapsed > 0 ? flops / elapsed * 1e-9 : 0.0;
}
