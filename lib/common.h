// common.h — what every file in libsafe and every tool shares:
// exit codes, dying with a message, checked allocation, temp-file cleanup.
#ifndef SAFE_COMMON_H
#define SAFE_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define SAFE_VERSION "0.1.0"

// --version, the same for every tool: "TOOL VERSION" on the first line, then what this build
// can do, one "name: values" line each (the same in every tool of a build):
//   safe-update 0.1.0
//   devices: cpu cuda              (cuda: built with the CUDA kernels)
//   data parallel: MPI NCCL        (the transports built in, or "none")
void safe_print_version(const char *tool);

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

// Before any work: stop (exit 1, naming the option) unless an output file can be created at
// path: "-" (stdout) always can; otherwise its directory must exist and be writable and path
// must not be a directory. So a long run does not fail at its very end on a typo.
void output_check(const char *path, const char *option);
// The same for the directory path will be created in (a checkpoint directory): it must exist
// and be writable.
void output_parent_check(const char *path, const char *option);

// Paths: dir/name (malloc'd); 1 when path is a directory; 1 when path exists at all.
char *path_join(const char *dir, const char *name);
int path_is_dir(const char *path);
int path_exists(const char *path);
// 1 when the absolute path p is dir or lies inside it (both as realpath gives them).
int path_within(const char *p, const char *dir);

// Monotonic wall clock in seconds.
double now_seconds(void);

// Where the public input data lives (the default VADER lexicon, the tests' models):
//   $SAFE_DATA when it is set, and then only there; else the first of
//     ../shared/data               from the current directory (a checkout's root, where the
//                                  tests and the demo run)
//     EXE/../../shared/data        beside the checkout whose bin/ holds the running program
//     EXE/../share/safe/data       an installed program: PREFIX/bin -> PREFIX/share/safe/data
//   where EXE is the directory of the running program (/proc/self/exe, symlinks resolved).
// safe_data_find: the malloc'ed path of `rel` (e.g. "vader/vader_lexicon.txt") in the first
// place that has it, or NULL; `tried` (may be NULL) then receives every path looked at, one
// per line, indented by two spaces, for the caller's message.
char *safe_data_find(const char *rel, char *tried, size_t tried_size);
// The data folder: $SAFE_DATA, else the first of the places above that exists, else
// "../shared/data".
const char *safe_data_dir(void);
#endif
