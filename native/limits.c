/*
 * limits.c: the size of every tensor a model makes on a device with per-tensor limits
 * (MPS), checked against them before anything is allocated (gpt_check_limits and
 * gpt_create, native/gpt.c). Portable C: the arithmetic is tested on any machine with
 * limits given by the caller (tests/mps-limits.test.ts).
 *
 * The tensors: each parameter tensor of native/layout.h (its gradient and its AdamW
 * moments have its shape), and the activations of the graph of native/mps/mps_graph.m,
 * listed in GPT_MPS_ACTIVATIONS below. Backward makes tensors of the forward shapes
 * (a tensor's gradient has its shape), so the forward list covers them. Every element
 * is 4 bytes (float32 or int32).
 */
#include <inttypes.h>
#include <stdio.h>

#include "backend.h"

/* X(what, shape, d0, d1, d2, d3): an activation of the MPS graph, its shape in the
 * model's names and its dimensions (unused ones 1), in terms of B, T, C, H, V,
 * F = d_ff, N = B*T and hd = C/H. Tensors of one shape share a row. Keep in step with
 * mps_graph.m. */
#define GPT_MPS_ACTIVATIONS(X)                                                                               \
    X("token ids, targets and target mask", "(B*T)", N, 1, 1, 1)                                              \
    X("logits (and the one-hot targets, and the one-hot tokens of the embedding)", "(B*T, V)", N, V, 1, 1)    \
    X("hidden states (embeddings, residual stream, LayerNorm outputs)", "(B*T, C)", N, C, 1, 1)               \
    X("attention projection q|k|v", "(B*T, 3*C)", N, 3 * C, 1, 1)                                             \
    X("attention heads q, k, v", "(B, H, T, C/H)", B, H, T, hd)                                               \
    X("attention scores and probabilities", "(B, H, T, T)", B, H, T, T)                                       \
    X("causal mask", "(T, T)", T, T, 1, 1)                                                                    \
    X("MLP hidden layer", "(B*T, d_ff)", N, F, 1, 1)                                                          \
    X("per-row losses", "(B*T, 1)", N, 1, 1, 1)

#define ELEMENT_BYTES 4

typedef struct {
    char what[200];  /* name of the tensor */
    char shape[160]; /* its shape in names and numbers */
    double elements; /* in double: exact below 2^53, and a product of dimensions of up to
                        2^24 each never overflows it */
} tensor_size;

static double gib(double bytes) { return bytes / 1073741824.0; }

/* names: the shape in the model's names, "(B*T, V)"; its rank is its number of commas + 1. */
static void set_size(tensor_size* t, const char* what, const char* names, int64_t d0, int64_t d1, int64_t d2,
                     int64_t d3) {
    const int64_t d[4] = {d0, d1, d2, d3};
    int rank = 1;
    for (const char* c = names; *c; c++) rank += *c == ',';
    char nums[100];
    int used = 0;
    t->elements = 1.0;
    for (int i = 0; i < rank && i < 4; i++) {
        used += snprintf(nums + used, sizeof nums - (size_t)used, "%s%" PRId64, i ? ", " : "(", d[i]);
        t->elements *= (double)d[i];
    }
    snprintf(nums + used, sizeof nums - (size_t)used, ")");
    snprintf(t->what, sizeof t->what, "%s", what);
    snprintf(t->shape, sizeof t->shape, "%s = %s", names, nums);
}

/* The largest tensor a model of spec makes on the MPS device. */
static tensor_size largest_mps_tensor(const gpt_spec* spec) {
    const gpt_cfg* cfg = &spec->cfg;
    const int64_t B = spec->B, T = cfg->T, C = cfg->C, H = cfg->H, V = cfg->V, F = cfg->d_ff;
    const int64_t N = B * T, hd = C / H;
    tensor_size best = {.elements = -1.0}, t;
    for (int64_t i = 0; i < spec->n_tensors; i++) {
        const gpt_tensor* p = &spec->tensors[i];
        char what[200];
        if (p->layer >= 0)
            snprintf(what, sizeof what, "parameter h.%d.%s (and its gradient and AdamW moments)", p->layer, p->name);
        else
            snprintf(what, sizeof what, "parameter %s (and its gradient and AdamW moments)", p->name);
        set_size(&t, what, p->rank == 2 ? "(d0, d1)" : "(d0)", p->shape[0], p->shape[1], 1, 1);
        if (t.elements > best.elements) best = t;
    }
#define ACTIVATION(what, names, d0, d1, d2, d3)            \
    set_size(&t, what, names, (d0), (d1), (d2), (d3));    \
    if (t.elements > best.elements) best = t;
    GPT_MPS_ACTIVATIONS(ACTIVATION)
#undef ACTIVATION
    return best;
}

int gpt_check_tensor_sizes(const gpt_spec* spec, int32_t device, const gpt_limits* lim, char* err, size_t errlen) {
    if (device != GPT_DEVICE_MPS) return 0; /* the CPU backend has no per-tensor limits */
    const tensor_size t = largest_mps_tensor(spec);
    const double bytes = t.elements * ELEMENT_BYTES;
    if (lim->max_tensor_elements > 0 && t.elements > (double)lim->max_tensor_elements) {
        gpt_errf(err, errlen, "the %s %s has %.0f elements, more than the %" PRId64 " one tensor may hold on mps",
                 t.what, t.shape, t.elements, lim->max_tensor_elements);
        return 1;
    }
    const int64_t caps[2] = {lim->max_tensor_bytes, lim->max_buffer_bytes};
    const char* const cap_names[2] = {"one tensor may hold on mps", "of the mps device's largest buffer"};
    for (int i = 0; i < 2; i++) {
        if (caps[i] > 0 && bytes > (double)caps[i]) {
            gpt_errf(err, errlen, "the %s %s takes %.0f bytes (%.2f GiB), more than the %" PRId64 " bytes (%.2f GiB) %s",
                     t.what, t.shape, bytes, gib(bytes), caps[i], gib((double)caps[i]), cap_names[i]);
            return 1;
        }
    }
    return 0;
}
