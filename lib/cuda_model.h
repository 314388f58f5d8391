// cuda_model.h — the Llama-family decoder on the GPU: model.h's Model, mirrored.
//
// A CudaModel is made from a CPU Model (its parameters uploaded) and gives them back
// (cuda_model_download); in between, forward, backward, the optimiser step and KV-cached
// decoding run on the device. Built only with SAFE_CUDA (the Makefile's CUDA=1): include this
// under #ifdef SAFE_CUDA.
//
// Precision (DESIGN.md "Compute"): fp32 master weights, gradients and AdamW moments; a bf16
// copy of the weights, refreshed by every optimiser step, feeds the matrix products (bf16
// operands, fp32 accumulation); the residual stream, norms and everything after the LM head
// (logits, log-softmax, entropy) are fp32; GEMM inputs, attention and the KV cache are bf16.
//
// Device layout: the same tensors as model.h's flat buffer, regrouped per layer so that the
// products fuse: per layer [attn_norm | wq;wk;wv (QKV,C) | bq;bk;bv | wo | ffn_norm |
// w1;w3 (2F,C) | w2], each tensor starting on a 128-element boundary (cuBLASLt alignment).
// Uploads and downloads permute through a table of segments, so gradients, moments and
// checkpoints are exchanged in model.h's layout.
//
// The training API is row-based, as the RL stages use it: one forward over a padded (B,T)
// batch, then log-probs (or hidden states) at chosen positions only — the LM head runs on
// those rows, not on all B*T — and the backward from d(log-prob), d(entropy) or d(hidden) at
// the same rows. Positions count row-major in the batch: b*T + t.
#ifndef SAFE_CUDA_MODEL_H
#define SAFE_CUDA_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "adamw.h"      // AdamW: moments moved to and from the device
#include "generate.h"   // GenConfig, GenRequest, GenResult: cuda_generate mirrors generate()
#include "model.h"      // Model, ModelConfig

typedef struct CudaModel CudaModel;
typedef struct CudaKV CudaKV;

// Upload m's parameters (fp32 master and bf16 copy). Dies (exit 1) when no GPU is visible or
// the head size is one the attention kernels do not handle.
CudaModel *cuda_model_create(const Model *m);
void cuda_model_free(CudaModel *cm);
const ModelConfig *cuda_model_config(const CudaModel *cm);
void cuda_model_upload(CudaModel *cm, const Model *m);     // parameters host -> device
void cuda_model_download(const CudaModel *cm, Model *m);   // parameters device -> host
// The memory plan: parameters, gradients, moments, activations, in MiB, one line on f.
void cuda_model_report(const CudaModel *cm, FILE *f, const char *who);

// ---- training: forward, rows, backward ----

// Forward over (B,T) (host tokens and mask, model_forward's conventions: mask NULL = all
// valid, tokens at padding not read). Keeps the activations for one backward.
void cuda_model_forward(CudaModel *cm, const int32_t *tokens, const uint8_t *mask, int B, int T);
// Final-norm hidden states (n, C) at positions rows[0..n) of the last forward, to the host.
void cuda_model_hidden_rows(CudaModel *cm, int n, const int32_t *rows, float *out);
// Logits (n, V) fp32 at those positions, to the host (tests; the RL stages use the next one).
void cuda_model_logits_rows(CudaModel *cm, int n, const int32_t *rows, float *out);
// At positions rows[0..n): LM head in fp32 out, log-softmax at temperature temp, log-prob of
// targets[i] and entropy (host outputs; either may be NULL). Keeps logits for the backward.
void cuda_model_logprob_rows(CudaModel *cm, int n, const int32_t *rows, const int32_t *targets, float temp,
                             float *logp, float *entropy);
// Backward of the last cuda_model_logprob_rows from dlogp, dentropy (n, host; either NULL):
// accumulates into the gradients (cuda_model_zero_grad first).
void cuda_model_logprob_rows_backward(CudaModel *cm, const float *dlogp, const float *dentropy);
// Backward from d(hidden) (n, C, host) at positions rows[0..n) of the last forward.
void cuda_model_hidden_rows_backward(CudaModel *cm, int n, const int32_t *rows, const float *dhidden);

// ---- gradients and the optimiser ----

void cuda_model_zero_grad(CudaModel *cm);
void cuda_model_download_grads(const CudaModel *cm, float *host);   // (n_params) model.h layout
void cuda_model_upload_grads(CudaModel *cm, const float *host);
// The flat device gradient buffer (device layout, *n floats with padding): for NCCL.
float *cuda_model_grads_device(CudaModel *cm, size_t *n);
double cuda_model_grad_sumsq(CudaModel *cm);                 // deterministic, in double
long long cuda_model_first_nonfinite_grad(CudaModel *cm);    // model.h index, or -1
void cuda_model_scale_grads(CudaModel *cm, float s);
// One AdamW step (adamw.c's arithmetic) with opt's configuration; the moments live on the
// device from the first step (uploaded from opt->m, opt->v) and opt->step advances here.
void cuda_model_adamw_step(CudaModel *cm, AdamW *opt);
void cuda_model_adamw_download(const CudaModel *cm, AdamW *opt);   // moments -> opt->m, opt->v
// The predictive step limit: keep the weights, later move back to snap + s (now - snap).
void cuda_model_snapshot(CudaModel *cm);
void cuda_model_blend(CudaModel *cm, float s);

// ---- summing the gradients while the backward runs (data parallelism) ----
//
// Armed, the next backward hands fn each gradient bucket as soon as the kernel that writes its
// last gradient has been enqueued: a contiguous slice of the buffer of cuda_model_grads_device,
// so that an all-reduce of it overlaps the rest of the backward. The buckets tile that buffer
// exactly once, in an order fixed by the model and min_floats alone (every rank makes the same
// list): the final norm (with the LM head when it is not tied; written first), the layers from
// the last to the first, then the token embedding (with the tied LM head, which the backward
// writes first and last), each slice joined to the next until it holds min_floats (0: one
// bucket per layer). The last bucket, and any the backward did not reach (a rank without
// response tokens runs no backward), go out from cuda_model_overlap_finish, in the same order.
// fn runs on the caller's thread while the backward is being enqueued; its slice is final once
// the work enqueued on the compute stream so far has run, so fn orders its use after that
// (cuda_comm_after_compute for the communication stream), and the caller must not read or
// write the gradients until the buckets' work has completed. One backward per arming: a
// second one, or cuda_model_zero_grad, while buckets are out stops with an internal error.
typedef void (*CudaGradBucketFn)(void *ctx, float *dev, size_t n, const char *what);
void cuda_model_overlap_arm(CudaModel *cm, size_t min_floats, CudaGradBucketFn fn, void *ctx);
int cuda_model_overlap_armed(const CudaModel *cm);
void cuda_model_overlap_finish(CudaModel *cm);   // the buckets not yet handed out; disarms

// ---- KV-cached decoding ----

CudaKV *cuda_kv_create(CudaModel *cm, int B, int T_max);
void cuda_kv_free(CudaKV *kv);
void cuda_kv_reset_row(CudaKV *kv, int row);
int cuda_kv_len(const CudaKV *kv, int row);
// Append seqs[i] (lens[i] tokens, host) to cache rows rows[i] for i < n, all in one packed
// pass; logits (n, V) fp32 after each row's last new token into logits_dev (DEVICE memory).
void cuda_model_extend(CudaModel *cm, CudaKV *kv, int n, const int *rows, const int32_t *const *seqs,
                       const int *lens, float *logits_dev);
// model_prefill / model_decode with host logits (tests): logits_out (n, V) host or NULL.
void cuda_model_prefill(CudaModel *cm, CudaKV *kv, int n, const int *rows, const int32_t *const *prompts,
                        const int *lens, float *logits_out);
void cuda_model_decode(CudaModel *cm, CudaKV *kv, int n, const int *rows, const int32_t *tokens, float *logits_out);

// generate() on the GPU (lib/cuda_generate.c): the same continuous batching (free rows refilled
// and prefilled in one pass, only running rows decoded), sampling on the device with the CPU's
// Philox streams (kernels/sampler.cu), log-prob and entropy of each drawn token from the fp32
// log-softmax of its logits row. Same results contract as generate(); tokens agree with the
// CPU's where the bf16 model's logits lead the sampler to the same choice.
void cuda_generate(CudaModel *cm, const GenConfig *cfg, const GenRequest *reqs, int n, GenResult *out,
                   GenDoneFn on_done, void *ctx);

#endif
