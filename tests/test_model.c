// test_model.c — the CPU engine: reference parity against PyTorch fixtures (tests/gen/
// gen_model_ref.py), finite differences, and invariants (padding, KV cache, threads).
//
// Tolerances. Relative error is |a-b| / max(|b|, floor); the reference is float64 PyTorch, and
// PyTorch's own fp32 error against it is printed next to ours (it is of the same size: fp32
// rounding through a few layers, not a property of either implementation).
//   logits:             < 1e-5, floor 0.1 * max|b| (logits near zero carry the absolute error
//                       of the large ones: a softmax input is only known to ~1e-6 of its scale)
//   log-probs, entropy: < 1e-5, floor 1e-2;  objective J: < 1e-5
//   parameter gradients: < 1e-4 per tensor, floor 0.1 * max|b| over that tensor
//   AdamW replayed on the reference's own gradients (exact optimiser semantics, with clipping):
//                       < 1e-5, floor 1e-2
//   weights after 3 full training steps (forward, backward, clip, AdamW): Adam divides by
//                       sqrt(v), so parameters whose gradient is near zero amplify fp32 noise
//                       up to ~lr; checked as ||dw_ours - dw_ref|| / ||dw_ref|| < 1e-2 over the
//                       update dw and max |w_ours - w_ref| < 0.2 * lr.
#include "test.h"

#include "adamw.h"    // AdamW, grad_clip
#include "common.h"   // xmalloc, safe_data_dir
#include "logprob.h"  // logprob_forward/backward
#include "lora.h"     // Lora, lora_create/attach: adapter gradients
#include "matmul.h"   // matmul_nt: batch invariance, kernel choice
#include "model.h"    // Model, model_forward/backward, KV cache

#include <omp.h>
#include <stdint.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------
// a small llama2.c .bin loader (the library's own lives in lib/llama2c.c; this one is kept
// independent on purpose). llama2.c's model.py rotates interleaved pairs (2i, 2i+1); our RoPE
// rotates (i, i+hs/2). Within each head, row 2i+j of wq/wk moves to row j*hs/2 + i:
//   new[h*hs + j*hs/2 + i] = old[h*hs + 2*i + j],  i < hs/2, j in {0,1}
// (the transformers convert_llama_weights_to_hf.py permute()).

// Copy llama2.c-ordered floats (tok_emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3,
// rms_final) into views, permuting wq/wk rows; export does the inverse.
static size_t llama2c_sizes(const ModelConfig *c, size_t s[11]) {
    size_t C = c->dim, L = c->n_layers, F = c->hidden_dim, kvd = (size_t)c->n_kv_heads * (C / c->n_heads);
    size_t v[11] = {(size_t)c->vocab_size * C, L * C, L * C * C, L * kvd * C, L * kvd * C, L * C * C, L * C,
                    L * F * C, L * C * F, L * F * C, C};
    size_t n = 0;
    for (int i = 0; i < 11; i++) n += s[i] = v[i];
    return n;
}
static const char *llama2c_names[11] = {"tok_emb", "attn_norm", "wq", "wk", "wv", "wo",
                                        "ffn_norm", "w1", "w2", "w3", "final_norm"};

static void llama2c_copy(const ModelConfig *c, ParamViews *w, float *flat, int to_views) {
    size_t s[11];
    llama2c_sizes(c, s);
    float *dst[11] = {w->tok_emb, w->attn_norm, w->wq, w->wk, w->wv, w->wo, w->ffn_norm, w->w1, w->w2, w->w3, w->final_norm};
    int C = c->dim, hs = C / c->n_heads, kvd = c->n_kv_heads * hs;
    float *p = flat;
    for (int i = 0; i < 11; i++) {
        int rows_per_layer = i == 2 ? C : kvd, heads = i == 2 ? c->n_heads : c->n_kv_heads;
        if (i == 2 || i == 3) {
            // new row h*hs + j*hs/2 + i  <-  old row h*hs + 2i + j
            for (int l = 0; l < c->n_layers; l++)
                for (int h = 0; h < heads; h++)
                    for (int ii = 0; ii < hs / 2; ii++)
                        for (int j = 0; j < 2; j++) {
                            size_t rn = (size_t)l * rows_per_layer + h * hs + j * hs / 2 + ii;
                            size_t ro = (size_t)l * rows_per_layer + h * hs + 2 * ii + j;
                            if (to_views) memcpy(dst[i] + rn * C, p + ro * C, C * sizeof(float));
                            else memcpy(p + ro * C, dst[i] + rn * C, C * sizeof(float));
                        }
        } else if (to_views) {
            memcpy(dst[i], p, s[i] * sizeof(float));
        } else {
            memcpy(p, dst[i], s[i] * sizeof(float));
        }
        p += s[i];
    }
}

static Model *load_llama2c(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    int32_t h[7];
    if (fread(h, sizeof(int32_t), 7, f) != 7 || h[5] <= 0) { fclose(f); return NULL; }  // tied models only
    ModelConfig cfg = {.dim = h[0], .hidden_dim = h[1], .n_layers = h[2], .n_heads = h[3],
                       .n_kv_heads = h[4], .vocab_size = h[5], .max_seq_len = h[6],
                       .rope_theta = 10000.0f, .norm_eps = 1e-5f, .qkv_bias = 0, .tied = 1};
    size_t s[11], n = llama2c_sizes(&cfg, s);
    float *flat = xmalloc(n * sizeof(float));
    size_t got = fread(flat, sizeof(float), n, f);
    fclose(f);
    if (got != n) { free(flat); return NULL; }
    Model *m = model_create(&cfg);
    llama2c_copy(&cfg, &m->w, flat, 1);
    free(flat);
    return m;
}

static Model *stories260k(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/stories260K/stories260K.bin", safe_data_dir());
    Model *m = load_llama2c(path);
    if (!m) printf("  cannot read %s (set SAFE_DATA)\n", path);
    return m;
}

static Model *tiny_model(int tied, int qkv_bias, uint64_t seed) {
    ModelConfig cfg = {.dim = 32, .hidden_dim = 48, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                       .vocab_size = 64, .max_seq_len = 64, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
                       .qkv_bias = qkv_bias, .tied = tied};
    Model *m = model_create(&cfg);
    model_init_random(m, seed, 0.3f);
    return m;
}

// ---------------------------------------------------------------------------------------------
// invariants: a sequence's log-probs alone, padded in a batch, and through the KV cache

static uint64_t rng_state = 12345;
static int rand_int(int n) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (int)((rng_state >> 33) % (uint64_t)n);
}

#define NSEQ 3
#define TB 14

// Three sequences laid out left- and right-padded in a (3, TB) batch.
typedef struct {
    int len[NSEQ], left[NSEQ];
    int32_t seq[NSEQ][TB + 1];  // tokens, plus one more as the last target
} Batch;

static void make_batch(Batch *bt, int V) {
    int lens[NSEQ] = {TB, 8, 5}, lefts[NSEQ] = {0, 4, 3};  // row 1: 4 left, 2 right pad; row 2: 3 left, 6 right
    for (int i = 0; i < NSEQ; i++) {
        bt->len[i] = lens[i];
        bt->left[i] = lefts[i];
        for (int t = 0; t <= TB; t++) bt->seq[i][t] = 1 + rand_int(V - 1);
    }
}

// log-probs (len) of targets seq[1..len] for sequence i computed alone
static void logp_alone(Model *m, const Batch *bt, int i, float temp, float *out) {
    int n = bt->len[i];
    model_forward(m, bt->seq[i], NULL, 1, n, 1);
    logprob_forward(m->logits, n, m->cfg.vocab_size, temp, bt->seq[i] + 1, out, NULL);
}

static void check_invariants(Model *m, const char *name) {
    const float temp = 0.7f;
    int V = m->cfg.vocab_size;
    Batch bt;
    make_batch(&bt, V);
    float alone[NSEQ][TB];
    for (int i = 0; i < NSEQ; i++) logp_alone(m, &bt, i, temp, alone[i]);

    // padded batch
    int32_t tokens[NSEQ * TB], targets[NSEQ * TB];
    uint8_t mask[NSEQ * TB];
    for (int i = 0; i < NSEQ; i++)
        for (int t = 0; t < TB; t++) {
            int j = t - bt.left[i];
            int valid = j >= 0 && j < bt.len[i];
            mask[i * TB + t] = (uint8_t)valid;
            tokens[i * TB + t] = valid ? bt.seq[i][j] : -1;  // garbage at padding must be ignored
            targets[i * TB + t] = valid ? bt.seq[i][j + 1] : -1;
        }
    model_forward(m, tokens, mask, NSEQ, TB, 1);
    float lp[NSEQ * TB];
    logprob_forward(m->logits, NSEQ * TB, V, temp, targets, lp, NULL);
    double maxd = 0.0;
    int finite = 1;
    for (int i = 0; i < NSEQ; i++)
        for (int t = 0; t < TB; t++) {
            int j = t - bt.left[i];
            if (mask[i * TB + t]) maxd = fmax(maxd, fabs(lp[i * TB + t] - alone[i][j]));
            else
                for (int c = 0; c < m->cfg.dim; c++) finite &= m->hidden[(i * TB + t) * m->cfg.dim + c] == 0.0f;
        }
    printf("  %s: padded batch vs alone: max |dlogp| = %.3g (row 1: %.7f vs %.7f)\n", name, maxd,
           lp[1 * TB + bt.left[1] + 2], alone[1][2]);
    CHECK(maxd <= 1e-6, "%s: padded-batch log-probs differ from alone by %g", name, maxd);
    CHECK(finite, "%s: hidden state at padded positions is not zero", name);

    // KV cache: prefill rows with different prompt lengths in one pass, then decode the rest
    // token by token, each step only for the rows that still have tokens
    KVCache *kv = kvcache_create(&m->cfg, 5, TB + 2);
    int rows[NSEQ] = {4, 0, 2};  // cache rows, deliberately not 0..2
    int plen[NSEQ] = {3, 1, 4};
    const int32_t *prompts[NSEQ];
    for (int i = 0; i < NSEQ; i++) prompts[i] = bt.seq[i];
    float *logits = xmalloc((size_t)NSEQ * V * sizeof(float));
    model_prefill(m, kv, NSEQ, rows, prompts, plen, logits);
    double maxk = 0.0;
    int cur[NSEQ];
    for (int i = 0; i < NSEQ; i++) {
        float l1;
        logprob_forward(logits + (size_t)i * V, 1, V, temp, &bt.seq[i][plen[i]], &l1, NULL);
        maxk = fmax(maxk, fabs(l1 - alone[i][plen[i] - 1]));
        cur[i] = plen[i];
    }
    for (;;) {
        int sub_rows[NSEQ], idx[NSEQ], n = 0;
        int32_t tok[NSEQ];
        for (int i = 0; i < NSEQ; i++)
            if (cur[i] < bt.len[i]) {
                idx[n] = i;
                sub_rows[n] = rows[i];
                tok[n] = bt.seq[i][cur[i]];
                n++;
            }
        if (!n) break;
        model_decode(m, kv, n, sub_rows, tok, logits);
        for (int r = 0; r < n; r++) {
            int i = idx[r];
            float l1;
            logprob_forward(logits + (size_t)r * V, 1, V, temp, &bt.seq[i][cur[i] + 1], &l1, NULL);
            maxk = fmax(maxk, fabs(l1 - alone[i][cur[i]]));
            cur[i]++;
        }
    }
    printf("  %s: KV-cache decode vs alone: max |dlogp| = %.3g\n", name, maxk);
    CHECK(maxk <= 1e-6, "%s: KV-cache log-probs differ from alone by %g", name, maxk);
    for (int i = 0; i < NSEQ; i++) CHECK(kv->len[rows[i]] == bt.len[i], "cache row length %d", kv->len[rows[i]]);
    free(logits);
    kvcache_free(kv);
}

TEST(invariants_stories260k) {
    Model *m = stories260k();
    CHECK(m != NULL, "stories260K not found");
    if (!m) return;
    check_invariants(m, "stories260K");
    model_free(m);
}

TEST(invariants_tiny_gqa_bias) {
    Model *m = tiny_model(1, 1, 7);
    check_invariants(m, "tiny tied+bias");
    // the same under every GEMM kernel this CPU has (the CPU picks one at run time)
    const char *orig = matmul_isa(), *isas[3] = {"avx512", "avx2", "generic"};
    for (int i = 0; i < 3; i++) {
        if (!strcmp(isas[i], orig) || matmul_force_isa(isas[i])) continue;
        char label[64];
        snprintf(label, sizeof label, "tiny tied+bias [%s kernel]", isas[i]);
        check_invariants(m, label);
    }
    matmul_force_isa(orig);
    model_free(m);
    m = tiny_model(0, 0, 8);
    check_invariants(m, "tiny untied");
    model_free(m);
}

// ---------------------------------------------------------------------------------------------
// fixtures written by tests/gen/gen_model_ref.py

typedef struct {
    char name[32];
    int dtype;  // 0 float32, 1 int32
    size_t n;
    void *data;
} FixRec;

typedef struct {
    FixRec rec[32];
    int n;
    char *blob;
} Fixture;

static int fixture_load(Fixture *fx, const char *path) {
    memset(fx, 0, sizeof *fx);
    FILE *f = fopen(path, "rb");
    if (!f) { printf("  cannot open %s (regenerate: /usr/bin/python3 tests/gen/gen_model_ref.py)\n", path); return 0; }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    fx->blob = xmalloc(size);
    if (fread(fx->blob, 1, size, f) != (size_t)size || size < 8 || memcmp(fx->blob, "SAFEFIX1", 8)) {
        fclose(f);
        printf("  %s: not a SAFEFIX1 file\n", path);
        return 0;
    }
    fclose(f);
    char *p = fx->blob + 8, *end = fx->blob + size;
    while (p < end && fx->n < 32) {
        FixRec *r = &fx->rec[fx->n++];
        uint32_t len, dt;
        uint64_t cnt;
        memcpy(&len, p, 4); p += 4;
        memcpy(r->name, p, len < 31 ? len : 31); p += len;
        memcpy(&dt, p, 4); p += 4;
        memcpy(&cnt, p, 8); p += 8;
        r->dtype = (int)dt;
        r->n = cnt;
        r->data = p;  // 8 + 4 + len + 12 bytes: may be unaligned, read through memcpy below
        p += cnt * 4;
    }
    return 1;
}

static void fixture_free(Fixture *fx) { free(fx->blob); }

// copy of record `name` (aligned, malloc'd), its length in *n
static void *fix_get(const Fixture *fx, const char *name, size_t *n) {
    for (int i = 0; i < fx->n; i++)
        if (!strcmp(fx->rec[i].name, name)) {
            void *d = xmalloc(fx->rec[i].n * 4 + 4);
            memcpy(d, fx->rec[i].data, fx->rec[i].n * 4);
            if (n) *n = fx->rec[i].n;
            return d;
        }
    printf("  fixture has no record '%s'\n", name);
    exit(1);
}

// Compare n values: relative error |a-b| / max(|b|, floor). Prints the first few side by side.
static double compare(const char *what, const float *ours, const float *ref, size_t n, double floor_, int show) {
    double maxe = 0.0, maxabs = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double e = rel_err(ours[i], ref[i], floor_);
        if (e > maxe || isnan(e)) { maxe = isnan(e) ? INFINITY : e; at = i; }
        maxabs = fmax(maxabs, fabs((double)ours[i] - ref[i]));
    }
    printf("  %-22s n=%-7zu max rel err %.2e (at %zu: %.7g vs %.7g), max abs diff %.2e", what, n, maxe, at,
           n ? ours[at] : 0.0, n ? ref[at] : 0.0, maxabs);
    if (show) {
        printf("\n      ours:");
        for (size_t i = 0; i < n && i < 4; i++) printf(" %11.7f", ours[i]);
        printf("\n      ref: ");
        for (size_t i = 0; i < n && i < 4; i++) printf(" %11.7f", ref[i]);
    }
    printf("\n");
    return maxe;
}

static double max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

typedef struct {
    int B, T;
    int32_t *tokens, *targets;
    uint8_t *mask;
    float *w, *u;
    float temp, c_ent;
} ObjInputs;

// Forward, log-probs, entropy; loss = -(sum w logp + c_ent sum H + sum u.hidden) over valid
// positions (returned in double); with grads: also backward (after model_zero_grad).
static double objective(Model *m, const ObjInputs *in, int with_grads, float *logp, float *ent) {
    int B = in->B, T = in->T, V = m->cfg.vocab_size, C = m->cfg.dim;
    size_t N = (size_t)B * T;
    model_forward(m, in->tokens, in->mask, B, T, 1);
    logprob_forward(m->logits, N, V, in->temp, in->targets, logp, ent);
    double J = 0.0;
    for (size_t n = 0; n < N; n++) {
        if (!in->mask[n]) continue;
        J += (double)in->w[n] * logp[n] + (double)in->c_ent * ent[n];
        for (int c = 0; c < C; c++) J += (double)in->u[n * C + c] * m->hidden[n * C + c];
    }
    if (with_grads) {
        float *dlogits = xcalloc(N * V, sizeof(float));
        float *dlogp = xcalloc(N, sizeof(float)), *dent = xcalloc(N, sizeof(float));
        float *dhid = xcalloc(N * C, sizeof(float));
        for (size_t n = 0; n < N; n++) {
            if (!in->mask[n]) continue;
            dlogp[n] = -in->w[n];
            dent[n] = -in->c_ent;
            for (int c = 0; c < C; c++) dhid[n * C + c] = -in->u[n * C + c];
        }
        model_zero_grad(m);
        logprob_backward(m->logits, N, V, in->temp, in->targets, dlogp, dent, dlogits);
        model_backward(m, dlogits, dhid);
        free(dlogits);
        free(dlogp);
        free(dent);
        free(dhid);
    }
    return -J;
}

// Segments (name, floats) of a flat vector in the fixture's order.
typedef struct {
    const char *name[16];
    size_t size[16];
    int n;
} Segs;

static void segs_model_order(const ModelConfig *c, Segs *sg) {
    // the order of lib/model.c's buffer, absent tensors skipped
    Model *tmp = model_create(c);
    ParamViews *v = &tmp->w;
    const char *names[15] = {"tok_emb", "attn_norm", "wq", "wk", "wv", "bq", "bk", "bv", "wo", "ffn_norm", "w1", "w2", "w3", "final_norm", "lm_head"};
    float *ptr[15] = {v->tok_emb, v->attn_norm, v->wq, v->wk, v->wv, v->bq, v->bk, v->bv, v->wo, v->ffn_norm, v->w1, v->w2, v->w3, v->final_norm, c->tied ? NULL : v->lm_head};
    float *end = tmp->params + tmp->n_params;
    sg->n = 0;
    for (int i = 0; i < 15; i++) {
        if (!ptr[i]) continue;
        float *next = end;
        for (int j = i + 1; j < 15; j++) if (ptr[j]) { next = ptr[j]; break; }
        sg->name[sg->n] = names[i];
        sg->size[sg->n++] = (size_t)(next - ptr[i]);
    }
    model_free(tmp);
}

static void segs_llama2c(const ModelConfig *c, Segs *sg) {
    size_t s[11];
    llama2c_sizes(c, s);
    sg->n = 11;
    for (int i = 0; i < 11; i++) { sg->name[i] = llama2c_names[i]; sg->size[i] = s[i]; }
}

// the model's gradients or weights (views) as a flat vector in the fixture's order
static void flat_in_fixture_order(Model *m, ParamViews *v, const float *buf, int llama2c, float *out) {
    if (llama2c) llama2c_copy(&m->cfg, v, out, 0);
    else memcpy(out, buf, m->n_params * sizeof(float));
}

static void parity_case(const char *file, int llama2c) {
    char path[512];
    snprintf(path, sizeof path, "tests/fixtures/%s", file);
    Fixture fx;
    if (!fixture_load(&fx, path)) { CHECK(0, "fixture %s", path); return; }
    size_t n;
    int32_t *cf = fix_get(&fx, "config", &n);
    float *hy = fix_get(&fx, "hyper", &n);
    Model *m;
    if (llama2c) {
        m = stories260k();
        if (!m) { CHECK(0, "stories260K"); return; }
    } else {
        ModelConfig cfg = {.dim = cf[0], .hidden_dim = cf[1], .n_layers = cf[2], .n_heads = cf[3], .n_kv_heads = cf[4],
                           .vocab_size = cf[5], .max_seq_len = 64, .rope_theta = hy[0], .norm_eps = hy[1],
                           .qkv_bias = cf[6], .tied = cf[7]};
        m = model_create(&cfg);
        float *params = fix_get(&fx, "params", &n);
        CHECK(n == m->n_params, "params: %zu floats in fixture, model has %zu", n, m->n_params);
        memcpy(m->params, params, m->n_params * sizeof(float));
        free(params);
    }
    ObjInputs in;
    size_t nt;
    in.tokens = fix_get(&fx, "tokens", &nt);
    in.targets = fix_get(&fx, "targets", NULL);
    int32_t *mask32 = fix_get(&fx, "mask", NULL);
    in.w = fix_get(&fx, "w", NULL);
    in.u = fix_get(&fx, "u", NULL);
    in.B = 3;
    in.T = (int)(nt / 3);
    in.temp = hy[2];
    in.c_ent = hy[3];
    in.mask = xmalloc(nt);
    for (size_t i = 0; i < nt; i++) in.mask[i] = (uint8_t)mask32[i];
    int V = m->cfg.vocab_size;
    size_t N = nt;

    // forward: logits, log-probs, entropy, objective
    float *logp = xmalloc(N * sizeof(float)), *ent = xmalloc(N * sizeof(float));
    double loss = objective(m, &in, 1, logp, ent);
    float *ref_logits = fix_get(&fx, "logits", NULL), *ref_logp = fix_get(&fx, "logp", NULL);
    float *ref_ent = fix_get(&fx, "entropy", NULL), *ref_J = fix_get(&fx, "J", NULL);
    // compare valid positions only (padding holds zeros on both sides anyway)
    float *a = xmalloc(N * V * sizeof(float)), *b = xmalloc(N * V * sizeof(float));
    size_t k = 0;
    for (size_t i = 0; i < N; i++)
        if (in.mask[i]) { memcpy(a + k, m->logits + i * V, V * sizeof(float)); memcpy(b + k, ref_logits + i * V, V * sizeof(float)); k += V; }
    float *t32 = fix_get(&fx, "torch_fp32_err", NULL);
    printf("  (PyTorch fp32 vs the float64 reference: logits %.2e, logp %.2e, entropy %.2e, grads %.2e)\n",
           t32[0], t32[1], t32[2], t32[3]);
    double e = compare("logits", a, b, k, 0.1 * max_abs(b, k), 1);
    CHECK(e < 1e-5, "logits rel err %g", e);
    k = 0;
    for (size_t i = 0; i < N; i++) if (in.mask[i]) { a[k] = logp[i]; b[k++] = ref_logp[i]; }
    e = compare("logp (T=0.7)", a, b, k, 1e-2, 1);
    CHECK(e < 1e-5, "logp rel err %g", e);
    k = 0;
    for (size_t i = 0; i < N; i++) if (in.mask[i]) { a[k] = ent[i]; b[k++] = ref_ent[i]; }
    e = compare("entropy", a, b, k, 1e-2, 1);
    CHECK(e < 1e-5, "entropy rel err %g", e);
    float Jo = (float)-loss;
    e = compare("objective J", &Jo, ref_J, 1, 1e-2, 0);
    CHECK(e < 1e-5, "J rel err %g", e);

    // gradients of loss = -J, tensor by tensor
    Segs sg;
    if (llama2c) segs_llama2c(&m->cfg, &sg);
    else segs_model_order(&m->cfg, &sg);
    float *ref_g = fix_get(&fx, "grads", &n);
    float *our_g = xmalloc(n * sizeof(float));
    flat_in_fixture_order(m, &m->g, m->grads, llama2c, our_g);
    size_t off = 0;
    double worst = 0.0;
    for (int i = 0; i < sg.n; i++) {
        char label[64];
        snprintf(label, sizeof label, "grad %s", sg.name[i]);
        double fl = 0.1 * max_abs(ref_g + off, sg.size[i]);
        e = compare(label, our_g + off, ref_g + off, sg.size[i], fl > 0 ? fl : 1e-12, i == 2);
        worst = fmax(worst, e);
        CHECK(e < 1e-4, "%s rel err %g", label, e);
        off += sg.size[i];
    }
    CHECK(off == n, "gradient fixture has %zu floats, expected %zu", n, off);
    printf("  all gradients: max rel err %.2e (floor 0.1 x max|grad| per tensor)\n", worst);

    // the optimiser alone: replay the reference's own per-step gradients
    AdamWConfig oc = adamw_defaults();
    oc.lr = hy[4];
    oc.weight_decay = hy[5];
    int steps = (int)hy[7], stride = (int)hy[8];
    float *ref_norms = fix_get(&fx, "grad_norms", NULL);
    float *ref_w = fix_get(&fx, "adamw", &n);
    size_t P = m->n_params;
    float *init = xmalloc(P * sizeof(float)), *ours = xmalloc(P * sizeof(float)), *sampled = xmalloc(n * sizeof(float));
    flat_in_fixture_order(m, &m->w, m->params, llama2c, init);
    for (int i = 0; i < fx.n; i++) {
        if (strcmp(fx.rec[i].name, "step_grads")) continue;
        float *sgr = fix_get(&fx, "step_grads", NULL);
        float *pw = xmalloc(P * sizeof(float));
        memcpy(pw, init, P * sizeof(float));
        AdamW *o2 = adamw_create(P, oc);
        double nerr = 0.0;
        for (int s = 0; s < steps; s++) {
            double norm = grad_clip(sgr + (size_t)s * P, P, hy[6]);
            nerr = fmax(nerr, rel_err(norm, ref_norms[s], 1e-2));
            adamw_step(o2, pw, sgr + (size_t)s * P);
        }
        printf("  replayed gradients: grad norm rel err %.2e\n", nerr);
        CHECK(nerr < 1e-6, "replayed grad norms rel err %g", nerr);
        e = compare("AdamW on ref grads", pw, ref_w, n, 1e-2, 1);
        CHECK(e < 1e-5, "AdamW (replayed gradients) rel err %g", e);
        adamw_free(o2);
        free(pw);
        free(sgr);
    }

    // full training steps: forward, backward, clip, AdamW
    AdamW *opt = adamw_create(P, oc);
    for (int s = 0; s < steps; s++) {
        objective(m, &in, 1, logp, ent);
        double norm = grad_clip(m->grads, P, hy[6]);
        printf("  training step %d: grad norm %.6f (ref %.6f)\n", s + 1, norm, ref_norms[s]);
        CHECK(rel_err(norm, ref_norms[s], 1e-2) < 1e-4, "grad norm step %d: %g vs %g", s + 1, norm, ref_norms[s]);
        adamw_step(opt, m->params, m->grads);
    }
    flat_in_fixture_order(m, &m->w, m->params, llama2c, ours);
    double du = 0.0, dr = 0.0, maxd = 0.0;
    for (size_t i = 0; i < n; i++) {
        sampled[i] = ours[i * stride];
        double ro = (double)ours[i * stride] - init[i * stride], rr = (double)ref_w[i] - init[i * stride];
        du += (ro - rr) * (ro - rr);
        dr += rr * rr;
        maxd = fmax(maxd, fabs(ro - rr));
    }
    compare("weights after training", sampled, ref_w, n, 1e-2, 1);
    printf("  update ||dw_ours - dw_ref|| / ||dw_ref|| = %.2e, max |w_ours - w_ref| = %.2e = %.3f lr\n",
           sqrt(du / dr), maxd, maxd / oc.lr);
    CHECK(sqrt(du / dr) < 1e-2, "AdamW trajectory: relative update error %g", sqrt(du / dr));
    CHECK(maxd < 0.2 * oc.lr, "AdamW trajectory: max weight difference %g", maxd);
    free(init); free(ours); free(sampled); free(t32);

    adamw_free(opt);
    free(ref_w); free(ref_norms); free(our_g); free(ref_g);
    free(a); free(b); free(ref_logits); free(ref_logp); free(ref_ent); free(ref_J);
    free(logp); free(ent);
    free(in.tokens); free(in.targets); free(mask32); free(in.w); free(in.u); free(in.mask);
    free(cf); free(hy);
    model_free(m);
    fixture_free(&fx);
}

TEST(parity_stories260k) { parity_case("model_stories260k.bin", 1); }
TEST(parity_tiny_tied_gqa_bias) { parity_case("model_tiny_tied.bin", 0); }
TEST(parity_tiny_untied_gqa_bias) { parity_case("model_tiny_untied.bin", 0); }

// ---------------------------------------------------------------------------------------------
// LoRA adapter gradients against tests/gen/gen_lora_ref.py (tiny untied GQA+bias, r = 3,
// alpha = 6, all seven projections, random nonzero A and B). The reference never forms B A: each
// adapted projection is the separate low-rank path x W^T + s (x A^T) B^T, autograd in float64;
// lib/lora.c merges W' = W + s B A and backpropagates through W' (lora_backward).
// Tolerances: logits and J as parity_case (< 1e-5, floor 0.1 max|b| / 1e-2); adapter gradients
// max |a-b| / max |b| per tensor (A or B of one target, all layers) < 1e-5, i.e. the 1e-4 of
// parity_case's floor 0.1 max|b|. PyTorch's own fp32 lands at ~1e-6 (printed).

// The base model of a fixture (config, hyper, params)
static Model *fixture_model(const Fixture *fx) {
    int32_t *cf = fix_get(fx, "config", NULL);
    float *hy = fix_get(fx, "hyper", NULL);
    ModelConfig cfg = {.dim = cf[0], .hidden_dim = cf[1], .n_layers = cf[2], .n_heads = cf[3], .n_kv_heads = cf[4],
                       .vocab_size = cf[5], .max_seq_len = 64, .rope_theta = hy[0], .norm_eps = hy[1],
                       .qkv_bias = cf[6], .tied = cf[7]};
    Model *m = model_create(&cfg);
    size_t n;
    float *params = fix_get(fx, "params", &n);
    CHECK(n == m->n_params, "params: %zu floats in fixture, model has %zu", n, m->n_params);
    if (n == m->n_params) memcpy(m->params, params, n * sizeof(float));
    free(params); free(cf); free(hy);
    return m;
}

// The padded (3, T) batch of a fixture; temperature and entropy coefficient from hyper[2..3]
static void fixture_inputs(const Fixture *fx, ObjInputs *in) {
    size_t nt;
    float *hy = fix_get(fx, "hyper", NULL);
    int32_t *mask32 = fix_get(fx, "mask", &nt);
    in->tokens = fix_get(fx, "tokens", NULL);
    in->targets = fix_get(fx, "targets", NULL);
    in->w = fix_get(fx, "w", NULL);
    in->u = fix_get(fx, "u", NULL);
    in->B = 3;
    in->T = (int)(nt / 3);
    in->temp = hy[2];
    in->c_ent = hy[3];
    in->mask = xmalloc(nt);
    for (size_t i = 0; i < nt; i++) in->mask[i] = (uint8_t)mask32[i];
    free(mask32); free(hy);
}

// The fixture's adapter (lora_cfg, lora_scale, lora_params) on m: created, filled, attached (merged)
static Lora *fixture_lora(const Fixture *fx, Model *m) {
    int32_t *lc = fix_get(fx, "lora_cfg", NULL);
    float *sc = fix_get(fx, "lora_scale", NULL);
    LoraConfig c = {.r = lc[0], .alpha = sc[0] * lc[0], .rslora = 0, .targets = (unsigned)lc[1]};
    Lora *lo = lora_create(&m->cfg, &c);
    size_t n;
    float *p = fix_get(fx, "lora_params", &n);
    CHECK(n == lo->n_params, "lora_params: %zu floats in fixture, adapter has %zu", n, lo->n_params);
    if (n == lo->n_params) memcpy(lo->params, p, n * sizeof(float));
    printf("  adapter: r=%d alpha=%g s=%g targets %s, %zu floats\n", c.r, c.alpha, lo->scale,
           lora_targets_string(c.targets), lo->n_params);
    free(lc); free(sc); free(p);
    lora_attach(m, lo);
    return lo;
}

// Per tensor (A, B of each target, all layers): max |ours - ref| / max |ref|; the worst
static double compare_lora_grads(const Lora *lo, const float *ref) {
    double worst = 0.0;
    for (int t = 0; t < LORA_NTARGETS; t++) {
        if (!lo->A[t]) continue;
        const float *view[2] = {lo->A[t], lo->B[t]};
        size_t size[2] = {(size_t)lo->L * lo->cfg.r * lo->in[t], (size_t)lo->L * lo->out[t] * lo->cfg.r};
        for (int ab = 0; ab < 2; ab++) {
            size_t off = (size_t)(view[ab] - lo->params);
            char label[64];
            snprintf(label, sizeof label, "grad %s.%c", lora_target_names[t], "AB"[ab]);
            double e = compare(label, lo->grads + off, ref + off, size[ab], max_abs(ref + off, size[ab]), t == 0 && ab == 0);
            CHECK(e < 1e-5, "%s: max |diff| / max |grad| = %g", label, e);
            worst = fmax(worst, e);
        }
    }
    return worst;
}

TEST(parity_lora_tiny) {
    Fixture fx;
    if (!fixture_load(&fx, "tests/fixtures/lora_tiny.bin")) { CHECK(0, "fixture lora_tiny.bin (gen_lora_ref.py)"); return; }
    Model *m = fixture_model(&fx);
    Lora *lo = fixture_lora(&fx, m);
    ObjInputs in;
    fixture_inputs(&fx, &in);
    int V = m->cfg.vocab_size;
    size_t N = (size_t)in.B * in.T, k = 0;
    float *logp = xmalloc(N * sizeof(float)), *ent = xmalloc(N * sizeof(float));
    double loss = objective(m, &in, 1, logp, ent);
    float *t32 = fix_get(&fx, "torch_fp32_err", NULL);
    printf("  (PyTorch fp32 vs the float64 reference: logits %.2e, adapter grads %.2e)\n", t32[0], t32[1]);

    // forward on the merged weights vs the reference's low-rank path: valid positions (N', V)
    float *ref_logits = fix_get(&fx, "logits", NULL), *ref_J = fix_get(&fx, "J", NULL);
    float *a = xmalloc(N * V * sizeof(float)), *b = xmalloc(N * V * sizeof(float));
    for (size_t i = 0; i < N; i++)
        if (in.mask[i]) { memcpy(a + k, m->logits + i * V, V * sizeof(float)); memcpy(b + k, ref_logits + i * V, V * sizeof(float)); k += V; }
    double e = compare("logits", a, b, k, 0.1 * max_abs(b, k), 0);
    CHECK(e < 1e-5, "logits rel err %g", e);
    float Jo = (float)-loss;
    e = compare("objective J", &Jo, ref_J, 1, 1e-2, 0);
    CHECK(e < 1e-5, "J rel err %g", e);

    // adapter gradients of loss = -J; the frozen base gets no gradient buffer
    size_t n;
    float *ref_g = fix_get(&fx, "ref_lora_grads", &n);
    CHECK(n == lo->n_params && lo->grads, "ref_lora_grads: %zu floats, adapter %zu", n, lo->n_params);
    CHECK(m->grads == NULL, "the frozen base has a gradient buffer");
    if (n == lo->n_params && lo->grads)
        printf("  all adapter gradients: max |diff| / max |grad| %.2e per tensor (max |grad| %.3g)\n",
               compare_lora_grads(lo, ref_g), max_abs(ref_g, n));

    free(ref_g); free(a); free(b); free(ref_logits); free(ref_J); free(t32); free(logp); free(ent);
    free(in.tokens); free(in.targets); free(in.mask); free(in.w); free(in.u);
    model_free(m);   // frees the adapter too
    fixture_free(&fx);
}

// ---------------------------------------------------------------------------------------------
// finite differences on the tiny config (GQA, q/k/v bias, tied), loss summed in double

static void random_inputs(ObjInputs *in, int B, int T, int V, int C, const int *left, const int *len) {
    size_t N = (size_t)B * T;
    in->B = B;
    in->T = T;
    in->tokens = xmalloc(N * sizeof(int32_t));
    in->targets = xmalloc(N * sizeof(int32_t));
    in->mask = xcalloc(N, 1);
    in->w = xcalloc(N, sizeof(float));
    in->u = xcalloc(N * C, sizeof(float));
    in->temp = 0.7f;
    in->c_ent = 0.05f;
    for (size_t n = 0; n < N; n++) {
        int b = (int)(n / T), t = (int)(n % T);
        int valid = t >= left[b] && t < left[b] + len[b];
        in->mask[n] = (uint8_t)valid;
        in->tokens[n] = valid ? rand_int(V) : -1;
        in->targets[n] = valid ? rand_int(V) : -1;
        if (valid) {
            in->w[n] = (float)(rand_int(2001) - 1000) / 1000.0f;
            for (int c = 0; c < C; c++) in->u[n * C + c] = (float)(rand_int(2001) - 1000) / 10000.0f;
        }
    }
}

static void free_inputs(ObjInputs *in) {
    free(in->tokens); free(in->targets); free(in->mask); free(in->w); free(in->u);
}

TEST(finite_differences_tiny) {
    Model *m = tiny_model(1, 1, 99);
    // scale the random weights down to a well-conditioned network (std 0.15)
    for (size_t i = 0; i < m->n_params; i++) m->params[i] *= 0.5f;
    for (int i = 0; i < m->cfg.n_layers * m->cfg.dim; i++) m->w.attn_norm[i] = m->w.ffn_norm[i] = 1.0f;
    for (int i = 0; i < m->cfg.dim; i++) m->w.final_norm[i] = 1.0f;
    int left[3] = {0, 2, 1}, len[3] = {8, 5, 3};
    ObjInputs in;
    random_inputs(&in, 3, 8, m->cfg.vocab_size, m->cfg.dim, left, len);
    size_t N = 24;
    float *logp = xmalloc(N * sizeof(float)), *ent = xmalloc(N * sizeof(float));
    objective(m, &in, 1, logp, ent);
    const char *names[14] = {"tok_emb", "attn_norm", "wq", "wk", "wv", "bq", "bk", "bv", "wo", "ffn_norm", "w1", "w2", "w3", "final_norm"};
    float *pw[14] = {m->w.tok_emb, m->w.attn_norm, m->w.wq, m->w.wk, m->w.wv, m->w.bq, m->w.bk, m->w.bv, m->w.wo, m->w.ffn_norm, m->w.w1, m->w.w2, m->w.w3, m->w.final_norm};
    float *pg[14] = {m->g.tok_emb, m->g.attn_norm, m->g.wq, m->g.wk, m->g.wv, m->g.bq, m->g.bk, m->g.bv, m->g.wo, m->g.ffn_norm, m->g.w1, m->g.w2, m->g.w3, m->g.final_norm};
    size_t sizes[14];
    for (int i = 0; i < 13; i++) sizes[i] = (size_t)(pw[i + 1] - pw[i]);
    sizes[13] = (size_t)m->cfg.dim;
    const float eps = 1e-2f;
    double worst = 0.0;
    int shown = 0;
    for (int i = 0; i < 14; i++) {
        double gmax = 0.0;
        for (size_t j = 0; j < sizes[i]; j++) gmax = fmax(gmax, fabs(pg[i][j]));
        for (int r = 0; r < 4; r++) {
            size_t j = (size_t)rand_int((int)sizes[i]);
            float keep = pw[i][j];
            pw[i][j] = keep + eps;
            double lp = objective(m, &in, 0, logp, ent);
            pw[i][j] = keep - eps;
            double lm = objective(m, &in, 0, logp, ent);
            pw[i][j] = keep;
            double fd = (lp - lm) / (2.0 * eps);
            double e = rel_err(pg[i][j], fd, fmax(0.1 * gmax, 1e-3));
            worst = fmax(worst, e);
            if (shown < 6 && r == 0) {
                printf("  %-10s[%4zu]: analytic %12.7f  central difference %12.7f\n", names[i], j, pg[i][j], fd);
                shown++;
            }
            CHECK(e < 5e-3, "%s[%zu]: analytic %g vs finite difference %g", names[i], j, pg[i][j], fd);
        }
    }
    printf("  56 sampled parameters: max rel err %.2e (eps %.0e, floor 0.1 max|grad| of the tensor)\n", worst, eps);
    free(logp);
    free(ent);
    free_inputs(&in);
    model_free(m);
}

// ---------------------------------------------------------------------------------------------
// 1 vs 2 OpenMP threads: forward, backward, KV decode (a batch big enough to go parallel)

static void run_threads_case(Model *m, const ObjInputs *in, int nthreads, float *logits, float *grads, float *dec) {
    omp_set_num_threads(nthreads);
    size_t N = (size_t)in->B * in->T, V = m->cfg.vocab_size;
    float *logp = xmalloc(N * sizeof(float)), *ent = xmalloc(N * sizeof(float));
    objective(m, in, 1, logp, ent);
    memcpy(logits, m->logits, N * V * sizeof(float));
    memcpy(grads, m->grads, m->n_params * sizeof(float));
    // decode: prefill every row's first 4 tokens, then 8 steps for all rows
    KVCache *kv = kvcache_create(&m->cfg, in->B, 16);
    int *rows = xmalloc(in->B * sizeof(int)), *lens = xmalloc(in->B * sizeof(int));
    const int32_t **pr = xmalloc(in->B * sizeof(*pr));
    int32_t *tok = xmalloc(in->B * sizeof(int32_t));
    for (int b = 0; b < in->B; b++) { rows[b] = b; lens[b] = 4; pr[b] = in->tokens + (size_t)b * in->T + in->T - 12; }
    model_prefill(m, kv, in->B, rows, pr, lens, dec);
    for (int s = 0; s < 8; s++) {
        for (int b = 0; b < in->B; b++) tok[b] = in->tokens[(size_t)b * in->T + in->T - 8 + s];
        model_decode(m, kv, in->B, rows, tok, dec + (size_t)(s + 1) * in->B * V);
    }
    kvcache_free(kv);
    free(rows); free(lens); free(pr); free(tok); free(logp); free(ent);
    omp_set_num_threads(omp_get_num_procs());
}

TEST(threads_1_vs_2) {
    Model *m = stories260k();
    CHECK(m != NULL, "stories260K");
    if (!m) return;
    int B = 8, T = 64;
    int left[8] = {0, 5, 9, 0, 17, 3, 0, 30}, len[8] = {64, 40, 55, 20, 47, 61, 33, 34};
    ObjInputs in;
    random_inputs(&in, B, T, m->cfg.vocab_size, m->cfg.dim, left, len);
    for (size_t n = 0; n < (size_t)B * T; n++) if (in.tokens[n] < 0) in.tokens[n] = 1;  // decode reads the tail
    for (int b = 0; b < B; b++) for (int t = T - 12; t < T; t++) in.tokens[b * T + t] = 1 + rand_int(500);
    size_t NV = (size_t)B * T * m->cfg.vocab_size, DV = (size_t)9 * B * m->cfg.vocab_size;
    float *l1 = xmalloc(NV * 4), *l2 = xmalloc(NV * 4), *g1 = xmalloc(m->n_params * 4), *g2 = xmalloc(m->n_params * 4);
    float *d1 = xmalloc(DV * 4), *d2 = xmalloc(DV * 4);
    run_threads_case(m, &in, 1, l1, g1, d1);
    run_threads_case(m, &in, 2, l2, g2, d2);
    double el = 0, eg = 0, ed = 0, gmax = max_abs(g1, m->n_params);
    for (size_t i = 0; i < NV; i++) el = fmax(el, fabs(l1[i] - l2[i]));
    for (size_t i = 0; i < m->n_params; i++) eg = fmax(eg, fabs(g1[i] - g2[i]));
    for (size_t i = 0; i < DV; i++) ed = fmax(ed, fabs(d1[i] - d2[i]));
    printf("  1 vs 2 threads (B=8, T=64): max |dlogits| %.3g, max |dgrad| %.3g (max |grad| %.3g), max |ddecode logits| %.3g%s\n",
           el, eg, gmax, ed, el == 0 && eg == 0 && ed == 0 ? " (bit-identical)" : "");
    CHECK(el <= 1e-6 && ed <= 1e-6, "logits differ across thread counts: %g %g", el, ed);
    CHECK(eg <= 1e-6 * gmax, "gradients differ across thread counts: %g", eg);
    free(l1); free(l2); free(g1); free(g2); free(d1); free(d2);
    free_inputs(&in);
    model_free(m);
}

// ---------------------------------------------------------------------------------------------
// gradients as sums of per-sequence terms (model.h): the data-parallel guarantee

// rows [b0, b1) of in, each cut to its own valid range and left-aligned: (b1 - b0, T')
static void rows_inputs(const ObjInputs *in, int b0, int b1, const int *left, const int *len, int C, ObjInputs *out) {
    int B = b1 - b0, T = 0;
    for (int b = b0; b < b1; b++) T = len[b] > T ? len[b] : T;
    int l2[8], n2[8];
    for (int b = 0; b < B; b++) { l2[b] = 0; n2[b] = len[b0 + b]; }
    random_inputs(out, B, T, 1, C, l2, n2);   // shapes and masks; the values are copied below
    for (int b = 0; b < B; b++)
        for (int t = 0; t < len[b0 + b]; t++) {
            size_t src = (size_t)(b0 + b) * in->T + left[b0 + b] + t, dst = (size_t)b * T + t;
            out->tokens[dst] = in->tokens[src];
            out->targets[dst] = in->targets[src];
            out->w[dst] = in->w[src];
            memcpy(out->u + dst * C, in->u + src * C, C * sizeof(float));
        }
}

// grad_sum of the batch vs the double sum of the grad_sums of its parts (groups of rows, each
// part run as its own batch without the others' padding): the largest difference relative to
// max |grad|, and how many fp32-rounded gradients differ
static void part_sums_case(Model *m, const char *name, const ObjInputs *in, const int *left, const int *len,
                           const int *cuts, int ncuts) {
    size_t P = m->n_params;
    float *lp = xmalloc((size_t)in->B * in->T * sizeof(float)), *en = xmalloc((size_t)in->B * in->T * sizeof(float));
    objective(m, in, 1, lp, en);
    double *whole = xmalloc(P * sizeof(double)), *sum = xcalloc(P, sizeof(double));
    memcpy(whole, m->grad_sum, P * sizeof(double));
    for (int c = 0; c + 1 < ncuts; c++) {
        ObjInputs part;
        rows_inputs(in, cuts[c], cuts[c + 1], left, len, m->cfg.dim, &part);
        float *plp = xmalloc((size_t)part.B * part.T * sizeof(float)), *pen = xmalloc((size_t)part.B * part.T * sizeof(float));
        objective(m, &part, 1, plp, pen);
        for (size_t i = 0; i < P; i++) sum[i] += m->grad_sum[i];
        free(plp); free(pen);
        free_inputs(&part);
    }
    double gmax = 0, dmax = 0;
    size_t fdiff = 0;
    for (size_t i = 0; i < P; i++) {
        gmax = fmax(gmax, fabs(whole[i]));
        dmax = fmax(dmax, fabs(whole[i] - sum[i]));
        fdiff += (float)whole[i] != (float)sum[i];
    }
    printf("  %s, %d parts: max |batch - sum of parts| = %.3g of max |grad| %.3g; %zu of %zu fp32 gradients differ\n",
           name, ncuts - 1, dmax, gmax, fdiff, P);
    CHECK(dmax <= 1e-13 * gmax, "%s: the batch's gradient is not the sum of its parts' (%g)", name, dmax / gmax);
    CHECK(fdiff <= P / 100000, "%s: %zu fp32 gradients differ", name, fdiff);
    free(whole); free(sum); free(lp); free(en);
}

TEST(gradient_is_sum_of_sequences) {
    int B = 5, T = 40;
    int left[5] = {0, 7, 3, 12, 0}, len[5] = {40, 21, 30, 9, 33};
    int singles[6] = {0, 1, 2, 3, 4, 5}, ranks2[3] = {0, 2, 5}, ranks3[4] = {0, 1, 3, 5};
    Model *models[2] = {stories260k(), tiny_model(0, 1, 11)};
    const char *names[2] = {"stories260K", "tiny untied+bias"};
    CHECK(models[0] != NULL, "stories260K not found");
    for (int k = 0; k < 2; k++) {
        Model *m = models[k];
        if (!m) continue;
        ObjInputs in;
        random_inputs(&in, B, T, m->cfg.vocab_size, m->cfg.dim, left, len);
        part_sums_case(m, names[k], &in, left, len, singles, 6);
        part_sums_case(m, names[k], &in, left, len, ranks2, 3);
        part_sums_case(m, names[k], &in, left, len, ranks3, 4);
        free_inputs(&in);
        model_free(m);
    }
}

// logits and backward at chosen rows (training: the response positions) vs the full (B,T,V)
TEST(rows_match_full) {
    Model *m = tiny_model(0, 1, 5);
    int B = 3, T = 12, V = m->cfg.vocab_size, C = m->cfg.dim;
    int left[3] = {0, 4, 2}, len[3] = {12, 6, 9};
    ObjInputs in;
    random_inputs(&in, B, T, V, C, left, len);
    // rows: the second half of each sequence
    int rows[32], n = 0;
    for (int b = 0; b < B; b++)
        for (int t = left[b] + len[b] / 2; t < left[b] + len[b]; t++) rows[n++] = b * T + t;
    model_forward(m, in.tokens, in.mask, B, T, 1);
    float *full = xmalloc((size_t)B * T * V * sizeof(float));
    memcpy(full, m->logits, (size_t)B * T * V * sizeof(float));
    const float *lr = model_logits_rows(m, n, rows);
    int diff = 0;
    for (int i = 0; i < n; i++) diff += memcmp(lr + (size_t)i * V, full + (size_t)rows[i] * V, V * sizeof(float)) != 0;
    CHECK(diff == 0, "%d logits rows differ from the full logits", diff);
    // the same dlogits through both backwards
    float *dfull = xcalloc((size_t)B * T * V, sizeof(float)), *drows = xmalloc((size_t)n * V * sizeof(float));
    for (int i = 0; i < n; i++)
        for (int v = 0; v < V; v++) drows[(size_t)i * V + v] = dfull[(size_t)rows[i] * V + v] = (float)(rand_int(2001) - 1000) / 1000.0f;
    model_zero_grad(m);
    model_backward(m, dfull, NULL);
    float *g1 = xmalloc(m->n_params * sizeof(float));
    memcpy(g1, m->grads, m->n_params * sizeof(float));
    model_forward(m, in.tokens, in.mask, B, T, 0);
    model_zero_grad(m);
    model_backward_rows(m, n, rows, drows, NULL);
    double e = 0, gmax = max_abs(g1, m->n_params);
    for (size_t i = 0; i < m->n_params; i++) e = fmax(e, fabs(g1[i] - m->grads[i]));
    printf("  %d rows of %d: logits rows bit-identical; gradients max |diff| %.3g of max |grad| %.3g\n", n, B * T, e, gmax);
    CHECK(e <= 1e-6 * gmax, "row backward differs from the full backward by %g", e);
    free(full); free(dfull); free(drows); free(g1);
    free_inputs(&in);
    model_free(m);
}

// ---------------------------------------------------------------------------------------------
// logprob: huge logits, temperature, skipped rows, backward against a double-precision formula

TEST(logprob_stable_and_backward) {
    enum { N = 4, V = 300 };
    float z[N * V];
    for (int i = 0; i < N * V; i++) z[i] = (float)(rand_int(20001) - 10000) / 1000.0f;
    for (int j = 0; j < V; j++) z[V + j] += 1e4f;   // row 1: huge logits (no overflow)
    int32_t y[N] = {5, 17, -1, 299};               // row 2: padding target
    float temp = 0.7f, logp[N], ent[N];
    logprob_forward(z, N, V, temp, y, logp, ent);
    double worst = 0.0;
    float dl[N] = {0.3f, -1.2f, 0.7f, 0.0f}, dh[N] = {0.5f, 0.1f, -0.4f, 0.0f};  // row 3 skipped
    float dz[N * V];
    for (int i = 0; i < N * V; i++) dz[i] = 1.0f;  // backward accumulates
    logprob_backward(z, N, V, temp, y, dl, dh, dz);
    double worst_g = 0.0;
    for (int i = 0; i < N; i++) {
        const float *r = z + i * V;
        double mx = -INFINITY, s = 0.0;
        for (int j = 0; j < V; j++) mx = fmax(mx, r[j] / (double)temp);
        for (int j = 0; j < V; j++) s += exp(r[j] / (double)temp - mx);
        double lse = mx + log(s), H = 0.0;
        for (int j = 0; j < V; j++) { double lp = r[j] / (double)temp - lse; H -= exp(lp) * lp; }
        double want = y[i] >= 0 ? r[y[i]] / (double)temp - lse : 0.0;
        worst = fmax(worst, rel_err(logp[i], want, 1e-2));
        worst = fmax(worst, rel_err(ent[i], H, 1e-2));
        for (int j = 0; j < V; j++) {
            double lp = r[j] / (double)temp - lse, p = exp(lp);
            double gl = y[i] >= 0 ? dl[i] : 0.0;
            double g = 1.0 + (gl * ((j == y[i]) - p) - dh[i] * p * (lp + H)) / temp;
            worst_g = fmax(worst_g, fabs(dz[i * V + j] - g));
        }
    }
    printf("  logp/entropy vs double: max rel err %.2e; backward max abs err %.2e (logp[1] %.6f with logits ~1e4)\n",
           worst, worst_g, logp[1]);
    CHECK(worst < 1e-5, "logprob forward rel err %g", worst);
    CHECK(worst_g < 1e-5, "logprob backward abs err %g", worst_g);
    CHECK(logp[2] == 0.0f, "padding target gives logp 0 (got %g)", logp[2]);
}

// ---------------------------------------------------------------------------------------------
// the GEMM: each output row is bit-identical whatever the batch around it, for every kernel

TEST(matmul_batch_invariant) {
    const char *isas[3] = {"avx512", "avx2", "generic"};
    int shapes[4][2] = {{8, 5}, {64, 172}, {300, 33}, {1100, 40}};  // (K, OC): tails, K > KC
    const char *orig = matmul_isa();
    for (int ii = 0; ii < 3; ii++) {
        if (matmul_force_isa(isas[ii])) { printf("  %s: not on this CPU, skipped\n", isas[ii]); continue; }
        int diffs = 0;
        double maxerr = 0.0;
        for (int si = 0; si < 4; si++) {
            int K = shapes[si][0], OC = shapes[si][1], N = 23;
            float *x = xmalloc((size_t)N * K * 4), *w = xmalloc((size_t)OC * K * 4), *bias = xmalloc(OC * 4);
            float *full = xmalloc((size_t)N * OC * 4), *part = xmalloc((size_t)N * OC * 4);
            for (int i = 0; i < N * K; i++) x[i] = (float)(rand_int(2001) - 1000) / 1000.0f;
            for (int i = 0; i < OC * K; i++) w[i] = (float)(rand_int(2001) - 1000) / 1000.0f;
            for (int i = 0; i < OC; i++) bias[i] = (float)(rand_int(2001) - 1000) / 1000.0f;
            matmul_nt(full, x, w, bias, N, K, OC, 0);
            // the same rows in batches of 1, 2, 3, 5, 7, 5 (every tile path and offset)
            int sizes[6] = {1, 2, 3, 5, 7, 5};
            for (int b = 0, r = 0; b < 6; r += sizes[b], b++)
                matmul_nt(part + (size_t)r * OC, x + (size_t)r * K, w, bias, sizes[b], K, OC, 0);
            for (int i = 0; i < N * OC; i++) diffs += full[i] != part[i];
            // against a double-precision product
            for (int r = 0; r < N; r++)
                for (int c = 0; c < OC; c++) {
                    double d = bias[c];
                    for (int k = 0; k < K; k++) d += (double)x[(size_t)r * K + k] * w[(size_t)c * K + k];
                    maxerr = fmax(maxerr, fabs(full[(size_t)r * OC + c] - d) / (1.0 + sqrt((double)K)));
                }
            // rows through the serial entry (attention scores use it), against the threaded one
            matmul_nt(full, x, w, NULL, N, K, OC, 0);
            matmul_nt_serial(part, OC, x + 5 * K, K, w, K, 1, K, OC);
            matmul_nt_serial(part + OC, OC, x + 6 * K, K, w, K, 6, K, OC);
            for (int c = 0; c < 7 * OC; c++) diffs += part[c] != full[5 * OC + c];
            free(x); free(w); free(bias); free(full); free(part);
        }
        printf("  %-7s: rows batched 23 vs 1..7 at a time: %d differing floats; error vs double %.2e\n",
               isas[ii], diffs, maxerr);
        CHECK(diffs == 0, "%s: %d outputs change with the batch", isas[ii], diffs);
        CHECK(maxerr < 1e-5, "%s: error %g", isas[ii], maxerr);
    }
    matmul_force_isa(orig);
}

// matmul_nt_segsum: each segment's product is matmul_nt's on that segment alone, wherever it
// starts, summed in double in segment order (every kernel this CPU has)
TEST(matmul_segsum) {
    const char *isas[3] = {"avx512", "avx2", "generic"}, *orig = matmul_isa();
    int N = 23, OC = 37, K = 700;
    int start[5] = {0, 5, 22, 22, 41}, len[5] = {5, 17, 0, 19, 659};   // one empty, one > KC
    float *x = xmalloc((size_t)N * K * 4), *w = xmalloc((size_t)OC * K * 4), *tmp = xmalloc((size_t)N * OC * 4);
    double *got = xmalloc((size_t)N * OC * 8), *want = xmalloc((size_t)N * OC * 8);
    for (int i = 0; i < N * K; i++) x[i] = (float)(rand_int(2001) - 1000) / 1000.0f;
    for (int i = 0; i < OC * K; i++) w[i] = (float)(rand_int(2001) - 1000) / 1000.0f;
    for (int ii = 0; ii < 3; ii++) {
        if (matmul_force_isa(isas[ii])) continue;
        for (int i = 0; i < N * OC; i++) got[i] = want[i] = 0.5;   // accumulates onto what is there
        matmul_nt_segsum(got, OC, x, K, w, K, N, OC, start, len, 5);
        for (int sg = 0; sg < 5; sg++) {
            if (!len[sg]) continue;
            // the segment copied to the start of fresh rows: a different alignment
            float *xs = xmalloc((size_t)N * len[sg] * 4), *ws = xmalloc((size_t)OC * len[sg] * 4);
            for (int r = 0; r < N; r++) memcpy(xs + (size_t)r * len[sg], x + (size_t)r * K + start[sg], len[sg] * 4);
            for (int r = 0; r < OC; r++) memcpy(ws + (size_t)r * len[sg], w + (size_t)r * K + start[sg], len[sg] * 4);
            matmul_nt(tmp, xs, ws, NULL, N, len[sg], OC, 0);
            for (int i = 0; i < N * OC; i++) want[i] += tmp[i];
            free(xs); free(ws);
        }
        int diffs = 0;
        for (int i = 0; i < N * OC; i++) diffs += got[i] != want[i];
        printf("  %-7s: segment sums vs each segment alone: %d differing doubles\n", isas[ii], diffs);
        CHECK(diffs == 0, "%s: %d segment sums differ", isas[ii], diffs);
    }
    matmul_force_isa(orig);
    free(x); free(w); free(tmp); free(got); free(want);
}

int main(void) {
    RUN(matmul_batch_invariant);
    RUN(matmul_segsum);
    RUN(invariants_stories260k);
    RUN(invariants_tiny_gqa_bias);
    RUN(parity_stories260k);
    RUN(parity_tiny_tied_gqa_bias);
    RUN(parity_tiny_untied_gqa_bias);
    RUN(parity_lora_tiny);
    RUN(finite_differences_tiny);
    RUN(threads_1_vs_2);
    RUN(gradient_is_sum_of_sequences);
    RUN(rows_match_full);
    RUN(logprob_stable_and_backward);
    return test_summary();
}
