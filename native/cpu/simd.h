/*
 * simd.h: 8-lane float vectors through the GCC/clang vector extension, so one source
 * serves SSE2 (two halves), AVX2 (target clones) and NEON. Reductions are written
 * out in a fixed order, so a result never depends on how the compiler vectorized.
 */
#ifndef GPT_SIMD_H
#define GPT_SIMD_H

#include <stdint.h>
#include <string.h>

/* The vectors only cross static inline functions: no ABI is exposed, so GCC's note
 * about 32-byte vector arguments without AVX does not apply. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

/* Functions worth an AVX2+FMA copy on x86-64 (picked at load time by the ifunc resolver). */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && !defined(GPT_NO_CLONES)
#define GPT_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#define GPT_AVX2_CLONES 1
#else
#define GPT_HOT
#endif

/* The helpers are macros (GNU statement expressions), not inline functions: clang
 * rejects 32-byte vector arguments and returns on x86 without AVX ("changes the ABI")
 * even for always_inline functions. Macro-local names end in _ to avoid capture. */

#define v8_load(p)                        \
    ({                                    \
        v8f ld_v_;                        \
        memcpy(&ld_v_, (p), sizeof ld_v_); \
        ld_v_;                            \
    })
#define v8_store(p, v)                     \
    do {                                   \
        v8f st_v_ = (v);                   \
        memcpy((p), &st_v_, sizeof st_v_); \
    } while (0)
#define v8_zero() ((v8f){0, 0, 0, 0, 0, 0, 0, 0})
/* Every lane x: a plain broadcast (0 + x would cost an add per call: it must keep -0.0). */
#define v8_set1(x)                                                              \
    ({                                                                          \
        const float s1_x_ = (float)(x);                                         \
        (v8f){s1_x_, s1_x_, s1_x_, s1_x_, s1_x_, s1_x_, s1_x_, s1_x_};          \
    })
/* m ? a : b, per lane (m lanes are all ones or all zeros). */
#define v8_select(m, a, b) ((v8f)(((m) & (v8i)(a)) | (~(m) & (v8i)(b))))
/* max(a, b) per lane; a NaN in a is kept. */
#define v8_max(a, b)                                  \
    ({                                                \
        v8f mx_a_ = (a), mx_b_ = (b);                 \
        v8_select(mx_a_ < mx_b_, mx_b_, mx_a_);       \
    })
#define v8_hsum(v)                                                                          \
    ({                                                                                      \
        v8f hs_v_ = (v);                                                                    \
        ((hs_v_[0] + hs_v_[4]) + (hs_v_[1] + hs_v_[5])) + ((hs_v_[2] + hs_v_[6]) + (hs_v_[3] + hs_v_[7])); \
    })
/* max over the lanes by halving (NaN-free inputs: softmax rows) */
#define v8_hmax(v)                                                                      \
    ({                                                                                  \
        v8f hm_v_ = (v);                                                                \
        hm_v_ = v8_max(hm_v_, __builtin_shufflevector(hm_v_, hm_v_, 4, 5, 6, 7, 0, 1, 2, 3)); \
        hm_v_ = v8_max(hm_v_, __builtin_shufflevector(hm_v_, hm_v_, 2, 3, 0, 1, 6, 7, 4, 5)); \
        hm_v_ = v8_max(hm_v_, __builtin_shufflevector(hm_v_, hm_v_, 1, 0, 3, 2, 5, 4, 7, 6)); \
        hm_v_[0];                                                                       \
    })

/* One row of a 16-column register tile (a GEMM micro-tile: the small GEMM, the attention
 * products): accumulators r##l, r##h for columns 0-7 and 8-15, and r += s * (y0, y1), the
 * two vectors of the other operand loaded by the caller for this step of the sum. */
#define TILE16_DECL(r) v8f r##l = v8_zero(), r##h = v8_zero()
/* the same, starting from (lo, hi) instead of zeros */
#define TILE16_FROM(r, lo, hi) v8f r##l = (lo), r##h = (hi)
#define TILE16_FMA(r, s)               \
    do {                               \
        const v8f tf_s_ = v8_set1(s);  \
        r##l += tf_s_ * y0;            \
        r##h += tf_s_ * y1;            \
    } while (0)

/* Transposes the 8 x 8 block r[0..7] (rows) in place: r[i][j] <- r[j][i]. Shuffles within
 * and across the two 128-bit halves (AVX: unpack, shuffle, permute2f128), 24 in all. */
#define v8_transpose8(r)                                                                          \
    do {                                                                                          \
        v8f t_[8], u_[8];                                                                         \
        for (int tr_ = 0; tr_ < 8; tr_ += 2) {                                                    \
            t_[tr_] = __builtin_shufflevector((r)[tr_], (r)[tr_ + 1], 0, 8, 1, 9, 4, 12, 5, 13);  \
            t_[tr_ + 1] = __builtin_shufflevector((r)[tr_], (r)[tr_ + 1], 2, 10, 3, 11, 6, 14, 7, 15); \
        }                                                                                         \
        for (int tr_ = 0; tr_ < 8; tr_ += 4)                                                      \
            for (int h_ = 0; h_ < 2; h_++) {                                                      \
                u_[tr_ + 2 * h_] = __builtin_shufflevector(t_[tr_ + h_], t_[tr_ + 2 + h_], 0, 1, 8, 9, 4, 5, 12, 13); \
                u_[tr_ + 2 * h_ + 1] = __builtin_shufflevector(t_[tr_ + h_], t_[tr_ + 2 + h_], 2, 3, 10, 11, 6, 7, 14, 15); \
            }                                                                                     \
        for (int tr_ = 0; tr_ < 4; tr_++) {                                                       \
            (r)[tr_] = __builtin_shufflevector(u_[tr_], u_[tr_ + 4], 0, 1, 2, 3, 8, 9, 10, 11);   \
            (r)[tr_ + 4] = __builtin_shufflevector(u_[tr_], u_[tr_ + 4], 4, 5, 6, 7, 12, 13, 14, 15); \
        }                                                                                         \
    } while (0)

/* exp(x), about 2 ulp over [-87.3, 88]; clamps outside that range; NaN stays NaN.
 * Cephes-style: x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-6 polynomial; 2^n is
 * built in the exponent bits, n read from the low mantissa bits of x/ln2 + 1.5*2^23. */
#define v8_exp(xin)                                                          \
    ({                                                                       \
        v8f ex_x_ = (xin);                                                   \
        const v8f ex_hi_ = v8_set1(88.0f), ex_lo_ = v8_set1(-87.33654475f);  \
        ex_x_ = v8_select(ex_x_ > ex_hi_, ex_hi_, ex_x_);                    \
        ex_x_ = v8_select(ex_x_ < ex_lo_, ex_lo_, ex_x_);                    \
        v8f ex_t_ = ex_x_ * 1.44269504088896341f + 12582912.0f;              \
        v8f ex_n_ = ex_t_ - 12582912.0f;                                     \
        v8f ex_r_ = ex_x_ - ex_n_ * 0.693359375f;                            \
        ex_r_ = ex_r_ - ex_n_ * -2.12194440e-4f;                             \
        v8f ex_p_ = v8_set1(1.9875691500e-4f);                               \
        ex_p_ = ex_p_ * ex_r_ + 1.3981999507e-3f;                            \
        ex_p_ = ex_p_ * ex_r_ + 8.3334519073e-3f;                            \
        ex_p_ = ex_p_ * ex_r_ + 4.1665795894e-2f;                            \
        ex_p_ = ex_p_ * ex_r_ + 1.6666665459e-1f;                            \
        ex_p_ = ex_p_ * ex_r_ + 5.0000001201e-1f;                            \
        ex_p_ = ex_p_ * (ex_r_ * ex_r_) + ex_r_ + 1.0f;                      \
        v8i ex_e_ = ((v8i)ex_t_ - 0x4B400000 + 127) << 23;                   \
        ex_p_ * (v8f)ex_e_;                                                  \
    })

#define s_exp(x)                               \
    ({                                         \
        v8f se_v_ = v8_exp(v8_set1(x));        \
        se_v_[0];                              \
    })

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Elementwise loops split over threads on multiples of this many floats (whole cache lines). */
#define EW_ALIGN 64

/* Loads/stores of the first n < 8 lanes (tails), zero-filled. */
#define v8_load_part(p, n)                                            \
    ({                                                                \
        v8f lp_v_ = v8_zero();                                        \
        for (int64_t lp_i_ = 0; lp_i_ < (n); lp_i_++) lp_v_[lp_i_] = (p)[lp_i_]; \
        lp_v_;                                                        \
    })
#define v8_store_part(p, v, n)                                        \
    do {                                                              \
        v8f sp_v_ = (v);                                              \
        for (int64_t sp_i_ = 0; sp_i_ < (n); sp_i_++) (p)[sp_i_] = sp_v_[sp_i_]; \
    } while (0)

#endif
