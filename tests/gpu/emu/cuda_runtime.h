// cuda_runtime.h (emulator) — just enough of CUDA for kernels/*.cu to run on the CPU.
//
// tests/gpu/emu/ runs the real kernel sources as host C++: every CUDA thread of a block is a
// cooperative fiber (started through ucontext, switched with _setjmp/_longjmp), one block at a
// time; __syncthreads() waits for the block's live threads, a shuffle or __syncwarp() for the
// warp's. __shared__ variables become statics (one block runs at a time), dynamic shared
// memory one buffer filled with garbage at each block's start, atomics plain operations (no
// preemption). It checks what the kernels compute and index — barriers, shuffles, tiling,
// masking, unwritten outputs — not speed, the memory model, register limits or cuBLASLt
// (gemm_emu.cpp replaces the products with host loops). `make test-gpu-emu` builds
// tests/gpu/test_kernels.c against it and runs it.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <setjmp.h>
#include <tuple>
#include <ucontext.h>
using std::max;
using std::min;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n)
typedef void *cudaStream_t;
typedef int cudaError_t;
enum { cudaSuccess = 0 };
static inline const char *cudaGetErrorString(int) { return "emulated"; }
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint3 { unsigned x, y, z; };
struct float2 { float x, y; };
struct uint4 { unsigned x, y, z, w; };

struct EmuFiber {
    ucontext_t ctx;
    jmp_buf jb;
    uint3 tid;
    int done, waiting, started;   // waiting: 1 at a block barrier, 2 at a warp barrier
};
struct EmuState {
    EmuFiber *cur;
    dim3 blockIdx_, blockDim_, gridDim_;
    unsigned char *dyn;
    size_t dyncap;
    uint64_t slot[1024];   // shuffle exchange, one word per thread
    int orflag;
};
extern EmuState emu;
#define threadIdx (emu.cur->tid)
#define blockIdx (emu.blockIdx_)
#define blockDim (emu.blockDim_)
#define gridDim (emu.gridDim_)

void emu_wait(int kind);
unsigned char *emu_dyn_smem();
void emu_run(dim3 grid, dim3 block, size_t shmem, void (*body)(void *), void *arg);

static inline void __syncthreads() { emu_wait(1); }
static inline void __syncwarp(unsigned = 0xffffffffu) { emu_wait(2); }
static inline int __syncthreads_or(int p) {
    emu_wait(1);
    if (p) emu.orflag = 1;
    emu_wait(1);
    int r = emu.orflag;
    emu_wait(1);
    if (emu.cur->tid.x == 0) emu.orflag = 0;
    emu_wait(1);
    return r;
}
template <typename T>
static inline T emu_shfl_idx(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    unsigned base = emu.cur->tid.x & ~31u;
    emu.slot[emu.cur->tid.x] = b;
    emu_wait(2);
    uint64_t o = emu.slot[base + (src & 31)];
    emu_wait(2);
    T r;
    memcpy(&r, &o, sizeof(T));
    return r;
}
template <typename T>
static inline T __shfl_xor_sync(unsigned, T v, int o) { return emu_shfl_idx(v, (int)((emu.cur->tid.x & 31) ^ (unsigned)o)); }
template <typename T>
static inline T __shfl_sync(unsigned, T v, int s) { return emu_shfl_idx(v, s); }
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) { unsigned long long o = *p; *p += v; return o; }
static inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v) { unsigned long long o = *p; if (v < o) *p = v; return o; }
// IEEE single operations, never contracted (build with -ffp-contract=off)
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline unsigned long long __double2ull_rn(double x) { return (unsigned long long)llrint(x); }
static inline unsigned long long __double2ull_rd(double x) { return (unsigned long long)floor(x); }
static inline uint32_t __float_as_uint(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float __uint_as_float(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

// kernel<<<grid, block, shmem, stream>>>(args...) is rewritten to emu_launch(kernel, grid,
// block, shmem, stream, args...) by the Makefile's sed.
template <typename K, typename... A>
void emu_launch(K kernel, dim3 grid, dim3 block, size_t shmem, cudaStream_t, A... args) {
    struct Pack {
        K k;
        std::tuple<A...> a;
    } pk{kernel, std::tuple<A...>(args...)};
    emu_run(grid, block, shmem, [](void *p) { Pack *q = (Pack *)p; std::apply(q->k, q->a); }, &pk);
}
