// zio.h — byte streams that are zstd-compressed or not: the layer under shards and safe-cat.
//
// Reading detects the zstd magic (28 B5 2F FD) by peeking the first 4 bytes, on files and
// pipes alike (the peeked bytes are kept, nothing is seeked), and decompresses in a stream:
// memory stays bounded whatever the file size. Concatenated zstd frames are read as one stream.
//
// Writing goes to "<path>.tmp.<pid>" (registered with tmpfile_register, and removed on SIGINT,
// SIGTERM and SIGHUP too) and is renamed to <path> by zout_commit, so a killed writer never
// leaves a file under the final name. "-" means stdin / stdout.
#ifndef SAFE_ZIO_H
#define SAFE_ZIO_H

#include <stddef.h>

#define ZIO_DEFAULT_LEVEL 3

typedef struct ZIn ZIn;
typedef struct ZOut ZOut;

// ---- reading ----
ZIn *zin_open(const char *path);           // dies (2) when the file cannot be opened
int zin_compressed(const ZIn *z);          // 1 when the input starts with the zstd magic
const char *zin_path(const ZIn *z);
// Up to `cap` decompressed bytes into buf. Returns the count (> 0), 0 at a clean end, or -1
// on an error (truncated zstd frame, corrupt data, checksum mismatch, read error) described
// by zin_error(). Never blocks while decompressed bytes are already available.
long zin_read(ZIn *z, void *buf, size_t cap);
const char *zin_error(const ZIn *z);
// Look at the first decompressed bytes without consuming them: fills buf with up to n bytes
// (fewer only at the end of the stream) and returns the count, or -1 on error. n <= 64.
long zin_peek(ZIn *z, void *buf, size_t n);
void zin_close(ZIn *z);

// ---- writing ----
// level: 0 raw bytes, 1..22 zstd (checksummed frames). Dies (3) when the file cannot be created.
ZOut *zout_open(const char *path, int level);
void zout_write(ZOut *z, const void *data, size_t n);   // dies (3) on a write error
void zout_flush(ZOut *z);    // make everything written so far readable downstream (pipes)
void zout_commit(ZOut *z);   // end the frame, close, rename the temp file; frees z
void zout_abort(ZOut *z);    // close and remove the temp file; frees z
const char *zout_path(const ZOut *z);
// A temporary output directory being filled (a checkpoint before its rename; flat: files
// only): emptied and removed on SIGINT/SIGTERM/SIGHUP, as the temp files of open writers
// are. One at a time; NULL when it has been renamed into place. The caller removes it on
// die()/exit() itself (atexit).
void zout_signal_dir(const char *dir);
size_t zout_bytes_in(const ZOut *z);    // bytes given to zout_write so far
size_t zout_bytes_out(const ZOut *z);   // bytes written to the file so far

// msgpack_packer_write-compatible callback: msgpack_packer_init(&pk, zout, zout_pack_cb).
int zout_pack_cb(void *zout, const char *buf, size_t len);

#endif
