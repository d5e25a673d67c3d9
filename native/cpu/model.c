/*
 * model.c: the CPU backend. A GPT-2 training step over one parameter buffer, one
 * gradient buffer, one activation buffer and one work buffer, all allocated at create:
 * a step allocates nothing. The step reads as llm.c's train_gpt2.c, in this order below:
 * forward (to the final LayerNorm), lm_head (logits, loss, and their backward chunk by
 * chunk), backward, then global-norm clipping and AdamW (update).
 * Memory as llm.c: what is cheap to recompute is not saved (see layer_a), buffers the
 * layers use one after the other are shared, the LM head holds one chunk of logits.
 *
 * Threads (see lane, lanes_for): with B a multiple of the thread count, each thread runs
 * the whole step over its own B / nthreads batch rows (no barrier inside forward and
 * backward; a thread whose lane is done helps with the others' ops, see gpt_team) into its
 * own gradient buffer, and the buffers are summed in a fixed order;
 * otherwise (or with a BLAS that threads itself, or when those buffers would outweigh the
 * activations) every op is split over the pool. Either way a fixed thread count gives
 * fixed results.
 *
 * Shapes: B batch rows, T positions, C width, H heads, F = d_ff, V vocab, N = B*T.
 */
#define _POSIX_C_SOURCE 200809L
#if defined(__linux__)
#define _DEFAULT_SOURCE /* madvise(MADV_HUGEPAGE) */
#endif
#if defined(__APPLE__)
#define _DARWIN_C_SOURCE /* sysconf(_SC_NPROCESSORS_ONLN), and what Accelerate's headers need */
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "../backend.h"
#include "blas.h"
#include "decode.h"
#include "kernels.h"
#include "pool.h"

/* Refuse models whose buffers would exceed this many bytes (the allocation would fail anyway). */
#define MAX_BYTES (1ull << 42)
/* Logits kept at once (floats): the LM head runs over the rows in chunks of this size,
 * but of at least HEAD_MIN_ROWS rows (a lane's): its three GEMMs each stream the whole
 * V x C weight (or its gradient) once a chunk, and at a large V (GPT-2's 50257: 16 MB
 * of logits is 83 rows) thin chunks made them half as fast as the layers' GEMMs; 256
 * rows of 50257 logits are 51 MB (measured: bench/ab.ts, docs/performance.md). */
#define HEAD_CHUNK_FLOATS (4 << 20)
#define HEAD_MIN_ROWS 256
/* Recomputable activations are kept while all layers' copies take at most this (floats). */
#define KEEP_FLOATS (16 << 20)

/* Views of the tensors of one flat buffer (parameters or gradients), one field per
 * tensor of native/layout.h: wte, wpe, lnfw, lnfb and each block's ln1w, ln1b, qkvw,
 * qkvb, projw, projb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb. */
#define VIEW_FIELD(field, name, d0, d1) float* field;
typedef struct {
    GPT_LAYOUT_LAYER(VIEW_FIELD)
} layer_w;

typedef struct {
    GPT_LAYOUT_HEAD(VIEW_FIELD)
    GPT_LAYOUT_TAIL(VIEW_FIELD)
    layer_w* l; /* L of them */
} weights;
#undef VIEW_FIELD

/* Saved activations of one block. res_out is the block's output (the next block's input).
 * What is cheap to recompute is not kept (as llm.c does): LayerNorm outputs (from the
 * input and the saved mean, rstd) never, GELU outputs (from fch) and attention
 * probabilities (from qkv and the saved row max and 1/sum) when all layers' copies would
 * take more than KEEP_FLOATS (a small model keeps them: recomputing costs it time, and
 * it has memory to spare). What is not kept lives in buffers shared by all layers. */
typedef struct {
    float *ln1_mean, *ln1_rstd; /* (N), (N) */
    float* qkv;                 /* (N,3C) */
    float* att;                 /* (B,H,T,T) probabilities, or NULL: recomputed */
    float* att_stats;           /* (B,H,T,2) max and 1/sum of every softmax row */
    float* atty;                /* (N,C) heads before c_proj */
    float* res2;                /* (N,C) input + attention branch */
    float *ln2_mean, *ln2_rstd; /* (N), (N) */
    float* fch;                 /* (N,F) before GELU; gelu' of it when fchg is kept */
    float* fchg;                /* (N,F) after GELU, or NULL: recomputed into the shared gelu */
    float* res_out;             /* (N,C) res2 + MLP branch */
} layer_a;

enum {
    P_ENC_F, P_LN_F, P_QKV_F, P_ATT_F, P_PROJ_F, P_FC_F, P_FCPROJ_F, P_LMHEAD_F, P_CE,
    P_LMHEAD_B, P_LN_B, P_FCPROJ_B, P_FC_B, P_PROJ_B, P_ATT_B, P_QKV_B, P_ENC_B, P_NORM, P_ADAMW,
    P_COUNT
};
static const char* const PROF_NAMES[P_COUNT] = {
    "encoder.fwd", "layernorm.fwd", "matmul_qkv.fwd", "attention.fwd", "matmul_attn_proj+residual.fwd",
    "matmul_fc+gelu.fwd", "matmul_mlp_proj+residual.fwd", "lm_head.fwd", "softmax_cross_entropy",
    "lm_head.bwd", "layernorm.bwd", "matmul_mlp_proj+gelu.bwd", "matmul_fc.bwd", "matmul_attn_proj.bwd",
    "attention.bwd", "matmul_qkv.bwd", "encoder.bwd", "grad_sum+norm", "adamw",
};

/* A lane runs forward and backward over the batch rows [b0, b0 + B): token rows
 * [r0, r0 + N) of every (rows, ...) buffer. One lane over the whole batch splits each op
 * over the pool; nthreads lanes each run on one thread of it, through a lane pool of the
 * team: a lane that is done lends its thread to the others' ops (see pool.h). */
typedef struct {
    gpt_pool* pool;      /* the kernels' pool: the model's (one lane) or the team's lane pool */
    int b0, B;
    int64_t r0, N;
    int64_t kb, ke;      /* this step: the counted targets k in [kb, ke) (see head_rows) */
    float* grads;        /* P floats: the model's gradient buffer (lane 0) or this lane's own */
    weights gw;          /* views into grads */
    int64_t head_chunk;  /* LM head rows at a time */
    float *logits, *head_x, *head_dx; /* (head_chunk, V), (head_chunk, C) x 2 */
    float* ln_scratch;   /* k_layernorm_bwd_scratch(N, C) */
    float* att_scratch;  /* k_attention_scratch(T, C, threads of pool: 2 for a lane pool) */
    double* prof;        /* the model's per-op seconds (lane 0 only), else NULL */
} lane;

typedef struct {
    const gpt_spec* spec; /* cfg, B, options, layout (gpt.c's, unchanged while we live) */
    gpt_cfg cfg;
    int B;
    int64_t N, P;
    int nthreads;
    gpt_pool* pool;
    gpt_team* team; /* with more than one lane */

    float *params, *grads, *m, *v;
    int64_t step;
    weights w;
    k_segment* segs;
    int nsegs;

    float* acts; /* every saved activation */
    int64_t acts_floats, work_floats; /* the sizes of acts and work */
    float* encoded;
    layer_a* a;
    float *lnf_mean, *lnf_rstd, *losses;

    /* the LM head runs on the rows with a counted target only (all N rows, or the rows
     * head_rows gathered chunk by chunk into a lane's head_x), a lane's head_chunk rows at
     * a time: its logits hold one chunk, whose backward runs right after its loss.
     * Counted target k (k-th in row order) has its loss at losses[k]. */
    int keep_att, keep_gelu; /* see layer_a */
    int32_t *head_rows, *head_yc;

    float* work; /* buffers shared by the layers */
    float* ln_out;  /* (N,C) the LayerNorm output in use (forward, and recomputed in backward) */
    float* gelu;    /* (N,F) the GELU output in use (idem) */
    float *dres, *dtmp;
    float* dbig;    /* (N, max(F,3C)): dfch, later dqkv */
    double* sumsq_scratch;

    /* lanes and what each lane owns; rebuilt by set_threads */
    int nlanes;
    int64_t act_floats; /* acts + work: what a lane's gradient buffer is weighed against */
    lane* lanes;
    float* lane_buf;     /* the lanes' gradient buffers (but lane 0's), logits, scratch */
    float* att_scratch;  /* k_attention_scratch(T, C, nthreads) */
    int64_t lane_floats, att_floats; /* their sizes */

    int profile;
    double prof[P_COUNT];

    cpu_decoder* decoder; /* the KV cache and its buffers (decode.c), made by the first prompt pass */
} cpu_model;

/* ---- profiling ---- */

static double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Lane 0's per-op clock (in batch-parallel runs, what the caller thread saw): acc NULL
 * when profiling is off. */
typedef struct {
    double* acc;
    double t;
} timer;

static timer timer_start(double* acc) { return (timer){acc, acc ? now_sec() : 0.0}; }

static inline void timer_lap(timer* tm, int op) {
    if (!tm->acc) return;
    const double t = now_sec();
    tm->acc[op] += t - tm->t;
    tm->t = t;
}

/* OP(P_x, call): runs one op and charges the time since the last lap (the op, and any
 * recomputation just before it) to counter P_x of the function's timer tm. */
#define OP(id, ...)              \
    do {                         \
        __VA_ARGS__;             \
        timer_lap(&tm, (id));    \
    } while (0)

/* ---- memory ---- */

/* Buffers of this size and more are mapped straight from the OS (anonymous pages: zero,
 * and not resident until first written, so a model costs no memory before its first step
 * and the AdamW moments none before their first update; at GPT-2 small the four
 * parameter-sized buffers are 2 GB), on 2 MiB boundaries, asking for transparent huge
 * pages (Linux with THP in "madvise" mode): the GEMMs' packing walks activations and
 * weights with strides of a few KiB, one 4 KiB page (and TLB entry) per row otherwise.
 * Smaller ones come from the heap, zeroed. */
#define HUGE_BYTES ((size_t)2 << 20)

static size_t floats_bytes(int64_t n) {
    const size_t bytes = ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) & ~(size_t)63;
    return bytes >= HUGE_BYTES ? (bytes + HUGE_BYTES - 1) & ~(HUGE_BYTES - 1) : bytes;
}

static void advise_huge(void* p, size_t bytes) {
#if defined(MADV_HUGEPAGE)
    (void)madvise(p, bytes, MADV_HUGEPAGE); /* a hint: without THP nothing changes */
#else
    (void)p, (void)bytes;
#endif
}

/* n zero floats; free them with free_floats(p, n) */
static float* alloc_floats(int64_t n) {
    const size_t bytes = floats_bytes(n);
    if (bytes < HUGE_BYTES) {
        void* p = NULL;
        if (posix_memalign(&p, 64, bytes) != 0) return NULL;
        return (float*)memset(p, 0, bytes);
    }
    /* map 2 MiB more, keep the aligned middle */
    char* raw = (char*)mmap(NULL, bytes + HUGE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == (char*)MAP_FAILED) return NULL;
    char* p = (char*)(((uintptr_t)raw + HUGE_BYTES - 1) & ~(uintptr_t)(HUGE_BYTES - 1));
    if (p > raw) munmap(raw, (size_t)(p - raw));
    if (raw + HUGE_BYTES > p) munmap(p + bytes, (size_t)(raw + HUGE_BYTES - p));
    advise_huge(p, bytes);
    return (float*)p;
}

static void free_floats(float* p, int64_t n) {
    if (!p) return;
    const size_t bytes = floats_bytes(n);
    if (bytes < HUGE_BYTES) free(p);
    else munmap(p, bytes);
}

/* p[0:n) = 0 for a buffer of alloc_floats(n): a mapped one gets fresh zero pages (what it
 * held stops being resident) */
static void zero_floats(float* p, int64_t n) {
    const size_t bytes = floats_bytes(n);
    if (bytes >= HUGE_BYTES &&
        mmap(p, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
        advise_huge(p, bytes);
        return;
    }
    memset(p, 0, bytes);
}

/* Carves consecutive sub-buffers (64-byte aligned) out of one allocation: a first pass
 * with base NULL only counts. */
typedef struct {
    float* base;
    int64_t used;
} carver;

static float* carve(carver* c, int64_t n) {
    float* p = c->base ? c->base + c->used : NULL;
    c->used += (n + 15) & ~(int64_t)15;
    return p;
}

static void layout_acts(cpu_model* g, carver* c) {
    const int64_t N = g->N, C = g->cfg.C, F = g->cfg.d_ff, H = g->cfg.H;
    g->encoded = carve(c, N * C);
    for (int l = 0; l < g->cfg.L; l++) {
        layer_a* a = &g->a[l];
        a->ln1_mean = carve(c, N);
        a->ln1_rstd = carve(c, N);
        a->qkv = carve(c, N * 3 * C);
        a->att = g->keep_att ? carve(c, (int64_t)g->B * H * g->cfg.T * g->cfg.T) : NULL;
        a->att_stats = carve(c, N * H * 2);
        a->atty = carve(c, N * C);
        a->res2 = carve(c, N * C);
        a->ln2_mean = carve(c, N);
        a->ln2_rstd = carve(c, N);
        a->fch = carve(c, N * F);
        a->fchg = g->keep_gelu ? carve(c, N * F) : NULL;
        a->res_out = carve(c, N * C);
    }
    g->lnf_mean = carve(c, N);
    g->lnf_rstd = carve(c, N);
    g->losses = carve(c, N);
}

static void layout_work(cpu_model* g, carver* c) {
    const int64_t N = g->N, C = g->cfg.C, F = g->cfg.d_ff;
    g->ln_out = carve(c, N * C);
    g->gelu = g->keep_gelu ? NULL : carve(c, N * F);
    g->dres = carve(c, N * C);
    g->dtmp = carve(c, N * C);
    g->dbig = carve(c, N * (F > 3 * C ? F : 3 * C));
    g->head_rows = (int32_t*)carve(c, N);
    g->head_yc = (int32_t*)carve(c, N);
    g->sumsq_scratch = (double*)carve(c, 2 * k_sumsq_scratch(g->P));
}

/* Activation + work floats, computed in double so that absurd shapes cannot overflow. */
static double estimate_floats(const gpt_cfg* cfg, int B, double P) {
    const double N = (double)B * cfg->T, C = cfg->C, F = cfg->d_ff, T = cfg->T, V = cfg->V;
    const double per_layer = N * (6 * C + 2 * F + 4 + 2.0 * cfg->H) + (double)B * cfg->H * T * T;
    const double head = fmin(N, fmax((double)HEAD_MIN_ROWS, (double)HEAD_CHUNK_FLOATS / V));
    return 4 * P + N * C + cfg->L * per_layer + head * (V + 2 * C) + 3 * N + N * (5 * C + 2 * F + 2) +
           4.0 * (T * T) * 256;
}

/* Points w's views into buf by the layout: llm.c's pointer table, the table being the
 * lists of native/layout.h, walked in their order as the layout was. */
static void set_views(const gpt_spec* spec, float* buf, weights* w) {
    const gpt_tensor* t = spec->tensors;
#define POINT(field, name, d0, d1) w->field = buf + (t++)->offset;
#define POINT_LAYER(field, name, d0, d1) w->l[l].field = buf + (t++)->offset;
    GPT_LAYOUT_HEAD(POINT)
    for (int l = 0; l < spec->cfg.L; l++) {
        GPT_LAYOUT_LAYER(POINT_LAYER)
    }
    GPT_LAYOUT_TAIL(POINT)
#undef POINT
#undef POINT_LAYER
}

static int online_cores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 256 ? 256 : (int)n;
}

/* ---- threads and lanes ---- */

/* Token rows a lane needs to pay for summing the lanes' gradient buffers (a pass over
 * the parameters per lane: S2's width at B=4 T=64, 128 rows a lane, was 1.3x the cost per
 * token of larger batches; 256 rows a lane run at the median). */
#define LANE_MIN_ROWS 256

/* One lane per thread when the threads split the batch evenly into lanes of at least
 * LANE_MIN_ROWS rows, each may call a single-threaded BLAS of its own (GPT_BLAS_SPLIT)
 * and the lanes' extra gradient buffers take no more memory than the activations (many
 * cores, a large model and a small batch would otherwise multiply the footprint); else
 * one lane, every op split over the pool. Option lanes GPT_LANES_ONE forces one lane,
 * GPT_LANES_ALL lanes whenever the batch splits evenly (tests at tiny shapes: both ways agree). */
static int lanes_for(const cpu_model* g, int nthreads) {
    const int32_t want = g->spec->opt.lanes;
    if (!GPT_BLAS_SPLIT || nthreads <= 1 || g->B % nthreads != 0 || want == GPT_LANES_ONE) return 1;
    if (want == GPT_LANES_ALL) return nthreads;
    if (g->N / nthreads < LANE_MIN_ROWS) return 1;
    if ((double)(nthreads - 1) * (double)g->P > (double)g->act_floats) return 1;
    return nthreads;
}

/* Option lane_help: whether a lane that is done helps the others (see pool.h). */
static gpt_help_mode help_mode(const cpu_model* g) {
    const int32_t help = g->spec->opt.lane_help;
    return help == GPT_LANE_HELP_OFF ? GPT_HELP_OFF : help == GPT_LANE_HELP_TEST ? GPT_HELP_TEST : GPT_HELP_ON;
}

/* What each lane owns, carved from one buffer (base NULL: counts only). */
static void layout_lanes(const cpu_model* g, lane* lanes, int nl, carver* c) {
    const int64_t C = g->cfg.C, V = g->cfg.V, T = g->cfg.T;
    /* LM head rows per chunk: logits of about HEAD_CHUNK_FLOATS over all lanes, whole GEMM
     * row tiles; option head_chunk_rows overrides it (tests/native-lmhead.test.ts) */
    int64_t chunk = HEAD_CHUNK_FLOATS / V / nl / 64 * 64;
    if (chunk < HEAD_MIN_ROWS) chunk = HEAD_MIN_ROWS;
    if (g->spec->opt.head_chunk_rows > 0) chunk = g->spec->opt.head_chunk_rows;
    for (int i = 0; i < nl; i++) {
        lane* L = &lanes[i];
        L->B = g->B / nl;
        L->b0 = i * L->B;
        L->N = (int64_t)L->B * T;
        L->r0 = (int64_t)L->b0 * T;
        L->head_chunk = chunk < L->N ? chunk : L->N;
        L->grads = i == 0 ? g->grads : carve(c, g->P);
        L->logits = carve(c, L->head_chunk * V);
        L->head_x = carve(c, L->head_chunk * C);
        L->head_dx = carve(c, L->head_chunk * C);
        L->ln_scratch = carve(c, k_layernorm_bwd_scratch(L->N, (int)C));
    }
}

static void free_threads(cpu_model* g) {
    gpt_pool_destroy(g->pool);
    gpt_team_destroy(g->team);
    g->team = NULL;
    free_floats(g->att_scratch, g->att_floats);
    free_floats(g->lane_buf, g->lane_floats);
    if (g->lanes) free(g->lanes[0].gw.l);
    free(g->lanes);
    g->pool = NULL;
    g->att_scratch = g->lane_buf = NULL;
    g->lanes = NULL;
}

/* Pool, lanes and scratch for n threads (the model's are replaced only on success). */
static int setup_threads(cpu_model* g, int n) {
    const int nl = lanes_for(g, n);
    carver c = {NULL, 0};
    lane* lanes = (lane*)calloc((size_t)nl, sizeof(lane));
    if (lanes) layout_lanes(g, lanes, nl, &c);
    layer_w* views = (layer_w*)calloc((size_t)nl * (size_t)g->cfg.L, sizeof(layer_w));
    const int64_t buf_floats = c.used;
    float* buf = alloc_floats(buf_floats);
    /* attention scratch: the pool's threads (one lane), or two threads a lane */
    const int64_t att_lane = k_attention_scratch(g->cfg.T, g->cfg.C, 2);
    const int64_t att_floats = nl == 1 ? k_attention_scratch(g->cfg.T, g->cfg.C, n) : nl * att_lane;
    float* att = alloc_floats(att_floats);
    gpt_pool* pool = gpt_pool_create(n);
    gpt_team* team = nl > 1 ? gpt_team_create(nl, help_mode(g)) : NULL;
    if (!lanes || !views || !buf || !att || !pool || (nl > 1 && !team)) {
        free(lanes);
        free(views);
        free_floats(buf, buf_floats);
        free_floats(att, att_floats);
        gpt_pool_destroy(pool);
        gpt_team_destroy(team);
        return 1;
    }
    c.base = buf;
    c.used = 0;
    layout_lanes(g, lanes, nl, &c);
    for (int i = 0; i < nl; i++) {
        lane* L = &lanes[i];
        L->pool = nl == 1 ? pool : gpt_team_lane(team, i);
        L->att_scratch = att + (nl == 1 ? 0 : i * att_lane);
        L->gw.l = views + (size_t)i * (size_t)g->cfg.L;
        set_views(g->spec, L->grads, &L->gw);
        L->prof = i == 0 && g->profile ? g->prof : NULL;
    }
    free_threads(g);
    g->pool = pool;
    g->team = team;
    g->att_scratch = att;
    g->att_floats = att_floats;
    g->lane_buf = buf;
    g->lane_floats = buf_floats;
    g->lanes = lanes;
    g->nlanes = nl;
    g->nthreads = n;
    gpt_blas_set_threads(n);
    return 0;
}

static void cpu_destroy(void* self);

static void* cpu_create(const gpt_spec* spec, char* err, size_t errlen) {
    const gpt_cfg* cfg = &spec->cfg;
    const int32_t B = spec->B;
    const int64_t P = spec->n_params;
    const double floats = estimate_floats(cfg, B, (double)P);
    if (floats * sizeof(float) > (double)MAX_BYTES) {
        gpt_errf(err, errlen, "model V=%d T=%d C=%d L=%d H=%d d_ff=%d with batch B=%d needs about %.0f GiB of memory: too large",
                 cfg->V, cfg->T, cfg->C, cfg->L, cfg->H, cfg->d_ff, B, floats * 4.0 / (1 << 30));
        return NULL;
    }
    cpu_model* g = (cpu_model*)calloc(1, sizeof *g);
    if (!g) goto oom;
    g->spec = spec;
    g->cfg = *cfg;
    g->B = B;
    g->N = (int64_t)B * cfg->T;
    g->P = P;
    /* option recompute forces recomputing or keeping (tests/native-lmhead.test.ts: same results) */
    const double L = cfg->L, Nd = (double)g->N;
    g->keep_att = L * B * cfg->H * (double)cfg->T * cfg->T <= KEEP_FLOATS;
    g->keep_gelu = L * Nd * cfg->d_ff <= KEEP_FLOATS;
    if (spec->opt.recompute != GPT_RECOMPUTE_AUTO) g->keep_att = g->keep_gelu = spec->opt.recompute == GPT_RECOMPUTE_NEVER;
    g->profile = spec->opt.profile;

    g->w.l = (layer_w*)calloc((size_t)cfg->L, sizeof(layer_w));
    g->a = (layer_a*)calloc((size_t)cfg->L, sizeof(layer_a));
    g->segs = (k_segment*)calloc((size_t)spec->n_tensors, sizeof(k_segment));
    if (!g->w.l || !g->a || !g->segs) goto oom;
    /* AdamW segments: runs of tensors with the same decay flag */
    for (int64_t i = 0; i < spec->n_tensors; i++) {
        const gpt_tensor* t = &spec->tensors[i];
        if (g->nsegs > 0 && g->segs[g->nsegs - 1].decay == t->decay) {
            g->segs[g->nsegs - 1].end = t->offset + t->size;
        } else {
            g->segs[g->nsegs] = (k_segment){.begin = t->offset, .end = t->offset + t->size, .decay = t->decay};
            g->nsegs++;
        }
    }

    g->params = alloc_floats(P);
    g->grads = alloc_floats(P);
    g->m = alloc_floats(P);
    g->v = alloc_floats(P);
    carver ca = {NULL, 0}, cw = {NULL, 0};
    layout_acts(g, &ca);
    layout_work(g, &cw);
    g->act_floats = ca.used + cw.used;
    g->acts_floats = ca.used;
    g->work_floats = cw.used;
    g->acts = alloc_floats(ca.used);
    g->work = alloc_floats(cw.used);
    if (!g->params || !g->grads || !g->m || !g->v || !g->acts || !g->work) goto oom;
    ca.base = g->acts;
    ca.used = 0;
    cw.base = g->work;
    cw.used = 0;
    layout_acts(g, &ca);
    layout_work(g, &cw);
    set_views(spec, g->params, &g->w);

    if (setup_threads(g, online_cores()) != 0) goto oom;
    return g;
oom:
    gpt_errf(err, errlen, "cannot allocate the CPU model buffers (about %.2f GiB for V=%d T=%d C=%d L=%d d_ff=%d B=%d)",
             floats * 4.0 / (1 << 30), cfg->V, cfg->T, cfg->C, cfg->L, cfg->d_ff, B);
    cpu_destroy(g);
    return NULL;
}

static void cpu_destroy(void* self) {
    cpu_model* g = (cpu_model*)self;
    if (!g) return;
    free_floats(g->params, g->P);
    free_floats(g->grads, g->P);
    free_floats(g->m, g->P);
    free_floats(g->v, g->P);
    free_floats(g->acts, g->acts_floats);
    free_floats(g->work, g->work_floats);
    free_threads(g);
    cpu_decode_free(g->decoder);
    free(g->w.l);
    free(g->a);
    free(g->segs);
    free(g);
}

static int cpu_available(void) { return 1; }

static int cpu_set_threads(void* self, int32_t n, char* err, size_t errlen) {
    cpu_model* g = (cpu_model*)self;
    if (n == g->nthreads) return 0;
    if (setup_threads(g, n) != 0) {
        gpt_errf(err, errlen, "cannot start %d worker threads", n);
        return 1;
    }
    return 0;
}

static int cpu_set_params(void* self, const float* src, char* err, size_t errlen) {
    (void)err, (void)errlen;
    cpu_model* g = (cpu_model*)self;
    memcpy(g->params, src, sizeof(float) * (size_t)g->P);
    return 0;
}

static int cpu_get_params(void* self, float* dst, char* err, size_t errlen) {
    (void)err, (void)errlen;
    cpu_model* g = (cpu_model*)self;
    memcpy(dst, g->params, sizeof(float) * (size_t)g->P);
    return 0;
}

static int cpu_set_opt_state(void* self, const float* m, const float* v, int64_t step, char* err, size_t errlen) {
    (void)err, (void)errlen;
    cpu_model* g = (cpu_model*)self;
    if (m) {
        memcpy(g->m, m, sizeof(float) * (size_t)g->P);
        memcpy(g->v, v, sizeof(float) * (size_t)g->P);
    } else {
        zero_floats(g->m, g->P);
        zero_floats(g->v, g->P);
    }
    g->step = step;
    return 0;
}

static int cpu_get_opt_state(void* self, float* m, float* v, int64_t* step, char* err, size_t errlen) {
    (void)err, (void)errlen;
    cpu_model* g = (cpu_model*)self;
    if (m) {
        memcpy(m, g->m, sizeof(float) * (size_t)g->P);
        memcpy(v, g->v, sizeof(float) * (size_t)g->P);
    }
    *step = g->step;
    return 0;
}

static float* cpu_state(cpu_model* g, int32_t which) {
    return which == GPT_STATE_PARAMS ? g->params : which == GPT_STATE_M ? g->m : g->v;
}

static int cpu_read_state(void* self, int32_t which, int64_t offset, int64_t count, float* dst, char* err,
                          size_t errlen) {
    (void)err, (void)errlen;
    memcpy(dst, cpu_state((cpu_model*)self, which) + offset, sizeof(float) * (size_t)count);
    return 0;
}

static int cpu_write_state(void* self, int32_t which, int64_t offset, int64_t count, const float* src, char* err,
                           size_t errlen) {
    (void)err, (void)errlen;
    memcpy(cpu_state((cpu_model*)self, which) + offset, src, sizeof(float) * (size_t)count);
    return 0;
}

/* ---- the step ---- */

static int64_t count_targets(const cpu_model* g, const int32_t* y) {
    int64_t n = 0;
    for (int64_t i = 0; i < g->N; i++) n += y[i] != GPT_IGNORE_INDEX;
    return n;
}

/* Forward pass of lane L up to the final LayerNorm: g->ln_out = lnf (N,C), kept for the
 * LM head and its backward. */
static void forward(cpu_model* g, lane* L, const int32_t* x) {
    const int T = g->cfg.T, C = g->cfg.C, H = g->cfg.H, F = g->cfg.d_ff;
    const int B = L->B;
    const int64_t N = L->N, r0 = L->r0;
    gpt_pool* p = L->pool;
    timer tm = timer_start(L->prof);
/* rows r0.. of a (rows, width) buffer */
#define ROWS(buf, width) ((buf) + r0 * (int64_t)(width))
    OP(P_ENC_F, k_encoder_fwd(p, ROWS(g->encoded, C), x + r0, g->w.wte, g->w.wpe, B, T, C)); /* (N,C) */
    const float* res = ROWS(g->encoded, C);
    float* ln_out = ROWS(g->ln_out, C);
    for (int l = 0; l < g->cfg.L; l++) {
        const layer_w* w = &g->w.l[l];
        const layer_a* a = &g->a[l];
        float* qkv = ROWS(a->qkv, 3 * C);
        float* atty = ROWS(a->atty, C);
        float* res2 = ROWS(a->res2, C);
        float* fch = ROWS(a->fch, F);
        float* fchg = a->fchg ? ROWS(a->fchg, F) : ROWS(g->gelu, F);
        float* att = a->att ? a->att + (int64_t)L->b0 * H * T * T : NULL;
        /* ln1 (N,C) -> qkv (N,3C) -> attention (N,C) -> res2 = res + atty Wproj^T + b (N,C) */
        OP(P_LN_F, k_layernorm_fwd(p, ln_out, ROWS(a->ln1_mean, 1), ROWS(a->ln1_rstd, 1), res, w->ln1w, w->ln1b, N, C));
        OP(P_QKV_F, k_matmul_fwd(p, qkv, ln_out, w->qkvw, w->qkvb, N, C, 3 * C));
        OP(P_ATT_F, k_attention_fwd(p, atty, att, ROWS(a->att_stats, 2 * H), L->att_scratch, qkv, B, T, C, H));
        OP(P_PROJ_F, k_matmul_residual_fwd(p, res2, res, atty, w->projw, w->projb, N, C, C));
        /* ln2 (N,C) -> fch (N,F), fchg = gelu(fch) -> res_out = res2 + fchg Wfcproj^T + b (N,C);
         * with the GELU output kept, fch keeps gelu'(fch) instead: the backward's only use */
        OP(P_LN_F, k_layernorm_fwd(p, ln_out, ROWS(a->ln2_mean, 1), ROWS(a->ln2_rstd, 1), res2, w->ln2w, w->ln2b, N, C));
        if (a->fchg) OP(P_FC_F, k_matmul_gelu_fwd_keep_grad(p, fch, fchg, ln_out, w->fcw, w->fcb, N, C, F));
        else OP(P_FC_F, k_matmul_gelu_fwd(p, fch, fchg, ln_out, w->fcw, w->fcb, N, C, F));
        OP(P_FCPROJ_F, k_matmul_residual_fwd(p, ROWS(a->res_out, C), res2, fchg, w->fcprojw, w->fcprojb, N, F, C));
        res = ROWS(a->res_out, C);
    }
    OP(P_LN_F, k_layernorm_fwd(p, ln_out, ROWS(g->lnf_mean, 1), ROWS(g->lnf_rstd, 1), res, g->w.lnfw, g->w.lnfb, N, C));
}

/* The tied LM head and the loss of lane L, on the rows where a target counts (ignored
 * rows get no logits and no gradient), head_chunk rows at a time: logits (m,V) = lnf
 * wte^T, losses[k] for the lane's counted targets kb <= k < ke (n > 0 counted in the
 * whole batch: the loss is their mean). With grad, each chunk's backward runs right after
 * its loss (its logits hold the chunk's d loss / d logits): dtmp = d loss / d lnf (N,C),
 * L->gw.wte = the head's part of d loss / d wte (the embedding adds to it last). */
static void lm_head(cpu_model* g, lane* L, const int32_t* y, int64_t n, int grad) {
    const int C = g->cfg.C, V = g->cfg.V;
    const int64_t N = L->N, r0 = L->r0;
    gpt_pool* p = L->pool;
    timer tm = timer_start(L->prof);
    const int gathered = n < g->N;
    const int32_t* head_y = gathered ? g->head_yc : y;
    if (gathered && grad) memset(ROWS(g->dtmp, C), 0, sizeof(float) * (size_t)(N * C));
    if (grad && L->ke == L->kb) memset(L->gw.wte, 0, sizeof(float) * (size_t)V * C); /* no head rows here */
    for (int64_t k0 = L->kb; k0 < L->ke; k0 += L->head_chunk) {
        const int64_t m = L->ke - k0 < L->head_chunk ? L->ke - k0 : L->head_chunk;
        const float* in = g->ln_out + k0 * C; /* counted target k is row k */
        if (gathered) {
            k_gather_rows(p, L->head_x, g->ln_out, g->head_rows + k0, m, C);
            in = L->head_x;
        }
        OP(P_LMHEAD_F, k_matmul_fwd(p, L->logits, in, g->w.wte, NULL, m, C, V)); /* (m,V) */
        OP(P_CE, k_softmax_ce(p, L->logits, g->losses + k0, head_y + k0, m, V, 1.0f / (float)n, grad));
        if (!grad) continue;
        /* dlnf (m,C) = dlogits wte; dwte (V,C) (+)= dlogits^T lnf */
        float* dx = gathered ? L->head_dx : g->dtmp + k0 * C;
        if (k0 == L->kb) k_matmul_bwd(p, dx, L->gw.wte, NULL, L->logits, in, g->w.wte, NULL, m, C, V);
        else k_matmul_bwd_add(p, dx, L->gw.wte, L->logits, in, g->w.wte, m, C, V);
        if (gathered)
            for (int64_t k = 0; k < m; k++)
                memcpy(g->dtmp + (int64_t)g->head_rows[k0 + k] * C, dx + k * C, sizeof(float) * (size_t)C);
        timer_lap(&tm, P_LMHEAD_B);
    }
}

/* Backward pass of lane L after its lm_head(grad=1) left dtmp = d lnf: every gradient of
 * L->grads is overwritten. LayerNorm outputs (and, when not kept, GELU outputs) are
 * recomputed into the shared buffers right before the op that reads them. */
static void backward(cpu_model* g, lane* L, const int32_t* x) {
    const int T = g->cfg.T, C = g->cfg.C, H = g->cfg.H, F = g->cfg.d_ff;
    const int B = L->B;
    const int64_t N = L->N, r0 = L->r0;
    gpt_pool* p = L->pool;
    float *dres = ROWS(g->dres, C), *dtmp = ROWS(g->dtmp, C), *dbig = ROWS(g->dbig, F > 3 * C ? F : 3 * C);
    float* ln_out = ROWS(g->ln_out, C);
    timer tm = timer_start(L->prof);
    const float* res_last = g->cfg.L > 0 ? ROWS(g->a[g->cfg.L - 1].res_out, C) : ROWS(g->encoded, C);
    memset(dres, 0, sizeof(float) * (size_t)(N * C));
    /* dres (N,C) = d res_last, from dtmp = d lnf */
    OP(P_LN_B, k_layernorm_bwd(p, dres, L->gw.lnfw, L->gw.lnfb, L->ln_scratch, dtmp, res_last, g->w.lnfw,
                               ROWS(g->lnf_mean, 1), ROWS(g->lnf_rstd, 1), N, C));
    for (int l = g->cfg.L - 1; l >= 0; l--) {
        const layer_w* w = &g->w.l[l];
        layer_w* gw = &L->gw.l[l];
        const layer_a* a = &g->a[l];
        const float* res_in = l > 0 ? ROWS(g->a[l - 1].res_out, C) : ROWS(g->encoded, C);
        const float* res2 = ROWS(a->res2, C);
        const float* fch = ROWS(a->fch, F);
        const float* qkv = ROWS(a->qkv, 3 * C);
        const float* att = a->att ? a->att + (int64_t)L->b0 * H * T * T : NULL;
        const float *ln1_mean = ROWS(a->ln1_mean, 1), *ln1_rstd = ROWS(a->ln1_rstd, 1);
        const float *ln2_mean = ROWS(a->ln2_mean, 1), *ln2_rstd = ROWS(a->ln2_rstd, 1);
        /* the MLP branch, dres = d res_out: dfch (N,F) = gelu'(fch) (dres Wfcproj) -> dln2 (N,C) -> dres += d res2 */
        if (a->fchg) {
            OP(P_FCPROJ_B, k_matmul_bwd_gelu_grad(p, dbig, gw->fcprojw, gw->fcprojb, dres, ROWS(a->fchg, F), w->fcprojw,
                                                  fch, N, F, C));
        } else {
            k_gelu_fwd(p, ROWS(g->gelu, F), fch, N * F);
            OP(P_FCPROJ_B, k_matmul_bwd(p, dbig, gw->fcprojw, gw->fcprojb, dres, ROWS(g->gelu, F), w->fcprojw, fch, N,
                                        F, C));
        }
        k_layernorm_apply(p, ln_out, res2, w->ln2w, w->ln2b, ln2_mean, ln2_rstd, N, C);
        OP(P_FC_B, k_matmul_bwd(p, dtmp, gw->fcw, gw->fcb, dbig, ln_out, w->fcw, NULL, N, C, F));
        OP(P_LN_B, k_layernorm_bwd(p, dres, gw->ln2w, gw->ln2b, L->ln_scratch, dtmp, res2, w->ln2w, ln2_mean, ln2_rstd,
                                   N, C));
        /* the attention branch, dres = d res2: datty (N,C) -> dqkv (N,3C) -> dln1 (N,C) -> dres += d res_in */
        OP(P_PROJ_B, k_matmul_bwd(p, dtmp, gw->projw, gw->projb, dres, ROWS(a->atty, C), w->projw, NULL, N, C, C));
        OP(P_ATT_B, k_attention_bwd(p, dbig, L->att_scratch, dtmp, qkv, att, ROWS(a->att_stats, 2 * H), B, T, C, H));
        k_layernorm_apply(p, ln_out, res_in, w->ln1w, w->ln1b, ln1_mean, ln1_rstd, N, C);
        OP(P_QKV_B, k_matmul_bwd(p, dtmp, gw->qkvw, gw->qkvb, dbig, ln_out, w->qkvw, NULL, N, C, 3 * C));
        OP(P_LN_B, k_layernorm_bwd(p, dres, gw->ln1w, gw->ln1b, L->ln_scratch, dtmp, res_in, w->ln1w, ln1_mean, ln1_rstd,
                                   N, C));
    }
    /* dres = d encoded: dwte (V,C) += its rows by token, dwpe (T,C) = its sums over the batch */
    memset(L->gw.wpe, 0, sizeof(float) * (size_t)T * C);
    OP(P_ENC_B, k_encoder_bwd(p, L->gw.wte, L->gw.wpe, dres, x + r0, B, T, C));
#undef ROWS
}

/* ---- a pass over every lane ---- */

typedef struct {
    cpu_model* g;
    const int32_t *x, *y;
    int64_t n;
    int grad;
} pass_ctx;

static void lane_pass(cpu_model* g, lane* L, const pass_ctx* c) {
    forward(g, L, c->x);
    lm_head(g, L, c->y, c->n, c->grad);
    if (c->grad) backward(g, L, c->x);
}

static void lanes_task(void* vctx, int tid, int nt) {
    const pass_ctx* c = (const pass_ctx*)vctx;
    (void)nt;
    gpt_team_start(c->g->team, tid);
    lane_pass(c->g, &c->g->lanes[tid], c);
    gpt_team_help(c->g->team, tid);
}

/* Forward (and with grad, backward into g->grads) over the whole batch; returns the mean
 * CE over the n > 0 counted targets. */
static float run_pass(cpu_model* g, const int32_t* x, const int32_t* y, int64_t n, int grad) {
    /* which counted targets each lane's LM head takes: all rows count, or head_rows lists
     * the ones that do (increasing) */
    const int gathered = n < g->N;
    if (gathered) {
        int64_t k = 0;
        for (int64_t i = 0; i < g->N; i++)
            if (y[i] != GPT_IGNORE_INDEX) {
                g->head_rows[k] = (int32_t)i;
                g->head_yc[k++] = y[i];
            }
    }
    for (int i = 0, k = 0; i < g->nlanes; i++) {
        lane* L = &g->lanes[i];
        if (!gathered) {
            L->kb = L->r0;
            L->ke = L->r0 + L->N;
            continue;
        }
        L->kb = k;
        while (k < n && g->head_rows[k] < L->r0 + L->N) k++;
        L->ke = k;
    }
    pass_ctx c = {g, x, y, n, grad};
    if (g->nlanes == 1) lane_pass(g, &g->lanes[0], &c);
    else {
        gpt_team_begin(g->team);
        gpt_pool_run(g->pool, lanes_task, &c);
    }
    if (grad && g->nlanes > 1) {
        timer tm = timer_start(g->lanes[0].prof);
        /* grads = ((lane 0 + lane 1) + lane 2) + ...: a fixed order */
        for (int i = 1; i < g->nlanes; i++) k_residual_fwd(g->pool, g->grads, g->grads, g->lanes[i].grads, g->P);
        timer_lap(&tm, P_NORM);
    }
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += g->losses[i];
    return (float)(sum / (double)n);
}

static int cpu_eval_loss(void* self, const int32_t* x, const int32_t* y, float* loss, char* err, size_t errlen) {
    (void)err, (void)errlen;
    cpu_model* g = (cpu_model*)self;
    const int64_t n = count_targets(g, y);
    *loss = n > 0 ? run_pass(g, x, y, n, 0) : 0.0f;
    return 0;
}

static int cpu_compute_grads(void* self, const int32_t* x, const int32_t* y, float* loss, float* grads, char* err,
                             size_t errlen) {
    (void)err, (void)errlen;
    cpu_model* g = (cpu_model*)self;
    const int64_t n = count_targets(g, y);
    if (n == 0) {
        *loss = 0.0f;
        memset(g->grads, 0, sizeof(float) * (size_t)g->P);
    } else {
        *loss = run_pass(g, x, y, n, 1);
    }
    if (grads) memcpy(grads, g->grads, sizeof(float) * (size_t)g->P);
    return 0;
}

/* torch.nn.utils.clip_grad_norm_ (scale by max_norm / (norm + 1e-6) when that is < 1)
 * and torch.optim.AdamW: one update of the parameters and moments from g->grads. */
static void update(cpu_model* g, const gpt_hparams* h, double norm) {
    float gscale = 1.0f;
    if (h->grad_clip > 0.0f) {
        const double coef = (double)h->grad_clip / (norm + 1e-6);
        if (coef < 1.0) gscale = (float)coef;
    }
    const int64_t t = g->step + 1;
    k_adamw_args a = {
        .gscale = gscale,
        .decay_factor = (float)(1.0 - (double)h->lr * (double)h->weight_decay),
        .beta1 = h->beta1,
        .beta2 = h->beta2,
        .step_size = (float)((double)h->lr / (1.0 - pow((double)h->beta1, (double)t))),
        .bc2_sqrt = (float)sqrt(1.0 - pow((double)h->beta2, (double)t)),
        .eps = h->eps,
    };
    k_adamw(g->pool, g->params, g->m, g->v, g->grads, g->P, g->segs, g->nsegs, &a);
    g->step = t;
}

static int cpu_train_step(void* self, const int32_t* x, const int32_t* y, const gpt_hparams* h, gpt_step_result* out,
                          char* err, size_t errlen) {
    (void)err, (void)errlen;
    cpu_model* g = (cpu_model*)self;
    const int64_t n = count_targets(g, y);
    memset(out, 0, sizeof *out);
    out->n_targets = (int32_t)n;
    if (n == 0) return 0; /* nothing to learn from: loss 0, no update (see gpt.h) */
    out->loss = run_pass(g, x, y, n, 1);
    timer tm = timer_start(g->lanes[0].prof);
    const double norm = sqrt(k_sumsq(g->pool, g->grads, g->P, g->sumsq_scratch));
    timer_lap(&tm, P_NORM);
    out->grad_norm = (float)norm;
    if (!isfinite(out->loss) || !isfinite(norm)) return 0;
    OP(P_ADAMW, update(g, h, norm));
    out->applied = 1;
    return 0;
}

static int32_t cpu_profile_report(void* self, char* buf, int32_t buflen) {
    cpu_model* g = (cpu_model*)self;
    if (!g->profile || buflen <= 0) return 0;
    int32_t used = 0;
    for (int i = 0; i < P_COUNT; i++) {
        int k = snprintf(buf + used, (size_t)(buflen - used), "%s %.6f\n", PROF_NAMES[i], g->prof[i]);
        if (k < 0 || k >= buflen - used) break;
        used += k;
        g->prof[i] = 0.0;
    }
    buf[used < buflen ? used : buflen - 1] = '\0';
    return used;
}

static int cpu_decode_begin_(void* self, const int32_t* tokens, int32_t n, float* logits, int32_t all, char* err,
                             size_t errlen) {
    cpu_model* g = (cpu_model*)self;
    return cpu_decode_begin(&g->decoder, g->spec, g->params, g->pool, tokens, n, logits, all, err, errlen);
}

static int cpu_decode_step_(void* self, int32_t token, int32_t pos, float* logits, char* err, size_t errlen) {
    (void)err, (void)errlen;
    cpu_model* g = (cpu_model*)self;
    return cpu_decode_step(g->decoder, g->params, g->pool, token, pos, logits);
}

const gpt_backend gpt_cpu_backend = {
    .name = "cpu",
    .available = cpu_available,
    .create = cpu_create,
    .destroy = cpu_destroy,
    .set_threads = cpu_set_threads,
    .set_params = cpu_set_params,
    .get_params = cpu_get_params,
    .set_opt_state = cpu_set_opt_state,
    .get_opt_state = cpu_get_opt_state,
    .read_state = cpu_read_state,
    .write_state = cpu_write_state,
    .train_step = cpu_train_step,
    .eval_loss = cpu_eval_loss,
    .compute_grads = cpu_compute_grads,
    .profile_report = cpu_profile_report,
    .decode_begin = cpu_decode_begin_,
    .decode_step = cpu_decode_step_,
};
