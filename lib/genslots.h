// genslots.h — the continuous-batching bookkeeping that generate() (CPU) and
// cuda_generate() (GPU) share: request validation and length caps, cache-row slots refilled
// from the queue, the first non-finite row, and recording one sampled token per fresh row.
#ifndef SAFE_GENSLOTS_H
#define SAFE_GENSLOTS_H

#include <stdint.h>

#include "generate.h"   // GenConfig, GenRequest, GenResult, GenDoneFn
#include "progress.h"   // Progress

// One cache row's state.
typedef struct {
    int req;          // request being served, -1 when free
    int cap;          // most tokens this request may generate
    uint64_t key;     // its RNG stream
    GenResult res;    // what it generated so far
} GenSlot;

typedef struct {
    GenSlot *slot;        // (B)
    int B;
    const GenConfig *cfg;
    const GenRequest *reqs;
    int n, next;          // requests, next one waiting in the queue
    int *cap;             // (n) per-request token caps
    int T_max;            // longest prompt + response: the cache's length
    GenResult *out;       // results in request order, or NULL (on_done consumes them)
    GenDoneFn on_done;
    void *ctx;
    Progress *prog;
    long done, tokens_out;
} GenSlots;

// Check the configuration and the requests (tokens within V; prompts that fit max_seq) and
// cap each response so prompt + response fits the context; B = min(batch, n) rows.
void genslots_init(GenSlots *g, const GenConfig *cfg, const GenRequest *reqs, int n, int V, int max_seq,
                   GenResult *out, GenDoneFn on_done, void *ctx);
void genslots_free(GenSlots *g);
// Give free rows the next waiting requests: rows[i], prompts[i], lens[i] (i < returned count)
// describe what to prefill; fresh[nd + i] = rows[i]. The caller resets those cache rows.
int genslots_refill(GenSlots *g, int nd, int *rows, const int32_t **prompts, int *lens, int *fresh);
// Counter of the next token of fresh row `s`: its absolute position.
int genslots_position(const GenSlots *g, int s);
// status (nfresh) from the sampler: the first non-OK row, by request order, stops everything
// with exit 3 naming the prompt, sample and position. row_logits(i) gives row i's logits (V).
void genslots_check(const GenSlots *g, const int *fresh, int nfresh, const int *status,
                    const float *(*row_logits)(void *arg, int i), void *arg, int V);
// Record token/logp/entropy/kept of each fresh row; finished rows (EOS or cap) are handed out
// and freed. The rows still running go to rows[0..k) with their tokens in tok_next (which may
// alias tok: compacting in place). Returns k.
int genslots_record(GenSlots *g, const int *fresh, int nfresh, const int32_t *tok, const float *logp,
                    const float *ent, const float *kept, int *rows, int32_t *tok_next);

#endif
