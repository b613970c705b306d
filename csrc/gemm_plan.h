/* gemm_plan.h: every decision of a product, made in one pure function (plan_matmul) before any
 * data is touched: the path, the C^T route, whether B is packed, the K blocks, which dimension
 * the threads split, how many threads, and the scratch each thread needs. gemm_driver.h runs the
 * plan; fm_plan_matmul shows it to tests and to the profiler. The measurements behind each rule
 * are in benchmarks/results/gemm_rules.md, under the heading named in its comment. */

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

/* Whether a narrow N with a transposed A (the weight gradient A^T dZ of a 10-class layer) runs
 * as C^T = op(B)^T op(A)^T: N-wide vectors would leave most lanes idle (10 of 16), while C^T's
 * vectors run along M, with A in place as its B. Every element is the same chain of FMAs over k
 * either way (a*b and b*a round alike), so both give the same bits (rule 4) and the choice may
 * depend on M. Worth it from 1.25x fewer FMAs on: 256x10 on AVX-512 takes 10 x 16 vectors per k
 * instead of 256 x 1. (A row-major A would have to be packed transposed: that case takes the
 * dot path.) */
static int use_ct(int trans_a, ptrdiff_t M, ptrdiff_t N)
{
    return trans_a && 5 * fma_rows(N) * ((M + VLEN - 1) / VLEN)
                          < 4 * fma_rows(M) * ((N + VLEN - 1) / VLEN);
}

/* The product C^T = op(B)^T op(A)^T in the terms of C = op(A) op(B): the operands trade places
 * and their transpose flags flip. */
static void transpose_product(int *trans_a, int *trans_b, ptrdiff_t *M, ptrdiff_t *N,
                              const float **A, ptrdiff_t *lda, const float **B, ptrdiff_t *ldb)
{
    int ta = *trans_a;
    ptrdiff_t m = *M, la = *lda;
    const float *a = *A;
    *trans_a = !*trans_b, *trans_b = !ta;
    *M = *N, *N = m;
    *A = *B, *lda = *ldb, *B = a, *ldb = la;
}

/* Threads for a product of M x N x K: at most nthreads and units (the pieces the work is split
 * into), and one per quarter MFLOP: libgomp's threads spin between calls, so waking one costs
 * about a microsecond; at least 1. */
static ptrdiff_t gemm_threads(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, int nthreads, ptrdiff_t units)
{
    double flops = 2.0 * (double)M * (double)N * (double)(K > 0 ? K : 1);
    ptrdiff_t nt = nthreads;
    if ((double)nt > flops / 2.5e5) nt = (ptrdiff_t)(flops / 2.5e5);
    if (nt > units) nt = units;
    return nt < 1 ? 1 : nt;
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
 * of packing that every thread repeats, at PACK_STEPS steps per float (fitted to two shapes:
 * gemm_rules.md, "split cost"). */
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

/* Whether the threads split N (1) or M (0) on the blocked paths. Each thread owns whole tiles of
 * C (rule 4) and packs into its own buffers, so there is no barrier and no shared scratch; what
 * is not split, each thread reads (or packs) in full. So: N when it has more panels, or enough
 * for every thread, unless split_cost finds M cheaper (splitting N repeats the packing of A in
 * every thread, or deals its panels unevenly: gemm_rules.md, "split cost"); except
 *  - for a transposed A (the weight gradient X^T dZ, tall and narrow), where splitting M halves
 *    the packing of A and every thread reads the narrow B in place (or packs it, from a row
 *    stride of FM_PACK_B_LD floats on: "pack B from a stride") ("weight gradient");
 *  - for a short K, where writing C is the cost: threads that share rows of C write interleaved
 *    pieces of each row, slower than whole rows per thread ("short K"). */
static int split_n_of(int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                      int nthreads, int pack_b)
{
    ptrdiff_t pan_n = (N + FM_NR - 1) / FM_NR, pan_m = (M + FM_MR - 1) / FM_MR;
    int weight_grad = trans_a && !trans_b, short_k = K <= 32;
    if (weight_grad || short_k) return pan_n > pan_m;
    int split_n = pan_n >= pan_m || pan_n >= 2 * nthreads;
    if (split_n && nthreads > 1) {
        double dup_a = (double)M * (double)K * (N / nthreads > 2 * FM_NR); /* gemm_range packs A */
        double dup_b = pack_b ? (double)K * (double)N : 0.0;
        split_n = split_cost(N, FM_NR, M, K, nthreads, dup_a) <
                  split_cost(M, FM_MR, N, K, nthreads, dup_b);
    }
    return split_n;
}

/* Scratch floats each thread of a plan uses: its packed A and B (blocked paths) or B^T (dot
 * path), each moved up to 15 floats by align64 (gemm_driver.h). */
static size_t plan_thread_floats(const fm_matmul_plan *p)
{
    if (p->path == FM_PATH_DOT) return p->b_floats ? p->b_floats + 16 : 0;
    return p->a_floats + p->b_floats + 32;
}

/* fm_plan_matmul for this ISA (fastmlp.h). The blocks are read once, so a concurrent
 * fm_set_blocks cannot give a product two different KCs. */
static int plan_matmul(int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                       ptrdiff_t lda, ptrdiff_t ldb, int nthreads, fm_matmul_plan *plan)
{
    fm_matmul_plan p = {.path = FM_PATH_BLOCKED, .threads = 1, .kc = FM_TABLE.kc,
                        .mc = FM_TABLE.mc, .nc = FM_TABLE.nc};
    if (M <= 0 || N <= 0) { /* nothing to compute */
        *plan = p;
        return FM_OK;
    }
    if (use_dot(trans_a, N, K)) {
        ptrdiff_t kp = (K + VLEN - 1) / VLEN * VLEN; /* B^T's rows, zero-padded */
        p.path = FM_PATH_DOT;
        p.kc = 0;
        p.b_floats = trans_b ? 0 : (size_t)(N * kp);
        p.threads = (int)gemm_threads(M, N, K, nthreads, M);
        p.work_floats = (size_t)p.threads * plan_thread_floats(&p);
        *plan = p;
        return FM_OK;
    }
    const float *a = NULL, *b = NULL;
    if (use_ct(trans_a, M, N)) {
        p.path = FM_PATH_BLOCKED_CT;
        transpose_product(&trans_a, &trans_b, &M, &N, &a, &lda, &b, &ldb);
    }
    /* B must be packed when transposed; otherwise packing pays when its rows are far apart
     * (FM_PACK_B_LD, per ISA: an in-place panel's k steps then fall on few L1 sets, or each on a
     * new page) and there are enough rows of A to amortise the copy. */
    p.pack_b = trans_b || (ldb >= FM_PACK_B_LD && M >= 4 * FM_MR);
    /* K blocks of equal length, at most KC: 784 = 3 x 262 rather than 384 + 384 + 16, whose last
     * short block would cost a full pass over C ("equal K blocks"). */
    if (K > p.kc) {
        ptrdiff_t blocks = (K + p.kc - 1) / p.kc;
        p.kc = (int)((K + blocks - 1) / blocks);
    } else if (K > 0) {
        p.kc = (int)K; /* one block (K = 0 keeps KC: gemm_range then runs one empty block) */
    }
    p.split_n = split_n_of(trans_a, trans_b, M, N, K, nthreads, p.pack_b);
    ptrdiff_t units = p.split_n ? (N + FM_NR - 1) / FM_NR : (M + FM_MR - 1) / FM_MR;
    p.threads = (int)gemm_threads(M, N, K, nthreads, units);
    /* Scratch sized for this problem, not for the largest blocks: a small product then gets a
     * small heap block instead of a fresh mmap (glibc maps requests above its threshold anew on
     * every call, which costs more than an MLP-sized product itself). */
    size_t kc = (size_t)min_pd(p.kc, K > 0 ? K : 1);
    p.a_floats = (size_t)((min_pd(p.mc, M) + FM_MR - 1) / FM_MR) * FM_MR * kc;
    p.b_floats = p.pack_b ? kc * (size_t)((min_pd(p.nc, N) + FM_NR - 1) / FM_NR) * FM_NR : 0;
    p.work_floats = (size_t)p.threads * plan_thread_floats(&p);
    *plan = p;
    return FM_OK;
}
