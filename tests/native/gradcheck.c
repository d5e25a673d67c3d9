/*
 * gradcheck.c: checks every backward kernel of native/cpu/kernels.h in isolation on tiny
 * shapes (odd sizes, so that vector tails, row splits over the threads, layernorm chunks
 * and attention blocks of 64 rows are all crossed), against a reference in double written
 * here from the formulas (LayerNorm eps 1e-5, GELU's tanh form, nanoGPT's attention).
 *
 * For a kernel out = f(inputs), the scalar L = sum(out * R) with a fixed random R has
 * dL/dout = R; the backward kernel gives dL/dinput, compared with central differences
 * (L(x+h) - L(x-h)) / 2h of the reference L in double (exact to ~1e-9, so the error measured
 * is the float kernel's own rounding). The kernel's forward is compared with the reference
 * too, so a kernel whose passes agree with each other but not with the maths (both with
 * another eps) fails. Attention, whose differences would cost ~15 G multiply-adds at
 * T = 133, is compared with the reference's chain-rule backward instead; that backward is
 * checked against the differences on the small cases.
 *
 * Error of a tensor = max |kernel - reference| / max |reference|. Each tolerance is about
 * 10x the error measured on the correct kernels (3 threads and 1, gcc and clang), so that a
 * real bug shows as a failure by a wide margin. Prints one line per check:
 * "<name> <error> <tolerance> PASS|FAIL", then exits 1 if any failed.
 *
 * Build (tests/native-gradcheck.test.ts does this):
 *   cc -O2 -std=c11 -Inative/cpu tests/native/gradcheck.c native/cpu/kernels_*.c native/cpu/sgemm_small.c native/cpu/pool.c \
 *      <libopenblas.a> -lm -lpthread
 */
#define _POSIX_C_SOURCE 200809L
#if defined(__APPLE__)
#define _DARWIN_C_SOURCE /* sysconf(_SC_NPROCESSORS_ONLN), and what Accelerate's headers need */
#endif
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "pool.h"

static gpt_pool* POOL;
static int FAILURES;
static int QUIET; /* report() counts but does not print */

/* The reference's LayerNorm eps: GPT-2's and torch.nn.LayerNorm's default, written
 * here rather than taken from kernels.h so that a changed GPT_LN_EPS fails. */
#define REF_LN_EPS 1e-5

/* ---- small helpers ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float urand(float lo, float hi) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return lo + (hi - lo) * (float)((rng_state >> 40) * (1.0 / 16777216.0));
}

static float* randv(int64_t n, float lo, float hi) {
    float* p = (float*)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) p[i] = urand(lo, hi);
    return p;
}

static float* zeros(int64_t n) { return (float*)calloc((size_t)(n > 0 ? n : 1), sizeof(float)); }
static double* dzeros(int64_t n) { return (double*)calloc((size_t)(n > 0 ? n : 1), sizeof(double)); }

/* The float values in double (the reference's inputs). */
static double* widen(const float* x, int64_t n) {
    double* d = dzeros(n);
    for (int64_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

/* gelu(x), tanh form (GPT-2's), in double */
static double ref_gelu(double x) { return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

/* One line of output; counts a failure. */
static void report(const char* name, double err, double tol, const char* note) {
    const int ok = err <= tol; /* NaN fails */
    if (!QUIET) printf("%-40s %.3e %.1e %s%s\n", name, err, tol, ok ? "PASS" : "FAIL", note);
    if (!ok) FAILURES++;
}

/* A forward closure: returns L = sum(out * R) at the current inputs. */
typedef double (*loss_fn)(void* ctx);

/* Compares the analytic gradient ana of an input (n values) with central differences of
 * the double reference L, x being the reference's copy of that input. */
static void check(const char* name, loss_fn f, void* ctx, double* x, const float* ana, int64_t n, double h, double tol) {
    double maxdiff = 0.0, maxref = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double saved = x[i];
        x[i] = saved + h;
        const double lp = f(ctx);
        x[i] = saved - h;
        const double lm = f(ctx);
        x[i] = saved;
        const double num = (lp - lm) / (2.0 * h);
        const double d = fabs(num - (double)ana[i]);
        if (!(d <= maxdiff)) maxdiff = d; /* NaN propagates */
        if (fabs(num) > maxref) maxref = fabs(num);
    }
    report(name, maxref > 0 ? maxdiff / maxref : NAN, tol, maxref > 0 ? "" : " (zero gradient)");
}

/* A float kernel's output against the double reference: max |got - ref| / max |ref|. */
static void check_values(const char* name, const float* got, const double* ref, int64_t n, double tol) {
    double maxdiff = 0.0, maxref = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double d = fabs((double)got[i] - ref[i]);
        if (!(d <= maxdiff)) maxdiff = d;
        if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
    }
    report(name, maxref > 0 ? maxdiff / maxref : maxdiff, tol, "");
}

/* Comparison of two float results (fused kernels vs their composition; recomputations). */
static void check_same(const char* name, const float* a, const float* b, int64_t n, double tol) {
    double maxdiff = 0.0, maxref = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= maxdiff)) maxdiff = d;
        if (fabs(b[i]) > maxref) maxref = fabs(b[i]);
    }
    report(name, maxref > 0 ? maxdiff / maxref : maxdiff, tol, "");
}

/* ---- embedding ---- */

typedef struct {
    int B, T, C, V;
    int32_t* x;
    double *wte, *wpe;
    float* R;
} enc_case;

static double enc_ref_loss(void* v) {
    enc_case* c = (enc_case*)v;
    double L = 0.0;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->T; t++) {
            const int64_t bt = (int64_t)b * c->T + t;
            for (int i = 0; i < c->C; i++)
                L += (c->wte[(int64_t)c->x[bt] * c->C + i] + c->wpe[(int64_t)t * c->C + i]) * c->R[bt * c->C + i];
        }
    return L;
}

static void test_encoder(void) {
    enc_case c = {.B = 3, .T = 5, .C = 21, .V = 7};
    const int64_t n = (int64_t)c.B * c.T;
    c.x = (int32_t*)malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) c.x[i] = (int32_t)(i * 5 % c.V); /* repeated ids */
    float* wte = randv((int64_t)c.V * c.C, -1, 1);
    float* wpe = randv((int64_t)c.T * c.C, -1, 1);
    c.wte = widen(wte, (int64_t)c.V * c.C);
    c.wpe = widen(wpe, (int64_t)c.T * c.C);
    c.R = randv(n * c.C, -1, 1);
    float* out = zeros(n * c.C);
    k_encoder_fwd(POOL, out, c.x, wte, wpe, c.B, c.T, c.C);
    double* ref = dzeros(n * c.C);
    for (int64_t bt = 0; bt < n; bt++)
        for (int i = 0; i < c.C; i++) ref[bt * c.C + i] = c.wte[(int64_t)c.x[bt] * c.C + i] + c.wpe[(bt % c.T) * c.C + i];
    check_values("encoder fwd vs double", out, ref, n * c.C, 6e-8); /* one float rounding */
    float* dwte = zeros((int64_t)c.V * c.C);
    float* dwpe = zeros((int64_t)c.T * c.C);
    k_encoder_bwd(POOL, dwte, dwpe, c.R, c.x, c.B, c.T, c.C);
    check("encoder dwte", enc_ref_loss, &c, c.wte, dwte, (int64_t)c.V * c.C, 1e-5, 3e-9);
    check("encoder dwpe", enc_ref_loss, &c, c.wpe, dwpe, (int64_t)c.T * c.C, 1e-5, 3e-9);
    free(c.x), free(wte), free(wpe), free(c.wte), free(c.wpe), free(c.R), free(out), free(ref), free(dwte), free(dwpe);
}

/* ---- layernorm ---- */

typedef struct {
    int64_t N;
    int C;
    double *inp, *w, *b, *out;
    float* R;
} ln_case;

/* torch.nn.LayerNorm over the last dim (biased variance) in double; out may be NULL */
static double ln_ref_loss(void* v) {
    ln_case* c = (ln_case*)v;
    const int C = c->C;
    double L = 0.0;
    for (int64_t r = 0; r < c->N; r++) {
        const double* x = c->inp + r * C;
        double m = 0.0, var = 0.0;
        for (int i = 0; i < C; i++) m += x[i];
        m /= C;
        for (int i = 0; i < C; i++) var += (x[i] - m) * (x[i] - m);
        var /= C;
        const double rstd = 1.0 / sqrt(var + REF_LN_EPS);
        for (int i = 0; i < C; i++) {
            const double o = (x[i] - m) * rstd * c->w[i] + c->b[i];
            if (c->out) c->out[r * C + i] = o;
            L += o * c->R[r * C + i];
        }
    }
    return L;
}

/* Inputs uniform in +-scale around a per-row offset: scale 2 (variance ~1, where eps
 * hardly matters) or 0.035, std 0.02 as GPT-2's initialisation gives the residual stream,
 * where eps is 2.5% of the variance and a wrong eps moves the gradient by ~1%. */
static void test_layernorm(int64_t N, int C, float scale) {
    ln_case c = {.N = N, .C = C};
    float* inp = randv(N * C, -scale, scale);
    for (int64_t r = 0; r < N; r++) {
        const float offset = urand(-scale, scale);
        for (int i = 0; i < C; i++) inp[r * C + i] += offset;
    }
    float* w = randv(C, 0.5f, 1.5f);
    float* b = randv(C, -0.5f, 0.5f);
    c.inp = widen(inp, N * C);
    c.w = widen(w, C);
    c.b = widen(b, C);
    c.R = randv(N * C, -1, 1);
    float* out = zeros(N * C);
    float* mean = zeros(N);
    float* rstd = zeros(N);
    k_layernorm_fwd(POOL, out, mean, rstd, inp, w, b, N, C);
    char name[80], tag[48];
    snprintf(tag, sizeof tag, "layernorm N%lld C%d std %.2g", (long long)N, C, scale / sqrt(3.0));
    c.out = dzeros(N * C);
    ln_ref_loss(&c);
    snprintf(name, sizeof name, "%s fwd vs double", tag);
    check_values(name, out, c.out, N * C, 2e-6);
    free(c.out);
    c.out = NULL;
    float* dinp = zeros(N * C);
    float* dw = zeros(C);
    float* db = zeros(C);
    float* scratch = zeros(k_layernorm_bwd_scratch(N, C));
    k_layernorm_bwd(POOL, dinp, dw, db, scratch, c.R, inp, w, mean, rstd, N, C);
    /* steps well inside the inputs' spread: the differences' truncation error ~(h/std)^2 */
    snprintf(name, sizeof name, "%s dinp", tag);
    check(name, ln_ref_loss, &c, c.inp, dinp, N * C, 1e-5 * scale, 2e-6);
    snprintf(name, sizeof name, "%s dw", tag);
    check(name, ln_ref_loss, &c, c.w, dw, C, 1e-5, 3e-6);
    snprintf(name, sizeof name, "%s db", tag);
    check(name, ln_ref_loss, &c, c.b, db, C, 1e-5, 2e-6);
    /* the backward's recomputation of the output from the saved statistics is exact */
    float* again = zeros(N * C);
    k_layernorm_apply(POOL, again, inp, w, b, mean, rstd, N, C);
    snprintf(name, sizeof name, "%s recompute", tag);
    check_same(name, again, out, N * C, 0.0);
    free(again), free(inp), free(w), free(b), free(out), free(mean), free(rstd);
    free(c.inp), free(c.w), free(c.b), free(c.R), free(dinp), free(dw), free(db), free(scratch);
}

/* ---- linear layer (optionally after a GELU: out = gelu(a) W^T + b) ---- */

typedef struct {
    int64_t N;
    int IC, OC, gelu;
    double *a, *W, *bias, *out;
    float* R;
} mm_case;

static double mm_ref_loss(void* v) {
    mm_case* c = (mm_case*)v;
    double L = 0.0;
    for (int64_t n = 0; n < c->N; n++)
        for (int o = 0; o < c->OC; o++) {
            double s = c->bias[o];
            for (int i = 0; i < c->IC; i++) {
                const double a = c->a[n * c->IC + i];
                s += (c->gelu ? ref_gelu(a) : a) * c->W[(int64_t)o * c->IC + i];
            }
            if (c->out) c->out[n * c->OC + o] = s;
            L += s * c->R[n * c->OC + o];
        }
    return L;
}

static void test_matmul(int64_t N, int IC, int OC, int gelu) {
    mm_case c = {.N = N, .IC = IC, .OC = OC, .gelu = gelu};
    float* a = randv(N * IC, -2, 2);
    float* W = randv((int64_t)OC * IC, -1, 1);
    float* bias = randv(OC, -1, 1);
    c.a = widen(a, N * IC);
    c.W = widen(W, (int64_t)OC * IC);
    c.bias = widen(bias, OC);
    c.R = randv(N * OC, -1, 1);
    float* h = zeros(N * IC);
    float* out = zeros(N * OC);
    if (gelu) k_gelu_fwd(POOL, h, a, N * IC);
    k_matmul_fwd(POOL, out, gelu ? h : a, W, bias, N, IC, OC);
    char name[80];
    const char* tag = gelu ? "matmul(gelu)" : "matmul";
    c.out = dzeros(N * OC);
    mm_ref_loss(&c);
    snprintf(name, sizeof name, "%s N%lld %dx%d fwd vs double", tag, (long long)N, OC, IC);
    check_values(name, out, c.out, N * OC, 1e-6);
    free(c.out);
    c.out = NULL;
    float* da = zeros(N * IC);
    float* dW = zeros((int64_t)OC * IC);
    float* db = zeros(OC);
    k_matmul_bwd(POOL, da, dW, db, c.R, gelu ? h : a, W, gelu ? a : NULL, N, IC, OC);
    snprintf(name, sizeof name, "%s N%lld %dx%d dinp", tag, (long long)N, OC, IC);
    check(name, mm_ref_loss, &c, c.a, da, N * IC, 1e-5, 2e-6);
    snprintf(name, sizeof name, "%s N%lld %dx%d dW", tag, (long long)N, OC, IC);
    check(name, mm_ref_loss, &c, c.W, dW, (int64_t)OC * IC, 1e-5, 2e-6);
    snprintf(name, sizeof name, "%s N%lld %dx%d dbias", tag, (long long)N, OC, IC);
    check(name, mm_ref_loss, &c, c.bias, db, OC, 1e-5, 2e-6);

    if (gelu) {
        /* the path the model takes when it keeps gelu'(pre) from the forward gives the same
         * bits; an identity layer in front makes its pre exactly a */
        float* eye = zeros((int64_t)IC * IC);
        for (int i = 0; i < IC; i++) eye[(int64_t)i * IC + i] = 1.0f;
        float* zero_bias = zeros(IC);
        float* grad = zeros(N * IC);
        float* post = zeros(N * IC);
        float* da2 = zeros(N * IC);
        float* dW2 = zeros((int64_t)OC * IC);
        float* db2 = zeros(OC);
        k_matmul_gelu_fwd_keep_grad(POOL, grad, post, a, eye, zero_bias, N, IC, IC);
        k_matmul_bwd_gelu_grad(POOL, da2, dW2, db2, c.R, post, W, grad, N, IC, OC);
        snprintf(name, sizeof name, "%s N%lld kept gelu' dinp", tag, (long long)N);
        check_same(name, da2, da, N * IC, 0.0);
        free(eye), free(zero_bias), free(grad), free(post), free(da2), free(dW2), free(db2);
    } else {
        /* the fused forwards equal their compositions */
        float* pre = zeros(N * OC);
        float* post = zeros(N * OC);
        float* ref = zeros(N * OC);
        k_matmul_gelu_fwd(POOL, pre, post, a, W, bias, N, IC, OC);
        k_matmul_fwd(POOL, ref, a, W, bias, N, IC, OC);
        snprintf(name, sizeof name, "matmul+gelu fwd N%lld pre", (long long)N);
        check_same(name, pre, ref, N * OC, 1e-6);
        k_gelu_fwd(POOL, ref, pre, N * OC);
        snprintf(name, sizeof name, "matmul+gelu fwd N%lld out", (long long)N);
        check_same(name, post, ref, N * OC, 1e-6);
        float* res = randv(N * OC, -1, 1);
        k_matmul_residual_fwd(POOL, post, res, a, W, bias, N, IC, OC);
        k_matmul_fwd(POOL, pre, a, W, bias, N, IC, OC);
        k_residual_fwd(POOL, ref, res, pre, N * OC);
        snprintf(name, sizeof name, "matmul+residual fwd N%lld", (long long)N);
        check_same(name, post, ref, N * OC, 1e-6);
        free(pre), free(post), free(ref), free(res);
    }
    free(a), free(W), free(bias), free(c.a), free(c.W), free(c.bias), free(c.R), free(h), free(out);
    free(da), free(dW), free(db);
}

/* ---- attention ---- */

typedef struct {
    int B, T, C, H;
    double* qkv;
    double* out; /* or NULL */
    float* R;
} att_case;

/* Causal self-attention in double, as nanoGPT's: out_t = sum_{s<=t} p_ts v_s per head,
 * p_t = softmax_s(q_t . k_s / sqrt(hs)); q, k, v side by side in qkv(B,T,3C). */
static double att_ref_loss(void* v) {
    att_case* c = (att_case*)v;
    const int T = c->T, C = c->C, hs = C / c->H;
    const double scale = 1.0 / sqrt((double)hs);
    double* p = dzeros(T);
    double L = 0.0;
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int t = 0; t < T; t++) {
                const double* q = c->qkv + ((int64_t)b * T + t) * 3 * C + h * hs;
                double mx = -INFINITY, sum = 0.0;
                for (int s2 = 0; s2 <= t; s2++) {
                    const double* k = c->qkv + ((int64_t)b * T + s2) * 3 * C + C + h * hs;
                    double d = 0.0;
                    for (int i = 0; i < hs; i++) d += q[i] * k[i];
                    p[s2] = d * scale;
                    mx = p[s2] > mx ? p[s2] : mx;
                }
                for (int s2 = 0; s2 <= t; s2++) sum += (p[s2] = exp(p[s2] - mx));
                for (int i = 0; i < hs; i++) {
                    double o = 0.0;
                    for (int s2 = 0; s2 <= t; s2++) o += p[s2] / sum * c->qkv[((int64_t)b * T + s2) * 3 * C + 2 * C + h * hs + i];
                    const int64_t at = ((int64_t)b * T + t) * C + h * hs + i;
                    if (c->out) c->out[at] = o;
                    L += o * c->R[at];
                }
            }
    free(p);
    return L;
}

/* dqkv = dL/dqkv of att_ref_loss, by the chain rule in double (llm.c's attention_backward):
 * dv_s += p_ts dout_t; dp_ts = dout_t . v_s; ds_ts = p_ts (dp_ts - sum_u p_tu dp_tu);
 * dq_t += scale ds_ts k_s; dk_s += scale ds_ts q_t. */
static void att_ref_backward(const att_case* c, double* dqkv) {
    const int T = c->T, C = c->C, hs = C / c->H;
    const double scale = 1.0 / sqrt((double)hs);
    double* p = dzeros(T);
    double* dp = dzeros(T);
    memset(dqkv, 0, sizeof(double) * (size_t)c->B * T * 3 * C);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int t = 0; t < T; t++) {
                const int64_t row = (int64_t)b * T;
                const double* q = c->qkv + (row + t) * 3 * C + h * hs;
                const float* dout = c->R + (row + t) * C + h * hs;
                double mx = -INFINITY, sum = 0.0, pdp = 0.0;
                for (int s2 = 0; s2 <= t; s2++) {
                    const double* k = c->qkv + (row + s2) * 3 * C + C + h * hs;
                    double d = 0.0;
                    for (int i = 0; i < hs; i++) d += q[i] * k[i];
                    p[s2] = d * scale;
                    mx = p[s2] > mx ? p[s2] : mx;
                }
                for (int s2 = 0; s2 <= t; s2++) sum += (p[s2] = exp(p[s2] - mx));
                for (int s2 = 0; s2 <= t; s2++) {
                    p[s2] /= sum;
                    const double* v = c->qkv + (row + s2) * 3 * C + 2 * C + h * hs;
                    double* dv = dqkv + (row + s2) * 3 * C + 2 * C + h * hs;
                    double d = 0.0;
                    for (int i = 0; i < hs; i++) {
                        d += dout[i] * v[i];
                        dv[i] += p[s2] * dout[i];
                    }
                    dp[s2] = d;
                    pdp += p[s2] * d;
                }
                double* dq = dqkv + (row + t) * 3 * C + h * hs;
                for (int s2 = 0; s2 <= t; s2++) {
                    const double ds = p[s2] * (dp[s2] - pdp) * scale;
                    const double* k = c->qkv + (row + s2) * 3 * C + C + h * hs;
                    double* dk = dqkv + (row + s2) * 3 * C + C + h * hs;
                    for (int i = 0; i < hs; i++) {
                        dq[i] += ds * k[i];
                        dk[i] += ds * q[i];
                    }
                }
            }
    free(p), free(dp);
}

/* keep: the probabilities saved by the forward; else recomputed by the backward. The kernel
 * is compared with the double reference's forward and chain-rule backward; that backward is
 * checked against central differences of the reference where T is small (the differences
 * cost O(T^3 C) per case). */
static void test_attention(int B, int T, int C, int H, int keep, double tol_dqkv) {
    att_case c = {.B = B, .T = T, .C = C, .H = H};
    const int64_t N = (int64_t)B * T;
    float* qkv = randv(N * 3 * C, -1.5f, 1.5f);
    c.qkv = widen(qkv, N * 3 * C);
    c.R = randv(N * C, -1, 1);
    float* out = zeros(N * C);
    float* stats = zeros(N * H * 2);
    float* att = keep ? zeros((int64_t)B * H * T * T) : NULL;
    float* scratch = zeros(k_attention_scratch(T, C, gpt_pool_size(POOL)));
    k_attention_fwd(POOL, out, att, stats, scratch, qkv, B, T, C, H);
    char name[80], tag[48];
    snprintf(tag, sizeof tag, "attention B%d T%d C%d H%d %s", B, T, C, H, keep ? "kept" : "recomputed");
    c.out = dzeros(N * C);
    att_ref_loss(&c);
    snprintf(name, sizeof name, "%s fwd vs double", tag);
    check_values(name, out, c.out, N * C, 2e-6);
    free(c.out);
    c.out = NULL;
    float* dqkv = zeros(N * 3 * C);
    k_attention_bwd(POOL, dqkv, scratch, c.R, qkv, att, stats, B, T, C, H);
    double* ref = dzeros(N * 3 * C);
    att_ref_backward(&c, ref);
    snprintf(name, sizeof name, "%s dqkv vs double", tag);
    check_values(name, dqkv, ref, N * 3 * C, tol_dqkv);
    if (!keep && T <= 23) {
        float* ref_f = zeros(N * 3 * C); /* the reference's gradient, as check() takes it */
        for (int64_t i = 0; i < N * 3 * C; i++) ref_f[i] = (float)ref[i];
        snprintf(name, sizeof name, "attention B%d T%d C%d H%d reference dqkv", B, T, C, H);
        check(name, att_ref_loss, &c, c.qkv, ref_f, N * 3 * C, 1e-5, 4e-7);
        free(ref_f);
    }
    if (keep) {
        /* the recomputing backward gives the very same gradient */
        float* again = zeros(N * 3 * C);
        k_attention_bwd(POOL, again, scratch, c.R, qkv, NULL, stats, B, T, C, H);
        snprintf(name, sizeof name, "attention B%d T%d C%d H%d recompute", B, T, C, H);
        check_same(name, again, dqkv, N * 3 * C, 0.0);
        free(again);
    }
    free(qkv), free(c.qkv), free(c.R), free(out), free(stats), free(att), free(scratch), free(dqkv), free(ref);
}

/* ---- GELU ---- */

typedef struct {
    int64_t n;
    double* inp;
    float* R;
} ew_case;

static double gelu_ref_loss(void* v) {
    ew_case* c = (ew_case*)v;
    double L = 0.0;
    for (int64_t i = 0; i < c->n; i++) L += ref_gelu(c->inp[i]) * c->R[i];
    return L;
}

static void test_gelu(void) {
    ew_case c = {.n = 203};
    float* inp = randv(c.n, -5, 5);
    c.inp = widen(inp, c.n);
    c.R = randv(c.n, -1, 1);
    float* out = zeros(c.n);
    double* ref = dzeros(c.n);
    k_gelu_fwd(POOL, out, inp, c.n);
    for (int64_t i = 0; i < c.n; i++) ref[i] = ref_gelu(c.inp[i]);
    check_values("gelu fwd vs double", out, ref, c.n, 1e-6);
    float* d = zeros(c.n);
    k_gelu_bwd(POOL, d, inp, c.R, c.n);
    check("gelu dinp", gelu_ref_loss, &c, c.inp, d, c.n, 1e-5, 1e-5);
    free(inp), free(c.inp), free(c.R), free(out), free(ref), free(d);
}

/* ---- residual ---- */

typedef struct {
    int64_t n;
    double *a, *b;
    float* R;
} res_case;

static double res_ref_loss(void* v) {
    res_case* c = (res_case*)v;
    double L = 0.0;
    for (int64_t i = 0; i < c->n; i++) L += (c->a[i] + c->b[i]) * c->R[i];
    return L;
}

static void test_residual(void) {
    res_case c = {.n = 101};
    float* a = randv(c.n, -1, 1);
    float* b = randv(c.n, -1, 1);
    c.a = widen(a, c.n);
    c.b = widen(b, c.n);
    c.R = randv(c.n, -1, 1);
    float* out = zeros(c.n);
    double* ref = dzeros(c.n);
    k_residual_fwd(POOL, out, a, b, c.n);
    for (int64_t i = 0; i < c.n; i++) ref[i] = c.a[i] + c.b[i];
    check_values("residual fwd vs double", out, ref, c.n, 6e-8); /* one float rounding */
    float* da = zeros(c.n);
    float* db = zeros(c.n);
    k_residual_bwd(POOL, da, db, c.R, c.n);
    check("residual da", res_ref_loss, &c, c.a, da, c.n, 1e-5, 1e-9); /* exact in float */
    check("residual db", res_ref_loss, &c, c.b, db, c.n, 1e-5, 1e-9);
    free(a), free(b), free(c.a), free(c.b), free(c.R), free(out), free(ref), free(da), free(db);
}

/* ---- softmax + cross-entropy ---- */

typedef struct {
    int64_t N;
    int V;
    double dscale;
    int32_t* y;
    double* logits;
    double* losses; /* per row, or NULL */
} ce_case;

/* L = dscale * sum of row losses (the mean over counted rows), log-sum-exp in double. */
static double ce_ref_loss(void* v) {
    ce_case* c = (ce_case*)v;
    double L = 0.0;
    for (int64_t i = 0; i < c->N; i++) {
        double loss = 0.0;
        if (c->y[i] != GPT_IGNORE_INDEX) {
            const double* r = c->logits + i * c->V;
            double mx = r[0], s = 0.0;
            for (int j = 1; j < c->V; j++) mx = r[j] > mx ? r[j] : mx;
            for (int j = 0; j < c->V; j++) s += exp(r[j] - mx);
            loss = log(s) + mx - r[c->y[i]];
        }
        if (c->losses) c->losses[i] = loss;
        L += loss;
    }
    return L * c->dscale;
}

static void test_softmax_ce(int64_t N, int V) {
    ce_case c = {.N = N, .V = V};
    c.y = (int32_t*)malloc(sizeof(int32_t) * (size_t)N);
    int64_t counted = 0;
    for (int64_t i = 0; i < N; i++) {
        c.y[i] = (i % 4 == 1) ? GPT_IGNORE_INDEX : (int32_t)((i * 7 + 3) % V);
        counted += c.y[i] != GPT_IGNORE_INDEX;
    }
    const float dscale = 1.0f / (float)counted;
    c.dscale = dscale;
    float* logits = randv(N * V, -4, 4);
    c.logits = widen(logits, N * V);
    float* losses = zeros(N);
    float* grad = zeros(N * V);
    memcpy(grad, logits, sizeof(float) * (size_t)(N * V));
    k_softmax_ce(POOL, grad, losses, c.y, N, V, dscale, 1);
    /* ignored rows: zero loss and zero gradient */
    int ignored_ok = 1;
    for (int64_t i = 0; i < N; i++)
        if (c.y[i] == GPT_IGNORE_INDEX) {
            ignored_ok &= losses[i] == 0.0f;
            for (int j = 0; j < V; j++) ignored_ok &= grad[i * V + j] == 0.0f;
        }
    report("softmax_ce ignored rows", ignored_ok ? 0.0 : 1.0, 0.0, "");
    char name[80];
    c.losses = dzeros(N);
    ce_ref_loss(&c);
    snprintf(name, sizeof name, "softmax_ce N%lld V%d loss vs double", (long long)N, V);
    check_values(name, losses, c.losses, N, 5e-7);
    free(c.losses);
    c.losses = NULL;
    snprintf(name, sizeof name, "softmax_ce N%lld V%d dlogits", (long long)N, V);
    check(name, ce_ref_loss, &c, c.logits, grad, N * V, 1e-5, 5e-7);
    free(c.y), free(logits), free(c.logits), free(losses), free(grad);
}

/* ---- the checker itself must reject a gradient off by 10x the tolerance ---- */

static void test_checker_rejects(void) {
    res_case c = {.n = 17};
    float* a = randv(c.n, -1, 1);
    c.a = widen(a, c.n);
    c.b = widen(a, c.n);
    c.R = randv(c.n, -1, 1);
    const double tol = 1e-7;
    float* wrong = zeros(c.n);
    for (int64_t i = 0; i < c.n; i++) wrong[i] = c.R[i] * (float)(1.0 + 10 * tol); /* 8 float ulps of 1 */
    const int before = FAILURES;
    QUIET = 1;
    check("residual da, 10x the tolerance off", res_ref_loss, &c, c.a, wrong, c.n, 1e-5, tol);
    QUIET = 0;
    const int rejected = FAILURES == before + 1;
    FAILURES = before;
    report("checker rejects 10x tolerance off", rejected ? 0.0 : 1.0, 0.0, "");
    free(a), free(c.a), free(c.b), free(c.R), free(wrong);
}

int main(int argc, char** argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 3;
    POOL = gpt_pool_create(threads);
    if (!POOL) {
        fprintf(stderr, "cannot create a pool of %d threads\n", threads);
        return 2;
    }
    gpt_pool_set_grain(POOL, 1.0); /* split even the tiniest loops over the threads */
    gpt_blas_set_threads(threads);
    printf("gradcheck with %d threads\n", threads);
    test_checker_rejects();
    test_encoder();
    test_layernorm(7, 13, 2.0f);
    test_layernorm(70, 24, 2.0f); /* more than one chunk of partial sums */
    test_layernorm(70, 24, 0.035f); /* GPT-2's init scale, where eps matters */
    test_matmul(37, 11, 19, 0);
    test_matmul(37, 11, 19, 1);
    for (int keep = 0; keep < 2; keep++) {
        /* the gradient's rounding grows with T (longer sums): tolerances per case */
        test_attention(2, 5, 8, 2, keep, 1.5e-6);
        test_attention(1, 70, 8, 2, keep, 5e-6); /* crosses the 64-row block */
        test_attention(2, 9, 12, 3, keep, 1.5e-6); /* hs = 4, T not a multiple of 8 */
        /* the direct kernels (hs a multiple of 32, T <= 256): odd T, 6 x 16 tiles */
        test_attention(2, 23, 32, 1, keep, 2.5e-6);
        test_attention(1, 37, 64, 1, keep, 2.5e-6); /* hs = 64, four column strips of 16 */
        test_attention(1, 133, 32, 1, keep, 6e-6); /* two query-row blocks of 128 and 5 */
    }
    test_gelu();
    test_residual();
    test_softmax_ce(9, 19);
    test_softmax_ce(6, 64);
    gpt_pool_destroy(POOL);
    printf("%s: %d failure(s)\n", FAILURES ? "FAILED" : "OK", FAILURES);
    return FAILURES ? 1 : 0;
}
