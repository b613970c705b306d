/* norm_impl.h: LayerNorm and BatchNorm, each fused with the activation after it, and global-norm
 * gradient clipping. Compiled once per ISA by isa_*.c (after simd.h and ops_impl.h, whose
 * threads_for, parallel_range, row_chunk and col_chunk it uses); contracts in fastmlp.h,
 * "Normalization".
 *
 * Design notes:
 *  a) Statistics are two-pass: the mean, then the mean of the squared deviations from it, both in
 *     float32. E[h^2] - E[h]^2 in one pass cancels catastrophically once |mean| is large against
 *     the spread (a pre-activation of mean 1e3 and std 1 keeps no correct digit of its variance in
 *     float32), and Welford's update needs a division per element and a serial dependency. The
 *     second pass reads data the first one just brought into cache (a LayerNorm row, a BatchNorm
 *     column strip of M x VLEN floats).
 *  b) Tasks follow the statistics, so that each statistic is summed within one task: LayerNorm's
 *     tasks take rows (a row's mean and variance are VLEN-lane vector sums in index order, then
 *     vsum_tree, a fixed pairwise tree), BatchNorm's take blocks of VLEN columns (each column
 *     summed in row order, one lane per column). LayerNorm's dgamma and dbeta are column sums, so
 *     its backward makes two calls: column blocks for them, then rows for dH. The tasks run on
 *     the thread team (pool.h, ops_impl.h note d), as every other kernel of a training step: an
 *     OpenMP region here would leave libgomp's threads spinning on the cores the team's next
 *     call needs.
 *  c) Determinism (rule 4): every output element, statistic and parameter gradient is computed by
 *     one task in an order fixed by M, N and VLEN, whichever thread runs it. So the bits do not
 *     depend on the thread count; they depend on the ISA through VLEN only in LayerNorm's row
 *     sums and clip_grad_norm's lanes (BatchNorm's column sums are those of a plain scalar loop
 *     on every ISA).
 *  d) No scratch and no pre-activation buffer: the backward kernels recompute Hn = (H - mean)
 *     rstd and, for gelu, z = gamma Hn + beta, with the same operations as the forward (a
 *     multiply and an add, never an FMA, so the recomputed z is the forward's bit for bit).
 *     dH may alias dY: every pass that writes dH reads each dY element before writing it, and
 *     the passes before it (LayerNorm's dgamma/dbeta loop, BatchNorm's sums over a column
 *     strip) end before any dH element they need is written.
 *  e) rstd = 1 / sqrt(var + eps) is computed in double from the float32 variance and rounded
 *     once (eps comes in double, as the optimizers' hyperparameters do).
 *  f) Padding lanes past N (vload_n, and so vld, zeroes them) are masked out of every row sum:
 *     0 - mean is not 0. Column sums never mix lanes, so BatchNorm's padding lanes are never
 *     stored.
 */

/* vload_n / vstore_n, with whole vectors through the plain load and store: the generic path's
 * masked forms are variable-length memcpy calls (the same values either way). */
static inline vf vld(const float *p, int n) { return n >= VLEN ? vload(p) : vload_n(p, n); }
static inline void vst(float *p, vf x, int n)
{
    if (n >= VLEN)
        vstore(p, x);
    else
        vstore_n(p, x, n);
}

/* x's lanes added as the pairwise tree that adds lane l and l + VLEN/2 first, then l + VLEN/4,
 * ... (the tree of gemm_dot.h's vsum_lanes, on one vector). */
static inline float vsum_tree(vf x)
{
#pragma GCC unroll 4
    for (int h = VLEN / 2; h >= 1; h /= 2)
        for (int l = 0; l < h; l++) x[l] = x[l] + x[l + h];
    return x[0];
}

static inline float rstd_of(float var, double eps)
{
    return (float)(1.0 / sqrt((double)var + eps));
}

/* The lanes of a vector starting at column j of an N-wide row that hold columns. */
static inline vi lanes_in(ptrdiff_t N, ptrdiff_t j) { return viota() < (int32_t)(N - j); }

/* The affine part of both normalizations, as forward and backward compute it (note d). */
static inline vf affine(vf hn, vf gamma, vf beta) { return gamma * hn + beta; }

/* A normalization kernel's arguments, for its tasks (parallel_range, ops_impl.h). Forward: out
 * is Y, and mean, rstd are written. Backward: out is dH, and the forward's statistics are read
 * from saved_mean, saved_rstd. */
typedef struct {
    ptrdiff_t M, N;
    const float *H, *gamma, *beta, *dY, *Y, *saved_mean, *saved_rstd;
    float *out, *mean, *rstd, *dgamma, *dbeta, *running_mean, *running_var;
    double eps, momentum;
    int act, training;
    float slope;
} norm_ctx;

/* ---- LayerNorm ---------------------------------------------------------------------------- */

static void layernorm_forward_rows(void *ctx, ptrdiff_t lo, ptrdiff_t hi)
{
    const norm_ctx *c = ctx;
    ptrdiff_t N = c->N;
    float fn = (float)N; /* a division per row: one rounding, where a product with a rounded
                          * reciprocal would take two */
    for (ptrdiff_t i = lo; i < hi; i++) {
        const float *h = c->H + i * N;
        vf s = vsplat(0.0f);
        for (ptrdiff_t j = 0; j < N; j += VLEN) s = s + vld(h + j, (int)(N - j));
        float mu = vsum_tree(s) / fn;
        vf q = vsplat(0.0f);
        for (ptrdiff_t j = 0; j < N; j += VLEN) {
            vf d = vld(h + j, (int)(N - j)) - mu;
            q = q + vselect(lanes_in(N, j), d * d, vsplat(0.0f));
        }
        float rs = rstd_of(vsum_tree(q) / fn, c->eps);
        /* Y may alias H: each element is read before it is written, the statistics are done */
        for (ptrdiff_t j = 0; j < N; j += VLEN) {
            int n = (int)(N - j);
            vf hn = (vld(h + j, n) - mu) * rs;
            vf z = affine(hn, vld(c->gamma + j, n), vld(c->beta + j, n));
            vst(c->out + i * N + j, vact_forward(z, c->act, c->slope), n);
        }
        c->mean[i] = mu;
        c->rstd[i] = rs;
    }
}

static void layernorm_forward(ptrdiff_t M, ptrdiff_t N, const float *H, const float *gamma,
                              const float *beta, double eps, int act, float slope, float *Y,
                              float *mean, float *rstd, int nthreads)
{
    if (M <= 0 || N <= 0) return; /* rule 1 */
    norm_ctx c = {.M = M, .N = N, .H = H, .gamma = gamma, .beta = beta, .out = Y,
                  .mean = mean, .rstd = rstd, .eps = eps, .act = act, .slope = slope};
    parallel_range(M, row_chunk(N), threads_for(M * N, nthreads), layernorm_forward_rows, &c);
}

/* g = dY * act'(.) of one vector of row i at column j (n lanes), and Hn there. */
static inline vf norm_grad(const norm_ctx *c, vf gm, vf bt, vf mu, vf rs, ptrdiff_t off, int n,
                           vf *hn_out)
{
    vf hn = (vld(c->H + off, n) - mu) * rs;
    vf dy = vld(c->dY + off, n);
    vf y = c->Y ? vld(c->Y + off, n) : vsplat(0.0f);
    vf z = c->act == FM_ACT_GELU ? affine(hn, gm, bt) : vsplat(0.0f);
    *hn_out = hn;
    return vact_backward(dy, y, z, c->act, c->slope);
}

/* LayerNorm backward, pass 1, on the VLEN-column blocks [lo, hi): dgamma, dbeta. A task sweeps
 * the rows in order, accumulating in the outputs themselves (L1-resident): every column is still
 * summed in row order from 0, whatever the tasks, but H, dY and Y are read along their rows
 * rather than down VLEN-wide strips (narrower than a cache line on AVX2 and the generic path, so
 * that each line would be fetched once per block). */
static void layernorm_param_grad_blocks(void *ctx, ptrdiff_t lo, ptrdiff_t hi)
{
    const norm_ctx *c = ctx;
    ptrdiff_t N = c->N, j0 = lo * VLEN, j1 = hi * VLEN < N ? hi * VLEN : N;
    for (ptrdiff_t j = j0; j < j1; j += VLEN) {
        vst(c->dbeta + j, vsplat(0.0f), (int)(N - j));
        vst(c->dgamma + j, vsplat(0.0f), (int)(N - j));
    }
    for (ptrdiff_t i = 0; i < c->M; i++) {
        vf mu = vsplat(c->saved_mean[i]), rs = vsplat(c->saved_rstd[i]), hn;
        for (ptrdiff_t j = j0; j < j1; j += VLEN) {
            int n = (int)(N - j);
            vf g = norm_grad(c, vld(c->gamma + j, n), vld(c->beta + j, n), mu, rs, i * N + j, n,
                             &hn);
            vst(c->dbeta + j, vld(c->dbeta + j, n) + g, n);
            vst(c->dgamma + j, vld(c->dgamma + j, n) + g * hn, n);
        }
    }
}

/* LayerNorm backward, pass 2, on rows [lo, hi): dH. Per row: the means of gh = g gamma and of
 * gh Hn (lane sums in index order, then vsum_tree), then dH = rstd (gh - mean(gh) - Hn
 * mean(gh Hn)). */
static void layernorm_input_grad_rows(void *ctx, ptrdiff_t lo, ptrdiff_t hi)
{
    const norm_ctx *c = ctx;
    ptrdiff_t N = c->N;
    float fn = (float)N;
    for (ptrdiff_t i = lo; i < hi; i++) {
        vf mu = vsplat(c->saved_mean[i]), rs = vsplat(c->saved_rstd[i]), hn;
        vf s1 = vsplat(0.0f), s2 = vsplat(0.0f);
        for (ptrdiff_t j = 0; j < N; j += VLEN) {
            int n = (int)(N - j);
            vf gm = vld(c->gamma + j, n);
            vf gh = norm_grad(c, gm, vld(c->beta + j, n), mu, rs, i * N + j, n, &hn) * gm;
            vi in = lanes_in(N, j);
            s1 = s1 + vselect(in, gh, vsplat(0.0f));
            s2 = s2 + vselect(in, gh * hn, vsplat(0.0f));
        }
        float a = vsum_tree(s1) / fn, b = vsum_tree(s2) / fn;
        for (ptrdiff_t j = 0; j < N; j += VLEN) {
            int n = (int)(N - j);
            vf gm = vld(c->gamma + j, n);
            vf gh = norm_grad(c, gm, vld(c->beta + j, n), mu, rs, i * N + j, n, &hn) * gm;
            vst(c->out + i * N + j, rs * ((gh - a) - hn * b), n);
        }
    }
}

static void layernorm_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                               const float *H, const float *gamma, const float *beta,
                               const float *mean, const float *rstd, int act, float slope,
                               float *dH, float *dgamma, float *dbeta, int nthreads)
{
    if (M <= 0 || N <= 0) return;
    norm_ctx c = {.M = M, .N = N, .H = H, .gamma = gamma, .beta = beta, .dY = dY, .Y = Y,
                  .out = dH, .saved_mean = mean, .saved_rstd = rstd, .dgamma = dgamma,
                  .dbeta = dbeta, .act = act, .slope = slope};
    int nt = threads_for(M * N, nthreads);
    /* pass 1 reads all of dY before pass 2 writes dH, which may alias it: fm_pool_run returns
     * once every task of the call is done (note d) */
    parallel_range((N + VLEN - 1) / VLEN, col_chunk(M), nt,
                   layernorm_param_grad_blocks, &c);
    parallel_range(M, row_chunk(N), nt, layernorm_input_grad_rows, &c);
}

/* ---- BatchNorm ---------------------------------------------------------------------------- */

/* BatchNorm forward on the VLEN-column blocks [lo, hi), one strip of M x VLEN at a time. */
static void batchnorm_forward_blocks(void *ctx, ptrdiff_t lo, ptrdiff_t hi)
{
    const norm_ctx *c = ctx;
    ptrdiff_t M = c->M, N = c->N;
    int update = c->training && c->running_mean && c->running_var;
    /* PyTorch's BatchNorm1d: running = (1 - momentum) running + momentum batch, the variance
     * unbiased (M / (M - 1)); the coefficients rounded once from double */
    float mom = (float)c->momentum, keep = (float)(1.0 - c->momentum);
    float unbias = M > 1 ? (float)((double)M / (double)(M - 1)) : 1.0f;
    float fm = (float)M; /* divisions, as LayerNorm's */
    for (ptrdiff_t b = lo; b < hi; b++) {
        ptrdiff_t j = b * VLEN;
        int n = (int)(N - j);
        vf mu, rs = vsplat(0.0f);
        if (c->training) {
            vf s = vsplat(0.0f);
            for (ptrdiff_t i = 0; i < M; i++) s = s + vld(c->H + i * N + j, n);
            mu = s / fm;
            vf q = vsplat(0.0f);
            for (ptrdiff_t i = 0; i < M; i++) {
                vf d = vld(c->H + i * N + j, n) - mu;
                q = q + d * d;
            }
            vf var = q / fm;
            for (int l = 0; l < VLEN; l++) rs[l] = rstd_of(var[l], c->eps);
            if (update) {
                vf rm = vld(c->running_mean + j, n), rv = vld(c->running_var + j, n);
                vst(c->running_mean + j, keep * rm + mom * mu, n);
                vst(c->running_var + j, keep * rv + mom * (var * unbias), n);
            }
        } else {
            mu = vld(c->running_mean + j, n);
            vf var = vld(c->running_var + j, n);
            for (int l = 0; l < VLEN; l++) rs[l] = rstd_of(var[l], c->eps);
        }
        vf gm = vld(c->gamma + j, n), bt = vld(c->beta + j, n);
        /* Y may alias H: the statistics passes are over, each element is read before written */
        for (ptrdiff_t i = 0; i < M; i++) {
            vf hn = (vld(c->H + i * N + j, n) - mu) * rs;
            vst(c->out + i * N + j, vact_forward(affine(hn, gm, bt), c->act, c->slope), n);
        }
        vst(c->mean + j, mu, n);
        vst(c->rstd + j, rs, n);
    }
}

static void batchnorm_forward(ptrdiff_t M, ptrdiff_t N, const float *H, const float *gamma,
                              const float *beta, double eps, int training, double momentum,
                              float *running_mean, float *running_var, int act, float slope,
                              float *Y, float *mean, float *rstd, int nthreads)
{
    if (M <= 0 || N <= 0) return; /* rule 1 (inference with M == 0 included) */
    norm_ctx c = {.M = M, .N = N, .H = H, .gamma = gamma, .beta = beta, .out = Y, .mean = mean,
                  .rstd = rstd, .running_mean = running_mean, .running_var = running_var,
                  .eps = eps, .momentum = momentum, .act = act, .training = training,
                  .slope = slope};
    parallel_range((N + VLEN - 1) / VLEN, col_chunk(M), threads_for(M * N, nthreads),
                   batchnorm_forward_blocks, &c);
}

/* BatchNorm backward on the VLEN-column blocks [lo, hi). A strip's sums read all of its dY
 * before any dH of it is written (dH may alias dY). */
static void batchnorm_backward_blocks(void *ctx, ptrdiff_t lo, ptrdiff_t hi)
{
    const norm_ctx *c = ctx;
    ptrdiff_t M = c->M, N = c->N;
    float fm = (float)M;
    for (ptrdiff_t b = lo; b < hi; b++) {
        ptrdiff_t j = b * VLEN;
        int n = (int)(N - j);
        vf gm = vld(c->gamma + j, n), bt = vld(c->beta + j, n);
        vf mu = vld(c->saved_mean + j, n), rs = vld(c->saved_rstd + j, n), hn;
        vf sg = vsplat(0.0f), sgh = vsplat(0.0f);
        for (ptrdiff_t i = 0; i < M; i++) {
            vf g = norm_grad(c, gm, bt, mu, rs, i * N + j, n, &hn);
            sg = sg + g;
            sgh = sgh + g * hn;
        }
        vst(c->dbeta + j, sg, n);
        vst(c->dgamma + j, sgh, n);
        vf k = gm * rs, a = sg / fm, d = sgh / fm;
        for (ptrdiff_t i = 0; i < M; i++) {
            vf g = norm_grad(c, gm, bt, mu, rs, i * N + j, n, &hn);
            vst(c->out + i * N + j, k * ((g - a) - hn * d), n);
        }
    }
}

static void batchnorm_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                               const float *H, const float *gamma, const float *beta,
                               const float *mean, const float *rstd, int act, float slope,
                               float *dH, float *dgamma, float *dbeta, int nthreads)
{
    if (M <= 0 || N <= 0) return;
    norm_ctx c = {.M = M, .N = N, .H = H, .gamma = gamma, .beta = beta, .dY = dY, .Y = Y,
                  .out = dH, .saved_mean = mean, .saved_rstd = rstd, .dgamma = dgamma,
                  .dbeta = dbeta, .act = act, .slope = slope};
    parallel_range((N + VLEN - 1) / VLEN, col_chunk(M), threads_for(M * N, nthreads),
                   batchnorm_backward_blocks, &c);
}

/* ---- Gradient clipping -------------------------------------------------------------------
 * The sum of squares runs in at most CLIP_BLOCKS blocks of consecutive elements (a count that
 * depends on n only), each summed in double as VLEN lanes (squares of floats are exact in
 * double), the lanes as a pairwise tree, then the blocks in order. */

#define CLIP_BLOCKS 256

/* Doubles in a vector of vf's width: VLEN / 2 lanes (a VLEN-lane double vector would be two
 * registers, which GCC 12 keeps in memory). A vf's squares go to two of them: lanes 0 .. VLEN/2-1
 * and VLEN/2 .. VLEN-1. */
typedef double vdh __attribute__((vector_size(sizeof(vf))));
typedef float vfh __attribute__((vector_size(sizeof(vf) / 2)));

/* The pairwise tree of VLEN double lanes held as lo (lanes l) and hi (lanes VLEN/2 + l): its
 * first level is lo + hi. */
static inline double vdsum_tree(vdh lo, vdh hi)
{
    vdh x = lo + hi;
#pragma GCC unroll 4
    for (int h = VLEN / 4; h >= 1; h /= 2)
        for (int l = 0; l < h; l++) x[l] = x[l] + x[l + h];
    return x[0];
}

typedef struct {
    ptrdiff_t n, nb;
    float *g;
    float scale;
    double *part;
} clip_ctx;

/* The sums of squares of blocks [lo, hi) into part. */
static void clip_sum_blocks(void *ctx, ptrdiff_t lo, ptrdiff_t hi)
{
    const clip_ctx *c = ctx;
    for (ptrdiff_t b = lo; b < hi; b++) {
        ptrdiff_t k0 = c->n * b / c->nb, k1 = c->n * (b + 1) / c->nb;
        vdh acc_lo = {0}, acc_hi = {0}, x_lo, x_hi;
        for (ptrdiff_t k = k0; k < k1; k += VLEN) {
            vf x = vld(c->g + k, (int)(k1 - k));
            vfh h_lo, h_hi;
            memcpy(&h_lo, &x, sizeof h_lo);
            memcpy(&h_hi, (const char *)&x + sizeof h_lo, sizeof h_hi);
            x_lo = __builtin_convertvector(h_lo, vdh);
            x_hi = __builtin_convertvector(h_hi, vdh);
            acc_lo = acc_lo + x_lo * x_lo;
            acc_hi = acc_hi + x_hi * x_hi;
        }
        c->part[b] = vdsum_tree(acc_lo, acc_hi);
    }
}

static void clip_scale_range(void *ctx, ptrdiff_t lo, ptrdiff_t hi)
{
    const clip_ctx *c = ctx;
    for (ptrdiff_t k = lo; k < hi; k++) c->g[k] = c->g[k] * c->scale;
}

static double clip_grad_norm(ptrdiff_t n, float *g, double max_norm, int nthreads)
{
    double part[CLIP_BLOCKS];
    ptrdiff_t nb = n < CLIP_BLOCKS ? n : CLIP_BLOCKS;
    if (nb <= 0) return 0.0;
    int nt = threads_for(n, nthreads);
    clip_ctx c = {n, nb, g, 0.0f, part};
    ptrdiff_t per = 4 * TASK_ELEMS / (n / nb); /* blocks per task: about 4 TASK_ELEMS elements */
    parallel_range(nb, per, nt, clip_sum_blocks, &c);
    double total = 0.0;
    for (ptrdiff_t b = 0; b < nb; b++) total += part[b];
    double norm = sqrt(total);
    if (max_norm > 0.0 && norm > max_norm) { /* false for a NaN norm: g is left as it is */
        c.scale = (float)(max_norm / (norm + 1e-6));
        parallel_range(n, 4 * TASK_ELEMS, nt, clip_scale_range, &c);
    }
    return norm;
}
