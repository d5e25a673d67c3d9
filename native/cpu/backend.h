/*
 * backend.h: how a backend plugs into the public ABI (internal, not part of gpt.h).
 *
 * native/gpt.c implements every gpt_* function of gpt.h once: it validates all input
 * (cfg, B, device, null pointers, token ids, hyperparameters) and then calls the
 * backend chosen at gpt_create through this table. A backend therefore only sees
 * valid arguments; it reports its own failures (allocation, device errors) by
 * writing a message into err (errlen bytes, always NUL-terminated by gpt_errf) and
 * returning nonzero. Backends: gpt_cpu_backend (native/cpu/model.c, always built) and
 * gpt_mps_backend (native/mps/, built on macOS, compiled with -DGPT_HAVE_MPS).
 */
#ifndef GPT_BACKEND_H
#define GPT_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../include/gpt.h"

#define GPT_ERR_LEN 512

typedef struct gpt_backend {
    const char* name;
    /* 1 if the device can be used in this process. */
    int (*available)(void);
    /* A model for cfg and batch B with zero parameters and a fresh optimizer, or NULL. */
    void* (*create)(const gpt_cfg* cfg, int32_t B, char* err, size_t errlen);
    void (*destroy)(void* self);
    int (*set_threads)(void* self, int32_t n, char* err, size_t errlen);
    int (*set_params)(void* self, const float* src, char* err, size_t errlen);
    int (*get_params)(void* self, float* dst, char* err, size_t errlen);
    /* m, v both NULL (then step == 0): reset the optimizer. */
    int (*set_opt_state)(void* self, const float* m, const float* v, int64_t step, char* err, size_t errlen);
    int (*get_opt_state)(void* self, float* m, float* v, int64_t* step, char* err, size_t errlen);
    int (*train_step)(void* self, const int32_t* x, const int32_t* y, const gpt_hparams* h, gpt_step_result* out,
                      char* err, size_t errlen);
    int (*eval_loss)(void* self, const int32_t* x, const int32_t* y, float* loss, char* err, size_t errlen);
    /* grads may be NULL. */
    int (*compute_grads)(void* self, const int32_t* x, const int32_t* y, float* loss, float* grads, char* err,
                         size_t errlen);
    int32_t (*profile_report)(void* self, char* buf, int32_t buflen);
} gpt_backend;

extern const gpt_backend gpt_cpu_backend;
#if defined(GPT_HAVE_MPS)
extern const gpt_backend gpt_mps_backend;
#endif

/* One tensor of the flat parameter layout (gpt.h order). */
typedef struct {
    int64_t offset, size; /* in floats */
    int64_t rows, cols;   /* 2-D: (out, in) / (V, C) / (T, C); 1-D: rows 1 */
    int decay;            /* AdamW weight decay applies (2-D tensors) */
} gpt_tensor;

/* Number of tensors of cfg's layout: 4 + 12 L. */
int64_t gpt_layout_count(const gpt_cfg* cfg);
/* Fills out[0 .. gpt_layout_count(cfg)) in layout order; returns the total float count. */
int64_t gpt_layout(const gpt_cfg* cfg, gpt_tensor* out);

/* snprintf into err (NUL-terminated, truncated to errlen). */
void gpt_errf(char* err, size_t errlen, const char* fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
