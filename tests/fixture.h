// fixture.h — read SAFEFIX1 reference files (tests/gen/*.py) and compare float arrays.
//
//   b"SAFEFIX1", then records until EOF: u32 name length, name bytes, u32 dtype
//   (0 = float32, 1 = int32), u64 count, count little-endian values.
#ifndef SAFE_TEST_FIXTURE_H
#define SAFE_TEST_FIXTURE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

typedef struct {
    char *blob;
    size_t size;
    char path[512];
} Fix;

// 0 when the file is missing or malformed (a message says how to regenerate it).
static int fix_open(Fix *fx, const char *path) {
    memset(fx, 0, sizeof *fx);
    snprintf(fx->path, sizeof fx->path, "%s", path);
    FILE *f = fopen(path, "rb");
    if (!f) { printf("  cannot open %s (regenerate: /usr/bin/python3 tests/gen/gen_hf_ref.py)\n", path); return 0; }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    fx->blob = malloc((size_t)n + 1);
    fx->size = (size_t)n;
    if (n < 8 || fread(fx->blob, 1, (size_t)n, f) != (size_t)n || memcmp(fx->blob, "SAFEFIX1", 8)) {
        fclose(f);
        printf("  %s: not a SAFEFIX1 file\n", path);
        return 0;
    }
    fclose(f);
    return 1;
}

static void fix_close(Fix *fx) { free(fx->blob); fx->blob = NULL; }

// malloc'd aligned copy of record `name` (floats or int32 by dtype), count in *n; NULL if absent.
static void *fix_get(const Fix *fx, const char *name, size_t *n) {
    size_t p = 8;
    while (p + 16 <= fx->size) {
        uint32_t len, dt;
        uint64_t cnt;
        memcpy(&len, fx->blob + p, 4);
        const char *nm = fx->blob + p + 4;
        memcpy(&dt, fx->blob + p + 4 + len, 4);
        memcpy(&cnt, fx->blob + p + 8 + len, 8);
        const char *data = fx->blob + p + 16 + len;
        if (strlen(name) == len && !memcmp(nm, name, len)) {
            void *d = malloc(cnt * 4 + 4);
            memcpy(d, data, cnt * 4);
            if (n) *n = cnt;
            return d;
        }
        p += 16 + len + cnt * 4;
    }
    printf("  %s: no record '%s'\n", fx->path, name);
    return NULL;
}

// Largest relative error |ours - ref| / max(|ref|, floor) over the n values where keep[i]
// (keep may be NULL); prints the first `show` kept values side by side and the worst one.
static double compare_f(const char *what, const float *ours, const float *ref, const int *keep, size_t n,
                        double floor_, int show) {
    double maxe = 0.0;
    size_t at = 0, shown = 0;
    for (size_t i = 0; i < n; i++) {
        if (keep && !keep[i]) continue;
        double e = rel_err(ours[i], ref[i], floor_);
        if (!(e <= maxe)) { maxe = e; at = i; }   // NaN counts as the worst
        if (shown < (size_t)show) {
            printf("    %-12s [%5zu] ours % .7f  ref % .7f\n", what, i, ours[i], ref[i]);
            shown++;
        }
    }
    printf("    %-12s max rel err %.3g at [%zu] (ours %.7g ref %.7g, floor %g)\n", what, maxe, at, ours[at], ref[at], floor_);
    return maxe;
}

#endif
