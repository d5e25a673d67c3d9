/*
 * gpt.c: the public ABI of native/include/gpt.h. Validates every argument once, here,
 * lays out the parameters (native/layout.h), then dispatches to the backend chosen at
 * gpt_create (native/backend.h).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "include/gpt.h"

/* Largest accepted value of any dimension (V, T, C, L, H, d_ff, B): keeps every index
 * product far from int64 overflow and every BLAS dimension within int. */
#define GPT_MAX_DIM (1 << 24)
/* Largest accepted parameter count (2^40 floats: far beyond any memory, far from overflow). */
#define GPT_MAX_PARAMS 1099511627776.0

struct gpt {
    const gpt_backend* be;
    void* impl;
    gpt_spec spec; /* what the backend was built from; spec.tensors is owned here */
    int32_t decoded; /* positions in the KV cache (0: none; new parameters empty it) */
    char err[GPT_ERR_LEN];
};

#define EXPORT __attribute__((visibility("default")))

/* ---- layout ---- */

/* Fills out[0 .. gpt_tensor_count(cfg)) from the lists of layout.h (out NULL: counts
 * only); returns the total float count. cfg must be valid (check_cfg). */
static int64_t gpt_layout(const gpt_cfg* cfg, gpt_tensor* out) {
    const int64_t V = cfg->V, T = cfg->T, C = cfg->C, F = cfg->d_ff;
    int64_t off = 0, i = 0;
    int32_t layer = -1;
#define TENSOR(field, key, d0, d1)                                                                    \
    do {                                                                                              \
        const int64_t size_ = (int64_t)(d0) * ((d1) > 0 ? (int64_t)(d1) : 1);                          \
        if (out)                                                                                      \
            out[i] = (gpt_tensor){.name = key, .layer = layer, .rank = (d1) > 0 ? 2 : 1,               \
                                  .shape = {(d0), (d1) > 0 ? (d1) : 1}, .offset = off, .size = size_, \
                                  .decay = (d1) > 0};                                                 \
        off += size_;                                                                                 \
        i++;                                                                                          \
    } while (0);
    GPT_LAYOUT_HEAD(TENSOR)
    for (layer = 0; layer < cfg->L; layer++) {
        GPT_LAYOUT_LAYER(TENSOR)
    }
    layer = -1;
    GPT_LAYOUT_TAIL(TENSOR)
#undef TENSOR
    return off;
}

/* Floats of cfg's layout, in double: a guard before anything is laid out (each dimension
 * is at most 2^24; their products are not). */
static double layout_floats(const gpt_cfg* cfg) {
    const gpt_cfg one_block = {.V = cfg->V, .T = cfg->T, .C = cfg->C, .L = 1, .H = cfg->H, .d_ff = cfg->d_ff};
    const gpt_cfg no_block = {.V = cfg->V, .T = cfg->T, .C = cfg->C, .L = 0, .H = cfg->H, .d_ff = cfg->d_ff};
    const double outside = (double)gpt_layout(&no_block, NULL);
    return outside + (double)cfg->L * ((double)gpt_layout(&one_block, NULL) - outside);
}

/* ---- validation ---- */

static int check_dim(const char* name, int64_t v, char* err, size_t errlen) {
    if (v < 1 || v > GPT_MAX_DIM) {
        gpt_errf(err, errlen, "model cfg %s=%lld is invalid: expected an integer in [1, %d]", name, (long long)v,
                 GPT_MAX_DIM);
        return 1;
    }
    return 0;
}

static int check_cfg(const gpt_cfg* cfg, char* err, size_t errlen) {
    if (!cfg) {
        gpt_errf(err, errlen, "model cfg is NULL");
        return 1;
    }
    if (check_dim("V", cfg->V, err, errlen) || check_dim("T", cfg->T, err, errlen) ||
        check_dim("C", cfg->C, err, errlen) || check_dim("L", cfg->L, err, errlen) ||
        check_dim("H", cfg->H, err, errlen) || check_dim("d_ff", cfg->d_ff, err, errlen))
        return 1;
    if (cfg->C % cfg->H != 0) {
        gpt_errf(err, errlen, "model cfg C=%d is not divisible by H=%d (heads must split the width evenly)", cfg->C,
                 cfg->H);
        return 1;
    }
    const double P = layout_floats(cfg);
    if (P > GPT_MAX_PARAMS) {
        gpt_errf(err, errlen, "model cfg V=%d T=%d C=%d L=%d d_ff=%d has %.3g parameters: too large (at most %.3g)",
                 cfg->V, cfg->T, cfg->C, cfg->L, cfg->d_ff, P, GPT_MAX_PARAMS);
        return 1;
    }
    return 0;
}

static int check_tokens(const gpt_t* g, const int32_t* x, const int32_t* y, char* err, size_t errlen) {
    if (!x) {
        gpt_errf(err, errlen, "input token buffer x is NULL");
        return 1;
    }
    if (!y) {
        gpt_errf(err, errlen, "target token buffer y is NULL");
        return 1;
    }
    const int64_t T = g->spec.cfg.T, n = (int64_t)g->spec.B * T;
    const int32_t V = g->spec.cfg.V;
    for (int64_t i = 0; i < n; i++) {
        if (x[i] < 0 || x[i] >= V) {
            gpt_errf(err, errlen, "input token x[%lld] (batch row %lld, position %lld) = %d is out of range: expected an id in [0, V=%d)",
                     (long long)i, (long long)(i / T), (long long)(i % T), x[i], V);
            return 1;
        }
    }
    for (int64_t i = 0; i < n; i++) {
        if (y[i] != -100 && (y[i] < 0 || y[i] >= V)) {
            gpt_errf(err, errlen, "target y[%lld] (batch row %lld, position %lld) = %d is invalid: expected an id in [0, V=%d) or -100 (ignored)",
                     (long long)i, (long long)(i / T), (long long)(i % T), y[i], V);
            return 1;
        }
    }
    return 0;
}

static int check_hparams(const gpt_hparams* h, char* err, size_t errlen) {
    if (!h) {
        gpt_errf(err, errlen, "hyperparameters pointer is NULL");
        return 1;
    }
    if (!isfinite(h->lr) || h->lr < 0.0f) {
        gpt_errf(err, errlen, "learning rate %g is invalid: expected a finite value >= 0", (double)h->lr);
        return 1;
    }
    if (!isfinite(h->weight_decay) || h->weight_decay < 0.0f) {
        gpt_errf(err, errlen, "weight_decay %g is invalid: expected a finite value >= 0", (double)h->weight_decay);
        return 1;
    }
    if (!(h->beta1 >= 0.0f && h->beta1 < 1.0f) || !(h->beta2 >= 0.0f && h->beta2 < 1.0f)) {
        gpt_errf(err, errlen, "betas (%g, %g) are invalid: expected values in [0, 1)", (double)h->beta1,
                 (double)h->beta2);
        return 1;
    }
    if (!isfinite(h->eps) || h->eps <= 0.0f) {
        gpt_errf(err, errlen, "eps %g is invalid: expected a finite value > 0", (double)h->eps);
        return 1;
    }
    if (isnan(h->grad_clip)) {
        gpt_errf(err, errlen, "grad_clip is NaN: expected a max norm > 0, or <= 0 to disable clipping");
        return 1;
    }
    return 0;
}

static int check_range(const char* name, int32_t v, int32_t lo, int32_t hi, const char* meaning, char* err,
                       size_t errlen) {
    if (v >= lo && v <= hi) return 0;
    gpt_errf(err, errlen, "option %s=%d is invalid: expected %s", name, v, meaning);
    return 1;
}

static int check_options(const gpt_options* o, char* err, size_t errlen) {
    return check_range("profile", o->profile, 0, 1, "0 (off) or 1 (on)", err, errlen) ||
           check_range("recompute", o->recompute, 0, 2, "0 (auto), 1 (always) or 2 (never)", err, errlen) ||
           check_range("head_chunk_rows", o->head_chunk_rows, 0, GPT_MAX_DIM, "0 (auto) or a row count", err,
                       errlen) ||
           check_range("lanes", o->lanes, 0, 2, "0 (auto), 1 (one lane) or 2 (a lane per thread)", err, errlen) ||
           check_range("lane_help", o->lane_help, 0, 2, "0 (on), 1 (off) or 2 (test)", err, errlen) ||
           check_range("mps_embedding", o->mps_embedding, 0, 1, "0 (one-hot) or 1 (gather)", err, errlen);
}

static const gpt_backend* backend_for(int32_t device) {
    if (device == GPT_DEVICE_CPU) return &gpt_cpu_backend;
#if defined(GPT_HAVE_MPS)
    if (device == GPT_DEVICE_MPS) return &gpt_mps_backend;
#endif
    return NULL;
}

/* Every call on a handle starts here: NULL handle -> error code (no message holder). */
#define HANDLE(g)                 \
    do {                          \
        if (!(g)) return -1;      \
        (g)->err[0] = '\0';       \
    } while (0)

#define FAIL(g, ...)                                     \
    do {                                                 \
        gpt_errf((g)->err, sizeof (g)->err, __VA_ARGS__); \
        return 1;                                        \
    } while (0)

/* ---- the ABI ---- */

EXPORT int32_t gpt_device_available(int32_t device) {
    const gpt_backend* be = backend_for(device);
    return be && be->available() ? 1 : 0;
}

EXPORT int64_t gpt_num_params(const gpt_cfg* cfg) {
    if (check_cfg(cfg, NULL, 0)) return -1;
    return gpt_layout(cfg, NULL);
}

/* cfg and B as gpt_create accepts them. */
static int check_shape(const gpt_cfg* cfg, int32_t B, char* err, size_t errlen) {
    if (check_cfg(cfg, err, errlen)) return 1;
    if (B < 1 || B > GPT_MAX_DIM) {
        gpt_errf(err, errlen, "batch size B=%d is invalid: expected an integer in [1, %d]", B, GPT_MAX_DIM);
        return 1;
    }
    if ((int64_t)B * cfg->T > 0x7fffffff) {
        gpt_errf(err, errlen, "B*T = %lld token positions per batch is too many (at most 2^31-1)", (long long)B * cfg->T);
        return 1;
    }
    return 0;
}

static int check_device(int32_t device, char* err, size_t errlen) {
    if (device == GPT_DEVICE_CPU || device == GPT_DEVICE_MPS) return 0;
    gpt_errf(err, errlen, "unknown device %d: expected %d (cpu) or %d (mps)", device, GPT_DEVICE_CPU, GPT_DEVICE_MPS);
    return 1;
}

/* The backend of device when this build and machine have it, else NULL with a message. */
static const gpt_backend* usable_backend(int32_t device, char* err, size_t errlen) {
    if (check_device(device, err, errlen)) return NULL;
    const gpt_backend* be = backend_for(device);
    if (!be || !be->available()) {
        gpt_errf(err, errlen, "device %s is not available in this build or on this machine",
                 device == GPT_DEVICE_MPS ? "mps" : "cpu");
        return NULL;
    }
    return be;
}

/* The limits of be's device (all 0, none, for a backend without them). */
static int device_limits(const gpt_backend* be, gpt_limits* out, char* err, size_t errlen) {
    *out = (gpt_limits){0};
    return be->limits ? be->limits(out, err, errlen) : 0;
}

EXPORT gpt_t* gpt_create(const gpt_cfg* cfg, int32_t B, int32_t device, const gpt_options* opt, char* err,
                         int32_t errlen) {
    char local[GPT_ERR_LEN];
    local[0] = '\0';
    gpt_t* g = NULL;
    gpt_tensor* tensors = NULL;
    const gpt_backend* be = NULL;
    if (check_shape(cfg, B, local, sizeof local)) goto fail;
    if (opt && check_options(opt, local, sizeof local)) goto fail;
    be = usable_backend(device, local, sizeof local);
    if (!be) goto fail;
    g = (gpt_t*)calloc(1, sizeof *g);
    tensors = (gpt_tensor*)calloc((size_t)gpt_tensor_count(cfg), sizeof(gpt_tensor));
    if (!g || !tensors) {
        gpt_errf(local, sizeof local, "out of memory");
        goto fail;
    }
    g->be = be;
    g->spec = (gpt_spec){.cfg = *cfg, .B = B, .tensors = tensors, .n_tensors = gpt_tensor_count(cfg)};
    if (opt) g->spec.opt = *opt;
    g->spec.n_params = gpt_layout(cfg, tensors);
    gpt_limits lim;
    if (device_limits(be, &lim, local, sizeof local) || gpt_check_tensor_sizes(&g->spec, device, &lim, local, sizeof local))
        goto fail;
    g->impl = be->create(&g->spec, local, sizeof local);
    if (!g->impl) goto fail;
    if (err && errlen > 0) err[0] = '\0';
    return g;
fail:
    free(tensors);
    free(g);
    if (err && errlen > 0) gpt_errf(err, (size_t)errlen, "gpt_create: %s", local[0] ? local : "failed");
    return NULL;
}

EXPORT int32_t gpt_check_limits(const gpt_cfg* cfg, int32_t B, int32_t device, const gpt_limits* lim, char* err,
                                int32_t errlen) {
    char local[GPT_ERR_LEN];
    local[0] = '\0';
    int32_t status = -1;
    gpt_limits own;
    gpt_spec spec = {0};
    if (check_shape(cfg, B, local, sizeof local) || check_device(device, local, sizeof local)) goto done;
    if (lim == NULL) {
        const gpt_backend* be = usable_backend(device, local, sizeof local);
        if (!be || device_limits(be, &own, local, sizeof local)) goto done;
        lim = &own;
    }
    spec = (gpt_spec){.cfg = *cfg, .B = B, .n_tensors = gpt_tensor_count(cfg)};
    gpt_tensor* tensors = (gpt_tensor*)calloc((size_t)spec.n_tensors, sizeof(gpt_tensor));
    if (!tensors) {
        gpt_errf(local, sizeof local, "out of memory");
        goto done;
    }
    spec.tensors = tensors;
    spec.n_params = gpt_layout(cfg, tensors);
    status = gpt_check_tensor_sizes(&spec, device, lim, local, sizeof local) ? 1 : 0;
done:
    free((void*)spec.tensors);
    if (err && errlen > 0) {
        if (status != 0)
            gpt_errf(err, (size_t)errlen, "%s", local[0] ? local : "failed");
        else
            err[0] = '\0';
    }
    return status;
}

EXPORT void gpt_free(gpt_t* g) {
    if (!g) return;
    g->be->destroy(g->impl);
    free((void*)g->spec.tensors);
    free(g);
}

EXPORT const char* gpt_last_error(const gpt_t* g) { return g ? g->err : "null model handle"; }

EXPORT int32_t gpt_set_threads(gpt_t* g, int32_t n) {
    HANDLE(g);
    if (n < 1 || n > 1024) FAIL(g, "thread count %d is invalid: expected an integer in [1, 1024]", n);
    return g->be->set_threads(g->impl, n, g->err, sizeof g->err) ? 1 : 0;
}

EXPORT int32_t gpt_set_params(gpt_t* g, const float* src) {
    HANDLE(g);
    if (!src) FAIL(g, "gpt_set_params: parameter buffer is NULL");
    g->decoded = 0;
    return g->be->set_params(g->impl, src, g->err, sizeof g->err) ? 1 : 0;
}

EXPORT int32_t gpt_get_params(const gpt_t* cg, float* dst) {
    gpt_t* g = (gpt_t*)cg; /* the message buffer is the only thing written */
    HANDLE(g);
    if (!dst) FAIL(g, "gpt_get_params: destination buffer is NULL");
    return g->be->get_params(g->impl, dst, g->err, sizeof g->err) ? 1 : 0;
}

EXPORT int32_t gpt_set_opt_state(gpt_t* g, const float* m, const float* v, int64_t step) {
    HANDLE(g);
    if (!m != !v) FAIL(g, "gpt_set_opt_state: %s is NULL: give both moments, or both NULL to zero them", m ? "v" : "m");
    if (step < 0) FAIL(g, "gpt_set_opt_state: step %lld is invalid: expected >= 0", (long long)step);
    return g->be->set_opt_state(g->impl, m, v, step, g->err, sizeof g->err) ? 1 : 0;
}

EXPORT int32_t gpt_get_opt_state(const gpt_t* cg, float* m, float* v, int64_t* step) {
    gpt_t* g = (gpt_t*)cg;
    HANDLE(g);
    if (!step || !m != !v) FAIL(g, "gpt_get_opt_state: %s buffer is NULL", !step ? "step" : !m ? "m" : "v");
    return g->be->get_opt_state(g->impl, m, v, step, g->err, sizeof g->err) ? 1 : 0;
}

/* The checks gpt_read_state and gpt_write_state share: a known buffer, a range inside it. */
static int check_state_range(gpt_t* g, const char* fn, int32_t which, int64_t offset, int64_t count, const void* buf) {
    if (which != GPT_STATE_PARAMS && which != GPT_STATE_M && which != GPT_STATE_V)
        FAIL(g, "%s: buffer %d is unknown: expected GPT_STATE_PARAMS, GPT_STATE_M or GPT_STATE_V", fn, which);
    if (offset < 0 || count < 0 || offset > g->spec.n_params - count)
        FAIL(g, "%s: range [%lld, %lld + %lld) is outside the %lld floats of the buffer", fn, (long long)offset,
             (long long)offset, (long long)count, (long long)g->spec.n_params);
    if (!buf) FAIL(g, "%s: buffer is NULL", fn);
    return 0;
}

EXPORT int32_t gpt_read_state(const gpt_t* cg, int32_t which, int64_t offset, int64_t count, float* dst) {
    gpt_t* g = (gpt_t*)cg; /* the message buffer is the only thing written */
    HANDLE(g);
    if (check_state_range(g, "gpt_read_state", which, offset, count, dst)) return 1;
    return g->be->read_state(g->impl, which, offset, count, dst, g->err, sizeof g->err) ? 1 : 0;
}

EXPORT int32_t gpt_write_state(gpt_t* g, int32_t which, int64_t offset, int64_t count, const float* src) {
    HANDLE(g);
    if (check_state_range(g, "gpt_write_state", which, offset, count, src)) return 1;
    return g->be->write_state(g->impl, which, offset, count, src, g->err, sizeof g->err) ? 1 : 0;
}

EXPORT int32_t gpt_train_step(gpt_t* g, const int32_t* x, const int32_t* y, const gpt_hparams* h,
                              gpt_step_result* out) {
    HANDLE(g);
    if (!out) FAIL(g, "gpt_train_step: result pointer is NULL");
    if (check_hparams(h, g->err, sizeof g->err) || check_tokens(g, x, y, g->err, sizeof g->err)) return 1;
    g->decoded = 0;
    return g->be->train_step(g->impl, x, y, h, out, g->err, sizeof g->err) ? 1 : 0;
}

EXPORT int32_t gpt_eval_loss(gpt_t* g, const int32_t* x, const int32_t* y, float* loss) {
    HANDLE(g);
    if (!loss) FAIL(g, "gpt_eval_loss: loss pointer is NULL");
    if (check_tokens(g, x, y, g->err, sizeof g->err)) return 1;
    return g->be->eval_loss(g->impl, x, y, loss, g->err, sizeof g->err) ? 1 : 0;
}

EXPORT int32_t gpt_compute_grads(gpt_t* g, const int32_t* x, const int32_t* y, float* loss, float* grads) {
    HANDLE(g);
    if (!loss) FAIL(g, "gpt_compute_grads: loss pointer is NULL");
    if (check_tokens(g, x, y, g->err, sizeof g->err)) return 1;
    return g->be->compute_grads(g->impl, x, y, loss, grads, g->err, sizeof g->err) ? 1 : 0;
}

EXPORT int32_t gpt_profile_report(gpt_t* g, char* buf, int32_t buflen) {
    if (!g || !buf || buflen <= 0) return 0;
    return g->be->profile_report(g->impl, buf, buflen);
}

/* ---- incremental decoding ---- */

static int check_decode_token(gpt_t* g, const char* what, int32_t id) {
    if (id >= 0 && id < g->spec.cfg.V) return 0;
    gpt_errf(g->err, sizeof g->err, "%s = %d is out of range: expected an id in [0, V=%d)", what, id, g->spec.cfg.V);
    return 1;
}

EXPORT int32_t gpt_decode_begin(gpt_t* g, const int32_t* tokens, int32_t n, float* logits, int32_t all) {
    HANDLE(g);
    g->decoded = 0;
    if (!g->be->decode_begin) FAIL(g, "incremental decoding is not available on the %s backend", g->be->name);
    if (!tokens || !logits) FAIL(g, "gpt_decode_begin: %s buffer is NULL", tokens ? "logits" : "tokens");
    if (n < 1 || n > g->spec.cfg.T)
        FAIL(g, "gpt_decode_begin: prompt length %d is invalid: expected 1 to T=%d tokens", n, g->spec.cfg.T);
    if (all != 0 && all != 1) FAIL(g, "gpt_decode_begin: all=%d is invalid: expected 0 or 1", all);
    char what[48];
    for (int32_t i = 0; i < n; i++) {
        snprintf(what, sizeof what, "prompt token %d", i);
        if (check_decode_token(g, what, tokens[i])) return 1;
    }
    if (g->be->decode_begin(g->impl, tokens, n, logits, all, g->err, sizeof g->err)) return 1;
    g->decoded = n;
    return 0;
}

EXPORT int32_t gpt_decode_step(gpt_t* g, int32_t token, float* logits) {
    HANDLE(g);
    if (!g->be->decode_step) FAIL(g, "incremental decoding is not available on the %s backend", g->be->name);
    if (!logits) FAIL(g, "gpt_decode_step: logits buffer is NULL");
    if (g->decoded == 0) FAIL(g, "gpt_decode_step: no prompt pass: call gpt_decode_begin first (new parameters or a training step empty the cache)");
    if (g->decoded >= g->spec.cfg.T)
        FAIL(g, "gpt_decode_step: the context is full (T=%d positions): slide the window with gpt_decode_begin on the last tokens", g->spec.cfg.T);
    if (check_decode_token(g, "gpt_decode_step: token", token)) return 1;
    if (g->be->decode_step(g->impl, token, g->decoded, logits, g->err, sizeof g->err)) {
        g->decoded = 0;
        return 1;
    }
    g->decoded++;
    return 0;
}
