/*
 * mps_graph.m: the GPT-2 (nanoGPT) training step as one MPSGraph.
 *
 * Shapes: N = B*T rows. Activations are (N, C) matrices between blocks; attention
 * works on (B, H, T, hd). Linear weights are (out, in) as torch: y = x W^T + b.
 * Every selector used here is listed, with its header and availability, in
 * docs/mps.md; all are available on macOS 12.0 (the deployment target), and the
 * compiler's availability warnings (-Werror) enforce it.
 */
#import "mps_graph.h"

#include <math.h>

/* ---- small wrappers: one line per op in the model code below ---- */

static MPSGraphTensor* Add(MPSGraph* g, MPSGraphTensor* a, MPSGraphTensor* b) {
    return [g additionWithPrimaryTensor:a secondaryTensor:b name:nil];
}
static MPSGraphTensor* Sub(MPSGraph* g, MPSGraphTensor* a, MPSGraphTensor* b) {
    return [g subtractionWithPrimaryTensor:a secondaryTensor:b name:nil];
}
static MPSGraphTensor* Mul(MPSGraph* g, MPSGraphTensor* a, MPSGraphTensor* b) {
    return [g multiplicationWithPrimaryTensor:a secondaryTensor:b name:nil];
}
static MPSGraphTensor* Div(MPSGraph* g, MPSGraphTensor* a, MPSGraphTensor* b) {
    return [g divisionWithPrimaryTensor:a secondaryTensor:b name:nil];
}
static MPSGraphTensor* Const(MPSGraph* g, double v) {
    return [g constantWithScalar:v dataType:MPSDataTypeFloat32];
}
static MPSGraphTensor* MatMul(MPSGraph* g, MPSGraphTensor* a, MPSGraphTensor* b) {
    return [g matrixMultiplicationWithPrimaryTensor:a secondaryTensor:b name:nil];
}
static MPSGraphTensor* Transpose(MPSGraph* g, MPSGraphTensor* a, NSUInteger d0, NSUInteger d1) {
    return [g transposeTensor:a dimension:d0 withDimension:d1 name:nil];
}
static MPSGraphTensor* Reshape(MPSGraph* g, MPSGraphTensor* a, MPSShape* shape) {
    return [g reshapeTensor:a withShape:shape name:nil];
}
static MPSGraphTensor* RowSum(MPSGraph* g, MPSGraphTensor* a) {  /* (N, K) -> (N, 1) */
    return [g reductionSumWithTensor:a axis:1 name:nil];
}
/* Sum of every element, as shape [1]. */
static MPSGraphTensor* Total(MPSGraph* g, MPSGraphTensor* a, NSUInteger rank) {
    NSMutableArray<NSNumber*>* axes = [NSMutableArray arrayWithCapacity:rank];
    for (NSUInteger i = 0; i < rank; i++) [axes addObject:@(i)];
    return Reshape(g, [g reductionSumWithTensor:a axes:axes name:nil], @[ @1 ]);
}
static MPSGraphTensor* Scalar(MPSGraph* g, MPSGraphTensor* hp, NSInteger index) {  /* shape [1] */
    return [g sliceTensor:hp dimension:0 start:index length:1 name:nil];
}

/* x (N, in) W^T + b, W (out, in). */
static MPSGraphTensor* Linear(MPSGraph* g, MPSGraphTensor* x, MPSGraphTensor* w, MPSGraphTensor* b) {
    return Add(g, MatMul(g, x, Transpose(g, w, 0, 1)), b);
}

/* torch.nn.LayerNorm over the last axis of (N, C): biased variance, eps 1e-5. */
static MPSGraphTensor* LayerNorm(MPSGraph* g, MPSGraphTensor* x, MPSGraphTensor* w, MPSGraphTensor* b,
                                 int32_t C) {
    MPSGraphTensor* n = Const(g, (double)C);
    MPSGraphTensor* mean = Div(g, RowSum(g, x), n);
    MPSGraphTensor* d = Sub(g, x, mean);
    MPSGraphTensor* var = Div(g, RowSum(g, Mul(g, d, d)), n);
    MPSGraphTensor* rstd = [g reverseSquareRootWithTensor:Add(g, var, Const(g, 1e-5)) name:nil];
    return Add(g, Mul(g, Mul(g, d, rstd), w), b);
}

/* GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
static MPSGraphTensor* Gelu(MPSGraph* g, MPSGraphTensor* x) {
    MPSGraphTensor* x3 = Mul(g, Mul(g, x, x), x);
    MPSGraphTensor* inner = Mul(g, Const(g, 0.7978845608028654), Add(g, x, Mul(g, Const(g, 0.044715), x3)));
    MPSGraphTensor* t = [g tanhWithTensor:inner name:nil];
    return Mul(g, Mul(g, Const(g, 0.5), x), Add(g, Const(g, 1.0), t));
}

/* Tensor GPT_L_<field> of block l (native/layout.h). */
static MPSGraphTensor* Param(NSArray<MPSGraphTensor*>* P, int32_t l, int k) {
    return P[(NSUInteger)gpt_layer_tensor(l, k)];
}

/* (N, C) -> (B, H, T, hd) */
static MPSGraphTensor* SplitHeads(MPSGraph* g, MPSGraphTensor* x, int32_t B, int32_t T, int32_t H, int32_t hd) {
    return Transpose(g, Reshape(g, x, @[ @(B), @(T), @(H), @(hd) ]), 1, 2);
}

/* The additive causal mask (T, T): 0 on and below the diagonal, -1e9 above. A large
 * finite value rather than -inf: exp() of it is exactly 0 all the same, and no
 * infinity meets the GPU's fast-math kernels. */
static MPSGraphTensor* CausalMask(MPSGraph* g, int32_t T) {
    NSMutableData* data = [NSMutableData dataWithLength:(NSUInteger)T * (NSUInteger)T * sizeof(float)];
    float* m = (float*)data.mutableBytes;
    for (int32_t i = 0; i < T; i++)
        for (int32_t j = 0; j < T; j++) m[(size_t)i * (size_t)T + (size_t)j] = j > i ? -1e9f : 0.0f;
    return [g constantWithData:data shape:@[ @(T), @(T) ] dataType:MPSDataTypeFloat32];
}

/* Causal multi-head self-attention of nanoGPT: c_attn, split q k v, softmax(q k^T /
 * sqrt(hd) + mask) v, merge heads, c_proj. x: (N, C). */
static MPSGraphTensor* Attention(MPSGraph* g, MPSGraphTensor* x, NSArray<MPSGraphTensor*>* P, int32_t l,
                                 MPSGraphTensor* mask, const gpt_cfg* cfg, int32_t B) {
    const int32_t T = cfg->T, C = cfg->C, H = cfg->H, hd = C / H;
    MPSGraphTensor* qkv = Linear(g, x, Param(P, l, GPT_L_qkvw), Param(P, l, GPT_L_qkvb));  /* (N, 3C) */
    MPSGraphTensor* q = SplitHeads(g, [g sliceTensor:qkv dimension:1 start:0 length:C name:nil], B, T, H, hd);
    MPSGraphTensor* k = SplitHeads(g, [g sliceTensor:qkv dimension:1 start:C length:C name:nil], B, T, H, hd);
    MPSGraphTensor* v = SplitHeads(g, [g sliceTensor:qkv dimension:1 start:2 * C length:C name:nil], B, T, H, hd);
    MPSGraphTensor* s = Mul(g, MatMul(g, q, Transpose(g, k, 2, 3)), Const(g, 1.0 / sqrt((double)hd)));
    MPSGraphTensor* p = [g softMaxWithTensor:Add(g, s, mask) axis:3 name:nil];  /* (B, H, T, T) */
    MPSGraphTensor* y = Transpose(g, MatMul(g, p, v), 1, 2);                     /* (B, T, H, hd) */
    y = Reshape(g, y, @[ @((NSInteger)B * T), @(C) ]);
    return Linear(g, y, Param(P, l, GPT_L_projw), Param(P, l, GPT_L_projb));
}

static MPSGraphTensor* OneHot(MPSGraph* g, MPSGraphTensor* ids, int32_t depth) {  /* [N] -> (N, depth) */
    return [g oneHotWithIndicesTensor:ids depth:(NSUInteger)depth axis:1 dataType:MPSDataTypeFloat32 name:nil];
}

/* Mean cross-entropy over the counted targets, shape [1]. logits (N, V).
 *
 * MPSGraph's fused softmax cross-entropy, reduced over the class axis only (one loss per
 * row), computes -sum_v onehot * log softmax(logits) with its own max shift and has its
 * own gradient (softmax - onehot) for automatic differentiation. A hand-built
 * log-sum-exp shifted by reductionMaximum would put the maximum on the autodiff path:
 * its gradient is zero in exact arithmetic (the shift cancels), but it depends on
 * MPSGraph differentiating a max reduction, ties included (docs/mps.md, "Loss").
 * The per-row result is reshaped to (N, 1) whether MPSGraph keeps the reduced axis or not. */
static MPSGraphTensor* MaskedCrossEntropy(MPSGraph* g, MPSGraphTensor* logits, MPSGraphTensor* targets,
                                          MPSGraphTensor* mask, MPSGraphTensor* count, int32_t V, NSInteger N) {
    MPSGraphTensor* ce = [g softMaxCrossEntropyWithSourceTensor:logits
                                                   labelsTensor:OneHot(g, targets, V)
                                                           axis:1
                                                  reductionType:MPSGraphLossReductionTypeAxis
                                                           name:nil];
    MPSGraphTensor* rows = Mul(g, Reshape(g, ce, @[ @(N), @1 ]), mask); /* (N, 1) */
    return Div(g, Total(g, rows, 2), count);
}

/* The forward pass and the loss. */
static MPSGraphTensor* ForwardLoss(MPSGraph* g, NSArray<MPSGraphTensor*>* P, MPSGraphTensor* tokens,
                                   MPSGraphTensor* targets, MPSGraphTensor* mask, MPSGraphTensor* count,
                                   const gpt_spec* spec) {
    const gpt_cfg* cfg = &spec->cfg;
    const int32_t V = cfg->V, T = cfg->T, C = cfg->C, B = spec->B;
    const NSInteger N = (NSInteger)B * T;
    MPSGraphTensor* wte = P[GPT_L_wte];
    MPSGraphTensor* tok = spec->opt.mps_embedding == GPT_EMBEDDING_GATHER
                              ? [g gatherWithUpdatesTensor:wte indicesTensor:tokens axis:0 batchDimensions:0 name:nil]
                              : MatMul(g, OneHot(g, tokens, V), wte);
    /* (B, T, C) + wpe (T, C), broadcast over the batch */
    MPSGraphTensor* h = Reshape(g, Add(g, Reshape(g, tok, @[ @(B), @(T), @(C) ]), P[GPT_L_wpe]), @[ @(N), @(C) ]);
    MPSGraphTensor* mask_tt = CausalMask(g, T);
    for (int32_t l = 0; l < cfg->L; l++) {
        MPSGraphTensor* a = LayerNorm(g, h, Param(P, l, GPT_L_ln1w), Param(P, l, GPT_L_ln1b), C);
        h = Add(g, h, Attention(g, a, P, l, mask_tt, cfg, B));
        MPSGraphTensor* m = LayerNorm(g, h, Param(P, l, GPT_L_ln2w), Param(P, l, GPT_L_ln2b), C);
        m = Gelu(g, Linear(g, m, Param(P, l, GPT_L_fcw), Param(P, l, GPT_L_fcb)));
        h = Add(g, h, Linear(g, m, Param(P, l, GPT_L_fcprojw), Param(P, l, GPT_L_fcprojb)));
    }
    h = LayerNorm(g, h, P[(NSUInteger)gpt_tail_tensor(cfg, GPT_L_lnfw)], P[(NSUInteger)gpt_tail_tensor(cfg, GPT_L_lnfb)], C);
    MPSGraphTensor* logits = MatMul(g, h, Transpose(g, wte, 0, 1));  /* tied LM head: (N, V) */
    return MaskedCrossEntropy(g, logits, targets, mask, count, V, N);
}

@implementation MPSGPTGraph

MPSShape* TensorShape(const gpt_tensor* t) {
    return t->rank == 2 ? @[ @(t->shape[0]), @(t->shape[1]) ] : @[ @(t->shape[0]) ];
}

/* One placeholder per tensor of spec's layout. */
static NSArray<MPSGraphTensor*>* Placeholders(MPSGraph* g, const gpt_spec* spec) {
    NSMutableArray<MPSGraphTensor*>* out = [NSMutableArray arrayWithCapacity:(NSUInteger)spec->n_tensors];
    for (int64_t i = 0; i < spec->n_tensors; i++)
        [out addObject:[g placeholderWithShape:TensorShape(&spec->tensors[i]) dataType:MPSDataTypeFloat32 name:nil]];
    return out;
}

/* Gradients of loss for every parameter, in layout order. */
static NSArray<MPSGraphTensor*>* Gradients(MPSGraph* g, MPSGraphTensor* loss, NSArray<MPSGraphTensor*>* P) {
    NSDictionary<MPSGraphTensor*, MPSGraphTensor*>* d = [g gradientForPrimaryTensor:loss withTensors:P name:nil];
    NSMutableArray<MPSGraphTensor*>* out = [NSMutableArray arrayWithCapacity:P.count];
    for (MPSGraphTensor* p in P) {
        MPSGraphTensor* gp = d[p];
        if (gp == nil)
            [NSException raise:NSInternalInconsistencyException
                        format:@"MPSGraph returned no gradient for parameter %lu", (unsigned long)out.count];
        [out addObject:gp];
    }
    return out;
}

/* clip_grad_norm_ and torch.optim.AdamW (single-tensor path), guarded by a finite flag. */
- (void)buildUpdateWithGrads:(NSArray<MPSGraphTensor*>*)grads layout:(const gpt_tensor*)layout {
    MPSGraph* g = _graph;
    const NSUInteger n = grads.count;
    /* total norm as torch 1.13: the 2-norm of the per-tensor 2-norms */
    NSMutableArray<MPSGraphTensor*>* norms = [NSMutableArray arrayWithCapacity:n];
    for (NSUInteger i = 0; i < n; i++) {
        MPSGraphTensor* gi = grads[i];
        [norms addObject:[g squareRootWithTensor:Total(g, Mul(g, gi, gi), (NSUInteger)layout[i].rank) name:nil]];
    }
    MPSGraphTensor* stacked = [g concatTensors:norms dimension:0 name:nil];  /* [n] */
    MPSGraphTensor* norm = [g squareRootWithTensor:Total(g, Mul(g, stacked, stacked), 1) name:nil];

    MPSGraphTensor* clip = Scalar(g, _hp, MPS_HP_CLIP);
    MPSGraphTensor* one = Const(g, 1.0);
    MPSGraphTensor* coef = Div(g, clip, Add(g, norm, Const(g, 1e-6)));
    MPSGraphTensor* clipping = [g logicalANDWithPrimaryTensor:[g greaterThanWithPrimaryTensor:clip
                                                                              secondaryTensor:Const(g, 0.0)
                                                                                         name:nil]
                                              secondaryTensor:[g lessThanWithPrimaryTensor:coef secondaryTensor:one name:nil]
                                                         name:nil];
    coef = [g selectWithPredicateTensor:clipping truePredicateTensor:coef falsePredicateTensor:one name:nil];

    MPSGraphTensor* finite = [g logicalANDWithPrimaryTensor:[g isFiniteWithTensor:_loss name:nil]
                                            secondaryTensor:[g isFiniteWithTensor:norm name:nil]
                                                       name:nil];
    MPSGraphTensor* decay = Scalar(g, _hp, MPS_HP_DECAY);
    MPSGraphTensor* b1 = Scalar(g, _hp, MPS_HP_BETA1), *omb1 = Scalar(g, _hp, MPS_HP_ONE_MINUS_BETA1);
    MPSGraphTensor* b2 = Scalar(g, _hp, MPS_HP_BETA2), *omb2 = Scalar(g, _hp, MPS_HP_ONE_MINUS_BETA2);
    MPSGraphTensor* stepSize = Scalar(g, _hp, MPS_HP_STEP_SIZE);
    MPSGraphTensor* bc2sqrt = Scalar(g, _hp, MPS_HP_BC2_SQRT);
    MPSGraphTensor* eps = Scalar(g, _hp, MPS_HP_EPS);

    NSMutableArray<MPSGraphTensor*>* pOut = [NSMutableArray arrayWithCapacity:n];
    NSMutableArray<MPSGraphTensor*>* mOut = [NSMutableArray arrayWithCapacity:n];
    NSMutableArray<MPSGraphTensor*>* vOut = [NSMutableArray arrayWithCapacity:n];
    for (NSUInteger i = 0; i < n; i++) {
        MPSGraphTensor *p = _params[i], *m = _m[i], *v = _v[i];
        MPSGraphTensor* gr = Mul(g, grads[i], coef);
        /* exp_avg.mul_(b1).add_(g, alpha=1-b1); exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2) */
        MPSGraphTensor* m1 = Add(g, Mul(g, m, b1), Mul(g, gr, omb1));
        MPSGraphTensor* v1 = Add(g, Mul(g, v, b2), Mul(g, Mul(g, omb2, gr), gr));
        /* denom = sqrt(v) / sqrt(1 - b2^t) + eps; param.mul_(1 - lr wd) (2-D only);
         * param.addcdiv_(exp_avg, denom, value=-lr / (1 - b1^t)) */
        MPSGraphTensor* denom = Add(g, Div(g, [g squareRootWithTensor:v1 name:nil], bc2sqrt), eps);
        MPSGraphTensor* pd = layout[i].decay ? Mul(g, p, decay) : p;
        MPSGraphTensor* p1 = Sub(g, pd, Mul(g, stepSize, Div(g, m1, denom)));
        [pOut addObject:[g selectWithPredicateTensor:finite truePredicateTensor:p1 falsePredicateTensor:p name:nil]];
        [mOut addObject:[g selectWithPredicateTensor:finite truePredicateTensor:m1 falsePredicateTensor:m name:nil]];
        [vOut addObject:[g selectWithPredicateTensor:finite truePredicateTensor:v1 falsePredicateTensor:v name:nil]];
    }
    _paramsOut = pOut;
    _mOut = mOut;
    _vOut = vOut;
    _gradNorm = norm;
    _applied = [g selectWithPredicateTensor:finite truePredicateTensor:one falsePredicateTensor:Const(g, 0.0) name:nil];
}

- (instancetype)initWithKind:(MPSGPTGraphKind)kind spec:(const gpt_spec*)spec {
    if ((self = [super init]) == nil) return nil;
    _kind = kind;
    _graph = [MPSGraph new];
    MPSGraph* g = _graph;
    const NSInteger N = (NSInteger)spec->B * spec->cfg.T;
    _params = Placeholders(g, spec);
    _tokens = [g placeholderWithShape:@[ @(N) ] dataType:MPSDataTypeInt32 name:nil];
    _targets = [g placeholderWithShape:@[ @(N) ] dataType:MPSDataTypeInt32 name:nil];
    _targetMask = [g placeholderWithShape:@[ @(N), @1 ] dataType:MPSDataTypeFloat32 name:nil];
    _hp = [g placeholderWithShape:@[ @(MPS_HP_LEN) ] dataType:MPSDataTypeFloat32 name:nil];
    _loss = ForwardLoss(g, _params, _tokens, _targets, _targetMask, Scalar(g, _hp, MPS_HP_COUNT), spec);
    if (kind == MPSGPTGraphGrads) {
        _grads = Gradients(g, _loss, _params);
    } else if (kind == MPSGPTGraphTrain) {
        _m = Placeholders(g, spec);
        _v = Placeholders(g, spec);
        [self buildUpdateWithGrads:Gradients(g, _loss, _params) layout:spec->tensors];
    }
    return self;
}

+ (nullable instancetype)graphWithKind:(MPSGPTGraphKind)kind
                                  spec:(const gpt_spec*)spec
                                 error:(NSString* _Nullable* _Nonnull)error {
    @try {
        return [[MPSGPTGraph alloc] initWithKind:kind spec:spec];
    } @catch (NSException* e) {
        *error = [NSString stringWithFormat:@"%@: %@", e.name, e.reason];
        return nil;
    }
}

@end

/* ---- incremental decoding (see mps_graph.h) ---- */

@implementation MPSGPTDecodeGraph

/* softmax(q k^T / sqrt(hd) + mask) v over heads: q (Hq rows of the query, C), k and v
 * (T, C); rows (number of query rows) as q; mask broadcast to (H, rows, T). */
static MPSGraphTensor* HeadsAttend(MPSGraph* g, MPSGraphTensor* q, MPSGraphTensor* k, MPSGraphTensor* v,
                                   MPSGraphTensor* mask, int32_t rows, const gpt_cfg* cfg) {
    const int32_t T = cfg->T, C = cfg->C, H = cfg->H, hd = C / H;
    MPSGraphTensor* qh = Transpose(g, Reshape(g, q, @[ @(rows), @(H), @(hd) ]), 0, 1); /* (H, rows, hd) */
    MPSGraphTensor* kh = Transpose(g, Reshape(g, k, @[ @(T), @(H), @(hd) ]), 0, 1);    /* (H, T, hd) */
    MPSGraphTensor* vh = Transpose(g, Reshape(g, v, @[ @(T), @(H), @(hd) ]), 0, 1);
    MPSGraphTensor* s = Mul(g, MatMul(g, qh, Transpose(g, kh, 1, 2)), Const(g, 1.0 / sqrt((double)hd)));
    MPSGraphTensor* p = [g softMaxWithTensor:Add(g, s, mask) axis:2 name:nil];            /* (H, rows, T) */
    return Reshape(g, Transpose(g, MatMul(g, p, vh), 0, 1), @[ @(rows), @(C) ]);           /* (rows, C) */
}

- (instancetype)initWithKind:(MPSGPTDecodeKind)kind spec:(const gpt_spec*)spec {
    if ((self = [super init]) == nil) return nil;
    _graph = [MPSGraph new];
    MPSGraph* g = _graph;
    const gpt_cfg* cfg = &spec->cfg;
    const int32_t T = cfg->T, C = cfg->C;
    const BOOL step = kind == MPSGPTDecodeStep;
    const int32_t rows = step ? 1 : T;
    NSArray<MPSGraphTensor*>* P = Placeholders(g, spec);
    _params = P;
    _tokens = [g placeholderWithShape:@[ @(rows) ] dataType:MPSDataTypeInt32 name:nil];
    MPSGraphTensor* wte = P[GPT_L_wte];
    MPSGraphTensor* h = [g gatherWithUpdatesTensor:wte indicesTensor:_tokens axis:0 batchDimensions:0 name:nil];
    MPSGraphTensor* mask;
    NSMutableArray<MPSGraphTensor*>* kc = [NSMutableArray array];
    NSMutableArray<MPSGraphTensor*>* vc = [NSMutableArray array];
    if (step) {
        _position = [g placeholderWithShape:@[ @1 ] dataType:MPSDataTypeInt32 name:nil];
        _oneHot = [g placeholderWithShape:@[ @(T), @1 ] dataType:MPSDataTypeFloat32 name:nil];
        _mask = [g placeholderWithShape:@[ @(T) ] dataType:MPSDataTypeFloat32 name:nil];
        h = Add(g, h, [g gatherWithUpdatesTensor:P[GPT_L_wpe] indicesTensor:_position axis:0 batchDimensions:0 name:nil]);
        mask = Reshape(g, _mask, @[ @1, @1, @(T) ]);
        for (int32_t l = 0; l < cfg->L; l++) {
            [kc addObject:[g placeholderWithShape:@[ @(T), @(C) ] dataType:MPSDataTypeFloat32 name:nil]];
            [vc addObject:[g placeholderWithShape:@[ @(T), @(C) ] dataType:MPSDataTypeFloat32 name:nil]];
        }
        _kCache = kc;
        _vCache = vc;
    } else {
        h = Add(g, h, P[GPT_L_wpe]);
        mask = CausalMask(g, T);
    }
    NSMutableArray<MPSGraphTensor*>* kOut = [NSMutableArray array];
    NSMutableArray<MPSGraphTensor*>* vOut = [NSMutableArray array];
    for (int32_t l = 0; l < cfg->L; l++) {
        MPSGraphTensor* a = LayerNorm(g, h, Param(P, l, GPT_L_ln1w), Param(P, l, GPT_L_ln1b), C);
        MPSGraphTensor* qkv = Linear(g, a, Param(P, l, GPT_L_qkvw), Param(P, l, GPT_L_qkvb)); /* (rows, 3C) */
        MPSGraphTensor* q = [g sliceTensor:qkv dimension:1 start:0 length:C name:nil];
        MPSGraphTensor* k = [g sliceTensor:qkv dimension:1 start:C length:C name:nil];
        MPSGraphTensor* v = [g sliceTensor:qkv dimension:1 start:2 * C length:C name:nil];
        [kOut addObject:k];
        [vOut addObject:v];
        MPSGraphTensor *kAll = k, *vAll = v;
        if (step) { /* the cache with this position's row replaced by the new one */
            MPSGraphTensor* keep = Sub(g, Const(g, 1.0), _oneHot);
            kAll = Add(g, Mul(g, kc[(NSUInteger)l], keep), Mul(g, _oneHot, k));
            vAll = Add(g, Mul(g, vc[(NSUInteger)l], keep), Mul(g, _oneHot, v));
        }
        MPSGraphTensor* y = HeadsAttend(g, q, kAll, vAll, mask, rows, cfg);
        h = Add(g, h, Linear(g, y, Param(P, l, GPT_L_projw), Param(P, l, GPT_L_projb)));
        MPSGraphTensor* m = LayerNorm(g, h, Param(P, l, GPT_L_ln2w), Param(P, l, GPT_L_ln2b), C);
        m = Gelu(g, Linear(g, m, Param(P, l, GPT_L_fcw), Param(P, l, GPT_L_fcb)));
        h = Add(g, h, Linear(g, m, Param(P, l, GPT_L_fcprojw), Param(P, l, GPT_L_fcprojb)));
    }
    h = LayerNorm(g, h, P[(NSUInteger)gpt_tail_tensor(cfg, GPT_L_lnfw)], P[(NSUInteger)gpt_tail_tensor(cfg, GPT_L_lnfb)], C);
    _logits = MatMul(g, h, Transpose(g, wte, 0, 1)); /* tied LM head: (rows, V) */
    _kOut = kOut;
    _vOut = vOut;
    return self;
}

+ (nullable instancetype)graphWithKind:(MPSGPTDecodeKind)kind
                                  spec:(const gpt_spec*)spec
                                 error:(NSString* _Nullable* _Nonnull)error {
    @try {
        return [[MPSGPTDecodeGraph alloc] initWithKind:kind spec:spec];
    } @catch (NSException* e) {
        *error = [NSString stringWithFormat:@"%@: %@", e.name, e.reason];
        return nil;
    }
}

@end
