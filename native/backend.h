/*
 * backend.h: the seam between the public ABI and a backend (internal, not part of gpt.h).
 *
 * native/gpt.c implements every gpt_* function of gpt.h once: it validates all input
 * (cfg, B, device, options, null pointers, token ids, hyperparameters), lays out the
 * parameters (native/layout.h) and then calls the backend chosen at gpt_create through
 * this table. Data flows one way: gpt.c calls a backend, a backend never calls gpt.c.
 * A backend therefore only sees valid arguments; it reports its own failures
 * (allocation, device errors) by writing a message into err (errlen bytes, see
 * gpt_errf) and returning nonzero. Backends: gpt_cpu_backend (native/cpu/model.c,
 * always built) and gpt_mps_backend (native/mps/gpt_mps.m, built on macOS with
 * -DGPT_HAVE_MPS).
 *
 * Incremental decoding (decode_begin, decode_step) sees valid tokens, 1 <= n <= T and
 * pos < T: gpt.c keeps the count of cached positions.
 * Device size limits: a backend reports its device's (limits), gpt.c checks every tensor
 * of the model against them before the backend's create (native/limits.c).
 */
#ifndef GPT_BACKEND_H
#define GPT_BACKEND_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "include/gpt.h"
#include "layout.h"

#define GPT_ERR_LEN 512

/* What a backend builds a model from: all valid (checked by gpt.c), owned by gpt.c and
 * unchanged until the backend's destroy. */
typedef struct {
    gpt_cfg cfg;
    int32_t B;                 /* batch rows */
    gpt_options opt;           /* the caller's options, or the defaults (all zero) */
    const gpt_tensor* tensors; /* the parameter layout: n_tensors of them, in order */
    int64_t n_tensors;
    int64_t n_params;          /* floats in the flat parameter buffer */
} gpt_spec;

typedef struct gpt_backend {
    const char* name;
    /* 1 if the device can be used in this process. */
    int (*available)(void);
    /* The device's tensor size limits (gpt_limits of gpt.h), or NULL: none. Called only
     * when available() is 1; nonzero with a message in err when the device cannot say. */
    int (*limits)(gpt_limits* out, char* err, size_t errlen);
    /* A model of spec with zero parameters and a fresh optimizer, or NULL. */
    void* (*create)(const gpt_spec* spec, char* err, size_t errlen);
    void (*destroy)(void* self);
    int (*set_threads)(void* self, int32_t n, char* err, size_t errlen);
    int (*set_params)(void* self, const float* src, char* err, size_t errlen);
    int (*get_params)(void* self, float* dst, char* err, size_t errlen);
    /* m, v both NULL (then step == 0): reset the optimizer. */
    int (*set_opt_state)(void* self, const float* m, const float* v, int64_t step, char* err, size_t errlen);
    /* get: m, v both NULL reads only the step. */
    int (*get_opt_state)(void* self, float* m, float* v, int64_t* step, char* err, size_t errlen);
    /* count floats from offset of buffer `which` (GPT_STATE_*), range checked by gpt.c:
     * read copies them to dst, write copies src over them. */
    int (*read_state)(void* self, int32_t which, int64_t offset, int64_t count, float* dst, char* err, size_t errlen);
    int (*write_state)(void* self, int32_t which, int64_t offset, int64_t count, const float* src, char* err,
                       size_t errlen);
    int (*train_step)(void* self, const int32_t* x, const int32_t* y, const gpt_hparams* h, gpt_step_result* out,
                      char* err, size_t errlen);
    int (*eval_loss)(void* self, const int32_t* x, const int32_t* y, float* loss, char* err, size_t errlen);
    /* grads may be NULL. */
    int (*compute_grads)(void* self, const int32_t* x, const int32_t* y, float* loss, float* grads, char* err,
                         size_t errlen);
    int32_t (*profile_report)(void* self, char* buf, int32_t buflen);
    /* gpt_decode_begin: the prompt tokens[0..n) from position 0, logits (n,V) with all,
     * else (V) of the last position. NULL on a backend without decoding. */
    int (*decode_begin)(void* self, const int32_t* tokens, int32_t n, float* logits, int32_t all, char* err,
                        size_t errlen);
    /* gpt_decode_step: token at position pos (the cache holds 0..pos-1), logits (V). */
    int (*decode_step)(void* self, int32_t token, int32_t pos, float* logits, char* err, size_t errlen);
} gpt_backend;

/* native/limits.c: 0 when every tensor a model of spec makes on device fits lim (the
 * parameter layout and the activations of the graph: its table is there); else 1 with a
 * message naming the largest tensor, its shape and size, and the limit. */
int gpt_check_tensor_sizes(const gpt_spec* spec, int32_t device, const gpt_limits* lim, char* err, size_t errlen);

extern const gpt_backend gpt_cpu_backend;
#if defined(GPT_HAVE_MPS)
extern const gpt_backend gpt_mps_backend;
#endif

/* snprintf into err (NUL-terminated, truncated to errlen; nothing when err is NULL). */
static inline void gpt_errf(char* err, size_t errlen, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static inline void gpt_errf(char* err, size_t errlen, const char* fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

#endif
