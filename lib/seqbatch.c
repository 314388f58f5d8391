// seqbatch.c — padded (B, T) batches of prompt+response, and per-response-token log-probs.
#include "seqbatch.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"   // xmalloc, die
#include "logprob.h"  // logprob_forward, logprob_backward

SeqBatch *seqbatch_build(int B, const int32_t *const *prompts, const int *prompt_len,
                         const int32_t *const *responses, const int *resp_len) {
    SeqBatch *sb = xcalloc(1, sizeof(*sb));
    sb->B = B;
    for (int b = 0; b < B; b++) {
        if (prompt_len[b] < 1) die(EXIT_BADINPUT, "row %d has an empty prompt (it needs at least BOS)", b);
        if (prompt_len[b] > sb->P) sb->P = prompt_len[b];
        if (resp_len[b] > sb->R) sb->R = resp_len[b];
    }
    sb->T = sb->P + sb->R;
    sb->tokens = xcalloc((size_t)B * sb->T, sizeof(int32_t));
    sb->mask = xcalloc((size_t)B * sb->T, 1);
    sb->prompt_len = xmalloc(B * sizeof(int));
    sb->resp_len = xmalloc(B * sizeof(int));
    sb->resp_off = xmalloc(B * sizeof(size_t));
    for (int b = 0; b < B; b++) {
        int32_t *row = sb->tokens + (size_t)b * sb->T;
        uint8_t *mrow = sb->mask + (size_t)b * sb->T;
        int p = prompt_len[b], r = resp_len[b];
        // prompt right-aligned at column P, response left-aligned at column P
        memcpy(row + sb->P - p, prompts[b], p * sizeof(int32_t));
        memset(mrow + sb->P - p, 1, p);
        if (r > 0) {
            memcpy(row + sb->P, responses[b], r * sizeof(int32_t));
            memset(mrow + sb->P, 1, r);
        }
        sb->prompt_len[b] = p;
        sb->resp_len[b] = r;
        sb->resp_off[b] = sb->n_resp;
        sb->n_resp += r;
    }
    return sb;
}

void seqbatch_free(SeqBatch *sb) {
    if (!sb) return;
    free(sb->tokens);
    free(sb->mask);
    free(sb->prompt_len);
    free(sb->resp_len);
    free(sb->resp_off);
    free(sb);
}

void seqbatch_gather(const SeqBatch *sb, const float *x, int D, float *out) {
    for (int b = 0; b < sb->B; b++)
        for (int t = 0; t < sb->resp_len[b]; t++)
            memcpy(out + (sb->resp_off[b] + t) * D, x + seqbatch_pred_index(sb, b, t) * D, D * sizeof(float));
}

void seqbatch_scatter(const SeqBatch *sb, const float *in, int D, float *x) {
    for (int b = 0; b < sb->B; b++)
        for (int t = 0; t < sb->resp_len[b]; t++) {
            const float *src = in + (sb->resp_off[b] + t) * D;
            float *dst = x + seqbatch_pred_index(sb, b, t) * D;
            for (int d = 0; d < D; d++) dst[d] += src[d];
        }
}

// The response tokens packed in the same order as the per-token outputs: (n_resp)
static int32_t *packed_targets(const SeqBatch *sb) {
    int32_t *tg = xmalloc((sb->n_resp ? sb->n_resp : 1) * sizeof(int32_t));
    for (int b = 0; b < sb->B; b++)
        memcpy(tg + sb->resp_off[b], sb->tokens + (size_t)b * sb->T + sb->P, sb->resp_len[b] * sizeof(int32_t));
    return tg;
}

// The positions whose logits predict the response tokens, in packed order: (n_resp)
static int *pred_rows(const SeqBatch *sb) {
    int *rows = xmalloc((sb->n_resp ? sb->n_resp : 1) * sizeof(int));
    for (int b = 0; b < sb->B; b++)
        for (int t = 0; t < sb->resp_len[b]; t++) rows[sb->resp_off[b] + t] = (int)seqbatch_pred_index(sb, b, t);
    return rows;
}

void seqbatch_logprobs(Model *m, const SeqBatch *sb, float temp, float *logp, float *entropy) {
    int V = m->cfg.vocab_size;
    model_forward(m, sb->tokens, sb->mask, sb->B, sb->T, 0);
    if (sb->n_resp == 0) return;
    // logits at the predicting positions only, then one call over all of them: (n_resp, V)
    int *rows = pred_rows(sb);
    const float *lg = model_logits_rows(m, (int)sb->n_resp, rows);
    int32_t *tg = packed_targets(sb);
    logprob_forward(lg, sb->n_resp, V, temp, tg, logp, entropy);
    free(tg);
    free(rows);
}

void seqbatch_logprobs_backward(Model *m, const SeqBatch *sb, float temp, const float *dlogp,
                                const float *dentropy) {
    int V = m->cfg.vocab_size;
    size_t n = sb->n_resp;
    int *rows = pred_rows(sb);
    const float *lg = model_logits_rows(m, (int)n, rows);   // kept from the forward
    float *drows = xcalloc((n ? n : 1) * (size_t)V, sizeof(float));
    int32_t *tg = packed_targets(sb);
    logprob_backward(lg, n, V, temp, tg, dlogp, dentropy, drows);
    model_backward_rows(m, (int)n, rows, drows, NULL);
    free(drows);
    free(tg);
    free(rows);
}
