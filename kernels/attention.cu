// attention.cu — causal GQA attention over a padded (B,T) batch, forward and backward,
// flash-style: online softmax over key tiles, no (T,T) matrix anywhere; the forward keeps the
// log-sum-exp of each softmax row and the backward recomputes the probabilities from it.
//
//   s_j = q.k_j / sqrt(hs) over the real keys j <= t of the row (padding never attended)
//   p = softmax(s), o = sum_j p_j v_j, lse = log sum_j exp(s_j)
//   backward (D = do.o):  dv_j += p_j do ;  ds_j = p_j (do.v_j - D) ;  dq += ds_j k_j / sqrt(hs) ;
//                         dk_j += ds_j q / sqrt(hs)
//
// Work split. A query (or, in the dk/dv pass, a key) belongs to a group of TPQ consecutive
// threads (TPQ a power of two, so the group sits inside one warp); each thread of the group
// owns D = hs/TPQ interleaved dimensions (d*TPQ + sub: neighbours read neighbouring shared
// memory words, no bank conflicts) and a dot product is D multiply-adds plus log2(TPQ)
// shuffles. D <= 16 (a D of 17..32 spilled ~10 KB of registers to the stack in the forward:
// those head sizes, e.g. 34 or 50, are refused), so a thread keeps its q, o (or k, v, dk, dv)
// in registers: 95-128 registers per thread, no spills (nvcc -Xptxas -v, CUDA 13.0, sm_90).
//
// Versions:
//   v1 (this): CUDA cores, fp32 math on bf16 tiles staged in shared memory; one block per
//     (query tile of BQ, head, row). Forward and dq in one shape, dk/dv per (key tile, kv head,
//     row) looping over the group's heads: deterministic, no atomics. Expected to be the
//     largest non-GEMM cost of a training step at hs 64 and T ~ 512 (about as many cycles as
//     the layer's GEMMs on tensor cores); untimed so far.
//   next: tensor-core tiles (mma.sync m16n8k16 bf16, or wgmma on sm_90a) for QK^T and PV;
//     skipping fully masked key tiles of left-padded prompts.
#include "common.cuh"

#define ATT_BK 32   // keys per shared-memory tile (forward, dq)
#define ATT_BQ2 32  // queries per shared-memory tile (dk/dv pass)

// TPQ (threads per query) and D (dimensions per thread) for head size hs; 0 if unsupported.
static int attn_split(int hs, int *tpq, int *d) {
    if (hs <= 0 || hs % 2) return 0;
    int need = CEIL_DIV(hs, 16), t = 1;
    while (t < need) t *= 2;
    while (t > 1 && hs % t) t /= 2;
    if (hs / t > 16 || t > 32) return 0;   // D > 16 would spill the register arrays
    *tpq = t;
    *d = hs / t;
    return 1;
}

extern "C" int cuda_attention_supported(int hs) {
    int t, d;
    return attn_split(hs, &t, &d);
}

// queries (or keys) per block: BQ * TPQ threads, at most 512
static int attn_rows_per_block(int tpq) {
    int r = 512 / tpq;
    return r > 64 ? 64 : r;
}

// sum over the TPQ threads of a group (all 32 lanes of the warp must call it)
__device__ __forceinline__ float group_sum(float x, int tpq) {
    for (int o = tpq >> 1; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// ---------------------------------------------------------------------------------------------
// forward: grid (ceil(T/BQ), H, B), block BQ*TPQ; shared: K, V tiles (BK, hs) bf16, key flags

template <int DMAX>
__global__ void __launch_bounds__(512) attn_forward_kernel(bf16_t *out, float *lse, const bf16_t *qkv,
                                                           const uint8_t *mask, int T, int H, int KV, int hs,
                                                           int tpq, int D, int bq, float scale) {
    extern __shared__ __align__(16) unsigned char smem[];
    bf16_t *Ks = (bf16_t *)smem, *Vs = Ks + ATT_BK * hs;
    int *kok = (int *)(Vs + ATT_BK * hs);
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * bq, kh = h / (H / KV);
    const int qd = H * hs, kvd = KV * hs, QKV = qd + 2 * kvd;
    const int tid = threadIdx.x, sub = tid % tpq, t = q0 + tid / tpq;
    const bf16_t *base = qkv + (size_t)b * T * QKV;
    const uint8_t *mrow = mask ? mask + (size_t)b * T : NULL;
    const bool active = t < T && (!mrow || mrow[t]);

    float q[DMAX], o[DMAX];
#pragma unroll
    for (int d = 0; d < DMAX; d++) {
        q[d] = (d < D && active) ? __bfloat162float(base[(size_t)t * QKV + h * hs + d * tpq + sub]) : 0.0f;
        o[d] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const int kend = min(T, q0 + bq);   // the block's last query sees keys up to itself
    for (int k0 = 0; k0 < kend; k0 += ATT_BK) {
        __syncthreads();   // the previous tile is no longer read
        for (int e = tid; e < ATT_BK * hs; e += blockDim.x) {
            int j = e / hs, d = e % hs, s = k0 + j;
            bf16_t kz = __float2bfloat16_rn(0.0f), vz = kz;
            if (s < T) {
                kz = base[(size_t)s * QKV + qd + kh * hs + d];
                vz = base[(size_t)s * QKV + qd + kvd + kh * hs + d];
            }
            Ks[e] = kz;
            Vs[e] = vz;
        }
        for (int j = tid; j < ATT_BK; j += blockDim.x) {
            int s = k0 + j;
            kok[j] = s < T && (!mrow || mrow[s]);
        }
        __syncthreads();
        // scores of this tile (every lane runs the shuffles, active or not)
        float sc[ATT_BK];
        float mt = -INFINITY;
#pragma unroll
        for (int j = 0; j < ATT_BK; j++) {
            float part = 0.0f;
#pragma unroll
            for (int d = 0; d < DMAX; d++)
                if (d < D) part += q[d] * __bfloat162float(Ks[j * hs + d * tpq + sub]);
            part = group_sum(part, tpq);
            bool ok = active && kok[j] && k0 + j <= t;   // causal, real keys only
            sc[j] = ok ? part * scale : -INFINITY;
            mt = fmaxf(mt, sc[j]);
        }
        if (mt == -INFINITY) continue;   // nothing to attend in this tile
        // online softmax: rescale what was accumulated to the new maximum
        float mn = fmaxf(m, mt), alpha = expf(m - mn);
        l *= alpha;
#pragma unroll
        for (int d = 0; d < DMAX; d++) o[d] *= alpha;
#pragma unroll
        for (int j = 0; j < ATT_BK; j++) {
            float p = expf(sc[j] - mn);   // 0 for masked keys
            l += p;
#pragma unroll
            for (int d = 0; d < DMAX; d++)
                if (d < D) o[d] += p * __bfloat162float(Vs[j * hs + d * tpq + sub]);
        }
        m = mn;
    }
    if (t >= T) return;
    bf16_t *orow = out + ((size_t)b * T + t) * qd + h * hs;
    float inv = active ? 1.0f / l : 0.0f;
#pragma unroll
    for (int d = 0; d < DMAX; d++)
        if (d < D) orow[d * tpq + sub] = __float2bfloat16_rn(o[d] * inv);   // padded queries: zero
    if (sub == 0) lse[((size_t)b * T + t) * H + h] = active ? m + logf(l) : 0.0f;
}

// ---------------------------------------------------------------------------------------------
// backward, step 0: Dm (B*T, H) = do . o per query and head

__global__ void attn_rowdot_kernel(float *Dm, const bf16_t *dout, const bf16_t *out, int NH, int H, int hs) {
    int u = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (u >= NH) return;
    int n = u / H, h = u % H;
    const bf16_t *a = dout + ((size_t)n * H + h) * hs, *o = out + ((size_t)n * H + h) * hs;
    float acc = 0.0f;
    for (int d = lane; d < hs; d += 32) acc += __bfloat162float(a[d]) * __bfloat162float(o[d]);
    acc = warp_sum(acc);
    if (lane == 0) Dm[u] = acc;
}

// backward, step 1: dq. Same shape as the forward.
template <int DMAX>
__global__ void __launch_bounds__(512) attn_backward_dq_kernel(bf16_t *dqkv, const bf16_t *dout, const bf16_t *qkv,
                                                               const float *lse, const float *Dm, const uint8_t *mask,
                                                               int T, int H, int KV, int hs, int tpq, int D, int bq,
                                                               float scale) {
    extern __shared__ __align__(16) unsigned char smem[];
    bf16_t *Ks = (bf16_t *)smem, *Vs = Ks + ATT_BK * hs;
    int *kok = (int *)(Vs + ATT_BK * hs);
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * bq, kh = h / (H / KV);
    const int qd = H * hs, kvd = KV * hs, QKV = qd + 2 * kvd;
    const int tid = threadIdx.x, sub = tid % tpq, t = q0 + tid / tpq;
    const bf16_t *base = qkv + (size_t)b * T * QKV;
    const uint8_t *mrow = mask ? mask + (size_t)b * T : NULL;
    const bool active = t < T && (!mrow || mrow[t]);
    const size_t n = (size_t)b * T + t;

    float q[DMAX], dO[DMAX], dq[DMAX];
#pragma unroll
    for (int d = 0; d < DMAX; d++) {
        bool in = d < D && active;
        q[d] = in ? __bfloat162float(base[(size_t)t * QKV + h * hs + d * tpq + sub]) : 0.0f;
        dO[d] = in ? __bfloat162float(dout[n * qd + h * hs + d * tpq + sub]) : 0.0f;
        dq[d] = 0.0f;
    }
    const float L = active ? lse[n * H + h] : 0.0f, Dq = active ? Dm[n * H + h] : 0.0f;
    const int kend = min(T, q0 + bq);
    for (int k0 = 0; k0 < kend; k0 += ATT_BK) {
        __syncthreads();
        for (int e = tid; e < ATT_BK * hs; e += blockDim.x) {
            int j = e / hs, d = e % hs, s = k0 + j;
            bf16_t kz = __float2bfloat16_rn(0.0f), vz = kz;
            if (s < T) {
                kz = base[(size_t)s * QKV + qd + kh * hs + d];
                vz = base[(size_t)s * QKV + qd + kvd + kh * hs + d];
            }
            Ks[e] = kz;
            Vs[e] = vz;
        }
        for (int j = tid; j < ATT_BK; j += blockDim.x) {
            int s = k0 + j;
            kok[j] = s < T && (!mrow || mrow[s]);
        }
        __syncthreads();
#pragma unroll 4
        for (int j = 0; j < ATT_BK; j++) {
            float sp = 0.0f, dp = 0.0f;
#pragma unroll
            for (int d = 0; d < DMAX; d++)
                if (d < D) {
                    sp += q[d] * __bfloat162float(Ks[j * hs + d * tpq + sub]);
                    dp += dO[d] * __bfloat162float(Vs[j * hs + d * tpq + sub]);
                }
            sp = group_sum(sp, tpq);
            dp = group_sum(dp, tpq);
            bool ok = active && kok[j] && k0 + j <= t;
            // p = exp(s*scale - lse) ; ds = p (dp - D) ; dq += ds * scale * k
            float p = ok ? expf(sp * scale - L) : 0.0f;
            float ds = p * (dp - Dq) * scale;
#pragma unroll
            for (int d = 0; d < DMAX; d++)
                if (d < D) dq[d] += ds * __bfloat162float(Ks[j * hs + d * tpq + sub]);
        }
    }
    if (t >= T) return;
    bf16_t *drow = dqkv + n * QKV + h * hs;
#pragma unroll
    for (int d = 0; d < DMAX; d++)
        if (d < D) drow[d * tpq + sub] = __float2bfloat16_rn(dq[d]);   // zero at padded queries
}

// backward, step 2: dk, dv. grid (ceil(T/BKV), KV, B), block BKV*TPQ; each group owns one key
// and loops over the queries at or after it, for every query head of its kv head.
template <int DMAX>
__global__ void __launch_bounds__(512) attn_backward_dkdv_kernel(bf16_t *dqkv, const bf16_t *dout,
                                                                 const bf16_t *qkv, const float *lse,
                                                                 const float *Dm, const uint8_t *mask, int T, int H,
                                                                 int KV, int hs, int tpq, int D, int bkv,
                                                                 float scale) {
    extern __shared__ __align__(16) unsigned char smem[];
    bf16_t *Qs = (bf16_t *)smem, *Os = Qs + ATT_BQ2 * hs;
    float *Ls = (float *)(Os + ATT_BQ2 * hs), *Ds = Ls + ATT_BQ2;
    int *qok = (int *)(Ds + ATT_BQ2);
    const int b = blockIdx.z, kh = blockIdx.y, k0 = blockIdx.x * bkv, group = H / KV;
    const int qd = H * hs, kvd = KV * hs, QKV = qd + 2 * kvd;
    const int tid = threadIdx.x, sub = tid % tpq, s = k0 + tid / tpq;
    const bf16_t *base = qkv + (size_t)b * T * QKV;
    const uint8_t *mrow = mask ? mask + (size_t)b * T : NULL;
    const bool kvalid = s < T && (!mrow || mrow[s]);

    float k[DMAX], v[DMAX], dk[DMAX], dv[DMAX];
#pragma unroll
    for (int d = 0; d < DMAX; d++) {
        bool in = d < D && kvalid;
        k[d] = in ? __bfloat162float(base[(size_t)s * QKV + qd + kh * hs + d * tpq + sub]) : 0.0f;
        v[d] = in ? __bfloat162float(base[(size_t)s * QKV + qd + kvd + kh * hs + d * tpq + sub]) : 0.0f;
        dk[d] = dv[d] = 0.0f;
    }
    for (int h = kh * group; h < (kh + 1) * group; h++) {
        for (int t0 = k0; t0 < T; t0 += ATT_BQ2) {   // causal: only queries t >= the block's first key
            __syncthreads();
            for (int e = tid; e < ATT_BQ2 * hs; e += blockDim.x) {
                int i = e / hs, d = e % hs, t = t0 + i;
                bf16_t qz = __float2bfloat16_rn(0.0f), oz = qz;
                if (t < T) {
                    qz = base[(size_t)t * QKV + h * hs + d];
                    oz = dout[((size_t)b * T + t) * qd + h * hs + d];
                }
                Qs[e] = qz;
                Os[e] = oz;
            }
            for (int i = tid; i < ATT_BQ2; i += blockDim.x) {
                int t = t0 + i;
                int ok = t < T && (!mrow || mrow[t]);
                qok[i] = ok;
                Ls[i] = ok ? lse[((size_t)b * T + t) * H + h] : 0.0f;
                Ds[i] = ok ? Dm[((size_t)b * T + t) * H + h] : 0.0f;
            }
            __syncthreads();
#pragma unroll 4
            for (int i = 0; i < ATT_BQ2; i++) {
                float sp = 0.0f, dp = 0.0f;
#pragma unroll
                for (int d = 0; d < DMAX; d++)
                    if (d < D) {
                        sp += k[d] * __bfloat162float(Qs[i * hs + d * tpq + sub]);
                        dp += v[d] * __bfloat162float(Os[i * hs + d * tpq + sub]);
                    }
                sp = group_sum(sp, tpq);
                dp = group_sum(dp, tpq);
                bool ok = kvalid && qok[i] && t0 + i >= s;
                float p = ok ? expf(sp * scale - Ls[i]) : 0.0f;
                float ds = p * (dp - Ds[i]) * scale;
#pragma unroll
                for (int d = 0; d < DMAX; d++)
                    if (d < D) {
                        dv[d] += p * __bfloat162float(Os[i * hs + d * tpq + sub]);    // dv += p do
                        dk[d] += ds * __bfloat162float(Qs[i * hs + d * tpq + sub]);   // dk += ds q / sqrt(hs)
                    }
            }
        }
    }
    if (s >= T) return;
    bf16_t *drow = dqkv + ((size_t)b * T + s) * QKV;
#pragma unroll
    for (int d = 0; d < DMAX; d++)
        if (d < D) {
            drow[qd + kh * hs + d * tpq + sub] = __float2bfloat16_rn(dk[d]);   // zero at padded keys
            drow[qd + kvd + kh * hs + d * tpq + sub] = __float2bfloat16_rn(dv[d]);
        }
}

// ---------------------------------------------------------------------------------------------
// launchers

static void attn_check(int hs, int H, int KV, int *tpq, int *D, const char *who) {
    if (!attn_split(hs, tpq, D))
        die(EXIT_USAGE, "%s: head size %d is not supported by the CUDA attention kernels (use --device cpu)", who, hs);
    if (KV <= 0 || H % KV) die(EXIT_USAGE, "%s: n_kv_heads %d must divide n_heads %d", who, KV, H);
}

template <int DMAX>
static void launch_forward(bf16_t *out, float *lse, const bf16_t *qkv, const uint8_t *mask, int B, int T, int H,
                           int KV, int hs, int tpq, int D) {
    int bq = attn_rows_per_block(tpq);
    size_t shmem = (size_t)2 * ATT_BK * hs * sizeof(bf16_t) + ATT_BK * sizeof(int);
    dim3 grid(CEIL_DIV(T, bq), H, B);
    float scale = 1.0f / sqrtf((float)hs);
    attn_forward_kernel<DMAX><<<grid, bq * tpq, shmem, safe_stream()>>>(out, lse, qkv, mask, T, H, KV, hs, tpq, D, bq,
                                                                       scale);
}

extern "C" void cuda_attention_forward(bf16 *out, float *lse, const bf16 *qkv, const uint8_t *mask, int B, int T,
                                       int H, int KV, int hs) {
    int tpq, D;
    attn_check(hs, H, KV, &tpq, &D, "attention_forward");
    if (B <= 0 || T <= 0) return;
    bf16_t *o = (bf16_t *)out;
    const bf16_t *x = (const bf16_t *)qkv;
    if (D <= 8) launch_forward<8>(o, lse, x, mask, B, T, H, KV, hs, tpq, D);
    else launch_forward<16>(o, lse, x, mask, B, T, H, KV, hs, tpq, D);
    safe_launch_check("attention_forward", "B=%d T=%d H=%d KV=%d hs=%d", B, T, H, KV, hs);
}

template <int DMAX>
static void launch_backward(bf16_t *dqkv, const bf16_t *dout, const bf16_t *qkv, const float *lse, const float *Dm,
                            const uint8_t *mask, int B, int T, int H, int KV, int hs, int tpq, int D) {
    int bq = attn_rows_per_block(tpq);
    float scale = 1.0f / sqrtf((float)hs);
    size_t sh1 = (size_t)2 * ATT_BK * hs * sizeof(bf16_t) + ATT_BK * sizeof(int);
    attn_backward_dq_kernel<DMAX><<<dim3(CEIL_DIV(T, bq), H, B), bq * tpq, sh1, safe_stream()>>>(
        dqkv, dout, qkv, lse, Dm, mask, T, H, KV, hs, tpq, D, bq, scale);
    safe_launch_check("attention_backward_dq", "B=%d T=%d H=%d KV=%d hs=%d", B, T, H, KV, hs);
    size_t sh2 = (size_t)2 * ATT_BQ2 * hs * sizeof(bf16_t) + ATT_BQ2 * (2 * sizeof(float) + sizeof(int));
    attn_backward_dkdv_kernel<DMAX><<<dim3(CEIL_DIV(T, bq), KV, B), bq * tpq, sh2, safe_stream()>>>(
        dqkv, dout, qkv, lse, Dm, mask, T, H, KV, hs, tpq, D, bq, scale);
    safe_launch_check("attention_backward_dkdv", "B=%d T=%d H=%d KV=%d hs=%d", B, T, H, KV, hs);
}

extern "C" void cuda_attention_backward(bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const bf16 *out,
                                        const float *lse, const uint8_t *mask, int B, int T, int H, int KV, int hs) {
    int tpq, D;
    attn_check(hs, H, KV, &tpq, &D, "attention_backward");
    if (B <= 0 || T <= 0) return;
    int NH = B * T * H;
    float *Dm = (float *)safe_workspace((size_t)NH * sizeof(float));
    attn_rowdot_kernel<<<CEIL_DIV(NH, 8), 256, 0, safe_stream()>>>(Dm, (const bf16_t *)dout, (const bf16_t *)out, NH,
                                                                   H, hs);
    safe_launch_check("attention_backward_rowdot", "B=%d T=%d H=%d hs=%d", B, T, H, hs);
    bf16_t *d = (bf16_t *)dqkv;
    const bf16_t *g = (const bf16_t *)dout, *x = (const bf16_t *)qkv;
    if (D <= 8) launch_backward<8>(d, g, x, lse, Dm, mask, B, T, H, KV, hs, tpq, D);
    else launch_backward<16>(d, g, x, lse, Dm, mask, B, T, H, KV, hs, tpq, D);
}
