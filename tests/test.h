// test.h — a tiny test harness: one PASS/FAIL line per test, counted by tests/run.sh.
//
//   TEST(round_trip) { CHECK(x == 1, "x was %d", x); }
//   int main(void) { RUN(round_trip); return test_summary(); }
#ifndef SAFE_TEST_H
#define SAFE_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int test_failed_now, tests_passed, tests_failed;

#define TEST(name) static void name(void)

// Record a failure with a message but keep running the test (so all differences print).
#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        if (!(cond)) {                                                            \
            test_failed_now = 1;                                                  \
            fprintf(stdout, "  %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stdout, __VA_ARGS__);                                         \
            fputc('\n', stdout);                                                  \
        }                                                                         \
    } while (0)

// Relative difference helper for float parity: |a-b| / max(|b|, floor).
static inline double rel_err(double a, double b, double floor_) {
    double d = fabs(a - b), s = fabs(b) > floor_ ? fabs(b) : floor_;
    return d / s;
}

#define RUN(name)                                                                 \
    do {                                                                          \
        test_failed_now = 0;                                                      \
        name();                                                                   \
        if (test_failed_now) { tests_failed++; printf("FAIL %s\n", #name); }      \
        else { tests_passed++; printf("PASS %s\n", #name); }                      \
        fflush(stdout);                                                           \
    } while (0)

static inline int test_summary(void) { return tests_failed ? 1 : 0; }

#endif
