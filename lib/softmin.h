// softmin.h — the double soft-min critic's combination of two value heads (SAFE-SPEC §3).
//
//   V_soft = −α · log( ½ (exp(−V1/α) + exp(−V2/α)) )
//          = −α · (logsumexp(−V1/α, −V2/α) − log 2)         α = 0.3
//
// Properties: min(V1,V2) ≤ V_soft ≤ min(V1,V2) + α·log 2; V_soft ≤ (V1+V2)/2;
// V_soft(v, v) = v; ∂V_soft/∂V_k = softmax(−V/α)_k. Example: V1=1, V2=2 → 1.1974284.
#ifndef SAFE_SOFTMIN_H
#define SAFE_SOFTMIN_H

#include <stddef.h>

#define SOFTMIN_ALPHA 0.3f

// One pair, computed in double and returned as double (tests and scalar callers).
double softmin_pair(double v1, double v2, double alpha);

// v1, v2, vsoft (N); alpha > 0. vsoft[i] = soft-min of (v1[i], v2[i]).
void softmin_forward(const float *v1, const float *v2, size_t N, float alpha, float *vsoft);
// dvsoft (N) upstream; dv1, dv2 (N) += dvsoft · softmax(−V/α)_k. No state is kept by the
// forward: the weights are recomputed from v1, v2 (two exps per element).
void softmin_backward(const float *v1, const float *v2, size_t N, float alpha,
                      const float *dvsoft, float *dv1, float *dv2);

#endif
