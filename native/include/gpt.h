/*
 * gpt.h: the one C ABI of the native library (libgpt), implemented by the CPU
 * backend (native/cpu, C + BLAS) and the Apple GPU backend (native/mps, MPSGraph).
 * TypeScript reaches it through bun:ffi (src/backend/native.ts).
 *
 * Model: GPT-2 as in nanoGPT, bias on, dropout 0, GELU (tanh approximation),
 * LayerNorm eps 1e-5, LM head tied to the token embedding.
 *
 * Parameters live in ONE flat float32 buffer in the order of nanoGPT's state dict
 * (the TypeScript layout, src/model/layout.ts, names them; both sides compute the
 * same offsets):
 *   wte (V,C), wpe (T,C),
 *   for each layer l in 0..L-1:
 *     ln_1.weight (C), ln_1.bias (C),
 *     attn.c_attn.weight (3C,C), attn.c_attn.bias (3C),
 *     attn.c_proj.weight (C,C),  attn.c_proj.bias (C),
 *     ln_2.weight (C), ln_2.bias (C),
 *     mlp.c_fc.weight (d_ff,C),  mlp.c_fc.bias (d_ff),
 *     mlp.c_proj.weight (C,d_ff), mlp.c_proj.bias (C),
 *   ln_f.weight (C), ln_f.bias (C)
 * Linear weights are (out, in) as torch nn.Linear: y = x W^T + b.
 * AdamW moments m, v use the same layout. Weight decay applies to 2-D tensors only.
 *
 * Token buffers are int32, B*T each, row-major (b, t). Inputs must be ids in [0, V);
 * targets ids in [0, V) or -100 (ignored); anything else is an error (checked before
 * any work). The loss is the mean cross-entropy over the counted targets. A batch
 * with no counted target has loss 0 (not NaN) and zero gradients, and gpt_train_step
 * applies no update for it (applied 0, n_targets 0, t unchanged).
 *
 * Limits: each of V, T, C, L, H, d_ff and B is in [1, 2^24], C % H == 0, B*T < 2^31,
 * at most 2^40 parameters; larger models are refused with a message, not attempted. On
 * MPS every tensor of the model must also fit the device's limits (gpt_check_limits).
 *
 * Determinism (CPU backend): for a fixed thread count, results are bit-identical run
 * to run (static work split, reductions summed in a fixed order).
 *
 * Every function that can fail returns 0 on success and nonzero on failure, with a
 * message from gpt_last_error(). Nothing here aborts the process on bad input.
 * No allocation happens inside gpt_train_step / gpt_eval_loss.
 *
 * Decoding (gpt_decode_begin, gpt_decode_step): one sequence at a time with a KV cache.
 */
#ifndef GPT_H
#define GPT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gpt gpt_t;

typedef struct {
    int32_t V, T, C, L, H, d_ff;   /* vocab, context, width, layers, heads, MLP width */
} gpt_cfg;

typedef struct {
    float lr;            /* learning rate of this step, finite, >= 0 */
    float weight_decay;  /* decoupled (AdamW), 2-D tensors only; finite, >= 0 */
    float beta1, beta2;  /* in [0, 1) */
    float eps;           /* finite, > 0 */
    float grad_clip;     /* max global L2 norm (torch clip_grad_norm_: scale by
                            clip / (norm + 1e-6) when that is < 1); <= 0 disables */
} gpt_hparams;

enum { GPT_DEVICE_CPU = 0, GPT_DEVICE_MPS = 1 };

/* Results of one training step. */
typedef struct {
    float loss;          /* mean CE over counted targets, before the update (0 when none) */
    float grad_norm;     /* global L2 norm of the gradient, before clipping */
    int32_t applied;     /* 1 if the update was applied; 0 if loss or grad_norm was
                            not finite, or no target was counted (weights and
                            optimizer state left untouched, t not incremented) */
    int32_t n_targets;   /* number of counted (non -100) targets */
} gpt_step_result;

/* 1 if the device can be used in this process, else 0. */
int32_t gpt_device_available(int32_t device);

/* Number of floats in the flat parameter buffer for cfg (or -1 if cfg is invalid). */
int64_t gpt_num_params(const gpt_cfg* cfg);

/* Settings of one model, fixed at gpt_create. Zero in every field is the default, so a
 * zeroed struct (or a NULL pointer) gives the defaults; new fields are only appended.
 * None of them changes results: they trade memory, time or (gather) run-to-run bits. */
typedef struct {
    int32_t profile;         /* 1: gpt_profile_report gives per-op seconds (0: off) */
    int32_t recompute;       /* CPU, GPT_RECOMPUTE_*: keep or recompute GELU outputs and
                                attention probabilities in backward (auto: recompute once
                                all layers' copies would pass 64 MB) */
    int32_t head_chunk_rows; /* CPU: LM head rows per chunk of logits (0: about 16 MB, at least 256 rows) */
    int32_t lanes;           /* CPU, GPT_LANES_*: see gpt_set_threads */
    int32_t lane_help;       /* CPU, GPT_LANE_HELP_*: see gpt_set_threads */
    int32_t mps_embedding;   /* MPS, GPT_EMBEDDING_*: read the token embedding with a
                                one-hot matmul (deterministic) or a gather (less work for a
                                large V; its gradient's sum order may vary, docs/mps.md) */
} gpt_options;

enum { GPT_RECOMPUTE_AUTO = 0, GPT_RECOMPUTE_ALWAYS = 1, GPT_RECOMPUTE_NEVER = 2 };
enum { GPT_LANES_AUTO = 0, GPT_LANES_ONE = 1, GPT_LANES_ALL = 2 };
/* TEST: lane 0 starts when the other lanes are done, then splits its every op over all
 * threads (tests/native-lmhead.test.ts: helped and unhelped runs give the same bits). */
enum { GPT_LANE_HELP_ON = 0, GPT_LANE_HELP_OFF = 1, GPT_LANE_HELP_TEST = 2 };
enum { GPT_EMBEDDING_ONEHOT = 0, GPT_EMBEDDING_GATHER = 1 };

/* Create a model for batches of B rows with options opt (NULL: the defaults).
 * Parameters start at zero: set them with gpt_set_params. All memory of the model is
 * allocated here (and its worker threads started; the CPU backend's large buffers are
 * mapped zero pages, resident once first written). On failure returns NULL and writes
 * a message into err (err may be NULL). The CPU backend saves few activations:
 * LayerNorm outputs are always recomputed in backward, GELU outputs and attention
 * probabilities as opt->recompute says, and the LM head runs over rows in chunks of
 * opt->head_chunk_rows (results unchanged either way). */
gpt_t* gpt_create(const gpt_cfg* cfg, int32_t B, int32_t device, const gpt_options* opt, char* err,
                  int32_t errlen);
void   gpt_free(gpt_t* g);   /* NULL is a no-op */
/* Message of the last failed call on g ("" after a successful one); a static
 * message for g NULL. Valid until the next call on g. Calls given a NULL handle
 * return nonzero. */
const char* gpt_last_error(const gpt_t* g);

/* Number of worker threads for this model's kernels, n in [1, 1024] (CPU backend;
 * the default is the number of online cores). When n divides B (into at least 256 token
 * rows each), each thread runs the whole step over its own B/n rows into its own gradient
 * buffer (one more buffer of parameter size per extra thread), summed in a fixed order,
 * a thread whose rows are done helping with the others' ops in ways that keep the bits
 * (options lane_help GPT_LANE_HELP_OFF turns that off); otherwise every op is split over
 * the threads (options lanes GPT_LANES_ONE or GPT_LANES_ALL forces one way or the other
 * where the batch splits). Either way results are bit-identical run to run for a fixed n and B,
 * not across different n. Returns 0 on success. */
int32_t gpt_set_threads(gpt_t* g, int32_t n);

int32_t gpt_set_params(gpt_t* g, const float* src);
int32_t gpt_get_params(const gpt_t* g, float* dst);
/* AdamW state: first and second moments (flat layout) and the step count t
 * (number of updates applied so far). Setting with m and v both NULL zeroes the moments
 * (step 0: a fresh optimizer; or moments written next with gpt_write_state); getting
 * with m and v both NULL reads only the step. */
int32_t gpt_set_opt_state(gpt_t* g, const float* m, const float* v, int64_t step);
int32_t gpt_get_opt_state(const gpt_t* g, float* m, float* v, int64_t* step);

/* Checkpoint I/O in bounded memory: count floats from element offset of one flat buffer
 * (the parameters or an AdamW moment, in the layout above), copied to dst or from src.
 * A GB-sized state streams through a small buffer of the caller's; the values are those
 * gpt_get_params / gpt_get_opt_state give. Writing m or v leaves the step count alone. */
enum { GPT_STATE_PARAMS = 0, GPT_STATE_M = 1, GPT_STATE_V = 2 };
int32_t gpt_read_state(const gpt_t* g, int32_t which, int64_t offset, int64_t count, float* dst);
int32_t gpt_write_state(gpt_t* g, int32_t which, int64_t offset, int64_t count, const float* src);

/* forward + backward + global-norm clip + AdamW update, all natively. */
int32_t gpt_train_step(gpt_t* g, const int32_t* x, const int32_t* y,
                       const gpt_hparams* h, gpt_step_result* out);

/* Forward only: mean CE over counted targets (0 when none). */
int32_t gpt_eval_loss(gpt_t* g, const int32_t* x, const int32_t* y, float* loss);

/* forward + backward without update; gradients (unclipped) copied to grads if not NULL. */
int32_t gpt_compute_grads(gpt_t* g, const int32_t* x, const int32_t* y,
                          float* loss, float* grads);

/* Incremental decoding of one sequence with a KV cache (any B; the cache is separate
 * from the training buffers). gpt_decode_begin runs the prompt tokens[0..n),
 * 1 <= n <= T, from position 0, keeps every layer's keys and values, and writes logits:
 * (n, V) for every position when all is 1, else (V) for the last one. gpt_decode_step
 * then feeds one token at the next position and writes its logits (V); at most T
 * positions in all. Position embeddings are absolute, so a full context cannot shift:
 * to go on, the caller slides the window by a new gpt_decode_begin on the last tokens
 * (src/sample/ recomputes from the last T tokens, as nanoGPT crops its input: then
 * every further token costs a prompt pass). The first gpt_decode_begin allocates
 * the cache (CPU: L*T*3C floats and one sequence's activations; MPS: L*T*2C floats,
 * the (T, V) logits and the decoding graphs); a step allocates nothing. On the CPU the
 * logits do not depend on the thread count. gpt_set_params and gpt_train_step empty
 * the cache. */
int32_t gpt_decode_begin(gpt_t* g, const int32_t* tokens, int32_t n, float* logits, int32_t all);
int32_t gpt_decode_step(gpt_t* g, int32_t token, float* logits);

/* Per-op time breakdown of the steps run since the last call (per entry point on MPS),
 * as "name seconds\n" lines into buf (NUL-terminated), then resets the counters;
 * enabled by options profile = 1. Returns the number of bytes
 * written (0 when profiling is off or for a NULL handle or buffer). */
int32_t gpt_profile_report(gpt_t* g, char* buf, int32_t buflen);

/* Size limits of a device's tensors; 0 in a field: no such limit. */
typedef struct {
    int64_t max_tensor_elements; /* elements of one tensor */
    int64_t max_tensor_bytes;    /* bytes of one tensor */
    int64_t max_buffer_bytes;    /* bytes of one device buffer */
} gpt_limits;

/* Checks, allocating nothing on the device, that every tensor a model of (cfg, B) makes
 * on device fits: its parameters, gradients and AdamW moments, its inputs, and every
 * activation of the step, forward and backward. lim NULL: the limits of this machine's
 * device (MPS: an MPSNDArray holds at most 2^31 - 1 elements and 2^32 bytes, a Metal
 * buffer MTLDevice.maxBufferLength bytes; past them Metal aborts the process); lim given:
 * those, on any machine. The CPU backend has no such limits. Returns 0 when everything
 * fits; 1 when a tensor does not, with a message in err naming the largest tensor, its
 * shape, its size and the limit; -1 for an invalid cfg, B or device, or lim NULL and the
 * device not available. gpt_create makes the same check. */
int32_t gpt_check_limits(const gpt_cfg* cfg, int32_t B, int32_t device, const gpt_limits* lim, char* err,
                         int32_t errlen);

#ifdef __cplusplus
}
#endif
#endif /* GPT_H */
