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
    int32_t bits = ((int32_t)n + 127) << 23;   // 2^n, n in [-126, 127]
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

#endif
