// llama2c.h — read a legacy llama2.c checkpoint (`model.bin`, as exported by llama2.c's
// export.py --version 0 / the original tinyllamas files) into a Model.
//
// File: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a
// negative vocab_size means the classifier is not tied), then fp32 tensors in the order of
// llama2.c run.c memory_map_weights: tok_emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3,
// rms_final, two legacy RoPE tables (seq_len * head_size/2 each, skipped), [wcls if untied].
//
// llama2.c rotates interleaved pairs (2i, 2i+1) of each head; our model rotates halves
// (i, i + hs/2) like Hugging Face. The loader permutes the rows of wq and wk within every
// head (old row 2i -> new row i, old row 2i+1 -> new row i + hs/2) so the two compute the
// same function; rope_theta 10000, norm_eps 1e-5.
#ifndef SAFE_LLAMA2C_H
#define SAFE_LLAMA2C_H

#include "model.h"

// 1 when the file starts like a llama2.c legacy checkpoint (plausible header), else 0.
int llama2c_probe(const char *path);
// Load; dies with exit 2 naming the file on any mismatch (size, header, version).
Model *llama2c_load(const char *path);
// Row permutation of one head of wq/wk: perm[new_row] = old_row (hs entries). Exposed for tests.
void llama2c_rope_perm(int hs, int *perm);

#endif
