// cuda_generate.c — generate() (lib/generate.c) on the GPU: continuous batching over the
// device KV cache, sampling and log-probs on the device, only a few numbers per row back to
// the host each step.
//
//   loop:
//     refill free cache rows from the queue; prefill them (one batched pass, logits on device)
//     for every row with fresh logits: u from its own Philox stream at its position; sample
//       (kernels/sampler.cu), log-prob and entropy of the drawn token (kernels/logprob.cu);
//       bring back token, status, kept mass, log-prob, entropy (5 words per row)
//     record; finish at EOS or the length limit, freeing the row
//     decode the rows still running (one batched pass)
//
// Randomness is generate()'s: token j of a request uses rng_stream_key(seed, id, sample,
// iteration) at counter = prompt length + j, drawn on the device through philox.h.
#ifdef SAFE_CUDA

#include "cuda_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"         // die, warn, xmalloc
#include "genslots.h"       // slots, request caps, recording: shared with generate.c
#include "cuda_backend.h"   // cuda_sample, cuda_logprob_forward, device memory
#include "progress.h"       // progress bar on stderr

// Row i of the device logits, downloaded for the non-finite report.
typedef struct { const float *lg; int V; float *host; } DeviceRows;
static const float *device_row(void *arg, int i) {
    DeviceRows *d = arg;
    d->host = xmalloc((size_t)d->V * sizeof(float));
    cuda_download(d->host, d->lg + (size_t)i * d->V, (size_t)d->V * sizeof(float), "logits row");
    return d->host;
}

void cuda_generate(CudaModel *cm, const GenConfig *cfg, const GenRequest *reqs, int n, GenResult *out,
                   GenDoneFn on_done, void *ctx) {
    const ModelConfig *mc = cuda_model_config(cm);
    const int V = mc->vocab_size;
    GenSlots g;
    genslots_init(&g, cfg, reqs, n, V, mc->max_seq_len, out, on_done, ctx);
    if (n <= 0) {
        genslots_free(&g);
        return;
    }
    int B = g.B;
    CudaKV *kv = cuda_kv_create(cm, B, g.T_max);
    if (!cfg->quiet)
        fprintf(stderr, "%s: generate (cuda, %s): %d requests, %d rows of up to %d tokens, KV cache %.1f MiB (bf16), logits %.1f MiB\n",
                safe_progname, cuda_device_name(), n, B, g.T_max,
                2.0 * mc->n_layers * B * g.T_max * (mc->n_kv_heads * (mc->dim / mc->n_heads)) * 2 / 1048576.0,
                (double)B * V * sizeof(float) / 1048576.0);
    float *lg = cuda_malloc((size_t)B * V * sizeof(float), "decoding logits");        // (B, V) fresh rows
    uint64_t *kc_dev = cuda_malloc((size_t)B * 2 * sizeof(uint64_t), "sampler streams");  // keys | counters
    int32_t *res_dev = cuda_malloc((size_t)B * 5 * sizeof(int32_t), "sampler results");  // tok|status|kept|logp|ent
    uint64_t *kc = xmalloc((size_t)B * 2 * sizeof(uint64_t));
    int32_t *res = xmalloc((size_t)B * 5 * sizeof(int32_t));
    int *fresh = xmalloc((size_t)B * sizeof(int));
    int *rows = xmalloc((size_t)B * sizeof(int));
    int *lens = xmalloc((size_t)B * sizeof(int));
    int *ones = xmalloc((size_t)B * sizeof(int));
    const int32_t **seqs = xmalloc((size_t)B * sizeof(*seqs));
    int32_t *tok = xmalloc((size_t)B * sizeof(int32_t));
    for (int i = 0; i < B; i++) ones[i] = 1;
    DeviceRows dr = {lg, V, NULL};

    g.prog = progress_start("generate", n, "samples", cfg->quiet);
    progress_extra_unit(g.prog, "tok");
    int nd = 0;   // rows decoded last step (fresh[0..nd))
    for (;;) {
        // refill free rows and prefill them; their logits follow the decoded rows' in lg
        int nf = genslots_refill(&g, nd, rows, seqs, lens, fresh);
        for (int i = 0; i < nf; i++) cuda_kv_reset_row(kv, rows[i]);
        if (nf) cuda_model_extend(cm, kv, nf, rows, seqs, lens, lg + (size_t)nd * V);
        int nfresh = nd + nf;
        if (nfresh == 0) break;

        // sample every fresh row from its own stream: u depends on (request, position) only
        for (int i = 0; i < nfresh; i++) {
            kc[i] = g.slot[fresh[i]].key;
            kc[B + i] = (uint64_t)genslots_position(&g, fresh[i]);
        }
        cuda_upload(kc_dev, kc, (size_t)B * 2 * sizeof(uint64_t), "sampler streams");
        int32_t *t_d = res_dev, *st_d = res_dev + B;
        float *kept_d = (float *)(res_dev + 2 * B), *lp_d = (float *)(res_dev + 3 * B), *en_d = (float *)(res_dev + 4 * B);
        cuda_sample(lg, nfresh, V, &cfg->sampler, kc_dev, kc_dev + B, t_d, kept_d, st_d);
        // log-prob and entropy of the full temperature-scaled distribution, fp32
        cuda_logprob_forward(lg, nfresh, V, cfg->sampler.temperature, t_d, lp_d, en_d, NULL);
        cuda_download(res, res_dev, (size_t)B * 5 * sizeof(int32_t), "sampler results");
        const int32_t *rt = res, *rst = res + B;
        const float *rkept = (const float *)(res + 2 * B), *rlp = (const float *)(res + 3 * B), *ren = (const float *)(res + 4 * B);

        // a non-finite row stops everything, naming the first such request
        genslots_check(&g, fresh, nfresh, rst, device_row, &dr, V);
        // record; finished rows free their slot, running rows go to the next decode step
        nd = genslots_record(&g, fresh, nfresh, rt, rlp, ren, rkept, rows, tok);
        if (nd) {
            memcpy(fresh, rows, (size_t)nd * sizeof(int));
            for (int i = 0; i < nd; i++) seqs[i] = tok + i;
            cuda_model_extend(cm, kv, nd, rows, seqs, ones, lg);
        }
    }
    progress_end(g.prog);

    cuda_sync("generate");
    cuda_free(lg);
    cuda_free(kc_dev);
    cuda_free(res_dev);
    free(kc); free(res); free(fresh); free(rows); free(lens); free(ones); free(seqs); free(tok);
    genslots_free(&g);
    cuda_kv_free(kv);
}

#else
typedef int cuda_generate_unused;   // a CPU-only build compiles nothing here
#endif
