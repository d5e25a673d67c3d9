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
#include "../backend.h"

NS_ASSUME_NONNULL_BEGIN

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

/* The torch shape of a layout tensor: [d0] or [d0, d1]. */
MPSShape* TensorShape(const gpt_tensor* t);

@interface MPSGPTGraph : NSObject

@property(nonatomic, readonly) MPSGraph* graph;
@property(nonatomic, readonly) MPSGPTGraphKind kind;

/* Placeholders. params: one per layout tensor (native/layout.h), in layout order, with its shape. */
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

/* The graph of spec (its cfg, batch, layout and option mps_embedding: the token
 * embedding as a one-hot (N, V) matrix times wte, its gradient a matmul, deterministic;
 * or a gather, its gradient by MPSGraph's autodiff a scatter-add whose summation order
 * need not be the same from run to run). nil with *error set when MPSGraph rejects the
 * construction (it raises an NSException, caught here). */
+ (nullable instancetype)graphWithKind:(MPSGPTGraphKind)kind
                                  spec:(const gpt_spec*)spec
                                 error:(NSString* _Nullable* _Nonnull)error;

@end

/* Incremental decoding of one sequence (gpt_decode_begin / gpt_decode_step; the host
 * side is in gpt_mps.m). Shapes are fixed at T rows, so each graph compiles once:
 *   prompt: tokens int32 [T] (the prompt, padded) -> logits (T, V) and every layer's
 *           keys and values (T, C) (row t of position t; the host keeps them: the cache).
 *   step:   token and position int32 [1], keys and values (T, C) of every layer, the
 *           position as a one-hot float column (T, 1) and the additive mask float (T)
 *           (0 up to the position, -1e9 after) -> logits (1, V), the new key and value
 *           rows (1, C) of every layer (the host writes them into the cache at the
 *           position: a run never writes what it reads). */
typedef NS_ENUM(NSInteger, MPSGPTDecodeKind) {
    MPSGPTDecodePrompt = 0,
    MPSGPTDecodeStep,
};

@interface MPSGPTDecodeGraph : NSObject
@property(nonatomic, readonly) MPSGraph* graph;
@property(nonatomic, readonly) NSArray<MPSGraphTensor*>* params;   /* one per layout tensor */
@property(nonatomic, readonly) MPSGraphTensor* tokens;             /* int32 [T] or [1] */
@property(nonatomic, readonly, nullable) MPSGraphTensor* position; /* step: int32 [1] */
@property(nonatomic, readonly, nullable) MPSGraphTensor* oneHot;   /* step: float32 (T, 1) */
@property(nonatomic, readonly, nullable) MPSGraphTensor* mask;     /* step: float32 (T) */
@property(nonatomic, readonly, nullable) NSArray<MPSGraphTensor*>* kCache; /* step: (T, C) per layer */
@property(nonatomic, readonly, nullable) NSArray<MPSGraphTensor*>* vCache;
@property(nonatomic, readonly) MPSGraphTensor* logits;             /* (T, V) or (1, V) */
@property(nonatomic, readonly) NSArray<MPSGraphTensor*>* kOut;     /* (T, C) or (1, C) per layer */
@property(nonatomic, readonly) NSArray<MPSGraphTensor*>* vOut;

+ (nullable instancetype)graphWithKind:(MPSGPTDecodeKind)kind
                                  spec:(const gpt_spec*)spec
                                 error:(NSString* _Nullable* _Nonnull)error;
@end

NS_ASSUME_NONNULL_END
#endif /* GPT_MPS_GRAPH_H */
