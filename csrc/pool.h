/* pool.h: fastmlp's thread team, which does not wait for a thread that is not running.
 *
 * fm_pool_run(n_threads, n_tasks, fn, ctx) runs fn(ctx, task, slot) once for every task in
 * [0, n_tasks) and returns when all are done. The calling thread is one of the executors; up to
 * n_threads - 1 workers join it. Contract:
 *  1. Tasks are handed out one at a time from a shared counter: whoever is running takes the
 *     next one, so a worker that is descheduled (a busy machine) or still waking up takes none,
 *     and the caller never waits for a worker that has not claimed a task; it waits only for
 *     tasks already claimed (keep tasks short: that wait is at most one task).
 *  2. slot is in [0, n_threads) and distinct among the executors of one call (the caller is 0):
 *     it indexes per-executor scratch. Which slot runs which task varies from call to call, so a
 *     task's result must depend on the task alone (fastmlp.h rule 4 then holds: bits do not
 *     depend on the thread count nor on who ran what).
 *  3. Calls from several threads at once are safe: the team serves one call at a time, and a
 *     call that finds it busy runs its tasks itself, in order (rule 5). n_threads <= 1 or
 *     n_tasks <= 1 runs them in the caller too, with no synchronisation at all.
 *  4. Workers are started on first use, spin briefly after a call (a training step makes its
 *     calls tens of microseconds apart), then sleep on a condition variable. After fork() the
 *     child starts with no workers (they did not survive the fork) and makes new ones.
 * Every kernel runs on it. OpenMP is left to the peak probe (fm_measure_peak_gflops), which
 * needs all its threads running at once: an OpenMP region ends in a barrier that waits for every
 * thread of the team, running or not, and libgomp's threads then spin for a while on the cores
 * the next call needs. */
#ifndef FASTMLP_POOL_H
#define FASTMLP_POOL_H

#include <stddef.h>

typedef void (*fm_task_fn)(void *ctx, ptrdiff_t task, int slot);

void fm_pool_run(int n_threads, ptrdiff_t n_tasks, fm_task_fn fn, void *ctx);

#endif
