// lora.c — low-rank adapters: shapes, initialisation, merging and gradients (lora.h).
#include "lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"   // die, xmalloc
#include "rng.h"      // rng_splitmix64
#include "matmul.h"   // matmul_nt, matmul_nt_segsum, transpose: batch-invariant products

const char *const lora_target_names[LORA_NTARGETS] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                      "gate_proj", "up_proj", "down_proj"};
static const char *const short_names[LORA_NTARGETS] = {"q", "k", "v", "o", "gate", "up", "down"};

int lora_parse_targets(const char *list, unsigned *targets, char *why, size_t why_len) {
    *targets = 0;
    if (!strcmp(list, "all") || !strcmp(list, "all-linear")) {   // PEFT's "all-linear": not the LM head
        *targets = (1u << LORA_NTARGETS) - 1;
        return 0;
    }
    char *copy = xstrdup(list), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (!strcmp(tok, "all") || !strcmp(tok, "all-linear")) {
            snprintf(why, why_len, "'%s' names every projection: give it alone, not in a list", tok);
            free(copy);
            return -1;
        }
        int found = -1;
        for (int t = 0; t < LORA_NTARGETS; t++)
            if (!strcmp(tok, lora_target_names[t]) || !strcmp(tok, short_names[t])) found = t;
        if (found < 0) {
            snprintf(why, why_len, "unknown LoRA target '%s' (use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                     "down_proj, their short forms q, k, v, o, gate, up, down, or all)", tok);
            free(copy);
            return -1;
        }
        *targets |= 1u << found;
    }
    free(copy);
    if (!*targets) {
        snprintf(why, why_len, "no LoRA target in '%s'", list);
        return -1;
    }
    return 0;
}

const char *lora_targets_string(unsigned targets) {
    static char buf[128];
    buf[0] = '\0';
    for (int t = 0; t < LORA_NTARGETS; t++)
        if (targets & (1u << t)) {
            if (buf[0]) strcat(buf, ",");
            strcat(buf, lora_target_names[t]);
        }
    return buf;
}

int lora_config_check(const LoraConfig *c, char *why, size_t why_len) {
    if (c->r < 1 || c->r > 4096) {
        snprintf(why, why_len, "LoRA rank r must be 1 to 4096 (got %d)", c->r);
        return -1;
    }
    if (!(c->alpha > 0) || !isfinite(c->alpha)) {
        snprintf(why, why_len, "LoRA alpha must be a finite number > 0 (got %g)", c->alpha);
        return -1;
    }
    if (!c->targets || c->targets >= (1u << LORA_NTARGETS)) {
        snprintf(why, why_len, "LoRA needs at least one target projection");
        return -1;
    }
    return 0;
}

// The model's matrix for a target: (L, out, in)
static float *model_matrix(Model *m, int t) {
    switch (t) {
    case LORA_Q: return m->w.wq;
    case LORA_K: return m->w.wk;
    case LORA_V: return m->w.wv;
    case LORA_O: return m->w.wo;
    case LORA_GATE: return m->w.w1;
    case LORA_UP: return m->w.w3;
    default: return m->w.w2;
    }
}

Lora *lora_create(const ModelConfig *mc, const LoraConfig *c) {
    char why[256];
    if (lora_config_check(c, why, sizeof why)) die(EXIT_USAGE, "%s", why);
    Lora *lo = xcalloc(1, sizeof(Lora));
    lo->cfg = *c;
    lo->scale = c->rslora ? c->alpha / sqrtf((float)c->r) : c->alpha / (float)c->r;
    lo->L = mc->n_layers;
    int C = mc->dim, F = mc->hidden_dim, hs = C / mc->n_heads;
    int qd = mc->n_heads * hs, kvd = mc->n_kv_heads * hs;
    const int in[LORA_NTARGETS] = {C, C, C, qd, C, C, F};
    const int out[LORA_NTARGETS] = {qd, kvd, kvd, C, F, F, C};
    for (int t = 0; t < LORA_NTARGETS; t++) {
        lo->in[t] = in[t];
        lo->out[t] = out[t];
        if (c->targets & (1u << t)) lo->n_params += (size_t)lo->L * c->r * (in[t] + out[t]);
    }
    lo->params = xcalloc(lo->n_params, sizeof(float));
    float *p = lo->params;
    for (int t = 0; t < LORA_NTARGETS; t++) {
        if (!(c->targets & (1u << t))) continue;
        lo->A[t] = p;
        p += (size_t)lo->L * c->r * in[t];
        lo->B[t] = p;
        p += (size_t)lo->L * out[t] * c->r;
    }
    return lo;
}

void lora_free(Lora *lo) {
    if (!lo) return;
    for (int t = 0; t < LORA_NTARGETS; t++) free(lo->base[t]);
    free(lo->params);
    free(lo->grads);
    free(lo->grad_sum);
    free(lo->base_path);
    free(lo->scratch);
    free(lo);
}

void lora_init(Lora *lo, uint64_t seed) {
    uint64_t s = seed ^ 0x4c6f5241ull;   // "LoRA": a stream apart from the caller's other uses of seed
    memset(lo->params, 0, lo->n_params * sizeof(float));   // B = 0
    for (int t = 0; t < LORA_NTARGETS; t++) {
        if (!lo->A[t]) continue;
        double bound = 1.0 / sqrt((double)lo->in[t]);
        size_t n = (size_t)lo->L * lo->cfg.r * lo->in[t];
        for (size_t i = 0; i < n; i++) {
            double u = ((rng_splitmix64(&s) >> 11) + 0.5) * 0x1.0p-53;   // (0,1)
            lo->A[t][i] = (float)((2.0 * u - 1.0) * bound);
        }
    }
}

static float *scratch(Lora *lo, size_t n) {
    if (n > lo->scratch_cap) {
        free(lo->scratch);
        lo->scratch = xmalloc(n * sizeof(float));
        lo->scratch_cap = n;
    }
    return lo->scratch;
}

void lora_attach(Model *m, Lora *lo) {
    if (m->lora) die(EXIT_USAGE, "lora_attach: the model already has an adapter");
    if (m->grads) die(EXIT_USAGE, "lora_attach: attach the adapter before the first gradient");
    for (int t = 0; t < LORA_NTARGETS; t++) {
        if (!lo->A[t]) continue;
        size_t n = (size_t)lo->L * lo->out[t] * lo->in[t];
        lo->base[t] = xmalloc(n * sizeof(float));
        memcpy(lo->base[t], model_matrix(m, t), n * sizeof(float));
    }
    m->lora = lo;
    lora_merge(m);
}

void lora_merge(Model *m) {
    Lora *lo = m->lora;
    if (!lo) return;
    int r = lo->cfg.r;
    for (int t = 0; t < LORA_NTARGETS; t++) {
        if (!lo->A[t]) continue;
        int in = lo->in[t], out = lo->out[t];
        float *W = model_matrix(m, t);
        float *AT = scratch(lo, (size_t)in * r + (size_t)out * in), *BA = AT + (size_t)in * r;
        for (int l = 0; l < lo->L; l++) {
            // BA (out, in) = B (out, r) @ A (r, in): the NT product against A^T (in, r)
            transpose(AT, lo->A[t] + (size_t)l * r * in, r, in);
            matmul_nt(BA, lo->B[t] + (size_t)l * out * r, AT, NULL, out, r, in, 0);
            const float *W0 = lo->base[t] + (size_t)l * out * in;
            float *Wl = W + (size_t)l * out * in;
            for (size_t i = 0; i < (size_t)out * in; i++) Wl[i] = W0[i] + lo->scale * BA[i];
        }
    }
}

void lora_detach(Model *m) {
    lora_free(m->lora);
    m->lora = NULL;
}

void lora_zero_grad(Lora *lo) {
    if (!lo->grads) {
        lo->grads = xcalloc(lo->n_params, sizeof(float));
        lo->grad_sum = xcalloc(lo->n_params, sizeof(double));
    } else {
        memset(lo->grads, 0, lo->n_params * sizeof(float));
        memset(lo->grad_sum, 0, lo->n_params * sizeof(double));
    }
}

void lora_round_grads(Lora *lo) {
    if (!lo->grads) die(EXIT_USAGE, "lora_round_grads: no gradient buffer (call lora_zero_grad first)");
    for (size_t i = 0; i < lo->n_params; i++) lo->grads[i] = (float)lo->grad_sum[i];
}

void lora_grads_from_full(Lora *lo, const Model *m, const float *full_grads) {
    if (!lo->grads) lora_zero_grad(lo);
    int r = lo->cfg.r;
    for (int t = 0; t < LORA_NTARGETS; t++) {
        if (!lo->A[t]) continue;
        int in = lo->in[t], out = lo->out[t];
        size_t off = (size_t)(model_matrix((Model *)m, t) - m->params);
        float *dWT = scratch(lo, (size_t)in * out + (size_t)r * out + (size_t)(out > r ? out : r) * in);
        float *BT = dWT + (size_t)in * out, *tmp = BT + (size_t)r * out;
        for (int l = 0; l < lo->L; l++) {
            const float *dW = full_grads + off + (size_t)l * out * in;   // (out, in)
            const float *A = lo->A[t] + (size_t)l * r * in, *B = lo->B[t] + (size_t)l * out * r;
            size_t ia = (size_t)(A - lo->params), ib = (size_t)(B - lo->params);
            matmul_nt(tmp, dW, A, NULL, out, in, r, 0);   // (out, r) = dW A^T
            for (size_t i = 0; i < (size_t)out * r; i++) lo->grad_sum[ib + i] = (double)lo->scale * tmp[i];
            transpose(dWT, dW, out, in);                  // (in, out)
            transpose(BT, B, out, r);                     // (r, out)
            matmul_nt(tmp, BT, dWT, NULL, r, out, in, 0); // (r, in) = B^T dW
            for (size_t i = 0; i < (size_t)r * in; i++) lo->grad_sum[ia + i] = (double)lo->scale * tmp[i];
        }
    }
    lora_round_grads(lo);
}

void lora_backward(Lora *lo, int t, int l, const float *dy, const float *x, const float *xT, int N,
                   const int *seg_start, const int *seg_len, int nseg) {
    if (!lo->A[t] || N == 0) return;
    if (!lo->grad_sum) die(EXIT_USAGE, "lora_backward: no gradient buffer (call lora_zero_grad first)");
    int r = lo->cfg.r, in = lo->in[t], out = lo->out[t];
    const float *A = lo->A[t] + (size_t)l * r * in, *B = lo->B[t] + (size_t)l * out * r;
    double *gA = lo->grad_sum + (A - lo->params), *gB = lo->grad_sum + (B - lo->params);
    // working space: u (N,r), uT (r,N), dys (N,out), dysT (out,N), BT (r,out), du (N,r), duT (r,N)
    size_t nr = (size_t)N * r, no = (size_t)N * out;
    float *u = scratch(lo, 4 * nr + 2 * no + (size_t)r * out);
    float *uT = u + nr, *dys = uT + nr, *dysT = dys + no, *BT = dysT + no, *du = BT + (size_t)r * out, *duT = du + nr;
    matmul_nt(u, x, A, NULL, N, in, r, 0);                    // u = x A^T
    transpose(uT, u, N, r);
    for (size_t i = 0; i < no; i++) dys[i] = lo->scale * dy[i];
    transpose(dysT, dys, N, out);
    // dB (out, r) += per sequence: dys^T u
    matmul_nt_segsum(gB, r, dysT, N, uT, N, out, r, seg_start, seg_len, nseg);
    // du (N, r) = dys B, then dA (r, in) += per sequence: du^T x
    transpose(BT, B, out, r);
    matmul_nt(du, dys, BT, NULL, N, out, r, 0);
    transpose(duT, du, N, r);
    matmul_nt_segsum(gA, in, duT, N, xT, N, r, in, seg_start, seg_len, nseg);
}
