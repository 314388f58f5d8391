// recstore.h — a whole shard held in memory, for the stages that need every record of a
// batch at once (safe-critic and safe-update train on the full rollout batch, then write the
// records back out with fields added). Each record is kept as its own packed msgpack copy.
#ifndef SAFE_RECSTORE_H
#define SAFE_RECSTORE_H

#include <stddef.h>

#include "shard.h"

typedef struct {
    char *path;
    size_t n;               // records
    Record *recs;           // (n) valid until recstore_free
    Record header;          // the header map as a Record (index -1)
    // private
    char **bufs;
    msgpack_zone **zones;
    msgpack_object *objs;   // (n + 1), the last one is the header
} RecStore;

// Read every record of `path` ("-" = stdin). Dies with exit 2 on bad input, like shard_next.
RecStore *recstore_read(const char *path);
void recstore_free(RecStore *s);
// Header string field or `fallback` when absent (not a string → exit 2).
const char *recstore_header_str(const RecStore *s, const char *key, const char *fallback);
// Header number field or `fallback` when absent.
double recstore_header_f64(const RecStore *s, const char *key, double fallback);

#endif
