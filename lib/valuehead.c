// valuehead.c — shared LayerNorm + one or two (Linear → GELU → Linear) value heads, forward
// and backward side by side (SAFE-SPEC §3). Matrix products use the batch-invariant kernels
// of matmul.h, so a token's value and a sequence's gradient terms do not depend on the batch.
// Honest note: sgemm is deterministic for a given shape and thread count but not batch-
// invariant (a token's value can differ in the last bits with the batch it is in); switch the
// forward to matmul_nt (matmul.h) once that lands if bit-exact reruns across batchings matter.
#include "valuehead.h"   // ValueHead, valuehead_forward/backward, valuehead_tensors
#include "common.h"      // die, xmalloc, xcalloc
#include "rng.h"      // rng_splitmix64
#include "matmul.h"      // matmul_nt, matmul_nt_segsum, transpose

#include <math.h>
#include <stdlib.h>
#include <string.h>

// ---- parameter layout ----

size_t valuehead_param_count(int C, int Hd, int n_heads) {
    size_t per_head = (size_t)Hd * C + Hd + Hd + 1;
    return 2 * (size_t)C + (size_t)n_heads * per_head;
}

// Point the views at a flat buffer laid out as in valuehead.h.
static void valuehead_views(ValueHeadViews *v, float *base, int C, int Hd, int n_heads) {
    memset(v, 0, sizeof *v);
    float *p = base;
    v->ln_w = p; p += C;
    v->ln_b = p; p += C;
    for (int k = 0; k < n_heads; k++) {
        v->fc1_w[k] = p; p += (size_t)Hd * C;
        v->fc1_b[k] = p; p += Hd;
        v->fc2_w[k] = p; p += Hd;
        v->fc2_b[k] = p; p += 1;
    }
}


// dst (n) ~ U(−b, b)
static void fill_uniform(float *dst, size_t n, float b, uint64_t *rng) {
    for (size_t i = 0; i < n; i++) {
        float u = (float)(rng_splitmix64(rng) >> 40) * (1.0f / 16777216.0f);   // [0, 1)
        dst[i] = -b + 2.0f * b * u;
    }
}

void valuehead_init(ValueHead *vh, uint64_t seed) {
    int C = vh->C, Hd = vh->Hd;
    uint64_t rng = seed;
    for (int i = 0; i < C; i++) { vh->w.ln_w[i] = 1.0f; vh->w.ln_b[i] = 0.0f; }
    float b1 = 1.0f / sqrtf((float)C), b2 = 1.0f / sqrtf((float)Hd);   // 1/√fan_in
    for (int k = 0; k < vh->n_heads; k++) {
        fill_uniform(vh->w.fc1_w[k], (size_t)Hd * C, b1, &rng);
        fill_uniform(vh->w.fc1_b[k], Hd, b1, &rng);
        fill_uniform(vh->w.fc2_w[k], Hd, b2, &rng);
        fill_uniform(vh->w.fc2_b[k], 1, b2, &rng);
    }
}

ValueHead *valuehead_create(int C, int hidden, int n_heads, uint64_t seed) {
    int Hd = hidden > 0 ? hidden : C / 4;
    if (C < 1) die(EXIT_USAGE, "value head: hidden size C must be >= 1 (got %d)", C);
    if (Hd < 1) die(EXIT_USAGE, "value head: head width must be >= 1 (got %d from C = %d)", Hd, C);
    if (n_heads < 1 || n_heads > VALUEHEAD_MAX_HEADS)
        die(EXIT_USAGE, "value head: n_heads must be 1 or 2 (got %d)", n_heads);
    ValueHead *vh = xcalloc(1, sizeof *vh);
    vh->C = C;
    vh->Hd = Hd;
    vh->n_heads = n_heads;
    vh->n_params = valuehead_param_count(C, Hd, n_heads);
    vh->params = xcalloc(vh->n_params, sizeof(float));
    vh->grads = xcalloc(vh->n_params, sizeof(float));
    vh->grad_sum = xcalloc(vh->n_params, sizeof(double));
    valuehead_views(&vh->w, vh->params, C, Hd, n_heads);
    valuehead_views(&vh->g, vh->grads, C, Hd, n_heads);
    valuehead_init(vh, seed);
    return vh;
}

static void valuehead_free_acts(ValueHead *vh) {
    free(vh->ln_mean); free(vh->ln_rstd); free(vh->x);
    free(vh->pre); free(vh->act); free(vh->dpre); free(vh->dx); free(vh->tbuf);
    vh->ln_mean = vh->ln_rstd = vh->x = vh->pre = vh->act = vh->dpre = vh->dx = vh->tbuf = NULL;
    vh->cap = 0;
}

void valuehead_free(ValueHead *vh) {
    if (!vh) return;
    valuehead_free_acts(vh);
    free(vh->params);
    free(vh->grads);
    free(vh->grad_sum);
    free(vh);
}

void valuehead_zero_grad(ValueHead *vh) {
    memset(vh->grads, 0, vh->n_params * sizeof(float));
    memset(vh->grad_sum, 0, vh->n_params * sizeof(double));
}

void valuehead_round_grads(ValueHead *vh) {
    for (size_t i = 0; i < vh->n_params; i++) vh->grads[i] = (float)vh->grad_sum[i];
}

// The double accumulator of a gradient view (vh->g.*).
static double *gsum(const ValueHead *vh, const float *gview) { return vh->grad_sum + (gview - vh->grads); }

// Grow the activation buffers to hold N rows (lazy; they only ever grow).
static void valuehead_reserve(ValueHead *vh, size_t N) {
    if (N <= vh->cap) return;
    valuehead_free_acts(vh);
    size_t C = vh->C, Hd = vh->Hd, K = vh->n_heads;
    vh->ln_mean = xmalloc(N * sizeof(float));
    vh->ln_rstd = xmalloc(N * sizeof(float));
    vh->x = xmalloc(N * C * sizeof(float));
    vh->pre = xmalloc(K * N * Hd * sizeof(float));
    vh->act = xmalloc(K * N * Hd * sizeof(float));
    vh->dpre = xmalloc(N * Hd * sizeof(float));
    vh->dx = xmalloc(N * C * sizeof(float));
    vh->tbuf = xmalloc((N * (C + Hd) + C * Hd) * sizeof(float));
    vh->cap = N;
}

// ---- GELU, exact erf form (torch default) ----

static inline float gelu(float x) { return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2)); }
// d/dx [x·Φ(x)] = Φ(x) + x·φ(x)
static inline float gelu_grad(float x) {
    float cdf = 0.5f * (1.0f + erff(x * (float)M_SQRT1_2));
    float pdf = expf(-0.5f * x * x) * (float)(0.5 * M_2_SQRTPI * M_SQRT1_2);   // 1/√(2π)
    return cdf + x * pdf;
}

// ---- LayerNorm ----

// h (N,C) → x (N,C); keeps mean, rstd (N) for the backward
static void layernorm_forward(const float *h, size_t N, int C, const float *w, const float *b,
                              float *x, float *mean, float *rstd) {
    #pragma omp parallel for if (N * C > 65536)
    for (size_t n = 0; n < N; n++) {
        const float *hr = h + n * C;
        double m = 0.0, v = 0.0;
        for (int i = 0; i < C; i++) m += hr[i];
        m /= C;
        for (int i = 0; i < C; i++) v += (hr[i] - m) * (hr[i] - m);
        v /= C;   // biased, as torch
        float s = (float)(1.0 / sqrt(v + VALUEHEAD_LN_EPS));
        float *xr = x + n * C;
        for (int i = 0; i < C; i++) xr[i] = ((hr[i] - (float)m) * s) * w[i] + b[i];
        mean[n] = (float)m;
        rstd[n] = s;
    }
}

// dx (N,C) upstream; dh (N,C) += ∂/∂h; dw, db (C) += per sequence (nseq of them, seq_len[s]
// consecutive rows each) a double sum over its rows, added in sequence order
static void layernorm_backward(const float *h, size_t N, int C, const float *w, const float *mean,
                               const float *rstd, const float *dx, float *dh, double *dw, double *db,
                               const int *seq_len, int nseq) {
    size_t n = 0;
    for (int q = 0; q < nseq; q++) {
        size_t end = n + (size_t)seq_len[q];
        for (int i = 0; i < C; i++) {
            double sw = 0.0, sb = 0.0;
            for (size_t r = n; r < end; r++) {
                float d = dx[r * C + i], xh = (h[r * C + i] - mean[r]) * rstd[r];
                sw += (double)d * xh;
                sb += d;
            }
            dw[i] += sw;
            db[i] += sb;
        }
        n = end;
    }
    if (n != N) die(EXIT_RUNTIME, "valuehead_backward: the sequence lengths add up to %zu rows, not %zu", n, N);
    if (!dh) return;
    for (size_t r = 0; r < N; r++) {
        const float *hr = h + r * C, *dxr = dx + r * C;
        float m = mean[r], s = rstd[r];
        // x = x̂·w + b, x̂ = (h − μ)·rstd;  ∂h = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))
        double sum_dxh = 0.0, sum_dxh_xh = 0.0;
        for (int i = 0; i < C; i++) {
            float xh = (hr[i] - m) * s;
            float dxh = dxr[i] * w[i];
            sum_dxh += dxh;
            sum_dxh_xh += dxh * xh;
        }
        float mean_dxh = (float)(sum_dxh / C), mean_dxh_xh = (float)(sum_dxh_xh / C);
        float *dhr = dh + r * C;
        for (int i = 0; i < C; i++) {
            float xh = (hr[i] - m) * s;
            dhr[i] += s * (dxr[i] * w[i] - mean_dxh - xh * mean_dxh_xh);
        }
    }
}

// ---- the head ----

// h (N,C) → v1, v2 (N)
void valuehead_forward(ValueHead *vh, const float *h, size_t N, float *v1, float *v2) {
    int C = vh->C, Hd = vh->Hd;
    valuehead_reserve(vh, N);
    vh->N = N;
    if (N == 0) return;
    // shared LayerNorm
    layernorm_forward(h, N, C, vh->w.ln_w, vh->w.ln_b, vh->x, vh->ln_mean, vh->ln_rstd);
    for (int k = 0; k < vh->n_heads; k++) {
        float *vout = k == 0 ? v1 : v2;
        float *pre = vh->pre + (size_t)k * N * Hd, *act = vh->act + (size_t)k * N * Hd;
        // pre (N,Hd) = x (N,C) · fc1_w (Hd,C)ᵀ + fc1_b
        matmul_nt(pre, vh->x, vh->w.fc1_w[k], NULL, (int)N, C, Hd, 0);
        const float *b1 = vh->w.fc1_b[k], *w2 = vh->w.fc2_w[k];
        float b2 = vh->w.fc2_b[k][0];
        #pragma omp parallel for if (N * Hd > 65536)
        for (size_t n = 0; n < N; n++) {
            float *pr = pre + n * Hd, *ar = act + n * Hd;
            double v = b2;
            for (int j = 0; j < Hd; j++) {
                pr[j] += b1[j];
                ar[j] = gelu(pr[j]);
                v += (double)ar[j] * w2[j];   // V = fc2_w · act + fc2_b
            }
            if (vout) vout[n] = (float)v;
        }
    }
}

// dv1, dv2 (N) upstream; dh (N,C) +=. Parameter gradients: double sums of per-sequence terms
// (valuehead.h), then rounded into vh->grads.
void valuehead_backward(ValueHead *vh, const float *h, size_t N, const int *seq_len, int nseq,
                        const float *dv1, const float *dv2, float *dh) {
    int C = vh->C, Hd = vh->Hd;
    if (N != vh->N) die(EXIT_RUNTIME, "valuehead_backward: N = %zu but the last forward had %zu rows", N, vh->N);
    if (N == 0) return;
    // segments of the token axis for matmul_nt_segsum: one per sequence
    int *seg_start = xmalloc((nseq ? nseq : 1) * sizeof(int));
    for (int q = 0, off = 0; q < nseq; q++) {
        seg_start[q] = off;
        off += seq_len[q];
    }
    float *xT = vh->tbuf, *dpreT = xT + N * C, *wT = dpreT + N * Hd;   // (C,N), (Hd,N), (C,Hd)
    transpose(xT, vh->x, (int)N, C);
    int have_dx = 0;   // dx holds a gradient once a head with an upstream gradient ran
    for (int k = 0; k < vh->n_heads; k++) {
        const float *dv = k == 0 ? dv1 : dv2;
        if (!dv) continue;
        const float *pre = vh->pre + (size_t)k * N * Hd, *act = vh->act + (size_t)k * N * Hd;
        const float *w2 = vh->w.fc2_w[k];
        // act = gelu(pre), V = fc2_w·act + fc2_b: ∂act = dv·fc2_w, ∂pre = ∂act·gelu'(pre)
        for (size_t n = 0; n < N; n++) {
            const float *pr = pre + n * Hd;
            float *dp = vh->dpre + n * Hd;
            for (int j = 0; j < Hd; j++) dp[j] = dv[n] * w2[j] * gelu_grad(pr[j]);
        }
        // ∂fc2_w += dv·act, ∂fc2_b += dv, ∂fc1_b += dpre: per sequence, then in sequence order
        double *gw2 = gsum(vh, vh->g.fc2_w[k]), *gb2 = gsum(vh, vh->g.fc2_b[k]), *gb1 = gsum(vh, vh->g.fc1_b[k]);
        for (int q = 0; q < nseq; q++) {
            size_t n0 = (size_t)seg_start[q], n1 = n0 + (size_t)seq_len[q];
            double sb2 = 0.0;
            for (size_t n = n0; n < n1; n++) sb2 += dv[n];
            gb2[0] += sb2;
            for (int j = 0; j < Hd; j++) {
                double sw = 0.0, sb = 0.0;
                for (size_t n = n0; n < n1; n++) {
                    sw += (double)dv[n] * act[n * Hd + j];
                    sb += vh->dpre[n * Hd + j];
                }
                gw2[j] += sw;
                gb1[j] += sb;
            }
        }
        // pre = x·fc1_wᵀ + fc1_b: ∂fc1_w (Hd,C) += Σ_seq dpreᵀ (Hd,n) · x (n,C)
        transpose(dpreT, vh->dpre, (int)N, Hd);
        matmul_nt_segsum(gsum(vh, vh->g.fc1_w[k]), C, dpreT, (int)N, xT, (int)N, Hd, C, seg_start, seq_len, nseq);
        // ∂x (N,C) (+)= dpre (N,Hd) · fc1_w (Hd,C)
        transpose(wT, vh->w.fc1_w[k], Hd, C);
        matmul_nt(vh->dx, vh->dpre, wT, NULL, (int)N, Hd, C, have_dx);
        have_dx = 1;
    }
    if (have_dx)
        layernorm_backward(h, N, C, vh->w.ln_w, vh->ln_mean, vh->ln_rstd, vh->dx, dh, gsum(vh, vh->g.ln_w),
                           gsum(vh, vh->g.ln_b), seq_len, nseq);
    free(seg_start);
    valuehead_round_grads(vh);
}

// ---- names for checkpoints ----

static const char *vh_names[VALUEHEAD_MAX_HEADS][4] = {
    {"value_head.v1.fc1.weight", "value_head.v1.fc1.bias", "value_head.v1.fc2.weight", "value_head.v1.fc2.bias"},
    {"value_head.v2.fc1.weight", "value_head.v2.fc1.bias", "value_head.v2.fc2.weight", "value_head.v2.fc2.bias"},
};

int valuehead_tensors(ValueHead *vh, int grads, ValueHeadTensor *out) {
    const ValueHeadViews *v = grads ? &vh->g : &vh->w;
    int n = 0, C = vh->C, Hd = vh->Hd;
    out[n++] = (ValueHeadTensor){"value_head.ln.weight", v->ln_w, 1, {C, 0}};
    out[n++] = (ValueHeadTensor){"value_head.ln.bias", v->ln_b, 1, {C, 0}};
    for (int k = 0; k < vh->n_heads; k++) {
        out[n++] = (ValueHeadTensor){vh_names[k][0], v->fc1_w[k], 2, {Hd, C}};
        out[n++] = (ValueHeadTensor){vh_names[k][1], v->fc1_b[k], 1, {Hd, 0}};
        out[n++] = (ValueHeadTensor){vh_names[k][2], v->fc2_w[k], 2, {1, Hd}};
        out[n++] = (ValueHeadTensor){vh_names[k][3], v->fc2_b[k], 1, {1, 0}};
    }
    return n;
}

int valuehead_st_tensors(ValueHead *vh, int grads, StTensor *out) {
    ValueHeadTensor t[VALUEHEAD_MAX_TENSORS];
    int n = valuehead_tensors(vh, grads, t);
    for (int i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].name = t[i].name;
        out[i].data = t[i].data;
        out[i].ndim = t[i].ndim;
        for (int d = 0; d < t[i].ndim; d++) out[i].shape[d] = t[i].shape[d];
    }
    return n;
}
