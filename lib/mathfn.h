// mathfn.h — small numeric helpers shared by the CPU engine (model.c, logprob.c).
#ifndef SAFE_MATHFN_H
#define SAFE_MATHFN_H

#include <math.h>
#include <stdint.h>
#include <string.h>

// exp(x) in fp32, written so that `#pragma omp simd` loops vectorise it (glibc's expf has no
// vector variant without -ffast-math, and floorf is a library call at -march=x86-64-v2).
// Cephes expf: Cody-Waite range reduction x = n ln2 + r with n = round(x / ln2) (by the
// 1.5*2^23 trick, round-to-nearest), degree-6 polynomial, 2^n through the exponent bits.
// Error about 1 ulp on [-87, 88]; inputs below -87.3 return ~1e-38 instead of a denormal
// (they only ever weigh a probability, where that is zero in practice), inputs above 88.3 are
// clamped.
#pragma omp declare simd
static inline float exp_approx(float x) {
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    float y = p * r * r + r + 1.0f;
    // n is in [-126, 127] for any finite x; a NaN x makes n NaN, and converting that to an
    // integer is undefined: clamp so that a NaN lands on -126 (y is NaN, so is the result)
    n = n >= -126.0f ? n : -126.0f;
    n = n <= 127.0f ? n : 127.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;   // 2^n
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

// The same function on 8 lanes (GCC vector extensions: SSE pairs at x86-64-v2, one AVX
// register where the caller is compiled for AVX2). Every lane performs exactly the scalar
// exp_approx's operations, so both give the same bits.
// (All helpers are static inline, so the vector ABI note GCC gives for 32-byte vectors at
// x86-64-v2 does not apply; silence it.)
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline __attribute__((always_inline)) v8f v8f_load(const float *p) { v8f v; memcpy(&v, p, sizeof v); return v; }
static inline __attribute__((always_inline)) void v8f_store(float *p, v8f v) { memcpy(p, &v, sizeof v); }
static inline __attribute__((always_inline)) v8f v8f_set1(float x) { return (v8f){x, x, x, x, x, x, x, x}; }
static inline __attribute__((always_inline)) v8f v8f_select(v8i m, v8f a, v8f b) {  // m ? a : b, lane by lane (m = 0 or -1)
    return (v8f)(((v8i)a & m) | ((v8i)b & ~m));
}

static inline __attribute__((always_inline)) v8f exp_approx8(v8f x) {
    x = v8f_select(x < v8f_set1(-87.3f), v8f_set1(-87.3f), x);
    x = v8f_select(x > v8f_set1(88.3f), v8f_set1(88.3f), x);
    v8f n = (x * v8f_set1(1.44269504088896341f) + v8f_set1(12582912.0f)) - v8f_set1(12582912.0f);
    v8f r = x - n * v8f_set1(0.693359375f);
    r = r - n * v8f_set1(-2.12194440e-4f);
    v8f p = v8f_set1(1.9875691500E-4f);
    p = p * r + v8f_set1(1.3981999507E-3f);
    p = p * r + v8f_set1(8.3334519073E-3f);
    p = p * r + v8f_set1(4.1665795894E-2f);
    p = p * r + v8f_set1(1.6666665459E-1f);
    p = p * r + v8f_set1(5.0000001201E-1f);
    v8f y = p * r * r + r + v8f_set1(1.0f);
    n = v8f_select(n >= v8f_set1(-126.0f), n, v8f_set1(-126.0f));   // NaN -> -126, as above
    n = v8f_select(n <= v8f_set1(127.0f), n, v8f_set1(127.0f));
    v8i bits = (v8i)((__builtin_convertvector(n, v8i) + 127) * 8388608);   // << 23, no signed shift
    return y * (v8f)bits;
}

#endif
