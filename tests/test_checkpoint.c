// test_checkpoint.c — llama2.c loading (RoPE permutation checked against a llama2.c-style
// forward on the raw file), safetensors, checkpoint directories: save -> load -> identical,
// atomic replace, optimizer / trainer state / tensor groups, and exit 2 on bad input.
#include "test.h"

#include "checkpoint.h"   // checkpoint_save/load, model_load, model_tokenizer_path
#include "common.h"       // safe_data_dir, xmalloc
#include "llama2c.h"      // llama2c_load, llama2c_rope_perm
#include "model.h"        // model_forward
#include "safetensors.h"  // safetensors_open/read/write

#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[256];
static char model_bin[512], tok_bin[512];

static char *tpath(const char *name) {
    static char buf[4][600];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) { *n = 0; return NULL; }
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = xmalloc(*n + 1);
    if (fread(b, 1, *n, f) != *n) *n = 0;
    fclose(f);
    return b;
}

static void spit(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
}

static int same_file(const char *a, const char *b) {
    size_t na, nb;
    unsigned char *x = slurp(a, &na), *y = slurp(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

static void child_model_load(const void *path) { model_free(model_load(path)); }
static void child_tokenizer_path(const void *path) { free(model_tokenizer_path(path)); }
static void child_st_open(const void *path) { safetensors_close(safetensors_open(path)); }

// ----------------------------------------------------------------------------
// a llama2.c-style forward on the raw file: interleaved-pair RoPE, one token at a time

typedef struct {
    int dim, hidden, L, H, KV, V, T;
    float *tok, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final, *wcls;
} RawModel;

static void raw_matvec(float *out, const float *x, const float *w, int n, int d) {
    for (int i = 0; i < d; i++) {
        double s = 0;
        for (int j = 0; j < n; j++) s += (double)w[(size_t)i * n + j] * x[j];
        out[i] = (float)s;
    }
}

static void raw_rmsnorm(float *o, const float *x, const float *w, int n) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / n + 1e-5));
    for (int i = 0; i < n; i++) o[i] = w[i] * (x[i] * r);
}

// logits (T, V) for tokens[0..T)
static void raw_forward(const RawModel *m, const int32_t *tokens, int T, float *logits) {
    int C = m->dim, hs = C / m->H, kvd = m->KV * hs, F = m->hidden, grp = m->H / m->KV;
    float *x = xmalloc(C * sizeof(float)), *xb = xmalloc(C * sizeof(float)), *q = xmalloc(C * sizeof(float));
    float *att = xmalloc(C * sizeof(float)), *h1 = xmalloc(F * sizeof(float)), *h3 = xmalloc(F * sizeof(float));
    float *kc = xmalloc((size_t)m->L * T * kvd * sizeof(float)), *vc = xmalloc((size_t)m->L * T * kvd * sizeof(float));
    float *tmp = xmalloc(C * sizeof(float));
    for (int pos = 0; pos < T; pos++) {
        memcpy(x, m->tok + (size_t)tokens[pos] * C, C * sizeof(float));
        for (int l = 0; l < m->L; l++) {
            raw_rmsnorm(xb, x, m->rms_att + l * C, C);
            float *k = kc + ((size_t)l * T + pos) * kvd, *v = vc + ((size_t)l * T + pos) * kvd;
            raw_matvec(q, xb, m->wq + (size_t)l * C * C, C, C);
            raw_matvec(k, xb, m->wk + (size_t)l * kvd * C, C, kvd);
            raw_matvec(v, xb, m->wv + (size_t)l * kvd * C, C, kvd);
            // llama2.c RoPE: pairs (i, i+1), frequency 10000^(-(i % hs)/hs)
            for (int i = 0; i < C; i += 2) {
                double freq = pow(10000.0, -(double)(i % hs) / hs), a = pos * freq;
                float cr = (float)cos(a), ci = (float)sin(a);
                float q0 = q[i], q1 = q[i + 1];
                q[i] = q0 * cr - q1 * ci; q[i + 1] = q0 * ci + q1 * cr;
                if (i < kvd) { float k0 = k[i], k1 = k[i + 1]; k[i] = k0 * cr - k1 * ci; k[i + 1] = k0 * ci + k1 * cr; }
            }
            for (int h = 0; h < m->H; h++) {
                double sc[512], mx = -1e30, sum = 0;
                for (int t = 0; t <= pos; t++) {
                    const float *kt = kc + ((size_t)l * T + t) * kvd + (h / grp) * hs;
                    double s = 0;
                    for (int i = 0; i < hs; i++) s += (double)q[h * hs + i] * kt[i];
                    sc[t] = s / sqrt((double)hs);
                    if (sc[t] > mx) mx = sc[t];
                }
                for (int t = 0; t <= pos; t++) { sc[t] = exp(sc[t] - mx); sum += sc[t]; }
                for (int i = 0; i < hs; i++) {
                    double o = 0;
                    for (int t = 0; t <= pos; t++) o += sc[t] / sum * vc[((size_t)l * T + t) * kvd + (h / grp) * hs + i];
                    att[h * hs + i] = (float)o;
                }
            }
            raw_matvec(tmp, att, m->wo + (size_t)l * C * C, C, C);
            for (int i = 0; i < C; i++) x[i] += tmp[i];
            raw_rmsnorm(xb, x, m->rms_ffn + l * C, C);
            raw_matvec(h1, xb, m->w1 + (size_t)l * F * C, C, F);
            raw_matvec(h3, xb, m->w3 + (size_t)l * F * C, C, F);
            for (int i = 0; i < F; i++) h1[i] = h1[i] / (1.0f + expf(-h1[i])) * h3[i];
            raw_matvec(tmp, h1, m->w2 + (size_t)l * C * F, F, C);
            for (int i = 0; i < C; i++) x[i] += tmp[i];
        }
        raw_rmsnorm(xb, x, m->rms_final, C);
        raw_matvec(logits + (size_t)pos * m->V, xb, m->wcls, C, m->V);
    }
    free(x); free(xb); free(q); free(att); free(h1); free(h3); free(kc); free(vc); free(tmp);
}

TEST(rope_permutation) {
    int perm[8];
    llama2c_rope_perm(8, perm);
    int want[8] = {0, 2, 4, 6, 1, 3, 5, 7};
    CHECK(memcmp(perm, want, sizeof want) == 0, "perm %d %d %d %d %d %d %d %d", perm[0], perm[1], perm[2],
          perm[3], perm[4], perm[5], perm[6], perm[7]);
}

TEST(llama2c_matches_reference_forward) {
    size_t n;
    unsigned char *raw = slurp(model_bin, &n);
    CHECK(raw != NULL, "cannot read %s", model_bin);
    if (!raw) return;
    int32_t h[7];
    memcpy(h, raw, 28);
    RawModel r = {.dim = h[0], .hidden = h[1], .L = h[2], .H = h[3], .KV = h[4], .V = abs(h[5]), .T = h[6]};
    int C = r.dim, hs = C / r.H, kvd = r.KV * hs;
    float *p = (float *)(raw + 28);
    r.tok = p; p += (size_t)r.V * C;
    r.rms_att = p; p += (size_t)r.L * C;
    r.wq = p; p += (size_t)r.L * C * C;
    r.wk = p; p += (size_t)r.L * kvd * C;
    r.wv = p; p += (size_t)r.L * kvd * C;
    r.wo = p; p += (size_t)r.L * C * C;
    r.rms_ffn = p; p += (size_t)r.L * C;
    r.w1 = p; p += (size_t)r.L * r.hidden * C;
    r.w2 = p; p += (size_t)r.L * C * r.hidden;
    r.w3 = p; p += (size_t)r.L * r.hidden * C;
    r.rms_final = p; p += C;
    r.wcls = h[5] > 0 ? r.tok : p + (size_t)r.T * hs;

    enum { T = 24 };
    int32_t tokens[T] = {1, 403, 407, 261, 378, 432, 322, 261, 370, 272, 414, 276, 356, 432, 383, 397, 396, 261, 352, 415, 271, 414, 429, 285};
    float *want = xmalloc((size_t)T * r.V * sizeof(float));
    raw_forward(&r, tokens, T, want);

    Model *m = llama2c_load(model_bin);
    CHECK(m->cfg.dim == 64 && m->cfg.n_layers == 5 && m->cfg.n_kv_heads == 4 && m->cfg.tied == 1 &&
          m->cfg.max_seq_len == 512, "config %d %d %d", m->cfg.dim, m->cfg.n_layers, m->cfg.n_kv_heads);
    uint8_t mask[T];
    memset(mask, 1, sizeof mask);
    model_forward(m, tokens, mask, 1, T, 1);
    double worst = 0;
    for (size_t i = 0; i < (size_t)T * r.V; i++) worst = fmax(worst, fabs(m->logits[i] - want[i]));
    printf("  logits[t=%d][0..3]: ours %.5f %.5f %.5f %.5f  llama2.c-style %.5f %.5f %.5f %.5f\n", T - 1,
           m->logits[(T - 1) * r.V], m->logits[(T - 1) * r.V + 1], m->logits[(T - 1) * r.V + 2], m->logits[(T - 1) * r.V + 3],
           want[(T - 1) * r.V], want[(T - 1) * r.V + 1], want[(T - 1) * r.V + 2], want[(T - 1) * r.V + 3]);
    printf("  largest |difference| over %d x %d logits: %.3g\n", T, r.V, worst);
    CHECK(worst < 1e-4, "largest difference %g", worst);
    model_free(m);
    free(want);
    free(raw);
}

static void child_llama2c(const void *path) { model_free(llama2c_load(path)); }

TEST(llama2c_bad_files) {
    size_t n;
    unsigned char *raw = slurp(model_bin, &n);
    char err[2048];
    spit(tpath("trunc.bin"), raw, n - 100);
    int st = test_run_child(child_llama2c, tpath("trunc.bin"), err, sizeof err);
    CHECK(st == 2 && strstr(err, "trunc.bin") && strstr(err, "needs"), "truncated: exit %d: %s", st, err);
    spit(tpath("tiny.bin"), raw, 10);
    st = test_run_child(child_llama2c, tpath("tiny.bin"), err, sizeof err);
    CHECK(st == 2 && strstr(err, "tiny.bin"), "tiny: exit %d: %s", st, err);
    int32_t magic[2] = {0x616b3432, 1};
    memcpy(raw, magic, 8);
    spit(tpath("v1.bin"), raw, n);
    st = test_run_child(child_llama2c, tpath("v1.bin"), err, sizeof err);
    CHECK(st == 2 && strstr(err, "version 1"), "v1 export: exit %d: %s", st, err);
    printf("  e.g. %s", err);
    free(raw);
}

// ----------------------------------------------------------------------------
// checkpoints

static int no_leftovers(void) {
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    int ok = 1;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.") || strstr(e->d_name, ".old.")) { ok = 0; printf("  leftover %s\n", e->d_name); }
    closedir(d);
    return ok;
}

TEST(save_load_identical) {
    Model *a = llama2c_load(model_bin);
    CheckpointParts parts = {.tokenizer_path = tok_bin, .bos_id = 1, .eos_id = 2};
    checkpoint_save(tpath("ck1"), a, &parts);
    CHECK(checkpoint_is_dir(tpath("ck1")), "ck1 is not a checkpoint dir");
    Model *b = model_load(tpath("ck1"));
    CHECK(memcmp(&a->cfg, &b->cfg, sizeof a->cfg) == 0, "configs differ (dim %d/%d eps %g/%g theta %g/%g tied %d/%d)",
          a->cfg.dim, b->cfg.dim, a->cfg.norm_eps, b->cfg.norm_eps, a->cfg.rope_theta, b->cfg.rope_theta, a->cfg.tied, b->cfg.tied);
    CHECK(a->n_params == b->n_params && memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0,
          "parameters differ after save/load");
    // saving the loaded model again gives byte-identical files
    checkpoint_save(tpath("ck2"), b, &parts);
    CHECK(same_file(tpath("ck1/model.safetensors"), tpath("ck2/model.safetensors")), "model.safetensors differs");
    CHECK(same_file(tpath("ck1/config.json"), tpath("ck2/config.json")), "config.json differs");
    CHECK(same_file(tpath("ck1/tokenizer.bin"), tok_bin), "tokenizer.bin is not a copy");
    char *tp = model_tokenizer_path(tpath("ck1"));
    CHECK(strcmp(tp, tpath("ck1/tokenizer.bin")) == 0, "tokenizer path %s", tp);
    free(tp);
    // the header names HF tensors with HF shapes
    SafeTensors *st = safetensors_open(tpath("ck1/model.safetensors"));
    const StEntry *e = safetensors_find(st, "model.layers.4.self_attn.k_proj.weight");
    CHECK(e && e->ndim == 2 && e->shape[0] == 32 && e->shape[1] == 64 && !strcmp(e->dtype, "F32"), "k_proj entry");
    CHECK(safetensors_find(st, "lm_head.weight") == NULL, "tied model wrote lm_head");
    CHECK(st->n == checkpoint_tensor_count(&a->cfg) && st->n == 2 + 5 * 9, "%d tensors", st->n);
    CHECK(st->data_start % 8 == 0, "data starts at %zu", st->data_start);
    const char *fmt = safetensors_meta(st, "format");
    CHECK(fmt && !strcmp(fmt, "pt"), "format metadata");
    safetensors_close(st);
    json_t *cfg = json_load_file(tpath("ck1/config.json"), 0, NULL);
    CHECK(cfg && json_real_value(json_object_get(cfg, "rms_norm_eps")) == 1e-5 &&
          !strcmp(json_string_value(json_array_get(json_object_get(cfg, "architectures"), 0)), "LlamaForCausalLM") &&
          json_integer_value(json_object_get(cfg, "eos_token_id")) == 2 && json_is_true(json_object_get(cfg, "tie_word_embeddings")),
          "config.json keys");
    json_decref(cfg);
    model_free(a);
    model_free(b);
}

TEST(replace_existing_atomically) {
    Model *a = llama2c_load(model_bin);
    checkpoint_save(tpath("ck3"), a, NULL);
    spit(tpath("ck3/stale.txt"), "x", 1);
    a->params[0] += 1.0f;
    checkpoint_save(tpath("ck3/"), a, NULL);   // trailing slash names the same directory
    Model *b = model_load(tpath("ck3"));
    CHECK(b->params[0] == a->params[0], "replacement not loaded");
    CHECK(access(tpath("ck3/stale.txt"), F_OK) != 0, "old directory contents survived");
    CHECK(no_leftovers(), "temporary directories left behind");
    model_free(a);
    model_free(b);
}

TEST(optimizer_state_groups) {
    ModelConfig c = {.dim = 16, .hidden_dim = 24, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = 40,
                     .max_seq_len = 64, .rope_theta = 1e6f, .norm_eps = 1e-6f, .qkv_bias = 1, .tied = 0};
    Model *a = model_create(&c);
    model_init_random(a, 5, 0.1f);
    AdamW *opt = adamw_create(a->n_params, adamw_defaults());
    for (size_t i = 0; i < a->n_params; i++) { opt->m[i] = (float)i * 1e-3f; opt->v[i] = (float)i * 1e-6f; }
    opt->step = 17;
    float head_w[2 * 16], head_b[2];
    for (int i = 0; i < 32; i++) head_w[i] = (float)i / 7;
    head_b[0] = -1; head_b[1] = 2;
    StTensor g[2] = {{.name = "value_head.w", .data = head_w, .ndim = 2, .shape = {2, 16}},
                     {.name = "value_head.b", .data = head_b, .ndim = 1, .shape = {2}}};
    TensorGroup groups[1] = {{.name = "value_head", .t = g, .n = 2}};
    json_t *state = json_pack("{s:i, s:{s:I, s:I}, s:s}", "step", 17, "rng", "seed", (json_int_t)1234, "counter",
                              (json_int_t)99, "stage", "safe-update");
    CheckpointParts parts = {.bos_id = -1, .eos_id = -1, .opt = opt, .trainer_state = state, .groups = groups, .n_groups = 1};
    checkpoint_save(tpath("ck4"), a, &parts);

    Model *b = model_load(tpath("ck4"));
    CHECK(b->cfg.qkv_bias == 1 && b->cfg.tied == 0 && b->cfg.rope_theta == 1e6f && b->cfg.norm_eps == 1e-6f, "qwen2 config");
    CHECK(memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0, "untied + bias parameters differ");
    AdamW *o2 = adamw_create(a->n_params, adamw_defaults());
    CHECK(checkpoint_load_optimizer(tpath("ck4"), o2) == 1, "no optimizer loaded");
    CHECK(o2->step == 17 && memcmp(o2->m, opt->m, a->n_params * 4) == 0 && memcmp(o2->v, opt->v, a->n_params * 4) == 0,
          "optimizer state differs (step %ld)", o2->step);
    CHECK(checkpoint_load_optimizer(tpath("ck1"), o2) == 0, "ck1 has no optimizer");
    json_t *s2 = checkpoint_load_trainer_state(tpath("ck4"));
    CHECK(s2 && json_equal(s2, state), "trainer_state differs");
    json_decref(s2);
    float w2[32] = {0}, b2[2] = {0};
    StTensor g2[2] = {{.name = "value_head.w", .data = w2, .ndim = 2, .shape = {2, 16}},
                      {.name = "value_head.b", .data = b2, .ndim = 1, .shape = {2}}};
    CHECK(checkpoint_load_group(tpath("ck4"), "value_head", g2, 2) == 1, "group not loaded");
    CHECK(memcmp(w2, head_w, sizeof w2) == 0 && memcmp(b2, head_b, sizeof b2) == 0, "group tensors differ");
    CHECK(checkpoint_load_group(tpath("ck4"), "missing", g2, 2) == 0, "absent group");
    json_t *cfg = json_load_file(tpath("ck4/config.json"), 0, NULL);
    CHECK(!strcmp(json_string_value(json_object_get(cfg, "model_type")), "qwen2"), "model_type");
    json_decref(cfg);
    json_decref(state);
    adamw_free(opt);
    adamw_free(o2);
    model_free(a);
    model_free(b);
}

TEST(half_precision_reads) {
    // F16 1.5, -2, 65504, 2^-24 (subnormal); BF16 1.5, -2, 3.140625
    unsigned char hdr[] = "{\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]},"
                          "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[8,14]}}";
    uint64_t hl = sizeof hdr - 1;
    uint16_t data[7] = {0x3E00, 0xC000, 0x7BFF, 0x0001, 0x3FC0, 0xC000, 0x4049};
    FILE *f = fopen(tpath("half.safetensors"), "wb");
    fwrite(&hl, 8, 1, f);
    fwrite(hdr, 1, hl, f);
    fwrite(data, 2, 7, f);
    fclose(f);
    SafeTensors *st = safetensors_open(tpath("half.safetensors"));
    float h[4], b[3];
    safetensors_read_f32(st, "h", h, -1, NULL, 4);
    safetensors_read_f32(st, "b", b, -1, NULL, 3);
    CHECK(h[0] == 1.5f && h[1] == -2.0f && h[2] == 65504.0f && h[3] == 0x1p-24f, "f16 %g %g %g %g", h[0], h[1], h[2], h[3]);
    CHECK(b[0] == 1.5f && b[1] == -2.0f && b[2] == 3.140625f, "bf16 %g %g %g", b[0], b[1], b[2]);
    safetensors_close(st);
}

TEST(corrupt_files_exit_2) {
    char err[2048];
    size_t n;
    unsigned char *good = slurp(tpath("ck1/model.safetensors"), &n);
    mkdir(tpath("bad"), 0755);
    {
        size_t cn;
        unsigned char *cfg = slurp(tpath("ck1/config.json"), &cn);
        spit(tpath("bad/config.json"), cfg, cn);
        free(cfg);
    }
    // truncated data
    spit(tpath("bad/model.safetensors"), good, n - 64);
    int st = test_run_child(child_model_load, tpath("bad"), err, sizeof err);
    CHECK(st == 2 && strstr(err, "bad/model.safetensors") && strstr(err, "truncated") && strstr(err, "lm_head") == NULL,
          "truncated: exit %d: %s", st, err);
    printf("  truncated: %s", err);
    // header length past the end
    spit(tpath("bad/model.safetensors"), good, 100);
    st = test_run_child(child_st_open, tpath("bad/model.safetensors"), err, sizeof err);
    CHECK(st == 2 && strstr(err, "header length"), "short: exit %d: %s", st, err);
    // broken JSON
    unsigned char *junk = xmalloc(n);
    memcpy(junk, good, n);
    junk[8] = '[';
    junk[9] = ']';
    junk[10] = '}';
    spit(tpath("bad/model.safetensors"), junk, n);
    st = test_run_child(child_st_open, tpath("bad/model.safetensors"), err, sizeof err);
    CHECK(st == 2 && strstr(err, "not valid JSON"), "json: exit %d: %s", st, err);
    printf("  bad JSON: %s", err);
    // a tensor missing: rename one in the header (same length)
    memcpy(junk, good, n);
    char *hit = memmem(junk, n, "model.norm.weight", 17);
    if (hit) hit[6] = 'X';
    spit(tpath("bad/model.safetensors"), junk, n);
    st = test_run_child(child_model_load, tpath("bad"), err, sizeof err);
    CHECK(st == 2 && strstr(err, "model.norm.weight") && strstr(err, "missing"), "missing tensor: exit %d: %s", st, err);
    printf("  missing: %s", err);
    // wrong shape in config.json
    spit(tpath("bad/model.safetensors"), good, n);
    json_t *cfg = json_load_file(tpath("ck1/config.json"), 0, NULL);
    json_object_set_new(cfg, "intermediate_size", json_integer(171));
    json_dump_file(cfg, tpath("bad/config.json"), 0);
    st = test_run_child(child_model_load, tpath("bad"), err, sizeof err);
    CHECK(st == 2 && strstr(err, "gate_proj") && strstr(err, "shape"), "shape: exit %d: %s", st, err);
    printf("  shape: %s", err);
    json_object_set_new(cfg, "intermediate_size", json_integer(172));
    json_object_set_new(cfg, "rope_scaling", json_pack("{s:s}", "type", "linear"));
    json_dump_file(cfg, tpath("bad/config.json"), 0);
    st = test_run_child(child_model_load, tpath("bad"), err, sizeof err);
    CHECK(st == 2 && strstr(err, "rope_scaling"), "rope_scaling: exit %d: %s", st, err);
    json_decref(cfg);
    free(junk);
    free(good);
}

TEST(tokenizer_beside_bin) {
    char *tp = model_tokenizer_path(model_bin);
    CHECK(strstr(tp, "tok512.bin") != NULL, "found %s", tp);
    free(tp);
    // a .bin with no tokenizer beside it
    mkdir(tpath("lonely"), 0755);
    size_t n;
    unsigned char *raw = slurp(model_bin, &n);
    spit(tpath("lonely/model.bin"), raw, n);
    free(raw);
    char err[1024];
    int st = test_run_child(child_tokenizer_path, tpath("lonely/model.bin"), err, sizeof err);
    CHECK(st == 2 && strstr(err, "--tokenizer"), "exit %d: %s", st, err);
}

static void rm_rf(const char *path) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) printf("  could not remove %s\n", path);
}

int main(void) {
    snprintf(model_bin, sizeof model_bin, "%s/stories260K/stories260K.bin", safe_data_dir());
    snprintf(tok_bin, sizeof tok_bin, "%s/stories260K/tok512.bin", safe_data_dir());
    snprintf(tmpdir, sizeof tmpdir, "%s/safe-ckpt.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    RUN(rope_permutation);
    RUN(llama2c_matches_reference_forward);
    RUN(llama2c_bad_files);
    RUN(save_load_identical);
    RUN(replace_existing_atomically);
    RUN(optimizer_state_groups);
    RUN(half_precision_reads);
    RUN(corrupt_files_exit_2);
    RUN(tokenizer_beside_bin);
    rm_rf(tmpdir);
    return test_summary();
}
