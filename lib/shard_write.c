// shard_write.c — building fields (Fields) and writing record streams (ShardWriter):
// the header with its dtypes table, then records that pass the base record's fields
// through and add or drop fields. Bytes go through zio's atomic, optionally zstd, output.
#include "shard.h"
#include "common.h"   // die, xmalloc, safe_progname, SAFE_VERSION
#include "zio.h"      // ZOut: temp + rename, zstd streaming compression

#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------
// Fields: an ordered list of (key, packed msgpack value). Keys and values live in one
// byte buffer, so fields_clear() + re-adding per record allocates nothing after warm-up.

typedef struct {
    size_t key, klen;   // key bytes in buf (NUL-terminated)
    size_t val, vlen;   // packed value in buf
    char kind;          // 'v' any value, 'i' int32 bin, 'f' float32 bin, 'd' drop
    char dead;          // replaced by a later entry with the same key
} FieldEntry;

struct Fields {
    FieldEntry *e;
    int n, cap;
    char *buf;
    size_t len, bcap;
    msgpack_packer pk;   // packs into buf
    int open;            // entry whose value fields_packer() is packing, or -1
};

static void fbuf_write(Fields *f, const void *data, size_t n) {
    if (f->len + n > f->bcap) {
        while (f->len + n > f->bcap) f->bcap = f->bcap ? 2 * f->bcap : 4096;
        f->buf = xrealloc(f->buf, f->bcap);
    }
    memcpy(f->buf + f->len, data, n);
    f->len += n;
}

static int fbuf_pack_cb(void *data, const char *buf, size_t len) {
    fbuf_write(data, buf, len);
    return 0;
}

Fields *fields_new(void) {
    Fields *f = xcalloc(1, sizeof(Fields));
    msgpack_packer_init(&f->pk, f, fbuf_pack_cb);
    f->open = -1;
    return f;
}

void fields_clear(Fields *f) {
    f->n = 0;
    f->len = 0;
    f->open = -1;
}

void fields_free(Fields *f) {
    if (!f) return;
    free(f->e);
    free(f->buf);
    free(f);
}

// Close a value left open by fields_packer().
static void fields_close_open(Fields *f) {
    if (f->open < 0) return;
    FieldEntry *e = &f->e[f->open];
    e->vlen = f->len - e->val;
    f->open = -1;
}

static int fields_lookup(const Fields *f, const char *key, size_t klen) {
    for (int i = f->n - 1; i >= 0; i--) {   // newest first: later entries win
        const FieldEntry *e = &f->e[i];
        if (!e->dead && e->klen == klen && memcmp(f->buf + e->key, key, klen) == 0) return i;
    }
    return -1;
}

// Start an entry: the caller then packs exactly one value (unless kind is 'd').
static FieldEntry *fields_begin(Fields *f, const char *key, char kind) {
    fields_close_open(f);
    size_t klen = strlen(key);
    int old = fields_lookup(f, key, klen);
    if (old >= 0) f->e[old].dead = 1;
    if (f->n == f->cap) {
        f->cap = f->cap ? 2 * f->cap : 16;
        f->e = xrealloc(f->e, (size_t)f->cap * sizeof(FieldEntry));
    }
    FieldEntry *e = &f->e[f->n++];
    e->key = f->len;
    e->klen = klen;
    fbuf_write(f, key, klen + 1);
    e->val = f->len;
    e->vlen = 0;
    e->kind = kind;
    e->dead = 0;
    return e;
}

// After packing the value: record its length. (Recomputes the pointer: buf may have moved.)
static void fields_end(Fields *f) {
    FieldEntry *e = &f->e[f->n - 1];
    e->vlen = f->len - e->val;
}

void fields_str(Fields *f, const char *key, const char *val) { fields_strn(f, key, val, strlen(val)); }

void fields_strn(Fields *f, const char *key, const char *val, size_t len) {
    fields_begin(f, key, 'v');
    msgpack_pack_str_with_body(&f->pk, val, len);
    fields_end(f);
}

void fields_i64(Fields *f, const char *key, int64_t val) {
    fields_begin(f, key, 'v');
    msgpack_pack_int64(&f->pk, val);
    fields_end(f);
}

void fields_f64(Fields *f, const char *key, double val) {
    fields_begin(f, key, 'v');
    msgpack_pack_double(&f->pk, val);
    fields_end(f);
}

void fields_bool(Fields *f, const char *key, int val) {
    fields_begin(f, key, 'v');
    if (val) msgpack_pack_true(&f->pk);
    else msgpack_pack_false(&f->pk);
    fields_end(f);
}

void fields_nil(Fields *f, const char *key) {
    fields_begin(f, key, 'v');
    msgpack_pack_nil(&f->pk);
    fields_end(f);
}

// vals (n) stored as bin of little-endian 4-byte values (the host is little-endian).
void fields_i32s(Fields *f, const char *key, const int32_t *vals, size_t n) {
    fields_begin(f, key, 'i');
    msgpack_pack_bin_with_body(&f->pk, vals, n * 4);
    fields_end(f);
}

void fields_f32s(Fields *f, const char *key, const float *vals, size_t n) {
    fields_begin(f, key, 'f');
    msgpack_pack_bin_with_body(&f->pk, vals, n * 4);
    fields_end(f);
}

void fields_obj(Fields *f, const char *key, const msgpack_object *val) {
    fields_begin(f, key, 'v');
    msgpack_pack_object(&f->pk, *val);
    fields_end(f);
}

void fields_drop(Fields *f, const char *key) {
    fields_begin(f, key, 'd');
}

msgpack_packer *fields_packer(Fields *f, const char *key) {
    fields_begin(f, key, 'v');
    f->open = f->n - 1;
    return &f->pk;
}

int fields_count(const Fields *f) {
    int n = 0;
    for (int i = 0; i < f->n; i++) n += !f->e[i].dead;
    return n;
}

// ---------------------------------------------------------------------------------------
// the writer

typedef struct {
    char *name;
    const char *dtype;   // "i32" or "f32" (static strings)
} WriterDtype;

struct ShardWriter {
    ZOut *z;
    msgpack_packer pk;    // packs into z
    WriterDtype *dt;      // header dtypes: declared, then merged at header time
    int ndt, capdt;
    WriterDtype *decl;    // shard_declare() calls, applied last (they win)
    int ndecl, capdecl;
    int header_written;
    long records;
    ShardWriter *live_prev, *live_next;
};

static ShardWriter *live_writers;   // reachable for LeakSanitizer when die() exits (see shard.c)

ShardWriter *shard_create(const char *path, int level) {
    ShardWriter *w = xcalloc(1, sizeof(ShardWriter));
    w->live_next = live_writers;
    if (live_writers) live_writers->live_prev = w;
    live_writers = w;
    w->z = zout_open(path, level);
    msgpack_packer_init(&w->pk, w->z, zout_pack_cb);
    return w;
}

static const char *dtype_canonical(const char *s, size_t n) {
    if (n == 3 && memcmp(s, "i32", 3) == 0) return "i32";
    if (n == 3 && memcmp(s, "f32", 3) == 0) return "f32";
    return NULL;
}

static void dtype_set(WriterDtype **tab, int *n, int *cap, const char *name, size_t len, const char *dtype) {
    for (int i = 0; i < *n; i++) {
        if (strlen((*tab)[i].name) == len && memcmp((*tab)[i].name, name, len) == 0) {
            (*tab)[i].dtype = dtype;
            return;
        }
    }
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 32;
        *tab = xrealloc(*tab, (size_t)*cap * sizeof(WriterDtype));
    }
    char *nm = xmalloc(len + 1);
    memcpy(nm, name, len);
    nm[len] = 0;
    (*tab)[(*n)++] = (WriterDtype){nm, dtype};
}

void shard_declare(ShardWriter *w, const char *key, const char *dtype) {
    const char *dt = dtype ? dtype_canonical(dtype, strlen(dtype)) : NULL;
    if (!dt) die(EXIT_RUNTIME, "shard_declare(\"%s\", \"%s\"): the dtype must be \"i32\" or \"f32\"", key, dtype ? dtype : "(null)");
    if (w->header_written)
        die(EXIT_RUNTIME, "%s: shard_declare(\"%s\") after shard_write_header: declare dtypes before the header",
            zout_path(w->z), key);
    dtype_set(&w->decl, &w->ndecl, &w->capdecl, key, strlen(key), dt);
}

static const char *writer_dtype(const ShardWriter *w, const char *key, size_t len) {
    for (int i = 0; i < w->ndt; i++)
        if (strlen(w->dt[i].name) == len && memcmp(w->dt[i].name, key, len) == 0) return w->dt[i].dtype;
    return NULL;
}

// Merge a "dtypes" map (from the base header or from `add`) into the writer's table.
static void dtypes_merge_map(ShardWriter *w, const msgpack_object *m, const char *from) {
    if (m->type != MSGPACK_OBJECT_MAP)
        die(EXIT_BADINPUT, "%s: the \"dtypes\" of the %s is not a map", zout_path(w->z), from);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
        const char *dt = v->type == MSGPACK_OBJECT_STR ? dtype_canonical(v->via.str.ptr, v->via.str.size) : NULL;
        if (k->type != MSGPACK_OBJECT_STR || !dt)
            die(EXIT_BADINPUT, "%s: the \"dtypes\" of the %s has an entry that is not name -> \"i32\"|\"f32\"",
                zout_path(w->z), from);
        dtype_set(&w->dt, &w->ndt, &w->capdt, k->via.str.ptr, k->via.str.size, dt);
    }
}

static const msgpack_object *map_get(const msgpack_object *m, const char *key) {
    if (!m || m->type != MSGPACK_OBJECT_MAP) return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, key, n) == 0)
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

// A live entry of `add` for key (drops included), or NULL.
static const FieldEntry *add_get(const Fields *add, const char *key, size_t klen) {
    if (!add) return NULL;
    int i = fields_lookup(add, key, klen);
    return i >= 0 ? &add->e[i] : NULL;
}

static void pack_key(ShardWriter *w, const char *key, size_t len) {
    msgpack_pack_str_with_body(&w->pk, key, len);
}

// Header keys the writer places itself (in this order, at the top), and "dtypes" (at the end).
static const char *const HEADER_OWN[] = {"format", "version", "kind", "tool", "tool_version", "dtypes"};
enum { N_OWN = sizeof HEADER_OWN / sizeof HEADER_OWN[0] };

static int header_own(const char *key, size_t len) {
    for (int i = 0; i < N_OWN; i++)
        if (strlen(HEADER_OWN[i]) == len && memcmp(HEADER_OWN[i], key, len) == 0) return 1;
    return 0;
}

// "kind", "tool", "tool_version": from add, else (kind only) base, else the default.
static void header_pack_own(ShardWriter *w, const msgpack_object *base, const Fields *add,
                            const char *key, int from_base, const char *dflt) {
    const FieldEntry *e = add_get(add, key, strlen(key));
    const msgpack_object *b = from_base ? map_get(base, key) : NULL;
    pack_key(w, key, strlen(key));
    if (e && e->kind != 'd') zout_write(w->z, add->buf + e->val, e->vlen);
    else if (b && !e) msgpack_pack_object(&w->pk, *b);
    else msgpack_pack_str_with_body(&w->pk, dflt, strlen(dflt));
}

static void header_merge_dtypes(ShardWriter *w, const msgpack_object *base, const Fields *add) {
    for (size_t i = 0; i < shard_schema_len; i++)
        dtype_set(&w->dt, &w->ndt, &w->capdt, shard_schema[i].name, strlen(shard_schema[i].name), shard_schema[i].dtype);
    const msgpack_object *bd = map_get(base, "dtypes");
    if (bd) dtypes_merge_map(w, bd, "base header");
    const FieldEntry *e = add_get(add, "dtypes", 6);
    if (e && e->kind != 'd') {
        msgpack_zone zone;
        msgpack_zone_init(&zone, 1024);
        msgpack_object o;
        size_t off = 0;
        if (msgpack_unpack(add->buf + e->val, e->vlen, &off, &zone, &o) < 0)
            die(EXIT_RUNTIME, "%s: the \"dtypes\" field given to shard_write_header is not valid msgpack", zout_path(w->z));
        dtypes_merge_map(w, &o, "fields added to the header");
        msgpack_zone_destroy(&zone);
    }
    for (int i = 0; i < w->ndecl; i++)
        dtype_set(&w->dt, &w->ndt, &w->capdt, w->decl[i].name, strlen(w->decl[i].name), w->decl[i].dtype);
}

void shard_write_header(ShardWriter *w, const msgpack_object *base, const Fields *add) {
    if (w->header_written) die(EXIT_RUNTIME, "%s: shard_write_header called twice", zout_path(w->z));
    if (base && base->type != MSGPACK_OBJECT_MAP) die(EXIT_RUNTIME, "%s: the base header is not a map", zout_path(w->z));
    if (add) fields_close_open((Fields *)add);
    header_merge_dtypes(w, base, add);

    // count: own keys + base keys not owned/overridden + add keys not owned/dropped
    size_t n = N_OWN;
    if (base)
        for (uint32_t i = 0; i < base->via.map.size; i++) {
            const msgpack_object *k = &base->via.map.ptr[i].key;
            if (k->type == MSGPACK_OBJECT_STR && (header_own(k->via.str.ptr, k->via.str.size) ||
                                                  add_get(add, k->via.str.ptr, k->via.str.size)))
                continue;
            n++;
        }
    for (int i = 0; add && i < add->n; i++) {
        const FieldEntry *e = &add->e[i];
        if (!e->dead && e->kind != 'd' && !header_own(add->buf + e->key, e->klen)) n++;
    }

    msgpack_pack_map(&w->pk, n);
    pack_key(w, "format", 6);
    msgpack_pack_str_with_body(&w->pk, SHARD_FORMAT, strlen(SHARD_FORMAT));
    pack_key(w, "version", 7);
    msgpack_pack_int(&w->pk, SHARD_VERSION);
    header_pack_own(w, base, add, "kind", 1, "records");
    header_pack_own(w, base, add, "tool", 0, safe_progname);          // the producing tool,
    header_pack_own(w, base, add, "tool_version", 0, SAFE_VERSION);  // unless add says otherwise
    if (base)
        for (uint32_t i = 0; i < base->via.map.size; i++) {
            const msgpack_object *k = &base->via.map.ptr[i].key;
            if (k->type == MSGPACK_OBJECT_STR && (header_own(k->via.str.ptr, k->via.str.size) ||
                                                  add_get(add, k->via.str.ptr, k->via.str.size)))
                continue;
            msgpack_pack_object(&w->pk, *k);
            msgpack_pack_object(&w->pk, base->via.map.ptr[i].val);
        }
    for (int i = 0; add && i < add->n; i++) {
        const FieldEntry *e = &add->e[i];
        if (e->dead || e->kind == 'd' || header_own(add->buf + e->key, e->klen)) continue;
        pack_key(w, add->buf + e->key, e->klen);
        zout_write(w->z, add->buf + e->val, e->vlen);
    }
    pack_key(w, "dtypes", 6);
    msgpack_pack_map(&w->pk, (size_t)w->ndt);
    for (int i = 0; i < w->ndt; i++) {
        pack_key(w, w->dt[i].name, strlen(w->dt[i].name));
        msgpack_pack_str_with_body(&w->pk, w->dt[i].dtype, 3);
    }
    w->header_written = 1;
}

// An added bin must have the dtype the header promised (a programming error otherwise).
static void check_added_bin(ShardWriter *w, const Fields *add, const FieldEntry *e) {
    const char *key = add->buf + e->key;
    const char *want = e->kind == 'i' ? "i32" : "f32";
    const char *have = writer_dtype(w, key, e->klen);
    if (!have)
        die(EXIT_RUNTIME, "%s: field \"%s\" is a %s bin but the header has no dtype for it: call "
            "shard_declare(w, \"%s\", \"%s\") before shard_write_header", zout_path(w->z), key, want, key, want);
    if (strcmp(have, want) != 0)
        die(EXIT_RUNTIME, "%s: field \"%s\" is written as %s but the header declares %s", zout_path(w->z), key, want, have);
}

void shard_write(ShardWriter *w, const Record *base, const Fields *add) {
    if (!w->header_written)
        die(EXIT_RUNTIME, "%s: shard_write before shard_write_header (write the header first)", zout_path(w->z));
    if (add) fields_close_open((Fields *)add);
    const msgpack_object *m = base ? base->map : NULL;
    size_t n = 0;
    if (m)
        for (uint32_t i = 0; i < m->via.map.size; i++) {
            const msgpack_object *k = &m->via.map.ptr[i].key;
            n += !(k->type == MSGPACK_OBJECT_STR && add_get(add, k->via.str.ptr, k->via.str.size));
        }
    for (int i = 0; add && i < add->n; i++) {
        const FieldEntry *e = &add->e[i];
        if (e->dead || e->kind == 'd') continue;
        if (e->kind != 'v') check_added_bin(w, add, e);
        n++;
    }

    msgpack_pack_map(&w->pk, n);
    if (m)
        for (uint32_t i = 0; i < m->via.map.size; i++) {   // pass-through, in the base's order
            const msgpack_object *k = &m->via.map.ptr[i].key;
            if (k->type == MSGPACK_OBJECT_STR && add_get(add, k->via.str.ptr, k->via.str.size)) continue;
            msgpack_pack_object(&w->pk, *k);
            msgpack_pack_object(&w->pk, m->via.map.ptr[i].val);
        }
    for (int i = 0; add && i < add->n; i++) {   // then the added fields, in the order added
        const FieldEntry *e = &add->e[i];
        if (e->dead || e->kind == 'd') continue;
        pack_key(w, add->buf + e->key, e->klen);
        zout_write(w->z, add->buf + e->val, e->vlen);
    }
    w->records++;
}

void shard_flush(ShardWriter *w) { zout_flush(w->z); }
long shard_records_written(ShardWriter *w) { return w->records; }
const char *shard_writer_path(ShardWriter *w) { return zout_path(w->z); }

static void writer_free(ShardWriter *w) {
    if (w->live_prev) w->live_prev->live_next = w->live_next;
    else live_writers = w->live_next;
    if (w->live_next) w->live_next->live_prev = w->live_prev;
    for (int i = 0; i < w->ndt; i++) free(w->dt[i].name);
    for (int i = 0; i < w->ndecl; i++) free(w->decl[i].name);
    free(w->dt);
    free(w->decl);
    free(w);
}

void shard_commit(ShardWriter *w) {
    if (!w->header_written) die(EXIT_RUNTIME, "%s: shard_commit without a header", zout_path(w->z));
    zout_commit(w->z);
    writer_free(w);
}

void shard_abort(ShardWriter *w) {
    if (!w) return;
    zout_abort(w->z);
    writer_free(w);
}
