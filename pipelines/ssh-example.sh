#!/bin/bash
# ssh-example.sh — a SAFE training run over two machines reached by ssh, without a scheduler.
# make runs here; the rollout/score shards go round robin to the hosts over ssh, and the
# critic and the update run data parallel on both hosts at once through Open MPI's mpirun
# (which itself starts the remote ranks over ssh).
#
#   HOSTS="gpu1 gpu2" RUN=run/two ITERS=20 bash pipelines/ssh-example.sh
#
# Needs: passwordless ssh from here to every host; this repository, built, at the same path
# on every host, and RUN on a filesystem they all share (NFS or similar: every stage reads
# the previous stage's files, and rank 0 of the critic/update writes the next checkpoint);
# Open MPI (openmpi-bin) on every host.
set -euo pipefail

HOSTS=${HOSTS:-"host1 host2"}     # the machines, in round-robin order
SLOTS=${SLOTS:-2}                 # data-parallel ranks per host for the critic and the update
THREADS=${THREADS:-4}             # OpenMP threads per process
RUN=${RUN:-run/ssh}
ITERS=${ITERS:-20}
DIR=$(pwd)                        # the repository root, the same path on every host

read -r -a hosts <<<"$HOSTS"
n_hosts=${#hosts[@]}

# The shards: HOSTS= in safe.mk runs shard K on host K mod n_hosts through pipelines/on-host
# (ssh, the same directory, arguments quoted), which passes OMP_NUM_THREADS on.
export OMP_NUM_THREADS=$THREADS

# LAUNCH_DP: SLOTS ranks on every host; --wdir puts them in the repository on each host, and
# -x passes the variables they need (the collective timeout stops a job whose peer died).
hostlist=$(printf '%s:'"$SLOTS"',' "${hosts[@]}")
ranks=$((SLOTS * n_hosts))
export SAFE_COMM_TIMEOUT=${SAFE_COMM_TIMEOUT:-600}
launch_dp="mpirun -np $ranks -H ${hostlist%,} --wdir $DIR -x OMP_NUM_THREADS=$THREADS -x SAFE_COMM_TIMEOUT"

make -f pipelines/safe.mk -j "$n_hosts" \
    RUN="$RUN" ITERS="$ITERS" SHARDS="$n_hosts" \
    BATCH=16 SAMPLES=4 SEED=1 \
    HOSTS="$HOSTS" \
    LAUNCH_DP="$launch_dp" \
    UPDATE_OPTS="--lr 1e-4" CRITIC_OPTS="--lr 1e-4"
# (make's default target ends with the run's summary: safe-report --summary "$RUN")
