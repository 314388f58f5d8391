// runtime.cu — the process's GPU: device choice, the compute stream and the communication
// stream, checked allocation and copies, the shared workspace, launch checks, timers. Every
// other kernels/*.cu file builds on it.
//
// Honest note: written and compiled without a GPU (CUDA 13.0, sm_90/sm_80); tests/gpu/run.sh
// is its first check on real hardware.
#include "common.cuh"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_ready, g_device, g_sync_each;
static cudaStream_t g_stream;
static cudaDeviceProp g_prop;
static void *g_ws, *g_ws2;
static size_t g_ws_cap, g_ws2_cap;

extern "C" int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();   // no driver or no device: clear the sticky error, report none
        return 0;
    }
    return n;
}

extern "C" void cuda_init(void) {
    if (g_ready) return;
    int n = cuda_device_count();
    if (n <= 0) die(EXIT_USAGE, "no CUDA GPU is visible (cudaGetDeviceCount = 0): use --device cpu");
    const char *env = getenv("SAFE_CUDA_DEVICE");
    g_device = env && *env ? atoi(env) : 0;
    if (g_device < 0 || g_device >= n)
        die(EXIT_USAGE, "SAFE_CUDA_DEVICE=%s: this machine has GPUs 0..%d", env, n - 1);
    CUDA_CHECK(cudaSetDevice(g_device), "device %d", g_device);
    CUDA_CHECK(cudaGetDeviceProperties(&g_prop, g_device), "device %d", g_device);
    CUDA_CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking), "device %d", g_device);
    const char *s = getenv("SAFE_CUDA_SYNC");
    g_sync_each = s && *s && strcmp(s, "0") != 0;
    g_ready = 1;
}

extern "C" const char *cuda_device_name(void) { return g_ready ? g_prop.name : "(none)"; }

cudaStream_t safe_stream(void) {
    if (!g_ready) cuda_init();
    return g_stream;
}

extern "C" void cuda_memory_info(size_t *free_b, size_t *total_b) {
    cuda_init();
    size_t f = 0, t = 0;
    CUDA_CHECK(cudaMemGetInfo(&f, &t), "memory info");
    if (free_b) *free_b = f;
    if (total_b) *total_b = t;
}

extern "C" void *cuda_malloc(size_t bytes, const char *what) {
    cuda_init();
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 16);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t f = 0, t = 0;
        cudaMemGetInfo(&f, &t);
        die(EXIT_RUNTIME, "out of GPU memory: cudaMalloc of %.1f MiB for %s failed (%s); %.1f of %.1f MiB free "
            "(smaller --batch, or --device cpu)", bytes / 1048576.0, what, cudaGetErrorString(e), f / 1048576.0,
            t / 1048576.0);
    }
    return p;
}

extern "C" void cuda_free(void *p) {
    if (p) CUDA_CHECK(cudaFree(p), "free %p", p);
}

extern "C" void cuda_upload(void *dst, const void *src, size_t bytes, const char *what) {
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, safe_stream()), "upload %s, %zu bytes", what,
               bytes);
    // the host buffer may be reused at once by the caller: wait for pageable copies to land
    CUDA_CHECK(cudaStreamSynchronize(g_stream), "upload %s, %zu bytes", what, bytes);
}

extern "C" void cuda_download(void *dst, const void *src, size_t bytes, const char *what) {
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, safe_stream()), "download %s, %zu bytes", what,
               bytes);
    CUDA_CHECK(cudaStreamSynchronize(g_stream), "download %s, %zu bytes", what, bytes);
}

extern "C" void cuda_copy(void *dst, const void *src, size_t bytes, const char *what) {
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, safe_stream()), "copy %s, %zu bytes", what,
               bytes);
}

extern "C" void cuda_zero(void *p, size_t bytes, const char *what) {
    if (!bytes) return;
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, safe_stream()), "zero %s, %zu bytes", what, bytes);
}

extern "C" void cuda_poison(void *p, size_t bytes) {
    if (!bytes) return;
    CUDA_CHECK(cudaMemsetAsync(p, 0xFF, bytes, safe_stream()), "poison %zu bytes", bytes);
}

extern "C" void cuda_sync(const char *what) {
    CUDA_CHECK(cudaStreamSynchronize(safe_stream()), "%s", what);
}

static void *grow(void **p, size_t *cap, size_t bytes, const char *what) {
    if (bytes <= *cap) return *p;
    if (*p) {
        CUDA_CHECK(cudaStreamSynchronize(safe_stream()), "%s", what);   // earlier kernels may still read it
        cuda_free(*p);
    }
    size_t n = bytes + bytes / 4 + 4096;
    *p = cuda_malloc(n, what);
    *cap = n;
    return *p;
}

// ---- the communication stream ------------------------------------------------------------
// NCCL's all-reduces run on a second stream so that they overlap the backward's kernels on
// the compute stream; one reusable event per direction orders the two (cudaStreamWaitEvent
// takes the event's latest record at the time of the call, so reusing it is safe).
static cudaStream_t g_comm;
static cudaEvent_t g_ev_compute, g_ev_comm;

static void comm_stream_init(void) {
    if (g_comm) return;
    cuda_init();
    int least = 0, greatest = 0;   // the highest priority: NCCL's blocks start before queued compute blocks
    CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest), "communication stream");
    CUDA_CHECK(cudaStreamCreateWithPriority(&g_comm, cudaStreamNonBlocking, greatest), "communication stream");
    CUDA_CHECK(cudaEventCreateWithFlags(&g_ev_compute, cudaEventDisableTiming), "communication stream event");
    CUDA_CHECK(cudaEventCreateWithFlags(&g_ev_comm, cudaEventDisableTiming), "communication stream event");
}

extern "C" void *cuda_comm_stream(void) {
    comm_stream_init();
    return (void *)g_comm;
}

extern "C" void cuda_comm_after_compute(void) {
    comm_stream_init();
    CUDA_CHECK(cudaEventRecord(g_ev_compute, g_stream), "mark the compute stream for the communication stream");
    CUDA_CHECK(cudaStreamWaitEvent(g_comm, g_ev_compute, 0), "communication stream waits for the compute stream");
}

extern "C" void cuda_compute_after_comm(void) {
    comm_stream_init();
    CUDA_CHECK(cudaEventRecord(g_ev_comm, g_comm), "mark the communication stream for the compute stream");
    CUDA_CHECK(cudaStreamWaitEvent(g_stream, g_ev_comm, 0), "compute stream waits for the communication stream");
}

void *safe_workspace(size_t bytes) { return grow(&g_ws, &g_ws_cap, bytes, "kernel workspace"); }
void *safe_workspace2(size_t bytes) { return grow(&g_ws2, &g_ws2_cap, bytes, "kernel workspace 2"); }

void safe_launch_check(const char *kernel, const char *fmt, ...) {
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && g_sync_each) e = cudaStreamSynchronize(g_stream);
    if (e == cudaSuccess) return;
    char sz[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sz, sizeof sz, fmt, ap);
    va_end(ap);
    die(EXIT_RUNTIME, "CUDA error in kernel %s [%s]: %s%s", kernel, sz, cudaGetErrorString(e),
        g_sync_each ? "" : " (errors are reported late unless SAFE_CUDA_SYNC=1)");
}

struct CudaTimer {
    cudaEvent_t a, b;
};

extern "C" CudaTimer *cuda_timer_start(void) {
    CudaTimer *t = (CudaTimer *)malloc(sizeof(CudaTimer));
    if (!t) die(EXIT_RUNTIME, "out of memory (timer)");
    CUDA_CHECK(cudaEventCreate(&t->a), "timer");
    CUDA_CHECK(cudaEventCreate(&t->b), "timer");
    CUDA_CHECK(cudaEventRecord(t->a, safe_stream()), "timer");
    return t;
}

extern "C" double cuda_timer_stop(CudaTimer *t) {
    float ms = 0;
    CUDA_CHECK(cudaEventRecord(t->b, safe_stream()), "timer");
    CUDA_CHECK(cudaEventSynchronize(t->b), "timer");
    CUDA_CHECK(cudaEventElapsedTime(&ms, t->a, t->b), "timer");
    cudaEventDestroy(t->a);
    cudaEventDestroy(t->b);
    free(t);
    return ms;
}
