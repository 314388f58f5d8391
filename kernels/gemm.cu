// gemm.cu — the model's matrix products through cuBLASLt: bf16 operands, fp32 accumulation
// (CUBLAS_COMPUTE_32F), bf16 or fp32 results, optionally added to an fp32 matrix (the
// residual stream) or accumulated into fp32 weight gradients.
//
// Row-major model shapes map to column-major cuBLAS by reading every row-major (R,C) matrix
// as its column-major transpose:
//   out (N,OC) = inp (N,K) w^T     ->  out^T = w inp^T      : op(A)=T on w,  op(B)=N on inp   ("TN")
//   dinp (N,K) = dout (N,OC) w     ->  dinp^T = w^T dout^T  : N on w,  N on dout
//   dw (OC,K) += dout^T inp        ->  dw^T += inp^T dout   : N on inp, T on dout, beta = 1
//
// Each distinct problem (shape, transposes, result type, beta, pointer alignments) gets its
// descriptors and heuristic algorithm once and keeps them in a small cache: a decoding step
// runs ~10 products per layer and the heuristic query costs more than a small product. When
// cuBLASLt offers no algorithm (odd leading dimensions, e.g. stories260K's hidden size 172
// whose bf16 rows are not 16-byte multiples), the product goes to cublasGemmEx instead.
//
// v1 (this): library GEMMs with a 32 MiB workspace, heuristic's first choice. Not tried yet:
//   timing the top heuristic candidates per shape, fusing bias/activation epilogues.
#include "common.cuh"

#include <cublasLt.h>
#include <cublas_v2.h>

#define LT_WORKSPACE (32u << 20)
#define LT_CACHE 4096   // decoding meets every batch size from B down to 1: ~7 shapes each

static cublasLtHandle_t g_lt;
static cublasHandle_t g_blas;
static void *g_ws;

#define CUBLAS_CHECK(call, ...)                                                                  \
    do {                                                                                         \
        cublasStatus_t s_ = (call);                                                              \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                       \
            char sz_[256];                                                                       \
            snprintf(sz_, sizeof sz_, __VA_ARGS__);                                              \
            die(EXIT_RUNTIME, "cuBLAS error in %s (%s:%d): status %d [%s]", #call, __FILE__,     \
                __LINE__, (int)s_, sz_);                                                         \
        }                                                                                        \
    } while (0)

typedef struct {
    int ta, tb, m, n, k, lda, ldb, ldd, dtype, beta1, al[4];
} LtKey;

typedef struct {
    LtKey key;
    int used, fallback;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t La, Lb, Lc;
    cublasLtMatmulAlgo_t algo;
} LtEntry;

static LtEntry g_cache[LT_CACHE];

static void lt_init(void) {
    if (g_lt) return;
    cudaStream_t st = safe_stream();
    CUBLAS_CHECK(cublasLtCreate(&g_lt), "cuBLASLt handle");
    CUBLAS_CHECK(cublasCreate(&g_blas), "cuBLAS handle");
    CUBLAS_CHECK(cublasSetStream(g_blas, st), "cuBLAS stream");
    CUBLAS_CHECK(cublasSetMathMode(g_blas, CUBLAS_DEFAULT_MATH), "cuBLAS math mode");
    g_ws = cuda_malloc(LT_WORKSPACE, "cuBLASLt workspace");
}

static int align_of(const void *p) {
    uintptr_t a = (uintptr_t)p;
    int al = 256;
    while (al > 2 && (a % al)) al /= 2;
    return al;
}

static uint64_t key_hash(const LtKey *k) {
    const unsigned char *p = (const unsigned char *)k;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

// The cache entry for key (descriptors and algorithm made on first use).
static LtEntry *lt_entry(const LtKey *key, const char *what) {
    uint64_t h = key_hash(key);
    LtEntry *e = NULL;
    for (int probe = 0; probe < LT_CACHE; probe++) {
        LtEntry *c = &g_cache[(h + probe) % LT_CACHE];
        if (c->used && memcmp(&c->key, key, sizeof *key) == 0) return c;
        if (!c->used) { e = c; break; }
    }
    if (!e) {   // full: forget everything (shapes are few; this only happens in odd benchmarks)
        for (int i = 0; i < LT_CACHE; i++)
            if (g_cache[i].used) {
                cublasLtMatmulDescDestroy(g_cache[i].op);
                cublasLtMatrixLayoutDestroy(g_cache[i].La);
                cublasLtMatrixLayoutDestroy(g_cache[i].Lb);
                cublasLtMatrixLayoutDestroy(g_cache[i].Lc);
                g_cache[i].used = 0;
            }
        e = &g_cache[h % LT_CACHE];
    }
    memset(e, 0, sizeof *e);
    e->key = *key;
    e->used = 1;
    cublasOperation_t ta = key->ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = key->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cudaDataType_t dt = (cudaDataType_t)key->dtype;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&e->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "%s", what);
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "%s", what);
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "%s", what);
    // A is (m,k) after op, B (k,n); stored shapes before op
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e->La, CUDA_R_16BF, key->ta ? key->k : key->m, key->ta ? key->m : key->k,
                                            key->lda), "%s", what);
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e->Lb, CUDA_R_16BF, key->tb ? key->n : key->k, key->tb ? key->k : key->n,
                                            key->ldb), "%s", what);
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e->Lc, dt, key->m, key->n, key->ldd), "%s", what);
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref), "%s", what);
    size_t ws = LT_WORKSPACE;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
                 "%s", what);
    cublasLtMatmulPreferenceAttributes_t al_attr[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++) {
        uint32_t a = (uint32_t)key->al[i];
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, al_attr[i], &a, sizeof a), "%s", what);
    }
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g_lt, e->op, e->La, e->Lb, e->Lc, e->Lc, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0 || res.state != CUBLAS_STATUS_SUCCESS) e->fallback = 1;
    else e->algo = res.algo;
    return e;
}

// D (m,n) col-major = op(A) op(B) + beta C, C = D unless given. A, B bf16.
static void lt_matmul(int ta, int tb, int m, int n, int k, const void *A, int lda, const void *B, int ldb,
                      const void *C, void *D, int ldd, cudaDataType_t dtype, float beta, const char *what) {
    if (m <= 0 || n <= 0) return;
    lt_init();
    if (!C) C = D;
    LtKey key;
    memset(&key, 0, sizeof key);
    key.ta = ta; key.tb = tb; key.m = m; key.n = n; key.k = k;
    key.lda = lda; key.ldb = ldb; key.ldd = ldd; key.dtype = (int)dtype; key.beta1 = beta != 0.0f;
    key.al[0] = align_of(A); key.al[1] = align_of(B); key.al[2] = align_of(C); key.al[3] = align_of(D);
    if (k <= 0) {   // empty sum: D = beta C
        if (beta == 0.0f) cuda_zero(D, (size_t)ldd * n * (dtype == CUDA_R_32F ? 4 : 2), what);
        else if (C != D) cuda_copy(D, C, (size_t)ldd * n * 4, what);
        return;
    }
    LtEntry *e = lt_entry(&key, what);
    const float alpha = 1.0f;
    if (!e->fallback) {
        CUBLAS_CHECK(cublasLtMatmul(g_lt, e->op, &alpha, A, e->La, B, e->Lb, &beta, C, e->Lc, D, e->Lc, &e->algo, g_ws,
                                    LT_WORKSPACE, safe_stream()),
                     "%s: m=%d n=%d k=%d", what, m, n, k);
        return;
    }
    // cublasGemmEx has C == D: bring C into D first
    if (beta != 0.0f && C != D) cuda_copy(D, C, (size_t)ldd * n * (dtype == CUDA_R_32F ? 4 : 2), what);
    CUBLAS_CHECK(cublasGemmEx(g_blas, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha,
                              A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb, &beta, D, dtype, ldd, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT),
                 "%s (cublasGemmEx fallback): m=%d n=%d k=%d", what, m, n, k);
}

extern "C" void cuda_matmul(void *out, int out_bf16, const float *c_in, const bf16 *inp, const bf16 *w, int N, int K,
                            int OC) {
    if (c_in && out_bf16) die(EXIT_RUNTIME, "cuda_matmul: adding into a bf16 result is not supported");
    // out^T (OC,N) = w (OC,K) . inp^T (K,N)
    lt_matmul(1, 0, OC, N, K, w, K, inp, K, c_in, out, OC, out_bf16 ? CUDA_R_16BF : CUDA_R_32F, c_in ? 1.0f : 0.0f,
              "matmul forward");
}

extern "C" void cuda_matmul_dinp(void *dinp, int out_bf16, const bf16 *dout, const bf16 *w, int N, int K, int OC) {
    // dinp^T (K,N) = w^T (K,OC) . dout^T (OC,N)
    lt_matmul(0, 0, K, N, OC, w, K, dout, OC, NULL, dinp, K, out_bf16 ? CUDA_R_16BF : CUDA_R_32F, 0.0f,
              "matmul backward (input)");
}

extern "C" void cuda_matmul_dw(float *dw, const bf16 *dout, const bf16 *inp, int N, int K, int OC) {
    // dw^T (K,OC) += inp^T (K,N) . dout (N,OC)
    lt_matmul(0, 1, K, OC, N, inp, K, dout, OC, NULL, dw, K, CUDA_R_32F, 1.0f, "matmul backward (weights)");
}
