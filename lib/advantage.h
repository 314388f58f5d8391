// advantage.h — reward normalisation, GAE, whitening and sequence-mode advantages
// (SAFE-SPEC §2 and §3). Pure functions over arrays plus one small persistent struct.
//
// Token layout: a batch of B sequences padded to T, row-major (B, T); lens (B) gives the
// number of valid response tokens of each row (valid tokens are positions 0..lens[b]-1,
// the EOS included; masks are built by position, never from token ids). Flat token arrays
// with a mask use `const uint8_t *mask` (N), 1 = valid, 0 = padding, NULL = all valid.
#ifndef SAFE_ADVANTAGE_H
#define SAFE_ADVANTAGE_H

#include <stddef.h>
#include <stdint.h>

// Return codes of the functions below that can refuse their input.
enum {
    ADV_OK = 0,
    ADV_TOO_FEW = -1,    // fewer than 2 valid elements to whiten (std undefined)
    ADV_NONFINITE = -2,  // a NaN/Inf among the inputs
};
const char *adv_strerror(int code);

// ---- running reward normaliser (parallel Welford, SAFE-SPEC §2) ----
// Three doubles: persist them as they are (safe-critic stores count, mean, var).
typedef struct {
    double count;   // starts at 1e-4
    double mean;    // starts at 0
    double var;     // starts at 1 (population variance of everything seen)
} RewardNorm;

#define REWARDNORM_EPS 1e-8

void rewardnorm_init(RewardNorm *s);
// Fold a batch r (B) into the state:
//   b = mean(r), s² = unbiased var(r) (0 when B == 1), δ = b − μ, n' = n + B,
//   μ' = μ + δB/n',  σ'² = (σ²n + s²B + δ²nB/n') / n'.
// Returns ADV_OK, or ADV_NONFINITE (state untouched) when r holds a NaN/Inf.
int rewardnorm_update(RewardNorm *s, const float *r, size_t B);
// out (B) = (r − μ) / (σ + 1e-8); out may alias r.
void rewardnorm_apply(const RewardNorm *s, const float *r, size_t B, float *out);
double rewardnorm_std(const RewardNorm *s);

// ---- per-token rewards ----
// rewards (T) for one sequence of `len` valid tokens (len ≤ T): the score on the last valid
// token, and (PPO baseline, beta > 0) the per-token KL penalty r_t = −β·(ℓ_old − ℓ_ref)_t on
// every valid token. logp_old, logp_ref (T) may be NULL when beta == 0. Padding gets 0.
void token_rewards(const float *logp_old, const float *logp_ref, int len, int T,
                   float beta, float score, float *rewards);

// ---- GAE (SAFE-SPEC §3, per-token values: this project's default) ----
// One sequence. rewards, values, adv, ret (T); len valid tokens (0 ≤ len ≤ T).
//   δ_t = r_t + γV_{t+1} − V_t  (V_len = 0),  A_t = δ_t + γλA_{t+1},  R_t = A_t + V_t
// computed in double; padding positions get A = R = 0. Returns are taken before whitening.
void gae_sequence(const float *rewards, const float *values, int len, int T,
                  float gamma, float lambda, float *adv, float *ret);
// A batch: rewards, values, adv, ret (B, T); lens (B).
void gae_batch(const float *rewards, const float *values, const int *lens, int B, int T,
               float gamma, float lambda, float *adv, float *ret);

// ---- whitening ----
// x (N) in place over the valid elements: x ← (x − mean) / (std + eps), std the unbiased
// (N−1) standard deviation over valid elements, as torch.std. Padding is left untouched.
// Returns ADV_TOO_FEW (x untouched) for fewer than 2 valid elements, ADV_NONFINITE on NaN/Inf.
// mean_out / std_out (either may be NULL) receive the statistics used.
int whiten(float *x, const uint8_t *mask, size_t N, double eps, double *mean_out, double *std_out);
// The (B, T) layout: whitens positions t < lens[b] of every row together; padding set to 0.
int whiten_batch(float *x, const int *lens, int B, int T, double eps);

// ---- sequence mode (the reference code's behaviour; a switch) ----
// rnorm, vsoft_last, adv (B): adv = whiten(r̃ − V_soft(last position)) over the B sequences.
// The value target is r̃ itself. Returns ADV_TOO_FEW for B < 2.
int advantage_sequence(const float *rnorm, const float *vsoft_last, size_t B, double eps, float *adv);
// Broadcast one advantage per sequence to its valid tokens: out (B, T), padding 0.
void broadcast_sequence(const float *adv_seq, const int *lens, int B, int T, float *out);

#endif
