/* pool.c: see pool.h. Synchronisation only: no reduction ever goes through an atomic. */
#define _POSIX_C_SOURCE 200809L
#if defined(__APPLE__)
#define _DARWIN_C_SOURCE /* sysconf(_SC_NPROCESSORS_ONLN), and what Accelerate's headers need */
#endif
#include "pool.h"

#include <pthread.h>
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

/* Spin iterations (about 20-50 microseconds) before a waiting thread sleeps on a
 * condition variable: long enough to bridge the gap between two parallel loops of a
 * step, short enough not to steal a core from a thread that was descheduled. */
#define SPIN_LIMIT 2000

typedef struct {
    gpt_pool* pool;
    int tid;
    pthread_t thread;
} worker;

struct gpt_pool {
    int n;
    gpt_team* team;               /* a lane pool: runs through team_run (see pool.h) */
    int lane;
    int active;                   /* threads taking part in the current run */
    double grain;
    worker* workers;              /* n-1 of them, tid 1..n-1 */
    gpt_task_fn fn;
    void* ctx;
    atomic_uint_fast64_t generation;  /* bumped once per run */
    atomic_int pending;               /* workers still running the current task */
    atomic_int sleepers;              /* workers blocked on wake */
    atomic_int caller_sleeping;       /* the caller blocked on done */
    atomic_int quit;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_cond_t done;
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
        if (w->tid < p->active) p->fn(p->ctx, w->tid, p->active);
        /* the last one out wakes the caller if it went to sleep (seq_cst pairs with its
         * store of caller_sleeping then re-check of pending) */
        if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->caller_sleeping)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

gpt_pool* gpt_pool_create(int n) {
    if (n < 1) n = 1;
    gpt_pool* p = (gpt_pool*)calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = n;
    p->grain = GPT_POOL_GRAIN;
    atomic_init(&p->generation, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->caller_sleeping, 0);
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
    if (pthread_cond_init(&p->done, NULL) != 0) {
        pthread_cond_destroy(&p->wake);
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
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int gpt_pool_size(const gpt_pool* p) { return p ? p->n : 1; }

int gpt_pool_threads_for(const gpt_pool* p, double work) {
    if (!p) return 1;
    const double k = work / p->grain;
    return k >= p->n ? p->n : k < 1.0 ? 1 : (int)k;
}

void gpt_pool_set_grain(gpt_pool* p, double grain) {
    if (p) p->grain = grain > 1.0 ? grain : 1.0;
}

void gpt_pool_run(gpt_pool* p, gpt_task_fn fn, void* ctx) { gpt_pool_run_n(p, fn, ctx, p ? p->n : 1); }

static void team_run(gpt_pool* p, gpt_task_fn fn, void* ctx, int n);

void gpt_pool_run_n(gpt_pool* p, gpt_task_fn fn, void* ctx, int n) {
    if (p && p->team) {
        team_run(p, fn, ctx, n);
        return;
    }
    if (!p || p->n == 1 || n <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->active = n < p->n ? n : p->n;
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
    fn(ctx, 0, p->active);
    for (int spins = 0; spins < SPIN_LIMIT; spins++) {
        if (atomic_load_explicit(&p->pending, memory_order_acquire) == 0) return;
        CPU_RELAX();
    }
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->caller_sleeping, 1);
    while (atomic_load(&p->pending) != 0) pthread_cond_wait(&p->done, &p->mu);
    atomic_store(&p->caller_sleeping, 0);
    pthread_mutex_unlock(&p->mu);
}

/* ---- lanes that lend their thread when done (see pool.h) ----
 * A helper slot per lane thread, its state moving
 *   BUSY (own lane) -> IDLE (waiting in gpt_team_help) -> CLAIMED (by one lane's loop)
 *   -> TASK (fn, ctx set) -> DONE (the helper ran its part) -> IDLE (the lane saw it)
 * and back to BUSY when every lane is done. The claiming lane makes the moves to
 * CLAIMED (a compare-and-swap from IDLE: one lane wins), TASK and back to IDLE; the
 * helper makes the moves to IDLE, DONE and BUSY. */
enum { HELPER_BUSY, HELPER_IDLE, HELPER_CLAIMED, HELPER_TASK, HELPER_DONE };

typedef struct {
    _Alignas(64) atomic_int state;
    gpt_task_fn fn;
    void* ctx;
} helper_slot;

struct gpt_team {
    int n;
    gpt_help_mode mode;
    _Alignas(64) atomic_int lanes_left;
    helper_slot* slots; /* n */
    gpt_pool* lanes;    /* n lane pools */
};

gpt_team* gpt_team_create(int n, gpt_help_mode mode) {
    if (n < 1) n = 1;
    gpt_team* t = (gpt_team*)calloc(1, sizeof *t);
    if (!t) return NULL;
    t->n = n;
    t->mode = mode;
    t->slots = (helper_slot*)aligned_alloc(64, sizeof(helper_slot) * (size_t)n);
    t->lanes = (gpt_pool*)calloc((size_t)n, sizeof(gpt_pool));
    if (!t->slots || !t->lanes) {
        gpt_team_destroy(t);
        return NULL;
    }
    atomic_init(&t->lanes_left, 0);
    for (int i = 0; i < n; i++) {
        atomic_init(&t->slots[i].state, HELPER_BUSY);
        t->slots[i].fn = NULL;
        t->slots[i].ctx = NULL;
        t->lanes[i].n = 2;
        t->lanes[i].grain = mode == GPT_HELP_TEST ? 1.0 : GPT_POOL_GRAIN;
        t->lanes[i].team = t;
        t->lanes[i].lane = i;
    }
    return t;
}

void gpt_team_destroy(gpt_team* t) {
    if (!t) return;
    free(t->slots);
    free(t->lanes);
    free(t);
}

gpt_pool* gpt_team_lane(gpt_team* t, int i) { return &t->lanes[i]; }

int gpt_pool_split_invariant(const gpt_pool* p) { return p && p->team != NULL; }

void gpt_team_begin(gpt_team* t) {
    for (int i = 0; i < t->n; i++) atomic_store_explicit(&t->slots[i].state, HELPER_BUSY, memory_order_relaxed);
    atomic_store(&t->lanes_left, t->n);
}

void gpt_team_start(gpt_team* t, int i) {
    if (t->mode != GPT_HELP_TEST || i != 0) return;
    while (atomic_load(&t->lanes_left) > 1) CPU_RELAX();
}

static void team_run(gpt_pool* p, gpt_task_fn fn, void* ctx, int n) {
    gpt_team* t = p->team;
    for (int h = 0; n >= 2 && t->mode != GPT_HELP_OFF && h < t->n; h++) {
        helper_slot* s = &t->slots[h];
        int idle = HELPER_IDLE;
        if (h == p->lane || atomic_load_explicit(&s->state, memory_order_relaxed) != HELPER_IDLE ||
            !atomic_compare_exchange_strong(&s->state, &idle, HELPER_CLAIMED))
            continue;
        s->fn = fn;
        s->ctx = ctx;
        atomic_store_explicit(&s->state, HELPER_TASK, memory_order_release);
        fn(ctx, 0, 2);
        while (atomic_load_explicit(&s->state, memory_order_acquire) != HELPER_DONE) CPU_RELAX();
        atomic_store_explicit(&s->state, HELPER_IDLE, memory_order_release);
        return;
    }
    fn(ctx, 0, 1);
}

void gpt_team_help(gpt_team* t, int i) {
    helper_slot* s = &t->slots[i];
    atomic_store_explicit(&s->state, HELPER_IDLE, memory_order_release);
    atomic_fetch_sub(&t->lanes_left, 1);
    for (;;) {
        const int st = atomic_load_explicit(&s->state, memory_order_acquire);
        if (st == HELPER_TASK) {
            s->fn(s->ctx, 1, 2);
            atomic_store_explicit(&s->state, HELPER_DONE, memory_order_release);
            continue;
        }
        /* no lane left to claim this slot once every lane is done (a lane claims only
         * inside its own loops, and counts itself done after the last of them) */
        if (st == HELPER_IDLE && atomic_load(&t->lanes_left) == 0) {
            atomic_store_explicit(&s->state, HELPER_BUSY, memory_order_relaxed);
            return;
        }
        CPU_RELAX();
    }
}
