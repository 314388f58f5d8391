// rmsnorm.cu — RMSNorm forward/backward, and deterministic column sums (the norm weights'
// and the q/k/v biases' gradients).
//
//   out = x * rstd * w,  rstd = 1/sqrt(mean(x^2) + eps)
//   dx += rstd w dy - x rstd^3/C sum_j w_j dy_j x_j ;  dw += sum_rows dy x rstd
//
// v1 (this): one warp per row (rows of a few thousand floats: each lane walks the row with a
//   stride of 32, so every access coalesces), fp32 sums in lanes then a fixed shuffle tree.
//   The weight gradient is a two-pass column sum: blocks of 64 rows write partial sums in
//   double, a second kernel adds the chunks in order — no atomics, so the same bits every
//   run. Not tried yet: vectorised (8 x bf16) stores, fusing the residual add into the norm.
#include "common.cuh"

#define ROWS_PER_BLOCK 4   // warps per block in the row kernels
#define COL_CHUNK 64       // rows per partial sum in the column sums

template <typename TO>
__global__ void rmsnorm_forward_kernel(TO *out, float *rstd, const float *x, const float *w, int N, int C,
                                       float eps) {
    int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const float *xr = x + (size_t)row * C;
    float ss = 0.0f;
    for (int i = lane; i < C; i += 32) ss += xr[i] * xr[i];
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / C + eps);   // IEEE division and sqrt: not the rsqrt approximation
    TO *o = out + (size_t)row * C;
    for (int i = lane; i < C; i += 32) stf(o + i, xr[i] * r * w[i]);
    if (rstd && lane == 0) rstd[row] = r;
}

extern "C" void cuda_rmsnorm_forward(void *out, int out_bf16, float *rstd, const float *x, const float *w, int N,
                                     int C, float eps) {
    if (N <= 0) return;
    int blocks = CEIL_DIV(N, ROWS_PER_BLOCK);
    if (out_bf16)
        rmsnorm_forward_kernel<bf16_t><<<blocks, 32 * ROWS_PER_BLOCK, 0, safe_stream()>>>((bf16_t *)out, rstd, x, w, N,
                                                                                         C, eps);
    else
        rmsnorm_forward_kernel<float><<<blocks, 32 * ROWS_PER_BLOCK, 0, safe_stream()>>>((float *)out, rstd, x, w, N, C,
                                                                                        eps);
    safe_launch_check("rmsnorm_forward", "N=%d C=%d", N, C);
}

// dx (+=) and its bf16 copy, one warp per row
__global__ void rmsnorm_backward_dx_kernel(float *dx, bf16_t *dx16, const float *dout, const float *x, const float *w,
                                           const float *rstd, int N, int C) {
    int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const float *xr = x + (size_t)row * C, *dy = dout + (size_t)row * C;
    float *d = dx + (size_t)row * C;
    float r = rstd[row];
    // out_i = x_i r w_i, dr/dx_i = -r^3 x_i / C  =>  dx_i = r w_i dy_i - x_i r^3/C sum_j w_j dy_j x_j
    float dot = 0.0f;
    for (int i = lane; i < C; i += 32) dot += w[i] * dy[i] * xr[i];
    dot = warp_sum(dot);
    float c = dot * r * r * r / C;
    for (int i = lane; i < C; i += 32) {
        float v = d[i] + (r * w[i] * dy[i] - xr[i] * c);
        d[i] = v;
        if (dx16) dx16[(size_t)row * C + i] = __float2bfloat16_rn(v);
    }
}

// partial[chunk][c] = sum over the chunk's rows of f(row, c), in double; f = dy*x*rstd
// (MODE 0) or x (MODE 1, a bf16 matrix)
template <int MODE>
__global__ void colsum_partial_kernel(double *partial, const float *dy, const float *x, const float *rstd,
                                      const bf16_t *xb, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (c >= C) return;
    int r0 = chunk * COL_CHUNK, r1 = min(N, r0 + COL_CHUNK);
    double acc = 0.0;
    for (int n = r0; n < r1; n++) {
        size_t i = (size_t)n * C + c;
        if (MODE == 0) acc += (double)dy[i] * x[i] * rstd[n];   // the CPU's expression, in double
        else acc += (double)__bfloat162float(xb[i]);
    }
    partial[(size_t)chunk * C + c] = acc;
}

// out[c] += sum over chunks in order
__global__ void colsum_finish_kernel(float *out, const double *partial, int nchunk, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double acc = 0.0;
    for (int k = 0; k < nchunk; k++) acc += partial[(size_t)k * C + c];
    out[c] += (float)acc;
}

template <int MODE>
static void colsum(float *out, const float *dy, const float *x, const float *rstd, const bf16_t *xb, int N, int C,
                   const char *name) {
    if (N <= 0 || C <= 0) return;
    int nchunk = CEIL_DIV(N, COL_CHUNK);
    double *partial = (double *)safe_workspace((size_t)nchunk * C * sizeof(double));
    dim3 grid(CEIL_DIV(C, 128), nchunk);
    colsum_partial_kernel<MODE><<<grid, 128, 0, safe_stream()>>>(partial, dy, x, rstd, xb, N, C);
    safe_launch_check(name, "N=%d C=%d (partial sums)", N, C);
    colsum_finish_kernel<<<CEIL_DIV(C, 128), 128, 0, safe_stream()>>>(out, partial, nchunk, C);
    safe_launch_check(name, "N=%d C=%d (finish)", N, C);
}

extern "C" void cuda_rmsnorm_backward(float *dx, bf16 *dx16, float *dw, const float *dout, const float *x,
                                      const float *w, const float *rstd, int N, int C) {
    if (N <= 0) return;
    rmsnorm_backward_dx_kernel<<<CEIL_DIV(N, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK, 0, safe_stream()>>>(
        dx, (bf16_t *)dx16, dout, x, w, rstd, N, C);
    safe_launch_check("rmsnorm_backward", "N=%d C=%d", N, C);
    // dw_i += sum_n dy_i x_i r_n
    if (dw) colsum<0>(dw, dout, x, rstd, NULL, N, C, "rmsnorm_backward_dw");
}

extern "C" void cuda_colsum_add(float *out, const bf16 *x, int N, int C) {
    colsum<1>(out, NULL, NULL, NULL, (const bf16_t *)x, N, C, "colsum_add");
}
