// backend.c — the CPU and CUDA engines behind backend.h. The CPU branch of every function is
// exactly the code the tools ran before the backend existed.
#include "backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"        // comm_world, comm_info, comm_allreduce_f32
#include "comm_nccl.h"   // comm_nccl_*: all-reduce of device gradients
#include "common.h"      // die, xmalloc, exit codes
#include "lora.h"        // lora_merge: the adapter's weights after a step

#ifdef SAFE_CUDA
#include "cuda_backend.h"   // cuda_device_count, cuda_init
#include "cuda_model.h"     // CudaModel, cuda_generate
#endif

struct Backend {
    Device dev;
    Model *m;
    const char *who;
    float *before;      // CPU step limit: the weights before the step (an adapter's on either device)
    float *full;        // cuda with an adapter: the device's weight gradients on the host (n_params)
#ifdef SAFE_CUDA
    CudaModel *cm;
    int32_t *rows, *targets;   // (n_resp) predicting positions and response tokens of the last batch
    size_t cap;
    int nccl_up;
    int route;          // -1 not decided yet, else a GradRoute: how the gradients cross the ranks
    int overlap;        // -1 not decided yet, 0 one all-reduce after the backward, 1 during it
    size_t bucket_min;  // floats per all-reduce bucket, at least (SAFE_NCCL_BUCKET_MB)
#endif
};

int device_cuda_built(void) {
#ifdef SAFE_CUDA
    return 1;
#else
    return 0;
#endif
}

int device_cuda_available(void) {
#ifdef SAFE_CUDA
    return cuda_device_count() > 0;
#else
    return 0;
#endif
}

const char *device_name(Device d) { return d == DEVICE_CUDA ? "cuda" : "cpu"; }

Device device_select(const char *opt) {
    const char *v = opt;
    if (!v) {
        v = getenv("SAFE_DEVICE");
        if (v && !*v) v = NULL;
    }
    if (!v || strcmp(v, "auto") == 0) return device_cuda_available() ? DEVICE_CUDA : DEVICE_CPU;
    if (strcmp(v, "cpu") == 0) return DEVICE_CPU;
    if (strcmp(v, "cuda") != 0)
        die(EXIT_USAGE, "--device must be cpu, cuda or auto, got '%s'%s", v, opt ? "" : " (from $SAFE_DEVICE)");
    if (!device_cuda_built())
        die(EXIT_USAGE, "--device cuda: this build has no CUDA backend (nvcc was not found, or CUDA=0): rebuild "
                        "with nvcc on the PATH, or use --device cpu");
    if (!device_cuda_available())
        die(EXIT_USAGE, "--device cuda: no CUDA GPU is visible (cudaGetDeviceCount = 0; check the driver and "
                        "CUDA_VISIBLE_DEVICES), or use --device cpu");
    return DEVICE_CUDA;
}

Backend *backend_create(Model *m, Device d, const char *who, int quiet) {
    Backend *bk = xcalloc(1, sizeof(Backend));
    bk->dev = d;
    bk->m = m;
    bk->who = who;
#ifdef SAFE_CUDA
    bk->route = -1;
    bk->overlap = -1;
#endif
    if (d == DEVICE_CUDA) {
#ifdef SAFE_CUDA
        // one GPU per rank: local rank modulo the visible GPUs, the rule comm_nccl uses
        const CommInfo *ci = comm_info();
        if (ci->world > 1 && !getenv("SAFE_CUDA_DEVICE")) {
            char buf[16];
            snprintf(buf, sizeof buf, "%d", ci->local_rank % cuda_device_count());
            setenv("SAFE_CUDA_DEVICE", buf, 1);
        }
        bk->cm = cuda_model_create(m);
        if (!quiet) cuda_model_report(bk->cm, stderr, who);
#else
        (void)quiet;
        die(EXIT_USAGE, "%s: this build has no CUDA backend", who);
#endif
    }
    return bk;
}

void backend_free(Backend *bk) {
    if (!bk) return;
#ifdef SAFE_CUDA
    cuda_model_free(bk->cm);
    free(bk->rows);
    free(bk->targets);
#endif
    free(bk->before);
    free(bk->full);
    free(bk);
}

Device backend_device(const Backend *bk) { return bk->dev; }

// Whether the optimiser works on the host: on the CPU, and for an adapter on either device
// (cuda: the adapter's gradients come to the host from the device's weight gradients).
static int host_trains(const Backend *bk) { return bk->dev == DEVICE_CPU || bk->m->lora != NULL; }

// After the host changed what trains (a step, a blend): an adapter's merged weights, and on
// cuda their upload (the whole model: compiled and emulator-checked, not yet timed on a GPU).
static void host_weights_changed(Backend *bk) {
    lora_merge(bk->m);
#ifdef SAFE_CUDA
    if (bk->dev == DEVICE_CUDA) cuda_model_upload(bk->cm, bk->m);
#endif
}

#ifdef SAFE_CUDA
// positions that predict each response token (packed order) and the tokens themselves
static void cuda_rows(Backend *bk, const SeqBatch *sb) {
    size_t n = sb->n_resp;
    if (n > bk->cap) {
        free(bk->rows);
        free(bk->targets);
        bk->rows = xmalloc(n * sizeof(int32_t));
        bk->targets = xmalloc(n * sizeof(int32_t));
        bk->cap = n;
    }
    for (int b = 0; b < sb->B; b++)
        for (int t = 0; t < sb->resp_len[b]; t++) {
            size_t i = sb->resp_off[b] + t;
            bk->rows[i] = (int32_t)seqbatch_pred_index(sb, b, t);
            bk->targets[i] = sb->tokens[(size_t)b * sb->T + sb->P + t];
        }
    if ((size_t)sb->B * sb->T > 0x7fffffff) die(EXIT_USAGE, "%s: batch of %d x %d tokens is too large", bk->who, sb->B, sb->T);
}
#endif

void backend_logprobs(Backend *bk, const SeqBatch *sb, float temp, float *logp, float *entropy) {
    if (bk->dev == DEVICE_CPU) {
        seqbatch_logprobs(bk->m, sb, temp, logp, entropy);
        return;
    }
#ifdef SAFE_CUDA
    cuda_rows(bk, sb);
    cuda_model_forward(bk->cm, sb->tokens, sb->mask, sb->B, sb->T);
    cuda_model_logprob_rows(bk->cm, (int)sb->n_resp, bk->rows, bk->targets, temp, logp, entropy);
#endif
}

void backend_logprobs_backward(Backend *bk, const SeqBatch *sb, float temp, const float *dlogp,
                               const float *dentropy) {
    if (bk->dev == DEVICE_CPU) {
        seqbatch_logprobs_backward(bk->m, sb, temp, dlogp, dentropy);
        return;
    }
#ifdef SAFE_CUDA
    (void)sb;
    (void)temp;   // the forward's (kept with its softmax statistics)
    if (sb->n_resp) cuda_model_logprob_rows_backward(bk->cm, dlogp, dentropy);
#endif
}

void backend_hidden(Backend *bk, const SeqBatch *sb, float *hidden) {
    if (bk->dev == DEVICE_CPU) {
        model_forward(bk->m, sb->tokens, sb->mask, sb->B, sb->T, 0);
        seqbatch_gather(sb, bk->m->hidden, bk->m->cfg.dim, hidden);
        return;
    }
#ifdef SAFE_CUDA
    cuda_rows(bk, sb);
    cuda_model_forward(bk->cm, sb->tokens, sb->mask, sb->B, sb->T);
    cuda_model_hidden_rows(bk->cm, (int)sb->n_resp, bk->rows, hidden);
#endif
}

void backend_hidden_backward(Backend *bk, const SeqBatch *sb, const float *dhidden) {
    if (bk->dev == DEVICE_CPU) {
        int C = bk->m->cfg.dim;
        float *full = xcalloc((size_t)sb->B * sb->T * C, sizeof(float));
        seqbatch_scatter(sb, dhidden, C, full);
        model_backward(bk->m, NULL, full);
        free(full);
        return;
    }
#ifdef SAFE_CUDA
    cuda_rows(bk, sb);
    cuda_model_hidden_rows_backward(bk->cm, (int)sb->n_resp, bk->rows, dhidden);
#endif
}

#ifdef SAFE_CUDA
static void nccl_ready(Backend *bk) {
    if (bk->nccl_up) return;
    comm_nccl_init();
    bk->nccl_up = 1;
}

// How the device gradients cross the ranks: not at all (one rank), over NCCL on the device
// (several ranks in a build with NCCL; SAFE_NCCL=1 also with one rank: a real one-rank
// communicator, so one GPU runs this NCCL code, though NCCL's one-rank in-place all-reduce
// does no work on the second stream), or through the host over
// MPI (SAFE_NCCL=0, or a build without NCCL). Decided once, the same on every rank.
typedef enum { ROUTE_NONE = 0, ROUTE_HOST, ROUTE_NCCL } GradRoute;

static GradRoute grad_route(Backend *bk) {
    if (bk->route >= 0) return (GradRoute)bk->route;
    const char *v = getenv("SAFE_NCCL");
    if (v && *v && strcmp(v, "0") != 0 && strcmp(v, "1") != 0)
        die(EXIT_USAGE, "SAFE_NCCL must be 0 (sum the gradients through the host over MPI) or 1 (over NCCL, even "
            "with one rank), or unset (NCCL with several ranks), got '%s'", v);
    int want = v && *v ? v[0] - '0' : -1;
    if (want == 1 && !comm_nccl_built())
        die(EXIT_USAGE, "SAFE_NCCL=1, but this build has no NCCL: rebuild where nvcc and nccl.h exist (NCCL=1), "
            "or unset SAFE_NCCL");
    GradRoute r = ROUTE_NONE;
    if (want == 1) r = ROUTE_NCCL;
    else if (comm_world() > 1) r = want == 0 || !comm_nccl_built() ? ROUTE_HOST : ROUTE_NCCL;
    if (comm_world() > 1) {   // every rank must issue the same collectives
        double h[2] = {(double)r, -(double)r};
        comm_allreduce_f64(h, 2, COMM_MAX, "SAFE_NCCL of the ranks");
        if (h[0] != -h[1])
            die(EXIT_USAGE, "rank %d: SAFE_NCCL differs between the ranks (give every rank the same environment)",
                comm_rank());
    }
    bk->route = (int)r;
    return r;
}

// Whether the gradients are summed during the backward: over NCCL (grad_route) and
// SAFE_NCCL_OVERLAP not 0. Decided once per backend, the same on every rank.
static int overlap_on(Backend *bk) {
    if (bk->overlap >= 0) return bk->overlap;
    bk->overlap = 0;
    if (grad_route(bk) != ROUTE_NCCL) return 0;
    const char *v = getenv("SAFE_NCCL_OVERLAP");
    if (v && *v && strcmp(v, "0") != 0 && strcmp(v, "1") != 0)
        die(EXIT_USAGE, "SAFE_NCCL_OVERLAP must be 0 (one all-reduce after the backward) or 1 (the default: "
            "all-reduces during the backward), got '%s'", v);
    double mb = 16;
    const char *b = getenv("SAFE_NCCL_BUCKET_MB");
    if (b && *b) {
        char *end;
        mb = strtod(b, &end);
        if (*end || !(mb >= 0) || mb > 1e6)
            die(EXIT_USAGE, "SAFE_NCCL_BUCKET_MB must be a number of MiB >= 0 (0: one all-reduce per layer), got '%s'", b);
    }
    int on = !(v && strcmp(v, "0") == 0);
    // every rank must issue the same all-reduces: the settings must agree (one NCCL MAX of
    // (x, -x) gives the largest and the smallest value of each)
    nccl_ready(bk);
    float h[4] = {(float)on, (float)mb, -(float)on, -(float)mb};
    float *d = cuda_malloc(sizeof h, "NCCL settings check");
    cuda_upload(d, h, sizeof h, "NCCL settings check");
    comm_nccl_allreduce_f32(d, 4, COMM_MAX, cuda_comm_stream(), "SAFE_NCCL_OVERLAP and SAFE_NCCL_BUCKET_MB of the ranks");
    cuda_download(h, d, sizeof h, "NCCL settings check");
    cuda_free(d);
    if (h[0] != -h[2] || h[1] != -h[3])
        die(EXIT_USAGE, "rank %d: SAFE_NCCL_OVERLAP or SAFE_NCCL_BUCKET_MB differs between the ranks (give every "
            "rank the same environment)", comm_rank());
    bk->bucket_min = (size_t)(mb * 1048576.0 / sizeof(float));
    bk->overlap = on;
    return on;
}

// cuda_model's bucket hook: the all-reduce (sum) of one finished slice of the gradients on
// the communication stream, after everything enqueued so far on the compute stream; it runs
// while the compute stream goes on with the earlier layers. backend_allreduce_grads waits.
static void nccl_bucket(void *ctx, float *dev, size_t n, const char *what) {
    Backend *bk = ctx;
    char w[160];
    snprintf(w, sizeof w, "%s gradients: %s", bk->who, what);
    cuda_comm_after_compute();
    comm_nccl_allreduce_f32_start(dev, n, COMM_SUM, cuda_comm_stream(), w);
}
#endif

void backend_zero_grad(Backend *bk) {
    if (bk->dev == DEVICE_CPU) {
        model_zero_grad(bk->m);
        return;
    }
#ifdef SAFE_CUDA
    cuda_model_zero_grad(bk->cm);
    // the tools' step is zero, one backward, all-reduce: arm that backward's all-reduces
    if (overlap_on(bk)) {
        nccl_ready(bk);
        cuda_model_overlap_arm(bk->cm, bk->bucket_min, nccl_bucket, bk);
    }
#endif
}

#ifdef SAFE_CUDA
static void device_allreduce(Backend *bk, const char *what);

// cuda with an adapter: the summed weight gradients to the host, the adapter's by the chain rule
static void adapter_grads_to_host(Backend *bk) {
    if (!bk->full) bk->full = xmalloc(bk->m->n_params * sizeof(float));
    cuda_model_download_grads(bk->cm, bk->full);
    lora_grads_from_full(bk->m->lora, bk->m, bk->full);
}
#endif

void backend_allreduce_grads(Backend *bk, const char *what) {
    if (bk->dev == DEVICE_CPU) {
        // the double sums of per-sequence terms (model.h), summed over the ranks in double:
        // the one-rank gradient, whichever records each rank holds
        if (comm_world() <= 1) return;
        Trainable tr = model_trainable(bk->m);
        comm_allreduce_f64(tr.grad_sum, tr.n, COMM_SUM, what);
        model_round_grads(bk->m);
        return;
    }
#ifdef SAFE_CUDA
    device_allreduce(bk, what);
    if (bk->m->lora) adapter_grads_to_host(bk);
#endif
}

#ifdef SAFE_CUDA
// The device gradients summed over the ranks (backend_allreduce_grads on cuda).
static void device_allreduce(Backend *bk, const char *what) {
    GradRoute route = grad_route(bk);
    if (route == ROUTE_NONE) return;
    if (route == ROUTE_NCCL) {
        nccl_ready(bk);
        if (cuda_model_overlap_armed(bk->cm)) {
            cuda_model_overlap_finish(bk->cm);          // the buckets the backward did not hand out
            comm_nccl_wait(cuda_comm_stream(), what);   // all of them summed, or the comm timeout
            cuda_compute_after_comm();                  // the clip and AdamW read the sums
            return;
        }
        size_t n;
        float *g = cuda_model_grads_device(bk->cm, &n);
        cuda_sync(what);   // the backward's kernels are on this process's own stream
        comm_nccl_allreduce_f32(g, n, COMM_SUM, NULL, what);
        return;
    }
    // ROUTE_HOST: the gradients cross the host twice per step
    Model *m = bk->m;
    if (!m->grads) model_zero_grad(m);
    cuda_model_download_grads(bk->cm, m->grads);
    comm_allreduce_f32(m->grads, m->n_params, COMM_SUM, what);
    cuda_model_upload_grads(bk->cm, m->grads);
}
#endif

const float *backend_grads_for_dump(Backend *bk) {
    if (host_trains(bk)) return model_trainable(bk->m).grads;
#ifdef SAFE_CUDA
    const char *d = getenv("SAFE_DUMP_GRADS");
    if (!d || !*d) return NULL;
    if (!bk->m->grads) model_zero_grad(bk->m);
    cuda_model_download_grads(bk->cm, bk->m->grads);
    return bk->m->grads;
#else
    return NULL;
#endif
}

long long backend_first_nonfinite_grad(Backend *bk) {
    if (host_trains(bk)) {
        Trainable tr = model_trainable(bk->m);
        for (size_t i = 0; i < tr.n; i++)
            if (!isfinite(tr.grads[i])) return (long long)i;
        return -1;
    }
#ifdef SAFE_CUDA
    return cuda_model_first_nonfinite_grad(bk->cm);
#else
    return -1;
#endif
}

double backend_clip_grads(Backend *bk, double max_norm) {
    if (host_trains(bk)) {
        Trainable tr = model_trainable(bk->m);
        return grad_clip(tr.grads, tr.n, max_norm);
    }
#ifdef SAFE_CUDA
    double norm = sqrt(cuda_model_grad_sumsq(bk->cm));
    if (max_norm > 0.0 && norm > max_norm) {
        float coef = (float)(max_norm / (norm + 1e-6));   // clip_grad_norm_'s coefficient, as grad_clip
        cuda_model_scale_grads(bk->cm, coef);
    }
    return norm;
#else
    return 0.0;
#endif
}

void backend_scale_grads(Backend *bk, float s) {
    if (host_trains(bk)) {
        Trainable tr = model_trainable(bk->m);
        for (size_t i = 0; i < tr.n; i++) tr.grads[i] *= s;
        return;
    }
#ifdef SAFE_CUDA
    cuda_model_scale_grads(bk->cm, s);
#endif
}

void backend_adamw_step(Backend *bk, AdamW *opt) {
    if (host_trains(bk)) {
        Trainable tr = model_trainable(bk->m);
        adamw_step(opt, tr.params, tr.grads);
        host_weights_changed(bk);   // an adapter: the weights the next forward uses
        return;
    }
#ifdef SAFE_CUDA
    cuda_model_adamw_step(bk->cm, opt);
#endif
}

void backend_snapshot(Backend *bk) {
    if (host_trains(bk)) {
        Trainable tr = model_trainable(bk->m);
        if (!bk->before) bk->before = xmalloc(tr.n * sizeof(float));
        memcpy(bk->before, tr.params, tr.n * sizeof(float));
        return;
    }
#ifdef SAFE_CUDA
    cuda_model_snapshot(bk->cm);
#endif
}

void backend_blend(Backend *bk, float s) {
    if (host_trains(bk)) {
        Trainable tr = model_trainable(bk->m);
        if (!bk->before) die(EXIT_USAGE, "backend_blend without a snapshot");
        for (size_t i = 0; i < tr.n; i++) tr.params[i] = bk->before[i] + s * (tr.params[i] - bk->before[i]);
        host_weights_changed(bk);
        return;
    }
#ifdef SAFE_CUDA
    cuda_model_blend(bk->cm, s);
#endif
}

void backend_sync(Backend *bk, AdamW *opt) {
    if (host_trains(bk)) return;   // the host holds them
#ifdef SAFE_CUDA
    cuda_model_download(bk->cm, bk->m);
    if (opt) cuda_model_adamw_download(bk->cm, opt);
#else
    (void)opt;
#endif
}

void backend_generate(Backend *bk, const GenConfig *cfg, const GenRequest *reqs, int n, GenResult *out,
                      GenDoneFn on_done, void *ctx) {
    if (bk->dev == DEVICE_CPU) {
        generate(bk->m, cfg, reqs, n, out, on_done, ctx);
        return;
    }
#ifdef SAFE_CUDA
    cuda_generate(bk->cm, cfg, reqs, n, out, on_done, ctx);
#endif
}
