// genslots.c — continuous-batching bookkeeping shared by the CPU and GPU generators.
#include "genslots.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"    // die, warn, xmalloc
#include "rng.h"       // rng_stream_key
#include "sampler.h"   // sampler_config_check, SAMPLE_OK, first_nonfinite

static void result_alloc(GenResult *r, int cap) {
    r->n = 0;
    r->finish = 0;
    r->tokens = xmalloc((size_t)cap * sizeof(int32_t));
    r->logp = xmalloc((size_t)cap * sizeof(float));
    r->entropy = xmalloc((size_t)cap * sizeof(float));
    r->kept_mass = xmalloc((size_t)cap * sizeof(float));
}

void genslots_init(GenSlots *g, const GenConfig *cfg, const GenRequest *reqs, int n, int V, int max_seq,
                   GenResult *out, GenDoneFn on_done, void *ctx) {
    char why[256];
    if (sampler_config_check(&cfg->sampler, why, sizeof why)) die(EXIT_USAGE, "%s", why);
    if (cfg->batch <= 0) die(EXIT_USAGE, "generate: batch must be > 0 (got %d)", cfg->batch);
    if (cfg->max_new_tokens <= 0) die(EXIT_USAGE, "generate: max_new_tokens must be > 0 (got %d)", cfg->max_new_tokens);
    *g = (GenSlots){.cfg = cfg, .reqs = reqs, .n = n, .out = out, .on_done = on_done, .ctx = ctx, .T_max = 1};
    // per-request length caps so prompt + response fits the model's context
    g->cap = xmalloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    int capped = 0;
    for (int r = 0; r < n; r++) {
        if (reqs[r].n_tokens <= 0) die(EXIT_BADINPUT, "prompt %s (sample %d) has no tokens", reqs[r].id, reqs[r].sample_index);
        for (int j = 0; j < reqs[r].n_tokens; j++)
            if (reqs[r].tokens[j] < 0 || reqs[r].tokens[j] >= V)
                die(EXIT_BADINPUT, "prompt %s: token %d at position %d is outside the vocabulary (%d)", reqs[r].id, reqs[r].tokens[j], j, V);
        g->cap[r] = cfg->max_new_tokens;
        if (max_seq > 0 && reqs[r].n_tokens + g->cap[r] > max_seq) {
            if (reqs[r].n_tokens >= max_seq)
                die(EXIT_BADINPUT, "prompt %s is %d tokens; the model's context is %d", reqs[r].id, reqs[r].n_tokens, max_seq);
            g->cap[r] = max_seq - reqs[r].n_tokens;
            capped++;
        }
        if (reqs[r].n_tokens + g->cap[r] > g->T_max) g->T_max = reqs[r].n_tokens + g->cap[r];
    }
    if (capped) warn("%d of %d responses are limited to fewer than %d tokens by the model's context of %d", capped, n, cfg->max_new_tokens, max_seq);
    g->B = cfg->batch < n ? cfg->batch : n;
    g->slot = xcalloc((size_t)(g->B > 0 ? g->B : 1), sizeof(GenSlot));
    for (int s = 0; s < g->B; s++) g->slot[s].req = -1;
    g->prog = NULL;
}

void genslots_free(GenSlots *g) {
    free(g->slot);
    free(g->cap);
}

int genslots_refill(GenSlots *g, int nd, int *rows, const int32_t **prompts, int *lens, int *fresh) {
    int nf = 0;
    for (int s = 0; s < g->B && g->next < g->n; s++) {
        if (g->slot[s].req >= 0) continue;
        const GenRequest *q = &g->reqs[g->next];
        g->slot[s].req = g->next;
        g->slot[s].cap = g->cap[g->next];
        g->slot[s].key = rng_stream_key(g->cfg->seed, q->id, q->sample_index, g->cfg->iteration);
        result_alloc(&g->slot[s].res, g->cap[g->next]);
        rows[nf] = s;
        prompts[nf] = q->tokens;
        lens[nf] = q->n_tokens;
        fresh[nd + nf] = s;
        nf++;
        g->next++;
    }
    return nf;
}

int genslots_position(const GenSlots *g, int s) {
    return g->reqs[g->slot[s].req].n_tokens + g->slot[s].res.n;
}

void genslots_check(const GenSlots *g, const int *fresh, int nfresh, const int *status,
                    const float *(*row_logits)(void *arg, int i), void *arg, int V) {
    int bad = -1;
    for (int i = 0; i < nfresh; i++)
        if (status[i] != SAMPLE_OK && (bad < 0 || g->slot[fresh[i]].req < g->slot[fresh[bad]].req)) bad = i;
    if (bad < 0) return;
    const GenSlot *sl = &g->slot[fresh[bad]];
    const GenRequest *q = &g->reqs[sl->req];
    const float *row = row_logits(arg, bad);
    long at = first_nonfinite(row, (size_t)V);
    die(EXIT_RUNTIME, "non-finite logits (logit[%ld] = %g) for prompt %s, sample %d, at position %d (response token %d); no token emitted",
        at, at >= 0 ? (double)row[at] : 0.0, q->id, q->sample_index, q->n_tokens + sl->res.n, sl->res.n);
}

int genslots_record(GenSlots *g, const int *fresh, int nfresh, const int32_t *tok, const float *logp,
                    const float *ent, const float *kept, int *rows, int32_t *tok_next) {
    int k = 0;
    for (int i = 0; i < nfresh; i++) {
        int s = fresh[i];
        GenSlot *sl = &g->slot[s];
        GenResult *r = &sl->res;
        int32_t t = tok[i];
        r->tokens[r->n] = t;
        r->logp[r->n] = logp[i];
        r->entropy[r->n] = ent[i];
        r->kept_mass[r->n] = kept[i];
        r->n++;
        if (t == g->cfg->eos_id) r->finish = GEN_FINISH_EOS;
        else if (r->n >= sl->cap) r->finish = GEN_FINISH_LENGTH;
        if (r->finish) {
            int req = sl->req;
            g->tokens_out += r->n;
            if (g->out) {
                g->out[req] = *r;
                if (g->on_done) g->on_done(g->ctx, req, &g->out[req]);
            } else {
                if (g->on_done) g->on_done(g->ctx, req, r);
                gen_result_free(r);
            }
            memset(r, 0, sizeof *r);
            sl->req = -1;
            progress_update(g->prog, ++g->done, (double)g->tokens_out);
        } else {
            rows[k] = s;
            tok_next[k] = t;   // k <= i: compacting in place is safe
            k++;
        }
    }
    return k;
}
