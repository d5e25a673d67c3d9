/*
 * kernels_misc.c: the ops of the GPT-2 step other than the linear layers and attention
 * (see kernels.h): embedding, LayerNorm, residual, softmax + cross-entropy, row gather,
 * gradient norm and AdamW.
 */
#define _POSIX_C_SOURCE 200809L
#if defined(__APPLE__)
#define _DARWIN_C_SOURCE /* what Accelerate's headers need */
#endif
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

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
    gpt_pool_run_for(p, encoder_fwd_task, &e, 3.0 * B * T * C);
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
    gpt_pool_run_for(p, encoder_bwd_task, &e, 4.0 * B * T * C);
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
    gpt_pool_run_for(p, ln_fwd_task, &l, 8.0 * (double)N * C);
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
    gpt_pool_run_for(p, ln_apply_task, &l, 4.0 * (double)N * C);
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
    gpt_pool_run_for(p, ln_bwd_task, &l, 12.0 * (double)N * C);
    gpt_pool_run_for(p, ln_bwd_reduce_task, &l, 2.0 * (double)k_layernorm_bwd_scratch(N, C));
}


/* ------------------------------------------------------------------------------------
 * Residual (the model fuses it into the GEMMs; alone it sums the lanes' gradients)
 * ---------------------------------------------------------------------------------- */

typedef struct {
    float* out;
    float* out2;
    const float* a;
    const float* b;
    int64_t n;
} ew_ctx;

static void residual_fwd_task(void* vctx, int tid, int nt) {
    const ew_ctx* e = (const ew_ctx*)vctx;
    int64_t i0, i1;
    gpt_split_aligned(e->n, EW_ALIGN, tid, nt, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) e->out[i] = e->a[i] + e->b[i];
}

void k_residual_fwd(gpt_pool* p, float* out, const float* a, const float* b, int64_t n) {
    ew_ctx e = {.out = out, .a = a, .b = b, .n = n};
    gpt_pool_run_for(p, residual_fwd_task, &e, 3.0 * (double)n);
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
    gpt_pool_run_for(p, residual_bwd_task, &e, 6.0 * (double)n);
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
    gpt_pool_run_for(p, ce_task, &c, 20.0 * (double)N * V);
}

/* ------------------------------------------------------------------------------------
 * Row gather
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
    gpt_pool_run_for(p, gather_task, &r, 2.0 * (double)n * C);
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
    gpt_pool_run_for(p, sumsq_task, &s, 2.0 * (double)n);
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
    gpt_pool_run_for(p, adamw_task, &c, 20.0 * (double)n);
}
