/*
 * kernels_matmul.c: the linear layers of the GPT-2 step (see kernels.h): GEMMs split by
 * rows over the pool with their fused prologues (bias, residual) and epilogues (GELU,
 * column sums), the GELU itself, and one GEMM on the calling thread (attention's).
 */
#define _POSIX_C_SOURCE 200809L
#if defined(__APPLE__)
#define _DARWIN_C_SOURCE /* what Accelerate's headers need */
#endif
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "sgemm_small.h"
#include "simd.h"

#if defined(__linux__) && !defined(__APPLE__)
/* Present when OpenBLAS is the BLAS (linked statically by scripts/build-native.ts). */
extern void openblas_set_num_threads(int) __attribute__((weak));
#endif

void gpt_blas_set_threads(int n) {
#if defined(__linux__) && !defined(__APPLE__)
    if (openblas_set_num_threads) openblas_set_num_threads(GPT_BLAS_SPLIT ? 1 : n);
#else
    (void)n;
#endif
}

/* ------------------------------------------------------------------------------------
 * GEMM jobs: C(M,N) = alpha op(A) op(B) + beta C, row-major, split by rows of C over the
 * pool, each thread then running an epilogue on the rows it computed.
 * ---------------------------------------------------------------------------------- */

/* Row parts start on multiples of this (whole micro-tiles, no false sharing). */
#define GEMM_ROW_ALIGN 16

typedef struct {
    int ta, tb;
    int64_t M, N, K;
    float alpha;
    const float* A;
    int64_t lda;
    const float* B;
    int64_t ldb;
    float beta;
    float* C;
    int64_t ldc;
    const float* bias; /* or NULL; else C = op(A) op(B) + bias by the small GEMM (see fwd_bias_job) */
} gemm_args;

/* Whether native/cpu/sgemm_small.c takes this GEMM (it does every one with a bias). */
static int small_gemm_takes(const gemm_args* g) {
    return GPT_BLAS_SPLIT && g->K > 0 && gpt_sgemm_small_fits(g->ta, g->N, g->K, g->beta);
}

static void sgemm_rows(const gemm_args* g, int64_t r0, int64_t r1) {
    if (r1 <= r0 || g->N <= 0) return;
    float* C = g->C + r0 * g->ldc;
    if (g->K <= 0) {
        for (int64_t r = 0; r < r1 - r0; r++)
            for (int64_t c = 0; c < g->N; c++) C[r * g->ldc + c] = g->beta == 0.0f ? 0.0f : g->beta * C[r * g->ldc + c];
        return;
    }
    const float* A = g->ta ? g->A + r0 : g->A + r0 * g->lda;
    if (g->bias) {
        gpt_sgemm_small_bias(g->tb, r1 - r0, g->N, g->K, A, g->lda, g->B, g->ldb, g->bias, C, g->ldc);
        return;
    }
    if (small_gemm_takes(g)) {
        gpt_sgemm_small(g->tb, r1 - r0, g->N, g->K, g->alpha, A, g->lda, g->B, g->ldb, g->beta, C, g->ldc);
        return;
    }
    cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans,
                (int)(r1 - r0), (int)g->N, (int)g->K, g->alpha, A, (int)g->lda, g->B, (int)g->ldb, g->beta, C,
                (int)g->ldc);
}

/* One GEMM on the calling thread (see kernels.h). */
void k_sgemm(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
             const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    gemm_args g = {ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL};
    sgemm_rows(&g, 0, M);
}

typedef void (*epi_fn)(const void* ctx, int64_t r0, int64_t r1);

/* A GEMM with an optional prologue (fills rows of C before a beta = 1 GEMM adds to
 * them: a bias, a residual; it saves the BLAS a pass zeroing C) and an optional
 * epilogue (GELU, column sums) on the rows just computed. */
typedef struct {
    gemm_args g;
    epi_fn pro;      /* may be NULL */
    epi_fn epi;      /* may be NULL */
    const void* ctx;
} gemm_job;

enum { PHASE_PRO = 1, PHASE_GEMM = 2, PHASE_EPI = 4 };

typedef struct {
    const gemm_job* jobs;
    int n;
    int phases;
    int invariant; /* results must not depend on nt (gpt_pool_split_invariant) */
} jobs_task;

/* Whether C's rows come out the same however they are split over calls: the small GEMM
 * sums every element alone, in order; a BLAS may block a part differently from the whole
 * (OpenBLAS's TN GEMMs do). */
static int gemm_rows_exact(const gemm_args* g) {
    return g->K <= 0 || g->bias || small_gemm_takes(g);
}

static void jobs_worker(void* vctx, int tid, int nt) {
    const jobs_task* t = (const jobs_task*)vctx;
    /* with split-invariant results required, jobs whose GEMM is not row-exact run whole,
     * one a thread from the last one down; the others split over the threads left (all
     * of them when whole jobs took every thread) */
    int nwhole = 0;
    for (int j = 0; t->invariant && j < t->n; j++) nwhole += !gemm_rows_exact(&t->jobs[j].g);
    const int nsplit = nwhole > 0 && nwhole < nt ? nt - nwhole : nt;
    for (int j = 0, w = 0; j < t->n; j++) {
        const gemm_job* job = &t->jobs[j];
        int64_t r0, r1;
        if (t->invariant && !gemm_rows_exact(&job->g)) {
            const int owner = nt - 1 - w++ % nt;
            if (tid != owner) continue;
            r0 = 0;
            r1 = job->g.M;
        } else {
            if (tid >= nsplit) continue;
            gpt_split_aligned(job->g.M, GEMM_ROW_ALIGN, tid, nsplit, &r0, &r1);
        }
        if (r1 <= r0) continue;
        if ((t->phases & PHASE_PRO) && job->pro) job->pro(job->ctx, r0, r1);
        if (t->phases & PHASE_GEMM) sgemm_rows(&job->g, r0, r1);
        if ((t->phases & PHASE_EPI) && job->epi) job->epi(job->ctx, r0, r1);
    }
}

static void run_gemm_jobs(gpt_pool* p, const gemm_job* jobs, int n) {
    jobs_task t = {jobs, n, PHASE_PRO | PHASE_GEMM | PHASE_EPI, gpt_pool_split_invariant(p)};
    if (!GPT_BLAS_SPLIT) {
        /* prologues in parallel, each GEMM by the (threaded) BLAS, epilogues in parallel */
        int any_pro = 0, any_epi = 0;
        for (int j = 0; j < n; j++) {
            any_pro |= jobs[j].pro != NULL;
            any_epi |= jobs[j].epi != NULL;
        }
        if (any_pro) {
            t.phases = PHASE_PRO;
            gpt_pool_run(p, jobs_worker, &t);
        }
        for (int j = 0; j < n; j++) sgemm_rows(&jobs[j].g, 0, jobs[j].g.M);
        if (!any_epi) return;
        t.phases = PHASE_EPI;
    }
    double work = 0.0;
    for (int j = 0; j < n; j++) work += 2.0 * (double)jobs[j].g.M * (double)jobs[j].g.N * (double)(jobs[j].g.K + 1);
    gpt_pool_run_for(p, jobs_worker, &t, work);
}


/* ------------------------------------------------------------------------------------
 * Elementwise maths
 * ---------------------------------------------------------------------------------- */

#define GELU_K0 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_K1 0.044715f

/* gelu(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3) */
#define v8_gelu(xin)                                                    \
    ({                                                                  \
        v8f gx_ = (xin);                                                \
        v8f gu_ = gx_ * (GELU_K0 + (GELU_K0 * GELU_K1) * (gx_ * gx_)); \
        gx_ / (1.0f + v8_exp(-2.0f * gu_));                             \
    })

/* gelu'(x) = s + 2 x s (1 - s) du/dx, s = sigmoid(2u) (0.5 (1 + tanh u) = s, 1 - tanh^2 u = 4 s (1 - s)) */
#define v8_gelu_grad(xin)                                                 \
    ({                                                                    \
        v8f gg_x_ = (xin);                                                \
        v8f gg_x2_ = gg_x_ * gg_x_;                                       \
        v8f gg_u_ = gg_x_ * (GELU_K0 + (GELU_K0 * GELU_K1) * gg_x2_);     \
        v8f gg_s_ = 1.0f / (1.0f + v8_exp(-2.0f * gg_u_));                \
        v8f gg_du_ = GELU_K0 + (3.0f * GELU_K0 * GELU_K1) * gg_x2_;       \
        gg_s_ + 2.0f * gg_x_ * gg_s_ * (1.0f - gg_s_) * gg_du_;           \
    })

GPT_HOT static void gelu_fwd_span(float* out, const float* inp, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) v8_store(out + i, v8_gelu(v8_load(inp + i)));
    if (i < n) v8_store_part(out + i, v8_gelu(v8_load_part(inp + i, n - i)), n - i);
}

/* out = gelu(pre), and pre = gelu'(pre): what the backward multiplies by when the GELU
 * output is kept (the same expressions as gelu_fwd_span and gelu_bwd_span: the same bits) */
GPT_HOT static void gelu_fwd_keep_grad_span(float* out, float* pre, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const v8f x = v8_load(pre + i);
        v8_store(out + i, v8_gelu(x));
        v8_store(pre + i, v8_gelu_grad(x));
    }
    if (i < n) {
        const v8f x = v8_load_part(pre + i, n - i);
        v8_store_part(out + i, v8_gelu(x), n - i);
        v8_store_part(pre + i, v8_gelu_grad(x), n - i);
    }
}

/* d *= s elementwise */
GPT_HOT static void mul_span(float* d, const float* s, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) v8_store(d + i, v8_load(s + i) * v8_load(d + i));
    for (; i < n; i++) d[i] = s[i] * d[i];
}

/* dinp = gelu'(inp) * dout (dinp may alias dout) */
GPT_HOT static void gelu_bwd_span(float* dinp, const float* inp, const float* dout, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) v8_store(dinp + i, v8_gelu_grad(v8_load(inp + i)) * v8_load(dout + i));
    if (i < n) {
        v8f d = v8_gelu_grad(v8_load_part(inp + i, n - i)) * v8_load_part(dout + i, n - i);
        v8_store_part(dinp + i, d, n - i);
    }
}


/* ------------------------------------------------------------------------------------
 * Linear layers
 * ---------------------------------------------------------------------------------- */

typedef struct {
    float* out;        /* rows of the GEMM output */
    float* out2;       /* gelu output */
    const float* res;  /* residual */
    const float* bias;
    const float* pre;  /* gelu input (backward) */
    const float* dout; /* column sums source */
    float* dbias;
    int64_t N;
    int64_t ld;
} epi_ctx;

/* out rows = bias (the GEMM then adds inp W^T) */
static void pro_bias(const void* vctx, int64_t r0, int64_t r1) {
    const epi_ctx* e = (const epi_ctx*)vctx;
    for (int64_t r = r0; r < r1; r++) memcpy(e->out + r * e->ld, e->bias, sizeof(float) * (size_t)e->ld);
}

/* out rows = res + bias (or res) */
GPT_HOT static void pro_bias_residual(const void* vctx, int64_t r0, int64_t r1) {
    const epi_ctx* e = (const epi_ctx*)vctx;
    if (!e->bias) {
        memcpy(e->out + r0 * e->ld, e->res + r0 * e->ld, sizeof(float) * (size_t)((r1 - r0) * e->ld));
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        float* o = e->out + r * e->ld;
        const float* a = e->res + r * e->ld;
        for (int64_t c = 0; c < e->ld; c++) o[c] = a[c] + e->bias[c];
    }
}

static void epi_gelu(const void* vctx, int64_t r0, int64_t r1) {
    const epi_ctx* e = (const epi_ctx*)vctx;
    gelu_fwd_span(e->out2 + r0 * e->ld, e->out + r0 * e->ld, (r1 - r0) * e->ld);
}

static void epi_gelu_keep_grad(const void* vctx, int64_t r0, int64_t r1) {
    const epi_ctx* e = (const epi_ctx*)vctx;
    gelu_fwd_keep_grad_span(e->out2 + r0 * e->ld, e->out + r0 * e->ld, (r1 - r0) * e->ld);
}

/* out rows *= the saved gelu' (k_matmul_gelu_fwd_keep_grad) */
static void epi_gelu_grad_mul(const void* vctx, int64_t r0, int64_t r1) {
    const epi_ctx* e = (const epi_ctx*)vctx;
    mul_span(e->out + r0 * e->ld, e->pre + r0 * e->ld, (r1 - r0) * e->ld);
}

static void epi_gelu_bwd(const void* vctx, int64_t r0, int64_t r1) {
    const epi_ctx* e = (const epi_ctx*)vctx;
    gelu_bwd_span(e->out + r0 * e->ld, e->pre + r0 * e->ld, e->out + r0 * e->ld, (r1 - r0) * e->ld);
}

/* dbias[c0:c1] = column sums of dout(N, ld) over all rows: float sums of 64 rows at a
 * time added up, 256 columns at a time. */
#define COLSUM_ROWS 64
#define COLSUM_COLS 256
GPT_HOT static void epi_colsum(const void* vctx, int64_t c0, int64_t c1) {
    const epi_ctx* e = (const epi_ctx*)vctx;
    if (!e->dbias) return;
    float part[COLSUM_COLS];
    for (int64_t cb = c0; cb < c1; cb += COLSUM_COLS) {
        const int64_t w = min64(COLSUM_COLS, c1 - cb);
        float* db = e->dbias + cb;
        for (int64_t c = 0; c < w; c++) db[c] = 0.0f;
        for (int64_t rb = 0; rb < e->N; rb += COLSUM_ROWS) {
            const int64_t re = min64(e->N, rb + COLSUM_ROWS);
            for (int64_t c = 0; c < w; c++) part[c] = 0.0f;
            for (int64_t r = rb; r < re; r++) {
                const float* d = e->dout + r * e->ld + cb;
                for (int64_t c = 0; c < w; c++) part[c] += d[c];
            }
            for (int64_t c = 0; c < w; c++) db[c] += part[c];
        }
    }
}

/* out(N,OC) (+)= inp(N,IC) W(OC,IC)^T: beta 1 when a prologue filled out */
static gemm_args fwd_args(float* out, const float* inp, const float* W, int64_t N, int IC, int OC, int add) {
    gemm_args g = {0, 1, N, OC, IC, 1.0f, inp, IC, W, IC, add ? 1.0f : 0.0f, out, OC, NULL};
    return g;
}

/* out = inp W^T + bias (bias may be NULL), then epi: the small GEMM starts its sums from
 * the bias; a BLAS adds to the bias a prologue wrote into out */
static gemm_job fwd_bias_job(const epi_ctx* e, const float* inp, const float* W, int64_t N, int IC, int OC,
                             epi_fn epi) {
    gemm_job job = {fwd_args(e->out, inp, W, N, IC, OC, 0), NULL, epi, e};
    if (!e->bias) return job;
    if (small_gemm_takes(&job.g)) { /* beta 0 */
        job.g.bias = e->bias;
    } else {
        job.g.beta = 1.0f;
        job.pro = pro_bias;
    }
    return job;
}

void k_matmul_fwd(gpt_pool* p, float* out, const float* inp, const float* W, const float* bias, int64_t N, int IC,
                  int OC) {
    epi_ctx e = {.out = out, .bias = bias, .N = N, .ld = OC};
    gemm_job job = fwd_bias_job(&e, inp, W, N, IC, OC, NULL);
    run_gemm_jobs(p, &job, 1);
}

void k_matmul_gelu_fwd(gpt_pool* p, float* pre, float* out, const float* inp, const float* W, const float* bias,
                       int64_t N, int IC, int OC) {
    epi_ctx e = {.out = pre, .out2 = out, .bias = bias, .N = N, .ld = OC};
    gemm_job job = fwd_bias_job(&e, inp, W, N, IC, OC, epi_gelu);
    run_gemm_jobs(p, &job, 1);
}

void k_matmul_gelu_fwd_keep_grad(gpt_pool* p, float* pre, float* out, const float* inp, const float* W,
                                 const float* bias, int64_t N, int IC, int OC) {
    epi_ctx e = {.out = pre, .out2 = out, .bias = bias, .N = N, .ld = OC};
    gemm_job job = fwd_bias_job(&e, inp, W, N, IC, OC, epi_gelu_keep_grad);
    run_gemm_jobs(p, &job, 1);
}

void k_matmul_residual_fwd(gpt_pool* p, float* out, const float* res, const float* inp, const float* W,
                           const float* bias, int64_t N, int IC, int OC) {
    epi_ctx e = {.out = out, .res = res, .bias = bias, .N = N, .ld = OC};
    gemm_job job = {fwd_args(out, inp, W, N, IC, OC, 1), pro_bias_residual, NULL, &e};
    run_gemm_jobs(p, &job, 1);
}

/* dinp_epi (may be NULL) runs on dinp's rows with eg.pre = gelu */
static void matmul_bwd(gpt_pool* p, float* dinp, float* dW, float* dbias, const float* dout, const float* inp,
                       const float* W, epi_fn dinp_epi, const float* gelu, int64_t N, int IC, int OC,
                       float dW_beta) {
    epi_ctx eg = {.out = dinp, .pre = gelu, .N = N, .ld = IC};
    epi_ctx eb = {.dout = dout, .dbias = dbias, .N = N, .ld = OC};
    gemm_job jobs[2] = {
        /* dinp(N,IC) = dout(N,OC) W(OC,IC) */
        {{0, 0, N, IC, OC, 1.0f, dout, OC, W, IC, 0.0f, dinp, IC, NULL}, NULL, dinp_epi, &eg},
        /* dW(OC,IC) = dout^T inp(N,IC); rows of dW are columns of dout: their bias sums too */
        {{1, 0, OC, IC, N, 1.0f, dout, OC, inp, IC, dW_beta, dW, IC, NULL}, NULL, dbias ? epi_colsum : NULL, &eb},
    };
    run_gemm_jobs(p, jobs, 2);
}

void k_matmul_bwd(gpt_pool* p, float* dinp, float* dW, float* dbias, const float* dout, const float* inp,
                  const float* W, const float* gelu_pre, int64_t N, int IC, int OC) {
    matmul_bwd(p, dinp, dW, dbias, dout, inp, W, gelu_pre ? epi_gelu_bwd : NULL, gelu_pre, N, IC, OC, 0.0f);
}

void k_matmul_bwd_gelu_grad(gpt_pool* p, float* dinp, float* dW, float* dbias, const float* dout, const float* inp,
                            const float* W, const float* gelu_grad, int64_t N, int IC, int OC) {
    matmul_bwd(p, dinp, dW, dbias, dout, inp, W, epi_gelu_grad_mul, gelu_grad, N, IC, OC, 0.0f);
}

void k_matmul_bwd_add(gpt_pool* p, float* dinp, float* dW, const float* dout, const float* inp, const float* W,
                      int64_t N, int IC, int OC) {
    matmul_bwd(p, dinp, dW, NULL, dout, inp, W, NULL, NULL, N, IC, OC, 1.0f);
}


/* ------------------------------------------------------------------------------------
 * GELU as a standalone op (the model fuses it into the GEMM epilogues above; alone it
 * recomputes a GELU output the model did not keep)
 * ---------------------------------------------------------------------------------- */

typedef struct {
    float* out;
    const float* a;
    const float* b;
    int64_t n;
} gelu_ctx;

static void gelu_fwd_task(void* vctx, int tid, int nt) {
    const gelu_ctx* e = (const gelu_ctx*)vctx;
    int64_t i0, i1;
    gpt_split_aligned(e->n, EW_ALIGN, tid, nt, &i0, &i1);
    if (i1 > i0) gelu_fwd_span(e->out + i0, e->a + i0, i1 - i0);
}

void k_gelu_fwd(gpt_pool* p, float* out, const float* inp, int64_t n) {
    gelu_ctx e = {.out = out, .a = inp, .n = n};
    gpt_pool_run_for(p, gelu_fwd_task, &e, 30.0 * (double)n);
}

static void gelu_bwd_task(void* vctx, int tid, int nt) {
    const gelu_ctx* e = (const gelu_ctx*)vctx;
    int64_t i0, i1;
    gpt_split_aligned(e->n, EW_ALIGN, tid, nt, &i0, &i1);
    if (i1 > i0) gelu_bwd_span(e->out + i0, e->a + i0, e->b + i0, i1 - i0);
}

void k_gelu_bwd(gpt_pool* p, float* dinp, const float* inp, const float* dout, int64_t n) {
    gelu_ctx e = {.out = dinp, .a = inp, .b = dout, .n = n};
    gpt_pool_run_for(p, gelu_bwd_task, &e, 40.0 * (double)n);
}
