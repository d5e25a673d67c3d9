/*
 * kernels_attention.c: causal self-attention forward and backward (see kernels.h).
 */
#define _POSIX_C_SOURCE 200809L
#if defined(__APPLE__)
#define _DARWIN_C_SOURCE /* what Accelerate's headers need */
#endif
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

/* ------------------------------------------------------------------------------------
 * Causal self-attention, one (b, h) pair at a time per thread, in blocks of query rows
 * (ATT_RB for the direct SIMD kernels below, ATT_TB for the BLAS path) so that only the
 * lower triangle (plus the diagonal tiles) is ever computed. Unless the model keeps them,
 * the probabilities live in a per-thread scratch only: the forward saves the max and
 * 1/sum of each softmax row, the backward recomputes the very same probabilities.
 * ---------------------------------------------------------------------------------- */

#ifndef ATT_TB
#define ATT_TB 64
#endif

typedef struct {
    float* out;
    float* att;
    float* stats;
    float* dqkv;
    float* scratch;
    const float* dout;
    const float* qkv;
    const float* catt;
    const float* cstats;
    int B, T, C, H;
} att_ctx;

/* The softmax rows below hold n valid values and are zeroed up to end (they may be
 * written anywhere below end). Whole vectors run over [0, n8), n8 = n rounded down to
 * 8; the tail [n8, n) is one masked vector when it fits below end, scalars otherwise. */
#define ROW_TAIL(n, end) ((((n) & 7) != 0) && (((n) & ~(int64_t)7) + 8 <= (end)))
/* the lanes k < n of a vector */
#define v8_first(n) ((v8i){0, 1, 2, 3, 4, 5, 6, 7} < (v8i){0, 0, 0, 0, 0, 0, 0, 0} + (int32_t)(n))

static inline void zero_span(float* p, int64_t n) {
    if (n > 0) memset(p, 0, sizeof(float) * (size_t)n);
}

/* In place over row[0:n): softmax, saving st[0] = max, st[1] = 1/sum; row[n:end) = 0. */
GPT_HOT static void softmax_causal_row(float* row, int64_t n, int64_t end, float* st) {
    const int64_t n8 = n & ~(int64_t)7;
    const int vt = ROW_TAIL(n, end);
    const v8i tail = v8_first(n - n8);
    v8f vm = v8_set1(-INFINITY);
    for (int64_t j = 0; j < n8; j += 8) vm = v8_max(v8_load(row + j), vm);
    if (vt) vm = v8_max(v8_select(tail, v8_load(row + n8), v8_set1(-INFINITY)), vm);
    float mx = v8_hmax(vm);
    if (!vt)
        for (int64_t j = n8; j < n; j++) mx = row[j] > mx ? row[j] : mx;
    v8f acc = v8_zero();
    for (int64_t j = 0; j < n8; j += 8) {
        const v8f e = v8_exp(v8_load(row + j) - mx);
        v8_store(row + j, e);
        acc += e;
    }
    if (vt) {
        const v8f e = v8_select(tail, v8_exp(v8_load(row + n8) - mx), v8_zero());
        v8_store(row + n8, e);
        acc += e;
    }
    float sum = v8_hsum(acc);
    if (!vt)
        for (int64_t j = n8; j < n; j++) {
            row[j] = s_exp(row[j] - mx);
            sum += row[j];
        }
    const float inv = 1.0f / sum;
    const int64_t nv = vt ? n8 + 8 : n8;
    for (int64_t j = 0; j < nv; j += 8) v8_store(row + j, v8_load(row + j) * inv);
    for (int64_t j = nv; j < n; j++) row[j] *= inv;
    zero_span(row + (vt ? nv : n), end - (vt ? nv : n));
    st[0] = mx;
    st[1] = inv;
}

/* The probabilities of softmax_causal_row again from the saved st, bit for bit. */
GPT_HOT static void softmax_recompute_row(float* row, int64_t n, int64_t end, const float* st) {
    const float mx = st[0], inv = st[1];
    const int64_t n8 = n & ~(int64_t)7;
    const int vt = ROW_TAIL(n, end);
    for (int64_t j = 0; j < n8; j += 8) v8_store(row + j, v8_exp(v8_load(row + j) - mx) * inv);
    if (vt) {
        v8f e = v8_select(v8_first(n - n8), v8_exp(v8_load(row + n8) - mx), v8_zero());
        v8_store(row + n8, e * inv);
    } else {
        for (int64_t j = n8; j < n; j++) row[j] = s_exp(row[j] - mx) * inv;
    }
    const int64_t z = vt ? n8 + 8 : n;
    zero_span(row + z, end - z);
}

/* ---- direct kernels for head sizes that are multiples of 32 (the usual 32, 64, 128)
 * and T <= 256, query rows in blocks of ATT_RB: the per-(b, h) products are too small
 * for a BLAS call to pay off (T = 256, S2's heads: forward and backward 10-20% faster
 * than the BLAS path; T = 512: the BLAS path 10-20% faster). Only the causal part
 * (j <= i) is computed and read. */

#if defined(GPT_ATT_NO_DIRECT) /* benchmarks: the BLAS path for every head size */
#define ATT_DIRECT(hs, T) 0
#else
#ifndef ATT_DIRECT_MAX_T
#define ATT_DIRECT_MAX_T 256
#endif
#define ATT_DIRECT(hs, T) ((hs) % 32 == 0 && (T) <= ATT_DIRECT_MAX_T)
#endif
#define ATT_PAD(T) (((int64_t)(T) + 15) & ~(int64_t)15)
/* Query rows per block of the direct kernels. */
#ifndef ATT_RB
#define ATT_RB 128
#endif
/* Row i of a T x T tile is causal up to i; the softmax may write (zeros) up to here. */
#define ATT_ROW_END(i, T) (((((i) + 8) & ~(int64_t)7) < (T)) ? (((i) + 8) & ~(int64_t)7) : (int64_t)(T))

/* yT(hs, ldt) = y(n rows of hs at stride ldy)^T; columns n..ldt-1 zero */
GPT_HOT static void att_pack_t(float* restrict yT, int64_t ldt, const float* restrict y, int64_t ldy, int64_t n,
                               int hs) {
    /* 8 x 8 blocks through the vectors: eight rows of y in, eight columns out */
    int64_t j0 = 0;
    for (; j0 + 8 <= n; j0 += 8) {
        const float* s = y + j0 * ldy;
        for (int d0 = 0; d0 < hs; d0 += 8) {
            v8f r[8];
            for (int k = 0; k < 8; k++) r[k] = v8_load(s + k * ldy + d0);
            v8_transpose8(r);
            for (int d = 0; d < 8; d++) v8_store(yT + (d0 + d) * ldt + j0, r[d]);
        }
    }
    for (int d = 0; d < hs; d++) {
        for (int64_t j = j0; j < n; j++) yT[d * ldt + j] = y[j * ldy + d];
        for (int64_t j = n; j < ldt; j++) yT[d * ldt + j] = 0.0f;
    }
}

/* Stores the first lim (> 0) of the 16 lanes of (lo, hi) * alpha at p, in whole vectors
 * where cap (the floats writable from p) allows: the lanes from lim to the next multiple
 * of 8 then hold values no reader uses (the softmax rows mask them). */
#define att_store16(p, lo, hi, lim, alpha, cap)                                              \
    do {                                                                                     \
        if ((lim) > 8 || (cap) >= 8) v8_store((p), (lo) * (alpha));                          \
        else v8_store_part((p), (lo) * (alpha), (lim));                                      \
        if ((lim) > 8) {                                                                     \
            if ((lim) >= 16 || (cap) >= 16) v8_store((p) + 8, (hi) * (alpha));               \
            else v8_store_part((p) + 8, (hi) * (alpha), (lim) - 8);                          \
        }                                                                                    \
    } while (0)

/* The scores and mixes below run 6 rows x 16 columns at a time: 12 accumulators, two
 * vector loads (y0, y1) and six broadcasts per step of the sum (a GEMM micro-tile over
 * the causal triangle). Rows of the tile past the last row (r >= nr) read a valid row
 * and are not stored. */
#define MIX_ROWS 6
#define MIX_STORE(r, k)                                     \
    do {                                                    \
        if ((k) < nr) {                                     \
            v8_store(O + (o0 + (k)) * ldo + c0, r##l);      \
            v8_store(O + (o0 + (k)) * ldo + c0 + 8, r##h);  \
        }                                                   \
    } while (0)

/* Row i - r0 of S = alpha x_i . y_j for r0 <= i < r1, j <= i (rows of S at stride lds;
 * beyond i, up to the next multiple of 8 below lds, unused values may be written); x rows
 * at stride ldx; yT = y^T packed by att_pack_t with ldt >= ATT_PAD(r1). */
GPT_HOT static void att_scores(float* S, int64_t lds, const float* x, int64_t ldx, const float* yT, int64_t ldt,
                               int64_t r0, int64_t r1, int hs, float alpha) {
    for (int64_t i0 = r0; i0 < r1; i0 += MIX_ROWS) {
        const int64_t nr = min64(MIX_ROWS, r1 - i0);
        const float* xr[MIX_ROWS];
        for (int r = 0; r < MIX_ROWS; r++) xr[r] = x + (i0 + (r < nr ? r : 0)) * ldx;
        for (int64_t j0 = 0; j0 < i0 + nr; j0 += 16) {
            TILE16_DECL(c0); TILE16_DECL(c1); TILE16_DECL(c2); TILE16_DECL(c3); TILE16_DECL(c4); TILE16_DECL(c5);
            const float* b = yT + j0;
            for (int d = 0; d < hs; d++, b += ldt) {
                const v8f y0 = v8_load(b), y1 = v8_load(b + 8);
                TILE16_FMA(c0, xr[0][d]); TILE16_FMA(c1, xr[1][d]); TILE16_FMA(c2, xr[2][d]);
                TILE16_FMA(c3, xr[3][d]); TILE16_FMA(c4, xr[4][d]); TILE16_FMA(c5, xr[5][d]);
            }
            float* o = S + (i0 - r0) * lds + j0;
            /* row r keeps j <= i0 + r: the first i0 + r + 1 - j0 lanes */
            att_store16(o, c0l, c0h, i0 + 1 - j0, alpha, lds - j0);
            if (nr > 1 && i0 + 2 - j0 > 0) att_store16(o + lds, c1l, c1h, i0 + 2 - j0, alpha, lds - j0);
            if (nr > 2 && i0 + 3 - j0 > 0) att_store16(o + 2 * lds, c2l, c2h, i0 + 3 - j0, alpha, lds - j0);
            if (nr > 3 && i0 + 4 - j0 > 0) att_store16(o + 3 * lds, c3l, c3h, i0 + 4 - j0, alpha, lds - j0);
            if (nr > 4 && i0 + 5 - j0 > 0) att_store16(o + 4 * lds, c4l, c4h, i0 + 5 - j0, alpha, lds - j0);
            if (nr > 5 && i0 + 6 - j0 > 0) att_store16(o + 5 * lds, c5l, c5h, i0 + 6 - j0, alpha, lds - j0);
        }
    }
}

/* O[i] = sum_{j <= i} P[i - r0][j] y_j for r0 <= i < r1 (rows of hs, a multiple of 16;
 * overwrites). */
GPT_HOT static void att_mix(float* O, int64_t ldo, const float* P, int64_t ldp, const float* y, int64_t ldy,
                            int64_t r0, int64_t r1, int hs) {
    for (int64_t o0 = r0; o0 < r1; o0 += MIX_ROWS) {
        const int64_t nr = min64(MIX_ROWS, r1 - o0);
        const float* p[MIX_ROWS];
        for (int r = 0; r < MIX_ROWS; r++) p[r] = P + (o0 - r0 + (r < nr ? r : 0)) * ldp;
        for (int c0 = 0; c0 < hs; c0 += 16) {
            TILE16_DECL(a0); TILE16_DECL(a1); TILE16_DECL(a2); TILE16_DECL(a3); TILE16_DECL(a4); TILE16_DECL(a5);
            /* j <= o0: every row's term counts */
            for (int64_t j = 0; j <= o0; j++) {
                const v8f y0 = v8_load(y + j * ldy + c0), y1 = v8_load(y + j * ldy + c0 + 8);
                TILE16_FMA(a0, p[0][j]); TILE16_FMA(a1, p[1][j]); TILE16_FMA(a2, p[2][j]);
                TILE16_FMA(a3, p[3][j]); TILE16_FMA(a4, p[4][j]); TILE16_FMA(a5, p[5][j]);
            }
            /* the triangle: row r takes j <= o0 + r */
            for (int64_t j = o0 + 1; j < o0 + nr; j++) {
                const v8f y0 = v8_load(y + j * ldy + c0), y1 = v8_load(y + j * ldy + c0 + 8);
                const int64_t d = j - o0;
                TILE16_FMA(a1, d <= 1 ? p[1][j] : 0.0f); TILE16_FMA(a2, d <= 2 ? p[2][j] : 0.0f);
                TILE16_FMA(a3, d <= 3 ? p[3][j] : 0.0f); TILE16_FMA(a4, d <= 4 ? p[4][j] : 0.0f);
                TILE16_FMA(a5, d <= 5 ? p[5][j] : 0.0f);
            }
            MIX_STORE(a0, 0); MIX_STORE(a1, 1); MIX_STORE(a2, 2); MIX_STORE(a3, 3); MIX_STORE(a4, 4); MIX_STORE(a5, 5);
        }
    }
}

/* The rows i in [r0, r1) of P^T y over the lower triangle: O[j] (+)= sum over i in
 * [max(r0, j), r1) of P[i - r0][j] y_i for j < r1, added to rows j < r0 (which earlier
 * row blocks wrote) and overwriting rows j >= r0 (which no earlier block reached). */
#define MIX_STORE_T(r, k)                                                               \
    do {                                                                                \
        if ((k) < nr) {                                                                 \
            float* o_ = O + (o0 + (k)) * ldo + c0;                                      \
            const int add_ = o0 + (k) < r0;                                             \
            v8_store(o_, add_ ? r##l + v8_load(o_) : r##l);                             \
            v8_store(o_ + 8, add_ ? r##h + v8_load(o_ + 8) : r##h);                     \
        }                                                                               \
    } while (0)

GPT_HOT static void att_mix_t(float* O, int64_t ldo, const float* P, int64_t ldp, const float* y, int64_t ldy,
                              int64_t r0, int64_t r1, int hs) {
    for (int64_t o0 = 0; o0 < r1; o0 += MIX_ROWS) {
        const int64_t nr = min64(MIX_ROWS, r1 - o0);
        const int64_t i_start = r0 > o0 ? r0 : o0;
        const int64_t i_full = o0 + nr - 1 > i_start ? o0 + nr - 1 : i_start; /* every row counts from here */
        int64_t col[MIX_ROWS];
        for (int r = 0; r < MIX_ROWS; r++) col[r] = o0 + (r < nr ? r : 0);
        for (int c0 = 0; c0 < hs; c0 += 16) {
            TILE16_DECL(a0); TILE16_DECL(a1); TILE16_DECL(a2); TILE16_DECL(a3); TILE16_DECL(a4); TILE16_DECL(a5);
            /* the triangle: output row r takes i >= o0 + r */
            for (int64_t i = i_start; i < i_full; i++) {
                const v8f y0 = v8_load(y + i * ldy + c0), y1 = v8_load(y + i * ldy + c0 + 8);
                const float* pr = P + (i - r0) * ldp;
                const int64_t d = i - o0;
                TILE16_FMA(a0, pr[col[0]]); TILE16_FMA(a1, d >= 1 ? pr[col[1]] : 0.0f);
                TILE16_FMA(a2, d >= 2 ? pr[col[2]] : 0.0f); TILE16_FMA(a3, d >= 3 ? pr[col[3]] : 0.0f);
                TILE16_FMA(a4, d >= 4 ? pr[col[4]] : 0.0f);
            }
            for (int64_t i = i_full; i < r1; i++) {
                const v8f y0 = v8_load(y + i * ldy + c0), y1 = v8_load(y + i * ldy + c0 + 8);
                const float* pr = P + (i - r0) * ldp;
                TILE16_FMA(a0, pr[col[0]]); TILE16_FMA(a1, pr[col[1]]); TILE16_FMA(a2, pr[col[2]]);
                TILE16_FMA(a3, pr[col[3]]); TILE16_FMA(a4, pr[col[4]]); TILE16_FMA(a5, pr[col[5]]);
            }
            MIX_STORE_T(a0, 0); MIX_STORE_T(a1, 1); MIX_STORE_T(a2, 2);
            MIX_STORE_T(a3, 3); MIX_STORE_T(a4, 4); MIX_STORE_T(a5, 5);
        }
    }
}

static void att_fwd_pair(const att_ctx* a, int64_t pair, float* scratch) {
    const int T = a->T, C = a->C, hs = C / a->H;
    const int64_t b = pair / a->H, h = pair % a->H, ld = 3 * (int64_t)C;
    const float* q = a->qkv + b * T * ld + h * hs;
    const float* k = q + C;
    const float* v = q + 2 * C;
    float* o = a->out + b * T * C + h * hs;
    float* st = a->stats + pair * T * 2;
    float* A = a->att ? a->att + pair * T * T : scratch;
    const float scale = 1.0f / sqrtf((float)hs);
    if (ATT_DIRECT(hs, T)) {
        /* query rows in blocks of ATT_RB: a block's probabilities stay in L2 */
        float* kT = scratch + 2 * (int64_t)T * T;
        att_pack_t(kT, ATT_PAD(T), k, ld, T, hs);
        for (int64_t r0 = 0; r0 < T; r0 += ATT_RB) {
            const int64_t r1 = min64(T, r0 + ATT_RB);
            float* P = A + (a->att ? r0 * T : 0); /* rows r0..r1 */
            att_scores(P, T, q, ld, kT, ATT_PAD(T), r0, r1, hs, scale);
            for (int64_t i = r0; i < r1; i++)
                softmax_causal_row(P + (i - r0) * T, i + 1, ATT_ROW_END(i, T), st + 2 * i);
            att_mix(o, C, P, T, v, ld, r0, r1, hs);
        }
        return;
    }
    for (int64_t i0 = 0; i0 < T; i0 += ATT_TB) {
        const int64_t i1 = min64(T, i0 + ATT_TB), M = i1 - i0;
        /* A[i0:i1, 0:i1] = scale q[i0:i1] k[0:i1]^T */
        k_sgemm(0, 1, M, i1, hs, scale, q + i0 * ld, ld, k, ld, 0.0f, A + i0 * T, T);
        for (int64_t i = i0; i < i1; i++) softmax_causal_row(A + i * T, i + 1, i1, st + 2 * i);
        /* o[i0:i1] = A[i0:i1, 0:i1] v[0:i1] */
        k_sgemm(0, 0, M, hs, i1, 1.0f, A + i0 * T, T, v, ld, 0.0f, o + i0 * C, C);
    }
}

static void att_fwd_task(void* vctx, int tid, int nt) {
    const att_ctx* a = (const att_ctx*)vctx;
    int64_t p0, p1;
    gpt_split((int64_t)a->B * a->H, tid, nt, &p0, &p1);
    float* A = a->scratch + (int64_t)tid * k_attention_scratch(a->T, a->C, 1);
    for (int64_t pair = p0; pair < p1; pair++) att_fwd_pair(a, pair, A);
}

int64_t k_attention_scratch(int T, int C, int nthreads) {
    return (2 * (int64_t)T * T + 2 * (int64_t)C * ATT_PAD(T)) * (nthreads < 1 ? 1 : nthreads);
}

void k_attention_fwd(gpt_pool* p, float* out, float* att, float* stats, float* scratch, const float* qkv, int B,
                     int T, int C, int H) {
    att_ctx a = {.out = out, .att = att, .stats = stats, .scratch = scratch, .qkv = qkv, .B = B, .T = T, .C = C,
                 .H = H};
    gpt_pool_run_for(p, att_fwd_task, &a, 2.0 * B * (double)T * T * (C + 10.0 * H));
}

/* In place over d[0:n): d = a * (d - sum(a d)) * scale (softmax backward); d[n:end) = 0
 * (as the rows above: written anywhere below end; arow is read below n only). */
GPT_HOT static void softmax_bwd_row(float* d, const float* arow, int64_t n, int64_t end, float scale) {
    const int64_t n8 = n & ~(int64_t)7;
    const int vt = ROW_TAIL(n, end);
    const v8i tail = v8_first(n - n8);
    v8f acc = v8_zero();
    for (int64_t j = 0; j < n8; j += 8) acc += v8_load(arow + j) * v8_load(d + j);
    v8f at = v8_zero(), dt = v8_zero();
    if (vt) {
        /* lanes from n on hold whatever was there: masked before any arithmetic */
        at = v8_select(tail, v8_load(arow + n8), v8_zero());
        dt = v8_select(tail, v8_load(d + n8), v8_zero());
        acc += at * dt;
    }
    float s = v8_hsum(acc);
    if (!vt)
        for (int64_t j = n8; j < n; j++) s += arow[j] * d[j];
    for (int64_t j = 0; j < n8; j += 8) v8_store(d + j, v8_load(arow + j) * (v8_load(d + j) - s) * scale);
    if (vt) v8_store(d + n8, v8_select(tail, at * (dt - s) * scale, v8_zero()));
    else
        for (int64_t j = n8; j < n; j++) d[j] = arow[j] * (d[j] - s) * scale;
    const int64_t z = vt ? n8 + 8 : n;
    zero_span(d + z, end - z);
}

static void att_bwd_pair(const att_ctx* a, int64_t pair, float* scratch, float* D) {
    const int T = a->T, C = a->C, hs = C / a->H;
    const int64_t b = pair / a->H, h = pair % a->H, ld = 3 * (int64_t)C;
    const float* q = a->qkv + b * T * ld + h * hs;
    const float* k = q + C;
    const float* v = q + 2 * C;
    const float* dO = a->dout + b * T * C + h * hs;
    float* dq = a->dqkv + b * T * ld + h * hs;
    float* dk = dq + C;
    float* dv = dq + 2 * C;
    const float* st = a->cstats + pair * T * 2;
    const float* A = a->catt ? a->catt + pair * T * T : scratch;
    const float scale = 1.0f / sqrtf((float)hs);
    if (ATT_DIRECT(hs, T)) {
        float* kT = scratch + 2 * (int64_t)T * T;
        float* vT = kT + (int64_t)hs * ATT_PAD(T);
        if (!a->catt) att_pack_t(kT, ATT_PAD(T), k, ld, T, hs);
        att_pack_t(vT, ATT_PAD(T), v, ld, T, hs);
        /* query rows in blocks of ATT_RB; dk and dv gather every block's part */
        for (int64_t r0 = 0; r0 < T; r0 += ATT_RB) {
            const int64_t r1 = min64(T, r0 + ATT_RB);
            const float* P = A + (a->catt ? r0 * T : 0); /* the probabilities of rows r0..r1 */
            if (!a->catt) {
                att_scores(scratch, T, q, ld, kT, ATT_PAD(T), r0, r1, hs, scale);
                for (int64_t i = r0; i < r1; i++)
                    softmax_recompute_row(scratch + (i - r0) * T, i + 1, ATT_ROW_END(i, T), st + 2 * i);
            }
            /* dA = dO v^T, then through the softmax (and the scale) */
            att_scores(D, T, dO, C, vT, ATT_PAD(T), r0, r1, hs, 1.0f);
            for (int64_t i = r0; i < r1; i++)
                softmax_bwd_row(D + (i - r0) * T, P + (i - r0) * T, i + 1, ATT_ROW_END(i, T), scale);
            att_mix(dq, ld, D, T, k, ld, r0, r1, hs);
            att_mix_t(dv, ld, P, T, dO, C, r0, r1, hs);
            att_mix_t(dk, ld, D, T, q, ld, r0, r1, hs);
        }
        return;
    }
    for (int64_t i0 = 0; i0 < T; i0 += ATT_TB) {
        const int64_t i1 = min64(T, i0 + ATT_TB), M = i1 - i0;
        if (!a->catt) {
            /* the forward's probabilities A[i0:i1, 0:i1] again */
            k_sgemm(0, 1, M, i1, hs, scale, q + i0 * ld, ld, k, ld, 0.0f, scratch + i0 * T, T);
            for (int64_t i = i0; i < i1; i++) softmax_recompute_row(scratch + i * T, i + 1, i1, st + 2 * i);
        }
        /* dA[i0:i1, 0:i1] = dO[i0:i1] v[0:i1]^T, then through the softmax (and the scale) */
        k_sgemm(0, 1, M, i1, hs, 1.0f, dO + i0 * C, C, v, ld, 0.0f, D + i0 * T, T);
        for (int64_t i = i0; i < i1; i++) softmax_bwd_row(D + i * T, A + i * T, i + 1, i1, scale);
        /* dq[i0:i1] = dS[i0:i1, 0:i1] k[0:i1] */
        k_sgemm(0, 0, M, hs, i1, 1.0f, D + i0 * T, T, k, ld, 0.0f, dq + i0 * ld, ld);
    }
    for (int64_t j0 = 0; j0 < T; j0 += ATT_TB) {
        const int64_t j1 = min64(T, j0 + ATT_TB), M = j1 - j0, K = T - j0;
        /* dv[j0:j1] = A[j0:T, j0:j1]^T dO[j0:T]; dk[j0:j1] = dS[j0:T, j0:j1]^T q[j0:T] */
        k_sgemm(1, 0, M, hs, K, 1.0f, A + j0 * T + j0, T, dO + j0 * C, C, 0.0f, dv + j0 * ld, ld);
        k_sgemm(1, 0, M, hs, K, 1.0f, D + j0 * T + j0, T, q + j0 * ld, ld, 0.0f, dk + j0 * ld, ld);
    }
}

static void att_bwd_task(void* vctx, int tid, int nt) {
    const att_ctx* a = (const att_ctx*)vctx;
    int64_t p0, p1;
    gpt_split((int64_t)a->B * a->H, tid, nt, &p0, &p1);
    float* A = a->scratch + (int64_t)tid * k_attention_scratch(a->T, a->C, 1);
    float* D = A + (int64_t)a->T * a->T;
    for (int64_t pair = p0; pair < p1; pair++) att_bwd_pair(a, pair, A, D);
}

void k_attention_bwd(gpt_pool* p, float* dqkv, float* scratch, const float* dout, const float* qkv,
                     const float* att, const float* stats, int B, int T, int C, int H) {
    att_ctx a = {.dqkv = dqkv, .scratch = scratch, .dout = dout, .qkv = qkv, .catt = att, .cstats = stats, .B = B,
                 .T = T, .C = C, .H = H};
    gpt_pool_run_for(p, att_bwd_task, &a, 5.0 * B * (double)T * T * (C + 10.0 * H));
}
