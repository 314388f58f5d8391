// common.c — dying, warnings, checked allocation, temp-file cleanup, --version and the data folder.
#include "common.h"

#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

// "prog: [kind]message\n" in one write, so that the lines of several ranks (or processes of
// a pipeline) sharing a terminal do not interleave mid-line.
static void say(const char *kind, const char *fmt, va_list ap) {
    char buf[4096];
    int n = snprintf(buf, sizeof buf, "%s: %s", safe_progname, kind);
    if (n < 0) n = 0;
    if ((size_t)n < sizeof buf) {
        int m = vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
        if (m > 0) n += m;
    }
    if ((size_t)n > sizeof buf - 2) n = (int)sizeof buf - 2;   // a truncated message still ends its line
    buf[n++] = '\n';
    fwrite(buf, 1, (size_t)n, stderr);
    fflush(stderr);
}

void die(int code, const char *fmt, ...) {
    va_list ap;
    dying = 1;
    fflush(stdout);
    va_start(ap, fmt);
    say("", fmt, ap);
    va_end(ap);
    if (die_hook) die_hook(code);
    exit(code);
}

void warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    say("warning: ", fmt, ap);
    va_end(ap);
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

void output_parent_check(const char *path, const char *option) {
    char *dir = xstrdup(path);
    for (size_t n = strlen(dir); n > 1 && dir[n - 1] == '/'; n--) dir[n - 1] = '\0';   // "ck/" is "ck"
    char *slash = strrchr(dir, '/');
    const char *d = slash ? (slash == dir ? "/" : (*slash = '\0', dir)) : ".";
    struct stat st;
    if (stat(d, &st) != 0)
        die(EXIT_USAGE, "%s %s: the directory %s does not exist (create it first)", option, path, d);
    if (!S_ISDIR(st.st_mode))
        die(EXIT_USAGE, "%s %s: %s is a file, not a directory (give a path inside a directory)", option, path, d);
    if (access(d, W_OK | X_OK) != 0)
        die(EXIT_USAGE, "%s %s: the directory %s is not writable", option, path, d);
    free(dir);
}

void output_check(const char *path, const char *option) {
    if (!path || !strcmp(path, "-")) return;
    if (!*path) die(EXIT_USAGE, "%s: an empty file name (give a path, or - for standard output)", option);
    if (path[strlen(path) - 1] == '/') die(EXIT_USAGE, "%s %s: that names a directory; give a file name", option, path);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        die(EXIT_USAGE, "%s %s: that is a directory; give a file name", option, path);
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) return;   // a device or pipe: written as it is
    output_parent_check(path, option);
}

// SAFE_CUDA comes with every file of a CUDA build; SAFE_MPI and SAFE_NCCL, which comm.c and
// comm_nccl.c get, are passed to this file too (Makefile), so every tool reports the same
// build without linking the communication layer.
void safe_print_version(const char *tool) {
#ifdef SAFE_CUDA
    const char *devices = "cpu cuda";
#else
    const char *devices = "cpu";
#endif
#if defined(SAFE_MPI) && defined(SAFE_NCCL)
    const char *dp = "MPI NCCL";
#elif defined(SAFE_MPI)
    const char *dp = "MPI";
#elif defined(SAFE_NCCL)
    const char *dp = "NCCL";
#else
    const char *dp = "none";
#endif
    printf("%s %s\ndevices: %s\ndata parallel: %s\n", tool, SAFE_VERSION, devices, dp);
}

// ---- the data folder (see common.h) ----

enum { DATA_PLACES = 3 };

// The candidate data folders in order, with a note on where each comes from; returns how
// many (dir[i]: PATH_MAX bytes each).
static int data_places(char dir[DATA_PLACES][PATH_MAX], const char *note[DATA_PLACES]) {
    const char *env = getenv("SAFE_DATA");
    if (env && *env) {
        snprintf(dir[0], PATH_MAX, "%s", env);
        note[0] = "$SAFE_DATA";
        return 1;
    }
    int n = 0;
    snprintf(dir[n], PATH_MAX, "../shared/data");
    note[n++] = "a checkout's data";
    // the program's own directory, then its parent: PREFIX (a checkout or an install prefix)
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0 || (size_t)len >= sizeof exe - 1) return n;   // not Linux, or too long: skip
    exe[len] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash) return n;
    *slash = '\0';                     // EXE
    slash = strrchr(exe, '/');
    if (!slash) return n;
    *slash = '\0';                     // PREFIX = EXE/.. ("" for a program in /bin)
    char *up = strrchr(exe, '/');     // PREFIX/.. ends here
    if (up && (size_t)snprintf(dir[n], PATH_MAX, "%.*s/shared/data", (int)(up - exe), exe) < PATH_MAX)
        note[n++] = "beside the checkout of this program";
    if ((size_t)snprintf(dir[n], PATH_MAX, "%s/share/safe/data", exe) < PATH_MAX)
        note[n++] = "this program's install prefix";
    return n;
}

char *safe_data_find(const char *rel, char *tried, size_t tried_size) {
    char dir[DATA_PLACES][PATH_MAX], cwd[PATH_MAX];
    const char *note[DATA_PLACES];
    int n = data_places(dir, note);
    size_t used = 0;
    if (tried && tried_size) tried[0] = '\0';
    for (int i = 0; i < n; i++) {
        size_t len = strlen(dir[i]) + 1 + strlen(rel) + 1;
        char *path = xmalloc(len);
        snprintf(path, len, "%s/%s", dir[i], rel);
        if (access(path, R_OK) == 0) return path;
        if (tried && used < tried_size) {
            int rel_cwd = dir[i][0] != '/' && getcwd(cwd, sizeof cwd);
            int w = snprintf(tried + used, tried_size - used, "  %s (%s%s%s)\n", path, note[i],
                             rel_cwd ? ", relative to " : "", rel_cwd ? cwd : "");
            if (w > 0) used += (size_t)w < tried_size - used ? (size_t)w : tried_size - used - 1;
        }
        free(path);
    }
    return NULL;
}

const char *safe_data_dir(void) {
    static char dir[DATA_PLACES][PATH_MAX];   // the folder returned lives here
    const char *note[DATA_PLACES];
    int n = data_places(dir, note);
    for (int i = 0; i < n; i++) {
        struct stat st;
        if (n == 1 || (stat(dir[i], &st) == 0 && S_ISDIR(st.st_mode))) return dir[i];
    }
    return "../shared/data";
}

char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

int path_is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

int path_within(const char *p, const char *dir) {
    size_t n = strlen(dir);
    if (n == 1 && dir[0] == '/') return 1;
    return !strncmp(p, dir, n) && (p[n] == '\0' || p[n] == '/');
}

int path_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}
