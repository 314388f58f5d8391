// checkpoint.c — HF-layout checkpoint directories: save (atomic), load, model_load.
#include "checkpoint.h"

#include "jsonfile.h"   // json_load_file_lenient: HF files with integers beyond int64

#include "common.h"       // die, warn, xmalloc, exit codes
#include "gguf.h"         // gguf_open, gguf_load_model, gguf_write_meta_subset for .gguf models
#include "lora.h"         // PEFT adapter directories: lora_load_model, lora_save_files
#include "llama2c.h"      // llama2c_load for .bin files
#include "tokenizer.h"    // tokenizer_gguf_export: a GGUF's tokenizer as tokenizer.json
#include "zio.h"          // zout_signal_dir: the temporary directory goes on SIGTERM too

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <ftw.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// ----------------------------------------------------------------------------
// the model's tensors under Hugging Face names

int checkpoint_tensor_count(const ModelConfig *c) {
    return 2 + c->n_layers * (9 + (c->qkv_bias ? 3 : 0)) + (c->tied ? 0 : 1);
}

static void put(StTensor *t, int *n, char *name, const float *data, int ndim, int64_t d0, int64_t d1) {
    StTensor *x = &t[(*n)++];
    x->name = name;
    x->data = data;
    x->ndim = ndim;
    x->shape[0] = d0;
    x->shape[1] = d1;
}

static char *fmt_name(const char *fmt, int l) {
    char buf[128];
    snprintf(buf, sizeof buf, fmt, l);
    return xstrdup(buf);
}

// Names are malloc'd: free them with checkpoint_tensors_free_names.
int checkpoint_model_tensors(const Model *m, StTensor *out) {
    const ModelConfig *c = &m->cfg;
    const ParamViews *w = &m->w;
    int64_t C = c->dim, F = c->hidden_dim, V = c->vocab_size;
    int64_t hs = C / c->n_heads, qd = c->n_heads * hs, kvd = c->n_kv_heads * hs;
    int n = 0;
    put(out, &n, xstrdup("model.embed_tokens.weight"), w->tok_emb, 2, V, C);
    for (int l = 0; l < c->n_layers; l++) {
        put(out, &n, fmt_name("model.layers.%d.input_layernorm.weight", l), w->attn_norm + l * C, 1, C, 0);
        put(out, &n, fmt_name("model.layers.%d.self_attn.q_proj.weight", l), w->wq + l * qd * C, 2, qd, C);
        put(out, &n, fmt_name("model.layers.%d.self_attn.k_proj.weight", l), w->wk + l * kvd * C, 2, kvd, C);
        put(out, &n, fmt_name("model.layers.%d.self_attn.v_proj.weight", l), w->wv + l * kvd * C, 2, kvd, C);
        if (c->qkv_bias) {
            put(out, &n, fmt_name("model.layers.%d.self_attn.q_proj.bias", l), w->bq + l * qd, 1, qd, 0);
            put(out, &n, fmt_name("model.layers.%d.self_attn.k_proj.bias", l), w->bk + l * kvd, 1, kvd, 0);
            put(out, &n, fmt_name("model.layers.%d.self_attn.v_proj.bias", l), w->bv + l * kvd, 1, kvd, 0);
        }
        put(out, &n, fmt_name("model.layers.%d.self_attn.o_proj.weight", l), w->wo + l * C * qd, 2, C, qd);
        put(out, &n, fmt_name("model.layers.%d.post_attention_layernorm.weight", l), w->ffn_norm + l * C, 1, C, 0);
        put(out, &n, fmt_name("model.layers.%d.mlp.gate_proj.weight", l), w->w1 + l * F * C, 2, F, C);
        put(out, &n, fmt_name("model.layers.%d.mlp.up_proj.weight", l), w->w3 + l * F * C, 2, F, C);
        put(out, &n, fmt_name("model.layers.%d.mlp.down_proj.weight", l), w->w2 + l * C * F, 2, C, F);
    }
    put(out, &n, xstrdup("model.norm.weight"), w->final_norm, 1, C, 0);
    if (!c->tied) put(out, &n, xstrdup("lm_head.weight"), w->lm_head, 2, V, C);
    return n;
}

static void tensors_free_names(StTensor *t, int n) {
    for (int i = 0; i < n; i++) free((char *)t[i].name);
}

// ----------------------------------------------------------------------------
// files and directories

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

static int rm_tree(const char *path) {
    return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

// The temporary directory of the save in progress: removed if the process exits first.
static char *pending_tmp;
static int pending_hook;
static void pending_cleanup(void) {
    if (pending_tmp) {
        rm_tree(pending_tmp);
        free(pending_tmp);
        pending_tmp = NULL;
    }
}

static void copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb");
    if (!in) die(EXIT_BADINPUT, "cannot open %s to copy it into the checkpoint: %s", src, strerror(errno));
    FILE *out = fopen(dst, "wb");
    if (!out) die(EXIT_RUNTIME, "cannot create %s: %s", dst, strerror(errno));
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) die(EXIT_RUNTIME, "writing %s failed: %s", dst, strerror(errno));
    if (ferror(in)) die(EXIT_BADINPUT, "reading %s failed", src);
    fclose(in);
    if (fflush(out) != 0 || fsync(fileno(out)) != 0 || fclose(out) != 0)
        die(EXIT_RUNTIME, "writing %s failed: %s", dst, strerror(errno));
}

static void dump_json(json_t *j, const char *path, size_t flags) {
    if (json_dump_file(j, path, flags) != 0) die(EXIT_RUNTIME, "writing %s failed", path);
}

// ----------------------------------------------------------------------------
// saving

// The shortest decimal that reads back as the same float32: 1e-5f is written 1e-05, not
// 9.99999975e-06 (what its exact double value prints as).
static json_t *json_real_f(float f) {
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if ((float)strtod(buf, NULL) == f) break;
    }
    return json_real(strtod(buf, NULL));
}

static json_t *config_json(const ModelConfig *c, const CheckpointParts *p) {
    json_t *j = json_object();
    int qwen = c->qkv_bias;   // Llama has no q/k/v-only biases; Qwen2 is exactly that
    json_object_set_new(j, "architectures", json_pack("[s]", qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM"));
    json_object_set_new(j, "model_type", json_string(qwen ? "qwen2" : "llama"));
    json_object_set_new(j, "hidden_size", json_integer(c->dim));
    json_object_set_new(j, "intermediate_size", json_integer(c->hidden_dim));
    json_object_set_new(j, "num_hidden_layers", json_integer(c->n_layers));
    json_object_set_new(j, "num_attention_heads", json_integer(c->n_heads));
    json_object_set_new(j, "num_key_value_heads", json_integer(c->n_kv_heads));
    json_object_set_new(j, "head_dim", json_integer(c->dim / c->n_heads));
    json_object_set_new(j, "vocab_size", json_integer(c->vocab_size));
    json_object_set_new(j, "max_position_embeddings", json_integer(c->max_seq_len));
    json_object_set_new(j, "rope_theta", json_real_f(c->rope_theta));
    json_object_set_new(j, "rms_norm_eps", json_real_f(c->norm_eps));
    json_object_set_new(j, "tie_word_embeddings", json_boolean(c->tied));
    json_object_set_new(j, "hidden_act", json_string("silu"));
    if (qwen) {
        json_object_set_new(j, "use_sliding_window", json_false());
        json_object_set_new(j, "sliding_window", json_integer(c->max_seq_len));
        json_object_set_new(j, "max_window_layers", json_integer(c->n_layers));
    } else {
        json_object_set_new(j, "attention_bias", json_false());
        json_object_set_new(j, "mlp_bias", json_false());
    }
    json_object_set_new(j, "attention_dropout", json_real(0.0));
    json_object_set_new(j, "rope_scaling", json_null());
    json_object_set_new(j, "initializer_range", json_real(0.02));
    json_object_set_new(j, "use_cache", json_true());
    if (p && p->bos_id >= 0) json_object_set_new(j, "bos_token_id", json_integer(p->bos_id));
    if (p && p->eos_id >= 0) json_object_set_new(j, "eos_token_id", json_integer(p->eos_id));
    json_object_set_new(j, "torch_dtype", json_string("float32"));
    json_object_set_new(j, "safe_version", json_string(SAFE_VERSION));
    return j;
}

static void save_optimizer(const char *path, const AdamW *opt) {
    StTensor t[2] = {
        {.name = "exp_avg", .data = opt->m, .ndim = 1, .shape = {(int64_t)opt->n}},
        {.name = "exp_avg_sq", .data = opt->v, .ndim = 1, .shape = {(int64_t)opt->n}},
    };
    char vals[6][64];
    snprintf(vals[0], 64, "%ld", opt->step);
    snprintf(vals[1], 64, "%.9g", opt->cfg.lr);
    snprintf(vals[2], 64, "%.9g", opt->cfg.beta1);
    snprintf(vals[3], 64, "%.9g", opt->cfg.beta2);
    snprintf(vals[4], 64, "%.9g", opt->cfg.eps);
    snprintf(vals[5], 64, "%.9g", opt->cfg.weight_decay);
    const char *keys[6] = {"step", "lr", "beta1", "beta2", "eps", "weight_decay"};
    const char *v[6] = {vals[0], vals[1], vals[2], vals[3], vals[4], vals[5]};
    safetensors_write(path, t, 2, keys, v, 6);
}

// ---- the tokenizer that travels with a checkpoint ----
// tokenizer.json (HF): copied with its companions from the same folder, so transformers
// loads the directory as it loaded the source. tokenizer.bin (llama2.c): copied. A GGUF model:
// its tokenizer.ggml.* metadata written as tokenizer.json + tokenizer_config.json
// (tokenizer_gguf_export: transformers loads them, tokenizer_load reads the same tokenizer the
// GGUF gives); when the metadata is not a tokenizer we support (no merges, an unknown
// pre-tokenizer), the tokenizer.* metadata as a small tokenizer-only GGUF, tokenizer.gguf.
static const char *const HF_TOKENIZER_COMPANIONS[] = {
    "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja", "tokenizer.model",
};

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static char *dir_of(const char *path) {
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash) slash[slash == dir ? 1 : 0] = '\0';
    else strcpy(dir, ".");
    return dir;
}

static void save_tokenizer(const char *dir, const char *tok) {
    char *p;
    if (gguf_is_gguf_file(tok)) {
        if (tokenizer_gguf_export(tok, dir)) return;   // else it warned why: tokenizer.gguf
        Gguf *g = gguf_open(tok);
        const char *prefixes[1] = {"tokenizer."};
        p = path_join(dir, "tokenizer.gguf");
        gguf_write_meta_subset(g, p, prefixes, 1);
        free(p);
        gguf_close(g);
    } else if (has_suffix(tok, ".json")) {
        p = path_join(dir, "tokenizer.json");
        copy_file(tok, p);
        free(p);
        char *src = dir_of(tok);
        for (size_t i = 0; i < sizeof HF_TOKENIZER_COMPANIONS / sizeof *HF_TOKENIZER_COMPANIONS; i++) {
            char *from = path_join(src, HF_TOKENIZER_COMPANIONS[i]);
            if (path_exists(from)) {
                p = path_join(dir, HF_TOKENIZER_COMPANIONS[i]);
                copy_file(from, p);
                free(p);
            }
            free(from);
        }
        free(src);
    } else {
        p = path_join(dir, "tokenizer.bin");
        copy_file(tok, p);
        free(p);
    }
}

// bos/eos/pad ids for config.json when the caller gave none: from the source model's
// config.json (HF tokenizer.json beside it) or the GGUF metadata.
static void add_token_ids(json_t *cfg, const CheckpointParts *parts) {
    static const char *const keys[3] = {"bos_token_id", "eos_token_id", "pad_token_id"};
    const char *tok = parts->tokenizer_path;
    if (gguf_is_gguf_file(tok)) {
        static const char *const gkeys[3] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                             "tokenizer.ggml.padding_token_id"};
        Gguf *g = gguf_open(tok);
        for (int i = 0; i < 3; i++) {
            uint32_t v;
            if (!json_object_get(cfg, keys[i]) && gguf_get_u32(g, gkeys[i], &v))
                json_object_set_new(cfg, keys[i], json_integer(v));
        }
        gguf_close(g);
    } else if (has_suffix(tok, ".json")) {
        char *src = dir_of(tok), *cj = path_join(src, "config.json");
        json_t *j = path_exists(cj) ? json_load_file_lenient(cj, NULL) : NULL;
        for (int i = 0; j && i < 3; i++) {
            json_t *v = json_object_get(j, keys[i]);
            if (v && !json_object_get(cfg, keys[i]) && (json_is_integer(v) || json_is_array(v)))
                json_object_set(cfg, keys[i], v);
        }
        json_decref(j);
        free(cj);
        free(src);
    }
}

// Saving replaces `dir` whole; refuse when that would throw away something that is not a
// checkpoint (a file, or a non-empty directory without config.json or adapter_config.json).
void checkpoint_check_target(const char *dir) {
    output_parent_check(dir, "output checkpoint");
    if (!path_exists(dir)) return;
    if (!path_is_dir(dir)) die(EXIT_USAGE, "%s exists and is not a directory; a checkpoint is a directory", dir);
    if (checkpoint_is_dir(dir) || lora_is_adapter_dir(dir)) return;
    DIR *d = opendir(dir);
    struct dirent *e;
    int empty = 1;
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    if (d) closedir(d);
    if (!empty)
        die(EXIT_USAGE, "%s is a non-empty directory without config.json (or adapter_config.json): refusing to replace it with a "
                        "checkpoint (choose another output directory)", dir);
}

void checkpoint_check_apart(const char *dir, const char *path, const char *option) {
    if (!path || !strcmp(path, "-")) return;
    char *d = realpath(dir, NULL);
    if (!d) return;   // not there yet: nothing is inside it
    char *copy = xstrdup(path), *slash = strrchr(copy, '/');
    const char *parent = slash ? (slash == copy ? "/" : (*slash = '\0', copy)) : ".";
    char *p = realpath(parent, NULL);
    int inside = p && path_within(p, d);
    free(p);
    free(copy);
    free(d);
    if (inside)
        die(EXIT_USAGE, "%s %s lies inside %s, which this run replaces whole: it would be lost; keep it elsewhere", option,
            path, dir);
}

// config.json and model.safetensors of m into dir.
static void save_model_files(const char *tmp, const Model *m, const CheckpointParts *parts) {
    // config.json: floats with 9 significant digits (float32 round-trips, 1e-05 stays 1e-05)
    json_t *cfg = config_json(&m->cfg, parts);
    if (parts && parts->tokenizer_path) add_token_ids(cfg, parts);
    char *p = path_join(tmp, "config.json");
    dump_json(cfg, p, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    json_decref(cfg);
    free(p);

    // model.safetensors
    StTensor *t = xmalloc((size_t)checkpoint_tensor_count(&m->cfg) * sizeof(StTensor));
    int n = checkpoint_model_tensors(m, t);
    p = path_join(tmp, "model.safetensors");
    const char *fk[1] = {"format"}, *fv[1] = {"pt"};   // transformers checks format == "pt"
    safetensors_write(p, t, n, fk, fv, 1);
    free(p);
    tensors_free_names(t, n);
    free(t);
}

void checkpoint_save(const char *dir, const Model *m, const CheckpointParts *parts) {
    // strip trailing slashes: "ck/" and "ck" name the same directory
    char *final = xstrdup(dir);
    for (size_t n = strlen(final); n > 1 && final[n - 1] == '/'; n--) final[n - 1] = '\0';
    checkpoint_check_target(final);

    size_t tn = strlen(final) + 32;
    char *tmp = xmalloc(tn), *old = xmalloc(tn);
    snprintf(tmp, tn, "%s.tmp.%d", final, (int)getpid());
    snprintf(old, tn, "%s.old.%d", final, (int)getpid());
    if (path_exists(tmp)) rm_tree(tmp);
    if (mkdir(tmp, 0755) != 0) die(EXIT_RUNTIME, "cannot create %s: %s", tmp, strerror(errno));
    if (!pending_hook) { atexit(pending_cleanup); pending_hook = 1; }
    pending_tmp = xstrdup(tmp);
    zout_signal_dir(tmp);   // and on SIGINT/SIGTERM/SIGHUP

    if (m->lora) lora_save_files(tmp, m->lora);   // a PEFT adapter: the base is not written again
    else save_model_files(tmp, m, parts);
    char *p;
    if (parts) {
        if (parts->tokenizer_path) save_tokenizer(tmp, parts->tokenizer_path);
        if (parts->opt) {
            if (parts->opt->n != model_trainable(m).n)
                warn("saving optimizer state of %zu values with a model of %zu trainable parameters", parts->opt->n,
                     model_trainable(m).n);
            p = path_join(tmp, "optimizer.safetensors");
            save_optimizer(p, parts->opt);
            free(p);
        }
        if (parts->trainer_state) {
            p = path_join(tmp, "trainer_state.json");
            dump_json(parts->trainer_state, p, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
            free(p);
        }
        for (int g = 0; g < parts->n_groups; g++) {
            const TensorGroup *gr = &parts->groups[g];
            char file[PATH_MAX];
            snprintf(file, sizeof file, "%s.safetensors", gr->name);
            if (!strcmp(file, "model.safetensors") || !strcmp(file, "optimizer.safetensors") || strchr(gr->name, '/'))
                die(EXIT_USAGE, "tensor group name \"%s\" is reserved or not a plain file name", gr->name);
            p = path_join(tmp, file);
            safetensors_write(p, gr->t, gr->n, NULL, NULL, 0);
            free(p);
        }
    }

    // swap into place: old away, new in, old removed
    int had_old = path_is_dir(final);
    if (had_old && rename(final, old) != 0) die(EXIT_RUNTIME, "cannot move %s aside to %s: %s", final, old, strerror(errno));
    if (rename(tmp, final) != 0) {
        int e = errno;
        if (had_old) rename(old, final);   // put the previous checkpoint back
        die(EXIT_RUNTIME, "cannot rename %s to %s: %s", tmp, final, strerror(e));
    }
    zout_signal_dir(NULL);
    free(pending_tmp);
    pending_tmp = NULL;
    if (had_old && rm_tree(old) != 0) warn("could not remove the previous checkpoint %s: %s", old, strerror(errno));
    free(tmp);
    free(old);
    free(final);
}

// ----------------------------------------------------------------------------
// loading

int checkpoint_is_dir(const char *path) {
    if (!path_is_dir(path)) return 0;
    char *p = path_join(path, "config.json");
    int ok = path_exists(p);
    free(p);
    return ok;
}

static json_t *load_json(const char *path) {
    json_error_t err;
    json_t *j = json_load_file_lenient(path, &err);
    if (!j) die(EXIT_BADINPUT, "%s: %s (line %d, column %d)", path, err.text, err.line, err.column);
    return j;
}

static long cfg_int(json_t *j, const char *path, const char *key, int required, long dflt) {
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) {
        if (required) die(EXIT_BADINPUT, "%s: missing \"%s\"", path, key);
        return dflt;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT_MAX)
        die(EXIT_BADINPUT, "%s: \"%s\" must be a non-negative integer", path, key);
    return (long)json_integer_value(v);
}

static double cfg_num(json_t *j, const char *path, const char *key, double dflt) {
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) return dflt;
    if (!json_is_number(v)) die(EXIT_BADINPUT, "%s: \"%s\" must be a number", path, key);
    return json_number_value(v);
}

static int cfg_bool(json_t *j, const char *path, const char *key, int dflt) {
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) return dflt;
    if (!json_is_boolean(v)) die(EXIT_BADINPUT, "%s: \"%s\" must be true or false", path, key);
    return json_is_true(v);
}

ModelConfig checkpoint_read_config(const char *dir) {
    char *path = path_join(dir, "config.json");
    json_t *j = load_json(path);
    if (!json_is_object(j)) die(EXIT_BADINPUT, "%s: not a JSON object", path);
    const char *type = json_string_value(json_object_get(j, "model_type"));
    int qwen = type && !strcmp(type, "qwen2");
    if (type && !qwen && strcmp(type, "llama") != 0)
        die(EXIT_BADINPUT, "%s: model_type \"%s\" is not supported (llama and qwen2 are)", path, type);
    ModelConfig c = {0};
    c.dim = (int)cfg_int(j, path, "hidden_size", 1, 0);
    c.hidden_dim = (int)cfg_int(j, path, "intermediate_size", 1, 0);
    c.n_layers = (int)cfg_int(j, path, "num_hidden_layers", 1, 0);
    c.n_heads = (int)cfg_int(j, path, "num_attention_heads", 1, 0);
    c.n_kv_heads = (int)cfg_int(j, path, "num_key_value_heads", 0, c.n_heads);
    c.vocab_size = (int)cfg_int(j, path, "vocab_size", 1, 0);
    c.max_seq_len = (int)cfg_int(j, path, "max_position_embeddings", 0, 2048);
    c.rope_theta = (float)cfg_num(j, path, "rope_theta", 10000.0);
    c.norm_eps = (float)cfg_num(j, path, "rms_norm_eps", 1e-6);   // LlamaConfig's default
    c.tied = cfg_bool(j, path, "tie_word_embeddings", 0);         // Llama/Qwen2 default: untied
    c.qkv_bias = qwen ? 1 : cfg_bool(j, path, "attention_bias", 0);
    if (!qwen && c.qkv_bias)
        die(EXIT_BADINPUT, "%s: attention_bias true (biases on q/k/v and o) is not supported; only Qwen2-style q/k/v biases are", path);
    if (cfg_bool(j, path, "mlp_bias", 0)) die(EXIT_BADINPUT, "%s: mlp_bias true is not supported", path);
    const char *act = json_string_value(json_object_get(j, "hidden_act"));
    if (act && strcmp(act, "silu") != 0) die(EXIT_BADINPUT, "%s: hidden_act \"%s\" is not supported (silu is)", path, act);
    // rope_scaling: null or {"rope_type": "default"} is plain RoPE; every scaled variant would
    // silently change the positions' angles, so it is refused by name
    json_t *rs = json_object_get(j, "rope_scaling");
    if (rs && !json_is_null(rs)) {
        const char *rt = json_string_value(json_object_get(rs, "rope_type"));
        if (!rt) rt = json_string_value(json_object_get(rs, "type"));
        if (!rt || strcmp(rt, "default") != 0)
            die(EXIT_BADINPUT, "%s: rope_scaling type \"%s\" is not implemented (only plain RoPE with rope_theta)\n"
                "  hint: Llama 3.1+ (\"llama3\"), linear, dynamic and YaRN scaling change the position angles; "
                "use a model without rope_scaling", path, rt ? rt : "?");
    }
    const char *arch = json_string_value(json_array_get(json_object_get(j, "architectures"), 0));
    if (arch && !strstr(arch, "ForCausalLM") && !strstr(arch, "ForSequenceClassification"))
        warn("%s: architectures[0] is \"%s\"; loading the Llama/Qwen2 backbone of it", path, arch);
    if (c.n_heads > 0) {
        long hd = cfg_int(j, path, "head_dim", 0, c.dim / c.n_heads);
        if (hd != c.dim / c.n_heads)
            die(EXIT_BADINPUT, "%s: head_dim %ld differs from hidden_size / num_attention_heads = %d; not supported", path, hd, c.dim / c.n_heads);
    }
    if (qwen && cfg_bool(j, path, "use_sliding_window", 0))
        die(EXIT_BADINPUT, "%s: use_sliding_window true is not supported", path);
    char why[200];
    if (model_config_check(&c, why, sizeof why)) die(EXIT_BADINPUT, "%s: %s", path, why);
    json_decref(j);
    free(path);
    return c;
}

// The safetensors files of a model: model.safetensors, or the shards of an index.
typedef struct {
    int n;
    SafeTensors **f;
} StSet;

static StSet stset_open(const char *dir) {
    StSet s = {0};
    char *single = path_join(dir, "model.safetensors"), *index = path_join(dir, "model.safetensors.index.json");
    if (path_exists(single)) {
        s.f = xmalloc(sizeof(SafeTensors *));
        s.f[s.n++] = safetensors_open(single);
    } else if (path_exists(index)) {
        json_t *j = load_json(index);
        json_t *map = json_object_get(j, "weight_map");
        if (!json_is_object(map)) die(EXIT_BADINPUT, "%s: no \"weight_map\" object", index);
        s.f = xmalloc((json_object_size(map) + 1) * sizeof(SafeTensors *));
        const char *key;
        json_t *val;
        json_object_foreach(map, key, val) {
            const char *file = json_string_value(val);
            if (!file || strchr(file, '/')) die(EXIT_BADINPUT, "%s: weight_map[\"%s\"] is not a file name", index, key);
            char *p = path_join(dir, file);
            int seen = 0;
            for (int i = 0; i < s.n && !seen; i++) seen = !strcmp(s.f[i]->path, p);
            if (!seen) s.f[s.n++] = safetensors_open(p);
            free(p);
        }
        json_decref(j);
    } else {
        die(EXIT_BADINPUT, "%s: no model.safetensors (or model.safetensors.index.json)", dir);
    }
    free(single);
    free(index);
    return s;
}

static const SafeTensors *stset_find(const StSet *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (safetensors_find(s->f[i], name)) return s->f[i];
    return NULL;
}

static void stset_close(StSet *s) {
    for (int i = 0; i < s->n; i++) safetensors_close(s->f[i]);
    free(s->f);
}

// The model of `dir`. backbone: the checkpoint need not have an LM head (a reward model's
// *ForSequenceClassification); the Model is then built tied (lm_head = the embeddings).
// A missing lm_head.weight is also accepted, with a warning, when config.json names a
// *ForSequenceClassification architecture (a critic initialised from a reward model).
static Model *load_model(const char *dir, int backbone) {
    ModelConfig c = checkpoint_read_config(dir);
    StSet s = stset_open(dir);
    if (stset_find(&s, "model.layers.0.self_attn.o_proj.bias"))
        die(EXIT_BADINPUT, "%s: the model has an o_proj bias, which is not supported", dir);
    if (!c.tied && !stset_find(&s, "lm_head.weight")) {
        char *cp = path_join(dir, "config.json");
        json_t *j = load_json(cp);
        const char *arch = json_string_value(json_array_get(json_object_get(j, "architectures"), 0));
        int seqcls = arch && strstr(arch, "ForSequenceClassification");
        if (seqcls && !backbone)
            warn("%s is a %s without an LM head: using the token embeddings as the head", dir, arch);
        if (seqcls || backbone) c.tied = 1;
        json_decref(j);
        free(cp);
    }
    Model *m = model_create(&c);
    StTensor *t = xmalloc((size_t)checkpoint_tensor_count(&c) * sizeof(StTensor));
    int n = checkpoint_model_tensors(m, t);
    for (int i = 0; i < n; i++) {
        const SafeTensors *f = stset_find(&s, t[i].name);
        if (!f) {
            const char *hint = strcmp(t[i].name, "lm_head.weight") ? "" : " (config.json says tie_word_embeddings is false)";
            die(EXIT_BADINPUT, "%s: tensor \"%s\" is missing%s", s.n == 1 ? s.f[0]->path : dir, t[i].name, hint);
        }
        safetensors_read_f32(f, t[i].name, (float *)t[i].data, t[i].ndim, t[i].shape, 0);
    }
    tensors_free_names(t, n);
    free(t);
    stset_close(&s);
    return m;
}

Model *checkpoint_load_model(const char *dir) { return load_model(dir, 0); }
Model *checkpoint_load_backbone(const char *dir) { return load_model(dir, 1); }

int checkpoint_read_tensor(const char *dir, const char *name, float *dst, int ndim, const int64_t *shape) {
    StSet s = stset_open(dir);
    const SafeTensors *f = stset_find(&s, name);
    if (f) safetensors_read_f32(f, name, dst, ndim, shape, 0);
    stset_close(&s);
    return f != NULL;
}

int checkpoint_tensor_shape(const char *dir, const char *name, int64_t *shape) {
    StSet s = stset_open(dir);
    const SafeTensors *f = stset_find(&s, name);
    int nd = -1;
    if (f) {
        const StEntry *e = safetensors_find(f, name);
        nd = e->ndim;
        for (int i = 0; i < nd; i++) shape[i] = e->shape[i];
    }
    stset_close(&s);
    return nd;
}

int checkpoint_load_optimizer(const char *dir, AdamW *opt) {
    char *p = path_join(dir, "optimizer.safetensors");
    if (!path_exists(p)) { free(p); return 0; }
    SafeTensors *st = safetensors_open(p);
    int64_t shape[1] = {(int64_t)opt->n};
    safetensors_read_f32(st, "exp_avg", opt->m, 1, shape, 0);
    safetensors_read_f32(st, "exp_avg_sq", opt->v, 1, shape, 0);
    const char *step = safetensors_meta(st, "step");
    char *end = NULL;
    long v = step ? strtol(step, &end, 10) : -1;
    if (!step || *end || v < 0) die(EXIT_BADINPUT, "%s: __metadata__ \"step\" is missing or not a count", p);
    opt->step = v;
    safetensors_close(st);
    free(p);
    return 1;
}

int checkpoint_was_trained(const char *dir) {
    char *p = path_join(dir, "trainer_state.json");
    int yes = path_exists(p);
    free(p);
    return yes;
}

json_t *checkpoint_load_trainer_state(const char *dir) {
    char *p = path_join(dir, "trainer_state.json");
    json_t *j = path_exists(p) ? load_json(p) : NULL;
    free(p);
    return j;
}

int checkpoint_load_group(const char *dir, const char *name, const StTensor *t, int n) {
    char file[PATH_MAX];
    snprintf(file, sizeof file, "%s.safetensors", name);
    char *p = path_join(dir, file);
    if (!path_exists(p)) { free(p); return 0; }
    SafeTensors *st = safetensors_open(p);
    for (int i = 0; i < n; i++) safetensors_read_f32(st, t[i].name, (float *)t[i].data, t[i].ndim, t[i].shape, 0);
    safetensors_close(st);
    free(p);
    return 1;
}

// ----------------------------------------------------------------------------
// model_load and the tokenizer beside a model

Model *model_load(const char *path) {
    if (lora_is_adapter_dir(path)) {   // a PEFT adapter: its base with it merged
        Model *m = lora_load_model(path);
        lora_detach(m);
        return m;
    }
    if (path_is_dir(path)) {
        if (!checkpoint_is_dir(path)) die(EXIT_BADINPUT, "%s: a directory without config.json is not a checkpoint", path);
        return checkpoint_load_model(path);
    }
    FILE *f = fopen(path, "rb");
    if (!f) die(EXIT_BADINPUT, "cannot open model %s: %s", path, strerror(errno));
    char magic[4] = {0};
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    if (got == 4 && !memcmp(magic, "GGUF", 4)) {
        Gguf *g = gguf_open(path);
        Model *m = gguf_load_model(g);
        gguf_close(g);
        return m;
    }
    return llama2c_load(path);
}

// Tokens in a llama2.c tokenizer.bin when its framing runs exactly to the end, else -1.
static long count_tokens(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    long n = 0;
    int32_t mtl, hdr[2];
    if (fread(&mtl, 4, 1, f) != 1) { fclose(f); return -1; }
    while (fread(hdr, 4, 2, f) == 2) {
        if (hdr[1] < 0 || fseek(f, hdr[1], SEEK_CUR) != 0) { n = -1; break; }
        n++;
    }
    if (n >= 0) {   // fseek past the end succeeds: make sure we ended exactly at EOF
        long pos = ftell(f);
        fseek(f, 0, SEEK_END);
        if (ftell(f) != pos) n = -1;
    }
    fclose(f);
    return n;
}

char *model_tokenizer_find(const char *model_path) {
    if (path_is_dir(model_path)) {
        static const char *const names[3] = {"tokenizer.json", "tokenizer.bin", "tokenizer.gguf"};
        for (int i = 0; i < 3; i++) {
            char *p = path_join(model_path, names[i]);
            if (path_exists(p)) return p;
            free(p);
        }
        if (!lora_is_adapter_dir(model_path)) return NULL;
        char *base = lora_base_path(model_path), *tok = model_tokenizer_find(base);   // an adapter: its base's
        free(base);
        return tok;
    }
    if (gguf_is_gguf_file(model_path)) return xstrdup(model_path);   // the tokenizer is in its metadata
    // vocabulary size from the llama2.c header
    FILE *f = fopen(model_path, "rb");
    int32_t h[7];
    if (!f || fread(h, 4, 7, f) != 7) die(EXIT_BADINPUT, "cannot read the header of %s", model_path);
    fclose(f);
    long vocab = labs((long)h[5]);
    // the folder of the model file
    char *dir = xstrdup(model_path);
    char *slash = strrchr(dir, '/');
    if (slash) slash[slash == dir ? 1 : 0] = '\0';
    else strcpy(dir, ".");
    DIR *d = opendir(dir);
    if (!d) die(EXIT_BADINPUT, "cannot list %s: %s", dir, strerror(errno));
    char *found = NULL;
    int matches = 0;
    const char *base = strrchr(model_path, '/') ? strrchr(model_path, '/') + 1 : model_path;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (fnmatch("tok*.bin", e->d_name, 0) != 0 || !strcmp(e->d_name, base)) continue;
        char *p = path_join(dir, e->d_name);
        if (count_tokens(p) == vocab) {
            matches++;
            if (!found || strcmp(p, found) < 0) { free(found); found = p; }   // deterministic pick
            else free(p);
        } else {
            free(p);
        }
    }
    closedir(d);
    if (!found)
        die(EXIT_BADINPUT, "no tok*.bin with %ld tokens beside %s\n  hint: pass --tokenizer FILE (a llama2.c tokenizer.bin)", vocab, model_path);
    if (matches > 1)
        die(EXIT_BADINPUT, "%d tokenizers with %ld tokens beside %s\n  hint: pass --tokenizer FILE to choose one", matches, vocab, model_path);
    free(dir);
    return found;
}

char *model_tokenizer_path(const char *model_path) {
    char *p = model_tokenizer_find(model_path);
    if (!p)
        die(EXIT_BADINPUT, "%s has no tokenizer.json, tokenizer.bin or tokenizer.gguf\n"
            "  hint: pass --tokenizer FILE (tokenizer.json, a llama2.c tokenizer.bin or a .gguf)", model_path);
    return p;
}
