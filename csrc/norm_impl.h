/* norm_impl.h: LayerNorm and BatchNorm, each fused with the activation after it, their
 * backward passes, and global-norm gradient clipping. Compiled once per ISA by isa_*.c (after
 * ops_impl.h, whose threads_for and viota it uses); contracts in fastmlp.h.
 *
 * Design notes:
 *  a) Two-pass statistics: the mean, then the mean of (h - mean)^2. Welford's update would
 *     read H once instead of twice, but its per-element division serialises the row; a row of
 *     H is at most a few KiB, so the second read comes from L1, and the two-pass form has no
 *     E[h^2] - E[h]^2 cancellation when |mean| >> spread (the float32 test in test_norm.py
 *     holds rows with mean 1e4 and spread 1).
 *  b) Fusion: the forward writes act(gamma Hn + beta) straight from registers, and the backward
 *     recomputes Hn from (H, mean, rstd) and act' from Y (or z for gelu) instead of reading
 *     stored copies: each pass reads H and writes one array, where an unfused norm + activation
 *     writes and reads back one more M x N array in each direction.
 *  c) Threads: LayerNorm's statistics and dH are per row (threads take rows); every column sum
 *     (dgamma, dbeta, BatchNorm's statistics) is a VLEN-wide block of columns summed in row
 *     order by one thread (threads take blocks), as fm_bias_grad. No sum depends on the split.
 *  d) The backward kernels run their column sums in a first parallel pass that only reads dY,
 *     then write dH in a second: dH may alias dY without scratch memory.
 */

/* vf of the first n lanes of x, the rest 0 (a masked load already zeroes them; a difference
 * such as x - mean does not). */
static inline vf vfirst(vf x, int n) { return vselect(viota() < n, x, vsplat(0.0f)); }

/* The threads for a column-block pass: as threads_for, at most one per block. */
static inline int threads_for_blocks(ptrdiff_t work, ptrdiff_t nblk, int nthreads)
{
    int nt = threads_for(work, nthreads);
    return nt > nblk ? (int)(nblk > 0 ? nblk : 1) : nt;
}

/* ---- LayerNorm ------------------------------------------------------------------------------ */

/* H[M,N], gamma[N], beta[N] -> Y[M,N] = act(gamma Hn + beta), mean[M], rstd[M] */
static void layernorm_forward(ptrdiff_t M, ptrdiff_t N, const float *H, const float *gamma,
                              const float *beta, double eps_, int act, float slope, float *Y,
                              float *mean, float *rstd, int nthreads)
{
    if (M <= 0 || N <= 0) return;
    float eps = (float)eps_, inv_n = 1.0f / (float)N;
#pragma omp parallel for num_threads(threads_for(M * N, nthreads)) schedule(static)
    for (ptrdiff_t i = 0; i < M; i++) {
        const float *h = H + i * N;
        float *y = Y + i * N;
        vf s = vsplat(0.0f);
        for (ptrdiff_t j = 0; j < N; j += VLEN) s = s + vload_n(h + j, (int)(N - j));
        float mu = vsum(s) * inv_n;
        vf q = vsplat(0.0f);
        for (ptrdiff_t j = 0; j < N; j += VLEN) {
            int n = (int)(N - j);
            vf d = vfirst(vload_n(h + j, n) - mu, n);
            q = q + d * d;
        }
        float r = 1.0f / sqrtf(vsum(q) * inv_n + eps);
        mean[i] = mu;
        rstd[i] = r;
        for (ptrdiff_t j = 0; j < N; j += VLEN) {
            int n = (int)(N - j);
            vf x = (vload_n(h + j, n) - mu) * r;
            vf z = vload_n(gamma + j, n) * x + vload_n(beta + j, n);
            vstore_n(y + j, vact_forward(z, act, slope), n);
        }
    }
}

/* g = dY * act'(.) at one vector of a normalized row or column: act' from Y, or from
 * z = gamma Hn + beta (gelu). */
static inline vf norm_grad_act(vf dy, const float *y, vf hn, vf gamma, vf beta, int act,
                               float slope, int n)
{
    if (act == FM_ACT_IDENTITY) return dy;
    vf yv = act == FM_ACT_GELU ? vsplat(0.0f) : vload_n(y, n);
    vf z = act == FM_ACT_GELU ? gamma * hn + beta : vsplat(0.0f);
    return vact_backward(dy, yv, z, act, slope);
}

/* dgamma[N] = sum_i g Hn, dbeta[N] = sum_i g, column blocks in row order (notes c, d). The
 * statistics are per row (LayerNorm: stat_stride 1 along rows) or per column (BatchNorm). */
static void norm_column_grads(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                              const float *H, const float *gamma, const float *beta,
                              const float *mean, const float *rstd, int per_row, int act,
                              float slope, float *dgamma, float *dbeta, int nthreads)
{
    ptrdiff_t nblk = (N + VLEN - 1) / VLEN;
#pragma omp parallel for num_threads(threads_for_blocks(M * N, nblk, nthreads)) schedule(static)
    for (ptrdiff_t b = 0; b < nblk; b++) {
        ptrdiff_t j = b * VLEN;
        int n = (int)(N - j);
        vf ga = vload_n(gamma + j, n), be = vload_n(beta + j, n);
        vf mu_c = per_row ? vsplat(0.0f) : vload_n(mean + j, n);
        vf r_c = per_row ? vsplat(0.0f) : vload_n(rstd + j, n);
        vf dg = vsplat(0.0f), db = vsplat(0.0f);
        for (ptrdiff_t i = 0; i < M; i++) {
            vf mu = per_row ? vsplat(mean[i]) : mu_c, r = per_row ? vsplat(rstd[i]) : r_c;
            vf hn = (vload_n(H + i * N + j, n) - mu) * r;
            vf g = norm_grad_act(vload_n(dY + i * N + j, n), Y + i * N + j, hn, ga, be, act,
                                 slope, n);
            dg = dg + g * hn;
            db = db + g;
        }
        vstore_n(dgamma + j, dg, n);
        vstore_n(dbeta + j, db, n);
    }
}

/* dY[M,N] -> dH[M,N], dgamma[N], dbeta[N] */
static void layernorm_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                               const float *H, const float *gamma, const float *beta,
                               const float *mean, const float *rstd, int act, float slope,
                               float *dH, float *dgamma, float *dbeta, int nthreads)
{
    if (N <= 0) return;
    if (M <= 0) { /* rule 1 writes nothing; but the column sums of no rows are 0 */
        memset(dgamma, 0, (size_t)N * sizeof(float));
        memset(dbeta, 0, (size_t)N * sizeof(float));
        return;
    }
    norm_column_grads(M, N, dY, Y, H, gamma, beta, mean, rstd, 1, act, slope, dgamma, dbeta,
                      nthreads);
    float inv_n = 1.0f / (float)N;
#pragma omp parallel for num_threads(threads_for(M * N, nthreads)) schedule(static)
    for (ptrdiff_t i = 0; i < M; i++) {
        const float *h = H + i * N, *dy = dY + i * N, *y = Y ? Y + i * N : NULL;
        float *dh = dH + i * N;
        float mu = mean[i], r = rstd[i];
        vf s1 = vsplat(0.0f), s2 = vsplat(0.0f);
        for (ptrdiff_t j = 0; j < N; j += VLEN) {
            int n = (int)(N - j);
            vf ga = vload_n(gamma + j, n);
            vf hn = vfirst((vload_n(h + j, n) - mu) * r, n);
            vf gh = norm_grad_act(vload_n(dy + j, n), y ? y + j : NULL, hn, ga,
                                  vload_n(beta + j, n), act, slope, n) * ga;
            s1 = s1 + gh;
            s2 = s2 + gh * hn;
        }
        float m1 = vsum(s1) * inv_n, m2 = vsum(s2) * inv_n;
        for (ptrdiff_t j = 0; j < N; j += VLEN) {
            int n = (int)(N - j);
            vf ga = vload_n(gamma + j, n);
            vf hn = (vload_n(h + j, n) - mu) * r;
            vf gh = norm_grad_act(vload_n(dy + j, n), y ? y + j : NULL, hn, ga,
                                  vload_n(beta + j, n), act, slope, n) * ga;
            vstore_n(dh + j, ((gh - m1) - hn * m2) * r, n);
        }
    }
}

/* ---- BatchNorm ------------------------------------------------------------------------------ */

/* H[M,N], gamma[N], beta[N] -> Y[M,N] = act(gamma Hn + beta), mean[N], rstd[N] (and the
 * running statistics in training) */
static void batchnorm_forward(ptrdiff_t M, ptrdiff_t N, const float *H, const float *gamma,
                              const float *beta, double eps_, int training, double momentum_,
                              float *running_mean, float *running_var, int act, float slope,
                              float *Y, float *mean, float *rstd, int nthreads)
{
    if (N <= 0 || (training && M <= 0)) return;
    float eps = (float)eps_, mom = (float)momentum_, keep = (float)(1.0 - momentum_);
    float inv_m = M > 0 ? 1.0f / (float)M : 0.0f;
    float unbias = M > 1 ? (float)((double)M / (double)(M - 1)) : 1.0f;
    int update = training && running_mean && running_var;
    ptrdiff_t nblk = (N + VLEN - 1) / VLEN;
    /* statistics: column blocks, each column in row order (note c) */
#pragma omp parallel for num_threads(threads_for_blocks(M * N, nblk, nthreads)) schedule(static)
    for (ptrdiff_t b = 0; b < nblk; b++) {
        ptrdiff_t j = b * VLEN;
        int n = (int)(N - j);
        vf mu, var;
        if (training) {
            vf s = vsplat(0.0f), q = vsplat(0.0f);
            for (ptrdiff_t i = 0; i < M; i++) s = s + vload_n(H + i * N + j, n);
            mu = s * inv_m;
            for (ptrdiff_t i = 0; i < M; i++) {
                vf d = vload_n(H + i * N + j, n) - mu;
                q = q + d * d;
            }
            var = q * inv_m;
            if (update) {
                vstore_n(running_mean + j, vload_n(running_mean + j, n) * keep + mu * mom, n);
                vstore_n(running_var + j,
                         vload_n(running_var + j, n) * keep + (var * unbias) * mom, n);
            }
        } else {
            mu = vload_n(running_mean + j, n);
            var = vload_n(running_var + j, n);
        }
        vf r = vsplat(1.0f);
        for (int l = 0; l < VLEN; l++) r[l] = 1.0f / sqrtf(var[l] + eps);
        vstore_n(mean + j, mu, n);
        vstore_n(rstd + j, r, n);
    }
    if (M <= 0) return;
    /* the normalization and activation: rows, as bias_activation */
#pragma omp parallel for num_threads(threads_for(M * N, nthreads)) schedule(static)
    for (ptrdiff_t i = 0; i < M; i++) {
        for (ptrdiff_t j = 0; j < N; j += VLEN) {
            int n = (int)(N - j);
            vf x = (vload_n(H + i * N + j, n) - vload_n(mean + j, n)) * vload_n(rstd + j, n);
            vf z = vload_n(gamma + j, n) * x + vload_n(beta + j, n);
            vstore_n(Y + i * N + j, vact_forward(z, act, slope), n);
        }
    }
}

/* dY[M,N] -> dH[M,N], dgamma[N], dbeta[N] of a training forward */
static void batchnorm_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                               const float *H, const float *gamma, const float *beta,
                               const float *mean, const float *rstd, int act, float slope,
                               float *dH, float *dgamma, float *dbeta, int nthreads)
{
    if (N <= 0) return;
    if (M <= 0) {
        memset(dgamma, 0, (size_t)N * sizeof(float));
        memset(dbeta, 0, (size_t)N * sizeof(float));
        return;
    }
    norm_column_grads(M, N, dY, Y, H, gamma, beta, mean, rstd, 0, act, slope, dgamma, dbeta,
                      nthreads);
    float inv_m = 1.0f / (float)M;
#pragma omp parallel for num_threads(threads_for(M * N, nthreads)) schedule(static)
    for (ptrdiff_t i = 0; i < M; i++) {
        for (ptrdiff_t j = 0; j < N; j += VLEN) {
            int n = (int)(N - j);
            vf ga = vload_n(gamma + j, n), r = vload_n(rstd + j, n);
            vf hn = (vload_n(H + i * N + j, n) - vload_n(mean + j, n)) * r;
            vf g = norm_grad_act(vload_n(dY + i * N + j, n), Y ? Y + i * N + j : NULL, hn, ga,
                                 vload_n(beta + j, n), act, slope, n);
            vf c1 = vload_n(dbeta + j, n) * inv_m, c2 = vload_n(dgamma + j, n) * inv_m;
            vstore_n(dH + i * N + j, (ga * r) * ((g - c1) - hn * c2), n);
        }
    }
}

/* ---- Global-norm gradient clipping ----------------------------------------------------------- */

#define CLIP_BLOCKS 256

typedef double vd __attribute__((vector_size(VLEN * sizeof(double))));

/* g[n] -> ||g||, and g scaled to max_norm if larger */
static double clip_grad_norm(ptrdiff_t n, float *g, double max_norm, int nthreads)
{
    if (n <= 0) return 0.0;
    double part[CLIP_BLOCKS];
    ptrdiff_t nb = (n + VLEN - 1) / VLEN;
    if (nb > CLIP_BLOCKS) nb = CLIP_BLOCKS;
#pragma omp parallel for num_threads(threads_for(n, nthreads)) schedule(static)
    for (ptrdiff_t b = 0; b < nb; b++) {
        ptrdiff_t lo = n * b / nb, hi = n * (b + 1) / nb;
        vd acc = {0};
        for (ptrdiff_t i = lo; i < hi; i += VLEN) {
            vd x = __builtin_convertvector(vload_n(g + i, (int)(hi - i)), vd);
            acc = acc + x * x;
        }
        double s = 0.0;
        for (int l = 0; l < VLEN; l++) s += acc[l];
        part[b] = s;
    }
    double total = 0.0;
    for (ptrdiff_t b = 0; b < nb; b++) total += part[b];
    double norm = sqrt(total);
    if (max_norm > 0.0 && norm > max_norm) {
        float scale = (float)(max_norm / (norm + 1e-6));
#pragma omp parallel for num_threads(threads_for(n, nthreads)) schedule(static)
        for (ptrdiff_t i = 0; i < n; i++) g[i] = g[i] * scale;
    }
    return norm;
}
