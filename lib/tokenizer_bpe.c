// tokenizer_bpe.c — Hugging Face tokenizer.json BPE tokenizers, run the way the `tokenizers`
// library (Rust) runs them, so that ids match it exactly:
//
//   text ─ added tokens (raw) ─ normalizers ─ added tokens (normalized) ─ pre-tokenizers
//        ─ BPE per pre-token (cached) ─ post-processor prefix
//
//   1. Added/special tokens with normalized=false are cut out of the raw text first
//      (leftmost-longest, honouring single_word, lstrip, rstrip); the rest is normalized piece
//      by piece (so a Prepend("▁") normalizer prepends after every special token, as it does
//      in `tokenizers`), then tokens with normalized=true are cut out of the normalized text.
//   2. Normalizers: NFC/NFD/NFKC/NFKD (utf8proc), Prepend, Replace, Lowercase, Sequence.
//   3. Pre-tokenizers: Split (Regex by PCRE2 with UTF+UCP, or String), ByteLevel (the GPT-2
//      regex when use_regex, then bytes -> printable code points), Digits, Metaspace,
//      Whitespace, WhitespaceSplit, Punctuation, Sequence; the five split behaviours, `invert`.
//   4. BPE: one symbol per code point of the pre-token (byte_fallback: "<0xNN>" tokens for a
//      code point not in the vocabulary, else unk), then repeatedly merge the adjacent pair
//      with the lowest merge rank (leftmost on ties); ignore_merges: a pre-token that is a
//      vocabulary entry is one token.
//   5. Post-processor: TemplateProcessing's special tokens before $A (BOS), ByteLevel (none).
//   Decoders (per token, to bytes): ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace.
//
// Onig (the Rust library's regex engine) and PCRE2 agree on the patterns these tokenizers use
// (\p{L}, \p{N}, (?i:...), lookahead) once \s and \w are spelled out as Onig's classes
// (regex_translate); Unicode tables may differ by a version.
//
// Speed: each distinct pre-token's ids are cached (up to 32768 of them, then the cache starts
// over); PCRE2's JIT runs the regexes. 10-25 MB/s of prompt text on one core.
//
// Honest notes, where this is not the library's behaviour:
//   - invalid UTF-8 (the library only takes valid strings) travels as single bytes: byte-level
//     and byte-fallback tokenizers encode it and decode it back unchanged; the library's
//     decoders would turn such bytes into U+FFFD.
//   - Lowercase maps one code point to one (Rust's to_lowercase maps İ to two).
//   - TemplateProcessing tokens after $A (an EOS suffix) and add_eos_token are not added:
//     encode's eos flag is the caller's choice. A Strip decoder strips leading spaces only.
//   - normalizers, pre-tokenizers, models, post-processors and decoders not listed above are
//     refused at load with a message (BPE dropout is ignored with a warning).
#include "tokenizer_bpe.h"

#include "jsonfile.h"   // json_loadb_lenient: HF files with integers beyond int64

#include "common.h"   // die, warn, xmalloc, EXIT_BADINPUT

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

// ----------------------------------------------------------------------------
// UTF-8

// Length of the code point at s (n bytes left): 1..4, or 1 for a byte that does not start a
// valid sequence (such bytes travel alone and fall back to byte tokens).
static int utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    int len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (len == 0 || (size_t)len > n) return 1;
    for (int i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 1;
    if (c == 0xE0 && s[1] < 0xA0) return 1;          // overlong
    if (c == 0xED && s[1] >= 0xA0) return 1;         // surrogates
    if (c == 0xF0 && s[1] < 0x90) return 1;          // overlong
    if (c == 0xF4 && s[1] >= 0x90) return 1;         // > U+10FFFF
    return len;
}

static uint32_t utf8_cp(const unsigned char *s, int len) {
    switch (len) {
    case 2: return (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
    case 3: return (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    case 4: return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
    default: return s[0];
    }
}

static int utf8_put(uint32_t cp, char *o) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | (cp >> 6 & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

// Rust's char::is_whitespace (the White_Space property)
static int is_white(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Rust's c.is_alphanumeric() || c == '_'. Honest note: letters and numbers by general
// category; Rust's Alphabetic also counts some marks (Other_Alphabetic).
static int is_word(uint32_t c) {
    if (c == '_') return 1;
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) || (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO);
}

// ----------------------------------------------------------------------------
// GPT-2's bytes_to_unicode: printable bytes map to themselves, the other 68 to U+0100..U+0143
// in byte order, so every byte is a visible character in the vocabulary.

static char bl_str[256][2];
static unsigned char bl_len[256];
static int16_t bl_rev[0x144];   // code point -> byte, -1
static pthread_once_t bl_once = PTHREAD_ONCE_INIT;

static void bl_init(void) {
    int extra = 0;
    for (int i = 0; i < 0x144; i++) bl_rev[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint32_t cp = printable ? (uint32_t)b : 256u + (uint32_t)extra++;
        char tmp[4];
        bl_len[b] = (unsigned char)utf8_put(cp, tmp);
        memcpy(bl_str[b], tmp, bl_len[b]);
        bl_rev[cp] = (int16_t)b;
    }
}

// ----------------------------------------------------------------------------
// growable byte buffer and lists of spans into one

typedef struct { char *p; size_t n, cap; } Buf;

static void buf_reserve(Buf *b, size_t extra) {
    if (b->n + extra + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->n + extra + 1 > cap) cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
}
static void buf_put(Buf *b, const void *s, size_t n) {
    buf_reserve(b, n);
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
}

typedef struct {
    size_t off, len;   // into the arena
    int origin;        // the piece starts at offset 0 of the original text (Metaspace "first")
} Span;
typedef struct { Span *v; int n, cap; } Spans;

static void spans_push(Spans *s, size_t off, size_t len, int origin) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->v = xrealloc(s->v, (size_t)s->cap * sizeof(Span));
    }
    s->v[s->n++] = (Span){off, len, origin};
}

typedef struct { int32_t *v; int n, cap; } Ids;
static void ids_push(Ids *a, int32_t id) {
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 256;
        a->v = xrealloc(a->v, (size_t)a->cap * sizeof(int32_t));
    }
    a->v[a->n++] = id;
}

// ----------------------------------------------------------------------------
// the pipeline's description

enum { NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_PREPEND, NORM_REPLACE, NORM_LOWERCASE };
enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE };
enum { SPLIT_ISOLATED, SPLIT_REMOVED, SPLIT_PREV, SPLIT_NEXT, SPLIT_CONTIGUOUS };
enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_METASPACE };

typedef struct {
    int kind;
    char *a, *b;           // Prepend: a; Replace: pattern a (literal) -> b
    size_t a_len, b_len;
    pcre2_code *re;        // Replace with a Regex pattern
} Norm;

typedef struct {
    int kind;
    pcre2_code *re;        // Split(Regex), ByteLevel(use_regex), Digits, Whitespace*
    char *lit;             // Split(String)
    size_t lit_len;
    int behavior, invert;
    int add_prefix_space;  // ByteLevel
    char rep[8];           // Metaspace replacement (UTF-8)
    int rep_len, prepend;  // prepend: 0 never, 1 first, 2 always
    int split;             // Metaspace split
} Pre;

typedef struct {
    int kind;
    char *a, *b;           // Replace a -> b
    size_t a_len, b_len;
} Dec;

typedef struct {
    int id;
    char *pat;             // what is matched: the content (normalized tokens: normalized)
    size_t len;
    unsigned char single_word, lstrip, rstrip;
} Added;

typedef struct {
    Added *v;              // sorted by first byte, then longest first
    int n;
    int start[257];        // v[start[c] .. start[c+1]) begin with byte c
} AddedSet;

typedef struct { size_t a, b; int m; } Piece;
typedef struct { Piece *v; int n, cap; } Pieces;
typedef struct { size_t a, b; int id; } Seg;   // an added-token split: id -1 is text
typedef struct { Seg *v; int n, cap; } Segs;

typedef struct {           // pre-token -> ids cache entry
    uint64_t h;
    size_t key_off, ids_off;
    uint32_t key_len, n_ids;
} CacheEnt;

typedef struct TokBpe {
    char kind[64];
    Norm *norm; int n_norm;
    Pre *pre; int n_pre;
    Dec *dec; int n_dec;
    int strip_start;               // the decoder's Strip(" ", start)
    int n_vocab;
    int meta_first;                // a Metaspace decoder drops the ▁ of a text's first token
    char **piece_first;            // (V) then: each token decoded as a text's first, else NULL
    int *piece_first_len;
    // model
    uint64_t *mkey;                // merges: (a << 32 | b) -> rank, new id; open addressing
    int32_t *mrank, *mnew;
    size_t msize;                  // power of two; mkey == UINT64_MAX: empty
    int ignore_merges, byte_fallback, fuse_unk, unk_id;
    int byte_id[256];              // "<0xNN>" ids, -1 when absent
    // added tokens
    AddedSet raw, normed;
    // post-processor
    int prefix[8], n_prefix;
    // encode state, under the lock
    pthread_mutex_t lock;
    pcre2_match_data *md;
    CacheEnt *cache; size_t cache_size, cache_used;
    Buf cache_keys; Ids cache_ids;
    Buf norm_a, norm_b, arena_a, arena_b;
    Spans sp_a, sp_b;
    Pieces pc;
    Segs raw_segs, norm_segs;
    Ids out;
    // BPE word scratch
    int *sym_id, *sym_prev, *sym_next, *sym_len; int sym_cap;
    int32_t *heap; int heap_cap;   // (rank, pos, id) triples
} TokBpe;

// ----------------------------------------------------------------------------
// regexes

// The Rust `tokenizers` library compiles these patterns with Oniguruma, whose \s is Unicode
// White_Space (PCRE2's \s with UCP adds U+180E, via \h) and whose \w is Letter, Mark,
// Decimal_Number, Connector_Punctuation (PCRE2 10.42's lacks marks). So \s, \S, \w, \W are
// spelled out as Onig's classes before compiling (\S and \W inside a [...] stay PCRE2's).
#define WORD_CHARS "\\p{L}\\p{M}\\p{Nd}\\p{Pc}"
#define WHITE_SPACE "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
static char *regex_translate(const char *pat, size_t len, size_t *out_len) {
    Buf o = {0};
    int in_class = 0;
    for (size_t i = 0; i < len; i++) {
        char c = pat[i];
        if (c == '\\' && i + 1 < len) {
            char e = pat[++i];
            const char *r = e == 's' ? (in_class ? WHITE_SPACE : "[" WHITE_SPACE "]")
                          : e == 'w' ? (in_class ? WORD_CHARS : "[" WORD_CHARS "]")
                          : e == 'S' && !in_class ? "[^" WHITE_SPACE "]"
                          : e == 'W' && !in_class ? "[^" WORD_CHARS "]" : NULL;
            if (r) buf_put(&o, r, strlen(r));
            else { buf_put(&o, &c, 1); buf_put(&o, &e, 1); }
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = 1;
            buf_put(&o, &c, 1);
            if (i + 1 < len && pat[i + 1] == '^') buf_put(&o, &pat[++i], 1);
            if (i + 1 < len && pat[i + 1] == ']') buf_put(&o, &pat[++i], 1);   // a leading ] is literal
            continue;
        }
        if (c == '[' && in_class && i + 1 < len && pat[i + 1] == ':') {   // [:posix:]
            const char *end = strstr(pat + i, ":]");
            size_t n = end && (size_t)(end - pat) < len ? (size_t)(end - pat) + 2 - i : 1;
            buf_put(&o, pat + i, n);
            i += n - 1;
            continue;
        }
        if (c == ']' && in_class) in_class = 0;
        buf_put(&o, &c, 1);
    }
    *out_len = o.n;
    return o.p;
}

static pcre2_code *regex_compile(const char *pat0, size_t len0, const char *path, const char *where) {
    int err;
    PCRE2_SIZE eoff;
    size_t len;
    char *pat = regex_translate(pat0, len0, &len);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &eoff, NULL);
    free(pat);
    pat = (char *)pat0;
    len = len0;
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        die(EXIT_BADINPUT, "%s: %s: regex /%.*s/ does not compile (offset %zu after \\s is spelled out): %s", path, where,
            (int)len, pat, (size_t)eoff, (char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   // falls back to the interpreter when JIT is absent
    return re;
}

// GPT-2's pre-tokenizer regex (ByteLevel with use_regex)
static const char GPT2_RE[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// Matches of `re` (or literal `lit`) in s[0..n) as a list of (span, is_match) covering s, the
// way `tokenizers` find_matches does.
static void pieces_push(Pieces *p, size_t a, size_t b, int m) {
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 64;
        p->v = xrealloc(p->v, (size_t)p->cap * sizeof(Piece));
    }
    p->v[p->n++] = (Piece){a, b, m};
}

static void find_matches(TokBpe *b, const Pre *st, const char *s, size_t n, Pieces *out) {
    out->n = 0;
    size_t prev = 0, off = 0;
    while (off <= n) {
        size_t ms, me;
        if (st->re) {
            int rc = pcre2_match(st->re, (PCRE2_SPTR)s, n, off, 0, b->md, NULL);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(rc, msg, sizeof msg);
                die(EXIT_RUNTIME, "tokenizer: regex match failed: %s", (char *)msg);
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(b->md);
            ms = ov[0]; me = ov[1];
        } else {
            if (st->lit_len == 0 || n - off < st->lit_len) break;
            const char *hit = memmem(s + off, n - off, st->lit, st->lit_len);
            if (!hit) break;
            ms = (size_t)(hit - s); me = ms + st->lit_len;
        }
        if (prev != ms) pieces_push(out, prev, ms, 0);
        pieces_push(out, ms, me, 1);
        prev = me;
        if (me == ms) {   // an empty match: step over one code point
            if (me >= n) break;
            off = me + (size_t)utf8_len((const unsigned char *)s + me, n - me);
        } else off = me;
    }
    if (prev != n || n == 0) pieces_push(out, prev, n, 0);
}

// ----------------------------------------------------------------------------
// normalizers

static void norm_apply(TokBpe *b, const Norm *nm, const Buf *in, Buf *out) {
    out->n = 0;
    switch (nm->kind) {
    case NORM_NFC: case NORM_NFD: case NORM_NFKC: case NORM_NFKD: {
        utf8proc_option_t opt = UTF8PROC_STABLE;
        opt |= (nm->kind == NORM_NFC || nm->kind == NORM_NFKC) ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE;
        if (nm->kind == NORM_NFKC || nm->kind == NORM_NFKD) opt |= UTF8PROC_COMPAT;
        size_t i = 0;
        while (i < in->n && (unsigned char)in->p[i] < 0x80) i++;
        if (i == in->n) { buf_put(out, in->p, in->n); break; }   // ASCII is in every normal form
        utf8proc_uint8_t *dst = NULL;
        utf8proc_ssize_t r = in->n ? utf8proc_map((const utf8proc_uint8_t *)in->p, (utf8proc_ssize_t)in->n, &dst, opt) : -1;
        if (r >= 0) buf_put(out, dst, (size_t)r);
        else buf_put(out, in->p, in->n);   // honest note: invalid UTF-8 is left as it is
        free(dst);
        break;
    }
    case NORM_PREPEND:
        if (in->n) buf_put(out, nm->a, nm->a_len);
        buf_put(out, in->p, in->n);
        break;
    case NORM_REPLACE:
        if (nm->re) {   // every match of the regex -> the content (literally)
            Pre st = {.re = nm->re};
            Pieces m = {0};
            find_matches(b, &st, in->p, in->n, &m);
            for (int k = 0; k < m.n; k++) {
                if (m.v[k].m) buf_put(out, nm->b, nm->b_len);
                else buf_put(out, in->p + m.v[k].a, m.v[k].b - m.v[k].a);
            }
            free(m.v);
            break;
        }
        for (size_t i = 0; i < in->n;) {
            const char *hit = nm->a_len && in->n - i >= nm->a_len ? memmem(in->p + i, in->n - i, nm->a, nm->a_len) : NULL;
            size_t stop = hit ? (size_t)(hit - in->p) : in->n;
            buf_put(out, in->p + i, stop - i);
            if (!hit) break;
            buf_put(out, nm->b, nm->b_len);
            i = stop + nm->a_len;
        }
        break;
    case NORM_LOWERCASE:   // honest note: one code point to one (Rust's to_lowercase may give two)
        for (size_t i = 0; i < in->n;) {
            int l = utf8_len((const unsigned char *)in->p + i, in->n - i);
            if (l == 1 && (unsigned char)in->p[i] >= 0x80) { buf_put(out, in->p + i, 1); i++; continue; }
            char tmp[4];
            uint32_t c = (uint32_t)utf8proc_tolower((utf8proc_int32_t)utf8_cp((const unsigned char *)in->p + i, l));
            buf_put(out, tmp, (size_t)utf8_put(c, tmp));
            i += (size_t)l;
        }
        break;
    }
    out->p[out->n] = '\0';
}

// ----------------------------------------------------------------------------
// pre-tokenizers: each step turns every piece of `in` (strings in arena `ia`) into pieces of
// `out` (strings in arena `oa`); empty pieces are dropped, as in `tokenizers`.

static void pre_apply(TokBpe *b, const Pre *st, const Buf *ia, const Spans *in, Buf *oa, Spans *out) {
    Pieces *pc = &b->pc;   // scratch: the current piece's matches
    oa->n = 0;
    out->n = 0;
    for (int k = 0; k < in->n; k++) {
        const Span *sp = &in->v[k];
        const char *s = ia->p + sp->off;
        size_t n = sp->len;
        if (st->kind == PRE_BYTELEVEL) {
            // add_prefix_space (per piece, as `tokenizers` does it), regex split, byte map
            char *tmp = NULL;
            if (st->add_prefix_space && (n == 0 || s[0] != ' ')) {
                tmp = xmalloc(n + 1);
                tmp[0] = ' ';
                memcpy(tmp + 1, s, n);
                s = tmp; n++;
            }
            if (st->re) find_matches(b, st, s, n, pc);
            else { pc->n = 0; pieces_push(pc, 0, n, 0); }
            for (int i = 0; i < pc->n; i++) {
                if (pc->v[i].b == pc->v[i].a) continue;
                size_t off = oa->n;
                for (size_t j = pc->v[i].a; j < pc->v[i].b; j++) {
                    unsigned char c = (unsigned char)s[j];
                    buf_put(oa, bl_str[c], bl_len[c]);
                }
                spans_push(out, off, oa->n - off, sp->origin && pc->v[i].a == 0);
            }
            free(tmp);
            continue;
        }
        char *tmp = NULL;
        if (st->kind == PRE_METASPACE) {
            // ' ' -> replacement, prepend it (scheme), then split before each replacement
            Buf m = {0};
            int starts = n >= (size_t)st->rep_len && memcmp(s, st->rep, (size_t)st->rep_len) == 0;
            if (!starts && n > 0 && s[0] == ' ') starts = 1;   // the first ' ' becomes one
            if ((st->prepend == 2 || (st->prepend == 1 && sp->origin)) && !starts) buf_put(&m, st->rep, (size_t)st->rep_len);
            for (size_t j = 0; j < n; j++) {
                if (s[j] == ' ') buf_put(&m, st->rep, (size_t)st->rep_len);
                else buf_put(&m, s + j, 1);
            }
            tmp = m.p; s = m.p ? m.p : ""; n = m.n;
            if (!st->split) {
                if (n) { size_t off = oa->n; buf_put(oa, s, n); spans_push(out, off, n, sp->origin); }
                free(tmp);
                continue;
            }
            Pre lit = {.lit = (char *)st->rep, .lit_len = (size_t)st->rep_len};
            find_matches(b, &lit, s, n, pc);
        } else {
            find_matches(b, st, s, n, pc);
        }
        int behavior = st->kind == PRE_METASPACE ? SPLIT_NEXT : st->behavior;
        if (st->kind == PRE_SPLIT && st->invert)
            for (int i = 0; i < pc->n; i++) pc->v[i].m = !pc->v[i].m;
        // the split behaviours, as `tokenizers` normalizer.rs split() folds them
        int w = 0;   // pieces compacted in place: (a, b, remove)
        int prev_match = 0;
        if (behavior == SPLIT_NEXT) {
            // fold from the right: a match not preceded (on its right) by a match joins the next piece
            for (int i = pc->n - 1; i >= 0; i--) {
                Piece p = pc->v[i];
                if (p.m && !prev_match && w > 0) pc->v[pc->n - w].a = p.a;   // extend the last pushed (to the right)
                else { w++; pc->v[pc->n - w] = (Piece){p.a, p.b, 0}; }
                prev_match = p.m;
            }
            memmove(pc->v, pc->v + pc->n - w, (size_t)w * sizeof(Piece));
        } else {
            for (int i = 0; i < pc->n; i++) {
                Piece p = pc->v[i];
                switch (behavior) {
                case SPLIT_ISOLATED: pc->v[w++] = (Piece){p.a, p.b, 0}; break;
                case SPLIT_REMOVED: pc->v[w++] = p; break;
                case SPLIT_CONTIGUOUS:
                    if (p.m == prev_match && w > 0) pc->v[w - 1].b = p.b;
                    else pc->v[w++] = (Piece){p.a, p.b, 0};
                    break;
                case SPLIT_PREV:
                    if (p.m && !prev_match && w > 0) pc->v[w - 1].b = p.b;
                    else pc->v[w++] = (Piece){p.a, p.b, 0};
                    break;
                }
                prev_match = p.m;
            }
        }
        for (int i = 0; i < w; i++) {
            if (pc->v[i].m || pc->v[i].b == pc->v[i].a) continue;   // removed, or empty
            size_t off = oa->n;
            buf_put(oa, s + pc->v[i].a, pc->v[i].b - pc->v[i].a);
            spans_push(out, off, pc->v[i].b - pc->v[i].a, sp->origin && pc->v[i].a == 0);
        }
        free(tmp);
    }
}

// ----------------------------------------------------------------------------
// the BPE model

static int merge_get(const TokBpe *b, int x, int y, int *rank, int *id) {
    uint64_t key = (uint64_t)(uint32_t)x << 32 | (uint32_t)y;
    size_t mask = b->msize - 1;
    for (size_t i = (size_t)(key * 0x9E3779B97F4A7C15ULL >> 17) & mask;; i = (i + 1) & mask) {
        if (b->mkey[i] == UINT64_MAX) return 0;
        if (b->mkey[i] == key) { *rank = b->mrank[i]; *id = b->mnew[i]; return 1; }
    }
}

static void merge_put(TokBpe *b, int x, int y, int rank, int id) {
    uint64_t key = (uint64_t)(uint32_t)x << 32 | (uint32_t)y;
    size_t mask = b->msize - 1;
    size_t i = (size_t)(key * 0x9E3779B97F4A7C15ULL >> 17) & mask;
    while (b->mkey[i] != UINT64_MAX && b->mkey[i] != key) i = (i + 1) & mask;
    b->mkey[i] = key;   // a later duplicate overwrites, as a Rust HashMap collect does
    b->mrank[i] = rank;
    b->mnew[i] = id;
}

// min-heap of merge candidates (rank, pos, id): lowest rank first, then leftmost
static int cand_less(const int32_t *a, const int32_t *c) { return a[0] < c[0] || (a[0] == c[0] && a[1] < c[1]); }
static void heap_push(TokBpe *b, int *n, int rank, int pos, int id) {
    if (3 * (*n + 1) > b->heap_cap) {
        b->heap_cap = 2 * b->heap_cap + 96;
        b->heap = xrealloc(b->heap, (size_t)b->heap_cap * sizeof(int32_t));
    }
    int32_t *h = b->heap;
    int i = (*n)++;
    h[3 * i] = rank; h[3 * i + 1] = pos; h[3 * i + 2] = id;
    while (i > 0) {   // sift up
        int p = (i - 1) / 2;
        if (!cand_less(h + 3 * i, h + 3 * p)) break;
        for (int k = 0; k < 3; k++) { int32_t t = h[3 * i + k]; h[3 * i + k] = h[3 * p + k]; h[3 * p + k] = t; }
        i = p;
    }
}
static void heap_pop(TokBpe *b, int *n, int32_t top[3]) {
    int32_t *h = b->heap;
    memcpy(top, h, 3 * sizeof(int32_t));
    (*n)--;
    memcpy(h, h + 3 * *n, 3 * sizeof(int32_t));
    for (int i = 0;;) {   // sift down
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && cand_less(h + 3 * l, h + 3 * m)) m = l;
        if (r < *n && cand_less(h + 3 * r, h + 3 * m)) m = r;
        if (m == i) break;
        for (int k = 0; k < 3; k++) { int32_t t = h[3 * i + k]; h[3 * i + k] = h[3 * m + k]; h[3 * m + k] = t; }
        i = m;
    }
}

// BPE of one pre-token w[0..n) -> ids appended to out (tokenizers' BPE::merge_word + merge_all)
static void bpe_word(const Tokenizer *t, TokBpe *b, const char *w, size_t n, Ids *out) {
    if (b->ignore_merges) {
        int id = tokenizer_lookup(t, w, n);
        if (id >= 0) { ids_push(out, id); return; }
    }
    if ((int)n + 1 > b->sym_cap) {
        b->sym_cap = 2 * (int)n + 16;
        b->sym_id = xrealloc(b->sym_id, (size_t)b->sym_cap * sizeof(int));
        b->sym_prev = xrealloc(b->sym_prev, (size_t)b->sym_cap * sizeof(int));
        b->sym_next = xrealloc(b->sym_next, (size_t)b->sym_cap * sizeof(int));
        b->sym_len = xrealloc(b->sym_len, (size_t)b->sym_cap * sizeof(int));
    }
    // symbols: one per code point (byte fallback: one per byte), unk runs per fuse_unk
    int ns = 0, unk_pending = 0;
    #define ADD_SYM(ID) do { b->sym_id[ns] = (ID); b->sym_len[ns] = 1; ns++; } while (0)
    for (size_t i = 0; i < n;) {
        int l = utf8_len((const unsigned char *)w + i, n - i);
        int id = tokenizer_lookup(t, w + i, (size_t)l);
        if (id >= 0) {
            if (unk_pending) { ADD_SYM(b->unk_id); unk_pending = 0; }
            ADD_SYM(id);
        } else {
            int ok = b->byte_fallback;
            for (int j = 0; ok && j < l; j++) ok = b->byte_id[(unsigned char)w[i + j]] >= 0;
            if (ok) {   // (a pending unk stays pending here, as in tokenizers)
                for (int j = 0; j < l; j++) ADD_SYM(b->byte_id[(unsigned char)w[i + j]]);
            } else if (b->unk_id >= 0) {
                if (unk_pending && !b->fuse_unk) ADD_SYM(b->unk_id);
                unk_pending = 1;
            }   // no unk token: the code point is dropped, as in tokenizers
        }
        i += (size_t)l;
    }
    if (unk_pending) ADD_SYM(b->unk_id);
    #undef ADD_SYM
    for (int i = 0; i < ns; i++) { b->sym_prev[i] = i - 1; b->sym_next[i] = i + 1 < ns ? i + 1 : -1; }
    // merge: always the lowest-ranked pair present, leftmost on ties
    int hn = 0, rank, id;
    for (int i = 0; i + 1 < ns; i++)
        if (merge_get(b, b->sym_id[i], b->sym_id[i + 1], &rank, &id)) heap_push(b, &hn, rank, i, id);
    while (hn > 0) {
        int32_t top[3];
        heap_pop(b, &hn, top);
        int pos = top[1], nx = b->sym_next[pos];
        if (b->sym_len[pos] == 0 || nx < 0) continue;     // merged away, or no right neighbour
        if (!merge_get(b, b->sym_id[pos], b->sym_id[nx], &rank, &id) || id != top[2]) continue;   // stale
        b->sym_id[pos] = id;                               // (left, right) -> merged, in place
        b->sym_len[pos] += b->sym_len[nx];
        b->sym_len[nx] = 0;
        b->sym_next[pos] = b->sym_next[nx];
        if (b->sym_next[nx] >= 0) b->sym_prev[b->sym_next[nx]] = pos;
        int pv = b->sym_prev[pos], nn = b->sym_next[pos], r2, id2;   // the two new pairs
        if (pv >= 0 && merge_get(b, b->sym_id[pv], id, &r2, &id2)) heap_push(b, &hn, r2, pv, id2);
        if (nn >= 0 && merge_get(b, id, b->sym_id[nn], &r2, &id2)) heap_push(b, &hn, r2, pos, id2);
    }
    for (int i = ns > 0 ? 0 : -1; i >= 0; i = b->sym_next[i]) ids_push(out, b->sym_id[i]);
}

// cached: pre-token -> ids. Cleared whole when it grows past its budget.
#define CACHE_MAX_ENTRIES (1 << 15)
static void bpe_cached(const Tokenizer *t, TokBpe *b, const char *w, size_t n, Ids *out) {
    if (n > 256) { bpe_word(t, b, w, n, out); return; }   // long pre-tokens are rare: not cached
    uint64_t h = tok_fnv1a(w, n, TOK_FNV_OFFSET);
    size_t mask = b->cache_size - 1;
    size_t i = (size_t)h & mask;
    for (; b->cache[i].key_len; i = (i + 1) & mask) {
        CacheEnt *e = &b->cache[i];
        if (e->h == h && e->key_len == n && memcmp(b->cache_keys.p + e->key_off, w, n) == 0) {
            for (uint32_t k = 0; k < e->n_ids; k++) ids_push(out, b->cache_ids.v[e->ids_off + k]);
            return;
        }
    }
    int before = out->n;
    bpe_word(t, b, w, n, out);
    if (b->cache_used + 1 > b->cache_size / 2) {   // full: start over
        memset(b->cache, 0, b->cache_size * sizeof(CacheEnt));
        b->cache_used = 0;
        b->cache_keys.n = 0;
        b->cache_ids.n = 0;
        i = (size_t)h & mask;
    }
    CacheEnt *e = &b->cache[i];
    e->h = h;
    e->key_off = b->cache_keys.n;
    e->key_len = (uint32_t)n;
    buf_put(&b->cache_keys, w, n);
    e->ids_off = (size_t)b->cache_ids.n;
    e->n_ids = (uint32_t)(out->n - before);
    for (int k = before; k < out->n; k++) ids_push(&b->cache_ids, out->v[k]);
    b->cache_used++;
}

// ----------------------------------------------------------------------------
// added tokens: leftmost-longest matches, with single_word / lstrip / rstrip

static void segs_push(Segs *s, size_t a, size_t b, int id) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 16;
        s->v = xrealloc(s->v, (size_t)s->cap * sizeof(Seg));
    }
    s->v[s->n++] = (Seg){a, b, id};
}

// The code point that ends at s[at-1] (at > 0); *from gets where it starts.
static uint32_t cp_before(const char *s, size_t at, size_t *from) {
    size_t i = at - 1;
    while (i > 0 && at - i < 4 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    int l = utf8_len((const unsigned char *)s + i, at - i);
    if ((size_t)l != at - i) i = at - 1, l = 1;   // not a whole code point: the last byte alone
    *from = i;
    return utf8_cp((const unsigned char *)s + i, l);
}

static void split_added(const AddedSet *set, const char *s, size_t n, Segs *out) {
    out->n = 0;
    if (set->n == 0) { segs_push(out, 0, n, -1); return; }
    size_t start_offset = 0;
    for (size_t p = 0; p < n;) {
        unsigned c = (unsigned char)s[p];
        const Added *hit = NULL;
        for (int k = set->start[c]; k < set->start[c + 1]; k++) {
            const Added *a = &set->v[k];
            if (a->len <= n - p && memcmp(s + p, a->pat, a->len) == 0) { hit = a; break; }   // longest first
        }
        if (!hit) { p++; continue; }
        size_t start = p, stop = p + hit->len;
        p = stop;
        if (hit->single_word) {
            size_t from;
            int start_space = start == 0 || !is_word(cp_before(s, start, &from));
            int stop_space = stop == n;
            if (!stop_space) {
                int l = utf8_len((const unsigned char *)s + stop, n - stop);
                stop_space = !is_word(utf8_cp((const unsigned char *)s + stop, l));
            }
            if (!start_space || !stop_space) continue;
        }
        if (hit->lstrip) {   // swallow the whitespace before it (not past the previous split)
            size_t ns = start, from;
            while (ns > 0 && is_white(cp_before(s, ns, &from))) ns = from;
            start = ns > start_offset ? ns : start_offset;
        }
        if (hit->rstrip) {   // and after it
            while (stop < n) {
                int l = utf8_len((const unsigned char *)s + stop, n - stop);
                if (!is_white(utf8_cp((const unsigned char *)s + stop, l))) break;
                stop += (size_t)l;
            }
            p = stop;
        }
        if (start_offset < start) segs_push(out, start_offset, start, -1);
        segs_push(out, start, stop, hit->id);
        start_offset = stop;
    }
    if (start_offset < n) segs_push(out, start_offset, n, -1);
}

// ----------------------------------------------------------------------------
// encoding

// Normalize and pre-tokenize one text segment s[0..n), BPE each piece into b->out.
static void encode_text(const Tokenizer *t, TokBpe *b, const char *s, size_t n, int origin) {
    b->norm_a.n = 0;
    buf_put(&b->norm_a, s, n);
    b->norm_a.p[b->norm_a.n] = '\0';
    for (int i = 0; i < b->n_norm; i++) {
        norm_apply(b, &b->norm[i], &b->norm_a, &b->norm_b);
        Buf tmp = b->norm_a; b->norm_a = b->norm_b; b->norm_b = tmp;
    }
    Segs *sg = &b->norm_segs;
    split_added(&b->normed, b->norm_a.p, b->norm_a.n, sg);
    for (int k = 0; k < sg->n; k++) {
        Seg g = sg->v[k];
        if (g.id >= 0) { ids_push(&b->out, g.id); continue; }
        b->arena_a.n = 0;
        b->sp_a.n = 0;
        buf_put(&b->arena_a, b->norm_a.p + g.a, g.b - g.a);
        spans_push(&b->sp_a, 0, g.b - g.a, origin && g.a == 0);
        for (int i = 0; i < b->n_pre; i++) {
            pre_apply(b, &b->pre[i], &b->arena_a, &b->sp_a, &b->arena_b, &b->sp_b);
            Buf tb = b->arena_a; b->arena_a = b->arena_b; b->arena_b = tb;
            Spans ts = b->sp_a; b->sp_a = b->sp_b; b->sp_b = ts;
        }
        for (int i = 0; i < b->sp_a.n; i++)
            if (b->sp_a.v[i].len) bpe_cached(t, b, b->arena_a.p + b->sp_a.v[i].off, b->sp_a.v[i].len, &b->out);
    }
}

int tokenizer_bpe_encode(const Tokenizer *t, const char *text, int bos, int eos, int32_t *out) {
    TokBpe *b = t->bpe;
    size_t n = strlen(text);
    pthread_mutex_lock(&b->lock);
    b->out.n = 0;
    if (bos)
        for (int i = 0; i < b->n_prefix; i++) ids_push(&b->out, b->prefix[i]);
    Segs *raw = &b->raw_segs;
    split_added(&b->raw, text, n, raw);
    for (int k = 0; k < raw->n; k++) {
        Seg g = raw->v[k];
        if (g.id >= 0) ids_push(&b->out, g.id);
        else encode_text(t, b, text + g.a, g.b - g.a, g.a == 0);
    }
    if (eos && t->eos_id >= 0) ids_push(&b->out, t->eos_id);
    int m = b->out.n;
    if ((size_t)m > tokenizer_max_tokens(text))
        die(EXIT_RUNTIME, "tokenizer %s: %d tokens for a text of %zu bytes exceed tokenizer_max_tokens (a normalizer "
            "that expands text this much is not expected)", t->path, m, n);
    memcpy(out, b->out.v, (size_t)m * sizeof(int32_t));
    pthread_mutex_unlock(&b->lock);
    return m;
}

int tokenizer_bpe_prefix_len(const Tokenizer *t) { return t->bpe->n_prefix; }
int tokenizer_bpe_strip_start(const Tokenizer *t) { return t->bpe->strip_start; }
const char *tokenizer_bpe_first_piece(const Tokenizer *t, int token, int *len) {
    if (!t->bpe->piece_first) return NULL;
    *len = t->bpe->piece_first_len[token];
    return t->bpe->piece_first[token];
}
const char *tokenizer_bpe_kind(const Tokenizer *t) { return t->bpe->kind; }

void tokenizer_bpe_free(TokBpe *b) {
    for (int i = 0; i < b->n_norm; i++) { free(b->norm[i].a); free(b->norm[i].b); pcre2_code_free(b->norm[i].re); }
    for (int i = 0; i < b->n_pre; i++) { pcre2_code_free(b->pre[i].re); free(b->pre[i].lit); }
    for (int i = 0; i < b->n_dec; i++) { free(b->dec[i].a); free(b->dec[i].b); }
    for (int i = 0; i < b->raw.n; i++) free(b->raw.v[i].pat);
    for (int i = 0; i < b->normed.n; i++) free(b->normed.v[i].pat);
    free(b->norm); free(b->pre); free(b->dec); free(b->raw.v); free(b->normed.v);
    for (int i = 0; b->piece_first && i < b->n_vocab; i++) free(b->piece_first[i]);
    free(b->piece_first); free(b->piece_first_len);
    free(b->mkey); free(b->mrank); free(b->mnew);
    pcre2_match_data_free(b->md);
    free(b->cache); free(b->cache_keys.p); free(b->cache_ids.v);
    free(b->norm_a.p); free(b->norm_b.p); free(b->arena_a.p); free(b->arena_b.p);
    free(b->sp_a.v); free(b->sp_b.v); free(b->out.v);
    free(b->pc.v); free(b->raw_segs.v); free(b->norm_segs.v);
    free(b->sym_id); free(b->sym_prev); free(b->sym_next); free(b->sym_len); free(b->heap);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

// ----------------------------------------------------------------------------
// building from a tokenizer.json tree

static const char *jstr(json_t *o, const char *key) { return json_string_value(json_object_get(o, key)); }
static int jbool(json_t *o, const char *key, int dflt) {
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}
static char *jdup(json_t *s, size_t *len) {   // a JSON string as a malloc'd NUL-terminated copy
    size_t n = json_string_length(s);
    char *p = xmalloc(n + 1);
    memcpy(p, json_string_value(s), n);
    p[n] = '\0';
    if (len) *len = n;
    return p;
}

// {"String": "..."} or {"Regex": "..."}: literal (returns it, *re NULL) or compiled regex
static char *pattern_of(json_t *pat, const char *path, const char *where, pcre2_code **re, size_t *len) {
    json_t *s = json_object_get(pat, "String"), *r = json_object_get(pat, "Regex");
    *re = NULL;
    if (json_is_string(s)) return jdup(s, len);
    if (json_is_string(r)) {
        *re = regex_compile(json_string_value(r), json_string_length(r), path, where);
        *len = 0;
        return NULL;
    }
    die(EXIT_BADINPUT, "%s: %s: pattern is neither {\"String\": ...} nor {\"Regex\": ...}", path, where);
}

static void add_norm(TokBpe *b, json_t *n, const char *path) {
    if (!n || json_is_null(n)) return;
    const char *type = jstr(n, "type");
    if (!type) die(EXIT_BADINPUT, "%s: normalizer without a \"type\"", path);
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(n, "normalizers");
        for (size_t i = 0; i < json_array_size(list); i++) add_norm(b, json_array_get(list, i), path);
        return;
    }
    Norm nm = {0};
    if (!strcmp(type, "NFC")) nm.kind = NORM_NFC;
    else if (!strcmp(type, "NFD")) nm.kind = NORM_NFD;
    else if (!strcmp(type, "NFKC")) nm.kind = NORM_NFKC;
    else if (!strcmp(type, "NFKD")) nm.kind = NORM_NFKD;
    else if (!strcmp(type, "Lowercase")) nm.kind = NORM_LOWERCASE;
    else if (!strcmp(type, "Prepend")) {
        nm.kind = NORM_PREPEND;
        json_t *p = json_object_get(n, "prepend");
        if (!json_is_string(p)) die(EXIT_BADINPUT, "%s: Prepend normalizer without \"prepend\"", path);
        nm.a = jdup(p, &nm.a_len);
    } else if (!strcmp(type, "Replace")) {
        nm.kind = NORM_REPLACE;
        json_t *c = json_object_get(n, "content");
        if (!json_is_string(c)) die(EXIT_BADINPUT, "%s: Replace normalizer without \"content\"", path);
        nm.a = pattern_of(json_object_get(n, "pattern"), path, "Replace normalizer", &nm.re, &nm.a_len);
        nm.b = jdup(c, &nm.b_len);
    } else
        die(EXIT_BADINPUT, "%s: normalizer \"%s\" is not supported (NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, "
            "Sequence are)\n  hint: this tokenizer.json is not a GPT-2/Qwen2/Llama-style BPE tokenizer", path, type);
    b->norm = xrealloc(b->norm, (size_t)(b->n_norm + 1) * sizeof(Norm));
    b->norm[b->n_norm++] = nm;
}

static int behavior_of(const char *s, const char *path) {
    if (!s || !strcmp(s, "Isolated")) return SPLIT_ISOLATED;
    if (!strcmp(s, "Removed")) return SPLIT_REMOVED;
    if (!strcmp(s, "MergedWithPrevious")) return SPLIT_PREV;
    if (!strcmp(s, "MergedWithNext")) return SPLIT_NEXT;
    if (!strcmp(s, "Contiguous")) return SPLIT_CONTIGUOUS;
    die(EXIT_BADINPUT, "%s: unknown split behavior \"%s\"", path, s);
}

static void add_pre(TokBpe *b, json_t *n, const char *path) {
    if (!n || json_is_null(n)) return;
    const char *type = jstr(n, "type");
    if (!type) die(EXIT_BADINPUT, "%s: pre_tokenizer without a \"type\"", path);
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(n, "pretokenizers");
        for (size_t i = 0; i < json_array_size(list); i++) add_pre(b, json_array_get(list, i), path);
        return;
    }
    Pre st = {0};
    if (!strcmp(type, "ByteLevel")) {
        st.kind = PRE_BYTELEVEL;
        st.add_prefix_space = jbool(n, "add_prefix_space", 0);
        if (jbool(n, "use_regex", 1)) st.re = regex_compile(GPT2_RE, sizeof GPT2_RE - 1, path, "ByteLevel");
    } else if (!strcmp(type, "Split")) {
        st.kind = PRE_SPLIT;
        st.lit = pattern_of(json_object_get(n, "pattern"), path, "Split pre-tokenizer", &st.re, &st.lit_len);
        st.behavior = behavior_of(jstr(n, "behavior"), path);
        st.invert = jbool(n, "invert", 0);
    } else if (!strcmp(type, "Digits")) {   // char::is_numeric = \p{N}, each alone or in runs
        st.kind = PRE_SPLIT;
        st.re = regex_compile("\\p{N}", 5, path, "Digits");
        st.behavior = jbool(n, "individual_digits", 0) ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS;
    } else if (!strcmp(type, "Whitespace")) {   // \w+|[^\w\s]+ (Rust regex's \w), the rest removed
        static const char ws[] = "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]+"
                                 "|[^\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}\\s]+";
        st.kind = PRE_SPLIT;
        st.re = regex_compile(ws, sizeof ws - 1, path, "Whitespace");
        st.behavior = SPLIT_REMOVED;
        st.invert = 1;
    } else if (!strcmp(type, "Punctuation")) {   // ASCII punctuation or Unicode P*, each alone
        static const char pu[] = "[\\p{P}\\x21-\\x2F\\x3A-\\x40\\x5B-\\x60\\x7B-\\x7E]";
        st.kind = PRE_SPLIT;
        st.re = regex_compile(pu, sizeof pu - 1, path, "Punctuation");
        st.behavior = behavior_of(jstr(n, "behavior"), path);
    } else if (!strcmp(type, "WhitespaceSplit")) {
        st.kind = PRE_SPLIT;
        st.re = regex_compile("\\s", 2, path, "WhitespaceSplit");
        st.behavior = SPLIT_REMOVED;
    } else if (!strcmp(type, "Metaspace")) {
        st.kind = PRE_METASPACE;
        const char *rep = jstr(n, "replacement");
        if (!rep) rep = "\xe2\x96\x81";
        st.rep_len = (int)strlen(rep);
        if (st.rep_len == 0 || st.rep_len > 4)
            die(EXIT_BADINPUT, "%s: Metaspace replacement \"%s\" is not one character", path, rep);
        memcpy(st.rep, rep, (size_t)st.rep_len);
        const char *scheme = jstr(n, "prepend_scheme");
        st.prepend = scheme ? (!strcmp(scheme, "never") ? 0 : !strcmp(scheme, "first") ? 1 : 2)
                            : (jbool(n, "add_prefix_space", 1) ? 2 : 0);
        st.split = jbool(n, "split", 1);
    } else
        die(EXIT_BADINPUT, "%s: pre_tokenizer \"%s\" is not supported (ByteLevel, Split, Digits, Metaspace, "
            "Whitespace, WhitespaceSplit, Punctuation, Sequence are)", path, type);
    b->pre = xrealloc(b->pre, (size_t)(b->n_pre + 1) * sizeof(Pre));
    b->pre[b->n_pre++] = st;
}

static void add_dec(TokBpe *b, json_t *n, const char *path) {
    if (!n || json_is_null(n)) return;
    const char *type = jstr(n, "type");
    if (!type) die(EXIT_BADINPUT, "%s: decoder without a \"type\"", path);
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(n, "decoders");
        for (size_t i = 0; i < json_array_size(list); i++) add_dec(b, json_array_get(list, i), path);
        return;
    }
    Dec d = {0};
    if (!strcmp(type, "ByteLevel")) d.kind = DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) d.kind = DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) return;   // pieces are concatenated anyway
    else if (!strcmp(type, "Strip")) {
        // honest note: only leading spaces; a Strip of other characters or of the end is ignored
        const char *c = jstr(n, "content");
        json_int_t start = json_integer_value(json_object_get(n, "start"));
        if (c && !strcmp(c, " ")) b->strip_start = (int)start;
        return;
    } else if (!strcmp(type, "Replace")) {
        d.kind = DEC_REPLACE;
        pcre2_code *re;
        d.a = pattern_of(json_object_get(n, "pattern"), path, "Replace decoder", &re, &d.a_len);
        if (re) die(EXIT_BADINPUT, "%s: Replace decoder with a Regex pattern is not supported (only String)", path);
        json_t *c = json_object_get(n, "content");
        if (!json_is_string(c)) die(EXIT_BADINPUT, "%s: Replace decoder without \"content\"", path);
        d.b = jdup(c, &d.b_len);
    } else if (!strcmp(type, "Metaspace")) {
        // ▁ -> ' ', except in the first token of a text, whose ▁ are dropped (prepend_scheme
        // first/always), as tokenizers' Metaspace decoder does
        d.kind = DEC_METASPACE;
        const char *rep = jstr(n, "replacement");
        d.a = xstrdup(rep ? rep : "\xe2\x96\x81");
        d.a_len = strlen(d.a);
        const char *scheme = jstr(n, "prepend_scheme");
        if (scheme ? strcmp(scheme, "never") != 0 : jbool(n, "add_prefix_space", 1)) b->meta_first = 1;
    } else
        die(EXIT_BADINPUT, "%s: decoder \"%s\" is not supported (ByteLevel, ByteFallback, Fuse, Strip, Replace, "
            "Metaspace, Sequence are)", path, type);
    b->dec = xrealloc(b->dec, (size_t)(b->n_dec + 1) * sizeof(Dec));
    b->dec[b->n_dec++] = d;
}

// The bytes a token decodes to: the decoder chain applied to the token's string (`first`: as
// the first token of a text, which only a Metaspace decoder treats differently).
static void decode_token(const TokBpe *b, const char *s, size_t n, int first, Buf *out) {
    Buf x = {0}, y = {0};
    buf_put(&x, s, n);
    for (int i = 0; i < b->n_dec; i++) {
        const Dec *d = &b->dec[i];
        y.n = 0;
        if (d->kind == DEC_REPLACE || d->kind == DEC_METASPACE) {
            for (size_t j = 0; j < x.n;) {
                if (d->a_len && x.n - j >= d->a_len && memcmp(x.p + j, d->a, d->a_len) == 0) {
                    if (d->kind == DEC_REPLACE) buf_put(&y, d->b, d->b_len);
                    else if (!(first && b->meta_first)) buf_put(&y, " ", 1);
                    j += d->a_len;
                } else buf_put(&y, x.p + j++, 1);
            }
        } else if (d->kind == DEC_BYTEFALLBACK) {
            int v = -1;
            if (x.n == 6 && memcmp(x.p, "<0x", 3) == 0 && x.p[5] == '>') {
                char hex[3] = {x.p[3], x.p[4], 0}, *end;
                long l = strtol(hex, &end, 16);
                if (*end == '\0' && end == hex + 2) v = (int)l;
            }
            if (v >= 0) { unsigned char c = (unsigned char)v; buf_put(&y, &c, 1); }
            else buf_put(&y, x.p, x.n);
        } else if (d->kind == DEC_BYTELEVEL) {
            // every code point back to its byte; a token with one that is not in the map
            // (an added token such as " <tag>") is kept as it is, as in tokenizers
            int ok = 1;
            for (size_t j = 0; ok && j < x.n;) {
                int l = utf8_len((const unsigned char *)x.p + j, x.n - j);
                uint32_t c = utf8_cp((const unsigned char *)x.p + j, l);
                if ((l == 1 && (unsigned char)x.p[j] >= 0x80) || c >= 0x144 || bl_rev[c] < 0) ok = 0;
                else { unsigned char v = (unsigned char)bl_rev[c]; buf_put(&y, &v, 1); }
                j += (size_t)l;
            }
            if (!ok) { y.n = 0; buf_put(&y, x.p, x.n); }
        }
        Buf t = x; x = y; y = t;
    }
    out->n = 0;
    buf_put(out, x.p, x.n);
    free(x.p);
    free(y.p);
}

static int cmp_added(const void *pa, const void *pb) {
    const Added *a = pa, *b = pb;
    unsigned ca = (unsigned char)a->pat[0], cb = (unsigned char)b->pat[0];
    if (ca != cb) return ca < cb ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;   // longest first
    return a->id - b->id;
}

static void added_finish(AddedSet *s) {
    if (s->n) qsort(s->v, (size_t)s->n, sizeof(Added), cmp_added);
    int k = 0;
    for (int c = 0; c <= 256; c++) {
        while (k < s->n && (unsigned char)s->v[k].pat[0] < c) k++;
        s->start[c] = k;
    }
}

// The normalizer chain over a whole string (for normalized added tokens' patterns).
static char *normalize_all(TokBpe *b, const char *s, size_t n, size_t *len) {
    Buf x = {0}, y = {0};
    buf_put(&x, s, n);
    x.p[x.n] = '\0';
    for (int i = 0; i < b->n_norm; i++) {
        norm_apply(b, &b->norm[i], &x, &y);
        Buf t = x; x = y; y = t;
    }
    free(y.p);
    *len = x.n;
    return x.p;
}

// A special id: the config's token string ("<s>" or {"content": "<s>"}) when it is a token,
// else the config's id when it is in range, else -1.
static int config_id(const Tokenizer *t, json_t *tok, int id, const char *what) {
    if (json_is_object(tok)) tok = json_object_get(tok, "content");
    if (json_is_string(tok)) {
        int k = tokenizer_lookup(t, json_string_value(tok), json_string_length(tok));
        if (k >= 0) return k;
        warn("%s: %s \"%s\" is not a token; ignored", t->path, what, json_string_value(tok));
    }
    return id >= 0 && id < t->vocab_size ? id : -1;
}

Tokenizer *tokenizer_bpe_build(json_t *tj, const char *path, const TokConfig *cfg, int vocab_size, uint64_t hash) {
    pthread_once(&bl_once, bl_init);
    json_t *model = json_object_get(tj, "model");
    const char *mtype = jstr(model, "type");
    if (!json_is_object(model) || (mtype && strcmp(mtype, "BPE") != 0))
        die(EXIT_BADINPUT, "%s: model type \"%s\" is not supported: only BPE tokenizers (GPT-2, Qwen2, Llama, SmolLM, "
            "TinyLlama) are\n  hint: WordPiece/Unigram tokenizers need another backend", path, mtype ? mtype : "?");
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    // model.vocab: {"piece": id} as in tokenizer.json, or (from GGUF) ["piece", ...] in id order
    if (!(json_is_object(vocab) || json_is_array(vocab)) || !json_is_array(merges))
        die(EXIT_BADINPUT, "%s: model.vocab (object) or model.merges (array) missing", path);
    const char *csp = jstr(model, "continuing_subword_prefix"), *eow = jstr(model, "end_of_word_suffix");
    if ((csp && *csp) || (eow && *eow))
        die(EXIT_BADINPUT, "%s: BPE with continuing_subword_prefix/end_of_word_suffix is not supported", path);
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && json_number_value(dropout) > 0)
        warn("%s: BPE dropout %g is ignored (encoding is deterministic)", path, json_number_value(dropout));

    // ids: the model's vocabulary and the added tokens
    json_t *added = json_object_get(tj, "added_tokens");
    long maxid = json_is_array(vocab) ? (long)json_array_size(vocab) - 1 : -1;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) > (1 << 28))
            die(EXIT_BADINPUT, "%s: model.vocab[\"%s\"] is not a plausible id", path, key);
        if (json_integer_value(val) > maxid) maxid = (long)json_integer_value(val);
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i), *id = json_object_get(a, "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > (1 << 28) ||
            !json_is_string(json_object_get(a, "content")))
            die(EXIT_BADINPUT, "%s: added_tokens[%zu] needs an \"id\" and a \"content\"", path, i);
        if (json_integer_value(id) > maxid) maxid = (long)json_integer_value(id);
    }
    int V = (int)maxid + 1;
    if (V <= 0) die(EXIT_BADINPUT, "%s: empty vocabulary", path);
    if (vocab_size > 0 && V > vocab_size)
        die(EXIT_BADINPUT, "%s: has token ids up to %d but the model's vocabulary has %d\n  hint: pass the tokenizer "
            "that belongs to this model", path, V - 1, vocab_size);

    Tokenizer *t = xcalloc(1, sizeof(Tokenizer));
    TokBpe *b = xcalloc(1, sizeof(TokBpe));
    t->kind = TOKENIZER_BPE;
    t->bpe = b;
    b->n_vocab = V;
    t->path = xstrdup(path);
    t->hash = hash;
    t->vocab_size = V;
    t->vocab = xcalloc((size_t)V, sizeof(char *));
    t->vocab_len = xcalloc((size_t)V, sizeof(int));
    t->piece = xcalloc((size_t)V, sizeof(char *));
    t->piece_len = xcalloc((size_t)V, sizeof(int));
    t->special = xcalloc((size_t)V, 1);
    json_object_foreach(vocab, key, val) {   // two strings for one id: the last wins
        int id = (int)json_integer_value(val);
        size_t klen = strlen(key);
        free(t->vocab[id]);
        t->vocab[id] = xmalloc(klen + 1);
        memcpy(t->vocab[id], key, klen + 1);
        t->vocab_len[id] = (int)klen;
    }
    for (size_t i = 0; json_is_array(vocab) && i < json_array_size(vocab); i++) {
        size_t len;
        if (!json_is_string(json_array_get(vocab, i))) die(EXIT_BADINPUT, "%s: model.vocab[%zu] is not a string", path, i);
        t->vocab[i] = jdup(json_array_get(vocab, i), &len);
        t->vocab_len[i] = (int)len;
    }
    for (size_t i = 0; i < json_array_size(added); i++) {   // id -> added content wins, as in tokenizers
        json_t *a = json_array_get(added, i);
        int id = (int)json_integer_value(json_object_get(a, "id"));
        free(t->vocab[id]);
        size_t len;
        t->vocab[id] = jdup(json_object_get(a, "content"), &len);
        t->vocab_len[id] = (int)len;
    }
    for (int i = 0; i < V; i++) {
        if (!t->vocab[i]) t->vocab[i] = xstrdup("");
        if (t->vocab_len[i] > t->max_token_length) t->max_token_length = t->vocab_len[i];
    }
    tok_table_build(t);

    // pipeline
    b->md = pcre2_match_data_create(4, NULL);
    add_norm(b, json_object_get(tj, "normalizer"), path);
    add_pre(b, json_object_get(tj, "pre_tokenizer"), path);
    add_dec(b, json_object_get(tj, "decoder"), path);
    b->ignore_merges = jbool(model, "ignore_merges", 0);
    b->byte_fallback = jbool(model, "byte_fallback", 0);
    b->fuse_unk = jbool(model, "fuse_unk", 0);
    b->unk_id = -1;
    const char *unk = jstr(model, "unk_token");
    if (unk && (b->unk_id = tokenizer_lookup(t, unk, strlen(unk))) < 0)
        die(EXIT_BADINPUT, "%s: model.unk_token \"%s\" is not in the vocabulary", path, unk);
    for (int c = 0; c < 256; c++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", c);
        b->byte_id[c] = tokenizer_lookup(t, s, 6);
    }

    // merges: "a b" strings or ["a", "b"] pairs; rank = position
    size_t nm = json_array_size(merges);
    b->msize = 16;
    while (b->msize < 2 * nm + 2) b->msize *= 2;
    b->mkey = xmalloc(b->msize * sizeof(uint64_t));
    memset(b->mkey, 0xFF, b->msize * sizeof(uint64_t));
    b->mrank = xmalloc(b->msize * sizeof(int32_t));
    b->mnew = xmalloc(b->msize * sizeof(int32_t));
    Buf cat = {0};
    for (size_t i = 0; i < nm; i++) {
        json_t *m = json_array_get(merges, i);
        const char *x, *y;
        size_t xl, yl;
        if (json_is_string(m)) {
            const char *s = json_string_value(m), *sp = strchr(s, ' ');
            if (!sp) die(EXIT_BADINPUT, "%s: model.merges[%zu] \"%s\" is not \"a b\"", path, i, s);
            x = s; xl = (size_t)(sp - s); y = sp + 1; yl = json_string_length(m) - xl - 1;
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            x = json_string_value(json_array_get(m, 0)); xl = json_string_length(json_array_get(m, 0));
            y = json_string_value(json_array_get(m, 1)); yl = json_string_length(json_array_get(m, 1));
        } else
            die(EXIT_BADINPUT, "%s: model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", path, i);
        cat.n = 0;
        buf_put(&cat, x, xl);
        buf_put(&cat, y, yl);
        int ix = tokenizer_lookup(t, x, xl), iy = tokenizer_lookup(t, y, yl), iz = tokenizer_lookup(t, cat.p, cat.n);
        if (ix < 0 || iy < 0 || iz < 0)
            die(EXIT_BADINPUT, "%s: model.merges[%zu] (\"%.*s\" \"%.*s\") uses a token that is not in the vocabulary",
                path, i, (int)xl, x, (int)yl, y);
        merge_put(b, ix, iy, (int)i, iz);
    }
    free(cat.p);

    // added tokens: raw (normalized=false) and normalized sets; special ones decode to ""
    char **dec_src = xcalloc((size_t)V, sizeof(char *));   // text to decode instead of vocab[i]
    size_t *dec_src_len = xcalloc((size_t)V, sizeof(size_t));
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i);
        Added ad = {0};
        ad.id = (int)json_integer_value(json_object_get(a, "id"));
        ad.single_word = (unsigned char)jbool(a, "single_word", 0);
        ad.lstrip = (unsigned char)jbool(a, "lstrip", 0);
        ad.rstrip = (unsigned char)jbool(a, "rstrip", 0);
        int special = jbool(a, "special", 0);
        int normalized = jbool(a, "normalized", !special);
        json_t *content = json_object_get(a, "content");
        if (json_string_length(content) == 0) continue;
        if (special) t->special[ad.id] = 1;
        AddedSet *set = normalized ? &b->normed : &b->raw;
        if (set == &b->normed) ad.pat = normalize_all(b, json_string_value(content), json_string_length(content), &ad.len);
        else ad.pat = jdup(content, &ad.len);
        if (set == &b->normed && (ad.len != json_string_length(content) || memcmp(ad.pat, json_string_value(content), ad.len))) {
            // the library (0.23) decodes such a token as its normalized text, which is then not
            // the special token's text, so decode(skip_special_tokens) keeps it
            free(dec_src[ad.id]);
            dec_src[ad.id] = xmalloc(ad.len + 1);
            memcpy(dec_src[ad.id], ad.pat, ad.len);
            dec_src_len[ad.id] = ad.len;
            t->special[ad.id] = 0;
        }
        if (ad.len == 0) { free(ad.pat); continue; }
        set->v = xrealloc(set->v, (size_t)(set->n + 1) * sizeof(Added));
        set->v[set->n++] = ad;
    }
    // the same content twice: keep one (the first by id)
    added_finish(&b->raw);
    added_finish(&b->normed);

    // decoded pieces
    Buf dec = {0};
    for (int i = 0; i < V; i++) {
        if (dec_src[i]) decode_token(b, dec_src[i], dec_src_len[i], 0, &dec);
        else decode_token(b, t->vocab[i], (size_t)t->vocab_len[i], 0, &dec);
        t->piece[i] = xmalloc(dec.n + 1);
        memcpy(t->piece[i], dec.p ? dec.p : "", dec.n);
        t->piece[i][dec.n] = '\0';
        t->piece_len[i] = (int)dec.n;
    }
    if (b->meta_first) {
        b->piece_first = xcalloc((size_t)V, sizeof(char *));
        b->piece_first_len = xcalloc((size_t)V, sizeof(int));
        for (int i = 0; i < V; i++) {
            if (dec_src[i]) decode_token(b, dec_src[i], dec_src_len[i], 1, &dec);
            else decode_token(b, t->vocab[i], (size_t)t->vocab_len[i], 1, &dec);
            b->piece_first[i] = xmalloc(dec.n + 1);
            memcpy(b->piece_first[i], dec.p ? dec.p : "", dec.n);
            b->piece_first_len[i] = (int)dec.n;
        }
    }
    free(dec.p);
    for (int i = 0; i < V; i++) free(dec_src[i]);
    free(dec_src);
    free(dec_src_len);

    // special ids: the config files first, then the post-processor
    json_t *post = json_object_get(tj, "post_processor");
    json_t *procs = json_array();
    if (post && !json_is_null(post)) {
        const char *ptype = jstr(post, "type");
        if (ptype && !strcmp(ptype, "Sequence")) json_array_extend(procs, json_object_get(post, "processors"));
        else json_array_append(procs, post);
    }
    for (size_t i = 0; i < json_array_size(procs); i++) {
        json_t *p = json_array_get(procs, i);
        const char *ptype = jstr(p, "type");
        if (ptype && !strcmp(ptype, "ByteLevel")) continue;
        if (!ptype || strcmp(ptype, "TemplateProcessing") != 0)
            die(EXIT_BADINPUT, "%s: post_processor \"%s\" is not supported (TemplateProcessing, ByteLevel, Sequence "
                "are)", path, ptype ? ptype : "?");
        json_t *single = json_object_get(p, "single"), *specials = json_object_get(p, "special_tokens");
        for (size_t k = 0; k < json_array_size(single); k++) {
            json_t *item = json_array_get(single, k);
            if (json_object_get(item, "Sequence")) break;   // $A: what follows is a suffix (not added)
            json_t *st = json_object_get(item, "SpecialToken");
            const char *name = jstr(st, "id");
            json_t *ids = json_object_get(json_object_get(specials, name ? name : ""), "ids");
            if (!name || !json_is_array(ids))
                die(EXIT_BADINPUT, "%s: TemplateProcessing special token \"%s\" has no ids", path, name ? name : "?");
            for (size_t j = 0; j < json_array_size(ids); j++) {
                if (b->n_prefix == (int)(sizeof b->prefix / sizeof b->prefix[0]))
                    die(EXIT_BADINPUT, "%s: TemplateProcessing puts more than 8 tokens in front", path);
                int id = (int)json_integer_value(json_array_get(ids, j));
                if (id < 0 || id >= V) die(EXIT_BADINPUT, "%s: TemplateProcessing id %d is not in the vocabulary", path, id);
                b->prefix[b->n_prefix++] = id;
            }
        }
    }
    json_decref(procs);
    int bos = config_id(t, cfg->bos_tok, cfg->bos_id, "bos_token"), eos = config_id(t, cfg->eos_tok, cfg->eos_id, "eos_token"),
        pad = config_id(t, cfg->pad_tok, cfg->pad_id, "pad_token");
    t->bos_id = bos >= 0 ? bos : b->n_prefix ? b->prefix[0] : -1;
    t->eos_id = eos;
    t->pad_id = pad >= 0 ? pad : t->eos_id;
    if (cfg->add_bos == 1 && t->bos_id >= 0 && (b->n_prefix == 0 || b->prefix[0] != t->bos_id)) {
        memmove(b->prefix + 1, b->prefix, (size_t)(b->n_prefix < 7 ? b->n_prefix : 7) * sizeof(int));
        b->prefix[0] = t->bos_id;
        if (b->n_prefix < 8) b->n_prefix++;
    } else if (cfg->add_bos == 0) {
        int w = 0;
        for (int i = 0; i < b->n_prefix; i++) if (b->prefix[i] != t->bos_id) b->prefix[w++] = b->prefix[i];
        b->n_prefix = w;
    }
    if (t->bos_id >= 0) t->special[t->bos_id] = 1;
    if (t->eos_id >= 0) t->special[t->eos_id] = 1;
    if (t->pad_id >= 0) t->special[t->pad_id] = 1;

    // what kind it is, for messages
    int bytelevel = 0, sp = b->byte_fallback;
    for (int i = 0; i < b->n_pre; i++) bytelevel |= b->pre[i].kind == PRE_BYTELEVEL, sp |= b->pre[i].kind == PRE_METASPACE;
    snprintf(b->kind, sizeof b->kind, "%s %s", cfg->source ? cfg->source : "tokenizer.json",
             bytelevel ? "byte-level BPE" : sp ? "sentencepiece BPE" : "BPE");

    // encode state
    pthread_mutex_init(&b->lock, NULL);

    b->cache_size = 2 * CACHE_MAX_ENTRIES;
    b->cache = xcalloc(b->cache_size, sizeof(CacheEnt));
    return t;
}

// ----------------------------------------------------------------------------
// tokenizer.json and the config files beside it

static json_t *load_json_file(const char *path, int required, char **bytes, size_t *nbytes) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (required) die(EXIT_BADINPUT, "cannot open tokenizer %s: %m", path);
        return NULL;
    }
    Buf b = {0};
    char chunk[1 << 16];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) buf_put(&b, chunk, got);
    fclose(f);
    json_error_t err;
    json_t *j = json_loadb_lenient(b.p ? b.p : "", b.n, &err);
    if (!j) die(EXIT_BADINPUT, "%s:%d:%d: %s", path, err.line, err.column, err.text);
    if (bytes) { *bytes = b.p; *nbytes = b.n; }
    else free(b.p);
    return j;
}

static char *sibling(const char *path, const char *name) {
    const char *slash = strrchr(path, '/');
    size_t dl = slash ? (size_t)(slash - path) + 1 : 0;
    char *p = xmalloc(dl + strlen(name) + 1);
    memcpy(p, path, dl);
    strcpy(p + dl, name);
    return p;
}

// "eos_token_id": 2 or [2, 32000]: the first
static int json_first_id(json_t *v) {
    if (json_is_array(v)) v = json_array_get(v, 0);
    return json_is_integer(v) ? (int)json_integer_value(v) : -1;
}

Tokenizer *tokenizer_load_json(const char *path, int vocab_size) {
    char *bytes = NULL;
    size_t nbytes = 0;
    json_t *tj = load_json_file(path, 1, &bytes, &nbytes);
    uint64_t hash = tok_fnv1a(bytes, nbytes, TOK_FNV_OFFSET);
    free(bytes);
    char *pc = sibling(path, "tokenizer_config.json"), *pg = sibling(path, "generation_config.json"),
         *pm = sibling(path, "config.json");
    char *cbytes = NULL;
    size_t cn = 0;
    json_t *tc = load_json_file(pc, 0, &cbytes, &cn);
    json_t *gc = load_json_file(pg, 0, NULL, NULL), *mc = load_json_file(pm, 0, NULL, NULL);
    if (cbytes) hash = tok_fnv1a(cbytes, cn, hash);
    free(cbytes);
    TokConfig cfg = {.bos_id = -1, .eos_id = -1, .pad_id = -1, .add_bos = -1, .source = "tokenizer.json"};
    // ids from generation_config.json, else config.json; tokenizer_config.json's token strings win
    const char *keys[3] = {"bos_token_id", "eos_token_id", "pad_token_id"};
    int *dst[3] = {&cfg.bos_id, &cfg.eos_id, &cfg.pad_id};
    for (int k = 0; k < 3; k++) {
        int id = json_first_id(json_object_get(gc, keys[k]));
        if (id < 0) id = json_first_id(json_object_get(mc, keys[k]));
        *dst[k] = id;
    }
    json_t *ab = json_object_get(tc, "add_bos_token");
    if (json_is_boolean(ab)) cfg.add_bos = json_is_true(ab);
    cfg.bos_tok = json_object_get(tc, "bos_token");
    cfg.eos_tok = json_object_get(tc, "eos_token");
    cfg.pad_tok = json_object_get(tc, "pad_token");
    Tokenizer *t = tokenizer_bpe_build(tj, path, &cfg, vocab_size, hash);
    json_decref(tj); json_decref(tc); json_decref(gc); json_decref(mc);
    free(pc); free(pg); free(pm);
    return t;
}
