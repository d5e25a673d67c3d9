/*
 * mps_graph.h: the MPSGraph of one GPT training step (internal to native/mps).
 *
 * One MPSGPTGraph is one MPSGraph with its placeholders and outputs, for a fixed
 * model cfg and batch: forward + masked cross-entropy (eval), plus the gradients of
 * every parameter by MPSGraph's automatic differentiation (grads), plus global-norm
 * clipping and the AdamW update with its non-finite guard (train). Building it runs
 * nothing; MPSGraph compiles it on its first run and reuses it after.
 */
#ifndef GPT_MPS_GRAPH_H
#define GPT_MPS_GRAPH_H

#import <Foundation/Foundation.h>
#import <MetalPerformanceShadersGraph/MetalPerformanceShadersGraph.h>
#include "../include/gpt.h"

NS_ASSUME_NONNULL_BEGIN

/* One tensor of the flat parameter layout of gpt.h. */
typedef struct {
    int64_t offset, size; /* in floats */
    int32_t rank;         /* 1 or 2 */
    int32_t shape[2];     /* torch shape; nn.Linear weights (out, in) */
    int32_t decay;        /* AdamW weight decay applies (2-D tensors) */
} mps_param;

/* Number of tensors in the layout of cfg (cfg already validated). */
int32_t mps_param_count(const gpt_cfg* cfg);
/* Fills out[mps_param_count(cfg)] in gpt.h order; returns the total float count. */
int64_t mps_param_layout(const gpt_cfg* cfg, mps_param* out);

/* The step scalars, fed every step in one float32 vector of MPS_HP_LEN (no
 * recompilation when they change). The host derives them in double precision from
 * lr, the hyperparameters and the step number t, as torch.optim.AdamW does. */
enum {
    MPS_HP_COUNT = 0,       /* number of counted targets (the CE mean's divisor) */
    MPS_HP_DECAY,           /* 1 - lr * weight_decay, applied to 2-D tensors */
    MPS_HP_BETA1,
    MPS_HP_ONE_MINUS_BETA1,
    MPS_HP_BETA2,
    MPS_HP_ONE_MINUS_BETA2,
    MPS_HP_STEP_SIZE,       /* lr / (1 - beta1^t) */
    MPS_HP_BC2_SQRT,        /* sqrt(1 - beta2^t) */
    MPS_HP_EPS,
    MPS_HP_CLIP,            /* max global norm; <= 0 disables clipping */
    MPS_HP_LEN = 16
};

typedef NS_ENUM(NSInteger, MPSGPTGraphKind) {
    MPSGPTGraphEval = 0,  /* loss */
    MPSGPTGraphGrads,     /* loss, unclipped gradients */
    MPSGPTGraphTrain,     /* loss, grad norm, applied flag, updated params/m/v */
};

/* How the token embedding is read: a one-hot (N, V) matrix times wte (its gradient
 * a matmul: deterministic), or a gather (its gradient, by MPSGraph's autodiff, a
 * scatter-add whose summation order need not be the same from run to run). */
typedef NS_ENUM(NSInteger, MPSGPTEmbedding) {
    MPSGPTEmbeddingOneHot = 0,
    MPSGPTEmbeddingGather,
};

@interface MPSGPTGraph : NSObject

@property(nonatomic, readonly) MPSGraph* graph;
@property(nonatomic, readonly) MPSGPTGraphKind kind;
@property(nonatomic, readonly) MPSGPTEmbedding embedding;

/* Placeholders. params: one per layout tensor, in layout order, with its shape. */
@property(nonatomic, readonly) NSArray<MPSGraphTensor*>* params;
@property(nonatomic, readonly, nullable) NSArray<MPSGraphTensor*>* m;  /* train only */
@property(nonatomic, readonly, nullable) NSArray<MPSGraphTensor*>* v;  /* train only */
@property(nonatomic, readonly) MPSGraphTensor* tokens;      /* int32 [B*T] */
@property(nonatomic, readonly) MPSGraphTensor* targets;     /* int32 [B*T], every id in [0, V) */
@property(nonatomic, readonly) MPSGraphTensor* targetMask;  /* float32 [B*T, 1]: 1 counted, 0 ignored */
@property(nonatomic, readonly) MPSGraphTensor* hp;          /* float32 [MPS_HP_LEN] */

/* Outputs; every scalar has shape [1]. */
@property(nonatomic, readonly) MPSGraphTensor* loss;
@property(nonatomic, readonly, nullable) NSArray<MPSGraphTensor*>* grads;      /* grads only */
@property(nonatomic, readonly, nullable) MPSGraphTensor* gradNorm;             /* train only */
@property(nonatomic, readonly, nullable) MPSGraphTensor* applied;              /* train: 1.0 or 0.0 */
@property(nonatomic, readonly, nullable) NSArray<MPSGraphTensor*>* paramsOut;  /* train only */
@property(nonatomic, readonly, nullable) NSArray<MPSGraphTensor*>* mOut;       /* train only */
@property(nonatomic, readonly, nullable) NSArray<MPSGraphTensor*>* vOut;       /* train only */

/* nil with *error set when MPSGraph rejects the construction (it raises an
 * NSException, caught here). layout has mps_param_count(cfg) entries. */
+ (nullable instancetype)graphWithKind:(MPSGPTGraphKind)kind
                                   cfg:(const gpt_cfg*)cfg
                                 batch:(int32_t)B
                                layout:(const mps_param*)layout
                             embedding:(MPSGPTEmbedding)embedding
                                 error:(NSString* _Nullable* _Nonnull)error;

@end

NS_ASSUME_NONNULL_END
#endif /* GPT_MPS_GRAPH_H */
