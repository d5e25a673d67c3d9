/*
 * gpt_mps.h: the Apple GPU backend (MPSGraph), internal to libgpt.
 *
 * The public entry points of native/include/gpt.h dispatch here when a model is
 * created with device GPT_DEVICE_MPS (macOS only: compiled under __APPLE__).
 * Each function below has the contract of the gpt_* function of the same name,
 * on a gpt_mps handle instead of a gpt_t. The dispatcher validates nothing on
 * our behalf: every function checks its own arguments and reports through
 * gpt_mps_last_error. None of them throws an Objective-C exception out.
 */
#ifndef GPT_MPS_H
#define GPT_MPS_H

#include <stdint.h>
#include "../include/gpt.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gpt_mps gpt_mps;

/* 1 when MTLCreateSystemDefaultDevice() returns a device that MPS supports, else 0. */
int32_t gpt_mps_available(void);

/* NULL on failure, with a message in err (errlen bytes, NUL-terminated). */
gpt_mps* gpt_mps_create(const gpt_cfg* cfg, int32_t B, char* err, int32_t errlen);
void gpt_mps_free(gpt_mps* g);
const char* gpt_mps_last_error(const gpt_mps* g);

/* Accepted for any n >= 1 and ignored: the GPU schedules its own work. */
int32_t gpt_mps_set_threads(gpt_mps* g, int32_t n);

int32_t gpt_mps_set_params(gpt_mps* g, const float* src);
int32_t gpt_mps_get_params(const gpt_mps* g, float* dst);
int32_t gpt_mps_set_opt_state(gpt_mps* g, const float* m, const float* v, int64_t step);
int32_t gpt_mps_get_opt_state(const gpt_mps* g, float* m, float* v, int64_t* step);

int32_t gpt_mps_train_step(gpt_mps* g, const int32_t* x, const int32_t* y,
                           const gpt_hparams* h, gpt_step_result* out);
int32_t gpt_mps_eval_loss(gpt_mps* g, const int32_t* x, const int32_t* y, float* loss);
int32_t gpt_mps_compute_grads(gpt_mps* g, const int32_t* x, const int32_t* y,
                              float* loss, float* grads);

/* Wall time per entry point since the last call (GPT_PROFILE=1 at create). */
int32_t gpt_mps_profile_report(gpt_mps* g, char* buf, int32_t buflen);

#ifdef __cplusplus
}
#endif
#endif /* GPT_MPS_H */
