// test_lora.c — LoRA adapters (lib/lora.c, lib/lora_peft.c): gradients, merging, PEFT files.
//
// The adapter gradients are checked against the chain rule through the full model's weight
// gradient, which test_model.c checks against PyTorch: for W' = W + s B A,
//     dL/dA = s B^T dL/dW'      dL/dB = s dL/dW' A^T
// computed here in double from the full backward of the merged model (tolerance 1e-5 of the
// largest gradient: two fp32 backward passes of different association).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "common.h"
#include "lora.h"
#include "model.h"
#include "test.h"

static char tmpdir[256];

static Model *tiny_model(uint64_t seed) {
    ModelConfig cfg = {.dim = 32, .hidden_dim = 48, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                       .vocab_size = 64, .max_seq_len = 64, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
                       .qkv_bias = 1, .tied = 0};
    Model *m = model_create(&cfg);
    model_init_random(m, seed, 0.3f);
    return m;
}

static uint64_t rs = 777;
static double urand(void) {   // [0, 1)
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rs >> 11) * 0x1.0p-53;
}

// A (B, T) batch: row 1 left-padded by 3, row 2 right-padded to 7 tokens; dlogits random at
// the valid positions.
typedef struct {
    int B, T;
    int32_t *tokens;
    uint8_t *mask;
    float *dlogits;
} Batch;

static Batch make_batch(int V) {
    Batch b = {.B = 3, .T = 12};
    size_t N = (size_t)b.B * b.T;
    b.tokens = xmalloc(N * sizeof(int32_t));
    b.mask = xmalloc(N);
    b.dlogits = xcalloc(N * V, sizeof(float));
    for (int r = 0; r < b.B; r++)
        for (int t = 0; t < b.T; t++) {
            size_t i = (size_t)r * b.T + t;
            int valid = !(r == 1 && t < 3) && !(r == 2 && t >= 7);
            b.mask[i] = (uint8_t)valid;
            b.tokens[i] = valid ? (int32_t)(urand() * V) : -1;
            if (valid)
                for (int v = 0; v < V; v++) b.dlogits[i * V + v] = (float)(urand() - 0.5);
        }
    return b;
}

static void batch_free(Batch *b) {
    free(b->tokens);
    free(b->mask);
    free(b->dlogits);
}

static void backward(Model *m, const Batch *b) {
    model_zero_grad(m);
    model_forward(m, b->tokens, b->mask, b->B, b->T, 1);
    model_backward(m, b->dlogits, NULL);
}

// A random adapter (B nonzero, so both gradients are exercised) on every projection.
static Lora *random_adapter(const Model *m, int r, float alpha, unsigned targets) {
    LoraConfig c = {.r = r, .alpha = alpha, .targets = targets};
    Lora *lo = lora_create(&m->cfg, &c);
    for (size_t i = 0; i < lo->n_params; i++) lo->params[i] = (float)(0.4 * (urand() - 0.5));
    return lo;
}

static float *grad_matrix(Model *m, int t) {
    float *g[LORA_NTARGETS] = {m->g.wq, m->g.wk, m->g.wv, m->g.wo, m->g.w1, m->g.w3, m->g.w2};
    return g[t];
}

TEST(gradients_follow_the_chain_rule) {
    Model *m = tiny_model(3);
    Batch b = make_batch(m->cfg.vocab_size);
    Lora *lo = random_adapter(m, 3, 6.0f, (1u << LORA_NTARGETS) - 1);
    lora_attach(m, lo);
    backward(m, &b);
    CHECK(m->grads == NULL && m->grad_sum == NULL, "the frozen base has gradient buffers");
    Model *full = model_clone(m);   // the merged weights, every parameter trainable
    backward(full, &b);
    int r = lo->cfg.r;
    for (int t = 0; t < LORA_NTARGETS; t++) {
        int in = lo->in[t], out = lo->out[t];
        double gmax = 0, dmax = 0;
        for (int l = 0; l < lo->L; l++) {
            const float *dW = grad_matrix(full, t) + (size_t)l * out * in;
            const float *A = lo->A[t] + (size_t)l * r * in, *Bm = lo->B[t] + (size_t)l * out * r;
            const float *gA = lo->grads + (A - lo->params), *gB = lo->grads + (Bm - lo->params);
            for (int k = 0; k < r; k++)
                for (int j = 0; j < in; j++) {   // dA[k][j] = s sum_i B[i][k] dW[i][j]
                    double e = 0;
                    for (int i = 0; i < out; i++) e += (double)Bm[(size_t)i * r + k] * dW[(size_t)i * in + j];
                    e *= lo->scale;
                    gmax = fmax(gmax, fabs(e));
                    dmax = fmax(dmax, fabs(e - gA[(size_t)k * in + j]));
                }
            for (int i = 0; i < out; i++)
                for (int k = 0; k < r; k++) {   // dB[i][k] = s sum_j dW[i][j] A[k][j]
                    double e = 0;
                    for (int j = 0; j < in; j++) e += (double)dW[(size_t)i * in + j] * A[(size_t)k * in + j];
                    e *= lo->scale;
                    gmax = fmax(gmax, fabs(e));
                    dmax = fmax(dmax, fabs(e - gB[(size_t)i * r + k]));
                }
        }
        printf("  %-9s max |adapter grad - chain rule| %.3g of max %.3g\n", lora_target_names[t], dmax, gmax);
        CHECK(gmax > 0 && dmax <= 1e-5 * gmax, "%s: %.3g relative", lora_target_names[t], dmax / gmax);
    }
    model_free(full);
    model_free(m);
    batch_free(&b);
}

TEST(new_adapter_is_the_base) {
    Model *m = tiny_model(4), *base = model_clone(m);
    LoraConfig c = {.r = 4, .alpha = 8, .targets = (1u << LORA_NTARGETS) - 1};
    Lora *lo = lora_create(&m->cfg, &c);
    lora_init(lo, 1);
    double amax = 0;
    for (int t = 0; t < LORA_NTARGETS; t++)
        for (size_t i = 0; i < (size_t)lo->L * c.r * lo->in[t]; i++) amax = fmax(amax, fabs(lo->A[t][i]));
    CHECK(amax > 0 && amax <= 1.0 / sqrt(32.0) + 1e-7, "A is not U(-1/sqrt(in), 1/sqrt(in)): max %g", amax);
    lora_attach(m, lo);
    CHECK(!memcmp(m->params, base->params, m->n_params * sizeof(float)), "B = 0 but the merged weights changed");
    Model *again = tiny_model(4);
    Lora *lo2 = lora_create(&again->cfg, &c);
    lora_init(lo2, 1);
    CHECK(!memcmp(lo->params, lo2->params, lo->n_params * sizeof(float)), "the same seed gave another adapter");
    model_free(again);
    lora_free(lo2);
    model_free(base);
    model_free(m);
}

// The batch's adapter gradient is the double sum of its sequences' (data parallel stays exact)
TEST(gradient_is_sum_of_sequences) {
    Model *m = tiny_model(5);
    Batch b = make_batch(m->cfg.vocab_size);
    lora_attach(m, random_adapter(m, 2, 4.0f, 1u << LORA_Q | 1u << LORA_O | 1u << LORA_DOWN));
    Lora *lo = m->lora;
    backward(m, &b);
    size_t P = lo->n_params;
    double *whole = xmalloc(P * sizeof(double)), *sum = xcalloc(P, sizeof(double));
    memcpy(whole, lo->grad_sum, P * sizeof(double));
    int V = m->cfg.vocab_size;
    for (int r = 0; r < b.B; r++) {
        Batch one = {.B = 1, .T = b.T, .tokens = b.tokens + (size_t)r * b.T, .mask = b.mask + (size_t)r * b.T,
                     .dlogits = b.dlogits + (size_t)r * b.T * V};
        backward(m, &one);
        for (size_t i = 0; i < P; i++) sum[i] += lo->grad_sum[i];
    }
    double gmax = 0, dmax = 0;
    for (size_t i = 0; i < P; i++) {
        gmax = fmax(gmax, fabs(whole[i]));
        dmax = fmax(dmax, fabs(whole[i] - sum[i]));
    }
    printf("  max |batch - sum of sequences| = %.3g of %.3g\n", dmax, gmax);
    CHECK(gmax > 0 && dmax <= 1e-13 * gmax, "%.3g relative", dmax / gmax);
    free(whole);
    free(sum);
    batch_free(&b);
    model_free(m);
}

static char *tpath(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

TEST(peft_directory_round_trip) {
    Model *m = tiny_model(6);
    checkpoint_save(tpath("base"), m, NULL);
    lora_attach(m, random_adapter(m, 3, 16.0f, 1u << LORA_K | 1u << LORA_V | 1u << LORA_GATE | 1u << LORA_UP));
    m->lora->base_path = xstrdup(tpath("base"));
    checkpoint_save(tpath("adapter"), m, NULL);
    struct stat st;
    CHECK(stat(tpath("adapter/config.json"), &st) != 0 && stat(tpath("adapter/model.safetensors"), &st) != 0,
          "an adapter directory holds the base's files");
    LoraConfig c = lora_read_config(tpath("adapter"), m->cfg.n_layers);
    CHECK(c.r == 3 && c.alpha == 16.0f && !c.rslora && c.targets == m->lora->cfg.targets, "config read back: r %d alpha %g",
          c.r, c.alpha);
    Model *back = lora_load_model(tpath("adapter"));
    CHECK(back->lora && !memcmp(back->lora->params, m->lora->params, m->lora->n_params * sizeof(float)),
          "adapter weights differ after the round trip");
    CHECK(!memcmp(back->params, m->params, m->n_params * sizeof(float)), "merged weights differ after the round trip");
    Model *plain = model_load(tpath("adapter"));   // what the other tools see: merged, no adapter
    CHECK(!plain->lora && !memcmp(plain->params, m->params, m->n_params * sizeof(float)),
          "model_load of an adapter is not the merged model");
    // an adapter saved from a loaded one names the same base
    checkpoint_save(tpath("adapter2"), back, NULL);
    char *b1 = lora_base_path(tpath("adapter")), *b2 = lora_base_path(tpath("adapter2"));
    CHECK(!strcmp(b1, b2), "base %s vs %s", b1, b2);
    free(b1);
    free(b2);
    model_free(plain);
    model_free(back);
    model_free(m);
}

// ---- bad adapter directories: exit 2 naming the file and key ----

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void child_load(const void *dir) { model_free(model_load(dir)); }

static const char *adapter_copy(const char *name, const char *config);

// A copy of the adapter with config (NULL: the copy as it is, made by the caller) must not load
static void expect_refused(const char *name, const char *config, const char *needle) {
    if (config && !adapter_copy(name, config)) { CHECK(0, "cannot copy the adapter"); return; }
    char err[2048];
    int status = test_run_child((void (*)(const void *))child_load, tpath(name), err, sizeof err);
    CHECK(status == 2 && strstr(err, needle), "%s: status %d, message: %s", name, status, err);
}

// Copy the adapter to `name` with config (NULL: as it is); the copy's path.
static const char *adapter_copy(const char *name, const char *config) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s %s", tpath(name), tpath("adapter"), tpath(name));
    if (system(cmd) != 0) return NULL;
    char cfgpath[600];
    snprintf(cfgpath, sizeof cfgpath, "%s/adapter_config.json", tpath(name));
    if (config) write_file(cfgpath, config);
    return tpath(name);
}

// PEFT's module matching: names, dotted suffixes and full paths of every layer are accepted
TEST(target_module_paths_accepted) {
    char cfg[2000];
    snprintf(cfg, sizeof cfg, "{\"peft_type\": \"LORA\", \"r\": 3, \"lora_alpha\": 16, \"base_model_name_or_path\": "
             "\"%s\", \"target_modules\": [\"model.layers.0.self_attn.k_proj\", \"model.layers.1.self_attn.k_proj\", "
             "\"self_attn.v_proj\", \"mlp.gate_proj\", \"up_proj\"], \"use_rslora\": false}", tpath("base"));
    const char *dir = adapter_copy("paths", cfg);
    LoraConfig c = lora_read_config(dir, 2);
    CHECK(c.targets == (1u << LORA_K | 1u << LORA_V | 1u << LORA_GATE | 1u << LORA_UP), "targets %s",
          lora_targets_string(c.targets));
    Model *a = model_load(dir), *b = model_load(tpath("adapter"));
    CHECK(!memcmp(a->params, b->params, a->n_params * sizeof(float)), "the same adapter named by paths differs");
    model_free(a);
    model_free(b);
}

TEST(bad_adapters_refused) {
    char base[600], cfg[2000];
    snprintf(base, sizeof base, "%s", tpath("base"));
    const char *fmt = "{\"peft_type\": \"LORA\", \"r\": 3, \"lora_alpha\": 16, \"base_model_name_or_path\": \"%s\", "
                      "\"target_modules\": [\"k_proj\", \"v_proj\", \"gate_proj\", \"up_proj\"]%s}";
    snprintf(cfg, sizeof cfg, fmt, base, ", \"use_dora\": true");
    expect_refused("dora", cfg, "\"use_dora\" is set");
    snprintf(cfg, sizeof cfg, fmt, base, ", \"bias\": \"all\"");
    expect_refused("bias", cfg, "\"bias\" is set");
    snprintf(cfg, sizeof cfg, fmt, base, ", \"layers_to_transform\": [0]");
    expect_refused("layers", cfg, "adapting only some layers");
    snprintf(cfg, sizeof cfg, fmt, "/nonexistent/base", "");
    expect_refused("nobase", cfg, "is not there");
    snprintf(cfg, sizeof cfg, "{\"r\": 3, \"base_model_name_or_path\": \"%s\", \"target_modules\": \".*proj\"}", base);
    expect_refused("regex", cfg, "a regular expression, which is not supported");
    // the config lists a module whose tensors the file lacks
    snprintf(cfg, sizeof cfg, "{\"r\": 3, \"lora_alpha\": 16, \"base_model_name_or_path\": \"%s\", "
             "\"target_modules\": [\"k_proj\", \"v_proj\", \"gate_proj\", \"up_proj\", \"q_proj\"]}", base);
    expect_refused("missing_tensor", cfg, "no tensor base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    // and the file holds tensors the config does not list
    snprintf(cfg, sizeof cfg, "{\"r\": 3, \"lora_alpha\": 16, \"base_model_name_or_path\": \"%s\", "
             "\"target_modules\": [\"k_proj\", \"v_proj\", \"gate_proj\"]}", base);
    expect_refused("extra_tensor", cfg, "is not one this engine applies");
    const char *fmt2 = "{\"r\": 3, \"lora_alpha\": %s, \"base_model_name_or_path\": \"%s\", \"target_modules\": %s%s}";
    const char *four = "[\"k_proj\", \"v_proj\", \"gate_proj\", \"up_proj\"]";
    snprintf(cfg, sizeof cfg, fmt2, "16", base, "[\"model.layers.0.self_attn.k_proj\", \"v_proj\", \"gate_proj\", \"up_proj\"]", "");
    expect_refused("some_layers", cfg, "adapts k_proj in some layers only");
    snprintf(cfg, sizeof cfg, fmt2, "16", base, "[\"k\", \"v\", \"gate\", \"up\"]", "");
    expect_refused("short_names", cfg, "\"k\": not a projection of this model");
    snprintf(cfg, sizeof cfg, fmt2, "16", base, "\"k_proj\"", "");
    expect_refused("one_name_string", cfg, "a regular expression");
    snprintf(cfg, sizeof cfg, fmt2, "16", base, four, ", \"use_rslora\": \"true\"");
    expect_refused("rslora_string", cfg, "\"use_rslora\" must be true or false");
    snprintf(cfg, sizeof cfg, fmt2, "16", base, four, ", \"exclude_modules\": [\"model.layers.0.self_attn.k_proj\"]");
    expect_refused("exclude_modules", cfg, "\"exclude_modules\" is set");
    snprintf(cfg, sizeof cfg, fmt2, "16", base, four, ", \"layer_replication\": [[0, 1]]");
    expect_refused("layer_replication", cfg, "\"layer_replication\" is set");
    snprintf(cfg, sizeof cfg, fmt2, "16", base, four, ", \"init_lora_weights\": \"pissa\"");
    expect_refused("pissa", cfg, "\"init_lora_weights\" must be true, false or \"gaussian\"");
    snprintf(cfg, sizeof cfg, fmt2, "1e39", base, four, "");
    expect_refused("alpha_overflows", cfg, "\"lora_alpha\" must be a number > 0 within float range");
    // an adapter beside a model's config.json: ambiguous
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cp %s/config.json %s/", tpath("base"), adapter_copy("both", NULL));
    CHECK(system(cmd) == 0, "copy");
    expect_refused("both", NULL, "which one is meant is ambiguous");
    snprintf(cfg, sizeof cfg, "{\"r\": 2, \"lora_alpha\": 16, \"base_model_name_or_path\": \"%s\", "
             "\"target_modules\": [\"k_proj\", \"v_proj\", \"gate_proj\", \"up_proj\"]}", base);
    expect_refused("wrong_rank", cfg, "lora_A.weight");
}

TEST(targets_parse) {
    unsigned t;
    char why[256];
    CHECK(lora_parse_targets("q_proj,v_proj", &t, why, sizeof why) == 0 && t == (1u << LORA_Q | 1u << LORA_V), "q,v");
    CHECK(lora_parse_targets("gate,up,down", &t, why, sizeof why) == 0 &&
              t == (1u << LORA_GATE | 1u << LORA_UP | 1u << LORA_DOWN), "short names");
    CHECK(lora_parse_targets("all", &t, why, sizeof why) == 0 && t == (1u << LORA_NTARGETS) - 1, "all");
    CHECK(lora_parse_targets("lm_head", &t, why, sizeof why) != 0 && strstr(why, "unknown LoRA target 'lm_head'"),
          "lm_head refused: %s", why);
    CHECK(lora_parse_targets(",", &t, why, sizeof why) != 0, "empty list refused");
    CHECK(!strcmp(lora_targets_string(1u << LORA_O | 1u << LORA_DOWN), "o_proj,down_proj"), "%s",
          lora_targets_string(1u << LORA_O | 1u << LORA_DOWN));
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/safe-test-lora.XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    RUN(targets_parse);
    RUN(gradients_follow_the_chain_rule);
    RUN(new_adapter_is_the_base);
    RUN(gradient_is_sum_of_sequences);
    RUN(peft_directory_round_trip);
    RUN(target_module_paths_accepted);
    RUN(bad_adapters_refused);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) return 1;
    return test_summary();
}
