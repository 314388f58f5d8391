// test_stcompare.c — compare two safetensors files tensor by tensor (the data-parallel tests
// use it on model.safetensors of 1 rank and of N ranks).
//
//   test_stcompare A.safetensors B.safetensors [TOL [elem|tensor [MAX_FRAC MAX_ABS]]]
//       prints, per tensor, the largest absolute difference, the largest element-relative
//       difference |a - b| / max(|a|, |b|) and the tensor-relative one |a - b| / max|a| over
//       the tensor, then the worst tensor's first values side by side. Exit 0 when the chosen
//       measure (elem, the default, or tensor) stays within TOL (1e-6) everywhere, 1
//       otherwise, 2 when names or shapes differ. Element-relative suits parameters and
//       tensor-relative suits gradients, whose near-zero entries are sums that cancel.
//       With MAX_FRAC and MAX_ABS (elem): pass when at most that fraction of the elements is
//       over TOL and no element differs by more than MAX_ABS. (After AdamW steps, parameters
//       whose gradient is near 0 take a step lr·g/(|g| + eps) that amplifies rounding in g:
//       a few elements move by up to a few % of lr, see tests/test_dp.sh.)
//   test_stcompare            (no arguments) self-test, for make test.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"       // xmalloc
#include "safetensors.h"  // safetensors_open/read_f32/write
#include "test.h"

typedef struct {
    double max_abs, max_rel, max_trel;   // absolute, element-relative, tensor-relative
    size_t n, over;                      // elements, elements over TOL (element-relative)
    int shape_mismatch;
} Diff;

// Relative difference of one pair: |a - b| / max(|a|, |b|), 0 when both are 0.
static double rel_diff(float a, float b) {
    double d = fabs((double)a - b), s = fmax(fabs((double)a), fabs((double)b));
    return d == 0 ? 0 : d / s;
}

static Diff compare(const char *pa, const char *pb, double tol, int by_tensor, int verbose) {
    Diff out = {0};
    SafeTensors *a = safetensors_open(pa), *b = safetensors_open(pb);
    if (a->n != b->n) {
        printf("  %s has %d tensors, %s has %d\n", pa, a->n, pb, b->n);
        out.shape_mismatch = 1;
    }
    int worst = -1;
    double worst_measure = 0;
    for (int i = 0; i < a->n; i++) {
        const StEntry *ea = &a->e[i], *eb = safetensors_find(b, ea->name);
        if (!eb || eb->ndim != ea->ndim || st_numel(ea->ndim, ea->shape) != st_numel(eb->ndim, eb->shape)) {
            printf("  %s: missing or shaped differently in %s\n", ea->name, pb);
            out.shape_mismatch = 1;
            continue;
        }
        size_t n = st_numel(ea->ndim, ea->shape);
        float *x = xmalloc(n * sizeof(float)), *y = xmalloc(n * sizeof(float));
        safetensors_read_f32(a, ea->name, x, -1, NULL, n);
        safetensors_read_f32(b, ea->name, y, -1, NULL, n);
        double mabs = 0, mrel = 0, scale = 0;
        size_t over = 0;
        for (size_t k = 0; k < n; k++) {
            double d = fabs((double)x[k] - y[k]), r = rel_diff(x[k], y[k]);
            if (d > mabs) mabs = d;
            if (r > mrel) mrel = r;
            if (fabs(x[k]) > scale) scale = fabs(x[k]);
            over += r > tol;
        }
        double trel = mabs == 0 ? 0 : mabs / scale;
        double measure = by_tensor ? trel : mrel;
        if (verbose)
            printf("  %-48s %9zu  max_abs %.3e  max_rel %.3e (%zu over)  tensor_rel %.3e%s\n", ea->name, n, mabs, mrel,
                   over, trel, measure > tol ? "  <-- over" : "");
        if (mabs > out.max_abs) out.max_abs = mabs;
        if (trel > out.max_trel) out.max_trel = trel;
        if (mrel > out.max_rel) out.max_rel = mrel;
        if (measure > worst_measure) { worst_measure = measure; worst = i; }
        out.n += n;
        out.over += over;
        free(x);
        free(y);
    }
    if (verbose && worst >= 0) {
        // the worst tensor's first values side by side, for a person to read
        const StEntry *ea = &a->e[worst];
        size_t n = st_numel(ea->ndim, ea->shape), show = n < 4 ? n : 4;
        float *x = xmalloc(n * sizeof(float)), *y = xmalloc(n * sizeof(float));
        safetensors_read_f32(a, ea->name, x, -1, NULL, n);
        safetensors_read_f32(b, ea->name, y, -1, NULL, n);
        size_t at = 0;
        for (size_t k = 0; k < n; k++) if (rel_diff(x[k], y[k]) > rel_diff(x[at], y[at])) at = k;
        printf("  worst tensor %s:", ea->name);
        for (size_t k = 0; k < show; k++) printf(" [%zu] %.9g|%.9g", k, x[k], y[k]);
        printf("; worst [%zu] %.9g|%.9g\n", at, x[at], y[at]);
        free(x);
        free(y);
    }
    safetensors_close(a);
    safetensors_close(b);
    return out;
}

// ---- self-test ----

static char tmpdir[] = "/tmp/stcompare.XXXXXX";

static void write_two(const char *pa, const char *pb, float bump) {
    float w[6] = {1.0f, -2.0f, 0.5f, 0.0f, 3.0f, -0.25f}, w2[6];
    float bias[2] = {0.125f, -1.0f};
    memcpy(w2, w, sizeof w);
    w2[4] *= 1.0f + bump;
    StTensor ta[2] = {{.name = "w", .data = w, .ndim = 2, .shape = {2, 3}}, {.name = "b", .data = bias, .ndim = 1, .shape = {2}}};
    StTensor tb[2] = {{.name = "b", .data = bias, .ndim = 1, .shape = {2}}, {.name = "w", .data = w2, .ndim = 2, .shape = {2, 3}}};
    safetensors_write(pa, ta, 2, NULL, NULL, 0);
    safetensors_write(pb, tb, 2, NULL, NULL, 0);
}

TEST(identical_files_differ_by_zero) {
    char a[64], b[64];
    snprintf(a, sizeof a, "%s/a.st", tmpdir);
    snprintf(b, sizeof b, "%s/b.st", tmpdir);
    write_two(a, b, 0.0f);
    Diff d = compare(a, b, 1e-6, 0, 0);
    CHECK(d.max_rel == 0 && d.max_abs == 0 && !d.shape_mismatch, "max_rel %g max_abs %g", d.max_rel, d.max_abs);
}

TEST(relative_difference_found_by_name) {
    char a[64], b[64];
    snprintf(a, sizeof a, "%s/a.st", tmpdir);
    snprintf(b, sizeof b, "%s/b.st", tmpdir);
    write_two(a, b, 1e-3f);   // w[4] = 3 vs 3.003: relative 1e-3 / 1.001
    Diff d = compare(a, b, 1e-6, 0, 0);
    CHECK(fabs(d.max_rel - 1e-3 / 1.001) < 1e-6, "max_rel %g", d.max_rel);
    CHECK(fabs(d.max_abs - 3e-3) < 1e-6, "max_abs %g", d.max_abs);
    CHECK(fabs(d.max_trel - 1e-3) < 1e-6, "tensor_rel %g", d.max_trel);   // 3e-3 / max|w| = 3
    CHECK(d.over == 1 && d.n == 8, "%zu of %zu over", d.over, d.n);
}

int main(int argc, char **argv) {
    safe_progname = "test_stcompare";
    if (argc >= 3) {
        double tol = argc > 3 ? atof(argv[3]) : 1e-6;
        int by_tensor = argc > 4 && strcmp(argv[4], "tensor") == 0;
        Diff d = compare(argv[1], argv[2], tol, by_tensor, 1);
        printf("max_abs %.3e max_rel %.3e (%zu of %zu elements over %.1e) tensor_rel %.3e; measure %s, tolerance %.1e\n",
               d.max_abs, d.max_rel, d.over, d.n, tol, d.max_trel, by_tensor ? "tensor" : "elem", tol);
        if (d.shape_mismatch) return 2;
        if (!by_tensor && argc > 6) {
            double max_frac = atof(argv[5]), max_abs = atof(argv[6]), frac = d.n ? (double)d.over / d.n : 0;
            printf("fraction over %.2e (limit %.1e), max_abs %.3e (limit %.1e)\n", frac, max_frac, d.max_abs, max_abs);
            return frac <= max_frac && d.max_abs <= max_abs ? 0 : 1;
        }
        return (by_tensor ? d.max_trel : d.max_rel) > tol ? 1 : 0;
    }
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    RUN(identical_files_differ_by_zero);
    RUN(relative_difference_found_by_name);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}
