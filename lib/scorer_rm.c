// scorer_rm.c — the neural reward model as a Scorer: requests -> token rows -> reward_model_score.
#include "scorer.h"

#include "checkpoint.h"     // model_tokenizer_path: the reward model's own tokenizer
#include "common.h"         // die, xmalloc, exit codes
#include "reward_model.h"   // RewardModel, reward_model_score
#include "tokenizer.h"      // tokenizer_load, tokenizer_encode (text input)

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    RewardModel *rm;
    Tokenizer *tok;         // text input only
    ScorerRmOptions opt;
} RmScorer;

static void rm_score_batch(void *impl, const ScoreRequest *req, int n, double *reward, ScoreComponents *comp) {
    RmScorer *s = impl;
    const int32_t **seqs = xmalloc((size_t)n * sizeof *seqs);
    int32_t **owned = xcalloc((size_t)n, sizeof *owned);
    int *lens = xmalloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) {
        if (s->opt.input == RM_INPUT_TOKENS) {
            if (!req[i].tokens)
                die(EXIT_BADINPUT, "record '%s': no prompt_tokens/response_tokens for the reward model\n"
                    "  hint: --rm-input text scores the texts with the reward model's tokenizer", req[i].id);
            seqs[i] = req[i].tokens;
            lens[i] = req[i].n_tokens;
        } else {
            // prompt + response as one text, encoded as the reward model's tokenizer does
            size_t tl = req[i].prompt_len + req[i].response_len;
            char *text = xmalloc(tl + 1);
            memcpy(text, req[i].prompt, req[i].prompt_len);
            memcpy(text + req[i].prompt_len, req[i].response, req[i].response_len);
            text[tl] = '\0';
            if (strlen(text) != tl) die(EXIT_BADINPUT, "record '%s': a NUL byte inside the text", req[i].id);
            owned[i] = xmalloc(tokenizer_max_tokens(text) * sizeof(int32_t));
            lens[i] = tokenizer_encode(s->tok, text, 1, 0, owned[i]);
            seqs[i] = owned[i];
            free(text);
        }
        if (lens[i] <= 0) die(EXIT_BADINPUT, "record '%s': nothing to score (no tokens)", req[i].id);
    }
    float *out = xmalloc((size_t)n * sizeof(float));
    RewardOptions ro = {.batch = s->opt.batch, .max_length = s->opt.max_length, .trunc_side = s->opt.trunc_side};
    reward_model_score(s->rm, seqs, lens, n, &ro, out);
    for (int i = 0; i < n; i++) {
        reward[i] = out[i];
        if (comp) {
            components_clear(&comp[i]);
            components_add(&comp[i], "score", out[i]);
        }
        free(owned[i]);
    }
    free(out);
    free(lens);
    free(owned);
    free(seqs);
}

// Gather several forward batches per call: sorting by length inside a call pads less.
static int rm_batch(const void *impl) {
    const RmScorer *s = impl;
    return s->opt.batch * 4;
}

static void rm_free(void *impl) {
    RmScorer *s = impl;
    reward_model_free(s->rm);
    if (s->tok) tokenizer_free(s->tok);
    free(s);
}

static const ScorerOps RM_OPS = {"rm", rm_score_batch, rm_batch, rm_free};

Scorer *scorer_rm(const char *dir, const ScorerRmOptions *opt) {
    RmScorer *s = xcalloc(1, sizeof *s);
    s->opt = *opt;
    if (s->opt.batch < 1) s->opt.batch = 1;
    s->rm = reward_model_load(dir);
    char *tp = NULL;
    if (opt->input == RM_INPUT_TEXT) {
        tp = opt->tokenizer ? xstrdup(opt->tokenizer) : model_tokenizer_path(dir);
        s->tok = tokenizer_load(tp, s->rm->m->cfg.vocab_size);
    }
    char desc[4096];
    snprintf(desc, sizeof desc, "rm dir=%s arch=%s input=%s%s%s max_length=%d truncation=%s batch=%d", dir, s->rm->arch,
             opt->input == RM_INPUT_TEXT ? "text" : "tokens", tp ? " tokenizer=" : "", tp ? tp : "",
             opt->max_length > 0 ? opt->max_length : 0, opt->trunc_side == RM_TRUNC_LEFT ? "left" : "right", s->opt.batch);
    free(tp);
    return scorer_new(&RM_OPS, s, desc);
}
