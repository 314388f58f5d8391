// gguf.h — read GGUF files (llama.cpp's model format), versions 2 and 3, little-endian.
//
// File layout (https://github.com/ggerganov/ggml/blob/master/docs/gguf.md):
//   "GGUF" u32 version  u64 n_tensors  u64 n_kv
//   n_kv x  { string key, u32 type, value }        metadata
//   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
//   padding to general.alignment (default 32), then the tensor data; each tensor's offset is
//   relative to that data section and a multiple of the alignment.
//   A string is u64 length + bytes (not NUL-terminated); an array is u32 elem_type, u64 count,
//   then the elements.
//
// The file is memory-mapped read-only; everything the getters return points into the map or
// into memory owned by the Gguf and lives until gguf_close. Every size, offset and count is
// checked against the file size at gguf_open, so later getters cannot read out of bounds.
// Errors at open exit with status 2 naming the file; getters of optional keys return a
// "missing" value, the gguf_req_* variants die (exit 2) naming the file and key.
//
// Tensor dimensions are in ggml order: ne[0] is the fastest-varying (row length), so a PyTorch
// weight of shape (out, in) appears as ne = {in, out}.
#ifndef SAFE_GGUF_H
#define SAFE_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"   // Model, ModelConfig: what gguf_load_model builds

// Metadata value types (gguf_type in ggml).
enum {
    GGUF_T_U8 = 0, GGUF_T_I8 = 1, GGUF_T_U16 = 2, GGUF_T_I16 = 3, GGUF_T_U32 = 4, GGUF_T_I32 = 5,
    GGUF_T_F32 = 6, GGUF_T_BOOL = 7, GGUF_T_STRING = 8, GGUF_T_ARRAY = 9, GGUF_T_U64 = 10,
    GGUF_T_I64 = 11, GGUF_T_F64 = 12,
};

// Tensor element types (ggml_type); only these are dequantised.
enum {
    GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q8_0 = 8, GGML_BF16 = 30,
};

#define GGUF_MAX_DIMS 4

// A string inside the map: NOT NUL-terminated; use len.
typedef struct {
    const char *s;
    size_t len;
} GgufStr;

typedef struct {
    GgufStr key;
    uint32_t type;          // GGUF_T_*
    uint32_t arr_type;      // element type when type == GGUF_T_ARRAY
    uint64_t arr_n;         // element count when type == GGUF_T_ARRAY
    const unsigned char *val;  // start of the value (for arrays: of the first element)
    const GgufStr *strs;    // (arr_n) decoded at open when an array of strings, else NULL
    size_t off, end;        // byte range of the whole entry (key, type, value) in the file
} GgufKV;

typedef struct {
    char *name;             // NUL-terminated copy
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS];  // ggml order (ne[0] fastest); unused dims are 1
    uint32_t type;          // GGML_*
    size_t numel;
    size_t nbytes;          // bytes of data (checked to lie inside the file)
    const unsigned char *data;  // into the map
} GgufTensor;

typedef struct {
    char *path;
    unsigned char *map;
    size_t size;
    uint32_t version;       // 2 or 3
    size_t alignment;       // general.alignment, default 32
    int n_kv;
    GgufKV *kv;             // (n_kv) in file order
    int n_tensors;
    GgufTensor *t;          // (n_tensors) in file order
    size_t data_start;      // byte offset of the tensor data section
} Gguf;

Gguf *gguf_open(const char *path);   // dies (exit 2) on anything malformed
void gguf_close(Gguf *g);
int gguf_is_gguf_file(const char *path);  // 1 when the file starts with "GGUF"

// ---- metadata ----
const GgufKV *gguf_find(const Gguf *g, const char *key);  // NULL if absent

// Scalars. Return 1 and set *out when the key exists with a compatible type, else 0 (out
// untouched). Integers convert between all integer types when the value fits; gguf_get_f32
// also accepts f64 and integer values; gguf_get_bool accepts bool and integers.
int gguf_get_u32(const Gguf *g, const char *key, uint32_t *out);
int gguf_get_i32(const Gguf *g, const char *key, int32_t *out);
int gguf_get_u64(const Gguf *g, const char *key, uint64_t *out);
int gguf_get_f32(const Gguf *g, const char *key, float *out);
int gguf_get_bool(const Gguf *g, const char *key, int *out);
// String value: 1 and *out (pointing into the map, not NUL-terminated) when present.
int gguf_get_str(const Gguf *g, const char *key, GgufStr *out);
// String value as a malloc'd NUL-terminated copy, or NULL when absent / not a string.
char *gguf_get_strdup(const Gguf *g, const char *key);

// Arrays. Return the element count (>= 0) when the key is an array of the right element
// type, else -1.
//   gguf_get_str_arr: *out (n) strings into the map (the table is kv->strs, owned by g).
//   gguf_get_i32_arr / gguf_get_f32_arr: malloc'd copy in *out (caller frees); i32 also
//     accepts arrays of any integer type whose values fit, f32 also accepts f64 and integers.
int64_t gguf_get_str_arr(const Gguf *g, const char *key, const GgufStr **out);
int64_t gguf_get_i32_arr(const Gguf *g, const char *key, int32_t **out);
int64_t gguf_get_f32_arr(const Gguf *g, const char *key, float **out);
// Element count and type of an array without decoding: -1 if absent or not an array.
int64_t gguf_arr_len(const Gguf *g, const char *key, uint32_t *elem_type);

// Required variants: die (exit 2) "FILE: metadata key KEY missing or not <type>".
uint32_t gguf_req_u32(const Gguf *g, const char *key);
float gguf_req_f32(const Gguf *g, const char *key);

// ---- tensors ----
const GgufTensor *gguf_tensor(const Gguf *g, const char *name);  // NULL if absent
const char *ggml_type_name(uint32_t type);                       // "Q4_1", "?" if unknown
int ggml_type_supported(uint32_t type);                           // 1 for the types above
// Dequantise the whole tensor into dst (t->numel floats), in ggml element order. Dies (exit 2)
// naming the file and tensor for an unsupported type.
void gguf_dequantize(const Gguf *g, const GgufTensor *t, float *dst);
// Dequantise n elements of a raw block stream of `type` (n a multiple of the block size).
// 0 ok, -1 unsupported type or bad n. Exposed for tests.
int ggml_dequantize_row(uint32_t type, const void *src, float *dst, size_t n);

// ---- writing ----
// Write a GGUF v3 file holding only the metadata entries of g whose key starts with one of
// the n prefixes (entries copied byte for byte, general.architecture always kept) and no
// tensors: e.g. {"tokenizer."} gives a small tokenizer-only file (tokenizer.gguf) that
// gguf_open and the tokenizer read like the full model. Dies (exit 3) on I/O errors.
void gguf_write_meta_subset(const Gguf *g, const char *path, const char *const *prefixes, int n);

// ---- models (llama.cpp naming) ----
// Tensors: token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v (+ .bias for Qwen2),
// attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}, output_norm, output (absent: tied).
// Config from the <general.architecture>.* keys (llama, qwen2): embedding_length, block_count,
// feed_forward_length, attention.head_count(_kv), rope.freq_base,
// attention.layer_norm_rms_epsilon, context_length; vocabulary size from the token list
// (checked against token_embd). Rope scaling and partial rotary dimensions are rejected.
// llama.cpp's converter permutes the q/k rows of "llama" models for its interleaved RoPE;
// the loader undoes that so weights are in our (HF) rotate_half layout. Dies (exit 2).
ModelConfig gguf_model_config(const Gguf *g);
Model *gguf_load_model(const Gguf *g);

#endif
