// backend.h — where a tool's model runs: the CPU engine (model.c, the fp32 reference) or the
// CUDA one (cuda_model.c, bf16 with fp32 master weights), behind one interface.
//
// The tools hold a Backend around their Model and call these instead of model_* / generate /
// seqbatch_logprobs / adamw_step. On the CPU every call is the call it replaces, on the same
// buffers (what trains, model_trainable: m->params and m->grads, or those of an attached LoRA
// adapter, whose merged weights are refreshed after each step; opt->m/v), so CPU results are
// bit-identical to before. On CUDA the parameters, gradients and moments live on the device
// from backend_create until backend_sync brings them back into the Model and AdamW (before
// saving a checkpoint). With an adapter on CUDA the device runs the model on the merged
// weights and computes every weight's gradient as usual; backend_allreduce_grads brings the
// summed weight gradients to the host and turns them into the adapter's by the chain rule
// (lora_grads_from_full); clipping, AdamW and merging run on the host, which uploads the
// merged weights after each step (the base's gradients are computed but not kept: LoRA saves
// the optimiser state on CUDA, not yet the gradient compute).
//
//   Device d = device_select(o.device);            // --device cpu|cuda (NULL: automatic)
//   Backend *bk = backend_create(m, d, "safe-update", o.quiet);
//   backend_logprobs(bk, sb, T, logp, ent);        // forward + log-softmax at the response tokens
//   backend_zero_grad(bk);
//   backend_logprobs_backward(bk, sb, T, dlogp, dent);
//   backend_allreduce_grads(bk, "policy gradients");
//   double norm = backend_clip_grads(bk, 1.0);
//   backend_adamw_step(bk, opt);
//   backend_sync(bk, opt);  checkpoint_save(...);
//   backend_free(bk);
//
// The RL losses (PPO clip, EPC, entropy bonus, value losses: lib/losses.c) are not kernels:
// on both devices they run on the CPU over the per-token arrays (n_resp floats of log-prob,
// entropy, value) that come back from the device, in double, with one implementation of the
// formulas; only d(log-prob), d(entropy) or d(hidden) go back down. That is O(tokens) work
// beside the O(tokens x parameters) of the model, and it keeps the two devices' loss
// semantics identical by construction. Likewise the critic's value heads (C*C/4 parameters).
#ifndef SAFE_BACKEND_H
#define SAFE_BACKEND_H

#include <stddef.h>

#include "adamw.h"      // AdamW
#include "generate.h"   // GenConfig, GenRequest, GenResult, GenDoneFn
#include "model.h"      // Model
#include "seqbatch.h"   // SeqBatch: padded (prompt, response) batches

typedef enum { DEVICE_CPU = 0, DEVICE_CUDA = 1 } Device;

// The --device value: "cpu", "cuda" or "auto"; NULL means $SAFE_DEVICE when set, else auto.
// auto is cuda when this build has CUDA and a GPU is visible (cudaGetDeviceCount > 0), cpu
// otherwise. "cuda" without a CUDA build or without a GPU exits 1 saying which.
Device device_select(const char *opt);
const char *device_name(Device d);
int device_cuda_built(void);       // 1 when compiled with the CUDA kernels (SAFE_CUDA)
int device_cuda_available(void);   // built and a GPU visible
// The --device lines of a tool's --help.
#define DEVICE_USAGE                                                                           \
    "  --device cpu|cuda        where the model runs (default: cuda when this build has CUDA\n" \
    "                           and a GPU is visible, else cpu; $SAFE_DEVICE overrides)\n"

typedef struct Backend Backend;


// Wrap m (which stays the caller's) on device d; cuda uploads its parameters and, unless
// quiet, prints the memory plan. who names the tool in messages.
Backend *backend_create(Model *m, Device d, const char *who, int quiet);
void backend_free(Backend *bk);
Device backend_device(const Backend *bk);

// Forward over sb; log-prob of every response token (predicted at the column before it) and
// the entropy there, at temperature temp, fp32 over the full vocabulary: (sb->n_resp) each,
// either may be NULL. Keeps what the backward needs.
void backend_logprobs(Backend *bk, const SeqBatch *sb, float temp, float *logp, float *entropy);
// Backward of the last backend_logprobs (same sb and temp) from dlogp, dentropy (n_resp,
// either NULL): accumulates into the gradients.
void backend_logprobs_backward(Backend *bk, const SeqBatch *sb, float temp, const float *dlogp,
                               const float *dentropy);
// Forward over sb without the LM head; final-norm hidden states at the predicting positions
// (sb->n_resp, C), and the backward from their gradient.
void backend_hidden(Backend *bk, const SeqBatch *sb, float *hidden);
void backend_hidden_backward(Backend *bk, const SeqBatch *sb, const float *dhidden);

// Zero the gradients. cuda with several ranks and NCCL: also arms the next backward to sum
// its gradients as it goes (below), so call it once before each backward that
// backend_allreduce_grads follows, as the tools do (zero, one backward, all-reduce).
void backend_zero_grad(Backend *bk);
// Sum the gradients over the ranks of comm.h (nothing with one rank). cpu: the double
// gradient sums (model.h) in double, then rounded: the same gradient as one rank up to
// double rounding. cuda: fp32 NCCL on the device buffer when this build has NCCL, else
// through the host (fp32 sums, so only within fp32 reduction-order rounding of one rank).
// With NCCL the sum overlaps the backward: as soon as the backward has written a layer's
// last gradient, an all-reduce of that layer's slice (layers joined into buckets of at least
// SAFE_NCCL_BUCKET_MB, 16 MiB by default, 0 one per layer: cuda_model_overlap_arm) starts on a
// second CUDA stream, after an event on the compute stream, while the earlier layers compute;
// this call issues the rest (the embedding, tied LM head), waits for all of them under the
// comm timeout, and makes the compute stream wait for them before the clip and AdamW. The
// result is the one-call all-reduce's up to fp32 summation order (bit for bit with 2 ranks).
// SAFE_NCCL_OVERLAP=0 instead sums the whole buffer in one call after the backward; every
// rank must see the same SAFE_NCCL_OVERLAP and SAFE_NCCL_BUCKET_MB (checked at the first
// zeroing: exit 1). SAFE_NCCL=0 sends the gradients through the host even with NCCL built;
// SAFE_NCCL=1 uses NCCL even with one rank (a one-rank communicator: the NCCL code runs on a
// single GPU, though NCCL's one-rank in-place all-reduce does no work). Honest note: compiled and checked on the CPU emulator
// only (its NCCL stand-in, tests/test_nccl_emu.sh), not yet run on GPUs
// (tests/gpu/multi_gpu.sh compares the modes on 1 GPU and on 2 or more).
void backend_allreduce_grads(Backend *bk, const char *what);
// The gradients in model.h's layout on the host when $SAFE_DUMP_GRADS is set (for
// comm_dump_grads; cuda downloads them), else m->grads on the CPU and NULL on cuda.
const float *backend_grads_for_dump(Backend *bk);
// Index of the first non-finite gradient (model.h layout), or -1.
long long backend_first_nonfinite_grad(Backend *bk);
// grad_clip (adamw.h) on the gradients: returns the L2 norm, scales by max_norm/(norm+1e-6)
// when max_norm > 0 and the norm exceeds it.
double backend_clip_grads(Backend *bk, double max_norm);
void backend_scale_grads(Backend *bk, float s);
// One AdamW step (opt's configuration and moments; cuda keeps the moments on the device).
void backend_adamw_step(Backend *bk, AdamW *opt);
// The predictive step limit: remember the weights; later set w = w0 + s (w - w0).
void backend_snapshot(Backend *bk);
void backend_blend(Backend *bk, float s);
// Parameters (and opt's moments when opt is not NULL) back into the Model / AdamW.
void backend_sync(Backend *bk, AdamW *opt);

// generate() on this backend (cuda: lib/cuda_generate.c).
void backend_generate(Backend *bk, const GenConfig *cfg, const GenRequest *reqs, int n, GenResult *out,
                      GenDoneFn on_done, void *ctx);

#endif
