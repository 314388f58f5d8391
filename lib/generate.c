// generate.c — continuous-batching sampler loop over the KV cache.
//
//   loop:
//     refill free cache rows from the queue; prefill them (one batched pass)
//     for every row with fresh logits: sample (one uniform from its own stream), record
//       token, log-prob, entropy; finish at EOS or the length limit, freeing the row
//     decode the rows still running (one batched pass), giving fresh logits
#include "generate.h"

#include "common.h"     // die, warn, xmalloc
#include "genslots.h"   // slots, request caps, recording: shared with cuda_generate.c
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

// Row i of a (rows, V) host logits block, for the non-finite report.
typedef struct { const float *lg; int V; } RowsOf;
static const float *row_of(void *arg, int i) {
    const RowsOf *r = arg;
    return r->lg + (size_t)i * r->V;
}

void generate(Model *m, const GenConfig *cfg, const GenRequest *reqs, int n, GenResult *out,
              GenDoneFn on_done, void *ctx) {
    const int V = m->cfg.vocab_size;
    GenSlots g;
    genslots_init(&g, cfg, reqs, n, V, m->cfg.max_seq_len, out, on_done, ctx);
    if (n <= 0) {
        genslots_free(&g);
        return;
    }
    int B = g.B;
    KVCache *kv = kvcache_create(&m->cfg, B, g.T_max);
    if (!cfg->quiet)   // the memory plan: the cache dominates for long responses and big batches
        fprintf(stderr, "%s: generate: %d requests, %d rows of up to %d tokens, KV cache %.1f MiB, logits %.1f MiB\n",
                safe_progname, n, B, g.T_max, 2.0 * kv->L * B * g.T_max * kv->kv_dim * sizeof(float) / 1048576.0,
                (double)B * V * sizeof(float) / 1048576.0);
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
    RowsOf rl = {lg, V};

    g.prog = progress_start("generate", n, "samples", cfg->quiet);
    progress_extra_unit(g.prog, "tok");
    int nd = 0;   // rows decoded last step (fresh[0..nd))
    for (;;) {
        // refill free rows and prefill them; their logits follow the decoded rows' in lg
        int nf = genslots_refill(&g, nd, rows, prompts, lens, fresh);
        for (int i = 0; i < nf; i++) kvcache_reset_row(kv, rows[i]);
        if (nf) model_prefill(m, kv, nf, rows, prompts, lens, lg + (size_t)nd * V);
        int nfresh = nd + nf;
        if (nfresh == 0) break;

        // sample every fresh row from its own stream: u depends on (request, position) only
        #pragma omp parallel for schedule(dynamic, 1) if ((size_t)nfresh * V >= (1u << 17))
        for (int i = 0; i < nfresh; i++) {
            const GenSlot *sl = &g.slot[fresh[i]];
            float u = rng_uniform(sl->key, (uint64_t)genslots_position(&g, fresh[i]));
            int t = -1;
            err[i] = sample_logits(&cfg->sampler, lg + (size_t)i * V, V, u, work[omp_get_thread_num()], &t, &kept[i]);
            tok[i] = t;
        }
        // a non-finite row stops everything, naming the first such request
        genslots_check(&g, fresh, nfresh, err, row_of, &rl, V);
        // log-prob and entropy of the full temperature-scaled distribution
        logprob_forward(lg, (size_t)nfresh, V, cfg->sampler.temperature, tok, logp, ent);

        // record; finished rows free their slot, running rows go to the next decode step
        nd = genslots_record(&g, fresh, nfresh, tok, logp, ent, kept, rows, tok);
        if (nd) {
            memcpy(fresh, rows, (size_t)nd * sizeof(int));
            model_decode(m, kv, nd, rows, tok, lg);
        }
    }
    progress_end(g.prog);

    for (int t = 0; t < nthreads; t++) sample_work_free(work[t]);
    free(work);
    free(err); free(logp); free(ent); free(kept); free(tok);
    free(prompts); free(lens); free(rows); free(fresh); free(lg);
    genslots_free(&g);
    kvcache_free(kv);
}
