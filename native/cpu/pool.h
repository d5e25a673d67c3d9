/*
 * pool.h: a small persistent pthread pool with a static-split parallel-for.
 *
 * gpt_pool_run(p, fn, ctx) calls fn(ctx, tid, n) once for every tid in 0..n-1, the
 * calling thread being tid 0, and returns when all calls have returned. Work is
 * split by the callers with gpt_split(), so which thread does what depends only on
 * the thread count: kernels built on it are deterministic for a fixed count.
 * Workers spin briefly between runs, then sleep on a condition variable.
 */
#ifndef GPT_POOL_H
#define GPT_POOL_H

#include <stdint.h>

typedef struct gpt_pool gpt_pool;
typedef void (*gpt_task_fn)(void* ctx, int tid, int nthreads);

/* n >= 1 threads in all (n-1 workers are started). NULL if threads cannot be made. */
gpt_pool* gpt_pool_create(int n);
void gpt_pool_destroy(gpt_pool* p);
/* Thread count of p; a NULL pool is a single thread. */
int gpt_pool_size(const gpt_pool* p);
/* Run fn on every thread of p (NULL p: fn(ctx, 0, 1) on the caller). Not reentrant. */
void gpt_pool_run(gpt_pool* p, gpt_task_fn fn, void* ctx);
/* Run fn(ctx, tid, nt) for tid in 0..nt-1 with nt = min(n, pool size), at least 1;
 * with nt == 1 on the caller only, waking nobody. */
void gpt_pool_run_n(gpt_pool* p, gpt_task_fn fn, void* ctx, int n);

/* Threads worth using for `work` (about one unit per flop or byte touched): one per
 * grain of work, at most the pool size. The grain (default GPT_POOL_GRAIN) only
 * decides how small loops stay on one thread: set it to 1 to split everything (tests). */
#define GPT_POOL_GRAIN 100000
int gpt_pool_threads_for(const gpt_pool* p, double work);
void gpt_pool_set_grain(gpt_pool* p, double grain);

/* The tid-th of nt contiguous parts of [0, n): [*lo, *hi). Parts differ by at most 1. */
static inline void gpt_split(int64_t n, int tid, int nt, int64_t* lo, int64_t* hi) {
    int64_t q = n / nt, r = n % nt;
    *lo = tid * q + (tid < r ? tid : r);
    *hi = *lo + q + (tid < r ? 1 : 0);
}

/* As gpt_split, with part boundaries on multiples of align (the last part takes the rest). */
static inline void gpt_split_aligned(int64_t n, int64_t align, int tid, int nt, int64_t* lo, int64_t* hi) {
    int64_t blocks = (n + align - 1) / align, b0, b1;
    gpt_split(blocks, tid, nt, &b0, &b1);
    *lo = b0 * align < n ? b0 * align : n;
    *hi = b1 * align < n ? b1 * align : n;
}

#endif
