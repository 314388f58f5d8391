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

// One row: e (V) = exp(a_j - amax) with a = z/T; returns sum e in *sum and sum e*(a-amax) in
// *sum_ea. amax is returned.
static float row_exp(const float *z, int V, float invT, float *e, double *sum, double *sum_ea) {
    float mx = -INFINITY;
    for (int j = 0; j < V; j++) mx = z[j] > mx ? z[j] : mx;
    double s = 0.0, sa = 0.0;
    #pragma omp simd reduction(+ : s, sa)
    for (int j = 0; j < V; j++) {
        float a = (z[j] - mx) * invT;  // <= 0: max subtracted for stability
        float ej = exp_approx(a);
        e[j] = ej;
        s += ej;
        sa += (double)ej * a;
    }
    *sum = s;
    *sum_ea = sa;
    return mx;
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
            #pragma omp simd
            for (int j = 0; j < V; j++) {
                float p = e[j] * inv_sum;
                float logp_j = (z[j] - mx) * invT - lse;
                dz[j] += (-gl * p - gh * p * (logp_j + H)) * invT;
            }
            // the target's own term: dlogp_y/dz_y gets +1/T
            if (gl != 0.0f) {
                check_target(targets[i], V, i);
                dz[targets[i]] += gl * invT;
            }
        }
        free(e);
    }
}
