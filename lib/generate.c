// generate.c — continuous-batching sampler loop over the KV cache.
//
//   loop:
//     refill free cache rows from the queue; prefill them (one batched pass)
//     for every row with fresh logits: sample (one uniform from its own stream), record
//       token, log-prob, entropy; finish at EOS or the length limit, freeing the row
//     decode the rows still running (one batched pass), giving fresh logits
#include "generate.h"

#include "common.h"     // die, warn, xmalloc
#include "logprob.h"    // logprob_forward: log-prob and entropy of the sampled token
#include "progress.h"   // progress bar on stderr
#include "rng.h"        // rng_stream_key, rng_uniform

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *gen_finish_name(int finish) {
    return finish == GEN_FINISH_EOS ? "eos" : finish == GEN_FINISH_LENGTH ? "length" : "?";
}

void gen_result_free(GenResult *r) {
    if (!r) return;
    free(r->tokens);
    free(r->logp);
    free(r->entropy);
    free(r->kept_mass);
    memset(r, 0, sizeof *r);
}

static void result_alloc(GenResult *r, int cap) {
    r->n = 0;
    r->finish = 0;
    r->tokens = xmalloc((size_t)cap * sizeof(int32_t));
    r->logp = xmalloc((size_t)cap * sizeof(float));
    r->entropy = xmalloc((size_t)cap * sizeof(float));
    r->kept_mass = xmalloc((size_t)cap * sizeof(float));
}

// One cache row's state.
typedef struct {
    int req;          // request being served, -1 when free
    int cap;          // most tokens this request may generate
    uint64_t key;     // its RNG stream
    GenResult res;    // what it generated so far
} Slot;

void generate(Model *m, const GenConfig *cfg, const GenRequest *reqs, int n, GenResult *out,
              GenDoneFn on_done, void *ctx) {
    char why[256];
    if (sampler_config_check(&cfg->sampler, why, sizeof why)) die(EXIT_USAGE, "%s", why);
    if (cfg->batch <= 0) die(EXIT_USAGE, "generate: batch must be > 0 (got %d)", cfg->batch);
    if (cfg->max_new_tokens <= 0) die(EXIT_USAGE, "generate: max_new_tokens must be > 0 (got %d)", cfg->max_new_tokens);
    if (n <= 0) return;
    const int V = m->cfg.vocab_size, max_seq = m->cfg.max_seq_len;

    // per-request length caps so prompt + response fits the model's context
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
    KVCache *kv = kvcache_create(&m->cfg, B, T_max);
    if (!cfg->quiet)   // the memory plan: the cache dominates for long responses and big batches
        fprintf(stderr, "%s: generate: %d requests, %d rows of up to %d tokens, KV cache %.1f MiB, logits %.1f MiB\n",
                safe_progname, n, B, T_max, 2.0 * kv->L * B * T_max * kv->kv_dim * sizeof(float) / 1048576.0,
                (double)B * V * sizeof(float) / 1048576.0);
    Slot *slot = xcalloc((size_t)B, sizeof(Slot));
    for (int s = 0; s < B; s++) slot[s].req = -1;
    float *lg = xmalloc((size_t)B * V * sizeof(float));           // (B, V) fresh logits rows
    int *fresh = xmalloc((size_t)B * sizeof(int));                // slot of each fresh row
    int *rows = xmalloc((size_t)B * sizeof(int));
    int *lens = xmalloc((size_t)B * sizeof(int));
    const int32_t **prompts = xmalloc((size_t)B * sizeof(*prompts));
    int32_t *tok = xmalloc((size_t)B * sizeof(int32_t));
    float *kept = xmalloc((size_t)B * sizeof(float));
    float *logp = xmalloc((size_t)B * sizeof(float)), *ent = xmalloc((size_t)B * sizeof(float));
    int *err = xmalloc((size_t)B * sizeof(int));
    int nthreads = omp_get_max_threads();
    SampleWork **work = xmalloc((size_t)nthreads * sizeof(SampleWork *));
    for (int t = 0; t < nthreads; t++) work[t] = sample_work_create(V);

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
            kvcache_reset_row(kv, s);
            rows[nf] = s;
            prompts[nf] = q->tokens;
            lens[nf] = q->n_tokens;
            fresh[nd + nf] = s;
            nf++;
            next++;
        }
        if (nf) model_prefill(m, kv, nf, rows, prompts, lens, lg + (size_t)nd * V);
        int nfresh = nd + nf;
        if (nfresh == 0) break;

        // sample every fresh row from its own stream: u depends on (request, position) only
        #pragma omp parallel for schedule(dynamic, 1) if ((size_t)nfresh * V >= (1u << 17))
        for (int i = 0; i < nfresh; i++) {
            Slot *sl = &slot[fresh[i]];
            const GenRequest *q = &reqs[sl->req];
            int pos = q->n_tokens + sl->res.n;
            float u = rng_uniform(sl->key, (uint64_t)pos);
            int t = -1;
            err[i] = sample_logits(&cfg->sampler, lg + (size_t)i * V, V, u, work[omp_get_thread_num()], &t, &kept[i]);
            tok[i] = t;
        }
        // a non-finite row stops everything, naming the first such request
        int bad = -1;
        for (int i = 0; i < nfresh; i++)
            if (err[i] != SAMPLE_OK && (bad < 0 || slot[fresh[i]].req < slot[fresh[bad]].req)) bad = i;
        if (bad >= 0) {
            const Slot *sl = &slot[fresh[bad]];
            const GenRequest *q = &reqs[sl->req];
            long at = first_nonfinite(lg + (size_t)bad * V, (size_t)V);
            die(EXIT_RUNTIME, "non-finite logits (logit[%ld] = %g) for prompt %s, sample %d, at position %d (response token %d); no token emitted",
                at, at >= 0 ? (double)lg[(size_t)bad * V + at] : 0.0, q->id, q->sample_index, q->n_tokens + sl->res.n, sl->res.n);
        }
        // log-prob and entropy of the full temperature-scaled distribution
        logprob_forward(lg, (size_t)nfresh, V, cfg->sampler.temperature, tok, logp, ent);

        // record; finished rows free their slot, running rows go to the next decode step
        int nd_next = 0;
        for (int i = 0; i < nfresh; i++) {
            int s = fresh[i];
            Slot *sl = &slot[s];
            GenResult *r = &sl->res;
            r->tokens[r->n] = tok[i];
            r->logp[r->n] = logp[i];
            r->entropy[r->n] = ent[i];
            r->kept_mass[r->n] = kept[i];
            r->n++;
            if (tok[i] == cfg->eos_id) r->finish = GEN_FINISH_EOS;
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
                tok[nd_next] = tok[i];   // nd_next <= i: compacting in place is safe
                nd_next++;
            }
        }
        nd = nd_next;
        if (nd) {
            memcpy(fresh, rows, (size_t)nd * sizeof(int));
            model_decode(m, kv, nd, rows, tok, lg);
        }
    }
    progress_end(prog);

    for (int t = 0; t < nthreads; t++) sample_work_free(work[t]);
    free(work);
    free(err); free(logp); free(ent); free(kept); free(tok);
    free(prompts); free(lens); free(rows); free(fresh); free(lg);
    free(slot);
    free(cap);
    kvcache_free(kv);
}
