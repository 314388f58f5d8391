// tokenizer.h — the llama2.c / sentencepiece-BPE tokenizer read from a `tokenizer.bin`.
//
// File format (little-endian): int32 max_token_length, then per token: float32 score,
// int32 byte length, the bytes (no terminator). Ids 3..258 are the byte tokens "<0xNN>".
//
// Encoding follows llama2.c run.c: optional BOS, a dummy-prefix " " token when the text is
// not empty, one token per UTF-8 code point (byte-fallback ids byte+3 when the code point is
// not in the vocabulary), then repeatedly merge the adjacent pair whose concatenated string
// is in the vocabulary with the highest score (leftmost on ties), optional EOS.
// Decoding strips the leading space of the first piece after BOS and turns "<0xNN>" into
// the raw byte, so decode(encode(text, bos=1)) == text.
#ifndef SAFE_TOKENIZER_H
#define SAFE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int vocab_size;
    int max_token_length;
    char **vocab;          // (V) NUL-terminated piece strings (as stored in the file)
    int *vocab_len;        // (V) their byte lengths
    float *scores;         // (V) merge scores, higher = earlier merge
    int bos_id, eos_id, pad_id;
    uint64_t hash;         // FNV-1a 64 of the file bytes: the tokenizer's identity
    char *path;
    // private: lookup table and decoded pieces
    int *table;            // open-addressing hash: piece -> id, size table_size
    int table_size;
    char **piece;          // (V) decoded bytes of each token (byte tokens -> 1 raw byte)
    int *piece_len;        // (V)
} Tokenizer;

// Load `path`. vocab_size > 0: the file must hold exactly that many tokens (exit 2 otherwise);
// vocab_size <= 0: read tokens until the end of the file. Dies with exit 2 naming the file.
Tokenizer *tokenizer_load(const char *path, int vocab_size);
void tokenizer_free(Tokenizer *t);

// Id of an exact piece string, or -1.
int tokenizer_lookup(const Tokenizer *t, const char *s, size_t len);

// Encode `text` (NUL-terminated UTF-8). Writes at most strlen(text) + 3 ids into `out`
// (the caller sizes it with tokenizer_max_tokens) and returns the count.
size_t tokenizer_max_tokens(const char *text);
int tokenizer_encode(const Tokenizer *t, const char *text, int bos, int eos, int32_t *out);

// The bytes of `token` as it appears in text after `prev` (the previous token, or -1).
// Not NUL-terminated when it is a raw byte 0; *len gets the length. BOS/EOS decode to "".
const char *tokenizer_piece(const Tokenizer *t, int prev, int token, int *len);
// Decode a whole sequence into a malloc'd NUL-terminated string (special tokens dropped);
// `prev` is the token before ids[0] (-1 for none, bos_id when the sequence follows BOS).
char *tokenizer_decode(const Tokenizer *t, int prev, const int32_t *ids, int n, size_t *len);

#endif
