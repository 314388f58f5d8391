// tokenizer.c — the tokenizer interface: which backend a file needs (tokenizer_load), the
// llama2.c tokenizer.bin backend (load, BPE encode by merge scores), and what every backend
// shares: the piece -> id table and decoding.
#include "tokenizer.h"

#include "common.h"          // die, xmalloc, EXIT_BADINPUT
#include "tokenizer_bpe.h"   // tokenizer_load_json, tokenizer_load_gguf, tokenizer_bpe_*

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// ----------------------------------------------------------------------------
// piece -> id hash table (open addressing, FNV-1a). llama2.c uses a sorted array and
// bsearch with strcmp; an exact (bytes, length) match is the same for vocabularies
// without embedded NUL bytes, and O(1).

uint64_t tok_fnv1a(const void *p, size_t n, uint64_t h) {
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 1099511628211ULL; }
    return h;
}
#define fnv1a tok_fnv1a
#define FNV_OFFSET TOK_FNV_OFFSET

int tokenizer_lookup(const Tokenizer *t, const char *s, size_t len) {
    size_t mask = (size_t)t->table_size - 1;
    for (size_t i = fnv1a(s, len, FNV_OFFSET) & mask;; i = (i + 1) & mask) {
        int id = t->table[i];
        if (id < 0) return -1;
        if ((size_t)t->vocab_len[id] == len && memcmp(t->vocab[id], s, len) == 0) return id;
    }
}

void tok_table_build(Tokenizer *t) {
    int size = 16;
    while (size < 2 * t->vocab_size) size *= 2;
    t->table_size = size;
    t->table = xmalloc((size_t)size * sizeof(int));
    for (int i = 0; i < size; i++) t->table[i] = -1;
    for (int id = 0; id < t->vocab_size; id++) {
        if (t->vocab_len[id] == 0) continue;   // an unused id (never looked up: pieces are not empty)
        // first occurrence wins when a piece is duplicated
        if (tokenizer_lookup(t, t->vocab[id], (size_t)t->vocab_len[id]) >= 0) continue;
        size_t i = fnv1a(t->vocab[id], (size_t)t->vocab_len[id], FNV_OFFSET) & (size_t)(size - 1);
        while (t->table[i] >= 0) i = (i + 1) & (size_t)(size - 1);
        t->table[i] = id;
    }
}

// "<0xNN>" -> NN, else -1
static int byte_piece(const char *s, int len) {
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        int c = s[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

// ----------------------------------------------------------------------------
// loading: which backend

static Tokenizer *load_llama2c(const char *path, int vocab_size);

static int file_exists(const char *p) { struct stat st; return stat(p, &st) == 0 && S_ISREG(st.st_mode); }

// What a file holds, from its first bytes: 'G' GGUF ("GGUF" magic), 'J' JSON (a '{', then a
// '"' or '}', blanks between: a tokenizer.bin whose max_token_length is 123 starts with '{' and
// a zero byte), 'B' anything else (a llama2.c tokenizer.bin), -1 unreadable.
static int sniff(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    char magic[4] = {0};
    size_t n = fread(magic, 1, 4, f);
    int c[2] = {0, 0};
    rewind(f);
    for (int k = 0; k < 2; k++)
        while ((c[k] = fgetc(f)) != EOF && (c[k] == ' ' || c[k] == '\t' || c[k] == '\n' || c[k] == '\r')) {}
    fclose(f);
    if (n == 0) return -1;
    if (n == 4 && memcmp(magic, "GGUF", 4) == 0) return 'G';
    return c[0] == '{' && (c[1] == '"' || c[1] == '}') ? 'J' : 'B';
}

Tokenizer *tokenizer_load(const char *path, int vocab_size) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {   // a model directory
        size_t n = strlen(path) + 32;
        char *p = xmalloc(n);
        snprintf(p, n, "%s/tokenizer.json", path);
        if (!file_exists(p)) snprintf(p, n, "%s/tokenizer.bin", path);
        if (!file_exists(p)) snprintf(p, n, "%s/tokenizer.gguf", path);
        if (!file_exists(p))
            die(EXIT_BADINPUT, "%s holds no tokenizer.json, tokenizer.bin or tokenizer.gguf\n  hint: pass --tokenizer FILE", path);
        Tokenizer *t = tokenizer_load(p, vocab_size);
        free(p);
        return t;
    }
    int kind = sniff(path);
    if (kind == 'G') return tokenizer_load_gguf(path, vocab_size);
    if (kind == 'J') return tokenizer_load_json(path, vocab_size);
    return load_llama2c(path, vocab_size);   // (and its messages for a missing file)
}

const char *tokenizer_kind_name(const Tokenizer *t) {
    return t->kind == TOKENIZER_BPE ? tokenizer_bpe_kind(t) : "llama2.c tokenizer.bin";
}

int tokenizer_prefix_len(const Tokenizer *t) {
    return t->kind == TOKENIZER_BPE ? tokenizer_bpe_prefix_len(t) : 1;
}

// the llama2.c tokenizer.bin
static Tokenizer *load_llama2c(const char *path, int vocab_size) {
    FILE *f = fopen(path, "rb");
    if (!f) die(EXIT_BADINPUT, "cannot open tokenizer %s: %m\n  hint: pass --tokenizer FILE (tokenizer.json, a llama2.c tokenizer.bin or a .gguf model)", path);
    fseek(f, 0, SEEK_END);
    long fsize = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (fsize < 4) die(EXIT_BADINPUT, "%s: too short for a tokenizer.bin (%ld bytes)", path, fsize);
    unsigned char *buf = xmalloc((size_t)fsize);
    if (fread(buf, 1, (size_t)fsize, f) != (size_t)fsize) die(EXIT_BADINPUT, "%s: read error", path);
    fclose(f);

    Tokenizer *t = xcalloc(1, sizeof(Tokenizer));
    t->kind = TOKENIZER_LLAMA2C;
    t->path = xstrdup(path);
    t->hash = fnv1a(buf, (size_t)fsize, FNV_OFFSET);
    int32_t mtl;
    memcpy(&mtl, buf, 4);
    if (mtl <= 0 || mtl > 1 << 16)
        die(EXIT_BADINPUT, "%s: max_token_length %d is not plausible; is this a llama2.c tokenizer.bin?", path, mtl);
    t->max_token_length = mtl;

    // first pass: count tokens and validate the framing
    size_t off = 4;
    int n = 0;
    while (off < (size_t)fsize && (vocab_size <= 0 || n < vocab_size)) {
        if ((size_t)fsize - off < 8) die(EXIT_BADINPUT, "%s: truncated at token %d (offset %zu)", path, n, off);
        int32_t len;
        memcpy(&len, buf + off + 4, 4);
        if (len < 0 || (size_t)len > (size_t)fsize - off - 8)
            die(EXIT_BADINPUT, "%s: token %d has byte length %d past the end of the file (offset %zu)", path, n, len, off);
        off += 8 + (size_t)len;
        n++;
    }
    if (vocab_size > 0 && n < vocab_size)
        die(EXIT_BADINPUT, "%s: holds %d tokens but the model's vocabulary has %d\n  hint: pass the tokenizer that belongs to this model", path, n, vocab_size);
    if (off != (size_t)fsize)
        die(EXIT_BADINPUT, "%s: %zu bytes left after %d tokens; the model's vocabulary has %d\n  hint: pass the tokenizer that belongs to this model", path, (size_t)fsize - off, n, vocab_size);
    if (n < 259) die(EXIT_BADINPUT, "%s: only %d tokens; a llama2.c tokenizer has <unk>, <s>, </s> and 256 byte tokens first", path, n);

    t->vocab_size = n;
    t->vocab = xmalloc((size_t)n * sizeof(char *));
    t->vocab_len = xmalloc((size_t)n * sizeof(int));
    t->scores = xmalloc((size_t)n * sizeof(float));
    t->piece = xmalloc((size_t)n * sizeof(char *));
    t->piece_len = xmalloc((size_t)n * sizeof(int));
    off = 4;
    for (int i = 0; i < n; i++) {
        int32_t len;
        memcpy(&t->scores[i], buf + off, 4);
        memcpy(&len, buf + off + 4, 4);
        t->vocab[i] = xmalloc((size_t)len + 1);
        memcpy(t->vocab[i], buf + off + 8, (size_t)len);
        t->vocab[i][len] = '\0';
        t->vocab_len[i] = len;
        off += 8 + (size_t)len;
        int b = byte_piece(t->vocab[i], len);
        if (b >= 0) {                       // raw byte token
            t->piece[i] = xmalloc(1);
            t->piece[i][0] = (char)b;
            t->piece_len[i] = 1;
        } else {
            t->piece[i] = t->vocab[i];
            t->piece_len[i] = len;
        }
    }
    free(buf);
    for (int b = 0; b < 256; b++) {
        if (byte_piece(t->vocab[b + 3], t->vocab_len[b + 3]) != b)
            die(EXIT_BADINPUT, "%s: token %d should be the byte token <0x%02X> but is \"%s\"", path, b + 3, b, t->vocab[b + 3]);
    }
    // sentencepiece / llama2.c ids; pad has no id of its own in these vocabularies
    t->bos_id = 1;
    t->eos_id = 2;
    t->pad_id = t->eos_id;
    t->special = xcalloc((size_t)n, 1);
    t->special[t->bos_id] = t->special[t->eos_id] = 1;
    tok_table_build(t);
    return t;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->vocab_size; i++) {
        if (t->piece[i] != t->vocab[i]) free(t->piece[i]);
        free(t->vocab[i]);
    }
    free(t->vocab); free(t->vocab_len); free(t->scores);
    free(t->piece); free(t->piece_len); free(t->table); free(t->path);
    free(t->special);
    if (t->bpe) tokenizer_bpe_free(t->bpe);
    free(t);
}

// ----------------------------------------------------------------------------
// encoding

// llama2.c: at most one id per byte, plus BOS, the dummy prefix and EOS. BPE: at most one
// id per byte of the normalized text, which NFC or a "▁" for " " replacement may make up to
// three times longer (tokenizer_bpe_encode checks the bound), plus the prefix and EOS.
size_t tokenizer_max_tokens(const char *text) { return 3 * strlen(text) + 8; }

int tokenizer_encode(const Tokenizer *t, const char *text, int bos, int eos, int32_t *out) {
    if (t->kind == TOKENIZER_BPE) return tokenizer_bpe_encode(t, text, bos, eos, out);
    int n = 0;
    if (bos) out[n++] = t->bos_id;
    if (text[0] != '\0') {
        // sentencepiece's add_dummy_prefix, as llama2.c does it: a " " token in front
        int sp = tokenizer_lookup(t, " ", 1);
        if (sp >= 0) out[n++] = sp;
        else out[n++] = ' ' + 3;   // honest note: llama2.c would store -1 here; use the byte token
    }
    // one token per UTF-8 code point: a lead byte plus continuation bytes (10xxxxxx), at
    // most 4 bytes per group, as llama2.c groups them (invalid UTF-8 simply falls back to bytes)
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; s[i];) {
        size_t len = 1;
        while (len < 4 && (s[i + len] & 0xC0) == 0x80) len++;
        int id = tokenizer_lookup(t, text + i, len);
        if (id >= 0) out[n++] = id;
        else for (size_t j = 0; j < len; j++) out[n++] = (int32_t)s[i + j] + 3;   // byte fallback
        i += len;
    }
    // merge the adjacent pair with the best score until none merges (leftmost on ties).
    // pair[i] caches the merge of (out[i], out[i+1]): -1 when their concatenated vocabulary
    // strings are not a piece. Vocabulary strings, not decoded bytes: byte tokens take part
    // as their "<0xNN>" text, as in llama2.c. After a merge only the two neighbouring pairs
    // change, so each step is one scan of cached scores instead of n hash lookups.
    int *pair = xmalloc((size_t)(n > 1 ? n : 1) * sizeof(int));
    char *buf = xmalloc(2 * (size_t)t->max_token_length + 16);
    size_t cap = 2 * (size_t)t->max_token_length + 16;
    #define PAIR_AT(i) do {                                                          \
        size_t la = (size_t)t->vocab_len[out[i]], lb = (size_t)t->vocab_len[out[(i) + 1]]; \
        if (la + lb > cap) { cap = la + lb; buf = xrealloc(buf, cap); }               \
        memcpy(buf, t->vocab[out[i]], la);                                            \
        memcpy(buf + la, t->vocab[out[(i) + 1]], lb);                                 \
        pair[i] = tokenizer_lookup(t, buf, la + lb);                                  \
    } while (0)
    for (int i = 0; i + 1 < n; i++) PAIR_AT(i);
    for (;;) {
        float best_score = -1e10f;
        int best_i = -1;
        for (int i = 0; i + 1 < n; i++) {
            if (pair[i] >= 0 && t->scores[pair[i]] > best_score) {
                best_score = t->scores[pair[i]];
                best_i = i;
            }
        }
        if (best_i < 0) break;
        out[best_i] = pair[best_i];                          // (a, b) -> merged token
        memmove(out + best_i + 1, out + best_i + 2, (size_t)(n - best_i - 2) * sizeof(int32_t));
        if (n - best_i - 3 > 0)                              // pairs right of (b, c) shift too
            memmove(pair + best_i + 1, pair + best_i + 2, (size_t)(n - best_i - 3) * sizeof(int));
        n--;
        if (best_i > 0) PAIR_AT(best_i - 1);                 // left neighbour changed
        if (best_i + 1 < n) PAIR_AT(best_i);                 // and the merged token's right pair
    }
    #undef PAIR_AT
    free(buf);
    free(pair);
    if (eos) out[n++] = t->eos_id;
    return n;
}

// ----------------------------------------------------------------------------
// decoding

// BPE: special tokens decode to ""; a sentencepiece-style decoder's Strip drops the leading
// space(s) of the first piece of a text (`strip` > 0: the piece starts the text), a Metaspace
// decoder the ▁ of a text's first token (`first`).
static const char *bpe_piece(const Tokenizer *t, int strip, int first, int token, int *len) {
    if (token < 0 || token >= t->vocab_size || t->special[token]) {
        *len = 0;
        return "";
    }
    const char *p = t->piece[token];
    int n = t->piece_len[token];
    if (first && (p = tokenizer_bpe_first_piece(t, token, &n)) == NULL) {
        p = t->piece[token];
        n = t->piece_len[token];
    }
    for (; strip > 0 && n > 0 && p[0] == ' '; strip--) { p++; n--; }
    *len = n;
    return p;
}

static int bpe_starts_text(const Tokenizer *t, int prev) {
    return prev < 0 || prev >= t->vocab_size || t->special[prev];
}

const char *tokenizer_piece(const Tokenizer *t, int prev, int token, int *len) {
    if (t->kind == TOKENIZER_BPE) {
        int starts = bpe_starts_text(t, prev);
        return bpe_piece(t, starts ? tokenizer_bpe_strip_start(t) : 0, starts, token, len);
    }
    if (token < 0 || token >= t->vocab_size || token == t->bos_id || token == t->eos_id) {
        *len = 0;
        return "";
    }
    const char *p = t->piece[token];
    int n = t->piece_len[token];
    // sentencepiece strips the leading space of the first piece after BOS (llama2.c PR #89);
    // byte tokens are not pieces with a leading space, so "<0x20>" is kept
    if (prev == t->bos_id && p == t->vocab[token] && n > 0 && p[0] == ' ') { p++; n--; }
    *len = n;
    return p;
}

char *tokenizer_decode(const Tokenizer *t, int prev, const int32_t *ids, int n, size_t *len) {
    size_t cap = 64, used = 0;
    char *s = xmalloc(cap);
    // BPE: the Strip decoder works on the whole text, so it strips the first non-empty piece
    // when the sequence starts a text (not the piece after each special token)
    int first = t->kind == TOKENIZER_BPE && bpe_starts_text(t, prev);   // no non-special token yet
    int strip = first ? tokenizer_bpe_strip_start(t) : 0;
    for (int i = 0; i < n; i++) {
        int pl;
        const char *p;
        if (t->kind == TOKENIZER_BPE) {
            p = bpe_piece(t, used == 0 ? strip : 0, first, ids[i], &pl);
            if (used == 0 && strip > 0) {   // what this piece stripped is used up
                int plain;
                bpe_piece(t, 0, first, ids[i], &plain);
                strip -= plain - pl;
            }
            if (ids[i] >= 0 && ids[i] < t->vocab_size && !t->special[ids[i]]) first = 0;
        } else
            p = tokenizer_piece(t, i ? ids[i - 1] : prev, ids[i], &pl);
        if (used + (size_t)pl + 1 > cap) {
            while (used + (size_t)pl + 1 > cap) cap *= 2;
            s = xrealloc(s, cap);
        }
        memcpy(s + used, p, (size_t)pl);
        used += (size_t)pl;
    }
    s[used] = '\0';
    if (len) *len = used;
    return s;
}
