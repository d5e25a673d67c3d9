/*
 * mps_backend.c: the Apple GPU backend as the dispatch table of native/cpu/backend.h
 * (gpt_mps_backend, used by native/gpt.c when built with -DGPT_HAVE_MPS on macOS).
 * Each entry forwards to gpt_mps.h and turns its last error into the caller's err.
 */
#include <stdint.h>
#include <stdio.h>

#include "../cpu/backend.h"
#include "gpt_mps.h"

static int32_t err_len32(size_t errlen) { return errlen > INT32_MAX ? INT32_MAX : (int32_t)errlen; }

/* status 0 passes through; otherwise the model's message goes into err. */
static int forward(int32_t status, const void* self, char* err, size_t errlen) {
    if (status == 0) return 0;
    if (err != NULL && errlen > 0) snprintf(err, errlen, "%s", gpt_mps_last_error((const gpt_mps*)self));
    return 1;
}

static int mps_available(void) { return gpt_mps_available(); }

static void* mps_create(const gpt_cfg* cfg, int32_t B, char* err, size_t errlen) {
    return gpt_mps_create(cfg, B, err, err_len32(errlen));
}

static void mps_destroy(void* self) { gpt_mps_free((gpt_mps*)self); }

static int mps_set_threads(void* self, int32_t n, char* err, size_t errlen) {
    return forward(gpt_mps_set_threads((gpt_mps*)self, n), self, err, errlen);
}

static int mps_set_params(void* self, const float* src, char* err, size_t errlen) {
    return forward(gpt_mps_set_params((gpt_mps*)self, src), self, err, errlen);
}

static int mps_get_params(void* self, float* dst, char* err, size_t errlen) {
    return forward(gpt_mps_get_params((const gpt_mps*)self, dst), self, err, errlen);
}

static int mps_set_opt_state(void* self, const float* m, const float* v, int64_t step, char* err, size_t errlen) {
    return forward(gpt_mps_set_opt_state((gpt_mps*)self, m, v, step), self, err, errlen);
}

static int mps_get_opt_state(void* self, float* m, float* v, int64_t* step, char* err, size_t errlen) {
    return forward(gpt_mps_get_opt_state((const gpt_mps*)self, m, v, step), self, err, errlen);
}

static int mps_train_step(void* self, const int32_t* x, const int32_t* y, const gpt_hparams* h,
                          gpt_step_result* out, char* err, size_t errlen) {
    return forward(gpt_mps_train_step((gpt_mps*)self, x, y, h, out), self, err, errlen);
}

static int mps_eval_loss(void* self, const int32_t* x, const int32_t* y, float* loss, char* err, size_t errlen) {
    return forward(gpt_mps_eval_loss((gpt_mps*)self, x, y, loss), self, err, errlen);
}

static int mps_compute_grads(void* self, const int32_t* x, const int32_t* y, float* loss, float* grads, char* err,
                             size_t errlen) {
    return forward(gpt_mps_compute_grads((gpt_mps*)self, x, y, loss, grads), self, err, errlen);
}

static int32_t mps_profile_report(void* self, char* buf, int32_t buflen) {
    return gpt_mps_profile_report((gpt_mps*)self, buf, buflen);
}

const gpt_backend gpt_mps_backend = {
    .name = "mps",
    .available = mps_available,
    .create = mps_create,
    .destroy = mps_destroy,
    .set_threads = mps_set_threads,
    .set_params = mps_set_params,
    .get_params = mps_get_params,
    .set_opt_state = mps_set_opt_state,
    .get_opt_state = mps_get_opt_state,
    .train_step = mps_train_step,
    .eval_loss = mps_eval_loss,
    .compute_grads = mps_compute_grads,
    .profile_report = mps_profile_report,
};
