// cuda_backend.h — the C-callable face of the CUDA kernels in kernels/*.cu.
//
// C files include this only under #ifdef SAFE_CUDA (the Makefile defines it when nvcc built
// kernels/). Every pointer argument named for a tensor is DEVICE memory unless it says
// "host". Every function enqueues its work on the compute stream of the process (cuda_init)
// and returns without waiting, except where it returns a value computed on the device. Only
// NCCL uses the second, communication stream (cuda_comm_stream).
//
// Precision contract (DESIGN.md "Compute", SAFE-SPEC "Notation"):
//   bf16 (the type below: raw bfloat16 bits) for weight copies, GEMM inputs, attention
//   inputs and outputs, the KV cache; fp32 for master weights, gradients, AdamW moments, the
//   residual stream, norms' statistics, logits, log-softmax, entropies and every reduction.
//
// Errors: any failing CUDA/cuBLAS call or kernel launch dies with exit 3 naming the call, the
// kernel and the sizes; an allocation that does not fit names the buffer, its size and the
// free memory. SAFE_CUDA_SYNC=1 synchronises after every launch so that an asynchronous fault
// (an illegal address) is reported at the kernel that caused it.
//
// Shapes use the names of model.h: N tokens (B*T), C dim, F hidden, H heads, KV kv heads, hs
// head size, qd = H*hs, kvd = KV*hs, QKV = qd + 2*kvd (fused q|k|v rows), V vocab.
#ifndef SAFE_CUDA_BACKEND_H
#define SAFE_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "adamw.h"     // AdamWScalars: one step's constants, shared with the CPU optimiser
#include "sampler.h"   // SamplerConfig

#ifdef __cplusplus
extern "C" {
#endif

typedef uint16_t bf16;   // bfloat16 bits; device buffers hold __nv_bfloat16 of the same bits

// Host conversions, bit-identical to __float2bfloat16_rn / __bfloat162float.
static inline bf16 bf16_from_float(float f) {
    union { float f; uint32_t u; } x = {f};
    if ((x.u & 0x7fffffffu) > 0x7f800000u) return (bf16)((x.u >> 16) | 0x40u);   // NaN stays NaN
    x.u += 0x7fffu + ((x.u >> 16) & 1u);                                          // round to nearest even
    return (bf16)(x.u >> 16);
}
static inline float bf16_to_float(bf16 h) {
    union { uint32_t u; float f; } x = {(uint32_t)h << 16};
    return x.f;
}

// ---- runtime (kernels/runtime.cu) ----------------------------------------------------------

// GPUs visible to this process; 0 without a driver or a GPU (never dies, prints nothing).
int cuda_device_count(void);
// Once per process: picks $SAFE_CUDA_DEVICE or GPU 0, creates the stream and the cuBLASLt
// handle. Later calls do nothing. Dies (exit 1) when there is no GPU.
void cuda_init(void);
const char *cuda_device_name(void);                   // after cuda_init
void cuda_memory_info(size_t *free_b, size_t *total_b);
void *cuda_malloc(size_t bytes, const char *what);    // what: "KV cache", ... for the message
void cuda_free(void *p);                              // NULL is fine
void cuda_upload(void *dst, const void *src_host, size_t bytes, const char *what);
void cuda_download(void *dst_host, const void *src, size_t bytes, const char *what);   // waits
void cuda_copy(void *dst, const void *src, size_t bytes, const char *what);           // device to device
void cuda_zero(void *p, size_t bytes, const char *what);
void cuda_poison(void *p, size_t bytes);              // tests: every byte 0xFF (NaN as f32 and bf16)
void cuda_sync(const char *what);
// The communication stream (a cudaStream_t, for NCCL): a second, non-blocking stream of the
// highest priority, created by the first of these calls. Work on it overlaps the compute
// stream's; the two are ordered only through these events:
void *cuda_comm_stream(void);
void cuda_comm_after_compute(void);   // comm stream waits for all compute work enqueued so far
void cuda_compute_after_comm(void);   // compute stream waits for all comm work enqueued so far
// Benchmarks: milliseconds of device time between two marks on the stream.
typedef struct CudaTimer CudaTimer;
CudaTimer *cuda_timer_start(void);
double cuda_timer_stop(CudaTimer *t);                 // waits; frees t

// ---- conversions and element-wise helpers (kernels/adamw.cu) -------------------------------

void cuda_f32_to_bf16(bf16 *dst, const float *src, size_t n);
void cuda_bf16_to_f32(float *dst, const bf16 *src, size_t n);
void cuda_scale(float *x, size_t n, float s);                        // x *= s
void cuda_lerp(float *p, const float *p0, size_t n, float s);        // p = p0 + s (p - p0)

// ---- gather / scatter / embedding (kernels/embedding.cu) -----------------------------------

// x (N,C) fp32 = mask ? emb[tokens] : 0. mask may be NULL (all valid).
void cuda_embedding_forward(float *x, const float *emb, const int32_t *tokens, const uint8_t *mask, int N, int C);
// demb (V,C) += the rows of dx grouped by token, deterministically: for u < n_uniq, row
// uniq_tok[u] += sum of dx[positions[j]] for j in [offsets[u], offsets[u+1]), in that order.
void cuda_embedding_backward(float *demb, const float *dx, const int32_t *uniq_tok, const int32_t *offsets,
                             const int32_t *positions, int n_uniq, int C);
// out (n,C) = x[idx] (fp32, or converted to bf16 by the _bf16 form); idx (n) device.
void cuda_gather_rows(float *out, const float *x, const int32_t *idx, int n, int C);
void cuda_gather_rows_bf16(bf16 *out, const float *x, const int32_t *idx, int n, int C);
// x[idx[i]] += in[i] for i < n; the idx must be distinct.
void cuda_scatter_add_rows(float *x, const float *in, const int32_t *idx, int n, int C);

// ---- RMSNorm (kernels/rmsnorm.cu) ----------------------------------------------------------

// out (N,C) = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps); out is bf16 when out_bf16, else
// fp32; rstd (N) may be NULL.
void cuda_rmsnorm_forward(void *out, int out_bf16, float *rstd, const float *x, const float *w, int N, int C, float eps);
// dx (N,C) += d/dx given dout (N,C) fp32, the forward input x and its rstd; dx16 (may be
// NULL) receives bf16(dx) after the update; dw (C) += sum over rows of dout * x * rstd
// (deterministic: fixed row chunks summed in order).
void cuda_rmsnorm_backward(float *dx, bf16 *dx16, float *dw, const float *dout, const float *x, const float *w,
                           const float *rstd, int N, int C);
// out (C) += column sums of x (N,C) bf16, deterministically (bias gradients).
void cuda_colsum_add(float *out, const bf16 *x, int N, int C);

// ---- RoPE (kernels/rope.cu) ----------------------------------------------------------------

// qkv16 (N,QKV) bf16 = rope(qkv32 + bias) on the q and k columns (HF rotate_half, angle
// pos[n] * theta^(-2i/hs) read from the tables cos_t/sin_t (n_pos, hs/2)); v columns get the
// bias only. qkv32 (N,QKV) fp32 is the GEMM output; bias (QKV) or NULL.
void cuda_qkv_bias_rope(bf16 *qkv16, const float *qkv32, const float *bias, const int32_t *pos, const float *cos_t,
                        const float *sin_t, int N, int H, int KV, int hs);
// dqkv (N,QKV) in place: the q and k columns rotated back (the rotation's transpose).
void cuda_rope_backward(bf16 *dqkv, const int32_t *pos, const float *cos_t, const float *sin_t, int N, int H, int KV,
                        int hs);

// ---- attention (kernels/attention.cu, kernels/attention_decode.cu) -------------------------

// 1 when the attention kernels handle head size hs: even, and hs = TPQ*D with TPQ a power of
// two <= 32 and D <= 16 (all of 8, 16, 24, ..., 256 and the usual 48, 64, 80, 96, 128).
int cuda_attention_supported(int hs);
// Causal GQA attention over a padded batch. qkv (B,T,QKV) bf16; mask (B,T) 1 = real token.
// Query (b,t) attends to the real keys s <= t of its row (padding is never attended);
// out (B,T,qd) bf16, lse (B,T,H) the log-sum-exp of each softmax row (scaled scores), both
// zero at padded queries. No (T,T) matrix: online softmax over key tiles.
void cuda_attention_forward(bf16 *out, float *lse, const bf16 *qkv, const uint8_t *mask, int B, int T, int H, int KV,
                            int hs);
// Given dout (B,T,qd): dqkv (B,T,QKV) SET: dq, dk, dv (zero at padding). Recomputes the
// probabilities from lse; deterministic (no atomics): one pass for dq, one for dk/dv.
void cuda_attention_backward(bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const bf16 *out, const float *lse,
                             const uint8_t *mask, int B, int T, int H, int KV, int hs);
// KV cache (L, rows, T_max, kvd) bf16 per layer slice kc/vc (rows, T_max, kvd): store the k
// and v columns of qkv (Ntok,QKV) at (trow[j], pos[j]).
void cuda_kv_store(bf16 *kc, bf16 *vc, const bf16 *qkv, const int32_t *trow, const int32_t *pos, int Ntok, int H,
                   int KV, int hs, int T_max);
// out (Ntok,qd): token j (its q in qkv) attends to cache row trow[j], positions 0..pos[j].
void cuda_attention_decode(bf16 *out, const bf16 *qkv, const bf16 *kc, const bf16 *vc, const int32_t *trow,
                           const int32_t *pos, int Ntok, int H, int KV, int hs, int T_max);

// ---- SwiGLU (kernels/swiglu.cu) ------------------------------------------------------------

// h13 (N,2F): row n holds h1 = x w1^T in columns [0,F) and h3 = x w3^T in [F,2F).
// gate (N,F) = silu(h1) * h3.
void cuda_swiglu_forward(bf16 *gate, const bf16 *h13, int N, int F);
// dh13 (N,2F) SET from dgate (N,F).
void cuda_swiglu_backward(bf16 *dh13, const bf16 *dgate, const bf16 *h13, int N, int F);

// ---- matrix products through cuBLASLt (kernels/gemm.cu) ------------------------------------
// bf16 operands, fp32 accumulation. Row-major shapes as in model.c's matmul_forward.

// out (N,OC) = inp (N,K) @ w^T (w (OC,K)), plus c_in (N,OC) fp32 when not NULL (only with an
// fp32 out; c_in may equal out). out is bf16 when out_bf16.
void cuda_matmul(void *out, int out_bf16, const float *c_in, const bf16 *inp, const bf16 *w, int N, int K, int OC);
// dinp (N,K) = dout (N,OC) @ w (OC,K); bf16 or fp32 out.
void cuda_matmul_dinp(void *dinp, int out_bf16, const bf16 *dout, const bf16 *w, int N, int K, int OC);
// dw (OC,K) fp32 += dout^T (OC,N) @ inp (N,K).
void cuda_matmul_dw(float *dw, const bf16 *dout, const bf16 *inp, int N, int K, int OC);

// ---- log-softmax over the vocabulary, fp32 (kernels/logprob.cu) ----------------------------

// logits (N,V) fp32, temperature temp. logp[i] = log softmax(logits[i]/temp)[targets[i]]
// (skipped when targets or logp is NULL; 0 for a negative target); entropy (N) or NULL;
// stats (N,4) or NULL keeps (row max, log-sum-exp, entropy, 1/sum) for the backward.
void cuda_logprob_forward(const float *logits, int N, int V, float temp, const int32_t *targets, float *logp,
                          float *entropy, float *stats);
// dlogits (N,V) SET = dlogp * dlogp/dz + dentropy * dH/dz (either may be NULL), from the
// forward's stats; bf16 when out_bf16 (the LM head's GEMM input), else fp32. Rows whose
// upstream gradients are both zero get zeros.
void cuda_logprob_backward(void *dlogits, int out_bf16, const float *logits, const float *stats, int N, int V,
                           float temp, const int32_t *targets, const float *dlogp, const float *dentropy);

// ---- optimiser and reductions (kernels/adamw.cu) -------------------------------------------

// One AdamW step over n parameters with the CPU optimiser's exact arithmetic (adamw.c): p,
// m, v fp32 updated in place; p16 (may be NULL) receives bf16(p).
void cuda_adamw_step(float *p, bf16 *p16, const float *g, float *m, float *v, size_t n, const AdamWScalars *s);
// Sum of squares of x (n), in double, deterministic (fixed blocks summed in order). Waits.
double cuda_sum_squares(const float *x, size_t n);
// Index of the first non-finite value of x (n), or -1. Waits.
long long cuda_first_nonfinite(const float *x, size_t n);

// ---- sampling (kernels/sampler.cu) ---------------------------------------------------------

// One token per row of logits (n,V) fp32, exactly as sampler.c's sample_logits decides it,
// with u = philox_uniform(keys[i], counters[i]) (philox.h: the CPU's bits). keys, counters
// (n) device. Writes tokens (n), kept_mass (n), status (n): SAMPLE_OK or SAMPLE_NONFINITE.
// Truncated sampling (top-k, top-p) selects by exact radix passes over the probabilities'
// bits with 2^-62 fixed-point masses: the same set and token as the CPU's sort except when u
// lands within ~1e-16 of a boundary of the cumulative distribution.
void cuda_sample(const float *logits, int n, int V, const SamplerConfig *c, const uint64_t *keys,
                 const uint64_t *counters, int32_t *tokens, float *kept_mass, int32_t *status);
// out (n) = philox_uniform(keys[i], counters[i]): the device's draws, for tests.
void cuda_philox_uniforms(float *out, const uint64_t *keys, const uint64_t *counters, int n);

#ifdef __cplusplus
}
#endif
#endif
