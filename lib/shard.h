// shard.h — record streams: a msgpack header map, then one msgpack map per record,
// optionally zstd-compressed (detected on read). See man/safe-shard.5.
//
// Reading:
//   ShardReader *r = shard_open("rollout.safe");       // "-" is stdin
//   Record rec;
//   while (shard_next(r, &rec)) {
//       size_t n; float *logp = rec_f32s(&rec, "logp", &n);   // dies (exit 2) if missing/bad
//       ...
//   }
//   shard_close(r);
//
// Writing (stages add fields and pass everything else through):
//   ShardWriter *w = shard_create("scored.safe", 3);    // "-" is stdout; level 0 = raw msgpack
//   Fields *h = fields_new(); fields_str(h, "kind", "scored"); ...
//   shard_write_header(w, shard_header(r), h);          // base header + changes
//   Fields *f = fields_new();
//   fields_clear(f); fields_f64(f, "reward", 0.7); shard_write(w, &rec, f);
//   shard_commit(w);                                     // temp name -> final name
//
// Every reader error exits with status 2 and a message naming file, record index and field.
#ifndef SAFE_SHARD_H
#define SAFE_SHARD_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#define SHARD_FORMAT "safe-shard"
#define SHARD_VERSION 1

typedef struct ShardReader ShardReader;
typedef struct ShardWriter ShardWriter;
typedef struct Fields Fields;

// One record: a parsed msgpack map, valid until the next shard_next() on its reader.
typedef struct {
    const msgpack_object *map;  // type MSGPACK_OBJECT_MAP
    const char *file;           // for messages
    long index;                 // 0-based record index in the file
} Record;

// ---- reading ----
ShardReader *shard_open(const char *path);             // dies (2) on unreadable file or bad header
const Record *shard_header_record(ShardReader *r);      // header as a Record (index -1)
const msgpack_object *shard_header(ShardReader *r);     // header map
int shard_next(ShardReader *r, Record *rec);            // 1 = got a record, 0 = clean end
void shard_close(ShardReader *r);
const char *shard_path(ShardReader *r);
// Die (exit 2) unless the header's "kind" is one of `kinds` ("scored|adv"); `hint` says which
// tool makes the expected kind.
void shard_expect_kind(const Record *header, const char *kinds, const char *hint);

// Field access. rec_find returns NULL when absent; the others die (exit 2) naming
// file, record and field when the field is missing or has the wrong type.
const msgpack_object *rec_find(const Record *r, const char *key);
int rec_has(const Record *r, const char *key);
const char *rec_str(const Record *r, const char *key, size_t *len);   // not NUL-terminated
char *rec_strdup(const Record *r, const char *key);                   // malloc'd, NUL-terminated
double rec_f64(const Record *r, const char *key);                    // any msgpack number
int64_t rec_i64(const Record *r, const char *key);                   // integer only
int rec_bool(const Record *r, const char *key);
// Typed arrays stored as msgpack bin of little-endian int32 / float32. Return a malloc'd
// copy (caller frees) and its element count. `want` >= 0 also checks the length.
int32_t *rec_i32s(const Record *r, const char *key, size_t *n, long want);
float *rec_f32s(const Record *r, const char *key, size_t *n, long want);
// The same, into a caller buffer of capacity `cap` (dies if longer); returns the count.
size_t rec_i32s_into(const Record *r, const char *key, int32_t *dst, size_t cap);
size_t rec_f32s_into(const Record *r, const char *key, float *dst, size_t cap);
// Report a bad value found by the caller (e.g. NaN reward): exit `code`, naming file/record/field.
void rec_die(const Record *r, const char *key, int code, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));

// ---- building fields to add ----
Fields *fields_new(void);
void fields_clear(Fields *f);
void fields_free(Fields *f);
void fields_str(Fields *f, const char *key, const char *val);
void fields_strn(Fields *f, const char *key, const char *val, size_t len);
void fields_i64(Fields *f, const char *key, int64_t val);
void fields_f64(Fields *f, const char *key, double val);
void fields_bool(Fields *f, const char *key, int val);
void fields_nil(Fields *f, const char *key);
void fields_i32s(Fields *f, const char *key, const int32_t *vals, size_t n);
void fields_f32s(Fields *f, const char *key, const float *vals, size_t n);
void fields_obj(Fields *f, const char *key, const msgpack_object *val);   // deep copy, any type
void fields_drop(Fields *f, const char *key);   // remove `key` from the base record when writing

// ---- writing ----
// path "-" writes to stdout; otherwise to "<path>.tmp.<pid>" renamed on shard_commit.
// level: zstd level 1..19, 0 for raw msgpack.
ShardWriter *shard_create(const char *path, int level);
// Header = fields of `base` (may be NULL) not overridden by `add`, then `add`. The writer
// fills "format", "version" and (when absent) "tool"/"tool_version".
void shard_write_header(ShardWriter *w, const msgpack_object *base, const Fields *add);
// Record = fields of `base` (may be NULL) not overridden or dropped by `add`, then `add`.
void shard_write(ShardWriter *w, const Record *base, const Fields *add);
void shard_commit(ShardWriter *w);   // flush, close, rename; frees w
void shard_abort(ShardWriter *w);    // remove the temp file; frees w

// ---- additions (issue 2) ----
// Notes on the declarations above. Record indexes in messages count from 0 ("record 0" is
// the first after the header); rec_die accepts key NULL for a message about the whole
// record. shard_write_header lays the header out as format, version, kind (from add, else
// base, else "records"), tool and tool_version (from add, else safe_progname and
// SAFE_VERSION: a base header's producer is not carried over), the other base keys, the
// other add keys, then dtypes. Writers buffer; readers refill in 256 KB steps and hold the
// current record only (memory ~ the largest record).
// dtypes. The header's "dtypes" map names the element type ("i32" or "f32") of every bin
// field. shard_write_header fills it from, later winning: the built-in schema below, the
// base header's "dtypes", a "dtypes" map in `add`, and shard_declare() calls. shard_write
// dies (exit 3) when an added fields_i32s/fields_f32s field has no dtype or another one.
void shard_declare(ShardWriter *w, const char *key, const char *dtype);   // before the header
// The built-in schema: every bin field the safe tools write (see man/safe-shard.5).
typedef struct { const char *name; const char *dtype; } ShardDtype;
extern const ShardDtype shard_schema[];
extern const size_t shard_schema_len;
const char *shard_schema_dtype(const char *key);          // "i32", "f32" or NULL
// dtype of `key` in the reader's header "dtypes", else the built-in schema, else NULL.
const char *shard_dtype(ShardReader *r, const char *key);

// Open a stream that is already open (safe-cat peeks at it first); takes ownership of z.
struct ZIn;
ShardReader *shard_open_zin(struct ZIn *z);
long shard_records_read(ShardReader *r);     // records returned by shard_next so far

void shard_flush(ShardWriter *w);            // make the records so far readable downstream
long shard_records_written(ShardWriter *w);
const char *shard_writer_path(ShardWriter *w);

// Pack one value of any type yourself: returns a packer; pack exactly one msgpack value
// with it before the next fields_* call (e.g. the "reward_components" map).
msgpack_packer *fields_packer(Fields *f, const char *key);
int fields_count(const Fields *f);           // live entries (drops included)

#endif
