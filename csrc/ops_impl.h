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
 */
#include <math.h>

#define MIN_PER_THREAD 32768

static inline int threads_for(ptrdiff_t work, int nthreads)
{
    ptrdiff_t nt = work / MIN_PER_THREAD;
    if (nt > nthreads) nt = nthreads;
    return nt < 1 ? 1 : (int)nt;
}

/* ---- Activations ------------------------------------------------------------------------------ */

/* Z[M,N], bias[N] -> Y[M,N] = act(Z + bias) */
static void bias_activation(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *bias, int act,
                            float slope, float *Y, int nthreads)
{
    if (M <= 0 || N <= 0) return; /* rule 1, without a loop over empty rows */
#pragma omp parallel for num_threads(threads_for(M * N, nthreads)) schedule(static)
    for (ptrdiff_t i = 0; i < M; i++) {
        for (ptrdiff_t j = 0; j < N; j += VLEN) {
            int n = (int)(N - j);
            vf x = vload_n(Z + i * N + j, n);
            if (bias) x = x + vload_n(bias + j, n);
            vstore_n(Y + i * N + j, vact_forward(x, act, slope), n);
        }
    }
}

/* dY[M,N], Y[M,N] or Z[M,N] -> dZ[M,N] = dY * act'(.) */
static void activation_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                                const float *Z, int act, float slope, float *dZ, int nthreads)
{
    if (M <= 0 || N <= 0) return;
#pragma omp parallel for num_threads(threads_for(M * N, nthreads)) schedule(static)
    for (ptrdiff_t i = 0; i < M; i++) {
        for (ptrdiff_t j = 0; j < N; j += VLEN) {
            int n = (int)(N - j);
            vf y = Y ? vload_n(Y + i * N + j, n) : vsplat(0.0f);
            vf z = Z ? vload_n(Z + i * N + j, n) : vsplat(0.0f);
            vf dy = vload_n(dY + i * N + j, n);
            vstore_n(dZ + i * N + j, vact_backward(dy, y, z, act, slope), n);
        }
    }
}

/* dZ[M,N] -> db[N]: column sums, each in row order (note b). Threads take column blocks. */
static void bias_grad(ptrdiff_t M, ptrdiff_t N, const float *dZ, float *db, int nthreads)
{
    ptrdiff_t nblk = (N + VLEN - 1) / VLEN;
    int nt = threads_for(M * N, nthreads);
    if (nt > nblk) nt = (int)(nblk > 0 ? nblk : 1);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (ptrdiff_t b = 0; b < nblk; b++) {
        ptrdiff_t j = b * VLEN;
        int n = (int)(N - j);
        vf s = vsplat(0.0f);
        for (ptrdiff_t i = 0; i < M; i++) s = s + vload_n(dZ + i * N + j, n);
        vstore_n(db + j, s, n);
    }
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

static double sum_rows(ptrdiff_t M, ptrdiff_t N, row_loss_fn f, const loss_ctx *c, int nthreads)
{
    double part[LOSS_BLOCKS];
    ptrdiff_t nb = M < LOSS_BLOCKS ? M : LOSS_BLOCKS;
    if (nb == 0) return 0.0;
#pragma omp parallel for num_threads(threads_for(M * N, nthreads)) schedule(static)
    for (ptrdiff_t b = 0; b < nb; b++) {
        double s = 0.0;
        for (ptrdiff_t i = M * b / nb; i < M * (b + 1) / nb; i++) s += f(c, i, N);
        part[b] = s;
    }
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

/* ---- Optimizer updates: one pass over parameter, gradient and state -------------------------- */

static void sgd_update(ptrdiff_t n, float *p, const float *g, double lr_, double l2_, double mom_,
                       int nesterov, float *vel, int nthreads)
{
    float lr = (float)lr_, l2 = (float)l2_, mom = (float)mom_;
#pragma omp parallel for num_threads(threads_for(n, nthreads)) schedule(static)
    for (ptrdiff_t i = 0; i < n; i++) {
        float gi = g[i] + l2 * p[i];
        if (mom == 0.0f) {
            p[i] = p[i] - lr * gi;
        } else {
            float v = mom * vel[i] - lr * gi;
            vel[i] = v;
            p[i] = p[i] + (nesterov ? mom * v - lr * gi : v);
        }
    }
}

static void rmsprop_update(ptrdiff_t n, float *p, const float *g, float *sq, double lr_,
                           double rho_, double eps_, double l2_, int nthreads)
{
    float lr = (float)lr_, rho = (float)rho_, c = (float)(1.0 - rho_), eps = (float)eps_,
          l2 = (float)l2_;
#pragma omp parallel for num_threads(threads_for(n, nthreads)) schedule(static)
    for (ptrdiff_t i = 0; i < n; i++) {
        float gi = g[i] + l2 * p[i];
        float s = rho * sq[i] + c * (gi * gi);
        sq[i] = s;
        p[i] = p[i] - lr * gi / (sqrtf(s) + eps);
    }
}

/* The bias corrections are hoisted into one step size lr_t (scikit-learn's form). */
static void adam_update(ptrdiff_t n, float *p, const float *g, float *m, float *v, long step,
                        double lr_, double b1_, double b2_, double eps_, double l2_, double wd_,
                        int nthreads)
{
    double bc1 = 1.0 - pow(b1_, (double)step), bc2 = 1.0 - pow(b2_, (double)step);
    float lr_t = (float)(lr_ * sqrt(bc2) / bc1), decay = (float)(1.0 - lr_ * wd_);
    float b1 = (float)b1_, c1 = (float)(1.0 - b1_), b2 = (float)b2_, c2 = (float)(1.0 - b2_);
    float eps = (float)eps_, l2 = (float)l2_;
#pragma omp parallel for num_threads(threads_for(n, nthreads)) schedule(static)
    for (ptrdiff_t i = 0; i < n; i++) {
        float gi = g[i] + l2 * p[i];
        float mi = b1 * m[i] + c1 * gi;
        float vi_ = b2 * v[i] + c2 * (gi * gi);
        m[i] = mi;
        v[i] = vi_;
        p[i] = p[i] * decay - lr_t * mi / (sqrtf(vi_) + eps);
    }
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
