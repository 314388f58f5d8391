// test_shard.c — shard writer/reader: round trips of every field type (raw and zstd),
// pass-through of unknown fields, buffers outgrown, pipes, and every reader error: since
// die() exits, readers of bad input run in a fork()ed child whose exit status and stderr
// are checked.
#include "test.h"

#include "common.h"     // tmpfile cleanup, exit codes
#include "progress.h"   // progress_start/update/end
#include "shard.h"      // the API under test
#include "zio.h"        // ZIn/ZOut directly (concatenated frames)

#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

// Corrupt input may claim absurd sizes; under ASan let malloc fail (msgpack reports it)
// instead of aborting.
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1:quarantine_size_mb=16"; }
// Children that die() keep their allocations (they exit on an error path); LeakSanitizer
// would report them, change the exit status and cost ~50 ms per child. Check the parent only.
static int in_child;
int __lsan_is_turned_off(void);
int __lsan_is_turned_off(void) { return in_child; }

static char dir[64];

static const char *tpath(const char *name) {
    static char buf[8][256];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

// ---- small helpers -------------------------------------------------------------------

typedef struct { uint64_t s; } Rng;
static uint64_t rnd(Rng *g) {
    g->s ^= g->s << 13;
    g->s ^= g->s >> 7;
    g->s ^= g->s << 17;
    return g->s;
}

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) { *n = 0; return NULL; }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = xmalloc((size_t)len + 1);
    *n = fread(p, 1, (size_t)len, f);
    fclose(f);
    return p;
}

// (unlink first: truncating a non-empty file makes ext4 flush it, milliseconds per call)
static void spit(const char *path, const void *p, size_t n) {
    unlink(path);
    FILE *f = fopen(path, "wb");
    fwrite(p, 1, n, f);
    fclose(f);
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

// Run fn(arg) in a child with stderr captured into err. Returns the exit status, or
// 128 + signal. The child gets 20 s (a hang is a failure, not a stuck test).
typedef void (*ChildFn)(void *arg);
static int run_child(ChildFn fn, void *arg, char *err, size_t cap) {
    char epath[256];
    snprintf(epath, sizeof epath, "%s/child.err", dir);
    unlink(epath);
    int efd = open(epath, O_RDWR | O_CREAT | O_TRUNC, 0644);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        in_child = 1;
        dup2(efd, 2);
        alarm(20);
        fn(arg);
        exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    ssize_t n = pread(efd, err, cap - 1, 0);
    err[n > 0 ? n : 0] = 0;
    close(efd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// ---- random records with every field type ---------------------------------------------

static void pack_cstr(msgpack_packer *pk, const char *s) { msgpack_pack_str_with_body(pk, s, strlen(s)); }

static uint64_t gen_max = 64;   // longest random string/array; the small shards use less
static int compare_quiet;         // children comparing corrupt data print nothing

// Writes one random record into f (through the typed fields_* calls) and the same record,
// as expected after a round trip, into pk.
static void gen_record(Rng *g, long i, Fields *f, msgpack_packer *pk) {
    char s[64];
    int32_t toks[64];
    float fl[64];
    msgpack_pack_map(pk, 10);

    size_t sl = rnd(g) % (gen_max < 40 ? gen_max : 40);   // any bytes: msgpack str is binary-safe
    for (size_t k = 0; k < sl; k++) s[k] = (char)(rnd(g) & 0xFF);
    fields_strn(f, "id", s, sl);
    pack_cstr(pk, "id");
    msgpack_pack_str_with_body(pk, s, sl);

    int64_t v = (int64_t)rnd(g);
    if (i % 3 == 0) v %= 200;   // small ones too (fixints)
    fields_i64(f, "n", v);
    pack_cstr(pk, "n");
    msgpack_pack_int64(pk, v);

    double d = ((double)(rnd(g) % 2000001) - 1e6) * 1e-3 * (double)(rnd(g) % 7 + 1);
    fields_f64(f, "x", d);
    pack_cstr(pk, "x");
    msgpack_pack_double(pk, d);

    int b = (int)(rnd(g) & 1);
    fields_bool(f, "ok", b);
    pack_cstr(pk, "ok");
    if (b) msgpack_pack_true(pk); else msgpack_pack_false(pk);

    fields_nil(f, "none");
    pack_cstr(pk, "none");
    msgpack_pack_nil(pk);

    size_t nt = rnd(g) % gen_max;
    for (size_t k = 0; k < nt; k++) toks[k] = (int32_t)rnd(g);
    fields_i32s(f, "prompt_tokens", toks, nt);
    pack_cstr(pk, "prompt_tokens");
    msgpack_pack_bin_with_body(pk, toks, nt * 4);

    size_t nl = rnd(g) % gen_max;
    for (size_t k = 0; k < nl; k++) { uint32_t u = (uint32_t)rnd(g); memcpy(&fl[k], &u, 4); }   // any bits, NaNs too
    fields_f32s(f, "logp", fl, nl);
    pack_cstr(pk, "logp");
    msgpack_pack_bin_with_body(pk, fl, nl * 4);

    // nested map/array pass-through via fields_obj
    msgpack_sbuffer nb;
    msgpack_sbuffer_init(&nb);
    msgpack_packer npk;
    msgpack_packer_init(&npk, &nb, msgpack_sbuffer_write);
    msgpack_pack_map(&npk, 3);
    pack_cstr(&npk, "a");
    msgpack_pack_array(&npk, 5);
    msgpack_pack_int(&npk, -7);
    pack_cstr(&npk, "s");
    msgpack_pack_float(&npk, 2.5f);
    msgpack_pack_nil(&npk);
    msgpack_pack_array(&npk, 1);
    msgpack_pack_double(&npk, d);
    pack_cstr(&npk, "m");
    msgpack_pack_map(&npk, 1);
    pack_cstr(&npk, "bin");
    msgpack_pack_bin_with_body(&npk, s, sl < 5 ? sl : 5);
    pack_cstr(&npk, "ext");
    msgpack_pack_ext_with_body(&npk, "xyz", 3, 7);
    msgpack_zone z;
    msgpack_zone_init(&z, 2048);
    msgpack_object o;
    size_t off = 0;
    msgpack_unpack(nb.data, nb.size, &off, &z, &o);
    fields_obj(f, "nested", &o);
    pack_cstr(pk, "nested");
    msgpack_pack_object(pk, o);
    msgpack_zone_destroy(&z);
    msgpack_sbuffer_destroy(&nb);

    // an unknown field whose name varies, and a field the writer must override
    char key[16];
    snprintf(key, sizeof key, "u%ld", i % 7);
    fields_i64(f, key, i);
    pack_cstr(pk, key);
    msgpack_pack_int64(pk, i);
    fields_str(f, "dup", "first");
    fields_str(f, "dup", "second");   // later wins, in the position of the later one
    pack_cstr(pk, "dup");
    pack_cstr(pk, "second");
}

static void write_random(const char *path, int level, long n, uint64_t seed) {
    ShardWriter *w = shard_create(path, level);
    Fields *h = fields_new();
    fields_str(h, "kind", "rollout");
    fields_str(h, "model", "test-model");
    fields_i64(h, "iteration", 3);
    fields_str(h, "custom_header_key", "kept");
    shard_write_header(w, NULL, h);
    Fields *f = fields_new();
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    Rng g = {seed};
    for (long i = 0; i < n; i++) {
        fields_clear(f);
        sb.size = 0;
        gen_record(&g, i, f, &pk);
        shard_write(w, NULL, f);
    }
    shard_commit(w);
    fields_free(f);
    fields_free(h);
    msgpack_sbuffer_destroy(&sb);
}

// Read back and compare with the regenerated records; returns the number of mismatches.
static long check_random(const char *path, long n, uint64_t seed, int use_accessors) {
    ShardReader *r = shard_open(path);
    Fields *f = fields_new();
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    Rng g = {seed};
    long bad = 0, i = 0;
    Record rec;
    while (shard_next(r, &rec)) {
        fields_clear(f);
        sb.size = 0;
        gen_record(&g, i, f, &pk);
        msgpack_unpacked want;
        msgpack_unpacked_init(&want);
        msgpack_unpack_next(&want, sb.data, sb.size, NULL);
        if (!msgpack_object_equal(want.data, *rec.map)) {
            if (bad < 3 && !compare_quiet) {
                printf("  record %ld differs:\n  want ", i);
                msgpack_object_print(stdout, want.data);
                printf("\n  got  ");
                msgpack_object_print(stdout, *rec.map);
                printf("\n");
            }
            bad++;
        }
        if (use_accessors) {   // the typed accessors agree with the raw bins (and die on bad data)
            size_t nt, nl, sl;
            int32_t *t = rec_i32s(&rec, "prompt_tokens", &nt, -1);
            float *l = rec_f32s(&rec, "logp", &nl, -1);
            const msgpack_object *ot = rec_find(&rec, "prompt_tokens"), *ol = rec_find(&rec, "logp");
            if (ot->type != MSGPACK_OBJECT_BIN || nt * 4 != ot->via.bin.size || memcmp(t, ot->via.bin.ptr, nt * 4)) bad++;
            if (ol->type != MSGPACK_OBJECT_BIN || nl * 4 != ol->via.bin.size || memcmp(l, ol->via.bin.ptr, nl * 4)) bad++;
            if (i % 7 == 0 && rec_i64(&rec, "u0") != i) bad++;
            rec_str(&rec, "id", &sl);
            (void)rec_f64(&rec, "x");
            (void)rec_bool(&rec, "ok");
            const msgpack_object *none = rec_find(&rec, "none");
            if (rec_has(&rec, "missing") || !none || none->type != MSGPACK_OBJECT_NIL) bad++;
            free(t);
            free(l);
        }
        msgpack_unpacked_destroy(&want);
        i++;
    }
    if (i != n) { printf("  read %ld records, wrote %ld\n", i, n); bad++; }
    shard_close(r);
    fields_free(f);
    msgpack_sbuffer_destroy(&sb);
    return bad;
}

TEST(round_trip_raw) {
    const char *p = tpath("rt_raw.safe");
    write_random(p, 0, 10000, 42);
    CHECK(check_random(p, 10000, 42, 1) == 0, "10000 raw records round trip");
}

TEST(round_trip_zstd) {
    const char *p = tpath("rt_zstd.safe");
    write_random(p, 3, 10000, 43);
    size_t n;
    char *b = slurp(p, &n);
    CHECK(n >= 4 && (unsigned char)b[0] == 0x28 && (unsigned char)b[1] == 0xB5, "zstd magic at the start");
    free(b);
    CHECK(check_random(p, 10000, 43, 1) == 0, "10000 zstd records round trip");
}

TEST(header_fields_and_dtypes) {
    const char *p = tpath("hdr.safe");
    ShardWriter *w = shard_create(p, 3);
    shard_declare(w, "my_ids", "i32");
    Fields *h = fields_new();
    fields_str(h, "kind", "scored");
    fields_str(h, "model", "m");
    fields_str(h, "tokenizer", "t");
    fields_i64(h, "iteration", 7);
    fields_str(h, "future_key", "passes");
    shard_write_header(w, NULL, h);
    Fields *f = fields_new();
    int32_t ids[3] = {1, 2, 3};
    fields_i32s(f, "my_ids", ids, 3);
    shard_write(w, NULL, f);
    shard_commit(w);

    ShardReader *r = shard_open(p);
    const Record *hr = shard_header_record(r);
    size_t n;
    const char *kind = rec_str(hr, "kind", &n);
    CHECK(n == 6 && memcmp(kind, "scored", 6) == 0, "kind");
    char *tool = rec_strdup(hr, "tool");
    CHECK(strcmp(tool, safe_progname) == 0, "tool filled in: %s", tool);
    free(tool);
    CHECK(rec_i64(hr, "iteration") == 7, "iteration");
    CHECK(rec_i64(hr, "version") == SHARD_VERSION, "version");
    CHECK(rec_has(hr, "future_key") && rec_has(hr, "tool_version"), "unknown header keys pass through");
    CHECK(shard_dtype(r, "my_ids") && strcmp(shard_dtype(r, "my_ids"), "i32") == 0, "declared dtype in header");
    CHECK(shard_dtype(r, "logp") && strcmp(shard_dtype(r, "logp"), "f32") == 0, "built-in dtype");
    CHECK(shard_dtype(r, "nope") == NULL, "unknown field has no dtype");
    const msgpack_object *dt = rec_find(hr, "dtypes");
    CHECK(dt && dt->type == MSGPACK_OBJECT_MAP && dt->via.map.size == shard_schema_len + 1,
          "dtypes holds the schema plus the declared field");

    // a later stage: base header passes through, its own fields override, dtypes merge
    const char *p2 = tpath("hdr2.safe");
    ShardWriter *w2 = shard_create(p2, 0);
    Fields *h2 = fields_new();
    fields_str(h2, "kind", "adv");
    shard_write_header(w2, shard_header(r), h2);
    Record rec;
    while (shard_next(r, &rec)) shard_write(w2, &rec, NULL);   // my_ids passes through
    shard_commit(w2);
    shard_close(r);
    ShardReader *r2 = shard_open(p2);
    hr = shard_header_record(r2);
    kind = rec_str(hr, "kind", &n);
    CHECK(n == 3 && memcmp(kind, "adv", 3) == 0, "kind overridden");
    CHECK(rec_i64(hr, "iteration") == 7 && rec_has(hr, "future_key") && rec_has(hr, "tokenizer"), "base header kept");
    CHECK(shard_dtype(r2, "my_ids") && strcmp(shard_dtype(r2, "my_ids"), "i32") == 0, "base dtypes kept");
    CHECK(shard_next(r2, &rec) && rec_i32s_into(&rec, "my_ids", ids, 3) == 3 && ids[2] == 3, "record passed through");
    shard_close(r2);
    fields_free(h);
    fields_free(h2);
    fields_free(f);
}

// Read a shard, add a field, drop one, override one: everything else passes untouched.
TEST(pass_through_unknown_fields) {
    const char *a = tpath("pt_a.safe"), *b = tpath("pt_b.safe");
    write_random(a, 3, 500, 7);
    ShardReader *r = shard_open(a);
    ShardWriter *w = shard_create(b, 3);
    Fields *h = fields_new();
    fields_str(h, "kind", "scored");
    shard_write_header(w, shard_header(r), h);
    Fields *f = fields_new();
    Record rec;
    while (shard_next(r, &rec)) {
        fields_clear(f);
        fields_f64(f, "reward", (double)rec.index * 0.5);
        fields_drop(f, "none");
        fields_i64(f, "n", -1);   // override
        shard_write(w, &rec, f);
    }
    shard_commit(w);
    shard_close(r);

    ShardReader *ra = shard_open(a), *rb = shard_open(b);
    Record x, y;
    long bad = 0, count = 0;
    while (shard_next(ra, &x)) {
        if (!shard_next(rb, &y)) { bad++; break; }
        count++;
        // every field of x except none/n appears in y unchanged, in order, then n, reward
        uint32_t j = 0;
        for (uint32_t i = 0; i < x.map->via.map.size; i++) {
            const msgpack_object *k = &x.map->via.map.ptr[i].key;
            if ((k->via.str.size == 4 && !memcmp(k->via.str.ptr, "none", 4)) ||
                (k->via.str.size == 1 && !memcmp(k->via.str.ptr, "n", 1))) continue;
            if (!msgpack_object_equal(x.map->via.map.ptr[i].key, y.map->via.map.ptr[j].key) ||
                !msgpack_object_equal(x.map->via.map.ptr[i].val, y.map->via.map.ptr[j].val)) bad++;
            j++;
        }
        if (y.map->via.map.size != j + 2 || rec_i64(&y, "n") != -1 || rec_f64(&y, "reward") != (double)x.index * 0.5 ||
            rec_has(&y, "none")) bad++;
    }
    CHECK(bad == 0 && count == 500, "%ld mismatches in %ld records", bad, count);
    const Record *hb = shard_header_record(rb);
    CHECK(rec_has(hb, "custom_header_key") && rec_has(hb, "model"), "unknown header keys pass through");
    shard_close(ra);
    shard_close(rb);
    fields_free(f);
    fields_free(h);
}

// Records far larger than the reader's buffers, and a file of several MB.
TEST(larger_than_buffers) {
    const char *p = tpath("big.safe");
    size_t big = 1500000;   // 6 MB of float32 per big record
    float *v = xmalloc(big * 4);
    for (size_t i = 0; i < big; i++) v[i] = (float)i * 0.25f;
    for (int level = 0; level <= 3; level += 3) {
        ShardWriter *w = shard_create(p, level);
        shard_write_header(w, NULL, NULL);
        Fields *f = fields_new();
        for (int i = 0; i < 40; i++) {
            fields_clear(f);
            fields_i64(f, "i", i);
            fields_f32s(f, "values", v, i % 10 == 3 ? big : (size_t)(i * 1000));
            shard_write(w, NULL, f);
        }
        shard_commit(w);
        fields_free(f);
        struct stat st;
        stat(p, &st);
        ShardReader *r = shard_open(p);
        Record rec;
        long n = 0, bad = 0;
        while (shard_next(r, &rec)) {
            size_t k;
            float *x = rec_f32s(&rec, "values", &k, -1);
            size_t want = n % 10 == 3 ? big : (size_t)(n * 1000);
            if (k != want || memcmp(x, v, k * 4) != 0 || rec_i64(&rec, "i") != n) bad++;
            free(x);
            n++;
        }
        shard_close(r);
        CHECK(n == 40 && bad == 0, "level %d: %ld records, %ld bad", level, n, bad);
        CHECK(st.st_size > 4 * 1024 * 1024, "level %d: file is %lld bytes (want several MB)", level, (long long)st.st_size);
    }
    free(v);
}

// Reading from a pipe that delivers the shard in small pieces (no seeking, no peeking back).
static const char *pipe_src;
static void child_read_stdin_count(void *arg) {
    long want = *(long *)arg;
    ShardReader *r = shard_open("-");
    Record rec;
    long n = 0;
    while (shard_next(r, &rec)) { (void)rec_f64(&rec, "x"); n++; }
    shard_close(r);
    exit(n == want ? 0 : 10);
}
static void child_pipe_reader(void *arg) {
    int fds[2];
    if (pipe(fds) != 0) exit(11);
    pid_t pid = fork();
    if (pid == 0) {   // writer: dribble the file into the pipe
        close(fds[0]);
        size_t n;
        char *b = slurp(pipe_src, &n);
        for (size_t i = 0; i < n; i += 777) {
            if (write(fds[1], b + i, n - i < 777 ? n - i : 777) < 0) _exit(1);
        }
        _exit(0);
    }
    close(fds[1]);
    dup2(fds[0], 0);
    child_read_stdin_count(arg);
}

TEST(reads_from_pipes) {
    const char *raw = tpath("pipe_raw.safe"), *zst = tpath("pipe_zst.safe");
    write_random(raw, 0, 300, 9);
    write_random(zst, 3, 300, 9);
    char err[4096];
    long want = 300;
    pipe_src = raw;
    int st = run_child(child_pipe_reader, &want, err, sizeof err);
    CHECK(st == 0, "raw shard through a pipe: status %d: %s", st, err);
    pipe_src = zst;
    st = run_child(child_pipe_reader, &want, err, sizeof err);
    CHECK(st == 0, "zstd shard through a pipe: status %d: %s", st, err);
}

// Two zstd frames (e.g. a stream compressed in two pieces) read as one stream.
TEST(concatenated_zstd_frames) {
    const char *raw = tpath("frames_raw.safe"), *two = tpath("frames_two.safe");
    write_random(raw, 0, 200, 11);
    size_t n;
    char *b = slurp(raw, &n);
    size_t half = n / 2, cap = ZSTD_compressBound(n) + 64;
    char *out = xmalloc(2 * cap);
    size_t a = ZSTD_compress(out, cap, b, half, 3);
    size_t c = ZSTD_compress(out + a, cap, b + half, n - half, 3);
    spit(two, out, a + c);
    CHECK(check_random(two, 200, 11, 0) == 0, "two frames read as one stream");
    free(b);
    free(out);
}

// ---- errors: each reader of bad input exits 2 and says where --------------------------

static const char *bad_path;
static long bad_want = -1;

// Read every record, touching the fields; exit 0 on a clean end.
static void child_read_all(void *arg) {
    (void)arg;
    ShardReader *r = shard_open(bad_path);
    Record rec;
    while (shard_next(r, &rec)) {
        size_t n;
        float *f = rec_f32s(&rec, "logp", &n, bad_want);
        free(f);
        (void)rec_i64(&rec, "n");
    }
    shard_close(r);
}

// A small shard: every truncation offset, every byte flipped.
static long small_records = 6;
static const char *small_zst(void) { return tpath("small.safe"); }
static const char *small_raw(void) { return tpath("small_raw.safe"); }

static void child_read_compare(void *arg) {
    (void)arg;
    compare_quiet = 1;
    gen_max = 8;   // as write_small wrote them
    if (check_random(bad_path, small_records, 5, 1) != 0) exit(10);   // clean end but wrong data: 10
}

static int expect_error(const char *path, ChildFn fn, int status, const char *needle1, const char *needle2,
                        const char *what) {
    char err[8192];
    bad_path = path;
    int st = run_child(fn, NULL, err, sizeof err);
    int ok = st == status && strstr(err, path) && (!needle1 || strstr(err, needle1)) && (!needle2 || strstr(err, needle2));
    CHECK(ok, "%s: status %d (want %d), stderr: %s", what, st, status, err);
    return ok;
}

// Every offset (raise it to sample, should a slower machine need that).
enum { STRIDE = 1 };

static void write_small(const char *path, int level) {
    gen_max = 8;
    write_random(path, level, small_records, 5);
    gen_max = 64;
}

TEST(truncated_at_every_offset_zstd) {
    write_small(small_zst(), 3);
    size_t n;
    char *b = slurp(small_zst(), &n);
    const char *t = tpath("trunc.safe");
    long failures = 0;
    for (size_t off = 0; off < n; off += STRIDE) {
        spit(t, b, off);
        char err[4096];
        bad_path = t;
        int st = run_child(child_read_all, NULL, err, sizeof err);
        int ok = st == 2 && strstr(err, t) && (strstr(err, "truncated") || strstr(err, "empty input"));
        if (!ok && failures++ < 3) printf("  offset %zu of %zu: status %d: %s", off, n, st, err);
    }
    CHECK(failures == 0, "%ld of %zu truncations not reported as such", failures, n);
    free(b);
    // the message names the record index (a larger shard: zstd decodes whole blocks)
    write_random(tpath("mid.safe"), 3, 2000, 44);
    b = slurp(tpath("mid.safe"), &n);
    spit(t, b, n / 2);
    expect_error(t, child_read_all, 2, "truncated after record ", ": the zstd frame is incomplete", "truncated mid-file");
    free(b);
}

// Raw msgpack has no end marker: a cut exactly between records reads as a shorter shard
// (documented in safe-shard(5)); every other cut is an error.
TEST(truncated_at_every_offset_raw) {
    write_small(small_raw(), 0);
    size_t n;
    char *b = slurp(small_raw(), &n);
    // record boundaries
    char *is_boundary = xcalloc(n + 1, 1);
    size_t off = 0;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    while (msgpack_unpack_next(&u, b, n, &off) == MSGPACK_UNPACK_SUCCESS) is_boundary[off] = 1;
    msgpack_unpacked_destroy(&u);
    const char *t = tpath("trunc_raw.safe");
    long failures = 0;
    for (size_t k = 1; k < n; k += STRIDE) {
        if (is_boundary[k]) continue;
        spit(t, b, k);
        char err[4096];
        bad_path = t;
        int st = run_child(child_read_all, NULL, err, sizeof err);
        if (!(st == 2 && strstr(err, t) && strstr(err, "truncated")) && failures++ < 3)
            printf("  offset %zu of %zu: status %d: %s", k, n, st, err);
    }
    CHECK(failures == 0, "%ld raw truncations not reported", failures);
    free(is_boundary);
    free(b);
}

// Flip one byte at every offset of the zstd shard: the reader either stops with status 2
// or (for bytes zstd does not depend on, e.g. the window size) returns identical records.
// Never a crash, a hang, or silently different data.
TEST(flipped_bytes_zstd) {
    write_small(small_zst(), 3);
    size_t n;
    char *b = slurp(small_zst(), &n);
    const char *t = tpath("flip.safe");
    long detected = 0, harmless = 0, failures = 0;
    Rng g = {99};
    for (size_t off = 0; off < n; off += STRIDE) {
        unsigned char mask = (unsigned char)(1u << (rnd(&g) % 8));
        b[off] ^= (char)mask;
        spit(t, b, n);
        b[off] ^= (char)mask;
        char err[4096];
        bad_path = t;
        int st = run_child(child_read_compare, NULL, err, sizeof err);
        if (st == 2 && strstr(err, t)) detected++;
        else if (st == 0) harmless++;
        else if (failures++ < 3) printf("  flip at %zu: status %d: %s\n", off, st, err);
    }
    long tried = (long)((n + STRIDE - 1) / STRIDE);
    printf("  %ld bytes flipped: %ld detected, %ld harmless (identical records)\n", tried, detected, harmless);
    CHECK(failures == 0, "%ld flips crashed, hung or changed data silently", failures);
    CHECK(detected >= tried * 9 / 10, "most flips are detected (%ld of %ld)", detected, tried);
    free(b);
}

// Raw msgpack has no checksum: a flip may change a value. It must still never crash or hang.
TEST(flipped_bytes_raw_never_crash) {
    write_small(small_raw(), 0);
    size_t n;
    char *b = slurp(small_raw(), &n);
    const char *t = tpath("flip_raw.safe");
    long failures = 0, counts[3] = {0};
    for (size_t off = 0; off < n; off += STRIDE) {
        b[off] ^= 0x5A;
        spit(t, b, n);
        b[off] ^= 0x5A;
        char err[4096];
        bad_path = t;
        int st = run_child(child_read_compare, NULL, err, sizeof err);
        if (st == 0) counts[0]++;
        else if (st == 2) counts[1]++;
        else if (st == 10) counts[2]++;
        else if (failures++ < 3) printf("  flip at %zu: status %d: %s\n", off, st, err);
    }
    printf("  every %d of %zu raw bytes flipped: %ld same, %ld errors, %ld changed values\n", STRIDE, n, counts[0], counts[1], counts[2]);
    CHECK(failures == 0, "%ld flips crashed or hung", failures);
    free(b);
}

// Hand-made streams: header map + records, packed here.
typedef struct { msgpack_sbuffer sb; msgpack_packer pk; } Raw;
static void raw_begin(Raw *r) {
    msgpack_sbuffer_init(&r->sb);
    msgpack_packer_init(&r->pk, &r->sb, msgpack_sbuffer_write);
}
static void raw_header(Raw *r, const char *format, int version) {
    msgpack_pack_map(&r->pk, 3);
    pack_cstr(&r->pk, "format");
    pack_cstr(&r->pk, format);
    pack_cstr(&r->pk, "version");
    msgpack_pack_int(&r->pk, version);
    pack_cstr(&r->pk, "kind");
    pack_cstr(&r->pk, "rollout");
}
static void raw_record(Raw *r, const char *logp_type, size_t logp_bytes) {
    static const char zeros[64];
    msgpack_pack_map(&r->pk, 2);
    pack_cstr(&r->pk, "n");
    msgpack_pack_int(&r->pk, 1);
    pack_cstr(&r->pk, "logp");
    if (strcmp(logp_type, "bin") == 0) msgpack_pack_bin_with_body(&r->pk, zeros, logp_bytes);
    else pack_cstr(&r->pk, "not floats");
}
static void raw_save(Raw *r, const char *path) {
    spit(path, r->sb.data, r->sb.size);
    msgpack_sbuffer_destroy(&r->sb);
}

TEST(bad_format_and_version) {
    Raw r;
    const char *p = tpath("bad_format.safe");
    raw_begin(&r); raw_header(&r, "other-format", 1); raw_save(&r, p);
    expect_error(p, child_read_all, 2, "not a safe shard", "other-format", "wrong format name");
    raw_begin(&r); raw_header(&r, SHARD_FORMAT, 2); raw_record(&r, "bin", 8); raw_save(&r, p);
    expect_error(p, child_read_all, 2, "unsupported shard version 2", "version 1", "wrong version");
    spit(p, "{\"format\": \"safe-shard\"}\n", 25);
    expect_error(p, child_read_all, 2, "not a safe shard", "safe-cat --to-shard", "JSON instead of a shard");
    spit(p, "", 0);
    expect_error(p, child_read_all, 2, "empty input", NULL, "empty file");
    expect_error(tpath("does-not-exist.safe"), child_read_all, 2, "cannot open", NULL, "missing file");
}

TEST(bad_records) {
    Raw r;
    const char *p = tpath("bad_rec.safe");
    raw_begin(&r); raw_header(&r, SHARD_FORMAT, 1);
    raw_record(&r, "bin", 8); raw_record(&r, "bin", 8); raw_record(&r, "str", 0);
    raw_save(&r, p);
    expect_error(p, child_read_all, 2, "record 2: field \"logp\": expected a bin", NULL, "wrong field type");

    raw_begin(&r); raw_header(&r, SHARD_FORMAT, 1); raw_record(&r, "bin", 7); raw_save(&r, p);
    expect_error(p, child_read_all, 2, "record 0: field \"logp\"", "not a whole number", "bin length not a multiple of 4");

    raw_begin(&r); raw_header(&r, SHARD_FORMAT, 1); raw_record(&r, "bin", 12); raw_save(&r, p);
    bad_want = 5;
    expect_error(p, child_read_all, 2, "has 3 values, expected 5", "record 0", "wrong array length");
    bad_want = -1;

    raw_begin(&r); raw_header(&r, SHARD_FORMAT, 1); raw_record(&r, "bin", 8);
    msgpack_pack_int(&r.pk, 5);   // record 1 is not a map
    raw_save(&r, p);
    expect_error(p, child_read_all, 2, "record 1: not a map", NULL, "record not a map");

    raw_begin(&r); raw_header(&r, SHARD_FORMAT, 1); raw_record(&r, "bin", 8);
    msgpack_sbuffer_write(&r.sb, "\xc1", 1);   // the one byte that is never msgpack
    raw_save(&r, p);
    expect_error(p, child_read_all, 2, "record 1: corrupt msgpack", NULL, "corrupt msgpack");

    raw_begin(&r); raw_header(&r, SHARD_FORMAT, 1); raw_record(&r, "bin", 8); raw_header(&r, SHARD_FORMAT, 1);
    raw_save(&r, p);
    expect_error(p, child_read_all, 2, "second shard header", "safe-cat", "shards joined with cat");

    raw_begin(&r); raw_header(&r, SHARD_FORMAT, 1);
    msgpack_pack_map(&r.pk, 1);
    msgpack_pack_int(&r.pk, 1);   // integer key
    msgpack_pack_int(&r.pk, 1);
    raw_save(&r, p);
    expect_error(p, child_read_all, 2, "record 0: key 0 is an integer", NULL, "non-string key");
}

static void child_missing_field(void *arg) {
    (void)arg;
    ShardReader *r = shard_open(bad_path);
    Record rec;
    while (shard_next(r, &rec))
        if (rec.index == 3) (void)rec_f64(&rec, "reward");
}
static void child_into_too_small(void *arg) {
    (void)arg;
    ShardReader *r = shard_open(bad_path);
    Record rec;
    int32_t buf[4];
    while (shard_next(r, &rec)) (void)rec_i32s_into(&rec, "prompt_tokens", buf, 4);
}
static void child_rec_die(void *arg) {
    (void)arg;
    ShardReader *r = shard_open(bad_path);
    Record rec;
    shard_next(r, &rec);
    rec_die(&rec, "reward", EXIT_RUNTIME, "is NaN");
}
static void child_header_missing(void *arg) {
    (void)arg;
    ShardReader *r = shard_open(bad_path);
    (void)rec_str(shard_header_record(r), "tokenizer", NULL);
}

TEST(missing_fields_and_caller_errors) {
    const char *p = tpath("fields.safe");
    write_random(p, 3, 10, 3);
    expect_error(p, child_missing_field, 2, "record 3: field \"reward\": missing", "prompt_tokens", "missing field");
    expect_error(p, child_into_too_small, 2, "field \"prompt_tokens\"", "more than the 4", "into a buffer too small");
    expect_error(p, child_rec_die, 3, "record 0: field \"reward\": is NaN", NULL, "rec_die");
    expect_error(p, child_header_missing, 2, "header: field \"tokenizer\": missing", NULL, "missing header field");
}

// ---- writer behaviour ----------------------------------------------------------------

static void child_undeclared_bin(void *arg) {
    (void)arg;
    ShardWriter *w = shard_create(bad_path, 3);
    shard_write_header(w, NULL, NULL);
    Fields *f = fields_new();
    float x[2] = {1, 2};
    fields_f32s(f, "my_floats", x, 2);
    shard_write(w, NULL, f);
    shard_commit(w);
}
static void child_wrong_dtype(void *arg) {
    (void)arg;
    ShardWriter *w = shard_create(bad_path, 3);
    shard_write_header(w, NULL, NULL);
    Fields *f = fields_new();
    int32_t x[2] = {1, 2};
    fields_i32s(f, "logp", x, 2);   // the schema says f32
    shard_write(w, NULL, f);
    shard_commit(w);
}
static void child_dies_mid_write(void *arg) {
    (void)arg;
    ShardWriter *w = shard_create(bad_path, 3);
    shard_write_header(w, NULL, NULL);
    die(EXIT_RUNTIME, "simulated failure while writing");
}
static void child_killed_mid_write(void *arg) {
    (void)arg;
    ShardWriter *w = shard_create(bad_path, 3);
    shard_write_header(w, NULL, NULL);
    shard_flush(w);
    raise(SIGTERM);   // zio removes the temp file on SIGTERM, then dies of the signal
}

// A checkpoint-like temporary directory with files in it, then SIGTERM: the directory goes.
static void child_killed_filling_dir(void *arg) {
    const char *d = arg;
    if (mkdir(d, 0755) != 0) _exit(10);
    zout_signal_dir(d);
    for (int i = 0; i < 300; i++) {   // more entries than one getdents64 buffer holds
        char f[600];
        snprintf(f, sizeof f, "%s/part-%03d-of-a-long-file-name.safetensors", d, i);
        FILE *fp = fopen(f, "w");
        if (!fp) _exit(11);
        fputs("x", fp);
        fclose(fp);
    }
    raise(SIGTERM);
}

static int temp_files_of(const char *path) {   // how many "<path>.tmp.*" exist
    char cmd[512];
    snprintf(cmd, sizeof cmd, "ls %s.tmp.* 2>/dev/null | wc -l", path);
    FILE *f = popen(cmd, "r");
    int n = 0;
    if (f) { if (fscanf(f, "%d", &n) != 1) n = -1; pclose(f); }
    return n;
}

TEST(writer_temp_file_and_rename) {
    const char *p = tpath("atomic.safe");
    ShardWriter *w = shard_create(p, 3);
    shard_write_header(w, NULL, NULL);
    Fields *f = fields_new();
    fields_i64(f, "n", 1);
    shard_write(w, NULL, f);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", p, (long)getpid());
    CHECK(!exists(p) && exists(tmp), "while writing only the temp name exists");
    shard_commit(w);
    CHECK(exists(p) && !exists(tmp), "after commit only the final name exists");

    const char *q = tpath("aborted.safe");
    w = shard_create(q, 3);
    shard_write_header(w, NULL, NULL);
    shard_write(w, NULL, f);
    shard_abort(w);
    CHECK(!exists(q) && temp_files_of(q) == 0, "abort leaves nothing");
    fields_free(f);

    const char *d = tpath("died.safe");
    char err[1024];
    bad_path = d;
    int st = run_child(child_dies_mid_write, NULL, err, sizeof err);
    CHECK(st == 3 && strstr(err, "simulated failure"), "die() mid-write: status %d: %s", st, err);
    CHECK(!exists(d) && temp_files_of(d) == 0, "a writer that dies leaves no file and no temp file");
    bad_path = tpath("killed.safe");
    st = run_child(child_killed_mid_write, NULL, err, sizeof err);
    CHECK(st == 128 + SIGTERM, "killed by SIGTERM: status %d", st);
    CHECK(!exists(bad_path) && temp_files_of(bad_path) == 0, "a writer killed by SIGTERM leaves nothing");
    const char *td = tpath("ckpt.tmp.1");
    st = run_child(child_killed_filling_dir, (void *)td, err, sizeof err);
    CHECK(st == 128 + SIGTERM && !exists(td), "a temporary directory of 300 files goes on SIGTERM: status %d, %s",
          st, exists(td) ? "still there" : "gone");
}

TEST(writer_checks_dtypes) {
    const char *p = tpath("dtype_err.safe");
    expect_error(p, child_undeclared_bin, 3, "my_floats", "shard_declare", "bin field without a dtype");
    expect_error(p, child_wrong_dtype, 3, "logp", "declares f32", "bin field with another dtype");
    CHECK(!exists(p), "no output left behind");
}

TEST(fields_api) {
    Fields *f = fields_new();
    fields_str(f, "a", "x");
    fields_i64(f, "b", 1);
    fields_str(f, "a", "y");   // replaces
    fields_drop(f, "c");
    msgpack_packer *pk = fields_packer(f, "m");
    msgpack_pack_map(pk, 1);
    pack_cstr(pk, "k");
    msgpack_pack_double(pk, 0.5);
    CHECK(fields_count(f) == 4, "a, b, drop c, m: got %d", fields_count(f));
    const char *p = tpath("fields_api.safe");
    ShardWriter *w = shard_create(p, 0);
    shard_write_header(w, NULL, NULL);
    shard_write(w, NULL, f);
    CHECK(shard_records_written(w) == 1, "records written");
    shard_commit(w);
    ShardReader *r = shard_open(p);
    Record rec;
    CHECK(shard_next(r, &rec), "a record");
    size_t n;
    const char *a = rec_str(&rec, "a", &n);
    CHECK(n == 1 && a[0] == 'y', "later value wins");
    CHECK(rec.map->via.map.size == 3 && !rec_has(&rec, "c"), "3 fields, drop of an absent field is harmless");
    const msgpack_object *m = rec_find(&rec, "m");
    CHECK(m && m->type == MSGPACK_OBJECT_MAP && m->via.map.ptr[0].val.via.f64 == 0.5, "packed map value");
    CHECK(!shard_next(r, &rec) && shard_records_read(r) == 1, "clean end");
    shard_close(r);
    fields_free(f);
}

// ---- progress ------------------------------------------------------------------------

static void child_progress(void *arg) {
    int quiet = *(int *)arg;
    setenv("SAFE_PROGRESS_INTERVAL", "0", 1);
    Progress *p = progress_start("testing", 100, "records", quiet);
    progress_extra_unit(p, "tok");
    for (int i = 1; i <= 100; i += 33) progress_update(p, i, i * 10.0);
    progress_end(p);
}

TEST(progress_lines) {
    char err[4096];
    int quiet = 0;
    int st = run_child(child_progress, &quiet, err, sizeof err);
    CHECK(st == 0 && strstr(err, "testing") && strstr(err, "/100 records") && strstr(err, "tok/s") && strstr(err, "done"),
          "plain lines when stderr is not a terminal: %s", err);
    quiet = 1;
    st = run_child(child_progress, &quiet, err, sizeof err);
    CHECK(st == 0 && err[0] == 0, "nothing when quiet: %s", err);
}

// RUN, plus the seconds each test took (the fork-heavy ones dominate).
#define RUN_TIMED(name)                                            \
    do {                                                           \
        double t0_ = now_seconds();                                \
        RUN(name);                                                 \
        printf("  (%s: %.2f s)\n", #name, now_seconds() - t0_);   \
    } while (0)

int main(void) {
    safe_progname = "test_shard";
    // a RAM disk when there is one: thousands of small files are written
    snprintf(dir, sizeof dir, "%s/safe-test-shard.XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    // fork-heavy tests first, while the parent is small (fork copies its page tables)
    RUN_TIMED(truncated_at_every_offset_zstd);
    RUN_TIMED(truncated_at_every_offset_raw);
    RUN_TIMED(flipped_bytes_zstd);
    RUN_TIMED(flipped_bytes_raw_never_crash);
    RUN_TIMED(bad_format_and_version);
    RUN_TIMED(bad_records);
    RUN_TIMED(missing_fields_and_caller_errors);
    RUN_TIMED(writer_temp_file_and_rename);
    RUN_TIMED(writer_checks_dtypes);
    RUN_TIMED(progress_lines);
    RUN_TIMED(round_trip_raw);
    RUN_TIMED(round_trip_zstd);
    RUN_TIMED(header_fields_and_dtypes);
    RUN_TIMED(pass_through_unknown_fields);
    RUN_TIMED(larger_than_buffers);
    RUN_TIMED(reads_from_pipes);
    RUN_TIMED(concatenated_zstd_frames);
    RUN_TIMED(fields_api);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return test_summary();
}
