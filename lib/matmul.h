// matmul.h — batch-invariant fp32 matrix products for the CPU engine.
//
// Every output element is a fixed-order reduction over its own input row and weight row: the
// same bits whatever the number of rows N, the row's place in the batch, the tiling or the
// number of threads. So a sequence gets the same logits alone, padded in a batch, or one token
// at a time through the KV cache (a BLAS sgemm does not promise that: its kernels and blocking
// change with the matrix shape). The instruction set (AVX-512, AVX2+FMA, plain C) is picked
// once at run time; results are identical on one machine, not across instruction sets.
#ifndef SAFE_MATMUL_H
#define SAFE_MATMUL_H

// out (N,OC) = inp (N,K) @ w^T + bias, with w (OC,K) row-major ("NT": both operands have K
// contiguous) and bias (OC) or NULL. accumulate: out += instead of out =.
void matmul_nt(float *out, const float *inp, const float *w, const float *bias, int N, int K, int OC,
               int accumulate);

// The same with row strides (in floats) for out, inp and w: operate on column blocks.
void matmul_nt_ld(float *out, int ldo, const float *inp, int ldi, const float *w, int ldw, const float *bias,
                  int N, int K, int OC, int accumulate);

// out (N,OC) = inp (N,K) @ w^T on the calling thread only (for use inside parallel loops),
// with row strides; the same per-element arithmetic as matmul_nt.
void matmul_nt_serial(float *out, int ldo, const float *inp, int ldi, const float *w, int ldw, int N, int K,
                      int OC);

// Sums of products over segments of K, accumulated in double:
//   out (N,OC) (double, row stride ldo) += sum over s of (double) P_s,
//   P_s (N,OC) = inp[:, k in seg s] @ w[:, k in seg s]^T, computed in fp32
// where segment s is [seg_start[s], seg_start[s] + seg_len[s]) of the K columns of inp (N rows,
// stride ldi) and w (OC rows, stride ldw). Each P_s has exactly the bits matmul_nt gives on
// that segment alone, wherever the segment starts, so a weight gradient (K = tokens) becomes a
// double sum of per-sequence terms that do not depend on the sequence's batch mates: the same
// bits (up to the rounding of the double sums) whichever ranks or batches hold the sequences.
void matmul_nt_segsum(double *out, int ldo, const float *inp, int ldi, const float *w, int ldw, int N, int OC,
                      const int *seg_start, const int *seg_len, int nseg);

// dst (C,R) = src (R,C)^T; the _ld form with row strides ldd (of dst) and lds (of src).
void transpose(float *dst, const float *src, int R, int C);
void transpose_ld(float *dst, int ldd, const float *src, int lds, int R, int C);

// Name of the kernel in use: "avx512", "avx2" or "generic".
const char *matmul_isa(void);
// Tests and benchmarks: use the named kernel from now on (-1 if this CPU lacks it). Not
// thread-safe; results change with the kernel, so never switch in the middle of a run.
int matmul_force_isa(const char *name);

#endif
