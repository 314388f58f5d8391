// gemm_emu.cpp — kernels/gemm.cu for the emulator: the three products as host loops (double
// accumulation of the bf16 operands; cuBLASLt itself is not under test here).
#include "cuda_runtime.h"
#include "cuda_bf16.h"
extern "C" {
#include "common.h"
}
#include "cuda_backend.h"
static float bf(const bf16 *p, size_t i) { __nv_bfloat16 h; h.x = p[i]; return __bfloat162float(h); }
static void st(void *o, int b16, size_t i, double v) { if (b16) ((__nv_bfloat16 *)o)[i] = __float2bfloat16_rn((float)v); else ((float *)o)[i] = (float)v; }
extern "C" void cuda_matmul(void *out, int ob, const float *c, const bf16 *x, const bf16 *w, int N, int K, int OC) {
    for (int n = 0; n < N; n++) for (int o = 0; o < OC; o++) {
        double a = 0; for (int k = 0; k < K; k++) a += (double)bf(x, (size_t)n * K + k) * bf(w, (size_t)o * K + k);
        if (c) a += c[(size_t)n * OC + o];
        st(out, ob, (size_t)n * OC + o, a);
    }
}
extern "C" void cuda_matmul_dinp(void *d, int ob, const bf16 *dy, const bf16 *w, int N, int K, int OC) {
    for (int n = 0; n < N; n++) for (int k = 0; k < K; k++) {
        double a = 0; for (int o = 0; o < OC; o++) a += (double)bf(dy, (size_t)n * OC + o) * bf(w, (size_t)o * K + k);
        st(d, ob, (size_t)n * K + k, a);
    }
}
extern "C" void cuda_matmul_dw(float *dw, const bf16 *dy, const bf16 *x, int N, int K, int OC) {
    for (int o = 0; o < OC; o++) for (int k = 0; k < K; k++) {
        double a = dw[(size_t)o * K + k]; for (int n = 0; n < N; n++) a += (double)bf(dy, (size_t)n * OC + o) * bf(x, (size_t)n * K + k);
        dw[(size_t)o * K + k] = (float)a;
    }
}
