// safe-update — the SAFE policy step: PPO clipped surrogate + entropy-gated asymmetric KL
// penalty (EPC, with gradient) + entropy bonus, AdamW; or the PPO baseline (--algo ppo).
//
//   safe-update --policy run/0003/policy --control run/0003/control.safe
//               -i run/0004/adv.safe -o run/0004/policy > run/0004/stats.safe
//
// Reads advantaged records (safe-critic's output), writes the next policy checkpoint with its
// optimiser state, and one stats record (SAFE-SPEC §8: what this stage knows) on stdout.
//
// Data parallel (mpirun -np W safe-update ...): every rank reads the whole input and takes
// records [r·B/W, (r+1)·B/W) of each minibatch of B, so minibatches are those of one rank.
// Token means are over the minibatch's GLOBAL token count (each rank's backward divides by
// n_global, as one rank does), κ is a sum of per-record sums taken in record order over all
// ranks, and the gradients are double sums of per-sequence terms (model.h) summed over the
// ranks before clipping: every rank takes the identical AdamW step, and it is the step one
// rank takes on the whole batch up to the rounding of double sums; rank 0 writes the outputs.
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "adamw.h"       // AdamW
#include "backend.h"     // Backend: the model on the CPU or the GPU (--device)
#include "checkpoint.h"  // model_load, checkpoint_save, model_tokenizer_path
#include "comm.h"        // ranks, slices, all-reduce of gradients and statistics
#include "cli.h"         // opt_float, opt_int, opt_u64
#include "common.h"      // die, xmalloc, exit codes
#include "lora.h"        // LoRA adapters: --lora-r, adapter directories
#include "losses.h"      // ppo_loss_*, entropy_bonus_*, kl_estimate, epc_*
#include "progress.h"    // progress bar on stderr
#include "recstore.h"    // the whole batch in memory
#include "shard.h"       // control state and stats shards
#include "trainbatch.h"  // records -> SeqBatch and packed per-token fields

typedef struct {
    const char *policy, *control, *input, *output, *stats;
    const char *algo;       // "safe" or "ppo"
    const char *device;     // --device: cpu, cuda, auto (NULL: automatic)
    int epochs, minibatches;
    float lr, weight_decay, beta1, beta2, adam_eps;
    float clip_eps, ent_coef, grad_clip;
    float temperature;      // < 0: from the input header
    double step_limit;      // predictive step limit KL_max; 0 = off
    EPCConfig epc;
    int momentum_window;
    unsigned long long seed;
    int level, quiet;
    double comm_timeout;    // seconds a collective waits (0: $SAFE_COMM_TIMEOUT or 300)
    LoraOptions lora;       // --lora-*: cfg.r 0 = no adapter asked for
} Options;

static void usage(FILE *f) {
    fprintf(f,
        "usage: safe-update --policy CKPT -i ADV.safe -o OUTDIR [options] > stats.safe\n"
        "\n"
        "Take the SAFE (or PPO) policy step on a batch of advantaged records.\n"
        "\n"
        "  --policy PATH          current policy: checkpoint directory, PEFT adapter directory\n"
        "                         (its adapter goes on training), .gguf or llama2.c .bin\n"
        "  --control FILE         control state from safe-pid (tau, k_short, k_long, beta);\n"
        "                         absent: the initial state (tau 0.45)\n"
        "  -i, --input FILE       advantaged records from safe-critic ('-' = stdin, default)\n"
        "  -o, --output DIR       next policy checkpoint (or, with an adapter, adapter) directory\n"
        "  --stats FILE           stats shard ('-' = stdout, default)\n"
        "  --algo safe|ppo        SAFE (default) or the PPO baseline (no EPC, no entropy bonus)\n"
        "  --epochs N             passes over the batch (2)\n"
        "  --minibatches N        minibatches per epoch; must divide the batch (1)\n"
        "  --lr X                 AdamW learning rate (1e-5)\n"
        "  --weight-decay X       AdamW decoupled weight decay (0.01)\n"
        "  --clip X               PPO ratio clip epsilon (0.2)\n"
        "  --ent-coef X           entropy bonus c_H (0.01 for safe, 0 for ppo)\n"
        "  --grad-clip X          global gradient-norm clip (1.0; 0 = off)\n"
        "  --temperature T        sampling temperature of the log-probs (default: the rollout's)\n"
        "  --epc-detach           reference-code behaviour: the EPC penalty has no gradient\n"
        "  --kl-estimator k1|k3   estimator of kappa for EPC (k1)\n"
        "  --lambda-a X           EPC penalty weight (0.1)\n"
        "  --h-floor X            entropy-gate floor H_floor (2.0)\n"
        "  --eps-h X              entropy-gate epsilon (0.1)\n"
        "  --gate-min X           entropy-gate minimum (0.5)\n"
        "  --momentum             add the KL momentum term (off)\n"
        "  --lambda-m X           momentum weight (5.0)\n"
        "  --step-limit KLMAX     predictive step limit: scale a step whose KL(old||new) > KLMAX\n"
        "                         (0 = off, the default)\n"
        "  --seed N               minibatch shuffling seed, and a new adapter's initialisation (0)\n"
        LORA_USAGE
        "  --level N              zstd level of the stats shard (3; 0 = raw)\n"
        "  -q, --quiet                no progress on stderr\n"
        "  --comm-timeout S       data parallel: seconds a rank waits for the others (300)\n"
        DEVICE_USAGE
        "  --help, --version\n"
        "\n"
        "Data parallel: mpirun -np N safe-update ... (see DATA PARALLEL in the man page).\n");
}

static void parse_args(int argc, char **argv, Options *o) {
    enum { O_POLICY = 256, O_CONTROL, O_STATS, O_ALGO, O_EPOCHS, O_MB, O_LR, O_WD, O_CLIP, O_ENT,
           O_GCLIP, O_TEMP, O_DETACH, O_KLEST, O_LAMBDA_A, O_HFLOOR, O_EPSH, O_GATEMIN, O_MOM,
           O_LAMBDA_M, O_STEPLIM, O_SEED, O_LEVEL, O_QUIET, O_COMMTO, O_HELP, O_VERSION, O_DEVICE,
           O_LORA_R, O_LORA_ALPHA, O_LORA_TARGETS };
    static const struct option longs[] = {
        {"policy", 1, 0, O_POLICY}, {"control", 1, 0, O_CONTROL}, {"input", 1, 0, 'i'},
        {"output", 1, 0, 'o'}, {"stats", 1, 0, O_STATS}, {"algo", 1, 0, O_ALGO},
        {"epochs", 1, 0, O_EPOCHS}, {"minibatches", 1, 0, O_MB}, {"lr", 1, 0, O_LR},
        {"weight-decay", 1, 0, O_WD}, {"clip", 1, 0, O_CLIP}, {"ent-coef", 1, 0, O_ENT},
        {"grad-clip", 1, 0, O_GCLIP}, {"temperature", 1, 0, O_TEMP}, {"epc-detach", 0, 0, O_DETACH},
        {"kl-estimator", 1, 0, O_KLEST}, {"lambda-a", 1, 0, O_LAMBDA_A}, {"h-floor", 1, 0, O_HFLOOR},
        {"eps-h", 1, 0, O_EPSH}, {"gate-min", 1, 0, O_GATEMIN}, {"momentum", 0, 0, O_MOM},
        {"lambda-m", 1, 0, O_LAMBDA_M}, {"step-limit", 1, 0, O_STEPLIM}, {"seed", 1, 0, O_SEED},
        {"level", 1, 0, O_LEVEL}, {"quiet", 0, 0, O_QUIET}, {"comm-timeout", 1, 0, O_COMMTO},
        {"help", 0, 0, O_HELP}, {"version", 0, 0, O_VERSION}, {"device", 1, 0, O_DEVICE},
        {"lora-r", 1, 0, O_LORA_R}, {"lora-alpha", 1, 0, O_LORA_ALPHA}, {"lora-targets", 1, 0, O_LORA_TARGETS},
        {0, 0, 0, 0}};
    *o = (Options){.input = "-", .stats = "-", .algo = "safe", .epochs = 2, .minibatches = 1,
                   .lr = 1e-5f, .weight_decay = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .temperature = -1,
                   .adam_eps = 1e-8f, .clip_eps = 0.2f, .ent_coef = -1, .grad_clip = 1.0f,
                   .level = 3, .epc = epc_defaults(),
                   .lora = lora_options_default()};
    int c;
    while ((c = getopt_long(argc, argv, "i:o:q", longs, NULL)) != -1) {
        switch (c) {
        case O_POLICY: o->policy = optarg; break;
        case O_CONTROL: o->control = optarg; break;
        case 'i': o->input = optarg; break;
        case 'o': o->output = optarg; break;
        case O_STATS: o->stats = optarg; break;
        case O_ALGO: o->algo = optarg; break;
        case O_EPOCHS: o->epochs = opt_int("epochs", optarg); break;
        case O_MB: o->minibatches = opt_int("minibatches", optarg); break;
        case O_LR: o->lr = opt_float("lr", optarg); break;
        case O_WD: o->weight_decay = opt_float("weight-decay", optarg); break;
        case O_CLIP: o->clip_eps = opt_float("clip", optarg); break;
        case O_ENT: o->ent_coef = opt_float("ent-coef", optarg); break;
        case O_GCLIP: o->grad_clip = opt_float("grad-clip", optarg); break;
        case O_TEMP:
            o->temperature = opt_float("temperature", optarg);
            if (!(o->temperature > 0)) die(EXIT_USAGE, "--temperature must be > 0 (got %g)", o->temperature);
            break;
        case O_DETACH: o->epc.detach = 1; break;
        case O_KLEST:
            if (strcmp(optarg, "k1") == 0) o->epc.est = KL_K1;
            else if (strcmp(optarg, "k3") == 0) o->epc.est = KL_K3;
            else die(EXIT_USAGE, "--kl-estimator must be k1 or k3, got '%s'", optarg);
            break;
        case O_LAMBDA_A: o->epc.lambda_a = opt_float("lambda-a", optarg); break;
        case O_HFLOOR: o->epc.h_floor = opt_float("h-floor", optarg); break;
        case O_EPSH: o->epc.eps_h = opt_float("eps-h", optarg); break;
        case O_GATEMIN: o->epc.gate_min = opt_float("gate-min", optarg); break;
        case O_MOM: o->epc.momentum = 1; break;
        case O_LAMBDA_M: o->epc.lambda_m = opt_float("lambda-m", optarg); break;
        case O_STEPLIM: o->step_limit = opt_float("step-limit", optarg); break;
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
        case O_VERSION: safe_print_version("safe-update"); exit(EXIT_OK);
        default: usage(stderr); exit(EXIT_USAGE);
        }
    }
    if (optind < argc) die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!o->policy) die(EXIT_USAGE, "--policy is required (a checkpoint directory, .gguf or llama2.c .bin)");
    if (!o->output) die(EXIT_USAGE, "-o/--output is required (the next policy's checkpoint directory)");
    int ppo = strcmp(o->algo, "ppo") == 0;
    if (!ppo && strcmp(o->algo, "safe") != 0) die(EXIT_USAGE, "--algo must be safe or ppo, got '%s'", o->algo);
    if (o->ent_coef < 0) o->ent_coef = ppo ? 0.0f : 0.01f;
    if (o->epochs < 1) die(EXIT_USAGE, "--epochs must be >= 1 (got %d)", o->epochs);
    if (o->minibatches < 1) die(EXIT_USAGE, "--minibatches must be >= 1 (got %d)", o->minibatches);
    if (o->lr < 0) die(EXIT_USAGE, "--lr must be >= 0 (got %g)", o->lr);
    if (o->weight_decay < 0) die(EXIT_USAGE, "--weight-decay must be >= 0 (got %g)", o->weight_decay);
    if (o->clip_eps <= 0) die(EXIT_USAGE, "--clip must be > 0 (got %g)", o->clip_eps);
    if (o->grad_clip < 0) die(EXIT_USAGE, "--grad-clip must be >= 0 (0 = off; got %g)", o->grad_clip);
    if (o->step_limit < 0) die(EXIT_USAGE, "--step-limit must be > 0 (0 = off; got %g)", o->step_limit);
    if (o->level < 0 || o->level > 19) die(EXIT_USAGE, "--level must be 0..19 (got %d)", o->level);
    char why[256];
    if (epc_config_check(&o->epc, why, sizeof why) != 0) die(EXIT_USAGE, "%s", why);
    lora_options_check(&o->lora);
    (void)device_select(o->device);   // --device cuda without a GPU: exit 1 before any work
}

// ---- control state ----

typedef struct {
    double tau, k_short, k_long;
    long iteration;
} Control;

static Control read_control(const char *path) {
    Control c = {.tau = 0.45, .k_short = 0, .k_long = 0, .iteration = -1};
    if (!path) return c;   // the initial state: see control.h (tau = clip(0.3 * 1.5))
    ShardReader *r = shard_open(path);
    shard_expect_kind(shard_header_record(r), "control", "control states are made by safe-pid (--init for the first)");
    Record rec;
    if (!shard_next(r, &rec)) die(EXIT_BADINPUT, "%s: control state has no record (make it with safe-pid --init)", path);
    c.tau = rec_f64(&rec, "tau");
    c.k_short = rec_has(&rec, "k_short") ? rec_f64(&rec, "k_short") : 0;
    c.k_long = rec_has(&rec, "k_long") ? rec_f64(&rec, "k_long") : 0;
    if (rec_has(&rec, "iteration")) c.iteration = rec_i64(&rec, "iteration");
    if (!isfinite(c.tau) || !isfinite(c.k_short) || !isfinite(c.k_long))
        rec_die(&rec, "tau", EXIT_BADINPUT, "control state holds a non-finite value");
    shard_close(r);
    return c;
}

// ---- rollout statistics (no gradient; SAFE-SPEC §1) ----

typedef struct {
    double reward_mean, reward_std, reward_norm_mean;
    double h_roll;          // mean over sequences of the per-sequence mean entropy
    double kl_roll;         // the same aggregation of logp_old - ref_logp (k1)
    double kl_seq;          // mean over sequences of the summed k1 (Ziegler's KL, for PPO's beta)
    double length_mean, eos_rate;
} RolloutStats;

// Mean over sequences of the masked per-sequence mean of x (n_resp packed).
static double seq_mean(const SeqBatch *sb, const float *x) {
    double total = 0;
    int seqs = 0;
    for (int b = 0; b < sb->B; b++) {
        if (sb->resp_len[b] == 0) continue;
        double s = 0;
        for (int t = 0; t < sb->resp_len[b]; t++) s += x[sb->resp_off[b] + t];
        total += s / sb->resp_len[b];
        seqs++;
    }
    return seqs ? total / seqs : 0;
}

static RolloutStats rollout_stats(const RecStore *s, const SeqBatch *sb, const float *logp_old,
                                  const float *ref_logp, const float *entropy) {
    RolloutStats st = {0};
    int B = sb->B;
    float *reward = records_scalar(s, NULL, B, "reward");
    uint8_t *eos = records_eos(s, NULL, B);
    double sum = 0, sq = 0, norm_sum = 0, len = 0, eos_n = 0;
    for (int b = 0; b < B; b++) {
        sum += reward[b];
        len += sb->resp_len[b];
        eos_n += eos[b];
        if (rec_has(&s->recs[b], "reward_norm")) norm_sum += rec_f64(&s->recs[b], "reward_norm");
    }
    st.reward_mean = sum / B;
    for (int b = 0; b < B; b++) sq += (reward[b] - st.reward_mean) * (reward[b] - st.reward_mean);
    st.reward_std = B > 1 ? sqrt(sq / (B - 1)) : 0;
    st.reward_norm_mean = norm_sum / B;
    st.length_mean = len / B;
    st.eos_rate = eos_n / B;
    st.h_roll = seq_mean(sb, entropy);
    float *diff = xmalloc((sb->n_resp ? sb->n_resp : 1) * sizeof(float));
    for (size_t i = 0; i < sb->n_resp; i++) diff[i] = logp_old[i] - ref_logp[i];
    st.kl_roll = seq_mean(sb, diff);
    double total = 0;
    for (size_t i = 0; i < sb->n_resp; i++) total += diff[i];
    st.kl_seq = total / B;
    free(diff);
    free(reward);
    free(eos);
    return st;
}

// ---- the update ----

typedef struct {
    double policy_loss, clip_frac, ratio_mean, ratio_max, grad_norm, entropy_train;
    double kappa, k_short, k_long, gate, penalty, step_scale_min;
    int updates, active_updates;
} UpdateStats;

// A minibatch's sums over its tokens, one row per record (comm_record_sums): PPO loss, clipped
// tokens, ratios, entropies, and κ's k(ℓ_θ − ℓ_ref).
enum { S_LOSS, S_CLIP, S_RATIO, S_ENT, S_KAPPA, S_N };

// sums (S_N) over the minibatch's tokens, each a sum over its records in record order of the
// record's own sum: the same bits on any number of ranks. This rank holds records
// [b0, b0 + sb->B) of the n_mb, packed in sb.
static void minibatch_sums(const Options *o, const SeqBatch *sb, const float *logp, const float *old,
                           const float *adv, const float *ent, const float *ref, size_t b0, size_t n_mb,
                           double *sums) {
    double *per = xcalloc(n_mb * S_N, sizeof(double));   // (n_mb, S_N)
    for (int b = 0; b < sb->B; b++) {
        size_t off = sb->resp_off[b], len = (size_t)sb->resp_len[b];
        double *row = per + (b0 + b) * S_N;
        PPOStats r = ppo_loss_forward(logp + off, old + off, adv + off, NULL, len, o->clip_eps);
        row[S_LOSS] = r.loss_sum;
        row[S_CLIP] = r.clip_count;
        row[S_RATIO] = r.ratio_sum;
        for (size_t i = off; i < off + len; i++) row[S_ENT] += ent[i];
        if (ref) row[S_KAPPA] = kl_estimate_sum(logp + off, ref + off, NULL, len, o->epc.est);
    }
    comm_record_sums(per, n_mb, S_N, b0, b0 + sb->B, sums, "minibatch statistics");
    free(per);
}

// Σ_t (ℓ_old − ℓ_new) over the minibatch's tokens (k1 KL(old‖new) times the count), summed
// per record as above: the predictive step limit's measure
static double minibatch_kl_sum(const SeqBatch *sb, const float *lp, const float *lq, size_t b0, size_t n_mb) {
    double *per = xcalloc(n_mb, sizeof(double)), sum;
    for (int b = 0; b < sb->B; b++)
        per[b0 + b] = kl_estimate_sum(lp + sb->resp_off[b], lq + sb->resp_off[b], NULL, sb->resp_len[b], KL_K1);
    comm_record_sums(per, n_mb, 1, b0, b0 + sb->B, &sum, "step-limit KL");
    free(per);
    return sum;
}

// One optimiser step on the minibatch `rows` (n rows), of which this rank computes its slice
// (comm_slice). Returns through st; advances trackers. Every rank ends with the same params.
static void update_minibatch(const Options *o, Backend *bk, Model *m, AdamW *opt, const RecStore *s,
                             const SeqBatch *full, const float *adv_all, const float *old_all,
                             const float *ref_all, const int *rows_mb, int n_mb, double tau,
                             double h_roll, double *k_short, double *k_long, UpdateStats *st) {
    int safe = strcmp(o->algo, "safe") == 0;
    // this rank's records of the minibatch, and the minibatch's token count over all ranks
    size_t b0, b1;
    comm_slice((size_t)n_mb, &b0, &b1);
    const int *rows = rows_mb + b0;
    int n = (int)(b1 - b0);
    size_t n_global = 0;
    for (int i = 0; i < n_mb; i++) n_global += (size_t)full->resp_len[rows_mb[i]];
    SeqBatch *sb = records_seqbatch(s, rows, n);
    double ng = n_global ? (double)n_global : 1.0;
    size_t N = sb->n_resp ? sb->n_resp : 1;
    float *adv = xmalloc(N * sizeof(float)), *old = xmalloc(N * sizeof(float));
    float *ref = xmalloc(N * sizeof(float)), *logp = xmalloc(N * sizeof(float));
    float *ent = xmalloc(N * sizeof(float));
    float *dlogp = xcalloc(N, sizeof(float)), *dent = xcalloc(N, sizeof(float));
    pack_rows(full, adv_all, rows, n, sb, adv);
    pack_rows(full, old_all, rows, n, sb, old);
    pack_rows(full, ref_all, rows, n, sb, ref);

    // forward: log-probs and entropies of the sampled tokens under the current policy
    backend_logprobs(bk, sb, o->temperature, logp, ent);
    for (size_t i = 0; i < sb->n_resp; i++)
        if (!isfinite(logp[i]) || !isfinite(ent[i]))
            die(EXIT_RUNTIME, "non-finite log-prob in the update forward (minibatch token %zu): lower --lr?", i);

    // PPO clipped surrogate and entropy bonus: gradients of means over the minibatch's tokens
    ppo_loss_backward(logp, old, adv, NULL, sb->n_resp, o->clip_eps, 1.0f, n_global, dlogp);
    if (o->ent_coef > 0) entropy_bonus_backward(NULL, sb->n_resp, o->ent_coef, 1.0f, n_global, dent);
    // the minibatch's statistics and κ (which feeds the gradient): record sums over all ranks
    double sums[S_N];
    minibatch_sums(o, sb, logp, old, adv, ent, safe ? ref : NULL, b0, (size_t)n_mb, sums);
    PPOStats ps = ppo_loss_forward(logp, old, adv, NULL, sb->n_resp, o->clip_eps);   // ratio_max
    double ratio_max = sb->n_resp ? ps.ratio_max : 0;
    comm_allreduce_f64(&ratio_max, 1, COMM_MAX, "minibatch ratio max");
    ps.loss = sums[S_LOSS] / ng;
    ps.clip_frac = sums[S_CLIP] / ng;
    ps.ratio_mean = sums[S_RATIO] / ng;
    ps.ratio_max = ratio_max;
    double h_train = sums[S_ENT] / ng;
    double kappa = sums[S_KAPPA] / ng;
    // EPC: one-sided KL penalty above tau, scaled by the entropy gate, gradient through kappa
    // (κ is the global token mean, so every rank takes the same branch and dL/dκ)
    EPCResult er = {0};
    if (safe) {
        er = epc_forward(&o->epc, kappa, *k_short, *k_long, tau, h_roll, NULL);
        epc_backward(&o->epc, &er, logp, ref, NULL, sb->n_resp, 1.0f, n_global, dlogp);
        *k_short = er.k_short;
        *k_long = er.k_long;
    }

    // backward through the model, sum the ranks' gradients, clip, step
    backend_zero_grad(bk);
    backend_logprobs_backward(bk, sb, o->temperature, dlogp, o->ent_coef > 0 ? dent : NULL);
    backend_allreduce_grads(bk, "policy gradients");
    const char *gname = "policy";
    const float *gbuf = backend_grads_for_dump(bk);
    size_t gn = model_trainable(m).n;
    comm_dump_grads(st->updates, 1, &gname, &gbuf, &gn);
    long long bad = backend_first_nonfinite_grad(bk);
    if (bad >= 0) die(EXIT_RUNTIME, "non-finite policy gradient (parameter %lld): lower --lr?", bad);
    double gnorm = backend_clip_grads(bk, o->grad_clip);
    if (o->step_limit > 0) backend_snapshot(bk);
    backend_adamw_step(bk, opt);
    double scale = 1;
    if (o->step_limit > 0) {
        // predictive step limit: KL(old || new) on this minibatch, scale the step back if too big
        float *after = xmalloc(N * sizeof(float));
        backend_logprobs(bk, sb, o->temperature, after, NULL);
        double kl = minibatch_kl_sum(sb, logp, after, b0, (size_t)n_mb) / ng;
        scale = step_limit_scale(kl, o->step_limit);
        if (scale < 1) backend_blend(bk, (float)scale);
        free(after);
    }

    st->policy_loss += ps.loss;
    st->clip_frac += ps.clip_frac;
    st->ratio_mean += ps.ratio_mean;
    if (ps.ratio_max > st->ratio_max) st->ratio_max = ps.ratio_max;
    st->grad_norm += gnorm;
    st->entropy_train += h_train;
    st->kappa = er.kappa;
    st->gate = er.gate;
    st->penalty += er.loss;
    st->active_updates += er.active;
    if (scale < st->step_scale_min) st->step_scale_min = scale;
    st->updates++;
    free(adv); free(old); free(ref); free(logp); free(ent); free(dlogp); free(dent);
    seqbatch_free(sb);
}

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

// The stats record into w (shard_create'd before the checkpoint was saved), committed.
static void write_stats(ShardWriter *w, const Options *o, const RecStore *s, const Control *c,
                        const RolloutStats *rs, const UpdateStats *us, double seconds) {
    Fields *h = fields_new();
    fields_str(h, "kind", "stats");
    fields_str(h, "tool", "safe-update");
    fields_str(h, "tool_version", SAFE_VERSION);
    shard_write_header(w, s->header.map, h);
    Fields *f = fields_new();
    double u = us->updates ? us->updates : 1;
    fields_i64(f, "iteration", (int64_t)recstore_header_f64(s, "iteration", c->iteration > 0 ? c->iteration : 0));
    fields_str(f, "algo", o->algo);
    fields_i64(f, "samples", (int64_t)s->n);
    fields_f64(f, "reward_mean", rs->reward_mean);
    fields_f64(f, "reward_std", rs->reward_std);
    fields_f64(f, "reward_norm_mean", rs->reward_norm_mean);
    fields_f64(f, "kl", rs->kl_roll);
    fields_f64(f, "kl_seq", rs->kl_seq);
    fields_f64(f, "kappa", us->kappa);
    fields_f64(f, "k_short", us->k_short);
    fields_f64(f, "k_long", us->k_long);
    fields_f64(f, "tau", c->tau);
    fields_f64(f, "gate", us->gate);
    fields_f64(f, "penalty", us->penalty / u);
    fields_bool(f, "penalty_active", us->active_updates > 0);
    fields_i64(f, "penalty_active_updates", us->active_updates);
    fields_f64(f, "entropy", rs->h_roll);
    fields_f64(f, "entropy_train", us->entropy_train / u);
    fields_f64(f, "policy_loss", us->policy_loss / u);
    fields_f64(f, "clip_frac", us->clip_frac / u);
    fields_f64(f, "ratio_mean", us->ratio_mean / u);
    fields_f64(f, "ratio_max", us->ratio_max);
    fields_f64(f, "grad_norm", us->grad_norm / u);
    fields_f64(f, "step_scale_min", us->step_scale_min);
    fields_i64(f, "updates", us->updates);
    // the critic's numbers travel in the advantaged shard's header
    const char *critic_keys[] = {"value_loss", "critic_grad_norm", "value_clip_frac", "beta"};
    for (int i = 0; i < 4; i++)
        if (rec_has(&s->header, critic_keys[i]))
            fields_f64(f, critic_keys[i], rec_f64(&s->header, critic_keys[i]));
    fields_f64(f, "length_mean", rs->length_mean);
    fields_f64(f, "eos_rate", rs->eos_rate);
    fields_f64(f, "seconds", seconds);
    fields_f64(f, "peak_rss_mb", peak_rss_mb());
    shard_write(w, NULL, f);
    shard_commit(w);
    fields_free(f);
    fields_free(h);
}

static void save_policy(const Options *o, const Model *m, const AdamW *opt, long iteration) {
    char *tok = model_tokenizer_path(o->policy);
    json_t *state = json_pack("{s:I, s:I, s:s}", "step", (json_int_t)opt->step,
                              "iteration", (json_int_t)iteration, "algo", o->algo);
    CheckpointParts parts = {.tokenizer_path = tok, .bos_id = -1, .eos_id = -1, .opt = opt,
                             .trainer_state = state};
    checkpoint_save(o->output, m, &parts);
    json_decref(state);
    free(tok);
}

int main(int argc, char **argv) {
    safe_progname = "safe-update";
    Options o;
    parse_args(argc, argv, &o);
    checkpoint_check_target(o.output);   // before any work: saving replaces the directory
    checkpoint_check_apart(o.output, o.policy, "--policy");   // the policy itself may be replaced in place
    checkpoint_check_apart(o.output, o.input, "-i");
    checkpoint_check_apart(o.output, o.stats, "--stats");
    checkpoint_check_apart(o.output, o.control, "--control");
    output_check(o.stats, "--stats");
    double t0 = now_seconds();
    comm_init(o.comm_timeout);
    comm_check_same_args(argc, argv);
    const CommInfo *ci = comm_info();
    int root = ci->rank == 0;   // rank 0 writes the checkpoint and the stats; the others nothing
    if (ci->world > 1) {
        if (strcmp(o.input, "-") == 0)
            die(EXIT_USAGE, "with %d ranks the input must be a file (-i FILE): only rank 0 sees standard input", ci->world);
        if (!root) o.quiet = 1;
    }

    Control ctl = read_control(o.control);
    RecStore *s = recstore_read(o.input);
    shard_expect_kind(&s->header, "adv", "safe-update trains on safe-critic's output (values and advantages)");
    if (s->n == 0) die(EXIT_BADINPUT, "%s: no records to train on", s->path);
    if (s->n % (size_t)o.minibatches != 0)
        die(EXIT_USAGE, "--minibatches %d does not divide the batch of %zu records", o.minibatches, s->n);
    if (s->n / (size_t)o.minibatches < (size_t)ci->world)
        die(EXIT_USAGE, "minibatches of %zu record(s) cannot be split over %d ranks: use fewer --minibatches or fewer ranks",
            s->n / (size_t)o.minibatches, ci->world);
    double rollout_temp = recstore_header_f64(s, "temperature", -1);
    if (o.temperature < 0) o.temperature = rollout_temp > 0 ? (float)rollout_temp : 1.0f;
    else if (rollout_temp > 0 && fabs(rollout_temp - o.temperature) > 1e-6)
        warn("--temperature %g differs from the rollout's %g: ratios and KL then compare different distributions",
             o.temperature, rollout_temp);
    if (!(o.temperature > 0)) die(EXIT_BADINPUT, "%s: header field 'temperature' must be > 0", s->path);
    long iteration = (long)recstore_header_f64(s, "iteration", ctl.iteration > 0 ? ctl.iteration : 0);

    Model *m = lora_load_trainable(o.policy, &o.lora, o.seed);
    AdamWConfig ac = {.lr = o.lr, .beta1 = o.beta1, .beta2 = o.beta2, .eps = o.adam_eps,
                      .weight_decay = o.weight_decay};
    AdamW *opt = adamw_create(model_trainable(m).n, ac);
    lora_check_output(o.output, o.policy, m);
    Backend *bk = backend_create(m, device_select(o.device), "safe-update", o.quiet);
    // the moments of what trains: a checkpoint's for its weights, an adapter's for the adapter
    // (a new adapter on a trained checkpoint starts from zero moments)
    if (lora_resumes_optimizer(o.policy, m)) {
        if (!checkpoint_load_optimizer(o.policy, opt) && checkpoint_was_trained(o.policy))
            warn("%s has no optimizer.safetensors (pruned: KEEP_OPT in pipelines/safe.mk?): AdamW starts from "
                 "zero moments, so this step differs from the original run's", o.policy);
        opt->cfg = ac;   // this run's hyper-parameters; the moments and step carry over
    }

    // the whole batch: tokens, old and reference log-probs, rollout entropies, advantages
    int B = (int)s->n;
    SeqBatch *full = records_seqbatch(s, NULL, B);
    float *old = records_tokfield(s, NULL, B, full, "logp");
    float *ref = records_tokfield(s, NULL, B, full, "ref_logp");
    float *ent = records_tokfield(s, NULL, B, full, "entropy");
    float *adv = records_tokfield(s, NULL, B, full, "adv");
    RolloutStats rs = rollout_stats(s, full, old, ref, ent);
    if (ci->world > 1) {
        // every rank must start from the same weights, optimiser state, control and batch
        Trainable tr = model_trainable(m);   // with an adapter: its weights and the base's (merged in m->params)
        uint64_t h[8] = {comm_hash(m->params, m->n_params * sizeof(float)) ^ (m->lora ? comm_hash(tr.params, tr.n * sizeof(float)) : 0),
                         comm_hash(opt->m, opt->n * sizeof(float)), comm_hash(opt->v, opt->n * sizeof(float)),
                         (uint64_t)opt->step, comm_hash(&ctl, sizeof ctl),
                         comm_hash(full->tokens, (size_t)full->B * full->T * sizeof(int32_t)),
                         comm_hash(adv, full->n_resp * sizeof(float)), comm_hash(old, full->n_resp * sizeof(float))};
        static const char *const names[8] = {"policy weights", "AdamW first moments", "AdamW second moments",
                                             "AdamW step counts", "control states", "input batches (tokens)",
                                             "input advantages", "input log-probs"};
        comm_check_same_hashes(h, 8, names);
        if (root && !o.quiet)
            fprintf(stderr, "safe-update: %d ranks (%s): each takes its slice of every minibatch of %d records; "
                    "rank 0 writes the outputs\n", ci->world, ci->source, B / o.minibatches);
    }

    UpdateStats us = {.step_scale_min = 1};
    double k_short = ctl.k_short, k_long = ctl.k_long;
    int mb = B / o.minibatches;
    int *idx = xmalloc(B * sizeof(int));
    Progress *p = progress_start("update", (long)o.epochs * o.minibatches, "steps", o.quiet);
    for (int e = 0; e < o.epochs; e++) {
        if (o.minibatches > 1) minibatch_order(idx, B, o.seed * 1000003ULL + (unsigned long long)iteration * 101 + e);
        else for (int i = 0; i < B; i++) idx[i] = i;
        for (int k = 0; k < o.minibatches; k++) {
            update_minibatch(&o, bk, m, opt, s, full, adv, old, ref, idx + k * mb, mb, ctl.tau, rs.h_roll,
                             &k_short, &k_long, &us);
            progress_update(p, (long)e * o.minibatches + k + 1, 0);
        }
    }
    progress_end(p);
    us.k_short = strcmp(o.algo, "safe") == 0 ? k_short : ctl.k_short;
    us.k_long = strcmp(o.algo, "safe") == 0 ? k_long : ctl.k_long;

    // the ranks took identical steps: check it (cheap) before rank 0 writes
    backend_sync(bk, opt);   // weights and moments back from the device
    comm_check_same(m->params, m->n_params * sizeof(float), "the updated policy");
    if (root) {
        // the stats file is created first, so a failure to create it leaves no new policy
        ShardWriter *w = shard_create(o.stats, o.level);
        save_policy(&o, m, opt, iteration);
        write_stats(w, &o, s, &ctl, &rs, &us, now_seconds() - t0);
    }

    free(idx); free(old); free(ref); free(ent); free(adv);
    seqbatch_free(full);
    adamw_free(opt);
    backend_free(bk);
    model_free(m);
    recstore_free(s);
    comm_finalize();
    return EXIT_OK;
}
