// logprob.c — per-token log-probability and entropy of temperature-scaled logits, and their
// backward. fp32 inputs and outputs; each row's sums are accumulated in double after
// subtracting the row maximum, so large logits neither overflow nor lose the small terms.
//
// With a = z/T (one row of logits z, temperature T), p = softmax(a), lse = log sum_j exp(a_j):
//   logp_y = a_y - lse
//   H      = -sum_j p_j log p_j = lse - sum_j p_j a_j
// and the gradients used by logprob_backward:
//   d logp_y / d z_j = (1[j=y] - p_j) / T
//   d H      / d z_j = -p_j (log p_j + H) / T
#include "logprob.h"

#include "common.h"   // die, xmalloc
#include "mathfn.h"   // exp_approx: vectorisable expf

#include <math.h>
#include <stdlib.h>

// Rows are independent, so threads split rows; a row's reduction stays on one thread and
// runs in a fixed order: results do not depend on the number of threads.
#define LOGPROB_PAR_MIN 65536   // elements below which a parallel region costs more than it saves

typedef double v8d __attribute__((vector_size(64)));

static inline double lanes_sum_d(v8d a) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

// The row loops run as an AVX2 clone where the CPU has it; lanes are explicit, so the bits
// are the same either way.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define LP_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LP_CLONES
#endif

// One row: e (V) = exp(a_j - amax) with a = z/T; returns sum e in *sum and sum e*(a-amax) in
// *sum_ea. amax is returned. Sums run in 8 explicit double lanes (lane l: j % 8 == l) combined
// in a fixed order, so vectorisation never changes a bit of the result.
LP_CLONES static float row_exp(const float *z, int V, float invT, float *e, double *sum, double *sum_ea) {
    int j = 0;
    float mx = z[0];
    if (V >= 8) {
        v8f m8 = v8f_load(z);
        for (j = 8; j + 8 <= V; j += 8) {
            v8f x = v8f_load(z + j);
            m8 = v8f_select(x > m8, x, m8);
        }
        for (int l = 0; l < 8; l++) mx = m8[l] > mx ? m8[l] : mx;
    }
    for (; j < V; j++) mx = z[j] > mx ? z[j] : mx;
    v8d s = {0}, sa = {0};
    v8f mx8 = v8f_set1(mx), invT8 = v8f_set1(invT);
    for (j = 0; j + 8 <= V; j += 8) {
        v8f a = (v8f_load(z + j) - mx8) * invT8;  // <= 0: max subtracted for stability
        v8f ej = exp_approx8(a);
        v8f_store(e + j, ej);
        s += __builtin_convertvector(ej, v8d);
        sa += __builtin_convertvector(ej * a, v8d);
    }
    for (; j < V; j++) {
        float a = (z[j] - mx) * invT;
        float ej = exp_approx(a);
        e[j] = ej;
        s[j & 7] += ej;
        sa[j & 7] += (double)(ej * a);
    }
    *sum = lanes_sum_d(s);
    *sum_ea = lanes_sum_d(sa);
    return mx;
}

// dz (V) += -gl p_j - gh p_j (log p_j + H), all / T, with p_j = e_j * inv_sum and
// log p_j = (z_j - amax)/T - lse
LP_CLONES static void row_backward(float *dz, const float *z, const float *e, int V, float mx, float invT,
                                   float inv_sum, float lse, float H, float gl, float gh) {
    int j = 0;
    for (; j + 8 <= V; j += 8) {
        v8f p = v8f_load(e + j) * v8f_set1(inv_sum);
        v8f logp = (v8f_load(z + j) - v8f_set1(mx)) * v8f_set1(invT) - v8f_set1(lse);
        v8f g = (v8f_set1(-gl) * p - v8f_set1(gh) * p * (logp + v8f_set1(H))) * v8f_set1(invT);
        v8f_store(dz + j, v8f_load(dz + j) + g);
    }
    for (; j < V; j++) {
        float p = e[j] * inv_sum;
        float logp = (z[j] - mx) * invT - lse;
        dz[j] += (-gl * p - gh * p * (logp + H)) * invT;
    }
}

static void check_target(int32_t y, int V, size_t i) {
    if (y >= V) die(EXIT_BADINPUT, "logprob: target %d at row %zu is outside the vocabulary (%d)", y, i, V);
}

// logits (N,V), targets (N) or NULL, logp (N) or NULL, entropy (N) or NULL.
// A negative target (padding) gives logp 0.
void logprob_forward(const float *logits, size_t N, int V, float temp, const int32_t *targets,
                     float *logp, float *entropy) {
    if (!(temp > 0.0f)) die(EXIT_USAGE, "logprob: temperature must be > 0 (got %g)", temp);
    const float invT = 1.0f / temp;
    int want_logp = targets && logp;
    if (!want_logp && !entropy) return;
    #pragma omp parallel if ((double)N * V >= LOGPROB_PAR_MIN)
    {
        float *e = xmalloc((size_t)V * sizeof(float));   // per-thread row scratch
        #pragma omp for schedule(static)
        for (size_t i = 0; i < N; i++) {
            const float *z = logits + i * (size_t)V;
            double sum, sum_ea;
            float mx = row_exp(z, V, invT, e, &sum, &sum_ea);
            double lse = log(sum);  // log-sum-exp of the shifted a
            if (want_logp) {
                int32_t y = targets[i];
                check_target(y, V, i);
                // logp_y = (a_y - amax) - lse
                logp[i] = y < 0 ? 0.0f : (float)((double)((z[y] - mx) * invT) - lse);
            }
            // H = lse - sum_j p_j a_j (both shifted by amax, which cancels)
            if (entropy) entropy[i] = (float)(lse - sum_ea / sum);
        }
        free(e);
    }
}

// dlogits (N,V) += dlogp (N) * dlogp/dz + dentropy (N) * dH/dz. Rows with both zero skipped.
void logprob_backward(const float *logits, size_t N, int V, float temp, const int32_t *targets,
                      const float *dlogp, const float *dentropy, float *dlogits) {
    if (!(temp > 0.0f)) die(EXIT_USAGE, "logprob: temperature must be > 0 (got %g)", temp);
    if (!dlogp && !dentropy) return;
    if (dlogp && !targets) die(EXIT_USAGE, "logprob_backward: dlogp given without targets");
    const float invT = 1.0f / temp;
    #pragma omp parallel if ((double)N * V >= LOGPROB_PAR_MIN)
    {
        float *e = xmalloc((size_t)V * sizeof(float));
        #pragma omp for schedule(static)
        for (size_t i = 0; i < N; i++) {
            float gl = dlogp && targets[i] >= 0 ? dlogp[i] : 0.0f;
            float gh = dentropy ? dentropy[i] : 0.0f;
            if (gl == 0.0f && gh == 0.0f) continue;
            const float *z = logits + i * (size_t)V;
            float *dz = dlogits + i * (size_t)V;
            double sum, sum_ea;
            float mx = row_exp(z, V, invT, e, &sum, &sum_ea);
            double lse_d = log(sum);
            float lse = (float)lse_d;
            float H = (float)(lse_d - sum_ea / sum);
            float inv_sum = (float)(1.0 / sum);
            // dz_j += [ -gl p_j  - gh p_j (log p_j + H) ] / T,  log p_j = (a_j - amax) - lse
            row_backward(dz, z, e, V, mx, invT, inv_sum, lse, H, gl, gh);
            // the target's own term: dlogp_y/dz_y gets +1/T
            if (gl != 0.0f) {
                check_target(targets[i], V, i);
                dz[targets[i]] += gl * invT;
            }
        }
        free(e);
    }
}
