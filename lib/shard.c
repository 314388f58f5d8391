// shard.c — reading record streams: header validation, streaming msgpack decoding fed from
// the zstd layer, and typed field access that dies (exit 2) naming file, record and field.
// Writing lives in shard_write.c.
//
// Data path: zin_read() decompresses straight into the msgpack_unpacker's buffer; str and
// bin objects point into that buffer (no copy), so a record costs one decompression pass,
// one parse pass and whatever copies the caller asks for (rec_f32s etc.).
#include "shard.h"
#include "common.h"   // die, xmalloc, EXIT_* codes
#include "zio.h"      // ZIn: zstd-or-raw input with magic detection

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shards store little-endian int32/float32 bins; this build assumes a little-endian host"
#endif

#define READ_BUF_INIT (1024 * 1024)   // initial msgpack buffer; grows to the largest record
#define READ_CHUNK (256 * 1024)       // decompressed bytes asked for per refill

typedef struct {
    const char *name;   // points into the header (not NUL-terminated)
    size_t len;
    const char *dtype;  // "i32" or "f32" (static strings)
} ReaderDtype;

struct ShardReader {
    ZIn *z;
    char *path;
    msgpack_unpacker up;
    msgpack_unpacked header;   // lives as long as the reader
    msgpack_unpacked cur;      // the record last returned by shard_next
    Record hrec;
    long next_index;           // index of the record being read; -1 while reading the header
    ReaderDtype *dtypes;
    int ndtypes;
    ShardReader *live_prev, *live_next;
};

// Open readers are kept on a list: die() may exit from anywhere, and LeakSanitizer (test-asan)
// must then see them as reachable, or it reports them and changes the exit status.
static ShardReader *live_readers;

// ---------------------------------------------------------------------------------------
// messages

static const char *obj_type_name(const msgpack_object *o) {
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "a boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "an integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return "a float";
    case MSGPACK_OBJECT_STR: return "a string";
    case MSGPACK_OBJECT_ARRAY: return "an array";
    case MSGPACK_OBJECT_MAP: return "a map";
    case MSGPACK_OBJECT_BIN: return "a bin";
    case MSGPACK_OBJECT_EXT: return "an ext";
    }
    return "an unknown type";
}

static void where(char *buf, size_t n, long index) {
    if (index < 0) snprintf(buf, n, "header");
    else snprintf(buf, n, "record %ld", index);
}

void rec_die(const Record *r, const char *key, int code, const char *fmt, ...) {
    char loc[48], msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    where(loc, sizeof loc, r->index);
    if (key) die(code, "%s: %s: field \"%s\": %s", r->file, loc, key, msg);
    die(code, "%s: %s: %s", r->file, loc, msg);
}

static void reader_die(ShardReader *r, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void reader_die(ShardReader *r, const char *fmt, ...) {
    char loc[48], msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    where(loc, sizeof loc, r->next_index);
    die(EXIT_BADINPUT, "%s: %s: %s", r->path, loc, msg);
}

// "after record 4" / "after the header" / "inside the header"
static const char *progress_phrase(ShardReader *r, char *buf, size_t n) {
    if (r->next_index < 0) snprintf(buf, n, "inside the header");
    else if (r->next_index == 0) snprintf(buf, n, "after the header (no complete record)");
    else snprintf(buf, n, "after record %ld", r->next_index - 1);
    return buf;
}

// What to do about a damaged stream.
static const char *hint(ShardReader *r) {
    static char buf[600];
    if (strcmp(r->path, "stdin") == 0) return "did the command writing to the pipe fail or get killed?";
    snprintf(buf, sizeof buf, "was its writer killed, or the copy partial? regenerate %.500s", r->path);
    return buf;
}

// ---------------------------------------------------------------------------------------
// the stream of msgpack objects

// Decompress more bytes into the unpacker's buffer. Returns the count, 0 at the end.
static long reader_fill(ShardReader *r) {
    if (!msgpack_unpacker_reserve_buffer(&r->up, READ_CHUNK))
        die(EXIT_RUNTIME, "%s: out of memory growing the read buffer", r->path);
    long n = zin_read(r->z, msgpack_unpacker_buffer(&r->up), msgpack_unpacker_buffer_capacity(&r->up));
    if (n < 0) {
        char ph[64];
        const char *e = zin_error(r->z);
        if (strncmp(e, "truncated", 9) == 0)
            reader_die(r, "truncated %s: the zstd frame is incomplete (%s)", progress_phrase(r, ph, sizeof ph), hint(r));
        reader_die(r, "%s %s (the data is damaged: %s)", e, progress_phrase(r, ph, sizeof ph), hint(r));
    }
    if (n > 0) msgpack_unpacker_buffer_consumed(&r->up, (size_t)n);
    return n;
}

// The next complete msgpack object into *res, or NULL at a clean end of the stream.
static const msgpack_object *reader_next_object(ShardReader *r, msgpack_unpacked *res) {
    msgpack_unpacked_destroy(res);   // frees the previous record, so its buffer can be reused
    for (;;) {
        int ret = msgpack_unpacker_next(&r->up, res);
        if (ret == MSGPACK_UNPACK_SUCCESS || ret == MSGPACK_UNPACK_EXTRA_BYTES) return &res->data;
        if (ret == MSGPACK_UNPACK_PARSE_ERROR)
            reader_die(r, "corrupt msgpack (bytes that are not msgpack; the file is damaged: regenerate it)");
        if (ret == MSGPACK_UNPACK_NOMEM_ERROR)
            reader_die(r, "corrupt msgpack (an array or map claims more elements than fit in memory)");
        if (reader_fill(r) == 0) break;
    }
    if (msgpack_unpacker_message_size(&r->up) > 0) {
        char ph[64];
        reader_die(r, "truncated %s: the input ends inside %s (%s)", progress_phrase(r, ph, sizeof ph),
                   r->next_index < 0 ? "the header" : "this record", hint(r));
    }
    return NULL;
}

// ---------------------------------------------------------------------------------------
// header

static int str_eq(const msgpack_object *o, const char *s) {
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n && memcmp(o->via.str.ptr, s, n) == 0;
}

static void header_check_types(ShardReader *r, const Record *h) {
    static const char *str_keys[] = {"kind", "tool", "tool_version", "model", "tokenizer"};
    for (size_t i = 0; i < sizeof str_keys / sizeof str_keys[0]; i++) {
        const msgpack_object *o = rec_find(h, str_keys[i]);
        if (o && o->type != MSGPACK_OBJECT_STR)
            rec_die(h, str_keys[i], EXIT_BADINPUT, "expected a string, found %s", obj_type_name(o));
    }
    const msgpack_object *it = rec_find(h, "iteration");
    if (it && it->type != MSGPACK_OBJECT_POSITIVE_INTEGER && it->type != MSGPACK_OBJECT_NEGATIVE_INTEGER &&
        it->type != MSGPACK_OBJECT_NIL)
        rec_die(h, "iteration", EXIT_BADINPUT, "expected an integer, found %s", obj_type_name(it));
    (void)r;
}

static void header_load_dtypes(ShardReader *r, const Record *h) {
    const msgpack_object *d = rec_find(h, "dtypes");
    if (!d) return;
    if (d->type != MSGPACK_OBJECT_MAP)
        rec_die(h, "dtypes", EXIT_BADINPUT, "expected a map of field name -> \"i32\"|\"f32\", found %s", obj_type_name(d));
    r->dtypes = xcalloc(d->via.map.size + 1, sizeof(ReaderDtype));
    for (uint32_t i = 0; i < d->via.map.size; i++) {
        const msgpack_object *k = &d->via.map.ptr[i].key, *v = &d->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR)
            rec_die(h, "dtypes", EXIT_BADINPUT, "entry %u: the key is %s, expected a field name", i, obj_type_name(k));
        const char *dt = str_eq(v, "i32") ? "i32" : str_eq(v, "f32") ? "f32" : NULL;
        if (!dt)
            rec_die(h, "dtypes", EXIT_BADINPUT, "field \"%.*s\": unsupported dtype (shard version %d knows \"i32\" and \"f32\")",
                    (int)k->via.str.size, k->via.str.ptr, SHARD_VERSION);
        r->dtypes[r->ndtypes++] = (ReaderDtype){k->via.str.ptr, k->via.str.size, dt};
    }
}

static void header_validate(ShardReader *r) {
    const msgpack_object *h = &r->header.data;
    if (h->type != MSGPACK_OBJECT_MAP)
        reader_die(r, "not a safe shard: the stream starts with %s, not a header map "
                   "(JSON lines? convert with safe-cat --to-shard)", obj_type_name(h));
    r->hrec = (Record){h, r->path, -1};
    const msgpack_object *f = rec_find(&r->hrec, "format");
    if (!f || !str_eq(f, SHARD_FORMAT)) {
        if (f && f->type == MSGPACK_OBJECT_STR)
            reader_die(r, "not a safe shard: field \"format\" is \"%.*s\", expected \"%s\"",
                       (int)f->via.str.size, f->via.str.ptr, SHARD_FORMAT);
        reader_die(r, "not a safe shard: the first map has no \"format\": \"%s\" field", SHARD_FORMAT);
    }
    const msgpack_object *v = rec_find(&r->hrec, "version");
    if (!v) reader_die(r, "field \"version\": missing (a safe shard header always has one)");
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        reader_die(r, "field \"version\": expected a positive integer, found %s", obj_type_name(v));
    if (v->via.u64 != SHARD_VERSION)
        reader_die(r, "field \"version\": unsupported shard version %llu: this build reads version %d only "
                   "(upgrade safe, or regenerate the file with this version's tools)",
                   (unsigned long long)v->via.u64, SHARD_VERSION);
    header_check_types(r, &r->hrec);
    header_load_dtypes(r, &r->hrec);
}

// ---------------------------------------------------------------------------------------
// reading API

ShardReader *shard_open_zin(struct ZIn *z) {
    ShardReader *r = xcalloc(1, sizeof(ShardReader));
    r->live_next = live_readers;
    if (live_readers) live_readers->live_prev = r;
    live_readers = r;
    r->z = z;
    r->path = xstrdup(zin_path(z));
    r->next_index = -1;
    if (!msgpack_unpacker_init(&r->up, READ_BUF_INIT)) die(EXIT_RUNTIME, "out of memory opening %s", r->path);
    if (!reader_next_object(r, &r->header))
        die(EXIT_BADINPUT, "%s: empty input: not a safe shard (expected a header map; did the writer fail "
            "before writing anything?)", r->path);
    header_validate(r);
    r->next_index = 0;
    return r;
}

ShardReader *shard_open(const char *path) { return shard_open_zin(zin_open(path)); }

const Record *shard_header_record(ShardReader *r) { return &r->hrec; }

void shard_expect_kind(const Record *header, const char *kinds, const char *hint) {
    size_t n = 0;
    const char *k = rec_has(header, "kind") ? rec_str(header, "kind", &n) : "";
    for (const char *p = kinds; *p;) {
        size_t len = strcspn(p, "|");
        if (len == n && memcmp(p, k, n) == 0) return;
        p += len + (p[len] == '|');
    }
    die(EXIT_BADINPUT, "%s: header: field 'kind' is \"%.*s\", expected %s\n  hint: %s", header->file, (int)n, k,
        kinds, hint);
}
const msgpack_object *shard_header(ShardReader *r) { return &r->header.data; }
const char *shard_path(ShardReader *r) { return r->path; }
long shard_records_read(ShardReader *r) { return r->next_index; }

int shard_next(ShardReader *r, Record *rec) {
    const msgpack_object *o = reader_next_object(r, &r->cur);
    if (!o) return 0;
    if (o->type != MSGPACK_OBJECT_MAP)
        reader_die(r, "not a map (found %s): every record is a msgpack map", obj_type_name(o));
    const msgpack_object_kv *kv = o->via.map.ptr;
    for (uint32_t i = 0; i < o->via.map.size; i++)
        if (kv[i].key.type != MSGPACK_OBJECT_STR)
            reader_die(r, "key %u is %s: record keys must be strings", i, obj_type_name(&kv[i].key));
    if (o->via.map.size > 0 && str_eq(&kv[0].key, "format") && str_eq(&kv[0].val, SHARD_FORMAT))
        reader_die(r, "a second shard header: files joined with cat(1) are not one shard "
                   "(join shards with: safe-cat --to-shard a.safe b.safe > all.safe)");
    rec->map = o;
    rec->file = r->path;
    rec->index = r->next_index++;
    return 1;
}

void shard_close(ShardReader *r) {
    if (!r) return;
    if (r->live_prev) r->live_prev->live_next = r->live_next;
    else live_readers = r->live_next;
    if (r->live_next) r->live_next->live_prev = r->live_prev;
    msgpack_unpacked_destroy(&r->cur);
    msgpack_unpacked_destroy(&r->header);
    msgpack_unpacker_destroy(&r->up);
    zin_close(r->z);
    free(r->dtypes);
    free(r->path);
    free(r);
}

const char *shard_dtype(ShardReader *r, const char *key) {
    size_t n = strlen(key);
    for (int i = 0; i < r->ndtypes; i++)
        if (r->dtypes[i].len == n && memcmp(r->dtypes[i].name, key, n) == 0) return r->dtypes[i].dtype;
    return shard_schema_dtype(key);
}

// ---------------------------------------------------------------------------------------
// field access

const msgpack_object *rec_find(const Record *r, const char *key) {
    size_t n = strlen(key);
    const msgpack_object_kv *kv = r->map->via.map.ptr;
    for (uint32_t i = 0; i < r->map->via.map.size; i++) {
        const msgpack_object *k = &kv[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, key, n) == 0)
            return &kv[i].val;
    }
    return NULL;
}

int rec_has(const Record *r, const char *key) { return rec_find(r, key) != NULL; }

// The field, or die naming the fields the record does have (the usual cause is a stage skipped).
static const msgpack_object *rec_need(const Record *r, const char *key) {
    const msgpack_object *o = rec_find(r, key);
    if (o) return o;
    char have[512];
    size_t len = 0;
    have[0] = 0;
    const msgpack_object_kv *kv = r->map->via.map.ptr;
    for (uint32_t i = 0; i < r->map->via.map.size && len + 80 < sizeof have; i++) {
        if (kv[i].key.type != MSGPACK_OBJECT_STR) continue;
        int k = (int)(kv[i].key.via.str.size < 60 ? kv[i].key.via.str.size : 60);
        len += (size_t)snprintf(have + len, sizeof have - len, "%s%.*s", len ? ", " : "", k, kv[i].key.via.str.ptr);
    }
    rec_die(r, key, EXIT_BADINPUT, "missing (the %s has: %s; was a stage skipped?)",
            r->index < 0 ? "header" : "record", len ? have : "no fields");
}

const char *rec_str(const Record *r, const char *key, size_t *len) {
    const msgpack_object *o = rec_need(r, key);
    if (o->type != MSGPACK_OBJECT_STR) rec_die(r, key, EXIT_BADINPUT, "expected a string, found %s", obj_type_name(o));
    if (len) *len = o->via.str.size;
    return o->via.str.ptr;
}

char *rec_strdup(const Record *r, const char *key) {
    size_t n;
    const char *s = rec_str(r, key, &n);
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

double rec_f64(const Record *r, const char *key) {
    const msgpack_object *o = rec_need(r, key);
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return (double)o->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return (double)o->via.i64;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return o->via.f64;
    default: rec_die(r, key, EXIT_BADINPUT, "expected a number, found %s", obj_type_name(o));
    }
}

int64_t rec_i64(const Record *r, const char *key) {
    const msgpack_object *o = rec_need(r, key);
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) return o->via.i64;
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        rec_die(r, key, EXIT_BADINPUT, "expected an integer, found %s", obj_type_name(o));
    if (o->via.u64 > (uint64_t)INT64_MAX)
        rec_die(r, key, EXIT_BADINPUT, "integer %llu does not fit in int64", (unsigned long long)o->via.u64);
    return (int64_t)o->via.u64;
}

int rec_bool(const Record *r, const char *key) {
    const msgpack_object *o = rec_need(r, key);
    if (o->type != MSGPACK_OBJECT_BOOLEAN) rec_die(r, key, EXIT_BADINPUT, "expected a boolean, found %s", obj_type_name(o));
    return o->via.boolean;
}

// Typed arrays: a bin of little-endian 4-byte values (what the tools write), or, for
// shards from other writers, a msgpack array of numbers.

static size_t typed_count(const Record *r, const char *key, const msgpack_object *o, const char *dtype) {
    if (o->type == MSGPACK_OBJECT_BIN) {
        if (o->via.bin.size % 4 != 0)
            rec_die(r, key, EXIT_BADINPUT, "bin of %u bytes is not a whole number of %s values (a multiple of 4 bytes)",
                    o->via.bin.size, dtype);
        return o->via.bin.size / 4;
    }
    if (o->type == MSGPACK_OBJECT_ARRAY) return o->via.array.size;
    rec_die(r, key, EXIT_BADINPUT, "expected a bin of %s (or an array of numbers), found %s", dtype, obj_type_name(o));
}

static void check_len(const Record *r, const char *key, size_t n, long want) {
    if (want >= 0 && n != (size_t)want) rec_die(r, key, EXIT_BADINPUT, "has %zu values, expected %ld", n, want);
}

static void array_to_i32(const Record *r, const char *key, const msgpack_object *o, int32_t *dst) {
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        int ok = (e->type == MSGPACK_OBJECT_POSITIVE_INTEGER && e->via.u64 <= INT32_MAX) ||
                 (e->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && e->via.i64 >= INT32_MIN);
        if (!ok) rec_die(r, key, EXIT_BADINPUT, "element %u is %s, expected an int32", i, obj_type_name(e));
        dst[i] = e->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int32_t)e->via.u64 : (int32_t)e->via.i64;
    }
}

static void array_to_f32(const Record *r, const char *key, const msgpack_object *o, float *dst) {
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        switch (e->type) {
        case MSGPACK_OBJECT_POSITIVE_INTEGER: dst[i] = (float)e->via.u64; break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER: dst[i] = (float)e->via.i64; break;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64: dst[i] = (float)e->via.f64; break;
        default: rec_die(r, key, EXIT_BADINPUT, "element %u is %s, expected a number", i, obj_type_name(e));
        }
    }
}

// Copy into dst (room for n values); the bin data may be unaligned, hence memcpy.
static void typed_copy(const Record *r, const char *key, const msgpack_object *o, void *dst, size_t n, int is_f32) {
    if (o->type == MSGPACK_OBJECT_BIN) memcpy(dst, o->via.bin.ptr, n * 4);
    else if (is_f32) array_to_f32(r, key, o, dst);
    else array_to_i32(r, key, o, dst);
}

static void *typed_dup(const Record *r, const char *key, size_t *n, long want, int is_f32) {
    const msgpack_object *o = rec_need(r, key);
    size_t k = typed_count(r, key, o, is_f32 ? "float32" : "int32");
    check_len(r, key, k, want);
    void *p = xmalloc(k * 4);
    typed_copy(r, key, o, p, k, is_f32);
    if (n) *n = k;
    return p;
}

static size_t typed_into(const Record *r, const char *key, void *dst, size_t cap, int is_f32) {
    const msgpack_object *o = rec_need(r, key);
    size_t k = typed_count(r, key, o, is_f32 ? "float32" : "int32");
    if (k > cap) rec_die(r, key, EXIT_BADINPUT, "has %zu values, more than the %zu this tool expects at most", k, cap);
    typed_copy(r, key, o, dst, k, is_f32);
    return k;
}

int32_t *rec_i32s(const Record *r, const char *key, size_t *n, long want) { return typed_dup(r, key, n, want, 0); }
float *rec_f32s(const Record *r, const char *key, size_t *n, long want) { return typed_dup(r, key, n, want, 1); }
size_t rec_i32s_into(const Record *r, const char *key, int32_t *dst, size_t cap) { return typed_into(r, key, dst, cap, 0); }
size_t rec_f32s_into(const Record *r, const char *key, float *dst, size_t cap) { return typed_into(r, key, dst, cap, 1); }
