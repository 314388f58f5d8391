// adamw.c — AdamW with torch.optim.AdamW semantics (single-tensor path of PyTorch 1.13/2.x),
// and global gradient-norm clipping like torch.nn.utils.clip_grad_norm_.
//
// One step t (all element-wise, fp32 state, scalars computed in double then used as float,
// in the same order of operations as PyTorch):
//   p  = p * (1 - lr*wd)                       decoupled weight decay
//   m  = b1*m + (1-b1)*g
//   v  = b2*v + (1-b2)*g*g
//   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
#include "adamw.h"

#include "common.h"   // xcalloc, die

#include <math.h>
#include <stdlib.h>

#define ADAMW_PAR_MIN 16384

AdamWConfig adamw_defaults(void) {
    AdamWConfig c = {.lr = 1e-5f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};
    return c;
}

AdamW *adamw_create(size_t n, AdamWConfig cfg) {
    AdamW *opt = xcalloc(1, sizeof(AdamW));
    opt->cfg = cfg;
    opt->n = n;
    opt->m = xcalloc(n, sizeof(float));
    opt->v = xcalloc(n, sizeof(float));
    opt->step = 0;
    return opt;
}

void adamw_free(AdamW *opt) {
    if (!opt) return;
    free(opt->m);
    free(opt->v);
    free(opt);
}

AdamWScalars adamw_scalars(const AdamWConfig *c, long step) {
    // Hyper-parameters are floats in the config; PyTorch holds them as Python doubles. Use the
    // double value of each float, as torch would after reading a float32 config.
    double lr = c->lr, b1 = c->beta1, b2 = c->beta2, eps = c->eps, wd = c->weight_decay;
    double bc1 = 1.0 - pow(b1, (double)step);
    double bc2 = 1.0 - pow(b2, (double)step);
    AdamWScalars s = {
        .decay = (float)(1.0 - lr * wd),
        .b1 = (float)b1, .one_b1 = (float)(1.0 - b1),
        .b2 = (float)b2, .one_b2 = (float)(1.0 - b2),
        .bc2_sqrt = (float)sqrt(bc2),
        .eps = (float)eps,
        .neg_step = (float)(-(lr / bc1)),
    };
    return s;
}

// params (n) updated in place from grads (n); opt->m, opt->v (n) updated.
void adamw_step(AdamW *opt, float *params, const float *grads) {
    opt->step++;
    const AdamWScalars s = adamw_scalars(&opt->cfg, opt->step);
    const float decay = s.decay, b1f = s.b1, one_b1 = s.one_b1, b2f = s.b2, one_b2 = s.one_b2;
    const float bc2_sqrt = s.bc2_sqrt, epsf = s.eps, neg_step = s.neg_step;
    float *m = opt->m, *v = opt->v;
    size_t n = opt->n;
    #pragma omp parallel for simd schedule(static) if (n >= ADAMW_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float g = grads[i];
        float p = params[i] * decay;                 // p *= 1 - lr*wd
        float mi = m[i] * b1f + one_b1 * g;          // m = b1 m + (1-b1) g
        float vi = v[i] * b2f + one_b2 * (g * g);    // v = b2 v + (1-b2) g^2
        float denom = sqrtf(vi) / bc2_sqrt + epsf;   // sqrt(v_hat) + eps, eps outside the sqrt
        params[i] = p + neg_step * (mi / denom);     // p -= lr/bc1 * m / denom
        m[i] = mi;
        v[i] = vi;
    }
}

// grads (n). The squared norm is summed in double over fixed chunks whose partial sums are
// added in chunk order, so the result does not depend on the number of threads.
double grad_clip(float *grads, size_t n, double max_norm) {
    enum { NCHUNK = 64 };
    double part[NCHUNK];
    size_t chunk = (n + NCHUNK - 1) / NCHUNK;
    #pragma omp parallel for schedule(static) if (n >= ADAMW_PAR_MIN)
    for (int c = 0; c < NCHUNK; c++) {
        size_t lo = (size_t)c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        double s = 0.0;
        for (size_t i = lo; i < hi; i++) s += (double)grads[i] * grads[i];
        part[c] = s;
    }
    double ss = 0.0;
    for (int c = 0; c < NCHUNK; c++) ss += part[c];
    double norm = sqrt(ss);
    if (max_norm > 0.0 && norm > max_norm) {
        // clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied when < 1
        float coef = (float)(max_norm / (norm + 1e-6));
        #pragma omp parallel for simd schedule(static) if (n >= ADAMW_PAR_MIN)
        for (size_t i = 0; i < n; i++) grads[i] *= coef;
    }
    return norm;
}
