/* test_kernels.c: the C core on its own, against plain C references computed in double: GEMM at
 * edge sizes with every epilogue (the update epilogue against the product then the update
 * kernel, bitwise), the elementwise kernels, every loss and every optimizer, on
 * every ISA path this build has and this CPU runs, and each result bitwise the same on 1, 2 and
 * 3 threads (fastmlp.h rule 4). It needs no Python: CI cross-compiles it for aarch64 and runs it
 * under qemu-user (tests/c/run.sh), and tests/core/test_c_kernels.py runs it natively.
 *
 * Tolerances are error bounds, not fitted constants: a product of K terms summed in float32 with
 * FMAs is within (K + 4) u sum_k |a_ik b_kj| of the exact sum (u = 2^-24); an activation adds
 * its Lipschitz constant times that and a few ulp of its own; losses and optimizers are a few
 * float32 operations per element (relative 1e-5 of the terms' scale). Exit status 0 when every
 * check passes; each failing check prints its case and worst element. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fastmlp.h"

static const double U = 5.9604644775390625e-8; /* 2^-24: float32's unit roundoff */
static int failures, checks;

/* ---- helpers ---------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double uniform(double lo, double hi) /* xorshift64*: the same data on every machine */
{
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return lo + (hi - lo) * (double)((rng_state * 2685821657736338717ull) >> 11) * 0x1p-53;
}

static float *randoms(size_t n, double lo, double hi)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = (float)uniform(lo, hi);
    return x;
}

static float *copy_of(const float *x, size_t n)
{
    float *y = malloc((n ? n : 1) * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    return y;
}

/* got[i] against want[i] within tol[i] (tol NULL: rtol |want| + atol); prints the worst. */
static void compare(const char *what, const char *isa, size_t n, const float *got,
                    const double *want, const double *tol, double rtol, double atol)
{
    size_t worst = 0;
    double worst_ratio = 0.0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double t = tol ? tol[i] : rtol * fabs(want[i]) + atol;
        double e = fabs((double)got[i] - want[i]);
        int nan_ok = isnan(want[i]) && isnan(got[i]);
        if (!nan_ok && !(e <= t)) bad = 1;
        double r = nan_ok ? 0.0 : (e <= t ? e / (t > 0 ? t : 1.0) : INFINITY);
        if (r > worst_ratio) worst_ratio = r, worst = i;
    }
    checks++;
    if (bad) {
        failures++;
        double t = tol ? tol[worst] : rtol * fabs(want[worst]) + atol;
        printf("FAIL %s [%s]: element %zu is %.9g, expected %.9g (tolerance %.3g)\n", what, isa,
               worst, (double)got[worst], want[worst], t);
    }
}

static void expect_same_bits(const char *what, const char *isa, const float *a, const float *b,
                             size_t n)
{
    checks++;
    if (memcmp(a, b, n * sizeof *a)) {
        failures++;
        size_t i = 0;
        while (i < n && !memcmp(a + i, b + i, sizeof *a)) i++;
        printf("FAIL %s [%s]: thread counts disagree at element %zu (%.9g vs %.9g)\n", what,
               isa, i, (double)a[i], (double)b[i]);
    }
}

/* ---- activations in double ---------------------------------------------------------------- */

static const double GELU_C = 0.7978845608028654, GELU_K = 0.044715, SLOPE = 0.01;

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

static double act_forward(int act, double x)
{
    switch (act) {
    case FM_ACT_RELU: return x < 0 ? 0.0 : x;
    case FM_ACT_LEAKY_RELU: return x < 0 ? SLOPE * x : x;
    case FM_ACT_TANH: return tanh(x);
    case FM_ACT_LOGISTIC: return sigmoid(x);
    case FM_ACT_GELU: return x * sigmoid(2.0 * GELU_C * (x + GELU_K * x * x * x));
    default: return x;
    }
}

/* act' from the output y, or (gelu) from the pre-activation z. *scale: what its rounding errors
 * are relative to. The others are products, accurate to their value; gelu' = s + term is a
 * difference that cancels near z = -0.75 and for z << 0, and s = sigmoid(u) is as accurate as
 * u, whose float32 rounding (a few ulp of |u|) moves s by s(1 - s) and term by about |term| per
 * unit of u. */
static double act_derivative(int act, double y, double z, double *scale)
{
    if (act == FM_ACT_GELU) {
        double u = 2.0 * GELU_C * (z + GELU_K * z * z * z), s = sigmoid(u);
        double term = z * s * (1.0 - s) * 2.0 * GELU_C * (1.0 + 3.0 * GELU_K * z * z);
        *scale = fabs(s) + fabs(term) + (s * (1.0 - s) + fabs(term)) * fabs(u) / 4.0;
        return s + term;
    }
    double d;
    switch (act) {
    case FM_ACT_RELU: d = y > 0 ? 1.0 : 0.0; break;
    case FM_ACT_LEAKY_RELU: d = y > 0 ? 1.0 : SLOPE; break;
    case FM_ACT_TANH: d = (1.0 - y) * (1.0 + y); break;
    case FM_ACT_LOGISTIC: d = y * (1.0 - y); break;
    default: d = 1.0;
    }
    *scale = fabs(d);
    return d;
}

/* A bound on |act'| over the reals, for the error an activation passes on. */
static double lipschitz(int act) { return act == FM_ACT_LOGISTIC ? 0.25 : act == FM_ACT_GELU ? 1.13 : 1.0; }

/* ---- GEMM --------------------------------------------------------------------------------- */

/* Epilogue cases: 0 none; 1 .. 6 bias + forward act (identity .. gelu); 7 .. 11 backward act. */
#define N_EPILOGUES 12

static void gemm_case(const char *isa, int ta, int tb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                      int epi, float alpha, float beta, int pad, int check_threads)
{
    ptrdiff_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    ptrdiff_t a_rows = ta ? K : M, b_rows = tb ? N : K;
    float *A = randoms((size_t)(a_rows * lda), -1, 1), *B = randoms((size_t)(b_rows * ldb), -1, 1);
    float *C0 = randoms((size_t)(M * ldc), -1, 1), *bias = randoms((size_t)N, -1, 1);
    float *Y = randoms((size_t)(M * N), -0.99, 0.99), *Z = randoms((size_t)(M * N), -4, 4);
    fm_epilogue ep = {NULL, FM_ACT_IDENTITY, FM_ACT_IDENTITY, (float)SLOPE, NULL, 0, NULL, 0};
    int act = FM_ACT_IDENTITY, grad_act = FM_ACT_IDENTITY;
    if (epi >= 1 && epi <= 6) {
        act = epi - 1;
        ep.bias = bias, ep.act = act;
    } else if (epi >= 7) {
        grad_act = (int[]){FM_ACT_RELU, FM_ACT_LEAKY_RELU, FM_ACT_TANH, FM_ACT_LOGISTIC,
                           FM_ACT_GELU}[epi - 7];
        if (grad_act == FM_ACT_LOGISTIC)
            for (ptrdiff_t i = 0; i < M * N; i++) Y[i] = 0.5f + 0.5f * Y[i];
        ep.grad_act = grad_act, ep.y = Y, ep.ldy = N, ep.z = Z, ep.ldz = N;
    }
    float *C = copy_of(C0, (size_t)(M * ldc));
    int status = fm_matmul(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                           epi ? &ep : NULL, NULL, 0, 2);
    double *want = malloc((size_t)(M * N + 1) * sizeof *want);
    double *tol = malloc((size_t)(M * N + 1) * sizeof *tol);
    float *got = malloc((size_t)(M * N + 1) * sizeof *got);
    for (ptrdiff_t i = 0; i < M; i++)
        for (ptrdiff_t j = 0; j < N; j++) {
            double s = 0.0, s_abs = 0.0;
            for (ptrdiff_t k = 0; k < K; k++) {
                double a = ta ? A[k * lda + i] : A[i * lda + k];
                double b = tb ? B[j * ldb + k] : B[k * ldb + j];
                s += a * b, s_abs += fabs(a * b);
            }
            double c0 = beta != 0.0f ? C0[i * ldc + j] : 0.0;
            double pre = alpha * s + beta * c0;
            double err = (double)(K + 4) * U * (fabs(alpha) * s_abs + fabs(beta * c0)) + 1e-37;
            double w = pre, t = err;
            if (act != FM_ACT_IDENTITY || ep.bias) {
                double x = pre + bias[j];
                w = act_forward(act, x);
                t = lipschitz(act) * (err + U * fabs(x)) + 16 * U * fabs(w) + 1e-37;
            } else if (grad_act != FM_ACT_IDENTITY) {
                double scale, d = act_derivative(grad_act, Y[i * N + j], Z[i * N + j], &scale);
                w = pre * d;
                t = err * fabs(d) + 16 * U * fabs(pre) * scale + 1e-37;
            }
            want[i * N + j] = w, tol[i * N + j] = t, got[i * N + j] = C[i * ldc + j];
        }
    char what[160];
    snprintf(what, sizeof what, "matmul ta=%d tb=%d M=%td N=%td K=%td epilogue=%d alpha=%g "
             "beta=%g pad=%d", ta, tb, M, N, K, epi, alpha, beta, pad);
    checks++;
    if (status != FM_OK) failures++, printf("FAIL %s [%s]: status %d\n", what, isa, status);
    compare(what, isa, (size_t)(M * N), got, want, tol, 0, 0);
    /* contract 4 of gemm_ukernel.h: the padding of C's rows is never written */
    int padding_kept = 1;
    for (ptrdiff_t i = 0; i < M; i++)
        for (ptrdiff_t j = N; j < ldc; j++) padding_kept &= C[i * ldc + j] == C0[i * ldc + j];
    checks++;
    if (!padding_kept) failures++, printf("FAIL %s [%s]: wrote C's row padding\n", what, isa);
    if (check_threads) {
        for (int nt = 1; nt <= 3; nt += 2) {
            float *C2 = copy_of(C0, (size_t)(M * ldc));
            fm_matmul(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C2, ldc, epi ? &ep : NULL,
                      NULL, 0, nt);
            expect_same_bits(what, isa, C, C2, (size_t)(M * ldc));
            free(C2);
        }
    }
    free(A), free(B), free(C0), free(C), free(bias), free(Y), free(Z);
    free(want), free(tol), free(got);
}

static void test_gemm(const char *isa)
{
    static const ptrdiff_t Ms[] = {1, 3, 6, 7, 13, 33, 97};
    static const ptrdiff_t Ns[] = {1, 3, 8, 10, 16, 17, 33, 65};
    static const ptrdiff_t Ks[] = {0, 1, 5, 17, 64, 300};
    static const float alphas[] = {1.0f, 0.5f, -2.0f}, betas[] = {0.0f, 1.0f, -0.5f};
    int n = 0;
    for (int t = 0; t < 4; t++)
        for (size_t im = 0; im < sizeof Ms / sizeof *Ms; im++)
            for (size_t in = 0; in < sizeof Ns / sizeof *Ns; in++)
                for (size_t ik = 0; ik < sizeof Ks / sizeof *Ks; ik++, n++)
                    gemm_case(isa, t & 1, t >> 1, Ms[im], Ns[in], Ks[ik], n % N_EPILOGUES,
                              alphas[n % 3], betas[(n / 3) % 3], n % 5 == 0 ? 3 : 0, 0);
    /* several cache blocks in every direction (KC, MC, NC of every ISA), packed panels, threads */
    static const ptrdiff_t big[][3] = {{200, 600, 520}, {513, 130, 70}, {64, 1100, 40},
                                       {300, 10, 800}, {257, 256, 385}};
    for (int t = 0; t < 4; t++)
        for (size_t c = 0; c < sizeof big / sizeof *big; c++)
            for (int epi = 0; epi < N_EPILOGUES; epi += 5)
                gemm_case(isa, t & 1, t >> 1, big[c][0], big[c][1], big[c][2], epi, 1.0f,
                          epi ? 0.0f : 1.0f, (int)c, 1);
}

/* The update epilogue (fastmlp.h): a product with an optimizer step on its result gives the
 * bits of the product followed by the update kernel: C, the parameter and its state. */
static void test_update_epilogue(const char *isa)
{
    /* dW-like products (A transposed, K the batch), a narrow N (FM_PATH_BLOCKED_CT), the dot
     * path (A in place, narrow N) and several K blocks */
    static const ptrdiff_t shapes[][4] = {{1, 37, 23, 16}, {1, 64, 10, 33}, {0, 50, 10, 70},
                                          {1, 100, 130, 700}, {0, 7, 65, 5}, {1, 3, 1, 1}};
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
        int ta = (int)shapes[c][0];
        ptrdiff_t M = shapes[c][1], N = shapes[c][2], K = shapes[c][3];
        size_t n = (size_t)(M * N);
        float *A = randoms((size_t)(M * K), -1, 1), *B = randoms((size_t)(K * N), -1, 1);
        float *p0 = randoms(n, -1, 1), *s10 = randoms(n, 0, 0.1), *s20 = randoms(n, 0, 0.1);
        for (int kind = 0; kind < 5; kind++) {
            fm_update up = {.lr = 0.01, .l2 = 1e-3, .momentum = kind == 1 ? 0.9 : 0.0,
                            .nesterov = kind == 1, .rho = 0.9, .beta1 = 0.9, .beta2 = 0.999,
                            .eps = 1e-8, .step = 4, .weight_decay = kind == 4 ? 0.01 : 0.0};
            up.kernel = kind <= 1 ? FM_K_SGD_UPDATE : kind == 2 ? FM_K_RMSPROP_UPDATE
                                                                : FM_K_ADAM_UPDATE;
            float *C1 = malloc(n * sizeof *C1), *C2 = malloc(n * sizeof *C2);
            float *p1 = copy_of(p0, n), *p2 = copy_of(p0, n), *a1 = copy_of(s10, n);
            float *a2 = copy_of(s10, n), *b1 = copy_of(s20, n), *b2 = copy_of(s20, n);
            ptrdiff_t lda = ta ? M : K;
            fm_matmul(ta, 0, M, N, K, 1.0f, A, lda, B, N, 0.0f, C1, N, NULL, NULL, 0, 2);
            if (kind <= 1)
                fm_sgd_update((ptrdiff_t)n, p1, C1, up.lr, up.l2, up.momentum, up.nesterov, a1, 2);
            else if (kind == 2)
                fm_rmsprop_update((ptrdiff_t)n, p1, C1, a1, up.lr, up.rho, up.eps, up.l2, 2);
            else
                fm_adam_update((ptrdiff_t)n, p1, C1, a1, b1, up.step, up.lr, up.beta1, up.beta2,
                               up.eps, up.l2, up.weight_decay, 2);
            up.p = p2, up.s1 = a2, up.s2 = up.kernel == FM_K_ADAM_UPDATE ? b2 : NULL;
            fm_epilogue ep = {NULL, FM_ACT_IDENTITY, FM_ACT_IDENTITY, 0.0f, NULL, 0, NULL, 0, &up};
            for (int nt = 1; nt <= 3; nt += 2) { /* the second call repeats the first's step */
                memcpy(p2, p0, n * sizeof *p2), memcpy(a2, s10, n * sizeof *a2);
                memcpy(b2, s20, n * sizeof *b2);
                fm_matmul(ta, 0, M, N, K, 1.0f, A, lda, B, N, 0.0f, C2, N, &ep, NULL, 0, nt);
                char what[96];
                snprintf(what, sizeof what, "update epilogue kernel=%d ta=%d M=%td N=%td K=%td "
                         "threads=%d", up.kernel, ta, M, N, K, nt);
                expect_same_bits(what, isa, C1, C2, n);
                expect_same_bits(what, isa, p1, p2, n);
                expect_same_bits(what, isa, a1, a2, n);
                expect_same_bits(what, isa, b1, b2, n);
            }
            free(C1), free(C2), free(p1), free(p2), free(a1), free(a2), free(b1), free(b2);
        }
        free(A), free(B), free(p0), free(s10), free(s20);
    }
}

/* ---- elementwise kernels ------------------------------------------------------------------ */

static void test_activations(const char *isa)
{
    const ptrdiff_t M = 37, N = 23;
    size_t n = (size_t)(M * N);
    float *Z = randoms(n, -6, 6), *bias = randoms((size_t)N, -1, 1), *dY = randoms(n, -1, 1);
    float *Y = malloc(n * sizeof *Y), *Y3 = malloc(n * sizeof *Y), *dZ = malloc(n * sizeof *dZ);
    double *want = malloc(n * sizeof *want), *tol = malloc(n * sizeof *tol);
    for (int act = 0; act < FM_ACT_COUNT; act++) {
        char what[64];
        snprintf(what, sizeof what, "bias_activation act=%d", act);
        fm_bias_activation(M, N, Z, bias, act, (float)SLOPE, Y, 1);
        fm_bias_activation(M, N, Z, bias, act, (float)SLOPE, Y3, 3);
        expect_same_bits(what, isa, Y, Y3, n);
        for (size_t i = 0; i < n; i++) {
            double x = (double)Z[i] + bias[i % (size_t)N];
            want[i] = act_forward(act, x);
            tol[i] = lipschitz(act) * U * fabs(x) + 16 * U * fabs(want[i]) + 1e-37;
        }
        compare(what, isa, n, Y, want, tol, 0, 0);
        snprintf(what, sizeof what, "activation_backward act=%d", act);
        fm_activation_backward(M, N, dY, Y, Z, act, (float)SLOPE, dZ, 2);
        for (size_t i = 0; i < n; i++) {
            double scale;
            want[i] = dY[i] * act_derivative(act, Y[i], Z[i], &scale);
            tol[i] = 16 * U * fabs(dY[i]) * scale + 1e-37;
        }
        compare(what, isa, n, dZ, want, tol, 0, 0);
    }
    float db[23], db3[23];
    double db_want[23], db_tol[23];
    fm_bias_grad(M, N, dY, db, 1);
    fm_bias_grad(M, N, dY, db3, 3);
    for (ptrdiff_t j = 0; j < N; j++) {
        double s = 0.0, s_abs = 0.0;
        for (ptrdiff_t i = 0; i < M; i++) s += dY[i * N + j], s_abs += fabs(dY[i * N + j]);
        db_want[j] = s, db_tol[j] = (double)M * U * s_abs;
    }
    compare("bias_grad", isa, (size_t)N, db, db_want, db_tol, 0, 0);
    expect_same_bits("bias_grad", isa, db, db3, (size_t)N);
    free(Z), free(bias), free(dY), free(Y), free(Y3), free(dZ), free(want), free(tol);
}

/* ---- losses ------------------------------------------------------------------------------- */

static void test_losses(const char *isa)
{
    const ptrdiff_t M = 41, N = 7;
    size_t n = (size_t)(M * N);
    float *Z = randoms(n, -8, 8), *w = randoms((size_t)M, 0.1, 2), *T = randoms(n, 0, 1);
    float *dZ = malloc(n * sizeof *dZ), *dZ3 = malloc(n * sizeof *dZ);
    double *want = malloc(n * sizeof *want), loss, loss3;
    int32_t labels[41];
    for (ptrdiff_t i = 0; i < M; i++) labels[i] = (int32_t)(i * 5 % N);
    float *counts = malloc(n * sizeof *counts);
    for (size_t i = 0; i < n; i++) counts[i] = (float)(int)(4 * T[i]) * (i % 3 != 0);
    for (int weighted = 0; weighted < 2; weighted++) {
        const float *wp = weighted ? w : NULL;
        for (int kind = 0; kind < 4; kind++) {
            static const char *names[] = {"softmax_cross_entropy", "sigmoid_cross_entropy",
                                          "mse_loss", "poisson_loss"};
            const float *target = kind == 3 ? counts : T;
            int status = 0, status3 = 0;
            switch (kind) {
            case 0:
                status = fm_softmax_cross_entropy(M, N, Z, labels, wp, dZ, &loss, 1);
                status3 = fm_softmax_cross_entropy(M, N, Z, labels, wp, dZ3, &loss3, 3);
                break;
            case 1:
                status = fm_sigmoid_cross_entropy(M, N, Z, T, wp, dZ, &loss, 1);
                status3 = fm_sigmoid_cross_entropy(M, N, Z, T, wp, dZ3, &loss3, 3);
                break;
            case 2:
                status = fm_mse_loss(M, N, Z, T, wp, dZ, &loss, 1);
                status3 = fm_mse_loss(M, N, Z, T, wp, dZ3, &loss3, 3);
                break;
            default:
                status = fm_poisson_loss(M, N, Z, counts, wp, dZ, &loss, 1);
                status3 = fm_poisson_loss(M, N, Z, counts, wp, dZ3, &loss3, 3);
            }
            double total = 0.0;
            for (ptrdiff_t i = 0; i < M; i++) {
                double wi = wp ? wp[i] : 1.0, m = -INFINITY, se = 0.0;
                const float *z = Z + i * N, *t = target + i * N;
                if (kind == 0) {
                    for (ptrdiff_t j = 0; j < N; j++) m = z[j] > m ? z[j] : m;
                    for (ptrdiff_t j = 0; j < N; j++) se += exp(z[j] - m);
                    total += wi * (m + log(se) - z[labels[i]]);
                }
                for (ptrdiff_t j = 0; j < N; j++) {
                    double g;
                    if (kind == 0) {
                        g = exp(z[j] - m) / se - (j == labels[i]);
                    } else if (kind == 1) {
                        total += wi * (fmax(z[j], 0) - z[j] * t[j] + log1p(exp(-fabs(z[j]))));
                        g = sigmoid(z[j]) - t[j];
                    } else if (kind == 2) {
                        total += wi * (z[j] - t[j]) * (z[j] - t[j]) / 2 / N;
                        g = (z[j] - t[j]) / N;
                    } else {
                        double xlogy = t[j] > 0 ? t[j] * log(t[j]) : 0.0;
                        total += wi * (xlogy - t[j] * z[j] - t[j] + exp(z[j]));
                        g = exp(z[j]) - t[j];
                    }
                    want[i * N + j] = wi * g / M;
                }
            }
            char what[64];
            snprintf(what, sizeof what, "%s weighted=%d", names[kind], weighted);
            checks++;
            if (status != FM_OK || status3 != FM_OK)
                failures++, printf("FAIL %s [%s]: status %d\n", what, isa, status);
            double loss_want = total / M;
            float loss_f = (float)loss;
            compare(what, isa, 1, &loss_f, &loss_want, NULL, 1e-5, 0);
            /* the gradient's scale: exp(8) / M for poisson, 1 / M otherwise */
            compare(what, isa, n, dZ, want, NULL, 1e-5, (kind == 3 ? 3e3 : 1.0) * 1e-6 / M);
            expect_same_bits(what, isa, dZ, dZ3, n);
            checks++;
            if (loss != loss3)
                failures++, printf("FAIL %s [%s]: loss differs on 3 threads\n", what, isa);
        }
    }
    labels[3] = (int32_t)N; /* rule 7: a label out of range is refused, nothing written */
    float sentinel = dZ[0] = 12345.0f;
    checks++;
    if (fm_softmax_cross_entropy(M, N, Z, labels, NULL, dZ, &loss, 2) != FM_EINVAL ||
        dZ[0] != sentinel)
        failures++, printf("FAIL softmax_cross_entropy [%s]: bad label not refused\n", isa);
    free(Z), free(w), free(T), free(dZ), free(dZ3), free(want), free(counts);
}

/* ---- optimizers --------------------------------------------------------------------------- */

static void test_optimizers(const char *isa)
{
    const ptrdiff_t n = 10007; /* odd: every vector tail */
    float *p0 = randoms((size_t)n, -1, 1), *g = randoms((size_t)n, -1, 1);
    float *s0 = randoms((size_t)n, 0, 0.1), *m0 = randoms((size_t)n, -0.1, 0.1);
    double *want = malloc((size_t)n * sizeof *want), *tol = malloc((size_t)n * sizeof *tol);
    const double lr = 0.01, l2 = 1e-3;
    for (int kind = 0; kind < 6; kind++) {
        static const char *names[] = {"sgd", "sgd momentum", "sgd nesterov", "rmsprop", "adam",
                                      "adamw"};
        float *p = copy_of(p0, (size_t)n), *p3 = copy_of(p0, (size_t)n);
        float *s = copy_of(s0, (size_t)n), *s3 = copy_of(s0, (size_t)n);
        float *m = copy_of(m0, (size_t)n), *m3 = copy_of(m0, (size_t)n);
        const double mom = 0.9, rho = 0.9, b1 = 0.9, b2 = 0.999, eps = 1e-8;
        const long t = 3;
        double wd = kind == 5 ? 0.01 : 0.0;
        if (kind <= 2) {
            fm_sgd_update(n, p, g, lr, l2, kind ? mom : 0.0, kind == 2, m, 1);
            fm_sgd_update(n, p3, g, lr, l2, kind ? mom : 0.0, kind == 2, m3, 3);
        } else if (kind == 3) {
            fm_rmsprop_update(n, p, g, s, lr, rho, eps, l2, 1);
            fm_rmsprop_update(n, p3, g, s3, lr, rho, eps, l2, 3);
        } else {
            fm_adam_update(n, p, g, m, s, t, lr, b1, b2, eps, l2, wd, 1);
            fm_adam_update(n, p3, g, m3, s3, t, lr, b1, b2, eps, l2, wd, 3);
        }
        /* step: the change of p; scale: the sum of the absolute values of the terms it is made
         * of (a sum such as momentum vel - lr g' may cancel: its error is relative to them) */
        for (ptrdiff_t i = 0; i < n; i++) {
            double gi = g[i] + l2 * p0[i], gi_abs = fabs(g[i]) + fabs(l2 * p0[i]), step, scale;
            if (kind == 0) {
                step = -lr * gi, scale = lr * gi_abs;
            } else if (kind <= 2) {
                double vel = mom * m0[i] - lr * gi, vel_abs = fabs(mom * m0[i]) + lr * gi_abs;
                step = kind == 2 ? mom * vel - lr * gi : vel;
                scale = kind == 2 ? mom * vel_abs + lr * gi_abs : vel_abs;
            } else if (kind == 3) {
                double sq = rho * s0[i] + (1 - rho) * gi * gi;
                step = -lr * gi / (sqrt(sq) + eps), scale = lr * gi_abs / (sqrt(sq) + eps);
            } else {
                double mi = b1 * m0[i] + (1 - b1) * gi, vi = b2 * s0[i] + (1 - b2) * gi * gi;
                double mi_abs = fabs(b1 * m0[i]) + (1 - b1) * gi_abs;
                double lr_t = lr * sqrt(1 - pow(b2, (double)t)) / (1 - pow(b1, (double)t));
                step = -lr * wd * p0[i] - lr_t * mi / (sqrt(vi) + eps);
                scale = fabs(lr * wd * p0[i]) + lr_t * mi_abs / (sqrt(vi) + eps);
            }
            want[i] = p0[i] + step;
            tol[i] = 4 * U * fabs(p0[i]) + 1e-5 * scale + 1e-37;
        }
        compare(names[kind], isa, (size_t)n, p, want, tol, 0, 0);
        expect_same_bits(names[kind], isa, p, p3, (size_t)n);
        free(p), free(p3), free(s), free(s3), free(m), free(m3);
    }
    free(p0), free(g), free(s0), free(m0), free(want), free(tol);
}

int main(void)
{
    int ran = 0;
    for (int isa = 0; isa < FM_ISA_COUNT; isa++) {
        if (!fm_cpu_supports(isa) || fm_set_isa(isa) != FM_OK) continue;
        const char *name = fm_isa_name(isa);
        int before = failures;
        test_gemm(name);
        test_update_epilogue(name);
        test_activations(name);
        test_losses(name);
        test_optimizers(name);
        printf("%-8s %s\n", name, failures == before ? "ok" : "FAILED");
        ran++;
    }
    printf("%d checks on %d ISA paths, %d failed\n", checks, ran, failures);
    return failures || !ran;
}
