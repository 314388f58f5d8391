// test_hf_tokenizer.c — tokenizer.json (and GGUF) tokenizers against the `tokenizers` library.
//
// Fixtures from tests/gen/gen_hf_tokenizer_ref.py: four small BPE tokenizers trained with the
// `tokenizers` library and configured as GPT-2, Qwen2, Llama 3 and Llama 2 (sentencepiece
// style) configure theirs, the texts (TinyStories and HH prompts, VADER snippets, the edge
// cases of tests/fixtures/tokenizer_edge.txt) and the library's ids for every text. For each
// tokenizer: identical ids for every text, and decode(encode(x)) equal to the library's
// decode(ids, skip_special_tokens=True) (which is x itself unless x holds special tokens or
// text the normalizer changes). With $SAFE_SMOLLM2_GGUF (default models/SmolLM2-135M-Instruct*.gguf, from
// tests/setup-smollm2.sh) and
// smollm2.ref, the same on the real SmolLM2 tokenizer read from the GGUF metadata.
#include "test.h"

#include "common.h"          // xmalloc, now_seconds
#include "gguf.h"            // gguf_is_gguf_file
#include "tokenizer.h"       // tokenizer_load, tokenizer_encode, tokenizer_decode, tokenizer_piece

#include <glob.h>
#include <jansson.h>
#include <string.h>

#define FX "tests/fixtures/tokenizers"

typedef struct { char *id, *text; } Text;
static Text *texts;
static int n_texts;

static void load_texts(void) {
    FILE *f = fopen(FX "/texts.jsonl", "r");
    if (!f) { printf("  cannot open " FX "/texts.jsonl\n"); return; }
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        json_error_t err;
        json_t *j = json_loads(line, 0, &err);
        if (!j) { printf("  texts.jsonl line %d: %s\n", n_texts + 1, err.text); break; }
        texts = xrealloc(texts, (size_t)(n_texts + 1) * sizeof(Text));
        texts[n_texts].id = xstrdup(json_string_value(json_object_get(j, "id")));
        texts[n_texts].text = xstrdup(json_string_value(json_object_get(j, "text")));
        n_texts++;
        json_decref(j);
    }
    free(line);
    fclose(f);
}

// print s with control characters and non-ASCII escaped, at most max bytes
static void show(const char *s, size_t n, size_t max) {
    putchar('"');
    for (size_t i = 0; i < n && i < max; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') printf("\\n");
        else if (c == '\r') printf("\\r");
        else if (c == '\t') printf("\\t");
        else if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
        else putchar(c);
    }
    printf(n > max ? "\"..." : "\"");
}

// The first mismatch, with the ids and pieces around it.
static void show_mismatch(const Tokenizer *t, const Text *x, const int32_t *got, int ng, const int32_t *want, int nw) {
    int k = 0;
    while (k < ng && k < nw && got[k] == want[k]) k++;
    printf("  first mismatch: %s at id #%d (we have %d ids, the library %d)\n  text ", x->id, k, ng, nw);
    show(x->text, strlen(x->text), 300);
    printf("\n");
    const int32_t *seqs[2] = {got, want};
    int ns[2] = {ng, nw};
    const char *who[2] = {"ours", "library"};
    for (int s = 0; s < 2; s++) {
        printf("  %-8s", who[s]);
        for (int i = k > 3 ? k - 3 : 0; i < ns[s] && i < k + 6; i++) {
            int id = seqs[s][i];
            printf(" %s%d:", i == k ? ">" : "", id);
            if (id >= 0 && id < t->vocab_size) show(t->vocab[id], (size_t)t->vocab_len[id], 24);
        }
        printf("\n");
    }
}

// Parse one .ref line: "@INDEX " when the file covers a subset of the texts, the ids, then
// optionally a tab and the expected decode as a JSON string.
static int parse_ref(char *line, int32_t *ids, int cap, char **decoded, int *index) {
    *decoded = NULL;
    if (line[0] == '@') {
        *index = (int)strtol(line + 1, &line, 10);
        if (*line == ' ') line++;
    }
    char *tab = strchr(line, '\t');
    if (tab) {
        *tab = '\0';
        json_t *j = json_loads(tab + 1, JSON_DECODE_ANY, NULL);
        if (json_is_string(j)) *decoded = xstrdup(json_string_value(j));
        json_decref(j);
    }
    int n = 0;
    for (char *p = line, *end; n < cap; p = end) {
        long v = strtol(p, &end, 10);
        if (end == p) break;
        ids[n++] = (int32_t)v;
    }
    return n;
}

// ids and decode parity of tokenizer `t` on every text against NAME.ref
static void parity(const Tokenizer *t, const char *name, const char *ref_path) {
    FILE *f = fopen(ref_path, "r");
    CHECK(f != NULL, "cannot open %s (run tests/gen/gen_hf_tokenizer_ref.py)", ref_path);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int k = 0, lines = 0, id_bad = 0, dec_bad = 0, exact = 0;
    long n_ids = 0, n_bytes = 0;
    double t_enc = 0;
    int32_t *want = NULL;
    size_t want_cap = 0;
    while ((got = getline(&line, &cap, f)) > 0) {
        if (line[got - 1] == '\n') line[--got] = '\0';
        if ((size_t)got + 1 > want_cap) { want_cap = (size_t)got + 16; want = xrealloc(want, want_cap * sizeof(int32_t)); }
        char *decoded;
        int nw = parse_ref(line, want, (int)want_cap, &decoded, &k);
        if (k >= n_texts) { CHECK(k < n_texts, "%s: text index %d out of range", ref_path, k); free(decoded); break; }
        const Text *x = &texts[k++];
        lines++;
        int32_t *ids = xmalloc(tokenizer_max_tokens(x->text) * sizeof(int32_t));
        double t0 = now_seconds();
        int n = tokenizer_encode(t, x->text, 1, 0, ids);
        t_enc += now_seconds() - t0;
        n_ids += n;
        n_bytes += (long)strlen(x->text);
        int same = n == nw && memcmp(ids, want, (size_t)n * sizeof(int32_t)) == 0;
        if (!same && id_bad++ == 0) show_mismatch(t, x, ids, n, want, nw);
        // decode: the library's decode(ids, skip_special_tokens=True); usually the text itself
        size_t len;
        char *back = tokenizer_decode(t, -1, ids, n, &len);
        const char *expect = decoded ? decoded : x->text;
        if (len != strlen(expect) || memcmp(back, expect, len) != 0) {
            if (dec_bad++ == 0) {
                printf("  first decode mismatch: %s\n  want ", x->id);
                show(expect, strlen(expect), 200);
                printf("\n  got  ");
                show(back, len, 200);
                printf("\n");
            }
        }
        if (len == strlen(x->text) && memcmp(back, x->text, len) == 0) exact++;
        free(back);
        free(decoded);
        free(ids);
    }
    free(want);
    free(line);
    fclose(f);
    printf("  %-8s %-36s %d texts, %ld ids: %d differ in ids, %d in decode; decode(encode(x)) == x for %d; "
           "encode %.1f MB/s\n", name, tokenizer_kind_name(t), lines, n_ids, id_bad, dec_bad, exact,
           t_enc > 0 ? n_bytes / t_enc / 1e6 : 0.0);
    CHECK(lines > 200, "%s has only %d lines", ref_path, lines);
    CHECK(id_bad == 0, "%s: %d of %d texts differ in ids", name, id_bad, lines);
    CHECK(dec_bad == 0, "%s: %d of %d texts differ in decode", name, dec_bad, lines);
}

static Tokenizer *load_fixture(const char *name) {
    char p[256];
    snprintf(p, sizeof p, FX "/%s/tokenizer.json", name);
    return tokenizer_load(p, 0);
}

static void parity_fixture(const char *name) {
    Tokenizer *t = load_fixture(name);
    char ref[256];
    snprintf(ref, sizeof ref, FX "/%s.ref", name);
    parity(t, name, ref);
    tokenizer_free(t);
}

TEST(gpt2_parity) { parity_fixture("gpt2"); }
TEST(qwen2_parity) { parity_fixture("qwen2"); }
TEST(llama3_parity) { parity_fixture("llama3"); }
TEST(llama2_parity) { parity_fixture("llama2"); }
// the rest of the pipeline, on a subset of the texts
TEST(metaspace_parity) { parity_fixture("metaspace"); }
TEST(metaspace_split_parity) { parity_fixture("metaspace_split"); }
TEST(mixed_parity) { parity_fixture("mixed"); }
TEST(mixed2_parity) { parity_fixture("mixed2"); }

// the special ids each family's config files give, and what encode puts in front
TEST(special_ids) {
    struct { const char *name, *kind; int bos, eos, pad, prefix; } want[] = {
        {"gpt2", "tokenizer.json byte-level BPE", 0, 0, 0, 0},
        {"qwen2", "tokenizer.json byte-level BPE", -1, 3002, 3000, 0},
        {"llama3", "tokenizer.json byte-level BPE", 3002, 3009, 3009, 1},
        {"llama2", "tokenizer.json sentencepiece BPE", 1, 2, 2, 1},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        Tokenizer *t = load_fixture(want[i].name);
        CHECK(!strcmp(tokenizer_kind_name(t), want[i].kind), "%s: kind %s", want[i].name, tokenizer_kind_name(t));
        CHECK(t->bos_id == want[i].bos && t->eos_id == want[i].eos && t->pad_id == want[i].pad,
              "%s: bos %d eos %d pad %d", want[i].name, t->bos_id, t->eos_id, t->pad_id);
        CHECK(tokenizer_prefix_len(t) == want[i].prefix, "%s: prefix %d", want[i].name, tokenizer_prefix_len(t));
        int32_t ids[16];
        int n = tokenizer_encode(t, "", 1, 1, ids);
        CHECK(n == want[i].prefix + 1 && ids[n - 1] == t->eos_id, "%s: encode(\"\", bos, eos) gives %d ids", want[i].name, n);
        tokenizer_free(t);
    }
}

// a model directory finds its tokenizer.json; ids are what the file gives
TEST(load_directory) {
    Tokenizer *a = tokenizer_load(FX "/qwen2", 0), *b = load_fixture("qwen2");
    CHECK(!strcmp(a->path, FX "/qwen2/tokenizer.json"), "path %s", a->path);
    CHECK(a->hash == b->hash && a->vocab_size == 3003, "hash %llx vs %llx, vocab %d", (unsigned long long)a->hash,
          (unsigned long long)b->hash, a->vocab_size);
    CHECK(tokenizer_lookup(a, "<|im_end|>", 10) == 3002, "<|im_end|> is %d", tokenizer_lookup(a, "<|im_end|>", 10));
    tokenizer_free(a);
    tokenizer_free(b);
}

// bytes that are not UTF-8 go through as byte tokens and come back unchanged
TEST(invalid_utf8_round_trip) {
    const char *s = "ok \xff\xfe bytes \xc3 cut \xe2\x82 end \xed\xa0\x80 surrogate \xf4\x90\x80\x80 \xc0\xaf";
    const char *names[] = {"gpt2", "qwen2", "llama3", "llama2"};
    for (int i = 0; i < 4; i++) {
        Tokenizer *t = load_fixture(names[i]);
        int32_t *ids = xmalloc(tokenizer_max_tokens(s) * sizeof(int32_t));
        int n = tokenizer_encode(t, s, 1, 0, ids);
        size_t len;
        char *back = tokenizer_decode(t, -1, ids, n, &len);
        CHECK(len == strlen(s) && memcmp(back, s, len) == 0, "%s: %d ids decode to %zu bytes", names[i], n, len);
        free(back);
        free(ids);
        tokenizer_free(t);
    }
}

// pieces one at a time (as generation streams them) concatenate to decode()
TEST(streaming_pieces) {
    const char *names[] = {"gpt2", "qwen2", "llama3", "llama2"};
    for (int i = 0; i < 4; i++) {
        Tokenizer *t = load_fixture(names[i]);
        int bad = 0;
        for (int k = 0; k < n_texts; k++) {
            const char *x = texts[k].text;
            if (strstr(x, "<") || strstr(x, "\xe2\x96\x81")) continue;   // special tokens / literal ▁ inside
            int32_t *ids = xmalloc(tokenizer_max_tokens(x) * sizeof(int32_t));
            int n = tokenizer_encode(t, x, 1, 0, ids);
            char *whole = tokenizer_decode(t, -1, ids, n, NULL);
            size_t cap = strlen(whole) + 1, used = 0;
            char *cat = xmalloc(cap + 64);
            for (int j = 0; j < n; j++) {
                int pl;
                const char *p = tokenizer_piece(t, j ? ids[j - 1] : -1, ids[j], &pl);
                if (used + (size_t)pl <= cap) memcpy(cat + used, p, (size_t)pl);
                used += (size_t)pl;
            }
            if ((used != strlen(whole) || memcmp(cat, whole, used) != 0) && bad++ == 0)
                printf("  %s: %s streams differently\n", names[i], texts[k].id);
            free(cat);
            free(whole);
            free(ids);
        }
        CHECK(bad == 0, "%s: %d texts stream differently", names[i], bad);
        tokenizer_free(t);
    }
}

// encoding from several threads at once (the pre-token cache is shared) gives the same ids
TEST(threads_share_a_tokenizer) {
    Tokenizer *t = load_fixture("llama3");
    int n = n_texts < 400 ? n_texts : 400, bad = 0;
    int32_t **serial = xmalloc((size_t)n * sizeof(int32_t *));
    int *ns = xmalloc((size_t)n * sizeof(int));
    for (int k = 0; k < n; k++) {
        serial[k] = xmalloc(tokenizer_max_tokens(texts[k].text) * sizeof(int32_t));
        ns[k] = tokenizer_encode(t, texts[k].text, 1, 0, serial[k]);
    }
    #pragma omp parallel for num_threads(4) reduction(+:bad) schedule(dynamic, 7)
    for (int k = 0; k < 4 * n; k++) {
        const char *x = texts[k % n].text;
        int32_t *ids = xmalloc(tokenizer_max_tokens(x) * sizeof(int32_t));
        int m = tokenizer_encode(t, x, 1, 0, ids);
        bad += m != ns[k % n] || memcmp(ids, serial[k % n], (size_t)m * sizeof(int32_t)) != 0;
        free(ids);
    }
    CHECK(bad == 0, "%d of %d threaded encodings differ", bad, 4 * n);
    for (int k = 0; k < n; k++) free(serial[k]);
    free(serial);
    free(ns);
    tokenizer_free(t);
}

// A GGUF "llama" (sentencepiece, scores) tokenizer: tok512.bin written as GGUF encodes like the
// llama2.c backend reading tok512.bin (merges made from the scores, "▁" for " ").
TEST(gguf_sentencepiece_matches_llama2c) {
    char bin[4096];
    snprintf(bin, sizeof bin, "%s/stories260K/tok512.bin", safe_data_dir());
    Tokenizer *g = tokenizer_load(FX "/tok512.gguf", 512), *l = tokenizer_load(bin, 512);
    CHECK(!strcmp(tokenizer_kind_name(g), "GGUF sentencepiece BPE"), "kind %s", tokenizer_kind_name(g));
    CHECK(g->bos_id == 1 && g->eos_id == 2 && tokenizer_prefix_len(g) == 1, "bos %d eos %d", g->bos_id, g->eos_id);
    int bad = 0, dec_bad = 0, n_cmp = 0;
    for (int k = 0; k < n_texts; k++) {
        const char *x = texts[k].text;
        // <s>, </s>, <unk> are special tokens in the GGUF (llama.cpp) reading only; a literal ▁
        // is a space to the GGUF tokenizer only
        if (strstr(x, "<s>") || strstr(x, "</s>") || strstr(x, "<unk>") || strstr(x, "\xe2\x96\x81")) continue;
        size_t cap = tokenizer_max_tokens(x) * sizeof(int32_t);
        int32_t *a = xmalloc(cap), *b = xmalloc(cap);
        int na = tokenizer_encode(g, x, 1, 0, a), nb = tokenizer_encode(l, x, 1, 0, b);
        if ((na != nb || memcmp(a, b, (size_t)na * sizeof(int32_t)) != 0) && bad++ == 0)
            show_mismatch(g, &texts[k], a, na, b, nb);
        char *da = tokenizer_decode(g, -1, a, na, NULL), *db = tokenizer_decode(l, -1, b, nb, NULL);
        if (strcmp(da, db) != 0 && dec_bad++ == 0) {
            printf("  decode differs: %s\n  gguf     ", texts[k].id);
            show(da, strlen(da), 200);
            printf("\n  llama2.c ");
            show(db, strlen(db), 200);
            printf("\n");
        }
        n_cmp++;
        free(a); free(b); free(da); free(db);
    }
    printf("  %d texts: %d differ in ids, %d in decode\n", n_cmp, bad, dec_bad);
    CHECK(n_cmp > 1700 && bad == 0 && dec_bad == 0, "%d of %d differ (%d in decode)", bad, n_cmp, dec_bad);
    tokenizer_free(g);
    tokenizer_free(l);
}

// SmolLM2-135M-Instruct's real tokenizer from its GGUF (49152 tokens): skipped without the file
TEST(smollm2_gguf_parity) {
    const char *path = getenv("SAFE_SMOLLM2_GGUF");
    glob_t g = {0};
    if (!path && glob("models/SmolLM2-135M-Instruct*.gguf", 0, NULL, &g) == 0 && g.gl_pathc > 0)
        path = g.gl_pathv[0];
    FILE *ref = fopen(FX "/smollm2.ref", "r");
    if (!path || !gguf_is_gguf_file(path) || !ref) {
        printf("  skipped: %s\n", !ref ? FX "/smollm2.ref not generated"
                                       : "no SmolLM2 GGUF (sh tests/setup-smollm2.sh fetches it into "
                                         "models/, or set SAFE_SMOLLM2_GGUF)");
        if (ref) fclose(ref);
        globfree(&g);
        return;
    }
    fclose(ref);
    double t0 = now_seconds();
    Tokenizer *t = tokenizer_load(path, 0);
    printf("  %s: %d tokens, loaded in %.2f s\n", path, t->vocab_size, now_seconds() - t0);
    CHECK(t->vocab_size == 49152, "vocab %d", t->vocab_size);
    parity(t, "smollm2", FX "/smollm2.ref");
    tokenizer_free(t);
    globfree(&g);
}

int main(void) {
    load_texts();
    printf("  %d texts from " FX "/texts.jsonl\n", n_texts);
    RUN(gpt2_parity);
    RUN(qwen2_parity);
    RUN(llama3_parity);
    RUN(llama2_parity);
    RUN(metaspace_parity);
    RUN(metaspace_split_parity);
    RUN(mixed_parity);
    RUN(mixed2_parity);
    RUN(special_ids);
    RUN(load_directory);
    RUN(invalid_utf8_round_trip);
    RUN(streaming_pieces);
    RUN(threads_share_a_tokenizer);
    RUN(gguf_sentencepiece_matches_llama2c);
    RUN(smollm2_gguf_parity);
    for (int k = 0; k < n_texts; k++) { free(texts[k].id); free(texts[k].text); }
    free(texts);
    return test_summary();
}
