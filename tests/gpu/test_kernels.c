// test_kernels.c — the CUDA kernel lab: every kernel of kernels/*.cu against a CPU reference
// on fresh random inputs of several shapes, the device model against model.c, and a small
// benchmark of each kernel. Run by tests/gpu/run.sh on a machine with a GPU (CI only builds
// it: `make gpu-tests`).
//
//   build/gpu/test_kernels [--seed N] [--quick]
//
// Tolerances (relative error ||got - ref|| / ||ref|| over the whole output, references in
// double on the same bf16-rounded inputs the kernel reads):
//   fp32 results                        1e-5
//   bf16 results                        1e-2   (one bf16 rounding is 2^-9 = 2e-3 relative)
//   AdamW                               bit-identical to lib/adamw.c (0 differing floats)
//   Philox uniforms                     bit-identical to lib/rng.c
//   sampler                             same token as sampler.c for >= 99% of rows (a row may
//                                       differ only when u lands on a CDF boundary within the
//                                       fp32 rounding of the two devices' exp)
//   whole model vs model.c (bf16 vs fp32 through several layers): hidden and logits 3e-2,
//     log-probs max |diff| 0.05 nats, gradients per tensor 5e-2, KV decode vs forward 3e-2
// Every output buffer is poisoned with NaN (0xFF bytes) before each launch, so an element the
// kernel forgets to write fails the check. Exit status 1 when any check fails; the last lines
// are a table, one row per check.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adamw.h"      // adamw_step: the optimiser the device must match
#include "common.h"     // die, xmalloc
#include "logprob.h"    // logprob_forward/backward: the CPU twin of kernels/logprob.cu
#include "model.h"      // Model: the CPU twin of the device model
#include "rng.h"        // rng_uniform: the CPU sampler's draws
#include "sampler.h"    // sample_logits: the CPU sampler
#include "seqbatch.h"   // padded (prompt, response) batches

#ifdef SAFE_CUDA
#include "cuda_backend.h"   // the kernels under test
#include "cuda_model.h"     // the device model under test

// ---------------------------------------------------------------------------------------------
// random inputs, device buffers, comparisons, the summary table

static uint64_t g_rng;
static int g_quick;

static double urand(void) {   // splitmix64 -> [0,1)
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return ((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}
static float nrand(void) { return (float)(sqrt(-2.0 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand())); }
static int irand(int n) { return (int)(urand() * n); }

static float *rand_f32(size_t n, float scale) {
    float *x = xmalloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = scale * nrand();
    return x;
}
// bf16-representable floats (so host references read exactly what the device reads)
static float *rand_bf(size_t n, float scale) {
    float *x = rand_f32(n, scale);
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_float(bf16_from_float(x[i]));
    return x;
}
static bf16 *to_bf(const float *x, size_t n) {
    bf16 *h = xmalloc((n ? n : 1) * sizeof(bf16));
    for (size_t i = 0; i < n; i++) h[i] = bf16_from_float(x[i]);
    return h;
}
static float *from_bf(const bf16 *h, size_t n) {
    float *x = xmalloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_float(h[i]);
    return x;
}

static void *dup_dev(const void *host, size_t bytes) {
    void *d = cuda_malloc(bytes, "test input");
    cuda_upload(d, host, bytes, "test input");
    return d;
}
static void *dev_poisoned(size_t bytes) {
    void *d = cuda_malloc(bytes, "test output");
    cuda_poison(d, bytes);
    return d;
}
static float *get_f32(const float *d, size_t n) {
    float *h = xmalloc((n ? n : 1) * sizeof(float));
    cuda_download(h, d, n * sizeof(float), "test output");
    return h;
}
static float *get_bf(const bf16 *d, size_t n) {
    bf16 *h = xmalloc((n ? n : 1) * sizeof(bf16));
    cuda_download(h, d, n * sizeof(bf16), "test output");
    float *x = from_bf(h, n);
    free(h);
    return x;
}

typedef struct {
    char name[48], shape[64];
    double err, tol;
    int ok;
} Row;
static Row g_rows[512];
static int g_nrows, g_failed;

static void record(const char *name, const char *shape, double err, double tol, int ok) {
    if (g_nrows < 512) {
        Row *r = &g_rows[g_nrows++];
        snprintf(r->name, sizeof r->name, "%s", name);
        snprintf(r->shape, sizeof r->shape, "%s", shape);
        r->err = err;
        r->tol = tol;
        r->ok = ok;
    }
    if (!ok) g_failed++;
}

// ||got - ref|| / ||ref|| (ref in double); NaN anywhere fails. Prints the first values side by
// side and the largest difference.
static int check(const char *name, const char *shape, const float *got, const double *ref, size_t n, double tol) {
    double num = 0, den = 0, maxd = 0;
    size_t at = 0, nan = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) { nan++; continue; }
        double d = fabs(got[i] - ref[i]);
        num += d * d;
        den += ref[i] * ref[i];
        if (d > maxd) { maxd = d; at = i; }
    }
    double err = nan ? INFINITY : sqrt(num) / (sqrt(den) > 1e-30 ? sqrt(den) : 1.0);
    int ok = !nan && err <= tol;
    printf("  %-28s %-30s rel %.2e (tol %.0e) %s", name, shape, err, tol, ok ? "ok" : "FAIL");
    if (nan) printf("  %zu non-finite (unwritten?) of %zu", nan, n);
    printf("\n     got:");
    for (size_t i = 0; i < n && i < 4; i++) printf(" %+.6g", got[i]);
    printf("\n     ref:");
    for (size_t i = 0; i < n && i < 4; i++) printf(" %+.6g", ref[i]);
    if (n) printf("\n     largest |diff| %.3g at %zu (%.6g vs %.6g)", maxd, at, got[at], ref[at]);
    printf("\n");
    record(name, shape, err, tol, ok);
    return ok;
}

static double *dvec(size_t n) { return xcalloc(n ? n : 1, sizeof(double)); }

// milliseconds per launch of f, median-free: one warm-up, then the mean of reps
typedef void (*BenchFn)(void *ctx);
static double bench_ms(BenchFn f, void *ctx, int reps) {
    f(ctx);
    cuda_sync("bench warm-up");
    CudaTimer *t = cuda_timer_start();
    for (int i = 0; i < reps; i++) f(ctx);
    return cuda_timer_stop(t) / reps;
}
static void bench_line(const char *what, double ms, double bytes, double flops) {
    printf("  bench %-34s %8.3f ms", what, ms);
    if (bytes > 0) printf("  %7.1f GB/s (%4.1f%% of 4.3 TB/s)", bytes / ms / 1e6, 100.0 * bytes / ms / 1e6 / 4300.0);
    if (flops > 0) printf("  %7.1f TFLOP/s (%4.1f%% of 790)", flops / ms / 1e9, 100.0 * flops / ms / 1e9 / 790.0);
    printf("\n");
}

// ---------------------------------------------------------------------------------------------
// 1. Philox: the device's uniforms are the CPU's bits

static void test_philox(void) {
    printf("== philox\n");
    int n = 1 << 14;
    uint64_t *k = xmalloc(n * sizeof(uint64_t)), *c = xmalloc(n * sizeof(uint64_t));
    for (int i = 0; i < n; i++) {
        k[i] = rng_stream_key((uint64_t)i * 31, "p", i % 7, i % 3);
        c[i] = (uint64_t)irand(1 << 30) << (i % 33);
    }
    uint64_t *dk = dup_dev(k, n * 8), *dc = dup_dev(c, n * 8);
    float *dout = dev_poisoned(n * 4);
    cuda_philox_uniforms(dout, dk, dc, n);
    float *got = get_f32(dout, n);
    int diff = 0;
    for (int i = 0; i < n; i++) diff += got[i] != rng_uniform(k[i], c[i]);
    printf("  %d draws, %d differ from rng_uniform (first: %.9g vs %.9g)\n", n, diff, got[0], rng_uniform(k[0], c[0]));
    record("philox_uniforms", "16384 draws", diff, 0, diff == 0);
    cuda_free(dk); cuda_free(dc); cuda_free(dout);
    free(k); free(c); free(got);
}

// ---------------------------------------------------------------------------------------------
// 2. embedding, gathers and scatters

static void test_embedding(int N, int C, int V) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d C=%d V=%d", N, C, V);
    printf("== embedding %s\n", shape);
    float *emb = rand_f32((size_t)V * C, 1.0f), *dx = rand_f32((size_t)N * C, 1.0f);
    int32_t *tok = xmalloc(N * 4);
    uint8_t *mask = xmalloc(N);
    for (int n = 0; n < N; n++) {
        tok[n] = irand(V < 8 ? V : 8);   // repeats, so the backward sums several rows
        mask[n] = urand() < 0.8;
    }
    float *d_emb = dup_dev(emb, (size_t)V * C * 4), *d_x = dev_poisoned((size_t)N * C * 4);
    int32_t *d_tok = dup_dev(tok, N * 4);
    uint8_t *d_mask = dup_dev(mask, N);
    cuda_embedding_forward(d_x, d_emb, d_tok, d_mask, N, C);
    float *got = get_f32(d_x, (size_t)N * C);
    double *ref = dvec((size_t)N * C);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) ref[(size_t)n * C + c] = mask[n] ? emb[(size_t)tok[n] * C + c] : 0.0;
    check("embedding_forward", shape, got, ref, (size_t)N * C, 0.0);
    // backward: CSR by token, positions ascending
    int32_t *uniq = xmalloc(V * 4), *off = xmalloc((V + 1) * 4), *pos = xmalloc(N * 4);
    int nu = 0, np = 0;
    for (int t = 0; t < V; t++) {
        int start = np;
        for (int n = 0; n < N; n++) if (mask[n] && tok[n] == t) pos[np++] = n;
        if (np > start) { uniq[nu] = t; off[nu] = start; nu++; }
    }
    off[nu] = np;
    float *demb0 = rand_f32((size_t)V * C, 1.0f);
    float *d_demb = dup_dev(demb0, (size_t)V * C * 4), *d_dx = dup_dev(dx, (size_t)N * C * 4);
    int32_t *d_u = dup_dev(uniq, (nu ? nu : 1) * 4), *d_o = dup_dev(off, (nu + 1) * 4), *d_p = dup_dev(pos, (np ? np : 1) * 4);
    cuda_embedding_backward(d_demb, d_dx, d_u, d_o, d_p, nu, C);
    float *gd = get_f32(d_demb, (size_t)V * C);
    double *rd = dvec((size_t)V * C);
    for (size_t i = 0; i < (size_t)V * C; i++) rd[i] = demb0[i];
    float *acc = xmalloc((size_t)V * C * 4);
    memcpy(acc, demb0, (size_t)V * C * 4);
    for (int n = 0; n < N; n++)   // model.c: rows in order, fp32
        if (mask[n]) for (int c = 0; c < C; c++) acc[(size_t)tok[n] * C + c] += dx[(size_t)n * C + c];
    for (size_t i = 0; i < (size_t)V * C; i++) rd[i] = acc[i];
    check("embedding_backward", shape, gd, rd, (size_t)V * C, 0.0);   // same order: same bits
    // gather / scatter of rows
    int nr = N / 2;
    int32_t *idx = xmalloc((nr ? nr : 1) * 4);
    for (int i = 0; i < nr; i++) idx[i] = 2 * i + (i & 1);
    int32_t *d_idx = dup_dev(idx, (nr ? nr : 1) * 4);
    float *d_g = dev_poisoned((size_t)(nr ? nr : 1) * C * 4);
    cuda_gather_rows(d_g, d_dx, d_idx, nr, C);
    float *gg = get_f32(d_g, (size_t)nr * C);
    double *rg = dvec((size_t)nr * C);
    for (int i = 0; i < nr; i++) for (int c = 0; c < C; c++) rg[(size_t)i * C + c] = dx[(size_t)idx[i] * C + c];
    check("gather_rows", shape, gg, rg, (size_t)nr * C, 0.0);
    cuda_scatter_add_rows(d_dx, d_g, d_idx, nr, C);
    float *gs = get_f32(d_dx, (size_t)N * C);
    double *rs = dvec((size_t)N * C);
    for (size_t i = 0; i < (size_t)N * C; i++) rs[i] = dx[i];
    for (int i = 0; i < nr; i++) for (int c = 0; c < C; c++) rs[(size_t)idx[i] * C + c] = (float)(dx[(size_t)idx[i] * C + c] + dx[(size_t)idx[i] * C + c]);
    check("scatter_add_rows", shape, gs, rs, (size_t)N * C, 0.0);
    cuda_free(d_emb); cuda_free(d_x); cuda_free(d_tok); cuda_free(d_mask); cuda_free(d_demb); cuda_free(d_dx);
    cuda_free(d_u); cuda_free(d_o); cuda_free(d_p); cuda_free(d_idx); cuda_free(d_g);
    free(emb); free(dx); free(tok); free(mask); free(got); free(ref); free(uniq); free(off); free(pos); free(demb0);
    free(gd); free(rd); free(acc); free(idx); free(gg); free(rg); free(gs); free(rs);
}

// ---------------------------------------------------------------------------------------------
// 3. RMSNorm and column sums

static void test_rmsnorm(int N, int C) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d C=%d", N, C);
    printf("== rmsnorm %s\n", shape);
    float eps = 1e-5f;
    float *x = rand_f32((size_t)N * C, 1.0f), *w = rand_f32(C, 1.0f), *dy = rand_f32((size_t)N * C, 1.0f);
    float *dx0 = rand_f32((size_t)N * C, 1.0f), *dw0 = rand_f32(C, 1.0f);
    float *d_x = dup_dev(x, (size_t)N * C * 4), *d_w = dup_dev(w, C * 4), *d_dy = dup_dev(dy, (size_t)N * C * 4);
    bf16 *d_o16 = dev_poisoned((size_t)N * C * 2);
    float *d_o32 = dev_poisoned((size_t)N * C * 4), *d_r = dev_poisoned(N * 4);
    double *ro = dvec((size_t)N * C), *rr = dvec(N);
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)x[(size_t)n * C + c] * x[(size_t)n * C + c];
        rr[n] = 1.0 / sqrt(ss / C + eps);
        for (int c = 0; c < C; c++) ro[(size_t)n * C + c] = x[(size_t)n * C + c] * rr[n] * w[c];
    }
    cuda_rmsnorm_forward(d_o16, 1, d_r, d_x, d_w, N, C, eps);
    float *g16 = get_bf(d_o16, (size_t)N * C), *gr = get_f32(d_r, N);
    check("rmsnorm_forward (bf16 out)", shape, g16, ro, (size_t)N * C, 1e-2);
    check("rmsnorm_forward rstd", shape, gr, rr, N, 1e-5);
    cuda_rmsnorm_forward(d_o32, 0, NULL, d_x, d_w, N, C, eps);
    float *g32 = get_f32(d_o32, (size_t)N * C);
    check("rmsnorm_forward (fp32 out)", shape, g32, ro, (size_t)N * C, 1e-5);
    // backward, with the kernel's own rstd (fp32) as model.c keeps its own
    float *d_dx = dup_dev(dx0, (size_t)N * C * 4), *d_dw = dup_dev(dw0, C * 4);
    bf16 *d_dx16 = dev_poisoned((size_t)N * C * 2);
    cuda_rmsnorm_backward(d_dx, d_dx16, d_dw, d_dy, d_x, d_w, d_r, N, C);
    double *rdx = dvec((size_t)N * C), *rdw = dvec(C);
    for (int c = 0; c < C; c++) rdw[c] = dw0[c];
    for (int n = 0; n < N; n++) {
        double r = gr[n], dot = 0;
        for (int c = 0; c < C; c++) dot += (double)w[c] * dy[(size_t)n * C + c] * x[(size_t)n * C + c];
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)n * C + c;
            rdx[i] = dx0[i] + r * w[c] * dy[i] - x[i] * dot * r * r * r / C;
            rdw[c] += (double)dy[i] * x[i] * r;
        }
    }
    float *gdx = get_f32(d_dx, (size_t)N * C), *gdw = get_f32(d_dw, C), *gdx16 = get_bf(d_dx16, (size_t)N * C);
    check("rmsnorm_backward dx", shape, gdx, rdx, (size_t)N * C, 1e-5);
    check("rmsnorm_backward dx (bf16 copy)", shape, gdx16, rdx, (size_t)N * C, 1e-2);
    check("rmsnorm_backward dw", shape, gdw, rdw, C, 1e-5);
    // column sums of a bf16 matrix
    float *xb = rand_bf((size_t)N * C, 1.0f), *cs0 = rand_f32(C, 1.0f);
    bf16 *hb = to_bf(xb, (size_t)N * C), *d_xb = dup_dev(hb, (size_t)N * C * 2);
    float *d_cs = dup_dev(cs0, C * 4);
    cuda_colsum_add(d_cs, d_xb, N, C);
    float *gcs = get_f32(d_cs, C);
    double *rcs = dvec(C);
    for (int c = 0; c < C; c++) {
        rcs[c] = cs0[c];
        for (int n = 0; n < N; n++) rcs[c] += xb[(size_t)n * C + c];
    }
    check("colsum_add", shape, gcs, rcs, C, 1e-5);
    cuda_free(d_x); cuda_free(d_w); cuda_free(d_dy); cuda_free(d_o16); cuda_free(d_o32); cuda_free(d_r);
    cuda_free(d_dx); cuda_free(d_dw); cuda_free(d_dx16); cuda_free(d_xb); cuda_free(d_cs);
    free(x); free(w); free(dy); free(dx0); free(dw0); free(ro); free(rr); free(g16); free(gr); free(g32);
    free(rdx); free(rdw); free(gdx); free(gdw); free(gdx16); free(xb); free(cs0); free(hb); free(gcs); free(rcs);
}

// ---------------------------------------------------------------------------------------------
// 4. RoPE (+ q/k/v bias)

static void rope_tables(int npos, int hs, float theta, float **cs, float **sn) {
    int half = hs / 2;
    *cs = xmalloc((size_t)npos * half * 4);
    *sn = xmalloc((size_t)npos * half * 4);
    for (int p = 0; p < npos; p++)
        for (int i = 0; i < half; i++) {
            double ang = p * pow((double)theta, -2.0 * i / hs);
            (*cs)[(size_t)p * half + i] = (float)cos(ang);
            (*sn)[(size_t)p * half + i] = (float)sin(ang);
        }
}

static void test_rope(int N, int H, int KV, int hs, int bias) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d H=%d KV=%d hs=%d%s", N, H, KV, hs, bias ? " bias" : "");
    printf("== rope %s\n", shape);
    int qd = H * hs, kvd = KV * hs, QKV = qd + 2 * kvd, half = hs / 2, npos = 300;
    float *cs, *sn;
    rope_tables(npos, hs, 10000.0f, &cs, &sn);
    float *x = rand_f32((size_t)N * QKV, 1.0f), *b = bias ? rand_f32(QKV, 0.5f) : NULL;
    int32_t *pos = xmalloc(N * 4);
    for (int n = 0; n < N; n++) pos[n] = irand(npos);
    float *d_x = dup_dev(x, (size_t)N * QKV * 4), *d_b = b ? dup_dev(b, QKV * 4) : NULL;
    float *d_c = dup_dev(cs, (size_t)npos * half * 4), *d_s = dup_dev(sn, (size_t)npos * half * 4);
    int32_t *d_p = dup_dev(pos, N * 4);
    bf16 *d_o = dev_poisoned((size_t)N * QKV * 2);
    cuda_qkv_bias_rope(d_o, d_x, d_b, d_p, d_c, d_s, N, H, KV, hs);
    float *got = get_bf(d_o, (size_t)N * QKV);
    double *ref = dvec((size_t)N * QKV);
    for (int n = 0; n < N; n++) {
        for (int col = 0; col < QKV; col++) ref[(size_t)n * QKV + col] = x[(size_t)n * QKV + col] + (b ? b[col] : 0);
        for (int h = 0; h < H + KV; h++) {
            int base = h < H ? h * hs : qd + (h - H) * hs;
            for (int i = 0; i < half; i++) {
                double a = ref[(size_t)n * QKV + base + i], bb = ref[(size_t)n * QKV + base + i + half];
                double c = cs[(size_t)pos[n] * half + i], s = sn[(size_t)pos[n] * half + i];
                ref[(size_t)n * QKV + base + i] = a * c - bb * s;
                ref[(size_t)n * QKV + base + i + half] = bb * c + a * s;
            }
        }
    }
    check("qkv_bias_rope", shape, got, ref, (size_t)N * QKV, 1e-2);
    // backward in place: rotate a bf16 gradient back
    float *g = rand_bf((size_t)N * QKV, 1.0f);
    bf16 *gh = to_bf(g, (size_t)N * QKV), *d_g = dup_dev(gh, (size_t)N * QKV * 2);
    cuda_rope_backward(d_g, d_p, d_c, d_s, N, H, KV, hs);
    float *gb = get_bf(d_g, (size_t)N * QKV);
    for (size_t i = 0; i < (size_t)N * QKV; i++) ref[i] = g[i];
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H + KV; h++) {
            int base = h < H ? h * hs : qd + (h - H) * hs;
            for (int i = 0; i < half; i++) {
                double da = g[(size_t)n * QKV + base + i], db = g[(size_t)n * QKV + base + i + half];
                double c = cs[(size_t)pos[n] * half + i], s = sn[(size_t)pos[n] * half + i];
                ref[(size_t)n * QKV + base + i] = da * c + db * s;
                ref[(size_t)n * QKV + base + i + half] = db * c - da * s;
            }
        }
    check("rope_backward", shape, gb, ref, (size_t)N * QKV, 1e-2);
    cuda_free(d_x); cuda_free(d_b); cuda_free(d_c); cuda_free(d_s); cuda_free(d_p); cuda_free(d_o); cuda_free(d_g);
    free(cs); free(sn); free(x); free(b); free(pos); free(got); free(ref); free(g); free(gh); free(gb);
}

// ---------------------------------------------------------------------------------------------
// 5. attention (training) forward and backward

// masks: row b left-padded by lp[b] and right-padded by rp[b]
static uint8_t *pad_mask(int B, int T, int **lp_out) {
    uint8_t *m = xcalloc((size_t)B * T, 1);
    int *lp = xmalloc(B * sizeof(int));
    for (int b = 0; b < B; b++) {
        int l = b == 0 ? 0 : irand(T / 3 + 1), r = b == 0 ? 0 : irand(T / 4 + 1);
        if (l + r >= T) { l = 0; r = 0; }
        lp[b] = l;
        for (int t = l; t < T - r; t++) m[(size_t)b * T + t] = 1;
    }
    if (lp_out) *lp_out = lp;
    else free(lp);
    return m;
}

// double reference of cuda_attention_forward/backward on the same inputs
static void attn_ref(const float *qkv, const uint8_t *mask, int B, int T, int H, int KV, int hs, const float *dout,
                     double *out, double *lse, double *dqkv) {
    int qd = H * hs, kvd = KV * hs, QKV = qd + 2 * kvd, group = H / KV;
    double scale = 1.0 / sqrt((double)hs);
    double *p = xmalloc(T * sizeof(double));
    if (dqkv) memset(dqkv, 0, (size_t)B * T * QKV * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kh = h / group;
            for (int t = 0; t < T; t++) {
                size_t n = (size_t)b * T + t;
                double *o = out + n * qd + h * hs;
                if (!mask[n]) {
                    for (int d = 0; d < hs; d++) o[d] = 0;
                    lse[n * H + h] = 0;
                    continue;
                }
                const float *q = qkv + n * QKV + h * hs;
                double mx = -INFINITY;
                for (int s = 0; s <= t; s++) {
                    p[s] = -INFINITY;
                    if (!mask[(size_t)b * T + s]) continue;
                    const float *k = qkv + ((size_t)b * T + s) * QKV + qd + kh * hs;
                    double a = 0;
                    for (int d = 0; d < hs; d++) a += (double)q[d] * k[d];
                    p[s] = a * scale;
                    if (p[s] > mx) mx = p[s];
                }
                double sum = 0;
                for (int s = 0; s <= t; s++) { p[s] = isinf(p[s]) ? 0 : exp(p[s] - mx); sum += p[s]; }
                for (int d = 0; d < hs; d++) o[d] = 0;
                for (int s = 0; s <= t; s++) {
                    p[s] /= sum;
                    const float *v = qkv + ((size_t)b * T + s) * QKV + qd + kvd + kh * hs;
                    for (int d = 0; d < hs; d++) o[d] += p[s] * v[d];
                }
                lse[n * H + h] = mx + log(sum);
                if (!dqkv) continue;
                const float *g = dout + n * qd + h * hs;
                double D = 0;
                for (int d = 0; d < hs; d++) D += g[d] * o[d];
                for (int s = 0; s <= t; s++) {
                    if (p[s] == 0) continue;
                    size_t m = (size_t)b * T + s;
                    const float *k = qkv + m * QKV + qd + kh * hs, *v = qkv + m * QKV + qd + kvd + kh * hs;
                    double dp = 0;
                    for (int d = 0; d < hs; d++) dp += g[d] * v[d];
                    double ds = p[s] * (dp - D) * scale;
                    for (int d = 0; d < hs; d++) {
                        dqkv[n * QKV + h * hs + d] += ds * k[d];
                        dqkv[m * QKV + qd + kh * hs + d] += ds * q[d];
                        dqkv[m * QKV + qd + kvd + kh * hs + d] += p[s] * g[d];
                    }
                }
            }
        }
    free(p);
}

typedef struct {
    bf16 *out, *qkv, *dout, *dqkv;
    float *lse;
    uint8_t *mask;
    int B, T, H, KV, hs;
} AttnBench;
static void attn_fwd_run(void *c) {
    AttnBench *a = c;
    cuda_attention_forward(a->out, a->lse, a->qkv, a->mask, a->B, a->T, a->H, a->KV, a->hs);
}
static void attn_bwd_run(void *c) {
    AttnBench *a = c;
    cuda_attention_backward(a->dqkv, a->dout, a->qkv, a->out, a->lse, a->mask, a->B, a->T, a->H, a->KV, a->hs);
}

static void test_attention(int B, int T, int H, int KV, int hs) {
    char shape[64];
    snprintf(shape, sizeof shape, "B=%d T=%d H=%d KV=%d hs=%d", B, T, H, KV, hs);
    printf("== attention %s\n", shape);
    int qd = H * hs, kvd = KV * hs, QKV = qd + 2 * kvd;
    size_t N = (size_t)B * T;
    float *qkv = rand_bf(N * QKV, 1.0f), *dout = rand_bf(N * qd, 1.0f);
    uint8_t *mask = pad_mask(B, T, NULL);
    bf16 *hq = to_bf(qkv, N * QKV), *hd = to_bf(dout, N * qd);
    bf16 *d_qkv = dup_dev(hq, N * QKV * 2), *d_dout = dup_dev(hd, N * qd * 2);
    uint8_t *d_mask = dup_dev(mask, N);
    bf16 *d_out = dev_poisoned(N * qd * 2), *d_dqkv = dev_poisoned(N * QKV * 2);
    float *d_lse = dev_poisoned(N * H * 4);
    cuda_attention_forward(d_out, d_lse, d_qkv, d_mask, B, T, H, KV, hs);
    cuda_attention_backward(d_dqkv, d_dout, d_qkv, d_out, d_lse, d_mask, B, T, H, KV, hs);
    double *ro = dvec(N * qd), *rl = dvec(N * H), *rd = dvec(N * QKV);
    attn_ref(qkv, mask, B, T, H, KV, hs, dout, ro, rl, rd);
    float *go = get_bf(d_out, N * qd), *gl = get_f32(d_lse, N * H), *gd = get_bf(d_dqkv, N * QKV);
    check("attention_forward out", shape, go, ro, N * qd, 1e-2);
    check("attention_forward lse", shape, gl, rl, N * H, 1e-5);
    // the three parts of dqkv separately: each is its own kernel's output
    for (int part = 0; part < 3; part++) {
        int c0 = part == 0 ? 0 : part == 1 ? qd : qd + kvd, w = part == 0 ? qd : kvd;
        float *g = xmalloc(N * w * 4);
        double *r = dvec(N * w);
        for (size_t n = 0; n < N; n++)
            for (int c = 0; c < w; c++) { g[n * w + c] = gd[n * QKV + c0 + c]; r[n * w + c] = rd[n * QKV + c0 + c]; }
        check(part == 0 ? "attention_backward dq" : part == 1 ? "attention_backward dk" : "attention_backward dv", shape, g,
              r, N * w, 1e-2);
        free(g);
        free(r);
    }
    if (T >= 256) {
        AttnBench a = {d_out, d_qkv, d_dout, d_dqkv, d_lse, d_mask, B, T, H, KV, hs};
        double flops = 4.0 * B * H * (double)T * T / 2 * hs;   // QK^T and PV, causal half
        bench_line("attention_forward", bench_ms(attn_fwd_run, &a, 5), 0, flops);
        bench_line("attention_backward", bench_ms(attn_bwd_run, &a, 5), 0, 2.5 * flops);
    }
    cuda_free(d_qkv); cuda_free(d_dout); cuda_free(d_mask); cuda_free(d_out); cuda_free(d_dqkv); cuda_free(d_lse);
    free(qkv); free(dout); free(mask); free(hq); free(hd); free(ro); free(rl); free(rd); free(go); free(gl); free(gd);
}

// ---------------------------------------------------------------------------------------------
// 6. KV cache store and decode attention

static void test_decode_attention(int rows, int T_max, int Ntok, int H, int KV, int hs) {
    char shape[64];
    snprintf(shape, sizeof shape, "rows=%d Tmax=%d Ntok=%d H=%d KV=%d hs=%d", rows, T_max, Ntok, H, KV, hs);
    printf("== attention_decode %s\n", shape);
    int qd = H * hs, kvd = KV * hs, QKV = qd + 2 * kvd, group = H / KV;
    size_t csz = (size_t)rows * T_max * kvd;
    float *kc = rand_bf(csz, 1.0f), *vc = rand_bf(csz, 1.0f), *qkv = rand_bf((size_t)Ntok * QKV, 1.0f);
    int32_t *trow = xmalloc(Ntok * 4), *pos = xmalloc(Ntok * 4);
    int *base = xmalloc(rows * sizeof(int));
    for (int r = 0; r < rows; r++) base[r] = irand(T_max - Ntok / rows - 1);
    for (int j = 0; j < Ntok; j++) {   // distinct (row, pos) slots: a row's tokens are consecutive
        trow[j] = j % rows;
        pos[j] = base[j % rows] + j / rows;
    }
    free(base);
    bf16 *hk = to_bf(kc, csz), *hv = to_bf(vc, csz), *hq = to_bf(qkv, (size_t)Ntok * QKV);
    bf16 *d_k = dup_dev(hk, csz * 2), *d_v = dup_dev(hv, csz * 2), *d_q = dup_dev(hq, (size_t)Ntok * QKV * 2);
    int32_t *d_t = dup_dev(trow, Ntok * 4), *d_p = dup_dev(pos, Ntok * 4);
    bf16 *d_o = dev_poisoned((size_t)Ntok * qd * 2);
    cuda_kv_store(d_k, d_v, d_q, d_t, d_p, Ntok, H, KV, hs, T_max);
    cuda_attention_decode(d_o, d_q, d_k, d_v, d_t, d_p, Ntok, H, KV, hs, T_max);
    // reference: the cache after the store, then attention up to pos
    for (int j = 0; j < Ntok; j++)
        for (int c = 0; c < kvd; c++) {
            size_t o = ((size_t)trow[j] * T_max + pos[j]) * kvd + c;
            kc[o] = qkv[(size_t)j * QKV + qd + c];
            vc[o] = qkv[(size_t)j * QKV + qd + kvd + c];
        }
    double *ref = dvec((size_t)Ntok * qd), *p = dvec(T_max);
    double scale = 1.0 / sqrt((double)hs);
    for (int j = 0; j < Ntok; j++)
        for (int h = 0; h < H; h++) {
            int kh = h / group, nk = pos[j] + 1;
            const float *q = qkv + (size_t)j * QKV + h * hs;
            double mx = -INFINITY, sum = 0;
            for (int s = 0; s < nk; s++) {
                const float *k = kc + ((size_t)trow[j] * T_max + s) * kvd + kh * hs;
                double a = 0;
                for (int d = 0; d < hs; d++) a += (double)q[d] * k[d];
                p[s] = a * scale;
                if (p[s] > mx) mx = p[s];
            }
            for (int s = 0; s < nk; s++) { p[s] = exp(p[s] - mx); sum += p[s]; }
            for (int d = 0; d < hs; d++) {
                double o = 0;
                for (int s = 0; s < nk; s++) o += p[s] / sum * vc[((size_t)trow[j] * T_max + s) * kvd + kh * hs + d];
                ref[(size_t)j * qd + h * hs + d] = o;
            }
        }
    float *got = get_bf(d_o, (size_t)Ntok * qd);
    check("attention_decode", shape, got, ref, (size_t)Ntok * qd, 1e-2);
    float *gk = get_bf(d_k, csz);
    double *rk = dvec(csz);
    for (size_t i = 0; i < csz; i++) rk[i] = kc[i];
    check("kv_store (keys)", shape, gk, rk, csz, 0.0);
    cuda_free(d_k); cuda_free(d_v); cuda_free(d_q); cuda_free(d_t); cuda_free(d_p); cuda_free(d_o);
    free(kc); free(vc); free(qkv); free(trow); free(pos); free(hk); free(hv); free(hq); free(ref); free(p); free(got);
    free(gk); free(rk);
}

// ---------------------------------------------------------------------------------------------
// 7. SwiGLU

static void test_swiglu(int N, int F) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d F=%d", N, F);
    printf("== swiglu %s\n", shape);
    size_t n2 = (size_t)N * 2 * F, n1 = (size_t)N * F;
    float *h = rand_bf(n2, 2.0f), *dg = rand_bf(n1, 1.0f);
    bf16 *hh = to_bf(h, n2), *hg = to_bf(dg, n1);
    bf16 *d_h = dup_dev(hh, n2 * 2), *d_dg = dup_dev(hg, n1 * 2), *d_g = dev_poisoned(n1 * 2), *d_dh = dev_poisoned(n2 * 2);
    cuda_swiglu_forward(d_g, d_h, N, F);
    cuda_swiglu_backward(d_dh, d_dg, d_h, N, F);
    double *rg = dvec(n1), *rd = dvec(n2);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < F; i++) {
            double x = h[(size_t)n * 2 * F + i], h3 = h[(size_t)n * 2 * F + F + i], g = dg[(size_t)n * F + i];
            double sig = 1.0 / (1.0 + exp(-x));
            rg[(size_t)n * F + i] = x * sig * h3;
            rd[(size_t)n * 2 * F + F + i] = g * x * sig;
            rd[(size_t)n * 2 * F + i] = g * h3 * sig * (1 + x * (1 - sig));
        }
    float *gg = get_bf(d_g, n1), *gd = get_bf(d_dh, n2);
    check("swiglu_forward", shape, gg, rg, n1, 1e-2);
    check("swiglu_backward", shape, gd, rd, n2, 1e-2);
    cuda_free(d_h); cuda_free(d_dg); cuda_free(d_g); cuda_free(d_dh);
    free(h); free(dg); free(hh); free(hg); free(rg); free(rd); free(gg); free(gd);
}

// ---------------------------------------------------------------------------------------------
// 8. GEMMs through cuBLASLt

typedef struct {
    void *out;
    const bf16 *a, *w;
    int N, K, OC;
} GemmBench;
static void gemm_run(void *c) {
    GemmBench *g = c;
    cuda_matmul(g->out, 1, NULL, g->a, g->w, g->N, g->K, g->OC);
}

static void test_gemm(int N, int K, int OC) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d K=%d OC=%d", N, K, OC);
    printf("== gemm %s\n", shape);
    float *x = rand_bf((size_t)N * K, 1.0f), *w = rand_bf((size_t)OC * K, 0.1f), *c0 = rand_f32((size_t)N * OC, 1.0f);
    float *dy = rand_bf((size_t)N * OC, 1.0f), *dw0 = rand_f32((size_t)OC * K, 1.0f);
    bf16 *hx = to_bf(x, (size_t)N * K), *hw = to_bf(w, (size_t)OC * K), *hdy = to_bf(dy, (size_t)N * OC);
    bf16 *d_x = dup_dev(hx, (size_t)N * K * 2), *d_w = dup_dev(hw, (size_t)OC * K * 2), *d_dy = dup_dev(hdy, (size_t)N * OC * 2);
    float *d_c = dup_dev(c0, (size_t)N * OC * 4), *d_o32 = dev_poisoned((size_t)N * OC * 4), *d_dx = dev_poisoned((size_t)N * K * 4);
    float *d_dw = dup_dev(dw0, (size_t)OC * K * 4);
    bf16 *d_o16 = dev_poisoned((size_t)N * OC * 2);
    double *ro = dvec((size_t)N * OC), *rc = dvec((size_t)N * OC), *rdx = dvec((size_t)N * K), *rdw = dvec((size_t)OC * K);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double a = 0;
            for (int k = 0; k < K; k++) a += (double)x[(size_t)n * K + k] * w[(size_t)o * K + k];
            ro[(size_t)n * OC + o] = a;
            rc[(size_t)n * OC + o] = a + c0[(size_t)n * OC + o];
        }
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            double a = 0;
            for (int o = 0; o < OC; o++) a += (double)dy[(size_t)n * OC + o] * w[(size_t)o * K + k];
            rdx[(size_t)n * K + k] = a;
        }
    for (int o = 0; o < OC; o++)
        for (int k = 0; k < K; k++) {
            double a = dw0[(size_t)o * K + k];
            for (int n = 0; n < N; n++) a += (double)dy[(size_t)n * OC + o] * x[(size_t)n * K + k];
            rdw[(size_t)o * K + k] = a;
        }
    cuda_matmul(d_o16, 1, NULL, d_x, d_w, N, K, OC);
    cuda_matmul(d_o32, 0, d_c, d_x, d_w, N, K, OC);
    cuda_matmul_dinp(d_dx, 0, d_dy, d_w, N, K, OC);
    cuda_matmul_dw(d_dw, d_dy, d_x, N, K, OC);
    float *g16 = get_bf(d_o16, (size_t)N * OC), *g32 = get_f32(d_o32, (size_t)N * OC);
    float *gdx = get_f32(d_dx, (size_t)N * K), *gdw = get_f32(d_dw, (size_t)OC * K);
    check("matmul (bf16 out)", shape, g16, ro, (size_t)N * OC, 1e-2);
    check("matmul (fp32 out, + C)", shape, g32, rc, (size_t)N * OC, 1e-5);
    check("matmul_dinp (fp32 out)", shape, gdx, rdx, (size_t)N * K, 1e-5);
    check("matmul_dw (accumulate)", shape, gdw, rdw, (size_t)OC * K, 1e-5);
    cuda_free(d_x); cuda_free(d_w); cuda_free(d_dy); cuda_free(d_c); cuda_free(d_o32); cuda_free(d_dx); cuda_free(d_dw);
    cuda_free(d_o16);
    free(x); free(w); free(c0); free(dy); free(dw0); free(hx); free(hw); free(hdy); free(ro); free(rc); free(rdx);
    free(rdw); free(g16); free(g32); free(gdx); free(gdw);
}

static void bench_gemm(int N, int K, int OC) {
    bf16 *a = cuda_malloc((size_t)N * K * 2, "bench"), *w = cuda_malloc((size_t)OC * K * 2, "bench");
    bf16 *o = cuda_malloc((size_t)N * OC * 2, "bench");
    float *ha = rand_bf((size_t)N * K, 1.0f), *hw = rand_bf((size_t)OC * K, 0.05f);   // never zeros (METHOD.md)
    bf16 *ba = to_bf(ha, (size_t)N * K), *bw = to_bf(hw, (size_t)OC * K);
    cuda_upload(a, ba, (size_t)N * K * 2, "bench");
    cuda_upload(w, bw, (size_t)OC * K * 2, "bench");
    GemmBench g = {o, a, w, N, K, OC};
    char what[64];
    snprintf(what, sizeof what, "matmul %dx%dx%d bf16", N, K, OC);
    bench_line(what, bench_ms(gemm_run, &g, 10), 0, 2.0 * N * K * OC);
    cuda_free(a); cuda_free(w); cuda_free(o);
    free(ha); free(hw); free(ba); free(bw);
}

// ---------------------------------------------------------------------------------------------
// 9. log-softmax, log-prob, entropy and d(logits)

typedef struct {
    const float *z;
    float *lp, *en, *st;
    const int32_t *tg;
    int N, V;
} LpBench;
static void lp_run(void *c) {
    LpBench *b = c;
    cuda_logprob_forward(b->z, b->N, b->V, 1.0f, b->tg, b->lp, b->en, b->st);
}

static void test_logprob(int N, int V, float temp) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d V=%d T=%.2g", N, V, temp);
    printf("== logprob %s\n", shape);
    float *z = rand_f32((size_t)N * V, 3.0f), *dl = rand_f32(N, 1.0f), *de = rand_f32(N, 1.0f);
    int32_t *tg = xmalloc(N * 4);
    for (int i = 0; i < N; i++) tg[i] = i % 5 == 4 ? -1 : irand(V);   // some padding targets
    for (int i = 0; i < N; i += 7) { dl[i] = 0; de[i] = 0; }          // rows with no gradient
    float *d_z = dup_dev(z, (size_t)N * V * 4), *d_dl = dup_dev(dl, N * 4), *d_de = dup_dev(de, N * 4);
    int32_t *d_t = dup_dev(tg, N * 4);
    float *d_lp = dev_poisoned(N * 4), *d_en = dev_poisoned(N * 4), *d_st = dev_poisoned((size_t)N * 16);
    float *d_g32 = dev_poisoned((size_t)N * V * 4);
    bf16 *d_g16 = dev_poisoned((size_t)N * V * 2);
    cuda_logprob_forward(d_z, N, V, temp, d_t, d_lp, d_en, d_st);
    cuda_logprob_backward(d_g32, 0, d_z, d_st, N, V, temp, d_t, d_dl, d_de);
    cuda_logprob_backward(d_g16, 1, d_z, d_st, N, V, temp, d_t, d_dl, d_de);
    // references: logprob.c's formulas in double
    double *rlp = dvec(N), *ren = dvec(N), *rg = dvec((size_t)N * V);
    for (int i = 0; i < N; i++) {
        const float *r = z + (size_t)i * V;
        double mx = -INFINITY, s = 0, sa = 0;
        for (int j = 0; j < V; j++) mx = r[j] > mx ? r[j] : mx;
        for (int j = 0; j < V; j++) { double a = (r[j] - mx) / temp; s += exp(a); sa += exp(a) * a; }
        double lse = log(s), H = lse - sa / s;
        rlp[i] = tg[i] < 0 ? 0 : (r[tg[i]] - mx) / temp - lse;
        ren[i] = H;
        double gl = tg[i] >= 0 ? dl[i] : 0, gh = de[i];
        for (int j = 0; j < V; j++) {
            double a = (r[j] - mx) / temp, p = exp(a - lse);
            rg[(size_t)i * V + j] = (-gl * p - gh * p * (a - lse + H)) / temp + (j == tg[i] ? gl / temp : 0);
        }
    }
    float *glp = get_f32(d_lp, N), *gen = get_f32(d_en, N), *gg32 = get_f32(d_g32, (size_t)N * V), *gg16 = get_bf(d_g16, (size_t)N * V);
    check("logprob_forward logp", shape, glp, rlp, N, 1e-5);
    check("logprob_forward entropy", shape, gen, ren, N, 1e-5);
    check("logprob_backward (fp32 out)", shape, gg32, rg, (size_t)N * V, 1e-5);
    check("logprob_backward (bf16 out)", shape, gg16, rg, (size_t)N * V, 1e-2);
    // and against lib/logprob.c itself
    float *clp = xmalloc(N * 4), *cen = xmalloc(N * 4);
    logprob_forward(z, N, V, temp, tg, clp, cen);
    double *dc = dvec(N);
    for (int i = 0; i < N; i++) dc[i] = clp[i];
    check("logprob_forward vs logprob.c", shape, glp, dc, N, 1e-5);
    if (V >= 100000) {
        LpBench b = {d_z, d_lp, d_en, d_st, d_t, N, V};
        bench_line("logprob_forward", bench_ms(lp_run, &b, 10), 2.0 * N * V * 4, 0);
    }
    cuda_free(d_z); cuda_free(d_dl); cuda_free(d_de); cuda_free(d_t); cuda_free(d_lp); cuda_free(d_en); cuda_free(d_st);
    cuda_free(d_g32); cuda_free(d_g16);
    free(z); free(dl); free(de); free(tg); free(rlp); free(ren); free(rg); free(glp); free(gen); free(gg32); free(gg16);
    free(clp); free(cen); free(dc);
}

// ---------------------------------------------------------------------------------------------
// 10. AdamW, norms, helpers

typedef struct {
    float *p, *g, *m, *v;
    bf16 *p16;
    size_t n;
    AdamWScalars s;
} AdamBench;
static void adam_run(void *c) {
    AdamBench *a = c;
    cuda_adamw_step(a->p, a->p16, a->g, a->m, a->v, a->n, &a->s);
}

static void test_adamw(size_t n) {
    char shape[64];
    snprintf(shape, sizeof shape, "n=%zu", n);
    printf("== adamw %s\n", shape);
    AdamWConfig cfg = {.lr = 3e-4f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};
    AdamW *opt = adamw_create(n, cfg);
    float *p = rand_f32(n, 1.0f), *g = rand_f32(n, 0.1f);
    for (size_t i = 0; i < n; i++) { opt->m[i] = 0.01f * nrand(); opt->v[i] = 1e-4f * (float)urand(); }
    opt->step = 6;
    float *d_p = dup_dev(p, n * 4), *d_g = dup_dev(g, n * 4), *d_m = dup_dev(opt->m, n * 4), *d_v = dup_dev(opt->v, n * 4);
    bf16 *d_p16 = dev_poisoned(n * 2);
    AdamWScalars s = adamw_scalars(&cfg, opt->step + 1);
    cuda_adamw_step(d_p, d_p16, d_g, d_m, d_v, n, &s);
    adamw_step(opt, p, g);   // step 7 on the host
    float *gp = get_f32(d_p, n), *gm = get_f32(d_m, n), *gv = get_f32(d_v, n), *gp16 = get_bf(d_p16, n);
    size_t diff = 0, diff16 = 0;
    for (size_t i = 0; i < n; i++) {
        diff += gp[i] != p[i] || gm[i] != opt->m[i] || gv[i] != opt->v[i];
        diff16 += gp16[i] != bf16_to_float(bf16_from_float(p[i]));
    }
    printf("  adamw: %zu of %zu parameters differ from adamw.c (bf16 copy: %zu)\n", diff, n, diff16);
    record("adamw_step (bit-identical)", shape, (double)diff, 0, diff == 0);
    record("adamw_step bf16 copy", shape, (double)diff16, 0, diff16 == 0);
    // sum of squares, first non-finite, scale
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (double)g[i] * g[i];
    double gs = cuda_sum_squares(d_g, n);
    printf("  sum of squares %.17g vs %.17g\n", gs, ss);
    record("sum_squares", shape, fabs(gs - ss) / ss, 1e-10, fabs(gs - ss) / ss <= 1e-10);
    long long f0 = cuda_first_nonfinite(d_g, n);
    float bad = NAN;
    size_t at = n / 3 + 1;
    cuda_upload(d_g + at, &bad, 4, "poke");
    long long f1 = cuda_first_nonfinite(d_g, n);
    printf("  first non-finite: %lld (want -1), %lld (want %zu)\n", f0, f1, at);
    record("first_nonfinite", shape, 0, 0, f0 == -1 && f1 == (long long)at);
    if (n >= (1u << 24)) {
        AdamBench a = {d_p, d_g, d_m, d_v, d_p16, n, s};
        cuda_upload(d_g + at, &g[at], 4, "poke");
        bench_line("adamw_step", bench_ms(adam_run, &a, 10), (double)n * 30, 0);
    }
    cuda_free(d_p); cuda_free(d_g); cuda_free(d_m); cuda_free(d_v); cuda_free(d_p16);
    free(p); free(g); free(gp); free(gm); free(gv); free(gp16);
    adamw_free(opt);
}

// ---------------------------------------------------------------------------------------------
// 11. sampling

static void test_sampler(int n, int V, SamplerConfig sc, const char *label) {
    char shape[64];
    snprintf(shape, sizeof shape, "n=%d V=%d %s", n, V, label);
    printf("== sampler %s\n", shape);
    float *z = rand_f32((size_t)n * V, 2.5f);
    for (int i = 0; i < n; i += 5) z[(size_t)i * V + irand(V)] += 8.0f;   // some peaked rows
    for (int i = 1; i < n; i += 9) z[(size_t)i * V + 3] = z[(size_t)i * V + 7] = 20.0f;   // ties at the top
    uint64_t *k = xmalloc(n * 8), *c = xmalloc(n * 8);
    for (int i = 0; i < n; i++) { k[i] = rng_stream_key(99, label, i, 1); c[i] = (uint64_t)(5 + i); }
    float *d_z = dup_dev(z, (size_t)n * V * 4);
    uint64_t *d_k = dup_dev(k, n * 8), *d_c = dup_dev(c, n * 8);
    int32_t *d_t = dev_poisoned(n * 4), *d_s = dev_poisoned(n * 4);
    float *d_m = dev_poisoned(n * 4);
    cuda_sample(d_z, n, V, &sc, d_k, d_c, d_t, d_m, d_s);
    int32_t *gt = xmalloc(n * 4), *gs = xmalloc(n * 4);
    float *gm = get_f32(d_m, n);
    cuda_download(gt, d_t, n * 4, "tokens");
    cuda_download(gs, d_s, n * 4, "status");
    SampleWork *w = sample_work_create(V);
    int same = 0, bad_status = 0;
    float *gmf = xmalloc(n * 4);
    double *rm = dvec(n);
    for (int i = 0; i < n; i++) {
        int tok = -1;
        float kept = 0;
        sample_logits(&sc, z + (size_t)i * V, V, rng_uniform(k[i], c[i]), w, &tok, &kept);
        same += tok == gt[i];
        bad_status += gs[i] != SAMPLE_OK;
        if (tok != gt[i] && same + 3 > i) printf("  row %d: gpu token %d, cpu token %d (u %.9g)\n", i, gt[i], tok, rng_uniform(k[i], c[i]));
        gmf[i] = gm[i];
        rm[i] = kept;
    }
    printf("  %d of %d tokens equal to sampler.c's; first tokens gpu %d %d %d, status errors %d\n", same, n, gt[0],
           n > 1 ? gt[1] : -1, n > 2 ? gt[2] : -1, bad_status);
    record("sample tokens (% equal)", shape, 100.0 * same / n, 99.0, same >= 0.99 * n && !bad_status);
    check("sample kept_mass", shape, gmf, rm, n, 1e-5);
    // a NaN row is refused
    float nanv = NAN;
    cuda_upload(d_z + 1, &nanv, 4, "poke");
    cuda_sample(d_z, n, V, &sc, d_k, d_c, d_t, d_m, d_s);
    cuda_download(gs, d_s, n * 4, "status");
    record("sample NaN row refused", shape, 0, 0, gs[0] == SAMPLE_NONFINITE && (n < 2 || gs[1] == SAMPLE_OK));
    cuda_free(d_z); cuda_free(d_k); cuda_free(d_c); cuda_free(d_t); cuda_free(d_s); cuda_free(d_m);
    free(z); free(k); free(c); free(gt); free(gs); free(gm); free(gmf); free(rm);
    sample_work_free(w);
}

// ---------------------------------------------------------------------------------------------
// 12. the device model against model.c

static double rel(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) return INFINITY;
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num) / (den > 0 ? sqrt(den) : 1.0);
}

static void check_pair(const char *name, const char *shape, const float *got, const float *ref, size_t n, double tol) {
    double *r = dvec(n);
    for (size_t i = 0; i < n; i++) r[i] = ref[i];
    check(name, shape, got, r, n, tol);
    free(r);
}

// The gradient buckets of cuda_model_overlap_arm (what data parallelism all-reduces during the
// backward), checked without a second GPU: a stand-in for the all-reduce doubles each bucket
// on the compute stream when it is handed out, as the sum over two ranks that hold the same
// gradients would. A kernel that wrote into a bucket after it went out leaves its share
// undoubled, and a bucket missed or handed out twice leaves x1 or x4, so the gradients must
// be exactly twice the plain backward's. The buckets must tile the buffer top down.
typedef struct {
    float *base;
    size_t low;       // the lowest offset handed out so far (the buffer's size at first)
    int n, tiled;
} Buckets;

static void bucket_double(void *ctx, float *dev, size_t n, const char *what) {
    Buckets *b = ctx;
    size_t off = (size_t)(dev - b->base);
    if (n == 0 || off + n != b->low) b->tiled = 0;   // each ends where the one before began
    b->low = off;
    b->n++;
    printf("    bucket %d: [%zu, %zu) %s\n", b->n, off, off + n, what);
    cuda_scale(dev, n, 2.0f);
}

static void buckets_arm(CudaModel *cm, size_t min, Buckets *b) {
    size_t n;
    *b = (Buckets){.base = cuda_model_grads_device(cm, &n), .low = n, .tiled = 1};
    cuda_model_overlap_arm(cm, min, bucket_double, b);
}

// after cuda_model_overlap_finish: the gradients (model.h layout) against 2 x plain
static void buckets_check(CudaModel *cm, Buckets *b, const float *plain, size_t n, const char *name, const char *shape) {
    float *got = xmalloc(n * sizeof(float));
    cuda_model_download_grads(cm, got);
    size_t bad = 0, at = 0;
    for (size_t i = 0; i < n; i++) {
        double want = 2.0 * plain[i];
        if (!(fabs(got[i] - want) <= 1e-6 * fabs(want))) { if (!bad) at = i; bad++; }
    }
    int ok = bad == 0 && b->tiled && b->low == 0;
    printf("  %s: %d buckets%s, %zu of %zu gradients not 2x the plain backward's", name, b->n,
           b->tiled && b->low == 0 ? " tiling the buffer" : " NOT TILING THE BUFFER", bad, n);
    if (bad) printf(" (first at %zu: %.6g vs 2 x %.6g)", at, got[at], plain[at]);
    printf(" %s\n", ok ? "ok" : "FAIL");
    record(name, shape, (double)bad, 0, ok);
    free(got);
}

static void test_model(ModelConfig cfg, const char *label) {
    printf("== model %s (dim %d, layers %d, heads %d/%d, hidden %d, vocab %d%s%s)\n", label, cfg.dim, cfg.n_layers,
           cfg.n_heads, cfg.n_kv_heads, cfg.hidden_dim, cfg.vocab_size, cfg.qkv_bias ? ", qkv bias" : "",
           cfg.tied ? ", tied" : "");
    Model *m = model_create(&cfg);
    model_init_random(m, g_rng, 0.08f);
    // round the weights to bf16 so the CPU sees what the GPU's products read: what remains is
    // the activations' bf16 rounding and the accumulation order
    for (size_t i = 0; i < m->n_params; i++) m->params[i] = bf16_to_float(bf16_from_float(m->params[i]));
    int B = 4, V = cfg.vocab_size;
    int32_t *pr[4], *rs[4];
    int pl[4] = {5, 11, 2, 8}, rl[4] = {9, 3, 14, 1};
    for (int b = 0; b < B; b++) {
        pr[b] = xmalloc(pl[b] * 4);
        rs[b] = xmalloc(rl[b] * 4);
        for (int t = 0; t < pl[b]; t++) pr[b][t] = irand(V);
        for (int t = 0; t < rl[b]; t++) rs[b][t] = irand(V);
    }
    SeqBatch *sb = seqbatch_build(B, (const int32_t *const *)pr, pl, (const int32_t *const *)rs, rl);
    size_t nr = sb->n_resp, C = cfg.dim;
    int32_t *rows = xmalloc(nr * 4), *tg = xmalloc(nr * 4);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < rl[b]; t++) {
            rows[sb->resp_off[b] + t] = (int32_t)seqbatch_pred_index(sb, b, t);
            tg[sb->resp_off[b] + t] = rs[b][t];
        }
    char shape[64];
    snprintf(shape, sizeof shape, "%s B=%d T=%d", label, sb->B, sb->T);
    CudaModel *cm = cuda_model_create(m);

    // forward: hidden and logits at the response rows; log-probs and entropies
    float temp = 0.9f;
    float *clp = xmalloc(nr * 4), *cen = xmalloc(nr * 4), *glp = xmalloc(nr * 4), *gen = xmalloc(nr * 4);
    float *chid = xmalloc(nr * C * 4), *clog = xmalloc(nr * V * 4);
    model_forward(m, sb->tokens, sb->mask, sb->B, sb->T, 1);   // every position's logits
    seqbatch_gather(sb, m->hidden, C, chid);
    seqbatch_gather(sb, m->logits, V, clog);
    seqbatch_logprobs(m, sb, temp, clp, cen);   // its own forward, which the backward below follows
    cuda_model_forward(cm, sb->tokens, sb->mask, sb->B, sb->T);
    float *ghid = xmalloc(nr * C * 4), *glog = xmalloc(nr * V * 4);
    cuda_model_hidden_rows(cm, (int)nr, rows, ghid);
    cuda_model_logits_rows(cm, (int)nr, rows, glog);
    cuda_model_logprob_rows(cm, (int)nr, rows, tg, temp, glp, gen);
    check_pair("model hidden (response rows)", shape, ghid, chid, nr * C, 3e-2);
    check_pair("model logits (response rows)", shape, glog, clog, nr * V, 3e-2);
    double maxd = 0;
    for (size_t i = 0; i < nr; i++) maxd = fmax(maxd, fabs((double)glp[i] - clp[i]));
    printf("  log-probs: max |gpu - cpu| = %.4f nats over %zu tokens (first %.4f vs %.4f)\n", maxd, nr, glp[0], clp[0]);
    record("model log-probs max |diff| (nats)", shape, maxd, 0.05, maxd <= 0.05);
    check_pair("model entropies", shape, gen, cen, nr, 3e-2);

    // backward from random d(logp), d(entropy) — the update's path
    float *dl = rand_f32(nr, 1.0f), *de = rand_f32(nr, 0.3f);
    model_zero_grad(m);
    seqbatch_logprobs_backward(m, sb, temp, dl, de);
    cuda_model_zero_grad(cm);
    cuda_model_logprob_rows_backward(cm, dl, de);
    float *gg = xmalloc(m->n_params * 4);
    cuda_model_download_grads(cm, gg);
    struct { const char *name; const float *cpu; size_t n; } parts[] = {
        {"grad tok_emb", m->g.tok_emb, (size_t)V * C},
        {"grad wq (all layers)", m->g.wq, (size_t)cfg.n_layers * C * C},
        {"grad w2 (all layers)", m->g.w2, (size_t)cfg.n_layers * C * cfg.hidden_dim},
        {"grad attn_norm", m->g.attn_norm, (size_t)cfg.n_layers * C},
        {"grad final_norm", m->g.final_norm, C},
        {"grad bq", m->g.bq, cfg.qkv_bias ? (size_t)cfg.n_layers * C : 0},
        {"grad lm_head", cfg.tied ? NULL : m->g.lm_head, (size_t)V * C},
    };
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (!parts[i].cpu || !parts[i].n) continue;
        char nm[48];
        snprintf(nm, sizeof nm, "model %s", parts[i].name);
        check_pair(nm, shape, gg + (parts[i].cpu - m->grads), parts[i].cpu, parts[i].n, 5e-2);
    }
    printf("  all gradients: rel %.3e\n", rel(gg, m->grads, m->n_params));
    record("model all gradients (logprob path)", shape, rel(gg, m->grads, m->n_params), 5e-2,
           rel(gg, m->grads, m->n_params) <= 5e-2);

    // the same backward with its gradient buckets handed out as they become final: one per
    // layer, then merged ones (at least a third of the buffer each)
    size_t ndev;
    cuda_model_grads_device(cm, &ndev);
    for (int pass = 0; pass < 2; pass++) {
        cuda_model_forward(cm, sb->tokens, sb->mask, sb->B, sb->T);
        cuda_model_logprob_rows(cm, (int)nr, rows, tg, temp, glp, gen);
        cuda_model_zero_grad(cm);
        Buckets bk;
        buckets_arm(cm, pass == 0 ? 0 : ndev / 3, &bk);
        cuda_model_logprob_rows_backward(cm, dl, de);
        cuda_model_overlap_finish(cm);
        buckets_check(cm, &bk, gg, m->n_params, pass == 0 ? "model overlap buckets (per layer)" :
                      "model overlap buckets (merged)", shape);
    }
    {   // a rank without tokens runs no backward: finish hands out every bucket, in order
        cuda_model_zero_grad(cm);
        Buckets bk;
        buckets_arm(cm, 0, &bk);
        cuda_model_overlap_finish(cm);
        int ok = bk.tiled && bk.low == 0 && bk.n == cfg.n_layers + 2;
        printf("  no backward: finish hands out %d buckets%s %s\n", bk.n, ok ? ", tiling the buffer" : "", ok ? "ok" : "FAIL");
        record("model overlap buckets (no backward)", shape, ok ? 0 : 1, 0, ok);
    }

    // backward from d(hidden) — the critic's path
    float *dh = rand_f32(nr * C, 1.0f);
    model_forward(m, sb->tokens, sb->mask, sb->B, sb->T, 0);
    model_zero_grad(m);
    float *full = xcalloc((size_t)sb->B * sb->T * C, 4);
    seqbatch_scatter(sb, dh, C, full);
    model_backward(m, NULL, full);
    cuda_model_forward(cm, sb->tokens, sb->mask, sb->B, sb->T);
    cuda_model_zero_grad(cm);
    cuda_model_hidden_rows_backward(cm, (int)nr, rows, dh);
    cuda_model_download_grads(cm, gg);
    double rh = rel(gg, m->grads, m->n_params);
    printf("  hidden-path gradients: rel %.3e\n", rh);
    record("model all gradients (hidden path)", shape, rh, 5e-2, rh <= 5e-2);
    {   // the critic's path with its buckets handed out as they become final
        cuda_model_forward(cm, sb->tokens, sb->mask, sb->B, sb->T);
        cuda_model_zero_grad(cm);
        Buckets bk;
        buckets_arm(cm, 0, &bk);
        cuda_model_hidden_rows_backward(cm, (int)nr, rows, dh);
        cuda_model_overlap_finish(cm);
        buckets_check(cm, &bk, gg, m->n_params, "model overlap buckets (hidden path)", shape);
    }

    // AdamW on identical gradients: the device step equals the host's
    AdamWConfig ac = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};
    AdamW *oc = adamw_create(m->n_params, ac), *og = adamw_create(m->n_params, ac);
    cuda_model_upload_grads(cm, m->grads);
    cuda_model_adamw_step(cm, og);
    adamw_step(oc, m->params, m->grads);
    float *gp = xmalloc(m->n_params * 4);
    Model *tmp = model_clone(m);
    cuda_model_download(cm, tmp);
    memcpy(gp, tmp->params, m->n_params * 4);
    size_t diff = 0;
    for (size_t i = 0; i < m->n_params; i++) diff += gp[i] != m->params[i];
    printf("  AdamW through the device model: %zu of %zu parameters differ from adamw.c\n", diff, m->n_params);
    record("model adamw step (bit-identical)", shape, (double)diff, 0, diff == 0);

    // KV cache: prefill the prompts, decode the responses token by token; compare each step's
    // logits with the training forward's at the same positions (GPU) and with model.c's
    int T_max = sb->P + sb->R + 1;
    CudaKV *kv = cuda_kv_create(cm, B, T_max);
    int rws[4] = {0, 1, 2, 3};
    float *lg = xmalloc((size_t)B * V * 4), *ref = xmalloc((size_t)B * V * 4), *cref = xmalloc((size_t)B * V * 4);
    cuda_model_upload(cm, m);   // the weights after the step, on both sides
    cuda_model_forward(cm, sb->tokens, sb->mask, sb->B, sb->T);
    model_forward(m, sb->tokens, sb->mask, sb->B, sb->T, 1);
    cuda_model_prefill(cm, kv, B, rws, (const int32_t *const *)pr, pl, lg);
    double worst_gpu = 0, worst_cpu = 0;
    for (int step = 0;; step++) {
        // step 0: the prefill's logits (all rows, predicting response token 0); step s >= 1:
        // decode response token s-1 of the rows that have it; the logits then sit at column
        // P - 1 + s of the padded batch
        int act[4], na = 0;
        int32_t pos[4], tk[4];
        for (int b = 0; b < B; b++)
            if (step <= rl[b]) {
                act[na] = b;
                pos[na] = (int32_t)((size_t)b * sb->T + sb->P - 1 + step);
                if (step > 0) tk[na] = rs[b][step - 1];
                na++;
            }
        if (na == 0) break;
        if (step > 0) cuda_model_decode(cm, kv, na, act, tk, lg);
        cuda_model_logits_rows(cm, na, pos, ref);
        for (int i = 0; i < na; i++) memcpy(cref + (size_t)i * V, m->logits + (size_t)pos[i] * V, V * 4);
        worst_gpu = fmax(worst_gpu, rel(lg, ref, (size_t)na * V));
        worst_cpu = fmax(worst_cpu, rel(lg, cref, (size_t)na * V));
    }
    printf("  KV decode logits vs the GPU forward: worst step rel %.3e; vs model.c: %.3e\n", worst_gpu, worst_cpu);
    record("model KV decode vs GPU forward", shape, worst_gpu, 3e-2, worst_gpu <= 3e-2);
    record("model KV decode vs model.c", shape, worst_cpu, 3e-2, worst_cpu <= 3e-2);

    cuda_kv_free(kv);
    cuda_model_free(cm);
    adamw_free(oc); adamw_free(og);
    model_free(tmp);
    model_free(m);
    seqbatch_free(sb);
    for (int b = 0; b < B; b++) { free(pr[b]); free(rs[b]); }
    free(rows); free(tg); free(clp); free(cen); free(glp); free(gen); free(chid); free(clog); free(ghid); free(glog);
    free(dl); free(de); free(gg); free(dh); free(full); free(gp); free(lg); free(ref); free(cref);
}

// ---------------------------------------------------------------------------------------------

int main(int argc, char **argv) {
    safe_progname = "test_kernels";
    uint64_t seed = (uint64_t)time(NULL);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--quick")) g_quick = 1;
        else die(EXIT_USAGE, "usage: test_kernels [--seed N] [--quick]");
    }
    g_rng = seed;
    if (cuda_device_count() == 0) die(EXIT_USAGE, "no CUDA GPU visible: these tests need one (CI only builds them)");
    cuda_init();
    printf("test_kernels: %s, seed %llu (rerun with --seed %llu)\n", cuda_device_name(), (unsigned long long)seed,
           (unsigned long long)seed);

    test_philox();
    test_embedding(37, 64, 50);
    test_embedding(300, 896, 1000);
    test_rmsnorm(33, 64);
    test_rmsnorm(257, 896);
    test_rmsnorm(64, 4100);
    test_rope(29, 8, 4, 8, 0);
    test_rope(70, 14, 2, 64, 1);
    test_rope(11, 6, 6, 48, 0);
    test_attention(3, 17, 8, 4, 8);
    test_attention(2, 70, 4, 1, 64);
    test_attention(2, 45, 6, 6, 48);
    test_attention(1, 40, 2, 2, 128);
    test_attention(2, 130, 4, 2, 32);
    if (!g_quick) test_attention(4, 512, 14, 2, 64);   // also the benchmark shape
    test_decode_attention(5, 40, 5, 8, 4, 8);
    test_decode_attention(8, 300, 16, 14, 2, 64);
    test_decode_attention(3, 80, 9, 2, 1, 128);
    test_swiglu(33, 172);
    test_swiglu(200, 4864);
    test_gemm(33, 64, 172);     // odd leading dimensions: the cublasGemmEx fallback
    test_gemm(7, 172, 64);
    test_gemm(128, 896, 1152);
    test_gemm(64, 4864, 896);
    test_logprob(13, 512, 1.0f);
    test_logprob(9, 1000, 0.7f);
    test_logprob(8, 151936, 1.0f);
    test_adamw(100003);
    if (!g_quick) test_adamw((size_t)1 << 25);
    SamplerConfig plain = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f}, warm = {.temperature = 0.7f, .top_p = 1.0f};
    SamplerConfig topk = {.temperature = 1.0f, .top_k = 40, .top_p = 1.0f}, topk1 = {.temperature = 1.0f, .top_k = 1, .top_p = 1.0f};
    SamplerConfig topp = {.temperature = 1.0f, .top_p = 0.9f}, both = {.temperature = 0.8f, .top_k = 50, .top_p = 0.8f};
    SamplerConfig greedy = {.temperature = 1.0f, .top_p = 1.0f, .greedy = 1};
    test_sampler(300, 512, plain, "plain");
    test_sampler(300, 512, warm, "T=0.7");
    test_sampler(300, 512, topk, "top-k 40");
    test_sampler(100, 512, topk1, "top-k 1");
    test_sampler(300, 512, topp, "top-p 0.9");
    test_sampler(300, 512, both, "top-k 50 top-p 0.8");
    test_sampler(100, 512, greedy, "greedy");
    test_sampler(40, 151936, plain, "plain, Qwen vocab");
    test_sampler(40, 151936, topp, "top-p 0.9, Qwen vocab");
    ModelConfig a = {.dim = 64, .hidden_dim = 172, .n_layers = 3, .n_heads = 8, .n_kv_heads = 4, .vocab_size = 512,
                     .max_seq_len = 256, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .qkv_bias = 0, .tied = 0};
    ModelConfig b = {.dim = 128, .hidden_dim = 320, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = 1000,
                     .max_seq_len = 256, .rope_theta = 1000000.0f, .norm_eps = 1e-6f, .qkv_bias = 1, .tied = 1};
    test_model(a, "llama-like");
    test_model(b, "qwen2-like");
    if (!g_quick) {
        printf("== benchmarks (0.5B-config shapes)\n");
        bench_gemm(8192, 896, 1152);
        bench_gemm(8192, 896, 9728);
        bench_gemm(8192, 4864, 896);
        bench_gemm(2048, 896, 151936);
    }

    printf("\n%-36s %-34s %12s %10s %s\n", "check", "shape", "error", "tolerance", "result");
    for (int i = 0; i < g_nrows; i++)
        printf("%-36s %-34s %12.3e %10.0e %s\n", g_rows[i].name, g_rows[i].shape, g_rows[i].err, g_rows[i].tol,
               g_rows[i].ok ? "ok" : "FAIL");
    printf("test_kernels: %d checks, %d failed (seed %llu)\n", g_nrows, g_failed, (unsigned long long)seed);
    return g_failed ? 1 : 0;
}

#else   // a build without CUDA: nothing to test here
int main(void) {
    fprintf(stderr, "test_kernels: this build has no CUDA backend (CUDA=0 or no nvcc)\n");
    return 77;
}
#endif
