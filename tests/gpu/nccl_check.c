// nccl_check.c — NCCL all-reduce of a GPU buffer against the CPU sum, on every rank
// (lib/comm_nccl.c). Run by tests/gpu/multi_gpu.sh, one process per GPU:
//
//   mpirun -np G build/gpu/nccl_check               # id broadcast over MPI
//   RANK=r WORLD_SIZE=G LOCAL_RANK=r SAFE_NCCL_ID_FILE=/shared/id build/gpu/nccl_check
//   build/gpu/nccl_check                            # world size 1: the one-rank communicator
//
// Rank r fills x[i] = value(r, i), a function every rank can evaluate for every other rank,
// so each rank computes the exact sum over the ranks in double (the reference) and compares
// NCCL's fp32 result with it: |nccl − ref| ≤ 1e-6 · max|ref| (a sum of G fp32 values rounds
// at ~G·6e-8). The same sum in five buckets issued with comm_nccl_allreduce_f32_start on a
// second stream and one comm_nccl_wait (the gradients' overlap with the backward) must match
// too. Under MPI it also compares with comm_allreduce_f32 (the CPU path). Then AVG
// and MAX, and a bandwidth line for a 256 MiB buffer. Rank 0 prints PASS/FAIL lines; a
// check fails when it fails on any rank (the verdicts are reduced with NCCL MAX).
#ifndef SAFE_NCCL
#error "tests/gpu/nccl_check.c needs a build with NCCL (make NCCL=1 gpu-tests)"
#endif
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"       // ranks, comm_allreduce_f32 (the CPU reference path)
#include "comm_nccl.h"  // the module under test
#include "common.h"     // xmalloc, now_seconds

static int passed, failed;

#define CUDA_CHECK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) \
    die(EXIT_RUNTIME, "rank %d: %s: %s", comm_rank(), #call, cudaGetErrorString(e_)); } while (0)

// value(r, i): in [-1, 1), different on every rank, cheap, no RNG state
static float value(int r, size_t i) {
    unsigned long long z = (unsigned long long)i * 0x9E3779B97F4A7C15ULL + (unsigned long long)(r + 1) * 0xBF58476D1CE4E5B9ULL;
    z ^= z >> 31;
    return (float)((double)(z >> 40) / (double)(1ULL << 23) - 1.0);
}

// One verdict for all ranks (NCCL MAX of the local failure flag), printed by rank 0.
static void verdict(const char *name, int bad_here, float *dscratch) {
    float f = (float)bad_here;
    CUDA_CHECK(cudaMemcpy(dscratch, &f, sizeof f, cudaMemcpyHostToDevice));
    comm_nccl_allreduce_f32(dscratch, 1, COMM_MAX, NULL, "verdict");
    CUDA_CHECK(cudaMemcpy(&f, dscratch, sizeof f, cudaMemcpyDeviceToHost));
    if (f > 0) failed++; else passed++;
    if (comm_rank() == 0) printf("%s %s\n", f > 0 ? "FAIL" : "PASS", name);
    fflush(stdout);
}

int main(void) {
    safe_progname = "nccl_check";
    comm_init(120);
    comm_nccl_init();
    const CommInfo *ci = comm_info();
    int W = ci->world, r = ci->rank;
    if (r == 0) printf("nccl_check: %d rank(s) (%s), rank 0 on GPU %d\n", W, ci->source, comm_nccl_device());

    size_t n = ((size_t)1 << 22) + 7;   // 16 MiB and an odd tail
    float *x = xmalloc(n * sizeof(float)), *got = xmalloc(n * sizeof(float)), *d, *dflag;
    double *ref = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        x[i] = value(r, i);
        double s = 0;
        for (int q = 0; q < W; q++) s += value(q, i);
        ref[i] = s;
    }
    CUDA_CHECK(cudaMalloc((void **)&d, n * sizeof(float)));
    CUDA_CHECK(cudaMalloc((void **)&dflag, sizeof(float)));
    char name[96];

    // ---- SUM against the exact sum ----
    CUDA_CHECK(cudaMemcpy(d, x, n * sizeof(float), cudaMemcpyHostToDevice));
    comm_nccl_allreduce_f32(d, n, COMM_SUM, NULL, "sum");
    CUDA_CHECK(cudaMemcpy(got, d, n * sizeof(float), cudaMemcpyDeviceToHost));
    double scale = 0, worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (fabs(ref[i]) > scale) scale = fabs(ref[i]);
        double e = fabs(got[i] - ref[i]);
        if (e > worst) { worst = e; at = i; }
    }
    if (r == 0) {
        printf("  sum: first values nccl|exact:");
        for (int i = 0; i < 3; i++) printf(" %.8g|%.8g", got[i], ref[i]);
        printf("; largest error %.3e at [%zu] (%.3e of max|sum|)\n", worst, at, worst / scale);
    }
    snprintf(name, sizeof name, "nccl_sum_%d_ranks_matches_exact_sum", W);
    verdict(name, worst > 1e-6 * scale, dflag);

    // ---- the same sum in uneven buckets, issued without waiting on a second stream and then
    // waited for once (how backend.c overlaps the gradients' sum with the backward): the exact
    // sum again, and with 1 or 2 ranks the one-call result bit for bit (a + b in any order) ----
    {
        cudaStream_t cs;
        CUDA_CHECK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
        CUDA_CHECK(cudaMemcpy(d, x, n * sizeof(float), cudaMemcpyHostToDevice));
        size_t cut[] = {n, n - n / 3, n / 2 + 5, n / 7, 1000, 0};   // top down, as the backward hands them out
        for (int k = 0; k + 1 < (int)(sizeof cut / sizeof cut[0]); k++)
            comm_nccl_allreduce_f32_start(d + cut[k + 1], cut[k] - cut[k + 1], COMM_SUM, cs, "bucketed sum");
        comm_nccl_wait(cs, "bucketed sum");
        float *bk = xmalloc(n * sizeof(float));
        CUDA_CHECK(cudaMemcpy(bk, d, n * sizeof(float), cudaMemcpyDeviceToHost));
        double bworst = 0, vs_one = 0;
        for (size_t i = 0; i < n; i++) {
            bworst = fmax(bworst, fabs(bk[i] - ref[i]));
            vs_one = fmax(vs_one, fabs((double)bk[i] - got[i]));
        }
        if (r == 0)
            printf("  bucketed sum (5 buckets, second stream): largest error %.3e of max|sum|, vs the one-call "
                   "sum %.3e\n", bworst / scale, vs_one / scale);
        snprintf(name, sizeof name, "nccl_bucketed_sum_%d_ranks_matches_exact_sum", W);
        verdict(name, bworst > 1e-6 * scale, dflag);
        if (W <= 2) {
            snprintf(name, sizeof name, "nccl_bucketed_sum_%d_ranks_equals_one_call", W);
            verdict(name, vs_one != 0, dflag);
        }
        CUDA_CHECK(cudaStreamDestroy(cs));
        free(bk);
    }

    // ---- the CPU path (MPI) gives the same sums within fp32 rounding ----
    if (ci->mpi) {
        float *cpu = xmalloc(n * sizeof(float));
        memcpy(cpu, x, n * sizeof(float));
        comm_allreduce_f32(cpu, n, COMM_SUM, "cpu sum");
        double diff = 0;
        for (size_t i = 0; i < n; i++) diff = fmax(diff, fabs((double)cpu[i] - got[i]));
        if (r == 0) printf("  nccl vs mpi (cpu) sums: largest difference %.3e (%.3e of max|sum|)\n", diff, diff / scale);
        snprintf(name, sizeof name, "nccl_sum_%d_ranks_matches_cpu_allreduce", W);
        verdict(name, diff > 1e-6 * scale, dflag);
        free(cpu);
    }

    // ---- AVG and MAX ----
    CUDA_CHECK(cudaMemcpy(d, x, n * sizeof(float), cudaMemcpyHostToDevice));
    comm_nccl_allreduce_f32(d, n, COMM_AVG, NULL, "avg");
    CUDA_CHECK(cudaMemcpy(got, d, n * sizeof(float), cudaMemcpyDeviceToHost));
    worst = 0;
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(got[i] - ref[i] / W));
    snprintf(name, sizeof name, "nccl_avg_%d_ranks", W);
    verdict(name, worst > 1e-6 * scale / W, dflag);

    CUDA_CHECK(cudaMemcpy(d, x, n * sizeof(float), cudaMemcpyHostToDevice));
    comm_nccl_allreduce_f32(d, n, COMM_MAX, NULL, "max");
    CUDA_CHECK(cudaMemcpy(got, d, n * sizeof(float), cudaMemcpyDeviceToHost));
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        float m = value(0, i);
        for (int q = 1; q < W; q++) m = fmaxf(m, value(q, i));
        bad += got[i] != m;
    }
    snprintf(name, sizeof name, "nccl_max_%d_ranks_exact", W);
    verdict(name, bad != 0, dflag);

    // ---- bandwidth: 256 MiB, 5 timed all-reduces after a warm-up ----
    size_t nb = (size_t)64 << 20;
    float *db;
    CUDA_CHECK(cudaMalloc((void **)&db, nb * sizeof(float)));
    CUDA_CHECK(cudaMemset(db, 0, nb * sizeof(float)));
    comm_nccl_allreduce_f32(db, nb, COMM_SUM, NULL, "warm-up");
    double t0 = now_seconds();
    for (int k = 0; k < 5; k++) comm_nccl_allreduce_f32(db, nb, COMM_SUM, NULL, "bandwidth");
    double dt = (now_seconds() - t0) / 5;
    double bytes = (double)nb * sizeof(float);
    // bus bandwidth as nccl-tests defines it: algbw · 2(W−1)/W
    if (r == 0)
        printf("  all-reduce of 256 MiB on %d rank(s): %.2f ms, algbw %.1f GB/s, busbw %.1f GB/s\n", W, dt * 1e3,
               bytes / dt / 1e9, W > 1 ? bytes / dt / 1e9 * 2.0 * (W - 1) / W : 0.0);

    cudaFree(db);
    cudaFree(d);
    cudaFree(dflag);
    free(x); free(got); free(ref);
    comm_nccl_finalize();
    comm_finalize();
    if (r == 0) printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
