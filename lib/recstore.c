// recstore.c — keep every record of a shard in memory as packed msgpack copies.
#include "recstore.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"   // xmalloc, die

// Pack `obj` into a fresh buffer and unpack it into its own zone, so it outlives the reader.
static void keep_copy(RecStore *s, size_t slot, const msgpack_object *obj) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_object(&pk, *obj);
    s->bufs[slot] = sb.data;   // owned: the unpacked object may point into it
    s->zones[slot] = msgpack_zone_new(MSGPACK_ZONE_CHUNK_SIZE);
    if (!s->zones[slot]) die(EXIT_RUNTIME, "out of memory keeping record %zu of %s", slot, s->path);
    size_t off = 0;
    if (msgpack_unpack(sb.data, sb.size, &off, s->zones[slot], &s->objs[slot]) != MSGPACK_UNPACK_SUCCESS)
        die(EXIT_RUNTIME, "internal error: could not re-read record %zu of %s", slot, s->path);
}

static void grow(RecStore *s, size_t cap) {
    s->bufs = xrealloc(s->bufs, cap * sizeof(char *));
    s->zones = xrealloc(s->zones, cap * sizeof(msgpack_zone *));
    s->objs = xrealloc(s->objs, cap * sizeof(msgpack_object));
}

RecStore *recstore_read(const char *path) {
    RecStore *s = xcalloc(1, sizeof(*s));
    ShardReader *r = shard_open(path);
    s->path = xstrdup(shard_path(r));
    size_t cap = 64;
    grow(s, cap);
    Record rec;
    while (shard_next(r, &rec)) {
        if (s->n + 2 > cap) grow(s, cap *= 2);
        keep_copy(s, s->n++, rec.map);
    }
    keep_copy(s, s->n, shard_header(r));
    shard_close(r);
    s->recs = xmalloc((s->n ? s->n : 1) * sizeof(Record));
    for (size_t i = 0; i < s->n; i++)
        s->recs[i] = (Record){.map = &s->objs[i], .file = s->path, .index = (long)i};
    s->header = (Record){.map = &s->objs[s->n], .file = s->path, .index = -1};
    return s;
}

void recstore_free(RecStore *s) {
    if (!s) return;
    for (size_t i = 0; i <= s->n; i++) {
        msgpack_zone_free(s->zones[i]);
        free(s->bufs[i]);
    }
    free(s->bufs);
    free(s->zones);
    free(s->objs);
    free(s->recs);
    free(s->path);
    free(s);
}

const char *recstore_header_str(const RecStore *s, const char *key, const char *fallback) {
    if (!rec_has(&s->header, key)) return fallback;
    const msgpack_object *o = rec_find(&s->header, key);
    if (o->type == MSGPACK_OBJECT_NIL) return fallback;
    // header strings are short; keep a NUL-terminated copy alive with the store's zone
    size_t len;
    const char *p = rec_str(&s->header, key, &len);
    char *out = msgpack_zone_malloc(s->zones[s->n], len + 1);
    if (!out) die(EXIT_RUNTIME, "out of memory");
    memcpy(out, p, len);
    out[len] = 0;
    return out;
}

double recstore_header_f64(const RecStore *s, const char *key, double fallback) {
    if (!rec_has(&s->header, key)) return fallback;
    if (rec_find(&s->header, key)->type == MSGPACK_OBJECT_NIL) return fallback;
    return rec_f64(&s->header, key);
}
