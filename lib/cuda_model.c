// cuda_model.c — the decoder on the GPU: layout, upload/download, forward, row heads,
// backward, optimiser, KV-cached decoding. Host-side orchestration of kernels/*.cu through
// cuda_backend.h; the layer structure is model.c's, line for line:
//
//   x = tok_emb[token]                                   (zero at padded positions)
//   per layer:  h = rmsnorm(x) ; qkv = h Wqkv^T (+ b) ; rope(q,k) ; a = attention(q,k,v)
//               x = x + a wo^T
//               h = rmsnorm(x) ; x = x + (silu(h w1^T) * (h w3^T)) w2^T
//   hidden = rmsnorm(x) ; logits = hidden lm_head^T      (only at the rows asked for)
//
// Honest notes: compiled without a GPU; tests/gpu/run.sh is the first run (kernel parity,
// whole-model parity against model.c, one SAFE iteration on both devices). Activations are
// kept for every layer (memory grows with L * B * T * (~10 C + 3 F) bytes-ish plus the fp32
// residual stream); there is no activation recomputation yet.
#ifdef SAFE_CUDA

#include "cuda_model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"         // die, xmalloc, exit codes
#include "cuda_backend.h"   // the kernels

#define ALIGN_EL 128   // elements: 256 bytes of bf16, 512 of fp32

typedef struct {
    size_t cpu, dev, len;   // a run of floats: model.h offset -> device offset
} Seg;

typedef struct {
    size_t anorm, wqkv, bqkv, wo, fnorm, w13, w2;   // device offsets of one layer's tensors
} LayerOff;

typedef struct {
    size_t off, n;   // a slice of the device gradients
    int ready;       // final after stage `ready` of the backward (see overlap_plan)
    char what[96];   // "layers 4-7", for error messages
} GradBucket;

struct CudaModel {
    ModelConfig cfg;
    int C, F, L, H, KV, V, hs, qd, kvd, QKV;
    size_t n_params, n_dev;
    Seg *seg;
    int nseg;
    size_t off_emb, off_fnorm, off_head;
    LayerOff *lay;
    float *p, *g, *m, *v, *snap;   // fp32 master weights, gradients, moments, step-limit copy
    bf16 *p16;                     // bf16 copy of the weights
    long opt_step;                 // the step the device moments belong to (-1: not uploaded)
    float *cos_t, *sin_t;          // RoPE tables (n_pos, hs/2), model.c's values
    int rope_npos;

    // training forward (B,T): activations kept for the backward
    int B, T, N, fwd_valid;
    size_t cap_N;
    float *f_arena;
    bf16 *h_arena;
    int32_t *i_arena;              // tok (N) | pos (N)
    uint8_t *mask_dev;
    float *res, *rstd1, *lse, *mid, *rstd2, *rstdf, *hidden, *qkv32;
    bf16 *ln1, *qkv, *atty, *ln2, *h13, *gate;
    // backward scratch
    float *dres, *dln, *dhidden, *dadd;
    bf16 *dres16, *dqkv, *datty, *dh13, *dgate;
    // embedding backward: positions grouped by token (host CSR of the last forward)
    int32_t *h_uniq, *h_off, *h_pos;
    int n_uniq, n_valid;
    int32_t *csr_dev;
    size_t csr_cap;
    int32_t *h_tok, *h_pos_ids;
    uint8_t *h_mask;
    size_t h_cap;

    // row heads
    int nrows;
    size_t cap_rows;
    int32_t *rows_dev, *targets_dev;
    bf16 *hid16, *dlogits16;
    float *logits, *stats, *logp_dev, *ent_dev, *dlogp_dev, *dent_dev, *dhid_rows;
    float row_temp;

    // summing gradients during the backward (cuda_model_overlap_arm)
    CudaGradBucketFn ov_fn;
    void *ov_ctx;
    GradBucket *ov_b;
    int ov_nb, ov_next;            // buckets planned, handed out
    size_t ov_min;                 // the plan's min_floats

    // decoding scratch
    size_t cap_tok;
    float *d_x, *d_qkv32, *d_lastx;
    bf16 *d_xb, *d_qkv, *d_att, *d_h13, *d_gate, *d_last16;
    int32_t *d_ints;               // tok | pos | trow | last
    int32_t *h_ints;
    size_t cap_last;
};

struct CudaKV {
    int B, T_max, L, kvd;
    bf16 *k, *v;   // (L, B, T_max, kvd)
    int *len;      // (B) host
};

static size_t align_up(size_t x) { return (x + ALIGN_EL - 1) / ALIGN_EL * ALIGN_EL; }

// ---------------------------------------------------------------------------------------------
// layout, upload, download

static void add_seg(CudaModel *cm, const Model *m, const float *host_ptr, size_t dev, size_t len) {
    if (!host_ptr || !len) return;
    cm->seg[cm->nseg++] = (Seg){.cpu = (size_t)(host_ptr - m->params), .dev = dev, .len = len};
}

static void build_layout(CudaModel *cm, const Model *m) {
    const ModelConfig *c = &cm->cfg;
    size_t C = cm->C, F = cm->F, V = cm->V, qd = cm->qd, kvd = cm->kvd, QKV = cm->QKV, o = 0;
    cm->lay = xcalloc((size_t)cm->L, sizeof(LayerOff));
#define TAKE(n) (o = align_up(o), o += (n), o - (n))
    cm->off_emb = TAKE(V * C);
    for (int l = 0; l < cm->L; l++) {
        LayerOff *y = &cm->lay[l];
        y->anorm = TAKE(C);
        y->wqkv = TAKE(QKV * C);
        y->bqkv = c->qkv_bias ? TAKE(QKV) : 0;
        y->wo = TAKE(C * qd);
        y->fnorm = TAKE(C);
        y->w13 = TAKE(2 * F * C);
        y->w2 = TAKE(C * F);
    }
    cm->off_fnorm = TAKE(C);
    cm->off_head = c->tied ? cm->off_emb : TAKE(V * C);
#undef TAKE
    cm->n_dev = align_up(o);

    // segments: every tensor of model.h's buffer, per layer, to its place here
    cm->seg = xcalloc((size_t)cm->L * 13 + 4, sizeof(Seg));
    const ParamViews *w = &m->w;
    add_seg(cm, m, w->tok_emb, cm->off_emb, V * C);
    for (int l = 0; l < cm->L; l++) {
        const LayerOff *y = &cm->lay[l];
        add_seg(cm, m, w->attn_norm + l * C, y->anorm, C);
        add_seg(cm, m, w->wq + l * qd * C, y->wqkv, qd * C);
        add_seg(cm, m, w->wk + l * kvd * C, y->wqkv + qd * C, kvd * C);
        add_seg(cm, m, w->wv + l * kvd * C, y->wqkv + (qd + kvd) * C, kvd * C);
        if (c->qkv_bias) {
            add_seg(cm, m, w->bq + l * qd, y->bqkv, qd);
            add_seg(cm, m, w->bk + l * kvd, y->bqkv + qd, kvd);
            add_seg(cm, m, w->bv + l * kvd, y->bqkv + qd + kvd, kvd);
        }
        add_seg(cm, m, w->wo + l * C * qd, y->wo, C * qd);
        add_seg(cm, m, w->ffn_norm + l * C, y->fnorm, C);
        add_seg(cm, m, w->w1 + l * F * C, y->w13, F * C);
        add_seg(cm, m, w->w3 + l * F * C, y->w13 + F * C, F * C);
        add_seg(cm, m, w->w2 + l * C * F, y->w2, C * F);
    }
    add_seg(cm, m, w->final_norm, cm->off_fnorm, C);
    if (!c->tied) add_seg(cm, m, w->lm_head, cm->off_head, V * C);
    size_t covered = 0;
    for (int i = 0; i < cm->nseg; i++) covered += cm->seg[i].len;
    if (covered != cm->n_params)
        die(EXIT_RUNTIME, "internal error: the device layout covers %zu of %zu parameters", covered, cm->n_params);
}

// host (model.h layout, n_params) <-> device layout, through a zero-padded staging buffer
static void to_device(const CudaModel *cm, float *dev, const float *host, const char *what) {
    float *stage = xcalloc(cm->n_dev, sizeof(float));
    for (int i = 0; i < cm->nseg; i++)
        memcpy(stage + cm->seg[i].dev, host + cm->seg[i].cpu, cm->seg[i].len * sizeof(float));
    cuda_upload(dev, stage, cm->n_dev * sizeof(float), what);
    free(stage);
}

static void to_host(const CudaModel *cm, float *host, const float *dev, const char *what) {
    float *stage = xmalloc(cm->n_dev * sizeof(float));
    cuda_download(stage, dev, cm->n_dev * sizeof(float), what);
    for (int i = 0; i < cm->nseg; i++)
        memcpy(host + cm->seg[i].cpu, stage + cm->seg[i].dev, cm->seg[i].len * sizeof(float));
    free(stage);
}

CudaModel *cuda_model_create(const Model *m) {
    cuda_init();
    const ModelConfig *c = &m->cfg;
    CudaModel *cm = xcalloc(1, sizeof(CudaModel));
    cm->cfg = *c;
    cm->C = c->dim; cm->F = c->hidden_dim; cm->L = c->n_layers; cm->H = c->n_heads; cm->KV = c->n_kv_heads;
    cm->V = c->vocab_size; cm->hs = c->dim / c->n_heads; cm->qd = cm->H * cm->hs; cm->kvd = cm->KV * cm->hs;
    cm->QKV = cm->qd + 2 * cm->kvd;
    if (!cuda_attention_supported(cm->hs))
        die(EXIT_USAGE, "head size %d is not supported by the CUDA attention kernels: use --device cpu", cm->hs);
    cm->n_params = m->n_params;
    cm->opt_step = -1;
    build_layout(cm, m);
    cm->p = cuda_malloc(cm->n_dev * sizeof(float), "master weights (fp32)");
    cm->p16 = cuda_malloc(cm->n_dev * sizeof(bf16), "weights (bf16 copy)");
    cuda_model_upload(cm, m);
    return cm;
}

void cuda_model_upload(CudaModel *cm, const Model *m) {
    to_device(cm, cm->p, m->params, "model weights");
    cuda_f32_to_bf16(cm->p16, cm->p, cm->n_dev);
    cm->fwd_valid = 0;
}

void cuda_model_download(const CudaModel *cm, Model *m) { to_host(cm, m->params, cm->p, "model weights"); }

const ModelConfig *cuda_model_config(const CudaModel *cm) { return &cm->cfg; }

void cuda_model_report(const CudaModel *cm, FILE *f, const char *who) {
    double mib = 1.0 / 1048576.0;
    size_t n = cm->n_dev;
    fprintf(f, "%s: cuda (%s): weights %.1f MiB fp32 + %.1f MiB bf16, gradients %.1f MiB, moments %.1f MiB, "
            "activations %.1f MiB for %zu tokens\n", who, cuda_device_name(), n * 4 * mib, n * 2 * mib,
            cm->g ? n * 4 * mib : 0.0, cm->m ? n * 8 * mib : 0.0,
            cm->cap_N * (double)((size_t)cm->L * (6 * cm->C + 3 * cm->QKV + 2 * cm->qd + 6 * cm->F + 4 * cm->H + 8) +
                                 (8 + 4 * cm->L) * cm->C) * mib, cm->cap_N);
}

static void free_fwd(CudaModel *cm) {
    cuda_free(cm->f_arena); cuda_free(cm->h_arena); cuda_free(cm->i_arena); cuda_free(cm->mask_dev);
    cm->f_arena = NULL; cm->h_arena = NULL; cm->i_arena = NULL; cm->mask_dev = NULL;
}

static void free_rows(CudaModel *cm) {
    cuda_free(cm->rows_dev); cuda_free(cm->hid16); cuda_free(cm->dlogits16); cuda_free(cm->logits);
    cuda_free(cm->stats); cuda_free(cm->dhid_rows);
    cm->rows_dev = NULL; cm->hid16 = NULL; cm->dlogits16 = NULL; cm->logits = NULL; cm->stats = NULL;
    cm->dhid_rows = NULL;
}

static void free_dec(CudaModel *cm) {
    cuda_free(cm->d_x); cuda_free(cm->d_xb); cuda_free(cm->d_ints);
    cm->d_x = NULL; cm->d_xb = NULL; cm->d_ints = NULL;
    free(cm->h_ints);
    cm->h_ints = NULL;
}

void cuda_model_free(CudaModel *cm) {
    if (!cm) return;
    cuda_sync("model free");
    free_fwd(cm);
    free_rows(cm);
    free_dec(cm);
    cuda_free(cm->csr_dev);
    cuda_free(cm->p); cuda_free(cm->p16); cuda_free(cm->g); cuda_free(cm->m); cuda_free(cm->v); cuda_free(cm->snap);
    cuda_free(cm->cos_t); cuda_free(cm->sin_t);
    free(cm->seg); free(cm->lay); free(cm->ov_b);
    free(cm->h_uniq); free(cm->h_off); free(cm->h_pos); free(cm->h_tok); free(cm->h_mask);   // h_pos_ids lives in h_tok
    free(cm);
}

// RoPE tables covering positions [0, npos): model.c's rope_ensure, uploaded
static void rope_ensure(CudaModel *cm, int npos) {
    if (npos <= cm->rope_npos) return;
    int n = cm->rope_npos ? cm->rope_npos : 64;
    while (n < npos) n *= 2;
    int hs = cm->hs, half = hs / 2;
    float *cs = xmalloc((size_t)n * half * sizeof(float)), *sn = xmalloc((size_t)n * half * sizeof(float));
    for (int p = 0; p < n; p++)
        for (int i = 0; i < half; i++) {
            double inv_freq = pow((double)cm->cfg.rope_theta, -2.0 * i / hs);   // theta^(-2i/hs)
            double ang = (double)p * inv_freq;
            cs[(size_t)p * half + i] = (float)cos(ang);
            sn[(size_t)p * half + i] = (float)sin(ang);
        }
    cuda_sync("rope tables");   // kernels may still read the old tables
    cuda_free(cm->cos_t);
    cuda_free(cm->sin_t);
    cm->cos_t = cuda_malloc((size_t)n * half * sizeof(float), "RoPE table");
    cm->sin_t = cuda_malloc((size_t)n * half * sizeof(float), "RoPE table");
    cuda_upload(cm->cos_t, cs, (size_t)n * half * sizeof(float), "RoPE table");
    cuda_upload(cm->sin_t, sn, (size_t)n * half * sizeof(float), "RoPE table");
    cm->rope_npos = n;
    free(cs);
    free(sn);
}

// ---------------------------------------------------------------------------------------------
// the training forward

// Lay out the activation arenas for N tokens (grow only).
static void acts_prepare(CudaModel *cm, int N) {
    if ((size_t)N <= cm->cap_N) return;
    cuda_sync("activation resize");
    free_fwd(cm);
    size_t n = (size_t)N, L = cm->L, C = cm->C, F = cm->F, QKV = cm->QKV, qd = cm->qd, H = cm->H;
    // fp32: res (L+1)NC, rstd1 LN, lse LNH, mid LNC, rstd2 LN, rstdf N, hidden NC, qkv32 N QKV,
    //       dres NC, dln NC, dhidden NC, dadd NC
    size_t fsz[] = {(L + 1) * n * C, L * n, L * n * H, L * n * C, L * n, n, n * C, n * QKV, n * C, n * C, n * C, n * C};
    float **fv[] = {&cm->res, &cm->rstd1, &cm->lse, &cm->mid, &cm->rstd2, &cm->rstdf, &cm->hidden, &cm->qkv32,
                    &cm->dres, &cm->dln, &cm->dhidden, &cm->dadd};
    // bf16: ln1 LNC, qkv L N QKV, atty L N qd, ln2 LNC, h13 L N 2F, gate LNF, dres16 NC, dqkv N QKV,
    //       datty N qd, dh13 N 2F, dgate NF
    size_t hsz[] = {L * n * C, L * n * QKV, L * n * qd, L * n * C, L * n * 2 * F, L * n * F, n * C, n * QKV,
                    n * qd, n * 2 * F, n * F};
    bf16 **hv[] = {&cm->ln1, &cm->qkv, &cm->atty, &cm->ln2, &cm->h13, &cm->gate, &cm->dres16, &cm->dqkv,
                   &cm->datty, &cm->dh13, &cm->dgate};
    size_t ftot = 0, htot = 0;
    for (size_t i = 0; i < sizeof fsz / sizeof fsz[0]; i++) ftot += align_up(fsz[i]);
    for (size_t i = 0; i < sizeof hsz / sizeof hsz[0]; i++) htot += align_up(hsz[i]);
    cm->f_arena = cuda_malloc(ftot * sizeof(float), "activations (fp32)");
    cm->h_arena = cuda_malloc(htot * sizeof(bf16), "activations (bf16)");
    float *fp = cm->f_arena;
    for (size_t i = 0; i < sizeof fsz / sizeof fsz[0]; i++) { *fv[i] = fp; fp += align_up(fsz[i]); }
    bf16 *hp = cm->h_arena;
    for (size_t i = 0; i < sizeof hsz / sizeof hsz[0]; i++) { *hv[i] = hp; hp += align_up(hsz[i]); }
    cm->i_arena = cuda_malloc(2 * n * sizeof(int32_t), "token ids and positions");
    cm->mask_dev = cuda_malloc(n, "mask");
    cm->cap_N = n;
}

#define LNC(ptr, l) ((ptr) + (size_t)(l) * cm->N * cm->C)

void cuda_model_forward(CudaModel *cm, const int32_t *tokens, const uint8_t *mask, int B, int T) {
    if (B <= 0 || T <= 0) die(EXIT_USAGE, "cuda_model_forward: empty batch (B=%d, T=%d)", B, T);
    int N = B * T, C = cm->C, F = cm->F, H = cm->H, KV = cm->KV, V = cm->V, hs = cm->hs, qd = cm->qd, QKV = cm->QKV;
    acts_prepare(cm, N);
    cm->B = B; cm->T = T; cm->N = N;
    if ((size_t)N > cm->h_cap) {
        free(cm->h_tok); free(cm->h_mask); free(cm->h_uniq); free(cm->h_off); free(cm->h_pos);
        cm->h_tok = xmalloc((size_t)N * 2 * sizeof(int32_t));   // tok | pos, uploaded together
        cm->h_pos_ids = cm->h_tok + N;
        cm->h_mask = xmalloc((size_t)N);
        cm->h_uniq = xmalloc((size_t)N * sizeof(int32_t));
        cm->h_off = xmalloc(((size_t)N + 1) * sizeof(int32_t));
        cm->h_pos = xmalloc((size_t)N * sizeof(int32_t));
        cm->h_cap = N;
    }
    cm->h_pos_ids = cm->h_tok + N;
    // position ids: valid tokens before each position in its row (model.c's rule)
    int max_pos = 0;
    cm->n_valid = 0;
    for (int b = 0; b < B; b++) {
        int cnt = 0;
        for (int t = 0; t < T; t++) {
            size_t n = (size_t)b * T + t;
            uint8_t mk = mask ? (mask[n] != 0) : 1;
            if (mk && (tokens[n] < 0 || tokens[n] >= V))
                die(EXIT_BADINPUT, "model_forward: token %d at (%d,%d) is outside the vocabulary (%d)", tokens[n], b, t, V);
            cm->h_mask[n] = mk;
            cm->h_tok[n] = mk ? tokens[n] : 0;
            cm->h_pos_ids[n] = cnt;
            cnt += mk;
        }
        if (cnt > max_pos) max_pos = cnt;
        cm->n_valid += cnt;
    }
    rope_ensure(cm, max_pos + 1);
    // embedding backward's grouping: valid positions by token, positions ascending (counting sort)
    {
        int32_t *count = xcalloc((size_t)V + 1, sizeof(int32_t));
        for (int n = 0; n < N; n++) if (cm->h_mask[n]) count[cm->h_tok[n] + 1]++;
        for (int t = 0; t < V; t++) count[t + 1] += count[t];   // count[t] = start of token t
        int nu = 0;
        for (int t = 0; t < V; t++)
            if (count[t + 1] > count[t]) { cm->h_uniq[nu] = t; cm->h_off[nu] = count[t]; nu++; }
        cm->h_off[nu] = count[V];
        for (int n = 0; n < N; n++) if (cm->h_mask[n]) cm->h_pos[count[cm->h_tok[n]]++] = n;
        cm->n_uniq = nu;
        free(count);
    }
    cuda_upload(cm->i_arena, cm->h_tok, (size_t)N * 2 * sizeof(int32_t), "token ids and positions");
    cuda_upload(cm->mask_dev, cm->h_mask, (size_t)N, "mask");
    const int32_t *tok_dev = cm->i_arena, *pos_dev = cm->i_arena + N;

    // x = tok_emb[token] at valid positions, 0 at padding
    cuda_embedding_forward(cm->res, cm->p + cm->off_emb, tok_dev, cm->mask_dev, N, C);
    for (int l = 0; l < cm->L; l++) {
        const LayerOff *y = &cm->lay[l];
        float *res = LNC(cm->res, l), *res_out = LNC(cm->res, l + 1), *mid = LNC(cm->mid, l);
        bf16 *ln1 = LNC(cm->ln1, l), *ln2 = LNC(cm->ln2, l);
        bf16 *qkv = cm->qkv + (size_t)l * N * QKV, *atty = cm->atty + (size_t)l * N * qd;
        bf16 *h13 = cm->h13 + (size_t)l * N * 2 * F, *gate = cm->gate + (size_t)l * N * F;
        // attention block
        cuda_rmsnorm_forward(ln1, 1, cm->rstd1 + (size_t)l * N, res, cm->p + y->anorm, N, C, cm->cfg.norm_eps);
        cuda_matmul(cm->qkv32, 0, NULL, ln1, cm->p16 + y->wqkv, N, C, QKV);
        cuda_qkv_bias_rope(qkv, cm->qkv32, cm->cfg.qkv_bias ? cm->p + y->bqkv : NULL, pos_dev, cm->cos_t, cm->sin_t, N,
                           H, KV, hs);
        cuda_attention_forward(atty, cm->lse + (size_t)l * N * H, qkv, cm->mask_dev, B, T, H, KV, hs);
        cuda_matmul(mid, 0, res, atty, cm->p16 + y->wo, N, qd, C);   // mid = res + atty wo^T
        // feed-forward block
        cuda_rmsnorm_forward(ln2, 1, cm->rstd2 + (size_t)l * N, mid, cm->p + y->fnorm, N, C, cm->cfg.norm_eps);
        cuda_matmul(h13, 1, NULL, ln2, cm->p16 + y->w13, N, C, 2 * F);   // [h1 | h3] = ln2 [w1;w3]^T
        cuda_swiglu_forward(gate, h13, N, F);
        cuda_matmul(res_out, 0, mid, gate, cm->p16 + y->w2, N, F, C);     // res_out = mid + gate w2^T
    }
    cuda_rmsnorm_forward(cm->hidden, 0, cm->rstdf, LNC(cm->res, cm->L), cm->p + cm->off_fnorm, N, C, cm->cfg.norm_eps);
    cm->fwd_valid = 1;
    cm->nrows = 0;
}

// ---------------------------------------------------------------------------------------------
// rows: hidden states, logits and log-probs at chosen positions

static void rows_prepare(CudaModel *cm, int n, const int32_t *rows, const int32_t *targets) {
    if (!cm->fwd_valid) die(EXIT_USAGE, "cuda_model: rows asked for before any forward pass");
    if ((size_t)n > cm->cap_rows) {
        cuda_sync("row buffers resize");
        free_rows(cm);
        size_t c = (size_t)n, C = cm->C, V = cm->V;
        cm->rows_dev = cuda_malloc(c * 2 * sizeof(int32_t), "row indices");
        cm->targets_dev = cm->rows_dev + c;
        cm->hid16 = cuda_malloc(c * C * sizeof(bf16), "row hidden states");
        cm->logits = cuda_malloc(c * V * sizeof(float), "logits (fp32)");
        cm->dlogits16 = cuda_malloc(c * V * sizeof(bf16), "d(logits) (bf16)");
        cm->stats = cuda_malloc(c * 8 * sizeof(float), "log-softmax statistics");
        cm->logp_dev = cm->stats + c * 4;
        cm->ent_dev = cm->logp_dev + c;
        cm->dlogp_dev = cm->ent_dev + c;
        cm->dent_dev = cm->dlogp_dev + c;
        cm->dhid_rows = cuda_malloc(c * C * sizeof(float), "row hidden gradients");
        cm->cap_rows = c;
    }
    int32_t *h = xmalloc((size_t)(n ? n : 1) * 2 * sizeof(int32_t));
    for (int i = 0; i < n; i++) {
        if (rows[i] < 0 || rows[i] >= cm->N) die(EXIT_USAGE, "cuda_model: row %d outside the batch of %d positions", rows[i], cm->N);
        h[i] = rows[i];
        h[n + i] = targets ? targets[i] : -1;
        if (targets && targets[i] >= cm->V)
            die(EXIT_BADINPUT, "logprob: target %d at row %d is outside the vocabulary (%d)", targets[i], i, cm->V);
    }
    cuda_upload(cm->rows_dev, h, (size_t)n * sizeof(int32_t), "row indices");
    cuda_upload(cm->targets_dev, h + n, (size_t)n * sizeof(int32_t), "targets");
    free(h);
    cm->nrows = n;
}

void cuda_model_hidden_rows(CudaModel *cm, int n, const int32_t *rows, float *out) {
    if (n <= 0) return;
    rows_prepare(cm, n, rows, NULL);
    cuda_gather_rows(cm->dhid_rows, cm->hidden, cm->rows_dev, n, cm->C);   // dhid_rows as scratch
    cuda_download(out, cm->dhid_rows, (size_t)n * cm->C * sizeof(float), "hidden states");
}

static void head_logits(CudaModel *cm, int n) {
    cuda_gather_rows_bf16(cm->hid16, cm->hidden, cm->rows_dev, n, cm->C);
    cuda_matmul(cm->logits, 0, NULL, cm->hid16, cm->p16 + cm->off_head, n, cm->C, cm->V);   // logits = hidden head^T
}

void cuda_model_logits_rows(CudaModel *cm, int n, const int32_t *rows, float *out) {
    if (n <= 0) return;
    rows_prepare(cm, n, rows, NULL);
    head_logits(cm, n);
    cuda_download(out, cm->logits, (size_t)n * cm->V * sizeof(float), "logits");
}

void cuda_model_logprob_rows(CudaModel *cm, int n, const int32_t *rows, const int32_t *targets, float temp,
                             float *logp, float *entropy) {
    if (n <= 0) return;
    rows_prepare(cm, n, rows, targets);
    head_logits(cm, n);
    cuda_logprob_forward(cm->logits, n, cm->V, temp, cm->targets_dev, cm->logp_dev, cm->ent_dev, cm->stats);
    if (logp) cuda_download(logp, cm->logp_dev, (size_t)n * sizeof(float), "log-probs");
    if (entropy) cuda_download(entropy, cm->ent_dev, (size_t)n * sizeof(float), "entropies");
    cm->row_temp = temp;
}

// ---------------------------------------------------------------------------------------------
// gradient buckets for summing during the backward (cuda_model.h)
//
// Stages of the backward, in order: cm->L after the final norm (the untied LM head is
// written before it), l after layer l (L-1 down to 0), -1 after the embedding, the end. The
// units that become final at each stage tile the device buffer, top down:
//   stage L: [off_fnorm, n_dev)            final norm and untied LM head
//   stage l: [lay[l].anorm, next layer's)  layer l (the last layer's ends at off_fnorm)
//   stage -1: [0, lay[0].anorm)            token embedding and tied LM head
// A bucket gathers units until it holds min floats (the last one takes what is left), so it
// is one contiguous slice, final at the stage of its lowest unit.

static void bucket_name(GradBucket *b, int tail, int hi, int lo, int emb, int tied) {
    char lay[32] = "";
    if (hi >= 0 && hi == lo) snprintf(lay, sizeof lay, "layer %d", lo);
    else if (hi >= 0) snprintf(lay, sizeof lay, "layers %d-%d", lo, hi);
    snprintf(b->what, sizeof b->what, "%s%s%s%s%s", emb ? (tied ? "embedding and tied LM head" : "embedding") : "",
             emb && *lay ? ", " : "", lay, tail && (emb || *lay) ? ", " : "",
             tail ? (tied ? "final norm" : "final norm and LM head") : "");
}

static void overlap_plan(CudaModel *cm, size_t min) {
    if (cm->ov_b && cm->ov_min == min) return;
    free(cm->ov_b);
    cm->ov_b = xcalloc((size_t)cm->L + 2, sizeof(GradBucket));
    cm->ov_nb = 0;
    cm->ov_min = min;
    size_t end = cm->n_dev;   // the pending bucket is [start of its lowest unit, end)
    int tail = 0, hi = -1, lo = -1;
    for (int stage = cm->L; stage >= -1; stage--) {
        size_t start = stage == cm->L ? cm->off_fnorm : stage >= 0 ? cm->lay[stage].anorm : 0;
        if (stage == cm->L) tail = 1;
        else if (stage >= 0) { if (hi < 0) hi = stage; lo = stage; }
        if (end - start < min && stage > -1) continue;
        GradBucket *b = &cm->ov_b[cm->ov_nb++];
        b->off = start;
        b->n = end - start;
        b->ready = stage;
        bucket_name(b, tail, hi, lo, stage == -1, cm->cfg.tied);
        end = start;
        tail = 0;
        hi = lo = -1;
    }
    if (end != 0) die(EXIT_RUNTIME, "internal error: the gradient buckets leave %zu floats uncovered", end);
}

// Hand out the buckets that are final once stage `stage` of the backward has been enqueued.
static void overlap_ready(CudaModel *cm, int stage) {
    if (!cm->ov_fn) return;
    while (cm->ov_next < cm->ov_nb && cm->ov_b[cm->ov_next].ready >= stage) {
        const GradBucket *b = &cm->ov_b[cm->ov_next++];
        cm->ov_fn(cm->ov_ctx, cm->g + b->off, b->n, b->what);
    }
}

void cuda_model_overlap_arm(CudaModel *cm, size_t min_floats, CudaGradBucketFn fn, void *ctx) {
    if (!cm->g) die(EXIT_USAGE, "cuda_model_overlap_arm: no gradient buffer (call cuda_model_zero_grad first)");
    if (cm->ov_fn && cm->ov_next > 0)
        die(EXIT_RUNTIME, "internal error: cuda_model_overlap_arm while %d gradient buckets of the last backward are "
            "still out (cuda_model_overlap_finish first)", cm->ov_next);
    overlap_plan(cm, min_floats);
    cm->ov_fn = fn;
    cm->ov_ctx = ctx;
    cm->ov_next = 0;
}

int cuda_model_overlap_armed(const CudaModel *cm) { return cm->ov_fn != NULL; }

void cuda_model_overlap_finish(CudaModel *cm) {
    overlap_ready(cm, -1);
    cm->ov_fn = NULL;
    cm->ov_ctx = NULL;
    cm->ov_next = 0;
}

// Nothing may touch the gradients while buckets of them are being summed over the ranks:
// cuda_model_overlap_finish, then the caller's wait, comes first.
static void overlap_guard(const CudaModel *cm, const char *doing) {
    if (cm->ov_fn && cm->ov_next > 0)
        die(EXIT_RUNTIME, "internal error: %s while %d gradient buckets of the last backward are being summed over "
            "the ranks (one backward per backend_allreduce_grads; SAFE_NCCL_OVERLAP=0 turns the overlap off)", doing,
            cm->ov_next);
}

// ---------------------------------------------------------------------------------------------
// backward

static void need_grads(CudaModel *cm) {
    overlap_guard(cm, "gradients used");
    if (!cm->g) die(EXIT_USAGE, "cuda_model: backward without a gradient buffer (call cuda_model_zero_grad first)");
}

// From cm->dhidden (N,C) down to the embedding; accumulates into cm->g.
static void backward_from_dhidden(CudaModel *cm) {
    int N = cm->N, B = cm->B, T = cm->T, C = cm->C, F = cm->F, H = cm->H, KV = cm->KV, hs = cm->hs, qd = cm->qd;
    int QKV = cm->QKV;
    const int32_t *pos_dev = cm->i_arena + N;
    // hidden = rmsnorm(res[L])
    cuda_zero(cm->dres, (size_t)N * C * sizeof(float), "residual gradient");
    cuda_rmsnorm_backward(cm->dres, cm->dres16, cm->g + cm->off_fnorm, cm->dhidden, LNC(cm->res, cm->L),
                          cm->p + cm->off_fnorm, cm->rstdf, N, C);
    overlap_ready(cm, cm->L);   // final norm (and the untied head, written by the caller)
    for (int l = cm->L - 1; l >= 0; l--) {
        const LayerOff *y = &cm->lay[l];
        const float *res = LNC(cm->res, l), *mid = LNC(cm->mid, l);
        const bf16 *ln1 = LNC(cm->ln1, l), *ln2 = LNC(cm->ln2, l);
        const bf16 *qkv = cm->qkv + (size_t)l * N * QKV, *atty = cm->atty + (size_t)l * N * qd;
        const bf16 *h13 = cm->h13 + (size_t)l * N * 2 * F, *gate = cm->gate + (size_t)l * N * F;
        // res_out = mid + gate w2^T: dres flows on to mid unchanged
        cuda_matmul_dinp(cm->dgate, 1, cm->dres16, cm->p16 + y->w2, N, F, C);
        cuda_matmul_dw(cm->g + y->w2, cm->dres16, gate, N, F, C);
        // gate = silu(h1) * h3
        cuda_swiglu_backward(cm->dh13, cm->dgate, h13, N, F);
        // [h1 | h3] = ln2 [w1;w3]^T
        cuda_matmul_dinp(cm->dln, 0, cm->dh13, cm->p16 + y->w13, N, C, 2 * F);
        cuda_matmul_dw(cm->g + y->w13, cm->dh13, ln2, N, C, 2 * F);
        // ln2 = rmsnorm(mid)
        cuda_rmsnorm_backward(cm->dres, cm->dres16, cm->g + y->fnorm, cm->dln, mid, cm->p + y->fnorm,
                              cm->rstd2 + (size_t)l * N, N, C);
        // mid = res + atty wo^T: dres flows on to res unchanged
        cuda_matmul_dinp(cm->datty, 1, cm->dres16, cm->p16 + y->wo, N, qd, C);
        cuda_matmul_dw(cm->g + y->wo, cm->dres16, atty, N, qd, C);
        // atty = attention(q, k, v)
        cuda_attention_backward(cm->dqkv, cm->datty, qkv, atty, cm->lse + (size_t)l * N * H, cm->mask_dev, B, T, H, KV,
                                hs);
        // q, k = rope(q0 + bq, k0 + bk): rotate back; the bias gradients are column sums
        cuda_rope_backward(cm->dqkv, pos_dev, cm->cos_t, cm->sin_t, N, H, KV, hs);
        if (cm->cfg.qkv_bias) cuda_colsum_add(cm->g + y->bqkv, cm->dqkv, N, QKV);
        // qkv0 = ln1 Wqkv^T
        cuda_matmul_dinp(cm->dln, 0, cm->dqkv, cm->p16 + y->wqkv, N, C, QKV);
        cuda_matmul_dw(cm->g + y->wqkv, cm->dqkv, ln1, N, C, QKV);
        // ln1 = rmsnorm(res)
        cuda_rmsnorm_backward(cm->dres, cm->dres16, cm->g + y->anorm, cm->dln, res, cm->p + y->anorm,
                              cm->rstd1 + (size_t)l * N, N, C);
        overlap_ready(cm, l);   // layer l's gradients are written: its all-reduce can start
    }
    // x = tok_emb[token]: each token's rows in position order, one block per token
    if (cm->n_uniq > 0) {
        size_t need = (size_t)cm->n_uniq * 2 + 1 + cm->n_valid;
        if (need > cm->csr_cap) {
            cuda_sync("embedding index resize");
            cuda_free(cm->csr_dev);
            cm->csr_dev = cuda_malloc(need * sizeof(int32_t), "embedding backward index");
            cm->csr_cap = need;
        }
        int32_t *stage = xmalloc(need * sizeof(int32_t));
        memcpy(stage, cm->h_uniq, (size_t)cm->n_uniq * sizeof(int32_t));
        memcpy(stage + cm->n_uniq, cm->h_off, ((size_t)cm->n_uniq + 1) * sizeof(int32_t));
        memcpy(stage + 2 * cm->n_uniq + 1, cm->h_pos, (size_t)cm->n_valid * sizeof(int32_t));
        cuda_upload(cm->csr_dev, stage, need * sizeof(int32_t), "embedding backward index");
        free(stage);
        cuda_embedding_backward(cm->g + cm->off_emb, cm->dres, cm->csr_dev, cm->csr_dev + cm->n_uniq,
                                cm->csr_dev + 2 * cm->n_uniq + 1, cm->n_uniq, C);
    }
}

void cuda_model_logprob_rows_backward(CudaModel *cm, const float *dlogp, const float *dentropy) {
    overlap_guard(cm, "a second backward");
    need_grads(cm);
    int n = cm->nrows, C = cm->C, V = cm->V;
    if (n <= 0) die(EXIT_USAGE, "cuda_model_logprob_rows_backward: no log-prob rows to differentiate");
    if (dlogp) cuda_upload(cm->dlogp_dev, dlogp, (size_t)n * sizeof(float), "d(log-prob)");
    if (dentropy) cuda_upload(cm->dent_dev, dentropy, (size_t)n * sizeof(float), "d(entropy)");
    // d(logits) from the kept softmax statistics, in bf16 for the head's products
    cuda_logprob_backward(cm->dlogits16, 1, cm->logits, cm->stats, n, V, cm->row_temp, cm->targets_dev,
                          dlogp ? cm->dlogp_dev : NULL, dentropy ? cm->dent_dev : NULL);
    // logits = hidden head^T  =>  dhidden = dlogits head ; dhead += dlogits^T hidden
    cuda_matmul_dinp(cm->dhid_rows, 0, cm->dlogits16, cm->p16 + cm->off_head, n, C, V);
    cuda_matmul_dw(cm->g + cm->off_head, cm->dlogits16, cm->hid16, n, C, V);
    cuda_zero(cm->dhidden, (size_t)cm->N * C * sizeof(float), "hidden gradient");
    cuda_scatter_add_rows(cm->dhidden, cm->dhid_rows, cm->rows_dev, n, C);
    backward_from_dhidden(cm);
}

void cuda_model_hidden_rows_backward(CudaModel *cm, int n, const int32_t *rows, const float *dhidden) {
    overlap_guard(cm, "a second backward");
    need_grads(cm);
    if (n <= 0) return;
    rows_prepare(cm, n, rows, NULL);
    cuda_upload(cm->dhid_rows, dhidden, (size_t)n * cm->C * sizeof(float), "d(hidden)");
    cuda_zero(cm->dhidden, (size_t)cm->N * cm->C * sizeof(float), "hidden gradient");
    cuda_scatter_add_rows(cm->dhidden, cm->dhid_rows, cm->rows_dev, n, cm->C);
    backward_from_dhidden(cm);
}

// ---------------------------------------------------------------------------------------------
// gradients and the optimiser

void cuda_model_zero_grad(CudaModel *cm) {
    overlap_guard(cm, "zeroing the gradients");
    if (!cm->g) cm->g = cuda_malloc(cm->n_dev * sizeof(float), "gradients (fp32)");
    cuda_zero(cm->g, cm->n_dev * sizeof(float), "gradients");
}

void cuda_model_download_grads(const CudaModel *cm, float *host) {
    overlap_guard(cm, "gradients downloaded");
    if (!cm->g) die(EXIT_USAGE, "cuda_model: no gradients yet");
    to_host(cm, host, cm->g, "gradients");
}

void cuda_model_upload_grads(CudaModel *cm, const float *host) {
    overlap_guard(cm, "gradients uploaded");
    if (!cm->g) cm->g = cuda_malloc(cm->n_dev * sizeof(float), "gradients (fp32)");
    to_device(cm, cm->g, host, "gradients");
}

float *cuda_model_grads_device(CudaModel *cm, size_t *n) {
    need_grads(cm);
    *n = cm->n_dev;
    return cm->g;
}

double cuda_model_grad_sumsq(CudaModel *cm) {
    need_grads(cm);
    return cuda_sum_squares(cm->g, cm->n_dev);
}

long long cuda_model_first_nonfinite_grad(CudaModel *cm) {
    need_grads(cm);
    long long d = cuda_first_nonfinite(cm->g, cm->n_dev);
    if (d < 0) return -1;
    for (int i = 0; i < cm->nseg; i++)   // device index -> model.h index
        if ((size_t)d >= cm->seg[i].dev && (size_t)d < cm->seg[i].dev + cm->seg[i].len)
            return (long long)(cm->seg[i].cpu + ((size_t)d - cm->seg[i].dev));
    return d;   // padding between tensors: cannot happen (nothing writes it)
}

void cuda_model_scale_grads(CudaModel *cm, float s) {
    need_grads(cm);
    cuda_scale(cm->g, cm->n_dev, s);
}

void cuda_model_adamw_step(CudaModel *cm, AdamW *opt) {
    need_grads(cm);
    if (opt->n != cm->n_params) die(EXIT_USAGE, "AdamW state has %zu entries, the model %zu parameters", opt->n, cm->n_params);
    if (!cm->m) {
        cm->m = cuda_malloc(cm->n_dev * sizeof(float), "AdamW first moments");
        cm->v = cuda_malloc(cm->n_dev * sizeof(float), "AdamW second moments");
    }
    if (cm->opt_step != opt->step) {   // the host holds the current moments (loaded or fresh)
        to_device(cm, cm->m, opt->m, "AdamW moments");
        to_device(cm, cm->v, opt->v, "AdamW moments");
    }
    opt->step++;
    AdamWScalars s = adamw_scalars(&opt->cfg, opt->step);
    cuda_adamw_step(cm->p, cm->p16, cm->g, cm->m, cm->v, cm->n_dev, &s);
    cm->opt_step = opt->step;
    cm->fwd_valid = 0;   // the weights changed: a backward now would be of a stale forward
}

void cuda_model_adamw_download(const CudaModel *cm, AdamW *opt) {
    if (!cm->m || cm->opt_step != opt->step) return;   // never stepped here: the host holds them
    to_host(cm, opt->m, cm->m, "AdamW moments");
    to_host(cm, opt->v, cm->v, "AdamW moments");
}

void cuda_model_snapshot(CudaModel *cm) {
    if (!cm->snap) cm->snap = cuda_malloc(cm->n_dev * sizeof(float), "step-limit weight copy");
    cuda_copy(cm->snap, cm->p, cm->n_dev * sizeof(float), "step-limit weight copy");
}

void cuda_model_blend(CudaModel *cm, float s) {
    if (!cm->snap) die(EXIT_USAGE, "cuda_model_blend without a snapshot");
    cuda_lerp(cm->p, cm->snap, cm->n_dev, s);
    cuda_f32_to_bf16(cm->p16, cm->p, cm->n_dev);
    cm->fwd_valid = 0;
}

// ---------------------------------------------------------------------------------------------
// KV cache and incremental decoding

CudaKV *cuda_kv_create(CudaModel *cm, int B, int T_max) {
    if (B <= 0 || T_max <= 0) die(EXIT_USAGE, "cuda_kv_create: need B > 0 and T_max > 0 (got %d, %d)", B, T_max);
    CudaKV *kv = xcalloc(1, sizeof(CudaKV));
    kv->B = B;
    kv->T_max = T_max;
    kv->L = cm->L;
    kv->kvd = cm->kvd;
    size_t n = (size_t)kv->L * B * T_max * kv->kvd;
    kv->k = cuda_malloc(n * sizeof(bf16), "KV cache (keys)");
    kv->v = cuda_malloc(n * sizeof(bf16), "KV cache (values)");
    kv->len = xcalloc((size_t)B, sizeof(int));
    return kv;
}

void cuda_kv_free(CudaKV *kv) {
    if (!kv) return;
    cuda_sync("KV cache free");
    cuda_free(kv->k);
    cuda_free(kv->v);
    free(kv->len);
    free(kv);
}

void cuda_kv_reset_row(CudaKV *kv, int row) {
    if (row < 0 || row >= kv->B) die(EXIT_USAGE, "cuda_kv_reset_row: row %d outside [0, %d)", row, kv->B);
    kv->len[row] = 0;
}

int cuda_kv_len(const CudaKV *kv, int row) { return kv->len[row]; }

// decoding scratch for Ntok packed tokens and n rows
static void dec_prepare(CudaModel *cm, size_t Ntok, size_t n) {
    if (Ntok <= cm->cap_tok && n <= cm->cap_last) return;
    cuda_sync("decode scratch resize");
    free_dec(cm);
    size_t t = Ntok > cm->cap_tok ? Ntok : cm->cap_tok, r = n > cm->cap_last ? n : cm->cap_last;
    size_t C = cm->C, F = cm->F, QKV = cm->QKV, qd = cm->qd;
    size_t fsz[] = {t * C, t * QKV, r * C}, hsz[] = {t * C, t * QKV, t * qd, t * 2 * F, t * F, r * C};
    size_t ft = 0, ht = 0;
    for (int i = 0; i < 3; i++) ft += align_up(fsz[i]);
    for (int i = 0; i < 6; i++) ht += align_up(hsz[i]);
    float *f = cuda_malloc(ft * sizeof(float), "decoding activations (fp32)");
    bf16 *h = cuda_malloc(ht * sizeof(bf16), "decoding activations (bf16)");
    cm->d_x = f; f += align_up(fsz[0]);
    cm->d_qkv32 = f; f += align_up(fsz[1]);
    cm->d_lastx = f;
    cm->d_xb = h; h += align_up(hsz[0]);
    cm->d_qkv = h; h += align_up(hsz[1]);
    cm->d_att = h; h += align_up(hsz[2]);
    cm->d_h13 = h; h += align_up(hsz[3]);
    cm->d_gate = h; h += align_up(hsz[4]);
    cm->d_last16 = h;
    cm->d_ints = cuda_malloc((3 * t + r) * sizeof(int32_t), "decoding indices");
    cm->h_ints = xmalloc((3 * t + r) * sizeof(int32_t));
    cm->cap_tok = t;
    cm->cap_last = r;
}

void cuda_model_extend(CudaModel *cm, CudaKV *kv, int n, const int *rows, const int32_t *const *seqs,
                       const int *lens, float *logits_dev) {
    int C = cm->C, F = cm->F, H = cm->H, KV = cm->KV, V = cm->V, hs = cm->hs, qd = cm->qd, QKV = cm->QKV;
    if (kv->L != cm->L || kv->kvd != cm->kvd) die(EXIT_USAGE, "KV cache shape does not match the model");
    if (n <= 0) return;
    // count the packed tokens, check rows and room (model.c's checks and messages)
    int Ntok = 0, max_pos = 0;
    for (int i = 0; i < n; i++) {
        int r = rows[i];
        if (r < 0 || r >= kv->B) die(EXIT_USAGE, "KV cache row %d outside [0, %d)", r, kv->B);
        if (lens[i] <= 0) die(EXIT_USAGE, "KV cache: row %d: nothing to append", r);
        if (kv->len[r] + lens[i] > kv->T_max)
            die(EXIT_USAGE, "KV cache row %d is full: %d + %d tokens > T_max %d", r, kv->len[r], lens[i], kv->T_max);
        Ntok += lens[i];
        if (kv->len[r] + lens[i] > max_pos) max_pos = kv->len[r] + lens[i];
    }
    {   // a row listed twice would race on its cache slots
        char *seen = xcalloc((size_t)kv->B, 1);
        for (int i = 0; i < n; i++) {
            if (seen[rows[i]]) die(EXIT_USAGE, "KV cache: row %d listed twice in one call", rows[i]);
            seen[rows[i]] = 1;
        }
        free(seen);
    }
    rope_ensure(cm, max_pos);
    dec_prepare(cm, (size_t)Ntok, (size_t)n);
    // tok | pos | trow | last, one upload
    int32_t *tok = cm->h_ints, *pos = tok + Ntok, *trow = pos + Ntok, *last = trow + Ntok;
    for (int i = 0, j0 = 0; i < n; j0 += lens[i], i++) {
        for (int j = 0; j < lens[i]; j++) {
            int32_t t = seqs[i][j];
            if (t < 0 || t >= V) die(EXIT_BADINPUT, "KV decode: token %d is outside the vocabulary (%d)", t, V);
            tok[j0 + j] = t;
            pos[j0 + j] = kv->len[rows[i]] + j;
            trow[j0 + j] = rows[i];
        }
        last[i] = j0 + lens[i] - 1;
    }
    cuda_upload(cm->d_ints, cm->h_ints, ((size_t)3 * Ntok + n) * sizeof(int32_t), "decoding indices");
    const int32_t *tok_d = cm->d_ints, *pos_d = tok_d + Ntok, *trow_d = pos_d + Ntok, *last_d = trow_d + Ntok;

    // embed the new tokens
    cuda_embedding_forward(cm->d_x, cm->p + cm->off_emb, tok_d, NULL, Ntok, C);
    size_t layer = (size_t)kv->B * kv->T_max * kv->kvd;
    for (int l = 0; l < cm->L; l++) {
        const LayerOff *y = &cm->lay[l];
        bf16 *kc = kv->k + (size_t)l * layer, *vc = kv->v + (size_t)l * layer;
        // attention block: store the new keys/values at (row, pos), then attend up to pos
        cuda_rmsnorm_forward(cm->d_xb, 1, NULL, cm->d_x, cm->p + y->anorm, Ntok, C, cm->cfg.norm_eps);
        cuda_matmul(cm->d_qkv32, 0, NULL, cm->d_xb, cm->p16 + y->wqkv, Ntok, C, QKV);
        cuda_qkv_bias_rope(cm->d_qkv, cm->d_qkv32, cm->cfg.qkv_bias ? cm->p + y->bqkv : NULL, pos_d, cm->cos_t,
                           cm->sin_t, Ntok, H, KV, hs);
        cuda_kv_store(kc, vc, cm->d_qkv, trow_d, pos_d, Ntok, H, KV, hs, kv->T_max);
        cuda_attention_decode(cm->d_att, cm->d_qkv, kc, vc, trow_d, pos_d, Ntok, H, KV, hs, kv->T_max);
        cuda_matmul(cm->d_x, 0, cm->d_x, cm->d_att, cm->p16 + y->wo, Ntok, qd, C);   // x += att wo^T
        // feed-forward block
        cuda_rmsnorm_forward(cm->d_xb, 1, NULL, cm->d_x, cm->p + y->fnorm, Ntok, C, cm->cfg.norm_eps);
        cuda_matmul(cm->d_h13, 1, NULL, cm->d_xb, cm->p16 + y->w13, Ntok, C, 2 * F);
        cuda_swiglu_forward(cm->d_gate, cm->d_h13, Ntok, F);
        cuda_matmul(cm->d_x, 0, cm->d_x, cm->d_gate, cm->p16 + y->w2, Ntok, F, C);   // x += gate w2^T
    }
    // final norm and logits for each row's last new token only
    cuda_gather_rows(cm->d_lastx, cm->d_x, last_d, n, C);
    cuda_rmsnorm_forward(cm->d_last16, 1, NULL, cm->d_lastx, cm->p + cm->off_fnorm, n, C, cm->cfg.norm_eps);
    if (logits_dev) cuda_matmul(logits_dev, 0, NULL, cm->d_last16, cm->p16 + cm->off_head, n, C, V);
    for (int i = 0; i < n; i++) kv->len[rows[i]] += lens[i];
}

static float *g_test_logits;   // device (n, V) for the host-logits mirrors
static size_t g_test_cap;

static void extend_to_host(CudaModel *cm, CudaKV *kv, int n, const int *rows, const int32_t *const *seqs,
                           const int *lens, float *logits_out) {
    if (n <= 0) return;
    size_t need = (size_t)n * cm->V;
    if (logits_out && need > g_test_cap) {
        cuda_sync("logits buffer");
        cuda_free(g_test_logits);
        g_test_logits = cuda_malloc(need * sizeof(float), "decoding logits");
        g_test_cap = need;
    }
    cuda_model_extend(cm, kv, n, rows, seqs, lens, logits_out ? g_test_logits : NULL);
    if (logits_out) cuda_download(logits_out, g_test_logits, need * sizeof(float), "decoding logits");
}

void cuda_model_prefill(CudaModel *cm, CudaKV *kv, int n, const int *rows, const int32_t *const *prompts,
                        const int *lens, float *logits_out) {
    extend_to_host(cm, kv, n, rows, prompts, lens, logits_out);
}

void cuda_model_decode(CudaModel *cm, CudaKV *kv, int n, const int *rows, const int32_t *tokens, float *logits_out) {
    if (n <= 0) return;
    const int32_t **seqs = xmalloc((size_t)n * sizeof(*seqs));
    int *ones = xmalloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) {
        seqs[i] = tokens + i;
        ones[i] = 1;
    }
    extend_to_host(cm, kv, n, rows, seqs, ones, logits_out);
    free(seqs);
    free(ones);
}

#else
typedef int cuda_model_unused;   // a CPU-only build compiles nothing here
#endif
