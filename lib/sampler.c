// sampler.c — temperature, top-k and top-p sampling from a logits row.
#include "sampler.h"

#include "common.h"   // xmalloc

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

SamplerConfig sampler_defaults(void) {
    SamplerConfig c = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .greedy = 0};
    return c;
}

int sampler_config_check(const SamplerConfig *c, char *why, size_t why_len) {
    if (!(c->temperature > 0.0f) || !isfinite(c->temperature)) {
        snprintf(why, why_len, "temperature must be > 0 (got %g); greedy decoding is the separate evaluation flag", c->temperature);
        return -1;
    }
    if (c->top_k < 0) { snprintf(why, why_len, "top-k must be >= 0 (got %d; 0 = off)", c->top_k); return -1; }
    if (!(c->top_p > 0.0f && c->top_p <= 1.0f)) {
        snprintf(why, why_len, "top-p must be in (0, 1] (got %g; 1 = off)", c->top_p);
        return -1;
    }
    return 0;
}

SampleWork *sample_work_create(int V) {
    SampleWork *w = xmalloc(sizeof(SampleWork));
    w->V = V;
    w->prob = xmalloc((size_t)V * sizeof(float));
    w->idx = xmalloc((size_t)V * sizeof(int));
    w->tmp = xmalloc((size_t)V * sizeof(float));
    return w;
}

void sample_work_free(SampleWork *w) {
    if (!w) return;
    free(w->prob);
    free(w->idx);
    free(w->tmp);
    free(w);
}

long first_nonfinite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return (long)i;
    return -1;
}

// Order of candidates: more probable first, then lower token id (a total order, so the
// result never depends on the sort algorithm). qsort has no context argument in C11: the
// comparator reads a thread-local pointer, so rows can be sampled on several threads.
static _Thread_local const float *sort_prob;
static int by_prob_desc(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (sort_prob[i] != sort_prob[j]) return sort_prob[i] > sort_prob[j] ? -1 : 1;
    return (i > j) - (i < j);
}

// k-th largest probability among idx[0..n) (k in 1..n), by quickselect on a copy: O(n).
static float kth_largest(const float *prob, const int *idx, int n, int k, float *tmp) {
    for (int i = 0; i < n; i++) tmp[i] = prob[idx[i]];
    int lo = 0, hi = n - 1, want = k - 1;   // position in descending order
    while (lo < hi) {
        float pivot = tmp[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (tmp[i] > pivot) i++;
            while (tmp[j] < pivot) j--;
            if (i <= j) { float t = tmp[i]; tmp[i] = tmp[j]; tmp[j] = t; i++; j--; }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    return tmp[want];
}

int sample_logits(const SamplerConfig *c, const float *logits, int V, float u, SampleWork *w,
                  int *token, float *kept_mass) {
    // max for numerical stability; any NaN/inf is an error before anything is chosen
    float maxv = -INFINITY;
    int argmax = 0;
    for (int i = 0; i < V; i++) {
        if (!isfinite(logits[i])) return SAMPLE_NONFINITE;
        if (logits[i] > maxv) { maxv = logits[i]; argmax = i; }
    }
    // p_i = exp((l_i - max) / T) / sum
    float *p = w->prob;
    double sum = 0.0;
    float inv_t = 1.0f / c->temperature;
    for (int i = 0; i < V; i++) {
        p[i] = expf((logits[i] - maxv) * inv_t);
        sum += p[i];
    }
    float inv_sum = (float)(1.0 / sum);
    for (int i = 0; i < V; i++) p[i] *= inv_sum;

    if (c->greedy) {
        *token = argmax;
        *kept_mass = p[argmax];
        return SAMPLE_OK;
    }
    int use_k = c->top_k > 0 && c->top_k < V;
    int use_p = c->top_p < 1.0f;
    if (!use_k && !use_p) {
        // invert the CDF in token order
        double r = (double)u * sum * inv_sum, cdf = 0.0;
        int last = argmax;
        for (int i = 0; i < V; i++) {
            if (p[i] <= 0.0f) continue;
            cdf += p[i];
            last = i;
            if (r < cdf) { *token = i; *kept_mass = 1.0f; return SAMPLE_OK; }
        }
        *token = last;   // rounding: r fell past the last step
        *kept_mass = 1.0f;
        return SAMPLE_OK;
    }

    // candidates
    int *idx = w->idx, n = 0;
    if (use_k) {
        // everything above the k-th largest probability, then ties at it by token id
        for (int i = 0; i < V; i++) idx[i] = i;
        float kth = kth_largest(p, idx, V, c->top_k, w->tmp);
        for (int i = 0; i < V; i++) if (p[i] > kth) idx[n++] = i;
        for (int i = 0; i < V && n < c->top_k; i++) if (p[i] == kth) idx[n++] = i;
    } else {
        // top-p alone: tokens below (1 - top_p) / (V - 1) cannot be in the nucleus (together
        // they weigh less than 1 - top_p), so drop them before sorting
        float cutoff = (1.0f - c->top_p) / (float)(V - 1);
        for (int i = 0; i < V; i++) if (p[i] >= cutoff) idx[n++] = i;
        if (n == 0) idx[n++] = argmax;
    }
    sort_prob = p;
    qsort(idx, (size_t)n, sizeof(int), by_prob_desc);

    // top-p over the candidates (renormalised within the top-k set)
    double mass = 0.0;
    for (int i = 0; i < n; i++) mass += p[idx[i]];
    int keep = n;
    if (use_p) {
        double target = (double)c->top_p * mass, cum = 0.0;
        for (int i = 0; i < n; i++) {
            cum += p[idx[i]];
            if (cum >= target) { keep = i + 1; break; }
        }
        mass = 0.0;
        for (int i = 0; i < keep; i++) mass += p[idx[i]];
    }
    // invert the CDF of the kept set, most likely first
    double r = (double)u * mass, cdf = 0.0;
    int tok = idx[keep - 1];
    for (int i = 0; i < keep; i++) {
        cdf += p[idx[i]];
        if (r < cdf) { tok = idx[i]; break; }
    }
    *token = tok;
    *kept_mass = (float)mass;
    return SAMPLE_OK;
}
