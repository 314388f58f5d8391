// lora_train.c — LoRA in the training tools: options, the model to train, output checks (lora.h).
#include "lora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"   // model_load, checkpoint_is_dir
#include "cli.h"          // opt_int, opt_float
#include "common.h"       // die, path_exists

LoraOptions lora_options_default(void) {
    return (LoraOptions){.cfg = {.alpha = 8, .targets = 1u << LORA_Q | 1u << LORA_V}};
}

void lora_option(LoraOptions *lo, const char *name, const char *arg) {
    if (!strcmp(name, "lora-r")) {
        lo->cfg.r = opt_int("lora-r", arg);
        if (lo->cfg.r < 1 || lo->cfg.r > 4096) die(EXIT_USAGE, "--lora-r must be 1 to 4096 (got %d)", lo->cfg.r);
    } else if (!strcmp(name, "lora-alpha")) {
        lo->cfg.alpha = opt_float("lora-alpha", arg);
        if (!(lo->cfg.alpha > 0)) die(EXIT_USAGE, "--lora-alpha must be > 0 (got %g)", lo->cfg.alpha);
        lo->alpha_set = 1;
    } else {
        char why[256];
        if (lora_parse_targets(arg, &lo->cfg.targets, why, sizeof why) != 0) die(EXIT_USAGE, "--lora-targets: %s", why);
        lo->targets_set = 1;
    }
}

void lora_options_check(const LoraOptions *lo) {
    if (!lo->cfg.r && (lo->alpha_set || lo->targets_set))
        die(EXIT_USAGE, "--lora-alpha and --lora-targets describe an adapter: give --lora-r too");
}

Model *lora_load_trainable(const char *path, const LoraOptions *lo, uint64_t seed) {
    if (lora_is_adapter_dir(path)) {
        Model *m = lora_load_model(path);
        const LoraConfig *c = &m->lora->cfg;
        // a pipeline passes the same --lora-* every iteration: they must describe this adapter
        if (lo->cfg.r && (lo->cfg.r != c->r || (lo->alpha_set && lo->cfg.alpha != c->alpha) ||
                          (lo->targets_set && lo->cfg.targets != c->targets)))
            die(EXIT_USAGE, "%s is an adapter of rank %d, alpha %g on %s, which the --lora-* options contradict (drop "
                "them to go on training it, or merge it first with safe-convert)", path, c->r, c->alpha,
                lora_targets_string(c->targets));
        return m;
    }
    return lora_load_new(path, lo, seed);
}

Model *lora_load_new(const char *path, const LoraOptions *lo, uint64_t seed) {
    if (lo->cfg.r && lora_is_adapter_dir(path))   // PEFT could not read an adapter on an adapter
        die(EXIT_USAGE, "%s is a LoRA adapter: a new adapter on it would need both; merge it first (safe-convert %s "
            "DIR) and start from DIR, or start from its base", path, path);
    Model *m = model_load(path);
    if (lo->cfg.r) {
        Lora *a = lora_create(&m->cfg, &lo->cfg);
        lora_init(a, seed);
        char *abs = realpath(path, NULL);   // the base, wherever the adapter is read from
        a->base_path = abs ? abs : xstrdup(path);
        lora_attach(m, a);
    }
    return m;
}

int lora_resumes_optimizer(const char *path, const Model *m) {
    return m->lora ? lora_is_adapter_dir(path) : checkpoint_is_dir(path);
}

// Walk the chain of bases from adapter directory `of` (base of base ...): exit 1 when one of
// them is out (a realpath).
static void check_chain(const char *output, const char *out, const char *of) {
    char *child = xstrdup(of), *p = lora_base_path(of);
    for (int depth = 0; p && depth < 8; depth++) {
        char *rp = realpath(p, NULL);
        if (rp && path_within(rp, out))
            die(EXIT_USAGE, "%s holds the base model of the adapter %s: saving there would replace it; choose another "
                "output directory", output, child);
        free(rp);
        char *next = lora_is_adapter_dir(p) ? lora_base_path(p) : NULL;
        free(child);
        child = p;
        p = next;
    }
    free(p);
    free(child);
}

void lora_check_output(const char *output, const char *input, const Model *m) {
    char *out = path_exists(output) ? realpath(output, NULL) : NULL;
    if (!out) return;   // a new directory is nobody's base
    if (lora_is_adapter_dir(input)) check_chain(output, out, input);
    if (m && m->lora && !lora_is_adapter_dir(input)) {   // a new adapter on input: input is its base
        char *in = realpath(input, NULL);
        if (in && path_within(in, out))
            die(EXIT_USAGE, "%s holds the base model of the new adapter: saving there would replace it; choose another "
                "output directory", output);
        free(in);
    }
    free(out);
}
