// valuehead.h — the double soft-min critic's value heads (SAFE-SPEC §3) on top of the
// critic backbone's hidden state h (N, C), N = number of token positions:
//
//   x   = LayerNorm(h)                       (C) weight, bias; eps 1e-5; shared by the heads
//   V_k = fc2_k( GELU( fc1_k(x) ) )          fc1_k: Linear(C → Hd), fc2_k: Linear(Hd → 1)
//
// Hd = C/4 (integer division) unless given; GELU is the exact erf form (torch default).
// n_heads = 2 for SAFE (V1, V2; combine with softmin.h), 1 for the PPO baseline (V1 only).
// Linear weights are (out, in) row-major like torch.nn.Linear.
//
// Parameters live in ONE flat buffer (and gradients in another of the same layout), in this
// order — also the order of valuehead_tensors() and of the saved names:
//   value_head.ln.weight (C)  value_head.ln.bias (C)
//   for k = 1..n_heads:
//     value_head.v{k}.fc1.weight (Hd, C)  value_head.v{k}.fc1.bias (Hd)
//     value_head.v{k}.fc2.weight (1, Hd)  value_head.v{k}.fc2.bias (1)
//
// Initialisation (valuehead_init), like PyTorch's defaults: LN weight 1, bias 0; each Linear's
// weight and bias ~ U(−1/√fan_in, 1/√fan_in), drawn in the order above (weight row-major, then
// bias) from splitmix64(seed): x += 0x9E3779B97F4A7C15, then the usual xor-shift-multiply mix;
// u = (x >> 40) · 2⁻²⁴ in [0, 1), value = −b + 2b·u. Not PyTorch's stream: parity tests load
// parameters explicitly.
#ifndef SAFE_VALUEHEAD_H
#define SAFE_VALUEHEAD_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"   // StTensor, for valuehead_st_tensors

#define VALUEHEAD_MAX_HEADS 2
#define VALUEHEAD_LN_EPS 1e-5f

// Typed views into a flat buffer (params or grads). Unused heads are NULL.
typedef struct {
    float *ln_w, *ln_b;                      // (C), (C)
    float *fc1_w[VALUEHEAD_MAX_HEADS];       // (Hd, C)
    float *fc1_b[VALUEHEAD_MAX_HEADS];       // (Hd)
    float *fc2_w[VALUEHEAD_MAX_HEADS];       // (1, Hd)
    float *fc2_b[VALUEHEAD_MAX_HEADS];       // (1)
} ValueHeadViews;

typedef struct {
    int C, Hd, n_heads;
    size_t n_params;
    float *params;        // (n_params)
    float *grads;         // (n_params), zeroed at creation; valuehead_zero_grad: grad_sum rounded
    double *grad_sum;     // (n_params) the gradients as double sums of per-sequence terms
    ValueHeadViews w, g;
    // Activations of the last forward, kept for backward (grown lazily to N rows):
    size_t N, cap;
    float *ln_mean, *ln_rstd;   // (N)  LayerNorm statistics
    float *x;                   // (N, C) LayerNorm output
    float *pre;                 // (n_heads, N, Hd) fc1 outputs (GELU inputs)
    float *act;                 // (n_heads, N, Hd) GELU outputs
    float *dpre;                // (N, Hd) backward scratch
    float *dx;                  // (N, C)  backward scratch
    float *tbuf;                // backward scratch: transposed x, dpre and fc1_w
} ValueHead;

// Entry of the tensor list for checkpoints: a name, the data, and a shape of ndim dims.
typedef struct {
    const char *name;
    float *data;
    int ndim;
    int64_t shape[2];
} ValueHeadTensor;

size_t valuehead_param_count(int C, int Hd, int n_heads);
// hidden 0 → C/4. Dies (exit 1) on C < 1, Hd < 1 or n_heads not 1 or 2. Parameters are
// initialised from `seed` (see above); gradients zeroed.
ValueHead *valuehead_create(int C, int hidden, int n_heads, uint64_t seed);
void valuehead_init(ValueHead *vh, uint64_t seed);
void valuehead_free(ValueHead *vh);
void valuehead_zero_grad(ValueHead *vh);

// h (N, C) → v1 (N), v2 (N) (v2 ignored, may be NULL, when n_heads == 1). Keeps x, pre,
// act and the LN statistics for the backward.
void valuehead_forward(ValueHead *vh, const float *h, size_t N, float *v1, float *v2);
// Backward of the last forward (same h, N): the N rows are nseq sequences of seq_len[s]
// consecutive rows; dv1, dv2 (N) upstream (either may be NULL = zero). Accumulates the
// parameter gradients into vh->grad_sum, each a double sum over the sequences in order of a
// term computed from that sequence alone (so the split of sequences over data-parallel ranks
// does not change it beyond double rounding), then rounds it into vh->grads; dh (N, C) +=
// ∂/∂h (dh may be NULL when the backbone is frozen).
void valuehead_backward(ValueHead *vh, const float *h, size_t N, const int *seq_len, int nseq,
                        const float *dv1, const float *dv2, float *dh);
void valuehead_round_grads(ValueHead *vh);   // grads = (float)grad_sum (after an all-reduce)

// The parameter (grads = 0) or gradient (grads = 1) tensors in the order above with their
// saving names. Returns the count (2 + 4·n_heads ≤ VALUEHEAD_MAX_TENSORS); out needs that
// many entries. Names are static strings; data points into the flat buffer.
#define VALUEHEAD_MAX_TENSORS (2 + 4 * VALUEHEAD_MAX_HEADS)
int valuehead_tensors(ValueHead *vh, int grads, ValueHeadTensor *out);
// The same list as safetensors.h StTensor entries, ready for checkpoint_save's TensorGroup
// {"value_head", t, n} and checkpoint_load_group (which fills vh->params in place).
int valuehead_st_tensors(ValueHead *vh, int grads, StTensor *out);

#endif
