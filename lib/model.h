// model.h — the Llama-family decoder on the CPU in fp32: the reference implementation.
//
// Layout conventions (Hugging Face, so HF checkpoints load without reshuffling):
//   weight matrices are (out, in) row-major; RoPE rotates halves (rotate_half), not
//   interleaved pairs — loaders of llama2.c files permute wq/wk rows into this layout.
//
// Shapes: B batch, T time, C dim, F hidden_dim, L layers, H heads, KV kv heads,
//         hs = C/H head size, V vocab.
#ifndef SAFE_MODEL_H
#define SAFE_MODEL_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int dim;          // C
    int hidden_dim;   // F
    int n_layers;     // L
    int n_heads;      // H
    int n_kv_heads;   // KV, divides H
    int vocab_size;   // V
    int max_seq_len;  // longest sequence the model was trained for
    float rope_theta; // 10000 for llama2.c models
    float norm_eps;   // RMSNorm epsilon
    int qkv_bias;     // 1: q/k/v projections have biases (Qwen2)
    int tied;         // 1: LM head is the token embedding
} ModelConfig;

// Typed views into one flat parameter (or gradient) buffer.
typedef struct {
    float *tok_emb;    // (V, C)
    float *attn_norm;  // (L, C)
    float *wq;         // (L, H*hs, C)
    float *wk;         // (L, KV*hs, C)
    float *wv;         // (L, KV*hs, C)
    float *bq;         // (L, H*hs)   NULL unless qkv_bias
    float *bk;         // (L, KV*hs)  NULL unless qkv_bias
    float *bv;         // (L, KV*hs)  NULL unless qkv_bias
    float *wo;         // (L, C, H*hs)
    float *ffn_norm;   // (L, C)
    float *w1;         // (L, F, C)  gate
    float *w2;         // (L, C, F)  down
    float *w3;         // (L, F, C)  up
    float *final_norm; // (C)
    float *lm_head;    // (V, C)  == tok_emb when tied
} ParamViews;

typedef struct ModelActs ModelActs;  // activations kept for backward (model.c)
struct Lora;                         // a low-rank adapter (lora.h)

typedef struct {
    ModelConfig cfg;
    size_t n_params;   // floats in the flat buffers
    float *params;     // (n_params) one allocation
    ParamViews w;
    float *grads;      // (n_params) lazily allocated by model_zero_grad: grad_sum rounded
    double *grad_sum;  // (n_params) the gradient as a double sum of per-sequence terms
                       //   (8 more bytes per parameter: 1.1 GB for a 135M model)
    ParamViews g;
    // outputs of the last model_forward:
    int B, T;
    float *hidden;     // (B, T, C) final-norm output: the "last hidden state"
    float *logits;     // (B, T, V) or NULL when the forward was asked for no logits
    ModelActs *acts;
    struct Lora *lora; // NULL: every parameter trains. Else the base is frozen (no grads,
                       //   grad_sum): the backward gives the adapter its gradients (lora.h)
} Model;

size_t model_param_count(const ModelConfig *cfg);
int model_config_check(const ModelConfig *cfg, char *why, size_t why_len);  // 0 ok
Model *model_create(const ModelConfig *cfg);        // params zeroed
void model_free(Model *m);
void model_init_random(Model *m, uint64_t seed, float std);   // for tests and benchmarks
Model *model_clone(const Model *m);                  // weights only

// Batched forward over (B, T). mask (B, T): 1 = real token, 0 = padding. Prompts may be
// left-padded and responses right-padded: position ids count the valid tokens before each
// position, and padding is never attended to. Fills m->hidden and (when want_logits) m->logits.
// (model.c:) mask NULL means all valid; tokens at padded positions are not read (may be -1);
// hidden and logits rows at padding are exactly zero. Batch-invariant: a sequence's outputs
// are bit-identical alone, padded in any batch, or through the KV cache, and do not depend on
// the number of OpenMP threads (lib/matmul.h). A Model is not thread-safe: one per thread.
void model_forward(Model *m, const int32_t *tokens, const uint8_t *mask, int B, int T, int want_logits);

// Backward of the last model_forward. dlogits (B,T,V) and/or dhidden (B,T,C) may be NULL.
// Accumulates (+=) into m->grad_sum, then rounds it into m->grads; call model_zero_grad
// first. Gradients arriving at padded positions are dropped (they must be finite; zero is
// usual).
// Every parameter gradient is a double sum, over the batch's rows in order, of terms that
// depend on one row (sequence) only: weight matrices take each row's fp32 product over its
// own positions (matmul_nt_segsum), norm weights and biases each row's own sum, embeddings
// each position's fp32 gradient. So the gradient of a batch equals the double sum of its
// sequences' gradients taken one at a time, up to the rounding of double sums (~1e-16
// relative): data-parallel ranks that sum their grad_sum in double get the one-rank
// gradient whatever the split (tests/test_dp.sh).
void model_backward(Model *m, const float *dlogits, const float *dhidden);
// The same with logits at chosen positions only: rows (n) are positions b*T + t of the last
// forward, valid and in increasing order (so each sequence's rows are consecutive), and
// dlogits is (n, V) for those rows. Training asks for the response positions only, so the LM
// head's product skips prompts and padding (and no (B,T,V) buffer exists).
void model_backward_rows(Model *m, int n, const int *rows, const float *dlogits, const float *dhidden);
// Logits (n, V) at positions rows (as above) of the last forward (run it with want_logits 0):
// bit-identical to those rows of the full logits. The buffer is the model's, valid until the
// next forward; asking again for the same rows returns it without recomputing.
const float *model_logits_rows(Model *m, int n, const int *rows);
// Zero the gradients and their double sums (allocated on first use); with an adapter, its.
void model_zero_grad(Model *m);
// grads = (float)grad_sum (after an all-reduce of grad_sum); with an adapter, its.
void model_round_grads(Model *m);
// What trains: the model's parameters, or its adapter's (lora.h). Views of the same buffers.
typedef struct {
    size_t n;
    float *params, *grads;   // (n) grads NULL before the first model_zero_grad
    double *grad_sum;        // (n)
} Trainable;
Trainable model_trainable(const Model *m);

// ---- incremental decoding ----
typedef struct {
    int B, T_max, L, kv_dim;
    float *k, *v;      // (L, B, T_max, KV*hs)
    int *len;          // (B) tokens cached per row
} KVCache;

KVCache *kvcache_create(const ModelConfig *cfg, int B, int T_max);
void kvcache_free(KVCache *kv);
void kvcache_reset_row(KVCache *kv, int row);
// Append prompts[i] (lens[i] tokens) to rows[i] of the cache for i < n, and write the logits
// after each row's last token to logits_out (n, V). One batched pass.
void model_prefill(Model *m, KVCache *kv, int n, const int *rows, const int32_t *const *prompts,
                   const int *lens, float *logits_out);
// Append one token to each of rows[0..n) and write the next-token logits (n, V).
// Rows not listed are untouched, so finished sequences cost nothing.
void model_decode(Model *m, KVCache *kv, int n, const int *rows, const int32_t *tokens, float *logits_out);

#endif
