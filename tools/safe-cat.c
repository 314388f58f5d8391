// safe-cat — shards to JSON lines and back; joins shards with a header check.
//
//   safe-cat rollout.safe | jq -c 'select(.reward > 0.5)' | safe-cat --to-shard --header-from rollout.safe > good.safe
//   safe-cat --with-header x.safe | safe-cat --to-shard > y.safe      (round trip, header included)
//   safe-cat -o all.safe a.safe b.safe                                (join)
//
// Output format: --to-shard / --to-json, else by the -o extension (.safe .msgpack .msgpack.zst
// -> shard, .jsonl .json .ndjson .jsonl.zst -> JSON lines), else the opposite of the first
// input (shard -> JSON lines, JSON lines -> shard). See man/safe-cat.1.
#include "common.h"     // die, warn, xmalloc, exit codes
#include "ranks.h"       // ranks_require_one: one process, not several ranks
#include "progress.h"   // progress_start/update/end
#include "shard.h"      // ShardReader/Writer, Record, Fields, dtypes
#include "zio.h"        // ZIn (sniffing the input), ZOut (atomic JSON output)

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int to;                 // 's' shard, 'j' JSON lines, 0 decide
    long head;              // -1: all records
    char **fields;          // --fields, or NULL
    int nfields;
    int header_only, with_header, all;
    const char *out;
    int level;
    int quiet, force;
    const char *header_from;
} Opts;

// Text being built: one JSON line, or a scratch buffer.
typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static void buf_need(Buf *b, size_t n) {
    if (b->len + n <= b->cap) return;
    while (b->len + n > b->cap) b->cap = b->cap ? 2 * b->cap : 65536;
    b->p = xrealloc(b->p, b->cap);
}
static void buf_put(Buf *b, const void *s, size_t n) { buf_need(b, n); memcpy(b->p + b->len, s, n); b->len += n; }
static void buf_putc(Buf *b, char c) { buf_need(b, 1); b->p[b->len++] = c; }
static void buf_puts(Buf *b, const char *s) { buf_put(b, s, strlen(s)); }

// What the output header says of rollout slices (check_slices): the input's own fields (one
// input), the whole batch (shard 0 of 1), the slices it holds ("shards": [...]), or nothing
// (--force: records of different batches, like the iteration it drops).
enum { SLICES_AS_IS = 0, SLICES_WHOLE, SLICES_SOME, SLICES_NONE };

// A dtype table: field name -> 'i' or 'f' (the output header's "dtypes").
typedef struct {
    char **name;
    char *type;
    int n, cap;
} Dtypes;

static char dtypes_get(const Dtypes *d, const char *name, size_t len) {
    for (int i = 0; i < d->n; i++)
        if (strlen(d->name[i]) == len && memcmp(d->name[i], name, len) == 0) return d->type[i];
    return 0;
}

static void dtypes_set(Dtypes *d, const char *name, size_t len, char type) {
    for (int i = 0; i < d->n; i++)
        if (strlen(d->name[i]) == len && memcmp(d->name[i], name, len) == 0) { d->type[i] = type; return; }
    if (d->n == d->cap) {
        d->cap = d->cap ? 2 * d->cap : 32;
        d->name = xrealloc(d->name, (size_t)d->cap * sizeof(char *));
        d->type = xrealloc(d->type, (size_t)d->cap);
    }
    d->name[d->n] = xmalloc(len + 1);
    memcpy(d->name[d->n], name, len);
    d->name[d->n][len] = 0;
    d->type[d->n++] = type;
}

// One input: a shard, or JSON lines (with an optional header line).
typedef struct {
    const char *path;
    ShardReader *r;            // shard input
    ZIn *z;                    // JSON input
    Buf line;                  // JSON: bytes read, [pos, line.len) not yet consumed
    size_t pos;
    int eof;
    long lineno;
    msgpack_unpacked jheader;  // JSON: the header line as msgpack (zone-owned)
    int has_jheader;
    json_t *pending;           // JSON: the first record, read ahead to infer dtypes
} Input;

typedef struct {
    Opts o;
    Input *in;
    int nin;
    Dtypes dt;                 // output dtypes
    msgpack_sbuffer hbuf;      // the output header, packed
    msgpack_unpacked hdr;      // ... and parsed
    int drop_iteration;        // --force joined different iterations
    int slices;                // rollout slices joined (check_slices): SLICES_AS_IS, _WHOLE, _SOME
    int *held, nheld, split;   // SLICES_SOME: the slices the output holds, in order, of split
    // output
    ShardWriter *w;
    ZOut *jout;
    Buf jl;                    // JSON line being built
    Fields *sel;               // --fields for shard output
    // JSON -> record conversion
    msgpack_sbuffer rbuf;
    msgpack_packer rpk;
    msgpack_unpacked rec;
    Buf scratch;
    char **warned;             // fields warned about (undeclared arrays)
    int nwarned;
    int warned_utf8, warned_bigint;
    json_t *cur;               // the JSON record being converted
    int tty_out;               // JSON to a terminal: write each line at once
    long nrec;
} Cat;

// ---------------------------------------------------------------------------------------
// usage

static void usage(FILE *f) {
    fprintf(f,
"usage: safe-cat [options] [FILE...]      (no FILE or '-': stdin)\n"
"Convert safe shards to JSON lines and back, and join shards.\n"
"\n"
"  --to-json          write JSON lines (default when the first input is a shard)\n"
"  --to-shard         write a shard (default when the first input is JSON lines);\n"
"                     with shard inputs this joins them into one shard\n"
"  -o, --output FILE  write FILE (temp name + rename) instead of stdout; a .safe,\n"
"                     .msgpack or .msgpack.zst name implies --to-shard, .jsonl/.json --to-json\n"
"  --header           print only the (output) header as one JSON object\n"
"  --with-header      JSON output starts with the header line (same as --header --all),\n"
"                     so that 'safe-cat --to-shard' restores kind, model, dtypes, ...\n"
"  --header-from SHARD  take the output header from SHARD (for JSON lines without one)\n"
"  --head N           only the first N records (over all inputs)\n"
"  --fields a,b,c     only these record fields, in this order\n"
"  --level N          zstd level of shard output, 0 = raw msgpack (default %d)\n"
"  --force            join shards of different iterations (the output header then has no\n"
"                     \"iteration\"); kind, model and tokenizer must always match\n"
"  -q, --quiet        no progress on stderr\n"
"  -h, --help         this help;   --version   print the version\n"
"\n"
"JSON lines -> shard: top-level arrays become bins when the header dtypes or the built-in\n"
"schema name their type, or when the first record shows them to be all integers (i32) or\n"
"numbers with a real (f32). null in a float array is NaN. Floats are printed so they\n"
"read back exactly (float32 %%.9g, float64 up to 17 digits), always with '.' or 'e'.\n"
"Exit status: 0 ok, 1 usage, 2 bad input (names file, record or line, field), 3 runtime.\n",
            ZIO_DEFAULT_LEVEL);
}

static void split_fields(Opts *o, const char *s) {
    char *copy = xstrdup(s), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        o->fields = xrealloc(o->fields, (size_t)(o->nfields + 1) * sizeof(char *));
        o->fields[o->nfields++] = xstrdup(t);
    }
    free(copy);
    if (o->nfields == 0) die(EXIT_USAGE, "--fields needs at least one field name, e.g. --fields id,reward");
}

static long parse_long(const char *opt, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        die(EXIT_USAGE, "%s wants an integer in %ld..%ld, got \"%s\"", opt, lo, hi, s);
    return v;
}

static void parse_args(Opts *o, int argc, char **argv) {
    enum { O_TO_JSON = 256, O_TO_SHARD, O_HEADER, O_WITH_HEADER, O_ALL, O_HEADER_FROM, O_HEAD, O_FIELDS,
           O_LEVEL, O_FORCE, O_VERSION };
    static const struct option opts[] = {
        {"to-json", no_argument, 0, O_TO_JSON},       {"to-shard", no_argument, 0, O_TO_SHARD},
        {"output", required_argument, 0, 'o'},       {"header", no_argument, 0, O_HEADER},
        {"with-header", no_argument, 0, O_WITH_HEADER}, {"all", no_argument, 0, O_ALL},
        {"header-from", required_argument, 0, O_HEADER_FROM}, {"head", required_argument, 0, O_HEAD},
        {"fields", required_argument, 0, O_FIELDS},   {"level", required_argument, 0, O_LEVEL},
        {"force", no_argument, 0, O_FORCE},           {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},                {"version", no_argument, 0, O_VERSION},
        {0, 0, 0, 0}};
    *o = (Opts){.head = -1, .out = "-", .level = ZIO_DEFAULT_LEVEL};
    int c;
    while ((c = getopt_long(argc, argv, "o:qh", opts, NULL)) != -1) {
        switch (c) {
        case O_TO_JSON: o->to = 'j'; break;
        case O_TO_SHARD: o->to = 's'; break;
        case 'o': o->out = optarg; break;
        case O_HEADER: o->header_only = 1; break;
        case O_WITH_HEADER: o->with_header = 1; break;
        case O_ALL: o->all = 1; break;
        case O_HEADER_FROM: o->header_from = optarg; break;
        case O_HEAD: o->head = parse_long("--head", optarg, 0, __LONG_MAX__); break;
        case O_FIELDS: split_fields(o, optarg); break;
        case O_LEVEL: o->level = (int)parse_long("--level", optarg, 0, 22); break;
        case O_FORCE: o->force = 1; break;
        case 'q': o->quiet = 1; break;
        case 'h': usage(stdout); exit(0);
        case O_VERSION: safe_print_version("safe-cat"); exit(EXIT_OK);
        default: fprintf(stderr, "Try 'safe-cat --help'.\n"); exit(EXIT_USAGE);
        }
    }
    if (o->header_only && o->all) { o->header_only = 0; o->with_header = 1; }   // --header --all
    if (o->all && !o->with_header) die(EXIT_USAGE, "--all goes with --header (it means --with-header)");
    if (o->header_only && o->to == 's') die(EXIT_USAGE, "--header prints JSON; it does not go with --to-shard");
}

// ---------------------------------------------------------------------------------------
// JSON text out: msgpack object -> JSON

static void warn_utf8_once(Cat *c, const char *where) {
    if (c->warned_utf8) return;
    c->warned_utf8 = 1;
    warn("%s: a string is not valid UTF-8; bad bytes are written as U+FFFD (this is lossy)", where);
}

// Length of the valid UTF-8 sequence at s (n bytes left), or 0 when invalid.
static int utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    int k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (k == 0 || (size_t)k > n || (k == 2 && c < 0xC2)) return 0;
    for (int i = 1; i < k; i++) if ((s[i] & 0xC0) != 0x80) return 0;
    if (k == 3) {
        unsigned cp = ((c & 0x0F) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
        if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    }
    if (k == 4) {
        unsigned cp = ((c & 0x07) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
        if (cp < 0x10000 || cp > 0x10FFFF) return 0;
    }
    return k;
}

static void put_json_str(Cat *c, Buf *b, const char *s, size_t n, const char *where) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    buf_need(b, n + 2);
    buf_putc(b, '"');
    for (size_t i = 0; i < n;) {
        unsigned ch = u[i];
        if (ch >= 0x20 && ch < 0x80 && ch != '"' && ch != '\\') { buf_putc(b, (char)ch); i++; continue; }
        if (ch == '"') buf_puts(b, "\\\"");
        else if (ch == '\\') buf_puts(b, "\\\\");
        else if (ch == '\n') buf_puts(b, "\\n");
        else if (ch == '\t') buf_puts(b, "\\t");
        else if (ch == '\r') buf_puts(b, "\\r");
        else if (ch < 0x20) {
            char e[7] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15], 0};
            buf_puts(b, e);
        } else {
            int k = utf8_len(u + i, n - i);
            if (k == 0) { warn_utf8_once(c, where); buf_puts(b, "\\ufffd"); i++; continue; }
            buf_put(b, u + i, (size_t)k);
            i += (size_t)k;
            continue;
        }
        i++;
    }
    buf_putc(b, '"');
}

static void put_i64(Buf *b, long long v) {
    char t[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do { t[n++] = (char)('0' + u % 10); u /= 10; } while (u);
    if (v < 0) t[n++] = '-';
    buf_need(b, (size_t)n);
    while (n) b->p[b->len++] = t[--n];
}

static void put_u64(Buf *b, unsigned long long u) {
    char t[24];
    int n = 0;
    do { t[n++] = (char)('0' + u % 10); u /= 10; } while (u);
    buf_need(b, (size_t)n);
    while (n) b->p[b->len++] = t[--n];
}

// A number always shows it is a float ('.' or 'e'), so JSON -> shard keeps it a float.
static void put_float_text(Buf *b, const char *t, int n) {
    buf_put(b, t, (size_t)n);
    if (!strpbrk(t, ".eE")) buf_puts(b, ".0");
}

static void put_f32(Buf *b, float v) {
    if (!isfinite(v)) { buf_puts(b, "null"); return; }
    char t[32];
    int n = snprintf(t, sizeof t, "%.9g", (double)v);   // 9 digits: every float32 reads back exactly
    put_float_text(b, t, n);
}

static void put_f64(Buf *b, double v) {
    if (!isfinite(v)) { buf_puts(b, "null"); return; }
    char t[40];
    int n = 0;
    for (int p = 15; p <= 17; p++) {   // shortest of 15..17 digits that reads back exactly
        n = snprintf(t, sizeof t, "%.*g", p, v);
        if (strtod(t, NULL) == v) break;
    }
    put_float_text(b, t, n);
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void put_base64(Buf *b, const unsigned char *s, size_t n) {
    buf_need(b, 4 * (n / 3 + 1) + 2);
    buf_putc(b, '"');
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) | (i + 2 < n ? s[i + 2] : 0);
        buf_putc(b, B64[v >> 18 & 63]);
        buf_putc(b, B64[v >> 12 & 63]);
        buf_putc(b, i + 1 < n ? B64[v >> 6 & 63] : '=');
        buf_putc(b, i + 2 < n ? B64[v & 63] : '=');
    }
    buf_putc(b, '"');
}

static void put_obj(Cat *c, Buf *b, const msgpack_object *o, const char *where);

static void put_map(Cat *c, Buf *b, const msgpack_object *o, const char *where) {
    buf_putc(b, '{');
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key;
        if (i) buf_putc(b, ',');
        if (k->type == MSGPACK_OBJECT_STR) {
            put_json_str(c, b, k->via.str.ptr, k->via.str.size, where);
        } else {   // JSON keys are strings: write the key's JSON text as one (lossy; never in safe shards)
            Buf t = {0};
            put_obj(c, &t, k, where);
            put_json_str(c, b, t.p, t.len, where);
            free(t.p);
        }
        buf_putc(b, ':');
        put_obj(c, b, &o->via.map.ptr[i].val, where);
    }
    buf_putc(b, '}');
}

static void put_obj(Cat *c, Buf *b, const msgpack_object *o, const char *where) {
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: buf_puts(b, "null"); break;
    case MSGPACK_OBJECT_BOOLEAN: buf_puts(b, o->via.boolean ? "true" : "false"); break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: put_u64(b, (unsigned long long)o->via.u64); break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: put_i64(b, (long long)o->via.i64); break;
    case MSGPACK_OBJECT_FLOAT32: put_f32(b, (float)o->via.f64); break;
    case MSGPACK_OBJECT_FLOAT64: put_f64(b, o->via.f64); break;
    case MSGPACK_OBJECT_STR: put_json_str(c, b, o->via.str.ptr, o->via.str.size, where); break;
    case MSGPACK_OBJECT_ARRAY:
        buf_putc(b, '[');
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i) buf_putc(b, ',');
            put_obj(c, b, &o->via.array.ptr[i], where);
        }
        buf_putc(b, ']');
        break;
    case MSGPACK_OBJECT_MAP: put_map(c, b, o, where); break;
    case MSGPACK_OBJECT_BIN:   // a bin without a dtype: {"$base64": "..."}
        buf_puts(b, "{\"$base64\":");
        put_base64(b, (const unsigned char *)o->via.bin.ptr, o->via.bin.size);
        buf_putc(b, '}');
        break;
    case MSGPACK_OBJECT_EXT:
        buf_puts(b, "{\"$ext\":");
        put_i64(b, o->via.ext.type);
        buf_puts(b, ",\"$base64\":");
        put_base64(b, (const unsigned char *)o->via.ext.ptr, o->via.ext.size);
        buf_putc(b, '}');
        break;
    }
}

// A top-level bin with a dtype: a JSON array of its values.
static void put_typed_bin(Buf *b, const Record *r, const char *key, const msgpack_object *o, char type) {
    if (o->via.bin.size % 4)
        rec_die(r, key, EXIT_BADINPUT, "bin of %u bytes is not a whole number of %s values (a multiple of 4)",
                o->via.bin.size, type == 'i' ? "int32" : "float32");
    size_t n = o->via.bin.size / 4;
    const char *p = o->via.bin.ptr;
    buf_putc(b, '[');
    for (size_t i = 0; i < n; i++) {
        if (i) buf_putc(b, ',');
        if (type == 'i') { int32_t v; memcpy(&v, p + 4 * i, 4); put_i64(b, v); }
        else { float v; memcpy(&v, p + 4 * i, 4); put_f32(b, v); }
    }
    buf_putc(b, ']');
}

static void put_field(Cat *c, Buf *b, const Record *r, const msgpack_object *k, const msgpack_object *v, char *where) {
    put_json_str(c, b, k->via.str.ptr, k->via.str.size, where);
    buf_putc(b, ':');
    char type = v->type == MSGPACK_OBJECT_BIN ? dtypes_get(&c->dt, k->via.str.ptr, k->via.str.size) : 0;
    if (type) {
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)k->via.str.size, k->via.str.ptr);
        put_typed_bin(b, r, key, v, type);
    } else {
        put_obj(c, b, v, where);
    }
}

static void json_write_record(Cat *c, const Record *r) {
    char where[300];
    snprintf(where, sizeof where, "%s: record %ld", r->file, r->index);
    Buf *b = &c->jl;
    b->len = 0;
    buf_putc(b, '{');
    int first = 1;
    if (c->o.fields) {
        for (int i = 0; i < c->o.nfields; i++) {
            const msgpack_object *v = rec_find(r, c->o.fields[i]);
            if (!v) continue;
            msgpack_object k = {.type = MSGPACK_OBJECT_STR};
            k.via.str.ptr = c->o.fields[i];
            k.via.str.size = (uint32_t)strlen(c->o.fields[i]);
            if (!first) buf_putc(b, ',');
            first = 0;
            put_field(c, b, r, &k, v, where);
        }
    } else {
        const msgpack_object_kv *kv = r->map->via.map.ptr;
        for (uint32_t i = 0; i < r->map->via.map.size; i++) {
            if (!first) buf_putc(b, ',');
            first = 0;
            put_field(c, b, r, &kv[i].key, &kv[i].val, where);
        }
    }
    buf_puts(b, "}\n");
    zout_write(c->jout, b->p, b->len);
    if (c->tty_out) zout_flush(c->jout);   // a person is watching: no batching
}

// ---------------------------------------------------------------------------------------
// JSON text in: line reading, JSON -> msgpack

static void jin_die(Input *in, const char *field, const char *fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));
static void jin_die(Input *in, const char *field, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (field) die(EXIT_BADINPUT, "%s: line %ld: field \"%s\": %s", in->path, in->lineno, field, msg);
    die(EXIT_BADINPUT, "%s: line %ld: %s", in->path, in->lineno, msg);
}

// The next non-blank line (NUL-terminated, without its newline), or NULL at the end.
static char *line_next(Input *in, size_t *n) {
    for (;;) {
        char *start = in->line.p + in->pos;
        char *nl = in->pos < in->line.len ? memchr(start, '\n', in->line.len - in->pos) : NULL;
        if (nl || (in->eof && in->pos < in->line.len)) {
            char *end = nl ? nl : in->line.p + in->line.len;
            in->lineno++;
            in->pos = (size_t)(end - in->line.p) + (nl ? 1 : 0);
            if (end > start && end[-1] == '\r') end--;
            *end = 0;   // (a read always leaves a spare byte past line.len for this)
            size_t k = (size_t)(end - start);
            size_t i = 0;
            while (i < k && (start[i] == ' ' || start[i] == '\t' || start[i] == '\r')) i++;
            if (i == k) continue;   // blank line
            *n = k;
            return start;
        }
        if (in->eof) return NULL;
        // compact, grow, read more
        if (in->pos > 0) memmove(in->line.p, in->line.p + in->pos, in->line.len - in->pos);
        in->line.len -= in->pos;
        in->pos = 0;
        buf_need(&in->line, 1 << 16);
        long r = zin_read(in->z, in->line.p + in->line.len, in->line.cap - in->line.len - 1);
        if (r < 0) die(EXIT_BADINPUT, "%s: after line %ld: %s (the file is damaged)", in->path, in->lineno, zin_error(in->z));
        if (r == 0) in->eof = 1;
        in->line.len += (size_t)r;
    }
}

// Copy of the line with ".0" after integer literals beyond int64: jq 1.6 prints large
// floats (1e20) as integers, which jansson refuses. Strings are left alone.
static void big_ints_as_reals(const char *s, size_t n, Buf *out) {
    out->len = 0;
    int in_str = 0;
    for (size_t i = 0; i < n;) {
        char ch = s[i];
        if (in_str) {
            buf_putc(out, ch);
            if (ch == '\\' && i + 1 < n) buf_putc(out, s[++i]);
            else if (ch == '"') in_str = 0;
            i++;
        } else if (ch == '-' || (ch >= '0' && ch <= '9')) {
            size_t j = i, digits = 0;
            int real = 0;
            while (j < n && strchr("+-0123456789.eE", s[j])) { digits += s[j] >= '0' && s[j] <= '9'; real |= !!strchr(".eE", s[j]); j++; }
            buf_put(out, s + i, j - i);
            if (!real && digits > 18) buf_puts(out, ".0");
            i = j;
        } else {
            in_str = ch == '"';
            buf_putc(out, ch);
            i++;
        }
    }
    buf_putc(out, 0);
}

static json_t *json_next(Cat *c, Input *in) {
    size_t n;
    char *s = line_next(in, &n);
    if (!s) return NULL;
    json_error_t err;
    const size_t flags = JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL;
    json_t *j = json_loadb(s, n, flags, &err);
    if (!j && strstr(err.text, "too big integer")) {
        big_ints_as_reals(s, n, &c->scratch);
        j = json_loadb(c->scratch.p, c->scratch.len - 1, flags, &err);
        if (j && !c->warned_bigint) {
            c->warned_bigint = 1;
            warn("%s: line %ld: integers beyond int64 are read as floats (jq 1.6 prints large floats so)", in->path, in->lineno);
        }
    }
    if (!j) jin_die(in, NULL, "column %d: invalid JSON: %s", err.column, err.text);
    if (!json_is_object(j)) {
        json_decref(j);
        jin_die(in, NULL, "expected one JSON object per line (a record), found another JSON value");
    }
    return j;
}

static int json_is_header(json_t *j) {
    json_t *f = json_object_get(j, "format");
    return f && json_is_string(f) && strcmp(json_string_value(f), SHARD_FORMAT) == 0;
}

static size_t b64_val(int ch) {
    const char *p = ch ? strchr(B64, ch) : NULL;
    return p ? (size_t)(p - B64) : 64;
}

// Decode base64 text into c->scratch; dies on bad text.
static void b64_decode(Cat *c, Input *in, const char *field, const char *s) {
    Buf *b = &c->scratch;
    b->len = 0;
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '=') n--;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        size_t v = b64_val((unsigned char)s[i]);
        if (v == 64) jin_die(in, field, "\"$base64\" holds a character that is not base64");
        acc = acc << 6 | (unsigned)v;
        bits += 6;
        if (bits >= 8) { bits -= 8; buf_putc(b, (char)(acc >> bits & 0xFF)); }
    }
}

// {"$base64": "..."} -> bin, {"$ext": T, "$base64": "..."} -> ext; 0 when j is not one.
static int pack_json_special(Cat *c, Input *in, const char *field, json_t *j) {
    json_t *b64 = json_object_get(j, "$base64"), *ext = json_object_get(j, "$ext");
    size_t want = 1 + (ext != NULL);
    if (!b64 || !json_is_string(b64) || json_object_size(j) != want) return 0;
    if (ext && !json_is_integer(ext)) return 0;
    b64_decode(c, in, field, json_string_value(b64));
    if (ext) msgpack_pack_ext_with_body(&c->rpk, c->scratch.p, c->scratch.len, (int8_t)json_integer_value(ext));
    else msgpack_pack_bin_with_body(&c->rpk, c->scratch.p, c->scratch.len);
    return 1;
}

static void pack_json(Cat *c, Input *in, const char *field, json_t *j) {
    msgpack_packer *pk = &c->rpk;
    switch (json_typeof(j)) {
    case JSON_NULL: msgpack_pack_nil(pk); break;
    case JSON_TRUE: msgpack_pack_true(pk); break;
    case JSON_FALSE: msgpack_pack_false(pk); break;
    case JSON_INTEGER: msgpack_pack_int64(pk, json_integer_value(j)); break;
    case JSON_REAL: msgpack_pack_double(pk, json_real_value(j)); break;
    case JSON_STRING: msgpack_pack_str_with_body(pk, json_string_value(j), json_string_length(j)); break;
    case JSON_ARRAY: {
        msgpack_pack_array(pk, json_array_size(j));
        size_t i;
        json_t *e;
        json_array_foreach(j, i, e) pack_json(c, in, field, e);
        break;
    }
    case JSON_OBJECT: {
        if (pack_json_special(c, in, field, j)) break;
        msgpack_pack_map(pk, json_object_size(j));
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) {
            msgpack_pack_str_with_body(pk, k, strlen(k));
            pack_json(c, in, field, v);
        }
        break;
    }
    }
}

// What an array looks like: 'i' all integers in int32, 'f' numbers (or null) with a real
// among them, 0 otherwise (empty, strings, nested, out of range).
static char infer_array(json_t *a) {
    size_t i;
    json_t *e;
    int reals = 0, nulls = 0, big = 0;
    if (json_array_size(a) == 0) return 0;
    json_array_foreach(a, i, e) {
        if (json_is_integer(e)) big |= json_integer_value(e) < INT32_MIN || json_integer_value(e) > INT32_MAX;
        else if (json_is_real(e)) reals = 1;
        else if (json_is_null(e)) nulls = 1;
        else return 0;
    }
    if (reals) return 'f';
    return nulls || big ? 0 : 'i';   // all null, or int64 values: leave it an array
}

// A top-level array with a dtype -> bin of int32 / float32.
static void pack_typed_array(Cat *c, Input *in, const char *field, json_t *a, char type) {
    size_t n = json_array_size(a), i;
    json_t *e;
    Buf *b = &c->scratch;
    b->len = 0;
    buf_need(b, 4 * n);
    json_array_foreach(a, i, e) {
        if (type == 'i') {
            double d = json_is_integer(e) ? (double)json_integer_value(e) : json_is_real(e) ? json_real_value(e) : NAN;
            if (!(d >= INT32_MIN && d <= INT32_MAX && d == floor(d)))
                jin_die(in, field, "element %zu is not an int32: the dtype of \"%s\" is i32 (from the header, the "
                        "built-in schema or the first record; a header line {\"format\":\"safe-shard\",\"version\":1,"
                        "\"dtypes\":{\"%s\":\"f32\"}} makes it float32)", i, field, field);
            int32_t v = (int32_t)d;
            memcpy(b->p + 4 * i, &v, 4);
        } else {
            double d;
            if (json_is_integer(e)) d = (double)json_integer_value(e);
            else if (json_is_real(e)) d = json_real_value(e);
            else if (json_is_null(e)) d = NAN;
            else jin_die(in, field, "element %zu is not a number (the dtype of \"%s\" is f32)", i, field);
            float v = (float)d;
            if (isinf(v) && !isinf(d)) jin_die(in, field, "element %zu (%g) does not fit in float32", i, d);
            memcpy(b->p + 4 * i, &v, 4);
        }
    }
    msgpack_pack_bin_with_body(&c->rpk, b->p, 4 * n);
}

static void warn_undeclared(Cat *c, Input *in, const char *field) {
    for (int i = 0; i < c->nwarned; i++) if (strcmp(c->warned[i], field) == 0) return;
    c->warned = xrealloc(c->warned, (size_t)(c->nwarned + 1) * sizeof(char *));
    c->warned[c->nwarned++] = xstrdup(field);
    warn("%s: line %ld: field \"%s\" looks like a number array but has no dtype (it is not in the header, the "
         "built-in schema or the first record): written as a msgpack array; declare it with a header line",
         in->path, in->lineno, field);
}

// A JSON record -> c->rec (a msgpack map), as a Record.
static void json_to_record(Cat *c, Input *in, json_t *j, Record *rec) {
    c->rbuf.size = 0;
    msgpack_pack_map(&c->rpk, json_object_size(j));
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) {
        msgpack_pack_str_with_body(&c->rpk, k, strlen(k));
        char type = json_is_array(v) ? dtypes_get(&c->dt, k, strlen(k)) : 0;
        if (type) {
            pack_typed_array(c, in, k, v, type);
        } else {
            if (json_is_array(v) && infer_array(v)) warn_undeclared(c, in, k);
            pack_json(c, in, k, v);
        }
    }
    msgpack_unpacked_destroy(&c->rec);
    if (msgpack_unpack_next(&c->rec, c->rbuf.data, c->rbuf.size, NULL) != MSGPACK_UNPACK_SUCCESS)
        die(EXIT_RUNTIME, "internal error: JSON -> msgpack produced bad msgpack (%s line %ld)", in->path, in->lineno);
    *rec = (Record){&c->rec.data, in->path, c->nrec};
}

// ---------------------------------------------------------------------------------------
// inputs and the output header

static void load_json_header(Cat *c, Input *in, json_t *j) {
    json_t *v = json_object_get(j, "version");
    if (!v || !json_is_integer(v))
        jin_die(in, "version", "the header line has no integer \"version\"");
    if (json_integer_value(v) != SHARD_VERSION)
        jin_die(in, "version", "unsupported shard version %lld: this build reads version %d only",
                (long long)json_integer_value(v), SHARD_VERSION);
    json_t *d = json_object_get(j, "dtypes");
    if (d) {
        const char *k;
        json_t *t;
        if (!json_is_object(d)) jin_die(in, "dtypes", "expected an object of field name -> \"i32\"|\"f32\"");
        json_object_foreach(d, k, t) {
            const char *s = json_is_string(t) ? json_string_value(t) : "";
            if (strcmp(s, "i32") != 0 && strcmp(s, "f32") != 0)
                jin_die(in, "dtypes", "field \"%s\": dtype must be \"i32\" or \"f32\"", k);
        }
    }
    // pack into rbuf, then parse a copy that lives in the header's own zone
    c->rbuf.size = 0;
    pack_json(c, in, NULL, j);
    msgpack_zone *zone = msgpack_zone_new(4096);
    char *bytes = msgpack_zone_malloc(zone, c->rbuf.size);
    memcpy(bytes, c->rbuf.data, c->rbuf.size);
    size_t off = 0;
    if (!bytes || msgpack_unpack(bytes, c->rbuf.size, &off, zone, &in->jheader.data) != MSGPACK_UNPACK_SUCCESS)
        die(EXIT_RUNTIME, "internal error: header line -> msgpack failed");
    in->jheader.zone = zone;
    in->has_jheader = 1;
}

static const msgpack_object *input_header(Input *in) {
    if (in->r) return shard_header(in->r);
    return in->has_jheader ? &in->jheader.data : NULL;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

// Open one input and decide what it is: '{' (after blanks) -> JSON lines, else a shard.
static void input_open(Cat *c, Input *in, const char *path) {
    memset(in, 0, sizeof *in);
    ZIn *z = in->z = zin_open(path);
    in->path = xstrdup(zin_path(z));   // "stdin" for "-"
    // peek byte by byte up to the first non-blank one: a slow pipe is not waited on for more
    unsigned char head[64];
    long n = 0;
    for (size_t want = 1; want <= sizeof head; want++) {
        n = zin_peek(z, head, want);
        unsigned char ch = n == (long)want ? head[want - 1] : 0;
        if (n < (long)want || !(ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n')) break;
    }
    if (n < 0) {
        if (strncmp(zin_error(z), "truncated", 9) == 0)
            die(EXIT_BADINPUT, "%s: header: truncated before the first record: the zstd frame is incomplete "
                "(was its writer killed? regenerate it)", zin_path(z));
        die(EXIT_BADINPUT, "%s: %s, before any record (the data is damaged: regenerate it)", zin_path(z), zin_error(z));
    }
    long i = 0;
    while (i < n && (head[i] == ' ' || head[i] == '\t' || head[i] == '\r' || head[i] == '\n')) i++;
    int json = (i < n && head[i] == '{') || (n > 0 && i == n);
    if (n == 0) {
        int json_ok = c->o.to == 's' || ends_with(path, ".jsonl") || ends_with(path, ".json") ||
                      ends_with(path, ".jsonl.zst");
        if (!json_ok)
            die(EXIT_BADINPUT, "%s: empty input: neither a shard nor JSON lines (an empty JSON lines stream "
                "becomes an empty shard with --to-shard)", path);
        json = 1;
    }
    if (!json) {
        in->r = shard_open_zin(z);   // the reader owns z now
        in->z = NULL;
        return;
    }
    json_t *j = json_next(c, in);
    if (j && json_is_header(j)) {
        load_json_header(c, in, j);
        json_decref(j);
        j = json_next(c, in);
    }
    in->pending = j;
}

// Describe a header value for messages: "qwen" / 3 / absent.
static void describe(const msgpack_object *o, char *buf, size_t n) {
    if (!o) snprintf(buf, n, "none");
    else if (o->type == MSGPACK_OBJECT_STR) snprintf(buf, n, "\"%.*s\"", (int)(o->via.str.size < 200 ? o->via.str.size : 200), o->via.str.ptr);
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) snprintf(buf, n, "%llu", (unsigned long long)o->via.u64);
    else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) snprintf(buf, n, "%lld", (long long)o->via.i64);
    else if (o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32) snprintf(buf, n, "%.17g", o->via.f64);
    else if (o->type == MSGPACK_OBJECT_BOOLEAN) snprintf(buf, n, "%s", o->via.boolean ? "true" : "false");
    else if (o->type == MSGPACK_OBJECT_NIL) snprintf(buf, n, "null");
    else snprintf(buf, n, "a value of msgpack type %d", (int)o->type);
}

static int obj_equal(const msgpack_object *a, const msgpack_object *b) {
    if (!a || !b) return a == b;
    return msgpack_object_equal(*a, *b);
}

static const msgpack_object *hget(const msgpack_object *h, const char *key) {
    if (!h) return NULL;
    Record r = {h, "", -1};
    return rec_find(&r, key);
}

// Shards joined into one must agree on what they are; iterations may differ with --force.
static void header_compat(Cat *c, const msgpack_object *a, const char *apath, const msgpack_object *b, const char *bpath) {
    static const char *must[] = {"version", "kind", "model", "tokenizer"};
    char va[256], vb[256];
    for (size_t i = 0; i < sizeof must / sizeof must[0]; i++) {
        const msgpack_object *x = hget(a, must[i]), *y = hget(b, must[i]);
        if (obj_equal(x, y)) continue;
        describe(x, va, sizeof va);
        describe(y, vb, sizeof vb);
        die(EXIT_BADINPUT, "%s: header: field \"%s\" is %s but %s has %s: refusing to join shards that differ in %s",
            bpath, must[i], vb, apath, va, must[i]);
    }
    const msgpack_object *x = hget(a, "iteration"), *y = hget(b, "iteration");
    if (obj_equal(x, y)) return;
    if (!c->o.force) {
        describe(x, va, sizeof va);
        describe(y, vb, sizeof vb);
        die(EXIT_BADINPUT, "%s: header: field \"iteration\" is %s but %s has %s: joining different iterations "
            "needs --force (the output header then has no \"iteration\")", bpath, vb, apath, va);
    }
    c->drop_iteration = 1;
}

static int key_is(const msgpack_object *k, const char *name) {
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(name) &&
           memcmp(k->via.str.ptr, name, k->via.str.size) == 0;
}

// Rollout slices (safe-rollout --shard i/N) carry "shard" i and "num_shards" N in their header,
// kept by the later stages; a partial join of slices carries "shards" [i, j, ...] instead. An
// input's slices into *list (count returned; 0: no slice fields), its split into *split.
static int input_slices(const msgpack_object *h, const char *path, int *split, int **list) {
    const msgpack_object *si = hget(h, "shard"), *sl = hget(h, "shards"), *ni = hget(h, "num_shards");
    if (!si && !sl && !ni) return 0;
    if (!ni || ni->type != MSGPACK_OBJECT_POSITIVE_INTEGER || ni->via.u64 < 1 || ni->via.u64 > 1000000 ||
        (si != NULL) == (sl != NULL))
        die(EXIT_BADINPUT, "%s: header: a rollout slice has \"num_shards\" N (1 to 1000000) and either \"shard\" "
            "or \"shards\" (as safe-rollout --shard and safe-cat write them)", path);
    *split = (int)ni->via.u64;
    if (si) {
        if (si->type != MSGPACK_OBJECT_POSITIVE_INTEGER || si->via.u64 >= ni->via.u64)
            die(EXIT_BADINPUT, "%s: header: field \"shard\" must be a whole number below \"num_shards\" (%d)", path,
                *split);
        *list = xmalloc(sizeof(int));
        (*list)[0] = (int)si->via.u64;
        return 1;
    }
    if (sl->type != MSGPACK_OBJECT_ARRAY || sl->via.array.size == 0)
        die(EXIT_BADINPUT, "%s: header: field \"shards\" must be a non-empty array of slice numbers", path);
    int n = (int)sl->via.array.size;
    *list = xmalloc((size_t)n * sizeof(int));
    for (int k = 0; k < n; k++) {
        const msgpack_object *v = &sl->via.array.ptr[k];
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 >= ni->via.u64 ||
            (k > 0 && (int)v->via.u64 <= (*list)[k - 1]))
            die(EXIT_BADINPUT, "%s: header: field \"shards\" must hold increasing slice numbers below \"num_shards\" "
                "(%d)", path, *split);
        (*list)[k] = (int)v->via.u64;
    }
    return n;
}

static int has_slice_fields(const msgpack_object *h) {
    return h && (hget(h, "num_shards") || hget(h, "shard") || hget(h, "shards"));
}

static int slice_key(const msgpack_object *k) {
    return key_is(k, "shard") || key_is(k, "shards") || key_is(k, "num_shards");
}

// Slices joined must be of one rollout: the same header but for which slices they are (the
// same iteration, seed, prompts, settings and scorer), not a slice twice, and in order, or
// the batch is wrong without a word (a slice of 2 beside a slice of 3 repeats prompts; out of
// order, the records are not the unsharded run's). All slices of the split make the whole
// batch, written as shard 0 of 1 like an unsharded run; some of them, "shards": [...].
static void check_slices(Cat *c) {
    if (c->o.force && c->nin > 1) {
        c->slices = SLICES_NONE;
        return;
    }
    int first = -1, total = 0, last = -1, a_slice = -1;
    int *held = NULL;
    for (int i = 0; i < c->nin && a_slice < 0; i++)
        if (has_slice_fields(input_header(&c->in[i]))) a_slice = i;
    for (int i = 0; i < c->nin; i++) {
        const msgpack_object *h = input_header(&c->in[i]);
        const char *path = c->in[i].path;
        if (!h && a_slice >= 0)   // header-less JSON lines: which prompts they hold is unknown
            die(EXIT_BADINPUT, "%s: no header (JSON lines without a header line), but %s is a rollout slice: refusing "
                "to join them (its records may repeat a slice's); export slices with safe-cat --with-header", path,
                c->in[a_slice].path);
        if (!h) continue;
        int split = 0, *list = NULL;
        int n = input_slices(h, path, &split, &list);
        if (first < 0 && n == 0) {
            for (int j = i + 1; j < c->nin; j++) {   // a header without slice fields before a slice
                const msgpack_object *hj = input_header(&c->in[j]);
                if (has_slice_fields(hj))
                    die(EXIT_BADINPUT, "%s: header: no rollout slice fields (\"shard\", \"num_shards\"), but %s is a "
                        "slice: refusing to join them (its prompts may be in the slice too)", path, c->in[j].path);
            }
            return;   // no slices among the inputs
        }
        if (n == 0)
            die(EXIT_BADINPUT, "%s: header: no rollout slice fields (\"shard\", \"num_shards\"), but %s is a slice: "
                "refusing to join them (its prompts may be in the slice too)", path, c->in[first].path);
        if (first < 0) {
            first = i;
            c->split = split;
            held = xmalloc((size_t)split * sizeof(int));
        } else {
            const msgpack_object *h0 = input_header(&c->in[first]);
            const char *p0 = c->in[first].path;
            if (split != c->split)
                die(EXIT_BADINPUT, "%s: header: field \"num_shards\" is %d but %s has %d: these are slices of different "
                    "splits of the prompts (did SHARDS change? join the slices of one split)", path, split, p0, c->split);
            // every other field the same: slices of one rollout differ only in which they are
            for (int pass = 0; pass < 2; pass++) {
                const msgpack_object *a = pass ? h : h0, *b = pass ? h0 : h;
                for (uint32_t k = 0; k < a->via.map.size; k++) {
                    const msgpack_object *key = &a->via.map.ptr[k].key;
                    if (slice_key(key) || key_is(key, "dtypes") || key->type != MSGPACK_OBJECT_STR) continue;
                    char name[128];
                    snprintf(name, sizeof name, "%.*s", (int)(key->via.str.size < 100 ? key->via.str.size : 100),
                             key->via.str.ptr);
                    const msgpack_object *vb = hget(b, name);
                    if (vb && obj_equal(&a->via.map.ptr[k].val, vb)) continue;
                    char d0[256], d1[256];
                    describe(hget(h, name), d1, sizeof d1);
                    describe(hget(h0, name), d0, sizeof d0);
                    die(EXIT_BADINPUT, "%s: header: field \"%s\" is %s but %s has %s: slices joined must come from one "
                        "rollout (the same iteration, seed, prompts and settings)", path, name, d1, p0, d0);
                }
            }
        }
        for (int k = 0; k < n; k++) {
            for (int j = 0; j < total; j++)
                if (held[j] == list[k])
                    die(EXIT_BADINPUT, "%s: header: slice %d of %d is already among the inputs before it: refusing to "
                        "join a slice twice (its prompts would appear twice in the batch)", path, list[k], split);
            if (list[k] < last)
                die(EXIT_BADINPUT, "%s: header: slice %d of %d comes after slice %d: join slices in order (0, 1, 2, ...), "
                    "so that the records are in the unsharded run's order", path, list[k], split, last);
            held[total++] = last = list[k];
        }
        free(list);
    }
    if (first < 0 || c->nin == 1) {
        free(held);
        c->slices = SLICES_AS_IS;
    } else if (total == c->split) {
        free(held);
        c->slices = SLICES_WHOLE;
    } else {
        c->slices = SLICES_SOME;
        c->held = held;
        c->nheld = total;
    }
}

static void dtypes_from_header(Dtypes *d, const msgpack_object *h) {
    const msgpack_object *m = hget(h, "dtypes");
    if (!m || m->type != MSGPACK_OBJECT_MAP) return;
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR || v->type != MSGPACK_OBJECT_STR || v->via.str.size != 3) continue;
        dtypes_set(d, k->via.str.ptr, k->via.str.size, v->via.str.ptr[0]);
    }
}

// First JSON records without a dtype for an array field: infer one (f32 wins over i32).
static void dtypes_infer(Dtypes *d, const Dtypes *known, json_t *rec) {
    const char *k;
    json_t *v;
    json_object_foreach(rec, k, v) {
        if (!json_is_array(v) || dtypes_get(known, k, strlen(k))) continue;
        char t = infer_array(v);
        if (!t) continue;
        char have = dtypes_get(d, k, strlen(k));
        if (have != 'f') dtypes_set(d, k, strlen(k), t);
    }
}

static int is_own_key(const msgpack_object *k) {
    static const char *own[] = {"format", "version", "kind", "tool", "tool_version", "dtypes"};
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(own[i]) &&
            memcmp(k->via.str.ptr, own[i], k->via.str.size) == 0) return 1;
    return 0;
}

// Header keys build_header leaves out: iteration after --force across iterations, the slice
// fields of a partial join of rollout slices.
static int dropped_key(const Cat *c, const msgpack_object *k) {
    if (c->slices == SLICES_NONE && slice_key(k)) return 1;
    return c->drop_iteration && key_is(k, "iteration");
}

// The joined slices: "shard": 0 (with "num_shards" 1) for the whole batch, else "shards": [...].
static void pack_slices(const Cat *c, msgpack_packer *pk) {
    if (c->slices == SLICES_WHOLE) {
        msgpack_pack_str_with_body(pk, "shard", 5);
        msgpack_pack_int(pk, 0);
        return;
    }
    msgpack_pack_str_with_body(pk, "shards", 6);
    msgpack_pack_array(pk, (size_t)c->nheld);
    for (int i = 0; i < c->nheld; i++) msgpack_pack_int(pk, c->held[i]);
}

static void pack_kv_str(msgpack_packer *pk, const char *k, const char *v) {
    msgpack_pack_str_with_body(pk, k, strlen(k));
    msgpack_pack_str_with_body(pk, v, strlen(v));
}

// The output header, laid out as shard_write_header lays it out (format, version, kind, tool,
// tool_version, the rest, dtypes), so JSON output shows exactly what a shard would hold.
static void build_header(Cat *c, const msgpack_object *base) {
    for (size_t i = 0; i < shard_schema_len; i++)
        dtypes_set(&c->dt, shard_schema[i].name, strlen(shard_schema[i].name), shard_schema[i].dtype[0]);
    if (base) dtypes_from_header(&c->dt, base);
    for (int i = 0; i < c->nin; i++) dtypes_from_header(&c->dt, input_header(&c->in[i]));
    Dtypes known = c->dt;   // read-only view while inferring
    Dtypes inferred = {0};
    for (int i = 0; i < c->nin; i++)
        if (c->in[i].pending && !json_is_header(c->in[i].pending)) dtypes_infer(&inferred, &known, c->in[i].pending);
    for (int i = 0; i < inferred.n; i++) {
        dtypes_set(&c->dt, inferred.name[i], strlen(inferred.name[i]), inferred.type[i]);
        free(inferred.name[i]);
    }
    free(inferred.name);
    free(inferred.type);

    msgpack_sbuffer_init(&c->hbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &c->hbuf, msgpack_sbuffer_write);
    size_t n = 6;
    // joined slices replace the base's own slice fields in place; a base without them
    // (--header-from) gets them after its other fields
    int joined = c->slices == SLICES_WHOLE || c->slices == SLICES_SOME;
    int add_index = joined && !hget(base, "shard") && !hget(base, "shards");
    int add_split = joined && !hget(base, "num_shards");
    n += (size_t)(add_index + add_split);
    if (base)
        for (uint32_t i = 0; i < base->via.map.size; i++) {
            const msgpack_object *k = &base->via.map.ptr[i].key;
            if (is_own_key(k) || dropped_key(c, k)) continue;
            n++;
        }
    msgpack_pack_map(&pk, n);
    pack_kv_str(&pk, "format", SHARD_FORMAT);
    msgpack_pack_str_with_body(&pk, "version", 7);
    msgpack_pack_int(&pk, SHARD_VERSION);
    static const char *own[] = {"kind", "tool", "tool_version"};
    const char *dflt[] = {"records", "safe-cat", SAFE_VERSION};
    for (int i = 0; i < 3; i++) {
        const msgpack_object *v = hget(base, own[i]);
        msgpack_pack_str_with_body(&pk, own[i], strlen(own[i]));
        if (v) msgpack_pack_object(&pk, *v);
        else msgpack_pack_str_with_body(&pk, dflt[i], strlen(dflt[i]));
    }
    if (base)
        for (uint32_t i = 0; i < base->via.map.size; i++) {
            const msgpack_object *k = &base->via.map.ptr[i].key;
            if (is_own_key(k) || dropped_key(c, k)) continue;
            if (joined && (key_is(k, "shard") || key_is(k, "shards"))) {
                pack_slices(c, &pk);   // in place of the first input's own, so the layout stays
                continue;
            }
            msgpack_pack_object(&pk, *k);
            if (c->slices == SLICES_WHOLE && key_is(k, "num_shards")) msgpack_pack_int(&pk, 1);
            else if (c->slices == SLICES_SOME && key_is(k, "num_shards")) msgpack_pack_int(&pk, c->split);
            else msgpack_pack_object(&pk, base->via.map.ptr[i].val);
        }
    if (add_index) pack_slices(c, &pk);
    if (add_split) {
        msgpack_pack_str_with_body(&pk, "num_shards", 10);
        msgpack_pack_int(&pk, c->slices == SLICES_WHOLE ? 1 : c->split);
    }
    msgpack_pack_str_with_body(&pk, "dtypes", 6);
    msgpack_pack_map(&pk, (size_t)c->dt.n);
    for (int i = 0; i < c->dt.n; i++) pack_kv_str(&pk, c->dt.name[i], c->dt.type[i] == 'i' ? "i32" : "f32");
    msgpack_unpacked_init(&c->hdr);
    if (msgpack_unpack_next(&c->hdr, c->hbuf.data, c->hbuf.size, NULL) != MSGPACK_UNPACK_SUCCESS)
        die(EXIT_RUNTIME, "internal error: could not build the output header");
}

// ---------------------------------------------------------------------------------------
// output

static void open_output(Cat *c) {
    if (c->o.to == 's') {
        if (strcmp(c->o.out, "-") == 0 && isatty(1))
            die(EXIT_USAGE, "refusing to write a binary shard to a terminal: redirect stdout or use -o FILE");
        c->w = shard_create(c->o.out, c->o.level);
        Fields *add = fields_new();   // keep the producing tool of the data, not safe-cat
        const msgpack_object *t = hget(&c->hdr.data, "tool"), *tv = hget(&c->hdr.data, "tool_version");
        if (t) fields_obj(add, "tool", t);
        if (tv) fields_obj(add, "tool_version", tv);
        shard_write_header(c->w, &c->hdr.data, add);
        fields_free(add);
        if (c->o.fields) c->sel = fields_new();
    } else {
        int level = ends_with(c->o.out, ".zst") ? c->o.level : 0;
        c->jout = zout_open(c->o.out, level);
        c->tty_out = strcmp(c->o.out, "-") == 0 && isatty(1);
        if (c->o.with_header || c->o.header_only) {
            c->jl.len = 0;
            put_obj(c, &c->jl, &c->hdr.data, "header");
            buf_putc(&c->jl, '\n');
            zout_write(c->jout, c->jl.p, c->jl.len);
        }
    }
}

static void write_record(Cat *c, const Record *r) {
    if (c->jout) { json_write_record(c, r); return; }
    if (!c->o.fields) { shard_write(c->w, r, NULL); return; }
    fields_clear(c->sel);
    for (int i = 0; i < c->o.nfields; i++) {
        const msgpack_object *v = rec_find(r, c->o.fields[i]);
        if (v) fields_obj(c->sel, c->o.fields[i], v);
    }
    shard_write(c->w, NULL, c->sel);
}

static int head_reached(Cat *c) { return c->o.head >= 0 && c->nrec >= c->o.head; }

static void copy_shard(Cat *c, Input *in, Progress *p) {
    Record r;
    while (!head_reached(c) && shard_next(in->r, &r)) {
        write_record(c, &r);
        progress_update(p, ++c->nrec, 0);
    }
}

// JSON lines -> records. The read-ahead first record is the last line read, so in->lineno
// is right for it too.
static void copy_json(Cat *c, Input *in, Progress *p) {
    json_t *j = in->pending;
    in->pending = NULL;
    for (;;) {
        if (!j) j = json_next(c, in);
        if (!j) break;
        c->cur = j;   // reachable should a die() exit mid-record (LeakSanitizer)
        if (json_is_header(j)) {   // another header (files joined with cat): check it, skip it
            Input tmp = *in;
            tmp.has_jheader = 0;
            load_json_header(c, &tmp, j);
            char where[300];
            snprintf(where, sizeof where, "%s line %ld", in->path, in->lineno);
            header_compat(c, &c->hdr.data, "the output header", &tmp.jheader.data, where);
            const msgpack_object *eh = &tmp.jheader.data;
            if (has_slice_fields(eh))
                die(EXIT_BADINPUT, "%s: header: a second header that names rollout slices: join slices as separate "
                    "inputs (safe-cat A.jsonl B.jsonl), not as one concatenated stream, so that they can be checked",
                    where);
            msgpack_unpacked_destroy(&tmp.jheader);
        } else if (!head_reached(c)) {
            Record r;
            json_to_record(c, in, j, &r);
            write_record(c, &r);
            progress_update(p, ++c->nrec, 0);
        }
        json_decref(j);
        j = c->cur = NULL;
        if (head_reached(c)) break;
    }
}

static void output_commit(Cat *c) {
    if (c->w) shard_commit(c->w);
    if (c->jout) zout_commit(c->jout);
}

static void cat_free(Cat *c) {
    for (int i = 0; i < c->nin; i++) {
        Input *in = &c->in[i];
        shard_close(in->r);
        zin_close(in->z);
        if (in->pending) json_decref(in->pending);
        if (in->has_jheader) msgpack_unpacked_destroy(&in->jheader);
        free(in->line.p);
        free((char *)in->path);
    }
    free(c->in);
    for (int i = 0; i < c->dt.n; i++) free(c->dt.name[i]);
    free(c->dt.name);
    free(c->dt.type);
    for (int i = 0; i < c->nwarned; i++) free(c->warned[i]);
    free(c->warned);
    free(c->held);
    for (int i = 0; i < c->o.nfields; i++) free(c->o.fields[i]);
    free(c->o.fields);
    msgpack_unpacked_destroy(&c->hdr);
    msgpack_sbuffer_destroy(&c->hbuf);
    msgpack_unpacked_destroy(&c->rec);
    msgpack_sbuffer_destroy(&c->rbuf);
    fields_free(c->sel);
    free(c->jl.p);
    free(c->scratch.p);
}

// ---------------------------------------------------------------------------------------

int main(int argc, char **argv) {
    safe_progname = "safe-cat";
    Cat c = {0};
    parse_args(&c.o, argc, argv);
    ranks_require_one("start it once, without a launcher (only safe-critic and safe-update run as several ranks)");
    output_check(c.o.out, "-o");
    char *dash[] = {"-"};
    char **paths = optind < argc ? argv + optind : dash;
    c.nin = optind < argc ? argc - optind : 1;
    int nstdin = 0;
    for (int i = 0; i < c.nin; i++) nstdin += strcmp(paths[i], "-") == 0;
    if (nstdin > 1) die(EXIT_USAGE, "stdin ('-') can be read only once");

    msgpack_sbuffer_init(&c.rbuf);
    msgpack_packer_init(&c.rpk, &c.rbuf, msgpack_sbuffer_write);
    msgpack_unpacked_init(&c.rec);

    c.in = xcalloc((size_t)c.nin, sizeof(Input));
    for (int i = 0; i < c.nin; i++) input_open(&c, &c.in[i], paths[i]);

    // output format: explicit, else by -o extension, else the other format than the first input
    if (!c.o.to && !c.o.header_only) {
        if (ends_with(c.o.out, ".safe") || ends_with(c.o.out, ".msgpack") || ends_with(c.o.out, ".msgpack.zst")) c.o.to = 's';
        else if (ends_with(c.o.out, ".jsonl") || ends_with(c.o.out, ".json") || ends_with(c.o.out, ".ndjson") ||
                 ends_with(c.o.out, ".jsonl.zst")) c.o.to = 'j';
        else c.o.to = c.in[0].r ? 'j' : 's';
    }
    if (c.o.header_only) c.o.to = 'j';
    if (c.o.to == 's' && c.o.with_header) die(EXIT_USAGE, "--with-header is for JSON output; a shard always has its header");

    // the base header: --header-from, else the first input that has one; all must agree
    ShardReader *hf = c.o.header_from ? shard_open(c.o.header_from) : NULL;
    const msgpack_object *base = hf ? shard_header(hf) : NULL;
    const char *base_path = hf ? c.o.header_from : NULL;
    for (int i = 0; i < c.nin; i++) {
        const msgpack_object *h = input_header(&c.in[i]);
        if (!h) continue;
        if (!base) { base = h; base_path = c.in[i].path; continue; }
        header_compat(&c, base, base_path, h, c.in[i].path);
    }
    check_slices(&c);
    build_header(&c, base);
    open_output(&c);

    if (!c.o.header_only) {
        int quiet = c.o.quiet || (strcmp(c.o.out, "-") == 0 && isatty(1));
        Progress *p = progress_start("reading", -1, "records", quiet);
        for (int i = 0; i < c.nin && !head_reached(&c); i++) {
            if (c.in[i].r) copy_shard(&c, &c.in[i], p);
            else copy_json(&c, &c.in[i], p);
        }
        progress_end(p);
    }
    output_commit(&c);

    shard_close(hf);
    cat_free(&c);
    return 0;
}
