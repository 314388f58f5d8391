// checkpoint.h — checkpoints as directories in the Hugging Face layout, and model loading.
//
//   DIR/config.json              LlamaForCausalLM (or Qwen2ForCausalLM when q/k/v have biases)
//   DIR/model.safetensors        F32, HF tensor names (model.layers.N.self_attn.q_proj.weight...)
//   DIR/tokenizer.json           the source's HF tokenizer, copied with tokenizer_config.json,
//                                special_tokens_map.json, generation_config.json (when present)
//   DIR/tokenizer.bin            or: copy of the llama2.c tokenizer
//                                or: a GGUF model's tokenizer written as tokenizer.json and
//                                tokenizer_config.json (tokenizer_gguf_export)
//   DIR/tokenizer.gguf           or: a GGUF model's tokenizer.* metadata (no tensors), when it
//                                is not a tokenizer tokenizer_gguf_export supports
//   DIR/optimizer.safetensors    optional: AdamW exp_avg, exp_avg_sq (flat, n_params); step and
//                                hyper-parameters in __metadata__
//   DIR/trainer_state.json       optional: the caller's JSON object (step, RNG seed/counter, ...)
//   DIR/<group>.safetensors      optional named tensor groups, e.g. value_head.safetensors
//
// A model with an adapter (m->lora, lora.h) is saved as a PEFT adapter directory instead:
// adapter_config.json and adapter_model.safetensors in place of config.json and
// model.safetensors (the base is not written again), with the same optional files.
//
// Saving writes everything into "DIR.tmp.<pid>" and renames it to DIR at the end; an existing
// DIR is renamed away first and removed after the new one is in place, so a killed process
// never leaves a half-written checkpoint under the final name.
//
// model_load() takes a llama2.c .bin file, a GGUF file (gguf.h) or a checkpoint directory (also
// HF model directories: config.json of LlamaForCausalLM / Qwen2ForCausalLM (or their
// *ForSequenceClassification), F32/F16/BF16 safetensors, memory-mapped, single or sharded
// with model.safetensors.index.json), or a PEFT adapter directory (adapter_config.json: its
// base model loaded and the adapter merged into plain weights, lora.h).
// Every loading error exits with status 2 and names the file (and tensor).
#ifndef SAFE_CHECKPOINT_H
#define SAFE_CHECKPOINT_H

#include <jansson.h>

#include "adamw.h"        // AdamW: optimizer state to save/restore
#include "model.h"        // Model, ModelConfig
#include "safetensors.h"  // StTensor: named float32 tensors

// A named group of tensors saved as DIR/<name>.safetensors (e.g. the critic's value head).
typedef struct {
    const char *name;       // file stem: "value_head" -> value_head.safetensors
    const StTensor *t;      // (n) tensors; names are the caller's ("value_head.ln.weight", ...)
    int n;
} TensorGroup;

typedef struct {
    const char *tokenizer_path;  // tokenizer.json / tokenizer.bin / .gguf (see above); NULL: none
    int bos_id, eos_id;          // written to config.json; < 0: taken from the tokenizer's
                                 // source (its config.json or GGUF metadata) when it has them
    const AdamW *opt;            // optimizer.safetensors; NULL: none
    json_t *trainer_state;       // trainer_state.json (borrowed; any JSON object); NULL: none
    const TensorGroup *groups;   // (n_groups) extra tensor files
    int n_groups;
} CheckpointParts;

// Save m (and the parts) as checkpoint directory `dir`. parts may be NULL. Dies (exit 3) on
// I/O errors; a leftover temporary directory is removed on the way out.
void checkpoint_save(const char *dir, const Model *m, const CheckpointParts *parts);
// Die (exit 1) unless `dir` is absent, empty, or a checkpoint (has config.json): saving
// replaces the directory whole. Tools call it at start-up, before any work.
void checkpoint_check_target(const char *dir);

// Die (exit 1) when the file path (an input or output of the same run; "-" and NULL pass)
// lies inside the checkpoint directory dir that the run replaces whole: it would be lost.
void checkpoint_check_apart(const char *dir, const char *path, const char *option);

// 1 when path is a directory with a config.json.
int checkpoint_is_dir(const char *path);
// Read DIR/config.json into a ModelConfig (HF Llama/Qwen2 keys). Dies (exit 2) naming the
// file and key on missing or unsupported settings.
ModelConfig checkpoint_read_config(const char *dir);
Model *checkpoint_load_model(const char *dir);
// The backbone of a checkpoint that may lack an LM head (a *ForSequenceClassification reward
// model): built tied, so m->w.lm_head aliases the embeddings.
Model *checkpoint_load_backbone(const char *dir);
// Read one more tensor of the model's safetensors (single or sharded) into dst as float32,
// checking the shape: 1 = read, 0 = no such tensor. checkpoint_tensor_shape: its ndim and
// shape (ST_MAX_DIMS entries), -1 when absent.
int checkpoint_read_tensor(const char *dir, const char *name, float *dst, int ndim, const int64_t *shape);
int checkpoint_tensor_shape(const char *dir, const char *name, int64_t *shape);
// Restore optimizer moments and step into opt (opt->n must match). 1 = loaded, 0 = no file.
int checkpoint_load_optimizer(const char *dir, AdamW *opt);
// trainer_state.json as a new reference (caller json_decref's), or NULL when absent.
json_t *checkpoint_load_trainer_state(const char *dir);
// 1 when dir holds a trainer_state.json (a checkpoint written by a training step), else 0.
int checkpoint_was_trained(const char *dir);
// Fill the caller's tensors (names, shapes and buffers given in t) from DIR/<name>.safetensors;
// shapes must match. 1 = loaded, 0 = no such file.
int checkpoint_load_group(const char *dir, const char *name, const StTensor *t, int n);

// The model's tensors under their HF names, pointing into m->params (biases only with
// qkv_bias, lm_head only when untied). Returns the count; out needs checkpoint_tensor_count.
int checkpoint_tensor_count(const ModelConfig *cfg);
int checkpoint_model_tensors(const Model *m, StTensor *out);

// A llama2.c .bin file, a .gguf file or a checkpoint directory.
Model *model_load(const char *path);
// The tokenizer that goes with a model: for a directory DIR/tokenizer.json, else
// DIR/tokenizer.bin, else DIR/tokenizer.gguf; for a GGUF file the file itself (its metadata
// holds the tokenizer); for a llama2.c .bin file the tok*.bin beside it whose token count
// matches the model; for a PEFT adapter directory without one, its base's. malloc'd path;
// dies (exit 2) with a hint to pass --tokenizer when there is none or several.
char *model_tokenizer_path(const char *model_path);
// The same, but NULL for a directory that has none (a file without one still dies).
char *model_tokenizer_find(const char *model_path);

#endif
