// swiglu.cu — the feed-forward gate, forward and backward, on the fused (N, 2F) output of the
// w1|w3 product (row n: h1 in columns [0,F), h3 in [F,2F)).
//
//   gate = silu(h1) * h3,  silu(x) = x sigmoid(x)
//   dh3 = dgate x sig(x) ;  dh1 = dgate h3 sig(x) (1 + x (1 - sig(x)))
//
// v1 (this): one thread per element, grid-stride, fp32 math on bf16 loads. Memory-bound
//   (6 bytes per element forward); next: 8-wide vector loads, or fusing the gate into the
//   w2 product's prologue.
#include "common.cuh"

__global__ void swiglu_forward_kernel(bf16_t *gate, const bf16_t *h13, int N, int F) {
    size_t total = (size_t)N * F;
    for (size_t u = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u < total; u += (size_t)gridDim.x * blockDim.x) {
        size_t n = u / F, i = u % F;
        float x = __bfloat162float(h13[n * 2 * F + i]), h3 = __bfloat162float(h13[n * 2 * F + F + i]);
        gate[u] = __float2bfloat16_rn(x / (1.0f + expf(-x)) * h3);
    }
}

extern "C" void cuda_swiglu_forward(bf16 *gate, const bf16 *h13, int N, int F) {
    size_t total = (size_t)N * F;
    if (!total) return;
    swiglu_forward_kernel<<<ew_blocks(total, 256), 256, 0, safe_stream()>>>((bf16_t *)gate, (const bf16_t *)h13, N,
                                                                            F);
    safe_launch_check("swiglu_forward", "N=%d F=%d", N, F);
}

__global__ void swiglu_backward_kernel(bf16_t *dh13, const bf16_t *dgate, const bf16_t *h13, int N, int F) {
    size_t total = (size_t)N * F;
    for (size_t u = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u < total; u += (size_t)gridDim.x * blockDim.x) {
        size_t n = u / F, i = u % F;
        float x = __bfloat162float(h13[n * 2 * F + i]), h3 = __bfloat162float(h13[n * 2 * F + F + i]);
        float g = __bfloat162float(dgate[u]);
        float sig = 1.0f / (1.0f + expf(-x));
        // gate = x sig(x) h3  =>  dh3 = g x sig ;  dx = g h3 sig (1 + x (1 - sig))
        dh13[n * 2 * F + F + i] = __float2bfloat16_rn(g * x * sig);
        dh13[n * 2 * F + i] = __float2bfloat16_rn(g * h3 * sig * (1.0f + x * (1.0f - sig)));
    }
}

extern "C" void cuda_swiglu_backward(bf16 *dh13, const bf16 *dgate, const bf16 *h13, int N, int F) {
    size_t total = (size_t)N * F;
    if (!total) return;
    swiglu_backward_kernel<<<ew_blocks(total, 256), 256, 0, safe_stream()>>>((bf16_t *)dh13, (const bf16_t *)dgate,
                                                                             (const bf16_t *)h13, N, F);
    safe_launch_check("swiglu_backward", "N=%d F=%d", N, F);
}
