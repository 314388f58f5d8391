// comm_nccl.h — NCCL collectives on CUDA buffers over the ranks of comm.h (one GPU per rank).
//
// Built with -DSAFE_NCCL when the Makefile finds nvcc and nccl.h (NCCL=1, the default when
// CUDA is built); otherwise these functions exist and stop with a hint, so callers need no
// #ifdef. Only the GPU paths use this file, so the CPU tools do not link libnccl.
//
//   comm_init(timeout);          // ranks (comm.h)
//   comm_nccl_init();            // picks the GPU, builds the communicator
//   comm_nccl_allreduce_f32(grads_dev, n, COMM_SUM, stream, "policy gradients");
//   comm_nccl_finalize();
//
// Overlap with the backward (backend.c): the gradients are summed in buckets, contiguous
// slices of the device buffer that the backward has finished (one or more layers, from the
// last layer down), each issued with comm_nccl_allreduce_f32_start on a second stream
// (cuda_comm_stream) after an event on the compute stream, so the sums run while the earlier
// layers' backward computes; comm_nccl_wait then waits for all of them. Buckets split
// nothing NCCL sums together, so the result is the one-call all-reduce's up to fp32
// summation order (bit for bit with 2 ranks: a + b is a + b in any algorithm).
//
// The communicator's unique id comes from rank 0: broadcast over MPI when MPI is up (mpirun,
// srun --mpi=pmix), else through the file $SAFE_NCCL_ID_FILE on a filesystem every rank sees
// (rank 0 writes it atomically, the others wait for it up to the timeout, rank 0 removes it
// once every rank has joined; use a fresh path per job, e.g. one with $SLURM_JOB_ID in it).
// World size 1 needs neither and still builds a real one-rank communicator.
//
// Timeouts: the communicator is non-blocking (ncclConfig_t.blocking = 0); every call is polled
// (ncclCommGetAsyncError, cudaStreamQuery) up to the comm timeout, then the communicator is
// aborted and the rank exits 3 with the same message as the CPU collectives.
// Determinism: NCCL's ring and tree all-reduces give every rank the same result for a fixed
// world size and topology; the order differs from the CPU path's (fp32 rounding).
#ifndef SAFE_COMM_NCCL_H
#define SAFE_COMM_NCCL_H

#include <stddef.h>

#include "comm.h"   // CommOp, the ranks

int comm_nccl_built(void);        // 1 when this build has NCCL
// The GPU is $SAFE_CUDA_DEVICE when set, else local_rank modulo the visible GPU count.
void comm_nccl_init(void);
int comm_nccl_device(void);       // -1 before comm_nccl_init
// dev (n floats in this rank's GPU memory) → op over the ranks, in place, enqueued on
// `stream` (a cudaStream_t; NULL = the legacy default stream). Returns once the result is in
// dev. COMM_AVG is ncclAvg.
void comm_nccl_allreduce_f32(float *dev, size_t n, CommOp op, void *stream, const char *what);
// The same all-reduce, issued without waiting for it: returns once NCCL has accepted it
// (enqueued on `stream`), before it has run. dev must not be read or written until
// comm_nccl_wait(stream) returns. Every rank must issue the same all-reduces (sizes, ops) in
// the same order, as with every collective.
void comm_nccl_allreduce_f32_start(float *dev, size_t n, CommOp op, void *stream, const char *what);
// Wait until everything issued on `stream` has completed: the same polling, deadline (the
// comm timeout) and messages as comm_nccl_allreduce_f32, `what` naming the batch of calls.
void comm_nccl_wait(void *stream, const char *what);
void comm_nccl_finalize(void);

#endif
