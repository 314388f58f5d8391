// common.h — what every file in libsafe and every tool shares:
// exit codes, dying with a message, checked allocation, temp-file cleanup.
#ifndef SAFE_COMMON_H
#define SAFE_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define SAFE_VERSION "0.1.0"

// Exit status contract (DESIGN.md, "Conventions for every tool").
enum {
    EXIT_OK = 0,
    EXIT_USAGE = 1,     // bad options or impossible settings
    EXIT_BADINPUT = 2,  // bad input: message names file, record, field
    EXIT_RUNTIME = 3,   // out of memory, CUDA error, NaN detected
};

// Name printed before every diagnostic ("safe-cat: ..."); tools set it first thing in main.
extern const char *safe_progname;

// Print "progname: message" to stderr and exit with `code`. Registered temporary
// files are removed on the way out, so no partial output is left behind.
void die(int code, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
// One hook that die() calls with the exit status just before exit(): the communication
// layer (comm.c) records it, so its exit handler can stop the other ranks with that status.
void die_set_hook(void (*hook)(int code));
// Print "progname: warning: message" to stderr and go on.
void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// Checked allocation: dies with exit 3 naming the size on failure.
void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

// Temporary files that must vanish if the process dies through die()/exit():
// writers register "out.safe.tmp.1234" before writing and unregister after rename.
void tmpfile_register(const char *path);
void tmpfile_unregister(const char *path);

// Monotonic wall clock in seconds.
double now_seconds(void);

// Where the public input data lives: $SAFE_DATA, else "../shared/data" (relative to the
// repository root, where tests and the demo run).
const char *safe_data_dir(void);
#endif
