// generate.h — batched sampling with the KV cache and continuous batching.
//
// Requests (prompt id, sample index, prompt tokens) are served by `batch` cache rows. Free rows
// are refilled from the queue and prefilled in one pass; then only the active rows are decoded,
// one token per step. A row finishes at EOS (the EOS token is part of the response) or after
// max_new_tokens; its slot goes to the next waiting request.
//
// Per generated token: the token, its log-prob and the full-vocabulary entropy of
// softmax(logits / temperature) (logprob_forward on the logits row: the untruncated policy,
// whatever top-k/top-p kept), and the kept mass of the sampler.
//
// Randomness: token j of a request uses rng_uniform(rng_stream_key(seed, id, sample_index,
// iteration), position) with position = prompt length + j, so results do not depend on the
// batch size, the order of requests or the number of threads (up to the floating-point
// reproducibility of the model's forward for different batch shapes).
#ifndef SAFE_GENERATE_H
#define SAFE_GENERATE_H

#include <stdint.h>

#include "model.h"     // Model
#include "sampler.h"   // SamplerConfig

typedef struct {
    const char *id;           // prompt id: names the RNG stream and error messages
    int sample_index;         // k-th sample of this prompt
    const int32_t *tokens;    // prompt token ids (with BOS when the model wants it)
    int n_tokens;             // >= 1
} GenRequest;

enum { GEN_FINISH_EOS = 1, GEN_FINISH_LENGTH = 2 };

typedef struct {
    int n;                    // generated tokens
    int32_t *tokens;          // (n) EOS included when finish == GEN_FINISH_EOS
    float *logp;              // (n) log p(token) under softmax(logits / temperature)
    float *entropy;           // (n) entropy of that distribution
    float *kept_mass;         // (n) probability mass the sampler kept (1 without top-k/top-p)
    int finish;               // GEN_FINISH_EOS or GEN_FINISH_LENGTH
} GenResult;

typedef struct {
    SamplerConfig sampler;
    int max_new_tokens;       // > 0; capped per request so prompt + response fits max_seq_len
    int batch;                // cache rows decoded together, > 0
    int eos_id;               // stops a row (< 0: never)
    uint64_t seed;
    int iteration;            // part of every RNG stream key
    int quiet;                // no progress output
} GenConfig;

// Called as each request finishes, in completion order (not request order), from the calling
// thread. The result is owned by `out` (or by generate when out is NULL: valid during the call).
typedef void (*GenDoneFn)(void *ctx, int request, const GenResult *res);

// Run all n requests. out: (n) results in request order, or NULL to keep nothing (then
// on_done must consume them). Dies with exit 3 naming the prompt id, sample and position when
// a logits row holds NaN or infinity (no token is emitted for it).
void generate(Model *m, const GenConfig *cfg, const GenRequest *reqs, int n, GenResult *out,
              GenDoneFn on_done, void *ctx);
void gen_result_free(GenResult *r);   // frees the arrays, not r
const char *gen_finish_name(int finish);   // "eos", "length"

#endif
