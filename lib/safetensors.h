// safetensors.h — read and write the safetensors format (Hugging Face):
//   8-byte little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "string value", ...}}, then the raw little-endian data
//   (offsets relative to the first byte after the header).
// Reading maps the file and checks every entry against the file size up front; reads convert
// F32, F16 and BF16 to float32. Every error exits with status 2 naming the file and tensor.
#ifndef SAFE_SAFETENSORS_H
#define SAFE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef struct {
    char *name;
    char dtype[8];              // "F32", "F16", "BF16", ... (others are listed but not readable)
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t begin, end;          // byte range in the data section
} StEntry;

typedef struct {
    char *path;
    unsigned char *map;         // whole file, read-only
    size_t size;                // file size
    size_t data_start;          // 8 + header length
    int n;
    StEntry *e;                 // (n) in header order
    int n_meta;
    char **meta_key, **meta_val;  // __metadata__ (string -> string)
} SafeTensors;

SafeTensors *safetensors_open(const char *path);
void safetensors_close(SafeTensors *st);
const StEntry *safetensors_find(const SafeTensors *st, const char *name);   // NULL if absent
const char *safetensors_meta(const SafeTensors *st, const char *key);       // NULL if absent
size_t st_numel(int ndim, const int64_t *shape);

// Read `name` into dst as float32. ndim >= 0 also checks the shape (dies with both shapes
// when it differs); ndim < 0 checks only that dst_numel elements are there.
void safetensors_read_f32(const SafeTensors *st, const char *name, float *dst, int ndim,
                          const int64_t *shape, size_t dst_numel);

// A tensor to write (float32).
typedef struct {
    const char *name;
    const float *data;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
} StTensor;

// Write `path` (directly: callers that need atomicity write to a temporary name and rename).
// meta: n_meta pairs (key, value) for __metadata__, may be NULL. Dies (exit 3) on I/O errors.
void safetensors_write(const char *path, const StTensor *t, int n, const char *const *meta_keys,
                       const char *const *meta_vals, int n_meta);

#endif
