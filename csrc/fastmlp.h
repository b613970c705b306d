/* fastmlp.h: the contract of every kernel.
 *
 * All kernels work on float32, row-major arrays. A kernel's first comment line gives the shapes;
 * parameters are marked IN / OUT / INOUT. Forward and backward kernels stand next to each other.
 *
 * Rules that hold for every kernel (numbered so tests and reviews can point at them):
 *  1. Sizes are ptrdiff_t and may be 0: a zero-sized problem writes nothing (GEMM with K = 0
 *     still applies beta and the epilogue).
 *  2. Leading dimensions are in elements and at least the row length.
 *  3. nthreads is the most threads a kernel may use, clamped to [1, FM_MAX_THREADS]; it may use
 *     fewer for small problems (a tiny product does not wake every thread).
 *  4. Determinism: every output element is computed by one thread with an operation order that
 *     depends only on the problem's shapes, its transpose flags and the ISA in use, never on the
 *     thread count nor on which rows share the batch. Reductions (bias gradient, loss) run in a
 *     fixed order.
 *  5. Re-entrancy: no kernel keeps static mutable state; scratch memory is either passed in
 *     (work) or allocated per call. Kernels may run concurrently from several threads.
 *  6. NaN propagates through every forward activation (relu(NaN) = NaN). Backward masks are
 *     multiplications (dy * [y > 0]), so a NaN or inf in dy survives even where the mask is 0.
 *  7. Kernels never print and never abort: a kernel that can meet bad data (labels out of range)
 *     returns a status (FM_OK or FM_EINVAL); callers validate shapes before calling.
 */
#ifndef FASTMLP_H
#define FASTMLP_H

#include <stddef.h>
#include <stdint.h>

#define FM_OK 0
#define FM_EINVAL (-1)
#define FM_ENOMEM (-2)

#define FM_MAX_THREADS 1024 /* rule 3; the Python layer's limit is lower (fastmlp.core.MAX_THREADS) */

/* Activations. GELU is the tanh approximation (GPT-2 form), evaluated as x * sigmoid(2u) with
 * u = sqrt(2/pi) * (x + 0.044715 x^3): the same function, without the cancellation of 1 + tanh(u)
 * for very negative x. */
enum {
    FM_ACT_IDENTITY = 0,
    FM_ACT_RELU = 1,
    FM_ACT_LEAKY_RELU = 2,
    FM_ACT_TANH = 3,
    FM_ACT_LOGISTIC = 4,
    FM_ACT_GELU = 5,
    FM_ACT_COUNT = 6
};

/* Instruction-set paths compiled into the binary. */
enum { FM_ISA_GENERIC = 0, FM_ISA_AVX2 = 1, FM_ISA_AVX512 = 2, FM_ISA_NEON = 3, FM_ISA_COUNT = 4 };
/* The CPU's maker (fm_cpu_vendor), for the few rules measured to differ between them. */
enum { FM_VENDOR_OTHER = 0, FM_VENDOR_INTEL = 1, FM_VENDOR_AMD = 2 };

/* An optimizer step (one of the update kernels below, named by kernel: FM_K_SGD_UPDATE,
 * FM_K_RMSPROP_UPDATE or FM_K_ADAM_UPDATE) on a parameter P whose gradient is a GEMM's C: the
 * hyperparameters of that kernel (the others are ignored), and P and its state (sgd: s1 the
 * velocity or NULL with momentum 0; rmsprop: s1 the squares; adam: s1 = m, s2 = v), each laid
 * out as C, with C's leading dimension. */
typedef struct {
    int kernel;
    float *p, *s1, *s2;     /* INOUT */
    long step;              /* adam */
    double lr, l2, momentum, rho, beta1, beta2, eps, weight_decay;
    int nesterov;           /* sgd */
} fm_update;

/* What the GEMM does to each element of C after the product, once, in registers, on the last
 * pass over K. Forward: c = act(c + bias[j]). Backward: c = c * act'(.) where act' is computed
 * from y (activation output) or, for GELU, z (pre-activation), exactly as
 * fm_activation_backward does. act and grad_act are never both set (the bindings reject it).
 * Then, with update: c is stored and the optimizer steps the element (i, j) of update's arrays
 * with gradient c, with the arithmetic of its kernel: the bits of fm_matmul followed by the
 * update kernel over the same elements, without a second pass over the gradient (the training
 * step fuses each weight's update into the product that makes its gradient). The arrays must
 * not overlap A, B, C or each other; the sparse products refuse an update (FM_EINVAL). */
typedef struct {
    const float *bias;     /* IN [N] or NULL */
    int act;               /* forward activation, FM_ACT_IDENTITY = none */
    int grad_act;          /* backward activation, FM_ACT_IDENTITY = none */
    float slope;           /* leaky_relu's negative slope */
    const float *y;        /* IN [M, N] (ldy) activation output, for grad_act other than gelu */
    ptrdiff_t ldy;
    const float *z;        /* IN [M, N] (ldz) pre-activation, for grad_act = gelu */
    ptrdiff_t ldz;
    const fm_update *update; /* IN or NULL: an optimizer step on the result */
} fm_epilogue;

/* ---- GEMM ---------------------------------------------------------------------------------- */

/* C[M,N] = epilogue(alpha * op(A)[M,K] @ op(B)[K,N] + beta * C), op(X) = X or X^T.
 * A: IN, stored [M,K] (lda) or, with trans_a, [K,M]. B: IN, stored [K,N] (ldb) or, with trans_b,
 * [N,K]. C: INOUT [M,N] (ldc); with beta == 0 C is not read (NaN in it does not propagate).
 * ep: IN or NULL. work: scratch of work_floats floats; a product whose plan needs more (its
 * work_floats), or work == NULL, allocates its own for the call. C must not overlap A, B, bias,
 * y or z. The product runs as fm_plan_matmul decides. Summation order (rule 4): on the blocked
 * paths K is cut into the fewest blocks of at most the ISA's KC, all of one length but the last,
 * which may be shorter; each block's products are accumulated in k order with FMAs from zero,
 * and C = alpha*s0 + beta*C, C += alpha*s_b for the later blocks, then the epilogue. On the dot
 * path (FM_PATH_DOT: a narrow N with A not transposed, e.g. 10 classes from 256 features): K is
 * not blocked, lane l of a VLEN-wide accumulator adds the products of k = l, l + VLEN, ... in k
 * order with FMAs from zero, the lanes are added as a fixed pairwise tree into s, then
 * C = alpha*s + beta*C and the epilogue. Returns FM_OK or FM_ENOMEM. */
int fm_matmul(int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, float alpha,
              const float *A, ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta,
              float *C, ptrdiff_t ldc, const fm_epilogue *ep, float *work, size_t work_floats,
              int nthreads);

/* How fm_matmul runs a product (its paths, in the order fm_plan_matmul tries them):
 *  FM_PATH_DOT         narrow N, A not transposed: dot products along k (N and K decide it,
 *                      never M, so a row alone is summed as it is inside a batch);
 *  FM_PATH_BLOCKED_CT  narrow N, A transposed: the blocked loops compute C^T = op(B)^T op(A)^T,
 *                      whose vectors run along M, and store its tiles transposed (the same chain
 *                      of FMAs for every element: the bits are those of FM_PATH_BLOCKED);
 *  FM_PATH_BLOCKED     the Goto/BLIS loops over packed (or in-place) panels. */
enum { FM_PATH_BLOCKED = 0, FM_PATH_BLOCKED_CT = 1, FM_PATH_DOT = 2, FM_PATH_COUNT = 3 };

/* A product's plan: every decision fm_matmul makes, from the shapes, the transpose flags, the
 * leading dimensions, the thread limit and the active ISA's blocks, before it touches data. */
typedef struct {
    int path;            /* FM_PATH_* */
    int threads;         /* threads it runs on; 1 runs without entering OpenMP */
    int split_n;         /* the threads divide N's panels (1) or M's (0); the dot path: M */
    int pack_b;          /* blocked paths: B is packed into panels rather than read in place */
    int kc, mc, nc;      /* blocks: kc the length of K's equal blocks (0 on the dot path) */
    size_t a_floats;     /* per-thread scratch: packed A (blocked paths) */
    size_t b_floats;     /* per-thread scratch: packed B (blocked), B^T (dot; 0 when B^T is B) */
    size_t work_floats;  /* the whole scratch of the product: its threads' buffers, aligned */
} fm_matmul_plan;

/* The plan of fm_matmul's product with these arguments on the active ISA (no data is read).
 * M, N or K may be 0. Returns FM_OK. */
int fm_plan_matmul(int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                   ptrdiff_t lda, ptrdiff_t ldb, int nthreads, fm_matmul_plan *plan);

/* ---- Sparse first layer: CSR rows times a dense matrix, and its weight gradient ------------- */
/* The sparse matrix A (n_rows x K) comes as its CSR arrays: indptr [n_rows + 1], indices and data
 * [nnz]; the entries of row i are p in [indptr[i], indptr[i + 1]), in storage order. Duplicated
 * and unsorted indices and explicit zeros simply add their terms (an explicit 0 times inf is NaN,
 * as in a dense product). rows: IN [M] the rows of A making the batch, repeats allowed (how a
 * training step gathers a shuffled batch without copying it), or NULL for rows 0 .. M-1.
 * The caller guarantees that rows[r] is in [0, n_rows) and that indptr[rows[r]] and
 * indptr[rows[r] + 1] lie in [0, nnz] (the bindings check both); the kernels check the rest of
 * the rows they use before writing anything (rule 7): FM_EINVAL, nothing written, if one has
 * indptr[i] > indptr[i + 1] or an index outside [0, K). They do so even when N = 0.
 * Summation (rule 4): each element of C is c = 0, then c = c + x * y for each of its terms in the
 * order given below, with a multiply and an add (two roundings; no FMA on any ISA). Vectors run
 * along N, whose lanes never meet, so the bits depend neither on the thread count, nor on the
 * batch a row is in, nor on N, nor on the ISA: they are those of a plain float32 loop (and the
 * fused activations are the elementwise kernels' vector code, without FMA either).
 * C must not overlap any array the kernel reads. */

/* A[rows] [M,K] sparse, B[K,N] -> C[M,N] = epilogue(A[rows] @ B). B: IN (ldb). C: OUT (ldc), not
 * read. C[r,:] = epilogue(sum over the entries p of row rows[r], in storage order, of
 * data[p] * B[indices[p], :]); a row without entries (or K = 0) gives epilogue(0). ep: IN or NULL,
 * forward only: act(c + bias), as fm_matmul's (and fm_bias_activation's: the same bits as that
 * kernel applied to the product); ep->grad_act other than FM_ACT_IDENTITY is FM_EINVAL. Threads
 * take chunks of C's rows. Returns FM_OK or FM_EINVAL. */
int fm_sparse_matmul(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const int64_t *indptr,
                     const int32_t *indices, const float *data, const ptrdiff_t *rows,
                     const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc,
                     const fm_epilogue *ep, int nthreads);
/* A[rows] [M,K] sparse, D[M,N] -> C[K,N] = A[rows]^T @ D: the weight gradient of a sparse first
 * layer (X^T dZ). D: IN (ldd). C: OUT (ldc), not read; every row of C is written, 0 where no
 * entry of the rows used has its index. C[k,:] = sum over r ascending, then over the entries p
 * of row rows[r] with indices[p] == k in storage order, of data[p] * D[r,:]. Threads split N's
 * columns (each element of C has one owner). Returns FM_OK or FM_EINVAL. */
int fm_sparse_matmul_tn(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const int64_t *indptr,
                        const int32_t *indices, const float *data, const ptrdiff_t *rows,
                        const float *D, ptrdiff_t ldd, float *C, ptrdiff_t ldc, int nthreads);

/* ---- Activations --------------------------------------------------------------------------- */

/* Z[M,N], bias[N] -> Y[M,N] = act(Z + bias). Z: IN, bias: IN or NULL, Y: OUT (may alias Z). */
void fm_bias_activation(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *bias, int act,
                        float slope, float *Y, int nthreads);
/* dY[M,N], Y[M,N], Z[M,N] -> dZ[M,N] = dY * act'(Z), from Y (relu, leaky_relu, tanh, logistic)
 * or Z (gelu); the unused one may be NULL. dY, Y, Z: IN; dZ: OUT (may alias dY). */
void fm_activation_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                            const float *Z, int act, float slope, float *dZ, int nthreads);

/* dZ[M,N] -> db[N] = sum over rows of dZ, each column summed in row order. dZ: IN, db: OUT. */
void fm_bias_grad(ptrdiff_t M, ptrdiff_t N, const float *dZ, float *db, int nthreads);

/* ---- Normalization, fused with the activation that follows it -----------------------------
 * Both normalize H[M,N] (a linear layer's output, bias included) to Hn = (H - mean) * rstd with
 * rstd = 1 / sqrt(var + eps) (var the biased variance), then write Y = act(gamma * Hn + beta)
 * (act: FM_ACT_*, FM_ACT_IDENTITY for the normalization alone). LayerNorm takes mean and var over
 * each row's N features, BatchNorm over each column's M rows (the batch). Statistics are
 * two-pass (the mean, then the mean of squared deviations from it, in float32): one more read
 * of H than Welford's update, and no cancellation of E[h^2] - E[h]^2 when |mean| >> spread.
 * Each statistic is one thread's sum in index order (rows of a LayerNorm row in lane-blocked
 * order, VLEN lanes then a fixed pairwise tree; BatchNorm's columns in row order, lanes along
 * N), so the bits depend on the shapes and the ISA, never on the thread count (rule 4).
 * The backward kernels take dY (the gradient w.r.t. Y) and recompute Hn from H, mean and rstd,
 * and act'(.) from Y (relu, leaky_relu, tanh, logistic) or from z = gamma Hn + beta (gelu):
 * no pre-activation buffer is kept. dH may alias dY; nothing else may overlap an output.
 * dgamma and dbeta are column sums in row order (as fm_bias_grad): OUT, overwritten (with M == 0
 * nothing is written, rule 1: the bindings return zeros). */

/* H[M,N], gamma[N], beta[N] -> Y[M,N] = act(gamma (H - mean_i) rstd_i + beta); mean[M], rstd[M]:
 * OUT, per row, kept for backward. Y may alias H. eps > 0. */
void fm_layernorm_forward(ptrdiff_t M, ptrdiff_t N, const float *H, const float *gamma,
                          const float *beta, double eps, int act, float slope, float *Y,
                          float *mean, float *rstd, int nthreads);
/* dY[M,N], Y[M,N], H[M,N], gamma, beta, mean[M], rstd[M] -> dH[M,N], dgamma[N], dbeta[N].
 * With g = dY * act'(.) and gh = g * gamma: dH = rstd (gh - mean_j(gh) - Hn mean_j(gh Hn)),
 * dgamma = sum_i g Hn, dbeta = sum_i g. Y may be NULL for identity and gelu. */
void fm_layernorm_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                           const float *H, const float *gamma, const float *beta,
                           const float *mean, const float *rstd, int act, float slope, float *dH,
                           float *dgamma, float *dbeta, int nthreads);

/* H[M,N], gamma[N], beta[N] -> Y[M,N] = act(gamma (H - mean_j) rstd_j + beta); mean[N], rstd[N]:
 * OUT, per column. training != 0: batch statistics (M >= 1), and when running_mean and
 * running_var (INOUT [N]) are not NULL they move as PyTorch's BatchNorm1d moves them:
 * running = (1 - momentum) running + momentum batch, with the unbiased variance
 * var M / (M - 1) (the biased one when M == 1). training == 0: inference, the statistics are
 * the running ones (mean = running_mean, rstd = 1 / sqrt(running_var + eps)), M may be 0 (then,
 * rule 1, nothing is written, mean and rstd included), and running_mean, running_var are IN and
 * must not be NULL. rstd is 1 / sqrt(var + eps) evaluated in double and rounded once; the
 * running update is float32 arithmetic on coefficients rounded once from double (momentum,
 * 1 - momentum, M / (M - 1)). Y may alias H. */
void fm_batchnorm_forward(ptrdiff_t M, ptrdiff_t N, const float *H, const float *gamma,
                          const float *beta, double eps, int training, double momentum,
                          float *running_mean, float *running_var, int act, float slope,
                          float *Y, float *mean, float *rstd, int nthreads);
/* dY[M,N], Y[M,N], H[M,N], gamma, beta, mean[N], rstd[N] -> dH[M,N], dgamma[N], dbeta[N], the
 * gradient of a training forward (batch statistics): with g = dY * act'(.),
 * dbeta = sum_i g, dgamma = sum_i g Hn, dH = gamma rstd (g - dbeta / M - Hn dgamma / M). */
void fm_batchnorm_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                           const float *H, const float *gamma, const float *beta,
                           const float *mean, const float *rstd, int act, float slope, float *dH,
                           float *dgamma, float *dbeta, int nthreads);

/* g[n] -> the global norm ||g||_2, computed in double in a fixed order (at most 256 blocks of
 * consecutive elements, a block count that depends on n only, each summed as VLEN lanes, then
 * the blocks in order); if max_norm > 0 and the norm exceeds it, g *= max_norm / (norm + 1e-6)
 * (PyTorch's clip_grad_norm_). g: INOUT. Returns the norm before clipping (NaN if g holds one:
 * g is then left as it is). */
double fm_clip_grad_norm(ptrdiff_t n, float *g, double max_norm, int nthreads);

/* ---- Losses: loss and gradient in one pass; the mean is over the batch (M rows) ------------- */
/* Each returns FM_OK, writes *loss (0 when M == 0), and writes the gradient dZ (may alias the
 * input). w: IN [M] per-sample weights or NULL (all ones). */

/* Z[M,N] logits, labels[M] in [0,N) -> loss = (1/M) sum_i w_i (logsumexp(Z_i) - Z_i[y_i]),
 * dZ = w_i (softmax(Z_i) - onehot(y_i)) / M. Returns FM_EINVAL (nothing written) if a label is
 * out of range. */
int fm_softmax_cross_entropy(ptrdiff_t M, ptrdiff_t N, const float *Z, const int32_t *labels,
                             const float *w, float *dZ, double *loss, int nthreads);
/* Z[M,N] logits, T[M,N] targets in [0,1] -> loss = (1/M) sum_i w_i sum_j
 * (max(z,0) - z t + log1p(exp(-|z|))), dZ = w_i (sigmoid(z) - t) / M. */
int fm_sigmoid_cross_entropy(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *T,
                             const float *w, float *dZ, double *loss, int nthreads);
/* P[M,N] predictions, T[M,N] targets -> loss = (1/(M N)) sum_i w_i sum_j (p - t)^2 / 2,
 * dP = w_i (p - t) / (M N): half the mean squared error, as scikit-learn's squared loss. */
int fm_mse_loss(ptrdiff_t M, ptrdiff_t N, const float *P, const float *T, const float *w,
                float *dP, double *loss, int nthreads);
/* Z[M,N] log-means, T[M,N] counts >= 0 -> loss = (1/M) sum_i w_i sum_j (xlogy(t, t) - t z - t
 * + exp(z)), dZ = w_i (exp(z) - t) / M: half the Poisson deviance with a log link (prediction
 * exp(z)), as scikit-learn's poisson loss. xlogy(0, 0) = 0; a negative t gives a NaN loss. */
int fm_poisson_loss(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *T, const float *w,
                    float *dZ, double *loss, int nthreads);

/* ---- Optimizer updates: one pass over parameter, gradient and state ------------------------ */
/* p[n]: INOUT, g[n]: IN, state: INOUT. Every update first forms g' = g + l2 * p.
 * Hyperparameters come in double so that coefficients such as 1 - b2 are rounded once, from the
 * value the user gave, to float32 (0.999f is not 0.999, and 1 - 0.999f is 1e-3 only to 1e-5). */

/* momentum == 0: p -= lr g'. Otherwise (scikit-learn's form) vel = momentum vel - lr g';
 * p += vel, or with nesterov p += momentum vel - lr g'. vel may be NULL when momentum == 0. */
void fm_sgd_update(ptrdiff_t n, float *p, const float *g, double lr, double l2,
                   double momentum, int nesterov, float *vel, int nthreads);
/* sq = rho sq + (1 - rho) g'^2; p -= lr g' / (sqrt(sq) + eps). */
void fm_rmsprop_update(ptrdiff_t n, float *p, const float *g, float *sq, double lr,
                       double rho, double eps, double l2, int nthreads);
/* m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2; lr_t = lr sqrt(1-b2^t) / (1-b1^t);
 * p = p (1 - lr wd) - lr_t m / (sqrt(v) + eps). wd > 0 is AdamW (decoupled weight decay).
 * step t >= 1. */
void fm_adam_update(ptrdiff_t n, float *p, const float *g, float *m, float *v, long step,
                    double lr, double b1, double b2, double eps, double l2, double wd,
                    int nthreads);

/* ---- Run-time dispatch ----------------------------------------------------------------------- */

int fm_cpu_supports(int isa);          /* 1 if this CPU (and OS) can run the ISA path */
int fm_set_isa(int isa);               /* FM_OK, or FM_EINVAL if unsupported: nothing changes */
int fm_get_isa(void);
int fm_cpu_vendor(void);               /* FM_VENDOR_*: OTHER off x86-64 */
/* Block sizes of an ISA's GEMM (MR, NR fixed at compile time; KC, MC, NC tunable). Both return
 * FM_EINVAL for an ISA this build does not have (and set_blocks for blocks out of range). */
int fm_get_blocks(int isa, int *mr, int *nr, int *kc, int *mc, int *nc);
int fm_set_blocks(int isa, int kc, int mc, int nc);
/* Peak FMA throughput of the active ISA on nthreads threads, measured by a timed loop of
 * independent FMAs: GFLOP/s (2 flops per FMA lane). */
double fm_measure_peak_gflops(double seconds, int nthreads);

/* ---- Profiling ----------------------------------------------------------------------------------
 * While on, every public kernel entry above adds its wall time, and FLOPs and bytes by formula,
 * to a table keyed by (kernel, variant, shape); calls from any thread count. Off (the default),
 * an entry costs one atomic load and a branch. The formulas: GEMM 2MNK flops, and reads of A, B,
 * C (if beta != 0), bias and y/z plus the write of C; the sparse products 2 nnz N flops (nnz: the
 * entries of the rows used) and every array read or written once; elementwise kernels one flop
 * per element per arithmetic step of their definition and every array read or written once (all
 * documented in fastmlp/tools/profiler.py; a product with an update epilogue adds its
 * optimizer's flops and bytes, those of the update kernel over M N elements). */
enum {
    FM_K_MATMUL = 0, FM_K_BIAS_ACTIVATION = 1, FM_K_ACTIVATION_BACKWARD = 2, FM_K_BIAS_GRAD = 3,
    FM_K_SOFTMAX_CROSS_ENTROPY = 4, FM_K_SIGMOID_CROSS_ENTROPY = 5, FM_K_MSE_LOSS = 6,
    FM_K_SGD_UPDATE = 7, FM_K_RMSPROP_UPDATE = 8, FM_K_ADAM_UPDATE = 9, FM_K_POISSON_LOSS = 10,
    FM_K_SPARSE_MATMUL = 11, FM_K_SPARSE_MATMUL_TN = 12, FM_K_LAYERNORM_FORWARD = 13,
    FM_K_LAYERNORM_BACKWARD = 14, FM_K_BATCHNORM_FORWARD = 15, FM_K_BATCHNORM_BACKWARD = 16,
    FM_K_CLIP_GRAD_NORM = 17, FM_K_COUNT = 18
};
/* Variant bits of a profile entry. */
enum {
    FM_PROF_TRANS_A = 1, FM_PROF_TRANS_B = 2, FM_PROF_BIAS = 4,  /* matmul (bias: sparse_matmul) */
    FM_PROF_MOMENTUM = 8, FM_PROF_NESTEROV = 16,                 /* sgd_update */
    FM_PROF_WEIGHT_DECAY = 32,                                   /* adam_update */
    FM_PROF_TRAINING = 64,                                       /* batchnorm_forward */
    FM_PROF_UPDATE = 128                           /* matmul: an update epilogue (fm_update) */
};
typedef struct {
    int kernel;         /* FM_K_* */
    int act;            /* FM_ACT_*: matmul's or sparse_matmul's forward epilogue, or
                           bias_activation's or activation_backward's activation */
    int grad_act;       /* FM_ACT_*: matmul's backward epilogue */
    int path;           /* FM_PATH_* of a matmul (its plan); -1 for the other kernels */
    int flags;          /* FM_PROF_* */
    ptrdiff_t m, n, k;  /* the shape (n = element count for optimizers; k = A's columns for the
                           sparse products) */
    long calls;
    double seconds, flops, bytes;
} fm_prof_entry;

int fm_profile_start(void);                          /* FM_EINVAL if already on */
/* Turns profiling off and copies out at most capacity entries (shapes past the table's 512 are
 * folded into one entry per kernel with m = n = k = -1); returns how many were written. */
int fm_profile_stop(fm_prof_entry *out, int capacity);

/* ---- Names: one per enum value, the names the Python layer uses ("unknown" out of range) --- */
const char *fm_activation_name(int act);   /* FM_ACT_*: "identity", "relu", ... */
const char *fm_isa_name(int isa);          /* FM_ISA_*: "generic", "avx2", "avx512", "neon" */
const char *fm_path_name(int path);        /* FM_PATH_*: "blocked", "blocked_ct", "dot" */
const char *fm_kernel_name(int kernel);    /* FM_K_*: the kernel's Python name, "matmul", ... */

#endif
