// common.c — dying, warnings, checked allocation and temp-file cleanup.
#include "common.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *safe_progname = "safe";

#define MAX_TMPFILES 64
static char *tmpfiles[MAX_TMPFILES];
static int cleanup_installed;

static void remove_tmpfiles(void) {
    for (int i = 0; i < MAX_TMPFILES; i++) {
        if (tmpfiles[i]) {
            unlink(tmpfiles[i]);
            free(tmpfiles[i]);
            tmpfiles[i] = NULL;
        }
    }
}

void tmpfile_register(const char *path) {
    if (!cleanup_installed) {
        atexit(remove_tmpfiles);
        cleanup_installed = 1;
    }
    for (int i = 0; i < MAX_TMPFILES; i++) {
        if (!tmpfiles[i]) {
            tmpfiles[i] = xstrdup(path);
            return;
        }
    }
    die(EXIT_RUNTIME, "too many temporary files open at once (limit %d)", MAX_TMPFILES);
}

void tmpfile_unregister(const char *path) {
    for (int i = 0; i < MAX_TMPFILES; i++) {
        if (tmpfiles[i] && strcmp(tmpfiles[i], path) == 0) {
            free(tmpfiles[i]);
            tmpfiles[i] = NULL;
            return;
        }
    }
}

static void (*die_hook)(int code);

void die_set_hook(void (*hook)(int code)) { die_hook = hook; }

// Under LeakSanitizer, memory still held when die() exits would turn the exit status into the
// sanitizer's; a program that stops on an error frees nothing on purpose, so leak checking is
// off once dying.
static volatile int dying;
int __lsan_is_turned_off(void);
__attribute__((weak)) int __lsan_is_turned_off(void) { return dying; }

void die(int code, const char *fmt, ...) {
    va_list ap;
    dying = 1;
    fflush(stdout);
    fprintf(stderr, "%s: ", safe_progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (die_hook) die_hook(code);
    exit(code);
}

void warn(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s: warning: ", safe_progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die(EXIT_RUNTIME, "out of memory allocating %zu bytes", n);
    return p;
}

void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) die(EXIT_RUNTIME, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) die(EXIT_RUNTIME, "out of memory reallocating to %zu bytes", n);
    return q;
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *safe_data_dir(void) {
    const char *d = getenv("SAFE_DATA");
    return d && *d ? d : "../shared/data";
}
