/*
 * gpt_mps.m: the Apple GPU backend of libgpt (MPSGraph, Objective-C with ARC).
 *
 * State on the GPU: every parameter tensor and its AdamW moments in its own shared
 * MTLBuffer (unified memory on Apple silicon), in two sets. A training step reads set
 * `cur` and writes the updated tensors into set 1-cur (ping-pong: no tensor is read
 * and written by the same run); the host flips `cur` when the update was applied. The
 * graph itself also selects the old values when the loss or the norm is not finite,
 * so the guard holds on either side. Tokens, targets and the step scalars go through
 * small shared buffers written by the host before each run; nothing is allocated by
 * us inside a training step or an evaluation (MPSGraph compiles each graph on its first
 * run and caches it; see docs/mps.md).
 *
 * The model implements the backend table of native/backend.h (gpt_mps_backend, at the
 * end): native/gpt.c has validated every argument before it calls here.
 */
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>
#import <MetalPerformanceShadersGraph/MetalPerformanceShadersGraph.h>

#import "mps_graph.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { PROF_TRAIN = 0, PROF_EVAL, PROF_GRADS, PROF_HOST, PROF_N };
static const char* const kProfNames[PROF_N] = {"mps.train_step", "mps.eval_loss", "mps.compute_grads",
                                               "mps.host_copies"};

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

@interface GPTMPSModel : NSObject
- (nullable instancetype)initWithSpec:(const gpt_spec*)spec error:(NSString**)error;
- (const char*)lastError;
/* Formats the message of the last error; returns 1 (the status of a failed call). */
- (int32_t)fail:(const char*)fmt, ... __attribute__((format(printf, 1, 2)));
@end

@implementation GPTMPSModel {
    const gpt_spec* _spec; /* gpt.c's, unchanged while we live */
    int32_t _K;            /* parameter tensors */
    int64_t _N, _P;        /* B*T, floats in the flat layout */
    const gpt_tensor* _layout;

    id<MTLDevice> _device;
    id<MTLCommandQueue> _queue;
    /* ping-pong sets of per-tensor buffers and their tensor data */
    NSArray<id<MTLBuffer>>* _pBuf[2];
    NSArray<id<MTLBuffer>>* _mBuf[2];
    NSArray<id<MTLBuffer>>* _vBuf[2];
    NSArray<MPSGraphTensorData*>* _pData[2];
    NSArray<MPSGraphTensorData*>* _mData[2];
    NSArray<MPSGraphTensorData*>* _vData[2];
    NSArray<id<MTLBuffer>>* _gradBuf;  /* made on the first gpt_compute_grads */
    NSArray<MPSGraphTensorData*>* _gradData;
    /* per-step inputs and scalar outputs */
    id<MTLBuffer> _tokens, _targets, _mask, _hp, _loss, _norm, _applied;
    MPSGraphTensorData *_tokensData, *_targetsData, *_maskData, *_hpData, *_lossData, *_normData, *_appliedData;

    MPSGPTGraph *_train, *_eval, *_gradGraph;
    MPSGraphTensorDataDictionary *_trainFeeds[2], *_trainResults[2];
    MPSGraphTensorDataDictionary *_evalFeeds[2], *_evalResults;
    MPSGraphTensorDataDictionary *_gradFeeds[2], *_gradResults;

    /* incremental decoding (one sequence), made by the first gpt_decode_begin: the
     * graphs of mps_graph.h, every layer's keys and values (T, C) (the cache), the new
     * rows of a step, the small inputs, and the feeds of both parameter sets */
    MPSGPTDecodeGraph *_dPrompt, *_dStep;
    NSArray<id<MTLBuffer>> *_kCache, *_vCache, *_kRow, *_vRow;
    NSArray<MPSGraphTensorData*> *_kCacheData, *_vCacheData, *_kRowData, *_vRowData;
    id<MTLBuffer> _dTokens, _dToken, _dPos, _dOneHot, _dMask, _dLogitsAll, _dLogits;
    MPSGraphTensorData *_dTokensData, *_dTokenData, *_dPosData, *_dOneHotData, *_dMaskData, *_dLogitsAllData, *_dLogitsData;
    MPSGraphTensorDataDictionary *_dPromptFeeds[2], *_dStepFeeds[2], *_dPromptResults, *_dStepResults;

    int _cur;       /* the set holding the current parameters and moments */
    int64_t _step;  /* AdamW updates applied */
    BOOL _profile;
    double _profSeconds[PROF_N];
    char _err[512];
}

- (const char*)lastError {
    return _err;
}

- (int32_t)fail:(const char*)fmt, ... {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(_err, sizeof _err, fmt, ap);
    va_end(ap);
    return 1;
}

/* ---- creation ---- */

static id<MTLBuffer> NewBuffer(id<MTLDevice> device, int64_t bytes) {
    id<MTLBuffer> b = [device newBufferWithLength:(NSUInteger)bytes options:MTLResourceStorageModeShared];
    if (b != nil) memset(b.contents, 0, (size_t)bytes);
    return b;
}

- (BOOL)allocateSet:(NSArray<id<MTLBuffer>>* __strong*)bufs
               data:(NSArray<MPSGraphTensorData*>* __strong*)datas
              error:(NSString**)error {
    NSMutableArray<id<MTLBuffer>>* b = [NSMutableArray arrayWithCapacity:(NSUInteger)_K];
    NSMutableArray<MPSGraphTensorData*>* d = [NSMutableArray arrayWithCapacity:(NSUInteger)_K];
    for (int32_t i = 0; i < _K; i++) {
        id<MTLBuffer> buf = NewBuffer(_device, _layout[i].size * (int64_t)sizeof(float));
        if (buf == nil) {
            *error = [NSString stringWithFormat:@"cannot allocate a GPU buffer of %lld bytes",
                                                (long long)(_layout[i].size * (int64_t)sizeof(float))];
            return NO;
        }
        [b addObject:buf];
        [d addObject:[[MPSGraphTensorData alloc] initWithMTLBuffer:buf
                                                              shape:TensorShape(&_layout[i])
                                                           dataType:MPSDataTypeFloat32]];
    }
    *bufs = b;
    *datas = d;
    return YES;
}

- (BOOL)allocateSmall:(id<MTLBuffer> __strong*)buf
                 data:(MPSGraphTensorData* __strong*)data
                bytes:(int64_t)bytes
                shape:(MPSShape*)shape
                 type:(MPSDataType)type
                error:(NSString**)error {
    *buf = NewBuffer(_device, bytes);
    if (*buf == nil) {
        *error = [NSString stringWithFormat:@"cannot allocate a GPU buffer of %lld bytes", (long long)bytes];
        return NO;
    }
    *data = [[MPSGraphTensorData alloc] initWithMTLBuffer:*buf shape:shape dataType:type];
    return YES;
}

/* The feeds of graph G with the parameters (and moments) of set s. */
- (MPSGraphTensorDataDictionary*)feedsOf:(MPSGPTGraph*)G set:(int)s {
    NSMutableDictionary<MPSGraphTensor*, MPSGraphTensorData*>* f = [NSMutableDictionary dictionary];
    for (int32_t i = 0; i < _K; i++) {
        f[G.params[(NSUInteger)i]] = _pData[s][(NSUInteger)i];
        if (G.kind == MPSGPTGraphTrain) {
            f[G.m[(NSUInteger)i]] = _mData[s][(NSUInteger)i];
            f[G.v[(NSUInteger)i]] = _vData[s][(NSUInteger)i];
        }
    }
    f[G.tokens] = _tokensData;
    f[G.targets] = _targetsData;
    f[G.targetMask] = _maskData;
    f[G.hp] = _hpData;
    return f;
}

- (BOOL)buildGraphsWithError:(NSString**)error {
    NSString* why = nil;
    _train = [MPSGPTGraph graphWithKind:MPSGPTGraphTrain spec:_spec error:&why];
    if (_train == nil) {
        *error = [NSString stringWithFormat:@"building the training graph failed: %@", why];
        return NO;
    }
    _eval = [MPSGPTGraph graphWithKind:MPSGPTGraphEval spec:_spec error:&why];
    if (_eval == nil) {
        *error = [NSString stringWithFormat:@"building the evaluation graph failed: %@", why];
        return NO;
    }
    for (int s = 0; s < 2; s++) {
        _trainFeeds[s] = [self feedsOf:_train set:s];
        _evalFeeds[s] = [self feedsOf:_eval set:s];
        NSMutableDictionary<MPSGraphTensor*, MPSGraphTensorData*>* r = [NSMutableDictionary dictionary];
        for (int32_t i = 0; i < _K; i++) {
            r[_train.paramsOut[(NSUInteger)i]] = _pData[1 - s][(NSUInteger)i];
            r[_train.mOut[(NSUInteger)i]] = _mData[1 - s][(NSUInteger)i];
            r[_train.vOut[(NSUInteger)i]] = _vData[1 - s][(NSUInteger)i];
        }
        r[_train.loss] = _lossData;
        r[(MPSGraphTensor*)_train.gradNorm] = _normData;
        r[(MPSGraphTensor*)_train.applied] = _appliedData;
        _trainResults[s] = r;
    }
    _evalResults = @{_eval.loss : _lossData};
    return YES;
}

- (nullable instancetype)initWithSpec:(const gpt_spec*)spec error:(NSString**)error {
    if ((self = [super init]) == nil) return nil;
    const gpt_cfg* cfg = &spec->cfg;
    const int32_t B = spec->B;
    _spec = spec;
    _N = (int64_t)B * cfg->T;
    _K = (int32_t)spec->n_tensors;
    _layout = spec->tensors;
    _P = spec->n_params;

    _device = MTLCreateSystemDefaultDevice();
    if (_device == nil) {
        *error = @"no Metal device: MTLCreateSystemDefaultDevice() returned nil";
        return nil;
    }
    if (!MPSSupportsMTLDevice(_device)) {
        *error = [NSString stringWithFormat:@"Metal device %@ is not supported by Metal Performance Shaders", _device.name];
        return nil;
    }
    /* A virtual machine's paravirtual device passes the checks above and then fails or
     * aborts in its first allocations (as PyTorch found, which skips such devices the same
     * way); every Apple silicon and Metal-capable Intel GPU is of the Mac2 family. */
    if (![_device supportsFamily:MTLGPUFamilyMac2]) {
        *error = [NSString stringWithFormat:@"Metal device %@ is not of the Mac2 GPU family (a virtual machine's "
                                            @"paravirtual device?): MPSGraph needs a real GPU",
                                            _device.name];
        return nil;
    }
    _queue = [_device newCommandQueue];
    if (_queue == nil) {
        *error = @"cannot create a Metal command queue";
        return nil;
    }
    for (int s = 0; s < 2; s++) {
        if (![self allocateSet:&_pBuf[s] data:&_pData[s] error:error]) return nil;
        if (![self allocateSet:&_mBuf[s] data:&_mData[s] error:error]) return nil;
        if (![self allocateSet:&_vBuf[s] data:&_vData[s] error:error]) return nil;
    }
    const int64_t N = _N;
    if (![self allocateSmall:&_tokens data:&_tokensData bytes:N * 4 shape:@[ @(N) ] type:MPSDataTypeInt32 error:error] ||
        ![self allocateSmall:&_targets data:&_targetsData bytes:N * 4 shape:@[ @(N) ] type:MPSDataTypeInt32 error:error] ||
        ![self allocateSmall:&_mask data:&_maskData bytes:N * 4 shape:@[ @(N), @1 ] type:MPSDataTypeFloat32 error:error] ||
        ![self allocateSmall:&_hp data:&_hpData bytes:MPS_HP_LEN * 4 shape:@[ @(MPS_HP_LEN) ] type:MPSDataTypeFloat32 error:error] ||
        ![self allocateSmall:&_loss data:&_lossData bytes:4 shape:@[ @1 ] type:MPSDataTypeFloat32 error:error] ||
        ![self allocateSmall:&_norm data:&_normData bytes:4 shape:@[ @1 ] type:MPSDataTypeFloat32 error:error] ||
        ![self allocateSmall:&_applied data:&_appliedData bytes:4 shape:@[ @1 ] type:MPSDataTypeFloat32 error:error])
        return nil;

    if (![self buildGraphsWithError:error]) return nil;
    _profile = spec->opt.profile == 1;
    return self;
}

/* ---- parameters and optimizer state ---- */

static void ToDevice(NSArray<id<MTLBuffer>>* bufs, const gpt_tensor* layout, int32_t K, const float* src) {
    for (int32_t i = 0; i < K; i++)
        if (src != NULL)
            memcpy(bufs[(NSUInteger)i].contents, src + layout[i].offset, (size_t)layout[i].size * sizeof(float));
        else
            memset(bufs[(NSUInteger)i].contents, 0, (size_t)layout[i].size * sizeof(float));
}

static void ToHost(NSArray<id<MTLBuffer>>* bufs, const gpt_tensor* layout, int32_t K, float* dst) {
    for (int32_t i = 0; i < K; i++)
        memcpy(dst + layout[i].offset, bufs[(NSUInteger)i].contents, (size_t)layout[i].size * sizeof(float));
}

- (void)addTime:(int)slot since:(double)t0 {
    if (_profile) _profSeconds[slot] += now_seconds() - t0;
}

- (int32_t)setParams:(const float*)src {
    const double t0 = now_seconds();
    ToDevice(_pBuf[_cur], _layout, _K, src);
    [self addTime:PROF_HOST since:t0];
    return 0;
}

- (int32_t)getParams:(float*)dst {
    const double t0 = now_seconds();
    ToHost(_pBuf[_cur], _layout, _K, dst);
    [self addTime:PROF_HOST since:t0];
    return 0;
}

/* m, v NULL: a reset (gpt.c checked that both or neither are given). */
- (int32_t)setOptM:(const float*)m v:(const float*)v step:(int64_t)step {
    ToDevice(_mBuf[_cur], _layout, _K, m);
    ToDevice(_vBuf[_cur], _layout, _K, v);
    _step = step;
    return 0;
}

- (int32_t)getOptM:(float*)m v:(float*)v step:(int64_t*)step {
    if (m != NULL) {
        ToHost(_mBuf[_cur], _layout, _K, m);
        ToHost(_vBuf[_cur], _layout, _K, v);
    }
    *step = _step;
    return 0;
}

/* Floats [offset, offset + count) of the flat layout (which: GPT_STATE_*) to dst, or from
 * src when dst is NULL, across the per-tensor buffers the range overlaps. */
- (int32_t)copyState:(int32_t)which offset:(int64_t)offset count:(int64_t)count to:(float*)dst from:(const float*)src {
    NSArray<id<MTLBuffer>>* bufs = which == GPT_STATE_PARAMS ? _pBuf[_cur] : which == GPT_STATE_M ? _mBuf[_cur] : _vBuf[_cur];
    const int64_t end = offset + count;
    for (int32_t i = 0; i < _K; i++) {
        const int64_t a = MAX(offset, _layout[i].offset), b = MIN(end, _layout[i].offset + _layout[i].size);
        if (a >= b) continue;
        float* dev = (float*)bufs[(NSUInteger)i].contents + (a - _layout[i].offset);
        if (dst != NULL) memcpy(dst + (a - offset), dev, (size_t)(b - a) * sizeof(float));
        else memcpy(dev, src + (a - offset), (size_t)(b - a) * sizeof(float));
    }
    return 0;
}

/* ---- steps ---- */

/* Copies x and y (ids checked by gpt.c) into the input buffers, -100 targets as (id 0,
 * mask 0); returns the number of counted targets. */
- (int64_t)loadTokens:(const int32_t*)x targets:(const int32_t*)y {
    int32_t* tok = (int32_t*)_tokens.contents;
    int32_t* tgt = (int32_t*)_targets.contents;
    float* mask = (float*)_mask.contents;
    int64_t n = 0;
    for (int64_t i = 0; i < _N; i++) {
        const int counted = y[i] != -100;
        tok[i] = x[i];
        tgt[i] = counted ? y[i] : 0;
        mask[i] = counted ? 1.0f : 0.0f;
        n += counted;
    }
    return n;
}

- (int32_t)run:(MPSGPTGraph*)G
         feeds:(MPSGraphTensorDataDictionary*)feeds
       results:(MPSGraphTensorDataDictionary*)results
          what:(const char*)what {
    return [self runGraph:G.graph feeds:feeds results:results what:what];
}

- (int32_t)runGraph:(MPSGraph*)graph
              feeds:(MPSGraphTensorDataDictionary*)feeds
            results:(MPSGraphTensorDataDictionary*)results
               what:(const char*)what {
    @try {
        [graph runWithMTLCommandQueue:_queue feeds:feeds targetOperations:nil resultsDictionary:results];
    } @catch (NSException* e) {
        return [self fail:"%s: MPSGraph raised %s: %s", what, e.name.UTF8String, e.reason.UTF8String];
    }
    return 0;
}

- (int32_t)trainX:(const int32_t*)x y:(const int32_t*)y hparams:(const gpt_hparams*)h result:(gpt_step_result*)out {
    const double t0 = now_seconds();
    const int64_t count = [self loadTokens:x targets:y];
    out->n_targets = (int32_t)count;
    if (count == 0) {
        /* nothing to learn from: loss 0, no update (as the CPU backend) */
        out->loss = 0.0f;
        out->grad_norm = 0.0f;
        out->applied = 0;
        return 0;
    }
    /* torch.optim.AdamW's scalars, in double as its Python code computes them */
    const double lr = h->lr, b1 = h->beta1, b2 = h->beta2, t = (double)(_step + 1);
    const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
    float* hp = (float*)_hp.contents;
    hp[MPS_HP_COUNT] = (float)count;
    hp[MPS_HP_DECAY] = (float)(1.0 - lr * (double)h->weight_decay);
    hp[MPS_HP_BETA1] = h->beta1;
    hp[MPS_HP_ONE_MINUS_BETA1] = (float)(1.0 - b1);
    hp[MPS_HP_BETA2] = h->beta2;
    hp[MPS_HP_ONE_MINUS_BETA2] = (float)(1.0 - b2);
    hp[MPS_HP_STEP_SIZE] = (float)(lr / bc1);
    hp[MPS_HP_BC2_SQRT] = (float)sqrt(bc2);
    hp[MPS_HP_EPS] = h->eps;
    hp[MPS_HP_CLIP] = h->grad_clip;
    if ([self run:_train feeds:_trainFeeds[_cur] results:_trainResults[_cur] what:"gpt_train_step"] != 0) return 1;
    const float loss = *(const float*)_loss.contents;
    const float norm = *(const float*)_norm.contents;
    const float flag = *(const float*)_applied.contents;
    /* the graph kept the old values in the other set when not finite; the host's own
     * check decides whether that set becomes current */
    const int applied = flag > 0.5f && isfinite(loss) && isfinite(norm);
    if (applied) {
        _cur = 1 - _cur;
        _step++;
    }
    out->loss = loss;
    out->grad_norm = norm;
    out->applied = applied;
    [self addTime:PROF_TRAIN since:t0];
    return 0;
}

- (int32_t)evalX:(const int32_t*)x y:(const int32_t*)y loss:(float*)loss {
    const double t0 = now_seconds();
    const int64_t count = [self loadTokens:x targets:y];
    if (count == 0) {
        *loss = 0.0f;
        return 0;
    }
    ((float*)_hp.contents)[MPS_HP_COUNT] = (float)count;
    if ([self run:_eval feeds:_evalFeeds[_cur] results:_evalResults what:"gpt_eval_loss"] != 0) return 1;
    *loss = *(const float*)_loss.contents;
    [self addTime:PROF_EVAL since:t0];
    return 0;
}

/* The gradient graph and its buffers, made on first use (a test and debugging path). */
- (int32_t)prepareGrads {
    if (_gradGraph != nil) return 0;
    NSString* why = nil;
    MPSGPTGraph* G = [MPSGPTGraph graphWithKind:MPSGPTGraphGrads spec:_spec error:&why];
    if (G == nil) return [self fail:"gpt_compute_grads: building the gradient graph failed: %s", why.UTF8String];
    NSArray<id<MTLBuffer>>* bufs = nil;
    NSArray<MPSGraphTensorData*>* datas = nil;
    NSString* err = nil;
    if (![self allocateSet:&bufs data:&datas error:&err]) return [self fail:"gpt_compute_grads: %s", err.UTF8String];
    NSMutableDictionary<MPSGraphTensor*, MPSGraphTensorData*>* r = [NSMutableDictionary dictionary];
    for (int32_t i = 0; i < _K; i++) r[((NSArray<MPSGraphTensor*>*)G.grads)[(NSUInteger)i]] = datas[(NSUInteger)i];
    r[G.loss] = _lossData;
    _gradFeeds[0] = [self feedsOf:G set:0];
    _gradFeeds[1] = [self feedsOf:G set:1];
    _gradResults = r;
    _gradBuf = bufs;
    _gradData = datas;
    _gradGraph = G;
    return 0;
}

- (int32_t)gradsX:(const int32_t*)x y:(const int32_t*)y loss:(float*)loss grads:(float*)grads {
    const double t0 = now_seconds();
    const int64_t count = [self loadTokens:x targets:y];
    if (count == 0) {
        *loss = 0.0f;
        if (grads != NULL) memset(grads, 0, (size_t)_P * sizeof(float));
        return 0;
    }
    if ([self prepareGrads] != 0) return 1;
    ((float*)_hp.contents)[MPS_HP_COUNT] = (float)count;
    if ([self run:_gradGraph feeds:_gradFeeds[_cur] results:_gradResults what:"gpt_compute_grads"] != 0) return 1;
    *loss = *(const float*)_loss.contents;
    if (grads != NULL) ToHost(_gradBuf, _layout, _K, grads);
    [self addTime:PROF_GRADS since:t0];
    return 0;
}

/* ---- incremental decoding ---- */

/* n buffers of floats floats each, with tensor data of shape. */
- (BOOL)allocateRows:(NSArray<id<MTLBuffer>>* __strong*)bufs
                data:(NSArray<MPSGraphTensorData*>* __strong*)datas
               count:(int32_t)n
              floats:(int64_t)floats
               shape:(MPSShape*)shape
               error:(NSString**)error {
    NSMutableArray<id<MTLBuffer>>* b = [NSMutableArray array];
    NSMutableArray<MPSGraphTensorData*>* d = [NSMutableArray array];
    for (int32_t i = 0; i < n; i++) {
        id<MTLBuffer> buf = nil;
        MPSGraphTensorData* data = nil;
        if (![self allocateSmall:&buf data:&data bytes:floats * 4 shape:shape type:MPSDataTypeFloat32 error:error]) return NO;
        [b addObject:buf];
        [d addObject:data];
    }
    *bufs = b;
    *datas = d;
    return YES;
}

- (int32_t)prepareDecode {
    if (_dStep != nil) return 0;
    const gpt_cfg* cfg = &_spec->cfg;
    const int32_t T = cfg->T, C = cfg->C, V = cfg->V, L = cfg->L;
    NSString* why = nil;
    MPSGPTDecodeGraph* prompt = [MPSGPTDecodeGraph graphWithKind:MPSGPTDecodePrompt spec:_spec error:&why];
    MPSGPTDecodeGraph* step = prompt ? [MPSGPTDecodeGraph graphWithKind:MPSGPTDecodeStep spec:_spec error:&why] : nil;
    if (step == nil) return [self fail:"gpt_decode_begin: building the decoding graphs failed: %s", why.UTF8String];
    NSString* err = nil;
    if (![self allocateRows:&_kCache data:&_kCacheData count:L floats:(int64_t)T * C shape:@[ @(T), @(C) ] error:&err] ||
        ![self allocateRows:&_vCache data:&_vCacheData count:L floats:(int64_t)T * C shape:@[ @(T), @(C) ] error:&err] ||
        ![self allocateRows:&_kRow data:&_kRowData count:L floats:C shape:@[ @1, @(C) ] error:&err] ||
        ![self allocateRows:&_vRow data:&_vRowData count:L floats:C shape:@[ @1, @(C) ] error:&err] ||
        ![self allocateSmall:&_dTokens data:&_dTokensData bytes:(int64_t)T * 4 shape:@[ @(T) ] type:MPSDataTypeInt32 error:&err] ||
        ![self allocateSmall:&_dToken data:&_dTokenData bytes:4 shape:@[ @1 ] type:MPSDataTypeInt32 error:&err] ||
        ![self allocateSmall:&_dPos data:&_dPosData bytes:4 shape:@[ @1 ] type:MPSDataTypeInt32 error:&err] ||
        ![self allocateSmall:&_dOneHot data:&_dOneHotData bytes:(int64_t)T * 4 shape:@[ @(T), @1 ] type:MPSDataTypeFloat32 error:&err] ||
        ![self allocateSmall:&_dMask data:&_dMaskData bytes:(int64_t)T * 4 shape:@[ @(T) ] type:MPSDataTypeFloat32 error:&err] ||
        ![self allocateSmall:&_dLogitsAll data:&_dLogitsAllData bytes:(int64_t)T * V * 4 shape:@[ @(T), @(V) ] type:MPSDataTypeFloat32 error:&err] ||
        ![self allocateSmall:&_dLogits data:&_dLogitsData bytes:(int64_t)V * 4 shape:@[ @1, @(V) ] type:MPSDataTypeFloat32 error:&err])
        return [self fail:"gpt_decode_begin: %s", err.UTF8String];
    for (int s = 0; s < 2; s++) {
        NSMutableDictionary<MPSGraphTensor*, MPSGraphTensorData*>* fp = [NSMutableDictionary dictionary];
        NSMutableDictionary<MPSGraphTensor*, MPSGraphTensorData*>* fs = [NSMutableDictionary dictionary];
        for (int32_t i = 0; i < _K; i++) {
            fp[prompt.params[(NSUInteger)i]] = _pData[s][(NSUInteger)i];
            fs[step.params[(NSUInteger)i]] = _pData[s][(NSUInteger)i];
        }
        fp[prompt.tokens] = _dTokensData;
        fs[step.tokens] = _dTokenData;
        fs[(MPSGraphTensor*)step.position] = _dPosData;
        fs[(MPSGraphTensor*)step.oneHot] = _dOneHotData;
        fs[(MPSGraphTensor*)step.mask] = _dMaskData;
        for (int32_t l = 0; l < L; l++) {
            fs[((NSArray<MPSGraphTensor*>*)step.kCache)[(NSUInteger)l]] = _kCacheData[(NSUInteger)l];
            fs[((NSArray<MPSGraphTensor*>*)step.vCache)[(NSUInteger)l]] = _vCacheData[(NSUInteger)l];
        }
        _dPromptFeeds[s] = fp;
        _dStepFeeds[s] = fs;
    }
    NSMutableDictionary<MPSGraphTensor*, MPSGraphTensorData*>* rp = [NSMutableDictionary dictionary];
    NSMutableDictionary<MPSGraphTensor*, MPSGraphTensorData*>* rs = [NSMutableDictionary dictionary];
    rp[prompt.logits] = _dLogitsAllData;
    rs[step.logits] = _dLogitsData;
    for (int32_t l = 0; l < L; l++) {
        rp[prompt.kOut[(NSUInteger)l]] = _kCacheData[(NSUInteger)l]; /* the prompt's keys and values are the cache */
        rp[prompt.vOut[(NSUInteger)l]] = _vCacheData[(NSUInteger)l];
        rs[step.kOut[(NSUInteger)l]] = _kRowData[(NSUInteger)l];
        rs[step.vOut[(NSUInteger)l]] = _vRowData[(NSUInteger)l];
    }
    _dPromptResults = rp;
    _dStepResults = rs;
    _dPrompt = prompt;
    _dStep = step;
    return 0;
}

- (int32_t)decodeBegin:(const int32_t*)tokens count:(int32_t)n logits:(float*)out all:(int32_t)all {
    if ([self prepareDecode] != 0) return 1;
    const int32_t T = _spec->cfg.T, V = _spec->cfg.V;
    int32_t* tok = (int32_t*)_dTokens.contents;
    for (int32_t i = 0; i < T; i++) tok[i] = i < n ? tokens[i] : 0; /* padding: the causal mask hides it */
    if ([self runGraph:_dPrompt.graph feeds:_dPromptFeeds[_cur] results:_dPromptResults what:"gpt_decode_begin"] != 0) return 1;
    const float* logits = (const float*)_dLogitsAll.contents;
    if (all) memcpy(out, logits, (size_t)n * (size_t)V * sizeof(float));
    else memcpy(out, logits + (size_t)(n - 1) * (size_t)V, (size_t)V * sizeof(float));
    return 0;
}

- (int32_t)decodeStep:(int32_t)token position:(int32_t)pos logits:(float*)out {
    const int32_t T = _spec->cfg.T, C = _spec->cfg.C, V = _spec->cfg.V;
    *(int32_t*)_dToken.contents = token;
    *(int32_t*)_dPos.contents = pos;
    float* onehot = (float*)_dOneHot.contents;
    float* mask = (float*)_dMask.contents;
    for (int32_t j = 0; j < T; j++) {
        onehot[j] = j == pos ? 1.0f : 0.0f;
        mask[j] = j <= pos ? 0.0f : -1e9f; /* as CausalMask: finite, exp() of it is 0 */
    }
    if ([self runGraph:_dStep.graph feeds:_dStepFeeds[_cur] results:_dStepResults what:"gpt_decode_step"] != 0) return 1;
    for (int32_t l = 0; l < _spec->cfg.L; l++) {
        memcpy((float*)_kCache[(NSUInteger)l].contents + (size_t)pos * (size_t)C, _kRow[(NSUInteger)l].contents, (size_t)C * sizeof(float));
        memcpy((float*)_vCache[(NSUInteger)l].contents + (size_t)pos * (size_t)C, _vRow[(NSUInteger)l].contents, (size_t)C * sizeof(float));
    }
    memcpy(out, _dLogits.contents, (size_t)V * sizeof(float));
    return 0;
}

- (int32_t)profileReport:(char*)buf length:(int32_t)len {
    if (!_profile) return 0;
    int32_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < PROF_N; i++) {
        if (_profSeconds[i] == 0.0) continue;
        char line[96];
        const int n = snprintf(line, sizeof line, "%s %.6f\n", kProfNames[i], _profSeconds[i]);
        if (n < 0 || used + n >= len) break; /* whole lines only */
        memcpy(buf + used, line, (size_t)n + 1);
        used += n;
        _profSeconds[i] = 0.0;
    }
    return used;
}

@end

/* ---- the backend table of native/backend.h ---- */

static GPTMPSModel* Model(void* self) {
    return (__bridge GPTMPSModel*)self;
}

/* status 0 passes through; otherwise the model's message goes into err. */
static int Status(int32_t status, void* self, char* err, size_t errlen) {
    if (status != 0) gpt_errf(err, errlen, "%s", [Model(self) lastError]);
    return status != 0;
}

static int mps_available(void) {
    @autoreleasepool {
        id<MTLDevice> device = MTLCreateSystemDefaultDevice();
        return device != nil && MPSSupportsMTLDevice(device) ? 1 : 0;
    }
}

/* An MPSNDArray, which MPSGraph makes for every tensor, aborts the process beyond 2^31
 * elements ("product of dimension sizes > 2**31") or 2^32 bytes ("total bytes of
 * NDArray > 2**32"); a Metal buffer cannot exceed maxBufferLength. */
static int mps_limits(gpt_limits* out, char* err, size_t errlen) {
    @autoreleasepool {
        id<MTLDevice> device = MTLCreateSystemDefaultDevice();
        if (device == nil) {
            gpt_errf(err, errlen, "mps: no Metal device: MTLCreateSystemDefaultDevice() returned nil");
            return 1;
        }
        out->max_tensor_elements = INT32_MAX;
        out->max_tensor_bytes = (int64_t)1 << 32;
        out->max_buffer_bytes = (int64_t)device.maxBufferLength;
        return 0;
    }
}

static void* mps_create(const gpt_spec* spec, char* err, size_t errlen) {
    @autoreleasepool {
        NSString* msg = nil;
        GPTMPSModel* m = nil;
        @try {
            m = [[GPTMPSModel alloc] initWithSpec:spec error:&msg];
        } @catch (NSException* e) {
            m = nil;
            msg = [NSString stringWithFormat:@"MPSGraph raised %@: %@", e.name, e.reason];
        }
        if (m == nil) {
            gpt_errf(err, errlen, "mps: %s", (msg ?: @"failed").UTF8String);
            return NULL;
        }
        return (void*)CFBridgingRetain(m);
    }
}

static void mps_destroy(void* self) {
    @autoreleasepool {
        CFBridgingRelease(self);
    }
}

/* The GPU schedules its own work: any thread count is accepted and ignored. */
static int mps_set_threads(void* self, int32_t n, char* err, size_t errlen) {
    (void)self, (void)n, (void)err, (void)errlen;
    return 0;
}

static int mps_set_params(void* self, const float* src, char* err, size_t errlen) {
    @autoreleasepool {
        return Status([Model(self) setParams:src], self, err, errlen);
    }
}

static int mps_get_params(void* self, float* dst, char* err, size_t errlen) {
    @autoreleasepool {
        return Status([Model(self) getParams:dst], self, err, errlen);
    }
}

static int mps_set_opt_state(void* self, const float* m, const float* v, int64_t step, char* err, size_t errlen) {
    @autoreleasepool {
        return Status([Model(self) setOptM:m v:v step:step], self, err, errlen);
    }
}

static int mps_get_opt_state(void* self, float* m, float* v, int64_t* step, char* err, size_t errlen) {
    @autoreleasepool {
        return Status([Model(self) getOptM:m v:v step:step], self, err, errlen);
    }
}

static int mps_read_state(void* self, int32_t which, int64_t offset, int64_t count, float* dst, char* err,
                          size_t errlen) {
    @autoreleasepool {
        return Status([Model(self) copyState:which offset:offset count:count to:dst from:NULL], self, err, errlen);
    }
}

static int mps_write_state(void* self, int32_t which, int64_t offset, int64_t count, const float* src, char* err,
                           size_t errlen) {
    @autoreleasepool {
        return Status([Model(self) copyState:which offset:offset count:count to:NULL from:src], self, err, errlen);
    }
}

static int mps_train_step(void* self, const int32_t* x, const int32_t* y, const gpt_hparams* h,
                          gpt_step_result* out, char* err, size_t errlen) {
    @autoreleasepool {
        return Status([Model(self) trainX:x y:y hparams:h result:out], self, err, errlen);
    }
}

static int mps_eval_loss(void* self, const int32_t* x, const int32_t* y, float* loss, char* err, size_t errlen) {
    @autoreleasepool {
        return Status([Model(self) evalX:x y:y loss:loss], self, err, errlen);
    }
}

static int mps_compute_grads(void* self, const int32_t* x, const int32_t* y, float* loss, float* grads, char* err,
                             size_t errlen) {
    @autoreleasepool {
        return Status([Model(self) gradsX:x y:y loss:loss grads:grads], self, err, errlen);
    }
}

static int32_t mps_profile_report(void* self, char* buf, int32_t buflen) {
    @autoreleasepool {
        return [Model(self) profileReport:buf length:buflen];
    }
}

static int mps_decode_begin(void* self, const int32_t* tokens, int32_t n, float* logits, int32_t all, char* err,
                            size_t errlen) {
    @autoreleasepool {
        return Status([Model(self) decodeBegin:tokens count:n logits:logits all:all], self, err, errlen);
    }
}

static int mps_decode_step(void* self, int32_t token, int32_t pos, float* logits, char* err, size_t errlen) {
    @autoreleasepool {
        return Status([Model(self) decodeStep:token position:pos logits:logits], self, err, errlen);
    }
}

const gpt_backend gpt_mps_backend = {
    .name = "mps",
    .available = mps_available,
    .limits = mps_limits,
    .create = mps_create,
    .destroy = mps_destroy,
    .set_threads = mps_set_threads,
    .set_params = mps_set_params,
    .get_params = mps_get_params,
    .set_opt_state = mps_set_opt_state,
    .get_opt_state = mps_get_opt_state,
    .read_state = mps_read_state,
    .write_state = mps_write_state,
    .train_step = mps_train_step,
    .eval_loss = mps_eval_loss,
    .compute_grads = mps_compute_grads,
    .profile_report = mps_profile_report,
    .decode_begin = mps_decode_begin,
    .decode_step = mps_decode_step,
};
