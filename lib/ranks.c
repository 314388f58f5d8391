// ranks.c — ranks from the launcher's environment, without MPI (see ranks.h).
#include "ranks.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"   // die

int env_count(const char *name, int *out) {
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end != 0 || v < 0 || v > INT_MAX) die(EXIT_USAGE, "environment variable %s=%s is not a count or index", name, s);
    *out = (int)v;
    return 1;
}

// Open MPI's mpirun, PMIx (Open MPI 5, srun --mpi=pmix), PMI-1/2 (MPICH/Hydra, srun
// --mpi=pmi2), MVAPICH.
const char *ranks_mpi_launcher_var(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK",
                                 "MV2_COMM_WORLD_SIZE", NULL};
    for (int i = 0; vars[i]; i++)
        if (getenv(vars[i])) return vars[i];
    return NULL;
}

EnvRanks ranks_from_env(void) {
    EnvRanks r = {.rank = 0, .world = 1, .local_rank = 0, .source = "single", .what = ""};
    int rank = 0, world = 0, local = 0, steps = 0;
    // An srun task: only srun sets SLURM_STEP_NUM_TASKS (a batch script's own shell also has
    // SLURM_PROCID=0 and the job's SLURM_NTASKS, and must stay a single rank). The step's
    // task count is the world; its SLURM_NTASKS, when set, must agree.
    if (env_count("SLURM_STEP_NUM_TASKS", &steps)) {
        if (!env_count("SLURM_PROCID", &rank))
            die(EXIT_USAGE, "SLURM_STEP_NUM_TASKS=%d is set but SLURM_PROCID is not: an incomplete srun "
                "environment (unset SLURM_STEP_NUM_TASKS to run as one process)", steps);
        if (env_count("SLURM_NTASKS", &world) && world != steps)
            die(EXIT_USAGE, "SLURM_STEP_NUM_TASKS=%d but SLURM_NTASKS=%d: an inconsistent srun environment", steps,
                world);
        env_count("SLURM_LOCALID", &local);
        r.source = "slurm";
        r.what = "SLURM_PROCID/SLURM_STEP_NUM_TASKS";
        world = steps;
    } else if (env_count("WORLD_SIZE", &world)) {
        if (!env_count("RANK", &rank)) die(EXIT_USAGE, "WORLD_SIZE is set but RANK is not: set both (and LOCAL_RANK)");
        env_count("LOCAL_RANK", &local);
        r.source = "env";
        r.what = "RANK/WORLD_SIZE";
    } else {
        if (env_count("RANK", &rank))
            die(EXIT_USAGE, "RANK is set but WORLD_SIZE is not: set both (and LOCAL_RANK), or neither for one process");
        return r;
    }
    if (world < 1 || rank >= world)
        die(EXIT_USAGE, "rank %d is not below the world size %d (from %s)", rank, world, r.what);
    r.rank = rank;
    r.world = world;
    r.local_rank = local;
    return r;
}

EnvRanks ranks_launched(void) {
    static const char *mpi[][2] = {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}, {"PMI_RANK", "PMI_SIZE"},
                                   {"MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"}, {"PMIX_RANK", NULL}};
    for (int i = 0; i < 4; i++) {
        int rank = 0, world = 0;
        int has_rank = env_count(mpi[i][0], &rank);
        int has_world = mpi[i][1] && env_count(mpi[i][1], &world);
        if (!has_rank && !has_world) continue;
        if (!has_world) {   // PMIx gives the rank only: the size from srun's variables, if any
            EnvRanks e = ranks_from_env();
            world = e.world > rank + 1 ? e.world : rank + 1;
        }
        return (EnvRanks){.rank = rank, .world = world, .local_rank = 0, .source = "mpi",
                          .what = mpi[i][1] ? mpi[i][1] : mpi[i][0]};
    }
    return ranks_from_env();
}

void ranks_require_one(const char *instead) {
    EnvRanks r = ranks_launched();
    if (r.world <= 1) return;
    die(EXIT_USAGE, "not data parallel, but started as rank %d of %d (%s): %s", r.rank, r.world, r.what, instead);
}
