// tokenizer.h — text <-> token ids, one interface over three kinds of tokenizer files.
//
// tokenizer_load looks at the file and picks the backend:
//   llama2.c `tokenizer.bin`  (TOKENIZER_LLAMA2C, lib/tokenizer.c)
//     little-endian int32 max_token_length, then per token: float32 score, int32 byte length,
//     the bytes. Ids 3..258 are the byte tokens "<0xNN>". Encoding follows llama2.c run.c:
//     optional BOS, a dummy-prefix " " token when the text is not empty, one token per UTF-8
//     code point (byte-fallback ids byte+3 when the code point is not in the vocabulary), then
//     repeatedly merge the adjacent pair whose concatenated string is in the vocabulary with
//     the highest score (leftmost on ties), optional EOS. Decoding strips the leading space of
//     the first piece after BOS and turns "<0xNN>" into the raw byte, so
//     decode(encode(text, bos=1)) == text.
//   Hugging Face `tokenizer.json` with a BPE model (TOKENIZER_BPE, lib/tokenizer_bpe.c):
//     byte-level BPE (GPT-2, Qwen2/2.5, Llama 3, SmolLM) and sentencepiece-style BPE with byte
//     fallback (Llama 2, TinyLlama), run the way the `tokenizers` library runs them: added and
//     special tokens split out of the raw text, normalizers, pre-tokenizers (regexes by PCRE2),
//     BPE by merge rank, the post-processor's BOS. BOS/EOS/pad ids come from
//     tokenizer_config.json, generation_config.json and config.json beside the file.
//   a GGUF model file (TOKENIZER_BPE, lib/tokenizer_gguf.c): the tokenizer.ggml.* metadata,
//     turned into the same BPE pipeline the way llama.cpp reads it.
// A model directory is accepted too: DIR/tokenizer.json, else DIR/tokenizer.bin, else
// DIR/tokenizer.gguf (as model_tokenizer_path looks for them).
//
// Threads may share a tokenizer: decoding only reads it, and BPE encoding holds a lock around
// its scratch buffers and pre-token cache (one encode at a time per tokenizer).
#ifndef SAFE_TOKENIZER_H
#define SAFE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

enum { TOKENIZER_LLAMA2C = 0, TOKENIZER_BPE = 1 };

struct TokBpe;

typedef struct {
    int kind;              // TOKENIZER_LLAMA2C or TOKENIZER_BPE
    int vocab_size;        // ids 0..vocab_size-1 (BPE: the highest id in the file + 1)
    int max_token_length;
    char **vocab;          // (V) NUL-terminated piece strings (as stored in the file; "" for
                           //     an id the file leaves unused)
    int *vocab_len;        // (V) their byte lengths
    float *scores;         // (V) merge scores, higher = earlier merge (llama2.c only, else NULL)
    int bos_id, eos_id, pad_id;   // -1 when the tokenizer has none
    uint64_t hash;         // FNV-1a 64 of the file bytes (tokenizer.json: and of
                           // tokenizer_config.json; GGUF: of the tokenizer metadata)
    char *path;
    // private: lookup table and decoded pieces
    int *table;            // open-addressing hash: piece -> id, size table_size
    int table_size;
    char **piece;          // (V) decoded bytes of each token (byte tokens -> 1 raw byte)
    int *piece_len;        // (V)
    unsigned char *special;   // (V) 1: dropped by decode (BOS/EOS/pad, special added tokens)
    struct TokBpe *bpe;    // the BPE pipeline (TOKENIZER_BPE), NULL for llama2.c
} Tokenizer;

// Load `path` (tokenizer.bin, tokenizer.json, a .gguf file or a model directory).
// vocab_size > 0 is the model's vocabulary: a llama2.c tokenizer.bin must hold exactly that
// many tokens; a tokenizer.json or GGUF tokenizer at most that many (embedding matrices are
// often padded past the tokenizer). vocab_size <= 0: no check. Dies with exit 2 naming the file.
Tokenizer *tokenizer_load(const char *path, int vocab_size);
void tokenizer_free(Tokenizer *t);
// Write the tokenizer of GGUF model `gguf_path` into directory `dir` as a Hugging Face
// tokenizer.json and tokenizer_config.json (lib/tokenizer_gguf.c), which transformers loads and
// tokenizer_load reads into the tokenizer the GGUF itself gives. Returns 1; 0 (with a warning
// naming the reason, nothing written) when the metadata is not a tokenizer supported here.
// Dies (exit 2) on a malformed GGUF, (exit 3) when a file cannot be written.
int tokenizer_gguf_export(const char *gguf_path, const char *dir);
// "llama2.c tokenizer.bin", "tokenizer.json byte-level BPE", "GGUF sentencepiece BPE", ...
const char *tokenizer_kind_name(const Tokenizer *t);

// Id of an exact piece string as the file spells it (byte-level BPE: "Ġthe"; sentencepiece:
// "▁the"; llama2.c: " the"), or -1.
int tokenizer_lookup(const Tokenizer *t, const char *s, size_t len);

// Encode `text` (NUL-terminated UTF-8; invalid UTF-8 falls back to bytes). bos: add what the
// tokenizer puts in front of a text (llama2.c: BOS; tokenizer.json: the post-processor's
// prefix, e.g. nothing for GPT-2/Qwen2, <|begin_of_text|> for Llama 3); eos: append eos_id.
// Writes at most tokenizer_max_tokens(text) ids into `out` and returns the count.
size_t tokenizer_max_tokens(const char *text);
int tokenizer_encode(const Tokenizer *t, const char *text, int bos, int eos, int32_t *out);
// How many ids encode(bos=1) puts in front of the text (llama2.c: 1; GPT-2/Qwen2: 0).
int tokenizer_prefix_len(const Tokenizer *t);

// The bytes of `token` as it appears in text after `prev` (the previous token, or -1).
// Not NUL-terminated when it is a raw byte 0; *len gets the length. BOS/EOS decode to ""
// (BPE: so do pad and every special added token; other added tokens decode to their text).
// A piece may be part of a UTF-8 character (byte tokens, byte-level BPE): concatenate.
// Sentencepiece-style tokenizers drop the leading space of the first piece of a text: after
// BOS (llama2.c), after -1 or a special token (tokenizer.json, its Strip decoder).
const char *tokenizer_piece(const Tokenizer *t, int prev, int token, int *len);
// Decode a whole sequence into a malloc'd NUL-terminated string (special tokens dropped, as
// the `tokenizers` library's decode(ids, skip_special_tokens=True));
// `prev` is the token before ids[0] (-1 for none, bos_id when the sequence follows BOS).
char *tokenizer_decode(const Tokenizer *t, int prev, const int32_t *ids, int n, size_t *len);

#endif
