// tokenizer_gguf.c — the tokenizer inside a GGUF file (tokenizer.ggml.* metadata), written
// into a tokenizer.json tree the way llama.cpp interprets the metadata, then built by
// tokenizer_bpe_build like any tokenizer.json.
//
//   tokenizer.ggml.model "gpt2": byte-level BPE: tokens + merges; the pre-tokenizer regexes
//     are chosen by tokenizer.ggml.pre as llama.cpp chooses them (llama-vocab.cpp):
//       gpt2/default       ByteLevel with the GPT-2 regex
//       llama3/llama-bpe   Split(Llama 3 regex) + ByteLevel, ignore_merges
//       qwen2              Split(Qwen2 regex) + ByteLevel
//       smollm/starcoder   Digits(individual) + ByteLevel with the GPT-2 regex
//   tokenizer.ggml.model "llama": sentencepiece BPE: tokens + scores; merges are made from
//     the scores as transformers' SentencePieceExtractor makes them (every split of a token
//     into two tokens, ranked by the token's score), normalizer Prepend("▁") + Replace(" ",
//     "▁"), byte fallback.
//   Control, user-defined and unknown tokens (token_type 3, 4, 2) are added tokens matched in
//   the raw text (control ones are special: decode drops them), as llama.cpp's
//   parse_special does. BOS/EOS/pad from tokenizer.ggml.{bos,eos,padding}_token_id, BOS in
//   front when tokenizer.ggml.add_bos_token (default: llama3 and sentencepiece yes, else no).
#include "tokenizer_bpe.h"

#include "common.h"   // die, xmalloc, EXIT_BADINPUT
#include "gguf.h"     // gguf_open, gguf_get_str_arr, gguf_get_i32_arr, gguf_get_f32_arr, ...

#include <stdlib.h>
#include <string.h>

static const char LLAMA3_RE[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_RE[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static json_t *jstrn(const char *s, size_t n) { return json_stringn_nocheck(s, n); }

static json_t *split_re(const char *re) {
    return json_pack("{s:s, s:{s:s}, s:s, s:b}", "type", "Split", "pattern", "Regex", re, "behavior", "Isolated",
                     "invert", 0);
}
static json_t *byte_level(int use_regex) {
    return json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0,
                     "use_regex", use_regex);
}

// Pre-tokenizer for tokenizer.ggml.pre; *ignore_merges and *add_bos get llama.cpp's defaults.
static json_t *gpt2_pre(const char *path, const char *pre, int *ignore_merges, int *add_bos) {
    json_t *seq = json_array();
    if (!pre || !strcmp(pre, "default") || !strcmp(pre, "gpt2") || !strcmp(pre, "gpt-2")) {
        json_array_append_new(seq, byte_level(1));
    } else if (!strcmp(pre, "llama3") || !strcmp(pre, "llama-v3") || !strcmp(pre, "llama-bpe") ||
               !strcmp(pre, "dbrx") || !strcmp(pre, "smaug-bpe") || !strcmp(pre, "olmo")) {
        json_array_append_new(seq, split_re(LLAMA3_RE));
        json_array_append_new(seq, byte_level(0));
        *ignore_merges = !strcmp(pre, "llama3") || !strcmp(pre, "llama-v3") || !strcmp(pre, "llama-bpe");
        *add_bos = 1;
    } else if (!strcmp(pre, "qwen2")) {
        json_array_append_new(seq, split_re(QWEN2_RE));
        json_array_append_new(seq, byte_level(0));
    } else if (!strcmp(pre, "smollm") || !strcmp(pre, "starcoder") || !strcmp(pre, "refact") ||
               !strcmp(pre, "command-r") || !strcmp(pre, "codeshell") || !strcmp(pre, "exaone") ||
               !strcmp(pre, "minerva-7b")) {
        json_array_append_new(seq, json_pack("{s:s, s:b}", "type", "Digits", "individual_digits", 1));
        json_array_append_new(seq, byte_level(1));
    } else {
        die(EXIT_BADINPUT, "%s: tokenizer.ggml.pre \"%s\" is not known here (gpt2, llama3/llama-bpe, qwen2, smollm, "
            "starcoder are)\n  hint: convert the model's tokenizer.json instead and pass --tokenizer tokenizer.json",
            path, pre);
    }
    return json_pack("{s:s, s:o}", "type", "Sequence", "pretokenizers", seq);
}

// sentencepiece merges from scores, as transformers' SentencePieceExtractor: for each token
// (in id order), each split into two tokens (pairs ordered by the ids of left, right), all
// merges then stably sorted by the merged token's score, highest first.
typedef struct { int l, r; float score; int order; } SpMerge;
static int cmp_spmerge(const void *pa, const void *pb) {
    const SpMerge *a = pa, *b = pb;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    return a->order - b->order;
}
static int cmp_lr(const void *pa, const void *pb) {
    const SpMerge *a = pa, *b = pb;
    return a->l != b->l ? a->l - b->l : a->r - b->r;
}

static json_t *sp_merges(const Tokenizer *vt, const float *scores, int n) {
    SpMerge *m = NULL;
    size_t nm = 0, cap = 0;
    for (int i = 0; i < n; i++) {
        const char *s = vt->vocab[i];
        int len = vt->vocab_len[i];
        size_t first = nm;
        for (int k = 1; k < len; k++) {
            if (((unsigned char)s[k] & 0xC0) == 0x80) continue;   // code point boundaries only
            int l = tokenizer_lookup(vt, s, (size_t)k), r = tokenizer_lookup(vt, s + k, (size_t)(len - k));
            if (l < 0 || r < 0) continue;
            if (nm == cap) { cap = cap ? 2 * cap : 1024; m = xrealloc(m, cap * sizeof(SpMerge)); }
            m[nm++] = (SpMerge){l, r, scores[i], 0};
        }
        if (nm - first > 1) qsort(m + first, nm - first, sizeof(SpMerge), cmp_lr);
    }
    for (size_t i = 0; i < nm; i++) m[i].order = (int)i;
    if (nm > 1) qsort(m, nm, sizeof(SpMerge), cmp_spmerge);
    json_t *arr = json_array();
    for (size_t i = 0; i < nm; i++)
        json_array_append_new(arr, json_pack("[o,o]", jstrn(vt->vocab[m[i].l], (size_t)vt->vocab_len[m[i].l]),
                                             jstrn(vt->vocab[m[i].r], (size_t)vt->vocab_len[m[i].r])));
    free(m);
    return arr;
}

Tokenizer *tokenizer_load_gguf(const char *path, int vocab_size) {
    Gguf *g = gguf_open(path);
    char *model = gguf_get_strdup(g, "tokenizer.ggml.model");
    char *pre = gguf_get_strdup(g, "tokenizer.ggml.pre");
    if (!model)
        die(EXIT_BADINPUT, "%s: no tokenizer.ggml.model in the metadata\n  hint: pass --tokenizer tokenizer.json", path);
    int sp = !strcmp(model, "llama");
    if (!sp && strcmp(model, "gpt2") != 0)
        die(EXIT_BADINPUT, "%s: tokenizer.ggml.model \"%s\" is not supported (gpt2 and llama are)", path, model);
    const GgufStr *tokens;
    int64_t n = gguf_get_str_arr(g, "tokenizer.ggml.tokens", &tokens);
    if (n <= 0) die(EXIT_BADINPUT, "%s: tokenizer.ggml.tokens missing or empty", path);
    int32_t *types = NULL;
    int64_t nt = gguf_get_i32_arr(g, "tokenizer.ggml.token_type", &types);
    if (nt >= 0 && nt != n)
        die(EXIT_BADINPUT, "%s: tokenizer.ggml.token_type has %lld entries for %lld tokens", path, (long long)nt,
            (long long)n);

    // identity: the tokenizer metadata, not the whole (large) file
    uint64_t hash = tok_fnv1a(model, strlen(model), TOK_FNV_OFFSET);
    if (pre) hash = tok_fnv1a(pre, strlen(pre), hash);
    json_t *vocab = json_array();
    for (int64_t i = 0; i < n; i++) {
        json_array_append_new(vocab, jstrn(tokens[i].s, tokens[i].len));
        hash = tok_fnv1a(tokens[i].s, tokens[i].len, hash);
        hash = tok_fnv1a("", 1, hash);
    }
    if (types) hash = tok_fnv1a(types, (size_t)n * sizeof(int32_t), hash);

    int ignore_merges = 0, add_bos = sp;
    json_t *tj = json_object(), *mdl = json_object();
    json_object_set_new(mdl, "type", json_string("BPE"));
    json_object_set_new(mdl, "vocab", vocab);
    if (sp) {
        float *scores = NULL;
        int64_t ns = gguf_get_f32_arr(g, "tokenizer.ggml.scores", &scores);
        if (ns != n)
            die(EXIT_BADINPUT, "%s: tokenizer.ggml.scores has %lld entries for %lld tokens", path, (long long)ns,
                (long long)n);
        hash = tok_fnv1a(scores, (size_t)n * sizeof(float), hash);
        // a throwaway tokenizer for piece lookups while the merges are made
        Tokenizer vt = {.vocab_size = (int)n};
        vt.vocab = xmalloc((size_t)n * sizeof(char *));
        vt.vocab_len = xmalloc((size_t)n * sizeof(int));
        for (int64_t i = 0; i < n; i++) {
            vt.vocab[i] = (char *)tokens[i].s;
            vt.vocab_len[i] = (int)tokens[i].len;
        }
        tok_table_build(&vt);
        json_object_set_new(mdl, "merges", sp_merges(&vt, scores, (int)n));
        free(vt.vocab); free(vt.vocab_len); free(vt.table);
        free(scores);
        int add_space = 1;
        gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &add_space);
        json_t *norms = json_array();
        if (add_space) json_array_append_new(norms, json_pack("{s:s, s:s}", "type", "Prepend", "prepend", "\xe2\x96\x81"));
        json_array_append_new(norms, json_pack("{s:s, s:{s:s}, s:s}", "type", "Replace", "pattern", "String", " ",
                                               "content", "\xe2\x96\x81"));
        json_object_set_new(tj, "normalizer", json_pack("{s:s, s:o}", "type", "Sequence", "normalizers", norms));
        json_object_set_new(mdl, "byte_fallback", json_true());
        json_object_set_new(mdl, "fuse_unk", json_true());
        uint32_t unk;
        if (gguf_get_u32(g, "tokenizer.ggml.unknown_token_id", &unk) && unk < (uint64_t)n)
            json_object_set_new(mdl, "unk_token", jstrn(tokens[unk].s, tokens[unk].len));
        json_object_set_new(tj, "decoder", json_pack("{s:s, s:[{s:s, s:{s:s}, s:s}, {s:s}, {s:s}, {s:s, s:s, s:i, s:i}]}",
            "type", "Sequence", "decoders",
            "type", "Replace", "pattern", "String", "\xe2\x96\x81", "content", " ",
            "type", "ByteFallback", "type", "Fuse",
            "type", "Strip", "content", " ", "start", add_space ? 1 : 0, "stop", 0));
    } else {
        const GgufStr *merges;
        int64_t nm = gguf_get_str_arr(g, "tokenizer.ggml.merges", &merges);
        if (nm < 0) die(EXIT_BADINPUT, "%s: tokenizer.ggml.merges missing (a gpt2 tokenizer needs it)", path);
        json_t *arr = json_array();
        for (int64_t i = 0; i < nm; i++) {
            json_array_append_new(arr, jstrn(merges[i].s, merges[i].len));
            hash = tok_fnv1a(merges[i].s, merges[i].len, hash);
        }
        json_object_set_new(mdl, "merges", arr);
        json_object_set_new(tj, "pre_tokenizer", gpt2_pre(path, pre, &ignore_merges, &add_bos));
        json_object_set_new(tj, "decoder", json_pack("{s:s}", "type", "ByteLevel"));
    }
    json_object_set_new(mdl, "ignore_merges", json_boolean(ignore_merges));
    json_object_set_new(tj, "model", mdl);

    // control (3), user-defined (4) and unknown (2) tokens are matched in the text
    json_t *added = json_array();
    for (int64_t i = 0; types && i < n; i++) {
        if (types[i] != 2 && types[i] != 3 && types[i] != 4) continue;
        json_array_append_new(added, json_pack("{s:I, s:o, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)i, "content",
            jstrn(tokens[i].s, tokens[i].len), "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0,
            "special", types[i] != 4));
    }
    json_object_set_new(tj, "added_tokens", added);

    TokConfig cfg = {.bos_id = -1, .eos_id = -1, .pad_id = -1, .add_bos = -1,
                     .source = "GGUF"};
    uint32_t v;
    if (gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &v)) cfg.bos_id = (int)v;
    if (gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &v)) cfg.eos_id = (int)v;
    if (gguf_get_u32(g, "tokenizer.ggml.padding_token_id", &v)) cfg.pad_id = (int)v;
    gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos);
    cfg.add_bos = add_bos;
    Tokenizer *t = tokenizer_bpe_build(tj, path, &cfg, vocab_size, hash);
    json_decref(tj);
    free(types);
    free(model);
    free(pre);
    gguf_close(g);
    return t;
}
