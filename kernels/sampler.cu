// sampler.cu — temperature / top-k / top-p sampling on the GPU, one block per row, making
// sampler.c's decisions with the CPU's random numbers (philox.h: the same Philox4x32-10 bits
// for the same stream key and counter).
//
// sampler.c, restated:
//   p = softmax(z / T) (max subtracted; sum in double; p *= (float)(1/sum))
//   greedy: argmax (lowest index among equal maxima), kept mass p[argmax]
//   no truncation: invert the CDF in token order at r = u * sum * (1/sum)
//   else candidates = top_k tokens by (p desc, index asc) — or, top-p alone, those with
//   p >= (1 - top_p)/(V - 1) — sorted by (p desc, index asc); with top-p keep the shortest
//   prefix whose mass reaches top_p * (candidates' mass); invert the CDF of what is kept, most
//   likely first, at r = u * kept mass.
//
// Sorting a 150k vocabulary per row is what the GPU avoids: every "prefix of the sorted
// order" above is found by a radix select over the float bits of p (non-negative floats
// order like their bits): four passes of 8 bits, each a 256-bucket histogram in shared memory,
// walked from the top bucket down. Counts (top-k) are exact integers; masses (top-p and the
// inverse CDF) are 2^-62 fixed-point integers, so the shared-memory atomics are exact and
// order-independent: the result is deterministic, and equals the CPU's except where r or the
// top-p target falls within ~1e-16 of a boundary of the cumulative distribution (where double
// sums in a different order may round the other way). Ties at the threshold value are taken
// in index order by an ordered count over contiguous per-thread chunks, as the CPU's
// (p desc, index asc) order does.
//
// v1 (this): one block of 512 threads per row; the row's probabilities are kept in a global
//   scratch (n, V) and re-read by each pass (L2-resident for a decoding batch). The plain path
//   is two passes (softmax, chunked CDF); top-k/top-p add up to 12 radix passes. Untimed.
#include "common.cuh"

#include "philox.h"   // philox_uniform: the CPU sampler's draws

#define SAMP_THREADS 512

__device__ __forceinline__ uint32_t fbits(float x) { return __float_as_uint(x); }
__device__ __forceinline__ unsigned long long fixp(float p) {   // p in [0,1] -> p * 2^62
    return __double2ull_rn((double)p * 4611686018427387904.0);
}

// Which tokens are in play: level 0 all, 1 the candidates, 2 the kept set.
struct SampleSets {
    int use_k, only_argmax, use_p, argmax;
    uint32_t tk;          // top-k threshold bits: p > tk, or p == tk with index <= tk_cut
    int tk_cut;
    uint32_t cutoff;      // top-p alone: p >= cutoff (bits)
    uint32_t tp;          // top-p threshold bits among candidates
    int tp_cut;
};

__device__ __forceinline__ bool in_level(const SampleSets &s, int level, int i, uint32_t pb) {
    if (level == 0) return true;
    bool cand = s.use_k ? (pb > s.tk || (pb == s.tk && i <= s.tk_cut)) : s.only_argmax ? i == s.argmax : pb >= s.cutoff;
    if (level == 1 || !cand) return cand;
    return !s.use_p || pb > s.tp || (pb == s.tp && i <= s.tp_cut);
}

enum { SEL_COUNT_GE = 0, SEL_MASS_GE = 1, SEL_MASS_GT = 2 };

struct SampleShared {
    unsigned long long hist[256];
    unsigned long long acc;
    uint32_t prefix;
    int found, result;
    int cnt[SAMP_THREADS];
    double dsum[SAMP_THREADS];
    float fred[32];
    double dred[32];
    int ired[32];
};

// Radix select over the bits of p among the level's tokens, from the largest value down: the
// value T at which the accumulated weight (count, or fixed-point mass) first reaches target
// (>= for SEL_*_GE, > for SEL_MASS_GT). *above = weight of the level's tokens with p > T.
// Returns 0 when the whole level's weight does not reach the target.
__device__ int radix_select(const float *p, int V, const SampleSets &s, int level, int mode,
                            unsigned long long target, uint32_t *T, unsigned long long *above, SampleShared &sh) {
    if (threadIdx.x == 0) { sh.prefix = 0; sh.acc = 0; sh.found = 1; }
    for (int pass = 0; pass < 4; pass++) {
        const int shift = 24 - 8 * pass;
        for (int d = threadIdx.x; d < 256; d += blockDim.x) sh.hist[d] = 0;
        __syncthreads();
        const uint32_t prefix = sh.prefix;
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            uint32_t pb = fbits(p[i]);
            if (pass > 0 && (pb >> (shift + 8)) != (prefix >> (shift + 8))) continue;
            if (!in_level(s, level, i, pb)) continue;
            atomicAdd(&sh.hist[(pb >> shift) & 255], mode == SEL_COUNT_GE ? 1ULL : fixp(p[i]));
        }
        __syncthreads();
        if (threadIdx.x == 0 && sh.found) {
            unsigned long long acc = sh.acc;
            int chosen = -1;
            for (int d = 255; d >= 0; d--) {
                unsigned long long a = acc + sh.hist[d];
                if (mode == SEL_MASS_GT ? a > target : a >= target) { chosen = d; break; }
                acc = a;
            }
            if (chosen < 0) sh.found = 0;
            else { sh.prefix = prefix | ((uint32_t)chosen << shift); sh.acc = acc; }
        }
        __syncthreads();
    }
    *T = sh.prefix;
    *above = sh.acc;
    int f = sh.found;
    __syncthreads();
    return f;
}

// Index of the j-th (1-based) token of the level whose bits equal T, in index order; -1 if
// there are fewer. Threads own contiguous chunks; thread 0 scans the counts in order.
__device__ int nth_tie(const float *p, int V, const SampleSets &s, int level, uint32_t T, long long j,
                       SampleShared &sh) {
    const int chunk = CEIL_DIV(V, (int)blockDim.x), lo = threadIdx.x * chunk, hi = min(V, lo + chunk);
    int c = 0;
    for (int i = lo; i < hi; i++) {
        uint32_t pb = fbits(p[i]);
        c += pb == T && in_level(s, level, i, pb);
    }
    sh.cnt[threadIdx.x] = c;
    if (threadIdx.x == 0) sh.result = -1;
    __syncthreads();
    if (threadIdx.x == 0) {
        int run = 0;
        for (int t = 0; t < (int)blockDim.x; t++) { int x = sh.cnt[t]; sh.cnt[t] = run; run += x; }
    }
    __syncthreads();
    long long before = sh.cnt[threadIdx.x];
    if (c > 0 && before < j && j <= before + c) {
        long long k = before;
        for (int i = lo; i < hi; i++) {
            uint32_t pb = fbits(p[i]);
            if (pb == T && in_level(s, level, i, pb) && ++k == j) { sh.result = i; break; }
        }
    }
    __syncthreads();
    int r = sh.result;
    __syncthreads();
    return r;
}

__global__ void __launch_bounds__(SAMP_THREADS) sample_kernel(const float *logits, float *prob, int V, SamplerConfig c,
                                                              const uint64_t *keys, const uint64_t *counters,
                                                              int32_t *tokens, float *kept_mass, int32_t *status) {
    __shared__ SampleShared sh;
    const int row = blockIdx.x, tid = threadIdx.x;
    const float *z = logits + (size_t)row * V;
    float *p = prob + (size_t)row * V;

    // max and argmax (lowest index among equal maxima); any NaN or infinity is an error
    float best = -INFINITY;
    int bi = V, bad = 0;
    for (int i = tid; i < V; i += blockDim.x) {
        float x = z[i];
        if (!isfinite(x)) bad = 1;
        else if (x > best) { best = x; bi = i; }   // indices rise within a thread: strict > keeps the lowest
    }
    bad = __syncthreads_or(bad);
    if (bad) {
        if (tid == 0) { status[row] = SAMPLE_NONFINITE; tokens[row] = -1; kept_mass[row] = 0.0f; }
        return;
    }
    const float maxv = block_max(best, sh.fred);
    int cand = best == maxv ? bi : V;
    for (int o = 16; o > 0; o >>= 1) cand = min(cand, __shfl_xor_sync(0xffffffffu, cand, o));
    if ((tid & 31) == 0) sh.ired[tid >> 5] = cand;
    __syncthreads();
    int argmax = V;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) argmax = min(argmax, sh.ired[w]);

    // p_i = exp((z_i - max)/T) / sum, sum in double
    const float inv_t = 1.0f / c.temperature;
    double sum = 0.0;
    for (int i = tid; i < V; i += blockDim.x) {
        float e = expf((z[i] - maxv) * inv_t);
        p[i] = e;
        sum += e;
    }
    sum = block_sum(sum, sh.dred);
    const float inv_sum = (float)(1.0 / sum);
    for (int i = tid; i < V; i += blockDim.x) p[i] *= inv_sum;
    __syncthreads();   // every p is final before any thread reads another's

    const float u = philox_uniform(keys[row], counters[row]);
    if (c.greedy) {
        if (tid == 0) { tokens[row] = argmax; kept_mass[row] = p[argmax]; status[row] = SAMPLE_OK; }
        return;
    }
    const int use_k = c.top_k > 0 && c.top_k < V, use_p = c.top_p < 1.0f;
    if (!use_k && !use_p) {
        // invert the CDF in token order: chunk sums, their prefix, then one thread walks
        const double r = (double)u * sum * inv_sum;
        const int chunk = CEIL_DIV(V, (int)blockDim.x), lo = tid * chunk, hi = min(V, lo + chunk);
        double cs = 0.0;
        int last = -1;
        for (int i = lo; i < hi; i++)
            if (p[i] > 0.0f) { cs += p[i]; last = i; }
        sh.dsum[tid] = cs;
        sh.cnt[tid] = last;
        if (tid == 0) sh.result = -1;
        __syncthreads();
        if (tid == 0) {
            double run = 0.0;
            int t = 0, lastpos = argmax;
            for (; t < (int)blockDim.x; t++) {
                if (sh.cnt[t] >= 0) lastpos = sh.cnt[t];
                if (r < run + sh.dsum[t]) break;
                run += sh.dsum[t];
            }
            sh.ired[0] = t;          // the chunk where the CDF passes r (blockDim: none)
            sh.dred[0] = run;        // the CDF before it
            sh.ired[1] = lastpos;    // rounding: r fell past the last step
        }
        __syncthreads();
        if (tid == sh.ired[0]) {
            double cdf = sh.dred[0];
            int tok = sh.cnt[tid] >= 0 ? sh.cnt[tid] : sh.ired[1];
            for (int i = lo; i < hi; i++) {
                if (p[i] <= 0.0f) continue;
                cdf += p[i];
                if (r < cdf) { tok = i; break; }
            }
            tokens[row] = tok;
            kept_mass[row] = 1.0f;
            status[row] = SAMPLE_OK;
        } else if (tid == 0 && sh.ired[0] >= (int)blockDim.x) {
            tokens[row] = sh.ired[1];
            kept_mass[row] = 1.0f;
            status[row] = SAMPLE_OK;
        }
        return;
    }

    SampleSets s = {};
    s.use_k = use_k;
    s.use_p = 0;   // level 2 is undefined until the top-p threshold is known
    s.argmax = argmax;
    uint32_t T;
    unsigned long long above;
    if (use_k) {
        // the k-th largest p: everything above it, then ties at it by index until k
        radix_select(p, V, s, 0, SEL_COUNT_GE, (unsigned long long)c.top_k, &T, &above, sh);
        s.tk = T;
        s.tk_cut = nth_tie(p, V, s, 0, T, (long long)c.top_k - (long long)above, sh);
    } else {
        // top-p alone: tokens below (1 - top_p)/(V - 1) cannot be in the nucleus
        float cutoff = (1.0f - c.top_p) / (float)(V - 1);
        s.cutoff = fbits(cutoff);
        int any = 0;
        for (int i = tid; i < V; i += blockDim.x) any |= fbits(p[i]) >= s.cutoff;
        any = __syncthreads_or(any);
        s.only_argmax = !any;
    }
    // candidates' mass (fixed point, exact)
    unsigned long long m = 0;
    for (int i = tid; i < V; i += blockDim.x) {
        uint32_t pb = fbits(p[i]);
        if (in_level(s, 1, i, pb)) m += fixp(p[i]);
    }
    m = block_sum(m, (unsigned long long *)sh.dred);
    unsigned long long kept = m;
    if (use_p) {
        // the shortest most-likely prefix whose mass reaches top_p * mass
        unsigned long long target = __double2ull_rn((double)c.top_p * (double)m);
        if (target == 0) target = 1;
        if (radix_select(p, V, s, 1, SEL_MASS_GE, target, &T, &above, sh)) {
            unsigned long long w = fixp(__uint_as_float(T));
            long long j = w ? (long long)((target - above + w - 1) / w) : 1;
            s.tp = T;
            s.tp_cut = nth_tie(p, V, s, 1, T, j, sh);
            kept = above + (unsigned long long)j * w;
        } else {   // rounding: the target is the whole candidate mass
            s.tp = 0;
            s.tp_cut = V;
        }
        s.use_p = 1;
    }
    // invert the CDF of the kept set, most likely first, at r = u * kept mass
    unsigned long long r = __double2ull_rd((double)u * (double)kept);
    int tok = -1;
    if (radix_select(p, V, s, 2, SEL_MASS_GT, r, &T, &above, sh)) {
        unsigned long long w = fixp(__uint_as_float(T));
        long long j = w ? (long long)((r - above) / w) + 1 : 1;
        tok = nth_tie(p, V, s, 2, T, j, sh);
    }
    if (tok < 0) {
        // r fell past the last step: the least likely kept token (highest index among equals)
        uint32_t lo_bits = 0xffffffffu;
        for (int i = tid; i < V; i += blockDim.x) {
            uint32_t pb = fbits(p[i]);
            if (in_level(s, 2, i, pb) && pb < lo_bits) lo_bits = pb;
        }
        for (int o = 16; o > 0; o >>= 1) lo_bits = min(lo_bits, __shfl_xor_sync(0xffffffffu, lo_bits, o));
        if ((tid & 31) == 0) sh.cnt[tid >> 5] = (int)lo_bits;
        __syncthreads();
        uint32_t lb = 0xffffffffu;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) lb = min(lb, (uint32_t)sh.cnt[w]);
        int hi_i = -1;
        for (int i = tid; i < V; i += blockDim.x)
            if (fbits(p[i]) == lb && in_level(s, 2, i, lb)) hi_i = max(hi_i, i);
        for (int o = 16; o > 0; o >>= 1) hi_i = max(hi_i, __shfl_xor_sync(0xffffffffu, hi_i, o));
        __syncthreads();
        if ((tid & 31) == 0) sh.cnt[tid >> 5] = hi_i;
        __syncthreads();
        tok = -1;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) tok = max(tok, sh.cnt[w]);
        if (tok < 0) tok = argmax;
    }
    if (tid == 0) {
        tokens[row] = tok;
        kept_mass[row] = (float)((double)kept * 0x1p-62);
        status[row] = SAMPLE_OK;
    }
}

extern "C" void cuda_sample(const float *logits, int n, int V, const SamplerConfig *c, const uint64_t *keys,
                            const uint64_t *counters, int32_t *tokens, float *kept_mass, int32_t *status) {
    if (n <= 0) return;
    if (!(c->temperature > 0.0f)) die(EXIT_USAGE, "sampler: temperature must be > 0 (got %g)", c->temperature);
    float *prob = (float *)safe_workspace2((size_t)n * V * sizeof(float));
    sample_kernel<<<n, SAMP_THREADS, 0, safe_stream()>>>(logits, prob, V, *c, keys, counters, tokens, kept_mass,
                                                         status);
    safe_launch_check("sample", "n=%d V=%d top_k=%d top_p=%g", n, V, c->top_k, c->top_p);
}

__global__ void philox_kernel(float *out, const uint64_t *keys, const uint64_t *counters, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = philox_uniform(keys[i], counters[i]);
}

extern "C" void cuda_philox_uniforms(float *out, const uint64_t *keys, const uint64_t *counters, int n) {
    if (n <= 0) return;
    philox_kernel<<<CEIL_DIV(n, 256), 256, 0, safe_stream()>>>(out, keys, counters, n);
    safe_launch_check("philox_uniforms", "n=%d", n);
}
