// gguf.c — GGUF v2/v3 reader (mapped, validated up front), metadata getters, dequantisation
// of F32/F16/BF16/Q8_0/Q4_0/Q4_1, the llama.cpp tensor naming -> Model, and a metadata-only
// writer.
#include "gguf.h"

#include "common.h"    // die, warn, xmalloc, exit codes
#include "llama2c.h"   // llama2c_rope_perm: the same interleaved -> rotate_half row permutation

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// ----------------------------------------------------------------------------
// element types: block sizes for bounds checks (all ggml types), names for messages

typedef struct {
    const char *name;
    int block;      // elements per block (0: unknown type)
    int bytes;      // bytes per block
} TypeInfo;

static TypeInfo type_info(uint32_t t) {
    switch (t) {
    case 0: return (TypeInfo){"F32", 1, 4};
    case 1: return (TypeInfo){"F16", 1, 2};
    case 2: return (TypeInfo){"Q4_0", 32, 18};
    case 3: return (TypeInfo){"Q4_1", 32, 20};
    case 6: return (TypeInfo){"Q5_0", 32, 22};
    case 7: return (TypeInfo){"Q5_1", 32, 24};
    case 8: return (TypeInfo){"Q8_0", 32, 34};
    case 9: return (TypeInfo){"Q8_1", 32, 36};
    case 10: return (TypeInfo){"Q2_K", 256, 84};
    case 11: return (TypeInfo){"Q3_K", 256, 110};
    case 12: return (TypeInfo){"Q4_K", 256, 144};
    case 13: return (TypeInfo){"Q5_K", 256, 176};
    case 14: return (TypeInfo){"Q6_K", 256, 210};
    case 15: return (TypeInfo){"Q8_K", 256, 292};
    case 24: return (TypeInfo){"I8", 1, 1};
    case 25: return (TypeInfo){"I16", 1, 2};
    case 26: return (TypeInfo){"I32", 1, 4};
    case 27: return (TypeInfo){"I64", 1, 8};
    case 28: return (TypeInfo){"F64", 1, 8};
    case 30: return (TypeInfo){"BF16", 1, 2};
    default: return (TypeInfo){"?", 0, 0};
    }
}

const char *ggml_type_name(uint32_t type) { return type_info(type).name; }

int ggml_type_supported(uint32_t t) {
    return t == GGML_F32 || t == GGML_F16 || t == GGML_BF16 || t == GGML_Q8_0 || t == GGML_Q4_0 || t == GGML_Q4_1;
}

// Bytes of one metadata scalar (0 for string/array, which are variable).
static size_t scalar_size(uint32_t t) {
    switch (t) {
    case GGUF_T_U8: case GGUF_T_I8: case GGUF_T_BOOL: return 1;
    case GGUF_T_U16: case GGUF_T_I16: return 2;
    case GGUF_T_U32: case GGUF_T_I32: case GGUF_T_F32: return 4;
    case GGUF_T_U64: case GGUF_T_I64: case GGUF_T_F64: return 8;
    default: return 0;
    }
}

static const char *value_type_name(uint32_t t) {
    static const char *names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string",
                                  "array", "u64", "i64", "f64"};
    return t <= GGUF_T_F64 ? names[t] : "unknown";
}

// ----------------------------------------------------------------------------
// little-endian reads from the map (x86 and ARM are little-endian; memcpy keeps it aligned-safe)

static uint32_t rd_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

// A bounds-checked cursor over the file; every failure names the file and what was being read.
typedef struct {
    const char *path;
    const unsigned char *map;
    size_t size, pos;
} Cursor;

static void need(Cursor *c, size_t n, const char *what) {
    if (n > c->size - c->pos)
        die(EXIT_BADINPUT, "%s: truncated at byte %zu while reading %s (needs %zu more bytes, file is %zu)\n"
            "  hint: the download was cut short; fetch the file again and check its sha256",
            c->path, c->pos, what, n, c->size);
}

static uint32_t cur_u32(Cursor *c, const char *what) { need(c, 4, what); uint32_t v = rd_u32(c->map + c->pos); c->pos += 4; return v; }
static uint64_t cur_u64(Cursor *c, const char *what) { need(c, 8, what); uint64_t v = rd_u64(c->map + c->pos); c->pos += 8; return v; }

static GgufStr cur_str(Cursor *c, const char *what) {
    uint64_t n = cur_u64(c, what);
    if (n > c->size - c->pos) need(c, (size_t)-1, what);   // reports the truncation
    GgufStr s = {(const char *)c->map + c->pos, (size_t)n};
    c->pos += (size_t)n;
    return s;
}

// Skip (and check) one value of type t; for arrays of strings fill *strs (malloc'd table).
static void cur_skip_value(Cursor *c, uint32_t t, const char *key, int depth, GgufStr **strs) {
    if (t == GGUF_T_STRING) { cur_str(c, key); return; }
    if (t == GGUF_T_ARRAY) {
        if (depth > 4) die(EXIT_BADINPUT, "%s: metadata \"%s\": arrays nested too deeply", c->path, key);
        uint32_t et = cur_u32(c, key);
        uint64_t n = cur_u64(c, key);
        size_t es = scalar_size(et);
        if (es) {
            if (n > (c->size - c->pos) / es) need(c, (size_t)-1, key);
            c->pos += (size_t)n * es;
        } else if (et == GGUF_T_STRING) {
            if (n > (c->size - c->pos) / 8) need(c, (size_t)-1, key);   // each string has >= 8 bytes
            GgufStr *tab = strs ? xmalloc(((size_t)n + 1) * sizeof(GgufStr)) : NULL;
            for (uint64_t i = 0; i < n; i++) {
                GgufStr s = cur_str(c, key);
                if (tab) tab[i] = s;
            }
            if (strs) *strs = tab;
        } else if (et == GGUF_T_ARRAY) {
            if (n > (c->size - c->pos) / 12) need(c, (size_t)-1, key);
            for (uint64_t i = 0; i < n; i++) cur_skip_value(c, et, key, depth + 1, NULL);
        } else {
            die(EXIT_BADINPUT, "%s: metadata \"%s\": unknown array element type %u", c->path, key, et);
        }
        return;
    }
    size_t s = scalar_size(t);
    if (!s) die(EXIT_BADINPUT, "%s: metadata \"%s\": unknown value type %u", c->path, key, t);
    need(c, s, key);
    c->pos += s;
}

// ----------------------------------------------------------------------------
// open / close

int gguf_is_gguf_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char m[4] = {0};
    size_t got = fread(m, 1, 4, f);
    fclose(f);
    return got == 4 && !memcmp(m, "GGUF", 4);
}

static int str_eq(GgufStr s, const char *z) {
    size_t n = strlen(z);
    return s.len == n && !memcmp(s.s, z, n);
}

Gguf *gguf_open(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die(EXIT_BADINPUT, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) die(EXIT_BADINPUT, "cannot stat %s: %s", path, strerror(errno));
    size_t size = (size_t)sb.st_size;
    if (size < 24) die(EXIT_BADINPUT, "%s: %zu bytes is too short for a GGUF file", path, size);
    unsigned char *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) die(EXIT_BADINPUT, "cannot map %s: %s", path, strerror(errno));
    if (memcmp(map, "GGUF", 4) != 0) {
        if (!memcmp(map, "FUGG", 4) || !memcmp(map, "ggjt", 4) || !memcmp(map, "ggml", 4))
            die(EXIT_BADINPUT, "%s: an old GGML/GGJT or byte-swapped file, not GGUF\n"
                "  hint: convert it with llama.cpp's convert scripts to GGUF v3", path);
        die(EXIT_BADINPUT, "%s: not a GGUF file (no \"GGUF\" magic)", path);
    }

    Gguf *g = xcalloc(1, sizeof(Gguf));
    g->path = xstrdup(path);
    g->map = map;
    g->size = size;
    Cursor c = {path, map, size, 4};
    g->version = cur_u32(&c, "the version");
    if (g->version == 1 || g->version > 0xffff)   // v1 used 32-bit counts; big-endian files look huge
        die(EXIT_BADINPUT, "%s: GGUF version %u is not supported (2 and 3 are)%s", path, g->version,
            g->version > 0xffff ? "; is it a big-endian file?" : "\n  hint: re-convert it with a current llama.cpp");
    if (g->version > 3) die(EXIT_BADINPUT, "%s: GGUF version %u is newer than this reader (2 and 3)", path, g->version);
    uint64_t nt = cur_u64(&c, "the tensor count"), nkv = cur_u64(&c, "the metadata count");
    if (nt > size / 24 || nkv > size / 13)   // each entry needs at least that many bytes
        die(EXIT_BADINPUT, "%s: header claims %llu tensors and %llu metadata entries, more than %zu bytes can hold: "
            "truncated or corrupt", path, (unsigned long long)nt, (unsigned long long)nkv, size);
    g->n_kv = (int)nkv;
    g->n_tensors = (int)nt;
    g->kv = xcalloc(nkv + 1, sizeof(GgufKV));
    g->t = xcalloc(nt + 1, sizeof(GgufTensor));

    // metadata
    g->alignment = 32;
    for (int i = 0; i < g->n_kv; i++) {
        GgufKV *kv = &g->kv[i];
        kv->off = c.pos;
        kv->key = cur_str(&c, "a metadata key");
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)(kv->key.len < 200 ? kv->key.len : 200), kv->key.s);
        kv->type = cur_u32(&c, key);
        size_t vstart = c.pos;
        if (kv->type == GGUF_T_ARRAY) {
            need(&c, 12, key);
            kv->arr_type = rd_u32(map + c.pos);
            kv->arr_n = rd_u64(map + c.pos + 4);
            kv->val = map + c.pos + 12;
        } else {
            kv->val = map + c.pos;
        }
        c.pos = vstart;
        GgufStr *strs = NULL;
        cur_skip_value(&c, kv->type, key, 0, &strs);
        kv->strs = strs;
        kv->end = c.pos;
        if (str_eq(kv->key, "general.alignment")) {
            uint32_t a;
            if (kv->type != GGUF_T_U32 || (a = rd_u32(kv->val)) == 0 || (a & (a - 1)) != 0)
                die(EXIT_BADINPUT, "%s: general.alignment must be a u32 power of two", path);
            g->alignment = a;
        }
    }

    // tensor infos
    for (int i = 0; i < g->n_tensors; i++) {
        GgufTensor *t = &g->t[i];
        GgufStr name = cur_str(&c, "a tensor name");
        t->name = xmalloc(name.len + 1);
        memcpy(t->name, name.s, name.len);
        t->name[name.len] = '\0';
        uint32_t nd = cur_u32(&c, t->name);
        if (nd == 0 || nd > GGUF_MAX_DIMS) die(EXIT_BADINPUT, "%s: tensor \"%s\": %u dimensions (1..%d)", path, t->name, nd, GGUF_MAX_DIMS);
        t->n_dims = (int)nd;
        t->numel = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (int d = 0; d < t->n_dims; d++) {
            uint64_t ne = cur_u64(&c, t->name);
            if (ne > (1ull << 40) || (ne && t->numel > (SIZE_MAX >> 2) / ne))
                die(EXIT_BADINPUT, "%s: tensor \"%s\": dimension %d is %llu: corrupt", path, t->name, d, (unsigned long long)ne);
            t->ne[d] = (int64_t)ne;
            t->numel *= (size_t)ne;
        }
        t->type = cur_u32(&c, t->name);
        uint64_t off = cur_u64(&c, t->name);
        TypeInfo ti = type_info(t->type);
        if (ti.block) {
            if (t->ne[0] % ti.block != 0)
                die(EXIT_BADINPUT, "%s: tensor \"%s\": rows of %lld elements are not whole %s blocks of %d",
                    path, t->name, (long long)t->ne[0], ti.name, ti.block);
            t->nbytes = t->numel / (size_t)ti.block * (size_t)ti.bytes;
        }
        t->data = (const unsigned char *)(uintptr_t)off;   // made absolute below
        if (off % g->alignment != 0)
            die(EXIT_BADINPUT, "%s: tensor \"%s\": data offset %llu is not a multiple of the alignment %zu",
                path, t->name, (unsigned long long)off, g->alignment);
    }
    // the data section starts at the next multiple of the alignment
    size_t ds = (c.pos + g->alignment - 1) / g->alignment * g->alignment;
    g->data_start = ds;
    for (int i = 0; i < g->n_tensors; i++) {
        GgufTensor *t = &g->t[i];
        uint64_t off = (uint64_t)(uintptr_t)t->data;
        if (g->n_tensors && ds > size) need(&c, ds - c.pos, "the padding before the tensor data");
        if (off > size - ds || t->nbytes > size - ds - off)
            die(EXIT_BADINPUT, "%s: tensor \"%s\" (%s, %zu bytes at data offset %llu) runs past the end of the file (%zu bytes): truncated\n"
                "  hint: fetch the file again and check its sha256", path, t->name, ggml_type_name(t->type),
                t->nbytes, (unsigned long long)off, size);
        t->data = map + ds + off;
        for (int j = 0; j < i; j++)
            if (!strcmp(g->t[j].name, t->name)) die(EXIT_BADINPUT, "%s: tensor \"%s\" appears twice", path, t->name);
    }
    return g;
}

void gguf_close(Gguf *g) {
    if (!g) return;
    munmap(g->map, g->size);
    for (int i = 0; i < g->n_kv; i++) free((void *)g->kv[i].strs);
    for (int i = 0; i < g->n_tensors; i++) free(g->t[i].name);
    free(g->kv);
    free(g->t);
    free(g->path);
    free(g);
}

// ----------------------------------------------------------------------------
// metadata getters

const GgufKV *gguf_find(const Gguf *g, const char *key) {
    for (int i = 0; i < g->n_kv; i++)
        if (str_eq(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

// An integer value of type t at p, widened; 0 when t is not an integer type.
static int read_int(uint32_t t, const unsigned char *p, int64_t *i, uint64_t *u, int *is_unsigned) {
    *is_unsigned = 0;
    switch (t) {
    case GGUF_T_U8: *u = p[0]; *is_unsigned = 1; return 1;
    case GGUF_T_I8: *i = (int8_t)p[0]; return 1;
    case GGUF_T_U16: { uint16_t v; memcpy(&v, p, 2); *u = v; *is_unsigned = 1; return 1; }
    case GGUF_T_I16: { int16_t v; memcpy(&v, p, 2); *i = v; return 1; }
    case GGUF_T_U32: *u = rd_u32(p); *is_unsigned = 1; return 1;
    case GGUF_T_I32: { int32_t v; memcpy(&v, p, 4); *i = v; return 1; }
    case GGUF_T_U64: *u = rd_u64(p); *is_unsigned = 1; return 1;
    case GGUF_T_I64: { int64_t v; memcpy(&v, p, 8); *i = v; return 1; }
    default: return 0;
    }
}

// Value at p of type t as an integer in [lo, hi] (lo >= INT64_MIN, hi <= INT64_MAX as u64).
static int int_in_range(uint32_t t, const unsigned char *p, int64_t lo, uint64_t hi, int64_t *out_s, uint64_t *out_u) {
    int64_t i = 0;
    uint64_t u = 0;
    int uns;
    if (!read_int(t, p, &i, &u, &uns)) return 0;
    if (uns) {
        if (u > hi) return 0;
        if (out_u) *out_u = u;
        if (out_s) *out_s = (int64_t)u;   // only used when hi <= INT64_MAX
        return 1;
    }
    if (i < lo || (i >= 0 && (uint64_t)i > hi)) return 0;
    if (out_s) *out_s = i;
    if (out_u) *out_u = (uint64_t)i;
    return 1;
}

int gguf_get_u32(const Gguf *g, const char *key, uint32_t *out) {
    const GgufKV *kv = gguf_find(g, key);
    uint64_t u;
    if (!kv || !int_in_range(kv->type, kv->val, 0, UINT32_MAX, NULL, &u)) return 0;
    *out = (uint32_t)u;
    return 1;
}

int gguf_get_i32(const Gguf *g, const char *key, int32_t *out) {
    const GgufKV *kv = gguf_find(g, key);
    int64_t s;
    if (!kv || !int_in_range(kv->type, kv->val, INT32_MIN, INT32_MAX, &s, NULL)) return 0;
    *out = (int32_t)s;
    return 1;
}

int gguf_get_u64(const Gguf *g, const char *key, uint64_t *out) {
    const GgufKV *kv = gguf_find(g, key);
    uint64_t u;
    if (!kv || !int_in_range(kv->type, kv->val, 0, UINT64_MAX, NULL, &u)) return 0;
    *out = u;
    return 1;
}

// A float from f32, f64 or any integer.
static int read_float(uint32_t t, const unsigned char *p, double *out) {
    if (t == GGUF_T_F32) { float f; memcpy(&f, p, 4); *out = f; return 1; }
    if (t == GGUF_T_F64) { double d; memcpy(&d, p, 8); *out = d; return 1; }
    int64_t i;
    uint64_t u;
    int uns;
    if (!read_int(t, p, &i, &u, &uns)) return 0;
    *out = uns ? (double)u : (double)i;
    return 1;
}

int gguf_get_f32(const Gguf *g, const char *key, float *out) {
    const GgufKV *kv = gguf_find(g, key);
    double d;
    if (!kv || !read_float(kv->type, kv->val, &d)) return 0;
    *out = (float)d;
    return 1;
}

int gguf_get_bool(const Gguf *g, const char *key, int *out) {
    const GgufKV *kv = gguf_find(g, key);
    if (!kv) return 0;
    if (kv->type == GGUF_T_BOOL) { *out = kv->val[0] != 0; return 1; }
    int64_t i;
    uint64_t u;
    int uns;
    if (!read_int(kv->type, kv->val, &i, &u, &uns)) return 0;
    *out = uns ? u != 0 : i != 0;
    return 1;
}

int gguf_get_str(const Gguf *g, const char *key, GgufStr *out) {
    const GgufKV *kv = gguf_find(g, key);
    if (!kv || kv->type != GGUF_T_STRING) return 0;
    out->len = (size_t)rd_u64(kv->val);
    out->s = (const char *)kv->val + 8;
    return 1;
}

char *gguf_get_strdup(const Gguf *g, const char *key) {
    GgufStr s;
    if (!gguf_get_str(g, key, &s)) return NULL;
    char *z = xmalloc(s.len + 1);
    memcpy(z, s.s, s.len);
    z[s.len] = '\0';
    return z;
}

int64_t gguf_arr_len(const Gguf *g, const char *key, uint32_t *elem_type) {
    const GgufKV *kv = gguf_find(g, key);
    if (!kv || kv->type != GGUF_T_ARRAY) return -1;
    if (elem_type) *elem_type = kv->arr_type;
    return (int64_t)kv->arr_n;
}

int64_t gguf_get_str_arr(const Gguf *g, const char *key, const GgufStr **out) {
    const GgufKV *kv = gguf_find(g, key);
    if (!kv || kv->type != GGUF_T_ARRAY || kv->arr_type != GGUF_T_STRING) return -1;
    *out = kv->strs;
    return (int64_t)kv->arr_n;
}

int64_t gguf_get_i32_arr(const Gguf *g, const char *key, int32_t **out) {
    const GgufKV *kv = gguf_find(g, key);
    size_t es;
    if (!kv || kv->type != GGUF_T_ARRAY || !(es = scalar_size(kv->arr_type)) || kv->arr_type == GGUF_T_F32 ||
        kv->arr_type == GGUF_T_F64)
        return -1;
    int32_t *a = xmalloc(((size_t)kv->arr_n + 1) * sizeof(int32_t));
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        int64_t s;
        const unsigned char *p = kv->val + i * es;
        if (kv->arr_type == GGUF_T_BOOL) s = p[0] != 0;
        else if (!int_in_range(kv->arr_type, p, INT32_MIN, INT32_MAX, &s, NULL)) { free(a); return -1; }
        a[i] = (int32_t)s;
    }
    *out = a;
    return (int64_t)kv->arr_n;
}

int64_t gguf_get_f32_arr(const Gguf *g, const char *key, float **out) {
    const GgufKV *kv = gguf_find(g, key);
    size_t es;
    if (!kv || kv->type != GGUF_T_ARRAY || !(es = scalar_size(kv->arr_type)) || kv->arr_type == GGUF_T_BOOL) return -1;
    float *a = xmalloc(((size_t)kv->arr_n + 1) * sizeof(float));
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        double d = 0;
        read_float(kv->arr_type, kv->val + i * es, &d);
        a[i] = (float)d;
    }
    *out = a;
    return (int64_t)kv->arr_n;
}

uint32_t gguf_req_u32(const Gguf *g, const char *key) {
    uint32_t v;
    if (!gguf_get_u32(g, key, &v)) {
        const GgufKV *kv = gguf_find(g, key);
        die(EXIT_BADINPUT, "%s: metadata key %s %s", g->path, key,
            kv ? "is not a non-negative integer below 2^32" : "is missing");
    }
    return v;
}

float gguf_req_f32(const Gguf *g, const char *key) {
    float v;
    if (!gguf_get_f32(g, key, &v)) {
        const GgufKV *kv = gguf_find(g, key);
        die(EXIT_BADINPUT, "%s: metadata key %s %s%s", g->path, key, kv ? "is not a number but a " : "is missing",
            kv ? value_type_name(kv->type) : "");
    }
    return v;
}

// ----------------------------------------------------------------------------
// dequantisation (block layouts of ggml-common.h; values as gguf-py's quants.py computes them,
// in float32, so the results are bit-identical)

// IEEE half -> float, exact (subnormals, infinities and NaN included).
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else {   // subnormal: renormalise
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | man << 13;
    } else {
        bits = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t rd_u16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

int ggml_dequantize_row(uint32_t type, const void *src, float *dst, size_t n) {
    const unsigned char *p = src;
    switch (type) {
    case GGML_F32:
        memcpy(dst, p, n * sizeof(float));
        return 0;
    case GGML_F16:
        for (size_t i = 0; i < n; i++) dst[i] = half_to_float(rd_u16(p + 2 * i));
        return 0;
    case GGML_BF16:   // the upper 16 bits of a float32
        for (size_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)rd_u16(p + 2 * i) << 16;
            memcpy(&dst[i], &bits, 4);
        }
        return 0;
    case GGML_Q8_0:   // block: f16 d, int8 q[32]; x = d * q
        if (n % 32) return -1;
        for (size_t b = 0; b < n / 32; b++, p += 34) {
            float d = half_to_float(rd_u16(p));
            for (int j = 0; j < 32; j++) dst[b * 32 + j] = d * (float)(int8_t)p[2 + j];
        }
        return 0;
    case GGML_Q4_0:   // block: f16 d, u8 qs[16]; x_j = d*((qs[j]&15)-8), x_{j+16} = d*((qs[j]>>4)-8)
        if (n % 32) return -1;
        for (size_t b = 0; b < n / 32; b++, p += 18) {
            float d = half_to_float(rd_u16(p));
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j] = d * (float)((p[2 + j] & 15) - 8);
                dst[b * 32 + j + 16] = d * (float)((p[2 + j] >> 4) - 8);
            }
        }
        return 0;
    case GGML_Q4_1:   // block: f16 d, f16 m, u8 qs[16]; x_j = d*(qs[j]&15) + m, x_{j+16} = d*(qs[j]>>4) + m
        if (n % 32) return -1;
        for (size_t b = 0; b < n / 32; b++, p += 20) {
            float d = half_to_float(rd_u16(p)), m = half_to_float(rd_u16(p + 2));
            for (int j = 0; j < 16; j++) {
                // two roundings (product, then sum) like numpy; -std=c11 keeps GCC from fusing them
                float lo = d * (float)(p[4 + j] & 15), hi = d * (float)(p[4 + j] >> 4);
                dst[b * 32 + j] = lo + m;
                dst[b * 32 + j + 16] = hi + m;
            }
        }
        return 0;
    default:
        return -1;
    }
}

void gguf_dequantize(const Gguf *g, const GgufTensor *t, float *dst) {
    if (!ggml_type_supported(t->type))
        die(EXIT_BADINPUT, "%s: tensor \"%s\" has type %s (%u); this reader dequantises F32, F16, BF16, Q8_0, Q4_0 "
            "and Q4_1\n  hint: re-quantise with llama.cpp's llama-quantize to Q8_0 or Q4_1, or use an F16 GGUF",
            g->path, t->name, ggml_type_name(t->type), t->type);
    // rows are independent: split them over threads for the big matrices
    size_t row = (size_t)t->ne[0], rows = t->numel / (row ? row : 1);
    size_t rb = t->nbytes / (rows ? rows : 1);
    #pragma omp parallel for schedule(static) if (t->numel >= (1u << 20))
    for (size_t r = 0; r < rows; r++) ggml_dequantize_row(t->type, t->data + r * rb, dst + r * row, row);
}

// ----------------------------------------------------------------------------
// metadata-only writer

static void put_bytes(FILE *f, const char *path, const void *p, size_t n) {
    if (fwrite(p, 1, n, f) != n) die(EXIT_RUNTIME, "writing %s failed: %s", path, strerror(errno));
}

void gguf_write_meta_subset(const Gguf *g, const char *path, const char *const *prefixes, int n) {
    int *keep = xcalloc((size_t)g->n_kv + 1, sizeof(int));
    uint64_t nk = 0;
    for (int i = 0; i < g->n_kv; i++) {
        const GgufKV *kv = &g->kv[i];
        int k = str_eq(kv->key, "general.architecture");
        for (int j = 0; j < n && !k; j++) {
            size_t pl = strlen(prefixes[j]);
            k = kv->key.len >= pl && !memcmp(kv->key.s, prefixes[j], pl);
        }
        keep[i] = k;
        nk += (uint64_t)k;
    }
    FILE *f = fopen(path, "wb");
    if (!f) die(EXIT_RUNTIME, "cannot create %s: %s", path, strerror(errno));
    uint32_t version = 3;
    uint64_t nt = 0;
    put_bytes(f, path, "GGUF", 4);
    put_bytes(f, path, &version, 4);
    put_bytes(f, path, &nt, 8);
    put_bytes(f, path, &nk, 8);
    for (int i = 0; i < g->n_kv; i++)   // v2 and v3 encode metadata identically
        if (keep[i]) put_bytes(f, path, g->map + g->kv[i].off, g->kv[i].end - g->kv[i].off);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0) die(EXIT_RUNTIME, "writing %s failed: %s", path, strerror(errno));
    free(keep);
}

// ----------------------------------------------------------------------------
// llama.cpp naming -> Model

static uint32_t arch_u32(const Gguf *g, const char *arch, const char *suffix, int required, uint32_t dflt) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint32_t v;
    if (gguf_get_u32(g, key, &v)) return v;
    if (required) gguf_req_u32(g, key);   // dies with the reason
    return dflt;
}

static float arch_f32(const Gguf *g, const char *arch, const char *suffix, float dflt) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    float v;
    if (gguf_get_f32(g, key, &v)) return v;
    if (gguf_find(g, key)) gguf_req_f32(g, key);   // present but not a number: dies
    return dflt;
}

static const GgufTensor *req_tensor(const Gguf *g, const char *name) {
    const GgufTensor *t = gguf_tensor(g, name);
    if (!t) die(EXIT_BADINPUT, "%s: tensor \"%s\" is missing (llama.cpp naming expected)", g->path, name);
    return t;
}

const GgufTensor *gguf_tensor(const Gguf *g, const char *name) {
    for (int i = 0; i < g->n_tensors; i++)
        if (!strcmp(g->t[i].name, name)) return &g->t[i];
    return NULL;
}

ModelConfig gguf_model_config(const Gguf *g) {
    char *arch = gguf_get_strdup(g, "general.architecture");
    if (!arch) die(EXIT_BADINPUT, "%s: metadata key general.architecture is missing", g->path);
    int qwen = !strcmp(arch, "qwen2");
    if (!qwen && strcmp(arch, "llama") != 0)
        die(EXIT_BADINPUT, "%s: architecture \"%s\" is not supported (llama and qwen2 are)", g->path, arch);
    ModelConfig c = {0};
    c.dim = (int)arch_u32(g, arch, "embedding_length", 1, 0);
    c.n_layers = (int)arch_u32(g, arch, "block_count", 1, 0);
    c.hidden_dim = (int)arch_u32(g, arch, "feed_forward_length", 1, 0);
    c.n_heads = (int)arch_u32(g, arch, "attention.head_count", 1, 0);
    c.n_kv_heads = (int)arch_u32(g, arch, "attention.head_count_kv", 0, (uint32_t)c.n_heads);
    c.max_seq_len = (int)arch_u32(g, arch, "context_length", 0, 2048);
    c.rope_theta = arch_f32(g, arch, "rope.freq_base", 10000.0f);
    c.norm_eps = arch_f32(g, arch, "attention.layer_norm_rms_epsilon", 1e-5f);
    if (c.dim <= 0 || c.n_layers <= 0 || c.hidden_dim <= 0 || c.n_heads <= 0 || c.dim > (1 << 20) ||
        c.n_layers > 4096 || c.hidden_dim > (1 << 22))
        die(EXIT_BADINPUT, "%s: implausible sizes (embedding_length %d, block_count %d, feed_forward_length %d, head_count %d)",
            g->path, c.dim, c.n_layers, c.hidden_dim, c.n_heads);
    // what our model does not implement: say so instead of computing something else
    char key[160];
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    char *st = gguf_get_strdup(g, key);
    if (st && strcmp(st, "none") != 0)
        die(EXIT_BADINPUT, "%s: %s is \"%s\"; rope scaling is not implemented (plain RoPE with rope.freq_base only)", g->path, key, st);
    free(st);
    if (gguf_tensor(g, "rope_freqs.weight"))   // Llama 3.1+ long-context RoPE factors
        die(EXIT_BADINPUT, "%s: has rope_freqs.weight (Llama 3.1+ \"llama3\" rope scaling), which is not implemented", g->path);
    uint32_t rd = arch_u32(g, arch, "rope.dimension_count", 0, (uint32_t)(c.dim / c.n_heads));
    uint32_t kl = arch_u32(g, arch, "attention.key_length", 0, (uint32_t)(c.dim / c.n_heads));
    if ((int)rd != c.dim / c.n_heads || (int)kl != c.dim / c.n_heads)
        die(EXIT_BADINPUT, "%s: rope.dimension_count %u / attention.key_length %u differ from the head size %d: "
            "partial rotary or a separate head_dim is not supported", g->path, rd, kl, c.dim / c.n_heads);
    // vocabulary: the token list, checked against the embedding rows
    const GgufTensor *emb = req_tensor(g, "token_embd.weight");
    int64_t n_tok = gguf_arr_len(g, "tokenizer.ggml.tokens", NULL);
    int64_t rows = emb->n_dims == 2 ? emb->ne[1] : -1;
    if (emb->n_dims != 2 || emb->ne[0] != c.dim)
        die(EXIT_BADINPUT, "%s: token_embd.weight has shape [%lld, %lld], expected [%d, vocab]", g->path,
            (long long)emb->ne[0], (long long)emb->ne[1], c.dim);
    if (n_tok >= 0 && n_tok != rows)
        die(EXIT_BADINPUT, "%s: %lld tokens in tokenizer.ggml.tokens but token_embd.weight has %lld rows", g->path,
            (long long)n_tok, (long long)rows);
    if (rows > INT_MAX) die(EXIT_BADINPUT, "%s: vocabulary of %lld tokens is too large", g->path, (long long)rows);
    c.vocab_size = (int)rows;
    c.qkv_bias = gguf_tensor(g, "blk.0.attn_q.bias") != NULL;
    c.tied = gguf_tensor(g, "output.weight") == NULL;
    if (gguf_tensor(g, "blk.0.attn_output.bias") || gguf_tensor(g, "blk.0.ffn_up.bias"))
        die(EXIT_BADINPUT, "%s: biases on attn_output or the MLP are not supported", g->path);
    char why[200];
    if (model_config_check(&c, why, sizeof why)) die(EXIT_BADINPUT, "%s: %s", g->path, why);
    free(arch);
    return c;
}

// Dequantise tensor `name` of expected ggml shape (ne0, ne1) into dst.
static void load_tensor(const Gguf *g, const char *name, float *dst, int64_t ne0, int64_t ne1) {
    const GgufTensor *t = req_tensor(g, name);
    int64_t want_dims = ne1 > 1 ? 2 : 1;
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1 || (t->n_dims != want_dims && t->n_dims != 2))
        die(EXIT_BADINPUT, "%s: tensor \"%s\" has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld] (ggml order)",
            g->path, name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
            (long long)ne0, (long long)ne1);
    gguf_dequantize(g, t, dst);
}

// Undo llama.cpp's q/k permutation (convert_hf_to_gguf.py LlamaModel.permute): within each
// head, GGUF row 2i is HF row i and row 2i+1 is HF row i + hs/2 — the llama2.c interleaving.
// w (n_heads * hs, cols), cols = C for weights, 1 for biases.
static void unpermute_heads(float *w, int n_heads, int hs, size_t cols) {
    int *perm = xmalloc((size_t)hs * sizeof(int));
    llama2c_rope_perm(hs, perm);   // perm[hf_row] = gguf_row
    float *tmp = xmalloc((size_t)hs * cols * sizeof(float));
    for (int h = 0; h < n_heads; h++) {
        float *head = w + (size_t)h * hs * cols;
        memcpy(tmp, head, (size_t)hs * cols * sizeof(float));
        for (int r = 0; r < hs; r++) memcpy(head + (size_t)r * cols, tmp + (size_t)perm[r] * cols, cols * sizeof(float));
    }
    free(tmp);
    free(perm);
}

Model *gguf_load_model(const Gguf *g) {
    ModelConfig c = gguf_model_config(g);
    char *arch = gguf_get_strdup(g, "general.architecture");
    int permuted = !strcmp(arch, "llama");   // qwen2 is converted without the permutation (NEOX RoPE)
    free(arch);
    Model *m = model_create(&c);
    ParamViews *w = &m->w;
    int64_t C = c.dim, F = c.hidden_dim, V = c.vocab_size, hs = C / c.n_heads;
    int64_t qd = c.n_heads * hs, kvd = c.n_kv_heads * hs;
    char name[96];
    load_tensor(g, "token_embd.weight", w->tok_emb, C, V);
    for (int l = 0; l < c.n_layers; l++) {
#define T(suffix) (snprintf(name, sizeof name, "blk.%d." suffix, l), name)
        load_tensor(g, T("attn_norm.weight"), w->attn_norm + l * C, C, 1);
        load_tensor(g, T("attn_q.weight"), w->wq + l * qd * C, C, qd);
        load_tensor(g, T("attn_k.weight"), w->wk + l * kvd * C, C, kvd);
        load_tensor(g, T("attn_v.weight"), w->wv + l * kvd * C, C, kvd);
        if (c.qkv_bias) {
            load_tensor(g, T("attn_q.bias"), w->bq + l * qd, qd, 1);
            load_tensor(g, T("attn_k.bias"), w->bk + l * kvd, kvd, 1);
            load_tensor(g, T("attn_v.bias"), w->bv + l * kvd, kvd, 1);
        }
        load_tensor(g, T("attn_output.weight"), w->wo + l * C * qd, qd, C);
        load_tensor(g, T("ffn_norm.weight"), w->ffn_norm + l * C, C, 1);
        load_tensor(g, T("ffn_gate.weight"), w->w1 + l * F * C, C, F);
        load_tensor(g, T("ffn_up.weight"), w->w3 + l * F * C, C, F);
        load_tensor(g, T("ffn_down.weight"), w->w2 + l * C * F, F, C);
#undef T
        if (permuted) {
            unpermute_heads(w->wq + l * qd * C, c.n_heads, (int)hs, (size_t)C);
            unpermute_heads(w->wk + l * kvd * C, c.n_kv_heads, (int)hs, (size_t)C);
            if (c.qkv_bias) {
                unpermute_heads(w->bq + l * qd, c.n_heads, (int)hs, 1);
                unpermute_heads(w->bk + l * kvd, c.n_kv_heads, (int)hs, 1);
            }
        }
    }
    load_tensor(g, "output_norm.weight", w->final_norm, C, 1);
    if (!c.tied) load_tensor(g, "output.weight", w->lm_head, C, V);
    return m;
}
