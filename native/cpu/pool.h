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
/* A parallel loop on as many threads as `work` is worth. */
static inline void gpt_pool_run_for(gpt_pool* p, gpt_task_fn fn, void* ctx, double work) {
    gpt_pool_run_n(p, fn, ctx, gpt_pool_threads_for(p, work));
}
void gpt_pool_set_grain(gpt_pool* p, double grain);

/* ---- lanes that lend their thread when done ----
 * n threads each run a lane (a sequence of parallel loops of its own) inside one
 * gpt_pool_run. A lane's loops go through its lane pool (gpt_team_lane): gpt_pool_run_n
 * on it runs the loop on the lane's thread alone, or, when the loop is worth two threads
 * and the thread of a lane that is done is waiting in gpt_team_help, on both (the waiting
 * one as tid 1 of 2). Which way a loop runs depends on timing, so only loops whose
 * results do not depend on the thread count may run there (every kernel of kernels_*.c
 * splits its work so). On a shared machine one core is often slower than the other for
 * a while; the lanes then finish at different times, and the early one helps. */
typedef struct gpt_team gpt_team;

typedef enum {
    GPT_HELP_OFF,  /* every lane's loops on its own thread */
    GPT_HELP_ON,   /* a lane that is done helps the others */
    GPT_HELP_TEST, /* lane 0 starts when every other lane is done, then runs every loop
                    * (grain 1) on two threads: the loops must give the results of one */
} gpt_help_mode;

/* n >= 1 lanes; NULL when out of memory. */
gpt_team* gpt_team_create(int n, gpt_help_mode mode);
void gpt_team_destroy(gpt_team* t);
/* The pool the kernels of lane i get: size 2 (one thread, or two with a helper). */
gpt_pool* gpt_team_lane(gpt_team* t, int i);
/* Nonzero for a lane pool: a loop on it must give the same results on any thread count
 * (work whose result depends on how it is split runs whole on one thread). */
int gpt_pool_split_invariant(const gpt_pool* p);
/* Before the gpt_pool_run that runs the lanes: every lane busy. */
void gpt_team_begin(gpt_team* t);
/* Called by the thread of lane i before the lane's first loop (GPT_HELP_TEST: lane 0
 * waits there for the others). */
void gpt_team_start(gpt_team* t, int i);
/* Called by the thread of lane i when the lane is done: runs other lanes' loops as
 * their helper until every lane is done. */
void gpt_team_help(gpt_team* t, int i);

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
