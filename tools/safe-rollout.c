// safe-rollout — sample completions from the policy and record what training needs:
// tokens, text, finish reason, per-token log-probs under the policy and the reference (both
// from logits/T in fp32 over the full vocabulary) and per-token entropy.
//
//   safe-rollout --policy run/0003/policy --ref stories260K.bin --prompts prompts.jsonl
//                --num-prompts 16 --samples-per-prompt 4 --iteration 4 -o rollout.safe
#include <ctype.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"     // Backend: the models on the CPU or the GPU (--device)
#include "checkpoint.h"  // model_load, model_tokenizer_path
#include "cli.h"         // opt_float, opt_int, opt_u64
#include "common.h"      // die, xmalloc, exit codes
#include "ranks.h"       // ranks_require_one: one process, not several ranks
#include "generate.h"    // generate: batched KV-cached sampling
#include "seqbatch.h"    // teacher-forced log-probs under the reference
#include "shard.h"       // output records; prompts given as a shard
#include "tokenizer.h"   // encode prompts, decode responses

typedef struct {
    const char *policy, *ref, *tokenizer, *prompts, *output;
    const char *device;   // --device: cpu, cuda, auto (NULL: automatic)
    int num_prompts, samples, max_new_tokens, max_prompt_tokens, batch, top_k, iteration;
    int shard_i, shard_n, allow_truncation, level, quiet, num_prompts_given;
    float temperature, top_p;
    unsigned long long seed;
} Options;

static void usage(FILE *f) {
    fprintf(f,
        "usage: safe-rollout --policy CKPT --prompts FILE [options] > rollout.safe\n"
        "\n"
        "Sample completions for training and record tokens, text, finish reason, and per-token\n"
        "log-probs under the policy and the reference, and entropy (all at the temperature).\n"
        "\n"
        "  --policy PATH            policy: checkpoint directory, PEFT adapter directory (merged\n"
        "                           onto its base), .gguf or llama2.c .bin\n"
        "  --ref PATH               frozen reference (default: the policy itself)\n"
        "  --tokenizer FILE         tokenizer (default: the one beside the policy)\n"
        "  --prompts FILE           JSON lines {\"id\",\"prompt\"} or a shard with those fields\n"
        "  --num-prompts N          prompts per iteration: slice N*iteration.. of the list,\n"
        "                           wrapping around (default: all prompts)\n"
        "  --samples-per-prompt K   completions per prompt (4)\n"
        "  --max-new-tokens N       (64)\n"
        "  --max-prompt-tokens N    keep BOS (when the tokenizer adds one) and the last tokens,\n"
        "                           N in all (default: refuse prompts that leave no room to generate)\n"
        "  --temperature T          > 0 (1.0); greedy decoding is refused for training\n"
        "  --top-k N --top-p P      truncated sampling; refused unless --allow-truncation,\n"
        "                           since the recorded log-probs are of the untruncated policy\n"
        "  --seed N                 (0)     --iteration I   (0): both name the RNG streams\n"
        "  --shard i/N              only the i-th of N contiguous slices of this iteration's\n"
        "                           prompts; concatenated shards equal the unsharded run\n"
        "  --batch N                sequences decoded together (64)\n"
        "  -o, --output FILE        ('-' = stdout, default)   --level N   zstd level (3; 0 raw)\n"
        "  -q, --quiet                  no progress on stderr\n"
        DEVICE_USAGE
        "  --help, --version\n");
}

// --shard i/N: two plain whole numbers, 0 <= i < N, nothing else around them
static void parse_shard(const char *s, int *i, int *n) {
    const char *slash = strchr(s, '/');
    int ok = slash && slash > s && isdigit((unsigned char)s[0]) && isdigit((unsigned char)slash[1]);
    if (ok) {
        char *end;
        long a = strtol(s, &end, 10), b = strtol(slash + 1, &end, 10);
        ok = *end == 0 && end > slash + 1 && a >= 0 && b >= 1 && a < b && b <= 1000000;
        for (const char *q = s; q < slash; q++) ok = ok && isdigit((unsigned char)*q);
        *i = (int)a;
        *n = (int)b;
    }
    if (!ok) die(EXIT_USAGE, "--shard wants i/N with whole numbers 0 <= i < N (N up to 1000000), got '%s'", s);
}

static void parse_args(int argc, char **argv, Options *o) {
    enum { O_POLICY = 256, O_REF, O_TOK, O_PROMPTS, O_NUM, O_SAMPLES, O_MAXNEW, O_MAXPROMPT, O_TEMP,
           O_TOPK, O_TOPP, O_ALLOW, O_SEED, O_ITER, O_SHARD, O_BATCH, O_LEVEL, O_QUIET, O_HELP,
           O_VERSION, O_GREEDY, O_DEVICE };
    static const struct option longs[] = {
        {"policy", 1, 0, O_POLICY}, {"ref", 1, 0, O_REF}, {"tokenizer", 1, 0, O_TOK},
        {"prompts", 1, 0, O_PROMPTS}, {"num-prompts", 1, 0, O_NUM},
        {"samples-per-prompt", 1, 0, O_SAMPLES}, {"max-new-tokens", 1, 0, O_MAXNEW},
        {"max-prompt-tokens", 1, 0, O_MAXPROMPT}, {"temperature", 1, 0, O_TEMP},
        {"top-k", 1, 0, O_TOPK}, {"top-p", 1, 0, O_TOPP}, {"allow-truncation", 0, 0, O_ALLOW},
        {"seed", 1, 0, O_SEED}, {"iteration", 1, 0, O_ITER}, {"shard", 1, 0, O_SHARD},
        {"batch", 1, 0, O_BATCH}, {"output", 1, 0, 'o'}, {"level", 1, 0, O_LEVEL},
        {"quiet", 0, 0, O_QUIET}, {"help", 0, 0, O_HELP}, {"version", 0, 0, O_VERSION},
        {"greedy", 0, 0, O_GREEDY}, {"device", 1, 0, O_DEVICE}, {0, 0, 0, 0}};
    *o = (Options){.output = "-", .samples = 4, .max_new_tokens = 64, .batch = 64,
                   .temperature = 1.0f, .top_p = 1.0f, .shard_n = 1, .level = 3};
    int c;
    while ((c = getopt_long(argc, argv, "o:q", longs, NULL)) != -1) {
        switch (c) {
        case O_POLICY: o->policy = optarg; break;
        case O_REF: o->ref = optarg; break;
        case O_TOK: o->tokenizer = optarg; break;
        case O_PROMPTS: o->prompts = optarg; break;
        case O_NUM:
            o->num_prompts = opt_int("num-prompts", optarg);
            o->num_prompts_given = 1;
            break;
        case O_SAMPLES: o->samples = opt_int("samples-per-prompt", optarg); break;
        case O_MAXNEW: o->max_new_tokens = opt_int("max-new-tokens", optarg); break;
        case O_MAXPROMPT: o->max_prompt_tokens = opt_int("max-prompt-tokens", optarg); break;
        case O_TEMP: o->temperature = opt_float("temperature", optarg); break;
        case O_TOPK: o->top_k = opt_int("top-k", optarg); break;
        case O_TOPP: o->top_p = opt_float("top-p", optarg); break;
        case O_ALLOW: o->allow_truncation = 1; break;
        case O_SEED: o->seed = opt_u64("seed", optarg); break;
        case O_ITER: o->iteration = opt_int("iteration", optarg); break;
        case O_SHARD:
            parse_shard(optarg, &o->shard_i, &o->shard_n);
            break;
        case O_BATCH: o->batch = opt_int("batch", optarg); break;
        case 'o': o->output = optarg; break;
        case O_LEVEL: o->level = opt_int("level", optarg); break;
        case O_QUIET:
        case 'q': o->quiet = 1; break;
        case O_DEVICE: o->device = optarg; break;
        case O_GREEDY: die(EXIT_USAGE, "greedy decoding is for evaluation only (use safe-generate --greedy); "
                                       "training rollouts must sample at a temperature > 0");
        case O_HELP: usage(stdout); exit(EXIT_OK);
        case O_VERSION: safe_print_version("safe-rollout"); exit(EXIT_OK);
        default: usage(stderr); exit(EXIT_USAGE);
        }
    }
    if (optind < argc) die(EXIT_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!o->policy) die(EXIT_USAGE, "--policy is required (a checkpoint directory, .gguf or llama2.c .bin)");
    if (!o->prompts) die(EXIT_USAGE, "--prompts is required (JSON lines with \"id\" and \"prompt\")");
    if (!o->ref) o->ref = o->policy;
    if (!(o->temperature > 0)) die(EXIT_USAGE, "--temperature must be > 0 (got %g): greedy decoding is refused for training", o->temperature);
    if (o->samples < 1) die(EXIT_USAGE, "--samples-per-prompt must be >= 1 (got %d)", o->samples);
    if (o->max_new_tokens < 1) die(EXIT_USAGE, "--max-new-tokens must be >= 1 (got %d)", o->max_new_tokens);
    if (o->max_prompt_tokens < 0 || o->max_prompt_tokens == 1) die(EXIT_USAGE, "--max-prompt-tokens must be >= 2 (got %d)", o->max_prompt_tokens);
    if (o->num_prompts_given && o->num_prompts < 1) die(EXIT_USAGE, "--num-prompts must be >= 1 (got %d)", o->num_prompts);
    if (o->batch < 1) die(EXIT_USAGE, "--batch must be >= 1 (got %d)", o->batch);
    if (o->iteration < 0) die(EXIT_USAGE, "--iteration must be >= 0 (got %d)", o->iteration);
    if (o->top_k < 0) die(EXIT_USAGE, "--top-k must be >= 0 (got %d)", o->top_k);
    if (!(o->top_p > 0 && o->top_p <= 1)) die(EXIT_USAGE, "--top-p must be in (0, 1] (got %g)", o->top_p);
    if ((o->top_k > 0 || o->top_p < 1) && !o->allow_truncation)
        die(EXIT_USAGE, "--top-k/--top-p truncate the sampling distribution while the recorded log-probs "
                        "(and PPO's ratios) use the full one; pass --allow-truncation to accept that bias");
    if (o->level < 0 || o->level > 19) die(EXIT_USAGE, "--level must be 0..19 (got %d)", o->level);
    (void)device_select(o->device);   // --device cuda without a GPU: exit 1 before any work
}

// ---- prompts ----

typedef struct {
    int n;
    char **id, **text;
} Prompts;

static void prompts_add(Prompts *p, int *cap, const char *id, const char *text) {
    if (p->n == *cap) {
        *cap = *cap ? *cap * 2 : 256;
        p->id = xrealloc(p->id, *cap * sizeof(char *));
        p->text = xrealloc(p->text, *cap * sizeof(char *));
    }
    p->id[p->n] = xstrdup(id);
    p->text[p->n] = xstrdup(text);
    p->n++;
}

static int looks_like_jsonl(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die(EXIT_BADINPUT, "%s: cannot open prompts file", path);
    int c;
    while ((c = fgetc(f)) == ' ' || c == '\n' || c == '\r' || c == '\t') {}
    fclose(f);
    return c == '{';
}

static Prompts read_prompts(const char *path) {
    Prompts p = {0};
    int cap = 0;
    if (looks_like_jsonl(path)) {
        FILE *f = fopen(path, "rb");
        char *line = NULL;
        size_t n = 0;
        long lineno = 0;
        while (getline(&line, &n, f) > 0) {
            lineno++;
            if (line[strspn(line, " \t\r\n")] == 0) continue;
            json_error_t err;
            json_t *o = json_loads(line, 0, &err);
            if (!o || !json_is_object(o)) die(EXIT_BADINPUT, "%s: line %ld: not a JSON object: %s", path, lineno, o ? "" : err.text);
            json_t *id = json_object_get(o, "id"), *pr = json_object_get(o, "prompt");
            if (!json_is_string(id)) die(EXIT_BADINPUT, "%s: line %ld: field 'id' missing or not a string", path, lineno);
            if (!json_is_string(pr)) die(EXIT_BADINPUT, "%s: line %ld: field 'prompt' missing or not a string", path, lineno);
            prompts_add(&p, &cap, json_string_value(id), json_string_value(pr));
            json_decref(o);
        }
        free(line);
        fclose(f);
    } else {
        ShardReader *r = shard_open(path);
        Record rec;
        while (shard_next(r, &rec)) {
            char *id = rec_strdup(&rec, rec_has(&rec, "prompt_id") ? "prompt_id" : "id");
            char *text = rec_strdup(&rec, "prompt");
            prompts_add(&p, &cap, id, text);
            free(id);
            free(text);
        }
        shard_close(r);
    }
    if (p.n == 0) die(EXIT_BADINPUT, "%s: no prompts", path);
    return p;
}

// FNV-1a 64 of bytes, continued from h
static uint64_t fnv1a(uint64_t h, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    return h;
}

// This iteration's prompts (indices into p), then this shard's contiguous slice of them.
// *batch_hash identifies the whole iteration's prompt list (ids and texts, in order), the
// same in every slice of it: safe-cat joins only slices of one batch.
static int *select_prompts(const Options *o, const Prompts *p, int *count, int *batch_n, uint64_t *batch_hash) {
    // more than the file holds would take prompts twice in one iteration, and a prompt's id
    // keys its draws: the same completion twice, counted twice
    if (o->num_prompts > p->n)
        die(EXIT_USAGE, "--num-prompts %d, but %s holds %d prompts: ask for at most %d (each iteration takes "
            "the next ones, going round the file)", o->num_prompts, o->prompts, p->n, p->n);
    int n = o->num_prompts ? o->num_prompts : p->n;
    int lo = (int)((long)n * o->shard_i / o->shard_n), hi = (int)((long)n * (o->shard_i + 1) / o->shard_n);
    int *idx = xmalloc((hi - lo + 1) * sizeof(int));
    long start = o->num_prompts ? (long)o->num_prompts * o->iteration : 0;
    for (int j = lo; j < hi; j++) idx[j - lo] = (int)((start + j) % p->n);
    *count = hi - lo;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (int j = 0; j < n; j++) {
        int k = (int)((start + j) % p->n);
        h = fnv1a(h, p->id[k], strlen(p->id[k]) + 1);
        h = fnv1a(h, p->text[k], strlen(p->text[k]) + 1);
    }
    *batch_n = n;
    *batch_hash = h;
    return idx;
}

// ---- requests ----

static int32_t *encode_prompt(const Options *o, const Tokenizer *tok, const char *id, const char *text,
                              int max_seq_len, int *len) {
    int32_t *ids = xmalloc(tokenizer_max_tokens(text) * sizeof(int32_t));
    int n = tokenizer_encode(tok, text, 1, 0, ids);
    if (o->max_prompt_tokens && n > o->max_prompt_tokens) {
        // what the tokenizer put in front (BOS; nothing for GPT-2/Qwen2), then the last keep tokens
        int head = tokenizer_prefix_len(tok) < o->max_prompt_tokens ? tokenizer_prefix_len(tok) : 0;
        int keep = o->max_prompt_tokens - head;
        memmove(ids + head, ids + n - keep, keep * sizeof(int32_t));
        n = o->max_prompt_tokens;
    }
    if (n >= max_seq_len)
        die(EXIT_BADINPUT, "%s: prompt '%s' has %d tokens, the model's context is %d: pass --max-prompt-tokens",
            o->prompts, id, n, max_seq_len);
    *len = n;
    return ids;
}

// ---- reference log-probs: teacher-forced, in chunks of --batch sequences ----
// With entropy_into (the policy on the GPU) the log-probs and entropies are written over the
// generated ones in entropy_into: see main.

static float **reference_logprobs(const Options *o, Backend *ref, const GenRequest *req, GenResult *res, int n,
                                  GenResult *entropy_into) {
    float **out = xmalloc(n * sizeof(float *));
    for (int lo = 0; lo < n; lo += o->batch) {
        int b = n - lo < o->batch ? n - lo : o->batch;
        const int32_t **pr = xmalloc(b * sizeof(int32_t *)), **rs = xmalloc(b * sizeof(int32_t *));
        int *pl = xmalloc(b * sizeof(int)), *rl = xmalloc(b * sizeof(int));
        for (int i = 0; i < b; i++) {
            pr[i] = req[lo + i].tokens;
            pl[i] = req[lo + i].n_tokens;
            rs[i] = res[lo + i].tokens;
            rl[i] = res[lo + i].n;
        }
        SeqBatch *sb = seqbatch_build(b, pr, pl, rs, rl);
        float *lp = xmalloc((sb->n_resp ? sb->n_resp : 1) * sizeof(float));
        float *en = entropy_into ? xmalloc((sb->n_resp ? sb->n_resp : 1) * sizeof(float)) : NULL;
        backend_logprobs(ref, sb, o->temperature, lp, en);
        for (int i = 0; i < b; i++) {
            out[lo + i] = xmalloc((rl[i] ? rl[i] : 1) * sizeof(float));
            memcpy(out[lo + i], lp + sb->resp_off[i], rl[i] * sizeof(float));
            for (int t = 0; t < rl[i]; t++)
                if (!isfinite(out[lo + i][t]))
                    die(EXIT_RUNTIME, "non-finite reference log-prob for prompt '%s' sample %d token %d",
                        req[lo + i].id, req[lo + i].sample_index, t);
            if (entropy_into) {
                GenResult *r = &entropy_into[lo + i];
                memcpy(r->logp, out[lo + i], rl[i] * sizeof(float));
                memcpy(r->entropy, en + sb->resp_off[i], rl[i] * sizeof(float));
                free(out[lo + i]);
                out[lo + i] = NULL;
            }
        }
        free(lp);
        free(en);
        seqbatch_free(sb);
        free(pr); free(rs); free(pl); free(rl);
    }
    return out;
}

// ---- output ----

static void write_records(const Options *o, int batch_n, uint64_t batch_hash, const Tokenizer *tok,
                          const Prompts *p, const int *sel, const GenRequest *req, const GenResult *res,
                          float **ref_logp, int n) {
    ShardWriter *w = shard_create(o->output, o->level);
    Fields *h = fields_new();
    fields_str(h, "kind", "rollout");
    fields_str(h, "tool", "safe-rollout");
    fields_str(h, "tool_version", SAFE_VERSION);
    fields_str(h, "model", o->policy);
    fields_str(h, "reference", o->ref);
    char tokid[64];
    snprintf(tokid, sizeof tokid, "fnv1a64:%016llx", (unsigned long long)tok->hash);
    fields_str(h, "tokenizer", tokid);
    fields_i64(h, "iteration", o->iteration);
    fields_i64(h, "num_prompts", batch_n);     // the iteration's prompts, before slicing,
    char bh[64];                               // and what they are (ids and texts)
    snprintf(bh, sizeof bh, "fnv1a64:%016llx", (unsigned long long)batch_hash);
    fields_str(h, "prompts_hash", bh);
    fields_i64(h, "shard", o->shard_i);        // this slice of them: safe-cat joins the
    fields_i64(h, "num_shards", o->shard_n);   // slices of one batch only, each once
    fields_i64(h, "seed", (int64_t)o->seed);
    fields_f64(h, "temperature", o->temperature);
    fields_i64(h, "top_k", o->top_k);
    fields_f64(h, "top_p", o->top_p);
    fields_i64(h, "max_new_tokens", o->max_new_tokens);
    fields_i64(h, "samples_per_prompt", o->samples);
    fields_i64(h, "eos_id", tok->eos_id);
    if (o->top_k > 0 || o->top_p < 1) shard_declare(w, "kept_mass", "f32");
    shard_write_header(w, NULL, h);
    Fields *f = fields_new();
    for (int i = 0; i < n; i++) {
        const GenResult *r = &res[i];
        int pi = sel[i / o->samples];
        char id[512];
        snprintf(id, sizeof id, "%s/%d", p->id[pi], req[i].sample_index);
        size_t tlen;
        char *text = tokenizer_decode(tok, req[i].tokens[req[i].n_tokens - 1], r->tokens, r->n, &tlen);
        fields_clear(f);
        fields_str(f, "id", id);
        fields_str(f, "prompt_id", p->id[pi]);
        fields_i64(f, "sample", req[i].sample_index);
        fields_str(f, "prompt", p->text[pi]);
        fields_strn(f, "response", text, tlen);
        fields_i32s(f, "prompt_tokens", req[i].tokens, req[i].n_tokens);
        fields_i32s(f, "response_tokens", r->tokens, r->n);
        fields_str(f, "finish", gen_finish_name(r->finish));
        fields_f32s(f, "logp", r->logp, r->n);
        fields_f32s(f, "ref_logp", ref_logp[i], r->n);
        fields_f32s(f, "entropy", r->entropy, r->n);
        if (o->top_k > 0 || o->top_p < 1) fields_f32s(f, "kept_mass", r->kept_mass, r->n);
        shard_write(w, NULL, f);
        free(text);
    }
    shard_commit(w);
    fields_free(f);
    fields_free(h);
}

int main(int argc, char **argv) {
    safe_progname = "safe-rollout";
    Options o;
    parse_args(argc, argv, &o);
    ranks_require_one("start one process per shard instead (safe-rollout --shard K/N; pipelines/safe.mk SHARDS=N runs them)");
    output_check(o.output, "-o");

    Model *policy = model_load(o.policy);
    Model *ref = strcmp(o.ref, o.policy) == 0 ? policy : model_load(o.ref);
    if (ref->cfg.vocab_size != policy->cfg.vocab_size)
        die(EXIT_BADINPUT, "%s: reference vocabulary (%d) differs from the policy's (%d)", o.ref,
            ref->cfg.vocab_size, policy->cfg.vocab_size);
    char *tok_path = o.tokenizer ? xstrdup(o.tokenizer) : model_tokenizer_path(o.policy);
    Tokenizer *tok = tokenizer_load(tok_path, policy->cfg.vocab_size);
    Prompts p = read_prompts(o.prompts);
    int n_sel;
    int batch_n;
    uint64_t batch_hash;
    int *sel = select_prompts(&o, &p, &n_sel, &batch_n, &batch_hash);

    // one request per (prompt, sample), in output order
    int n = n_sel * o.samples;
    GenRequest *req = xcalloc(n ? n : 1, sizeof(GenRequest));
    int32_t **ptoks = xmalloc((n_sel ? n_sel : 1) * sizeof(int32_t *));
    for (int j = 0; j < n_sel; j++) {
        int len;
        ptoks[j] = encode_prompt(&o, tok, p.id[sel[j]], p.text[sel[j]], policy->cfg.max_seq_len, &len);
        for (int k = 0; k < o.samples; k++)
            req[j * o.samples + k] = (GenRequest){.id = p.id[sel[j]], .sample_index = k,
                                                   .tokens = ptoks[j], .n_tokens = len};
    }
    GenConfig gc = {.sampler = {.temperature = o.temperature, .top_k = o.top_k, .top_p = o.top_p},
                    .max_new_tokens = o.max_new_tokens, .batch = o.batch, .eos_id = tok->eos_id,
                    .seed = o.seed, .iteration = o.iteration, .quiet = o.quiet};
    GenResult *res = xcalloc(n ? n : 1, sizeof(GenResult));
    Device dev = device_select(o.device);
    Backend *bp = backend_create(policy, dev, "safe-rollout", o.quiet);
    Backend *br = ref == policy ? bp : backend_create(ref, dev, "safe-rollout (reference)", o.quiet);
    if (n) backend_generate(bp, &gc, req, n, res, NULL, NULL);
    // On the GPU the sampler's log-probs come from the bf16 decoding path (KV cache, one token at
    // a time), while safe-update's and the reference's come from the teacher-forced forward: a
    // ratio of the two would carry their rounding difference. So the policy's logp and entropy
    // are recomputed teacher-forced here, the path ref_logp and the update use (SAFE-SPEC:
    // log-probs that meet come from the same precision path). On the CPU both paths give the
    // same bits (model.c is batch-invariant), so nothing is recomputed.
    if (n && dev == DEVICE_CUDA) free(reference_logprobs(&o, bp, req, res, n, res));
    float **ref_logp = reference_logprobs(&o, br, req, res, n, NULL);
    write_records(&o, batch_n, batch_hash, tok, &p, sel, req, res, ref_logp, n);

    for (int i = 0; i < n; i++) {
        gen_result_free(&res[i]);
        free(ref_logp[i]);
    }
    for (int j = 0; j < n_sel; j++) free(ptoks[j]);
    for (int i = 0; i < p.n; i++) {
        free(p.id[i]);
        free(p.text[i]);
    }
    free(p.id); free(p.text); free(ptoks); free(req); free(res); free(ref_logp); free(sel); free(tok_path);
    tokenizer_free(tok);
    if (br != bp) backend_free(br);
    backend_free(bp);
    if (ref != policy) model_free(ref);
    model_free(policy);
    return EXIT_OK;
}
