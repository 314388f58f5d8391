// ranks.h — how many processes a launcher started and which one this is, read from the
// environment alone (no MPI). comm.c builds its ranks on it; the tools that run as one
// process (safe-rollout, safe-score, safe-pid, ...) call ranks_require_one so that a launcher
// starting several copies of them (mpirun -np 2 safe-rollout, LAUNCH="srun -n2") stops at
// once instead of writing the same output several times over.
//
// The sources, as comm.h lists them: an MPI launcher (OMPI_COMM_WORLD_SIZE/RANK, PMI_SIZE/
// PMI_RANK, MV2_COMM_WORLD_SIZE/RANK, PMIX_RANK), an srun step (SLURM_STEP_NUM_TASKS with
// SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; a batch script's own shell has no step and is
// one process), RANK/WORLD_SIZE/LOCAL_RANK.
#ifndef SAFE_RANKS_H
#define SAFE_RANKS_H

typedef struct {
    int rank, world, local_rank;
    const char *source;   // "single", "mpi", "slurm", "env"
    const char *what;     // the variables it came from, for messages ("" for single)
} EnvRanks;

// Integer environment variable (a count or an index): 1 and *out when set, 0 when unset or
// empty; dies (exit 1) when it is not a whole number from 0 to INT_MAX.
int env_count(const char *name, int *out);
// The variable an MPI launcher set, or NULL.
const char *ranks_mpi_launcher_var(void);
// Ranks named by srun or RANK/WORLD_SIZE (no MPI launcher): world 1 when neither. Dies
// (exit 1) on inconsistent values (a rank not below the world, WORLD_SIZE without RANK).
EnvRanks ranks_from_env(void);
// This process as any launcher started it, MPI launchers included (world as far as their
// variables tell: PMIx alone gives the rank, so world >= rank + 1).
EnvRanks ranks_launched(void);
// Stop (exit 1) when a launcher started this program as one of several ranks: it is not
// data parallel. `instead` says what to do (one process per shard, say).
void ranks_require_one(const char *instead);

#endif
