// attention_decode.cu — attention against the KV cache for prefill and decoding: packed new
// tokens (from any rows, any positions) each attend to their own cache row up to and
// including their position, after their keys and values were stored (model.c's model_extend
// does the same, so a prompt's later tokens see its earlier ones within one prefill call).
//
// Cache layout per layer: (rows, T_max, kvd) bf16 for k and for v; rows are generate()'s
// slots, so finished sequences are simply not listed and cost nothing.
//
// v1 (this): one warp per (new token, head). Keys in chunks of 32: lane j scores key j with a
//   full dot product over its row (16-byte loads when hs is a multiple of 8), the warp keeps an
//   online softmax, and for the weighted sum each lane owns the dimensions lane, lane+32, ...
//   reading the value rows coalesced. No shared memory, no length limit. Memory-bound: each
//   step reads the listed rows' caches once per query head (GQA heads re-read their kv head's
//   rows; L2 catches most of that). Next: one warp per kv head serving its whole group.
#include "common.cuh"

__global__ void kv_store_kernel(bf16_t *kc, bf16_t *vc, const bf16_t *qkv, const int32_t *trow, const int32_t *pos,
                                int Ntok, int qd, int kvd, int T_max) {
    int QKV = qd + 2 * kvd;
    size_t total = (size_t)Ntok * kvd;
    for (size_t u = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u < total; u += (size_t)gridDim.x * blockDim.x) {
        int j = (int)(u / kvd), c = (int)(u % kvd);
        size_t off = ((size_t)trow[j] * T_max + pos[j]) * kvd + c;
        kc[off] = qkv[(size_t)j * QKV + qd + c];
        vc[off] = qkv[(size_t)j * QKV + qd + kvd + c];
    }
}

extern "C" void cuda_kv_store(bf16 *kc, bf16 *vc, const bf16 *qkv, const int32_t *trow, const int32_t *pos, int Ntok,
                              int H, int KV, int hs, int T_max) {
    size_t total = (size_t)Ntok * KV * hs;
    if (!total) return;
    kv_store_kernel<<<ew_blocks(total, 256), 256, 0, safe_stream()>>>((bf16_t *)kc, (bf16_t *)vc,
                                                                      (const bf16_t *)qkv, trow, pos, Ntok, H * hs,
                                                                      KV * hs, T_max);
    safe_launch_check("kv_store", "Ntok=%d KV=%d hs=%d T_max=%d", Ntok, KV, hs, T_max);
}

#define DEC_WARPS 4
#define DEC_MAX_HS 256

// dot of the query (shared, fp32) with one cached key row (bf16, hs contiguous)
__device__ __forceinline__ float key_dot(const float *q, const bf16_t *k, int hs) {
    float acc = 0.0f;
    if ((hs & 7) == 0 && (((uintptr_t)k) & 15) == 0) {
        const uint4 *k4 = (const uint4 *)k;
        for (int i = 0; i < hs / 8; i++) {
            uint4 w = k4[i];
            const __nv_bfloat162 *p = (const __nv_bfloat162 *)&w;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float2 f = __bfloat1622float2(p[e]);
                acc += q[i * 8 + 2 * e] * f.x + q[i * 8 + 2 * e + 1] * f.y;
            }
        }
    } else {
        for (int d = 0; d < hs; d++) acc += q[d] * __bfloat162float(k[d]);
    }
    return acc;
}

__global__ void __launch_bounds__(32 * DEC_WARPS) attn_decode_kernel(bf16_t *out, const bf16_t *qkv, const bf16_t *kc,
                                                                     const bf16_t *vc, const int32_t *trow,
                                                                     const int32_t *pos, int Ntok, int H, int KV,
                                                                     int hs, int T_max, float scale) {
    __shared__ float qs[DEC_WARPS][DEC_MAX_HS];
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int u = blockIdx.x * DEC_WARPS + w;
    if (u >= Ntok * H) return;   // whole warps leave together: no shuffle below misses a lane
    const int j = u / H, h = u % H, kh = h / (H / KV);
    const int qd = H * hs, kvd = KV * hs, QKV = qd + 2 * kvd, nk = pos[j] + 1;
    for (int d = lane; d < hs; d += 32) qs[w][d] = __bfloat162float(qkv[(size_t)j * QKV + h * hs + d]);
    __syncwarp();
    const bf16_t *krow = kc + (size_t)trow[j] * T_max * kvd + kh * hs;
    const bf16_t *vrow = vc + (size_t)trow[j] * T_max * kvd + kh * hs;
    float o[DEC_MAX_HS / 32];
#pragma unroll
    for (int i = 0; i < DEC_MAX_HS / 32; i++) o[i] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int s0 = 0; s0 < nk; s0 += 32) {
        int s = s0 + lane;
        float sc = s < nk ? key_dot(qs[w], krow + (size_t)s * kvd, hs) * scale : -INFINITY;
        float mn = fmaxf(m, warp_max(sc));
        float alpha = expf(m - mn);
        float p = expf(sc - mn);   // 0 past the row's length
        l = l * alpha + warp_sum(p);
#pragma unroll
        for (int i = 0; i < DEC_MAX_HS / 32; i++) o[i] *= alpha;
        int cnt = min(32, nk - s0);
        for (int jj = 0; jj < cnt; jj++) {
            float pj = __shfl_sync(0xffffffffu, p, jj);
            const bf16_t *vr = vrow + (size_t)(s0 + jj) * kvd;
#pragma unroll
            for (int i = 0; i < DEC_MAX_HS / 32; i++) {
                int d = lane + 32 * i;
                if (d < hs) o[i] += pj * __bfloat162float(vr[d]);
            }
        }
        m = mn;
    }
    float inv = 1.0f / l;
    bf16_t *orow = out + (size_t)j * qd + h * hs;
#pragma unroll
    for (int i = 0; i < DEC_MAX_HS / 32; i++) {
        int d = lane + 32 * i;
        if (d < hs) orow[d] = __float2bfloat16_rn(o[i] * inv);
    }
}

extern "C" void cuda_attention_decode(bf16 *out, const bf16 *qkv, const bf16 *kc, const bf16 *vc,
                                      const int32_t *trow, const int32_t *pos, int Ntok, int H, int KV, int hs,
                                      int T_max) {
    if (hs > DEC_MAX_HS || hs <= 0)
        die(EXIT_USAGE, "attention_decode: head size %d is above %d (use --device cpu)", hs, DEC_MAX_HS);
    if (Ntok <= 0) return;
    int units = Ntok * H;
    attn_decode_kernel<<<CEIL_DIV(units, DEC_WARPS), 32 * DEC_WARPS, 0, safe_stream()>>>(
        (bf16_t *)out, (const bf16_t *)qkv, (const bf16_t *)kc, (const bf16_t *)vc, trow, pos, Ntok, H, KV, hs, T_max,
        1.0f / sqrtf((float)hs));
    safe_launch_check("attention_decode", "Ntok=%d H=%d KV=%d hs=%d T_max=%d", Ntok, H, KV, hs, T_max);
}
