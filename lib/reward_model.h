// reward_model.h — a Hugging Face *ForSequenceClassification reward model: the Llama/Qwen2
// backbone plus `score.weight` (num_labels = 1, no bias), read at the last valid token.
//
//   RewardModel *rm = reward_model_load("rm-dir");          // LlamaForSequenceClassification ...
//   reward_model_score(rm, seqs, lens, n, &opt, scores);    // scores (n)
//
// What transformers computes: logits = score(hidden_states) at every position, then the row of
// the last non-pad token (it finds the first pad_token_id in each row and steps back one; with
// right padding and no pad id inside the sequence that is position len-1). We read position
// len-1 of each (right-padded, masked) row directly, so the pad id never needs to be told apart
// from real tokens — the two agree whenever the pad id does not occur inside a sequence.
//
// Truncation (max_length > 0): keep the first max_length tokens (RM_TRUNC_RIGHT, the
// tokenizers' default truncation_side "right", what a pipeline or a TRL user gets from
// truncation=True) or the last max_length (RM_TRUNC_LEFT: keeps the end of the response).
#ifndef SAFE_REWARD_MODEL_H
#define SAFE_REWARD_MODEL_H

#include <stdint.h>

#include "model.h"   // Model: the backbone

enum { RM_TRUNC_RIGHT = 0, RM_TRUNC_LEFT = 1 };

typedef struct {
    Model *m;           // backbone; built tied (its LM head, the embeddings, is never used)
    float *score_w;     // (C) the score head's single row
    int pad_id;         // config.json pad_token_id, -1 when absent (for information)
    char *dir;
    char *arch;         // config.json architectures[0]
} RewardModel;

typedef struct {
    int batch;          // rows per forward (> 0)
    int max_length;     // > 0: truncate; <= 0: no truncation
    int trunc_side;     // RM_TRUNC_RIGHT (keep the start) or RM_TRUNC_LEFT (keep the end)
} RewardOptions;

// Dies (exit 2) naming the directory: missing score.weight, num_labels != 1, a score bias.
RewardModel *reward_model_load(const char *dir);
void reward_model_free(RewardModel *rm);

// Score n token sequences seqs[i] (lens[i] >= 1 tokens, ids < vocab size). Rows are sorted
// by length and forwarded in right-padded batches of opt->batch. Dies (exit 2) on an empty
// sequence or an id outside the vocabulary (naming the sequence index), (exit 3) on a
// non-finite score.
void reward_model_score(RewardModel *rm, const int32_t *const *seqs, const int *lens, int n,
                        const RewardOptions *opt, float *out);

#endif
