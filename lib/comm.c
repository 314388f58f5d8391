// comm.c — ranks from MPI, Slurm or the environment; collectives on CPU buffers over MPI,
// each one non-blocking and polled against a deadline (see comm.h).
//
// Built with -DSAFE_MPI (and mpicc's include flags) when the Makefile finds mpicc; without
// it only world size 1 has a transport, and the tools run as before.
#include "comm.h"

#include <ctype.h>
#include <limits.h>
#include <omp.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef SAFE_MPI
#include <mpi.h>
#endif

#include "common.h"       // die, xmalloc, now_seconds, die_set_hook
#include "ranks.h"        // ranks_from_env, ranks_mpi_launcher_var, env_count
#include "safetensors.h"  // safetensors_write, for comm_dump_grads

static CommInfo info = {.rank = 0, .world = 1, .local_rank = 0, .local_world = 1,
                        .source = "single", .mpi = 0, .timeout = COMM_DEFAULT_TIMEOUT};
static int inited, finalized;
static int hooks_checked;     // the SAFE_TEST_* hooks run once, before the first collective

const CommInfo *comm_info(void) { return &info; }
int comm_rank(void) { return info.rank; }
int comm_world(void) { return info.world; }

const char *comm_backend(void) {
#ifdef SAFE_MPI
    return "MPI";
#else
    return "none";
#endif
}

// A timeout in seconds from `name` (the option or variable, for the message): 0.01 to 1e9.
static double parse_timeout(const char *s, const char *name) {
    char *end;
    double v = strtod(s, &end);
    int decimal = strspn(s, "0123456789.eE+-") == strlen(s) && (isdigit((unsigned char)s[0]) || s[0] == '.');
    if (*s == 0 || *end != 0 || !decimal || !(v >= 0.01 && v <= 1e9))
        die(EXIT_USAGE, "%s needs a number of seconds from 0.01 to 1e9, got '%s'", name, s);
    return v;
}

double comm_parse_timeout(const char *s) { return parse_timeout(s, "--comm-timeout"); }

#ifdef SAFE_MPI
static int dying_code;        // the status die() was called with (0: none)
static void on_die(int code) { dying_code = code; }

// Exit without comm_finalize (die() on any rank, or a stray exit()): the other exit handlers
// registered later (temporary files, checkpoint directories) have already run, since atexit
// handlers run in reverse order; now take every rank down rather than leave them waiting.
static void on_exit_abort(void) {
    int fin = 0;
    if (!info.mpi || finalized || MPI_Finalized(&fin) != MPI_SUCCESS || fin) return;
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, dying_code ? dying_code : EXIT_RUNTIME);
}

static void mpi_die(int rc, const char *kind, const char *what) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "MPI error %d", rc);
    die(EXIT_RUNTIME, "rank %d: collective %s (%s) failed: %s", info.rank, kind, what, msg);
}

static void mpi_start(const char *var) {
    int provided = 0, rc;
    // funneled: OpenMP threads compute, only the main thread calls MPI
    rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) die(EXIT_RUNTIME, "MPI_Init failed (launched by an MPI launcher: %s is set)", var);
    info.mpi = 1;
    die_set_hook(on_die);
    atexit(on_exit_abort);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &info.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &info.world);
    // ranks on this machine: the shared-memory split of the world
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, info.rank, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_rank(node, &info.local_rank);
        MPI_Comm_size(node, &info.local_world);
        MPI_Comm_free(&node);
    }
    info.source = "mpi";
}

// Several ranks on one machine, OMP_NUM_THREADS unset, and a launcher that did not bind them
// (each one's affinity mask is the whole machine): give each rank its share of the cores
// rather than W times as many threads as there are cores. A bound rank already gets the
// cores of its mask from OpenMP.
static void share_cores(void) {
    const char *t = getenv("OMP_NUM_THREADS");
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if ((t && *t) || info.local_world < 2 || online < 1 || omp_get_max_threads() != online) return;
    int share = (int)(online / info.local_world);
    omp_set_num_threads(share > 0 ? share : 1);
}
#endif


void comm_init(double timeout_s) {
    if (inited) return;
    inited = 1;
    info.timeout = COMM_DEFAULT_TIMEOUT;
    const char *t = getenv("SAFE_COMM_TIMEOUT");
    if (timeout_s > 0) info.timeout = timeout_s;   // --comm-timeout wins: the variable is not read
    else if (t && *t) info.timeout = parse_timeout(t, "SAFE_COMM_TIMEOUT");

    const char *var = ranks_mpi_launcher_var();
    if (var) {
#ifdef SAFE_MPI
        mpi_start(var);
        share_cores();
        // srun -n N without an MPI plugin: every task starts MPI on its own, a world of 1
        // (with more, MPI's world is the truth: mpirun's daemons run in srun steps of their
        // own, whose SLURM_STEP_NUM_TASKS count nodes, not ranks)
        int steps = 0;
        if (info.world == 1 && env_count("SLURM_STEP_NUM_TASKS", &steps) && steps > 1)
            die(EXIT_USAGE, "MPI sees 1 rank but srun started %d tasks: give srun an MPI plugin "
                "(srun --mpi=pmix) or use mpirun", steps);
        return;
#else
        int n = 1;
        if ((env_count("OMPI_COMM_WORLD_SIZE", &n) || env_count("PMI_SIZE", &n)) && n > 1)
            die(EXIT_USAGE, "started by an MPI launcher with %d ranks (%s is set), but this build has no "
                "MPI: install libopenmpi-dev openmpi-bin and rebuild (make MPI=1)", n, var);
        return;   // one rank under mpirun -np 1: nothing to share
#endif
    }
    EnvRanks r = ranks_from_env();
    info.rank = r.rank;
    info.world = r.world;
    info.local_rank = r.local_rank;
    info.source = r.source;
    if (r.world > 1) info.local_world = 0;   // unknown without a launcher that says
}

void comm_slice(size_t n, size_t *begin, size_t *end) {
    size_t W = (size_t)info.world, r = (size_t)info.rank;
    *begin = r * n / W;
    *end = (r + 1) * n / W;
}

uint64_t comm_hash(const void *buf, size_t bytes) {
    // FNV-1a over 8-byte words (then the tail bytes): fast enough for a parameter buffer
    const unsigned char *p = buf;
    uint64_t h = 0xcbf29ce484222325ULL;
    size_t i = 0;
    for (; i + 8 <= bytes; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
    }
    for (; i < bytes; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

// Before every collective: 0 when there is nothing to do (one rank), 1 to go ahead. Dies
// when world > 1 has no transport; runs the test hooks before the first collective.
static int collective_begin(const char *kind, const char *what) {
    if (info.world == 1) return 0;
    if (!info.mpi)
        die(EXIT_USAGE, "rank %d: collective %s (%s) on CPU buffers needs MPI, but the %d ranks come from %s "
            "without an MPI launcher: start them with mpirun -np %d (or srun --mpi=pmix)%s", info.rank, kind,
            what, info.world, strcmp(info.source, "slurm") == 0 ? "srun" : "RANK/WORLD_SIZE", info.world,
            strcmp(comm_backend(), "none") == 0 ? " in a build with MPI (make MPI=1)" : "");
    if (!hooks_checked) {
        hooks_checked = 1;
        int r;
        if (env_count("SAFE_TEST_KILL_RANK", &r) && r == info.rank) {
            fprintf(stderr, "%s: rank %d: SAFE_TEST_KILL_RANK: killing myself (SIGKILL) before collective %s\n",
                    safe_progname, info.rank, kind);
            raise(SIGKILL);
        }
        if (env_count("SAFE_TEST_STALL_RANK", &r) && r == info.rank) {
            fprintf(stderr, "%s: rank %d: SAFE_TEST_STALL_RANK: stalling forever before collective %s\n",
                    safe_progname, info.rank, kind);
            for (;;) pause();
        }
    }
    return 1;
}

#ifdef SAFE_MPI
// Poll one request until it completes or the deadline passes. Yield first (a peer may need
// this core: ranks often outnumber cores in tests), then sleep 0.2 ms between polls.
// timeout <= 0: no deadline (the same gentle polling, rather than MPI_Wait's busy loop).
static void comm_wait_for(MPI_Request *req, double timeout, const char *kind, const char *what) {
    double t0 = now_seconds();
    long polls = 0;
    for (;;) {
        int done = 0, rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) mpi_die(rc, kind, what);
        if (done) return;
        if (timeout > 0 && now_seconds() - t0 > timeout)
            die(EXIT_RUNTIME, "rank %d: collective %s (%s) timed out after %g s: a peer rank probably died "
                "(if one is only slow, raise --comm-timeout or SAFE_COMM_TIMEOUT)", info.rank, kind, what,
                info.timeout);
        if (++polls < 2000) {
            sched_yield();
        } else {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    }
}

static void comm_wait(MPI_Request *req, const char *kind, const char *what) {
    comm_wait_for(req, info.timeout, kind, what);
}

#define CHECK_MPI(call, kind, what) do { int rc_ = (call); if (rc_ != MPI_SUCCESS) mpi_die(rc_, kind, what); } while (0)

// Elements per chunk of the big collectives: MPI counts are int, and the double scratch of
// the float sums stays at 8 MiB.
#define COMM_CHUNK ((size_t)1 << 20)

static MPI_Op mpi_op(CommOp op) {
    return op == COMM_MAX ? MPI_MAX : op == COMM_MIN ? MPI_MIN : MPI_SUM;
}
#endif

// x (n): sums and averages in double at rank 0, then the floats broadcast; max/min exact.
void comm_allreduce_f32(float *x, size_t n, CommOp op, const char *what) {
    if (!collective_begin("allreduce", what) || n == 0) return;
#ifdef SAFE_MPI
    if (op == COMM_MAX || op == COMM_MIN) {
        for (size_t off = 0; off < n; off += COMM_CHUNK) {
            int m = (int)(n - off < COMM_CHUNK ? n - off : COMM_CHUNK);
            MPI_Request req;
            CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, x + off, m, MPI_FLOAT, mpi_op(op), MPI_COMM_WORLD, &req), "allreduce", what);
            comm_wait(&req, "allreduce", what);
        }
        return;
    }
    size_t cap = n < COMM_CHUNK ? n : COMM_CHUNK;
    double *d = xmalloc(cap * sizeof(double));
    for (size_t off = 0; off < n; off += COMM_CHUNK) {
        int m = (int)(n - off < COMM_CHUNK ? n - off : COMM_CHUNK);
        for (int i = 0; i < m; i++) d[i] = x[off + i];
        // sum in double at rank 0: one reduction order for every element, whatever MPI picks
        MPI_Request req;
        if (info.rank == 0)
            CHECK_MPI(MPI_Ireduce(MPI_IN_PLACE, d, m, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD, &req), "allreduce", what);
        else
            CHECK_MPI(MPI_Ireduce(d, NULL, m, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD, &req), "allreduce", what);
        comm_wait(&req, "allreduce", what);
        if (info.rank == 0)
            for (int i = 0; i < m; i++) x[off + i] = (float)(op == COMM_AVG ? d[i] / info.world : d[i]);
        // then every rank takes rank 0's rounded floats: bit-identical everywhere
        CHECK_MPI(MPI_Ibcast(x + off, m, MPI_FLOAT, 0, MPI_COMM_WORLD, &req), "allreduce", what);
        comm_wait(&req, "allreduce", what);
    }
    free(d);
#else
    (void)x; (void)op;
#endif
}

// x (n) doubles: the same scheme (reduce at rank 0, broadcast) for sums; max/min exact.
void comm_allreduce_f64(double *x, size_t n, CommOp op, const char *what) {
    if (!collective_begin("allreduce", what) || n == 0) return;
#ifdef SAFE_MPI
    for (size_t off = 0; off < n; off += COMM_CHUNK) {
        int m = (int)(n - off < COMM_CHUNK ? n - off : COMM_CHUNK);
        MPI_Request req;
        if (op == COMM_MAX || op == COMM_MIN) {
            CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, x + off, m, MPI_DOUBLE, mpi_op(op), MPI_COMM_WORLD, &req), "allreduce", what);
            comm_wait(&req, "allreduce", what);
            continue;
        }
        if (info.rank == 0)
            CHECK_MPI(MPI_Ireduce(MPI_IN_PLACE, x + off, m, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD, &req), "allreduce", what);
        else
            CHECK_MPI(MPI_Ireduce(x + off, NULL, m, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD, &req), "allreduce", what);
        comm_wait(&req, "allreduce", what);
        if (info.rank == 0 && op == COMM_AVG)
            for (int i = 0; i < m; i++) x[off + i] /= info.world;
        CHECK_MPI(MPI_Ibcast(x + off, m, MPI_DOUBLE, 0, MPI_COMM_WORLD, &req), "allreduce", what);
        comm_wait(&req, "allreduce", what);
    }
#else
    (void)x; (void)op;
#endif
}

void comm_record_sums(double *vals, size_t n, int k, size_t b0, size_t b1, double *sums, const char *what) {
    if (info.world > 1) {
        for (size_t i = 0; i < n; i++)
            if (i < b0 || i >= b1) memset(vals + i * k, 0, k * sizeof(double));
        comm_allreduce_f64(vals, n * k, COMM_SUM, what);   // x + 0 + ... + 0 = x: exact
    }
    for (int j = 0; j < k; j++) sums[j] = 0.0;
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < k; j++) sums[j] += vals[i * k + j];
}

size_t comm_allgatherv_f32(const float *mine, size_t n_mine, float *all, size_t all_cap, const char *what) {
    if (!collective_begin("allgather", what)) {
        if (n_mine > all_cap) die(EXIT_RUNTIME, "internal error: allgather (%s) of %zu floats into %zu", what, n_mine, all_cap);
        if (n_mine) memmove(all, mine, n_mine * sizeof(float));
        return n_mine;
    }
#ifdef SAFE_MPI
    // every rank's count first, then the parts at their offsets in rank order
    int W = info.world;
    int64_t mine64 = (int64_t)n_mine, *counts64 = xmalloc(W * sizeof(int64_t));
    MPI_Request req;
    CHECK_MPI(MPI_Iallgather(&mine64, 1, MPI_INT64_T, counts64, 1, MPI_INT64_T, MPI_COMM_WORLD, &req), "allgather", what);
    comm_wait(&req, "allgather", what);
    int *counts = xmalloc(W * sizeof(int)), *displs = xmalloc(W * sizeof(int));
    int64_t total = 0;
    for (int r = 0; r < W; r++) {
        if (total + counts64[r] > INT_MAX)
            die(EXIT_RUNTIME, "rank %d: allgather (%s): %lld floats in all is more than one MPI call carries",
                info.rank, what, (long long)(total + counts64[r]));
        counts[r] = (int)counts64[r];
        displs[r] = (int)total;
        total += counts64[r];
    }
    if ((size_t)total > all_cap)
        die(EXIT_RUNTIME, "internal error: allgather (%s) of %lld floats into %zu", what, (long long)total, all_cap);
    CHECK_MPI(MPI_Iallgatherv(mine, (int)n_mine, MPI_FLOAT, all, counts, displs, MPI_FLOAT, MPI_COMM_WORLD, &req),
              "allgather", what);
    comm_wait(&req, "allgather", what);
    free(counts64);
    free(counts);
    free(displs);
    return (size_t)total;
#else
    (void)mine; (void)all; (void)all_cap;
    return 0;
#endif
}

void comm_bcast(void *buf, size_t bytes, int root, const char *what) {
    if (!collective_begin("broadcast", what) || bytes == 0) return;
#ifdef SAFE_MPI
    char *p = buf;
    for (size_t off = 0; off < bytes; off += (size_t)1 << 30) {
        int m = (int)(bytes - off < ((size_t)1 << 30) ? bytes - off : ((size_t)1 << 30));
        MPI_Request req;
        CHECK_MPI(MPI_Ibcast(p + off, m, MPI_BYTE, root, MPI_COMM_WORLD, &req), "broadcast", what);
        comm_wait(&req, "broadcast", what);
    }
#else
    (void)buf; (void)root;
#endif
}

void comm_barrier(const char *what) {
    if (!collective_begin("barrier", what)) return;
#ifdef SAFE_MPI
    MPI_Request req;
    CHECK_MPI(MPI_Ibarrier(MPI_COMM_WORLD, &req), "barrier", what);
    comm_wait(&req, "barrier", what);
#endif
}

void comm_finalize(void) {
    if (finalized) return;
#ifdef SAFE_MPI
    if (info.mpi && info.world > 1) {
        // The end of the run, after rank 0 has written its outputs. Rank 0 waits for the
        // others at most the comm timeout: a peer stopped or cut off after the last
        // collective would otherwise hold the whole job in MPI_Finalize. The others wait for
        // rank 0 without a limit, however long a big checkpoint takes to write (a timeout
        // would kill rank 0 mid-write); a rank 0 that dies meanwhile takes the job down
        // through the launcher or MPI_Abort.
        int r;
        if (env_count("SAFE_TEST_STALL_END_RANK", &r) && r == info.rank) {
            fprintf(stderr, "%s: rank %d: SAFE_TEST_STALL_END_RANK: stalling forever at the end of the run\n",
                    safe_progname, info.rank);
            for (;;) pause();
        }
        MPI_Request req;
        CHECK_MPI(MPI_Ibarrier(MPI_COMM_WORLD, &req), "barrier", "the end of the run");
        comm_wait_for(&req, info.rank == 0 ? info.timeout : 0, "barrier", "the end of the run");
    }
    finalized = 1;   // only now: a timeout above still takes the job down (on_exit_abort)
    if (info.mpi) MPI_Finalize();
#else
    finalized = 1;
#endif
}

// same[i] = 1 when every rank holds the same 64-bit hash h[i] (n of them; a collective: every
// rank must call it). Max of h and of -h: equal on every rank iff every rank's h is the same;
// compared as two 32-bit halves in doubles (exact), so one f64 max-reduction carries them all.
static void same_hashes_everywhere(const uint64_t *h, int n, int *same, const char *what) {
    double *x = xmalloc((size_t)n * 4 * sizeof(double));
    for (int i = 0; i < n; i++) {
        double hi = (double)(h[i] >> 32), lo = (double)(h[i] & 0xffffffffULL);
        x[4 * i] = hi, x[4 * i + 1] = lo, x[4 * i + 2] = -hi, x[4 * i + 3] = -lo;
    }
    comm_allreduce_f64(x, (size_t)n * 4, COMM_MAX, what);
    for (int i = 0; i < n; i++) {
        double hi = (double)(h[i] >> 32), lo = (double)(h[i] & 0xffffffffULL);
        same[i] = x[4 * i] == hi && x[4 * i + 1] == lo && -x[4 * i + 2] == hi && -x[4 * i + 3] == lo;
    }
    free(x);
}

static int same_hash_everywhere(uint64_t h, const char *what) {
    int same;
    same_hashes_everywhere(&h, 1, &same, what);
    return same;
}

void comm_check_same_hashes(const uint64_t *h, int n, const char *const *names) {
    if (info.world == 1) return;
    int *same = xmalloc((size_t)n * sizeof(int));
    same_hashes_everywhere(h, n, same, "the ranks' inputs");
    char list[1024] = "";
    size_t len = 0;
    for (int i = 0; i < n && len < sizeof list; i++)
        if (!same[i]) len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", len ? ", " : "", names[i]);
    free(same);
    if (len)
        die(EXIT_RUNTIME, "rank %d: the ranks hold different %s: every rank must read the same files (a shared "
            "filesystem) and run the same build", info.rank, list);
}

void comm_check_same(const void *buf, size_t bytes, const char *what) {
    if (info.world == 1) return;
    if (!same_hash_everywhere(comm_hash(buf, bytes), what))
        die(EXIT_RUNTIME, "rank %d: %s differs between ranks: every rank must read the same files (a shared "
            "filesystem) and run the same build", info.rank, what);
}

void comm_check_same_args(int argc, char **argv) {
    if (info.world == 1) return;
    uint64_t h = 0;
    for (int i = 1; i < argc; i++) h = (h * 0x100000001b3ULL) ^ comm_hash(argv[i], strlen(argv[i]) + 1);
    if (!same_hash_everywhere(h, "the command line"))
        die(EXIT_USAGE, "rank %d: the ranks were started with different options; give every rank the same "
            "command line", info.rank);
}

void comm_dump_grads(int step, int n, const char *const *names, const float *const *bufs, const size_t *lens) {
    const char *dir = getenv("SAFE_DUMP_GRADS");
    if (!dir || !*dir || info.rank != 0) return;
    StTensor *t = xcalloc(n, sizeof(StTensor));
    for (int i = 0; i < n; i++)
        t[i] = (StTensor){.name = names[i], .data = bufs[i], .ndim = 1, .shape = {(int64_t)lens[i]}};
    char path[4096];
    snprintf(path, sizeof path, "%s/%s-step-%04d.safetensors", dir, safe_progname, step);
    safetensors_write(path, t, n, NULL, NULL, 0);
    free(t);
}
