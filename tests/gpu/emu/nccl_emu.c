// nccl_emu.c — comm_nccl.h on the CPU emulation of the GPU (tests/gpu/emu/). Emulated device
// memory is host memory, so NCCL's all-reduce becomes comm.h's: over MPI between ranks, the
// buffer unchanged with one rank. Linked into the emulated tools and test_kernels instead of
// lib/comm_nccl.c, so the NCCL path of lib/backend.c (SAFE_NCCL=1's one-rank communicator,
// the gradient buckets handed out during the backward, the wait before the clip) runs in
// make test without a GPU (tests/test_nccl_emu.sh).
//
// The emulated kernels finish when they are launched, so a bucket is complete when it is
// handed out. A real all-reduce runs at some moment between its start and the wait, and two
// mistakes would go unseen if this stand-in summed at the start: a kernel writing a bucket
// after its start (a bucket handed out too early), and someone reading the gradients before
// the wait. So a started bucket is copied at the start and summed only at the wait, where
// the buffer must still equal the copy (else the run stops, naming the bucket); a reader
// before the wait sees unsummed gradients, which the tests' comparison with
// SAFE_NCCL_OVERLAP=0 catches.
//
// SAFE_NCCL_EMU_LOG=FILE: every call appended to FILE as a line, "start L N WHAT" (a bucket
// of N floats started after L emulated kernel launches), "wait L K" (K started ones summed),
// "allreduce L N WHAT" (one call), so that a test can see that the NCCL route was taken and
// that the buckets went out during the backward (kernels ran between them), not only that the
// sums came out right.
#include "comm_nccl.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"   // die, xmalloc

int cuda_device_count(void);                    // the emulation's (runtime_emu.cpp)
extern unsigned long long emu_kernel_launches;  // (emu.cpp)

typedef struct {
    float *dev, *copy;   // (n) the bucket, and its contents at the start
    size_t n;
    CommOp op;
    char what[192];
} Pending;

static Pending *pending;
static int n_pending, cap_pending, up, device = -1;

static void log_call(const char *fmt, ...) {
    const char *path = getenv("SAFE_NCCL_EMU_LOG");
    if (!path || !*path) return;
    FILE *f = fopen(path, "a");
    if (!f) die(EXIT_RUNTIME, "emulated NCCL: cannot append to SAFE_NCCL_EMU_LOG=%s", path);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fclose(f);
}

int comm_nccl_built(void) { return 1; }
int comm_nccl_device(void) { return device; }

void comm_nccl_init(void) {
    if (up) return;
    const CommInfo *ci = comm_info();
    int count = cuda_device_count();
    const char *want = getenv("SAFE_CUDA_DEVICE");
    device = want && *want ? atoi(want) : ci->local_rank % count;
    if (device < 0 || device >= count)
        die(EXIT_USAGE, "rank %d: SAFE_CUDA_DEVICE=%s but %d devices are visible", ci->rank, want, count);
    if (ci->world > 1 && !ci->mpi)
        die(EXIT_USAGE, "rank %d: the emulated NCCL sums over MPI: start the %d ranks with mpirun", ci->rank, ci->world);
    up = 1;
}

static void need_up(const char *call, const char *what) {
    if (!up) die(EXIT_RUNTIME, "internal error: %s (%s) before comm_nccl_init", call, what);
}

void comm_nccl_allreduce_f32(float *dev, size_t n, CommOp op, void *stream, const char *what) {
    (void)stream;
    need_up("comm_nccl_allreduce_f32", what);
    if (n_pending > 0)
        die(EXIT_RUNTIME, "internal error: comm_nccl_allreduce_f32 (%s) while %d started all-reduces are not waited "
            "for", what, n_pending);
    log_call("allreduce %llu %zu %s", emu_kernel_launches, n, what);
    comm_allreduce_f32(dev, n, op, what);
}

void comm_nccl_allreduce_f32_start(float *dev, size_t n, CommOp op, void *stream, const char *what) {
    (void)stream;
    need_up("comm_nccl_allreduce_f32_start", what);
    if (n == 0) return;
    if (n_pending == cap_pending) {
        cap_pending = cap_pending ? 2 * cap_pending : 16;
        pending = realloc(pending, (size_t)cap_pending * sizeof *pending);
        if (!pending) die(EXIT_RUNTIME, "out of memory: emulated NCCL bookkeeping");
    }
    Pending *p = &pending[n_pending++];
    p->dev = dev;
    p->n = n;
    p->op = op;
    p->copy = xmalloc(n * sizeof(float));
    memcpy(p->copy, dev, n * sizeof(float));
    snprintf(p->what, sizeof p->what, "%s", what);
    log_call("start %llu %zu %s", emu_kernel_launches, n, what);
}

void comm_nccl_wait(void *stream, const char *what) {
    (void)stream;
    need_up("comm_nccl_wait", what);
    log_call("wait %llu %d", emu_kernel_launches, n_pending);
    for (int i = 0; i < n_pending; i++) {
        Pending *p = &pending[i];
        if (memcmp(p->copy, p->dev, p->n * sizeof(float)) != 0)
            die(EXIT_RUNTIME, "emulated NCCL: the bucket '%s' (%zu floats) was written after its all-reduce "
                "started: it was handed out before the backward finished it", p->what, p->n);
        comm_allreduce_f32(p->dev, p->n, p->op, p->what);
        free(p->copy);
    }
    n_pending = 0;
}

void comm_nccl_finalize(void) {
    if (n_pending > 0)
        die(EXIT_RUNTIME, "internal error: %d started all-reduces never waited for (comm_nccl_wait)", n_pending);
    free(pending);
    pending = NULL;
    cap_pending = 0;
    up = 0;
}
