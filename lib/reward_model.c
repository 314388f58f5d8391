// reward_model.c — *ForSequenceClassification reward models: load, batched scoring.
#include "reward_model.h"

#include "jsonfile.h"   // json_load_file_lenient

#include "lora.h"         // lora_is_adapter_dir: adapters are refused with a hint
#include "checkpoint.h"   // checkpoint_load_backbone, checkpoint_read_tensor, checkpoint_tensor_shape
#include "common.h"       // die, xmalloc, exit codes

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

RewardModel *reward_model_load(const char *dir) {
    if (lora_is_adapter_dir(dir))
        die(EXIT_BADINPUT, "%s is a LoRA adapter: --rm takes a full reward model (merge the adapter into it first, "
            "e.g. with PEFT's merge_and_unload; its score head is a module this engine does not apply)", dir);
    char cp[4096];
    snprintf(cp, sizeof cp, "%s/config.json", dir);
    json_error_t err;
    json_t *j = json_load_file_lenient(cp, &err);
    if (!j) die(EXIT_BADINPUT, "%s: %s (line %d)\n  hint: --rm takes a Hugging Face model directory", cp, err.text, err.line);
    const char *arch = json_string_value(json_array_get(json_object_get(j, "architectures"), 0));
    if (!arch || !strstr(arch, "ForSequenceClassification"))
        die(EXIT_BADINPUT, "%s: architectures[0] is \"%s\", not a *ForSequenceClassification reward model\n"
            "  hint: reward models are LlamaForSequenceClassification / Qwen2ForSequenceClassification "
            "checkpoints with a score.weight head", cp, arch ? arch : "(none)");
    json_t *nl = json_object_get(j, "num_labels");
    json_t *id2label = json_object_get(j, "id2label");
    long labels = json_is_integer(nl) ? (long)json_integer_value(nl) : json_is_object(id2label) ? (long)json_object_size(id2label) : 1;
    json_t *pad = json_object_get(j, "pad_token_id");
    int pad_id = json_is_integer(pad) ? (int)json_integer_value(pad) : -1;

    int64_t shape[ST_MAX_DIMS];
    int nd = checkpoint_tensor_shape(dir, "score.weight", shape);
    if (nd < 0) die(EXIT_BADINPUT, "%s: no tensor \"score.weight\": not a sequence-classification checkpoint", dir);
    if (checkpoint_tensor_shape(dir, "score.bias", shape) >= 0 || (nd = checkpoint_tensor_shape(dir, "score.weight", shape)) < 0)
        die(EXIT_BADINPUT, "%s: the score head has a bias (score.bias); HF's Llama/Qwen2 heads have none", dir);
    if (nd != 2 || shape[0] != 1 || labels != 1)
        die(EXIT_BADINPUT, "%s: score.weight has %lld labels (num_labels %ld); a reward model has exactly 1",
            dir, nd == 2 ? (long long)shape[0] : -1LL, labels);

    RewardModel *rm = xcalloc(1, sizeof *rm);
    rm->m = checkpoint_load_backbone(dir);
    if (shape[1] != rm->m->cfg.dim)
        die(EXIT_BADINPUT, "%s: score.weight is (1, %lld) but hidden_size is %d", dir, (long long)shape[1], rm->m->cfg.dim);
    rm->score_w = xmalloc((size_t)rm->m->cfg.dim * sizeof(float));
    int64_t want[2] = {1, rm->m->cfg.dim};
    checkpoint_read_tensor(dir, "score.weight", rm->score_w, 2, want);
    rm->pad_id = pad_id;
    rm->dir = xstrdup(dir);
    rm->arch = xstrdup(arch);
    json_decref(j);
    return rm;
}

void reward_model_free(RewardModel *rm) {
    if (!rm) return;
    model_free(rm->m);
    free(rm->score_w);
    free(rm->dir);
    free(rm->arch);
    free(rm);
}

// sort key: longest first, so each batch pads to its own first row
static const int *sort_lens;
static int by_len_desc(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (sort_lens[i] != sort_lens[j]) return sort_lens[j] - sort_lens[i];
    return i - j;
}

void reward_model_score(RewardModel *rm, const int32_t *const *seqs, const int *lens, int n,
                        const RewardOptions *opt, float *out) {
    if (n <= 0) return;
    const ModelConfig *c = &rm->m->cfg;
    int C = c->dim, bs = opt->batch > 0 ? opt->batch : 1;
    // effective (truncated) length and start of each row
    int *len = xmalloc((size_t)n * sizeof(int)), *start = xmalloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) {
        if (lens[i] <= 0) die(EXIT_BADINPUT, "reward model %s: sequence %d is empty", rm->dir, i);
        len[i] = lens[i];
        start[i] = 0;
        if (opt->max_length > 0 && len[i] > opt->max_length) {
            if (opt->trunc_side == RM_TRUNC_LEFT) start[i] = len[i] - opt->max_length;
            len[i] = opt->max_length;
        }
        for (int t = 0; t < lens[i]; t++)
            if (seqs[i][t] < 0 || seqs[i][t] >= c->vocab_size)
                die(EXIT_BADINPUT, "reward model %s: sequence %d holds token id %d at position %d, outside its vocabulary of %d\n"
                    "  hint: the reward model uses another tokenizer than the policy: score the texts (--rm-input text)",
                    rm->dir, i, seqs[i][t], t, c->vocab_size);
    }
    int *order = xmalloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) order[i] = i;
    sort_lens = len;
    qsort(order, (size_t)n, sizeof(int), by_len_desc);
    sort_lens = NULL;

    int T_max = len[order[0]];
    int32_t *tok = xmalloc((size_t)bs * T_max * sizeof(int32_t));
    uint8_t *mask = xmalloc((size_t)bs * T_max);
    for (int b0 = 0; b0 < n; b0 += bs) {
        int B = n - b0 < bs ? n - b0 : bs, T = len[order[b0]];
        // right-padded batch (B, T): row r holds sequence order[b0 + r]
        for (int r = 0; r < B; r++) {
            int i = order[b0 + r];
            for (int t = 0; t < T; t++) {
                int valid = t < len[i];
                tok[(size_t)r * T + t] = valid ? seqs[i][start[i] + t] : 0;
                mask[(size_t)r * T + t] = (uint8_t)valid;
            }
        }
        model_forward(rm->m, tok, mask, B, T, 0);
        // score = hidden (final-norm output) at the last valid token . score_w
        for (int r = 0; r < B; r++) {
            int i = order[b0 + r];
            const float *h = rm->m->hidden + ((size_t)r * T + (size_t)(len[i] - 1)) * C;
            double s = 0.0;
            for (int k = 0; k < C; k++) s += (double)h[k] * rm->score_w[k];
            if (!isfinite(s)) die(EXIT_RUNTIME, "reward model %s: non-finite score for sequence %d", rm->dir, i);
            out[i] = (float)s;
        }
    }
    free(tok);
    free(mask);
    free(order);
    free(len);
    free(start);
}
