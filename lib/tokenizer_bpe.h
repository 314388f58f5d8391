// tokenizer_bpe.h — private to the tokenizer backends (tokenizer.c, tokenizer_bpe.c,
// tokenizer_gguf.c); users include tokenizer.h.
//
// Every BPE tokenizer is described as a Hugging Face tokenizer.json document (a jansson tree):
// tokenizer.json files are read as they are, and the GGUF loader writes its tokenizer.ggml.*
// metadata into such a tree the way llama.cpp interprets it. One builder turns the tree into
// a Tokenizer, so both file kinds run the same, tested pipeline.
#ifndef SAFE_TOKENIZER_BPE_H
#define SAFE_TOKENIZER_BPE_H

#include "tokenizer.h"

#include <jansson.h>

// What the files beside the tokenizer (or GGUF metadata) say about special ids.
typedef struct {
    json_t *bos_tok, *eos_tok, *pad_tok;   // tokenizer_config.json's "bos_token"...: "<s>" or
                                           // {"content": "<s>"}; NULL: not given. Win over ids.
    int bos_id, eos_id, pad_id;   // -1: not given (bos: then the post-processor's first token)
    int add_bos;                  // 1/0: override the post-processor's BOS; -1: not given
    const char *source;           // where the file kind came from, for tokenizer_kind_name
} TokConfig;

// Build a TOKENIZER_BPE tokenizer from a tokenizer.json tree (borrowed). `path` names the
// file in messages; `hash` is the identity stored in t->hash. Dies (exit 2) on anything
// unsupported, naming the file and the JSON field.
Tokenizer *tokenizer_bpe_build(json_t *tj, const char *path, const TokConfig *cfg, int vocab_size,
                               uint64_t hash);
void tokenizer_bpe_free(struct TokBpe *b);
int tokenizer_bpe_encode(const Tokenizer *t, const char *text, int bos, int eos, int32_t *out);
int tokenizer_bpe_prefix_len(const Tokenizer *t);
int tokenizer_bpe_strip_start(const Tokenizer *t);   // leading spaces the decoder strips
// `token` decoded as the first token of a text (a Metaspace decoder drops its ▁), or NULL
// when that is the ordinary piece.
const char *tokenizer_bpe_first_piece(const Tokenizer *t, int token, int *len);
const char *tokenizer_bpe_kind(const Tokenizer *t);

// backends' loaders
Tokenizer *tokenizer_load_json(const char *path, int vocab_size);   // tokenizer_bpe.c
Tokenizer *tokenizer_load_gguf(const char *path, int vocab_size);   // tokenizer_gguf.c
// The tokenizer.json tree of a GGUF file's tokenizer.ggml.* metadata (model.vocab an array in
// id order; the caller owns it), its special ids and add_bos into *cfg, its identity into
// *hash. Dies (exit 2) naming the file on metadata that is missing or not supported.
json_t *tokenizer_gguf_tree(const char *path, TokConfig *cfg, uint64_t *hash);

// shared helpers (tokenizer.c)
#define TOK_FNV_OFFSET 14695981039346656037ULL
uint64_t tok_fnv1a(const void *p, size_t n, uint64_t h);
void tok_table_build(Tokenizer *t);   // t->table from t->vocab; empty strings are left out

#endif
