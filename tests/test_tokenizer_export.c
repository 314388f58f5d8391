// test_tokenizer_export.c — a GGUF's tokenizer written as a Hugging Face tokenizer.json
// (tokenizer_gguf_export) reads back into the tokenizer the GGUF itself gives.
//
// For tests/fixtures/tokenizers/tok512.gguf (sentencepiece "llama": merges made from the
// scores, BOS in front) and, when present, SmolLM2-135M-Instruct's GGUF ($SAFE_SMOLLM2_GGUF,
// default models/SmolLM2-135M-Instruct*.gguf from tests/setup-smollm2.sh; byte-level "gpt2"
// with the smollm pre-tokenizer and a chat template): export into a fresh directory, load the
// directory with tokenizer_load (so tokenizer.json and the tokenizer_config.json beside it),
// and compare with tokenizer_load of the GGUF: the same vocabulary, special ids and prefix, and
// the same ids (with and without BOS) and decode on every text of
// tests/fixtures/tokenizers/texts.jsonl (the texts test_hf_tokenizer uses). Also: the files
// have the layout the tokenizers library reads; a GGUF whose tokenizer is not supported here
// (no merges) exports nothing; checkpoint_save with a GGUF tokenizer writes tokenizer.json.
// transformers' side is checked by hand (see the report of this change) and by
// tests/gen/check_transformers_load.py in make demo-smollm.
#include "test.h"

#include "checkpoint.h"   // checkpoint_save, model_load, model_tokenizer_path
#include "common.h"       // xmalloc, xstrdup, now_seconds
#include "gguf.h"         // gguf_is_gguf_file
#include "tokenizer.h"    // tokenizer_gguf_export, tokenizer_load, tokenizer_encode, ...

#include <ftw.h>
#include <glob.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>

#define FX "tests/fixtures/tokenizers"

static char tmpdir[256];
static char **texts;
static int n_texts;

static void load_texts(void) {
    FILE *f = fopen(FX "/texts.jsonl", "r");
    if (!f) { printf("  cannot open " FX "/texts.jsonl\n"); return; }
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        if (json_is_string(json_object_get(j, "text"))) {
            texts = xrealloc(texts, (size_t)(n_texts + 1) * sizeof(char *));
            texts[n_texts++] = xstrdup(json_string_value(json_object_get(j, "text")));
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
}

static int file_exists(const char *p) { struct stat st; return stat(p, &st) == 0 && S_ISREG(st.st_mode); }

static json_t *load_json(const char *dir, const char *name) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    json_error_t err;
    json_t *j = json_load_file(p, 0, &err);
    if (!j) printf("  %s: %d:%d: %s\n", p, err.line, err.column, err.text);
    return j;
}

// "GGUF byte-level BPE" vs "tokenizer.json byte-level BPE": the same kind after the source
static const char *kind_after_source(const Tokenizer *t) {
    const char *k = tokenizer_kind_name(t), *sp = strchr(k, ' ');
    return sp ? sp + 1 : k;
}

// Export `gguf` into tmpdir/name, reload, compare with the GGUF's own tokenizer on every text.
static void export_parity(const char *gguf, const char *name, int want_bos_prefix) {
    char dir[600];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, name);
    CHECK(mkdir(dir, 0755) == 0, "mkdir %s", dir);
    double t0 = now_seconds();
    CHECK(tokenizer_gguf_export(gguf, dir) == 1, "%s: export failed", gguf);
    double t_export = now_seconds() - t0;

    // the files as the tokenizers library and transformers read them
    json_t *tj = load_json(dir, "tokenizer.json"), *tc = load_json(dir, "tokenizer_config.json");
    CHECK(tj && tc, "%s: tokenizer.json / tokenizer_config.json missing or not JSON", dir);
    if (!tj || !tc) { json_decref(tj); json_decref(tc); return; }
    json_t *model = json_object_get(tj, "model"), *merges = json_object_get(model, "merges");
    CHECK(!strcmp(json_string_value(json_object_get(tj, "version")), "1.0") &&
          json_is_null(json_object_get(tj, "truncation")) && json_is_null(json_object_get(tj, "padding")),
          "%s: version/truncation/padding", name);
    CHECK(!strcmp(json_string_value(json_object_get(model, "type")), "BPE") &&
          json_is_object(json_object_get(model, "vocab")) && json_array_size(merges) > 0 &&
          json_is_string(json_array_get(merges, 0)) && json_is_boolean(json_object_get(model, "byte_fallback")) &&
          json_is_boolean(json_object_get(model, "fuse_unk")) && json_is_boolean(json_object_get(model, "ignore_merges")),
          "%s: model is not a BPE with a vocab object and \"a b\" merges", name);
    json_t *added = json_object_get(tj, "added_tokens"), *a0 = json_array_get(added, 0);
    CHECK(json_array_size(added) > 0 && json_is_integer(json_object_get(a0, "id")) &&
          json_is_string(json_object_get(a0, "content")) && json_is_boolean(json_object_get(a0, "single_word")) &&
          json_is_boolean(json_object_get(a0, "lstrip")) && json_is_boolean(json_object_get(a0, "rstrip")) &&
          json_is_boolean(json_object_get(a0, "normalized")) && json_is_boolean(json_object_get(a0, "special")),
          "%s: added_tokens[0] lacks a flag", name);
    json_t *post = json_object_get(tj, "post_processor");
    CHECK(want_bos_prefix ? !strcmp(json_string_value(json_object_get(post, "type")), "TemplateProcessing")
                          : json_is_null(post), "%s: post_processor", name);
    CHECK(json_is_boolean(json_object_get(tc, "add_bos_token")) &&
          json_is_true(json_object_get(tc, "add_bos_token")) == want_bos_prefix &&
          json_is_false(json_object_get(tc, "add_eos_token")) && json_is_string(json_object_get(tc, "bos_token")) &&
          json_is_string(json_object_get(tc, "eos_token")) &&
          !strcmp(json_string_value(json_object_get(tc, "tokenizer_class")), "PreTrainedTokenizerFast"),
          "%s: tokenizer_config.json", name);

    // the exported directory reads back into the GGUF's tokenizer
    Tokenizer *g = tokenizer_load(gguf, 0), *j = tokenizer_load(dir, 0);
    CHECK(strstr(j->path, "/tokenizer.json") != NULL, "the directory loads %s", j->path);
    CHECK(!strcmp(kind_after_source(g), kind_after_source(j)), "kind %s vs %s", tokenizer_kind_name(g),
          tokenizer_kind_name(j));
    CHECK(g->vocab_size == j->vocab_size && g->bos_id == j->bos_id && g->eos_id == j->eos_id &&
          g->pad_id == j->pad_id && tokenizer_prefix_len(g) == tokenizer_prefix_len(j) &&
          tokenizer_prefix_len(j) == want_bos_prefix,
          "vocab %d/%d bos %d/%d eos %d/%d pad %d/%d prefix %d/%d", g->vocab_size, j->vocab_size, g->bos_id, j->bos_id,
          g->eos_id, j->eos_id, g->pad_id, j->pad_id, tokenizer_prefix_len(g), tokenizer_prefix_len(j));
    int vocab_bad = 0;
    for (int i = 0; i < g->vocab_size && i < j->vocab_size; i++)
        vocab_bad += g->vocab_len[i] != j->vocab_len[i] || memcmp(g->vocab[i], j->vocab[i], (size_t)g->vocab_len[i]) ||
                     g->special[i] != j->special[i] || g->piece_len[i] != j->piece_len[i] ||
                     memcmp(g->piece[i], j->piece[i], (size_t)g->piece_len[i]);
    CHECK(vocab_bad == 0, "%d tokens differ in text, decoded piece or specialness", vocab_bad);
    int bad = 0, dec_bad = 0;
    long n_ids = 0;
    for (int k = 0; k < n_texts; k++) {
        const char *x = texts[k];
        size_t cap = tokenizer_max_tokens(x);
        int32_t *a = xmalloc(cap * sizeof(int32_t)), *b = xmalloc(cap * sizeof(int32_t));
        for (int bos = 0; bos < 2; bos++) {
            int na = tokenizer_encode(g, x, bos, 0, a), nb = tokenizer_encode(j, x, bos, 0, b);
            n_ids += na;
            if (na != nb || memcmp(a, b, (size_t)na * sizeof(int32_t)) != 0) {
                if (bad++ == 0) {
                    int d = 0;
                    while (d < na && d < nb && a[d] == b[d]) d++;
                    printf("  first mismatch: text %d (bos %d) at id #%d: %d vs %d (%d vs %d ids)\n", k, bos, d,
                           d < na ? a[d] : -1, d < nb ? b[d] : -1, na, nb);
                }
                continue;
            }
            char *da = tokenizer_decode(g, -1, a, na, NULL), *db = tokenizer_decode(j, -1, b, nb, NULL);
            dec_bad += strcmp(da, db) != 0;
            free(da);
            free(db);
        }
        free(a);
        free(b);
    }
    printf("  %-8s %s -> %s/: exported in %.2f s; %d tokens; %d texts x (with, without BOS), %ld ids: %d differ in "
           "ids, %d in decode\n", name, gguf, dir, t_export, j->vocab_size, n_texts, n_ids, bad, dec_bad);
    CHECK(n_texts > 1700 && bad == 0 && dec_bad == 0, "%s: %d of %d encodings differ in ids, %d in decode", name, bad,
          2 * n_texts, dec_bad);
    tokenizer_free(g);
    tokenizer_free(j);
    json_decref(tj);
    json_decref(tc);
}

// tok512.gguf: sentencepiece, BOS in front, <s>/</s>/<unk> control tokens
TEST(tok512_export) { export_parity(FX "/tok512.gguf", "tok512", 1); }

// SmolLM2-135M-Instruct's GGUF: skipped without the file
TEST(smollm2_export) {
    const char *path = getenv("SAFE_SMOLLM2_GGUF");
    glob_t gl = {0};
    if (!path && glob("models/SmolLM2-135M-Instruct*.gguf", 0, NULL, &gl) == 0 && gl.gl_pathc > 0)
        path = gl.gl_pathv[0];
    if (!path || !gguf_is_gguf_file(path)) {
        printf("  skipped: no SmolLM2 GGUF (sh tests/setup-smollm2.sh fetches it into models/, or set "
               "SAFE_SMOLLM2_GGUF)\n");
        globfree(&gl);
        return;
    }
    export_parity(path, "smollm2", 0);
    char dir[600];
    snprintf(dir, sizeof dir, "%s/smollm2", tmpdir);
    json_t *tc = load_json(dir, "tokenizer_config.json");
    const char *tmpl = json_string_value(json_object_get(tc, "chat_template"));
    CHECK(tmpl && strstr(tmpl, "<|im_start|>") && json_integer_value(json_object_get(tc, "model_max_length")) == 8192 &&
          !strcmp(json_string_value(json_object_get(tc, "bos_token")), "<|im_start|>") &&
          !strcmp(json_string_value(json_object_get(tc, "eos_token")), "<|im_end|>") &&
          !strcmp(json_string_value(json_object_get(tc, "pad_token")), "<|im_end|>"),
          "SmolLM2 tokenizer_config.json: chat_template %s, model_max_length %lld", tmpl ? "present" : "missing",
          (long long)json_integer_value(json_object_get(tc, "model_max_length")));
    json_decref(tc);
    globfree(&gl);
}

// metadata that is no tokenizer we support (a gpt2 model without merges): nothing written
TEST(unsupported_exports_nothing) {
    char dir[600], p[700];
    snprintf(dir, sizeof dir, "%s/unsupported", tmpdir);
    CHECK(mkdir(dir, 0755) == 0, "mkdir %s", dir);
    printf("  (a warning about tokenizer.ggml.merges is expected here)\n");
    fflush(stdout);
    CHECK(tokenizer_gguf_export("tests/fixtures/hf/tiny_qwen2.gguf", dir) == 0, "tiny_qwen2.gguf exported");
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    CHECK(!file_exists(p), "%s written", p);
}

// checkpoint_save with a GGUF tokenizer: tokenizer.json (not tokenizer.gguf) is THE tokenizer
TEST(checkpoint_gets_tokenizer_json) {
    char out[600], p[700];
    snprintf(out, sizeof out, "%s/ck", tmpdir);
    Model *m = model_load("tests/fixtures/hf/tiny_llama.gguf");
    CheckpointParts parts = {.tokenizer_path = FX "/tok512.gguf", .bos_id = -1, .eos_id = -1};
    checkpoint_save(out, m, &parts);
    char *tp = model_tokenizer_path(out);
    snprintf(p, sizeof p, "%s/tokenizer.json", out);
    CHECK(!strcmp(tp, p), "the checkpoint's tokenizer is %s", tp);
    snprintf(p, sizeof p, "%s/tokenizer_config.json", out);
    CHECK(file_exists(p), "%s missing", p);
    snprintf(p, sizeof p, "%s/tokenizer.gguf", out);
    CHECK(!file_exists(p), "%s written too", p);
    Tokenizer *a = tokenizer_load(out, 0), *b = tokenizer_load(FX "/tok512.gguf", 0);
    const char *x = "Once upon a time, <s> there was a tiny cat.";
    int32_t ia[128], ib[128];
    int na = tokenizer_encode(a, x, 1, 1, ia), nb = tokenizer_encode(b, x, 1, 1, ib);
    CHECK(na == nb && !memcmp(ia, ib, (size_t)na * sizeof(int32_t)), "checkpoint tokenizer: %d vs %d ids", na, nb);
    tokenizer_free(a);
    tokenizer_free(b);
    free(tp);
    model_free(m);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/safe-test-tokexport.XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    load_texts();
    RUN(tok512_export);
    RUN(smollm2_export);
    RUN(unsupported_exports_nothing);
    RUN(checkpoint_gets_tokenizer_json);
    if (!getenv("SAFE_KEEP_TMP")) nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    else printf("  kept %s\n", tmpdir);
    for (int k = 0; k < n_texts; k++) free(texts[k]);
    free(texts);
    return test_summary();
}
