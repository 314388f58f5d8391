// logprob.h — per-token log-probability and entropy of temperature-scaled logits, in fp32
// over the full vocabulary, and their backward. This is the seam where RL losses plug in.
#ifndef SAFE_LOGPROB_H
#define SAFE_LOGPROB_H

#include <stddef.h>
#include <stdint.h>

// logits (N, V); targets (N) or NULL; temp > 0.
// logp[i] = log softmax(logits[i]/temp)[targets[i]]  (skipped when targets or logp is NULL)
// entropy[i] = -sum_j p_j log p_j of the same distribution (skipped when entropy is NULL)
// A negative target (padding) gives logp 0 and no gradient; a target >= V dies (exit 2).
void logprob_forward(const float *logits, size_t N, int V, float temp, const int32_t *targets,
                     float *logp, float *entropy);
// dlogits (N, V) += d(loss)/d(logits) given dlogp (N) and dentropy (N) (either may be NULL).
// Rows with both upstream gradients zero are skipped.
void logprob_backward(const float *logits, size_t N, int V, float temp, const int32_t *targets,
                      const float *dlogp, const float *dentropy, float *dlogits);

#endif
