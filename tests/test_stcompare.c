// test_stcompare.c — compare two safetensors files tensor by tensor (the data-parallel tests
// use it on model.safetensors of 1 rank and of N ranks).
//
//   test_stcompare A.safetensors B.safetensors [TOL [elem|tensor|abs]]
//       prints the three largest differences by tensor and the totals: the absolute
//       difference, the element-relative one |a - b| / max(|a|, |b|) (with how many elements
//       exceed TOL) and the tensor-relative one |a - b| / max|a| over the tensor, then the
//       worst tensor's first values side by side. Exit 0 when the chosen measure (elem, the
//       default; tensor; abs) stays within TOL (1e-6) everywhere, 1 otherwise, 2 when names or
//       shapes differ. Tensor-relative suits gradients, whose near-zero entries are sums that
//       cancel; abs suits parameters after AdamW steps (tests/test_dp.sh says why).
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
    size_t n, over;                      // elements, elements over 1e-6 element-relative
    int shape_mismatch;
} Diff;

enum { M_ELEM, M_TENSOR, M_ABS };

// Relative difference of one pair: |a - b| / max(|a|, |b|), 0 when both are 0.
static double rel_diff(float a, float b) {
    double d = fabs((double)a - b), s = fmax(fabs((double)a), fabs((double)b));
    return d == 0 ? 0 : d / s;
}

typedef struct {
    const char *name;
    size_t n, over;
    double abs, rel, trel, measure;
} TensorDiff;

static float *read_all(const SafeTensors *st, const StEntry *e, size_t n) {
    float *x = xmalloc((n ? n : 1) * sizeof(float));
    safetensors_read_f32(st, e->name, x, -1, NULL, n);
    return x;
}

static Diff compare(const char *pa, const char *pb, int kind, int verbose) {
    Diff out = {0};
    SafeTensors *a = safetensors_open(pa), *b = safetensors_open(pb);
    if (a->n != b->n) {
        printf("  %s has %d tensors, %s has %d\n", pa, a->n, pb, b->n);
        out.shape_mismatch = 1;
    }
    TensorDiff *td = xcalloc(a->n ? a->n : 1, sizeof *td);
    for (int i = 0; i < a->n; i++) {
        const StEntry *ea = &a->e[i], *eb = safetensors_find(b, ea->name);
        td[i].name = ea->name;
        td[i].measure = -1;
        if (!eb || eb->ndim != ea->ndim || st_numel(ea->ndim, ea->shape) != st_numel(eb->ndim, eb->shape)) {
            printf("  %s: missing or shaped differently in %s\n", ea->name, pb);
            out.shape_mismatch = 1;
            continue;
        }
        size_t n = st_numel(ea->ndim, ea->shape);
        float *x = read_all(a, ea, n), *y = read_all(b, eb, n);
        double scale = 0;
        TensorDiff *t = &td[i];
        t->n = n;
        for (size_t k = 0; k < n; k++) {
            double d = fabs((double)x[k] - y[k]), r = rel_diff(x[k], y[k]);
            if (d > t->abs) t->abs = d;
            if (r > t->rel) t->rel = r;
            if (fabs(x[k]) > scale) scale = fabs(x[k]);
            t->over += r > 1e-6;   // reported: elements beyond 1e-6 relative
        }
        t->trel = t->abs == 0 ? 0 : t->abs / scale;
        t->measure = kind == M_ELEM ? t->rel : kind == M_TENSOR ? t->trel : t->abs;
        if (t->abs > out.max_abs) out.max_abs = t->abs;
        if (t->rel > out.max_rel) out.max_rel = t->rel;
        if (t->trel > out.max_trel) out.max_trel = t->trel;
        out.n += n;
        out.over += t->over;
        free(x);
        free(y);
    }
    if (verbose) {
        // the three worst tensors by the chosen measure, then the worst one's values
        int shown[3] = {-1, -1, -1};
        for (int k = 0; k < 3; k++) {
            for (int i = 0; i < a->n; i++) {
                if (i == shown[0] || i == shown[1] || td[i].measure <= 0) continue;
                if (shown[k] < 0 || td[i].measure > td[shown[k]].measure) shown[k] = i;
            }
            if (shown[k] < 0) break;
            TensorDiff *t = &td[shown[k]];
            printf("  %-44s %8zu  max_abs %.3e  max_rel %.3e (%zu over 1e-6)  tensor_rel %.3e\n", t->name, t->n,
                   t->abs, t->rel, t->over, t->trel);
        }
        if (shown[0] >= 0) {
            const StEntry *ea = safetensors_find(a, td[shown[0]].name), *eb = safetensors_find(b, td[shown[0]].name);
            size_t n = st_numel(ea->ndim, ea->shape), at = 0;
            float *x = read_all(a, ea, n), *y = read_all(b, eb, n);
            for (size_t k = 0; k < n; k++) {
                double dk = kind == M_ELEM ? rel_diff(x[k], y[k]) : fabs((double)x[k] - y[k]);
                double da = kind == M_ELEM ? rel_diff(x[at], y[at]) : fabs((double)x[at] - y[at]);
                if (dk > da) at = k;
            }
            printf("  %s:", ea->name);
            for (size_t k = 0; k < n && k < 3; k++) printf(" [%zu] %.9g|%.9g", k, x[k], y[k]);
            printf("  worst [%zu] %.9g|%.9g\n", at, x[at], y[at]);
            free(x);
            free(y);
        }
    }
    free(td);
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
    Diff d = compare(a, b, M_ELEM, 0);
    CHECK(d.max_rel == 0 && d.max_abs == 0 && !d.shape_mismatch, "max_rel %g max_abs %g", d.max_rel, d.max_abs);
}

TEST(relative_difference_found_by_name) {
    char a[64], b[64];
    snprintf(a, sizeof a, "%s/a.st", tmpdir);
    snprintf(b, sizeof b, "%s/b.st", tmpdir);
    write_two(a, b, 1e-3f);   // w[4] = 3 vs 3.003: relative 1e-3 / 1.001
    Diff d = compare(a, b, M_ELEM, 0);
    CHECK(fabs(d.max_rel - 1e-3 / 1.001) < 1e-6, "max_rel %g", d.max_rel);
    CHECK(fabs(d.max_abs - 3e-3) < 1e-6, "max_abs %g", d.max_abs);
    CHECK(fabs(d.max_trel - 1e-3) < 1e-6, "tensor_rel %g", d.max_trel);   // 3e-3 / max|w| = 3
    CHECK(d.over == 1 && d.n == 8, "%zu of %zu over", d.over, d.n);
}

int main(int argc, char **argv) {
    safe_progname = "test_stcompare";
    if (argc >= 3) {
        double tol = argc > 3 ? atof(argv[3]) : 1e-6;
        const char *m = argc > 4 ? argv[4] : "elem";
        int kind = strcmp(m, "tensor") == 0 ? M_TENSOR : strcmp(m, "abs") == 0 ? M_ABS : M_ELEM;
        Diff d = compare(argv[1], argv[2], kind, 1);
        printf("  all %zu: max_abs %.3e  max_rel %.3e (%zu over 1e-6)  tensor_rel %.3e; pass: %s <= %.1e\n", d.n,
               d.max_abs, d.max_rel, d.over, d.max_trel, kind == M_ELEM ? "max_rel" : kind == M_TENSOR ? "tensor_rel" : "max_abs", tol);
        if (d.shape_mismatch) return 2;
        return (kind == M_ELEM ? d.max_rel : kind == M_TENSOR ? d.max_trel : d.max_abs) > tol ? 1 : 0;
    }
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    RUN(identical_files_differ_by_zero);
    RUN(relative_difference_found_by_name);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}
