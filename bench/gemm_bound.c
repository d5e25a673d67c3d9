/*
 * gemm_bound.c: how fast could a training step go if its matmuls were all it did?
 *
 *   gemm_bound V T C L d_ff B threads lanes reps
 *
 * Runs the GEMMs of one training step of the native CPU backend (native/cpu/model.c),
 * with the same shapes, transposes and betas, and nothing else: no bias, GELU,
 * attention, LayerNorm, softmax, AdamW. With lanes > 1 each of `lanes` threads runs the
 * list over its own B*T/lanes rows at once, as the backend's batch-parallel lanes do
 * (the small GEMMs by native/cpu/sgemm_small.c, the rest by a one-threaded BLAS); with
 * lanes = 1 one list over all rows, each GEMM threaded by the BLAS on `threads` threads.
 * Every GEMM has its own activation buffers, so the step's memory footprint (and its
 * cache misses) is kept.
 *
 * Prints one line: {"stepS": median seconds per step, "gemmFlops": FLOPs per step}.
 * bench/bench.ts turns it into the tokens/s a step can never beat with these GEMMs.
 */
#define _POSIX_C_SOURCE 200809L
#if defined(__APPLE__)
#define _DARWIN_C_SOURCE /* what Accelerate's headers need */
#endif
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sgemm_small.h"

#if defined(__APPLE__)
#define ACCELERATE_NEW_LAPACK
#include <Accelerate/Accelerate.h>
#else
#include <cblas.h>
extern void openblas_set_num_threads(int) __attribute__((weak));
#endif

typedef struct {
    int ta, tb;     /* op(A) = A^T, op(B) = B^T */
    long M, N, K;   /* C(M,N) = op(A)(M,K) op(B)(K,N) + beta C */
    float beta;
    float *A, *B, *C;
} gemm;

#define MAX_GEMMS 512

typedef struct {
    gemm g[MAX_GEMMS];
    int n;
} gemm_list;

static float* filled(long n) {
    float* p = (float*)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!p) {
        fprintf(stderr, "gemm_bound: out of memory\n");
        exit(1);
    }
    for (long i = 0; i < n; i++) p[i] = (float)((i * 7919) % 1009) * 1e-3f - 0.5f;
    return p;
}

static void add(gemm_list* l, int ta, int tb, long M, long N, long K, float beta, const float* W) {
    if (l->n == MAX_GEMMS) {
        fprintf(stderr, "gemm_bound: more than %d GEMMs\n", MAX_GEMMS);
        exit(1);
    }
    /* the weight operand is shared (one parameter buffer); activations are the GEMM's own */
    gemm g = {ta, tb, M, N, K, beta, filled(M * K), (float*)W, filled(M * N)};
    if (!W) g.B = filled(K * N);
    l->g[l->n++] = g;
}

/* model.c's matmuls for n rows: forward x W^T (nn.Linear), backward dx = dy W (beta 0)
 * and dW += dy^T x (beta 1: the lane's gradient buffer accumulates). The forward GEMMs of
 * attention's and the MLP's projections run with beta 1 over the residual (plus bias)
 * written into their output first; so do qkv's and fc's over their bias, unless the small
 * GEMM takes them and starts its sums from the bias (kernels_matmul.c's fwd_bias_job): beta 0. */
static void build(gemm_list* l, long V, long C, long L, long F, long n, float* const* W, const float* wte) {
    const long shape[4][2] = {{3 * C, C}, {C, C}, {F, C}, {C, F}}; /* (out, in): qkv, attn proj, fc, mlp proj */
    for (long layer = 0; layer < L; layer++)
        for (int m = 0; m < 4; m++) {
            const int from_bias = m % 2 == 0 && gpt_sgemm_small_fits(0, shape[m][0], shape[m][1], 0.0f);
            add(l, 0, 1, n, shape[m][0], shape[m][1], from_bias ? 0.0f : 1.0f, W[m]);
        }
    add(l, 0, 1, n, V, C, 0.0f, wte); /* logits = x wte^T */
    add(l, 0, 0, n, C, V, 0.0f, wte); /* dx = dlogits wte */
    add(l, 1, 0, V, C, n, 1.0f, NULL); /* dwte += dlogits^T x */
    for (long layer = 0; layer < L; layer++)
        for (int m = 3; m >= 0; m--) {
            add(l, 0, 0, n, shape[m][1], shape[m][0], 0.0f, W[m]);
            add(l, 1, 0, shape[m][0], shape[m][1], n, 1.0f, NULL);
        }
}

static void run_list(const gemm_list* l, int small) {
    for (int i = 0; i < l->n; i++) {
        const gemm* g = &l->g[i];
        const long lda = g->ta ? g->M : g->K, ldb = g->tb ? g->K : g->N;
        if (small && gpt_sgemm_small_fits(g->ta, g->N, g->K, g->beta)) {
            gpt_sgemm_small(g->tb, g->M, g->N, g->K, 1.0f, g->A, lda, g->B, ldb, g->beta, g->C, g->N);
            continue;
        }
        cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans, (int)g->M,
                    (int)g->N, (int)g->K, 1.0f, g->A, (int)lda, g->B, (int)ldb, g->beta, g->C, (int)g->N);
    }
}

static void* lane_main(void* list) {
    run_list((const gemm_list*)list, 1);
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int by_value(const void* a, const void* b) {
    const double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

int main(int argc, char** argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: gemm_bound V T C L d_ff B threads lanes reps\n");
        return 2;
    }
    long v[9];
    for (int i = 0; i < 9; i++) {
        v[i] = strtol(argv[i + 1], NULL, 10);
        if (v[i] < 1) {
            fprintf(stderr, "gemm_bound: argument %d (%s) must be a positive integer\n", i + 1, argv[i + 1]);
            return 2;
        }
    }
    const long V = v[0], T = v[1], C = v[2], L = v[3], F = v[4], B = v[5], threads = v[6], lanes = v[7], reps = v[8];
    if (B % lanes != 0 || lanes > 64) {
        fprintf(stderr, "gemm_bound: B=%ld is not a multiple of lanes=%ld (or lanes > 64)\n", B, lanes);
        return 2;
    }
#if !defined(__APPLE__)
    if (openblas_set_num_threads) openblas_set_num_threads(lanes > 1 ? 1 : (int)threads);
#else
    (void)threads; /* Accelerate picks its own */
#endif
    const long n = B * T / lanes;
    float* W[4] = {filled(3 * C * C), filled(C * C), filled(F * C), filled(C * F)};
    float* wte = filled(V * C);
    gemm_list* lists = (gemm_list*)calloc((size_t)lanes, sizeof(gemm_list));
    double flops = 0.0;
    for (long i = 0; i < lanes; i++) build(&lists[i], V, C, L, F, n, W, wte);
    for (long i = 0; i < lanes; i++)
        for (int j = 0; j < lists[i].n; j++) flops += 2.0 * lists[i].g[j].M * lists[i].g[j].N * lists[i].g[j].K;

    /* threads started per step (tens of microseconds against steps of milliseconds):
     * portable where pthread barriers are not (macOS) */
    const int total = (int)reps + 1; /* one warm-up */
    double* times = (double*)calloc((size_t)total, sizeof(double));
    pthread_t th[64];
    for (int r = 0; r < total; r++) {
        const double t0 = now();
        if (lanes == 1) {
            run_list(&lists[0], 0);
        } else {
            for (long i = 0; i < lanes; i++) pthread_create(&th[i], NULL, lane_main, &lists[i]);
            for (long i = 0; i < lanes; i++) pthread_join(th[i], NULL);
        }
        times[r] = now() - t0;
    }
    qsort(times + 1, (size_t)reps, sizeof(double), by_value);
    printf("{\"stepS\": %.9f, \"gemmFlops\": %.0f}\n", times[1 + reps / 2], flops);
    return 0;
}
