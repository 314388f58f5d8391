// logprob.cu — log-softmax over the full vocabulary in fp32, fused with the gather of the
// sampled token's log-probability and the entropy, and its backward straight to d(logits):
// the seam where the RL losses meet the model (lib/logprob.c is the CPU twin).
//
// With a = (z - max)/T for one row of logits z at temperature T, p = softmax(a):
//   lse = log sum_j e^{a_j} ;  logp_y = a_y - lse ;  H = lse - sum_j p_j a_j
//   d logp_y / d z_j = (1[j=y] - p_j)/T ;  d H / d z_j = -p_j (log p_j + H)/T
//
// The forward keeps (max, lse, H, 1/sum) per row so the backward is one pass: given the
// losses' dlogp and dH per token it writes d(logits) directly — in bf16 when it feeds the LM
// head's backward GEMM. (The two cannot be one kernel: PPO's and EPC's gradients per token
// depend on batch means of the forward's log-probs.)
//
// v1 (this): one block of 256 threads per row; the row is read twice (max, then the sums;
//   the second read mostly hits L2), sums in double per thread and a fixed-order block
//   reduction, as logprob.c sums in double lanes. Memory-bound: N*V*4 bytes per pass.
#include "common.cuh"

#define LP_THREADS 256

__global__ void __launch_bounds__(LP_THREADS) logprob_forward_kernel(const float *logits, int V, float invT,
                                                                     const int32_t *targets, float *logp,
                                                                     float *entropy, float *stats) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    const size_t row = blockIdx.x;
    const float *z = logits + row * V;
    // max for numerical stability
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, z[j]);
    mx = block_max(mx, shf);
    // sum e^a and sum e^a a, a = (z - max)/T <= 0
    double s = 0.0, sa = 0.0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float a = (z[j] - mx) * invT;
        float e = expf(a);
        s += e;
        sa += (double)(e * a);
    }
    s = block_sum(s, shd);
    sa = block_sum(sa, shd);
    if (threadIdx.x != 0) return;
    double lse = log(s);
    double H = lse - sa / s;
    if (logp && targets) {
        int32_t y = targets[row];
        // a negative target is padding: logp 0; a target past the vocabulary cannot be scored
        logp[row] = y < 0 ? 0.0f : y >= V ? NAN : (float)((double)((z[y] - mx) * invT) - lse);
    }
    if (entropy) entropy[row] = (float)H;
    if (stats) {
        stats[row * 4 + 0] = mx;
        stats[row * 4 + 1] = (float)lse;
        stats[row * 4 + 2] = (float)H;
        stats[row * 4 + 3] = (float)(1.0 / s);
    }
}

extern "C" void cuda_logprob_forward(const float *logits, int N, int V, float temp, const int32_t *targets,
                                     float *logp, float *entropy, float *stats) {
    if (!(temp > 0.0f)) die(EXIT_USAGE, "logprob: temperature must be > 0 (got %g)", temp);
    if (N <= 0) return;
    logprob_forward_kernel<<<N, LP_THREADS, 0, safe_stream()>>>(logits, V, 1.0f / temp, targets, logp, entropy, stats);
    safe_launch_check("logprob_forward", "N=%d V=%d", N, V);
}

template <typename TO>
__global__ void __launch_bounds__(LP_THREADS) logprob_backward_kernel(TO *dlogits, const float *logits,
                                                                      const float *stats, int V, float invT,
                                                                      const int32_t *targets, const float *dlogp,
                                                                      const float *dentropy) {
    const size_t row = blockIdx.x;
    const float *z = logits + row * V;
    TO *dz = dlogits + row * V;
    const int32_t y = targets ? targets[row] : -1;
    const float gl = dlogp && y >= 0 ? dlogp[row] : 0.0f;
    const float gh = dentropy ? dentropy[row] : 0.0f;
    if (gl == 0.0f && gh == 0.0f) {   // no gradient reaches this row
        for (int j = threadIdx.x; j < V; j += blockDim.x) stf(dz + j, 0.0f);
        return;
    }
    const float mx = stats[row * 4 + 0], lse = stats[row * 4 + 1], H = stats[row * 4 + 2], inv_sum = stats[row * 4 + 3];
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float a = (z[j] - mx) * invT;
        float p = expf(a) * inv_sum;
        float lp = a - lse;   // log p_j
        // dz_j = [ -gl p_j - gh p_j (log p_j + H) ] / T, and the target's +gl/T
        float g = (-gl * p - gh * p * (lp + H)) * invT;
        if (j == y) g += gl * invT;
        stf(dz + j, g);
    }
}

extern "C" void cuda_logprob_backward(void *dlogits, int out_bf16, const float *logits, const float *stats, int N,
                                      int V, float temp, const int32_t *targets, const float *dlogp,
                                      const float *dentropy) {
    if (!(temp > 0.0f)) die(EXIT_USAGE, "logprob: temperature must be > 0 (got %g)", temp);
    if (N <= 0) return;
    if (dlogp && !targets) die(EXIT_USAGE, "logprob_backward: dlogp given without targets");
    if (out_bf16)
        logprob_backward_kernel<bf16_t><<<N, LP_THREADS, 0, safe_stream()>>>((bf16_t *)dlogits, logits, stats, V,
                                                                            1.0f / temp, targets, dlogp, dentropy);
    else
        logprob_backward_kernel<float><<<N, LP_THREADS, 0, safe_stream()>>>((float *)dlogits, logits, stats, V,
                                                                           1.0f / temp, targets, dlogp, dentropy);
    safe_launch_check("logprob_backward", "N=%d V=%d", N, V);
}
