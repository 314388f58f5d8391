// comm_nccl.c — the NCCL communicator and all-reduce of CUDA buffers (see comm_nccl.h).
// Compiled with -DSAFE_NCCL -I$(CUDA_HOME)/include when NCCL=1; without it every entry point exits 1 saying the build has no NCCL.
// Honest note: written and compiled without a GPU; tests/gpu/multi_gpu.sh is its check.
#include "comm_nccl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"   // die, now_seconds

#ifdef SAFE_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>

static ncclComm_t nccl;
static int nccl_up, device = -1;

int comm_nccl_built(void) { return 1; }
int comm_nccl_device(void) { return device; }

#define CUDA_OK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) \
    die(EXIT_RUNTIME, "rank %d: %s: %s", comm_rank(), #call, cudaGetErrorString(e_)); } while (0)

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

// Wait for the communicator's pending work (and `stream`, when given) up to the deadline.
static void nccl_wait(ncclResult_t issued, const char *kind, const char *what, cudaStream_t stream, int use_stream) {
    if (issued != ncclSuccess && issued != ncclInProgress) {
        if (nccl_up) ncclCommAbort(nccl);
        die(EXIT_RUNTIME, "rank %d: NCCL %s (%s) failed: %s", comm_rank(), kind, what, ncclGetErrorString(issued));
    }
    double t0 = now_seconds(), timeout = comm_info()->timeout;
    for (;;) {
        ncclResult_t st = ncclSuccess;
        ncclResult_t rc = ncclCommGetAsyncError(nccl, &st);
        if (rc != ncclSuccess) st = rc;
        if (st != ncclSuccess && st != ncclInProgress) {
            ncclCommAbort(nccl);
            die(EXIT_RUNTIME, "rank %d: NCCL %s (%s) failed: %s", comm_rank(), kind, what, ncclGetErrorString(st));
        }
        if (st == ncclSuccess) {
            if (!use_stream) return;
            cudaError_t q = cudaStreamQuery(stream);
            if (q == cudaSuccess) return;
            if (q != cudaErrorNotReady)
                die(EXIT_RUNTIME, "rank %d: NCCL %s (%s): CUDA error %s", comm_rank(), kind, what, cudaGetErrorString(q));
        }
        if (now_seconds() - t0 > timeout) {
            ncclCommAbort(nccl);
            die(EXIT_RUNTIME, "rank %d: collective %s (%s) timed out after %g s: a peer rank probably died "
                "(if one is only slow, raise --comm-timeout or SAFE_COMM_TIMEOUT)", comm_rank(), kind, what, timeout);
        }
        sleep_us(100);
    }
}

// The unique id through a file on a shared filesystem: rank 0 writes it (temporary name, then
// rename, so a reader never sees half an id), the others poll for it.
static void id_through_file(const char *path, ncclUniqueId *id) {
    if (comm_rank() == 0) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
        FILE *f = fopen(tmp, "wb");
        if (!f || fwrite(id, sizeof *id, 1, f) != 1 || fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0)
            die(EXIT_RUNTIME, "rank 0: cannot write the NCCL id to %s (SAFE_NCCL_ID_FILE)", tmp);
        if (rename(tmp, path) != 0) die(EXIT_RUNTIME, "rank 0: cannot rename %s to %s", tmp, path);
        return;
    }
    double t0 = now_seconds(), timeout = comm_info()->timeout;
    for (;;) {
        FILE *f = fopen(path, "rb");
        if (f) {
            size_t got = fread(id, 1, sizeof *id, f);
            fclose(f);
            if (got == sizeof *id) return;
        }
        if (now_seconds() - t0 > timeout)
            die(EXIT_RUNTIME, "rank %d: no NCCL id in %s after %g s: did rank 0 start? (SAFE_NCCL_ID_FILE must "
                "be on a filesystem every rank sees)", comm_rank(), path, timeout);
        sleep_us(50000);
    }
}

void comm_nccl_init(void) {
    if (nccl_up) return;
    const CommInfo *ci = comm_info();
    int count = 0;
    CUDA_OK(cudaGetDeviceCount(&count));
    if (count < 1) die(EXIT_RUNTIME, "rank %d: no CUDA device visible", ci->rank);
    const char *want = getenv("SAFE_CUDA_DEVICE");
    device = want && *want ? atoi(want) : ci->local_rank % count;
    if (device < 0 || device >= count)
        die(EXIT_USAGE, "rank %d: SAFE_CUDA_DEVICE=%s but %d devices are visible", ci->rank, want, count);
    if (ci->local_world > count)
        warn("rank %d: %d ranks on this machine share %d GPUs: NCCL needs one GPU per rank", ci->rank, ci->local_world, count);
    CUDA_OK(cudaSetDevice(device));

    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    const char *file = getenv("SAFE_NCCL_ID_FILE");
    if (ci->rank == 0) {
        ncclResult_t rc = ncclGetUniqueId(&id);
        if (rc != ncclSuccess) die(EXIT_RUNTIME, "rank 0: ncclGetUniqueId: %s", ncclGetErrorString(rc));
    }
    if (ci->world > 1) {
        if (ci->mpi) comm_bcast(&id, sizeof id, 0, "NCCL unique id");
        else if (file && *file) id_through_file(file, &id);
        else die(EXIT_USAGE, "rank %d: %d ranks without MPI: set SAFE_NCCL_ID_FILE to a fresh path on a shared "
                 "filesystem so rank 0 can hand its NCCL id to the others", ci->rank, ci->world);
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;   // every call returns at once; nccl_wait polls with the deadline
    ncclResult_t rc = ncclCommInitRankConfig(&nccl, ci->world, id, ci->rank, &config);
    nccl_up = 1;
    nccl_wait(rc, "init", "NCCL communicator", 0, 0);
    // everyone has joined, so everyone has read the id: the file can go
    if (ci->world > 1 && !ci->mpi && ci->rank == 0) unlink(file);
}

void comm_nccl_allreduce_f32(float *dev, size_t n, CommOp op, void *stream, const char *what) {
    if (!nccl_up) die(EXIT_RUNTIME, "internal error: comm_nccl_allreduce_f32 (%s) before comm_nccl_init", what);
    if (n == 0) return;
    ncclRedOp_t rop = op == COMM_AVG ? ncclAvg : op == COMM_MAX ? ncclMax : op == COMM_MIN ? ncclMin : ncclSum;
    cudaStream_t s = (cudaStream_t)stream;
    ncclResult_t rc = ncclAllReduce(dev, dev, n, ncclFloat32, rop, nccl, s);
    nccl_wait(rc, "allreduce", what, s, 1);
}

// Enqueue only: nccl_wait without the stream returns once the communicator leaves
// ncclInProgress (NCCL's rule for a non-blocking communicator before its next call).
void comm_nccl_allreduce_f32_start(float *dev, size_t n, CommOp op, void *stream, const char *what) {
    if (!nccl_up) die(EXIT_RUNTIME, "internal error: comm_nccl_allreduce_f32_start (%s) before comm_nccl_init", what);
    if (n == 0) return;
    ncclRedOp_t rop = op == COMM_AVG ? ncclAvg : op == COMM_MAX ? ncclMax : op == COMM_MIN ? ncclMin : ncclSum;
    ncclResult_t rc = ncclAllReduce(dev, dev, n, ncclFloat32, rop, nccl, (cudaStream_t)stream);
    nccl_wait(rc, "allreduce", what, (cudaStream_t)stream, 0);
}

void comm_nccl_wait(void *stream, const char *what) {
    if (!nccl_up) die(EXIT_RUNTIME, "internal error: comm_nccl_wait (%s) before comm_nccl_init", what);
    nccl_wait(ncclSuccess, "allreduce", what, (cudaStream_t)stream, 1);
}

void comm_nccl_finalize(void) {
    if (!nccl_up) return;
    nccl_wait(ncclCommFinalize(nccl), "finalize", "NCCL communicator", 0, 0);
    ncclCommDestroy(nccl);
    nccl_up = 0;
}

#else  // no NCCL in this build

#define NO_NCCL "this build has no NCCL: build where nvcc and nccl.h exist (make CUDA=1 NCCL=1)"
int comm_nccl_built(void) { return 0; }
int comm_nccl_device(void) { return -1; }
void comm_nccl_init(void) { die(EXIT_USAGE, NO_NCCL); }
void comm_nccl_allreduce_f32(float *dev, size_t n, CommOp op, void *stream, const char *what) {
    (void)dev; (void)n; (void)op; (void)stream; (void)what;
    die(EXIT_USAGE, NO_NCCL);
}
void comm_nccl_allreduce_f32_start(float *dev, size_t n, CommOp op, void *stream, const char *what) {
    comm_nccl_allreduce_f32(dev, n, op, stream, what);
}
void comm_nccl_wait(void *stream, const char *what) {
    (void)stream; (void)what;
    die(EXIT_USAGE, NO_NCCL);
}
void comm_nccl_finalize(void) {}

#endif
