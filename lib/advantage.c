// advantage.c — reward normaliser, per-token rewards, GAE, whitening, sequence mode
// (SAFE-SPEC §2, §3). Statistics are accumulated in double.
#include "advantage.h"   // RewardNorm, gae_*, whiten*, advantage_sequence
#include "common.h"      // xcalloc

#include <math.h>
#include <stdlib.h>

const char *adv_strerror(int code) {
    switch (code) {
    case ADV_OK: return "ok";
    case ADV_TOO_FEW: return "fewer than 2 valid values to whiten (std undefined)";
    case ADV_NONFINITE: return "non-finite value (NaN or Inf)";
    default: return "unknown error";
    }
}

// ---- running reward normaliser ----

void rewardnorm_init(RewardNorm *s) {
    s->count = 1e-4;
    s->mean = 0.0;
    s->var = 1.0;
}

// r (B)
int rewardnorm_update(RewardNorm *s, const float *r, size_t B) {
    if (B == 0) return ADV_OK;
    // batch mean and unbiased variance, two passes
    double b = 0.0;
    for (size_t i = 0; i < B; i++) {
        if (!isfinite(r[i])) return ADV_NONFINITE;
        b += r[i];
    }
    b /= (double)B;
    double ss = 0.0;
    for (size_t i = 0; i < B; i++) ss += (r[i] - b) * (r[i] - b);
    double s2 = B > 1 ? ss / (double)(B - 1) : 0.0;   // one sample: no spread information
    // parallel Welford merge of (n, μ, σ²) with (B, b, s²)
    double n = s->count, nb = (double)B;
    double delta = b - s->mean;
    double n_new = n + nb;
    s->mean = s->mean + delta * nb / n_new;
    s->var = (s->var * n + s2 * nb + delta * delta * n * nb / n_new) / n_new;
    s->count = n_new;
    return ADV_OK;
}

double rewardnorm_std(const RewardNorm *s) { return sqrt(s->var > 0 ? s->var : 0.0); }

// r, out (B)
void rewardnorm_apply(const RewardNorm *s, const float *r, size_t B, float *out) {
    double mu = s->mean, denom = rewardnorm_std(s) + REWARDNORM_EPS;
    for (size_t i = 0; i < B; i++) out[i] = (float)((r[i] - mu) / denom);
}

// ---- per-token rewards ----

// logp_old, logp_ref, rewards (T)
void token_rewards(const float *logp_old, const float *logp_ref, int len, int T,
                   float beta, float score, float *rewards) {
    for (int t = 0; t < T; t++) {
        double r = 0.0;
        if (t < len && beta != 0.0f) r = -(double)beta * ((double)logp_old[t] - logp_ref[t]);
        if (t == len - 1) r += score;   // the score sits on the last valid token (the EOS)
        rewards[t] = (float)r;
    }
}

// ---- GAE ----

// rewards, values, adv, ret (T)
void gae_sequence(const float *rewards, const float *values, int len, int T,
                  float gamma, float lambda, float *adv, float *ret) {
    double next_v = 0.0, next_a = 0.0;   // V and A after the last valid token are 0
    for (int t = len - 1; t >= 0; t--) {
        double delta = rewards[t] + gamma * next_v - values[t];
        double a = delta + (double)gamma * lambda * next_a;
        adv[t] = (float)a;
        ret[t] = (float)(a + values[t]);   // returns before whitening
        next_v = values[t];
        next_a = a;
    }
    for (int t = len < 0 ? 0 : len; t < T; t++) adv[t] = ret[t] = 0.0f;
}

// rewards, values, adv, ret (B, T); lens (B)
void gae_batch(const float *rewards, const float *values, const int *lens, int B, int T,
               float gamma, float lambda, float *adv, float *ret) {
    for (int b = 0; b < B; b++) {
        size_t o = (size_t)b * T;
        gae_sequence(rewards + o, values + o, lens[b], T, gamma, lambda, adv + o, ret + o);
    }
}

// ---- whitening ----

// x (N), mask (N) or NULL
int whiten(float *x, const uint8_t *mask, size_t N, double eps, double *mean_out, double *std_out) {
    size_t n = 0;
    double sum = 0.0;
    for (size_t i = 0; i < N; i++) {
        if (mask && !mask[i]) continue;
        if (!isfinite(x[i])) return ADV_NONFINITE;
        sum += x[i];
        n++;
    }
    if (n < 2) return ADV_TOO_FEW;
    double mean = sum / (double)n, ss = 0.0;
    for (size_t i = 0; i < N; i++)
        if (!mask || mask[i]) ss += (x[i] - mean) * (x[i] - mean);
    double std = sqrt(ss / (double)(n - 1));   // unbiased, as torch.std
    for (size_t i = 0; i < N; i++)
        if (!mask || mask[i]) x[i] = (float)((x[i] - mean) / (std + eps));
    if (mean_out) *mean_out = mean;
    if (std_out) *std_out = std;
    return ADV_OK;
}

// x (B, T), lens (B)
int whiten_batch(float *x, const int *lens, int B, int T, double eps) {
    size_t N = (size_t)B * T;
    uint8_t *mask = xcalloc(N, 1);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < lens[b] && t < T; t++) mask[(size_t)b * T + t] = 1;
    int rc = whiten(x, mask, N, eps, NULL, NULL);
    if (rc == ADV_OK)
        for (size_t i = 0; i < N; i++)
            if (!mask[i]) x[i] = 0.0f;
    free(mask);
    return rc;
}

// ---- sequence mode ----

// rnorm, vsoft_last, adv (B)
int advantage_sequence(const float *rnorm, const float *vsoft_last, size_t B, double eps, float *adv) {
    for (size_t i = 0; i < B; i++) adv[i] = rnorm[i] - vsoft_last[i];
    return whiten(adv, NULL, B, eps, NULL, NULL);
}

// adv_seq (B) → out (B, T)
void broadcast_sequence(const float *adv_seq, const int *lens, int B, int T, float *out) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) out[(size_t)b * T + t] = t < lens[b] ? adv_seq[b] : 0.0f;
}
