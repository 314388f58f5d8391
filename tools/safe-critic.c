// safe-critic — the double soft-min critic: values, GAE advantages, and the critic's own step.
//
//   safe-critic --critic run/0003/critic -i run/0004/scored.safe
//               -o run/0004/adv.safe --out-critic run/0004/critic
//
// Per iteration: fold the batch's rewards into the running normaliser, value every response
// token with both heads (V1, V2) and their soft-min V_soft, put the normalised score on the
// last valid token, run GAE and whiten the advantages, then train the critic (backbone and
// heads) on the clipped Huber value loss. --algo ppo gives the baseline's single head, the
// KL-in-reward token rewards and the clipped squared value loss.
//
// Data parallel (mpirun -np W safe-critic ...): every rank reads the whole input. The value
// pass is split by record (rank r values records [r·B/W, (r+1)·B/W)) and the per-token values
// are all-gathered in rank order, so every rank holds the values of the whole batch and
// computes the same reward normalisation, GAE and whitening (global statistics, no per-rank
// whitening). Training splits each minibatch the same way: the value loss is a mean over the
// minibatch's global token count (each rank divides by it, as one rank does), the gradients
// are double sums of per-sequence terms (model.h, valuehead.h) summed over the ranks before
// the clip, so every rank takes the step one rank takes on the whole batch (up to double
// rounding); rank 0 writes the records and the critic. The forward is batch-invariant
// (lib/matmul.c), so the records equal 1 rank's.
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adamw.h"       // AdamW, grad_clip
#include "backend.h"     // Backend: the backbone on the CPU or the GPU (--device)
#include "advantage.h"   // RewardNorm, token_rewards, gae_sequence, whiten, advantage_sequence
#include "checkpoint.h"  // model_load, checkpoint_save/load_*
#include "comm.h"        // ranks, slices, all-gather of values, all-reduce of gradients
#include "cli.h"         // opt_float, opt_int, opt_u64
#include "common.h"      // die, xmalloc, exit codes
#include "lora.h"        // LoRA adapters on the critic backbone: --lora-r
#include "losses.h"      // value_loss_safe_*, value_loss_ppo_*
#include "progress.h"    // progress on stderr
#include "recstore.h"    // the whole batch in memory
#include "shard.h"       // output shard, control state
#include "softmin.h"     // softmin_forward/backward
#include "trainbatch.h"  // records -> SeqBatch and packed fields
#include "valuehead.h"   // the value heads

typedef struct {
    const char *critic, *init_from, *control, *input, *output, *out_critic;
    const char *algo, *adv_mode;
    const char *device;   // --device: cpu, cuda, auto (NULL: automatic)
    float gamma, lambda, alpha, vf_clip, huber_delta;
    float lr, weight_decay, grad_clip, beta;
    int epochs, minibatches, head_hidden;
    unsigned long long seed;
    int level, quiet, no_whiten;
    double comm_timeout;   // seconds a collective waits (0: $SAFE_COMM_TIMEOUT or 300)
    LoraOptions lora;      // --lora-*: an adapter on the backbone (cfg.r 0: every weight trains)
} Options;

static void usage(FILE *f) {
    fprintf(f,
        "usage: safe-critic (--critic DIR | --init-from MODEL) -i SCORED.safe -o ADV.safe\n"
        "                   --out-critic DIR [options]\n"
        "\n"
        "Value every response token with the double soft-min critic, compute GAE advantages,\n"
        "and take the critic's optimiser steps.\n"
        "\n"
        "  --critic DIR           the critic checkpoint of the previous iteration\n"
        "  --init-from MODEL      first iteration: a new critic whose backbone is MODEL\n"
        "                         (checkpoint or adapter directory, .gguf, .bin) and fresh heads\n"
        "  --control FILE         control state from safe-pid (the PPO baseline reads beta)\n"
        "  -i, --input FILE       scored records ('-' = stdin, default)\n"
        "  -o, --output FILE      advantaged records ('-' = stdout, default)\n"
        "  --out-critic DIR       where to write the updated critic (required)\n"
        "  --algo safe|ppo        two soft-min heads + Huber loss (safe), or one head, KL in the\n"
        "                         reward and the clipped squared loss (ppo)\n"
        "  --adv token|seq        per-token GAE (default) or the reference's sequence mode\n"
        "  --gamma X --lambda X   GAE discount and trace (1.0, 0.95)\n"
        "  --alpha X              soft-min temperature (0.3)\n"
        "  --vf-clip X            value clip around the recorded values (0.2)\n"
        "  --huber-delta X        Huber threshold (0.5)\n"
        "  --beta X               PPO baseline KL coefficient when no control state has one (0.05)\n"
        "  --lr X                 critic AdamW learning rate (1e-5)\n"
        "  --weight-decay X       (0.01)\n"
        "  --grad-clip X          critic gradient-norm clip (0.5)\n"
        "  --epochs N             (2)    --minibatches N   must divide the batch (1)\n"
        "  --head-hidden N        width of each head's hidden layer (dim/4)\n"
        "  --no-whiten            leave advantages unwhitened\n"
        "  --seed N               head (and new adapter) initialisation, minibatch shuffling (0)\n"
        LORA_USAGE
        "  --level N              zstd level of the output (3; 0 = raw)\n"
        "  -q, --quiet                no progress on stderr\n"
        "  --comm-timeout S       data parallel: seconds a rank waits for the others (300)\n"
        DEVICE_USAGE
        "  --help, --version\n"
        "\n"
        "Data parallel: mpirun -np N safe-critic ... (see DATA PARALLEL in the man page).\n");
}

static void parse_args(int argc, char **argv, Options *o) {
    enum { O_CRITIC = 256, O_INIT, O_CONTROL, O_OUTCRITIC, O_ALGO, O_ADV, O_GAMMA, O_LAMBDA, O_ALPHA,
           O_VFCLIP, O_HUBER, O_BETA, O_LR, O_WD, O_GCLIP, O_EPOCHS, O_MB, O_HH, O_NOWHITEN, O_SEED,
           O_LEVEL, O_QUIET, O_COMMTO, O_HELP, O_VERSION, O_DEVICE, O_LORA_R, O_LORA_ALPHA, O_LORA_TARGETS };
    static const struct option longs[] = {
        {"critic", 1, 0, O_CRITIC}, {"init-from", 1, 0, O_INIT}, {"control", 1, 0, O_CONTROL},
        {"input", 1, 0, 'i'}, {"output", 1, 0, 'o'}, {"out-critic", 1, 0, O_OUTCRITIC},
        {"algo", 1, 0, O_ALGO}, {"adv", 1, 0, O_ADV}, {"gamma", 1, 0, O_GAMMA},
        {"lambda", 1, 0, O_LAMBDA}, {"alpha", 1, 0, O_ALPHA}, {"vf-clip", 1, 0, O_VFCLIP},
        {"huber-delta", 1, 0, O_HUBER}, {"beta", 1, 0, O_BETA}, {"lr", 1, 0, O_LR},
        {"weight-decay", 1, 0, O_WD}, {"grad-clip", 1, 0, O_GCLIP}, {"epochs", 1, 0, O_EPOCHS},
        {"minibatches", 1, 0, O_MB}, {"head-hidden", 1, 0, O_HH}, {"no-whiten", 0, 0, O_NOWHITEN},
        {"seed", 1, 0, O_SEED}, {"level", 1, 0, O_LEVEL}, {"quiet", 0, 0, O_QUIET},
        {"comm-timeout", 1, 0, O_COMMTO}, {"help", 0, 0, O_HELP}, {"version", 0, 0, O_VERSION},
        {"device", 1, 0, O_DEVICE}, {"lora-r", 1, 0, O_LORA_R}, {"lora-alpha", 1, 0, O_LORA_ALPHA},
        {"lora-targets", 1, 0, O_LORA_TARGETS}, {0, 0, 0, 0}};
    *o = (Options){.input = "-", .output = "-", .algo = "safe", .adv_mode = "token", .gamma = 1.0f,
                   .lambda = 0.95f, .alpha = 0.3f, .vf_clip = 0.2f, .huber_delta = 0.5f,
                   .lr = 1e-5f, .weight_decay = 0.01f, .grad_clip = 0.5f, .beta = 0.05f,
                   .epochs = 2, .minibatches = 1, .level = 3, .lora = lora_options_default()};
    int c;
    while ((c = getopt_long(argc, argv, "i:o:q", longs, NULL)) != -1) {
        switch (c) {
        case O_CRITIC: o->critic = optarg; break;
        case O_INIT: o->init_from = optarg; break;
        case O_CONTROL: o->control = optarg; break;
        case 'i': o->input = optarg; break;
        case 'o': o->output = optarg; break;
        case O_OUTCRITIC: o->out_critic = optarg; break;
        case O_ALGO: o->algo = optarg; break;
        case O_ADV: o->adv_mode = optarg; break;
        case O_GAMMA: o->gamma = opt_float("gamma", optarg); break;
        case O_LAMBDA: o->lambda = opt_float("lambda", optarg); break;
        case O_ALPHA: o->alpha = opt_float("alpha", optarg); break;
        case O_VFCLIP: o->vf_clip = opt_float("vf-clip", optarg); break;
        case O_HUBER: o->huber_delta = opt_float("huber-delta", optarg); break;
        case O_BETA: o->beta = opt_float("beta", optarg); break;
        case O_LR: o->lr = opt_float("lr", optarg); break;
        case O_WD: o->weight_decay = opt_float("weight-decay", optarg); break;
        case O_GCLIP: o->grad_clip = opt_float("grad-clip", optarg); break;
        case O_EPOCHS: o->epochs = opt_int("epochs", optarg); break;
        case O_MB: o->minibatches = opt_int("minibatches", optarg); break;
        case O_HH: o->head_hidden = opt_int("head-hidden", optarg); break;
        case O_NOWHITEN: o->no_whiten = 1; break;
        case O_SEED: o->seed = opt_u64("seed", optarg); break;
        case O_LEVEL: o->level = opt_int("level", optarg); break;
        case O_QUIET:
        case 'q': o->quiet = 1; break;
        case O_COMMTO: o->comm_timeout = comm_parse_timeout(optarg); break;
        case O_DEVICE: o->device = optarg; break;
        case O_LORA_R: lora_option(&o->lora, "lora-r", optarg); break;
        case O_LORA_ALPHA: lora_option(&o->lora, "lora-alpha", optarg); break;
        case O_LORA_TARGETS: lora_option(&o->lora, "lora-targets", optarg); break;
        case O_HELP: usage(stdout); exit(EXIT_OK);
        case O_VERSION: safe_print_version("safe-critic"); exit(EXIT_OK);
        default: usage(stderr); exit(EXIT_USAGE);
        }
    }
    if (optind < argc) die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!o->critic == !o->init_from) die(EXIT_USAGE, "give exactly one of --critic DIR and --init-from MODEL");
    lora_options_check(&o->lora);
    if (!o->out_critic) die(EXIT_USAGE, "--out-critic DIR is required (the next iteration's critic)");
    if (strcmp(o->algo, "safe") && strcmp(o->algo, "ppo")) die(EXIT_USAGE, "--algo must be safe or ppo, got '%s'", o->algo);
    if (strcmp(o->adv_mode, "token") && strcmp(o->adv_mode, "seq")) die(EXIT_USAGE, "--adv must be token or seq, got '%s'", o->adv_mode);
    if (o->gamma <= 0 || o->gamma > 1) die(EXIT_USAGE, "--gamma must be in (0, 1] (got %g)", o->gamma);
    if (o->lambda < 0 || o->lambda > 1) die(EXIT_USAGE, "--lambda must be in [0, 1] (got %g)", o->lambda);
    if (o->alpha <= 0) die(EXIT_USAGE, "--alpha must be > 0 (got %g)", o->alpha);
    if (o->vf_clip <= 0) die(EXIT_USAGE, "--vf-clip must be > 0 (got %g)", o->vf_clip);
    if (o->huber_delta <= 0) die(EXIT_USAGE, "--huber-delta must be > 0 (got %g)", o->huber_delta);
    if (o->beta < 0) die(EXIT_USAGE, "--beta must be >= 0 (got %g)", o->beta);
    if (o->lr < 0) die(EXIT_USAGE, "--lr must be >= 0 (got %g)", o->lr);
    if (o->weight_decay < 0) die(EXIT_USAGE, "--weight-decay must be >= 0 (got %g)", o->weight_decay);
    if (o->grad_clip < 0) die(EXIT_USAGE, "--grad-clip must be >= 0 (0 = off; got %g)", o->grad_clip);
    if (o->epochs < 1) die(EXIT_USAGE, "--epochs must be >= 1 (got %d)", o->epochs);
    if (o->minibatches < 1) die(EXIT_USAGE, "--minibatches must be >= 1 (got %d)", o->minibatches);
    if (o->head_hidden < 0) die(EXIT_USAGE, "--head-hidden must be > 0 (got %d)", o->head_hidden);
    if (o->level < 0 || o->level > 19) die(EXIT_USAGE, "--level must be 0..19 (got %d)", o->level);
    (void)device_select(o->device);   // --device cuda without a GPU: exit 1 before any work
}

// ---- the critic: backbone + heads + their optimisers + the reward normaliser ----

typedef struct {
    Model *backbone;
    Backend *bk;         // where the backbone runs; the heads stay on the CPU (C*Hd*2 parameters)
    ValueHead *head;
    AdamW *opt_backbone, *opt_head;
    RewardNorm norm;
} Critic;

static int n_heads_for(const Options *o) { return strcmp(o->algo, "safe") == 0 ? 2 : 1; }

static void head_tensors(ValueHead *vh, int grads, StTensor *out, int *n) {
    ValueHeadTensor t[VALUEHEAD_MAX_TENSORS];
    *n = valuehead_tensors(vh, grads, t);
    for (int i = 0; i < *n; i++) {
        out[i] = (StTensor){.name = t[i].name, .data = t[i].data, .ndim = t[i].ndim};
        for (int d = 0; d < t[i].ndim; d++) out[i].shape[d] = t[i].shape[d];
    }
}

static Critic *critic_load(const Options *o) {
    Critic *c = xcalloc(1, sizeof(*c));
    AdamWConfig ac = {.lr = o->lr, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = o->weight_decay};
    rewardnorm_init(&c->norm);
    if (o->init_from) {
        c->backbone = lora_load_new(o->init_from, &o->lora, o->seed);
        c->head = valuehead_create(c->backbone->cfg.dim, o->head_hidden, n_heads_for(o), o->seed);
        c->opt_backbone = adamw_create(model_trainable(c->backbone).n, ac);
        c->opt_head = adamw_create(c->head->n_params, ac);
        return c;
    }
    c->backbone = lora_load_trainable(o->critic, &o->lora, o->seed);
    json_t *st = checkpoint_load_trainer_state(o->critic);
    if (!st) die(EXIT_BADINPUT, "%s: no trainer_state.json: not a critic checkpoint (make one with --init-from)", o->critic);
    json_t *heads = json_object_get(st, "value_heads"), *hidden = json_object_get(st, "value_head_hidden");
    json_t *nrm = json_object_get(st, "reward_norm");
    if (!json_is_integer(heads) || !json_is_integer(hidden) || !json_is_object(nrm))
        die(EXIT_BADINPUT, "%s/trainer_state.json: missing value_heads, value_head_hidden or reward_norm", o->critic);
    if (json_integer_value(heads) != n_heads_for(o))
        die(EXIT_BADINPUT, "%s: critic has %d value heads but --algo %s needs %d", o->critic,
            (int)json_integer_value(heads), o->algo, n_heads_for(o));
    c->norm.count = json_number_value(json_object_get(nrm, "count"));
    c->norm.mean = json_number_value(json_object_get(nrm, "mean"));
    c->norm.var = json_number_value(json_object_get(nrm, "var"));
    if (!(c->norm.count > 0) || !isfinite(c->norm.mean) || !(c->norm.var >= 0))
        die(EXIT_BADINPUT, "%s/trainer_state.json: field reward_norm is invalid", o->critic);
    c->head = valuehead_create(c->backbone->cfg.dim, (int)json_integer_value(hidden), n_heads_for(o), o->seed);
    StTensor t[VALUEHEAD_MAX_TENSORS];
    int n;
    head_tensors(c->head, 0, t, &n);
    if (!checkpoint_load_group(o->critic, "value_head", t, n))
        die(EXIT_BADINPUT, "%s: value_head.safetensors is missing", o->critic);
    c->opt_backbone = adamw_create(model_trainable(c->backbone).n, ac);
    c->opt_head = adamw_create(c->head->n_params, ac);
    if (!lora_resumes_optimizer(o->critic, c->backbone)) {   // a new adapter on a full critic:
        c->opt_backbone->cfg = ac;                            // both optimisers start at step 0
        json_decref(st);
        return c;
    }
    int had_opt = checkpoint_load_optimizer(o->critic, c->opt_backbone);
    if (!had_opt)
        warn("%s has no optimizer.safetensors (pruned: KEEP_OPT in pipelines/safe.mk?): AdamW starts from "
             "zero moments, so this step differs from the original run's", o->critic);
    c->opt_backbone->cfg = ac;
    StTensor ht[2] = {{.name = "exp_avg", .data = c->opt_head->m, .ndim = 1, .shape = {(int64_t)c->head->n_params}},
                      {.name = "exp_avg_sq", .data = c->opt_head->v, .ndim = 1, .shape = {(int64_t)c->head->n_params}}};
    if (!checkpoint_load_group(o->critic, "value_head_optimizer", ht, 2) && had_opt)   // pruned with it: said above
        warn("%s has no value_head_optimizer.safetensors: the value heads' AdamW starts from zero moments", o->critic);
    c->opt_head->step = c->opt_backbone->step;
    json_decref(st);
    return c;
}

static void critic_save(const Options *o, Critic *c, long iteration) {
    const char *src = o->critic ? o->critic : o->init_from;
    char *tok = model_tokenizer_path(src);
    StTensor t[VALUEHEAD_MAX_TENSORS];
    int n;
    head_tensors(c->head, 0, t, &n);
    StTensor ht[2] = {{.name = "exp_avg", .data = c->opt_head->m, .ndim = 1, .shape = {(int64_t)c->head->n_params}},
                      {.name = "exp_avg_sq", .data = c->opt_head->v, .ndim = 1, .shape = {(int64_t)c->head->n_params}}};
    TensorGroup groups[2] = {{.name = "value_head", .t = t, .n = n}, {.name = "value_head_optimizer", .t = ht, .n = 2}};
    json_t *state = json_pack("{s:I, s:I, s:i, s:i, s:s, s:{s:f, s:f, s:f}}", "step", (json_int_t)c->opt_backbone->step,
                              "iteration", (json_int_t)iteration, "value_heads", c->head->n_heads,
                              "value_head_hidden", c->head->Hd, "algo", o->algo, "reward_norm",
                              "count", c->norm.count, "mean", c->norm.mean, "var", c->norm.var);
    CheckpointParts parts = {.tokenizer_path = tok, .bos_id = -1, .eos_id = -1, .opt = c->opt_backbone,
                             .trainer_state = state, .groups = groups, .n_groups = 2};
    checkpoint_save(o->out_critic, c->backbone, &parts);
    json_decref(state);
    free(tok);
}

static void critic_free(Critic *c) {
    backend_free(c->bk);
    model_free(c->backbone);
    valuehead_free(c->head);
    adamw_free(c->opt_backbone);
    adamw_free(c->opt_head);
    free(c);
}

// Values of every response token of sb: v1, v2 (n_resp; v2 unused with one head). Leaves the
// backbone's and head's activations in place for a following backward. hid: (n_resp, C) scratch.
static void critic_values(Critic *c, const SeqBatch *sb, float *hid, float *v1, float *v2) {
    backend_hidden(c->bk, sb, hid);
    valuehead_forward(c->head, hid, sb->n_resp, v1, c->head->n_heads == 2 ? v2 : NULL);
}

// ---- advantages ----

typedef struct {
    float *rnorm;                 // (B) normalised scores
    float *v1, *v2, *values;      // (n) values before the update; values = V_soft or V1
    float *token_reward;          // (n) per-token rewards (score on the last token, PPO KL)
    float *adv, *ret;             // (n)
} Targets;

static void compute_targets(const Options *o, Critic *c, const RecStore *s, const SeqBatch *sb,
                            double beta, Targets *tg) {
    int B = sb->B, safe = strcmp(o->algo, "safe") == 0;
    size_t n = sb->n_resp ? sb->n_resp : 1;
    // reward normalisation: update the running state with this batch, then normalise
    float *reward = records_scalar(s, NULL, B, "reward");   // NaN -> exit 3 naming the record
    tg->rnorm = xmalloc(B * sizeof(float));
    if (rewardnorm_update(&c->norm, reward, B) != ADV_OK) die(EXIT_RUNTIME, "non-finite reward in the batch");
    rewardnorm_apply(&c->norm, reward, B, tg->rnorm);
    free(reward);
    // values of every response token
    tg->v1 = xmalloc(n * sizeof(float));
    tg->v2 = xmalloc(n * sizeof(float));
    tg->values = xmalloc(n * sizeof(float));
    if (comm_world() == 1) {
        float *hid = xmalloc(n * c->backbone->cfg.dim * sizeof(float));
        critic_values(c, sb, hid, tg->v1, tg->v2);
        free(hid);
    } else {
        // this rank values its records [b0, b1); their tokens are one contiguous run of the
        // packed arrays, so the rank-order all-gather lays out the whole batch's values
        size_t b0, b1;
        comm_slice((size_t)B, &b0, &b1);
        int nl = (int)(b1 - b0);
        int *rows = xmalloc((nl ? nl : 1) * sizeof(int));
        for (int i = 0; i < nl; i++) rows[i] = (int)b0 + i;
        SeqBatch *mine = records_seqbatch(s, rows, nl);
        size_t m = mine->n_resp ? mine->n_resp : 1;
        float *hid = xmalloc(m * c->backbone->cfg.dim * sizeof(float));
        float *v1 = xmalloc(m * sizeof(float)), *v2 = xcalloc(m, sizeof(float));
        critic_values(c, mine, hid, v1, v2);
        size_t got = comm_allgatherv_f32(v1, mine->n_resp, tg->v1, n, "critic values V1");
        comm_allgatherv_f32(v2, mine->n_resp, tg->v2, n, "critic values V2");
        if (got != sb->n_resp) die(EXIT_RUNTIME, "internal error: gathered %zu values for %zu tokens", got, sb->n_resp);
        free(hid); free(v1); free(v2); free(rows);
        seqbatch_free(mine);
    }
    if (safe) softmin_forward(tg->v1, tg->v2, sb->n_resp, o->alpha, tg->values);
    else memcpy(tg->values, tg->v1, n * sizeof(float));
    // per-token rewards: the normalised score on the last valid token (+ PPO's KL penalty)
    float *old = NULL, *ref = NULL;
    if (!safe) {
        old = records_tokfield(s, NULL, B, sb, "logp");
        ref = records_tokfield(s, NULL, B, sb, "ref_logp");
    }
    tg->token_reward = xcalloc(n, sizeof(float));
    tg->adv = xcalloc(n, sizeof(float));
    tg->ret = xcalloc(n, sizeof(float));
    int seq = strcmp(o->adv_mode, "seq") == 0;
    for (int b = 0; b < B; b++) {
        size_t off = sb->resp_off[b];
        int len = sb->resp_len[b];
        if (len == 0) continue;
        token_rewards(old ? old + off : NULL, ref ? ref + off : NULL, len, len, safe ? 0.0f : (float)beta,
                      tg->rnorm[b], tg->token_reward + off);
        if (!seq) {
            gae_sequence(tg->token_reward + off, tg->values + off, len, len, o->gamma, o->lambda,
                         tg->adv + off, tg->ret + off);
        }
    }
    if (seq) {
        // one value per sequence at its last token; A = r~ - V, whitened over sequences
        float *vlast = xmalloc(B * sizeof(float)), *aseq = xmalloc(B * sizeof(float));
        for (int b = 0; b < B; b++) {
            int len = sb->resp_len[b];
            vlast[b] = len ? tg->values[sb->resp_off[b] + len - 1] : 0;
        }
        int rc = o->no_whiten ? ADV_OK : advantage_sequence(tg->rnorm, vlast, B, 1e-8, aseq);
        if (o->no_whiten) for (int b = 0; b < B; b++) aseq[b] = tg->rnorm[b] - vlast[b];
        if (rc != ADV_OK) die(EXIT_BADINPUT, "%s: sequence-mode advantages: %s", s->path, adv_strerror(rc));
        for (int b = 0; b < B; b++) {
            size_t off = sb->resp_off[b];
            int len = sb->resp_len[b];
            for (int t = 0; t < len; t++) {
                tg->adv[off + t] = aseq[b];
                tg->ret[off + t] = tg->rnorm[b];
            }
        }
        free(vlast);
        free(aseq);
    } else if (!o->no_whiten) {
        int rc = whiten(tg->adv, NULL, sb->n_resp, 1e-8, NULL, NULL);
        if (rc != ADV_OK) die(EXIT_BADINPUT, "%s: cannot whiten advantages: %s", s->path, adv_strerror(rc));
    }
    free(old);
    free(ref);
}

static void targets_free(Targets *tg) {
    free(tg->rnorm); free(tg->v1); free(tg->v2); free(tg->values);
    free(tg->token_reward); free(tg->adv); free(tg->ret);
}

// ---- training ----

typedef struct {
    double value_loss, grad_norm, clip_frac;
    int updates;
} CriticStats;

// Value loss statistics of one head over n tokens.
static ValueStats head_stats(const Options *o, const float *v, const float *v_old, const float *ret,
                             const uint8_t *mask, size_t n) {
    if (strcmp(o->algo, "safe") == 0) return value_loss_safe_forward(v, v_old, ret, mask, n, o->vf_clip, o->huber_delta);
    return value_loss_ppo_forward(v, v_old, ret, mask, n, o->vf_clip);
}

// The value loss gradient of one head (dv += ...): a mean over n_mean tokens, times weight.
static void head_loss_backward(const Options *o, const float *v, const float *v_old, const float *ret,
                               const uint8_t *mask, size_t n, float weight, size_t n_mean, float *dv) {
    if (strcmp(o->algo, "safe") == 0)
        value_loss_safe_backward(v, v_old, ret, mask, n, o->vf_clip, o->huber_delta, weight, n_mean, dv);
    else
        value_loss_ppo_backward(v, v_old, ret, mask, n, o->vf_clip, weight, n_mean, dv);
}

// One optimiser step on the minibatch `rows_mb` (n_mb rows), of which this rank computes its
// slice (comm_slice); every rank ends with the same parameters.
static void train_minibatch(const Options *o, Critic *c, const RecStore *s, const SeqBatch *full,
                            const Targets *tg, const int *rows_mb, int n_mb, CriticStats *cs) {
    size_t b0, b1;
    comm_slice((size_t)n_mb, &b0, &b1);
    const int *rows = rows_mb + b0;
    int nrows = (int)(b1 - b0);
    // tokens the value loss sees in the whole minibatch (all ranks)
    int seq = strcmp(o->adv_mode, "seq") == 0;
    size_t n_global = 0;
    for (int i = 0; i < n_mb; i++) {
        int len = full->resp_len[rows_mb[i]];
        n_global += seq ? (len > 0) : (size_t)len;
    }
    SeqBatch *sb = records_seqbatch(s, rows, nrows);
    size_t n = sb->n_resp ? sb->n_resp : 1;
    int C = c->backbone->cfg.dim, heads = c->head->n_heads;
    float *hid = xmalloc(n * C * sizeof(float));
    float *v1 = xmalloc(n * sizeof(float)), *v2 = xmalloc(n * sizeof(float));
    float *o1 = xmalloc(n * sizeof(float)), *o2 = xmalloc(n * sizeof(float)), *ret = xmalloc(n * sizeof(float));
    float *dv1 = xcalloc(n, sizeof(float)), *dv2 = xcalloc(n, sizeof(float));
    uint8_t *mask = xcalloc(n, 1);
    pack_rows(full, tg->v1, rows, nrows, sb, o1);
    pack_rows(full, tg->v2, rows, nrows, sb, o2);
    pack_rows(full, tg->ret, rows, nrows, sb, ret);
    // the value loss sees every valid token, or (sequence mode) each row's last one
    for (int b = 0; b < sb->B; b++) {
        int len = sb->resp_len[b];
        if (seq && len) mask[sb->resp_off[b] + len - 1] = 1;
        else if (!seq) memset(mask + sb->resp_off[b], 1, len);
    }

    critic_values(c, sb, hid, v1, v2);
    // each head regresses on the returns around its own recorded values; the soft-min of the
    // two is what the advantages used (pessimism at use time, two independent estimates).
    // The gradients divide by the minibatch's token count over all ranks, as one rank does.
    float w = 1.0f / heads;
    head_loss_backward(o, v1, o1, ret, mask, sb->n_resp, w, n_global, dv1);
    if (heads == 2) head_loss_backward(o, v2, o2, ret, mask, sb->n_resp, w, n_global, dv2);
    // the statistics: per-record sums, summed in record order over all ranks (the same bits
    // on any number of ranks)
    double *per = xcalloc((size_t)n_mb * 2, sizeof(double)), sums[2];   // (n_mb, 2): loss, clipped
    for (int b = 0; b < sb->B; b++) {
        size_t off = sb->resp_off[b], len = (size_t)sb->resp_len[b];
        double *row = per + (b0 + b) * 2;
        for (int k = 0; k < heads; k++) {
            ValueStats r = head_stats(o, k ? v2 + off : v1 + off, k ? o2 + off : o1 + off, ret + off, mask + off, len);
            row[0] += w * r.loss_sum;
            row[1] += w * r.clip_count;
        }
    }
    comm_record_sums(per, (size_t)n_mb, 2, b0, b1, sums, "critic loss statistics");
    free(per);
    double loss = n_global ? sums[0] / (double)n_global : 0, clip = n_global ? sums[1] / (double)n_global : 0;
    if (!isfinite(loss)) die(EXIT_RUNTIME, "non-finite critic value loss: lower the critic --lr?");

    // backward: heads -> hidden at the predicting positions -> backbone
    backend_zero_grad(c->bk);
    valuehead_zero_grad(c->head);
    float *dh = xcalloc(n * C, sizeof(float));
    valuehead_backward(c->head, hid, sb->n_resp, sb->resp_len, sb->B, dv1, heads == 2 ? dv2 : NULL, dh);
    backend_hidden_backward(c->bk, sb, dh);   // scattered to the predicting positions, then the backbone
    backend_allreduce_grads(c->bk, "critic backbone gradients");
    if (comm_world() > 1) {
        comm_allreduce_f64(c->head->grad_sum, c->head->n_params, COMM_SUM, "value head gradients");
        valuehead_round_grads(c->head);
    }
    const char *gnames[2] = {"backbone", "value_head"};
    const float *gbufs[2] = {backend_grads_for_dump(c->bk), c->head->grads};
    size_t glens[2] = {model_trainable(c->backbone).n, c->head->n_params};
    comm_dump_grads(cs->updates, 2, gnames, gbufs, glens);

    // one global norm over backbone and heads, then both optimisers step
    double n1 = backend_clip_grads(c->bk, 0);
    double n2 = grad_clip(c->head->grads, c->head->n_params, 0);
    double norm = sqrt(n1 * n1 + n2 * n2);
    if (!isfinite(norm)) die(EXIT_RUNTIME, "non-finite critic gradient: lower the critic --lr?");
    if (o->grad_clip > 0 && norm > o->grad_clip) {
        float scale = (float)(o->grad_clip / (norm + 1e-6));
        backend_scale_grads(c->bk, scale);
        for (size_t i = 0; i < c->head->n_params; i++) c->head->grads[i] *= scale;
    }
    backend_adamw_step(c->bk, c->opt_backbone);
    adamw_step(c->opt_head, c->head->params, c->head->grads);

    cs->value_loss += loss;
    cs->clip_frac += clip;
    cs->grad_norm += norm;
    cs->updates++;
    free(hid); free(v1); free(v2); free(o1); free(o2); free(ret); free(dv1); free(dv2);
    free(mask); free(dh);
    seqbatch_free(sb);
}

// ---- output ----

// The advantaged records into w (shard_create'd before the critic was saved), committed.
static void write_output(ShardWriter *w, const Options *o, const RecStore *s, const SeqBatch *sb,
                         const Targets *tg, const Critic *c, const CriticStats *cs, double beta) {
    Fields *h = fields_new();
    double u = cs->updates ? cs->updates : 1;
    fields_str(h, "kind", "adv");
    fields_str(h, "tool", "safe-critic");
    fields_str(h, "tool_version", SAFE_VERSION);
    fields_str(h, "algo", o->algo);
    fields_str(h, "adv_mode", o->adv_mode);
    fields_f64(h, "value_loss", cs->value_loss / u);
    fields_f64(h, "critic_grad_norm", cs->grad_norm / u);
    fields_f64(h, "value_clip_frac", cs->clip_frac / u);
    fields_f64(h, "reward_norm_count", c->norm.count);
    fields_f64(h, "reward_norm_mean", c->norm.mean);
    fields_f64(h, "reward_norm_var", c->norm.var);
    if (strcmp(o->algo, "ppo") == 0) fields_f64(h, "beta", beta);
    shard_write_header(w, s->header.map, h);
    Fields *f = fields_new();
    int safe = strcmp(o->algo, "safe") == 0;
    for (int b = 0; b < sb->B; b++) {
        size_t off = sb->resp_off[b], len = sb->resp_len[b];
        fields_clear(f);
        fields_f64(f, "reward_norm", tg->rnorm[b]);
        fields_f32s(f, "v1", tg->v1 + off, len);
        if (safe) {
            fields_f32s(f, "v2", tg->v2 + off, len);
            fields_f32s(f, "v_soft", tg->values + off, len);
        }
        fields_f32s(f, "values", tg->values + off, len);
        fields_f32s(f, "token_reward", tg->token_reward + off, len);
        fields_f32s(f, "adv", tg->adv + off, len);
        fields_f32s(f, "ret", tg->ret + off, len);
        shard_write(w, &s->recs[b], f);
    }
    shard_commit(w);
    fields_free(f);
    fields_free(h);
}

static double read_beta(const Options *o) {
    if (!o->control) return o->beta;
    ShardReader *r = shard_open(o->control);
    shard_expect_kind(shard_header_record(r), "control", "control states are made by safe-pid (--init for the first)");
    Record rec;
    double beta = o->beta;
    if (shard_next(r, &rec) && rec_has(&rec, "beta")) beta = rec_f64(&rec, "beta");
    if (!isfinite(beta) || beta < 0) die(EXIT_BADINPUT, "%s: record 0: field 'beta' must be finite and >= 0", o->control);
    shard_close(r);
    return beta;
}

int main(int argc, char **argv) {
    safe_progname = "safe-critic";
    Options o;
    parse_args(argc, argv, &o);
    checkpoint_check_target(o.out_critic);   // before any work: saving replaces the directory
    checkpoint_check_apart(o.out_critic, o.critic ? o.critic : o.init_from, o.critic ? "--critic" : "--init-from");
    checkpoint_check_apart(o.out_critic, o.input, "-i");
    checkpoint_check_apart(o.out_critic, o.output, "-o");
    checkpoint_check_apart(o.out_critic, o.control, "--control");
    output_check(o.output, "-o");
    comm_init(o.comm_timeout);
    comm_check_same_args(argc, argv);
    const CommInfo *ci = comm_info();
    int root = ci->rank == 0;   // rank 0 writes the records and the critic; the others nothing
    if (ci->world > 1) {
        if (strcmp(o.input, "-") == 0)
            die(EXIT_USAGE, "with %d ranks the input must be a file (-i FILE): only rank 0 sees standard input", ci->world);
        if (!root) o.quiet = 1;
    }
    double beta = read_beta(&o);
    RecStore *s = recstore_read(o.input);
    shard_expect_kind(&s->header, "scored|adv", "safe-critic reads safe-score's output (records with a reward)");
    if (s->n == 0) die(EXIT_BADINPUT, "%s: no records", s->path);
    if (s->n < 2 && !o.no_whiten && strcmp(o.adv_mode, "seq") == 0)
        die(EXIT_BADINPUT, "%s: 1 record: --adv seq whitens advantages over the sequences and needs at least 2 "
            "(or give --no-whiten)", s->path);
    if (s->n % (size_t)o.minibatches != 0)
        die(EXIT_USAGE, "--minibatches %d does not divide the batch of %zu records", o.minibatches, s->n);
    if (s->n / (size_t)o.minibatches < (size_t)ci->world)
        die(EXIT_USAGE, "minibatches of %zu record(s) cannot be split over %d ranks: use fewer --minibatches or fewer ranks",
            s->n / (size_t)o.minibatches, ci->world);
    long iteration = (long)recstore_header_f64(s, "iteration", 0);

    Critic *c = critic_load(&o);
    lora_check_output(o.out_critic, o.critic ? o.critic : o.init_from, c->backbone);
    c->bk = backend_create(c->backbone, device_select(o.device), "safe-critic",
                           o.quiet);
    int B = (int)s->n;
    SeqBatch *sb = records_seqbatch(s, NULL, B);
    if (ci->world > 1) {
        // every rank must start from the same critic, optimiser state, normaliser and batch
        Trainable tr = model_trainable(c->backbone);   // with an adapter: its weights too
        uint64_t h[7] = {comm_hash(c->backbone->params, c->backbone->n_params * sizeof(float)) ^
                             (c->backbone->lora ? comm_hash(tr.params, tr.n * sizeof(float)) : 0),
                         comm_hash(c->head->params, c->head->n_params * sizeof(float)),
                         comm_hash(c->opt_backbone->m, c->opt_backbone->n * sizeof(float)),
                         comm_hash(c->opt_backbone->v, c->opt_backbone->n * sizeof(float)),
                         comm_hash(c->opt_head->m, c->opt_head->n * sizeof(float)),
                         comm_hash(&c->norm, sizeof c->norm) ^ comm_hash(&beta, sizeof beta),
                         comm_hash(sb->tokens, (size_t)sb->B * sb->T * sizeof(int32_t))};
        static const char *const names[7] = {"critic weights (backbone)", "value heads", "AdamW first moments",
                                             "AdamW second moments", "value-head AdamW moments",
                                             "control state (reward normaliser, beta)", "input batch (tokens)"};
        comm_check_same_hashes(h, 7, names);
        if (root && !o.quiet)
            fprintf(stderr, "safe-critic: %d ranks (%s): each values 1/%d of the batch and takes its slice of "
                    "every minibatch of %zu records; rank 0 writes the outputs\n", ci->world, ci->source, ci->world,
                    s->n / (size_t)o.minibatches);
    }
    Targets tg = {0};
    compute_targets(&o, c, s, sb, beta, &tg);

    CriticStats cs = {0};
    int mb = B / o.minibatches;
    int *idx = xmalloc(B * sizeof(int));
    Progress *p = progress_start("critic", (long)o.epochs * o.minibatches, "steps", o.quiet);
    for (int e = 0; e < o.epochs; e++) {
        if (o.minibatches > 1) minibatch_order(idx, B, o.seed * 1000003ULL + (unsigned long long)iteration * 101 + e);
        else for (int i = 0; i < B; i++) idx[i] = i;
        for (int k = 0; k < o.minibatches; k++) {
            train_minibatch(&o, c, s, sb, &tg, idx + k * mb, mb, &cs);
            progress_update(p, (long)e * o.minibatches + k + 1, 0);
        }
    }
    progress_end(p);

    // the ranks took identical steps: check it (cheap) before rank 0 writes
    backend_sync(c->bk, c->opt_backbone);   // backbone weights and moments back from the device
    comm_check_same(c->backbone->params, c->backbone->n_params * sizeof(float), "the updated critic backbone");
    comm_check_same(c->head->params, c->head->n_params * sizeof(float), "the updated value heads");
    if (root) {
        // the output file is created first, so a failure to create it leaves no new critic
        ShardWriter *w = shard_create(o.output, o.level);
        critic_save(&o, c, iteration);
        write_output(w, &o, s, sb, &tg, c, &cs, beta);
    }

    free(idx);
    targets_free(&tg);
    seqbatch_free(sb);
    critic_free(c);
    recstore_free(s);
    comm_finalize();
    return EXIT_OK;
}
