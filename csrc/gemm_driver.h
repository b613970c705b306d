/* gemm_driver.h: runs a plan (gemm_plan.h): fm_matmul for one ISA.
 *
 * The blocked paths' loops, outermost first, for one thread's share of C:
 *   jc over N by NC -> pc over K by KC -> [pack B block KC x NC into NR-wide panels, L2]
 *     -> ic over M by MC -> pack A block MC x KC into MR-tall micro-panels
 *       -> ir over MR (A micro-panel stays in L1) -> jr over NR (B panel streamed from L2)
 *         -> micro-kernel: MR x NR tile of C in registers, kc broadcast + FMA steps
 *            (gemm_ukernel.h, whose contract the loops keep).
 * Each share of C (a range of its rows or columns) is a task of the thread team (pool.h): whoever
 * runs it packs into the scratch of its executor slot, so there is no barrier and no shared
 * buffer, and a thread that is not running leaves its share to the others (fastmlp.h rules 4,
 * 5). */

/* One thread's share: rows [m0, m1) and columns [n0, n1) of C. */
static void gemm_range(const gemm_args *g, ptrdiff_t m0, ptrdiff_t m1, ptrdiff_t n0, ptrdiff_t n1,
                       float *apack, float *bpack)
{
    ptrdiff_t K = g->K;
    float tile[FM_MR * FM_NR] __attribute__((aligned(64)));
    /* Packing A pays when its micro-panels are reused across several B panels. */
    int pack_all_a = n1 - n0 > 2 * FM_NR;
    for (ptrdiff_t jc = n0; jc < n1; jc += g->nc) {
        ptrdiff_t nc = min_pd(g->nc, n1 - jc);
        /* K == 0 still runs one (empty) block: beta and the epilogue apply (fastmlp.h rule 1) */
        for (ptrdiff_t pc = 0; pc < K || pc == 0; pc += g->kc) {
            ptrdiff_t kc = min_pd(g->kc, K - pc);
            int first = pc == 0, last = pc + kc >= K;
            if (g->pack_b) pack_b(g, pc, kc, jc, nc, bpack);
            for (ptrdiff_t ic = m0; ic < m1; ic += g->mc) {
                ptrdiff_t mc = min_pd(g->mc, m1 - ic);
                if (pack_all_a) pack_a(g, ic, mc, pc, kc, apack);
                for (ptrdiff_t ir = 0; ir < mc; ir += FM_MR) {
                    int mr = (int)min_pd(FM_MR, mc - ir);
                    const float *a;
                    int a_packed = pack_all_a || mr < FM_MR;
                    if (pack_all_a) {
                        a = apack + ir * kc;
                    } else if (mr < FM_MR) { /* the edge panel (contract 1) */
                        pack_a(g, ic + ir, mr, pc, kc, apack);
                        a = apack;
                    } else {
                        a = g->A + (ic + ir) * a_rs(g) + pc * a_cs(g);
                    }
                    for (ptrdiff_t jr = 0; jr < nc; jr += FM_NR) {
                        int nr = (int)min_pd(FM_NR, nc - jr);
                        /* the epilogue needs the tile in memory; a plain store does not */
                        int direct = !(last && tile_epilogue(g->ep)) && !g->tc;
                        float *c = direct ? g->C + (ic + ir) * g->ldc + jc + jr : NULL;
                        if (g->pack_b)
                            run_tile(kc, a, a_packed, a_rs(g), a_cs(g), bpack + jr * kc, FM_NR,
                                     nr <= VLEN ? nr : FM_NR, tile, g, c, mr, nr, first);
                        else
                            run_tile(kc, a, a_packed, a_rs(g), a_cs(g),
                                     g->B + pc * g->ldb + jc + jr, g->ldb, nr, tile, g, c, mr, nr,
                                     first);
                        if (!direct) tile_store(g, tile, ic + ir, jc + jr, mr, nr, first, last);
                    }
                    /* these rows of C are final: the update epilogue (C^T rows are C columns) */
                    if (last && g->upd) {
                        if (g->tc)
                            update_block(g, jc, nc, ic + ir, mr);
                        else
                            update_block(g, ic + ir, mr, jc, nc);
                    }
                }
            }
        }
    }
}

static float *align64(float *p) { return (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

/* Share t of n_t on the dot path: its rows of C, with the executor's own copy of B^T (kp floats
 * a row) in slot `slot` of the scratch. */
static void dot_share(const gemm_args *g, float *work, size_t per_thread, ptrdiff_t kp,
                      ptrdiff_t t, ptrdiff_t n_t, int slot)
{
    const float *bt = g->B;
    ptrdiff_t ldbt = g->ldb;
    if (!g->tb) {
        float *p = align64(work + (size_t)slot * per_thread);
        pack_bt(g, kp, p);
        bt = p, ldbt = kp;
    }
    dot_range(g, bt, ldbt, g->M * t / n_t, g->M * (t + 1) / n_t);
}

/* Share t of n_t on a blocked path: its panels of N (split_n) or of M, packed into the buffers
 * of executor slot `slot` (a_floats for A, then B's) at work + slot * per_thread. */
static void gemm_share(const gemm_args *g, float *work, size_t per_thread, size_t a_floats,
                       int split_n, ptrdiff_t t, ptrdiff_t n_t, int slot)
{
    float *apack = align64(work + (size_t)slot * per_thread);
    float *bpack = align64(apack + a_floats);
    ptrdiff_t pan = split_n ? (g->N + FM_NR - 1) / FM_NR : (g->M + FM_MR - 1) / FM_MR;
    ptrdiff_t step = split_n ? FM_NR : FM_MR;
    ptrdiff_t lo = share_start(pan, step, t, n_t), hi = share_start(pan, step, t + 1, n_t);
    if (split_n)
        gemm_range(g, 0, g->M, lo, min_pd(hi, g->N), apack, bpack);
    else
        gemm_range(g, lo, min_pd(hi, g->M), 0, g->N, apack, bpack);
}

#ifndef SHARES_PER_THREAD
#define SHARES_PER_THREAD 2
#endif

typedef struct {
    const gemm_args *g;
    float *work;
    size_t per_thread, a_floats;
    ptrdiff_t kp, n_shares;
    int dot, split_n;
} plan_job;

static void plan_task(void *ctx, ptrdiff_t share, int slot)
{
    const plan_job *j = ctx;
    if (j->dot)
        dot_share(j->g, j->work, j->per_thread, j->kp, share, j->n_shares, slot);
    else
        gemm_share(j->g, j->work, j->per_thread, j->a_floats, j->split_n, share, j->n_shares,
                   slot);
}

/* The plan's shares run as tasks of the team, in work (work_floats floats) if it is large enough
 * for the plan, else in scratch of its own (fastmlp.h: a workspace sized for other blocks or
 * fewer threads is never overrun). One thread runs its share directly. */
static int run_plan(const fm_matmul_plan *p, const gemm_args *g, float *work, size_t work_floats)
{
    size_t per_thread = plan_thread_floats(p);
    float *own = NULL;
    if (p->work_floats && (!work || work_floats < p->work_floats)) {
        own = malloc(p->work_floats * sizeof(float));
        if (!own) return FM_ENOMEM;
        work = own;
    }
    ptrdiff_t kp = (g->K + VLEN - 1) / VLEN * VLEN;
    int dot = p->path == FM_PATH_DOT;
    if (p->threads == 1) {
        if (dot)
            dot_share(g, work, per_thread, kp, 0, 1, 0);
        else
            gemm_share(g, work, per_thread, p->a_floats, p->split_n, 0, 1, 0);
    } else {
        /* SHARES_PER_THREAD shares a thread (at least a panel each): on a busy machine the
         * running threads take the shares of one that is not (pool.h); more, smaller shares
         * repack more and measured no better (benchmarks/results/pool_contention.md) */
        ptrdiff_t pan = dot ? g->M : p->split_n ? (g->N + FM_NR - 1) / FM_NR
                                                : (g->M + FM_MR - 1) / FM_MR;
        ptrdiff_t shares = (ptrdiff_t)p->threads * SHARES_PER_THREAD;
        if (shares > pan) shares = pan;
        if (shares < p->threads) shares = p->threads;
        plan_job j = {g, work, per_thread, p->a_floats, kp, shares, dot, p->split_n};
        fm_pool_run(p->threads, shares, plan_task, &j);
    }
    free(own);
    return FM_OK;
}

/* fm_matmul for this ISA (fastmlp.h): plan, then run. */
static int matmul(int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, float alpha,
                  const float *A, ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta,
                  float *C, ptrdiff_t ldc, const fm_epilogue *ep, float *work, size_t work_floats,
                  int nthreads)
{
    if (M <= 0 || N <= 0) return FM_OK;
    if (ep && !ep->bias && ep->act == FM_ACT_IDENTITY && ep->grad_act == FM_ACT_IDENTITY &&
        !ep->update)
        ep = NULL; /* nothing to apply */
    update_ctx upd;
    if (ep && ep->update) upd = update_constants(ep->update);
    fm_matmul_plan p;
    plan_matmul(trans_a, trans_b, M, N, K, lda, ldb, nthreads, &p);
    if (p.path == FM_PATH_BLOCKED_CT)
        transpose_product(&trans_a, &trans_b, &M, &N, &A, &lda, &B, &ldb);
    gemm_args g = {trans_a, trans_b, M, N, K, alpha, beta, A, B, lda, ldb, ldc, C, ep,
                   p.kc, p.mc, p.nc, p.pack_b, p.path == FM_PATH_BLOCKED_CT,
                   ep && ep->update ? &upd : NULL};
    return run_plan(&p, &g, work, work_floats);
}
