/*
 * gradcheck.c: finite-difference check of every backward kernel of native/cpu/kernels.h,
 * each in isolation on tiny shapes (odd sizes, so that vector tails, row splits over
 * the threads, layernorm chunks and attention blocks of 64 rows are all crossed).
 *
 * For a kernel out = f(inputs), the scalar L = sum(out * R) with a fixed random R has
 * dL/dout = R; the backward kernel gives dL/dinput, compared with central differences
 * (L(x+h) - L(x-h)) / 2h of the float forward kernel, L summed in double.
 * Error of a tensor = max |analytic - numeric| / max |numeric|. Prints one line per
 * check: "<name> <error> <tolerance> PASS|FAIL", then exits 1 if any failed.
 *
 * Build (tests/native-gradcheck.test.ts does this):
 *   cc -O2 -std=c11 -Inative/cpu tests/native/gradcheck.c native/cpu/kernels.c native/cpu/sgemm_small.c native/cpu/pool.c \
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
static int QUIET; /* check() counts but does not print */

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

static double dot(const float* a, const float* b, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

/* A forward closure: returns L = sum(out * R) at the current inputs. */
typedef double (*loss_fn)(void* ctx);

/* Compares analytic gradient ana of input x (n values) against central differences. */
static void check(const char* name, loss_fn f, void* ctx, float* x, const float* ana, int64_t n, float h,
                  double tol) {
    double maxdiff = 0.0, maxref = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float saved = x[i];
        x[i] = saved + h;
        const double lp = f(ctx);
        x[i] = saved - h;
        const double lm = f(ctx);
        x[i] = saved;
        /* the step actually taken in float */
        const double num = (lp - lm) / ((double)(saved + h) - (double)(saved - h));
        const double d = fabs(num - (double)ana[i]);
        if (!(d <= maxdiff)) maxdiff = d; /* NaN propagates */
        if (fabs(num) > maxref) maxref = fabs(num);
    }
    const double err = maxref > 0 ? maxdiff / maxref : maxdiff;
    const int ok = err <= tol && maxref > 0;
    if (!QUIET) printf("%-32s %.3e %.1e %s%s\n", name, err, tol, ok ? "PASS" : "FAIL", maxref > 0 ? "" : " (zero gradient)");
    if (!ok) FAILURES++;
}

/* Exact comparison of two forward results (fused kernels vs their composition). */
static void check_same(const char* name, const float* a, const float* b, int64_t n, double tol) {
    double maxdiff = 0.0, maxref = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= maxdiff)) maxdiff = d;
        if (fabs(b[i]) > maxref) maxref = fabs(b[i]);
    }
    const double err = maxref > 0 ? maxdiff / maxref : maxdiff;
    const int ok = err <= tol;
    printf("%-32s %.3e %.1e %s\n", name, err, tol, ok ? "PASS" : "FAIL");
    if (!ok) FAILURES++;
}

/* ---- embedding ---- */

typedef struct {
    int B, T, C, V;
    int32_t* x;
    float *wte, *wpe, *out, *R;
} enc_case;

static double enc_loss(void* v) {
    enc_case* c = (enc_case*)v;
    k_encoder_fwd(POOL, c->out, c->x, c->wte, c->wpe, c->B, c->T, c->C);
    return dot(c->out, c->R, (int64_t)c->B * c->T * c->C);
}

static void test_encoder(void) {
    enc_case c = {.B = 3, .T = 5, .C = 21, .V = 7};
    const int64_t n = (int64_t)c.B * c.T;
    c.x = (int32_t*)malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) c.x[i] = (int32_t)(i * 5 % c.V); /* repeated ids */
    c.wte = randv((int64_t)c.V * c.C, -1, 1);
    c.wpe = randv((int64_t)c.T * c.C, -1, 1);
    c.out = zeros(n * c.C);
    c.R = randv(n * c.C, -1, 1);
    float* dwte = zeros((int64_t)c.V * c.C);
    float* dwpe = zeros((int64_t)c.T * c.C);
    k_encoder_bwd(POOL, dwte, dwpe, c.R, c.x, c.B, c.T, c.C);
    check("encoder dwte", enc_loss, &c, c.wte, dwte, (int64_t)c.V * c.C, 1e-2f, 1e-3);
    check("encoder dwpe", enc_loss, &c, c.wpe, dwpe, (int64_t)c.T * c.C, 1e-2f, 1e-3);
    free(c.x), free(c.wte), free(c.wpe), free(c.out), free(c.R), free(dwte), free(dwpe);
}

/* ---- layernorm ---- */

typedef struct {
    int64_t N;
    int C;
    float *inp, *w, *b, *out, *mean, *rstd, *R;
} ln_case;

static double ln_loss(void* v) {
    ln_case* c = (ln_case*)v;
    k_layernorm_fwd(POOL, c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->N, c->C);
    return dot(c->out, c->R, c->N * c->C);
}

static void test_layernorm(int64_t N, int C) {
    ln_case c = {.N = N, .C = C};
    c.inp = randv(N * C, -2, 2);
    c.w = randv(C, 0.5f, 1.5f);
    c.b = randv(C, -0.5f, 0.5f);
    c.out = zeros(N * C);
    c.mean = zeros(N);
    c.rstd = zeros(N);
    c.R = randv(N * C, -1, 1);
    ln_loss(&c);
    float* dinp = zeros(N * C);
    float* dw = zeros(C);
    float* db = zeros(C);
    float* scratch = zeros(k_layernorm_bwd_scratch(N, C));
    k_layernorm_bwd(POOL, dinp, dw, db, scratch, c.R, c.inp, c.w, c.mean, c.rstd, N, C);
    char name[64];
    snprintf(name, sizeof name, "layernorm N%lld C%d dinp", (long long)N, C);
    check(name, ln_loss, &c, c.inp, dinp, N * C, 1e-2f, 1e-3);
    snprintf(name, sizeof name, "layernorm N%lld C%d dw", (long long)N, C);
    check(name, ln_loss, &c, c.w, dw, C, 1e-2f, 1e-3);
    snprintf(name, sizeof name, "layernorm N%lld C%d db", (long long)N, C);
    check(name, ln_loss, &c, c.b, db, C, 1e-2f, 1e-3);
    /* the backward's recomputation of the output from the saved statistics is exact */
    float* again = zeros(N * C);
    ln_loss(&c);
    k_layernorm_apply(POOL, again, c.inp, c.w, c.b, c.mean, c.rstd, N, C);
    snprintf(name, sizeof name, "layernorm N%lld C%d recompute", (long long)N, C);
    check_same(name, again, c.out, N * C, 0.0);
    free(again);
    free(c.inp), free(c.w), free(c.b), free(c.out), free(c.mean), free(c.rstd), free(c.R);
    free(dinp), free(dw), free(db), free(scratch);
}

/* ---- linear layer (optionally after a GELU: out = gelu(a) W^T + b) ---- */

typedef struct {
    int64_t N;
    int IC, OC, gelu;
    float *a, *h, *W, *bias, *out, *R;
} mm_case;

static double mm_loss(void* v) {
    mm_case* c = (mm_case*)v;
    const float* inp = c->a;
    if (c->gelu) {
        k_gelu_fwd(POOL, c->h, c->a, c->N * c->IC);
        inp = c->h;
    }
    k_matmul_fwd(POOL, c->out, inp, c->W, c->bias, c->N, c->IC, c->OC);
    return dot(c->out, c->R, c->N * c->OC);
}

static void test_matmul(int64_t N, int IC, int OC, int gelu) {
    mm_case c = {.N = N, .IC = IC, .OC = OC, .gelu = gelu};
    c.a = randv(N * IC, -2, 2);
    c.h = zeros(N * IC);
    c.W = randv((int64_t)OC * IC, -1, 1);
    c.bias = randv(OC, -1, 1);
    c.out = zeros(N * OC);
    c.R = randv(N * OC, -1, 1);
    mm_loss(&c);
    float* da = zeros(N * IC);
    float* dW = zeros((int64_t)OC * IC);
    float* db = zeros(OC);
    k_matmul_bwd(POOL, da, dW, db, c.R, gelu ? c.h : c.a, c.W, gelu ? c.a : NULL, N, IC, OC);
    char name[64];
    const char* tag = gelu ? "matmul(gelu)" : "matmul";
    snprintf(name, sizeof name, "%s N%lld %dx%d dinp", tag, (long long)N, OC, IC);
    check(name, mm_loss, &c, c.a, da, N * IC, 1e-2f, 1e-3);
    snprintf(name, sizeof name, "%s N%lld %dx%d dW", tag, (long long)N, OC, IC);
    check(name, mm_loss, &c, c.W, dW, (int64_t)OC * IC, 1e-2f, 1e-3);
    snprintf(name, sizeof name, "%s N%lld %dx%d dbias", tag, (long long)N, OC, IC);
    check(name, mm_loss, &c, c.bias, db, OC, 1e-2f, 1e-3);

    /* the fused forwards equal their compositions */
    if (!gelu) {
        float* pre = zeros(N * OC);
        float* post = zeros(N * OC);
        float* ref = zeros(N * OC);
        k_matmul_gelu_fwd(POOL, pre, post, c.a, c.W, c.bias, N, IC, OC);
        k_matmul_fwd(POOL, ref, c.a, c.W, c.bias, N, IC, OC);
        snprintf(name, sizeof name, "matmul+gelu fwd N%lld pre", (long long)N);
        check_same(name, pre, ref, N * OC, 1e-6);
        k_gelu_fwd(POOL, ref, pre, N * OC);
        snprintf(name, sizeof name, "matmul+gelu fwd N%lld out", (long long)N);
        check_same(name, post, ref, N * OC, 1e-6);
        float* res = randv(N * OC, -1, 1);
        k_matmul_residual_fwd(POOL, post, res, c.a, c.W, c.bias, N, IC, OC);
        k_matmul_fwd(POOL, pre, c.a, c.W, c.bias, N, IC, OC);
        k_residual_fwd(POOL, ref, res, pre, N * OC);
        snprintf(name, sizeof name, "matmul+residual fwd N%lld", (long long)N);
        check_same(name, post, ref, N * OC, 1e-6);
        free(pre), free(post), free(ref), free(res);
    }
    free(c.a), free(c.h), free(c.W), free(c.bias), free(c.out), free(c.R), free(da), free(dW), free(db);
}

/* ---- attention ---- */

typedef struct {
    int B, T, C, H;
    float *qkv, *out, *att, *stats, *scratch, *R;
} att_case;

static double att_loss(void* v) {
    att_case* c = (att_case*)v;
    k_attention_fwd(POOL, c->out, c->att, c->stats, c->scratch, c->qkv, c->B, c->T, c->C, c->H);
    return dot(c->out, c->R, (int64_t)c->B * c->T * c->C);
}

/* keep: the probabilities saved by the forward; else recomputed by the backward */
static void test_attention(int B, int T, int C, int H, int keep) {
    att_case c = {.B = B, .T = T, .C = C, .H = H};
    const int64_t N = (int64_t)B * T;
    c.qkv = randv(N * 3 * C, -1.5f, 1.5f);
    c.out = zeros(N * C);
    c.stats = zeros(N * H * 2);
    c.att = keep ? zeros((int64_t)B * H * T * T) : NULL;
    c.scratch = zeros(k_attention_scratch(T, C, gpt_pool_size(POOL)));
    c.R = randv(N * C, -1, 1);
    att_loss(&c);
    float* dqkv = zeros(N * 3 * C);
    k_attention_bwd(POOL, dqkv, c.scratch, c.R, c.qkv, c.att, c.stats, B, T, C, H);
    char name[64];
    snprintf(name, sizeof name, "attention B%d T%d C%d H%d %s dqkv", B, T, C, H, keep ? "kept" : "recomputed");
    check(name, att_loss, &c, c.qkv, dqkv, N * 3 * C, 1e-2f, 1e-3);
    if (keep) {
        /* the recomputing backward gives the very same gradient */
        float* again = zeros(N * 3 * C);
        att_loss(&c);
        k_attention_bwd(POOL, again, c.scratch, c.R, c.qkv, NULL, c.stats, B, T, C, H);
        snprintf(name, sizeof name, "attention B%d T%d C%d H%d recompute", B, T, C, H);
        check_same(name, again, dqkv, N * 3 * C, 0.0);
        free(again);
    }
    free(c.qkv), free(c.out), free(c.att), free(c.stats), free(c.scratch), free(c.R), free(dqkv);
}

/* ---- GELU ---- */

typedef struct {
    int64_t n;
    float *inp, *out, *R;
} ew_case;

static double gelu_loss(void* v) {
    ew_case* c = (ew_case*)v;
    k_gelu_fwd(POOL, c->out, c->inp, c->n);
    return dot(c->out, c->R, c->n);
}

static void test_gelu(void) {
    ew_case c = {.n = 203};
    c.inp = randv(c.n, -5, 5);
    c.out = zeros(c.n);
    c.R = randv(c.n, -1, 1);
    float* d = zeros(c.n);
    k_gelu_bwd(POOL, d, c.inp, c.R, c.n);
    check("gelu dinp", gelu_loss, &c, c.inp, d, c.n, 1e-3f, 1e-3);
    /* gelu against the tanh formula in double */
    double maxd = 0.0;
    k_gelu_fwd(POOL, c.out, c.inp, c.n);
    for (int64_t i = 0; i < c.n; i++) {
        const double x = c.inp[i];
        const double ref = 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
        const double e = fabs(c.out[i] - ref) / fmax(fabs(ref), 1e-3);
        if (e > maxd) maxd = e;
    }
    printf("%-32s %.3e %.1e %s\n", "gelu value vs tanh formula", maxd, 2e-6, maxd <= 2e-6 ? "PASS" : "FAIL");
    if (!(maxd <= 2e-6)) FAILURES++;
    free(c.inp), free(c.out), free(c.R), free(d);
}

/* ---- residual ---- */

typedef struct {
    int64_t n;
    float *a, *b, *out, *R;
} res_case;

static double res_loss(void* v) {
    res_case* c = (res_case*)v;
    k_residual_fwd(POOL, c->out, c->a, c->b, c->n);
    return dot(c->out, c->R, c->n);
}

static void test_residual(void) {
    res_case c = {.n = 101};
    c.a = randv(c.n, -1, 1);
    c.b = randv(c.n, -1, 1);
    c.out = zeros(c.n);
    c.R = randv(c.n, -1, 1);
    float* da = zeros(c.n);
    float* db = zeros(c.n);
    k_residual_bwd(POOL, da, db, c.R, c.n);
    check("residual da", res_loss, &c, c.a, da, c.n, 1e-2f, 1e-3);
    check("residual db", res_loss, &c, c.b, db, c.n, 1e-2f, 1e-3);
    free(c.a), free(c.b), free(c.out), free(c.R), free(da), free(db);
}

/* ---- softmax + cross-entropy ---- */

typedef struct {
    int64_t N;
    int V;
    float dscale;
    int32_t* y;
    float *logits, *work, *losses;
} ce_case;

/* L = dscale * sum of row losses (the mean over counted rows). */
static double ce_loss(void* v) {
    ce_case* c = (ce_case*)v;
    memcpy(c->work, c->logits, sizeof(float) * (size_t)(c->N * c->V));
    k_softmax_ce(POOL, c->work, c->losses, c->y, c->N, c->V, c->dscale, 0);
    double s = 0.0;
    for (int64_t i = 0; i < c->N; i++) s += c->losses[i];
    return s * c->dscale;
}

static void test_softmax_ce(int64_t N, int V) {
    ce_case c = {.N = N, .V = V};
    c.y = (int32_t*)malloc(sizeof(int32_t) * (size_t)N);
    int64_t counted = 0;
    for (int64_t i = 0; i < N; i++) {
        c.y[i] = (i % 4 == 1) ? GPT_IGNORE_INDEX : (int32_t)((i * 7 + 3) % V);
        counted += c.y[i] != GPT_IGNORE_INDEX;
    }
    c.dscale = 1.0f / (float)counted;
    c.logits = randv(N * V, -4, 4);
    c.work = zeros(N * V);
    c.losses = zeros(N);
    float* grad = zeros(N * V);
    memcpy(grad, c.logits, sizeof(float) * (size_t)(N * V));
    k_softmax_ce(POOL, grad, c.losses, c.y, N, V, c.dscale, 1);
    /* ignored rows: zero loss and zero gradient */
    int ignored_ok = 1;
    for (int64_t i = 0; i < N; i++)
        if (c.y[i] == GPT_IGNORE_INDEX) {
            ignored_ok &= c.losses[i] == 0.0f;
            for (int j = 0; j < V; j++) ignored_ok &= grad[i * V + j] == 0.0f;
        }
    printf("%-32s %.3e %.1e %s\n", "softmax_ce ignored rows", ignored_ok ? 0.0 : 1.0, 0.0, ignored_ok ? "PASS" : "FAIL");
    if (!ignored_ok) FAILURES++;
    char name[64];
    snprintf(name, sizeof name, "softmax_ce N%lld V%d dlogits", (long long)N, V);
    check(name, ce_loss, &c, c.logits, grad, N * V, 1e-2f, 1e-3);
    /* loss values against a double log-sum-exp */
    double maxd = 0.0;
    ce_loss(&c);
    for (int64_t i = 0; i < N; i++) {
        if (c.y[i] == GPT_IGNORE_INDEX) continue;
        const float* r = c.logits + i * V;
        double mx = r[0], s = 0.0;
        for (int j = 1; j < V; j++) mx = r[j] > mx ? r[j] : mx;
        for (int j = 0; j < V; j++) s += exp((double)r[j] - mx);
        const double ref = log(s) + mx - r[c.y[i]];
        const double e = fabs(c.losses[i] - ref) / fabs(ref);
        if (e > maxd) maxd = e;
    }
    printf("%-32s %.3e %.1e %s\n", "softmax_ce loss vs double", maxd, 1e-5, maxd <= 1e-5 ? "PASS" : "FAIL");
    if (!(maxd <= 1e-5)) FAILURES++;
    free(c.y), free(c.logits), free(c.work), free(c.losses), free(grad);
}

/* ---- the checker itself must reject a wrong gradient ---- */

static void test_checker_rejects(void) {
    res_case c = {.n = 17};
    c.a = randv(c.n, -1, 1);
    c.b = randv(c.n, -1, 1);
    c.out = zeros(c.n);
    c.R = randv(c.n, -1, 1);
    float* wrong = zeros(c.n);
    for (int64_t i = 0; i < c.n; i++) wrong[i] = c.R[i] * 1.01f;
    const int before = FAILURES;
    QUIET = 1;
    check("residual da, scaled by 1.01", res_loss, &c, c.a, wrong, c.n, 1e-2f, 1e-3);
    QUIET = 0;
    const int rejected = FAILURES == before + 1;
    FAILURES = before;
    printf("%-32s %.3e %.1e %s\n", "checker rejects a 1% error", rejected ? 0.0 : 1.0, 0.0, rejected ? "PASS" : "FAIL");
    if (!rejected) FAILURES++;
    free(c.a), free(c.b), free(c.out), free(c.R), free(wrong);
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
    test_layernorm(7, 13);
    test_layernorm(70, 24); /* more than one chunk of partial sums */
    test_matmul(37, 11, 19, 0);
    test_matmul(37, 11, 19, 1);
    for (int keep = 0; keep < 2; keep++) {
        test_attention(2, 5, 8, 2, keep);
        test_attention(1, 70, 8, 2, keep); /* crosses the 64-row block */
        test_attention(2, 9, 12, 3, keep); /* hs = 4, T not a multiple of 8 */
        /* the direct kernels (hs a multiple of 32, T <= 256): odd T, 6 x 16 tiles */
        test_attention(2, 23, 32, 1, keep);
        test_attention(1, 37, 64, 1, keep); /* hs = 64, four column strips of 16 */
        test_attention(1, 133, 32, 1, keep); /* two query-row blocks of 128 and 5 */
    }
    test_gelu();
    test_residual();
    test_softmax_ce(9, 19);
    test_softmax_ce(6, 64);
    gpt_pool_destroy(POOL);
    printf("%s: %d failure(s)\n", FAILURES ? "FAILED" : "OK", FAILURES);
    return FAILURES ? 1 : 0;
}
