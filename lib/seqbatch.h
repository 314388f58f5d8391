// seqbatch.h — lay out (prompt, response) pairs as one padded (B, T) batch for the model,
// and read per-response-token quantities back out of it.
//
// Row b holds its prompt left-padded to P = max prompt length and its response right-padded
// to R = max response length, so T = P + R and every response starts at column P:
//
//     [pad pad p0 p1 p2 | r0 r1 r2 pad]      mask 0 0 1 1 1 | 1 1 1 0
//
// Response token t of row b sits at column P + t and is predicted by the logits (and valued by
// the hidden state) at column P + t - 1. Masks are built from lengths, never from token ids,
// so a pad id equal to EOS cannot hide the terminating EOS.
#ifndef SAFE_SEQBATCH_H
#define SAFE_SEQBATCH_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct {
    int B, P, R, T;        // rows, prompt width, response width, T = P + R
    int32_t *tokens;       // (B, T)
    uint8_t *mask;         // (B, T) 1 = real token
    int *prompt_len;       // (B)
    int *resp_len;         // (B)
    size_t *resp_off;      // (B) offset of row b's first response token in packed arrays
    size_t n_resp;         // total response tokens = sum of resp_len
} SeqBatch;

// prompts[b] (prompt_len[b] tokens), responses[b] (resp_len[b] tokens). Every row needs a
// non-empty prompt (the BOS at least) so response token 0 has a predicting position.
SeqBatch *seqbatch_build(int B, const int32_t *const *prompts, const int *prompt_len,
                         const int32_t *const *responses, const int *resp_len);
void seqbatch_free(SeqBatch *sb);

// Column of the position that predicts response token t of row b.
static inline size_t seqbatch_pred_index(const SeqBatch *sb, int b, int t) {
    return (size_t)b * sb->T + (size_t)(sb->P + t - 1);
}

// Forward `m` on the batch and return per-response-token log-probs of the response tokens and
// entropies under logits/temp, packed row after row (n_resp floats each; either may be NULL).
// Leaves m->logits/m->hidden from this forward in place for a following backward.
void seqbatch_logprobs(Model *m, const SeqBatch *sb, float temp, float *logp, float *entropy);

// Gather rows of a (B, T, D) tensor at the predicting positions into (n_resp, D).
void seqbatch_gather(const SeqBatch *sb, const float *x, int D, float *out);
// Scatter-add (n_resp, D) back into a zeroed (B, T, D) tensor (the gather's backward).
void seqbatch_scatter(const SeqBatch *sb, const float *in, int D, float *x);

// Backward of seqbatch_logprobs: dlogp, dentropy (n_resp, either NULL) -> model gradients
// (accumulated). Uses the logits of the last forward, which must be this batch's.
void seqbatch_logprobs_backward(Model *m, const SeqBatch *sb, float temp, const float *dlogp,
                                const float *dentropy);

#endif
