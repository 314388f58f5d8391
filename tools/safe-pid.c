// safe-pid — the controller stage: PID-adapted KL threshold and phase detector (SAFE-SPEC §6),
// and for the PPO baseline the Ziegler adaptive KL coefficient (SAFE-SPEC §7).
//
//   safe-pid [options] [STATS]        STATS: stats shard of iteration t ("-" or none: stdin)
//     --control FILE                  control state t (absent: the initial state)
//     -o FILE                         control state t+1 (default stdout)
//   safe-pid --init -o FILE           the initial control state (τ = 0.45, WARMUP)
//
// The control state is a shard of kind "control" with one record; see man/safe-pid.1 for the
// fields. Everything the controller remembers (EMA, integral, last error, reward history,
// β, the KL trackers) is in that record, so a run resumes exactly.
#include "common.h"    // die, warn, exit codes, SAFE_VERSION
#include "ranks.h"       // ranks_require_one: one process, not several ranks
#include "control.h"   // ControlParams, ControlState, control_update
#include "losses.h"    // kl_ctl_update
#include "shard.h"     // ShardReader/Writer, Record, Fields

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    ControlParams p;
    int rate;                 // controller updates per iteration
    int algo_ppo;             // 0 safe, 1 ppo
    double beta;              // initial β (or the fixed β with --beta-fixed)
    int beta_fixed;
    double kl_target, kl_horizon;
    double kl_n;              // Ziegler n; <= 0: read "samples" from the stats record
    const char *kl_field;     // stats field with the Ziegler KL
    const char *control_path; // NULL: initial state
    const char *out_path;
    const char *stats_path;
    int init, quiet, level;
} Options;

// Everything persisted besides ControlState.
typedef struct {
    long iteration;           // iteration this state is for
    double k_short, k_long;   // EPC trackers (advanced by safe-update, carried here)
    double beta;              // PPO KL coefficient
    double reward_mean;       // r̄ of the last update (NaN in the initial state)
    double kl;                // the stats record's "kl" (NaN when absent)
    int have_kl;
} Extra;

// ---- usage ----

static void usage(FILE *f) {
    fprintf(f,
        "Usage: safe-pid [OPTION]... [STATS]\n"
        "       safe-pid --init [-o FILE]\n"
        "Advance the SAFE controller by one iteration: PID-adapted KL threshold tau on the\n"
        "reward velocity, phase detector, and (--algo ppo) the Ziegler adaptive KL coefficient.\n"
        "Reads the last record of the stats shard STATS (\"-\" or none: stdin) and the control\n"
        "state of this iteration; writes the control state of the next one.\n"
        "\n"
        "  -c, --control FILE        control state t (shard of kind \"control\"); absent: initial state\n"
        "  -o, --output FILE         control state t+1 (default: stdout)\n"
        "      --init                write the initial control state (tau 0.45, WARMUP); no STATS\n"
        "      --algo safe|ppo       default safe\n"
        "      --rate N              controller updates per iteration (reference: 2, one per epoch; default 1)\n"
        "PID and phase detector (SAFE-SPEC section 6):\n"
        "      --kp X --ki X --kd X  gains (0.3, 0.01, 0.05; > 0)\n"
        "      --v-target X          target reward velocity v* (0.001; > 0)\n"
        "      --tau-base X          0.3     --tau-min X  0.1     --tau-max X  0.6\n"
        "      --ema X               weight of the previous reward EMA, in (0,1) (0.95)\n"
        "      --integral-clip X     |I| limit (1)\n"
        "      --window N            phase window (50, at most %d)\n"
        "      --climb-threshold X   CLIMBING if mean(last W) > mean(W before) + X (0.01)\n"
        "      --converged-std X     CONVERGED if std(last W) < X (0.02) ...\n"
        "      --converged-reward X  ... and mean(last W) > X (0.7: tied to the reward scale)\n"
        "      --phase-factors A,B,C,D  WARMUP,CLIMBING,CONVERGED,PLATEAU factors (1.5,1.2,1.0,0.8)\n"
        "PPO baseline (--algo ppo):\n"
        "      --beta X              initial KL coefficient (0.05); the fixed one with --beta-fixed\n"
        "      --beta-fixed          keep beta constant\n"
        "      --kl-target X         Ziegler KL target (6; > 0)\n"
        "      --kl-horizon X        Ziegler horizon (10000; > 0)\n"
        "      --kl-field NAME       stats field holding the KL for the update (kl_seq)\n"
        "      --kl-n N              samples per iteration (default: the stats field samples)\n"
        "Output:\n"
        "      --level N             zstd level 1..19, 0 for raw msgpack (3)\n"
        "  -q, --quiet               no summary line on stderr\n"
        "  -h, --help                this help\n"
        "  -V, --version             version\n"
        "Exit status: 0 ok, 1 usage, 2 bad input (file, record, field named), 3 runtime failure.\n",
        CONTROL_WINDOW_MAX);
}

// ---- option parsing ----

static double parse_num(const char *opt, const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno == ERANGE || !isfinite(v))
        die(EXIT_USAGE, "option --%s: \"%s\" is not a finite number", opt, s);
    return v;
}

static long parse_int(const char *opt, const char *s) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno == ERANGE) die(EXIT_USAGE, "option --%s: \"%s\" is not an integer", opt, s);
    return v;
}

static void parse_factors(const char *s, double f[PHASE_COUNT]) {
    char *buf = xstrdup(s), *save = NULL, *tok = strtok_r(buf, ",", &save);
    int n = 0;
    for (; tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == PHASE_COUNT) die(EXIT_USAGE, "option --phase-factors: expected 4 comma-separated numbers, got more in \"%s\"", s);
        f[n++] = parse_num("phase-factors", tok);
    }
    if (n != PHASE_COUNT)
        die(EXIT_USAGE, "option --phase-factors: expected 4 comma-separated numbers (WARMUP,CLIMBING,CONVERGED,PLATEAU), got %d in \"%s\"", n, s);
    free(buf);
}

enum {
    O_INIT = 256, O_ALGO, O_RATE, O_KP, O_KI, O_KD, O_VT, O_TB, O_TMIN, O_TMAX, O_EMA, O_WIN,
    O_CLIMB, O_CSTD, O_CREW, O_PF, O_ICLIP, O_BETA, O_BFIX, O_KLT, O_KLH, O_KLF, O_KLN, O_LEVEL,
};

static void parse_options(int argc, char **argv, Options *o) {
    static const struct option longopts[] = {
        {"control", required_argument, 0, 'c'}, {"output", required_argument, 0, 'o'},
        {"init", no_argument, 0, O_INIT}, {"algo", required_argument, 0, O_ALGO},
        {"rate", required_argument, 0, O_RATE}, {"kp", required_argument, 0, O_KP},
        {"ki", required_argument, 0, O_KI}, {"kd", required_argument, 0, O_KD},
        {"v-target", required_argument, 0, O_VT}, {"tau-base", required_argument, 0, O_TB},
        {"tau-min", required_argument, 0, O_TMIN}, {"tau-max", required_argument, 0, O_TMAX},
        {"ema", required_argument, 0, O_EMA}, {"window", required_argument, 0, O_WIN},
        {"climb-threshold", required_argument, 0, O_CLIMB}, {"converged-std", required_argument, 0, O_CSTD},
        {"converged-reward", required_argument, 0, O_CREW}, {"phase-factors", required_argument, 0, O_PF},
        {"integral-clip", required_argument, 0, O_ICLIP}, {"beta", required_argument, 0, O_BETA},
        {"beta-fixed", no_argument, 0, O_BFIX}, {"kl-target", required_argument, 0, O_KLT},
        {"kl-horizon", required_argument, 0, O_KLH}, {"kl-field", required_argument, 0, O_KLF},
        {"kl-n", required_argument, 0, O_KLN}, {"level", required_argument, 0, O_LEVEL},
        {"quiet", no_argument, 0, 'q'}, {"help", no_argument, 0, 'h'}, {"version", no_argument, 0, 'V'},
        {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    control_params_default(&o->p);
    o->rate = 1;
    o->beta = 0.05;
    o->kl_target = 6.0;
    o->kl_horizon = 10000.0;
    o->kl_field = "kl_seq";
    o->out_path = "-";
    o->level = 3;
    int c, idx;
    while ((c = getopt_long(argc, argv, "c:o:qhV", longopts, &idx)) != -1) {
        const char *name = c >= 256 ? longopts[idx].name : "";
        switch (c) {
        case 'c': o->control_path = optarg; break;
        case 'o': o->out_path = optarg; break;
        case 'q': o->quiet = 1; break;
        case 'h': usage(stdout); exit(EXIT_OK);
        case 'V': safe_print_version("safe-pid"); exit(EXIT_OK);
        case O_INIT: o->init = 1; break;
        case O_ALGO:
            if (strcmp(optarg, "safe") == 0) o->algo_ppo = 0;
            else if (strcmp(optarg, "ppo") == 0) o->algo_ppo = 1;
            else die(EXIT_USAGE, "option --algo: \"%s\" is neither safe nor ppo", optarg);
            break;
        case O_RATE: o->rate = (int)parse_int(name, optarg); break;
        case O_KP: o->p.kp = parse_num(name, optarg); break;
        case O_KI: o->p.ki = parse_num(name, optarg); break;
        case O_KD: o->p.kd = parse_num(name, optarg); break;
        case O_VT: o->p.v_target = parse_num(name, optarg); break;
        case O_TB: o->p.tau_base = parse_num(name, optarg); break;
        case O_TMIN: o->p.tau_min = parse_num(name, optarg); break;
        case O_TMAX: o->p.tau_max = parse_num(name, optarg); break;
        case O_EMA: o->p.ema = parse_num(name, optarg); break;
        case O_WIN: {
            long w = parse_int(name, optarg);
            if (w < 1 || w > CONTROL_WINDOW_MAX)
                die(EXIT_USAGE, "option --window must be in 1..%d (got %ld)", CONTROL_WINDOW_MAX, w);
            o->p.window = (int)w;
            break;
        }
        case O_CLIMB: o->p.climb_threshold = parse_num(name, optarg); break;
        case O_CSTD: o->p.converged_std = parse_num(name, optarg); break;
        case O_CREW: o->p.converged_reward = parse_num(name, optarg); break;
        case O_PF: parse_factors(optarg, o->p.phase_factor); break;
        case O_ICLIP: o->p.integral_clip = parse_num(name, optarg); break;
        case O_BETA: o->beta = parse_num(name, optarg); break;
        case O_BFIX: o->beta_fixed = 1; break;
        case O_KLT: o->kl_target = parse_num(name, optarg); break;
        case O_KLH: o->kl_horizon = parse_num(name, optarg); break;
        case O_KLF: o->kl_field = optarg; break;
        case O_KLN: o->kl_n = parse_num(name, optarg); if (!(o->kl_n > 0)) die(EXIT_USAGE, "option --kl-n must be > 0 (got %s)", optarg); break;
        case O_LEVEL: o->level = (int)parse_int(name, optarg); break;
        default: fprintf(stderr, "Try 'safe-pid --help'.\n"); exit(EXIT_USAGE);
        }
    }
    if (optind < argc) o->stats_path = argv[optind++];
    if (optind < argc) die(EXIT_USAGE, "one stats file at most (got \"%s\" too)", argv[optind]);
    if (o->init && o->stats_path) die(EXIT_USAGE, "--init reads no stats file (got \"%s\")", o->stats_path);
    if (!o->stats_path) o->stats_path = "-";
    if (o->control_path && strcmp(o->control_path, "-") == 0 && strcmp(o->stats_path, "-") == 0 && !o->init)
        die(EXIT_USAGE, "--control and the stats file cannot both be stdin");

    // ---- validation at start-up ----
    char why[256];
    if (control_params_check(&o->p, why, sizeof why) != 0) die(EXIT_USAGE, "%s", why);
    if (o->rate < 1) die(EXIT_USAGE, "option --rate must be >= 1 (got %d)", o->rate);
    if (o->level < 0 || o->level > 19) die(EXIT_USAGE, "option --level must be in 0..19 (got %d)", o->level);
    if (!(o->kl_target > 0)) die(EXIT_USAGE, "option --kl-target must be > 0 (got %g): the Ziegler update divides by it", o->kl_target);
    if (!(o->kl_horizon > 0)) die(EXIT_USAGE, "option --kl-horizon must be > 0 (got %g)", o->kl_horizon);
    if (!(o->beta >= 0)) die(EXIT_USAGE, "option --beta must be >= 0 (got %g)", o->beta);
    if (o->algo_ppo && !o->beta_fixed && o->beta == 0)
        die(EXIT_USAGE, "option --beta 0 never adapts (beta grows multiplicatively): give --beta > 0 or --beta-fixed");
}

// ---- reading ----

// A number from a msgpack object; 0 when it is not one.
static int obj_num(const msgpack_object *o, double *v) {
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *v = (double)o->via.u64; return 1;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *v = (double)o->via.i64; return 1;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *v = o->via.f64; return 1;
    default: return 0;
    }
}

// A finite number field (dies with exit 2 naming file, record, field).
static double need_num(const Record *r, const char *key) {
    double v = rec_f64(r, key);
    if (!isfinite(v)) rec_die(r, key, EXIT_BADINPUT, "non-finite value %g", v);
    return v;
}

static int header_kind_is(ShardReader *sr, const char *want) {
    const Record *h = shard_header_record(sr);
    if (!rec_has(h, "kind")) return 0;
    size_t n;
    const char *k = rec_str(h, "kind", &n);
    return n == strlen(want) && memcmp(k, want, n) == 0;
}

// The fields safe-pid takes from a stats record, pulled out while the record is alive.
#define STATS_NKEYS 7
typedef struct {
    long index;
    int have[STATS_NKEYS];
    int bad[STATS_NKEYS];    // present but not a number
    double val[STATS_NKEYS];
} StatsPick;
enum { S_ITER, S_REWARD, S_KL, S_KSHORT, S_KLONG, S_ZKL, S_NSAMP };

static void pick_stats(const Record *rec, const char *const keys[STATS_NKEYS], StatsPick *sp) {
    memset(sp, 0, sizeof *sp);
    sp->index = rec->index;
    for (int k = 0; k < STATS_NKEYS; k++) {
        const msgpack_object *o = rec_find(rec, keys[k]);
        if (!o) continue;
        sp->have[k] = 1;
        sp->bad[k] = !obj_num(o, &sp->val[k]);
    }
}

// Read the last record of the stats shard into x (and r̄, the Ziegler KL and n).
static void read_stats(const Options *o, Extra *x, double *reward_mean, double *zkl, double *zn) {
    const char *const keys[STATS_NKEYS] = {"iteration", "reward_mean", "kl", "k_short", "k_long", o->kl_field, "samples"};
    ShardReader *sr = shard_open(o->stats_path);
    if (!header_kind_is(sr, "stats"))
        rec_die(shard_header_record(sr), "kind", EXIT_BADINPUT, "expected \"stats\" (the output of safe-update)");
    Record rec;
    StatsPick sp;
    long n = 0;
    while (shard_next(sr, &rec)) { pick_stats(&rec, keys, &sp); n++; }
    Record last = {.map = NULL, .file = shard_path(sr), .index = n ? sp.index : -1};
    if (n == 0) rec_die(shard_header_record(sr), NULL, EXIT_BADINPUT, "no stats record after the header");
    // which fields this run needs
    int need[STATS_NKEYS] = {0};
    need[S_ITER] = need[S_REWARD] = 1;
    if (!o->algo_ppo) need[S_KSHORT] = need[S_KLONG] = 1;
    if (o->algo_ppo && !o->beta_fixed) { need[S_ZKL] = 1; need[S_NSAMP] = o->kl_n <= 0; }
    for (int k = 0; k < STATS_NKEYS; k++) {
        if (sp.bad[k] && (need[k] || sp.have[k]))
            rec_die(&last, keys[k], EXIT_BADINPUT, "expected a number");
        if (need[k] && !sp.have[k])
            rec_die(&last, keys[k], EXIT_BADINPUT, "missing (safe-pid%s needs it in the last stats record)%s",
                    o->algo_ppo ? " --algo ppo" : "",
                    k == S_ZKL ? "; name the field holding the sequence KL with --kl-field, or use --beta-fixed"
                    : k == S_NSAMP ? "; or give --kl-n" : "");
        if (sp.have[k] && !isfinite(sp.val[k]))
            rec_die(&last, keys[k], EXIT_BADINPUT, "non-finite value %g", sp.val[k]);
    }
    if (sp.val[S_ITER] != floor(sp.val[S_ITER]) || sp.val[S_ITER] < 0)
        rec_die(&last, "iteration", EXIT_BADINPUT, "expected a non-negative integer, found %g", sp.val[S_ITER]);
    if (need[S_NSAMP] && !(sp.val[S_NSAMP] > 0))
        rec_die(&last, "samples", EXIT_BADINPUT, "must be > 0 (found %g)", sp.val[S_NSAMP]);
    x->iteration = (long)sp.val[S_ITER] + 1;
    if (sp.have[S_KSHORT]) x->k_short = sp.val[S_KSHORT];
    if (sp.have[S_KLONG]) x->k_long = sp.val[S_KLONG];
    x->have_kl = sp.have[S_KL];
    x->kl = sp.have[S_KL] ? sp.val[S_KL] : NAN;
    *reward_mean = sp.val[S_REWARD];
    *zkl = sp.have[S_ZKL] ? sp.val[S_ZKL] : NAN;
    *zn = o->kl_n > 0 ? o->kl_n : sp.val[S_NSAMP];
    shard_close(sr);
}

// Read control state t (one record of kind "control") into s and x.
static void read_control(const Options *o, ControlState *s, Extra *x) {
    ShardReader *sr = shard_open(o->control_path);
    if (!header_kind_is(sr, "control"))
        rec_die(shard_header_record(sr), "kind", EXIT_BADINPUT,
                "expected \"control\" (written by safe-pid; start a run with safe-pid --init)");
    Record r;
    if (!shard_next(sr, &r)) rec_die(shard_header_record(sr), NULL, EXIT_BADINPUT, "no control record after the header");
    memset(s, 0, sizeof *s);
    x->iteration = rec_i64(&r, "iteration");
    s->calls = rec_i64(&r, "pid_calls");
    if (s->calls < 0) rec_die(&r, "pid_calls", EXIT_BADINPUT, "negative (%ld)", s->calls);
    s->reward_ema = need_num(&r, "reward_ema");
    s->integral = need_num(&r, "pid_integral");
    s->last_err = need_num(&r, "pid_last_err");
    s->tau = need_num(&r, "tau");
    s->phi = need_num(&r, "phi");
    s->pid = need_num(&r, "pid");
    s->pid_p = need_num(&r, "pid_p");
    s->pid_i = need_num(&r, "pid_i");
    s->pid_d = need_num(&r, "pid_d");
    s->last_velocity = need_num(&r, "reward_velocity");
    char *ph = rec_strdup(&r, "phase");
    int phase = phase_parse(ph);
    if (phase < 0) rec_die(&r, "phase", EXIT_BADINPUT, "unknown phase \"%s\" (WARMUP, CLIMBING, CONVERGED, PLATEAU)", ph);
    s->phase = (Phase)phase;
    free(ph);
    // reward_history: an array of float64 as written here, or an f32 bin (what safe-cat
    // --to-shard makes of a JSON array of reals; the values then lose precision)
    const msgpack_object *h = rec_find(&r, "reward_history");
    if (!h) rec_die(&r, "reward_history", EXIT_BADINPUT, "missing");
    if (h->type == MSGPACK_OBJECT_BIN) {
        size_t n;
        float *v = rec_f32s(&r, "reward_history", &n, -1);
        for (size_t i = n > CONTROL_HIST_CAP ? n - CONTROL_HIST_CAP : 0; i < n; i++) {
            if (!isfinite(v[i])) rec_die(&r, "reward_history", EXIT_BADINPUT, "element %zu is not finite", i);
            s->hist[s->hist_len++] = v[i];
        }
        free(v);
    } else if (h->type == MSGPACK_OBJECT_ARRAY) {
        uint32_t n = h->via.array.size, skip = n > CONTROL_HIST_CAP ? n - CONTROL_HIST_CAP : 0;
        for (uint32_t i = skip; i < n; i++) {
            double v;
            if (!obj_num(&h->via.array.ptr[i], &v) || !isfinite(v))
                rec_die(&r, "reward_history", EXIT_BADINPUT, "element %u is not a finite number", i);
            s->hist[s->hist_len++] = v;
        }
    } else {
        rec_die(&r, "reward_history", EXIT_BADINPUT, "expected an array of numbers");
    }
    s->hist_count = rec_i64(&r, "reward_history_count");
    if (s->hist_count < s->hist_len)
        rec_die(&r, "reward_history_count", EXIT_BADINPUT, "%ld is less than the %d rewards kept", s->hist_count, s->hist_len);
    x->k_short = need_num(&r, "k_short");
    x->k_long = need_num(&r, "k_long");
    x->beta = need_num(&r, "beta");
    if (x->beta < 0) rec_die(&r, "beta", EXIT_BADINPUT, "negative (%g)", x->beta);
    if (shard_next(sr, &r)) warn("%s: more than one control record; using the first", shard_path(sr));
    shard_close(sr);
}

// ---- writing ----

static void write_control(const Options *o, const ControlState *s, const Extra *x) {
    ShardWriter *w = shard_create(o->out_path, o->level);
    Fields *h = fields_new();
    fields_str(h, "kind", "control");
    fields_str(h, "tool", "safe-pid");
    fields_str(h, "tool_version", SAFE_VERSION);
    fields_i64(h, "iteration", x->iteration);
    shard_write_header(w, NULL, h);

    Fields *f = fields_new();
    fields_i64(f, "iteration", x->iteration);
    fields_str(f, "algo", o->algo_ppo ? "ppo" : "safe");
    fields_f64(f, "tau", s->tau);
    fields_f64(f, "phi", s->phi);
    fields_str(f, "phase", phase_name(s->phase));
    fields_f64(f, "pid", s->pid);
    fields_f64(f, "pid_p", s->pid_p);
    fields_f64(f, "pid_i", s->pid_i);
    fields_f64(f, "pid_d", s->pid_d);
    fields_f64(f, "pid_integral", s->integral);
    fields_f64(f, "pid_last_err", s->last_err);
    fields_i64(f, "pid_calls", s->calls);
    fields_f64(f, "reward_ema", s->reward_ema);
    fields_f64(f, "reward_velocity", s->last_velocity);
    if (isfinite(x->reward_mean)) fields_f64(f, "reward_mean", x->reward_mean);
    else fields_nil(f, "reward_mean");
    msgpack_packer *pk = fields_packer(f, "reward_history");   // float64 array, oldest first
    msgpack_pack_array(pk, (size_t)s->hist_len);
    for (int i = 0; i < s->hist_len; i++) msgpack_pack_double(pk, s->hist[i]);
    fields_i64(f, "reward_history_count", s->hist_count);
    fields_f64(f, "k_short", x->k_short);
    fields_f64(f, "k_long", x->k_long);
    if (x->have_kl) fields_f64(f, "kl", x->kl);
    fields_f64(f, "beta", x->beta);
    // the parameters used
    const ControlParams *p = &o->p;
    fields_f64(f, "kp", p->kp);
    fields_f64(f, "ki", p->ki);
    fields_f64(f, "kd", p->kd);
    fields_f64(f, "v_target", p->v_target);
    fields_f64(f, "tau_base", p->tau_base);
    fields_f64(f, "tau_min", p->tau_min);
    fields_f64(f, "tau_max", p->tau_max);
    fields_f64(f, "ema", p->ema);
    fields_i64(f, "window", p->window);
    fields_f64(f, "climb_threshold", p->climb_threshold);
    fields_f64(f, "converged_std", p->converged_std);
    fields_f64(f, "converged_reward", p->converged_reward);
    pk = fields_packer(f, "phase_factors");
    msgpack_pack_array(pk, PHASE_COUNT);
    for (int i = 0; i < PHASE_COUNT; i++) msgpack_pack_double(pk, p->phase_factor[i]);
    fields_f64(f, "integral_clip", p->integral_clip);
    fields_i64(f, "rate", o->rate);
    fields_bool(f, "beta_fixed", o->beta_fixed);
    fields_f64(f, "kl_target", o->kl_target);
    fields_f64(f, "kl_horizon", o->kl_horizon);
    shard_write(w, NULL, f);
    shard_commit(w);
    fields_free(h);
    fields_free(f);
}

int main(int argc, char **argv) {
    safe_progname = "safe-pid";
    Options o;
    parse_options(argc, argv, &o);
    ranks_require_one("start it once, without a launcher (only safe-critic and safe-update run as several ranks)");
    output_check(o.out_path, "-o");

    static ControlState s;   // ~8 KiB of history: keep it off the stack
    Extra x = {.iteration = 0, .k_short = 0, .k_long = 0, .beta = o.beta, .reward_mean = NAN, .kl = NAN};
    if (o.init) {
        control_init(&s, &o.p);
        write_control(&o, &s, &x);
        if (!o.quiet)
            fprintf(stderr, "safe-pid: initial state: iteration 0 tau %.6f phi %.3g phase %s beta %g\n",
                    s.tau, s.phi, phase_name(s.phase), x.beta);
        return EXIT_OK;
    }

    // control state t, then the stats of iteration t
    if (o.control_path) {
        read_control(&o, &s, &x);
    } else {
        control_init(&s, &o.p);
    }
    long control_iter = x.iteration;
    double rbar, zkl, zn;
    read_stats(&o, &x, &rbar, &zkl, &zn);
    if (o.control_path && control_iter != x.iteration - 1)
        die(EXIT_BADINPUT, "%s: record 0: field 'iteration' is %ld but the stats are of iteration %ld: "
            "pass the control state the update of that iteration used", o.control_path, control_iter,
            x.iteration - 1);

    // PID threshold and phase: `rate` controller updates with this iteration's reward mean
    for (int i = 0; i < o.rate; i++) control_update(&s, &o.p, rbar);
    x.reward_mean = rbar;

    // PPO baseline: Ziegler adaptive β, once per iteration
    if (o.algo_ppo) {
        if (o.beta_fixed) x.beta = o.beta;
        else x.beta = kl_ctl_update(x.beta, zkl, o.kl_target, o.kl_horizon, zn);
        if (!isfinite(x.beta)) die(EXIT_RUNTIME, "iteration %ld: beta became non-finite", x.iteration - 1);
    }

    write_control(&o, &s, &x);
    if (!o.quiet) {
        fprintf(stderr, "safe-pid: iteration %ld -> %ld: reward_mean %.6g tau %.6f phi %.3g phase %s "
                "pid %+.6f (p %+.6f i %+.6f d %+.6f)",
                x.iteration - 1, x.iteration, rbar, s.tau, s.phi, phase_name(s.phase), s.pid, s.pid_p, s.pid_i, s.pid_d);
        if (o.algo_ppo) fprintf(stderr, " beta %.6g", x.beta);
        fputc('\n', stderr);
    }
    return EXIT_OK;
}
