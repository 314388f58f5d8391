// test_sampler.c — temperature / top-k / top-p sampling against brute-force references,
// and the error path: a NaN or infinite logit never yields a token.
#include "test.h"

#include "rng.h"       // rng_uniform
#include "sampler.h"   // sample_logits

#include <string.h>

#define V 6
static const float logits[V] = {1.0f, 3.0f, -2.0f, 2.5f, 0.0f, 3.0f};

static void softmax_t(const float *l, int n, float t, double *p) {
    double mx = -1e30, s = 0;
    for (int i = 0; i < n; i++) mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < n; i++) { p[i] = exp((l[i] - mx) / t); s += p[i]; }
    for (int i = 0; i < n; i++) p[i] /= s;
}

// empirical frequencies over a fine grid of u: exact up to 1/N per token
static void frequencies(const SamplerConfig *c, double *freq, float *kept) {
    SampleWork *w = sample_work_create(V);
    int N = 100000;
    memset(freq, 0, V * sizeof(double));
    for (int i = 0; i < N; i++) {
        int tok = -1;
        int rc = sample_logits(c, logits, V, (float)((i + 0.5) / N), w, &tok, kept);
        if (rc == SAMPLE_OK && tok >= 0 && tok < V) freq[tok] += 1.0 / N;
    }
    sample_work_free(w);
}

TEST(plain_temperature) {
    SamplerConfig c = sampler_defaults();
    c.temperature = 0.7f;
    double p[V], f[V];
    float kept;
    softmax_t(logits, V, 0.7, p);
    frequencies(&c, f, &kept);
    double worst = 0;
    for (int i = 0; i < V; i++) worst = fmax(worst, fabs(f[i] - p[i]));
    printf("  p    %.4f %.4f %.4f %.4f %.4f %.4f\n  freq %.4f %.4f %.4f %.4f %.4f %.4f\n",
           p[0], p[1], p[2], p[3], p[4], p[5], f[0], f[1], f[2], f[3], f[4], f[5]);
    CHECK(worst < 1e-4, "largest difference %g", worst);
    CHECK(kept == 1.0f, "kept %g", kept);
}

TEST(top_k) {
    SamplerConfig c = sampler_defaults();
    c.top_k = 3;   // tokens 1 and 5 (tie at 3.0) and 3 (2.5)
    double p[V], f[V];
    float kept;
    softmax_t(logits, V, 1.0, p);
    frequencies(&c, f, &kept);
    double mass = p[1] + p[5] + p[3];
    CHECK(fabs(kept - mass) < 1e-6, "kept %g want %g", kept, mass);
    for (int i = 0; i < V; i++) {
        double want = (i == 1 || i == 3 || i == 5) ? p[i] / mass : 0.0;
        CHECK(fabs(f[i] - want) < 1e-4, "token %d freq %g want %g", i, f[i], want);
    }
    c.top_k = 1;   // tie between 1 and 5: the lower id wins
    frequencies(&c, f, &kept);
    CHECK(f[1] > 0.9999, "top-1 picks token 1 (freq %g)", f[1]);
}

TEST(top_p) {
    SamplerConfig c = sampler_defaults();
    double p[V], f[V];
    float kept;
    softmax_t(logits, V, 1.0, p);
    // sorted: 1 (0.368), 5 (0.368), 3 (0.223), 0 (0.0498), ... ; p=0.8 keeps {1,5,3}
    c.top_p = 0.8f;
    frequencies(&c, f, &kept);
    double mass = p[1] + p[5] + p[3];
    CHECK(fabs(kept - mass) < 1e-6, "kept %g want %g", kept, mass);
    for (int i = 0; i < V; i++) {
        double want = (i == 1 || i == 3 || i == 5) ? p[i] / mass : 0.0;
        CHECK(fabs(f[i] - want) < 1e-4, "token %d freq %g want %g", i, f[i], want);
    }
    // top-k 2 then top-p 0.4 of the renormalised pair {1,5}: keeps token 1 only
    c.top_k = 2;
    c.top_p = 0.4f;
    frequencies(&c, f, &kept);
    CHECK(f[1] > 0.9999 && fabs(kept - p[1]) < 1e-6, "freq %g kept %g", f[1], kept);
}

TEST(greedy_and_config) {
    SamplerConfig c = sampler_defaults();
    c.greedy = 1;
    SampleWork *w = sample_work_create(V);
    int tok;
    float kept;
    CHECK(sample_logits(&c, logits, V, 0.99f, w, &tok, &kept) == SAMPLE_OK && tok == 1, "argmax %d", tok);
    sample_work_free(w);
    char why[200];
    c = sampler_defaults();
    c.temperature = 0.0f;
    CHECK(sampler_config_check(&c, why, sizeof why) != 0, "temperature 0 accepted");
    c.temperature = 1.0f; c.top_p = 0.0f;
    CHECK(sampler_config_check(&c, why, sizeof why) != 0, "top-p 0 accepted");
    c.top_p = 1.0f; c.top_k = -1;
    CHECK(sampler_config_check(&c, why, sizeof why) != 0, "top-k -1 accepted");
    c.top_k = 0;
    CHECK(sampler_config_check(&c, why, sizeof why) == 0, "defaults rejected: %s", why);
}

TEST(nonfinite_row_is_an_error) {
    float bad[V];
    SampleWork *w = sample_work_create(V);
    const float poison[3] = {NAN, INFINITY, -INFINITY};
    for (int k = 0; k < 3; k++) {
        for (int mode = 0; mode < 3; mode++) {   // plain, top-k, greedy
            memcpy(bad, logits, sizeof bad);
            bad[4] = poison[k];
            SamplerConfig c = sampler_defaults();
            if (mode == 1) c.top_k = 2;
            if (mode == 2) c.greedy = 1;
            int tok = -7;
            float kept = -7;
            int rc = sample_logits(&c, bad, V, 0.5f, w, &tok, &kept);
            CHECK(rc == SAMPLE_NONFINITE && tok == -7, "poison %d mode %d: rc %d token %d", k, mode, rc, tok);
        }
    }
    CHECK(first_nonfinite(bad, V) == 4, "first_nonfinite %ld", first_nonfinite(bad, V));
    sample_work_free(w);
}

TEST(large_vocab_top_k_matches_sort) {
    // V = 5000 random logits: top-k via quickselect equals the k best by a full sort
    enum { N = 5000, K = 37 };
    static float l[N];
    uint64_t key = rng_stream_key(7, "topk", 0, 0);
    for (int i = 0; i < N; i++) l[i] = 8.0f * rng_uniform(key, (uint64_t)i) - 4.0f;
    l[100] = l[200] = l[300] = 4.5f;   // ties at the top
    SampleWork *w = sample_work_create(N);
    SamplerConfig c = sampler_defaults();
    c.top_k = K;
    int seen[N] = {0}, distinct = 0;
    for (int i = 0; i < 4000; i++) {
        int tok; float kept;
        sample_logits(&c, l, N, rng_uniform(key, 100000u + (uint64_t)i), w, &tok, &kept);
        if (!seen[tok]++) distinct++;
    }
    // the K largest logits by brute force
    int rank_ok = 1;
    for (int t = 0; t < N; t++) {
        if (!seen[t]) continue;
        int above = 0;
        for (int j = 0; j < N; j++) above += l[j] > l[t] || (l[j] == l[t] && j < t);
        if (above >= K) rank_ok = 0;
    }
    printf("  %d distinct tokens drawn from top-%d\n", distinct, K);
    CHECK(rank_ok, "a token outside the top %d was drawn", K);
    CHECK(distinct > K / 2 && distinct <= K, "distinct %d", distinct);
    sample_work_free(w);
}

int main(void) {
    RUN(plain_temperature);
    RUN(top_k);
    RUN(top_p);
    RUN(greedy_and_config);
    RUN(nonfinite_row_is_an_error);
    RUN(large_vocab_top_k_matches_sort);
    return test_summary();
}
