// test_comm.c — lib/comm.c: slices, hashes and the collectives.
//
// Run alone (make test) it checks world size 1: every collective is a no-op or a copy. Run
// under mpirun (tests/test_dp.sh: mpirun -np 3 test_comm) it checks the collectives across
// the ranks; rank 0 prints the PASS/FAIL lines, a check fails when it fails on any rank.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"     // the module under test
#include "common.h"   // xmalloc
#include "test.h"

// A failure on any rank is a failure on rank 0, which prints it.
static void agree(void) {
    double f = test_failed_now;
    comm_allreduce_f64(&f, 1, COMM_MAX, "test verdict");
    test_failed_now = f > 0;
}

// ---- world size 1 ----

TEST(single_rank_slices_everything) {
    size_t b, e;
    comm_slice(7, &b, &e);
    CHECK(b == 0 && e == 7, "slice [%zu, %zu)", b, e);
    CHECK(comm_rank() == 0 && comm_world() == 1, "rank %d world %d", comm_rank(), comm_world());
    CHECK(strcmp(comm_info()->source, "single") == 0, "source %s", comm_info()->source);
}

TEST(single_rank_collectives_are_identities) {
    float x[3] = {1.5f, -2.0f, 0.25f};
    double d[2] = {3.0, -1.0};
    comm_allreduce_f32(x, 3, COMM_SUM, "x");
    comm_allreduce_f64(d, 2, COMM_AVG, "d");
    CHECK(x[0] == 1.5f && x[1] == -2.0f && x[2] == 0.25f, "x %g %g %g", x[0], x[1], x[2]);
    CHECK(d[0] == 3.0 && d[1] == -1.0, "d %g %g", d[0], d[1]);
    float all[4] = {0};
    size_t n = comm_allgatherv_f32(x, 3, all, 4, "gather");
    CHECK(n == 3 && all[0] == 1.5f && all[2] == 0.25f && all[3] == 0, "n %zu", n);
    comm_bcast(d, sizeof d, 0, "bcast");
    comm_barrier("barrier");
    comm_check_same(x, sizeof x, "x");   // returns: nothing to compare with
    CHECK(d[0] == 3.0, "bcast changed d");
}

TEST(hash_sees_every_byte) {
    unsigned char buf[37];
    for (int i = 0; i < 37; i++) buf[i] = (unsigned char)i;
    uint64_t h = comm_hash(buf, sizeof buf);
    int same = 0;
    for (int i = 0; i < 37; i++) {
        buf[i] ^= 1;
        same += comm_hash(buf, sizeof buf) == h;
        buf[i] ^= 1;
    }
    CHECK(same == 0, "%d one-bit changes kept the hash", same);
    CHECK(comm_hash(buf, 36) != h, "length not hashed");
}

// ---- several ranks (under mpirun) ----

TEST(mpi_slices_cover_the_batch_in_rank_order) {
    // every rank's [b, e) of n, gathered in rank order, must be 0..n exactly once
    int W = comm_world();
    for (size_t n = (size_t)W; n < (size_t)W + 5; n++) {
        size_t b, e;
        comm_slice(n, &b, &e);
        float mine[2] = {(float)b, (float)e}, *all = xmalloc(2 * W * sizeof(float));
        comm_allgatherv_f32(mine, 2, all, 2 * W, "slices");
        CHECK(all[0] == 0 && all[2 * W - 1] == (float)n, "n %zu: first %g last %g", n, all[0], all[2 * W - 1]);
        for (int r = 1; r < W; r++) CHECK(all[2 * r] == all[2 * r - 1], "n %zu: rank %d starts at %g, not %g", n, r, all[2 * r], all[2 * r - 1]);
        for (int r = 0; r < W; r++) CHECK(all[2 * r + 1] > all[2 * r], "n %zu: rank %d has an empty slice", n, r);
        free(all);
    }
}

TEST(mpi_sums_are_exact_and_identical_everywhere) {
    // integers sum exactly; a float sum in double rounds once, the same bits on every rank
    int r = comm_rank(), W = comm_world();
    size_t n = ((size_t)1 << 20) + 3;   // more than one chunk
    float *x = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(r + 1) + (float)(i % 5);
    comm_allreduce_f32(x, n, COMM_SUM, "sum");
    double want0 = W * (W + 1) / 2.0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad += x[i] != (float)(want0 + W * (double)(i % 5));
    CHECK(bad == 0, "%d wrong sums (x[0] = %g, want %g)", bad, x[0], want0);
    float y[3] = {0.1f * (r + 1), 1e-8f * (r + 1), 1.0f / (r + 3)};
    comm_allreduce_f32(y, 3, COMM_AVG, "avg");
    double want = 0;
    for (int k = 0; k < W; k++) want += 0.1f * (k + 1);
    CHECK(fabs(y[0] - want / W) < 1e-7, "avg %g want %g", y[0], want / W);
    comm_check_same(y, sizeof y, "averaged floats");   // dies when the ranks disagree
    free(x);
}

TEST(mpi_max_min_and_doubles) {
    int r = comm_rank(), W = comm_world();
    double d[3] = {r, -r, 0.5 * r};
    double mx[1] = {r * 1.5}, mn[1] = {r * 1.5};
    comm_allreduce_f64(d, 3, COMM_SUM, "sum");
    comm_allreduce_f64(mx, 1, COMM_MAX, "max");
    comm_allreduce_f64(mn, 1, COMM_MIN, "min");
    double s = W * (W - 1) / 2.0;
    CHECK(d[0] == s && d[1] == -s && d[2] == 0.5 * s, "sums %g %g %g", d[0], d[1], d[2]);
    CHECK(mx[0] == (W - 1) * 1.5 && mn[0] == 0, "max %g min %g", mx[0], mn[0]);
}

TEST(mpi_gather_uneven_parts) {
    // rank r contributes r + 1 values r*10 + k; one rank contributes none when r == 1
    int r = comm_rank(), W = comm_world();
    int mine_n = r == 1 ? 0 : r + 1;
    float mine[16];
    for (int k = 0; k < mine_n; k++) mine[k] = (float)(r * 10 + k);
    float all[256];
    size_t n = comm_allgatherv_f32(mine, (size_t)mine_n, all, 256, "uneven");
    size_t at = 0;
    int bad = 0;
    for (int q = 0; q < W; q++)
        for (int k = 0; k < (q == 1 ? 0 : q + 1); k++) bad += all[at++] != (float)(q * 10 + k);
    CHECK(n == at && bad == 0, "n %zu want %zu, %d wrong", n, at, bad);
}

TEST(mpi_broadcast_from_any_root) {
    int r = comm_rank(), W = comm_world();
    char msg[32];
    snprintf(msg, sizeof msg, "from rank %d", r);
    comm_bcast(msg, sizeof msg, W - 1, "message");
    char want[32];
    snprintf(want, sizeof want, "from rank %d", W - 1);
    CHECK(strcmp(msg, want) == 0, "got '%s'", msg);
    comm_barrier("barrier");
}

int main(void) {
    safe_progname = "test_comm";
    comm_init(30);
    if (comm_world() == 1) {
        RUN(single_rank_slices_everything);
        RUN(single_rank_collectives_are_identities);
        RUN(hash_sees_every_byte);
    } else {
#define RUN_MPI(name) do { test_failed_now = 0; name(); agree(); \
        if (comm_rank() == 0) { if (test_failed_now) { tests_failed++; printf("FAIL %s\n", #name); } \
                                else { tests_passed++; printf("PASS %s\n", #name); } fflush(stdout); } } while (0)
        RUN_MPI(mpi_slices_cover_the_batch_in_rank_order);
        RUN_MPI(mpi_sums_are_exact_and_identical_everywhere);
        RUN_MPI(mpi_max_min_and_doubles);
        RUN_MPI(mpi_gather_uneven_parts);
        RUN_MPI(mpi_broadcast_from_any_root);
    }
    int rc = test_summary();
    comm_finalize();
    return rc;
}
