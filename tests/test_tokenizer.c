// test_tokenizer.c — llama2.c tokenizer: exact ids against an independent Python encoder
// (tests/gen/gen_tokenizer_ref.py -> tests/fixtures/tokenizer_ref.jsonl), and
// decode(encode(x)) == x on every TinyStories prompt and every line of stories.txt.
#include "test.h"

#include "common.h"     // safe_data_dir, xmalloc
#include "tokenizer.h"  // tokenizer_load, tokenizer_encode, tokenizer_decode

#include <jansson.h>
#include <string.h>

static Tokenizer *tok;
static char path_buf[4096];

static const char *data_path(const char *rel) {
    snprintf(path_buf, sizeof path_buf, "%s/%s", safe_data_dir(), rel);
    return path_buf;
}

TEST(load_tok512) {
    CHECK(tok->vocab_size == 512, "vocab %d", tok->vocab_size);
    CHECK(tok->max_token_length == 7, "max_token_length %d", tok->max_token_length);
    CHECK(tok->bos_id == 1 && tok->eos_id == 2 && tok->pad_id == 2, "special ids %d %d %d",
          tok->bos_id, tok->eos_id, tok->pad_id);
    CHECK(tokenizer_lookup(tok, " ", 1) == 410, "' ' is %d", tokenizer_lookup(tok, " ", 1));
    CHECK(tokenizer_lookup(tok, " t", 2) == 259, "' t' is %d", tokenizer_lookup(tok, " t", 2));
    int len;
    const char *p = tokenizer_piece(tok, -1, 13, &len);   // <0x0A>
    CHECK(len == 1 && p[0] == '\n', "byte token 13 decodes to %d bytes", len);
    p = tokenizer_piece(tok, 1, 259, &len);               // " t" after BOS loses its space
    CHECK(len == 1 && p[0] == 't', "after BOS: '%.*s'", len, p);
    p = tokenizer_piece(tok, 1, 35, &len);                // <0x20> after BOS stays a space
    CHECK(len == 1 && p[0] == ' ', "byte space after BOS: %d", len);
}

TEST(ids_match_python_reference) {
    json_error_t err;
    const char *fx = "tests/fixtures/tokenizer_ref.jsonl";
    FILE *f = fopen(fx, "r");
    CHECK(f != NULL, "cannot open %s", fx);
    if (!f) return;
    char line[65536];
    int lines = 0, bad = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, &err);
        CHECK(j != NULL, "%s line %d: %s", fx, lines + 1, err.text);
        if (!j) break;
        const char *text = json_string_value(json_object_get(j, "text"));
        json_t *ids = json_object_get(j, "ids");
        int32_t *got = xmalloc(tokenizer_max_tokens(text) * sizeof(int32_t));
        int n = tokenizer_encode(tok, text, 1, 0, got);
        int same = n == (int)json_array_size(ids);
        for (int i = 0; same && i < n; i++) same = got[i] == json_integer_value(json_array_get(ids, i));
        if (!same && bad++ < 3) {
            printf("  text \"%s\"\n  got ", text);
            for (int i = 0; i < n; i++) printf(" %d", got[i]);
            printf("\n  want");
            for (size_t i = 0; i < json_array_size(ids); i++) printf(" %lld", json_integer_value(json_array_get(ids, i)));
            printf("\n");
        }
        // and back
        char *back = tokenizer_decode(tok, -1, got, n, NULL);
        CHECK(strcmp(back, text) == 0, "round trip \"%s\" -> \"%s\"", text, back);
        free(back);
        free(got);
        json_decref(j);
        lines++;
    }
    fclose(f);
    printf("  %d fixture texts, %d differ from the Python encoder\n", lines, bad);
    CHECK(lines >= 40 && bad == 0, "%d of %d differ", bad, lines);
}

// decode(encode(x)) == x for every line of a file (JSONL: the "prompt" field)
static void round_trip_file(const char *path, int jsonl, int *lines_out, long *tokens_out) {
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "cannot open %s", path);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int lines = 0, bad = 0;
    long tokens = 0;
    while ((got = getline(&line, &cap, f)) > 0) {
        if (line[got - 1] == '\n') line[--got] = '\0';
        json_t *j = NULL;
        const char *text = line;
        if (jsonl) {
            j = json_loads(line, 0, NULL);
            text = json_string_value(json_object_get(j, "prompt"));
        }
        int32_t *ids = xmalloc(tokenizer_max_tokens(text) * sizeof(int32_t));
        int n = tokenizer_encode(tok, text, 1, 1, ids);
        size_t len;
        char *back = tokenizer_decode(tok, -1, ids, n, &len);
        if ((len != strlen(text) || memcmp(back, text, len) != 0) && bad++ < 3)
            printf("  line %d: \"%s\" -> \"%s\"\n", lines + 1, text, back);
        tokens += n;
        free(back);
        free(ids);
        json_decref(j);
        lines++;
    }
    free(line);
    fclose(f);
    CHECK(bad == 0, "%s: %d of %d lines do not round-trip", path, bad, lines);
    *lines_out = lines;
    *tokens_out = tokens;
}

TEST(round_trip_prompts) {
    int lines; long tokens;
    round_trip_file(data_path("tinystories/prompts.jsonl"), 1, &lines, &tokens);
    printf("  prompts.jsonl: %d prompts, %ld tokens\n", lines, tokens);
    CHECK(lines == 470, "%d prompts", lines);
}

TEST(round_trip_stories) {
    int lines; long tokens;
    double t0 = now_seconds();
    round_trip_file(data_path("tinystories/stories.txt"), 0, &lines, &tokens);
    printf("  stories.txt: %d lines, %ld tokens in %.2f s\n", lines, tokens, now_seconds() - t0);
    CHECK(lines > 1000, "%d lines", lines);
}

TEST(empty_and_flags) {
    int32_t ids[8];
    int n = tokenizer_encode(tok, "", 1, 1, ids);
    CHECK(n == 2 && ids[0] == 1 && ids[1] == 2, "empty text with BOS+EOS gives %d ids", n);
    n = tokenizer_encode(tok, "", 0, 0, ids);
    CHECK(n == 0, "empty text gives %d ids", n);
    n = tokenizer_encode(tok, "a", 0, 0, ids);
    // no BOS: the dummy-prefix space merges into " a" and decodes with its space
    char *s = tokenizer_decode(tok, -1, ids, n, NULL);
    CHECK(strcmp(s, " a") == 0, "\"a\" without BOS decodes to \"%s\"", s);
    free(s);
}

int main(void) {
    tok = tokenizer_load(data_path("stories260K/tok512.bin"), 512);
    RUN(load_tok512);
    RUN(ids_match_python_reference);
    RUN(round_trip_prompts);
    RUN(round_trip_stories);
    RUN(empty_and_flags);
    tokenizer_free(tok);
    return test_summary();
}
