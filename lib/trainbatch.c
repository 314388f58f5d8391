// trainbatch.c — records -> padded batches and packed per-token fields.
#include "trainbatch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"   // xmalloc, die
#include "rng.h"          // rng_splitmix64: the shuffle

static int row_of(const int *rows, int i) { return rows ? rows[i] : i; }

SeqBatch *records_seqbatch(const RecStore *s, const int *rows, int n) {
    int32_t **prompts = xmalloc(n * sizeof(int32_t *));
    int32_t **resps = xmalloc(n * sizeof(int32_t *));
    int *plen = xmalloc(n * sizeof(int)), *rlen = xmalloc(n * sizeof(int));
    for (int i = 0; i < n; i++) {
        const Record *r = &s->recs[row_of(rows, i)];
        size_t np, nr;
        prompts[i] = rec_i32s(r, "prompt_tokens", &np, -1);
        resps[i] = rec_i32s(r, "response_tokens", &nr, -1);
        if (np == 0) rec_die(r, "prompt_tokens", EXIT_BADINPUT, "empty prompt (it needs at least BOS)");
        plen[i] = (int)np;
        rlen[i] = (int)nr;
    }
    SeqBatch *sb = seqbatch_build(n, (const int32_t *const *)prompts, plen, (const int32_t *const *)resps, rlen);
    for (int i = 0; i < n; i++) {
        free(prompts[i]);
        free(resps[i]);
    }
    free(prompts);
    free(resps);
    free(plen);
    free(rlen);
    return sb;
}

float *records_tokfield(const RecStore *s, const int *rows, int n, const SeqBatch *sb, const char *key) {
    float *out = xmalloc((sb->n_resp ? sb->n_resp : 1) * sizeof(float));
    for (int i = 0; i < n; i++) {
        const Record *r = &s->recs[row_of(rows, i)];
        size_t got = rec_f32s_into(r, key, out + sb->resp_off[i], (size_t)sb->resp_len[i]);
        if ((int)got != sb->resp_len[i])
            rec_die(r, key, EXIT_BADINPUT, "has %zu values but the response has %d tokens", got, sb->resp_len[i]);
        for (int t = 0; t < sb->resp_len[i]; t++)
            if (!isfinite(out[sb->resp_off[i] + t]))
                rec_die(r, key, EXIT_RUNTIME, "non-finite value %g at token %d", out[sb->resp_off[i] + t], t);
    }
    return out;
}

float *records_scalar(const RecStore *s, const int *rows, int n, const char *key) {
    float *out = xmalloc((n ? n : 1) * sizeof(float));
    for (int i = 0; i < n; i++) {
        const Record *r = &s->recs[row_of(rows, i)];
        double v = rec_f64(r, key);
        if (!isfinite(v)) rec_die(r, key, EXIT_RUNTIME, "non-finite value %g", v);
        out[i] = (float)v;
    }
    return out;
}

uint8_t *records_eos(const RecStore *s, const int *rows, int n) {
    uint8_t *out = xmalloc(n ? n : 1);
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *f = rec_str(&s->recs[row_of(rows, i)], "finish", &len);
        out[i] = len == 3 && memcmp(f, "eos", 3) == 0;
    }
    return out;
}

void pack_rows(const SeqBatch *full, const float *src, const int *rows, int n, const SeqBatch *sub,
               float *dst) {
    for (int i = 0; i < n; i++)
        memcpy(dst + sub->resp_off[i], src + full->resp_off[rows[i]], sub->resp_len[i] * sizeof(float));
}

void minibatch_order(int *idx, int n, unsigned long long seed) {
    uint64_t x = seed;
    for (int i = 0; i < n; i++) idx[i] = i;
    for (int i = n - 1; i > 0; i--) {
        uint64_t z = rng_splitmix64(&x);
        int j = (int)(z % (unsigned long long)(i + 1));
        int t = idx[i]; idx[i] = idx[j]; idx[j] = t;
    }
}
