// test_hf.c — Hugging Face checkpoints against transformers (fixtures: tests/gen/gen_hf_ref.py).
//
//   * tiny LlamaForCausalLM / Qwen2ForCausalLM (GQA, q/k/v bias, tied and untied; stored F32,
//     F16 sharded with an index, BF16): logits and per-token log-probs of a left/right-padded
//     batch against transformers in float64. Tolerance: relative error < 1e-5 with floor 1
//     (|ours - ref| / max(|ref|, 1): logits and log-probs are O(1)); the fixture also records
//     transformers' own fp32 error against float64 (printed alongside).
//   * reward models (LlamaForSequenceClassification / Qwen2ForSequenceClassification, num_labels
//     1): scores of a right-padded batch, plus --rm-max-length truncation on either side.
//   * round trip: load -> checkpoint_save -> load is bit-identical (weights and config), and the
//     tokenizer files travel. The transformers side of the round trip (transformers loads our
//     output and gives identical logits) ran when the fixtures were generated: its result is
//     tests/fixtures/hf/roundtrip.json, checked here.
#include "test.h"
#include "fixture.h"        // fix_open, fix_get, compare_f

#include "checkpoint.h"     // model_load, checkpoint_save, checkpoint_read_config, model_tokenizer_path
#include "common.h"         // xmalloc
#include "logprob.h"        // logprob_forward: per-token log-probs
#include "model.h"          // model_forward
#include "reward_model.h"   // reward_model_load, reward_model_score

#include <jansson.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define HF "tests/fixtures/hf"
#define TOL 1e-5
#define FLOOR 1.0

static char tmpdir[256];

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

// ----------------------------------------------------------------------------
// causal LMs: logits and log-probs of a padded batch

static void causal_parity(const char *name, int want_tied, int want_bias, int want_kv) {
    char dir[512], ref[512];
    snprintf(dir, sizeof dir, HF "/%s", name);
    snprintf(ref, sizeof ref, HF "/%s.ref", name);
    Fix fx;
    if (!fix_open(&fx, ref)) { CHECK(0, "fixture %s", ref); return; }
    Model *m = model_load(dir);
    const ModelConfig *c = &m->cfg;
    CHECK(c->tied == want_tied && c->qkv_bias == want_bias && c->n_kv_heads == want_kv && c->n_heads == 4,
          "%s: config tied %d bias %d kv %d heads %d", name, c->tied, c->qkv_bias, c->n_kv_heads, c->n_heads);
    size_t nt, nl, np, ne;
    int32_t *tok = fix_get(&fx, "tokens", &nt), *mask = fix_get(&fx, "mask", NULL), *lpm = fix_get(&fx, "logp_mask", NULL);
    float *logits = fix_get(&fx, "logits", &nl), *logp = fix_get(&fx, "logp", &np), *tf_err = fix_get(&fx, "fp32_err", &ne);
    int B = 4, T = (int)nt / 4, V = c->vocab_size;
    CHECK(nl == (size_t)B * T * V, "%s: logits size %zu", name, nl);
    uint8_t *m8 = xmalloc(nt);
    for (size_t i = 0; i < nt; i++) m8[i] = (uint8_t)mask[i];
    model_forward(m, tok, m8, B, T, 1);
    // compare at valid positions only (padding is garbage on both sides)
    int *keep = xmalloc(nl * sizeof(int));
    for (size_t i = 0; i < nl; i++) keep[i] = mask[i / V];
    printf("  %s (%s%s, kv %d): transformers fp32 itself: logits %.2g, logp %.2g\n", name, c->tied ? "tied" : "untied",
           c->qkv_bias ? ", q/k/v bias" : "", c->n_kv_heads, tf_err[0], tf_err[1]);
    double e = compare_f("logits", m->logits, logits, keep, nl, FLOOR, 3);
    CHECK(e < TOL, "%s: logits rel err %.3g >= %g", name, e, TOL);
    // log p(tokens[t+1]) at t
    int32_t *tgt = xmalloc(nt * sizeof(int32_t));
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) tgt[b * T + t] = t + 1 < T ? tok[b * T + t + 1] : 0;
    float *ours = xmalloc(nt * sizeof(float));
    logprob_forward(m->logits, nt, V, 1.0f, tgt, ours, NULL);
    e = compare_f("logp", ours, logp, lpm, nt, FLOOR, 3);
    CHECK(e < TOL, "%s: logp rel err %.3g >= %g", name, e, TOL);
    free(tok); free(mask); free(lpm); free(logits); free(logp); free(tf_err); free(m8); free(keep); free(tgt); free(ours);
    model_free(m);
    fix_close(&fx);
}

TEST(llama_untied_f32) { causal_parity("llama_untied", 0, 0, 2); }
TEST(llama_tied_f16_sharded) { causal_parity("llama_tied_sharded", 1, 0, 2); }
TEST(qwen2_tied_bf16) { causal_parity("qwen2_tied", 1, 1, 2); }
TEST(qwen2_untied_f32) { causal_parity("qwen2_untied", 0, 1, 2); }

// ----------------------------------------------------------------------------
// round trip

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

static int same_file(const char *a, const char *b) {
    size_t na, nb;
    unsigned char *x = slurp(a, &na), *y = slurp(b, &nb);
    int same = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

static void roundtrip(const char *name) {
    char dir[512], out[600], out2[600];
    snprintf(dir, sizeof dir, HF "/%s", name);
    snprintf(out, sizeof out, "%s/%s", tmpdir, name);
    snprintf(out2, sizeof out2, "%s/%s-2", tmpdir, name);
    Model *a = model_load(dir);
    char tokj[600];
    snprintf(tokj, sizeof tokj, "%s/tokenizer.json", dir);
    int has_tok = file_exists(tokj);
    CheckpointParts parts = {.tokenizer_path = has_tok ? tokj : NULL, .bos_id = -1, .eos_id = -1};
    checkpoint_save(out, a, &parts);
    Model *b = model_load(out);
    // and once more from our own output: the second save must reproduce the first byte for byte
    char *tp = has_tok ? model_tokenizer_path(out) : NULL;
    CheckpointParts parts2 = {.tokenizer_path = tp, .bos_id = -1, .eos_id = -1};
    checkpoint_save(out2, b, &parts2);
    CHECK(!memcmp(&a->cfg, &b->cfg, sizeof a->cfg), "%s: config differs after the round trip", name);
    CHECK(a->n_params == b->n_params && !memcmp(a->params, b->params, a->n_params * sizeof(float)),
          "%s: weights differ after load -> save -> load", name);
    char f1[700], f2[700];
    snprintf(f1, sizeof f1, "%s/model.safetensors", out);
    snprintf(f2, sizeof f2, "%s/model.safetensors", out2);
    CHECK(same_file(f1, f2), "%s: model.safetensors differs between two saves", name);
    snprintf(f1, sizeof f1, "%s/config.json", out);
    snprintf(f2, sizeof f2, "%s/config.json", out2);
    CHECK(same_file(f1, f2), "%s: config.json differs between two saves", name);
    if (has_tok) {
        static const char *const files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
        for (int i = 0; i < 3; i++) {
            snprintf(f1, sizeof f1, "%s/%s", dir, files[i]);
            snprintf(f2, sizeof f2, "%s/%s", out, files[i]);
            CHECK(same_file(f1, f2), "%s: %s not copied through", name, files[i]);
        }
        CHECK(tp && strstr(tp, "/tokenizer.json"), "%s: model_tokenizer_path gave %s", name, tp ? tp : "NULL");
        // ids in config.json taken from the source's config.json
        snprintf(f1, sizeof f1, "%s/config.json", out);
        json_t *j = json_load_file(f1, 0, NULL);
        CHECK(j && json_integer_value(json_object_get(j, "bos_token_id")) == 1 &&
              json_integer_value(json_object_get(j, "eos_token_id")) == 2, "%s: bos/eos ids not carried into config.json", name);
        json_decref(j);
    }
    printf("  %s: load -> save -> load bit-identical (%zu parameters)%s\n", name, a->n_params,
           has_tok ? ", tokenizer files copied" : "");
    free(tp);
    model_free(a);
    model_free(b);
}

TEST(roundtrip_bit_identical) {
    roundtrip("llama_untied");
    roundtrip("llama_tied_sharded");
    roundtrip("qwen2_tied");
    roundtrip("qwen2_untied");
}

// What the generator checked with transformers: our output loads and gives identical logits.
TEST(roundtrip_transformers_record) {
    json_error_t err;
    json_t *j = json_load_file(HF "/roundtrip.json", 0, &err);
    CHECK(j, "roundtrip.json: %s", err.text);
    if (!j) return;
    static const char *const names[] = {"llama_untied", "llama_tied_sharded", "qwen2_tied", "qwen2_untied"};
    for (int i = 0; i < 4; i++) {
        json_t *e = json_object_get(j, names[i]);
        CHECK(json_is_true(json_object_get(e, "logits_identical")), "%s: transformers round trip not identical", names[i]);
    }
    CHECK(json_is_true(json_object_get(json_object_get(j, "llama_untied"), "tokenizer_identical")),
          "transformers did not load the copied tokenizer identically");
    printf("  transformers %s loaded our checkpoints with identical logits (recorded at fixture generation)\n",
           json_string_value(json_object_get(j, "transformers")));
    json_decref(j);
}

// ----------------------------------------------------------------------------
// reward models

static void rm_parity(const char *name) {
    char dir[512], ref[512];
    snprintf(dir, sizeof dir, HF "/%s", name);
    snprintf(ref, sizeof ref, HF "/%s.ref", name);
    Fix fx;
    if (!fix_open(&fx, ref)) { CHECK(0, "fixture %s", ref); return; }
    RewardModel *rm = reward_model_load(dir);
    size_t nt, nb;
    int32_t *tok = fix_get(&fx, "tokens", &nt), *lens = fix_get(&fx, "lens", &nb);
    float *score = fix_get(&fx, "score", NULL), *tr = fix_get(&fx, "score_trunc_right", NULL),
          *tl = fix_get(&fx, "score_trunc_left", NULL), *tf = fix_get(&fx, "fp32_err", NULL);
    int n = (int)nb, T = (int)(nt / nb);
    const int32_t **seqs = xmalloc((size_t)n * sizeof *seqs);
    for (int i = 0; i < n; i++) seqs[i] = tok + (size_t)i * T;
    float *out = xmalloc((size_t)n * sizeof(float));
    printf("  %s (%s, pad_token_id %d): transformers fp32 itself %.2g\n", name, rm->arch, rm->pad_id, tf[0]);
    for (int bs = 1; bs <= 8; bs += 2) {   // batch sizes 1, 3, 5, 7: the score must not depend on them
        RewardOptions o = {.batch = bs};
        reward_model_score(rm, seqs, lens, n, &o, out);
        char what[32];
        snprintf(what, sizeof what, "score b=%d", bs);
        double e = compare_f(what, out, score, NULL, (size_t)n, FLOOR, bs == 1 ? n : 0);
        CHECK(e < TOL, "%s: scores (batch %d) rel err %.3g", name, bs, e);
    }
    RewardOptions o = {.batch = 2, .max_length = 5, .trunc_side = RM_TRUNC_RIGHT};
    reward_model_score(rm, seqs, lens, n, &o, out);
    double e = compare_f("trunc right", out, tr, NULL, (size_t)n, FLOOR, 0);
    CHECK(e < TOL, "%s: --rm-max-length 5 (keep the first 5) rel err %.3g", name, e);
    o.trunc_side = RM_TRUNC_LEFT;
    reward_model_score(rm, seqs, lens, n, &o, out);
    e = compare_f("trunc left", out, tl, NULL, (size_t)n, FLOOR, 0);
    CHECK(e < TOL, "%s: --rm-max-length 5 --rm-truncation left rel err %.3g", name, e);
    free(seqs); free(out); free(tok); free(lens); free(score); free(tr); free(tl); free(tf);
    reward_model_free(rm);
    fix_close(&fx);
}

TEST(rm_llama_scores) { rm_parity("rm_llama"); }
TEST(rm_qwen2_scores) { rm_parity("rm_qwen2"); }

// A reward model directory also loads as a plain model (a critic initialised from it).
TEST(rm_dir_as_backbone) {
    Model *m = model_load(HF "/rm_llama");
    CHECK(m->cfg.tied == 1 && m->cfg.vocab_size == 300, "tied %d vocab %d", m->cfg.tied, m->cfg.vocab_size);
    model_free(m);
}

// ----------------------------------------------------------------------------
// bad input exits 2 with a message naming the cause

static void child_load(const void *path) { model_free(model_load(path)); }
static void child_rm(const void *path) { reward_model_free(reward_model_load(path)); }

// copy of a fixture's config.json with one key changed, beside its weights (symlinked)
static const char *variant(const char *src, const char *tag, const char *key, json_t *val) {
    static char dir[600];
    char p[700], q[700];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, tag);
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/%s/config.json", HF, src);
    json_t *j = json_load_file(p, 0, NULL);
    json_object_set_new(j, key, val);
    snprintf(q, sizeof q, "%s/config.json", dir);
    json_dump_file(j, q, 0);
    json_decref(j);
    char abs[512];
    snprintf(p, sizeof p, "%s/%s/model.safetensors", HF, src);
    if (realpath(p, abs)) {
        snprintf(q, sizeof q, "%s/model.safetensors", dir);
        if (symlink(abs, q) != 0) perror(q);
    }
    return dir;
}

TEST(bad_configs_exit_2) {
    char err[2048];
    int st = test_run_child(child_load, variant("llama_untied", "ropescale", "rope_scaling",
                                           json_pack("{s:s,s:f}", "rope_type", "llama3", "factor", 8.0)), err, sizeof err);
    CHECK(st == 2 && strstr(err, "rope_scaling type \"llama3\""), "llama3 rope_scaling: exit %d: %s", st, err);
    st = test_run_child(child_load, variant("llama_untied", "ropedefault", "rope_scaling", json_pack("{s:s}", "rope_type", "default")),
                   err, sizeof err);
    CHECK(st == 0, "rope_scaling {rope_type: default} should load: exit %d: %s", st, err);
    st = test_run_child(child_load, variant("llama_untied", "gelu", "hidden_act", json_string("gelu")), err, sizeof err);
    CHECK(st == 2 && strstr(err, "hidden_act"), "gelu: exit %d: %s", st, err);
    st = test_run_child(child_load, variant("qwen2_untied", "sliding", "use_sliding_window", json_true()), err, sizeof err);
    CHECK(st == 2 && strstr(err, "sliding"), "sliding window: exit %d: %s", st, err);
    st = test_run_child(child_rm, HF "/llama_untied", err, sizeof err);
    CHECK(st == 2 && strstr(err, "ForSequenceClassification"), "causal LM as reward model: exit %d: %s", st, err);
    st = test_run_child(child_rm, variant("rm_llama", "twolabels", "num_labels", json_integer(2)), err, sizeof err);
    CHECK(st == 2 && strstr(err, "labels"), "num_labels 2: exit %d: %s", st, err);
    printf("  last message: %s", err);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/safe-test-hf.XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    RUN(llama_untied_f32);
    RUN(llama_tied_f16_sharded);
    RUN(qwen2_tied_bf16);
    RUN(qwen2_untied_f32);
    RUN(roundtrip_bit_identical);
    RUN(roundtrip_transformers_record);
    RUN(rm_llama_scores);
    RUN(rm_qwen2_scores);
    RUN(rm_dir_as_backbone);
    RUN(bad_configs_exit_2);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("  could not remove %s\n", tmpdir);
    return test_summary();
}
