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
#include "cuda_backend.h"   // cuda_sample, cuda_logprob_forward, device memory
#include "progress.h"       // progress bar on stderr
#include "rng.h"            // rng_stream_key

static void result_alloc(GenResult *r, int cap) {
    r->n = 0;
    r->finish = 0;
    r->tokens = xmalloc((size_t)cap * sizeof(int32_t));
    r->logp = xmalloc((size_t)cap * sizeof(float));
    r->entropy = xmalloc((size_t)cap * sizeof(float));
    r->kept_mass = xmalloc((size_t)cap * sizeof(float));
}

typedef struct {
    int req;          // request being served, -1 when free
    int cap;          // most tokens this request may generate
    uint64_t key;     // its RNG stream
    GenResult res;    // what it generated so far
} Slot;

void cuda_generate(CudaModel *cm, const GenConfig *cfg, const GenRequest *reqs, int n, GenResult *out,
                   GenDoneFn on_done, void *ctx) {
    char why[256];
    if (sampler_config_check(&cfg->sampler, why, sizeof why)) die(EXIT_USAGE, "%s", why);
    if (cfg->batch <= 0) die(EXIT_USAGE, "generate: batch must be > 0 (got %d)", cfg->batch);
    if (cfg->max_new_tokens <= 0) die(EXIT_USAGE, "generate: max_new_tokens must be > 0 (got %d)", cfg->max_new_tokens);
    if (n <= 0) return;
    const ModelConfig *mc = cuda_model_config(cm);
    const int V = mc->vocab_size, max_seq = mc->max_seq_len;

    // per-request length caps so prompt + response fits the model's context (generate.c's rule)
    int *cap = xmalloc((size_t)n * sizeof(int));
    int T_max = 1, capped = 0;
    for (int r = 0; r < n; r++) {
        if (reqs[r].n_tokens <= 0) die(EXIT_BADINPUT, "prompt %s (sample %d) has no tokens", reqs[r].id, reqs[r].sample_index);
        for (int j = 0; j < reqs[r].n_tokens; j++)
            if (reqs[r].tokens[j] < 0 || reqs[r].tokens[j] >= V)
                die(EXIT_BADINPUT, "prompt %s: token %d at position %d is outside the vocabulary (%d)", reqs[r].id, reqs[r].tokens[j], j, V);
        cap[r] = cfg->max_new_tokens;
        if (max_seq > 0 && reqs[r].n_tokens + cap[r] > max_seq) {
            if (reqs[r].n_tokens >= max_seq)
                die(EXIT_BADINPUT, "prompt %s is %d tokens; the model's context is %d", reqs[r].id, reqs[r].n_tokens, max_seq);
            cap[r] = max_seq - reqs[r].n_tokens;
            capped++;
        }
        if (reqs[r].n_tokens + cap[r] > T_max) T_max = reqs[r].n_tokens + cap[r];
    }
    if (capped) warn("%d of %d responses are limited to fewer than %d tokens by the model's context of %d", capped, n, cfg->max_new_tokens, max_seq);

    int B = cfg->batch < n ? cfg->batch : n;
    CudaKV *kv = cuda_kv_create(cm, B, T_max);
    if (!cfg->quiet)
        fprintf(stderr, "%s: generate (cuda, %s): %d requests, %d rows of up to %d tokens, KV cache %.1f MiB (bf16), logits %.1f MiB\n",
                safe_progname, cuda_device_name(), n, B, T_max,
                2.0 * mc->n_layers * B * T_max * (mc->n_kv_heads * (mc->dim / mc->n_heads)) * 2 / 1048576.0,
                (double)B * V * sizeof(float) / 1048576.0);
    Slot *slot = xcalloc((size_t)B, sizeof(Slot));
    for (int s = 0; s < B; s++) slot[s].req = -1;
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

    Progress *prog = progress_start("generate", n, "samples", cfg->quiet);
    progress_extra_unit(prog, "tok");
    long done = 0, tokens_out = 0;
    int next = 0, nd = 0;   // next request in the queue; rows decoded last step (fresh[0..nd))
    for (;;) {
        // refill free rows and prefill them; their logits follow the decoded rows' in lg
        int nf = 0;
        for (int s = 0; s < B && next < n; s++) {
            if (slot[s].req >= 0) continue;
            const GenRequest *q = &reqs[next];
            slot[s].req = next;
            slot[s].cap = cap[next];
            slot[s].key = rng_stream_key(cfg->seed, q->id, q->sample_index, cfg->iteration);
            result_alloc(&slot[s].res, cap[next]);
            cuda_kv_reset_row(kv, s);
            rows[nf] = s;
            seqs[nf] = q->tokens;
            lens[nf] = q->n_tokens;
            fresh[nd + nf] = s;
            nf++;
            next++;
        }
        if (nf) cuda_model_extend(cm, kv, nf, rows, seqs, lens, lg + (size_t)nd * V);
        int nfresh = nd + nf;
        if (nfresh == 0) break;

        // sample every fresh row from its own stream: u depends on (request, position) only
        for (int i = 0; i < nfresh; i++) {
            const Slot *sl = &slot[fresh[i]];
            kc[i] = sl->key;
            kc[B + i] = (uint64_t)(reqs[sl->req].n_tokens + sl->res.n);
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
        int bad = -1;
        for (int i = 0; i < nfresh; i++)
            if (rst[i] != SAMPLE_OK && (bad < 0 || slot[fresh[i]].req < slot[fresh[bad]].req)) bad = i;
        if (bad >= 0) {
            const Slot *sl = &slot[fresh[bad]];
            const GenRequest *q = &reqs[sl->req];
            float *row = xmalloc((size_t)V * sizeof(float));
            cuda_download(row, lg + (size_t)bad * V, (size_t)V * sizeof(float), "logits row");
            long at = first_nonfinite(row, (size_t)V);
            die(EXIT_RUNTIME, "non-finite logits (logit[%ld] = %g) for prompt %s, sample %d, at position %d (response token %d); no token emitted",
                at, at >= 0 ? (double)row[at] : 0.0, q->id, q->sample_index, q->n_tokens + sl->res.n, sl->res.n);
        }

        // record; finished rows free their slot, running rows go to the next decode step
        int nd_next = 0;
        for (int i = 0; i < nfresh; i++) {
            int s = fresh[i];
            Slot *sl = &slot[s];
            GenResult *r = &sl->res;
            r->tokens[r->n] = rt[i];
            r->logp[r->n] = rlp[i];
            r->entropy[r->n] = ren[i];
            r->kept_mass[r->n] = rkept[i];
            r->n++;
            if (rt[i] == cfg->eos_id) r->finish = GEN_FINISH_EOS;
            else if (r->n >= sl->cap) r->finish = GEN_FINISH_LENGTH;
            if (r->finish) {
                int req = sl->req;
                tokens_out += r->n;
                if (out) {
                    out[req] = *r;
                    if (on_done) on_done(ctx, req, &out[req]);
                } else {
                    if (on_done) on_done(ctx, req, r);
                    gen_result_free(r);
                }
                memset(r, 0, sizeof *r);
                sl->req = -1;
                progress_update(prog, ++done, (double)tokens_out);
            } else {
                rows[nd_next] = s;
                tok[nd_next] = rt[i];
                nd_next++;
            }
        }
        nd = nd_next;
        if (nd) {
            memcpy(fresh, rows, (size_t)nd * sizeof(int));
            for (int i = 0; i < nd; i++) seqs[i] = tok + i;
            cuda_model_extend(cm, kv, nd, rows, seqs, ones, lg);
        }
    }
    progress_end(prog);

    cuda_sync("generate");
    cuda_free(lg);
    cuda_free(kc_dev);
    cuda_free(res_dev);
    free(kc); free(res); free(fresh); free(rows); free(lens); free(ones); free(seqs); free(tok);
    free(slot);
    free(cap);
    cuda_kv_free(kv);
}

#else
typedef int cuda_generate_unused;   // a CPU-only build compiles nothing here
#endif
