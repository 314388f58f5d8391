// model.c — the Llama-family decoder on the CPU in fp32 (the reference backend).
//
//   x = tok_emb[token]                                   (zero at padded positions)
//   per layer:  h = rmsnorm(x) ; q,k,v = h W^T (+ b) ; rope(q,k) ; a = attention(q,k,v)
//               x = x + a wo^T
//               h = rmsnorm(x) ; x = x + (silu(h w1^T) * (h w3^T)) w2^T
//   hidden = rmsnorm(x) ; logits = hidden lm_head^T
//
// Every layer is a pair layer_forward / layer_backward below; backward functions accumulate
// (+=) into parameter gradients. Products go to the batch-invariant GEMM of matmul.c (the
// backward through transposed blocks); attention and element-wise loops are split over
// OpenMP threads by independent outputs, and every reduction runs in a fixed order on one
// thread with explicit lanes, so results depend neither on the number of threads nor on the
// rest of the batch: a sequence's log-probs are bit-identical alone, padded in a batch, or
// decoded token by token through the KV cache (tests/test_model.c checks all three).
//
// Padding: padded positions get a zero embedding and are never attended to, so their residual
// stream, hidden state and logits stay exactly zero and they add nothing to any gradient.
//
// Attention keeps no (T,T) probability matrix: the forward stores the log-sum-exp of each
// softmax row and the backward recomputes the probabilities block by block (memory
// O(B*H*T) plus a (64, T) block per thread, not O(B*H*T^2)).
//
// Honest notes: with tiny heads (stories260K: head size 8) attention is about half of a
// decoding step and cannot be batched, so batch-64 decoding is only ~1.3-2.4x the batch-1
// per-token rate there (the 15M config gets 6-10x). Activations for backward are kept for
// every layer: memory grows with L * B * T * (5C + 3F + ...) plus B*T*V logits.
#include "model.h"

#include "common.h"   // die, xmalloc/xcalloc, exit codes
#include "rng.h"      // rng_splitmix64
#include "mathfn.h"   // exp_approx
#include "lora.h"     // lora_backward, lora_zero_grad: adapter gradients
#include "matmul.h"   // matmul_nt: batch-invariant products; transpose

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

// Element counts below which a loop runs on one thread (a parallel region costs microseconds).
#define PAR_MIN 32768

// ---------------------------------------------------------------------------------------------
// parameters: one flat buffer, a table of sizes, typed views

enum {
    P_TOK_EMB, P_ATTN_NORM, P_WQ, P_WK, P_WV, P_BQ, P_BK, P_BV, P_WO,
    P_FFN_NORM, P_W1, P_W2, P_W3, P_FINAL_NORM, P_LM_HEAD, NPARAM
};

// sizes (floats) of each tensor in buffer order; zero for absent ones (biases, tied head)
static void param_sizes(const ModelConfig *c, size_t s[NPARAM]) {
    size_t C = c->dim, F = c->hidden_dim, L = c->n_layers, V = c->vocab_size;
    size_t hs = C / c->n_heads, qd = (size_t)c->n_heads * hs, kvd = (size_t)c->n_kv_heads * hs;
    s[P_TOK_EMB] = V * C;
    s[P_ATTN_NORM] = L * C;
    s[P_WQ] = L * qd * C;
    s[P_WK] = L * kvd * C;
    s[P_WV] = L * kvd * C;
    s[P_BQ] = c->qkv_bias ? L * qd : 0;
    s[P_BK] = c->qkv_bias ? L * kvd : 0;
    s[P_BV] = c->qkv_bias ? L * kvd : 0;
    s[P_WO] = L * C * qd;
    s[P_FFN_NORM] = L * C;
    s[P_W1] = L * F * C;
    s[P_W2] = L * C * F;
    s[P_W3] = L * F * C;
    s[P_FINAL_NORM] = C;
    s[P_LM_HEAD] = c->tied ? 0 : V * C;
}

static void param_views(const ModelConfig *c, float *base, ParamViews *v) {
    float **slot[NPARAM] = {&v->tok_emb, &v->attn_norm, &v->wq, &v->wk, &v->wv, &v->bq, &v->bk,
                            &v->bv, &v->wo, &v->ffn_norm, &v->w1, &v->w2, &v->w3,
                            &v->final_norm, &v->lm_head};
    size_t s[NPARAM];
    param_sizes(c, s);
    float *p = base;
    for (int i = 0; i < NPARAM; i++) {
        *slot[i] = s[i] ? p : NULL;
        p += s[i];
    }
    if (c->tied) v->lm_head = v->tok_emb;  // one buffer: the head's gradient lands in tok_emb
}

size_t model_param_count(const ModelConfig *cfg) {
    size_t s[NPARAM], n = 0;
    param_sizes(cfg, s);
    for (int i = 0; i < NPARAM; i++) n += s[i];
    return n;
}

int model_config_check(const ModelConfig *c, char *why, size_t why_len) {
    const char *msg = NULL;
    if (c->dim <= 0 || c->hidden_dim <= 0 || c->n_layers <= 0 || c->vocab_size <= 0)
        msg = "dim, hidden_dim, n_layers and vocab_size must be positive";
    else if (c->n_heads <= 0 || c->n_kv_heads <= 0)
        msg = "n_heads and n_kv_heads must be positive";
    else if (c->dim % c->n_heads != 0)
        msg = "n_heads must divide dim";
    else if ((c->dim / c->n_heads) % 2 != 0)
        msg = "the head size dim/n_heads must be even (RoPE rotates pairs)";
    else if (c->n_heads % c->n_kv_heads != 0)
        msg = "n_kv_heads must divide n_heads";
    else if (!(c->rope_theta > 0.0f))
        msg = "rope_theta must be positive";
    else if (!(c->norm_eps > 0.0f))
        msg = "norm_eps must be positive";
    else if (c->max_seq_len < 0)
        msg = "max_seq_len must not be negative";
    if (msg && why && why_len) snprintf(why, why_len, "%s", msg);
    return msg != NULL;
}

// ---------------------------------------------------------------------------------------------
// private state: activations kept for backward, backward scratch, decode scratch, RoPE table

struct ModelActs {
    // forward activations for (B,T): one flat buffer, views below (N = B*T)
    float *buf;
    size_t cap;       // floats allocated in buf
    float *res;       // (L+1, N, C) residual stream entering layer l; res[L] enters the final norm
    float *ln1;       // (L, N, C) attention-norm output (input of wq, wk, wv)
    float *ln1_rstd;  // (L, N) 1/rms, for the norm's backward
    float *q;         // (L, N, H*hs) queries after RoPE
    float *k;         // (L, N, KV*hs) keys after RoPE
    float *v;         // (L, N, KV*hs) values
    float *atty;      // (L, N, H*hs) attention output (input of wo)
    float *lse;       // (L, N, H) log-sum-exp of each query's scores: backward recomputes p
    float *mid;       // (L, N, C) residual after attention (input of the ffn norm)
    float *ln2;       // (L, N, C) ffn-norm output (input of w1, w3)
    float *ln2_rstd;  // (L, N)
    float *h1;        // (L, N, F) w1 x: gate pre-activation
    float *h3;        // (L, N, F) w3 x: up projection
    float *gate;      // (L, N, F) silu(h1) * h3 (input of w2)
    float *lnf_rstd;  // (N)
    float *hidden;    // (N, C) final-norm output
    int *pos;         // (N) position ids = rank among the row's valid positions
    int *vidx;        // (B,T) each row's valid positions in order (first nvalid[b] entries used)
    int *nvalid;      // (B) valid positions per row
    int *seg_start;   // (B) backward: row b's tokens are columns [seg_start, +seg_len) of (N)
    int *seg_len;     // (B)   (first to last valid position; matmul_nt_segsum)
    size_t nvalid_cap;
    size_t pos_cap;
    float *logits;    // (N, V) separate: only when asked for
    size_t logits_cap;
    float *row_logits;  // (rl_n, V) model_logits_rows: logits of chosen positions only
    size_t rl_cap;
    int *rl_rows, rl_n, rl_valid;   // which positions, and whether they belong to the last forward
    int32_t *tokens;  // (N) copy of the last forward's tokens (embedding backward)
    uint8_t *mask;    // (N) copy of the last forward's mask
    size_t tok_cap;

    // backward scratch, one layer's worth: one flat buffer
    float *gbuf;
    size_t gcap;
    float *tbuf;      // transposed weight / gradient blocks (matmul_backward)
    size_t tcap;
    float *xT;        // (C or F, N) a transposed forward input
    size_t xtcap;

    // decode scratch (model_prefill/model_decode): one flat buffer
    float *dbuf;
    size_t dcap;
    const int32_t **dec_seqs;  // (n) model_decode's one-token sequences
    int *dec_ones;
    size_t dec_cap;

    // RoPE table: cos/sin (n_pos, hs/2) in float, computed in double
    float *rope_cos, *rope_sin;
    int rope_npos;
};

static float *grow(float *p, size_t *cap, size_t need) {
    if (need <= *cap) return p;
    free(p);
    *cap = need;
    return xmalloc(need * sizeof(float));
}

// Make sure the RoPE table covers positions [0, npos).
static void rope_ensure(Model *m, int npos) {
    ModelActs *a = m->acts;
    if (npos <= a->rope_npos) return;
    int n = a->rope_npos ? a->rope_npos : 64;
    while (n < npos) n *= 2;
    int hs = m->cfg.dim / m->cfg.n_heads, half = hs / 2;
    free(a->rope_cos);
    free(a->rope_sin);
    a->rope_cos = xmalloc((size_t)n * half * sizeof(float));
    a->rope_sin = xmalloc((size_t)n * half * sizeof(float));
    for (int p = 0; p < n; p++) {
        for (int i = 0; i < half; i++) {
            // inv_freq_i = theta^(-2i/hs), the frequency of pair (i, i + hs/2)
            double inv_freq = pow((double)m->cfg.rope_theta, -2.0 * i / hs);
            double ang = (double)p * inv_freq;
            a->rope_cos[(size_t)p * half + i] = (float)cos(ang);
            a->rope_sin[(size_t)p * half + i] = (float)sin(ang);
        }
    }
    a->rope_npos = n;
}

// ---------------------------------------------------------------------------------------------
// model lifetime

Model *model_create(const ModelConfig *cfg) {
    char why[200];
    if (model_config_check(cfg, why, sizeof why)) die(EXIT_BADINPUT, "model config: %s", why);
    Model *m = xcalloc(1, sizeof(Model));
    m->cfg = *cfg;
    m->n_params = model_param_count(cfg);
    m->params = xcalloc(m->n_params, sizeof(float));
    param_views(cfg, m->params, &m->w);
    m->acts = xcalloc(1, sizeof(ModelActs));
    return m;
}

void model_free(Model *m) {
    if (!m) return;
    ModelActs *a = m->acts;
    if (a) {
        free(a->buf);
        free(a->pos);
        free(a->vidx);
        free(a->nvalid);
        free(a->seg_start);
        free(a->seg_len);
        free(a->logits);
        free(a->row_logits);
        free(a->rl_rows);
        free(a->tokens);
        free(a->mask);
        free(a->gbuf);
        free(a->tbuf);
        free(a->xT);
        free(a->dbuf);
        free(a->dec_seqs);
        free(a->dec_ones);
        free(a->rope_cos);
        free(a->rope_sin);
        free(a);
    }
    lora_free(m->lora);
    free(m->params);
    free(m->grads);
    free(m->grad_sum);
    free(m);
}

Model *model_clone(const Model *src) {
    Model *m = model_create(&src->cfg);
    memcpy(m->params, src->params, src->n_params * sizeof(float));
    return m;
}

// splitmix64 -> uniform -> Box-Muller normal; deterministic for a seed

void model_init_random(Model *m, uint64_t seed, float std) {
    uint64_t s = seed;
    for (size_t i = 0; i < m->n_params; i += 2) {
        double u1 = ((rng_splitmix64(&s) >> 11) + 0.5) * 0x1.0p-53;  // (0,1)
        double u2 = ((rng_splitmix64(&s) >> 11) + 0.5) * 0x1.0p-53;
        double r = sqrt(-2.0 * log(u1));
        m->params[i] = (float)(std * r * cos(2.0 * M_PI * u2));
        if (i + 1 < m->n_params) m->params[i + 1] = (float)(std * r * sin(2.0 * M_PI * u2));
    }
    // norm weights start at one
    const ModelConfig *c = &m->cfg;
    for (size_t i = 0; i < (size_t)c->n_layers * c->dim; i++) m->w.attn_norm[i] = m->w.ffn_norm[i] = 1.0f;
    for (int i = 0; i < c->dim; i++) m->w.final_norm[i] = 1.0f;
}

void model_zero_grad(Model *m) {
    if (m->lora) {   // the base is frozen: no buffers for it
        lora_zero_grad(m->lora);
        return;
    }
    if (!m->grads) {
        m->grads = xcalloc(m->n_params, sizeof(float));
        m->grad_sum = xcalloc(m->n_params, sizeof(double));
        param_views(&m->cfg, m->grads, &m->g);
    } else {
        memset(m->grads, 0, m->n_params * sizeof(float));
        memset(m->grad_sum, 0, m->n_params * sizeof(double));
    }
}

void model_round_grads(Model *m) {
    if (m->lora) {
        lora_round_grads(m->lora);
        return;
    }
    if (!m->grads) die(EXIT_USAGE, "model_round_grads: no gradient buffer (call model_zero_grad first)");
    #pragma omp parallel for schedule(static) if (m->n_params >= (1 << 20))
    for (size_t i = 0; i < m->n_params; i++) m->grads[i] = (float)m->grad_sum[i];
}

Trainable model_trainable(const Model *m) {
    if (m->lora) return (Trainable){m->lora->n_params, m->lora->params, m->lora->grads, m->lora->grad_sum};
    return (Trainable){m->n_params, m->params, m->grads, m->grad_sum};
}

// The double accumulator of a gradient view (m->g.*) at element off: the same place in
// grad_sum. NULL for a view that does not exist (no biases) and for a frozen base (adapter).
static double *gsum(const Model *m, const float *gview, size_t off) {
    return gview && !m->lora ? m->grad_sum + (gview - m->grads) + off : NULL;
}

// ---------------------------------------------------------------------------------------------
// layers: forward and backward side by side

// out (N,OC) = inp (N,C) @ w^T (w: (OC,C)) + bias (OC, may be NULL); accumulate: out += instead.
// Batch-invariant (matmul.h): a row's result does not depend on the other rows.
static void matmul_forward(float *out, const float *inp, const float *w, const float *bias,
                           int N, int C, int OC, int accumulate) {
    matmul_nt(out, inp, w, bias, N, C, OC, accumulate);
}

// Given dout (N,OC) and the forward input transposed, inpT (C,N):
//   dinp (N,C) (+)= dout @ w  (accumulate_dinp chooses),  dw (OC,C) += dout^T @ inp,
//   dbias (OC) += column sums of dout.  dinp, dw, dbias may be NULL.
// Both products run on the NT kernel through transposed blocks of at most OB output columns,
// so the scratch stays small even for a 32000-wide LM head. The parameter gradients dw and
// dbias are double sums of one fp32 term per sequence (segment s: the rows [seg_start[s],
// + seg_len[s]) of the N), so they do not depend on which sequences share the batch (model.h).
static void matmul_backward(ModelActs *a, const int *seg_start, const int *seg_len, int nseg, float *dinp,
                            double *dw, double *dbias, const float *dout, const float *inpT, const float *w,
                            int N, int C, int OC, int accumulate_dinp) {
    int OB = OC <= 2048 ? OC : 1024;
    a->tbuf = grow(a->tbuf, &a->tcap, (size_t)C * OB + (size_t)OB * N);
    float *wT = a->tbuf, *doutT = a->tbuf + (size_t)C * OB;
    for (int o0 = 0; o0 < OC; o0 += OB) {
        int nb = OC - o0 < OB ? OC - o0 : OB;
        if (dinp) {
            // out = inp @ w^T  =>  dinp += dout @ w: w block (nb,C) -> wT (C,nb)
            transpose_ld(wT, nb, w + (size_t)o0 * C, C, nb, C);
            matmul_nt_ld(dinp, C, dout + o0, OC, wT, nb, NULL, N, nb, C, accumulate_dinp || o0 > 0);
        }
        if (dw) {
            // out = inp @ w^T  =>  dw += dout^T @ inp: dout block (N,nb) -> doutT (nb,N)
            transpose_ld(doutT, N, dout + o0, OC, N, nb);
            matmul_nt_segsum(dw + (size_t)o0 * C, C, doutT, N, inpT, N, nb, C, seg_start, seg_len, nseg);
        }
    }
    // out = ... + bias  =>  dbias += sum_n dout[n]: per sequence in fp32, position order,
    // then into the double sum; columns split over threads
    if (dbias) {
        #pragma omp parallel for schedule(static) if ((size_t)N * OC >= PAR_MIN)
        for (int j0 = 0; j0 < OC; j0 += 16) {
            int j1 = j0 + 16 < OC ? j0 + 16 : OC;
            for (int sg = 0; sg < nseg; sg++) {
                float acc[16] = {0};
                for (int n = seg_start[sg]; n < seg_start[sg] + seg_len[sg]; n++)
                    for (int j = j0; j < j1; j++) acc[j - j0] += dout[(size_t)n * OC + j];
                for (int j = j0; j < j1; j++) dbias[j] += acc[j - j0];
            }
        }
    }
}

// xT (C,N) = x (N,C)^T into the shared transposed-input scratch
static float *transposed(ModelActs *a, const float *x, int N, int C) {
    a->xT = grow(a->xT, &a->xtcap, (size_t)N * C);
    transpose(a->xT, x, N, C);
    return a->xT;
}

// Loops that the one-token decoding step also runs are split over threads only when the work
// is large: entering even a one-thread OpenMP region costs ~0.6 us, and a decoding step runs
// ~80 such loops.

// one row of rmsnorm_forward
static inline void rmsnorm_row(float *o, float *rstd, const float *x, const float *w, int C, float eps) {
    double ss = 0.0;
    for (int i = 0; i < C; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / C + eps));
    for (int i = 0; i < C; i++) o[i] = x[i] * r * w[i];
    if (rstd) *rstd = r;
}

// out (N,C) = inp * rstd * w with rstd = 1/sqrt(mean(inp^2) + eps); rstd (N) kept (may be NULL)
static void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps) {
    if ((size_t)N * C >= PAR_MIN) {
        #pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++)
            rmsnorm_row(out + (size_t)n * C, rstd ? rstd + n : NULL, inp + (size_t)n * C, w, C, eps);
    } else {
        for (int n = 0; n < N; n++)
            rmsnorm_row(out + (size_t)n * C, rstd ? rstd + n : NULL, inp + (size_t)n * C, w, C, eps);
    }
}

// dinp (N,C) += d/dinp, dw (C) += d/dw, given dout (N,C), the forward input and its rstd.
// dw is a double sum of one term per sequence (the B segments of a), like matmul_backward's.
static void rmsnorm_backward(const ModelActs *a, int B, float *dinp, double *dw, const float *dout,
                             const float *inp, const float *w, const float *rstd, int N, int C) {
    // out_i = x_i r w_i, r = (mean x^2 + eps)^-1/2, dr/dx_i = -r^3 x_i / C
    //  => dx_i = r w_i dy_i - x_i r^3/C sum_j w_j dy_j x_j
    #pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float r = rstd[n];
        double dot = 0.0;
        for (int i = 0; i < C; i++) dot += (double)w[i] * dy[i] * x[i];
        float c = (float)(dot * r * r * r / C);
        for (int i = 0; i < C; i++) dx[i] += r * w[i] * dy[i] - x[i] * c;
    }
    if (!dw) return;   // frozen (an adapter trains instead)
    // dw_i += sum_n dy_i x_i r: channels split over threads; per sequence, positions in order
    #pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int i0 = 0; i0 < C; i0 += 16) {
        int i1 = i0 + 16 < C ? i0 + 16 : C;
        for (int b = 0; b < B; b++) {
            double acc[16] = {0};
            for (int n = a->seg_start[b]; n < a->seg_start[b] + a->seg_len[b]; n++) {
                const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
                for (int i = i0; i < i1; i++) acc[i - i0] += (double)dy[i] * x[i] * rstd[n];
            }
            for (int i = i0; i < i1; i++) dw[i] += acc[i - i0];
        }
    }
}

// one token of rope_forward: x (nh, hs) rotated by the angles of one position (c, s: (hs/2))
static inline void rope_row(float *x, const float *c, const float *s, int nh, int hs) {
    int half = hs / 2;
    for (int h = 0; h < nh; h++) {
        float *xv = x + (size_t)h * hs;
        for (int i = 0; i < half; i++) {
            float a = xv[i], b = xv[i + half];
            xv[i] = a * c[i] - b * s[i];
            xv[i + half] = b * c[i] + a * s[i];
        }
    }
}

// x (N, nh, hs) rotated in place by position pos[n]: pairs (i, i+hs/2), HF rotate_half:
//   x_i' = x_i cos - x_{i+h} sin ;  x_{i+h}' = x_{i+h} cos + x_i sin ;  angle = pos * theta^(-2i/hs)
static void rope_forward(float *x, const int *pos, int N, int nh, int hs, const float *cos_t, const float *sin_t) {
    size_t half = hs / 2, row = (size_t)nh * hs;
    if ((size_t)N * nh * hs >= PAR_MIN) {
        #pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) rope_row(x + n * row, cos_t + pos[n] * half, sin_t + pos[n] * half, nh, hs);
    } else {
        for (int n = 0; n < N; n++) rope_row(x + n * row, cos_t + pos[n] * half, sin_t + pos[n] * half, nh, hs);
    }
}

// dx (N, nh, hs) in place: the rotation's transpose (rotate back by the same angle)
static void rope_backward(float *dx, const int *pos, int N, int nh, int hs, const float *cos_t, const float *sin_t) {
    int half = hs / 2;
    #pragma omp parallel for schedule(static) if ((size_t)N * nh * hs >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *c = cos_t + (size_t)pos[n] * half, *s = sin_t + (size_t)pos[n] * half;
        for (int h = 0; h < nh; h++) {
            float *d = dx + ((size_t)n * nh + h) * hs;
            for (int i = 0; i < half; i++) {
                float da = d[i], db = d[i + half];
                // a' = a c - b s, b' = b c + a s  =>  da = da' c + db' s, db = -da' s + db' c
                d[i] = da * c[i] + db * s[i];
                d[i + half] = db * c[i] - da * s[i];
            }
        }
    }
}

// Reductions below use explicit lanes (8 partial sums, combined in a fixed tree), never a
// compiler-chosen order: the result is the same however the code is vectorised (SSE, AVX2
// clone), whatever the alignment of the operands, and in every caller (training forward and
// KV decode alike). Lane l of a length-n reduction holds the elements i with i % 8 == l.
static inline __attribute__((always_inline)) float lanes_sum(v8f acc) {
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

static inline __attribute__((always_inline)) float dot_f(const float *a, const float *b, int n) {
    v8f acc = v8f_set1(0.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) acc += v8f_load(a + i) * v8f_load(b + i);
    for (; i < n; i++) acc[i & 7] += a[i] * b[i];
    return lanes_sum(acc);
}

// y (n) += a * x (n)
static inline __attribute__((always_inline)) void axpy_f(float *y, float a, const float *x, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) v8f_store(y + i, v8f_load(y + i) + v8f_set1(a) * v8f_load(x + i));
    for (; i < n; i++) y[i] += a * x[i];
}

// x (n) <- exp(x - mx); returns the sum
static inline __attribute__((always_inline)) float exp_sum(float *x, int n, float mx) {
    v8f acc = v8f_set1(0.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f e = exp_approx8(v8f_load(x + i) - v8f_set1(mx));
        v8f_store(x + i, e);
        acc += e;
    }
    for (; i < n; i++) {
        float e = exp_approx(x[i] - mx);
        x[i] = e;
        acc[i & 7] += e;
    }
    return lanes_sum(acc);
}

// x (n) <- exp(x)
static inline __attribute__((always_inline)) void exp_inplace(float *x, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) v8f_store(x + i, exp_approx8(v8f_load(x + i)));
    for (; i < n; i++) x[i] = exp_approx(x[i]);
}

// The attention loops run as an AVX2 clone where the CPU has it (same bits: see above).
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define ATTN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define ATTN_CLONES
#endif

static float *scratch_alloc(size_t n) {  // 64-byte aligned per-thread scratch
    void *p = NULL;
    if (posix_memalign(&p, 64, (n ? n : 1) * sizeof(float))) die(EXIT_RUNTIME, "out of memory (%zu floats)", n);
    return p;
}

// Attention scores come from the GEMM kernel (matmul_nt_serial: each score is a fixed-order
// reduction of one query row and one key row, whatever the block it is computed in), and
// the softmax and the weighted sum of values from softmax_attend below. The training forward
// and the KV-cache decode both go through exactly these two steps, so a sequence gets
// bit-identical attention either way.

// att (n): raw scores q.k_j -> probabilities (in place); out (hs) = sum_j p_j v_j with v_j at
// v + j*stride. Returns the log-sum-exp of the scaled scores (the backward recomputes p).
ATTN_CLONES __attribute__((noinline)) static float softmax_attend(float *out, float *att, int n, float scale,
                                                                  const float *v, size_t stride, int hs) {
    int j = 0;
    v8f mx8 = v8f_set1(-INFINITY);
    for (; j + 8 <= n; j += 8) {
        v8f x = v8f_load(att + j) * v8f_set1(scale);
        v8f_store(att + j, x);
        mx8 = v8f_select(x > mx8, x, mx8);
    }
    float mx = -INFINITY;
    for (int l = 0; l < 8; l++) mx = mx8[l] > mx ? mx8[l] : mx;
    for (; j < n; j++) {
        att[j] *= scale;
        mx = att[j] > mx ? att[j] : mx;
    }
    float sum = exp_sum(att, n, mx);  // max subtracted for stability
    float inv = 1.0f / sum;
    // out = sum_j p_j v_j in 4 partial sums (key j goes to j % 4), combined (0+1)+(2+3): short
    // dependency chains for small head sizes, and still one fixed order
    if (hs % 8 == 0) {
        for (int i = 0; i < hs; i += 8) {  // 8 columns at a time, the 4 partial sums in registers
            v8f a0 = v8f_set1(0.0f), a1 = a0, a2 = a0, a3 = a0;
            const float *vi = v + i;
            for (j = 0; j + 4 <= n; j += 4) {
                a0 += v8f_set1(att[j] * inv) * v8f_load(vi + (size_t)j * stride);
                a1 += v8f_set1(att[j + 1] * inv) * v8f_load(vi + (size_t)(j + 1) * stride);
                a2 += v8f_set1(att[j + 2] * inv) * v8f_load(vi + (size_t)(j + 2) * stride);
                a3 += v8f_set1(att[j + 3] * inv) * v8f_load(vi + (size_t)(j + 3) * stride);
            }
            if (j < n) a0 += v8f_set1(att[j] * inv) * v8f_load(vi + (size_t)j * stride);
            if (j + 1 < n) a1 += v8f_set1(att[j + 1] * inv) * v8f_load(vi + (size_t)(j + 1) * stride);
            if (j + 2 < n) a2 += v8f_set1(att[j + 2] * inv) * v8f_load(vi + (size_t)(j + 2) * stride);
            v8f_store(out + i, (a0 + a1) + (a2 + a3));
        }
    } else {
        for (int i = 0; i < hs; i++) out[i] = 0.0f;
        for (j = 0; j < n; j++) axpy_f(out, att[j] * inv, v + (size_t)j * stride, hs);
    }
    return mx + logf(sum);
}

#define ATT_QB 64  // queries per block: the score block is (ATT_QB, keys)

// dst (C,R) = src (R,C)^T on the calling thread (small blocks inside parallel loops)
static void transpose_serial(float *dst, const float *src, int R, int C) {
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) dst[(size_t)c * R + r] = src[(size_t)r * C + c];
}

// rows of x at positions idx[0..n) (row stride ld, width hs) -> dst (n, hs) contiguous
static void gather_rows(float *dst, const float *x, size_t ld, const int *idx, int n, int hs) {
    for (int j = 0; j < n; j++) memcpy(dst + (size_t)j * hs, x + (size_t)idx[j] * ld, hs * sizeof(float));
}

// q (B,T,H,hs), k/v (B,T,KV,hs) -> out (B,T,H,hs), lse (B,T,H). vidx (B,T): row b's valid
// positions in order (nvalid[b] of them); pos (B,T): a valid position's rank among them.
// Query (b,t) attends to the valid keys s <= t of its row; padded queries output zero.
// Work units: (b, h, block of ATT_QB valid queries); each gathers its keys/values.
static void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                              const uint8_t *mask, const int *vidx, const int *nvalid,
                              int B, int T, int H, int KV, int hs) {
    int qd = H * hs, kvd = KV * hs, group = H / KV;
    float scale = 1.0f / sqrtf((float)hs);
    int nblk = (T + ATT_QB - 1) / ATT_QB;
    // padded queries: zero output
    for (size_t n = 0; n < (size_t)B * T; n++)
        if (!mask[n]) {
            memset(out + n * qd, 0, qd * sizeof(float));
            for (int h = 0; h < H; h++) lse[n * H + h] = 0.0f;
        }
    size_t units = (size_t)B * H * nblk;
    #pragma omp parallel if ((size_t)B * T * H * hs * T / 2 >= PAR_MIN)
    {
        float *kc = scratch_alloc((size_t)T * hs), *vc = scratch_alloc((size_t)T * hs);
        float *qc = scratch_alloc((size_t)ATT_QB * hs), *S = scratch_alloc((size_t)ATT_QB * T);
        #pragma omp for schedule(dynamic, 1)
        for (size_t u = 0; u < units; u++) {
            int blk = (int)(u % nblk), h = (int)(u / nblk % H), b = (int)(u / nblk / H);
            int nv = nvalid[b], r0 = blk * ATT_QB;
            if (r0 >= nv) continue;
            int nq = nv - r0 < ATT_QB ? nv - r0 : ATT_QB, nk = r0 + nq;
            const int *vi = vidx + (size_t)b * T;
            size_t kv0 = (size_t)b * T * kvd + (size_t)(h / group) * hs, q0 = (size_t)b * T * qd + (size_t)h * hs;
            gather_rows(kc, k + kv0, kvd, vi, nk, hs);
            gather_rows(vc, v + kv0, kvd, vi, nk, hs);
            gather_rows(qc, q + q0, qd, vi + r0, nq, hs);
            // S (nq, nk) = q k^T
            matmul_nt_serial(S, nk, qc, hs, kc, hs, nq, hs, nk);
            for (int i = 0; i < nq; i++) {
                size_t n = (size_t)b * T + vi[r0 + i];
                lse[n * H + h] = softmax_attend(out + n * qd + (size_t)h * hs, S + (size_t)i * nk, r0 + i + 1,
                                                scale, vc, hs, hs);
            }
        }
        free(kc); free(vc); free(qc); free(S);
    }
}

// Given dout (B,T,H,hs): dq (B,T,H,hs), dk, dv (B,T,KV,hs) are SET (not accumulated).
// Threads split (b, kv head) pairs: each owns its dk/dv rows and the dq rows of its heads,
// so no two threads write the same float. Probabilities are recomputed from lse; the four
// block products run on the GEMM kernel through transposed blocks.
ATTN_CLONES static void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                           const float *k, const float *v, const float *out, const float *lse,
                                           const int *vidx, const int *nvalid, int B, int T, int H, int KV, int hs) {
    int qd = H * hs, kvd = KV * hs, group = H / KV;
    float scale = 1.0f / sqrtf((float)hs);
    int units = B * KV;
    memset(dq, 0, (size_t)B * T * qd * sizeof(float));  // padded positions stay zero
    memset(dk, 0, (size_t)B * T * kvd * sizeof(float));
    memset(dv, 0, (size_t)B * T * kvd * sizeof(float));
    #pragma omp parallel if ((size_t)B * T * H * hs * T / 2 >= PAR_MIN)
    {
        size_t Th = (size_t)T * hs, QT = (size_t)ATT_QB * T;
        float *kc = scratch_alloc(Th), *vc = scratch_alloc(Th), *kcT = scratch_alloc(Th);
        float *qc = scratch_alloc(Th), *oc = scratch_alloc(Th), *doc = scratch_alloc(Th);
        float *dkc = scratch_alloc(Th), *dvc = scratch_alloc(Th), *dqc = scratch_alloc(Th), *tmp = scratch_alloc(Th);
        float *P = scratch_alloc(QT), *dS = scratch_alloc(QT), *blkT = scratch_alloc(QT);
        float *xT = scratch_alloc((size_t)ATT_QB * hs), *L = scratch_alloc(T);
        #pragma omp for schedule(dynamic, 1)
        for (int u = 0; u < units; u++) {
            int b = u / KV, kh = u % KV, nv = nvalid[b];
            if (nv == 0) continue;
            const int *vi = vidx + (size_t)b * T;
            size_t kv0 = (size_t)b * T * kvd + (size_t)kh * hs;
            gather_rows(kc, k + kv0, kvd, vi, nv, hs);
            gather_rows(vc, v + kv0, kvd, vi, nv, hs);
            transpose_serial(kcT, kc, nv, hs);  // (hs, nv)
            memset(dkc, 0, (size_t)nv * hs * sizeof(float));
            memset(dvc, 0, (size_t)nv * hs * sizeof(float));
            for (int h = kh * group; h < (kh + 1) * group; h++) {
                size_t q0 = (size_t)b * T * qd + (size_t)h * hs;
                gather_rows(qc, q + q0, qd, vi, nv, hs);
                gather_rows(oc, out + q0, qd, vi, nv, hs);
                gather_rows(doc, dout + q0, qd, vi, nv, hs);
                for (int j = 0; j < nv; j++) L[j] = lse[((size_t)b * T + vi[j]) * H + h];
                for (int r0 = 0; r0 < nv; r0 += ATT_QB) {
                    int nq = nv - r0 < ATT_QB ? nv - r0 : ATT_QB, nk = r0 + nq;
                    const float *qb = qc + (size_t)r0 * hs, *dob = doc + (size_t)r0 * hs;
                    // recompute scores: S = q k^T;  dP = do v^T  (o = P v)
                    matmul_nt_serial(P, nk, qb, hs, kc, hs, nq, hs, nk);
                    matmul_nt_serial(dS, nk, dob, hs, vc, hs, nq, hs, nk);
                    for (int i = 0; i < nq; i++) {
                        int n = r0 + i + 1;  // causal: keys 0..r0+i
                        float *pr = P + (size_t)i * nk, *dr = dS + (size_t)i * nk;
                        // sum_s p_s dp_s = do . o
                        float D = dot_f(dob + (size_t)i * hs, oc + (size_t)(r0 + i) * hs, hs);
                        // p_s = exp(score_s * scale - lse)
                        for (int j = 0; j < n; j++) pr[j] = pr[j] * scale - L[r0 + i];
                        exp_inplace(pr, n);
                        // p = softmax(score)  =>  dscore_s = p_s (dp_s - D), and score = q.k * scale
                        for (int j = 0; j < n; j++) dr[j] = pr[j] * (dr[j] - D) * scale;
                        for (int j = n; j < nk; j++) pr[j] = dr[j] = 0.0f;
                    }
                    // dq (nq, hs) = dS (nq, nk) @ k (nk, hs): NT against kT (hs, nv)
                    matmul_nt_serial(dqc + (size_t)r0 * hs, hs, dS, nk, kcT, nv, nq, nk, hs);
                    // dk (nk, hs) += dS^T @ q_blk
                    transpose_serial(blkT, dS, nq, nk);          // (nk, nq)
                    transpose_serial(xT, qb, nq, hs);            // (hs, nq)
                    matmul_nt_serial(tmp, hs, blkT, nq, xT, nq, nk, nq, hs);
                    for (size_t i = 0; i < (size_t)nk * hs; i++) dkc[i] += tmp[i];
                    // dv (nk, hs) += P^T @ do_blk
                    transpose_serial(blkT, P, nq, nk);
                    transpose_serial(xT, dob, nq, hs);
                    matmul_nt_serial(tmp, hs, blkT, nq, xT, nq, nk, nq, hs);
                    for (size_t i = 0; i < (size_t)nk * hs; i++) dvc[i] += tmp[i];
                }
                for (int j = 0; j < nv; j++)
                    memcpy(dq + q0 + (size_t)vi[j] * qd, dqc + (size_t)j * hs, hs * sizeof(float));
            }
            for (int j = 0; j < nv; j++) {
                memcpy(dk + kv0 + (size_t)vi[j] * kvd, dkc + (size_t)j * hs, hs * sizeof(float));
                memcpy(dv + kv0 + (size_t)vi[j] * kvd, dvc + (size_t)j * hs, hs * sizeof(float));
            }
        }
        free(kc); free(vc); free(kcT); free(qc); free(oc); free(doc); free(dkc); free(dvc); free(dqc); free(tmp);
        free(P); free(dS); free(blkT); free(xT); free(L);
    }
}

// gate (n) = silu(h1) * h3, silu(x) = x * sigmoid(x)
ATTN_CLONES static void swiglu_forward(float *gate, const float *h1, const float *h3, size_t n) {
    size_t n8 = n & ~(size_t)7;
    if (n >= PAR_MIN) {
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n8; i += 8) {
            v8f x = v8f_load(h1 + i);
            v8f_store(gate + i, x / (v8f_set1(1.0f) + exp_approx8(-x)) * v8f_load(h3 + i));
        }
    } else {
        for (size_t i = 0; i < n8; i += 8) {
            v8f x = v8f_load(h1 + i);
            v8f_store(gate + i, x / (v8f_set1(1.0f) + exp_approx8(-x)) * v8f_load(h3 + i));
        }
    }
    for (size_t i = n8; i < n; i++) {
        float x = h1[i];
        gate[i] = x / (1.0f + exp_approx(-x)) * h3[i];
    }
}

// dh1, dh3 (n) SET from dgate (n)
ATTN_CLONES static void swiglu_backward(float *dh1, float *dh3, const float *dgate, const float *h1,
                                        const float *h3, size_t n) {
    size_t n8 = n & ~(size_t)7;
    #pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n8; i += 8) {
        v8f x = v8f_load(h1 + i), g = v8f_load(dgate + i), one = v8f_set1(1.0f);
        v8f sig = one / (one + exp_approx8(-x));
        // gate = x sig(x) h3  =>  dh3 = dgate x sig ;  dx = dgate h3 sig (1 + x (1 - sig))
        v8f_store(dh3 + i, g * x * sig);
        v8f_store(dh1 + i, g * v8f_load(h3 + i) * sig * (one + x * (one - sig)));
    }
    for (size_t i = n8; i < n; i++) {
        float x = h1[i], sig = 1.0f / (1.0f + exp_approx(-x));
        dh3[i] = dgate[i] * x * sig;
        dh1[i] = dgate[i] * h3[i] * sig * (1.0f + x * (1.0f - sig));
    }
}

// ---------------------------------------------------------------------------------------------
// the batched forward and backward

// Lay out the activation buffer for N = B*T tokens (grows, never shrinks).
static void acts_prepare(Model *m, int B, int T) {
    const ModelConfig *c = &m->cfg;
    ModelActs *a = m->acts;
    size_t N = (size_t)B * T, C = c->dim, F = c->hidden_dim, L = c->n_layers;
    size_t hs = C / c->n_heads, qd = c->n_heads * hs, kvd = c->n_kv_heads * hs;
    size_t sizes[] = {
        (L + 1) * N * C,  // res
        L * N * C,        // ln1
        L * N,            // ln1_rstd
        L * N * qd,       // q
        L * N * kvd,      // k
        L * N * kvd,      // v
        L * N * qd,       // atty
        L * N * c->n_heads,  // lse
        L * N * C,        // mid
        L * N * C,        // ln2
        L * N,            // ln2_rstd
        L * N * F,        // h1
        L * N * F,        // h3
        L * N * F,        // gate
        N,                // lnf_rstd
        N * C,            // hidden
    };
    float **views[] = {&a->res, &a->ln1, &a->ln1_rstd, &a->q, &a->k, &a->v, &a->atty, &a->lse,
                       &a->mid, &a->ln2, &a->ln2_rstd, &a->h1, &a->h3, &a->gate, &a->lnf_rstd, &a->hidden};
    size_t total = 0, nv = sizeof sizes / sizeof sizes[0];
    for (size_t i = 0; i < nv; i++) total += sizes[i];
    a->buf = grow(a->buf, &a->cap, total);
    float *p = a->buf;
    for (size_t i = 0; i < nv; i++) {
        *views[i] = p;
        p += sizes[i];
    }
    if (N > a->pos_cap) {
        free(a->pos);
        free(a->vidx);
        free(a->tokens);
        free(a->mask);
        a->pos = xmalloc(N * sizeof(int));
        a->vidx = xmalloc(N * sizeof(int));
        a->tokens = xmalloc(N * sizeof(int32_t));
        a->mask = xmalloc(N);
        a->pos_cap = N;
    }
}

void model_forward(Model *m, const int32_t *tokens, const uint8_t *mask, int B, int T, int want_logits) {
    const ModelConfig *c = &m->cfg;
    if (B <= 0 || T <= 0) die(EXIT_USAGE, "model_forward: empty batch (B=%d, T=%d)", B, T);
    acts_prepare(m, B, T);
    ModelActs *a = m->acts;
    a->rl_valid = 0;   // model_logits_rows' cache belonged to the previous forward
    int N = B * T, C = c->dim, F = c->hidden_dim, H = c->n_heads, KV = c->n_kv_heads, V = c->vocab_size;
    int hs = C / H, qd = H * hs, kvd = KV * hs;
    m->B = B;
    m->T = T;
    if ((size_t)B > a->nvalid_cap) {
        free(a->nvalid);
        free(a->seg_start);
        free(a->seg_len);
        a->nvalid = xmalloc((size_t)B * sizeof(int));
        a->seg_start = xmalloc((size_t)B * sizeof(int));
        a->seg_len = xmalloc((size_t)B * sizeof(int));
        a->nvalid_cap = B;
    }

    // position ids: valid tokens before each position in its row
    int max_pos = 0;
    for (int b = 0; b < B; b++) {
        int cnt = 0;
        for (int t = 0; t < T; t++) {
            size_t n = (size_t)b * T + t;
            uint8_t mk = mask ? (mask[n] != 0) : 1;
            a->mask[n] = mk;
            a->pos[n] = cnt;
            if (mk) a->vidx[(size_t)b * T + cnt] = t;
            a->tokens[n] = mk ? tokens[n] : 0;
            if (mk && (tokens[n] < 0 || tokens[n] >= V))
                die(EXIT_BADINPUT, "model_forward: token %d at (%d,%d) is outside the vocabulary (%d)",
                    tokens[n], b, t, V);
            cnt += mk;
        }
        if (cnt > max_pos) max_pos = cnt;
        a->nvalid[b] = cnt;
    }
    rope_ensure(m, max_pos + 1);

    // x = tok_emb[token] at valid positions, 0 at padding
    float *x = a->res;
    #pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        if (a->mask[n]) memcpy(x + (size_t)n * C, m->w.tok_emb + (size_t)a->tokens[n] * C, C * sizeof(float));
        else memset(x + (size_t)n * C, 0, C * sizeof(float));
    }

    for (int l = 0; l < c->n_layers; l++) {
        const ParamViews *w = &m->w;
        float *res = a->res + (size_t)l * N * C, *res_out = a->res + (size_t)(l + 1) * N * C;
        float *ln1 = a->ln1 + (size_t)l * N * C, *ln2 = a->ln2 + (size_t)l * N * C;
        float *q = a->q + (size_t)l * N * qd, *k = a->k + (size_t)l * N * kvd, *v = a->v + (size_t)l * N * kvd;
        float *atty = a->atty + (size_t)l * N * qd, *mid = a->mid + (size_t)l * N * C;
        float *h1 = a->h1 + (size_t)l * N * F, *h3 = a->h3 + (size_t)l * N * F, *gate = a->gate + (size_t)l * N * F;

        // attention block
        rmsnorm_forward(ln1, a->ln1_rstd + (size_t)l * N, res, w->attn_norm + (size_t)l * C, N, C, c->norm_eps);
        matmul_forward(q, ln1, w->wq + (size_t)l * qd * C, w->bq ? w->bq + (size_t)l * qd : NULL, N, C, qd, 0);
        matmul_forward(k, ln1, w->wk + (size_t)l * kvd * C, w->bk ? w->bk + (size_t)l * kvd : NULL, N, C, kvd, 0);
        matmul_forward(v, ln1, w->wv + (size_t)l * kvd * C, w->bv ? w->bv + (size_t)l * kvd : NULL, N, C, kvd, 0);
        rope_forward(q, a->pos, N, H, hs, a->rope_cos, a->rope_sin);
        rope_forward(k, a->pos, N, KV, hs, a->rope_cos, a->rope_sin);
        attention_forward(atty, a->lse + (size_t)l * N * H, q, k, v, a->mask, a->vidx, a->nvalid, B, T, H, KV, hs);
        memcpy(mid, res, (size_t)N * C * sizeof(float));
        matmul_forward(mid, atty, w->wo + (size_t)l * C * qd, NULL, N, qd, C, 1);  // mid = res + atty wo^T

        // feed-forward block
        rmsnorm_forward(ln2, a->ln2_rstd + (size_t)l * N, mid, w->ffn_norm + (size_t)l * C, N, C, c->norm_eps);
        matmul_forward(h1, ln2, w->w1 + (size_t)l * F * C, NULL, N, C, F, 0);
        matmul_forward(h3, ln2, w->w3 + (size_t)l * F * C, NULL, N, C, F, 0);
        swiglu_forward(gate, h1, h3, (size_t)N * F);
        memcpy(res_out, mid, (size_t)N * C * sizeof(float));
        matmul_forward(res_out, gate, w->w2 + (size_t)l * C * F, NULL, N, F, C, 1);  // res_out = mid + gate w2^T
    }

    rmsnorm_forward(a->hidden, a->lnf_rstd, a->res + (size_t)c->n_layers * N * C, m->w.final_norm, N, C, c->norm_eps);
    m->hidden = a->hidden;
    if (want_logits) {
        a->logits = grow(a->logits, &a->logits_cap, (size_t)N * V);
        matmul_forward(a->logits, a->hidden, m->w.lm_head, NULL, N, C, V, 0);
        m->logits = a->logits;
    } else {
        m->logits = NULL;
    }
}

// Checks, the sequences' segments and the backward scratch; dhid (N,C) = dhidden (or 0).
// The scratch layout (dres, dhid, dln, ...) is the one backward_trunk reads.
static float *backward_begin(Model *m, const float *dhidden, const char *fn) {
    ModelActs *a = m->acts;
    if (!model_trainable(m).grads) die(EXIT_USAGE, "%s: no gradient buffer (call model_zero_grad first)", fn);
    if (!m->hidden) die(EXIT_USAGE, "%s: no forward pass to differentiate", fn);
    const ModelConfig *c = &m->cfg;
    int B = m->B, T = m->T, N = B * T, C = c->dim, F = c->hidden_dim, hs = C / c->n_heads;
    int qd = c->n_heads * hs, kvd = c->n_kv_heads * hs;
    // each row is one sequence: its tokens run from its first to its last valid position
    for (int b = 0; b < B; b++) {
        int nv = a->nvalid[b];
        const int *vi = a->vidx + (size_t)b * T;
        a->seg_start[b] = b * T + (nv ? vi[0] : 0);
        a->seg_len[b] = nv ? vi[nv - 1] - vi[0] + 1 : 0;
    }
    // backward scratch (one layer's worth)
    size_t NC = (size_t)N * C;
    size_t total = 3 * NC + 2 * (size_t)N * qd + 2 * (size_t)N * kvd + 3 * (size_t)N * F;
    a->gbuf = grow(a->gbuf, &a->gcap, total);
    float *dhid = a->gbuf + NC;
    if (dhidden) memcpy(dhid, dhidden, NC * sizeof(float));
    else memset(dhid, 0, NC * sizeof(float));
    return dhid;
}

static void backward_trunk(Model *m);

void model_backward(Model *m, const float *dlogits, const float *dhidden) {
    float *dhid = backward_begin(m, dhidden, "model_backward");
    ModelActs *a = m->acts;
    int B = m->B, N = B * m->T, C = m->cfg.dim, V = m->cfg.vocab_size;
    // logits = hidden @ lm_head^T
    if (dlogits)
        matmul_backward(a, a->seg_start, a->seg_len, B, dhid, gsum(m, m->g.lm_head, 0), NULL, dlogits,
                        transposed(a, a->hidden, N, C), m->w.lm_head, N, C, V, 1);
    backward_trunk(m);
}

// Gather hidden rows: out (n,C) = hidden[rows[i]]
static void gather_hidden(const Model *m, int n, const int *rows, float *out) {
    int C = m->cfg.dim;
    for (int i = 0; i < n; i++) memcpy(out + (size_t)i * C, m->hidden + (size_t)rows[i] * C, C * sizeof(float));
}

// rows (n) must name distinct valid positions of the last forward in increasing order
static void check_rows(const Model *m, int n, const int *rows, const char *fn) {
    for (int i = 0; i < n; i++)
        if (rows[i] < 0 || rows[i] >= m->B * m->T || (i && rows[i] <= rows[i - 1]) || !m->acts->mask[rows[i]])
            die(EXIT_USAGE, "%s: row %d (position %d) is not a valid position after row %d's", fn, i, rows[i],
                i - 1);
}

const float *model_logits_rows(Model *m, int n, const int *rows) {
    ModelActs *a = m->acts;
    if (!m->hidden) die(EXIT_USAGE, "model_logits_rows: no forward pass");
    int C = m->cfg.dim, V = m->cfg.vocab_size;
    if (a->rl_valid && a->rl_n == n && !memcmp(a->rl_rows, rows, (size_t)n * sizeof(int))) return a->row_logits;
    check_rows(m, n, rows, "model_logits_rows");
    float *h = xmalloc(((size_t)n * C + 1) * sizeof(float));
    gather_hidden(m, n, rows, h);
    a->row_logits = grow(a->row_logits, &a->rl_cap, (size_t)n * V + 1);
    matmul_forward(a->row_logits, h, m->w.lm_head, NULL, n, C, V, 0);   // (n,V): the rows of the full logits
    free(h);
    free(a->rl_rows);
    a->rl_rows = xmalloc(((size_t)n + 1) * sizeof(int));
    memcpy(a->rl_rows, rows, (size_t)n * sizeof(int));
    a->rl_n = n;
    a->rl_valid = 1;
    return a->row_logits;
}

void model_backward_rows(Model *m, int n, const int *rows, const float *dlogits, const float *dhidden) {
    float *dhid = backward_begin(m, dhidden, "model_backward_rows");
    ModelActs *a = m->acts;
    int B = m->B, T = m->T, C = m->cfg.dim, V = m->cfg.vocab_size;
    if (dlogits && n > 0) {
        check_rows(m, n, rows, "model_backward_rows");
        // the rows of one sequence are consecutive (increasing positions): one segment each
        int *ss = xcalloc(B, sizeof(int)), *sl = xcalloc(B, sizeof(int));
        for (int i = n - 1; i >= 0; i--) {
            ss[rows[i] / T] = i;
            sl[rows[i] / T]++;
        }
        float *h = xmalloc((size_t)n * C * sizeof(float)), *hT = xmalloc((size_t)n * C * sizeof(float));
        float *drow = xmalloc((size_t)n * C * sizeof(float));
        gather_hidden(m, n, rows, h);
        transpose(hT, h, n, C);
        // logits rows = hidden rows @ lm_head^T: drow (n,C), d lm_head per sequence
        matmul_backward(a, ss, sl, B, drow, gsum(m, m->g.lm_head, 0), NULL, dlogits, hT, m->w.lm_head, n, C, V, 0);
        for (int i = 0; i < n; i++) {
            float *d = dhid + (size_t)rows[i] * C;
            const float *src = drow + (size_t)i * C;
            for (int k = 0; k < C; k++) d[k] += src[k];
        }
        free(ss); free(sl); free(h); free(hT); free(drow);
    }
    backward_trunk(m);
}

// The adapter's gradients for projection t of layer l (nothing without an adapter): dy its
// output gradient (N, out), x its input (N, in) and xT that transposed.
static void adapter_backward(Model *m, int t, int l, const float *dy, const float *x, const float *xT) {
    if (!m->lora) return;
    ModelActs *a = m->acts;
    lora_backward(m->lora, t, l, dy, x, xT, m->B * m->T, a->seg_start, a->seg_len, m->B);
}

// From dhid (the scratch of backward_begin) down to the embeddings; then the fp32 gradients.
static void backward_trunk(Model *m) {
    const ModelConfig *c = &m->cfg;
    ModelActs *a = m->acts;
    int B = m->B, T = m->T, N = B * T, C = c->dim, F = c->hidden_dim, H = c->n_heads, KV = c->n_kv_heads;
    int hs = C / H, qd = H * hs, kvd = KV * hs;
    const ParamViews *w = &m->w;
    const ParamViews *g = &m->g;
    size_t NC = (size_t)N * C;
    float *p = a->gbuf;
    float *dres = p; p += NC;     // (N,C) gradient of the residual stream
    float *dhid = p; p += NC;     // (N,C) gradient of hidden
    float *dln = p; p += NC;      // (N,C) gradient of a norm's output
    float *datty = p; p += (size_t)N * qd;
    float *dq = p; p += (size_t)N * qd;
    float *dk = p; p += (size_t)N * kvd;
    float *dv = p; p += (size_t)N * kvd;
    float *dgate = p; p += (size_t)N * F;
    float *dh1 = p; p += (size_t)N * F;
    float *dh3 = p;

    // hidden = rmsnorm(res[L])
    memset(dres, 0, NC * sizeof(float));
    rmsnorm_backward(a, B, dres, gsum(m, g->final_norm, 0), dhid, a->res + (size_t)c->n_layers * NC, w->final_norm, a->lnf_rstd, N, C);
    // padded positions: nothing upstream of them is used; drop whatever came in there
    for (int n = 0; n < N; n++)
        if (!a->mask[n]) memset(dres + (size_t)n * C, 0, C * sizeof(float));

    for (int l = c->n_layers - 1; l >= 0; l--) {
        const float *res = a->res + (size_t)l * NC, *ln1 = a->ln1 + (size_t)l * NC, *ln2 = a->ln2 + (size_t)l * NC;
        const float *q = a->q + (size_t)l * N * qd, *k = a->k + (size_t)l * N * kvd, *v = a->v + (size_t)l * N * kvd;
        const float *atty = a->atty + (size_t)l * N * qd, *mid = a->mid + (size_t)l * NC;
        const float *h1 = a->h1 + (size_t)l * N * F, *h3 = a->h3 + (size_t)l * N * F, *gate = a->gate + (size_t)l * N * F;

        // res_out = mid + gate @ w2^T: dres flows on to mid unchanged
        const float *gateT = transposed(a, gate, N, F);
        matmul_backward(a, a->seg_start, a->seg_len, B, dgate, gsum(m, g->w2, (size_t)l * C * F), NULL, dres, gateT, w->w2 + (size_t)l * C * F, N, F, C, 0);
        adapter_backward(m, LORA_DOWN, l, dres, gate, gateT);
        // gate = silu(h1) * h3
        swiglu_backward(dh1, dh3, dgate, h1, h3, (size_t)N * F);
        // h1 = ln2 @ w1^T, h3 = ln2 @ w3^T
        const float *ln2T = transposed(a, ln2, N, C);
        matmul_backward(a, a->seg_start, a->seg_len, B, dln, gsum(m, g->w1, (size_t)l * F * C), NULL, dh1, ln2T, w->w1 + (size_t)l * F * C, N, C, F, 0);
        matmul_backward(a, a->seg_start, a->seg_len, B, dln, gsum(m, g->w3, (size_t)l * F * C), NULL, dh3, ln2T, w->w3 + (size_t)l * F * C, N, C, F, 1);
        adapter_backward(m, LORA_GATE, l, dh1, ln2, ln2T);
        adapter_backward(m, LORA_UP, l, dh3, ln2, ln2T);
        // ln2 = rmsnorm(mid)
        rmsnorm_backward(a, B, dres, gsum(m, g->ffn_norm, (size_t)l * C), dln, mid, w->ffn_norm + (size_t)l * C,
                         a->ln2_rstd + (size_t)l * N, N, C);

        // mid = res + atty @ wo^T: dres flows on to res unchanged
        const float *attyT = transposed(a, atty, N, qd);
        matmul_backward(a, a->seg_start, a->seg_len, B, datty, gsum(m, g->wo, (size_t)l * C * qd), NULL, dres, attyT, w->wo + (size_t)l * C * qd, N, qd, C, 0);
        adapter_backward(m, LORA_O, l, dres, atty, attyT);
        // atty = attention(q, k, v)
        attention_backward(dq, dk, dv, datty, q, k, v, atty, a->lse + (size_t)l * N * H, a->vidx, a->nvalid,
                           B, T, H, KV, hs);
        // q, k = rope(q0, k0)
        rope_backward(dq, a->pos, N, H, hs, a->rope_cos, a->rope_sin);
        rope_backward(dk, a->pos, N, KV, hs, a->rope_cos, a->rope_sin);
        // q0 = ln1 @ wq^T + bq, k0 = ..., v = ...
        const float *ln1T = transposed(a, ln1, N, C);
        matmul_backward(a, a->seg_start, a->seg_len, B, dln, gsum(m, g->wq, (size_t)l * qd * C), gsum(m, g->bq, (size_t)l * qd), dq, ln1T,
                        w->wq + (size_t)l * qd * C, N, C, qd, 0);
        matmul_backward(a, a->seg_start, a->seg_len, B, dln, gsum(m, g->wk, (size_t)l * kvd * C), gsum(m, g->bk, (size_t)l * kvd), dk, ln1T,
                        w->wk + (size_t)l * kvd * C, N, C, kvd, 1);
        matmul_backward(a, a->seg_start, a->seg_len, B, dln, gsum(m, g->wv, (size_t)l * kvd * C), gsum(m, g->bv, (size_t)l * kvd), dv, ln1T,
                        w->wv + (size_t)l * kvd * C, N, C, kvd, 1);
        adapter_backward(m, LORA_Q, l, dq, ln1, ln1T);
        adapter_backward(m, LORA_K, l, dk, ln1, ln1T);
        adapter_backward(m, LORA_V, l, dv, ln1, ln1T);
        // ln1 = rmsnorm(res)
        rmsnorm_backward(a, B, dres, gsum(m, g->attn_norm, (size_t)l * C), dln, res, w->attn_norm + (size_t)l * C,
                         a->ln1_rstd + (size_t)l * N, N, C);
    }

    // x = tok_emb[token]: rows in order on one thread (a token may repeat), each position's
    // fp32 gradient added to the double sum
    double *ge0 = gsum(m, g->tok_emb, 0);
    for (int n = 0; ge0 && n < N; n++) {
        if (!a->mask[n]) continue;
        double *ge = ge0 + (size_t)a->tokens[n] * C;
        const float *d = dres + (size_t)n * C;
        for (int i = 0; i < C; i++) ge[i] += d[i];
    }
    model_round_grads(m);
}

// ---------------------------------------------------------------------------------------------
// KV cache and incremental decoding

KVCache *kvcache_create(const ModelConfig *cfg, int B, int T_max) {
    if (B <= 0 || T_max <= 0) die(EXIT_USAGE, "kvcache_create: need B > 0 and T_max > 0 (got %d, %d)", B, T_max);
    KVCache *kv = xcalloc(1, sizeof(KVCache));
    kv->B = B;
    kv->T_max = T_max;
    kv->L = cfg->n_layers;
    kv->kv_dim = cfg->n_kv_heads * (cfg->dim / cfg->n_heads);
    size_t n = (size_t)kv->L * B * T_max * kv->kv_dim;
    kv->k = xcalloc(n, sizeof(float));
    kv->v = xcalloc(n, sizeof(float));
    kv->len = xcalloc(B, sizeof(int));
    return kv;
}

void kvcache_free(KVCache *kv) {
    if (!kv) return;
    free(kv->k);
    free(kv->v);
    free(kv->len);
    free(kv);
}

void kvcache_reset_row(KVCache *kv, int row) {
    if (row < 0 || row >= kv->B) die(EXIT_USAGE, "kvcache_reset_row: row %d outside [0, %d)", row, kv->B);
    kv->len[row] = 0;
}

// attention of packed token j = u / H, head h = u % H against its cache row: q (Ntok, H*hs),
// kc/vc this layer's cache (B, T_max, KV*hs), att (Ntok, H*hs) out, sc (T_max) scratch
static void decode_attend(float *att, const float *q, const float *kc, const float *vc, float *sc, size_t u,
                          int H, int hs, int group, int kvd, int T_max, const int *trow, const int *pos, float scale) {
    int j = (int)(u / H), h = (int)(u % H), nk = pos[j] + 1, qd = H * hs;
    size_t kv0 = (size_t)trow[j] * T_max * kvd + (size_t)(h / group) * hs;
    matmul_nt_serial(sc, nk, q + (size_t)j * qd + (size_t)h * hs, hs, kc + kv0, kvd, 1, hs, nk);
    softmax_attend(att + (size_t)j * qd + (size_t)h * hs, sc, nk, scale, vc + kv0, kvd, hs);
}

// Append seqs[i] (lens[i] tokens) to cache rows rows[i]; logits_out (n, V) after each row's
// last new token. All new tokens of all rows go through each layer as one packed (Ntok, C) batch.
static void model_extend(Model *m, KVCache *kv, int n, const int *rows, const int32_t *const *seqs,
                         const int *lens, float *logits_out) {
    const ModelConfig *c = &m->cfg;
    ModelActs *a = m->acts;
    int C = c->dim, F = c->hidden_dim, H = c->n_heads, KV = c->n_kv_heads, V = c->vocab_size;
    int hs = C / H, qd = H * hs, kvd = KV * hs, group = H / KV;
    if (kv->L != c->n_layers || kv->kv_dim != kvd) die(EXIT_USAGE, "KV cache shape does not match the model");
    if (n <= 0) return;

    // count the packed tokens, check rows and room
    int Ntok = 0, max_pos = 0;
    for (int i = 0; i < n; i++) {
        int r = rows[i];
        if (r < 0 || r >= kv->B) die(EXIT_USAGE, "KV cache row %d outside [0, %d)", r, kv->B);
        if (lens[i] <= 0) die(EXIT_USAGE, "KV cache: row %d: nothing to append", r);
        if (kv->len[r] + lens[i] > kv->T_max)
            die(EXIT_USAGE, "KV cache row %d is full: %d + %d tokens > T_max %d", r, kv->len[r], lens[i], kv->T_max);
        for (int j = 0; j < i; j++)
            if (rows[j] == r) die(EXIT_USAGE, "KV cache: row %d listed twice in one call", r);
        Ntok += lens[i];
        if (kv->len[r] + lens[i] > max_pos) max_pos = kv->len[r] + lens[i];
    }
    rope_ensure(m, max_pos);

    // scratch: x, xb (Ntok,C); q, att (Ntok,qd); k, v (Ntok,kvd); h1, h3 (Ntok,F); last (n,C); pos, row ints
    size_t NC = (size_t)Ntok * C;
    int nth = omp_get_max_threads();
    size_t sc_stride = ((size_t)max_pos + 15) & ~(size_t)15;  // per-thread attention scores
    size_t total = 2 * NC + 2 * (size_t)Ntok * qd + 2 * (size_t)Ntok * kvd + 2 * (size_t)Ntok * F +
                   (size_t)n * C + 2 * (size_t)Ntok + (size_t)nth * sc_stride;
    a->dbuf = grow(a->dbuf, &a->dcap, total);
    float *p = a->dbuf;
    float *x = p; p += NC;
    float *xb = p; p += NC;
    float *q = p; p += (size_t)Ntok * qd;
    float *att = p; p += (size_t)Ntok * qd;
    float *kk = p; p += (size_t)Ntok * kvd;
    float *vv = p; p += (size_t)Ntok * kvd;
    float *h1 = p; p += (size_t)Ntok * F;
    float *h3 = p; p += (size_t)Ntok * F;
    float *last = p; p += (size_t)n * C;
    float *sc_all = p; p += (size_t)nth * sc_stride;
    int *pos = (int *)p; p += Ntok;   // int and float are both 4 bytes
    int *trow = (int *)p;

    // embed the new tokens; remember each one's cache row and position
    for (int i = 0, j0 = 0; i < n; j0 += lens[i], i++) {
        for (int j = 0; j < lens[i]; j++) {
            int32_t tok = seqs[i][j];
            if (tok < 0 || tok >= V) die(EXIT_BADINPUT, "KV decode: token %d is outside the vocabulary (%d)", tok, V);
            memcpy(x + (size_t)(j0 + j) * C, m->w.tok_emb + (size_t)tok * C, C * sizeof(float));
            pos[j0 + j] = kv->len[rows[i]] + j;
            trow[j0 + j] = rows[i];
        }
    }

    float scale = 1.0f / sqrtf((float)hs);
    for (int l = 0; l < c->n_layers; l++) {
        const ParamViews *w = &m->w;
        // attention block
        rmsnorm_forward(xb, NULL, x, w->attn_norm + (size_t)l * C, Ntok, C, c->norm_eps);
        matmul_forward(q, xb, w->wq + (size_t)l * qd * C, w->bq ? w->bq + (size_t)l * qd : NULL, Ntok, C, qd, 0);
        matmul_forward(kk, xb, w->wk + (size_t)l * kvd * C, w->bk ? w->bk + (size_t)l * kvd : NULL, Ntok, C, kvd, 0);
        matmul_forward(vv, xb, w->wv + (size_t)l * kvd * C, w->bv ? w->bv + (size_t)l * kvd : NULL, Ntok, C, kvd, 0);
        rope_forward(q, pos, Ntok, H, hs, a->rope_cos, a->rope_sin);
        rope_forward(kk, pos, Ntok, KV, hs, a->rope_cos, a->rope_sin);
        // store the new keys/values at cache (l, row, pos)
        float *kc = kv->k + (size_t)l * kv->B * kv->T_max * kvd, *vc = kv->v + (size_t)l * kv->B * kv->T_max * kvd;
        for (int j = 0; j < Ntok; j++) {
            size_t off = ((size_t)trow[j] * kv->T_max + pos[j]) * kvd;
            memcpy(kc + off, kk + (size_t)j * kvd, kvd * sizeof(float));
            memcpy(vc + off, vv + (size_t)j * kvd, kvd * sizeof(float));
        }
        // each new token attends to its row's cache up to and including itself
        size_t units = (size_t)Ntok * H;
        if (units * hs * max_pos / 2 >= PAR_MIN) {
            #pragma omp parallel
            {
                float *sc = sc_all + (size_t)omp_get_thread_num() * sc_stride;
                #pragma omp for schedule(dynamic, 4)
                for (size_t u = 0; u < units; u++)
                    decode_attend(att, q, kc, vc, sc, u, H, hs, group, kvd, kv->T_max, trow, pos, scale);
            }
        } else {
            for (size_t u = 0; u < units; u++)
                decode_attend(att, q, kc, vc, sc_all, u, H, hs, group, kvd, kv->T_max, trow, pos, scale);
        }
        matmul_forward(x, att, w->wo + (size_t)l * C * qd, NULL, Ntok, qd, C, 1);  // x += att wo^T
        // feed-forward block
        rmsnorm_forward(xb, NULL, x, w->ffn_norm + (size_t)l * C, Ntok, C, c->norm_eps);
        matmul_forward(h1, xb, w->w1 + (size_t)l * F * C, NULL, Ntok, C, F, 0);
        matmul_forward(h3, xb, w->w3 + (size_t)l * F * C, NULL, Ntok, C, F, 0);
        swiglu_forward(h1, h1, h3, (size_t)Ntok * F);
        matmul_forward(x, h1, w->w2 + (size_t)l * C * F, NULL, Ntok, F, C, 1);  // x += gate w2^T
    }

    // final norm and logits for each row's last new token only
    for (int i = 0, j0 = 0; i < n; j0 += lens[i], i++) {
        memcpy(last + (size_t)i * C, x + (size_t)(j0 + lens[i] - 1) * C, C * sizeof(float));
        kv->len[rows[i]] += lens[i];
    }
    rmsnorm_forward(xb, NULL, last, m->w.final_norm, n, C, c->norm_eps);
    if (logits_out) matmul_forward(logits_out, xb, m->w.lm_head, NULL, n, C, V, 0);
}

void model_prefill(Model *m, KVCache *kv, int n, const int *rows, const int32_t *const *prompts,
                   const int *lens, float *logits_out) {
    model_extend(m, kv, n, rows, prompts, lens, logits_out);
}

void model_decode(Model *m, KVCache *kv, int n, const int *rows, const int32_t *tokens, float *logits_out) {
    if (n <= 0) return;
    ModelActs *a = m->acts;
    if ((size_t)n > a->dec_cap) {  // one-token "prompts" pointing into tokens
        free(a->dec_seqs);
        free(a->dec_ones);
        a->dec_seqs = xmalloc((size_t)n * sizeof(*a->dec_seqs));
        a->dec_ones = xmalloc((size_t)n * sizeof(int));
        a->dec_cap = n;
    }
    for (int i = 0; i < n; i++) {
        a->dec_seqs[i] = tokens + i;
        a->dec_ones[i] = 1;
    }
    model_extend(m, kv, n, rows, a->dec_seqs, a->dec_ones, logits_out);
}
