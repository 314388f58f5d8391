// safe-convert — a model in any format we read -> a Hugging Face checkpoint directory.
//
//   safe-convert models/SmolLM2-135M-Instruct.Q4_1.gguf smollm2-hf/
//   safe-convert ../shared/data/stories260K/stories260K.bin stories260K-hf/
//   safe-convert some-hf-model/ copy/                   # F16/BF16/sharded -> one F32 file
//
// Writes OUTDIR/config.json (LlamaForCausalLM, or Qwen2ForCausalLM when q/k/v have biases),
// OUTDIR/model.safetensors (F32, HF names and layout: GGUF weights dequantised and their
// llama.cpp q/k permutation undone, llama.c weights un-interleaved) and the tokenizer
// (see checkpoint.h): HF tokenizer.json and companions copied; a GGUF's tokenizer metadata
// written as tokenizer.json + tokenizer_config.json (tokenizer.gguf when it is not a tokenizer
// we support); a llama2.c tokenizer.bin copied.
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"  // model_load, model_tokenizer_path, checkpoint_save
#include "common.h"      // die, exit codes, safe_progname
#include "lora.h"          // lora_check_output: an adapter's base is not an output
#include "ranks.h"       // ranks_require_one: one process, not several ranks

static void usage(FILE *f) {
    fprintf(f,
        "usage: safe-convert [options] MODEL OUTDIR\n"
        "\n"
        "Convert MODEL (a llama2.c .bin, a .gguf file, a Hugging Face / safe checkpoint directory,\n"
        "or a PEFT LoRA adapter directory: its base with the adapter merged) into the Hugging\n"
        "Face directory OUTDIR: config.json, model.safetensors (F32)\n"
        "and the tokenizer files, loadable by transformers and by every safe tool.\n"
        "\n"
        "  --tokenizer FILE   tokenizer to put beside the weights (default: the model's own:\n"
        "                     DIR/tokenizer.json, the .gguf's metadata, or tok*.bin beside a .bin)\n"
        "  --no-tokenizer     write the weights and config only\n"
        "  --quiet            no summary line on stderr\n"
        "  --help, --version\n"
        "\n"
        "Exit status: 0 ok, 1 usage, 2 bad input, 3 I/O failure. See safe-convert(1).\n");
}

// The model's own tokenizer (an adapter's base's when it has none), or NULL with a warning.
static char *find_tokenizer(const char *in) {
    char *p = model_tokenizer_find(in);
    if (!p)
        warn("%s has no tokenizer.json, tokenizer.bin or tokenizer.gguf: converting the weights only "
             "(--tokenizer FILE adds one)", in);
    return p;
}

int main(int argc, char **argv) {
    safe_progname = "safe-convert";
    enum { O_TOK = 256, O_NOTOK, O_QUIET, O_HELP, O_VERSION };
    static const struct option longs[] = {
        {"tokenizer", 1, 0, O_TOK}, {"no-tokenizer", 0, 0, O_NOTOK}, {"quiet", 0, 0, O_QUIET},
        {"help", 0, 0, O_HELP}, {"version", 0, 0, O_VERSION}, {0, 0, 0, 0}};
    const char *tok = NULL;
    int no_tok = 0, quiet = 0, c;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case O_TOK: tok = optarg; break;
        case O_NOTOK: no_tok = 1; break;
        case O_QUIET: quiet = 1; break;
        case O_HELP: usage(stdout); return EXIT_OK;
        case O_VERSION: safe_print_version("safe-convert"); return EXIT_OK;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (argc - optind != 2) { usage(stderr); return EXIT_USAGE; }
    ranks_require_one("start it once, without a launcher (only safe-critic and safe-update run as several ranks)");
    const char *in = argv[optind], *out = argv[optind + 1];
    if (tok && no_tok) die(EXIT_USAGE, "--tokenizer and --no-tokenizer exclude each other");
    char a[4096], b[4096];
    if (realpath(in, a) && realpath(out, b) && !strcmp(a, b))
        die(EXIT_USAGE, "MODEL and OUTDIR are the same path (%s): write the conversion elsewhere", in);
    lora_check_output(out, in, NULL);   // not over the base of the adapter being merged

    double t0 = now_seconds();
    Model *m = model_load(in);
    char *tp = no_tok ? NULL : tok ? xstrdup(tok) : find_tokenizer(in);
    CheckpointParts parts = {.tokenizer_path = tp, .bos_id = -1, .eos_id = -1};
    checkpoint_save(out, m, &parts);
    if (!quiet)
        fprintf(stderr, "safe-convert: %s -> %s/: %zu parameters (%d layers, dim %d, vocab %d%s%s), tokenizer %s, %.1f s\n",
                in, out, m->n_params, m->cfg.n_layers, m->cfg.dim, m->cfg.vocab_size, m->cfg.tied ? ", tied" : "",
                m->cfg.qkv_bias ? ", q/k/v bias" : "", tp ? tp : "none", now_seconds() - t0);
    free(tp);
    model_free(m);
    return EXIT_OK;
}
