// emu.cpp — the fiber scheduler of the kernel emulator (see cuda_runtime.h here).
#include "cuda_runtime.h"
#include <vector>
EmuState emu;
static const size_t STACK = 64 * 1024;
static std::vector<char> stacks;
static std::vector<EmuFiber> fibers;
static void (*g_body)(void *);
static void *g_arg;
static jmp_buf main_jb;
static ucontext_t tmpl, main_uc;
static int tmpl_ok;
static void fiber_main() {
    g_body(g_arg);
    emu.cur->done = 1;
    _longjmp(main_jb, 1);
}
void emu_wait(int kind) {
    emu.cur->waiting = kind;
    if (!_setjmp(emu.cur->jb)) _longjmp(main_jb, 1);
}
unsigned char *emu_dyn_smem() { return emu.dyn; }
static void run_fiber(EmuFiber &f) {
    emu.cur = &f;
    if (!_setjmp(main_jb)) {
        if (!f.started) { f.started = 1; swapcontext(&main_uc, &f.ctx); }
        else _longjmp(f.jb, 1);
    }
}
// kernels run so far (nccl_emu.c logs it: buckets that go out during the backward see it grow)
extern "C" unsigned long long emu_kernel_launches;
unsigned long long emu_kernel_launches;

void emu_run(dim3 grid, dim3 block, size_t shmem, void (*body)(void *), void *arg) {
    emu_kernel_launches++;
    int n = block.x * block.y * block.z;
    if (block.y != 1 || block.z != 1 || n > 1024) { fprintf(stderr, "emu: block shape\n"); abort(); }
    if (stacks.size() < (size_t)n * STACK) stacks.resize((size_t)n * STACK);
    fibers.resize(n);
    if (!tmpl_ok) { getcontext(&tmpl); tmpl_ok = 1; }
    if (shmem + 64 > emu.dyncap) { free(emu.dyn); emu.dyncap = shmem + 64; emu.dyn = (unsigned char *)aligned_alloc(64, (emu.dyncap + 63) / 64 * 64); }
    g_body = body; g_arg = arg;
    emu.gridDim_ = grid;
    emu.blockDim_ = block;
    for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
    for (unsigned bx = 0; bx < grid.x; bx++) {
        emu.blockIdx_ = dim3(bx, by, bz);
        memset(emu.dyn, 0xCD, emu.dyncap);   // shared memory starts as garbage
        for (int i = 0; i < n; i++) {
            EmuFiber &f = fibers[i];
            f.tid = uint3{(unsigned)i, 0, 0};
            f.done = 0;
            f.waiting = 0;
            f.started = 0;
            f.ctx = tmpl;
            f.ctx.uc_stack.ss_sp = stacks.data() + (size_t)i * STACK;
            f.ctx.uc_stack.ss_size = STACK;
            f.ctx.uc_link = nullptr;
            makecontext(&f.ctx, fiber_main, 0);
        }
        for (;;) {
            for (int i = 0; i < n; i++)
                if (!fibers[i].done && !fibers[i].waiting) run_fiber(fibers[i]);
            int alive = 0, at_block = 0;
            for (int i = 0; i < n; i++) if (!fibers[i].done) { alive++; at_block += fibers[i].waiting == 1; }
            if (!alive) break;
            int released = 0;
            if (at_block == alive) { for (int i = 0; i < n; i++) fibers[i].waiting = 0; released = 1; }
            else {
                for (int w = 0; w < (n + 31) / 32; w++) {
                    int a = 0, wt = 0;
                    for (int i = w * 32; i < n && i < w * 32 + 32; i++) if (!fibers[i].done) { a++; wt += fibers[i].waiting == 2; }
                    if (a && wt == a) { for (int i = w * 32; i < n && i < w * 32 + 32; i++) fibers[i].waiting = 0; released = 1; }
                }
            }
            if (!released) { fprintf(stderr, "emu: deadlock (divergent barrier) in block (%u,%u,%u)\n", bx, by, bz); abort(); }
        }
    }
}
