/*
 * kernels.h: the CPU kernels, forward and backward of each op side by side (internal:
 * used by the CPU backend and by tests/native/gradcheck.c, not part of gpt.h).
 *
 * Conventions: row-major float32; N = number of rows (B*T); Linear weights are
 * (OC, IC) as torch nn.Linear, out = inp W^T + bias. Every kernel takes the pool
 * it runs on (NULL: the calling thread only). Work is split statically, reductions
 * are summed in a fixed order: results are bit-identical run to run for a fixed
 * thread count. "Overwrites" and "adds to" below say what happens to an output.
 *
 * Implemented by family: kernels_matmul.c (the linear layers, their fused bias,
 * residual and GELU, the GELU alone), kernels_attention.c (attention), kernels_misc.c
 * (embedding, LayerNorm, residual, softmax + cross-entropy, row gather, norm, AdamW).
 */
#ifndef GPT_KERNELS_H
#define GPT_KERNELS_H

#include <stdint.h>

#include "pool.h"

#define GPT_LN_EPS 1e-5f
#define GPT_IGNORE_INDEX (-100)

/* Threads the BLAS itself may use for one call (1 when the kernels split GEMMs over
 * their pool, see blas.h). Process-wide; call it when the pool size changes. */
void gpt_blas_set_threads(int n);

/* ---- embedding ---- */
/* out(B,T,C) = wte[x[b,t]] + wpe[t] (overwrites). */
void k_encoder_fwd(gpt_pool* p, float* out, const int32_t* x, const float* wte, const float* wpe,
                   int B, int T, int C);
/* dwte[x[b,t]] += dout[b,t]; dwpe[t] += sum_b dout[b,t] (adds to both). */
void k_encoder_bwd(gpt_pool* p, float* dwte, float* dwpe, const float* dout, const int32_t* x,
                   int B, int T, int C);

/* ---- layernorm over the last dim C, eps 1e-5 ---- */
/* out = (inp - mean) * rstd * w + b; saves mean(N), rstd(N) (overwrites). */
void k_layernorm_fwd(gpt_pool* p, float* out, float* mean, float* rstd, const float* inp,
                     const float* w, const float* b, int64_t N, int C);
/* out = the output of k_layernorm_fwd again (bit for bit) from its saved mean, rstd:
 * the backward recomputes LayerNorm outputs instead of keeping them (overwrites). */
void k_layernorm_apply(gpt_pool* p, float* out, const float* inp, const float* w, const float* b,
                       const float* mean, const float* rstd, int64_t N, int C);
/* Floats of scratch k_layernorm_bwd needs. */
int64_t k_layernorm_bwd_scratch(int64_t N, int C);
/* dinp += d/dinp; dw, db overwritten with the sums over rows. */
void k_layernorm_bwd(gpt_pool* p, float* dinp, float* dw, float* db, float* scratch,
                     const float* dout, const float* inp, const float* w, const float* mean,
                     const float* rstd, int64_t N, int C);

/* ---- linear layers, every product through sgemm ---- */
/* out(N,OC) = inp(N,IC) W^T + bias (bias may be NULL) (overwrites). */
void k_matmul_fwd(gpt_pool* p, float* out, const float* inp, const float* W, const float* bias,
                  int64_t N, int IC, int OC);
/* pre = inp W^T + bias, out = gelu(pre) (overwrites both). */
void k_matmul_gelu_fwd(gpt_pool* p, float* pre, float* out, const float* inp, const float* W,
                       const float* bias, int64_t N, int IC, int OC);
/* As k_matmul_gelu_fwd, but pre then holds gelu'(pre): all the backward needs of it when
 * out is kept (k_matmul_bwd_gelu_grad multiplies by it instead of evaluating gelu'). */
void k_matmul_gelu_fwd_keep_grad(gpt_pool* p, float* pre, float* out, const float* inp, const float* W,
                                 const float* bias, int64_t N, int IC, int OC);
/* out = res + inp W^T + bias (overwrites; out may not alias res). */
void k_matmul_residual_fwd(gpt_pool* p, float* out, const float* res, const float* inp,
                           const float* W, const float* bias, int64_t N, int IC, int OC);
/* dinp(N,IC) = dout W; dW(OC,IC) = dout^T inp; dbias = column sums of dout (all
 * overwritten; dbias may be NULL). If gelu_pre is not NULL, the layer's input was
 * gelu(gelu_pre) and dinp receives the gradient w.r.t. gelu_pre instead. */
void k_matmul_bwd(gpt_pool* p, float* dinp, float* dW, float* dbias, const float* dout,
                  const float* inp, const float* W, const float* gelu_pre, int64_t N, int IC, int OC);
/* As k_matmul_bwd with gelu_pre, from gelu_grad = gelu'(gelu_pre) saved by
 * k_matmul_gelu_fwd_keep_grad (the same bits). */
void k_matmul_bwd_gelu_grad(gpt_pool* p, float* dinp, float* dW, float* dbias, const float* dout,
                            const float* inp, const float* W, const float* gelu_grad, int64_t N, int IC, int OC);
/* As k_matmul_bwd without bias or GELU, except that dW += dout^T inp (a layer applied to
 * rows in chunks: the LM head). dinp is still overwritten. */
void k_matmul_bwd_add(gpt_pool* p, float* dinp, float* dW, const float* dout, const float* inp,
                      const float* W, int64_t N, int IC, int OC);

/* C(M,N) = alpha op(A) op(B) + beta C, row-major (op: transposed when ta / tb), on the
 * calling thread: one GEMM of a kernel that splits its own work (attention's heads). */
void k_sgemm(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
             const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

/* ---- causal self-attention, H heads of hs = C/H, scale 1/sqrt(hs) ---- */
/* Floats of scratch either attention kernel needs with nthreads threads (two T x T
 * tiles and two packed heads per thread). */
int64_t k_attention_scratch(int T, int C, int nthreads);
/* qkv(B,T,3C) holds q, k, v side by side; out(B,T,C) = heads of softmax(q k^T) v
 * (overwrites); stats(B,H,T,2) saves the max and 1/sum of every softmax row; att
 * (B,H,T,T) saves the probabilities (lower triangle; the rest is not read), or is NULL
 * (they only pass through the scratch). */
void k_attention_fwd(gpt_pool* p, float* out, float* att, float* stats, float* scratch, const float* qkv,
                     int B, int T, int C, int H);
/* dqkv(B,T,3C) overwritten with the gradient w.r.t. qkv. With att NULL the probabilities
 * are recomputed from qkv and the forward's stats, bit for bit. */
void k_attention_bwd(gpt_pool* p, float* dqkv, float* scratch, const float* dout, const float* qkv,
                     const float* att, const float* stats, int B, int T, int C, int H);

/* ---- GELU, tanh approximation ---- */
void k_gelu_fwd(gpt_pool* p, float* out, const float* inp, int64_t n);
/* dinp = gelu'(inp) * dout (overwrites). */
void k_gelu_bwd(gpt_pool* p, float* dinp, const float* inp, const float* dout, int64_t n);

/* ---- residual ---- */
/* out = a + b elementwise (out may be a or b: also sums the lanes' gradient buffers). */
void k_residual_fwd(gpt_pool* p, float* out, const float* a, const float* b, int64_t n);
/* da += dout; db += dout. */
void k_residual_bwd(gpt_pool* p, float* da, float* db, const float* dout, int64_t n);

/* ---- fused softmax + cross-entropy over rows of V logits ---- */
/* losses[i] = -log softmax(logits[i])[y[i]], or 0 where y[i] == -100 (overwrites).
 * With grad != 0 each row of logits is overwritten by d(dscale * sum_i losses[i]) /
 * d logits[i] = dscale * (softmax - onehot(y)), zero for ignored rows. */
void k_softmax_ce(gpt_pool* p, float* logits, float* losses, const int32_t* y, int64_t N, int V,
                  float dscale, int grad);

/* ---- row selection (the LM head runs on the rows with a counted target only) ---- */
/* dst[k] = src[rows[k]] for k < n (rows of C floats). */
void k_gather_rows(gpt_pool* p, float* dst, const float* src, const int32_t* rows, int64_t n, int C);

/* ---- optimizer ---- */
/* Floats... doubles of scratch k_sumsq needs for n values. */
int64_t k_sumsq_scratch(int64_t n);
/* sum of g[i]^2 in double, in fixed chunks: independent of the thread count. */
double k_sumsq(gpt_pool* p, const float* g, int64_t n, double* scratch);

typedef struct {
    int64_t begin, end; /* [begin, end) of the flat buffer */
    int decay;          /* weight decay applies */
} k_segment;

typedef struct {
    float gscale;        /* gradient multiplier (clipping), 1 for none */
    float decay_factor;  /* 1 - lr * weight_decay */
    float beta1, beta2;
    float step_size;     /* lr / (1 - beta1^t) */
    float bc2_sqrt;      /* sqrt(1 - beta2^t) */
    float eps;
} k_adamw_args;

/* torch.optim.AdamW (non-amsgrad) on p, m, v with gradient g over the segments
 * (which must tile [0, n) in order). */
void k_adamw(gpt_pool* p, float* param, float* m, float* v, const float* g, int64_t n,
             const k_segment* segs, int nsegs, const k_adamw_args* a);

#endif
