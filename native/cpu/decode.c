/*
 * decode.c: incremental decoding with a KV cache on the CPU backend (see decode.h and
 * gpt_decode_begin in gpt.h). The prompt pass runs the training kernels over its n rows
 * (B = 1, T = n: the causal attention of the first n positions is the attention of a
 * length-n sequence) and keeps each layer's q, k, v rows: that is the cache. A step then
 * runs one row through every layer: each linear layer is a matrix-vector product split
 * over the pool by output rows (a GEMM splits by input rows, of which a step has one),
 * attention is one query against the cached keys and values, head by head.
 *
 * Everything is allocated by the first prompt pass: a step allocates nothing. Results
 * do not depend on the thread count (each output is summed by one thread, in order).
 */
#include "decode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "simd.h"

/* Weights of one block, and of the whole model, as views into the flat parameters. */
typedef struct {
    const float *ln1w, *ln1b, *qkvw, *qkvb, *projw, *projb, *ln2w, *ln2b, *fcw, *fcb, *fcprojw, *fcprojb;
} block_w;

struct cpu_decoder {
    const gpt_spec* spec;
    int threads;        /* the pool size att_scratch was sized for */
    float* qkv;         /* (L, T, 3C): every layer's q, k, v rows of the positions so far (the cache) */
    float *x, *res2, *ln, *atty; /* (T, C): the residual stream, its middle, LayerNorm out, heads */
    float *fch, *fchg;  /* (T, F): the MLP before and after GELU */
    float *mean, *rstd; /* (T) */
    float* stats;       /* (H, T, 2): the prompt's softmax statistics (unused after) */
    float* scores;      /* (H, T): one step's attention weights */
    float* att_scratch; /* k_attention_scratch(T, C, threads) */
};

static const float* tensor(const gpt_spec* s, const float* params, int64_t index) {
    return params + s->tensors[index].offset;
}

static block_w block(const gpt_spec* s, const float* p, int l) {
#define W(field) tensor(s, p, gpt_layer_tensor(l, GPT_L_##field))
    return (block_w){W(ln1w), W(ln1b), W(qkvw), W(qkvb), W(projw), W(projb),
                     W(ln2w), W(ln2b), W(fcw),  W(fcb),  W(fcprojw), W(fcprojb)};
#undef W
}

void cpu_decode_free(cpu_decoder* d) {
    if (!d) return;
    free(d->qkv);
    free(d->x);
    free(d->att_scratch);
    free(d);
}

static cpu_decoder* decoder_new(const gpt_spec* spec, int threads) {
    const int64_t T = spec->cfg.T, C = spec->cfg.C, F = spec->cfg.d_ff, H = spec->cfg.H, L = spec->cfg.L;
    cpu_decoder* d = (cpu_decoder*)calloc(1, sizeof *d);
    if (!d) return NULL;
    d->spec = spec;
    d->threads = threads;
    d->qkv = (float*)malloc(sizeof(float) * (size_t)(L * T * 3 * C));
    const int64_t rows = 4 * T * C + 2 * T * F + 2 * T + 2 * H * T + H * T;
    d->x = (float*)malloc(sizeof(float) * (size_t)rows);
    d->att_scratch = (float*)malloc(sizeof(float) * (size_t)k_attention_scratch((int)T, (int)C, threads));
    if (!d->qkv || !d->x || !d->att_scratch) {
        cpu_decode_free(d);
        return NULL;
    }
    float* p = d->x;
    p += T * C;
    d->res2 = p, p += T * C;
    d->ln = p, p += T * C;
    d->atty = p, p += T * C;
    d->fch = p, p += T * F;
    d->fchg = p, p += T * F;
    d->mean = p, p += T;
    d->rstd = p, p += T;
    d->stats = p, p += 2 * H * T;
    d->scores = p;
    return d;
}

/* ---- one row through the linear layers: out = W x + bias (+ res), split by rows of W ---- */

static inline float dot(const float* a, const float* b, int64_t n) {
    v8f s0 = v8_zero(), s1 = v8_zero(), s2 = v8_zero(), s3 = v8_zero();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 += v8_load(a + i) * v8_load(b + i);
        s1 += v8_load(a + i + 8) * v8_load(b + i + 8);
        s2 += v8_load(a + i + 16) * v8_load(b + i + 16);
        s3 += v8_load(a + i + 24) * v8_load(b + i + 24);
    }
    for (; i + 8 <= n; i += 8) s0 += v8_load(a + i) * v8_load(b + i);
    float s = v8_hsum((s0 + s1) + (s2 + s3));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

typedef struct {
    float* out;
    const float *W, *x, *bias, *res; /* bias, res may be NULL */
    int64_t rows, cols;
} gemv_args;

GPT_HOT static void gemv_task(void* ctx, int tid, int nt) {
    const gemv_args* a = (const gemv_args*)ctx;
    int64_t r0, r1;
    gpt_split_aligned(a->rows, 16, tid, nt, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        float s = dot(a->W + r * a->cols, a->x, a->cols);
        if (a->bias) s += a->bias[r];
        if (a->res) s += a->res[r];
        a->out[r] = s;
    }
}

static void gemv(gpt_pool* p, float* out, const float* W, const float* x, const float* bias, const float* res,
                 int64_t rows, int64_t cols) {
    gemv_args a = {out, W, x, bias, res, rows, cols};
    gpt_pool_run_for(p, gemv_task, &a, 2.0 * (double)rows * (double)cols);
}

/* ---- one query against the cache: causal attention of position n - 1 ---- */

typedef struct {
    float* out;          /* (C) */
    float* scores;       /* (H, T) */
    const float* qkv;    /* (n, 3C) this layer's rows: q of the last, k and v of all */
    int64_t n, T, C, hs;
    int H;
} attend_args;

GPT_HOT static void attend_task(void* ctx, int tid, int nt) {
    const attend_args* a = (const attend_args*)ctx;
    int64_t h0, h1;
    gpt_split(a->H, tid, nt, &h0, &h1);
    const float scale = 1.0f / sqrtf((float)a->hs);
    const int64_t C3 = 3 * a->C;
    for (int64_t h = h0; h < h1; h++) {
        const float* q = a->qkv + (a->n - 1) * C3 + h * a->hs;
        float* s = a->scores + h * a->T;
        float mx = -INFINITY;
        for (int64_t j = 0; j < a->n; j++) {
            s[j] = dot(q, a->qkv + j * C3 + a->C + h * a->hs, a->hs) * scale;
            mx = s[j] > mx ? s[j] : mx;
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < a->n; j++) sum += s[j] = expf(s[j] - mx);
        float* o = a->out + h * a->hs;
        memset(o, 0, sizeof(float) * (size_t)a->hs);
        for (int64_t j = 0; j < a->n; j++) {
            const float* v = a->qkv + j * C3 + 2 * a->C + h * a->hs;
            for (int64_t i = 0; i < a->hs; i++) o[i] += s[j] * v[i];
        }
        const float inv = 1.0f / sum;
        for (int64_t i = 0; i < a->hs; i++) o[i] *= inv;
    }
}

/* ---- the ABI's two calls ---- */

int cpu_decode_begin(cpu_decoder** dec, const gpt_spec* spec, const float* params, gpt_pool* pool,
                     const int32_t* tokens, int32_t n, float* logits, int32_t all, char* err, size_t errlen) {
    const gpt_cfg* cfg = &spec->cfg;
    const int T = cfg->T, C = cfg->C, F = cfg->d_ff, H = cfg->H, V = cfg->V;
    const int threads = gpt_pool_size(pool);
    if (!*dec || (*dec)->threads < threads) {
        cpu_decode_free(*dec);
        *dec = decoder_new(spec, threads);
        if (!*dec) {
            gpt_errf(err, errlen, "cannot allocate the KV cache (%.1f MiB for L=%d T=%d C=%d)",
                     4.0 * cfg->L * T * 3.0 * C / (1 << 20), cfg->L, T, C);
            return 1;
        }
    }
    cpu_decoder* d = *dec;
    k_encoder_fwd(pool, d->x, tokens, tensor(spec, params, GPT_L_wte), tensor(spec, params, GPT_L_wpe), 1, n, C);
    for (int l = 0; l < cfg->L; l++) {
        const block_w w = block(spec, params, l);
        float* qkv = d->qkv + (int64_t)l * T * 3 * C;
        k_layernorm_fwd(pool, d->ln, d->mean, d->rstd, d->x, w.ln1w, w.ln1b, n, C);
        k_matmul_fwd(pool, qkv, d->ln, w.qkvw, w.qkvb, n, C, 3 * C);
        k_attention_fwd(pool, d->atty, NULL, d->stats, d->att_scratch, qkv, 1, n, C, H);
        k_matmul_residual_fwd(pool, d->res2, d->x, d->atty, w.projw, w.projb, n, C, C);
        k_layernorm_fwd(pool, d->ln, d->mean, d->rstd, d->res2, w.ln2w, w.ln2b, n, C);
        k_matmul_gelu_fwd(pool, d->fch, d->fchg, d->ln, w.fcw, w.fcb, n, C, F);
        k_matmul_residual_fwd(pool, d->x, d->res2, d->fchg, w.fcprojw, w.fcprojb, n, F, C);
    }
    /* the final LayerNorm and the tied LM head, on every row or the last one */
    const int64_t r0 = all ? 0 : n - 1, m = n - r0;
    const float* wte = tensor(spec, params, GPT_L_wte);
    k_layernorm_fwd(pool, d->ln, d->mean, d->rstd, d->x + r0 * C, tensor(spec, params, gpt_tail_tensor(cfg, GPT_L_lnfw)),
                    tensor(spec, params, gpt_tail_tensor(cfg, GPT_L_lnfb)), m, C);
    if (m == 1) gemv(pool, logits, wte, d->ln, NULL, NULL, V, C);
    else k_matmul_fwd(pool, logits, d->ln, wte, NULL, m, C, V);
    return 0;
}

int cpu_decode_step(cpu_decoder* d, const float* params, gpt_pool* pool, int32_t token, int32_t pos, float* logits) {
    const gpt_spec* spec = d->spec;
    const gpt_cfg* cfg = &spec->cfg;
    const int64_t T = cfg->T, C = cfg->C, F = cfg->d_ff, V = cfg->V;
    const float* wte = tensor(spec, params, GPT_L_wte);
    const float* wpe = tensor(spec, params, GPT_L_wpe);
    for (int64_t c = 0; c < C; c++) d->x[c] = wte[(int64_t)token * C + c] + wpe[(int64_t)pos * C + c];
    for (int l = 0; l < cfg->L; l++) {
        const block_w w = block(spec, params, l);
        float* qkv = d->qkv + (int64_t)l * T * 3 * C;
        k_layernorm_fwd(NULL, d->ln, d->mean, d->rstd, d->x, w.ln1w, w.ln1b, 1, (int)C);
        gemv(pool, qkv + (int64_t)pos * 3 * C, w.qkvw, d->ln, w.qkvb, NULL, 3 * C, C);
        attend_args at = {d->atty, d->scores, qkv, pos + 1, T, C, C / cfg->H, cfg->H};
        gpt_pool_run_for(pool, attend_task, &at, 4.0 * (double)(pos + 1) * (double)C);
        gemv(pool, d->res2, w.projw, d->atty, w.projb, d->x, C, C);
        k_layernorm_fwd(NULL, d->ln, d->mean, d->rstd, d->res2, w.ln2w, w.ln2b, 1, (int)C);
        gemv(pool, d->fch, w.fcw, d->ln, w.fcb, NULL, F, C);
        k_gelu_fwd(NULL, d->fchg, d->fch, F);
        gemv(pool, d->x, w.fcprojw, d->fchg, w.fcprojb, d->res2, C, F);
    }
    k_layernorm_fwd(NULL, d->ln, d->mean, d->rstd, d->x, tensor(spec, params, gpt_tail_tensor(cfg, GPT_L_lnfw)),
                    tensor(spec, params, gpt_tail_tensor(cfg, GPT_L_lnfb)), 1, (int)C);
    gemv(pool, logits, wte, d->ln, NULL, NULL, V, C);
    return 0;
}
