// rope.cu — rotary position embedding on the fused q|k|v rows (HF rotate_half: pairs
// (i, i + hs/2) of each head), with the q/k/v biases added first (Qwen2), and its backward.
//
//   x_i' = x_i cos - x_{i+h} sin ;  x_{i+h}' = x_{i+h} cos + x_i sin ;  angle = pos * theta^(-2i/hs)
//
// Positions come from the mask on the host (the number of real tokens before each position,
// as model.c counts them); the cos/sin tables are model.c's (computed in double, stored as
// float), uploaded once, so both devices rotate by the same angles.
//
// v1 (this): one thread per rotated pair / per v element, grid-stride. Reads the fp32 GEMM
//   output, writes bf16: the only rounding is the final store. Memory-bound (N*QKV*6 bytes).
#include "common.cuh"

// qkv16 (N,QKV) = rope(qkv32 + bias) for q and k, qkv32 + bias for v
__global__ void qkv_bias_rope_kernel(bf16_t *qkv16, const float *qkv32, const float *bias, const int32_t *pos,
                                     const float *cos_t, const float *sin_t, int N, int H, int KV, int hs) {
    int half = hs / 2, qd = H * hs, kvd = KV * hs, QKV = qd + 2 * kvd;
    int pairs = (H + KV) * half;   // rotated pairs per row: q heads then k heads
    size_t per_row = (size_t)pairs + kvd, total = (size_t)N * per_row;
    for (size_t u = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u < total; u += (size_t)gridDim.x * blockDim.x) {
        int n = (int)(u / per_row), r = (int)(u % per_row);
        const float *src = qkv32 + (size_t)n * QKV;
        bf16_t *dst = qkv16 + (size_t)n * QKV;
        if (r < pairs) {
            int head = r / half, i = r % half;   // heads [0,H) are q, [H,H+KV) are k (column offset qd)
            int col = head < H ? head * hs + i : qd + (head - H) * hs + i;
            float a = src[col], b = src[col + half];
            if (bias) { a += bias[col]; b += bias[col + half]; }
            const float c = cos_t[(size_t)pos[n] * half + i], s = sin_t[(size_t)pos[n] * half + i];
            dst[col] = __float2bfloat16_rn(a * c - b * s);
            dst[col + half] = __float2bfloat16_rn(b * c + a * s);
        } else {
            int col = qd + kvd + (r - pairs);   // v: bias only
            float v = src[col];
            if (bias) v += bias[col];
            dst[col] = __float2bfloat16_rn(v);
        }
    }
}

extern "C" void cuda_qkv_bias_rope(bf16 *qkv16, const float *qkv32, const float *bias, const int32_t *pos,
                                   const float *cos_t, const float *sin_t, int N, int H, int KV, int hs) {
    size_t total = (size_t)N * ((size_t)(H + KV) * (hs / 2) + (size_t)KV * hs);
    if (!total) return;
    qkv_bias_rope_kernel<<<ew_blocks(total, 256), 256, 0, safe_stream()>>>((bf16_t *)qkv16, qkv32, bias, pos, cos_t,
                                                                           sin_t, N, H, KV, hs);
    safe_launch_check("qkv_bias_rope", "N=%d H=%d KV=%d hs=%d", N, H, KV, hs);
}

// dqkv (N,QKV): dq and dk pairs rotated back, in place
__global__ void rope_backward_kernel(bf16_t *dqkv, const int32_t *pos, const float *cos_t, const float *sin_t, int N,
                                     int H, int KV, int hs) {
    int half = hs / 2, qd = H * hs, kvd = KV * hs, QKV = qd + 2 * kvd;
    int pairs = (H + KV) * half;
    size_t total = (size_t)N * pairs;
    for (size_t u = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u < total; u += (size_t)gridDim.x * blockDim.x) {
        int n = (int)(u / pairs), r = (int)(u % pairs);
        int head = r / half, i = r % half;
        int col = head < H ? head * hs + i : qd + (head - H) * hs + i;
        bf16_t *d = dqkv + (size_t)n * QKV;
        float da = __bfloat162float(d[col]), db = __bfloat162float(d[col + half]);
        const float c = cos_t[(size_t)pos[n] * half + i], s = sin_t[(size_t)pos[n] * half + i];
        // a' = a c - b s, b' = b c + a s  =>  da = da' c + db' s, db = -da' s + db' c
        d[col] = __float2bfloat16_rn(da * c + db * s);
        d[col + half] = __float2bfloat16_rn(db * c - da * s);
    }
}

extern "C" void cuda_rope_backward(bf16 *dqkv, const int32_t *pos, const float *cos_t, const float *sin_t, int N,
                                   int H, int KV, int hs) {
    size_t total = (size_t)N * (H + KV) * (hs / 2);
    if (!total) return;
    rope_backward_kernel<<<ew_blocks(total, 256), 256, 0, safe_stream()>>>((bf16_t *)dqkv, pos, cos_t, sin_t, N, H, KV,
                                                                           hs);
    safe_launch_check("rope_backward", "N=%d H=%d KV=%d hs=%d", N, H, KV, hs);
}
