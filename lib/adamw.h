// adamw.h — AdamW with PyTorch semantics, and global gradient-norm clipping.
#ifndef SAFE_ADAMW_H
#define SAFE_ADAMW_H

#include <stddef.h>

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
} AdamWConfig;

typedef struct {
    AdamWConfig cfg;
    size_t n;
    float *m, *v;     // (n) first and second moments, one allocation each
    long step;        // optimiser steps taken so far
} AdamW;

// The constants of one step (step t counted from 1), computed in double and rounded to float
// exactly as adamw_step uses them; the CUDA optimiser (kernels/adamw.cu) takes the same
// struct, so both devices apply the same arithmetic.
typedef struct {
    float decay;      // 1 - lr*wd
    float b1, one_b1, b2, one_b2;
    float bc2_sqrt;   // sqrt(1 - b2^t)
    float eps;
    float neg_step;   // -lr / (1 - b1^t)
} AdamWScalars;

AdamWConfig adamw_defaults(void);
AdamWScalars adamw_scalars(const AdamWConfig *c, long step);   // lr 1e-5, betas 0.9/0.999, eps 1e-8, wd 0.01
AdamW *adamw_create(size_t n, AdamWConfig cfg);
void adamw_free(AdamW *opt);
// One step: bias-corrected moments, decoupled weight decay (p -= lr*wd*p), eps outside sqrt.
void adamw_step(AdamW *opt, float *params, const float *grads);
// Global L2 norm of grads; if max_norm > 0 and the norm exceeds it, scale grads by
// max_norm / (norm + 1e-6) like torch.nn.utils.clip_grad_norm_. Returns the pre-clip norm.
double grad_clip(float *grads, size_t n, double max_norm);

#endif
