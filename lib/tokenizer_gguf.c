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
//
// tokenizer_gguf_tree builds that tree; the loader hands it to tokenizer_bpe_build, and
// tokenizer_gguf_export writes it out as a Hugging Face tokenizer.json (model.vocab as
// {"piece": id}, the BOS as a TemplateProcessing post-processor) with a tokenizer_config.json
// (special tokens by text, add_bos_token, model_max_length from <arch>.context_length,
// tokenizer.chat_template), so transformers and tokenizer_load read the same tokenizer.
#include "tokenizer_bpe.h"

#include "common.h"   // die, xmalloc, EXIT_BADINPUT
#include "gguf.h"     // gguf_open, gguf_get_str_arr, gguf_get_i32_arr, gguf_get_f32_arr, ...

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

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

// Why a GGUF's tokenizer cannot be read: the message (as die would print it) into err.
typedef struct { char msg[1024]; } TreeErr;
static json_t *tree_fail(TreeErr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static json_t *tree_fail(TreeErr *e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return NULL;
}

// Pre-tokenizer for tokenizer.ggml.pre; *ignore_merges and *add_bos get llama.cpp's defaults.
// NULL (and e) for a pre-tokenizer not known here.
static json_t *gpt2_pre(const char *path, const char *pre, int *ignore_merges, int *add_bos, TreeErr *e) {
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
        json_decref(seq);
        return tree_fail(e, "%s: tokenizer.ggml.pre \"%s\" is not known here (gpt2, llama3/llama-bpe, qwen2, smollm, "
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

// The tokenizer.json tree of g's tokenizer metadata (model.vocab an array in id order), the
// special ids and add_bos into *cfg, the identity into *hash; NULL (and e) when the metadata
// is missing or of a kind not supported here.
static json_t *gguf_tree(const Gguf *g, const char *path, TokConfig *cfg, uint64_t *hash_out, TreeErr *e) {
    json_t *tj = NULL, *mdl = NULL;
    int32_t *types = NULL;
    char *model = gguf_get_strdup(g, "tokenizer.ggml.model");
    char *pre = gguf_get_strdup(g, "tokenizer.ggml.pre");
    if (!model) {
        tree_fail(e, "%s: no tokenizer.ggml.model in the metadata\n  hint: pass --tokenizer tokenizer.json", path);
        goto out;
    }
    int sp = !strcmp(model, "llama");
    if (!sp && strcmp(model, "gpt2") != 0) {
        tree_fail(e, "%s: tokenizer.ggml.model \"%s\" is not supported (gpt2 and llama are)", path, model);
        goto out;
    }
    const GgufStr *tokens;
    int64_t n = gguf_get_str_arr(g, "tokenizer.ggml.tokens", &tokens);
    if (n <= 0) { tree_fail(e, "%s: tokenizer.ggml.tokens missing or empty", path); goto out; }
    int64_t nt = gguf_get_i32_arr(g, "tokenizer.ggml.token_type", &types);
    if (nt >= 0 && nt != n) {
        tree_fail(e, "%s: tokenizer.ggml.token_type has %lld entries for %lld tokens", path, (long long)nt,
                  (long long)n);
        goto out;
    }

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
    tj = json_object();
    mdl = json_object();
    json_object_set_new(mdl, "type", json_string("BPE"));
    json_object_set_new(mdl, "vocab", vocab);
    if (sp) {
        float *scores = NULL;
        int64_t ns = gguf_get_f32_arr(g, "tokenizer.ggml.scores", &scores);
        if (ns != n) {
            free(scores);
            tree_fail(e, "%s: tokenizer.ggml.scores has %lld entries for %lld tokens", path, (long long)ns,
                      (long long)n);
            goto fail;
        }
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
        if (nm < 0) { tree_fail(e, "%s: tokenizer.ggml.merges missing (a gpt2 tokenizer needs it)", path); goto fail; }
        json_t *arr = json_array();
        for (int64_t i = 0; i < nm; i++) {
            json_array_append_new(arr, jstrn(merges[i].s, merges[i].len));
            hash = tok_fnv1a(merges[i].s, merges[i].len, hash);
        }
        json_object_set_new(mdl, "merges", arr);
        json_t *pt = gpt2_pre(path, pre, &ignore_merges, &add_bos, e);
        if (!pt) goto fail;
        json_object_set_new(tj, "pre_tokenizer", pt);
        // (the flags are the tokenizers library's; decoding reads none of them)
        json_object_set_new(tj, "decoder", byte_level(1));
    }
    json_object_set_new(mdl, "ignore_merges", json_boolean(ignore_merges));
    json_object_set_new(tj, "model", mdl);
    mdl = NULL;

    // control (3), user-defined (4) and unknown (2) tokens are matched in the text
    json_t *added = json_array();
    for (int64_t i = 0; types && i < n; i++) {
        if (types[i] != 2 && types[i] != 3 && types[i] != 4) continue;
        json_array_append_new(added, json_pack("{s:I, s:o, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)i, "content",
            jstrn(tokens[i].s, tokens[i].len), "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0,
            "special", types[i] != 4));
    }
    json_object_set_new(tj, "added_tokens", added);

    *cfg = (TokConfig){.bos_id = -1, .eos_id = -1, .pad_id = -1, .add_bos = -1, .source = "GGUF"};
    uint32_t v;
    if (gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &v)) cfg->bos_id = (int)v;
    if (gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &v)) cfg->eos_id = (int)v;
    if (gguf_get_u32(g, "tokenizer.ggml.padding_token_id", &v)) cfg->pad_id = (int)v;
    gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos);
    cfg->add_bos = add_bos;
    *hash_out = hash;
    goto out;
fail:
    json_decref(mdl);
    json_decref(tj);
    tj = NULL;
out:
    free(types);
    free(model);
    free(pre);
    return tj;
}

json_t *tokenizer_gguf_tree(const char *path, TokConfig *cfg, uint64_t *hash) {
    Gguf *g = gguf_open(path);
    TreeErr e;
    json_t *tj = gguf_tree(g, path, cfg, hash, &e);
    gguf_close(g);
    if (!tj) die(EXIT_BADINPUT, "%s", e.msg);
    return tj;
}

Tokenizer *tokenizer_load_gguf(const char *path, int vocab_size) {
    TokConfig cfg;
    uint64_t hash;
    json_t *tj = tokenizer_gguf_tree(path, &cfg, &hash);
    Tokenizer *t = tokenizer_bpe_build(tj, path, &cfg, vocab_size, hash);
    json_decref(tj);
    return t;
}

// ----------------------------------------------------------------------------
// export: the same tree as a Hugging Face tokenizer.json (+ tokenizer_config.json)

// Valid UTF-8 without NUL bytes: what a JSON object key the tokenizers library reads can hold.
static int valid_key(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
        if (k <= 0 || c == 0) return 0;
        i += (size_t)k;
    }
    return 1;
}

static json_t *or_null(json_t *v) { return v ? json_incref(v) : json_null(); }

// The special token id as its string (from the id-ordered vocab array), or null.
static json_t *token_str(json_t *vocab, int id) {
    return id >= 0 && (size_t)id < json_array_size(vocab) ? json_incref(json_array_get(vocab, (size_t)id)) : json_null();
}

// tokenizer.json's document made from the tree (borrowed), or NULL (and e).
static json_t *hf_document(json_t *tj, const TokConfig *cfg, const char *path, TreeErr *e) {
    json_t *mdl = json_object_get(tj, "model"), *vocab = json_object_get(mdl, "vocab");
    json_t *merges = json_object_get(mdl, "merges");
    // model.vocab {"piece": id}; a piece twice keeps its first id, as the loader's table does
    json_t *obj = json_object();
    size_t dups = 0;
    for (size_t i = 0; i < json_array_size(vocab); i++) {
        json_t *s = json_array_get(vocab, i);
        if (!valid_key(json_string_value(s), json_string_length(s))) {
            json_decref(obj);
            return tree_fail(e, "%s: token %zu is not valid UTF-8 (or holds a NUL byte); tokenizer.json cannot hold it",
                             path, i);
        }
        if (json_object_get(obj, json_string_value(s))) { dups++; continue; }
        json_object_set_new_nocheck(obj, json_string_value(s), json_integer((json_int_t)i));
    }
    if (dups) warn("%s: %zu tokens repeat an earlier token's text; tokenizer.json maps each text to its first id",
                   path, dups);
    // merges: "a b" strings (every tokenizers version reads them) unless a piece holds a space
    int pairs = 0;
    for (size_t i = 0; i < json_array_size(merges) && !pairs; i++) {
        json_t *m = json_array_get(merges, i);
        for (size_t k = 0; json_is_array(m) && k < 2; k++)
            pairs |= memchr(json_string_value(json_array_get(m, k)), ' ', json_string_length(json_array_get(m, k))) != NULL;
    }
    json_t *hm = json_array();
    for (size_t i = 0; i < json_array_size(merges); i++) {
        json_t *m = json_array_get(merges, i);
        if (pairs || !json_is_array(m)) { json_array_append(hm, m); continue; }
        json_t *a = json_array_get(m, 0), *b = json_array_get(m, 1);
        size_t la = json_string_length(a), lb = json_string_length(b);
        char *s = xmalloc(la + lb + 2);
        memcpy(s, json_string_value(a), la);
        s[la] = ' ';
        memcpy(s + la + 1, json_string_value(b), lb);
        json_array_append_new(hm, json_stringn_nocheck(s, la + lb + 1));
        free(s);
    }
    json_t *model = json_object();
    json_object_set_new(model, "type", json_string("BPE"));
    json_object_set_new(model, "dropout", json_null());
    json_object_set_new(model, "unk_token", or_null(json_object_get(mdl, "unk_token")));
    json_object_set_new(model, "continuing_subword_prefix", json_null());
    json_object_set_new(model, "end_of_word_suffix", json_null());
    json_object_set_new(model, "fuse_unk", json_boolean(json_is_true(json_object_get(mdl, "fuse_unk"))));
    json_object_set_new(model, "byte_fallback", json_boolean(json_is_true(json_object_get(mdl, "byte_fallback"))));
    json_object_set_new(model, "ignore_merges", json_boolean(json_is_true(json_object_get(mdl, "ignore_merges"))));
    json_object_set_new(model, "vocab", obj);
    json_object_set_new(model, "merges", hm);

    // BOS in front: TemplateProcessing, as transformers' converters write it
    json_t *post = NULL;
    if (cfg->add_bos == 1 && cfg->bos_id >= 0 && (size_t)cfg->bos_id < json_array_size(vocab)) {
        json_t *bos = json_array_get(vocab, (size_t)cfg->bos_id);
        const char *b = json_string_value(bos);
        post = json_pack("{s:s, s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}], s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}, {s:{s:s, s:i}}, "
                         "{s:{s:s, s:i}}], s:{s:{s:O, s:[i], s:[O]}}}",
                         "type", "TemplateProcessing",
                         "single", "SpecialToken", "id", b, "type_id", 0, "Sequence", "id", "A", "type_id", 0,
                         "pair", "SpecialToken", "id", b, "type_id", 0, "Sequence", "id", "A", "type_id", 0,
                         "SpecialToken", "id", b, "type_id", 1, "Sequence", "id", "B", "type_id", 1,
                         "special_tokens", b, "id", bos, "ids", cfg->bos_id, "tokens", bos);
    }
    json_t *doc = json_object();
    json_object_set_new(doc, "version", json_string("1.0"));
    json_object_set_new(doc, "truncation", json_null());
    json_object_set_new(doc, "padding", json_null());
    json_object_set_new(doc, "added_tokens", or_null(json_object_get(tj, "added_tokens")));
    json_object_set_new(doc, "normalizer", or_null(json_object_get(tj, "normalizer")));
    json_object_set_new(doc, "pre_tokenizer", or_null(json_object_get(tj, "pre_tokenizer")));
    json_object_set_new(doc, "post_processor", post ? post : json_null());
    json_object_set_new(doc, "decoder", or_null(json_object_get(tj, "decoder")));
    json_object_set_new(doc, "model", model);
    return doc;
}

static void write_json(json_t *j, const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    if (json_dump_file(j, p, JSON_INDENT(2)) != 0) die(EXIT_RUNTIME, "writing %s failed", p);
    free(p);
}

int tokenizer_gguf_export(const char *gguf_path, const char *dir) {
    Gguf *g = gguf_open(gguf_path);
    TreeErr e;
    TokConfig cfg;
    uint64_t hash;
    json_t *tj = gguf_tree(g, gguf_path, &cfg, &hash, &e), *doc = NULL;
    if (tj) doc = hf_document(tj, &cfg, gguf_path, &e);
    if (!doc) {
        warn("%s\n  (so no tokenizer.json is written for it)", e.msg);
        json_decref(tj);
        gguf_close(g);
        return 0;
    }
    write_json(doc, dir, "tokenizer.json");

    // tokenizer_config.json: the special tokens by text, BOS/EOS, length and chat template
    json_t *vocab = json_object_get(json_object_get(tj, "model"), "vocab");
    int add_bos = cfg.add_bos == 1 && cfg.bos_id >= 0 && (size_t)cfg.bos_id < json_array_size(vocab);
    uint32_t unk = 0;
    int has_unk = gguf_get_u32(g, "tokenizer.ggml.unknown_token_id", &unk);
    json_t *tc = json_object();
    json_object_set_new(tc, "add_bos_token", json_boolean(add_bos));
    json_object_set_new(tc, "add_eos_token", json_false());
    json_object_set_new(tc, "bos_token", token_str(vocab, cfg.bos_id));
    json_object_set_new(tc, "eos_token", token_str(vocab, cfg.eos_id));
    json_object_set_new(tc, "pad_token", token_str(vocab, cfg.pad_id));
    json_object_set_new(tc, "unk_token", token_str(vocab, has_unk && unk < (1u << 30) ? (int)unk : -1));
    json_object_set_new(tc, "clean_up_tokenization_spaces", json_false());
    char *arch = gguf_get_strdup(g, "general.architecture");
    if (arch) {
        char key[256];
        snprintf(key, sizeof key, "%s.context_length", arch);
        uint32_t c32;
        uint64_t c64;
        if (gguf_get_u32(g, key, &c32)) json_object_set_new(tc, "model_max_length", json_integer(c32));
        else if (gguf_get_u64(g, key, &c64)) json_object_set_new(tc, "model_max_length", json_integer((json_int_t)c64));
        free(arch);
    }
    json_object_set_new(tc, "tokenizer_class", json_string("PreTrainedTokenizerFast"));
    GgufStr tmpl;
    if (gguf_get_str(g, "tokenizer.chat_template", &tmpl)) {
        if (valid_key(tmpl.s, tmpl.len)) json_object_set_new(tc, "chat_template", json_stringn(tmpl.s, tmpl.len));
        else warn("%s: tokenizer.chat_template is not valid UTF-8; left out of tokenizer_config.json", gguf_path);
    }
    write_json(tc, dir, "tokenizer_config.json");
    json_decref(tc);
    json_decref(doc);
    json_decref(tj);
    gguf_close(g);
    return 1;
}
