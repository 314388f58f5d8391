// test_model.c — the CPU engine: reference parity against PyTorch fixtures (tests/gen/
// gen_model_ref.py), finite differences, and invariants (padding, KV cache, threads).
//
// Tolerances (relative error |a-b| / max(|b|, floor)):
//   logits, log-probs, entropy, objective: < 1e-5, floor 1e-2 (log-probs and logits are O(1..10))
//   parameter gradients: < 1e-4, floor = 1e-3 * max|b| over the tensor (gradients of a tensor
//     span many decades; an fp32 product sum has absolute error ~1e-7 of its largest terms)
//   weights after 3 AdamW steps: < 1e-5, floor 1e-2
#include "test.h"

#include "adamw.h"    // AdamW, grad_clip
#include "common.h"   // xmalloc, safe_data_dir
#include "logprob.h"  // logprob_forward/backward
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
    double e = compare("logits", a, b, k, 1e-2, 1);
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
        double fl = 1e-3 * max_abs(ref_g + off, sg.size[i]);
        e = compare(label, our_g + off, ref_g + off, sg.size[i], fl > 0 ? fl : 1e-12, i == 2);
        worst = fmax(worst, e);
        CHECK(e < 1e-4, "%s rel err %g", label, e);
        off += sg.size[i];
    }
    CHECK(off == n, "gradient fixture has %zu floats, expected %zu", n, off);
    printf("  all gradients: max rel err %.2e (floor 1e-3 x max|grad| per tensor)\n", worst);

    // 3 AdamW steps with clipping
    AdamWConfig oc = adamw_defaults();
    oc.lr = hy[4];
    oc.weight_decay = hy[5];
    AdamW *opt = adamw_create(m->n_params, oc);
    float *ref_norms = fix_get(&fx, "grad_norms", NULL);
    int steps = (int)hy[7], stride = (int)hy[8];
    for (int s = 0; s < steps; s++) {
        objective(m, &in, 1, logp, ent);
        double norm = grad_clip(m->grads, m->n_params, hy[6]);
        printf("  AdamW step %d: grad norm %.6f (ref %.6f)\n", s + 1, norm, ref_norms[s]);
        CHECK(rel_err(norm, ref_norms[s], 1e-2) < 1e-4, "grad norm step %d: %g vs %g", s + 1, norm, ref_norms[s]);
        adamw_step(opt, m->params, m->grads);
    }
    float *ref_w = fix_get(&fx, "adamw", &n);
    flat_in_fixture_order(m, &m->w, m->params, llama2c, our_g);
    float *sampled = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) sampled[i] = our_g[i * stride];
    e = compare("weights after AdamW", sampled, ref_w, n, 1e-2, 1);
    free(sampled);
    CHECK(e < 1e-5, "AdamW weights rel err %g", e);

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

int main(void) {
    RUN(invariants_stories260k);
    RUN(invariants_tiny_gqa_bias);
    RUN(parity_stories260k);
    RUN(parity_tiny_tied_gqa_bias);
    RUN(parity_tiny_untied_gqa_bias);
    return test_summary();
}
