/* pool.c: see pool.h. Synchronisation only: no reduction ever goes through an atomic. */
#define _POSIX_C_SOURCE 200809L
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

/* Spin iterations before a waiting worker goes to sleep (tens of microseconds). */
#define SPIN_LIMIT 20000

typedef struct {
    gpt_pool* pool;
    int tid;
    pthread_t thread;
} worker;

struct gpt_pool {
    int n;
    worker* workers;              /* n-1 of them, tid 1..n-1 */
    gpt_task_fn fn;
    void* ctx;
    atomic_uint_fast64_t generation;  /* bumped once per run */
    atomic_int pending;               /* workers still running the current task */
    atomic_int sleepers;              /* workers blocked on wake */
    atomic_int quit;
    pthread_mutex_t mu;
    pthread_cond_t wake;
};

static void* worker_main(void* arg) {
    worker* w = (worker*)arg;
    gpt_pool* p = w->pool;
    uint_fast64_t seen = 0;
    for (;;) {
        uint_fast64_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen) {
            if (++spins < SPIN_LIMIT) {
                CPU_RELAX();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->generation) == seen) pthread_cond_wait(&p->wake, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        seen = g;
        if (atomic_load_explicit(&p->quit, memory_order_acquire)) return NULL;
        p->fn(p->ctx, w->tid, p->n);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
    }
}

gpt_pool* gpt_pool_create(int n) {
    if (n < 1) n = 1;
    gpt_pool* p = (gpt_pool*)calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = n;
    atomic_init(&p->generation, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->quit, 0);
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        return NULL;
    }
    if (pthread_cond_init(&p->wake, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        return NULL;
    }
    if (n > 1) {
        p->workers = (worker*)calloc((size_t)(n - 1), sizeof(worker));
        if (!p->workers) {
            gpt_pool_destroy(p);
            return NULL;
        }
        for (int i = 0; i < n - 1; i++) {
            p->workers[i].pool = p;
            p->workers[i].tid = i + 1;
            if (pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]) != 0) {
                p->n = i + 1; /* workers 0..i-1 exist: stop exactly those */
                gpt_pool_destroy(p);
                return NULL;
            }
        }
    }
    return p;
}

void gpt_pool_destroy(gpt_pool* p) {
    if (!p) return;
    if (p->n > 1 && p->workers) {
        atomic_store(&p->quit, 1);
        pthread_mutex_lock(&p->mu);
        atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
        for (int i = 0; i < p->n - 1; i++) pthread_join(p->workers[i].thread, NULL);
    }
    free(p->workers);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int gpt_pool_size(const gpt_pool* p) { return p ? p->n : 1; }

void gpt_pool_run(gpt_pool* p, gpt_task_fn fn, void* ctx) {
    if (!p || p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    /* seq_cst on both sides (here and the sleeper's increment then re-check):
     * either the worker sees the new generation or we see it sleeping. */
    atomic_fetch_add(&p->generation, 1);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    fn(ctx, 0, p->n);
    int spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0) {
        if (++spins < SPIN_LIMIT) CPU_RELAX();
        else sched_yield();
    }
}
