// zio.c — zstd-or-raw streaming input with magic detection, and atomic (temp + rename)
// streaming output with optional zstd compression. See zio.h.
#include "zio.h"
#include "common.h"   // die, xmalloc, tmpfile_register/unregister

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <zstd.h>

static const unsigned char ZSTD_MAGIC_BYTES[4] = {0x28, 0xB5, 0x2F, 0xFD};

// ---------------------------------------------------------------------------------------
// reading

struct ZIn {
    char *path;
    int fd;
    int zstd;                 // input starts with the zstd magic
    ZSTD_DCtx *dctx;
    unsigned char *inbuf;     // compressed bytes read from fd (or the peeked raw bytes)
    size_t incap;
    ZSTD_inBuffer in;         // in.src == inbuf
    int frame_open;           // inside a zstd frame that has not ended yet
    int eof;                  // fd reached its end
    int failed;               // sticky error
    unsigned char pb[64];     // peeked decompressed bytes, handed out first by zin_read
    size_t pb_len, pb_pos;
    char err[256];
    ZIn *live_prev, *live_next;
};

// Open streams are kept on lists: die() may exit from anywhere, and LeakSanitizer (test-asan)
// must then see them as reachable, or it reports them and changes the exit status.
static ZIn *live_in;

static long read_retry(int fd, void *buf, size_t n) {
    for (;;) {
        ssize_t r = read(fd, buf, n);
        if (r >= 0 || errno != EINTR) return (long)r;
    }
}

ZIn *zin_open(const char *path) {
    ZIn *z = xcalloc(1, sizeof(ZIn));
    z->live_next = live_in;
    if (live_in) live_in->live_prev = z;
    live_in = z;
    z->path = xstrdup(strcmp(path, "-") == 0 ? "stdin" : path);   // the name messages use
    if (strcmp(path, "-") == 0) {
        z->fd = 0;
    } else {
        z->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (z->fd < 0) die(EXIT_BADINPUT, "cannot open %s: %s", path, strerror(errno));
        posix_fadvise(z->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    }
    // peek 4 bytes (looping: a pipe may deliver them one at a time)
    unsigned char head[4];
    size_t got = 0;
    while (got < 4) {
        long r = read_retry(z->fd, head + got, 4 - got);
        if (r < 0) die(EXIT_BADINPUT, "cannot read %s: %s", path, strerror(errno));
        if (r == 0) { z->eof = 1; break; }
        got += (size_t)r;
    }
    // a partial magic at the end of the input is a truncated zstd stream, not raw msgpack
    z->zstd = got > 0 && memcmp(head, ZSTD_MAGIC_BYTES, got) == 0;
    z->incap = z->zstd ? ZSTD_DStreamInSize() * 2 : 4;
    z->inbuf = xmalloc(z->incap);
    memcpy(z->inbuf, head, got);
    z->in = (ZSTD_inBuffer){z->inbuf, got, 0};
    if (z->zstd) {
        z->dctx = ZSTD_createDCtx();
        if (!z->dctx) die(EXIT_RUNTIME, "out of memory creating a zstd decompressor for %s", path);
        z->frame_open = 1;
    }
    return z;
}

int zin_compressed(const ZIn *z) { return z->zstd; }
const char *zin_path(const ZIn *z) { return z->path; }
const char *zin_error(const ZIn *z) { return z->err; }

static long zin_fail(ZIn *z, const char *fmt, const char *arg) {
    snprintf(z->err, sizeof z->err, fmt, arg);
    z->failed = 1;
    return -1;
}

// Raw input: the peeked bytes first, then straight from fd into the caller's buffer.
static long zin_fill_raw(ZIn *z, unsigned char *buf, size_t cap) {
    if (z->in.pos < z->in.size) {
        size_t n = z->in.size - z->in.pos;
        if (n > cap) n = cap;
        memcpy(buf, z->inbuf + z->in.pos, n);
        z->in.pos += n;
        return (long)n;
    }
    if (z->eof) return 0;
    long r = read_retry(z->fd, buf, cap);
    if (r < 0) return zin_fail(z, "read error: %s", strerror(errno));
    if (r == 0) z->eof = 1;
    return r;
}

// Compressed input: decompress until some output exists; read more only when zstd has
// consumed all input and produced nothing (so buffered output is never held back).
static long zin_fill_zstd(ZIn *z, unsigned char *buf, size_t cap) {
    ZSTD_outBuffer out = {buf, cap, 0};
    for (;;) {
        size_t before = z->in.pos;
        size_t ret = ZSTD_decompressStream(z->dctx, &out, &z->in);
        if (ZSTD_isError(ret)) return zin_fail(z, "corrupt zstd data (%s)", ZSTD_getErrorName(ret));
        // ret == 0: a frame ended. A call that consumed nothing must not reopen it (with no
        // input zstd reports the size of a next frame's header, which may never come).
        if (ret == 0) z->frame_open = 0;
        else if (z->in.pos > before || out.pos > 0) z->frame_open = 1;
        if (out.pos > 0) return (long)out.pos;
        if (z->in.pos < z->in.size) continue;
        if (z->eof) return 0;
        long r = read_retry(z->fd, z->inbuf, z->incap);
        if (r < 0) return zin_fail(z, "read error: %s", strerror(errno));
        if (r == 0) {
            z->eof = 1;
            if (z->frame_open) return zin_fail(z, "%s", "truncated: the zstd frame is incomplete");
            return 0;
        }
        z->in = (ZSTD_inBuffer){z->inbuf, (size_t)r, 0};
    }
}

static long zin_fill(ZIn *z, void *buf, size_t cap) {
    if (z->failed) return -1;
    if (cap == 0) return 0;
    return z->zstd ? zin_fill_zstd(z, buf, cap) : zin_fill_raw(z, buf, cap);
}

long zin_read(ZIn *z, void *buf, size_t cap) {
    if (z->pb_pos < z->pb_len) {
        size_t n = z->pb_len - z->pb_pos;
        if (n > cap) n = cap;
        memcpy(buf, z->pb + z->pb_pos, n);
        z->pb_pos += n;
        return (long)n;
    }
    return zin_fill(z, buf, cap);
}

long zin_peek(ZIn *z, void *buf, size_t n) {
    if (n > sizeof z->pb) n = sizeof z->pb;
    if (z->pb_pos > 0) {   // compact what is left of an earlier peek
        memmove(z->pb, z->pb + z->pb_pos, z->pb_len - z->pb_pos);
        z->pb_len -= z->pb_pos;
        z->pb_pos = 0;
    }
    while (z->pb_len < n) {
        long r = zin_fill(z, z->pb + z->pb_len, n - z->pb_len);
        if (r < 0) return -1;
        if (r == 0) break;
        z->pb_len += (size_t)r;
    }
    size_t k = z->pb_len < n ? z->pb_len : n;
    memcpy(buf, z->pb, k);
    return (long)k;
}

void zin_close(ZIn *z) {
    if (!z) return;
    if (z->live_prev) z->live_prev->live_next = z->live_next;
    else live_in = z->live_next;
    if (z->live_next) z->live_next->live_prev = z->live_prev;
    if (z->fd > 0) close(z->fd);
    ZSTD_freeDCtx(z->dctx);
    free(z->inbuf);
    free(z->path);
    free(z);
}

// ---------------------------------------------------------------------------------------
// signal cleanup: temp files of open writers vanish on SIGINT/SIGTERM/SIGHUP as well
// (die()/exit() are covered by tmpfile_register). kill -9 cannot be caught: the temp file
// stays, but never under the final name.

#define ZIO_MAX_OPEN 64
static char *volatile open_tmp[ZIO_MAX_OPEN];

static char signal_dir[4096];   // zout_signal_dir's, "" when none

// Empty and remove a flat directory with async-signal-safe calls only (no opendir/malloc).
static void remove_flat_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    uint64_t words[512];   // getdents64 records are 8-byte aligned within the buffer
    char *buf = (char *)words;
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buf, sizeof words);
        if (n <= 0) break;
        for (long off = 0; off < n;) {
            struct dirent64_raw { uint64_t ino; int64_t off; unsigned short reclen; unsigned char type; char name[]; };
            const struct dirent64_raw *d = (const void *)(buf + off);
            if (strcmp(d->name, ".") != 0 && strcmp(d->name, "..") != 0) unlinkat(fd, d->name, 0);
            off += d->reclen;
        }
    }
    close(fd);
    rmdir(dir);
}

static void on_fatal_signal(int sig) {
    for (int i = 0; i < ZIO_MAX_OPEN; i++)
        if (open_tmp[i]) unlink(open_tmp[i]);
    if (signal_dir[0]) remove_flat_dir(signal_dir);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void signals_install(void) {
    static int installed;
    if (installed) return;
    installed = 1;
    const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction old, sa;
        if (sigaction(sigs[i], NULL, &old) != 0 || old.sa_handler != SIG_DFL) continue;  // tool has its own
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_fatal_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(sigs[i], &sa, NULL);
    }
}

void zout_signal_dir(const char *dir) {
    signals_install();
    signal_dir[0] = '\0';   // never half a path in the handler's view
    if (!dir) return;
    if (strlen(dir) >= sizeof signal_dir) return;   // too long to keep: left to the atexit cleanup
    memcpy(signal_dir + 1, dir + 1, strlen(dir));   // everything but the first byte, then it
    signal_dir[0] = dir[0];
}

static void open_tmp_set(char *tmp, int on) {
    for (int i = 0; i < ZIO_MAX_OPEN; i++) {
        if (on && !open_tmp[i]) { open_tmp[i] = tmp; return; }
        if (!on && open_tmp[i] == tmp) { open_tmp[i] = NULL; return; }
    }
}

// ---------------------------------------------------------------------------------------
// writing

#define ZOUT_STAGE (256 * 1024)

struct ZOut {
    char *path;
    char *tmp;                // NULL when writing to stdout or straight to a device or pipe
    int fd, own_fd;           // own_fd: fd opened here without a temporary name (closed at the end)
    int level;
    ZSTD_CCtx *cctx;
    unsigned char *stage;     // uncompressed bytes waiting to be compressed / written
    size_t len, cap;
    unsigned char *obuf;      // compressed output
    size_t ocap;
    size_t bytes_in, bytes_out;
    ZOut *live_prev, *live_next;
};

static ZOut *live_out;   // (see live_in)

static void write_all(ZOut *z, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t r = write(z->fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die(EXIT_RUNTIME, "cannot write %s: %s", z->path, strerror(errno));
        p += r;
        n -= (size_t)r;
        z->bytes_out += (size_t)r;
    }
}

ZOut *zout_open(const char *path, int level) {
    if (level < 0 || level > ZSTD_maxCLevel())
        die(EXIT_USAGE, "zstd level %d for %s is out of range (0 = raw, 1..%d)", level, path, ZSTD_maxCLevel());
    ZOut *z = xcalloc(1, sizeof(ZOut));
    z->live_next = live_out;
    if (live_out) live_out->live_prev = z;
    live_out = z;
    z->path = xstrdup(path);
    z->level = level;
    struct stat st;
    if (strcmp(path, "-") == 0) {
        z->fd = 1;
    } else if (stat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
        // a device, FIFO or socket (/dev/null, /dev/stdout, a process substitution): written
        // as it goes, like stdout; a temporary name and a rename would replace it by a file
        z->fd = open(path, O_WRONLY | O_CLOEXEC);
        if (z->fd < 0) die(EXIT_RUNTIME, "cannot open %s for writing: %s", path, strerror(errno));
        z->own_fd = 1;
    } else {
        size_t n = strlen(path) + 32;
        z->tmp = xmalloc(n);
        snprintf(z->tmp, n, "%s.tmp.%ld", path, (long)getpid());
        signals_install();
        tmpfile_register(z->tmp);
        open_tmp_set(z->tmp, 1);
        z->fd = open(z->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (z->fd < 0)
            die(EXIT_RUNTIME, "cannot create %s: %s (does its directory exist and is it writable?)",
                z->tmp, strerror(errno));
    }
    z->cap = ZOUT_STAGE;
    z->stage = xmalloc(z->cap);
    if (level > 0) {
        z->cctx = ZSTD_createCCtx();
        if (!z->cctx) die(EXIT_RUNTIME, "out of memory creating a zstd compressor for %s", path);
        ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_compressionLevel, level);
        ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_checksumFlag, 1);   // readers detect flipped bytes
        z->ocap = ZSTD_CStreamOutSize();
        z->obuf = xmalloc(z->ocap);
    }
    return z;
}

// Compress (or copy) n bytes to the file. mode: ZSTD_e_continue, _flush or _end.
static void zout_push(ZOut *z, const void *src, size_t n, ZSTD_EndDirective mode) {
    if (!z->cctx) {
        write_all(z, src, n);
        return;
    }
    ZSTD_inBuffer in = {src, n, 0};
    for (;;) {
        ZSTD_outBuffer out = {z->obuf, z->ocap, 0};
        size_t rem = ZSTD_compressStream2(z->cctx, &out, &in, mode);
        if (ZSTD_isError(rem)) die(EXIT_RUNTIME, "zstd compression failed for %s: %s", z->path, ZSTD_getErrorName(rem));
        write_all(z, z->obuf, out.pos);
        int done = mode == ZSTD_e_continue ? in.pos == in.size : rem == 0;
        if (done) return;
    }
}

void zout_write(ZOut *z, const void *data, size_t n) {
    z->bytes_in += n;
    if (n <= z->cap - z->len) {   // fast path: stage it
        memcpy(z->stage + z->len, data, n);
        z->len += n;
        return;
    }
    zout_push(z, z->stage, z->len, ZSTD_e_continue);
    z->len = 0;
    if (n >= z->cap) {
        zout_push(z, data, n, ZSTD_e_continue);   // large: no staging copy
    } else {
        memcpy(z->stage, data, n);
        z->len = n;
    }
}

int zout_pack_cb(void *zout, const char *buf, size_t len) {
    zout_write(zout, buf, len);
    return 0;
}

void zout_flush(ZOut *z) {
    zout_push(z, z->stage, z->len, ZSTD_e_flush);
    z->len = 0;
}

static void zout_free(ZOut *z) {
    if (z->live_prev) z->live_prev->live_next = z->live_next;
    else live_out = z->live_next;
    if (z->live_next) z->live_next->live_prev = z->live_prev;
    ZSTD_freeCCtx(z->cctx);
    free(z->stage);
    free(z->obuf);
    free(z->tmp);
    free(z->path);
    free(z);
}

void zout_commit(ZOut *z) {
    zout_push(z, z->stage, z->len, ZSTD_e_end);
    z->len = 0;
    if (z->tmp) {
        if (close(z->fd) != 0) die(EXIT_RUNTIME, "cannot write %s: %s", z->tmp, strerror(errno));
        if (rename(z->tmp, z->path) != 0)
            die(EXIT_RUNTIME, "cannot rename %s to %s: %s", z->tmp, z->path, strerror(errno));
        open_tmp_set(z->tmp, 0);
        tmpfile_unregister(z->tmp);
    } else if (z->own_fd && close(z->fd) != 0) {
        die(EXIT_RUNTIME, "cannot write %s: %s", z->path, strerror(errno));
    }
    zout_free(z);
}

void zout_abort(ZOut *z) {
    if (!z) return;
    if (z->tmp) {
        close(z->fd);
        unlink(z->tmp);
        open_tmp_set(z->tmp, 0);
        tmpfile_unregister(z->tmp);
    } else if (z->own_fd) {
        close(z->fd);
    }
    zout_free(z);
}

const char *zout_path(const ZOut *z) { return z->path; }
size_t zout_bytes_in(const ZOut *z) { return z->bytes_in; }
size_t zout_bytes_out(const ZOut *z) { return z->bytes_out; }
