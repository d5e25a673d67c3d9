/*
 * layout.h: the flat parameter layout of gpt.h, written once (internal to libgpt).
 *
 * Each X(field, name, d0, d1) is one tensor: `field` names its view in the CPU model
 * (native/cpu/model.c), `name` its key in nanoGPT's state dict, (d0, d1) its torch
 * shape in terms of V, T, C and F = d_ff, with d1 = 0 for a 1-D tensor of d0. Linear
 * weights are (out, in) as nn.Linear. AdamW's weight decay applies to the 2-D tensors.
 * The buffer holds the HEAD tensors, then the LAYER tensors of each block l = 0..L-1
 * (key "h.<l>." + name), then the TAIL tensors, each right after the one before.
 *
 * Everything else is derived from these lists: gpt_layout (native/gpt.c) fills one
 * gpt_tensor per tensor (offsets, sizes, shapes, decay), from which gpt_num_params, the
 * CPU views and the MPS placeholders follow; GPT_L_<field> is a tensor's index within
 * its block (the MPS graph addresses parameters by gpt_layer_tensor(l, GPT_L_qkvw)).
 */
#ifndef GPT_LAYOUT_H
#define GPT_LAYOUT_H

#include <stdint.h>

#include "include/gpt.h"

#define GPT_LAYOUT_HEAD(X)       \
    X(wte, "wte", V, C)          \
    X(wpe, "wpe", T, C)

#define GPT_LAYOUT_LAYER(X)                    \
    X(ln1w, "ln_1.weight", C, 0)               \
    X(ln1b, "ln_1.bias", C, 0)                 \
    X(qkvw, "attn.c_attn.weight", 3 * C, C)    \
    X(qkvb, "attn.c_attn.bias", 3 * C, 0)      \
    X(projw, "attn.c_proj.weight", C, C)       \
    X(projb, "attn.c_proj.bias", C, 0)         \
    X(ln2w, "ln_2.weight", C, 0)               \
    X(ln2b, "ln_2.bias", C, 0)                 \
    X(fcw, "mlp.c_fc.weight", F, C)            \
    X(fcb, "mlp.c_fc.bias", F, 0)              \
    X(fcprojw, "mlp.c_proj.weight", C, F)      \
    X(fcprojb, "mlp.c_proj.bias", C, 0)

#define GPT_LAYOUT_TAIL(X)             \
    X(lnfw, "ln_f.weight", C, 0)       \
    X(lnfb, "ln_f.bias", C, 0)

/* Index of each tensor within its list, and the lists' lengths. */
#define GPT_LAYOUT_INDEX_(field, name, d0, d1) GPT_L_##field,
enum { GPT_LAYOUT_HEAD(GPT_LAYOUT_INDEX_) GPT_HEAD_COUNT };
enum { GPT_LAYOUT_LAYER(GPT_LAYOUT_INDEX_) GPT_LAYER_COUNT };
enum { GPT_LAYOUT_TAIL(GPT_LAYOUT_INDEX_) GPT_TAIL_COUNT };
#undef GPT_LAYOUT_INDEX_

/* One tensor of the layout. */
typedef struct {
    const char* name;     /* state-dict key (within block `layer` for a block's tensor) */
    int32_t layer;        /* block index, or -1 outside the blocks */
    int32_t rank;         /* 1 or 2 */
    int64_t shape[2];     /* torch shape; shape[1] = 1 when rank is 1 */
    int64_t offset, size; /* in floats */
    int32_t decay;        /* AdamW weight decay applies (the 2-D tensors) */
} gpt_tensor;

/* Number of tensors of cfg's layout. */
static inline int64_t gpt_tensor_count(const gpt_cfg* cfg) {
    return GPT_HEAD_COUNT + (int64_t)GPT_LAYER_COUNT * cfg->L + GPT_TAIL_COUNT;
}
/* Layout index of tensor GPT_L_<field> of block l, and of a TAIL tensor. */
static inline int64_t gpt_layer_tensor(int64_t l, int k) { return GPT_HEAD_COUNT + l * GPT_LAYER_COUNT + k; }
static inline int64_t gpt_tail_tensor(const gpt_cfg* cfg, int k) {
    return GPT_HEAD_COUNT + (int64_t)GPT_LAYER_COUNT * cfg->L + k;
}

#endif
