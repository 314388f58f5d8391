// matmul.c — batch-invariant fp32 GEMM: out (N,OC) (+)= inp (N,K) @ w^T (w: (OC,K)) + bias.
//
// How the invariance is kept. Each output element is a dot product of two contiguous rows,
// computed as
//   1. W-lane partial sums (W = 16 on AVX-512, 8 on AVX2/generic): lane l accumulates
//      a[k]*b[k] for k = k0+l, k0+l+W, ... with one fused multiply-add per step, in k order;
//      the last partial vector is zero-filled by masked loads;
//   2. a fixed pairwise tree over the lanes: (l, l+W/2), then (l, l+W/4), ... down to one;
//   3. K is cut into chunks of KC = 512; each chunk's sum is added to the output in order.
// None of this depends on which rows or columns share a register tile, on the tile sizes, or on
// the thread that runs the tile. Tail tiles reuse the full register tile with duplicated rows
// (results discarded), and several elements are reduced together by a shuffle network that
// applies exactly the per-element tree of step 2.
//
// Kernel history (this machine: Xeon with AVX-512; Debian OpenBLAS 0.3.21 does not recognise
// it and runs its SSE3 "Prescott" sgemm at ~22 GFLOP/s per core):
//   v1 AVX-512 4x4 register tile (16 zmm accumulators, 8 loads per 16 FMAs), KC = 256;
//      row tails padded by duplicating rows: decoding one row paid for four.
//   v2 leftover rows (and N = 1 decoding) get a 1x16 tile with the same per-element
//      arithmetic; KC = 512 halves the horizontal reductions for K in (256, 512].
//   v3 accumulators as named registers and the reduction by value: v2's arrays were zeroed
//      with rep stos and spilled for the reduction, which dominated small-K products
//      (attention scores with head size 8); the lane permutation is one vpermps.
#include "matmul.h"

#include "common.h"   // die

#include <immintrin.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define KC 512                  // k chunk, a multiple of 16
#define MB 64                   // rows per tile
#define PAR_MIN_MACS (1 << 20)  // below this many multiply-adds one thread does it all

// A tile: rows [0,nr) of A (lda), rows [0,nc) of W (ldw); adds sum_{k in [k0,k1)} A[r]·W[c]
// into out[r*ldo + c].
typedef void (*tile_fn)(float *out, size_t ldo, const float *A, size_t lda, const float *W, size_t ldw,
                        int nr, int nc, int k0, int k1);

static int min_i(int a, int b) { return a < b ? a : b; }

// ---------------------------------------------------------------------------------------------
// AVX-512: 4x4 tile, 16-lane partial sums

// lanes of the reduce16 result -> element index (filled once by matmul_init)
static int perm16[16], perm8[8];
static int32_t inv_perm16[16];  // element e sits in lane inv_perm16[e]

// v0..v15 (16 lanes each) -> one vector holding the 16 sums; per element the tree is
// (l, l+8) -> (l, l+4) -> (l, l+2) -> (l, l+1). Lane order is perm16. Arguments by value and
// always inlined, so the accumulators never leave registers.
#define R16_STEP1(a, b) _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)), \
                                      _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)))
#define R16_STEP2(a, b) _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)), \
                                      _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)))
#define R16_STEP3(a, b) _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)), \
                                      _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)))
#define R16_STEP4(a, b) _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)), \
                                      _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)))

__attribute__((target("avx512f"), always_inline)) static inline __m512
reduce16(__m512 v0, __m512 v1, __m512 v2, __m512 v3, __m512 v4, __m512 v5, __m512 v6, __m512 v7,
         __m512 v8, __m512 v9, __m512 v10, __m512 v11, __m512 v12, __m512 v13, __m512 v14, __m512 v15) {
    __m512 w0 = R16_STEP1(v0, v1), w1 = R16_STEP1(v2, v3), w2 = R16_STEP1(v4, v5), w3 = R16_STEP1(v6, v7);
    __m512 w4 = R16_STEP1(v8, v9), w5 = R16_STEP1(v10, v11), w6 = R16_STEP1(v12, v13), w7 = R16_STEP1(v14, v15);
    __m512 u0 = R16_STEP2(w0, w1), u1 = R16_STEP2(w2, w3), u2 = R16_STEP2(w4, w5), u3 = R16_STEP2(w6, w7);
    __m512 z0 = R16_STEP3(u0, u1), z1 = R16_STEP3(u2, u3);
    return R16_STEP4(z0, z1);
}

// scatter the 16 sums of a reduce16 result: s[perm16[l]] = lanes[l]
__attribute__((target("avx512f"), always_inline)) static inline void unperm16(float *s, __m512 r) {
    _mm512_storeu_ps(s, _mm512_permutexvar_ps(_mm512_loadu_si512(inv_perm16), r));
}

#define FMA4(x, y, c0, c1, c2, c3) \
    c0 = _mm512_fmadd_ps(x##0, y, c0); c1 = _mm512_fmadd_ps(x##1, y, c1); \
    c2 = _mm512_fmadd_ps(x##2, y, c2); c3 = _mm512_fmadd_ps(x##3, y, c3);

__attribute__((target("avx512f"))) static void tile_avx512(float *out, size_t ldo, const float *A, size_t lda,
                                                           const float *W, size_t ldw, int nr, int nc,
                                                           int k0, int k1) {
    int kfull = k0 + ((k1 - k0) & ~15);
    __mmask16 tail = (__mmask16)((1u << ((k1 - k0) & 15)) - 1);
    int r4 = nr & ~3;
    // rows left over after the 4-row blocks (and decoding, N = 1): 1 x 16 tiles, the same
    // per-element arithmetic without computing duplicate rows
    for (int r = r4; r < nr; r++) {
        const float *a = A + (size_t)r * lda;
        for (int c = 0; c < nc; c += 16) {
            const float *b[16];
            for (int j = 0; j < 16; j++) b[j] = W + (size_t)min_i(c + j, nc - 1) * ldw;
            __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
            __m512 c8 = c0, c9 = c0, c10 = c0, c11 = c0, c12 = c0, c13 = c0, c14 = c0, c15 = c0;
#define ROW16(LOAD, k)                                                                                   \
    {                                                                                                    \
        __m512 x = LOAD(a + k);                                                                          \
        c0 = _mm512_fmadd_ps(x, LOAD(b[0] + k), c0); c1 = _mm512_fmadd_ps(x, LOAD(b[1] + k), c1);        \
        c2 = _mm512_fmadd_ps(x, LOAD(b[2] + k), c2); c3 = _mm512_fmadd_ps(x, LOAD(b[3] + k), c3);        \
        c4 = _mm512_fmadd_ps(x, LOAD(b[4] + k), c4); c5 = _mm512_fmadd_ps(x, LOAD(b[5] + k), c5);        \
        c6 = _mm512_fmadd_ps(x, LOAD(b[6] + k), c6); c7 = _mm512_fmadd_ps(x, LOAD(b[7] + k), c7);        \
        c8 = _mm512_fmadd_ps(x, LOAD(b[8] + k), c8); c9 = _mm512_fmadd_ps(x, LOAD(b[9] + k), c9);        \
        c10 = _mm512_fmadd_ps(x, LOAD(b[10] + k), c10); c11 = _mm512_fmadd_ps(x, LOAD(b[11] + k), c11);  \
        c12 = _mm512_fmadd_ps(x, LOAD(b[12] + k), c12); c13 = _mm512_fmadd_ps(x, LOAD(b[13] + k), c13);  \
        c14 = _mm512_fmadd_ps(x, LOAD(b[14] + k), c14); c15 = _mm512_fmadd_ps(x, LOAD(b[15] + k), c15);  \
    }
#define LOADU(p) _mm512_loadu_ps(p)
#define LOADM(p) _mm512_maskz_loadu_ps(tail, p)
            for (int k = k0; k < kfull; k += 16) ROW16(LOADU, k)
            if (tail) ROW16(LOADM, kfull)  // the same fused multiply-adds on zero-filled vectors
            float s[16];
            unperm16(s, reduce16(c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15));
            int nj = min_i(16, nc - c);
            for (int j = 0; j < nj; j++) out[(size_t)r * ldo + c + j] += s[j];
        }
    }
    for (int r = 0; r < r4; r += 4) {
        const float *a0 = A + (size_t)r * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        for (int c = 0; c < nc; c += 4) {
            const float *b0 = W + (size_t)min_i(c, nc - 1) * ldw, *b1 = W + (size_t)min_i(c + 1, nc - 1) * ldw;
            const float *b2 = W + (size_t)min_i(c + 2, nc - 1) * ldw, *b3 = W + (size_t)min_i(c + 3, nc - 1) * ldw;
            __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00;
            __m512 c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
#define TILE44(LOAD, k)                                                                              \
    {                                                                                                \
        __m512 x0 = LOAD(a0 + k), x1 = LOAD(a1 + k), x2 = LOAD(a2 + k), x3 = LOAD(a3 + k);           \
        __m512 y = LOAD(b0 + k);                                                                     \
        FMA4(x, y, c00, c10, c20, c30)                                                               \
        y = LOAD(b1 + k);                                                                            \
        FMA4(x, y, c01, c11, c21, c31)                                                               \
        y = LOAD(b2 + k);                                                                            \
        FMA4(x, y, c02, c12, c22, c32)                                                               \
        y = LOAD(b3 + k);                                                                            \
        FMA4(x, y, c03, c13, c23, c33)                                                               \
    }
            for (int k = k0; k < kfull; k += 16) TILE44(LOADU, k)
            if (tail) TILE44(LOADM, kfull)
            float s[16];
            unperm16(s, reduce16(c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33));
            int nj = min_i(4, nc - c);
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < nj; j++) out[(size_t)(r + i) * ldo + c + j] += s[i * 4 + j];
        }
    }
#undef ROW16
#undef TILE44
#undef LOADU
#undef LOADM
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA: 4x2 tile, 8-lane partial sums

// v[8] -> one vector of the 8 sums; per element (l, l+4) -> (l, l+2) -> (l, l+1). Order perm8.
__attribute__((target("avx2,fma"))) static inline __m256 reduce8(const __m256 *v) {
    __m256 w[4], u[2];
    for (int p = 0; p < 4; p++) {  // (l, l+4): 128-bit halves
        __m256 lo = _mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x20);
        __m256 hi = _mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x31);
        w[p] = _mm256_add_ps(lo, hi);
    }
    for (int p = 0; p < 2; p++) {  // (l, l+2)
        __m256 lo = _mm256_shuffle_ps(w[2 * p], w[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0));
        __m256 hi = _mm256_shuffle_ps(w[2 * p], w[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2));
        u[p] = _mm256_add_ps(lo, hi);
    }
    __m256 lo = _mm256_shuffle_ps(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0));  // (l, l+1)
    __m256 hi = _mm256_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1));
    return _mm256_add_ps(lo, hi);
}

__attribute__((target("avx2,fma"))) static void tile_avx2(float *out, size_t ldo, const float *A, size_t lda,
                                                          const float *W, size_t ldw, int nr, int nc,
                                                          int k0, int k1) {
    int kfull = k0 + ((k1 - k0) & ~7);
    int nt = (k1 - k0) & 7;
    __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(nt), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    int r4 = nr & ~3;
    for (int r = r4; r < nr; r++) {  // leftover rows: 1 x 8 tiles, same per-element arithmetic
        const float *a = A + (size_t)r * lda;
        for (int c = 0; c < nc; c += 8) {
            const float *b[8];
            for (int j = 0; j < 8; j++) b[j] = W + (size_t)min_i(c + j, nc - 1) * ldw;
            __m256 acc[8];
            for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
            for (int k = k0; k < kfull; k += 8) {
                __m256 x = _mm256_loadu_ps(a + k);
                #pragma GCC unroll 8
                for (int j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(x, _mm256_loadu_ps(b[j] + k), acc[j]);
            }
            if (nt) {
                __m256 x = _mm256_maskload_ps(a + kfull, tail);
                for (int j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(x, _mm256_maskload_ps(b[j] + kfull, tail), acc[j]);
            }
            float lanes[8], s[8];
            _mm256_storeu_ps(lanes, reduce8(acc));
            for (int l = 0; l < 8; l++) s[perm8[l]] = lanes[l];
            int nj = min_i(8, nc - c);
            for (int j = 0; j < nj; j++) out[(size_t)r * ldo + c + j] += s[j];
        }
    }
    for (int r = 0; r < r4; r += 4) {
        const float *a[4];
        for (int i = 0; i < 4; i++) a[i] = A + (size_t)(r + i) * lda;
        for (int c = 0; c < nc; c += 2) {
            const float *b[2];
            for (int j = 0; j < 2; j++) b[j] = W + (size_t)min_i(c + j, nc - 1) * ldw;
            __m256 acc[8];
            for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
            for (int k = k0; k < kfull; k += 8) {
                __m256 x0 = _mm256_loadu_ps(a[0] + k), x1 = _mm256_loadu_ps(a[1] + k);
                __m256 x2 = _mm256_loadu_ps(a[2] + k), x3 = _mm256_loadu_ps(a[3] + k);
                #pragma GCC unroll 2
                for (int j = 0; j < 2; j++) {
                    __m256 y = _mm256_loadu_ps(b[j] + k);
                    acc[0 * 2 + j] = _mm256_fmadd_ps(x0, y, acc[0 * 2 + j]);
                    acc[1 * 2 + j] = _mm256_fmadd_ps(x1, y, acc[1 * 2 + j]);
                    acc[2 * 2 + j] = _mm256_fmadd_ps(x2, y, acc[2 * 2 + j]);
                    acc[3 * 2 + j] = _mm256_fmadd_ps(x3, y, acc[3 * 2 + j]);
                }
            }
            if (nt) {
                __m256 x0 = _mm256_maskload_ps(a[0] + kfull, tail), x1 = _mm256_maskload_ps(a[1] + kfull, tail);
                __m256 x2 = _mm256_maskload_ps(a[2] + kfull, tail), x3 = _mm256_maskload_ps(a[3] + kfull, tail);
                for (int j = 0; j < 2; j++) {
                    __m256 y = _mm256_maskload_ps(b[j] + kfull, tail);
                    acc[0 * 2 + j] = _mm256_fmadd_ps(x0, y, acc[0 * 2 + j]);
                    acc[1 * 2 + j] = _mm256_fmadd_ps(x1, y, acc[1 * 2 + j]);
                    acc[2 * 2 + j] = _mm256_fmadd_ps(x2, y, acc[2 * 2 + j]);
                    acc[3 * 2 + j] = _mm256_fmadd_ps(x3, y, acc[3 * 2 + j]);
                }
            }
            float lanes[8], s[8];
            _mm256_storeu_ps(lanes, reduce8(acc));
            for (int l = 0; l < 8; l++) s[perm8[l]] = lanes[l];
            int nj = min_i(2, nc - c);
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < nj; j++) out[(size_t)(r + i) * ldo + c + j] += s[i * 2 + j];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// generic C: one element at a time, 8-lane partial sums and the same tree (slow; any x86-64)

static void tile_generic(float *out, size_t ldo, const float *A, size_t lda, const float *W, size_t ldw,
                         int nr, int nc, int k0, int k1) {
    for (int r = 0; r < nr; r++) {
        const float *a = A + (size_t)r * lda;
        for (int c = 0; c < nc; c++) {
            const float *b = W + (size_t)c * ldw;
            float l[8] = {0};
            for (int k = k0; k < k1; k += 8)
                for (int i = 0; i < 8; i++) l[i] += k + i < k1 ? a[k + i] * b[k + i] : 0.0f;
            for (int i = 0; i < 4; i++) l[i] += l[i + 4];
            for (int i = 0; i < 2; i++) l[i] += l[i + 2];
            out[(size_t)r * ldo + c] += l[0] + l[1];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dispatch

static tile_fn tile;
static const char *isa_name;
static pthread_once_t once = PTHREAD_ONCE_INIT;

__attribute__((target("avx512f"))) static void init_perm16(void) {
    float lanes[16];
    __m512 v[16];
    for (int j = 0; j < 16; j++) v[j] = _mm512_set1_ps((float)j);  // every lane of v[j] is j
    _mm512_storeu_ps(lanes, reduce16(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11],
                                     v[12], v[13], v[14], v[15]));   // lane l = 16 * element
    for (int l = 0; l < 16; l++) perm16[l] = (int)(lanes[l] / 16.0f);
    for (int l = 0; l < 16; l++) inv_perm16[perm16[l]] = l;
}

__attribute__((target("avx2,fma"))) static void init_perm8(void) {
    __m256 v[8];
    float lanes[8];
    for (int j = 0; j < 8; j++) v[j] = _mm256_set1_ps((float)j);
    _mm256_storeu_ps(lanes, reduce8(v));
    for (int l = 0; l < 8; l++) perm8[l] = (int)(lanes[l] / 8.0f);
}

static void matmul_init(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        init_perm16();
        tile = tile_avx512;
        isa_name = "avx512";
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        init_perm8();
        tile = tile_avx2;
        isa_name = "avx2";
    } else {
        tile = tile_generic;
        isa_name = "generic";
    }
}

int matmul_force_isa(const char *name) {
    pthread_once(&once, matmul_init);
    __builtin_cpu_init();
    if (!strcmp(name, "avx512") && __builtin_cpu_supports("avx512f")) {
        init_perm16();
        tile = tile_avx512;
    } else if (!strcmp(name, "avx2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        init_perm8();
        tile = tile_avx2;
    } else if (!strcmp(name, "generic")) {
        tile = tile_generic;
    } else {
        return -1;
    }
    isa_name = !strcmp(name, "avx512") ? "avx512" : !strcmp(name, "avx2") ? "avx2" : "generic";
    return 0;
}

const char *matmul_isa(void) {
    pthread_once(&once, matmul_init);
    return isa_name;
}

// tile t of matmul_nt_ld: rows [r0, r0+MB), columns [c0, c0+NB)
static void run_tile(float *out, int ldo, const float *inp, int ldi, const float *w, int ldw, const float *bias,
                     int N, int K, int OC, int accumulate, int t, int ct, int NB) {
    int r0 = (t / ct) * MB, c0 = (t % ct) * NB;
    int nr = min_i(MB, N - r0), nc = min_i(NB, OC - c0);
    // initial value: bias, zero, or what is there (plus bias)
    for (int r = r0; r < r0 + nr; r++) {
        float *o = out + (size_t)r * ldo + c0;
        if (!accumulate) {
            if (bias) memcpy(o, bias + c0, nc * sizeof(float));
            else memset(o, 0, nc * sizeof(float));
        } else if (bias) {
            for (int j = 0; j < nc; j++) o[j] += bias[c0 + j];
        }
    }
    for (int k0 = 0; k0 < K; k0 += KC)
        tile(out + (size_t)r0 * ldo + c0, ldo, inp + (size_t)r0 * ldi, ldi, w + (size_t)c0 * ldw, ldw, nr, nc, k0,
             min_i(K, k0 + KC));
}

// The output's tiles: MB rows x *NB columns, *ct of them across; narrower columns when there
// are few rows (decoding), so that every thread gets work. *par: worth threads. Returns the
// number of tiles.
static int tile_plan(int N, double K, int OC, int *NB, int *ct, int *par) {
    int nthreads = omp_get_max_threads();
    int rt = (N + MB - 1) / MB;
    *NB = 64;
    *par = (double)N * K * OC >= PAR_MIN_MACS && nthreads > 1;
    while (*par && *NB > 16 && (size_t)rt * ((OC + *NB - 1) / *NB) < 4 * (size_t)nthreads) *NB /= 2;
    *ct = (OC + *NB - 1) / *NB;
    return rt * *ct;
}

void matmul_nt_ld(float *out, int ldo, const float *inp, int ldi, const float *w, int ldw, const float *bias,
                  int N, int K, int OC, int accumulate) {
    pthread_once(&once, matmul_init);
    if (N <= 0 || OC <= 0) return;
    int NB, ct, par;
    int ntiles = tile_plan(N, K, OC, &NB, &ct, &par);
    if (par && ntiles > 1) {
        #pragma omp parallel for schedule(dynamic, 1)
        for (int t = 0; t < ntiles; t++) run_tile(out, ldo, inp, ldi, w, ldw, bias, N, K, OC, accumulate, t, ct, NB);
    } else {  // inline: entering even a one-thread OpenMP region costs ~0.6 us
        for (int t = 0; t < ntiles; t++) run_tile(out, ldo, inp, ldi, w, ldw, bias, N, K, OC, accumulate, t, ct, NB);
    }
}

// tile t of matmul_nt_segsum: each segment's fp32 product in a zeroed tile buffer, then added
// to the double output
static void run_segsum_tile(double *out, int ldo, const float *inp, int ldi, const float *w, int ldw, int N,
                            int OC, const int *seg_start, const int *seg_len, int nseg, int t, int ct, int NB) {
    int r0 = (t / ct) * MB, c0 = (t % ct) * NB;
    int nr = min_i(MB, N - r0), nc = min_i(NB, OC - c0);
    float buf[MB * 64];   // (nr, nc), NB <= 64
    for (int s = 0; s < nseg; s++) {
        int len = seg_len[s];
        if (len <= 0) continue;
        const float *a = inp + (size_t)r0 * ldi + seg_start[s], *b = w + (size_t)c0 * ldw + seg_start[s];
        memset(buf, 0, (size_t)nr * nc * sizeof(float));
        for (int k0 = 0; k0 < len; k0 += KC) tile(buf, nc, a, ldi, b, ldw, nr, nc, k0, min_i(len, k0 + KC));
        for (int r = 0; r < nr; r++) {
            double *o = out + (size_t)(r0 + r) * ldo + c0;
            const float *p = buf + (size_t)r * nc;
            for (int j = 0; j < nc; j++) o[j] += p[j];
        }
    }
}

void matmul_nt_segsum(double *out, int ldo, const float *inp, int ldi, const float *w, int ldw, int N, int OC,
                      const int *seg_start, const int *seg_len, int nseg) {
    pthread_once(&once, matmul_init);
    if (N <= 0 || OC <= 0 || nseg <= 0) return;
    double K = 0;
    for (int s = 0; s < nseg; s++) K += seg_len[s] > 0 ? seg_len[s] : 0;
    int NB, ct, par;
    int ntiles = tile_plan(N, K, OC, &NB, &ct, &par);
    if (par && ntiles > 1) {
        #pragma omp parallel for schedule(dynamic, 1)
        for (int t = 0; t < ntiles; t++)
            run_segsum_tile(out, ldo, inp, ldi, w, ldw, N, OC, seg_start, seg_len, nseg, t, ct, NB);
    } else {
        for (int t = 0; t < ntiles; t++)
            run_segsum_tile(out, ldo, inp, ldi, w, ldw, N, OC, seg_start, seg_len, nseg, t, ct, NB);
    }
}

void matmul_nt_serial(float *out, int ldo, const float *inp, int ldi, const float *w, int ldw, int N, int K,
                      int OC) {
    pthread_once(&once, matmul_init);
    for (int r = 0; r < N; r++) memset(out + (size_t)r * ldo, 0, OC * sizeof(float));
    for (int k0 = 0; k0 < K; k0 += KC) tile(out, ldo, inp, ldi, w, ldw, N, OC, k0, min_i(K, k0 + KC));
}

void matmul_nt(float *out, const float *inp, const float *w, const float *bias, int N, int K, int OC,
               int accumulate) {
    matmul_nt_ld(out, OC, inp, K, w, K, bias, N, K, OC, accumulate);
}

enum { TB = 32 };  // transpose block

static void transpose_block(float *dst, int ldd, const float *src, int lds, int R, int C, int bi, int cb) {
    int r0 = (bi / cb) * TB, c0 = (bi % cb) * TB;
    int r1 = min_i(R, r0 + TB), c1 = min_i(C, c0 + TB);
    for (int r = r0; r < r1; r++)
        for (int c = c0; c < c1; c++) dst[(size_t)c * ldd + r] = src[(size_t)r * lds + c];
}

void transpose_ld(float *dst, int ldd, const float *src, int lds, int R, int C) {
    int rb = (R + TB - 1) / TB, cb = (C + TB - 1) / TB;
    if ((size_t)R * C >= (1 << 18)) {
        #pragma omp parallel for schedule(static)
        for (int bi = 0; bi < rb * cb; bi++) transpose_block(dst, ldd, src, lds, R, C, bi, cb);
    } else {
        for (int bi = 0; bi < rb * cb; bi++) transpose_block(dst, ldd, src, lds, R, C, bi, cb);
    }
}

void transpose(float *dst, const float *src, int R, int C) { transpose_ld(dst, R, src, C, R, C); }
