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

#define GPT_INLINE static inline __attribute__((always_inline))

/* Functions worth an AVX2+FMA copy on x86-64 (picked at load time by the ifunc resolver). */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && !defined(GPT_NO_CLONES)
#define GPT_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define GPT_HOT
#endif

GPT_INLINE v8f v8_load(const float* p) { v8f v; memcpy(&v, p, sizeof v); return v; }
GPT_INLINE void v8_store(float* p, v8f v) { memcpy(p, &v, sizeof v); }
GPT_INLINE v8f v8_set1(float x) { return (v8f){x, x, x, x, x, x, x, x}; }
GPT_INLINE v8f v8_zero(void) { return (v8f){0, 0, 0, 0, 0, 0, 0, 0}; }
/* m ? a : b, per lane (m lanes are all ones or all zeros). */
GPT_INLINE v8f v8_select(v8i m, v8f a, v8f b) { return (v8f)((m & (v8i)a) | (~m & (v8i)b)); }
/* max(a, b) per lane; a NaN in a is kept. */
GPT_INLINE v8f v8_max(v8f a, v8f b) { return v8_select(a < b, b, a); }
GPT_INLINE float v8_hsum(v8f v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }
GPT_INLINE float v8_hmax(v8f v) {
    float m = v[0];
    for (int i = 1; i < 8; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* exp(x), about 2 ulp over [-87.3, 88]; clamps outside that range; NaN stays NaN.
 * Cephes-style: x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-6 polynomial. */
GPT_INLINE v8f v8_exp(v8f x) {
    const v8f hi = v8_set1(88.0f), lo = v8_set1(-87.33654475f);
    x = v8_select(x > hi, hi, x);
    x = v8_select(x < lo, lo, x);
    /* round(x / ln2) by the 1.5*2^23 trick: t's low mantissa bits hold n */
    const float magic = 12582912.0f;
    v8f t = x * 1.44269504088896341f + magic;
    v8f n = t - magic;
    v8f r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v8f p = v8_set1(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const int32_t magic_bits = 0x4B400000;
    v8i e = ((v8i)t - magic_bits + 127) << 23; /* 2^n as float bits */
    return p * (v8f)e;
}

GPT_INLINE float s_exp(float x) {
    v8f v = v8_exp(v8_set1(x));
    return v[0];
}

#endif
