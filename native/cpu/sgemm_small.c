/*
 * sgemm_small.c: see sgemm_small.h. BLIS-style loops without packing A:
 *
 *   for each block of NC columns, each block of KC of the sum:
 *     pack B(KC, NC) into 16-column panels (on the stack, 64 KiB)
 *     for each 6-row tile of C, each 16-column panel: the 6 x 16 micro-kernel
 *
 * so a tile's 6 rows of A (6 x KC floats) stay in L1 while the packed B block is read
 * from L2. The micro-kernel keeps C's tile in 12 vectors of 8: per k, two loads of B,
 * six broadcasts of A, twelve FMAs.
 */
#include "sgemm_small.h"

#include "simd.h"

#define SGEMM_SMALL_KC 128
#define SGEMM_SMALL_NC 128
#define TILE_M 6
#define TILE_N 16

int gpt_sgemm_small_fits(int ta, int64_t N, int64_t K, float beta) {
#if defined(GPT_AVX2_CLONES)
    /* a read of the CPU model the ifunc resolvers have already filled in: no cache of our own */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !ta && (beta == 0.0f || beta == 1.0f) &&
           K <= SGEMM_SMALL_MAX && N <= SGEMM_SMALL_MAX;
#else
    (void)ta, (void)N, (void)K, (void)beta;
    return 0;
#endif
}

/* Bp[panel][p][16] = op(B)(p0 + p, j0 + 16 panel + j), zero beyond column nc. */
GPT_HOT static void pack_b(float* Bp, const float* B, int64_t ldb, int tb, int64_t p0, int64_t kc, int64_t j0,
                           int64_t nc) {
    for (int64_t jp = 0; jp < nc; jp += TILE_N, Bp += kc * TILE_N) {
        const int64_t w = min64(TILE_N, nc - jp);
        if (tb && w == TILE_N) { /* B(N, K): row j of B is column j of op(B); 8 x 8 blocks transposed */
            int64_t p = 0;
            for (; p + 8 <= kc; p += 8)
                for (int64_t h = 0; h < TILE_N; h += 8) {
                    v8f r[8];
                    for (int j = 0; j < 8; j++) r[j] = v8_load(B + (j0 + jp + h + j) * ldb + p0 + p);
                    v8_transpose8(r);
                    for (int q = 0; q < 8; q++) v8_store(Bp + (p + q) * TILE_N + h, r[q]);
                }
            for (; p < kc; p++)
                for (int64_t j = 0; j < TILE_N; j++) Bp[p * TILE_N + j] = B[(j0 + jp + j) * ldb + p0 + p];
        } else if (tb) {
            for (int64_t j = 0; j < TILE_N; j++) {
                const float* src = B + (j0 + jp + j) * ldb + p0;
                for (int64_t p = 0; p < kc; p++) Bp[p * TILE_N + j] = j < w ? src[p] : 0.0f;
            }
        } else if (w == TILE_N) { /* B(K, N): rows of op(B) as they are */
            for (int64_t p = 0; p < kc; p++) {
                const float* src = B + (p0 + p) * ldb + j0 + jp;
                v8_store(Bp + p * TILE_N, v8_load(src));
                v8_store(Bp + p * TILE_N + 8, v8_load(src + 8));
            }
        } else {
            for (int64_t p = 0; p < kc; p++) {
                const float* src = B + (p0 + p) * ldb + j0 + jp;
                for (int64_t j = 0; j < TILE_N; j++) Bp[p * TILE_N + j] = j < w ? src[j] : 0.0f;
            }
        }
    }
}

/* row r of the tile into C: = alpha acc (beta 0) or += alpha acc (beta 1), w columns */
#define TILE_STORE(r)                                                                        \
    do {                                                                                     \
        if ((r) < mr) {                                                                      \
            float* c_ = C + (r) * ldc;                                                       \
            const v8f lo_ = alpha * c##r##l, hi_ = alpha * c##r##h;                          \
            if (w == TILE_N) {                                                               \
                v8_store(c_, beta == 0.0f ? lo_ : v8_load(c_) + lo_);                        \
                v8_store(c_ + 8, beta == 0.0f ? hi_ : v8_load(c_ + 8) + hi_);                \
            } else {                                                                         \
                for (int j_ = 0; j_ < w; j_++) {                                             \
                    const float v_ = j_ < 8 ? lo_[j_] : hi_[j_ - 8];                         \
                    c_[j_] = beta == 0.0f ? v_ : c_[j_] + v_;                                \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    } while (0)

/* C(mr <= 6, w <= 16) (+)= alpha (init + A(mr, kc) Bp(kc, 16)): the sums start from the
 * 16 floats at init in every row (a bias), or from 0 with init NULL */
GPT_HOT static void tile_6x16(int64_t kc, const float* A, int64_t lda, const float* Bp, float* C, int64_t ldc,
                              int mr, int w, float alpha, float beta, const float* init) {
    const float* a[TILE_M];
    for (int r = 0; r < TILE_M; r++) a[r] = A + (r < mr ? r : 0) * lda; /* rows past mr: computed, not stored */
    /* C's tile is read at the end (beta 1) or written: fetch its lines while the sum runs */
    for (int r = 0; r < mr; r++) {
        __builtin_prefetch(C + r * ldc, 1, 3);
        __builtin_prefetch(C + r * ldc + TILE_N - 1, 1, 3);
    }
    const v8f i0 = init ? v8_load(init) : v8_zero(), i1 = init ? v8_load(init + 8) : v8_zero();
    TILE16_FROM(c0, i0, i1); TILE16_FROM(c1, i0, i1); TILE16_FROM(c2, i0, i1);
    TILE16_FROM(c3, i0, i1); TILE16_FROM(c4, i0, i1); TILE16_FROM(c5, i0, i1);
    for (int64_t p = 0; p < kc; p++, Bp += TILE_N) {
        const v8f y0 = v8_load(Bp), y1 = v8_load(Bp + 8);
        TILE16_FMA(c0, a[0][p]); TILE16_FMA(c1, a[1][p]); TILE16_FMA(c2, a[2][p]);
        TILE16_FMA(c3, a[3][p]); TILE16_FMA(c4, a[4][p]); TILE16_FMA(c5, a[5][p]);
    }
    TILE_STORE(0); TILE_STORE(1); TILE_STORE(2); TILE_STORE(3); TILE_STORE(4); TILE_STORE(5);
}

/* C = alpha A op(B) + beta C, or (bias not NULL, alpha 1, beta 0) A op(B) + bias */
static void sgemm_small(int tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                        const float* B, int64_t ldb, float beta, const float* bias, float* C, int64_t ldc) {
    float Bp[SGEMM_SMALL_KC * SGEMM_SMALL_NC] __attribute__((aligned(64)));
    float edge[TILE_N] __attribute__((aligned(32))); /* the bias of a last panel narrower than 16 */
    for (int64_t j0 = 0; j0 < N; j0 += SGEMM_SMALL_NC) {
        const int64_t nc = min64(SGEMM_SMALL_NC, N - j0);
        for (int64_t p0 = 0; p0 < K; p0 += SGEMM_SMALL_KC) {
            const int64_t kc = min64(SGEMM_SMALL_KC, K - p0);
            const float b = p0 == 0 ? beta : 1.0f; /* later blocks of the sum add to the first */
            pack_b(Bp, B, ldb, tb, p0, kc, j0, nc);
            for (int64_t i0 = 0; i0 < M; i0 += TILE_M) {
                const int mr = (int)min64(TILE_M, M - i0);
                for (int64_t jp = 0; jp < nc; jp += TILE_N) {
                    const int w = (int)min64(TILE_N, nc - jp);
                    const float* init = NULL; /* the first block of the sum starts from the bias */
                    if (bias && p0 == 0) {
                        init = bias + j0 + jp;
                        if (w < TILE_N) {
                            for (int j = 0; j < TILE_N; j++) edge[j] = j < w ? init[j] : 0.0f;
                            init = edge;
                        }
                    }
                    tile_6x16(kc, A + i0 * lda + p0, lda, Bp + jp * kc, C + i0 * ldc + j0 + jp, ldc, mr, w, alpha, b,
                              init);
                }
            }
        }
    }
}

void gpt_sgemm_small(int tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                     const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    sgemm_small(tb, M, N, K, alpha, A, lda, B, ldb, beta, NULL, C, ldc);
}

void gpt_sgemm_small_bias(int tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                          int64_t ldb, const float* bias, float* C, int64_t ldc) {
    sgemm_small(tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, bias, C, ldc);
}
