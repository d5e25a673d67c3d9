/*
 * kernels.c: forward and backward of every op of the GPT-2 training step (see kernels.h).
 * Shapes in comments; N = B*T rows. Hot elementwise code uses the 8-lane vectors of
 * simd.h with reductions in a fixed order, so results never depend on vectorization.
 */
#define _POSIX_C_SOURCE 200809L
#if defined(__APPLE__)
#define _DARWIN_C_SOURCE /* sysconf(_SC_NPROCESSORS_ONLN), and what Accelerate's headers need */
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

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* A parallel loop on as many threads as `work` (about flops) is worth. */
#define RUN(p, fn, ctx, work) gpt_pool_run_n((p), (fn), (ctx), gpt_pool_threads_for((p), (work)))

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

/* Single-threaded sgemm on the calling thread (attention: one (b, h) pair per call). */
static inline void sgemm1(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
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
    RUN(p, jobs_worker, &t, work);
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

/* Loads/stores of the first n < 8 lanes (tails), zero-filled. */
#define v8_load_part(p, n)                                            \
    ({                                                                \
        v8f lp_v_ = v8_zero();                                        \
        for (int64_t lp_i_ = 0; lp_i_ < (n); lp_i_++) lp_v_[lp_i_] = (p)[lp_i_]; \
        lp_v_;                                                        \
    })
#define v8_store_part(p, v, n)                                        \
    do {                                                              \
        v8f sp_v_ = (v);                                              \
        for (int64_t sp_i_ = 0; sp_i_ < (n); sp_i_++) (p)[sp_i_] = sp_v_[sp_i_]; \
    } while (0)

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
 * Embedding
 * ---------------------------------------------------------------------------------- */

typedef struct {
    float* out;
    float* dwte;
    float* dwpe;
    const float* dout;
    const int32_t* x;
    const float* wte;
    const float* wpe;
    int B, T, C;
} enc_ctx;

static void encoder_fwd_task(void* vctx, int tid, int nt) {
    const enc_ctx* e = (const enc_ctx*)vctx;
    int64_t r0, r1;
    gpt_split((int64_t)e->B * e->T, tid, nt, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        float* o = e->out + r * e->C;
        const float* a = e->wte + (int64_t)e->x[r] * e->C;
        const float* b = e->wpe + (r % e->T) * e->C;
        for (int c = 0; c < e->C; c++) o[c] = a[c] + b[c];
    }
}

void k_encoder_fwd(gpt_pool* p, float* out, const int32_t* x, const float* wte, const float* wpe, int B, int T,
                   int C) {
    enc_ctx e = {.out = out, .x = x, .wte = wte, .wpe = wpe, .B = B, .T = T, .C = C};
    RUN(p, encoder_fwd_task, &e, 3.0 * B * T * C);
}

/* Split by channels: every thread walks all rows in order, over its own columns. */
static void encoder_bwd_task(void* vctx, int tid, int nt) {
    const enc_ctx* e = (const enc_ctx*)vctx;
    int64_t c0, c1;
    gpt_split_aligned(e->C, 16, tid, nt, &c0, &c1);
    for (int64_t r = 0; r < (int64_t)e->B * e->T; r++) {
        const float* d = e->dout + r * e->C;
        float* a = e->dwte + (int64_t)e->x[r] * e->C;
        float* b = e->dwpe + (r % e->T) * e->C;
        for (int64_t c = c0; c < c1; c++) {
            a[c] += d[c];
            b[c] += d[c];
        }
    }
}

void k_encoder_bwd(gpt_pool* p, float* dwte, float* dwpe, const float* dout, const int32_t* x, int B, int T, int C) {
    enc_ctx e = {.dwte = dwte, .dwpe = dwpe, .dout = dout, .x = x, .B = B, .T = T, .C = C};
    RUN(p, encoder_bwd_task, &e, 4.0 * B * T * C);
}

/* ------------------------------------------------------------------------------------
 * LayerNorm
 * ---------------------------------------------------------------------------------- */

/* Rows per partial sum of dw, db in the backward (fixed: thread-count independent). */
#define LN_CHUNK 32

typedef struct {
    float* out;
    float* mean;
    float* rstd;
    float* dinp;
    float* dw;
    float* db;
    float* scratch;
    const float* dout;
    const float* inp;
    const float* w;
    const float* b;
    const float* cmean;
    const float* crstd;
    int64_t N;
    int C;
} ln_ctx;

GPT_HOT static void ln_fwd_rows(const ln_ctx* l, int64_t r0, int64_t r1) {
    const int C = l->C;
    for (int64_t r = r0; r < r1; r++) {
        const float* x = l->inp + r * C;
        float* o = l->out + r * C;
        v8f acc = v8_zero();
        int c = 0;
        for (; c + 8 <= C; c += 8) acc += v8_load(x + c);
        float s = v8_hsum(acc);
        for (; c < C; c++) s += x[c];
        const float m = s / (float)C;
        acc = v8_zero();
        for (c = 0; c + 8 <= C; c += 8) {
            v8f d = v8_load(x + c) - m;
            acc += d * d;
        }
        float s2 = v8_hsum(acc);
        for (; c < C; c++) s2 += (x[c] - m) * (x[c] - m);
        const float rs = 1.0f / sqrtf(s2 / (float)C + GPT_LN_EPS);
        for (c = 0; c + 8 <= C; c += 8)
            v8_store(o + c, (v8_load(x + c) - m) * rs * v8_load(l->w + c) + v8_load(l->b + c));
        for (; c < C; c++) o[c] = (x[c] - m) * rs * l->w[c] + l->b[c];
        l->mean[r] = m;
        l->rstd[r] = rs;
    }
}

static void ln_fwd_task(void* vctx, int tid, int nt) {
    const ln_ctx* l = (const ln_ctx*)vctx;
    int64_t r0, r1;
    gpt_split(l->N, tid, nt, &r0, &r1);
    ln_fwd_rows(l, r0, r1);
}

void k_layernorm_fwd(gpt_pool* p, float* out, float* mean, float* rstd, const float* inp, const float* w,
                     const float* b, int64_t N, int C) {
    ln_ctx l = {.out = out, .mean = mean, .rstd = rstd, .inp = inp, .w = w, .b = b, .N = N, .C = C};
    RUN(p, ln_fwd_task, &l, 8.0 * (double)N * C);
}

/* out = (inp - mean) * rstd * w + b with the saved statistics: ln_fwd_rows's output again. */
GPT_HOT static void ln_apply_rows(const ln_ctx* l, int64_t r0, int64_t r1) {
    const int C = l->C;
    for (int64_t r = r0; r < r1; r++) {
        const float* x = l->inp + r * C;
        float* o = l->out + r * C;
        const float m = l->cmean[r], rs = l->crstd[r];
        int c = 0;
        for (; c + 8 <= C; c += 8)
            v8_store(o + c, (v8_load(x + c) - m) * rs * v8_load(l->w + c) + v8_load(l->b + c));
        for (; c < C; c++) o[c] = (x[c] - m) * rs * l->w[c] + l->b[c];
    }
}

static void ln_apply_task(void* vctx, int tid, int nt) {
    const ln_ctx* l = (const ln_ctx*)vctx;
    int64_t r0, r1;
    gpt_split(l->N, tid, nt, &r0, &r1);
    ln_apply_rows(l, r0, r1);
}

void k_layernorm_apply(gpt_pool* p, float* out, const float* inp, const float* w, const float* b, const float* mean,
                       const float* rstd, int64_t N, int C) {
    ln_ctx l = {.out = out, .inp = inp, .w = w, .b = b, .cmean = mean, .crstd = rstd, .N = N, .C = C};
    RUN(p, ln_apply_task, &l, 4.0 * (double)N * C);
}

int64_t k_layernorm_bwd_scratch(int64_t N, int C) { return (N + LN_CHUNK - 1) / LN_CHUNK * 2 * (int64_t)C; }

/* Rows of chunk ch: dinp += ...; the chunk's partial dw, db into scratch. */
GPT_HOT static void ln_bwd_chunk(const ln_ctx* l, int64_t ch) {
    const int C = l->C;
    float* pdw = l->scratch + ch * 2 * C;
    float* pdb = pdw + C;
    memset(pdw, 0, sizeof(float) * 2 * (size_t)C);
    const int64_t r1 = min64(l->N, (ch + 1) * LN_CHUNK);
    for (int64_t r = ch * LN_CHUNK; r < r1; r++) {
        const float* x = l->inp + r * C;
        const float* d = l->dout + r * C;
        float* di = l->dinp + r * C;
        const float m = l->cmean[r], rs = l->crstd[r];
        /* mean of dnorm = d * w and of dnorm * norm */
        v8f a1 = v8_zero(), a2 = v8_zero();
        int c = 0;
        for (; c + 8 <= C; c += 8) {
            v8f dn = v8_load(d + c) * v8_load(l->w + c);
            v8f nrm = (v8_load(x + c) - m) * rs;
            a1 += dn;
            a2 += dn * nrm;
        }
        float s1 = v8_hsum(a1), s2 = v8_hsum(a2);
        for (; c < C; c++) {
            float dn = d[c] * l->w[c];
            s1 += dn;
            s2 += dn * ((x[c] - m) * rs);
        }
        const float mdn = s1 / (float)C, mdnn = s2 / (float)C;
        for (c = 0; c + 8 <= C; c += 8) {
            v8f dd = v8_load(d + c);
            v8f nrm = (v8_load(x + c) - m) * rs;
            v8f dn = dd * v8_load(l->w + c);
            v8_store(di + c, v8_load(di + c) + rs * (dn - mdn - nrm * mdnn));
            v8_store(pdw + c, v8_load(pdw + c) + dd * nrm);
            v8_store(pdb + c, v8_load(pdb + c) + dd);
        }
        for (; c < C; c++) {
            float nrm = (x[c] - m) * rs;
            float dn = d[c] * l->w[c];
            di[c] += rs * (dn - mdn - nrm * mdnn);
            pdw[c] += d[c] * nrm;
            pdb[c] += d[c];
        }
    }
}

static void ln_bwd_task(void* vctx, int tid, int nt) {
    const ln_ctx* l = (const ln_ctx*)vctx;
    int64_t ch0, ch1;
    gpt_split((l->N + LN_CHUNK - 1) / LN_CHUNK, tid, nt, &ch0, &ch1);
    for (int64_t ch = ch0; ch < ch1; ch++) ln_bwd_chunk(l, ch);
}

/* dw, db = sums of the chunk partials, in chunk order, split by channels. */
static void ln_bwd_reduce_task(void* vctx, int tid, int nt) {
    const ln_ctx* l = (const ln_ctx*)vctx;
    const int64_t nch = (l->N + LN_CHUNK - 1) / LN_CHUNK;
    int64_t c0, c1;
    gpt_split_aligned(l->C, 16, tid, nt, &c0, &c1);
    for (int64_t c = c0; c < c1; c++) {
        l->dw[c] = 0.0f;
        l->db[c] = 0.0f;
    }
    for (int64_t ch = 0; ch < nch; ch++) {
        const float* pdw = l->scratch + ch * 2 * l->C;
        const float* pdb = pdw + l->C;
        for (int64_t c = c0; c < c1; c++) {
            l->dw[c] += pdw[c];
            l->db[c] += pdb[c];
        }
    }
}

void k_layernorm_bwd(gpt_pool* p, float* dinp, float* dw, float* db, float* scratch, const float* dout,
                     const float* inp, const float* w, const float* mean, const float* rstd, int64_t N, int C) {
    ln_ctx l = {.dinp = dinp, .dw = dw, .db = db, .scratch = scratch, .dout = dout, .inp = inp, .w = w,
                .cmean = mean, .crstd = rstd, .N = N, .C = C};
    RUN(p, ln_bwd_task, &l, 12.0 * (double)N * C);
    RUN(p, ln_bwd_reduce_task, &l, 2.0 * (double)k_layernorm_bwd_scratch(N, C));
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
 * Causal self-attention, one (b, h) pair at a time per thread, in blocks of query rows
 * (ATT_RB for the direct SIMD kernels below, ATT_TB for the BLAS path) so that only the
 * lower triangle (plus the diagonal tiles) is ever computed. Unless the model keeps them,
 * the probabilities live in a per-thread scratch only: the forward saves the max and
 * 1/sum of each softmax row, the backward recomputes the very same probabilities.
 * ---------------------------------------------------------------------------------- */

#ifndef ATT_TB
#define ATT_TB 64
#endif

typedef struct {
    float* out;
    float* att;
    float* stats;
    float* dqkv;
    float* scratch;
    const float* dout;
    const float* qkv;
    const float* catt;
    const float* cstats;
    int B, T, C, H;
} att_ctx;

/* The softmax rows below hold n valid values and are zeroed up to end (they may be
 * written anywhere below end). Whole vectors run over [0, n8), n8 = n rounded down to
 * 8; the tail [n8, n) is one masked vector when it fits below end, scalars otherwise. */
#define ROW_TAIL(n, end) ((((n) & 7) != 0) && (((n) & ~(int64_t)7) + 8 <= (end)))
/* the lanes k < n of a vector */
#define v8_first(n) ((v8i){0, 1, 2, 3, 4, 5, 6, 7} < (v8i){0, 0, 0, 0, 0, 0, 0, 0} + (int32_t)(n))

static inline void zero_span(float* p, int64_t n) {
    if (n > 0) memset(p, 0, sizeof(float) * (size_t)n);
}

/* In place over row[0:n): softmax, saving st[0] = max, st[1] = 1/sum; row[n:end) = 0. */
GPT_HOT static void softmax_causal_row(float* row, int64_t n, int64_t end, float* st) {
    const int64_t n8 = n & ~(int64_t)7;
    const int vt = ROW_TAIL(n, end);
    const v8i tail = v8_first(n - n8);
    v8f vm = v8_set1(-INFINITY);
    for (int64_t j = 0; j < n8; j += 8) vm = v8_max(v8_load(row + j), vm);
    if (vt) vm = v8_max(v8_select(tail, v8_load(row + n8), v8_set1(-INFINITY)), vm);
    float mx = v8_hmax(vm);
    if (!vt)
        for (int64_t j = n8; j < n; j++) mx = row[j] > mx ? row[j] : mx;
    v8f acc = v8_zero();
    for (int64_t j = 0; j < n8; j += 8) {
        const v8f e = v8_exp(v8_load(row + j) - mx);
        v8_store(row + j, e);
        acc += e;
    }
    if (vt) {
        const v8f e = v8_select(tail, v8_exp(v8_load(row + n8) - mx), v8_zero());
        v8_store(row + n8, e);
        acc += e;
    }
    float sum = v8_hsum(acc);
    if (!vt)
        for (int64_t j = n8; j < n; j++) {
            row[j] = s_exp(row[j] - mx);
            sum += row[j];
        }
    const float inv = 1.0f / sum;
    const int64_t nv = vt ? n8 + 8 : n8;
    for (int64_t j = 0; j < nv; j += 8) v8_store(row + j, v8_load(row + j) * inv);
    for (int64_t j = nv; j < n; j++) row[j] *= inv;
    zero_span(row + (vt ? nv : n), end - (vt ? nv : n));
    st[0] = mx;
    st[1] = inv;
}

/* The probabilities of softmax_causal_row again from the saved st, bit for bit. */
GPT_HOT static void softmax_recompute_row(float* row, int64_t n, int64_t end, const float* st) {
    const float mx = st[0], inv = st[1];
    const int64_t n8 = n & ~(int64_t)7;
    const int vt = ROW_TAIL(n, end);
    for (int64_t j = 0; j < n8; j += 8) v8_store(row + j, v8_exp(v8_load(row + j) - mx) * inv);
    if (vt) {
        v8f e = v8_select(v8_first(n - n8), v8_exp(v8_load(row + n8) - mx), v8_zero());
        v8_store(row + n8, e * inv);
    } else {
        for (int64_t j = n8; j < n; j++) row[j] = s_exp(row[j] - mx) * inv;
    }
    const int64_t z = vt ? n8 + 8 : n;
    zero_span(row + z, end - z);
}

/* ---- direct kernels for head sizes that are multiples of 32 (the usual 32, 64, 128)
 * and T <= 256, query rows in blocks of ATT_RB: the per-(b, h) products are too small
 * for a BLAS call to pay off (T = 256, S2's heads: forward and backward 10-20% faster
 * than the BLAS path; T = 512: the BLAS path 10-20% faster). Only the causal part
 * (j <= i) is computed and read. */

#if defined(GPT_ATT_NO_DIRECT) /* benchmarks: the BLAS path for every head size */
#define ATT_DIRECT(hs, T) 0
#else
#ifndef ATT_DIRECT_MAX_T
#define ATT_DIRECT_MAX_T 256
#endif
#define ATT_DIRECT(hs, T) ((hs) % 32 == 0 && (T) <= ATT_DIRECT_MAX_T)
#endif
#define ATT_PAD(T) (((int64_t)(T) + 15) & ~(int64_t)15)
/* Query rows per block of the direct kernels. */
#ifndef ATT_RB
#define ATT_RB 128
#endif
/* Row i of a T x T tile is causal up to i; the softmax may write (zeros) up to here. */
#define ATT_ROW_END(i, T) (((((i) + 8) & ~(int64_t)7) < (T)) ? (((i) + 8) & ~(int64_t)7) : (int64_t)(T))

/* yT(hs, ldt) = y(n rows of hs at stride ldy)^T; columns n..ldt-1 zero */
GPT_HOT static void att_pack_t(float* restrict yT, int64_t ldt, const float* restrict y, int64_t ldy, int64_t n,
                               int hs) {
    /* 8 x 8 blocks through the vectors: eight rows of y in, eight columns out */
    int64_t j0 = 0;
    for (; j0 + 8 <= n; j0 += 8) {
        const float* s = y + j0 * ldy;
        for (int d0 = 0; d0 < hs; d0 += 8) {
            v8f r[8];
            for (int k = 0; k < 8; k++) r[k] = v8_load(s + k * ldy + d0);
            v8_transpose8(r);
            for (int d = 0; d < 8; d++) v8_store(yT + (d0 + d) * ldt + j0, r[d]);
        }
    }
    for (int d = 0; d < hs; d++) {
        for (int64_t j = j0; j < n; j++) yT[d * ldt + j] = y[j * ldy + d];
        for (int64_t j = n; j < ldt; j++) yT[d * ldt + j] = 0.0f;
    }
}

/* Stores the first lim (> 0) of the 16 lanes of (lo, hi) * alpha at p, in whole vectors
 * where cap (the floats writable from p) allows: the lanes from lim to the next multiple
 * of 8 then hold values no reader uses (the softmax rows mask them). */
#define att_store16(p, lo, hi, lim, alpha, cap)                                              \
    do {                                                                                     \
        if ((lim) > 8 || (cap) >= 8) v8_store((p), (lo) * (alpha));                          \
        else v8_store_part((p), (lo) * (alpha), (lim));                                      \
        if ((lim) > 8) {                                                                     \
            if ((lim) >= 16 || (cap) >= 16) v8_store((p) + 8, (hi) * (alpha));               \
            else v8_store_part((p) + 8, (hi) * (alpha), (lim) - 8);                          \
        }                                                                                    \
    } while (0)

/* The scores and mixes below run 6 rows x 16 columns at a time: 12 accumulators, two
 * vector loads (y0, y1) and six broadcasts per step of the sum (a GEMM micro-tile over
 * the causal triangle). Rows of the tile past the last row (r >= nr) read a valid row
 * and are not stored. */
#define MIX_ROWS 6
#define MIX_STORE(r, k)                                     \
    do {                                                    \
        if ((k) < nr) {                                     \
            v8_store(O + (o0 + (k)) * ldo + c0, r##l);      \
            v8_store(O + (o0 + (k)) * ldo + c0 + 8, r##h);  \
        }                                                   \
    } while (0)

/* Row i - r0 of S = alpha x_i . y_j for r0 <= i < r1, j <= i (rows of S at stride lds;
 * beyond i, up to the next multiple of 8 below lds, unused values may be written); x rows
 * at stride ldx; yT = y^T packed by att_pack_t with ldt >= ATT_PAD(r1). */
GPT_HOT static void att_scores(float* S, int64_t lds, const float* x, int64_t ldx, const float* yT, int64_t ldt,
                               int64_t r0, int64_t r1, int hs, float alpha) {
    for (int64_t i0 = r0; i0 < r1; i0 += MIX_ROWS) {
        const int64_t nr = min64(MIX_ROWS, r1 - i0);
        const float* xr[MIX_ROWS];
        for (int r = 0; r < MIX_ROWS; r++) xr[r] = x + (i0 + (r < nr ? r : 0)) * ldx;
        for (int64_t j0 = 0; j0 < i0 + nr; j0 += 16) {
            TILE16_DECL(c0); TILE16_DECL(c1); TILE16_DECL(c2); TILE16_DECL(c3); TILE16_DECL(c4); TILE16_DECL(c5);
            const float* b = yT + j0;
            for (int d = 0; d < hs; d++, b += ldt) {
                const v8f y0 = v8_load(b), y1 = v8_load(b + 8);
                TILE16_FMA(c0, xr[0][d]); TILE16_FMA(c1, xr[1][d]); TILE16_FMA(c2, xr[2][d]);
                TILE16_FMA(c3, xr[3][d]); TILE16_FMA(c4, xr[4][d]); TILE16_FMA(c5, xr[5][d]);
            }
            float* o = S + (i0 - r0) * lds + j0;
            /* row r keeps j <= i0 + r: the first i0 + r + 1 - j0 lanes */
            att_store16(o, c0l, c0h, i0 + 1 - j0, alpha, lds - j0);
            if (nr > 1 && i0 + 2 - j0 > 0) att_store16(o + lds, c1l, c1h, i0 + 2 - j0, alpha, lds - j0);
            if (nr > 2 && i0 + 3 - j0 > 0) att_store16(o + 2 * lds, c2l, c2h, i0 + 3 - j0, alpha, lds - j0);
            if (nr > 3 && i0 + 4 - j0 > 0) att_store16(o + 3 * lds, c3l, c3h, i0 + 4 - j0, alpha, lds - j0);
            if (nr > 4 && i0 + 5 - j0 > 0) att_store16(o + 4 * lds, c4l, c4h, i0 + 5 - j0, alpha, lds - j0);
            if (nr > 5 && i0 + 6 - j0 > 0) att_store16(o + 5 * lds, c5l, c5h, i0 + 6 - j0, alpha, lds - j0);
        }
    }
}

/* O[i] = sum_{j <= i} P[i - r0][j] y_j for r0 <= i < r1 (rows of hs, a multiple of 16;
 * overwrites). */
GPT_HOT static void att_mix(float* O, int64_t ldo, const float* P, int64_t ldp, const float* y, int64_t ldy,
                            int64_t r0, int64_t r1, int hs) {
    for (int64_t o0 = r0; o0 < r1; o0 += MIX_ROWS) {
        const int64_t nr = min64(MIX_ROWS, r1 - o0);
        const float* p[MIX_ROWS];
        for (int r = 0; r < MIX_ROWS; r++) p[r] = P + (o0 - r0 + (r < nr ? r : 0)) * ldp;
        for (int c0 = 0; c0 < hs; c0 += 16) {
            TILE16_DECL(a0); TILE16_DECL(a1); TILE16_DECL(a2); TILE16_DECL(a3); TILE16_DECL(a4); TILE16_DECL(a5);
            /* j <= o0: every row's term counts */
            for (int64_t j = 0; j <= o0; j++) {
                const v8f y0 = v8_load(y + j * ldy + c0), y1 = v8_load(y + j * ldy + c0 + 8);
                TILE16_FMA(a0, p[0][j]); TILE16_FMA(a1, p[1][j]); TILE16_FMA(a2, p[2][j]);
                TILE16_FMA(a3, p[3][j]); TILE16_FMA(a4, p[4][j]); TILE16_FMA(a5, p[5][j]);
            }
            /* the triangle: row r takes j <= o0 + r */
            for (int64_t j = o0 + 1; j < o0 + nr; j++) {
                const v8f y0 = v8_load(y + j * ldy + c0), y1 = v8_load(y + j * ldy + c0 + 8);
                const int64_t d = j - o0;
                TILE16_FMA(a1, d <= 1 ? p[1][j] : 0.0f); TILE16_FMA(a2, d <= 2 ? p[2][j] : 0.0f);
                TILE16_FMA(a3, d <= 3 ? p[3][j] : 0.0f); TILE16_FMA(a4, d <= 4 ? p[4][j] : 0.0f);
                TILE16_FMA(a5, d <= 5 ? p[5][j] : 0.0f);
            }
            MIX_STORE(a0, 0); MIX_STORE(a1, 1); MIX_STORE(a2, 2); MIX_STORE(a3, 3); MIX_STORE(a4, 4); MIX_STORE(a5, 5);
        }
    }
}

/* The rows i in [r0, r1) of P^T y over the lower triangle: O[j] (+)= sum over i in
 * [max(r0, j), r1) of P[i - r0][j] y_i for j < r1, added to rows j < r0 (which earlier
 * row blocks wrote) and overwriting rows j >= r0 (which no earlier block reached). */
#define MIX_STORE_T(r, k)                                                               \
    do {                                                                                \
        if ((k) < nr) {                                                                 \
            float* o_ = O + (o0 + (k)) * ldo + c0;                                      \
            const int add_ = o0 + (k) < r0;                                             \
            v8_store(o_, add_ ? r##l + v8_load(o_) : r##l);                             \
            v8_store(o_ + 8, add_ ? r##h + v8_load(o_ + 8) : r##h);                     \
        }                                                                               \
    } while (0)

GPT_HOT static void att_mix_t(float* O, int64_t ldo, const float* P, int64_t ldp, const float* y, int64_t ldy,
                              int64_t r0, int64_t r1, int hs) {
    for (int64_t o0 = 0; o0 < r1; o0 += MIX_ROWS) {
        const int64_t nr = min64(MIX_ROWS, r1 - o0);
        const int64_t i_start = r0 > o0 ? r0 : o0;
        const int64_t i_full = o0 + nr - 1 > i_start ? o0 + nr - 1 : i_start; /* every row counts from here */
        int64_t col[MIX_ROWS];
        for (int r = 0; r < MIX_ROWS; r++) col[r] = o0 + (r < nr ? r : 0);
        for (int c0 = 0; c0 < hs; c0 += 16) {
            TILE16_DECL(a0); TILE16_DECL(a1); TILE16_DECL(a2); TILE16_DECL(a3); TILE16_DECL(a4); TILE16_DECL(a5);
            /* the triangle: output row r takes i >= o0 + r */
            for (int64_t i = i_start; i < i_full; i++) {
                const v8f y0 = v8_load(y + i * ldy + c0), y1 = v8_load(y + i * ldy + c0 + 8);
                const float* pr = P + (i - r0) * ldp;
                const int64_t d = i - o0;
                TILE16_FMA(a0, pr[col[0]]); TILE16_FMA(a1, d >= 1 ? pr[col[1]] : 0.0f);
                TILE16_FMA(a2, d >= 2 ? pr[col[2]] : 0.0f); TILE16_FMA(a3, d >= 3 ? pr[col[3]] : 0.0f);
                TILE16_FMA(a4, d >= 4 ? pr[col[4]] : 0.0f);
            }
            for (int64_t i = i_full; i < r1; i++) {
                const v8f y0 = v8_load(y + i * ldy + c0), y1 = v8_load(y + i * ldy + c0 + 8);
                const float* pr = P + (i - r0) * ldp;
                TILE16_FMA(a0, pr[col[0]]); TILE16_FMA(a1, pr[col[1]]); TILE16_FMA(a2, pr[col[2]]);
                TILE16_FMA(a3, pr[col[3]]); TILE16_FMA(a4, pr[col[4]]); TILE16_FMA(a5, pr[col[5]]);
            }
            MIX_STORE_T(a0, 0); MIX_STORE_T(a1, 1); MIX_STORE_T(a2, 2);
            MIX_STORE_T(a3, 3); MIX_STORE_T(a4, 4); MIX_STORE_T(a5, 5);
        }
    }
}

static void att_fwd_pair(const att_ctx* a, int64_t pair, float* scratch) {
    const int T = a->T, C = a->C, hs = C / a->H;
    const int64_t b = pair / a->H, h = pair % a->H, ld = 3 * (int64_t)C;
    const float* q = a->qkv + b * T * ld + h * hs;
    const float* k = q + C;
    const float* v = q + 2 * C;
    float* o = a->out + b * T * C + h * hs;
    float* st = a->stats + pair * T * 2;
    float* A = a->att ? a->att + pair * T * T : scratch;
    const float scale = 1.0f / sqrtf((float)hs);
    if (ATT_DIRECT(hs, T)) {
        /* query rows in blocks of ATT_RB: a block's probabilities stay in L2 */
        float* kT = scratch + 2 * (int64_t)T * T;
        att_pack_t(kT, ATT_PAD(T), k, ld, T, hs);
        for (int64_t r0 = 0; r0 < T; r0 += ATT_RB) {
            const int64_t r1 = min64(T, r0 + ATT_RB);
            float* P = A + (a->att ? r0 * T : 0); /* rows r0..r1 */
            att_scores(P, T, q, ld, kT, ATT_PAD(T), r0, r1, hs, scale);
            for (int64_t i = r0; i < r1; i++)
                softmax_causal_row(P + (i - r0) * T, i + 1, ATT_ROW_END(i, T), st + 2 * i);
            att_mix(o, C, P, T, v, ld, r0, r1, hs);
        }
        return;
    }
    for (int64_t i0 = 0; i0 < T; i0 += ATT_TB) {
        const int64_t i1 = min64(T, i0 + ATT_TB), M = i1 - i0;
        /* A[i0:i1, 0:i1] = scale q[i0:i1] k[0:i1]^T */
        sgemm1(0, 1, M, i1, hs, scale, q + i0 * ld, ld, k, ld, 0.0f, A + i0 * T, T);
        for (int64_t i = i0; i < i1; i++) softmax_causal_row(A + i * T, i + 1, i1, st + 2 * i);
        /* o[i0:i1] = A[i0:i1, 0:i1] v[0:i1] */
        sgemm1(0, 0, M, hs, i1, 1.0f, A + i0 * T, T, v, ld, 0.0f, o + i0 * C, C);
    }
}

static void att_fwd_task(void* vctx, int tid, int nt) {
    const att_ctx* a = (const att_ctx*)vctx;
    int64_t p0, p1;
    gpt_split((int64_t)a->B * a->H, tid, nt, &p0, &p1);
    float* A = a->scratch + (int64_t)tid * k_attention_scratch(a->T, a->C, 1);
    for (int64_t pair = p0; pair < p1; pair++) att_fwd_pair(a, pair, A);
}

int64_t k_attention_scratch(int T, int C, int nthreads) {
    return (2 * (int64_t)T * T + 2 * (int64_t)C * ATT_PAD(T)) * (nthreads < 1 ? 1 : nthreads);
}

void k_attention_fwd(gpt_pool* p, float* out, float* att, float* stats, float* scratch, const float* qkv, int B,
                     int T, int C, int H) {
    att_ctx a = {.out = out, .att = att, .stats = stats, .scratch = scratch, .qkv = qkv, .B = B, .T = T, .C = C,
                 .H = H};
    RUN(p, att_fwd_task, &a, 2.0 * B * (double)T * T * (C + 10.0 * H));
}

/* In place over d[0:n): d = a * (d - sum(a d)) * scale (softmax backward); d[n:end) = 0
 * (as the rows above: written anywhere below end; arow is read below n only). */
GPT_HOT static void softmax_bwd_row(float* d, const float* arow, int64_t n, int64_t end, float scale) {
    const int64_t n8 = n & ~(int64_t)7;
    const int vt = ROW_TAIL(n, end);
    const v8i tail = v8_first(n - n8);
    v8f acc = v8_zero();
    for (int64_t j = 0; j < n8; j += 8) acc += v8_load(arow + j) * v8_load(d + j);
    v8f at = v8_zero(), dt = v8_zero();
    if (vt) {
        /* lanes from n on hold whatever was there: masked before any arithmetic */
        at = v8_select(tail, v8_load(arow + n8), v8_zero());
        dt = v8_select(tail, v8_load(d + n8), v8_zero());
        acc += at * dt;
    }
    float s = v8_hsum(acc);
    if (!vt)
        for (int64_t j = n8; j < n; j++) s += arow[j] * d[j];
    for (int64_t j = 0; j < n8; j += 8) v8_store(d + j, v8_load(arow + j) * (v8_load(d + j) - s) * scale);
    if (vt) v8_store(d + n8, v8_select(tail, at * (dt - s) * scale, v8_zero()));
    else
        for (int64_t j = n8; j < n; j++) d[j] = arow[j] * (d[j] - s) * scale;
    const int64_t z = vt ? n8 + 8 : n;
    zero_span(d + z, end - z);
}

static void att_bwd_pair(const att_ctx* a, int64_t pair, float* scratch, float* D) {
    const int T = a->T, C = a->C, hs = C / a->H;
    const int64_t b = pair / a->H, h = pair % a->H, ld = 3 * (int64_t)C;
    const float* q = a->qkv + b * T * ld + h * hs;
    const float* k = q + C;
    const float* v = q + 2 * C;
    const float* dO = a->dout + b * T * C + h * hs;
    float* dq = a->dqkv + b * T * ld + h * hs;
    float* dk = dq + C;
    float* dv = dq + 2 * C;
    const float* st = a->cstats + pair * T * 2;
    const float* A = a->catt ? a->catt + pair * T * T : scratch;
    const float scale = 1.0f / sqrtf((float)hs);
    if (ATT_DIRECT(hs, T)) {
        float* kT = scratch + 2 * (int64_t)T * T;
        float* vT = kT + (int64_t)hs * ATT_PAD(T);
        if (!a->catt) att_pack_t(kT, ATT_PAD(T), k, ld, T, hs);
        att_pack_t(vT, ATT_PAD(T), v, ld, T, hs);
        /* query rows in blocks of ATT_RB; dk and dv gather every block's part */
        for (int64_t r0 = 0; r0 < T; r0 += ATT_RB) {
            const int64_t r1 = min64(T, r0 + ATT_RB);
            const float* P = A + (a->catt ? r0 * T : 0); /* the probabilities of rows r0..r1 */
            if (!a->catt) {
                att_scores(scratch, T, q, ld, kT, ATT_PAD(T), r0, r1, hs, scale);
                for (int64_t i = r0; i < r1; i++)
                    softmax_recompute_row(scratch + (i - r0) * T, i + 1, ATT_ROW_END(i, T), st + 2 * i);
            }
            /* dA = dO v^T, then through the softmax (and the scale) */
            att_scores(D, T, dO, C, vT, ATT_PAD(T), r0, r1, hs, 1.0f);
            for (int64_t i = r0; i < r1; i++)
                softmax_bwd_row(D + (i - r0) * T, P + (i - r0) * T, i + 1, ATT_ROW_END(i, T), scale);
            att_mix(dq, ld, D, T, k, ld, r0, r1, hs);
            att_mix_t(dv, ld, P, T, dO, C, r0, r1, hs);
            att_mix_t(dk, ld, D, T, q, ld, r0, r1, hs);
        }
        return;
    }
    for (int64_t i0 = 0; i0 < T; i0 += ATT_TB) {
        const int64_t i1 = min64(T, i0 + ATT_TB), M = i1 - i0;
        if (!a->catt) {
            /* the forward's probabilities A[i0:i1, 0:i1] again */
            sgemm1(0, 1, M, i1, hs, scale, q + i0 * ld, ld, k, ld, 0.0f, scratch + i0 * T, T);
            for (int64_t i = i0; i < i1; i++) softmax_recompute_row(scratch + i * T, i + 1, i1, st + 2 * i);
        }
        /* dA[i0:i1, 0:i1] = dO[i0:i1] v[0:i1]^T, then through the softmax (and the scale) */
        sgemm1(0, 1, M, i1, hs, 1.0f, dO + i0 * C, C, v, ld, 0.0f, D + i0 * T, T);
        for (int64_t i = i0; i < i1; i++) softmax_bwd_row(D + i * T, A + i * T, i + 1, i1, scale);
        /* dq[i0:i1] = dS[i0:i1, 0:i1] k[0:i1] */
        sgemm1(0, 0, M, hs, i1, 1.0f, D + i0 * T, T, k, ld, 0.0f, dq + i0 * ld, ld);
    }
    for (int64_t j0 = 0; j0 < T; j0 += ATT_TB) {
        const int64_t j1 = min64(T, j0 + ATT_TB), M = j1 - j0, K = T - j0;
        /* dv[j0:j1] = A[j0:T, j0:j1]^T dO[j0:T]; dk[j0:j1] = dS[j0:T, j0:j1]^T q[j0:T] */
        sgemm1(1, 0, M, hs, K, 1.0f, A + j0 * T + j0, T, dO + j0 * C, C, 0.0f, dv + j0 * ld, ld);
        sgemm1(1, 0, M, hs, K, 1.0f, D + j0 * T + j0, T, q + j0 * ld, ld, 0.0f, dk + j0 * ld, ld);
    }
}

static void att_bwd_task(void* vctx, int tid, int nt) {
    const att_ctx* a = (const att_ctx*)vctx;
    int64_t p0, p1;
    gpt_split((int64_t)a->B * a->H, tid, nt, &p0, &p1);
    float* A = a->scratch + (int64_t)tid * k_attention_scratch(a->T, a->C, 1);
    float* D = A + (int64_t)a->T * a->T;
    for (int64_t pair = p0; pair < p1; pair++) att_bwd_pair(a, pair, A, D);
}

void k_attention_bwd(gpt_pool* p, float* dqkv, float* scratch, const float* dout, const float* qkv,
                     const float* att, const float* stats, int B, int T, int C, int H) {
    att_ctx a = {.dqkv = dqkv, .scratch = scratch, .dout = dout, .qkv = qkv, .catt = att, .cstats = stats, .B = B,
                 .T = T, .C = C, .H = H};
    RUN(p, att_bwd_task, &a, 5.0 * B * (double)T * T * (C + 10.0 * H));
}

/* ------------------------------------------------------------------------------------
 * GELU and residual as standalone ops (the model fuses them into the GEMM epilogues)
 * ---------------------------------------------------------------------------------- */

typedef struct {
    float* out;
    float* out2;
    const float* a;
    const float* b;
    int64_t n;
} ew_ctx;

#define EW_ALIGN 64

static void gelu_fwd_task(void* vctx, int tid, int nt) {
    const ew_ctx* e = (const ew_ctx*)vctx;
    int64_t i0, i1;
    gpt_split_aligned(e->n, EW_ALIGN, tid, nt, &i0, &i1);
    if (i1 > i0) gelu_fwd_span(e->out + i0, e->a + i0, i1 - i0);
}

void k_gelu_fwd(gpt_pool* p, float* out, const float* inp, int64_t n) {
    ew_ctx e = {.out = out, .a = inp, .n = n};
    RUN(p, gelu_fwd_task, &e, 30.0 * (double)n);
}

static void gelu_bwd_task(void* vctx, int tid, int nt) {
    const ew_ctx* e = (const ew_ctx*)vctx;
    int64_t i0, i1;
    gpt_split_aligned(e->n, EW_ALIGN, tid, nt, &i0, &i1);
    if (i1 > i0) gelu_bwd_span(e->out + i0, e->a + i0, e->b + i0, i1 - i0);
}

void k_gelu_bwd(gpt_pool* p, float* dinp, const float* inp, const float* dout, int64_t n) {
    ew_ctx e = {.out = dinp, .a = inp, .b = dout, .n = n};
    RUN(p, gelu_bwd_task, &e, 40.0 * (double)n);
}

static void residual_fwd_task(void* vctx, int tid, int nt) {
    const ew_ctx* e = (const ew_ctx*)vctx;
    int64_t i0, i1;
    gpt_split_aligned(e->n, EW_ALIGN, tid, nt, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) e->out[i] = e->a[i] + e->b[i];
}

void k_residual_fwd(gpt_pool* p, float* out, const float* a, const float* b, int64_t n) {
    ew_ctx e = {.out = out, .a = a, .b = b, .n = n};
    RUN(p, residual_fwd_task, &e, 3.0 * (double)n);
}

static void residual_bwd_task(void* vctx, int tid, int nt) {
    const ew_ctx* e = (const ew_ctx*)vctx;
    int64_t i0, i1;
    gpt_split_aligned(e->n, EW_ALIGN, tid, nt, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) {
        e->out[i] += e->a[i];
        e->out2[i] += e->a[i];
    }
}

void k_residual_bwd(gpt_pool* p, float* da, float* db, const float* dout, int64_t n) {
    ew_ctx e = {.out = da, .out2 = db, .a = dout, .n = n};
    RUN(p, residual_bwd_task, &e, 6.0 * (double)n);
}

/* ------------------------------------------------------------------------------------
 * Softmax + cross-entropy
 * ---------------------------------------------------------------------------------- */

typedef struct {
    float* logits;
    float* losses;
    const int32_t* y;
    int64_t N;
    int V;
    float dscale;
    int grad;
} ce_ctx;

GPT_HOT static void ce_row(float* row, float* loss, int32_t y, int64_t V, float dscale, int grad) {
    if (y == GPT_IGNORE_INDEX) {
        *loss = 0.0f;
        if (grad) memset(row, 0, sizeof(float) * (size_t)V);
        return;
    }
    v8f vm = v8_set1(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= V; j += 8) vm = v8_max(v8_load(row + j), vm);
    float mx = v8_hmax(vm);
    for (; j < V; j++) mx = row[j] > mx ? row[j] : mx;
    const float zy = row[y] - mx;
    v8f acc = v8_zero();
    for (j = 0; j + 8 <= V; j += 8) {
        v8f e = v8_exp(v8_load(row + j) - mx);
        if (grad) v8_store(row + j, e);
        acc += e;
    }
    float s = v8_hsum(acc);
    for (; j < V; j++) {
        float e = s_exp(row[j] - mx);
        if (grad) row[j] = e;
        s += e;
    }
    *loss = logf(s) - zy;
    if (!grad) return;
    const float f = dscale / s;
    for (j = 0; j + 8 <= V; j += 8) v8_store(row + j, v8_load(row + j) * f);
    for (; j < V; j++) row[j] *= f;
    row[y] -= dscale;
}

static void ce_task(void* vctx, int tid, int nt) {
    const ce_ctx* c = (const ce_ctx*)vctx;
    int64_t r0, r1;
    gpt_split(c->N, tid, nt, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) ce_row(c->logits + r * c->V, c->losses + r, c->y[r], c->V, c->dscale, c->grad);
}

void k_softmax_ce(gpt_pool* p, float* logits, float* losses, const int32_t* y, int64_t N, int V, float dscale,
                  int grad) {
    ce_ctx c = {logits, losses, y, N, V, dscale, grad};
    RUN(p, ce_task, &c, 20.0 * (double)N * V);
}

/* ------------------------------------------------------------------------------------
 * Row gather / scatter
 * ---------------------------------------------------------------------------------- */

typedef struct {
    float* dst;
    const float* src;
    const int32_t* rows;
    int64_t n, N;
    int C;
} rows_ctx;

static void gather_task(void* vctx, int tid, int nt) {
    const rows_ctx* r = (const rows_ctx*)vctx;
    int64_t k0, k1;
    gpt_split(r->n, tid, nt, &k0, &k1);
    for (int64_t k = k0; k < k1; k++)
        memcpy(r->dst + k * r->C, r->src + (int64_t)r->rows[k] * r->C, sizeof(float) * (size_t)r->C);
}

void k_gather_rows(gpt_pool* p, float* dst, const float* src, const int32_t* rows, int64_t n, int C) {
    rows_ctx r = {dst, src, rows, n, 0, C};
    RUN(p, gather_task, &r, 2.0 * (double)n * C);
}

/* Split by destination rows: each thread zeroes its rows and copies the selected ones. */
static void scatter_task(void* vctx, int tid, int nt) {
    const rows_ctx* r = (const rows_ctx*)vctx;
    int64_t i0, i1;
    gpt_split(r->N, tid, nt, &i0, &i1);
    /* first selected row at or after i0 (rows is increasing) */
    int64_t lo = 0, hi = r->n;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (r->rows[mid] < i0) lo = mid + 1;
        else hi = mid;
    }
    int64_t k = lo;
    for (int64_t i = i0; i < i1; i++) {
        float* d = r->dst + i * r->C;
        if (k < r->n && r->rows[k] == i) memcpy(d, r->src + k++ * r->C, sizeof(float) * (size_t)r->C);
        else memset(d, 0, sizeof(float) * (size_t)r->C);
    }
}

void k_scatter_rows(gpt_pool* p, float* dst, const float* src, const int32_t* rows, int64_t n, int64_t N, int C) {
    rows_ctx r = {dst, src, rows, n, N, C};
    RUN(p, scatter_task, &r, 2.0 * (double)N * C);
}

/* ------------------------------------------------------------------------------------
 * Gradient norm and AdamW
 * ---------------------------------------------------------------------------------- */

#define SUMSQ_CHUNK 16384

typedef struct {
    const float* g;
    double* scratch;
    int64_t n;
} sumsq_ctx;

typedef double v4d __attribute__((vector_size(32)));

GPT_HOT static double sumsq_span(const float* g, int64_t n) {
    v4d a0 = {0, 0, 0, 0}, a1 = {0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f x = v8_load(g + i);
        x = x * x;
        v4d lo = {x[0], x[1], x[2], x[3]}, hi = {x[4], x[5], x[6], x[7]};
        a0 += lo;
        a1 += hi;
    }
    v4d a = a0 + a1;
    double s = (a[0] + a[2]) + (a[1] + a[3]);
    for (; i < n; i++) s += (double)g[i] * g[i];
    return s;
}

static void sumsq_task(void* vctx, int tid, int nt) {
    const sumsq_ctx* s = (const sumsq_ctx*)vctx;
    int64_t c0, c1;
    gpt_split(k_sumsq_scratch(s->n), tid, nt, &c0, &c1);
    for (int64_t c = c0; c < c1; c++) {
        const int64_t i0 = c * SUMSQ_CHUNK;
        s->scratch[c] = sumsq_span(s->g + i0, min64(SUMSQ_CHUNK, s->n - i0));
    }
}

int64_t k_sumsq_scratch(int64_t n) { return (n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK; }

double k_sumsq(gpt_pool* p, const float* g, int64_t n, double* scratch) {
    sumsq_ctx s = {g, scratch, n};
    RUN(p, sumsq_task, &s, 2.0 * (double)n);
    double total = 0.0;
    for (int64_t c = 0; c < k_sumsq_scratch(n); c++) total += scratch[c];
    return total;
}

typedef struct {
    float* param;
    float* m;
    float* v;
    const float* g;
    int64_t n;
    const k_segment* segs;
    int nsegs;
    const k_adamw_args* a;
} adamw_ctx;

/* As torch's single-tensor AdamW: p *= 1 - lr wd; m = b1 m + (1 - b1) g;
 * v = b2 v + (1 - b2) g^2; p -= step_size * m / (sqrt(v) / sqrt(1 - b2^t) + eps). */
GPT_HOT static void adamw_span(float* restrict p, float* restrict m, float* restrict v, const float* restrict g,
                               int64_t n, float decay, const k_adamw_args* a) {
    const float gs = a->gscale, b1 = a->beta1, b2 = a->beta2, c1 = 1.0f - a->beta1, c2 = 1.0f - a->beta2;
    const float ss = a->step_size, bc2 = a->bc2_sqrt, eps = a->eps;
    for (int64_t i = 0; i < n; i++) {
        const float gi = g[i] * gs;
        const float mi = b1 * m[i] + c1 * gi;
        const float vi = b2 * v[i] + c2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - ss * (mi / (sqrtf(vi) / bc2 + eps));
    }
}

static void adamw_task(void* vctx, int tid, int nt) {
    const adamw_ctx* c = (const adamw_ctx*)vctx;
    int64_t i0, i1;
    gpt_split_aligned(c->n, EW_ALIGN, tid, nt, &i0, &i1);
    for (int s = 0; s < c->nsegs && i0 < i1; s++) {
        const int64_t b = c->segs[s].begin > i0 ? c->segs[s].begin : i0;
        const int64_t e = c->segs[s].end < i1 ? c->segs[s].end : i1;
        if (e <= b) continue;
        adamw_span(c->param + b, c->m + b, c->v + b, c->g + b, e - b, c->segs[s].decay ? c->a->decay_factor : 1.0f,
                   c->a);
    }
}

void k_adamw(gpt_pool* p, float* param, float* m, float* v, const float* g, int64_t n, const k_segment* segs,
             int nsegs, const k_adamw_args* a) {
    adamw_ctx c = {param, m, v, g, n, segs, nsegs, a};
    RUN(p, adamw_task, &c, 20.0 * (double)n);
}
