// adamw.cu — the optimiser on fp32 master weights and moments (writing the bf16 weight copy
// the forward reads in the same pass), the global gradient norm, and element-wise helpers.
//
// AdamW performs lib/adamw.c's operations in the same order with the same constants
// (adamw_scalars), each rounded separately (__fmul_rn/__fadd_rn/__fdiv_rn, IEEE sqrtf): nvcc
// would otherwise contract a*b + c into one FMA and the master weights would drift from the
// CPU optimiser's by an ulp per step. tests/gpu checks bit equality.
//
// The sum of squares runs in double over a fixed grid (each block a fixed slice, its threads
// in a fixed tree), then one block adds the block sums in order: the same bits every run.
//
// v1 (this): one thread per element, grid-stride; memory-bound (AdamW moves 4+4+4+4 bytes in
//   and 4+4+4+2 out per parameter: ~0.5 B parameters in ~4 ms at 3.5 TB/s). Not tried yet:
//   multi-tensor fusion with the norm, float4 accesses.
#include "common.cuh"

#define NORM_BLOCKS 1024
#define NORM_THREADS 256

__global__ void adamw_kernel(float *p, bf16_t *p16, const float *g, float *m, float *v, size_t n, AdamWScalars s) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        float pi = __fmul_rn(p[i], s.decay);                                        // p *= 1 - lr*wd
        float mi = __fadd_rn(__fmul_rn(m[i], s.b1), __fmul_rn(s.one_b1, gi));       // m = b1 m + (1-b1) g
        float vi = __fadd_rn(__fmul_rn(v[i], s.b2), __fmul_rn(s.one_b2, __fmul_rn(gi, gi)));   // v = b2 v + (1-b2) g^2
        float denom = __fadd_rn(__fdiv_rn(sqrtf(vi), s.bc2_sqrt), s.eps);          // sqrt(v_hat) + eps
        float pn = __fadd_rn(pi, __fmul_rn(s.neg_step, __fdiv_rn(mi, denom)));      // p -= lr/bc1 m/denom
        p[i] = pn;
        m[i] = mi;
        v[i] = vi;
        if (p16) p16[i] = __float2bfloat16_rn(pn);
    }
}

extern "C" void cuda_adamw_step(float *p, bf16 *p16, const float *g, float *m, float *v, size_t n,
                                const AdamWScalars *s) {
    if (!n) return;
    adamw_kernel<<<ew_blocks(n, 256), 256, 0, safe_stream()>>>(p, (bf16_t *)p16, g, m, v, n, *s);
    safe_launch_check("adamw", "n=%zu", n);
}

// part[block] = sum of squares of the block's contiguous slice
__global__ void __launch_bounds__(NORM_THREADS) sumsq_partial_kernel(double *part, const float *x, size_t n) {
    __shared__ double sh[32];
    size_t per = (n + gridDim.x - 1) / gridDim.x, lo = blockIdx.x * per, hi = min(n, lo + per);
    double s = 0.0;
    for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x) s += (double)x[i] * x[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void sumsq_finish_kernel(double *out, const double *part, int nb) {
    double s = 0.0;
    for (int i = 0; i < nb; i++) s += part[i];
    *out = s;
}

extern "C" double cuda_sum_squares(const float *x, size_t n) {
    if (!n) return 0.0;
    double *part = (double *)safe_workspace((NORM_BLOCKS + 1) * sizeof(double));
    sumsq_partial_kernel<<<NORM_BLOCKS, NORM_THREADS, 0, safe_stream()>>>(part, x, n);
    safe_launch_check("sum_squares", "n=%zu", n);
    sumsq_finish_kernel<<<1, 1, 0, safe_stream()>>>(part + NORM_BLOCKS, part, NORM_BLOCKS);
    safe_launch_check("sum_squares_finish", "n=%zu", n);
    double r = 0.0;
    cuda_download(&r, part + NORM_BLOCKS, sizeof r, "gradient norm");
    return r;
}

__global__ void first_nonfinite_kernel(unsigned long long *first, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        if (!isfinite(x[i])) atomicMin(first, (unsigned long long)i);
}

extern "C" long long cuda_first_nonfinite(const float *x, size_t n) {
    if (!n) return -1;
    unsigned long long *d = (unsigned long long *)safe_workspace(sizeof *d), h = ~0ULL;
    cuda_upload(d, &h, sizeof h, "non-finite search");
    first_nonfinite_kernel<<<ew_blocks(n, 256), 256, 0, safe_stream()>>>(d, x, n);
    safe_launch_check("first_nonfinite", "n=%zu", n);
    cuda_download(&h, d, sizeof h, "non-finite search");
    return h == ~0ULL ? -1 : (long long)h;
}

__global__ void scale_kernel(float *x, size_t n, float s) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= s;
}

extern "C" void cuda_scale(float *x, size_t n, float s) {
    if (!n) return;
    scale_kernel<<<ew_blocks(n, 256), 256, 0, safe_stream()>>>(x, n, s);
    safe_launch_check("scale", "n=%zu", n);
}

__global__ void lerp_kernel(float *p, const float *p0, size_t n, float s) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = __fadd_rn(p0[i], __fmul_rn(s, __fsub_rn(p[i], p0[i])));   // the step limit's p = before + s (after - before)
}

extern "C" void cuda_lerp(float *p, const float *p0, size_t n, float s) {
    if (!n) return;
    lerp_kernel<<<ew_blocks(n, 256), 256, 0, safe_stream()>>>(p, p0, n, s);
    safe_launch_check("lerp", "n=%zu", n);
}

__global__ void f32_to_bf16_kernel(bf16_t *d, const float *s, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        d[i] = __float2bfloat16_rn(s[i]);
}

__global__ void bf16_to_f32_kernel(float *d, const bf16_t *s, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        d[i] = __bfloat162float(s[i]);
}

extern "C" void cuda_f32_to_bf16(bf16 *dst, const float *src, size_t n) {
    if (!n) return;
    f32_to_bf16_kernel<<<ew_blocks(n, 256), 256, 0, safe_stream()>>>((bf16_t *)dst, src, n);
    safe_launch_check("f32_to_bf16", "n=%zu", n);
}

extern "C" void cuda_bf16_to_f32(float *dst, const bf16 *src, size_t n) {
    if (!n) return;
    bf16_to_f32_kernel<<<ew_blocks(n, 256), 256, 0, safe_stream()>>>(dst, (const bf16_t *)src, n);
    safe_launch_check("bf16_to_f32", "n=%zu", n);
}
