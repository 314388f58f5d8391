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
#include "matmul.h"

#include "common.h"   // die

#include <immintrin.h>
#include <omp.h>
#include <pthread.h>
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

// v[16] (16 lanes each) -> one vector holding the 16 sums; per element the tree is
// (l, l+8) -> (l, l+4) -> (l, l+2) -> (l, l+1). Lane order is perm16.
__attribute__((target("avx512f"))) static inline __m512 reduce16(const __m512 *v) {
    __m512 w[8], u[4], z[2];
    for (int p = 0; p < 8; p++) {  // (l, l+8): 256-bit halves
        __m512 lo = _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0));
        __m512 hi = _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2));
        w[p] = _mm512_add_ps(lo, hi);
    }
    for (int p = 0; p < 4; p++) {  // (l, l+4): 128-bit quarters
        __m512 lo = _mm512_shuffle_f32x4(w[2 * p], w[2 * p + 1], _MM_SHUFFLE(2, 0, 2, 0));
        __m512 hi = _mm512_shuffle_f32x4(w[2 * p], w[2 * p + 1], _MM_SHUFFLE(3, 1, 3, 1));
        u[p] = _mm512_add_ps(lo, hi);
    }
    for (int p = 0; p < 2; p++) {  // (l, l+2) inside each 128-bit lane
        __m512 lo = _mm512_shuffle_ps(u[2 * p], u[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0));
        __m512 hi = _mm512_shuffle_ps(u[2 * p], u[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2));
        z[p] = _mm512_add_ps(lo, hi);
    }
    __m512 lo = _mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(2, 0, 2, 0));  // (l, l+1)
    __m512 hi = _mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(3, 1, 3, 1));
    return _mm512_add_ps(lo, hi);
}

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
            __m512 acc[16];
            for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
            for (int k = k0; k < kfull; k += 16) {
                __m512 x = _mm512_loadu_ps(a + k);
                #pragma GCC unroll 16
                for (int j = 0; j < 16; j++) acc[j] = _mm512_fmadd_ps(x, _mm512_loadu_ps(b[j] + k), acc[j]);
            }
            if (tail) {
                __m512 x = _mm512_maskz_loadu_ps(tail, a + kfull);
                #pragma GCC unroll 16
                for (int j = 0; j < 16; j++) acc[j] = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(tail, b[j] + kfull), acc[j]);
            }
            float lanes[16], s[16];
            _mm512_storeu_ps(lanes, reduce16(acc));
            for (int l = 0; l < 16; l++) s[perm16[l]] = lanes[l];
            int nj = min_i(16, nc - c);
            for (int j = 0; j < nj; j++) out[(size_t)r * ldo + c + j] += s[j];
        }
    }
    for (int r = 0; r < r4; r += 4) {
        const float *a[4];
        for (int i = 0; i < 4; i++) a[i] = A + (size_t)(r + i) * lda;
        for (int c = 0; c < nc; c += 4) {
            const float *b[4];
            for (int j = 0; j < 4; j++) b[j] = W + (size_t)min_i(c + j, nc - 1) * ldw;
            __m512 acc[16];
            for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
            for (int k = k0; k < kfull; k += 16) {
                __m512 x0 = _mm512_loadu_ps(a[0] + k), x1 = _mm512_loadu_ps(a[1] + k);
                __m512 x2 = _mm512_loadu_ps(a[2] + k), x3 = _mm512_loadu_ps(a[3] + k);
                #pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    __m512 y = _mm512_loadu_ps(b[j] + k);
                    acc[0 * 4 + j] = _mm512_fmadd_ps(x0, y, acc[0 * 4 + j]);
                    acc[1 * 4 + j] = _mm512_fmadd_ps(x1, y, acc[1 * 4 + j]);
                    acc[2 * 4 + j] = _mm512_fmadd_ps(x2, y, acc[2 * 4 + j]);
                    acc[3 * 4 + j] = _mm512_fmadd_ps(x3, y, acc[3 * 4 + j]);
                }
            }
            if (tail) {  // the same fused multiply-adds on zero-filled vectors
                __m512 x0 = _mm512_maskz_loadu_ps(tail, a[0] + kfull), x1 = _mm512_maskz_loadu_ps(tail, a[1] + kfull);
                __m512 x2 = _mm512_maskz_loadu_ps(tail, a[2] + kfull), x3 = _mm512_maskz_loadu_ps(tail, a[3] + kfull);
                #pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    __m512 y = _mm512_maskz_loadu_ps(tail, b[j] + kfull);
                    acc[0 * 4 + j] = _mm512_fmadd_ps(x0, y, acc[0 * 4 + j]);
                    acc[1 * 4 + j] = _mm512_fmadd_ps(x1, y, acc[1 * 4 + j]);
                    acc[2 * 4 + j] = _mm512_fmadd_ps(x2, y, acc[2 * 4 + j]);
                    acc[3 * 4 + j] = _mm512_fmadd_ps(x3, y, acc[3 * 4 + j]);
                }
            }
            float lanes[16], s[16];
            _mm512_storeu_ps(lanes, reduce16(acc));
            for (int l = 0; l < 16; l++) s[perm16[l]] = lanes[l];
            int nj = min_i(4, nc - c);
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < nj; j++) out[(size_t)(r + i) * ldo + c + j] += s[i * 4 + j];
        }
    }
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
    __m512 v[16];
    float lanes[16];
    for (int j = 0; j < 16; j++) v[j] = _mm512_set1_ps((float)j);  // every lane of v[j] is j
    _mm512_storeu_ps(lanes, reduce16(v));                           // lane l = 16 * element
    for (int l = 0; l < 16; l++) perm16[l] = (int)(lanes[l] / 16.0f);
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

const char *matmul_isa(void) {
    pthread_once(&once, matmul_init);
    return isa_name;
}

void matmul_nt_ld(float *out, int ldo, const float *inp, int ldi, const float *w, int ldw, const float *bias,
                  int N, int K, int OC, int accumulate) {
    pthread_once(&once, matmul_init);
    if (N <= 0 || OC <= 0) return;
    // tiles of MB rows x NB columns; narrower columns when there are few rows (decoding), so
    // that every thread gets work
    int NB = 64;
    int nthreads = omp_get_max_threads();
    int rt = (N + MB - 1) / MB;
    while (NB > 16 && (size_t)rt * ((OC + NB - 1) / NB) < 4 * (size_t)nthreads) NB /= 2;
    int ct = (OC + NB - 1) / NB;
    int ntiles = rt * ct;
    double macs = (double)N * K * OC;
    #pragma omp parallel for schedule(dynamic, 1) if (macs >= PAR_MIN_MACS && ntiles > 1)
    for (int t = 0; t < ntiles; t++) {
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
            tile(out + (size_t)r0 * ldo + c0, ldo, inp + (size_t)r0 * ldi, ldi, w + (size_t)c0 * ldw, ldw, nr,
                 nc, k0, min_i(K, k0 + KC));
    }
}

void matmul_nt(float *out, const float *inp, const float *w, const float *bias, int N, int K, int OC,
               int accumulate) {
    matmul_nt_ld(out, OC, inp, K, w, K, bias, N, K, OC, accumulate);
}

void transpose_ld(float *dst, int ldd, const float *src, int lds, int R, int C) {
    enum { TB = 32 };
    int rb = (R + TB - 1) / TB, cb = (C + TB - 1) / TB;
    #pragma omp parallel for schedule(static) if ((size_t)R * C >= (1 << 18))
    for (int bi = 0; bi < rb * cb; bi++) {
        int r0 = (bi / cb) * TB, c0 = (bi % cb) * TB;
        int r1 = min_i(R, r0 + TB), c1 = min_i(C, c0 + TB);
        for (int r = r0; r < r1; r++)
            for (int c = c0; c < c1; c++) dst[(size_t)c * ldd + r] = src[(size_t)r * lds + c];
    }
}

void transpose(float *dst, const float *src, int R, int C) { transpose_ld(dst, R, src, C, R, C); }
