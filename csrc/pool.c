/* pool.c: the thread team of pool.h (its contract is there).
 *
 * One job at a time. The caller publishes it under the mutex (function, context, task count,
 * executors) with a new generation number, and hands tasks out through one 64-bit claim word:
 * the generation in the high 24 bits, the next task in the low 40. A worker snapshots the job
 * under the mutex and claims with compare-and-swap only while the claim word carries its
 * snapshot's generation, so a worker that wakes late can never take a task of a later job with
 * an earlier job's function. The caller returns once `done` reaches the task count: every task
 * claimed has then finished, and no claim of that job can succeed any more. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "fastmlp.h"
#include "pool.h"

#define TASK_BITS 40
#define TASK_MASK ((UINT64_C(1) << TASK_BITS) - 1)
#define GEN_MASK ((UINT64_C(1) << (64 - TASK_BITS)) - 1)
/* A worker's spin for the next job before it sleeps (contract 4), yielding the core every 64
 * turns: on a busy machine the spinning worker would otherwise take half of the core that the
 * caller or another process needs (benchmarks/results/pool_contention.md). */
#ifndef SPIN_NS
#define SPIN_NS 200000
#endif

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake;
    int started;          /* workers created, under mu (reset in a forked child) */
    _Atomic uint64_t gen; /* the job's generation; workers wait for it to change */
    _Atomic uint64_t claim;
    _Atomic ptrdiff_t done;
    _Atomic int slots;    /* executor slots handed out in this job (the caller holds 0) */
    atomic_flag busy;     /* a caller owns the team (contract 3) */
    /* the job, written and read under mu */
    fm_task_fn fn;
    void *ctx;
    ptrdiff_t n_tasks;
    int n_threads;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0,
          ATOMIC_FLAG_INIT, NULL, NULL, 0, 0};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Claim and run tasks of generation g until none is left (or the job is another's). */
static void run_tasks(uint64_t g, fm_task_fn fn, void *ctx, ptrdiff_t n, int slot)
{
    uint64_t c = atomic_load(&pool.claim);
    for (;;) {
        if ((c >> TASK_BITS) != (g & GEN_MASK) || (ptrdiff_t)(c & TASK_MASK) >= n) return;
        if (!atomic_compare_exchange_weak(&pool.claim, &c, c + 1)) continue; /* c reloaded */
        fn(ctx, (ptrdiff_t)(c & TASK_MASK), slot);
        atomic_fetch_add(&pool.done, 1);
        c = atomic_load(&pool.claim);
    }
}

static void *worker(void *arg)
{
    uint64_t seen = (uint64_t)(uintptr_t)arg;
    for (;;) {
        int64_t t0 = now_ns();
        for (int i = 0; atomic_load(&pool.gen) == seen; i++) {
            cpu_relax();
            if ((i & 63) == 63) {
                if (now_ns() - t0 > SPIN_NS) break;
                sched_yield();
            }
        }
        pthread_mutex_lock(&pool.mu);
        while (atomic_load(&pool.gen) == seen) pthread_cond_wait(&pool.wake, &pool.mu);
        uint64_t g = atomic_load(&pool.gen);
        fm_task_fn fn = pool.fn;
        void *ctx = pool.ctx;
        ptrdiff_t n = pool.n_tasks;
        int slot = atomic_fetch_add(&pool.slots, 1);
        int joins = slot < pool.n_threads;
        pthread_mutex_unlock(&pool.mu);
        seen = g;
        if (joins) run_tasks(g, fn, ctx, n, slot);
    }
    return NULL;
}

/* Workers for n_threads executors, under mu. */
static void ensure_workers(int n_threads)
{
    while (pool.started < n_threads - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&t, &attr, worker,
                                    (void *)(uintptr_t)atomic_load(&pool.gen));
        pthread_attr_destroy(&attr);
        if (failed) break; /* fewer workers: the caller takes their tasks (contract 1) */
        pool.started++;
    }
}

static void child_after_fork(void)
{
    /* the parent's workers and whatever they held did not survive: start afresh */
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.wake, NULL);
    atomic_flag_clear(&pool.busy);
    pool.started = 0;
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(NULL, NULL, child_after_fork); }

void fm_pool_run(int n_threads, ptrdiff_t n_tasks, fm_task_fn fn, void *ctx)
{
    if (n_tasks <= 0) return;
    if (n_threads > FM_MAX_THREADS) n_threads = FM_MAX_THREADS;
    if (n_threads <= 1 || n_tasks <= 1 || atomic_flag_test_and_set(&pool.busy)) {
        for (ptrdiff_t t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&pool.mu);
    ensure_workers(n_threads);
    uint64_t g = atomic_load(&pool.gen) + 1;
    pool.fn = fn, pool.ctx = ctx, pool.n_tasks = n_tasks, pool.n_threads = n_threads;
    atomic_store(&pool.done, 0);
    atomic_store(&pool.slots, 1);
    atomic_store(&pool.claim, (g & GEN_MASK) << TASK_BITS);
    atomic_store(&pool.gen, g);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    run_tasks(g, fn, ctx, n_tasks, 0);
    /* only tasks already claimed are left: wait for them (contract 1) */
    for (int i = 0; atomic_load(&pool.done) < n_tasks; i++) {
        cpu_relax();
        if ((i & 1023) == 1023) sched_yield(); /* their thread may need this core */
    }
    atomic_flag_clear(&pool.busy);
}
