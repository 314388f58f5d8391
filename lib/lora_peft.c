// lora_peft.c — LoRA adapters as PEFT directories (lora.h):
//
//   DIR/adapter_config.json         {"peft_type": "LORA", "r", "lora_alpha", "target_modules",
//                                    "use_rslora", "base_model_name_or_path", ...}
//   DIR/adapter_model.safetensors   base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight
//                                   (r, in) and ...lora_B.weight (out, r), per adapted projection
//
// Only what this engine computes is accepted: plain LoRA on the attention and MLP projections
// of every layer, no DoRA, no trained biases or extra modules; anything else stops with exit
// status 2 naming the file and key, never a silently different model.
#include "lora.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"    // model_load: the base model
#include "common.h"        // die, path_join, path_exists
#include "jsonfile.h"      // json_load_file_lenient
#include "safetensors.h"   // the adapter's tensors

int lora_is_adapter_dir(const char *path) {
    if (!path_is_dir(path)) return 0;
    char *p = path_join(path, "adapter_config.json");
    int ok = path_exists(p);
    free(p);
    if (ok && checkpoint_is_dir(path))
        die(EXIT_BADINPUT, "%s holds both a model (config.json) and an adapter (adapter_config.json): which one is "
            "meant is ambiguous; keep one of them in the directory", path);
    return ok;
}

static json_t *read_adapter_config(const char *dir, char **path_out) {
    char *path = path_join(dir, "adapter_config.json");
    json_error_t err;
    json_t *j = json_load_file_lenient(path, &err);
    if (!j) die(EXIT_BADINPUT, "%s: %s (line %d, column %d)", path, err.text, err.line, err.column);
    if (!json_is_object(j)) die(EXIT_BADINPUT, "%s: not a JSON object", path);
    *path_out = path;
    return j;
}

// A key that must be absent, null, false, empty or equal to `fine` (a string), else exit 2:
// each of these would make PEFT's model a different one from what this engine computes.
static void refuse_unless(json_t *j, const char *path, const char *key, const char *fine, const char *what) {
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v) || json_is_false(v)) return;
    if (json_is_object(v) && json_object_size(v) == 0) return;
    if (json_is_array(v) && json_array_size(v) == 0) return;
    if (fine && json_is_string(v) && !strcmp(json_string_value(v), fine)) return;
    die(EXIT_BADINPUT, "%s: \"%s\" is set: %s is not supported (plain LoRA on every layer's projections only)", path,
        key, what);
}

// Which layers' projection t a target_modules entry names, by PEFT's rule: the module's full
// name (model.layers.N.self_attn.q_proj) equals the entry or ends with "." + the entry. Sets
// bit N of layers[t]; returns the number of modules matched.
static int match_modules(const char *entry, int n_layers, uint64_t *layers) {
    int matched = 0;
    for (int l = 0; l < n_layers; l++)
        for (int t = 0; t < LORA_NTARGETS; t++) {
            char full[160];
            snprintf(full, sizeof full, "model.layers.%d.%s.%s", l, t <= LORA_O ? "self_attn" : "mlp",
                     lora_target_names[t]);
            size_t nf = strlen(full), ne = strlen(entry);
            if (!strcmp(full, entry) || (ne < nf && full[nf - ne - 1] == '.' && !strcmp(full + nf - ne, entry))) {
                layers[t] |= 1ull << l;
                matched++;
            }
        }
    return matched;
}

// target_modules: the string "all-linear" (every projection, not the LM head) or a list of
// module names, each matching by PEFT's rule; every adapted projection in every layer.
static unsigned parse_target_modules(json_t *v, const char *path, int n_layers) {
    if (json_is_string(v)) {
        if (strcmp(json_string_value(v), "all-linear") != 0)
            die(EXIT_BADINPUT, "%s: \"target_modules\" \"%s\": PEFT reads a string as a regular expression, which is "
                "not supported here; list the modules (q_proj, ..., down_proj) or use \"all-linear\"", path,
                json_string_value(v));
        return (1u << LORA_NTARGETS) - 1;
    }
    if (!json_is_array(v) || json_array_size(v) == 0)
        die(EXIT_BADINPUT, "%s: \"target_modules\" must be a non-empty list of module names", path);
    if (n_layers > 64) die(EXIT_BADINPUT, "%s: adapters of models with more than 64 layers are not supported", path);
    uint64_t layers[LORA_NTARGETS] = {0};
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_string(e) || match_modules(json_string_value(e), n_layers, layers) == 0)
            die(EXIT_BADINPUT, "%s: \"target_modules\"[%zu]: %s%s%s: not a projection of this model (q_proj, k_proj, "
                "v_proj, o_proj, gate_proj, up_proj, down_proj, or their paths model.layers.N.self_attn.q_proj ...)",
                path, i, json_is_string(e) ? "\"" : "", json_is_string(e) ? json_string_value(e) : "not a string",
                json_is_string(e) ? "\"" : "");
    }
    uint64_t all = n_layers == 64 ? ~0ull : (1ull << n_layers) - 1;
    unsigned targets = 0;
    for (int t = 0; t < LORA_NTARGETS; t++) {
        if (!layers[t]) continue;
        if (layers[t] != all)
            die(EXIT_BADINPUT, "%s: \"target_modules\" adapts %s in some layers only: adapting only some layers is "
                "not supported", path, lora_target_names[t]);
        targets |= 1u << t;
    }
    return targets;
}

LoraConfig lora_read_config(const char *dir, int n_layers) {
    char *path;
    json_t *j = read_adapter_config(dir, &path);
    json_t *v = json_object_get(j, "peft_type");
    if (v && !(json_is_string(v) && !strcmp(json_string_value(v), "LORA")))
        die(EXIT_BADINPUT, "%s: \"peft_type\" must be \"LORA\"", path);
    refuse_unless(j, path, "use_dora", NULL, "DoRA");
    refuse_unless(j, path, "bias", "none", "training biases");
    refuse_unless(j, path, "fan_in_fan_out", NULL, "fan_in_fan_out (GPT-2 style Conv1D weights)");
    refuse_unless(j, path, "modules_to_save", NULL, "saving extra modules");
    refuse_unless(j, path, "layers_to_transform", NULL, "adapting only some layers");
    refuse_unless(j, path, "rank_pattern", NULL, "per-module ranks");
    refuse_unless(j, path, "alpha_pattern", NULL, "per-module alphas");
    refuse_unless(j, path, "layers_pattern", NULL, "adapting only some layers");
    refuse_unless(j, path, "exclude_modules", NULL, "excluding modules");
    refuse_unless(j, path, "layer_replication", NULL, "layer replication");
    refuse_unless(j, path, "target_parameters", NULL, "adapting parameters (not modules)");
    refuse_unless(j, path, "trainable_token_indices", NULL, "training token embeddings");
    refuse_unless(j, path, "lora_bias", NULL, "a bias on lora_B");
    // PiSSA, OLoRA, LoftQ, CorDA, EVA: PEFT redoes them at load, changing the base weights
    v = json_object_get(j, "init_lora_weights");
    if (v && !json_is_null(v) && !json_is_boolean(v) && !(json_is_string(v) && !strcmp(json_string_value(v), "gaussian")))
        die(EXIT_BADINPUT, "%s: \"init_lora_weights\" must be true, false or \"gaussian\": other initialisations "
            "(PiSSA, OLoRA, LoftQ, ...) change the base model when PEFT loads the adapter, which this engine does not do",
            path);
    LoraConfig c = {.alpha = 8};   // PEFT's default lora_alpha
    v = json_object_get(j, "r");
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 4096)
        die(EXIT_BADINPUT, "%s: \"r\" must be an integer from 1 to 4096", path);
    c.r = (int)json_integer_value(v);
    v = json_object_get(j, "lora_alpha");
    if (v && !json_is_null(v)) {
        if (!json_is_number(v) || !(json_number_value(v) > 0) || !isfinite((float)json_number_value(v)))
            die(EXIT_BADINPUT, "%s: \"lora_alpha\" must be a number > 0 within float range", path);
        c.alpha = (float)json_number_value(v);
    }
    v = json_object_get(j, "use_rslora");
    if (v && !json_is_null(v) && !json_is_boolean(v)) die(EXIT_BADINPUT, "%s: \"use_rslora\" must be true or false", path);
    c.rslora = v && json_is_true(v);
    v = json_object_get(j, "target_modules");
    if (!v) die(EXIT_BADINPUT, "%s: missing \"target_modules\"", path);
    c.targets = parse_target_modules(v, path, n_layers);
    json_decref(j);
    free(path);
    return c;
}

// A path that exists, made absolute; NULL when it does not exist.
static char *resolved(const char *path) { return path_exists(path) ? realpath(path, NULL) : NULL; }

char *lora_base_path(const char *dir) {
    char *path;
    json_t *j = read_adapter_config(dir, &path);
    json_t *v = json_object_get(j, "base_model_name_or_path");
    if (!json_is_string(v) || !*json_string_value(v))
        die(EXIT_BADINPUT, "%s: \"base_model_name_or_path\" must name the base model (a path)", path);
    const char *name = json_string_value(v);
    // absolute as written; a relative name from the current directory (as PEFT reads it) or
    // from the adapter's directory, refused when both exist and differ
    char *found = resolved(name);
    if (name[0] != '/') {
        char *rel = path_join(dir, name), *beside = resolved(rel);
        free(rel);
        if (found && beside && strcmp(found, beside) != 0)
            die(EXIT_BADINPUT, "%s: \"base_model_name_or_path\" \"%s\" names both %s (from the current directory) and "
                "%s (from the adapter's): ambiguous; write the absolute path of the base", path, name, found, beside);
        if (!found) found = beside;
        else free(beside);
    }
    if (!found)
        die(EXIT_BADINPUT, "%s: the base model \"%s\" is not there (nor relative to %s): put the base model there, or "
            "edit base_model_name_or_path to its local path (a hub name must be downloaded first)", path, name, dir);
    if (path_is_dir(found) && !checkpoint_is_dir(found) && !lora_is_adapter_dir(found))
        die(EXIT_BADINPUT, "%s: \"base_model_name_or_path\" \"%s\" is a directory without config.json: not a model",
            path, name);
    json_decref(j);
    free(path);
    return found;
}

// The PEFT name of matrix "lora_A" or "lora_B" of target t in layer l.
static void tensor_name(char *buf, size_t n, int l, int t, const char *ab) {
    const char *block = t <= LORA_O ? "self_attn" : "mlp";
    snprintf(buf, n, "base_model.model.model.layers.%d.%s.%s.%s.weight", l, block, lora_target_names[t], ab);
}

// The adapter's tensors (names malloc'd) in a fixed order: per target, per layer, A then B.
static int adapter_tensors(const Lora *lo, StTensor *t) {
    int n = 0, r = lo->cfg.r;
    for (int k = 0; k < LORA_NTARGETS; k++) {
        if (!lo->A[k]) continue;
        for (int l = 0; l < lo->L; l++) {
            char name[256];
            tensor_name(name, sizeof name, l, k, "lora_A");
            t[n++] = (StTensor){.name = xstrdup(name), .data = lo->A[k] + (size_t)l * r * lo->in[k], .ndim = 2,
                                .shape = {r, lo->in[k]}};
            tensor_name(name, sizeof name, l, k, "lora_B");
            t[n++] = (StTensor){.name = xstrdup(name), .data = lo->B[k] + (size_t)l * lo->out[k] * r, .ndim = 2,
                                .shape = {lo->out[k], r}};
        }
    }
    return n;
}

static int adapter_tensor_count(const Lora *lo) {
    int n = 0;
    for (int k = 0; k < LORA_NTARGETS; k++)
        if (lo->A[k]) n += 2 * lo->L;
    return n;
}

static void tensors_free(StTensor *t, int n) {
    for (int i = 0; i < n; i++) free((char *)t[i].name);
    free(t);
}

static void read_tensors(Lora *lo, const char *dir) {
    char *path = path_join(dir, "adapter_model.safetensors");
    if (!path_exists(path))
        die(EXIT_BADINPUT, "%s: missing (this engine reads adapters in safetensors; convert an adapter_model.bin "
            "with PEFT first)", path);
    SafeTensors *st = safetensors_open(path);
    int n = adapter_tensor_count(lo);
    StTensor *t = xmalloc((size_t)n * sizeof(StTensor));
    adapter_tensors(lo, t);
    for (int i = 0; i < n; i++) {
        if (!safetensors_find(st, t[i].name))
            die(EXIT_BADINPUT, "%s: no tensor %s (adapter_config.json lists this module)", path, t[i].name);
        safetensors_read_f32(st, t[i].name, (float *)t[i].data, t[i].ndim, t[i].shape, 0);
    }
    // nothing else may be in the file: a tensor we do not apply would be a different model
    for (int e = 0; e < st->n; e++) {
        int known = 0;
        for (int i = 0; i < n && !known; i++) known = !strcmp(st->e[e].name, t[i].name);
        if (!known)
            die(EXIT_BADINPUT, "%s: tensor %s is not one this engine applies (LoRA A/B of the listed modules, every "
                "layer, without an adapter name)", path, st->e[e].name);
    }
    safetensors_close(st);
    tensors_free(t, n);
    free(path);
}

Model *lora_load_model(const char *dir) {
    static int depth;   // an adapter whose base is an adapter: a few levels, never a cycle
    if (depth >= 8) die(EXIT_BADINPUT, "%s: adapters based on adapters more than 8 deep (a cycle?)", dir);
    char *base = lora_base_path(dir);
    depth++;
    Model *m = model_load(base);
    depth--;
    LoraConfig c = lora_read_config(dir, m->cfg.n_layers);
    char why[256];
    if (lora_config_check(&c, why, sizeof why) != 0) die(EXIT_BADINPUT, "%s/adapter_config.json: %s", dir, why);
    Lora *lo = lora_create(&m->cfg, &c);
    read_tensors(lo, dir);
    lo->base_path = base;
    lora_attach(m, lo);
    return m;
}

void lora_save_files(const char *dir, const Lora *lo) {
    json_t *targets = json_array();
    for (int t = 0; t < LORA_NTARGETS; t++)
        if (lo->A[t]) json_array_append_new(targets, json_string(lora_target_names[t]));
    json_t *cfg = json_pack("{s:s, s:s, s:s?, s:i, s:f, s:o, s:f, s:s, s:b, s:b, s:b, s:b, s:b}", "peft_type", "LORA",
                            "task_type", "CAUSAL_LM", "base_model_name_or_path", lo->base_path, "r", lo->cfg.r,
                            "lora_alpha", (double)lo->cfg.alpha, "target_modules", targets, "lora_dropout", 0.0,
                            "bias", "none", "use_rslora", lo->cfg.rslora, "use_dora", 0, "fan_in_fan_out", 0,
                            "inference_mode", 1, "init_lora_weights", 1);
    if (!cfg) die(EXIT_RUNTIME, "adapter_config.json: cannot build the JSON object");
    char *p = path_join(dir, "adapter_config.json");
    if (json_dump_file(cfg, p, JSON_INDENT(2) | JSON_REAL_PRECISION(9)) != 0) die(EXIT_RUNTIME, "writing %s failed", p);
    free(p);
    json_decref(cfg);

    int n = adapter_tensor_count(lo);
    StTensor *t = xmalloc((size_t)n * sizeof(StTensor));
    adapter_tensors(lo, t);
    p = path_join(dir, "adapter_model.safetensors");
    const char *fk[1] = {"format"}, *fv[1] = {"pt"};
    safetensors_write(p, t, n, fk, fv, 1);
    free(p);
    tensors_free(t, n);
}
