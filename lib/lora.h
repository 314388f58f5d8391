// lora.h — low-rank adapters (LoRA) on the Llama projections.
//
// An adapted projection is W' = W + s B A, with A (r, in), B (out, r) and s = alpha / r
// (alpha / sqrt(r) with rsLoRA). Only A and B train; every base parameter is frozen.
//
// The model always runs on merged weights: lora_merge writes W' into the Model's own
// matrices from a kept copy of W. So the forward pass, generation, the KV cache and the CUDA
// backend need nothing new, and a policy's log-probs are bit-identical whether it is being
// trained or was loaded from its saved adapter (both merge the same way). The backward
// (model.c) goes through W' as usual, skips every base-parameter gradient, and calls
// lora_backward for each adapted projection with its output gradient dy (N, out) and input
// x (N, in):
//     u = x A^T (N, r)      dB += s dy^T u      dA += (s dy B)^T x
// each a double sum of per-sequence fp32 terms like the model's own gradients (model.h), so
// data-parallel ranks still reproduce one rank.
//
// On disk an adapter is a PEFT directory (lora_peft.c): adapter_config.json and
// adapter_model.safetensors, whose base_model_name_or_path names the frozen base.
#ifndef SAFE_LORA_H
#define SAFE_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"   // Model, ModelConfig

// The projections an adapter may sit on, with their Hugging Face module names.
typedef enum { LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN, LORA_NTARGETS } LoraTarget;
extern const char *const lora_target_names[LORA_NTARGETS];   // "q_proj", ..., "down_proj"

typedef struct {
    int r;              // rank, >= 1
    float alpha;        // lora_alpha
    int rslora;         // 1: s = alpha / sqrt(r) (use_rslora), else alpha / r
    unsigned targets;   // bit (1 << LoraTarget) per adapted projection, at least one
} LoraConfig;

typedef struct Lora {
    LoraConfig cfg;
    float scale;                  // s
    int L;                        // layers (every layer is adapted)
    int in[LORA_NTARGETS], out[LORA_NTARGETS];
    size_t n_params;              // floats in params (A and B of every target and layer)
    float *params;                // (n_params)
    float *grads;                 // (n_params) grad_sum rounded; allocated by lora_zero_grad
    double *grad_sum;             // (n_params)
    float *A[LORA_NTARGETS];      // (L, r, in) views into params; NULL when not a target
    float *B[LORA_NTARGETS];      // (L, out, r)
    float *base[LORA_NTARGETS];   // (L, out, in) the frozen base weights W (lora_attach)
    char *base_path;              // base_model_name_or_path written with the adapter
    float *scratch;               // lora_backward and lora_merge working space
    size_t scratch_cap;
} Lora;

// "q_proj,v_proj", "q,k,v,o,gate,up,down", "all" or "all-linear" -> a target mask. 0 = ok,
// else a message in why.
int lora_parse_targets(const char *list, unsigned *targets, char *why, size_t why_len);
// "q_proj,v_proj" for a mask (static buffer).
const char *lora_targets_string(unsigned targets);
int lora_config_check(const LoraConfig *c, char *why, size_t why_len);   // 0 ok

Lora *lora_create(const ModelConfig *mc, const LoraConfig *c);   // params zeroed
void lora_free(Lora *lo);
// PEFT's initialisation: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform with a = sqrt(5)),
// B = 0, so a new adapter leaves the model unchanged. Deterministic for a seed.
void lora_init(Lora *lo, uint64_t seed);

// Keep a copy of m's base weights, hang lo on m (m->lora; m owns it from now on) and merge.
void lora_attach(Model *m, Lora *lo);
// W' = W + s B A for every adapted matrix: after loading, after each optimiser step.
void lora_merge(Model *m);
// Free the adapter and forget it: m keeps the merged weights as plain weights.
void lora_detach(Model *m);

// The adapter's gradients (grads and grad_sum) from full_grads (n_params, model.h layout),
// the gradient of the merged weights W', by the chain rule: dA = s B^T dW', dB = s dW' A^T.
// The CUDA backend's way: its backward gives every weight's gradient on the device.
void lora_grads_from_full(Lora *lo, const Model *m, const float *full_grads);

void lora_zero_grad(Lora *lo);     // grads and grad_sum to zero (allocated on first use)
void lora_round_grads(Lora *lo);   // grads = (float)grad_sum

// The adapter gradients of projection `target` in `layer` (model.c's backward): dy (N, out),
// x (N, in) and xT (in, N) its input; segments as in model.c (one per sequence).
void lora_backward(Lora *lo, int target, int layer, const float *dy, const float *x, const float *xT, int N,
                   const int *seg_start, const int *seg_len, int nseg);

// ---- the training tools' options (lora_train.c) ----

// --lora-r R, --lora-alpha A, --lora-targets LIST of safe-update and safe-critic.
typedef struct {
    LoraConfig cfg;                   // cfg.r 0: no adapter asked for
    int alpha_set, targets_set;
} LoraOptions;

#define LORA_USAGE                                                                                  \
    "  --lora-r R             train a LoRA adapter of rank R on the frozen model (the critic's\n"    \
    "                         backbone; its value heads train in full) instead of its weights;\n"   \
    "                         the output is a PEFT adapter directory. An adapter directory to\n"   \
    "                         go on from (--policy, --critic) goes on training its adapter\n"       \
    "  --lora-alpha A         LoRA scale alpha (8: PEFT's default; the update is alpha/R B A)\n"     \
    "  --lora-targets LIST    adapted projections: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,\n" \
    "                         down_proj (or q,k,v,o,gate,up,down, or all; default q_proj,v_proj)\n"

LoraOptions lora_options_default(void);   // no adapter; alpha 8 and q_proj,v_proj as PEFT's
// One option: name "lora-r", "lora-alpha" or "lora-targets" with its argument (exit 1 on a
// bad value).
void lora_option(LoraOptions *lo, const char *name, const char *arg);
void lora_options_check(const LoraOptions *lo);   // --lora-alpha/--lora-targets need --lora-r

// The model a training tool trains, from path: an adapter directory (its adapter goes on
// training; options given must describe it, else exit 1), a model with a new adapter
// (lo->cfg.r > 0; A from seed, the base named by its absolute path), or the model as it is.
Model *lora_load_trainable(const char *path, const LoraOptions *lo, uint64_t seed);
// The model at path as it is (an adapter directory merged), with a new adapter when
// lo->cfg.r > 0: a new critic's backbone (safe-critic --init-from).
Model *lora_load_new(const char *path, const LoraOptions *lo, uint64_t seed);
// 1 when the AdamW moments saved in path belong to what m trains (an adapter's for its
// adapter, a checkpoint's for its weights; a new adapter on a checkpoint starts from zero).
int lora_resumes_optimizer(const char *path, const Model *m);
// Stop (exit 1) when the output directory is a model that what is read from input (the
// tools' --policy, --critic, --init-from, safe-convert's MODEL) needs: the base of an input
// adapter or one further down its chain, or input itself when m (may be NULL) carries a new
// adapter on it. Replacing the input adapter itself is allowed.
void lora_check_output(const char *output, const char *input, const Model *m);

// ---- PEFT directories (lora_peft.c) ----

// 1 when path is a directory with adapter_config.json (exit 2 when it also has config.json:
// ambiguous).
int lora_is_adapter_dir(const char *path);
// The base model an adapter names, as an absolute path: base_model_name_or_path as written
// (absolute, or from the current directory as PEFT reads it) or from the adapter's directory;
// dies (exit 2) when it is missing or the two relative readings name different files. malloc'd.
char *lora_base_path(const char *dir);
// Read the adapter's config for a base of n_layers layers (exit 2 naming the file and key on
// anything this engine would compute differently from PEFT).
LoraConfig lora_read_config(const char *dir, int n_layers);
// Load the base model and the adapter, attach it (m->lora, base weights frozen, merged).
Model *lora_load_model(const char *dir);
// adapter_config.json and adapter_model.safetensors into dir (checkpoint_save calls it).
void lora_save_files(const char *dir, const Lora *lo);

#endif
