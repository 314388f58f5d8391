// safetensors.c — mapped reading with up-front validation, and writing.
#include "safetensors.h"

#include "common.h"   // die, xmalloc, exit codes

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (256u << 20)   // 256 MiB of JSON is far beyond any real header

size_t st_numel(int ndim, const int64_t *shape) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    return n;
}

static int dtype_size(const char *dtype) {
    if (!strcmp(dtype, "F64") || !strcmp(dtype, "I64") || !strcmp(dtype, "U64")) return 8;
    if (!strcmp(dtype, "F32") || !strcmp(dtype, "I32") || !strcmp(dtype, "U32")) return 4;
    if (!strcmp(dtype, "F16") || !strcmp(dtype, "BF16") || !strcmp(dtype, "I16") || !strcmp(dtype, "U16")) return 2;
    if (!strcmp(dtype, "I8") || !strcmp(dtype, "U8") || !strcmp(dtype, "BOOL") || !strncmp(dtype, "F8_", 3)) return 1;
    return 0;
}

// ----------------------------------------------------------------------------
// reading

SafeTensors *safetensors_open(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die(EXIT_BADINPUT, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) die(EXIT_BADINPUT, "cannot stat %s: %s", path, strerror(errno));
    size_t size = (size_t)sb.st_size;
    if (size < 8) die(EXIT_BADINPUT, "%s: %zu bytes is too short for a safetensors file (truncated?)", path, size);
    unsigned char *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) die(EXIT_BADINPUT, "cannot map %s: %s", path, strerror(errno));

    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | map[i];   // little-endian
    if (hlen > ST_MAX_HEADER || hlen > size - 8)
        die(EXIT_BADINPUT, "%s: header length %llu does not fit in the file (%zu bytes): truncated or not safetensors",
            path, (unsigned long long)hlen, size);
    json_error_t err;
    json_t *root = json_loadb((const char *)map + 8, (size_t)hlen, 0, &err);
    if (!root) die(EXIT_BADINPUT, "%s: header is not valid JSON (%s at byte %d)", path, err.text, err.position);
    if (!json_is_object(root)) die(EXIT_BADINPUT, "%s: header is not a JSON object", path);

    SafeTensors *st = xcalloc(1, sizeof(SafeTensors));
    st->path = xstrdup(path);
    st->map = map;
    st->size = size;
    st->data_start = 8 + (size_t)hlen;
    size_t data_size = size - st->data_start;
    st->e = xcalloc(json_object_size(root) + 1, sizeof(StEntry));

    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(val)) die(EXIT_BADINPUT, "%s: __metadata__ is not an object", path);
            size_t nm = json_object_size(val);
            st->meta_key = xcalloc(nm + 1, sizeof(char *));
            st->meta_val = xcalloc(nm + 1, sizeof(char *));
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv)) die(EXIT_BADINPUT, "%s: __metadata__ field \"%s\" is not a string", path, mk);
                st->meta_key[st->n_meta] = xstrdup(mk);
                st->meta_val[st->n_meta++] = xstrdup(json_string_value(mv));
            }
            continue;
        }
        StEntry *e = &st->e[st->n];
        json_t *dt = json_object_get(val, "dtype"), *sh = json_object_get(val, "shape"),
               *off = json_object_get(val, "data_offsets");
        if (!json_is_string(dt) || !json_is_array(sh) || !json_is_array(off) || json_array_size(off) != 2)
            die(EXIT_BADINPUT, "%s: tensor \"%s\": entry needs dtype, shape and data_offsets [begin, end]", path, key);
        if (strlen(json_string_value(dt)) >= sizeof e->dtype || dtype_size(json_string_value(dt)) == 0)
            die(EXIT_BADINPUT, "%s: tensor \"%s\": unknown dtype \"%s\"", path, key, json_string_value(dt));
        strcpy(e->dtype, json_string_value(dt));
        if (json_array_size(sh) > ST_MAX_DIMS)
            die(EXIT_BADINPUT, "%s: tensor \"%s\": %zu dimensions (at most %d)", path, key, json_array_size(sh), ST_MAX_DIMS);
        e->ndim = (int)json_array_size(sh);
        for (int i = 0; i < e->ndim; i++) {
            json_t *d = json_array_get(sh, (size_t)i);
            if (!json_is_integer(d) || json_integer_value(d) < 0 || json_integer_value(d) > (1LL << 40))
                die(EXIT_BADINPUT, "%s: tensor \"%s\": bad shape entry %d", path, key, i);
            e->shape[i] = json_integer_value(d);
        }
        json_t *b = json_array_get(off, 0), *en = json_array_get(off, 1);
        if (!json_is_integer(b) || !json_is_integer(en) || json_integer_value(b) < 0 || json_integer_value(en) < json_integer_value(b))
            die(EXIT_BADINPUT, "%s: tensor \"%s\": bad data_offsets", path, key);
        e->begin = (size_t)json_integer_value(b);
        e->end = (size_t)json_integer_value(en);
        size_t want = st_numel(e->ndim, e->shape) * (size_t)dtype_size(e->dtype);
        if (e->end - e->begin != want)
            die(EXIT_BADINPUT, "%s: tensor \"%s\": data_offsets span %zu bytes but %s shape needs %zu",
                path, key, e->end - e->begin, e->dtype, want);
        if (e->end > data_size)
            die(EXIT_BADINPUT, "%s: tensor \"%s\" ends at byte %zu of the data but the file holds only %zu: truncated",
                path, key, e->end, data_size);
        e->name = xstrdup(key);
        st->n++;
    }
    json_decref(root);
    return st;
}

void safetensors_close(SafeTensors *st) {
    if (!st) return;
    munmap(st->map, st->size);
    for (int i = 0; i < st->n; i++) free(st->e[i].name);
    for (int i = 0; i < st->n_meta; i++) { free(st->meta_key[i]); free(st->meta_val[i]); }
    free(st->meta_key);
    free(st->meta_val);
    free(st->e);
    free(st->path);
    free(st);
}

const StEntry *safetensors_find(const SafeTensors *st, const char *name) {
    for (int i = 0; i < st->n; i++)
        if (!strcmp(st->e[i].name, name)) return &st->e[i];
    return NULL;
}

const char *safetensors_meta(const SafeTensors *st, const char *key) {
    for (int i = 0; i < st->n_meta; i++)
        if (!strcmp(st->meta_key[i], key)) return st->meta_val[i];
    return NULL;
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) bits = sign;
        else {   // subnormal: normalise
            int e = -1;
            do { mant <<= 1; e++; } while (!(mant & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | mant << 13;
    else bits = sign | (exp + 127 - 15) << 23 | mant << 13;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void safetensors_read_f32(const SafeTensors *st, const char *name, float *dst, int ndim,
                          const int64_t *shape, size_t dst_numel) {
    const StEntry *e = safetensors_find(st, name);
    if (!e) die(EXIT_BADINPUT, "%s: tensor \"%s\" is missing", st->path, name);
    char got[160], want[160];
    if (ndim >= 0) {
        int same = e->ndim == ndim;
        for (int i = 0; same && i < ndim; i++) same = e->shape[i] == shape[i];
        if (!same) {
            shape_str(got, sizeof got, e->ndim, e->shape);
            shape_str(want, sizeof want, ndim, shape);
            die(EXIT_BADINPUT, "%s: tensor \"%s\" has shape %s, expected %s", st->path, name, got, want);
        }
        dst_numel = st_numel(ndim, shape);
    } else if (st_numel(e->ndim, e->shape) != dst_numel) {
        shape_str(got, sizeof got, e->ndim, e->shape);
        die(EXIT_BADINPUT, "%s: tensor \"%s\" has shape %s, expected %zu elements", st->path, name, got, dst_numel);
    }
    const unsigned char *src = st->map + st->data_start + e->begin;
    if (!strcmp(e->dtype, "F32")) {
        memcpy(dst, src, dst_numel * sizeof(float));
    } else if (!strcmp(e->dtype, "BF16")) {
        for (size_t i = 0; i < dst_numel; i++) {
            uint32_t bits = (uint32_t)(src[2 * i] | src[2 * i + 1] << 8) << 16;
            memcpy(&dst[i], &bits, 4);
        }
    } else if (!strcmp(e->dtype, "F16")) {
        for (size_t i = 0; i < dst_numel; i++) dst[i] = f16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
    } else {
        die(EXIT_BADINPUT, "%s: tensor \"%s\" has dtype %s; only F32, F16 and BF16 are read", st->path, name, e->dtype);
    }
}

// ----------------------------------------------------------------------------
// writing

void safetensors_write(const char *path, const StTensor *t, int n, const char *const *meta_keys,
                       const char *const *meta_vals, int n_meta) {
    // header: entries in the given order, then __metadata__
    json_t *root = json_object();
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        json_t *shape = json_array();
        for (int d = 0; d < t[i].ndim; d++) json_array_append_new(shape, json_integer(t[i].shape[d]));
        size_t bytes = st_numel(t[i].ndim, t[i].shape) * sizeof(float);
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string("F32"));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets", json_pack("[II]", (json_int_t)off, (json_int_t)(off + bytes)));
        if (json_object_get(root, t[i].name)) die(EXIT_RUNTIME, "%s: tensor \"%s\" written twice", path, t[i].name);
        json_object_set_new(root, t[i].name, e);
        off += bytes;
    }
    if (n_meta > 0) {
        json_t *meta = json_object();
        for (int i = 0; i < n_meta; i++) json_object_set_new(meta, meta_keys[i], json_string(meta_vals[i]));
        json_object_set_new(root, "__metadata__", meta);
    }
    char *hdr = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    size_t hlen = strlen(hdr), padded = (hlen + 8 + 7) / 8 * 8 - 8;   // data starts 8-aligned

    FILE *f = fopen(path, "wb");
    if (!f) die(EXIT_RUNTIME, "cannot create %s: %s", path, strerror(errno));
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, hlen, f) == hlen;
    for (size_t i = hlen; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    for (int i = 0; ok && i < n; i++) {
        size_t cnt = st_numel(t[i].ndim, t[i].shape);
        ok = fwrite(t[i].data, sizeof(float), cnt, f) == cnt;
    }
    free(hdr);
    if (!ok || fflush(f) != 0 || fsync(fileno(f)) != 0) die(EXIT_RUNTIME, "writing %s failed: %s", path, strerror(errno));
    if (fclose(f) != 0) die(EXIT_RUNTIME, "closing %s failed: %s", path, strerror(errno));
}
