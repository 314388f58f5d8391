// runtime_emu.cpp — kernels/runtime.cu for the emulator: "device" memory is host memory, one
// GPU that is always there, launches checked by the scheduler (a divergent barrier aborts).
#include "cuda_runtime.h"
#include <ctime>
extern "C" {
#include "common.h"
}
#include "cuda_backend.h"
extern "C" int cuda_device_count(void) { return 1; }
extern "C" void cuda_init(void) {}
extern "C" const char *cuda_device_name(void) { return "SIMT emulator (CPU)"; }
extern "C" void cuda_memory_info(size_t *f, size_t *t) { if (f) *f = 1ull << 34; if (t) *t = 1ull << 34; }
extern "C" void *cuda_malloc(size_t b, const char *) { void *p = aligned_alloc(256, (b + 255) / 256 * 256 + 256); memset(p, 0xAB, (b + 255) / 256 * 256); return p; }
extern "C" void cuda_free(void *p) { free(p); }
extern "C" void cuda_upload(void *d, const void *s, size_t b, const char *) { memcpy(d, s, b); }
extern "C" void cuda_download(void *d, const void *s, size_t b, const char *) { memcpy(d, s, b); }
extern "C" void cuda_copy(void *d, const void *s, size_t b, const char *) { memmove(d, s, b); }
extern "C" void cuda_zero(void *p, size_t b, const char *) { memset(p, 0, b); }
extern "C" void cuda_poison(void *p, size_t b) { memset(p, 0xFF, b); }
extern "C" void cuda_sync(const char *) {}
struct CudaTimer { double t; };
extern "C" CudaTimer *cuda_timer_start(void) { CudaTimer *t = new CudaTimer; t->t = now_seconds(); return t; }
extern "C" double cuda_timer_stop(CudaTimer *t) { double r = (now_seconds() - t->t) * 1000; delete t; return r; }
cudaStream_t safe_stream(void) { return nullptr; }
// one stream in effect: every launch runs to completion before it returns, so the
// communication stream's ordering events have nothing to order
extern "C" void *cuda_comm_stream(void) { return nullptr; }
extern "C" void cuda_comm_after_compute(void) {}
extern "C" void cuda_compute_after_comm(void) {}
static void *ws1, *ws2; static size_t c1, c2;
void *safe_workspace(size_t b) { if (b > c1) { free(ws1); ws1 = aligned_alloc(256, (b + 255) / 256 * 256); c1 = b; } return ws1; }
void *safe_workspace2(size_t b) { if (b > c2) { free(ws2); ws2 = aligned_alloc(256, (b + 255) / 256 * 256); c2 = b; } return ws2; }
void safe_launch_check(const char *, const char *, ...) {}
