// embedding.cu — token embedding gather and its deterministic scatter-add backward, and the
// row gathers/scatters that move hidden states between the padded (B,T) batch and the packed
// response positions.
//
// v1 (this): one thread per element, grid-stride; rows are contiguous, so loads and stores
//   coalesce (these kernels move N*C floats once: memory-bound, a few microseconds). The
//   backward groups positions by token on the host (CSR, positions ascending), so each
//   vocabulary row is summed by one block in the CPU's order: no atomics, the same bits on
//   every run. Not tried yet: float4 accesses.
#include "common.cuh"

// x (N,C) = mask ? emb[tok] : 0
__global__ void embedding_forward_kernel(float *x, const float *emb, const int32_t *tokens, const uint8_t *mask,
                                         int N, int C) {
    size_t total = (size_t)N * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t n = i / C, c = i % C;
        x[i] = (!mask || mask[n]) ? emb[(size_t)tokens[n] * C + c] : 0.0f;
    }
}

extern "C" void cuda_embedding_forward(float *x, const float *emb, const int32_t *tokens, const uint8_t *mask, int N,
                                       int C) {
    size_t total = (size_t)N * C;
    if (!total) return;
    embedding_forward_kernel<<<ew_blocks(total, 256), 256, 0, safe_stream()>>>(x, emb, tokens, mask, N, C);
    safe_launch_check("embedding_forward", "N=%d C=%d", N, C);
}

// block u: demb[uniq_tok[u]] += sum_j dx[positions[j]], j in [offsets[u], offsets[u+1]) in order
__global__ void embedding_backward_kernel(float *demb, const float *dx, const int32_t *uniq_tok,
                                          const int32_t *offsets, const int32_t *positions, int C) {
    int u = blockIdx.x;
    int j0 = offsets[u], j1 = offsets[u + 1];
    float *row = demb + (size_t)uniq_tok[u] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = row[c];
        // x = tok_emb[token]: every occurrence adds its gradient, in position order
        for (int j = j0; j < j1; j++) acc += dx[(size_t)positions[j] * C + c];
        row[c] = acc;
    }
}

extern "C" void cuda_embedding_backward(float *demb, const float *dx, const int32_t *uniq_tok, const int32_t *offsets,
                                        const int32_t *positions, int n_uniq, int C) {
    if (n_uniq <= 0) return;
    embedding_backward_kernel<<<n_uniq, C < 256 ? 32 * CEIL_DIV(C, 32) : 256, 0, safe_stream()>>>(
        demb, dx, uniq_tok, offsets, positions, C);
    safe_launch_check("embedding_backward", "unique tokens=%d C=%d", n_uniq, C);
}

template <typename TO>
__global__ void gather_rows_kernel(TO *out, const float *x, const int32_t *idx, int n, int C) {
    size_t total = (size_t)n * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / C, c = i % C;
        stf(out + i, x[(size_t)idx[r] * C + c]);
    }
}

extern "C" void cuda_gather_rows(float *out, const float *x, const int32_t *idx, int n, int C) {
    size_t total = (size_t)n * C;
    if (!total) return;
    gather_rows_kernel<float><<<ew_blocks(total, 256), 256, 0, safe_stream()>>>(out, x, idx, n, C);
    safe_launch_check("gather_rows", "n=%d C=%d", n, C);
}

extern "C" void cuda_gather_rows_bf16(bf16 *out, const float *x, const int32_t *idx, int n, int C) {
    size_t total = (size_t)n * C;
    if (!total) return;
    gather_rows_kernel<bf16_t><<<ew_blocks(total, 256), 256, 0, safe_stream()>>>((bf16_t *)out, x, idx, n, C);
    safe_launch_check("gather_rows_bf16", "n=%d C=%d", n, C);
}

__global__ void scatter_add_rows_kernel(float *x, const float *in, const int32_t *idx, int n, int C) {
    size_t total = (size_t)n * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / C, c = i % C;
        x[(size_t)idx[r] * C + c] += in[i];   // distinct rows: no two threads meet
    }
}

extern "C" void cuda_scatter_add_rows(float *x, const float *in, const int32_t *idx, int n, int C) {
    size_t total = (size_t)n * C;
    if (!total) return;
    scatter_add_rows_kernel<<<ew_blocks(total, 256), 256, 0, safe_stream()>>>(x, in, idx, n, C);
    safe_launch_check("scatter_add_rows", "n=%d C=%d", n, C);
}
