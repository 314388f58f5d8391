// sampler.h — draw the next token from one row of logits with one uniform number.
//
//   p = softmax(logits / temperature), then optionally keep the top_k most likely tokens,
//   then the smallest most-likely set whose (renormalised) mass reaches top_p, and invert
//   the CDF of what is kept at u * kept_mass.
//
// The kept probability mass is reported: when it is below 1 the sampling distribution is
// not the policy's, and log-probs computed from the full softmax do not describe the
// sampler (RL callers warn about that). A NaN or infinite logit is an error, never a token.
#ifndef SAFE_SAMPLER_H
#define SAFE_SAMPLER_H

#include <stddef.h>

typedef struct {
    float temperature;  // > 0
    int top_k;          // keep the k most likely tokens; 0 = off
    float top_p;        // nucleus mass in (0, 1]; 1 = off
    int greedy;         // evaluation only: argmax, ignores the rest (never for training rollouts)
} SamplerConfig;

enum {
    SAMPLE_OK = 0,
    SAMPLE_NONFINITE = -1,   // the row holds a NaN or an infinity
};

// Scratch for one row; one per thread (or per batch row) when sampling in parallel.
typedef struct {
    int V;
    float *prob;   // (V)
    int *idx;      // (V)
    float *tmp;    // (V) quickselect copy for top-k
} SampleWork;

SamplerConfig sampler_defaults(void);   // temperature 1, top_k 0, top_p 1, greedy 0
// 0 when valid; otherwise writes the reason into why and returns -1.
int sampler_config_check(const SamplerConfig *c, char *why, size_t why_len);

SampleWork *sample_work_create(int V);
void sample_work_free(SampleWork *w);

// logits (V). u in [0, 1). Writes *token and *kept_mass (mass of the kept set under the
// full temperature-scaled softmax; 1 without truncation, p(argmax) when greedy).
// Returns SAMPLE_OK, or SAMPLE_NONFINITE without touching *token.
int sample_logits(const SamplerConfig *c, const float *logits, int V, float u, SampleWork *w,
                  int *token, float *kept_mass);

// Index of the first non-finite value in x (n), or -1: for error messages.
long first_nonfinite(const float *x, size_t n);

#endif
