// comm.h — ranks and collectives for data-parallel training (safe-update, safe-critic).
//
// One process per rank. Every rank runs the same program on the same inputs and takes its
// slice of each minibatch by record index; gradients and loss statistics are summed over the
// ranks, so every rank applies the identical optimiser step and rank 0 writes the outputs.
//
// Where the ranks come from (comm_init), first match wins:
//   1. an MPI launcher (mpirun/mpiexec, srun --mpi=pmix|pmi2: OMPI_COMM_WORLD_SIZE, PMIX_RANK,
//      PMI_RANK/PMI_SIZE in the environment) in a build with MPI: MPI_Init, rank and world
//      from MPI_COMM_WORLD; the collectives below run over MPI.
//   2. an srun task (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_STEP_ID): rank/world/
//      local rank from Slurm, no MPI.
//   3. RANK and WORLD_SIZE (LOCAL_RANK optional), as torchrun sets them: no MPI.
//   4. none of them: one rank (world 1), no MPI; every collective is a no-op copy, so the
//      tools run standalone exactly as before.
// In cases 2 and 3 there is no transport for CPU buffers: a collective on a CPU buffer with
// world > 1 stops with a hint to launch under MPI. The NCCL path (comm_nccl.h) works there,
// with its id exchanged through a file on a shared filesystem (SAFE_NCCL_ID_FILE).
//
// Timeouts: every collective is non-blocking (MPI_Ireduce, MPI_Ibcast, MPI_Ibarrier, ...)
// polled with MPI_Test up to a deadline (--comm-timeout S or $SAFE_COMM_TIMEOUT, default
// 300 s). A rank that waits longer exits 3 with "rank N: collective X timed out after S s: a
// peer rank probably died", and takes the job down (MPI_Abort) instead of hanging.
// Dying: once MPI is up, any exit that does not go through comm_finalize() (die(), exit())
// runs the other exit handlers (temporary files removed) and then MPI_Abort with the exit
// status, so one failing rank stops all of them.
//
// Determinism: sums are reduced in double at rank 0 (a fixed reduction order for a given
// world size) and the result is broadcast, so every rank holds the same bits. The CPU tools
// reduce gradients that are already double sums of per-sequence terms (model.h) and divide
// their means by the global token count, so N ranks reproduce 1 rank's step up to the
// rounding of double sums (bit-identical in tests/test_dp.sh); comm_record_sum makes
// per-record scalar sums (EPC's κ) exactly rank-count independent.
//
// Test hooks (used by tests/test_dp.sh): SAFE_TEST_KILL_RANK=N makes rank N kill itself
// (SIGKILL) just before its first collective; SAFE_TEST_STALL_RANK=N makes it stop there
// forever (a hung or cut-off peer), so the other ranks hit the timeout;
// SAFE_TEST_STALL_END_RANK=N stops rank N in comm_finalize, after the last collective.
#ifndef SAFE_COMM_H
#define SAFE_COMM_H

#include <stddef.h>
#include <stdint.h>

#define COMM_DEFAULT_TIMEOUT 300.0

typedef enum { COMM_SUM = 0, COMM_AVG, COMM_MAX, COMM_MIN } CommOp;

typedef struct {
    int rank, world;               // this process, number of ranks
    int local_rank, local_world;   // on this machine (picks the GPU)
    const char *source;            // "single", "mpi", "slurm", "env"
    int mpi;                       // 1: MPI is initialised and carries the collectives
    double timeout;                // seconds a collective may wait for its peers
} CommInfo;

// Set up the ranks (see above). timeout_s > 0 sets the collective timeout; <= 0 takes
// $SAFE_COMM_TIMEOUT or the default. Call once, after option parsing (so --help and usage
// errors need no MPI), before reading inputs. Dies (exit 1) on inconsistent settings.
void comm_init(double timeout_s);
const CommInfo *comm_info(void);   // world 1 until comm_init
int comm_rank(void);
int comm_world(void);
// The end of the run: a barrier, then MPI_Finalize. The other ranks wait there, untimed, for
// rank 0 to finish writing; rank 0, whose outputs are written, waits for them at most the
// comm timeout (a peer stopped after the last collective: exit 3, outputs complete). Call it
// before returning 0 from main: exiting without it counts as a failure (MPI_Abort).
void comm_finalize(void);
// "MPI" when this build has MPI, else "none" (for --version and the build report).
const char *comm_backend(void);

// This rank's part [*begin, *end) of n items: [r·n/W, (r+1)·n/W). Uneven n gives slices that
// differ by one, in rank order; concatenating the slices of all ranks gives 0..n.
void comm_slice(size_t n, size_t *begin, size_t *end);

// x (n) on every rank → op over the ranks, on every rank. Floats are summed in double.
// `what` names the collective in error messages ("policy gradients").
void comm_allreduce_f32(float *x, size_t n, CommOp op, const char *what);
void comm_allreduce_f64(double *x, size_t n, CommOp op, const char *what);
// Column sums of vals (n, k: k values per record of a minibatch) in record order, into
// sums (k), where this rank computed records [b0, b1) (its comm_slice) and the other ranks
// the rest: the rows outside [b0, b1) are taken from their ranks (an all-reduce of rows that
// are zero elsewhere, which is exact), so every rank gets the bits one rank gets summing the
// whole table. vals is overwritten with the whole table.
void comm_record_sums(double *vals, size_t n, int k, size_t b0, size_t b1, double *sums, const char *what);
// mine (n_mine floats, any count per rank) → all: every rank's part concatenated in rank
// order (all holds the sum of the counts). Returns that total.
size_t comm_allgatherv_f32(const float *mine, size_t n_mine, float *all, size_t all_cap, const char *what);
// buf (bytes) from rank `root` to every rank.
void comm_bcast(void *buf, size_t bytes, int root, const char *what);
void comm_barrier(const char *what);
// Stop (exit 3, naming `what`) unless every rank holds the same bytes (compares a 64-bit
// hash): catches ranks that loaded different files or drifted apart.
void comm_check_same(const void *buf, size_t bytes, const char *what);
uint64_t comm_hash(const void *buf, size_t bytes);   // FNV-1a 64
// The same for n hashes at once (one collective), naming each one that differs: stops (exit
// 3) with "the ranks hold different NAME, NAME: ..." when any does.
void comm_check_same_hashes(const uint64_t *h, int n, const char *const *names);
// Stop (exit 1) unless every rank was started with the same command line (argv[1..]): ranks
// given different options (an MPMD launch, a typo in a host file) would take different steps.
void comm_check_same_args(int argc, char **argv);

// $SAFE_DUMP_GRADS=DIR: rank 0 writes the summed gradients of optimiser step `step` (0, 1,
// ...) to DIR/<program>-step-NNNN.safetensors, one flat tensor per buffer, to compare runs
// with different rank counts (tests/test_dp.sh). Nothing when unset.
void comm_dump_grads(int step, int n, const char *const *names, const float *const *bufs, const size_t *lens);

// Parse a --comm-timeout argument (seconds > 0); dies with exit 1 otherwise.
double comm_parse_timeout(const char *s);

#endif
