// softmin.c — the soft minimum of two value heads and its backward (SAFE-SPEC §3).
#include "softmin.h"   // softmin_pair, softmin_forward, softmin_backward

#include <math.h>

// Stable form: with a = −v1/α, b = −v2/α and m = max(a, b),
//   logsumexp(a, b) = m + log1p(exp(−|a − b|)),   V_soft = −α·(lse − log 2).
double softmin_pair(double v1, double v2, double alpha) {
    double a = -v1 / alpha, b = -v2 / alpha;
    double m = a > b ? a : b;
    double lse = m + log1p(exp(-fabs(a - b)));
    return -alpha * (lse - M_LN2);
}

// Weight of V1 in the gradient: softmax(−V/α)_1 = 1 / (1 + exp((v1 − v2)/α)), written so
// that exp never overflows.
static double softmin_w1(double v1, double v2, double alpha) {
    double z = (v1 - v2) / alpha;
    if (z > 0) { double e = exp(-z); return e / (1.0 + e); }
    return 1.0 / (1.0 + exp(z));
}

// v1, v2, vsoft (N)
void softmin_forward(const float *v1, const float *v2, size_t N, float alpha, float *vsoft) {
    #pragma omp parallel for if (N > 65536)
    for (size_t i = 0; i < N; i++)
        vsoft[i] = (float)softmin_pair(v1[i], v2[i], alpha);
}

// dvsoft (N) upstream; dv1, dv2 (N) accumulated
void softmin_backward(const float *v1, const float *v2, size_t N, float alpha,
                      const float *dvsoft, float *dv1, float *dv2) {
    #pragma omp parallel for if (N > 65536)
    for (size_t i = 0; i < N; i++) {
        // V_soft = −α·lse(−V/α) + α log 2  →  ∂V_soft/∂V_k = softmax(−V/α)_k
        double w1 = softmin_w1(v1[i], v2[i], alpha);
        dv1[i] += (float)(dvsoft[i] * w1);
        dv2[i] += (float)(dvsoft[i] * (1.0 - w1));
    }
}
