// test.h — a tiny test harness: one PASS/FAIL line per test, counted by tests/run.sh.
//
//   TEST(round_trip) { CHECK(x == 1, "x was %d", x); }
//   int main(void) { RUN(round_trip); return test_summary(); }
#ifndef SAFE_TEST_H
#define SAFE_TEST_H

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

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

// Run fn(arg) in a forked child with its stderr captured into err (NUL-terminated, at most
// n-1 bytes). Returns the child's exit status, or 128 + signal. The child runs OpenMP on one
// thread (libgomp's pool does not survive fork) and is killed after 60 s: a hang fails.
static inline int test_run_child(void (*fn)(const void *), const void *arg, char *err, size_t n) {
    int p[2];
    if (pipe(p) != 0) return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        dup2(p[1], 2);
        omp_set_num_threads(1);
        alarm(60);
        fn(arg);
        _exit(0);
    }
    close(p[1]);
    size_t used = 0;
    ssize_t got;
    while (used + 1 < n && (got = read(p[0], err + used, n - 1 - used)) > 0) used += (size_t)got;
    err[used] = '\0';
    close(p[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static inline int test_summary(void) { return tests_failed ? 1 : 0; }

#endif
