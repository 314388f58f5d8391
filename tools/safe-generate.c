// safe-generate — a probe: sample completions from a model, print them to stdout.
//
//   safe-generate --model ../shared/data/stories260K/stories260K.bin --prompt "Once upon a time"
//   safe-generate --model ck/ -n 4 --temperature 0.8 < prompts.jsonl
//
// Prompts come from --prompt, or from stdin: one per line, either plain text or a JSON object
// with "prompt" (and optionally "id"), so prompts.jsonl files work as they are.
#include "backend.h"      // Backend: the model on the CPU or the GPU (--device)
#include "checkpoint.h"   // model_load, model_tokenizer_path
#include "common.h"       // die, exit codes, safe_progname
#include "ranks.h"       // ranks_require_one: one process, not several ranks
#include "generate.h"     // generate, GenRequest, GenResult
#include "tokenizer.h"    // tokenizer_load, tokenizer_encode, tokenizer_decode

#include <getopt.h>
#include <jansson.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
        "Usage: safe-generate --model PATH [options]\n"
        "Sample completions of prompts (--prompt, or stdin lines: text or JSON {\"id\",\"prompt\"}).\n"
        "\n"
        "  -m, --model PATH          checkpoint directory, PEFT adapter directory (merged onto its\n"
        "                            base), .gguf or llama2.c .bin (required)\n"
        "      --tokenizer FILE      llama2.c tokenizer.bin (default: found beside the model)\n"
        "  -p, --prompt TEXT         one prompt (default: read prompts from stdin)\n"
        "  -n, --samples N           samples per prompt (default 1)\n"
        "  -t, --temperature T       softmax temperature, > 0 (default 1.0)\n"
        "      --top-k N             keep the N most likely tokens (default 0 = off)\n"
        "      --top-p P             nucleus sampling mass in (0, 1] (default 1 = off)\n"
        "      --greedy              argmax decoding (evaluation only)\n"
        "      --max-new-tokens N    response length limit (default 200)\n"
        "  -s, --seed S              random seed (default 0); same seed, same text\n"
        "      --batch N             sequences decoded together (default 16)\n"
        "      --threads N           OpenMP threads (default: OMP_NUM_THREADS or all cores)\n"
        "      --format FMT          text (default) or jsonl\n"
        "      --device cpu|cuda     where the model runs (default: cuda when this build has CUDA\n"
        "                            and a GPU is visible, else cpu; $SAFE_DEVICE overrides)\n"
        "  -q, --quiet               no progress or summary on stderr\n"
        "  -h, --help                this help\n"
        "      --version             print the version\n"
        "\n"
        "Exit status: 0 ok, 1 usage error, 2 bad input, 3 runtime failure (e.g. NaN logits).\n");
}

static long parse_long(const char *opt, const char *s, long lo, long hi) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) die(EXIT_USAGE, "%s: expected an integer in [%ld, %ld], got \"%s\"", opt, lo, hi, s);
    return v;
}

static double parse_double(const char *opt, const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end) die(EXIT_USAGE, "%s: expected a number, got \"%s\"", opt, s);
    return v;
}

typedef struct {
    char *id;
    char *text;
} Prompt;

// stdin: one prompt per line; JSON objects give "prompt" and "id"; blank lines are skipped
static Prompt *read_prompts(int *n_out) {
    Prompt *p = NULL;
    int n = 0, cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    long lineno = 0;
    while ((len = getline(&line, &lcap, stdin)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        if (len == 0) continue;
        if (n == cap) { cap = cap ? 2 * cap : 64; p = xrealloc(p, (size_t)cap * sizeof(Prompt)); }
        char idbuf[32];
        snprintf(idbuf, sizeof idbuf, "line-%ld", lineno);
        if (line[0] == '{') {
            json_error_t err;
            json_t *j = json_loads(line, 0, &err);
            if (!j) die(EXIT_BADINPUT, "stdin line %ld: %s (column %d)", lineno, err.text, err.column);
            const char *text = json_string_value(json_object_get(j, "prompt"));
            if (!text) die(EXIT_BADINPUT, "stdin line %ld: field \"prompt\" is missing or not a string", lineno);
            const char *id = json_string_value(json_object_get(j, "id"));
            p[n].text = xstrdup(text);
            p[n].id = xstrdup(id ? id : idbuf);
            json_decref(j);
        } else {
            p[n].text = xstrdup(line);
            p[n].id = xstrdup(idbuf);
        }
        n++;
    }
    free(line);
    *n_out = n;
    return p;
}

int main(int argc, char **argv) {
    safe_progname = "safe-generate";
    const char *model_path = NULL, *tok_path = NULL, *prompt = NULL, *format = "text", *device = NULL;
    GenConfig gc = {.sampler = sampler_defaults(), .max_new_tokens = 200, .batch = 16, .seed = 0, .iteration = 0};
    int samples = 1, quiet = 0, threads = 0;
    enum { O_TOKENIZER = 256, O_TOPK, O_TOPP, O_GREEDY, O_MAXNEW, O_BATCH, O_THREADS, O_FORMAT, O_VERSION, O_DEVICE };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},       {"tokenizer", required_argument, 0, O_TOKENIZER},
        {"prompt", required_argument, 0, 'p'},      {"samples", required_argument, 0, 'n'},
        {"temperature", required_argument, 0, 't'}, {"top-k", required_argument, 0, O_TOPK},
        {"top-p", required_argument, 0, O_TOPP},    {"greedy", no_argument, 0, O_GREEDY},
        {"max-new-tokens", required_argument, 0, O_MAXNEW}, {"seed", required_argument, 0, 's'},
        {"batch", required_argument, 0, O_BATCH},   {"threads", required_argument, 0, O_THREADS},
        {"format", required_argument, 0, O_FORMAT}, {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},              {"version", no_argument, 0, O_VERSION},
        {"device", required_argument, 0, O_DEVICE}, {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "m:p:n:t:s:qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case O_TOKENIZER: tok_path = optarg; break;
        case 'p': prompt = optarg; break;
        case 'n': samples = (int)parse_long("--samples", optarg, 1, 1 << 20); break;
        case 't': gc.sampler.temperature = (float)parse_double("--temperature", optarg); break;
        case O_TOPK: gc.sampler.top_k = (int)parse_long("--top-k", optarg, 0, 1 << 30); break;
        case O_TOPP: gc.sampler.top_p = (float)parse_double("--top-p", optarg); break;
        case O_GREEDY: gc.sampler.greedy = 1; break;
        case O_MAXNEW: gc.max_new_tokens = (int)parse_long("--max-new-tokens", optarg, 1, 1 << 24); break;
        case 's': {
            char *end;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (!*optarg || *end || optarg[0] == '-') die(EXIT_USAGE, "--seed: expected a non-negative integer, got \"%s\"", optarg);
            gc.seed = v;
            break;
        }
        case O_BATCH: gc.batch = (int)parse_long("--batch", optarg, 1, 1 << 16); break;
        case O_THREADS: threads = (int)parse_long("--threads", optarg, 1, 4096); break;
        case O_FORMAT: format = optarg; break;
        case O_DEVICE: device = optarg; break;
        case 'q': quiet = 1; break;
        case 'h': usage(stdout); return EXIT_OK;
        case O_VERSION: safe_print_version("safe-generate"); return EXIT_OK;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc) die(EXIT_USAGE, "unexpected argument \"%s\" (see --help)", argv[optind]);
    ranks_require_one("start it once, without a launcher (only safe-critic and safe-update run as several ranks)");
    if (!model_path) die(EXIT_USAGE, "--model is required (see --help)");
    if (strcmp(format, "text") != 0 && strcmp(format, "jsonl") != 0)
        die(EXIT_USAGE, "--format must be text or jsonl, got \"%s\"", format);
    char why[256];
    if (sampler_config_check(&gc.sampler, why, sizeof why)) die(EXIT_USAGE, "%s", why);
    if (threads > 0) omp_set_num_threads(threads);
    Device dev = device_select(device);   // --device cuda without a GPU: exit 1 before any work
    gc.quiet = quiet;

    // model and tokenizer
    Model *m = model_load(model_path);
    Backend *bk = backend_create(m, dev, "safe-generate", quiet);
    char *tp = tok_path ? xstrdup(tok_path) : model_tokenizer_path(model_path);
    Tokenizer *tok = tokenizer_load(tp, m->cfg.vocab_size);
    gc.eos_id = tok->eos_id;

    // prompts -> requests (samples per prompt)
    int np;
    Prompt *ps;
    if (prompt) {
        np = 1;
        ps = xmalloc(sizeof(Prompt));
        ps[0].id = xstrdup("prompt");
        ps[0].text = xstrdup(prompt);
    } else {
        ps = read_prompts(&np);
        if (np == 0) die(EXIT_BADINPUT, "no prompts on stdin (or pass --prompt TEXT)");
    }
    int32_t **ids = xmalloc((size_t)np * sizeof(int32_t *));
    int *nids = xmalloc((size_t)np * sizeof(int));
    for (int i = 0; i < np; i++) {
        ids[i] = xmalloc(tokenizer_max_tokens(ps[i].text) * sizeof(int32_t));
        nids[i] = tokenizer_encode(tok, ps[i].text, 1, 0, ids[i]);
    }
    int n = np * samples;
    GenRequest *reqs = xmalloc((size_t)n * sizeof(GenRequest));
    for (int i = 0; i < np; i++)
        for (int k = 0; k < samples; k++)
            reqs[i * samples + k] = (GenRequest){.id = ps[i].id, .sample_index = k, .tokens = ids[i], .n_tokens = nids[i]};

    GenResult *res = xcalloc((size_t)n, sizeof(GenResult));
    double t0 = now_seconds();
    backend_generate(bk, &gc, reqs, n, res, NULL, NULL);
    double dt = now_seconds() - t0;

    // print in request order
    long total = 0;
    for (int r = 0; r < n; r++) {
        const GenRequest *q = &reqs[r];
        size_t clen;
        char *completion = tokenizer_decode(tok, q->tokens[q->n_tokens - 1], res[r].tokens, res[r].n, &clen);
        total += res[r].n;
        if (!strcmp(format, "jsonl")) {
            double lp = 0;
            for (int j = 0; j < res[r].n; j++) lp += res[r].logp[j];
            json_t *j = json_pack("{s:s, s:i, s:s, s:s%, s:s, s:i, s:f}", "id", q->id, "sample", q->sample_index,
                                  "prompt", ps[r / samples].text, "completion", completion, clen,
                                  "finish", gen_finish_name(res[r].finish), "n_tokens", res[r].n, "logp", lp);
            if (!j) {   // invalid UTF-8 in the text: keep the line, flag it
                j = json_pack("{s:s, s:i, s:n, s:s, s:i, s:f}", "id", q->id, "sample", q->sample_index, "completion",
                              "finish", gen_finish_name(res[r].finish), "n_tokens", res[r].n, "logp", lp);
            }
            char *line = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);
            printf("%s\n", line);
            free(line);
            json_decref(j);
        } else {
            if (r > 0) putchar('\n');
            fputs(ps[r / samples].text, stdout);
            fwrite(completion, 1, clen, stdout);
            putchar('\n');
        }
        free(completion);
    }
    if (fflush(stdout) != 0) die(EXIT_RUNTIME, "writing stdout failed");
    if (!quiet)
        fprintf(stderr, "safe-generate: %d samples, %ld tokens in %.2f s (%.0f tok/s)\n", n, total, dt, dt > 0 ? total / dt : 0.0);

    for (int r = 0; r < n; r++) gen_result_free(&res[r]);
    free(res);
    free(reqs);
    for (int i = 0; i < np; i++) { free(ids[i]); free(ps[i].id); free(ps[i].text); }
    free(ids); free(nids); free(ps);
    tokenizer_free(tok);
    free(tp);
    backend_free(bk);
    model_free(m);
    return EXIT_OK;
}
