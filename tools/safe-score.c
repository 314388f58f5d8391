// safe-score — the reward stage: add a scalar reward (and its components) to every rollout record.
//
//   safe-score --vader < rollout.safe > scored.safe
//   safe-score --exec 'python3 rm.py' --missing-eos-penalty 1 --clip-reward 5 -i rollout.safe -o scored.safe
//   safe-score --rm rm-dir/ --rm-batch 8 --rm-max-length 1024 -i rollout.safe -o scored.safe
//
// Adds to each record
//   reward              float64, the scalar used downstream: clip(reward_raw + eos term)
//   reward_raw          the scorer's value (VADER compound, the command's "reward", or the
//                       reward model's score head)
//   reward_components   map name -> number (VADER: compound, pos, neg, neu; exec: the extra
//                       numeric keys of the answer, may be empty; rm: score)
//   reward_eos_penalty  -X, only on records whose finish is not "eos" under --missing-eos-penalty X
// A non-finite reward from --exec (NaN or ±Infinity in any of the spellings scorer.c reads, or
// a number beyond the double range) is written through unclipped, with a warning at the end:
// safe-critic is the stage that stops on it, naming the record.
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"         // opt_float, opt_int, opt_u64
#include "common.h"    // die, warn, xmalloc, safe_data_dir, exit codes
#include "ranks.h"       // ranks_require_one: one process, not several ranks
#include "progress.h"  // progress on stderr
#include "reward_model.h"  // RM_TRUNC_RIGHT / RM_TRUNC_LEFT
#include "scorer.h"    // Scorer: scorer_vader, scorer_exec, scorer_rm, scorer_score_batch
#include "shard.h"     // shard_open/next, fields_*, shard_write

typedef struct {
    const char *input, *output;
    const char *lexicon;      // --vader (NULL: the default lexicon)
    const char *emoji;        // --vader-emoji
    const char *exec;         // --exec
    const char *rm;           // --rm DIR
    ScorerRmOptions rmo;      // --rm-batch, --rm-max-length, --rm-truncation, --rm-input, --rm-tokenizer
    int use_vader;
    double exec_timeout;
    int exec_batch;
    int has_eos, has_clip;
    double eos_penalty;       // --missing-eos-penalty X (has_eos)
    double clip;              // --clip-reward A (has_clip)
    ScoreField field;
    int level, quiet;
} Options;

static void usage(FILE *f) {
    fprintf(f,
        "usage: safe-score [--vader [LEXICON] | --exec CMD | --rm DIR] [options] [-i] [ROLLOUT.safe] [-o SCORED.safe]\n"
        "\n"
        "Add a reward to every rollout record: reward, reward_raw, reward_components and, when\n"
        "applied, reward_eos_penalty. Writes a shard of kind \"scored\".\n"
        "\n"
        "  --vader[=LEXICON]        VADER sentiment compound in [-1, 1] (the default scorer);\n"
        "                           LEXICON defaults to vader/vader_lexicon.txt in $SAFE_DATA, else\n"
        "                           in ../shared/data from the current directory, beside the\n"
        "                           program's checkout, or in PREFIX/share/safe/data; it may also\n"
        "                           follow as a separate argument when it ends in .txt\n"
        "  --vader-emoji FILE       translate emojis with vaderSentiment's emoji_utf8_lexicon.txt\n"
        "  --score-field F          what VADER reads: response (default) or prompt+response\n"
        "  --exec CMD               external scorer run as 'sh -c CMD': JSON lines\n"
        "                           {\"id\",\"prompt\",\"response\"} in, a number or\n"
        "                           {\"reward\": x, ...} out, one line per request\n"
        "                           (NaN, nan, inf, -Infinity, 1e999, ...: non-finite, written\n"
        "                           through for safe-critic to stop on; see safe-score(1))\n"
        "  --exec-timeout S         seconds to wait for each answer (60)\n"
        "  --exec-batch K           requests in flight at once (16)\n"
        "  --rm DIR                 reward model: a Hugging Face LlamaForSequenceClassification /\n"
        "                           Qwen2ForSequenceClassification directory; the score head read\n"
        "                           at the last token of prompt + response\n"
        "  --rm-input tokens|text   what it reads: the record's prompt_tokens + response_tokens\n"
        "                           (tokens, the default: the policy's tokenizer) or the prompt +\n"
        "                           response text encoded with the reward model's tokenizer\n"
        "  --rm-tokenizer FILE      tokenizer for --rm-input text (default: DIR's own)\n"
        "  --rm-batch N             sequences per forward pass (8)\n"
        "  --rm-max-length N        truncate each sequence to N tokens (default: no limit)\n"
        "  --rm-truncation right|left  which end --rm-max-length cuts: right keeps the first N\n"
        "                           tokens (the default, as HF tokenizers truncate), left the last N\n"
        "  --missing-eos-penalty X  add -X to the reward of records whose finish is not \"eos\"\n"
        "  --clip-reward A          clip the reward to [-A, A] (after the penalty)\n"
        "  -i, --input FILE         rollout shard ('-' = stdin, the default)\n"
        "  -o, --output FILE        scored shard ('-' = stdout, the default)\n"
        "  --level N                zstd level of the output (3; 0 = raw msgpack)\n"
        "  -q, --quiet              no progress on stderr\n"
        "  --help, --version\n"
        "\n"
        "Exit status: 0 ok, 1 usage, 2 bad input or a scorer answer that is not a reward,\n"
        "3 a scorer that dies or hangs, or another runtime failure. See safe-score(1).\n");
}

static double parse_num(const char *opt, const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (*s == 0 || *end != 0 || !isfinite(v)) die(EXIT_USAGE, "--%s needs a finite number, got '%s'", opt, s);
    return v;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void parse_args(int argc, char **argv, Options *o) {
    enum { O_VADER = 256, O_EMOJI, O_FIELD, O_EXEC, O_TIMEOUT, O_BATCH, O_EOS, O_CLIP, O_LEVEL,
           O_QUIET, O_HELP, O_VERSION, O_RM, O_RM_INPUT, O_RM_TOK, O_RM_BATCH, O_RM_MAXLEN, O_RM_TRUNC };
    static const struct option longs[] = {
        {"vader", optional_argument, 0, O_VADER}, {"vader-emoji", 1, 0, O_EMOJI},
        {"score-field", 1, 0, O_FIELD}, {"exec", 1, 0, O_EXEC}, {"exec-timeout", 1, 0, O_TIMEOUT},
        {"exec-batch", 1, 0, O_BATCH}, {"missing-eos-penalty", 1, 0, O_EOS},
        {"clip-reward", 1, 0, O_CLIP}, {"input", 1, 0, 'i'}, {"output", 1, 0, 'o'},
        {"level", 1, 0, O_LEVEL}, {"quiet", 0, 0, O_QUIET}, {"help", 0, 0, O_HELP},
        {"version", 0, 0, O_VERSION}, {"rm", 1, 0, O_RM}, {"rm-input", 1, 0, O_RM_INPUT},
        {"rm-tokenizer", 1, 0, O_RM_TOK}, {"rm-batch", 1, 0, O_RM_BATCH}, {"rm-max-length", 1, 0, O_RM_MAXLEN},
        {"rm-truncation", 1, 0, O_RM_TRUNC}, {0, 0, 0, 0}};
    *o = (Options){.output = "-", .exec_timeout = SCORER_DEFAULT_TIMEOUT,
                   .exec_batch = SCORER_DEFAULT_BATCH, .level = 3,
                   .rmo = {.input = RM_INPUT_TOKENS, .batch = 8, .trunc_side = RM_TRUNC_RIGHT}};
    int rm_opt = 0;   // an --rm-* option was given
    int c;
    while ((c = getopt_long(argc, argv, "i:o:q", longs, NULL)) != -1) {
        switch (c) {
        case O_VADER:
            o->use_vader = 1;
            if (optarg) o->lexicon = optarg;
            else if (optind < argc && argv[optind][0] != '-' && ends_with(argv[optind], ".txt"))
                o->lexicon = argv[optind++];   // "--vader LEXICON.txt"
            break;
        case O_EMOJI: o->emoji = optarg; break;
        case O_FIELD:
            if (strcmp(optarg, "response") == 0) o->field = SCORE_RESPONSE;
            else if (strcmp(optarg, "prompt+response") == 0) o->field = SCORE_PROMPT_RESPONSE;
            else die(EXIT_USAGE, "--score-field must be response or prompt+response, got '%s'", optarg);
            break;
        case O_EXEC: o->exec = optarg; break;
        case O_TIMEOUT: o->exec_timeout = parse_num("exec-timeout", optarg); break;
        case O_BATCH: o->exec_batch = opt_int("exec-batch", optarg); break;
        case O_EOS: o->eos_penalty = parse_num("missing-eos-penalty", optarg); o->has_eos = 1; break;
        case O_CLIP: o->clip = parse_num("clip-reward", optarg); o->has_clip = 1; break;
        case 'i': o->input = optarg; break;
        case 'o': o->output = optarg; break;
        case O_LEVEL: o->level = opt_int("level", optarg); break;
        case 'q':
        case O_QUIET: o->quiet = 1; break;
        case O_RM: o->rm = optarg; break;
        case O_RM_INPUT:
            rm_opt = 1;
            if (strcmp(optarg, "tokens") == 0) o->rmo.input = RM_INPUT_TOKENS;
            else if (strcmp(optarg, "text") == 0) o->rmo.input = RM_INPUT_TEXT;
            else die(EXIT_USAGE, "--rm-input must be tokens or text, got '%s'", optarg);
            break;
        case O_RM_TOK: rm_opt = 1; o->rmo.tokenizer = optarg; break;
        case O_RM_BATCH: rm_opt = 1; o->rmo.batch = opt_int("rm-batch", optarg); break;
        case O_RM_MAXLEN: rm_opt = 1; o->rmo.max_length = opt_int("rm-max-length", optarg); break;
        case O_RM_TRUNC:
            rm_opt = 1;
            if (strcmp(optarg, "right") == 0) o->rmo.trunc_side = RM_TRUNC_RIGHT;
            else if (strcmp(optarg, "left") == 0) o->rmo.trunc_side = RM_TRUNC_LEFT;
            else die(EXIT_USAGE, "--rm-truncation must be right (keep the first tokens) or left (keep the last), got '%s'", optarg);
            break;
        case O_HELP: usage(stdout); exit(EXIT_OK);
        case O_VERSION: safe_print_version("safe-score"); exit(EXIT_OK);
        default: usage(stderr); exit(EXIT_USAGE);
        }
    }
    if (optind < argc) {
        if (o->input) die(EXIT_USAGE, "two inputs: -i %s and '%s' (see --help)", o->input, argv[optind]);
        o->input = argv[optind++];
    }
    if (optind < argc) die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!o->input) o->input = "-";
    if (!!o->exec + !!o->use_vader + !!o->rm > 1) die(EXIT_USAGE, "--vader, --exec and --rm exclude each other: pick one scorer");
    if (o->rm && !*o->rm) die(EXIT_USAGE, "--rm needs a reward model directory");
    if (rm_opt && !o->rm) die(EXIT_USAGE, "the --rm-* options apply to the reward model scorer: add --rm DIR");
    if (o->rm && o->emoji) die(EXIT_USAGE, "--vader-emoji applies to the VADER scorer, not --rm");
    if (o->rmo.tokenizer && o->rmo.input != RM_INPUT_TEXT) die(EXIT_USAGE, "--rm-tokenizer is for --rm-input text");
    if (o->rm && o->rmo.batch < 1) die(EXIT_USAGE, "--rm-batch must be >= 1 (got %d)", o->rmo.batch);
    if (o->rm && o->rmo.max_length < 0) die(EXIT_USAGE, "--rm-max-length must be >= 1 (got %d)", o->rmo.max_length);
    if (rm_opt && o->rmo.max_length == 0 && o->rmo.trunc_side == RM_TRUNC_LEFT)
        warn("--rm-truncation left has no effect without --rm-max-length");
    if (o->exec && !*o->exec) die(EXIT_USAGE, "--exec needs a command");
    if (o->exec && o->emoji) die(EXIT_USAGE, "--vader-emoji applies to the VADER scorer, not --exec");
    if (!(o->exec_timeout > 0)) die(EXIT_USAGE, "--exec-timeout must be > 0 seconds (got %g)", o->exec_timeout);
    if (o->exec_batch < 1) die(EXIT_USAGE, "--exec-batch must be >= 1 (got %d)", o->exec_batch);
    if (o->has_eos && o->eos_penalty < 0)
        die(EXIT_USAGE, "--missing-eos-penalty must be >= 0: it is subtracted (got %g)", o->eos_penalty);
    if (o->has_clip && !(o->clip > 0)) die(EXIT_USAGE, "--clip-reward must be > 0 (got %g)", o->clip);
    if (o->level < 0 || o->level > 19) die(EXIT_USAGE, "--level must be 0..19 (got %d)", o->level);
}

// ---- records in flight ----
// shard_next() invalidates the previous record, so the records of a batch are kept as packed
// copies until their rewards are back.

typedef struct {
    msgpack_sbuffer buf;
    msgpack_unpacked obj;
    Record rec;
    char *id, *prompt, *response;
    size_t prompt_len, response_len;
    int32_t *tokens;         // prompt_tokens + response_tokens (--rm with token input), else NULL
    int n_tokens;
    int eos;                 // finish == "eos"
} Pending;

// "id" as text for messages and the exec protocol: a string, an integer, or "#INDEX".
static char *record_id(const Record *r) {
    const msgpack_object *o = rec_find(r, "id");
    char buf[64];
    if (o && o->type == MSGPACK_OBJECT_STR) {
        char *s = xmalloc(o->via.str.size + 1);
        memcpy(s, o->via.str.ptr, o->via.str.size);
        s[o->via.str.size] = '\0';
        return s;
    }
    if (o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) snprintf(buf, sizeof buf, "%llu", (unsigned long long)o->via.u64);
    else if (o && o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) snprintf(buf, sizeof buf, "%lld", (long long)o->via.i64);
    else snprintf(buf, sizeof buf, "#%ld", r->index);
    return xstrdup(buf);
}

static char *copy_text(const Record *r, const char *key, int required, size_t *len) {
    if (!required && !rec_has(r, key)) { *len = 0; return xstrdup(""); }
    const char *s = rec_str(r, key, len);   // dies (2) naming file, record, field
    char *c = xmalloc(*len + 1);
    memcpy(c, s, *len);
    c[*len] = '\0';
    return c;
}

static void pending_fill(Pending *p, const Record *r, const Options *o) {
    p->id = record_id(r);
    p->response = copy_text(r, "response", 1, &p->response_len);
    int need_prompt = o->exec || o->field == SCORE_PROMPT_RESPONSE || (o->rm && o->rmo.input == RM_INPUT_TEXT);
    if (need_prompt) p->prompt = copy_text(r, "prompt", 0, &p->prompt_len);
    else p->prompt = xstrdup(""), p->prompt_len = 0;
    p->tokens = NULL;
    p->n_tokens = 0;
    if (o->rm && o->rmo.input == RM_INPUT_TOKENS) {
        if (!rec_has(r, "prompt_tokens") || !rec_has(r, "response_tokens"))
            rec_die(r, rec_has(r, "prompt_tokens") ? "response_tokens" : "prompt_tokens", EXIT_BADINPUT,
                    "missing: the reward model reads the rollout's token ids (or pass --rm-input text)");
        size_t np, nr;
        int32_t *pt = rec_i32s(r, "prompt_tokens", &np, -1), *rt = rec_i32s(r, "response_tokens", &nr, -1);
        p->tokens = xmalloc((np + nr + 1) * sizeof(int32_t));
        memcpy(p->tokens, pt, np * sizeof(int32_t));
        memcpy(p->tokens + np, rt, nr * sizeof(int32_t));
        p->n_tokens = (int)(np + nr);
        free(pt);
        free(rt);
    }
    if (o->has_eos) {
        size_t n;
        const char *f = rec_str(r, "finish", &n);
        p->eos = n == 3 && memcmp(f, "eos", 3) == 0;
    }
    msgpack_sbuffer_init(&p->buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &p->buf, msgpack_sbuffer_write);
    msgpack_pack_object(&pk, *r->map);
    msgpack_unpacked_init(&p->obj);
    if (msgpack_unpack_next(&p->obj, p->buf.data, p->buf.size, NULL) != MSGPACK_UNPACK_SUCCESS)
        die(EXIT_RUNTIME, "%s: record %ld: cannot copy the record", r->file, r->index);
    p->rec = (Record){&p->obj.data, r->file, r->index};
}

static void pending_clear(Pending *p) {
    msgpack_unpacked_destroy(&p->obj);
    msgpack_sbuffer_destroy(&p->buf);
    free(p->id);
    free(p->prompt);
    free(p->response);
    free(p->tokens);
}

int main(int argc, char **argv) {
    safe_progname = "safe-score";
    Options o;
    parse_args(argc, argv, &o);
    ranks_require_one("start one process per shard instead (safe-score on each rollout shard; pipelines/safe.mk SHARDS=N runs them)");
    output_check(o.output, "-o");

    // the scorer first: a bad lexicon or command fails before any output exists
    Scorer *sc;
    char *lexbuf = NULL;
    if (o.rm) {
        sc = scorer_rm(o.rm, &o.rmo);
    } else if (o.exec) {
        sc = scorer_exec(o.exec);
        scorer_set_timeout(sc, o.exec_timeout);
        scorer_set_batch(sc, o.exec_batch);
    } else {
        if (!o.lexicon) {
            // the data folder's lexicon: $SAFE_DATA, else the places safe_data_find() knows
            char tried[4 * 4096 + 512];
            o.lexicon = lexbuf = safe_data_find("vader/vader_lexicon.txt", tried, sizeof tried);
            const char *env = getenv("SAFE_DATA");
            if (!o.lexicon && env && *env)
                die(EXIT_BADINPUT, "no VADER lexicon: SAFE_DATA is set and has no vader/vader_lexicon.txt; tried\n%s"
                    "  hint: point SAFE_DATA at the data folder (the one holding vader/), unset it to search the "
                    "default places, or name the file with --vader PATH", tried);
            if (!o.lexicon)
                die(EXIT_BADINPUT, "no VADER lexicon: vader/vader_lexicon.txt is in none of the default data "
                    "folders; tried\n%s"
                    "  hint: set SAFE_DATA to the data folder (the one holding vader/), or name the file with "
                    "--vader PATH", tried);
        }
        sc = scorer_vader(o.lexicon);
        scorer_set_field(sc, o.field);
        if (o.emoji) scorer_vader_emoji(sc, o.emoji);
    }

    ShardReader *r = shard_open(o.input);
    ShardWriter *w = shard_create(o.output, o.level);
    Fields *h = fields_new();
    fields_str(h, "kind", "scored");
    fields_str(h, "tool", "safe-score");
    fields_str(h, "tool_version", SAFE_VERSION);
    fields_str(h, "scorer", scorer_describe(sc));
    if (o.has_eos) fields_f64(h, "reward_missing_eos_penalty", o.eos_penalty);
    if (o.has_clip) fields_f64(h, "reward_clip", o.clip);
    if (o.rm && o.rmo.max_length > 0) fields_i64(h, "reward_max_length", o.rmo.max_length);
    shard_write_header(w, shard_header(r), h);
    fields_free(h);

    int k = scorer_batch(sc);
    Pending *pend = xcalloc((size_t)k, sizeof *pend);
    ScoreRequest *req = xcalloc((size_t)k, sizeof *req);
    ScoreComponents *comp = xcalloc((size_t)k, sizeof *comp);
    double *raw = xcalloc((size_t)k, sizeof *raw);
    Fields *f = fields_new();
    Progress *prog = progress_start("score", -1, "records", o.quiet);
    long done = 0, nonfinite = 0, penalised = 0, clipped = 0;
    char first_bad[128] = "";
    double sum = 0;
    Record rec;
    int more = 1;
    while (more) {
        // gather a batch
        int n = 0;
        while (n < k && (more = shard_next(r, &rec))) {
            pending_fill(&pend[n], &rec, &o);
            req[n] = (ScoreRequest){.id = pend[n].id, .prompt = pend[n].prompt, .prompt_len = pend[n].prompt_len,
                                    .response = pend[n].response, .response_len = pend[n].response_len,
                                    .tokens = pend[n].tokens, .n_tokens = pend[n].n_tokens};
            n++;
        }
        if (n == 0) break;
        scorer_score_batch(sc, req, n, raw, comp);
        for (int i = 0; i < n; i++) {
            double reward = raw[i];
            fields_clear(f);
            fields_f64(f, "reward_raw", raw[i]);
            msgpack_packer *pk = fields_packer(f, "reward_components");
            msgpack_pack_map(pk, (size_t)comp[i].n);
            for (int j = 0; j < comp[i].n; j++) {
                msgpack_pack_str_with_body(pk, comp[i].name[j], strlen(comp[i].name[j]));
                msgpack_pack_double(pk, comp[i].value[j]);
            }
            if (o.has_eos && !pend[i].eos) {
                reward = reward + -o.eos_penalty;
                fields_f64(f, "reward_eos_penalty", -o.eos_penalty);
                penalised++;
            } else {
                fields_drop(f, "reward_eos_penalty");   // stale from an earlier scoring
            }
            // clip finite rewards only: NaN and ±Infinity stay what they are, for safe-critic
            if (o.has_clip && isfinite(reward) && (reward > o.clip || reward < -o.clip)) {
                reward = reward > o.clip ? o.clip : -o.clip;
                clipped++;
            }
            fields_f64(f, "reward", reward);
            if (!isfinite(reward)) {
                if (!nonfinite++) snprintf(first_bad, sizeof first_bad, "%s", pend[i].id);
            } else {
                sum += reward;
            }
            shard_write(w, &pend[i].rec, f);
            pending_clear(&pend[i]);
        }
        done += n;
        progress_update(prog, done, 0);
    }
    progress_end(prog);
    shard_close(r);
    scorer_free(sc);   // first: a scorer that answers more lines than requests fails the run
    shard_commit(w);
    if (nonfinite)
        warn("%ld record(s) have a non-finite reward (first: '%s'); written through, "
             "safe-critic stops on them", nonfinite, first_bad);
    if (!o.quiet) {
        // the mean is over the finite rewards: say how many were left out, when any were
        char left_out[96] = "";
        if (nonfinite)
            snprintf(left_out, sizeof left_out, " (%ld non-finite reward%s: left out of the mean)",
                     nonfinite, nonfinite == 1 ? "" : "s");
        fprintf(stderr, "safe-score: %ld records%s, mean reward %.6g, %ld missing-EOS penalties, %ld clipped\n",
                done, left_out, done - nonfinite ? sum / (double)(done - nonfinite) : 0.0, penalised, clipped);
    }
    for (int i = 0; i < k; i++) components_free(&comp[i]);
    free(comp), free(raw), free(req), free(pend), free(lexbuf);
    fields_free(f);
    return EXIT_OK;
}
