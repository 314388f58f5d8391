// common.cuh — what every kernels/*.cu file shares: error checks that die with exit 3, the
// process's stream, bf16 loads/stores, warp and block reductions, a grow-only workspace.
#ifndef SAFE_KERNELS_COMMON_CUH
#define SAFE_KERNELS_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

extern "C" {
#include "common.h"         // die, exit codes
}
#include "cuda_backend.h"   // the C API these files implement (extern "C" inside)

typedef __nv_bfloat16 bf16_t;   // device view of the API's bf16 bits

// The stream every kernel and every cuBLASLt call goes to (runtime.cu).
cudaStream_t safe_stream(void);
// Scratch device memory shared by the kernels of one call (never two calls at once: one
// stream, work enqueued in order). Grows, never shrinks; the old block is freed after a sync.
void *safe_workspace(size_t bytes);
// Second, independent workspace (the sampler needs two scratch buffers at once).
void *safe_workspace2(size_t bytes);
// After a launch: dies naming the kernel and the sizes when the launch failed (and, with
// SAFE_CUDA_SYNC=1, when the kernel itself faulted).
void safe_launch_check(const char *kernel, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// CUDA_CHECK(call, "fmt", ...): dies with exit 3 naming the call, the error and the sizes.
#define CUDA_CHECK(call, ...)                                                                    \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        if (e_ != cudaSuccess) {                                                                 \
            char sz_[256];                                                                       \
            snprintf(sz_, sizeof sz_, __VA_ARGS__);                                              \
            die(EXIT_RUNTIME, "CUDA error in %s (%s:%d): %s [%s]", #call, __FILE__, __LINE__,    \
                cudaGetErrorString(e_), sz_);                                                    \
        }                                                                                        \
    } while (0)

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

__device__ __forceinline__ float ldf(const bf16_t *p) { return __bfloat162float(*p); }
__device__ __forceinline__ float ldf(const float *p) { return *p; }
__device__ __forceinline__ void stf(bf16_t *p, float x) { *p = __float2bfloat16_rn(x); }
__device__ __forceinline__ void stf(float *p, float x) { *p = x; }

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ double warp_sum_d(double x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

// Block-wide reductions for blockDim.x a multiple of 32 (<= 1024). Every thread gets the
// result. The order is fixed (lanes, then warps in order), so results are deterministic.
// sh: shared scratch of 32 elements. Contains __syncthreads: call from all threads.
template <typename T>
__device__ __forceinline__ T block_sum(T x, T *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    __syncthreads();   // sh may still be read from a previous call
    if (lane == 0) sh[w] = x;
    __syncthreads();
    T t = 0;
    for (int i = 0; i < nw; i++) t += sh[i];
    return t;
}
__device__ __forceinline__ float block_max(float x, float *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) sh[w] = x;
    __syncthreads();
    float t = -INFINITY;
    for (int i = 0; i < nw; i++) t = fmaxf(t, sh[i]);
    return t;
}

// Grid-stride loop bounds for element-wise kernels over n (size_t) elements.
static inline int ew_blocks(size_t n, int threads) {
    size_t b = (n + threads - 1) / threads;
    return (int)(b < 65536 ? (b ? b : 1) : 65536);
}

#endif
