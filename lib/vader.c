// vader.c — VADER sentiment rules, ported from vaderSentiment 3.3.2 (see vader.h for the rule
// list and the known differences). The order of floating-point operations follows the
// reference line by line, so scores agree with it to the last bit on ASCII text.
#include "vader.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"  // die, xmalloc, EXIT_BADINPUT

// ---------------------------------------------------------------------------------------------
// Word lists of the reference (NEGATE, BOOSTER_DICT, SPECIAL_CASES).

static const char *const NEGATE[] = {
    "aint", "arent", "cannot", "cant", "couldnt", "darent", "didnt", "doesnt",
    "ain't", "aren't", "can't", "couldn't", "daren't", "didn't", "doesn't",
    "dont", "hadnt", "hasnt", "havent", "isnt", "mightnt", "mustnt", "neither",
    "don't", "hadn't", "hasn't", "haven't", "isn't", "mightn't", "mustn't",
    "neednt", "needn't", "never", "none", "nope", "nor", "not", "nothing", "nowhere",
    "oughtnt", "shant", "shouldnt", "uhuh", "wasnt", "werent",
    "oughtn't", "shan't", "shouldn't", "uh-uh", "wasn't", "weren't",
    "without", "wont", "wouldnt", "won't", "wouldn't", "rarely", "seldom", "despite",
};

static const char *const BOOST_UP[] = {
    "absolutely", "amazingly", "awfully", "completely", "considerable", "considerably",
    "decidedly", "deeply", "effing", "enormous", "enormously", "entirely", "especially",
    "exceptional", "exceptionally", "extreme", "extremely", "fabulously", "flipping", "flippin",
    "frackin", "fracking", "fricking", "frickin", "frigging", "friggin", "fully", "fuckin",
    "fucking", "fuggin", "fugging", "greatly", "hella", "highly", "hugely", "incredible",
    "incredibly", "intensely", "major", "majorly", "more", "most", "particularly", "purely",
    "quite", "really", "remarkably", "so", "substantially", "thoroughly", "total", "totally",
    "tremendous", "tremendously", "uber", "unbelievably", "unusually", "utter", "utterly", "very",
};
static const char *const BOOST_DOWN[] = {
    "almost", "barely", "hardly", "just enough", "kind of", "kinda", "kindof", "kind-of", "less",
    "little", "marginal", "marginally", "occasional", "occasionally", "partly", "scarce",
    "scarcely", "slight", "slightly", "somewhat", "sort of", "sorta", "sortof", "sort-of",
};

// Idioms and phrases containing lexicon words: the phrase's valence replaces the word's.
// (The reference's SENTIMENT_LADEN_IDIOMS, "cut the mustard" etc., are never used by its
// polarity_scores — the check is marked future work — so they are not here.)
static const struct { const char *phrase; double valence; } SPECIAL_CASES[] = {
    {"the shit", 3}, {"the bomb", 3}, {"bad ass", 1.5}, {"badass", 1.5}, {"bus stop", 0.0},
    {"yeah right", -2}, {"kiss of death", -1.5}, {"to die for", 3}, {"beating heart", 3.5},
};

// ---------------------------------------------------------------------------------------------
// A string -> (double, string) hash map: open addressing, linear probing, FNV-1a.

typedef struct {
    char *key;   // NULL = empty slot
    double val;
    char *str;   // emoji description (emoji map only)
} Slot;

typedef struct {
    Slot *slots;
    size_t cap, n;  // cap is a power of two, kept >= 2n
} StrMap;

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static Slot *map_slot(const StrMap *m, const char *key, size_t n) {
    if (!m->cap) return NULL;
    size_t i = (size_t)fnv1a(key, n) & (m->cap - 1);
    for (;;) {
        Slot *s = &m->slots[i];
        if (!s->key || (strncmp(s->key, key, n) == 0 && s->key[n] == '\0')) return s;
        i = (i + 1) & (m->cap - 1);
    }
}

static const Slot *map_get(const StrMap *m, const char *key, size_t n) {
    const Slot *s = map_slot(m, key, n);
    return s && s->key ? s : NULL;
}

// Insert or overwrite (later entries win, as in a Python dict built line by line).
static Slot *map_put(StrMap *m, const char *key, size_t n, double val) {
    if (2 * (m->n + 1) > m->cap) {
        StrMap g = {xcalloc(m->cap ? 2 * m->cap : 64, sizeof(Slot)), m->cap ? 2 * m->cap : 64, 0};
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->slots[i].key) continue;
            *map_slot(&g, m->slots[i].key, strlen(m->slots[i].key)) = m->slots[i];
            g.n++;
        }
        free(m->slots);
        *m = g;
    }
    Slot *s = map_slot(m, key, n);
    if (!s->key) {
        s->key = xmalloc(n + 1);
        memcpy(s->key, key, n);
        s->key[n] = '\0';
        m->n++;
    }
    s->val = val;
    return s;
}

static void map_free(StrMap *m) {
    for (size_t i = 0; i < m->cap; i++) {
        free(m->slots[i].key);
        free(m->slots[i].str);
    }
    free(m->slots);
    memset(m, 0, sizeof *m);
}

struct Vader {
    StrMap lex;      // token -> mean valence
    StrMap boost;    // booster/dampener word or phrase -> +-0.293
    StrMap negate;   // NEGATE words
    StrMap special;  // SPECIAL_CASES phrase -> valence
    StrMap emoji;    // one code point (UTF-8) -> description; empty unless vader_load_emoji
};

// ---------------------------------------------------------------------------------------------
// Unicode, as far as Python's str methods need it here.

// Decode one code point from s[0..n). Invalid bytes decode one at a time to U+DC80+byte
// (Python's surrogateescape), which is uncased and not a space.
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) { *cp = c; return 1; }
    else if ((c & 0xE0) == 0xC0) { len = 2; v = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; v = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; v = c & 0x07; min = 0x10000; }
    else goto bad;
    if (len > n) goto bad;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) goto bad;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) goto bad;
    *cp = v;
    return len;
bad:
    *cp = 0xDC00 + c;
    return 1;
}

// Append the UTF-8 of cp to out; the surrogate escapes go back to their raw byte.
static size_t utf8_put(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp >= 0xDC80 && cp <= 0xDCFF) { o[0] = (unsigned char)(cp - 0xDC00); return 1; }
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

// Python's str.isspace() / the separators of str.split() and str.strip().
static int py_isspace(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

// string.punctuation: !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~
static int py_ispunct(uint32_t c) {
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
           (c >= 0x7B && c <= 0x7E);
}

// Cased letters of Latin-1, Latin Extended-A, Greek and Cyrillic (U+0400..U+045F), plus the
// Kelvin sign. Returns +1 uppercase, -1 lowercase, 0 uncased; *low gets the lowercase.
static int cp_case(uint32_t c, uint32_t *low) {
    *low = c;
    if (c < 0x80) {
        if (c >= 'A' && c <= 'Z') { *low = c + 32; return 1; }
        return c >= 'a' && c <= 'z' ? -1 : 0;
    }
    if (c < 0x100) {
        if (c >= 0xC0 && c <= 0xDE && c != 0xD7) { *low = c + 32; return 1; }
        if ((c >= 0xDF && c != 0xF7) || c == 0xAA || c == 0xB5 || c == 0xBA) return -1;
        return 0;
    }
    if (c < 0x180) {
        if (c == 0x130) return 1;  // İ: lowercases to "i" U+0307, handled by the caller
        if (c == 0x131 || c == 0x138 || c == 0x149 || c == 0x17F) return -1;
        if (c == 0x178) { *low = 0xFF; return 1; }
        int odd_upper = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
        if ((c & 1) == (uint32_t)odd_upper) { *low = c + 1; return 1; }
        return -1;
    }
    if (c >= 0x386 && c <= 0x3CE) {
        if (c == 0x386) { *low = 0x3AC; return 1; }
        if (c >= 0x388 && c <= 0x38A) { *low = c + 37; return 1; }
        if (c == 0x38C) { *low = 0x3CC; return 1; }
        if (c == 0x38E || c == 0x38F) { *low = c + 63; return 1; }
        if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) { *low = c + 32; return 1; }
        if (c == 0x390 || c >= 0x3AC) return -1;
        return 0;
    }
    if (c >= 0x400 && c <= 0x45F) {
        if (c < 0x410) { *low = c + 0x50; return 1; }
        if (c < 0x430) { *low = c + 0x20; return 1; }
        return -1;
    }
    if (c == 0x212A) { *low = 'k'; return 1; }    // KELVIN SIGN
    if (c == 0x212B) { *low = 0xE5; return 1; }   // ANGSTROM SIGN
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Loading.

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        die(EXIT_BADINPUT, "%s: cannot open: %s\n  hint: the VADER lexicon is vader/vader_lexicon.txt in the "
            "data folder ($SAFE_DATA; see safe-score(1), ENVIRONMENT)", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = xmalloc(cap + 1);
    for (;;) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        cap *= 2;
        buf = xrealloc(buf, cap + 1);
    }
    if (ferror(f)) die(EXIT_BADINPUT, "%s: read error: %s", path, strerror(errno));
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int ascii_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1C && c <= 0x1F); }

// Split a file like the reference: rstrip("\n"), split("\n"), line.strip(), split("\t")[0:2].
// Calls fn(ctx, path, lineno, field0, len0, field1, len1) for each non-empty line.
typedef void (*LineFn)(void *ctx, const char *path, long lineno, const char *a, size_t na,
                       const char *b, size_t nb);

static void each_tsv_line(const char *path, LineFn fn, void *ctx) {
    size_t n;
    char *buf = read_file(path, &n);
    while (n > 0 && buf[n - 1] == '\n') n--;
    long lineno = 0;
    for (size_t p = 0; p < n;) {
        size_t e = p;
        while (e < n && buf[e] != '\n') e++;
        lineno++;
        size_t a = p, b = e;
        p = e + 1;
        if (a == b) continue;  // `if not line: continue`
        while (a < b && ascii_space(buf[a])) a++;
        while (b > a && ascii_space(buf[b - 1])) b--;
        const char *tab = memchr(buf + a, '\t', b - a);
        if (!tab)
            die(EXIT_BADINPUT, "%s: line %ld: expected at least two tab-separated fields", path, lineno);
        const char *f1 = tab + 1;
        const char *tab2 = memchr(f1, '\t', (size_t)(buf + b - f1));
        size_t n1 = tab2 ? (size_t)(tab2 - f1) : (size_t)(buf + b - f1);
        fn(ctx, path, lineno, buf + a, (size_t)(tab - (buf + a)), f1, n1);
    }
    free(buf);
}

static void lex_line(void *ctx, const char *path, long lineno, const char *w, size_t nw,
                     const char *m, size_t nm) {
    Vader *v = ctx;
    char num[64];
    if (nm == 0 || nm >= sizeof num)
        die(EXIT_BADINPUT, "%s: line %ld: field 2 (mean valence) is not a number", path, lineno);
    memcpy(num, m, nm);
    num[nm] = '\0';
    char *end;
    double x = strtod(num, &end);
    while (*end && ascii_space(*end)) end++;
    if (end == num || *end || !isfinite(x))
        die(EXIT_BADINPUT, "%s: line %ld: field 2 (mean valence) is not a finite number: '%s'",
            path, lineno, num);
    map_put(&v->lex, w, nw, x);
}

Vader *vader_load(const char *lexicon_path) {
    Vader *v = xcalloc(1, sizeof *v);
    each_tsv_line(lexicon_path, lex_line, v);
    if (v->lex.n == 0) die(EXIT_BADINPUT, "%s: empty lexicon", lexicon_path);
    for (size_t i = 0; i < sizeof NEGATE / sizeof *NEGATE; i++)
        map_put(&v->negate, NEGATE[i], strlen(NEGATE[i]), 1);
    for (size_t i = 0; i < sizeof BOOST_UP / sizeof *BOOST_UP; i++)
        map_put(&v->boost, BOOST_UP[i], strlen(BOOST_UP[i]), VADER_B_INCR);
    for (size_t i = 0; i < sizeof BOOST_DOWN / sizeof *BOOST_DOWN; i++)
        map_put(&v->boost, BOOST_DOWN[i], strlen(BOOST_DOWN[i]), VADER_B_DECR);
    for (size_t i = 0; i < sizeof SPECIAL_CASES / sizeof *SPECIAL_CASES; i++)
        map_put(&v->special, SPECIAL_CASES[i].phrase, strlen(SPECIAL_CASES[i].phrase),
                SPECIAL_CASES[i].valence);
    return v;
}

static void emoji_line(void *ctx, const char *path, long lineno, const char *e, size_t ne,
                       const char *d, size_t nd) {
    (void)path, (void)lineno;
    Vader *v = ctx;
    uint32_t cp;
    // The reference looks emojis up one code point at a time, so longer keys never match.
    if (ne == 0 || utf8_next((const unsigned char *)e, ne, &cp) != ne) return;
    Slot *s = map_put(&v->emoji, e, ne, 0);
    free(s->str);
    s->str = xmalloc(nd + 1);
    memcpy(s->str, d, nd);
    s->str[nd] = '\0';
}

size_t vader_load_emoji(Vader *v, const char *emoji_path) {
    each_tsv_line(emoji_path, emoji_line, v);
    return v->emoji.n;
}

size_t vader_lexicon_size(const Vader *v) { return v->lex.n; }

void vader_free(Vader *v) {
    if (!v) return;
    map_free(&v->lex);
    map_free(&v->boost);
    map_free(&v->negate);
    map_free(&v->special);
    map_free(&v->emoji);
    free(v);
}

// ---------------------------------------------------------------------------------------------
// Scoring. Names follow the reference: words_and_emoticons are the tokens, sentiments the
// per-token valences.

typedef struct {
    const char *low;  // token.lower(), UTF-8, NUL-terminated
    int upper;        // token.isupper()
    int in_lex;       // low is a lexicon entry ...
    double lex;       // ... with this valence
} Tok;

typedef struct {
    const Vader *v;
    const Tok *t;
    int n;            // tokens
    int cap_diff;     // allcap_differential(): some but not all tokens are ALL CAPS
    char *buf;        // scratch for joined n-grams
} Ctx;

static int is(const Tok *t, const char *w) { return strcmp(t->low, w) == 0; }

// Look up the space-joined lowercased tokens t[a..a+k) in m.
static const Slot *ngram_get(const Ctx *c, const StrMap *m, int a, int k) {
    size_t n = 0;
    for (int j = 0; j < k; j++) {
        if (j) c->buf[n++] = ' ';
        size_t l = strlen(c->t[a + j].low);
        memcpy(c->buf + n, c->t[a + j].low, l);
        n += l;
    }
    return map_get(m, c->buf, n);
}

// negated([word]): a NEGATE word, or any word containing "n't".
static int negated(const Ctx *c, int j) {
    const char *w = c->t[j].low;
    return map_get(&c->v->negate, w, strlen(w)) || strstr(w, "n't");
}

// scalar_inc_dec(): the booster/dampener contribution of token j to `valence`.
static double scalar_inc_dec(const Ctx *c, int j, double valence) {
    double scalar = 0.0;
    const Slot *b = map_get(&c->v->boost, c->t[j].low, strlen(c->t[j].low));
    if (b) {
        scalar = b->val;
        if (valence < 0) scalar *= -1;
        if (c->t[j].upper && c->cap_diff) {  // booster in ALL CAPS while others aren't
            if (valence > 0) scalar += VADER_C_INCR;
            else scalar -= VADER_C_INCR;
        }
    }
    return scalar;
}

// _negation_check(): negation `start_i + 1` tokens before token i.
static double negation_check(const Ctx *c, double valence, int start_i, int i) {
    const Tok *t = c->t;
    if (start_i == 0) {
        if (negated(c, i - 1)) valence = valence * VADER_N_SCALAR;
    }
    if (start_i == 1) {
        if (is(&t[i - 2], "never") && (is(&t[i - 1], "so") || is(&t[i - 1], "this")))
            valence = valence * 1.25;
        else if (is(&t[i - 2], "without") && is(&t[i - 1], "doubt"))
            ;  // "without doubt" is not a negation
        else if (negated(c, i - 2))
            valence = valence * VADER_N_SCALAR;
    }
    if (start_i == 2) {
        // Reference: `a and b or c` — so a "so"/"this" right before the word boosts x1.25 here
        // even without "never". Kept as is.
        if ((is(&t[i - 3], "never") && (is(&t[i - 2], "so") || is(&t[i - 2], "this"))) ||
            (is(&t[i - 1], "so") || is(&t[i - 1], "this")))
            valence = valence * 1.25;
        else if (is(&t[i - 3], "without") && (is(&t[i - 2], "doubt") || is(&t[i - 1], "doubt")))
            ;
        else if (negated(c, i - 3))
            valence = valence * VADER_N_SCALAR;
    }
    return valence;
}

// _special_idioms_check() for token i (i >= 3).
static double special_idioms_check(const Ctx *c, double valence, int i) {
    const StrMap *sp = &c->v->special;
    // onezero, twoonezero, twoone, threetwoone, threetwo: the first match wins
    static const int seq[5][2] = {{-1, 2}, {-2, 3}, {-2, 2}, {-3, 3}, {-3, 2}};
    for (int s = 0; s < 5; s++) {
        const Slot *m = ngram_get(c, sp, i + seq[s][0], seq[s][1]);
        if (m) { valence = m->val; break; }
    }
    const Slot *m;
    if (c->n - 1 > i && (m = ngram_get(c, sp, i, 2))) valence = m->val;      // zeroone
    if (c->n - 1 > i + 1 && (m = ngram_get(c, sp, i, 3))) valence = m->val;  // zeroonetwo
    // booster/dampener n-grams before the word: threetwoone, threetwo, twoone ("kind of")
    static const int ng[3][2] = {{-3, 3}, {-3, 2}, {-2, 2}};
    for (int s = 0; s < 3; s++)
        if ((m = ngram_get(c, &c->v->boost, i + ng[s][0], ng[s][1]))) valence = valence + m->val;
    return valence;
}

// _least_check(): "least" before a word negates it, unless "at least" / "very least".
static double least_check(const Ctx *c, double valence, int i) {
    const Tok *t = c->t;
    if (i > 1 && !t[i - 1].in_lex && is(&t[i - 1], "least")) {
        if (!is(&t[i - 2], "at") && !is(&t[i - 2], "very")) valence = valence * VADER_N_SCALAR;
    } else if (i > 0 && !t[i - 1].in_lex && is(&t[i - 1], "least")) {
        valence = valence * VADER_N_SCALAR;
    }
    return valence;
}

// sentiment_valence(): the valence of token i after all word-level rules.
static double sentiment_valence(const Ctx *c, int i) {
    const Tok *t = c->t;
    double valence = 0;
    if (!t[i].in_lex) return valence;
    valence = t[i].lex;
    // "no" before another lexicon word negates it rather than counting itself
    if (is(&t[i], "no") && i != c->n - 1 && t[i + 1].in_lex) valence = 0.0;
    if ((i > 0 && is(&t[i - 1], "no")) || (i > 1 && is(&t[i - 2], "no")) ||
        (i > 2 && is(&t[i - 3], "no") && (is(&t[i - 1], "or") || is(&t[i - 1], "nor"))))
        valence = t[i].lex * VADER_N_SCALAR;
    // ALL-CAPS word while others aren't (a zero valence goes down: reference behaviour)
    if (t[i].upper && c->cap_diff) {
        if (valence > 0) valence += VADER_C_INCR;
        else valence -= VADER_C_INCR;
    }
    for (int start_i = 0; start_i < 3; start_i++) {
        // modifiers 1..3 tokens back that are not lexicon words themselves
        if (i > start_i && !t[i - (start_i + 1)].in_lex) {
            double s = scalar_inc_dec(c, i - (start_i + 1), valence);
            if (start_i == 1 && s != 0) s = s * 0.95;
            if (start_i == 2 && s != 0) s = s * 0.9;
            valence = valence + s;
            valence = negation_check(c, valence, start_i, i);
            if (start_i == 2) valence = special_idioms_check(c, valence, i);
        }
    }
    return least_check(c, valence, i);
}

// _but_check(): scale valences around the first "but". The reference walks the list and finds
// each value's position with list.index(value) — the first equal value — so a valence equal
// to an earlier one rescales that earlier slot instead. Reproduced exactly.
static void but_check(const Ctx *c, double *sent) {
    int bi = -1;
    for (int i = 0; i < c->n && bi < 0; i++)
        if (is(&c->t[i], "but")) bi = i;
    if (bi < 0) return;
    for (int k = 0; k < c->n; k++) {
        double s = sent[k];
        int si = 0;
        while (sent[si] != s) si++;  // terminates at k at the latest
        if (si < bi) sent[si] = s * 0.5;
        else if (si > bi) sent[si] = s * 1.5;
    }
}

static double normalize(double score) {
    double norm = score / sqrt((score * score) + VADER_ALPHA);
    return norm < -1.0 ? -1.0 : norm > 1.0 ? 1.0 : norm;
}

// score_valence(): compound and the pos/neg/neu proportions.
static void score_valence(const double *sent, int n, size_t n_excl, size_t n_quest,
                          VaderScores *out) {
    memset(out, 0, sizeof *out);
    if (n == 0) return;
    double sum_s = 0;
    for (int i = 0; i < n; i++) sum_s += sent[i];
    // punctuation emphasis: "!" up to 4, "?" only when 2 or more
    double ep = (double)(n_excl > 4 ? 4 : n_excl) * 0.292;
    double qm = 0;
    if (n_quest > 1) qm = n_quest <= 3 ? (double)n_quest * 0.18 : 0.96;
    double punct = ep + qm;
    if (sum_s > 0) sum_s += punct;
    else if (sum_s < 0) sum_s -= punct;
    out->compound = normalize(sum_s);
    // _sift_sentiment_scores: +-1 per scored word compensates for neutrals counting 1
    double pos_sum = 0.0, neg_sum = 0.0;
    long neu_count = 0;
    for (int i = 0; i < n; i++) {
        if (sent[i] > 0) pos_sum += (sent[i] + 1);
        if (sent[i] < 0) neg_sum += (sent[i] - 1);
        if (sent[i] == 0) neu_count += 1;
    }
    if (pos_sum > fabs(neg_sum)) pos_sum += punct;
    else if (pos_sum < fabs(neg_sum)) neg_sum -= punct;
    double total = pos_sum + fabs(neg_sum) + (double)neu_count;
    out->pos = fabs(pos_sum / total);
    out->neg = fabs(neg_sum / total);
    out->neu = fabs((double)neu_count / total);
}

void vader_score(const Vader *v, const char *text, size_t len, VaderScores *out) {
    const unsigned char *s = (const unsigned char *)text;
    // decode, replacing emojis by their descriptions (reference: polarity_scores prologue)
    size_t cap = len + 1, ncp = 0;
    uint32_t *cp = xmalloc(cap * sizeof *cp);
    int prev_space = 1;
    char key[4];
    for (size_t p = 0; p < len;) {
        uint32_t c;
        p += utf8_next(s + p, len - p, &c);
        const Slot *e = v->emoji.n ? map_get(&v->emoji, key, utf8_put(c, key)) : NULL;
        if (e) {
            size_t nd = strlen(e->str);
            if (ncp + nd + 1 >= cap) cp = xrealloc(cp, (cap = 2 * (ncp + nd + 1)) * sizeof *cp);
            if (!prev_space) cp[ncp++] = ' ';
            for (size_t q = 0; q < nd;) q += utf8_next((const unsigned char *)e->str + q, nd - q, &cp[ncp++]);
            prev_space = 0;
        } else {
            if (ncp + 1 >= cap) cp = xrealloc(cp, (cap *= 2) * sizeof *cp);
            cp[ncp++] = c;
            prev_space = c == ' ';
        }
    }
    // text.strip(); "!" and "?" are counted on that text
    size_t lo = 0, hi = ncp, n_excl = 0, n_quest = 0;
    while (lo < hi && py_isspace(cp[lo])) lo++;
    while (hi > lo && py_isspace(cp[hi - 1])) hi--;
    for (size_t i = lo; i < hi; i++) {
        n_excl += cp[i] == '!';
        n_quest += cp[i] == '?';
    }

    // SentiText: split on whitespace, strip punctuation from each token unless that leaves
    // <= 2 code points; lowercase into an arena (<= 4 bytes per code point, plus NULs)
    size_t ntok_cap = 16;
    int ntok = 0;
    Tok *tok = xmalloc(ntok_cap * sizeof *tok);
    char *arena = xmalloc(4 * (hi - lo) + (hi - lo) / 2 + 2), *ap = arena;
    for (size_t p = lo; p < hi;) {
        while (p < hi && py_isspace(cp[p])) p++;
        if (p == hi) break;
        size_t a = p;
        while (p < hi && !py_isspace(cp[p])) p++;
        size_t b = p, a2 = a, b2 = b;
        while (a2 < b2 && py_ispunct(cp[a2])) a2++;
        while (b2 > a2 && py_ispunct(cp[b2 - 1])) b2--;
        if (b2 - a2 > 2) a = a2, b = b2;
        if ((size_t)ntok == ntok_cap) tok = xrealloc(tok, (ntok_cap *= 2) * sizeof *tok);
        Tok *t = &tok[ntok++];
        t->low = ap;
        int upper = 0, lower = 0;
        for (size_t i = a; i < b; i++) {
            uint32_t l;
            int k = cp_case(cp[i], &l);
            upper |= k > 0;
            lower |= k < 0;
            if (cp[i] == 0x130) { ap += utf8_put('i', ap); l = 0x307; }  // İ -> i + combining dot
            ap += utf8_put(l, ap);
        }
        *ap++ = '\0';
        t->upper = upper && !lower;  // str.isupper(): a cased letter, none lowercase
        const Slot *lx = map_get(&v->lex, t->low, strlen(t->low));
        t->in_lex = lx != NULL;
        t->lex = lx ? lx->val : 0;
    }
    int n_upper = 0;
    for (int i = 0; i < ntok; i++) n_upper += tok[i].upper;
    Ctx c = {v, tok, ntok, 0 < ntok - n_upper && ntok - n_upper < ntok, NULL};
    c.buf = xmalloc((size_t)(ap - arena) + 4);

    // polarity_scores main loop
    double *sent = xmalloc((size_t)(ntok ? ntok : 1) * sizeof *sent);
    for (int i = 0; i < ntok; i++) {
        // boosters and "kind of" are modifiers, not scored themselves
        if (map_get(&v->boost, tok[i].low, strlen(tok[i].low)) ||
            (i < ntok - 1 && is(&tok[i], "kind") && is(&tok[i + 1], "of"))) {
            sent[i] = 0;
            continue;
        }
        sent[i] = sentiment_valence(&c, i);
    }
    but_check(&c, sent);
    score_valence(sent, ntok, n_excl, n_quest, out);

    free(sent);
    free(c.buf);
    free(arena);
    free(tok);
    free(cp);
}

// Python's round(x, nd): correctly rounded, ties to even on the exact binary value — which is
// what glibc's printf does with the exact decimal expansion.
static double py_round(double x, int nd) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.*f", nd, x);
    return strtod(buf, NULL);
}

void vader_round(VaderScores *s) {
    s->compound = py_round(s->compound, 4);
    s->pos = py_round(s->pos, 3);
    s->neg = py_round(s->neg, 3);
    s->neu = py_round(s->neu, 3);
}
