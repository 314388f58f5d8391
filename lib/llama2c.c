// llama2c.c — legacy llama2.c .bin checkpoints -> Model (with the RoPE row permutation).
#include "llama2c.h"

#include "common.h"   // die, xmalloc, EXIT_BADINPUT

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define LLAMA2C_MAGIC 0x616b3432   // "ak42": llama2.c export versions 1 and 2 (not legacy)

static int read_header(FILE *f, int32_t h[7]) {
    return fread(h, sizeof(int32_t), 7, f) == 7;
}

static int header_plausible(const int32_t h[7]) {
    for (int i = 0; i < 7; i++)
        if (i != 5 && h[i] <= 0) return 0;
    return h[5] != 0 && h[0] <= (1 << 16) && h[2] <= 4096 && h[3] <= h[0] && h[4] <= h[3];
}

int llama2c_probe(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    int32_t h[7];
    int ok = read_header(f, h) && header_plausible(h);
    fclose(f);
    return ok;
}

void llama2c_rope_perm(int hs, int *perm) {
    // pair i of llama2.c is (2i, 2i+1); of rotate_half it is (i, i + hs/2)
    for (int i = 0; i < hs / 2; i++) {
        perm[i] = 2 * i;
        perm[i + hs / 2] = 2 * i + 1;
    }
}

// rows (n_heads * hs, C) of one layer: permute the rows within each head
static void permute_heads(float *w, int n_heads, int hs, int C, const int *perm, float *tmp) {
    for (int h = 0; h < n_heads; h++) {
        float *head = w + (size_t)h * hs * C;
        memcpy(tmp, head, (size_t)hs * C * sizeof(float));
        for (int r = 0; r < hs; r++) memcpy(head + (size_t)r * C, tmp + (size_t)perm[r] * C, (size_t)C * sizeof(float));
    }
}

static void read_floats(FILE *f, const char *path, float *dst, size_t n, const char *what) {
    if (fread(dst, sizeof(float), n, f) != n)
        die(EXIT_BADINPUT, "%s: truncated while reading %s (%zu floats)", path, what, n);
}

Model *llama2c_load(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die(EXIT_BADINPUT, "cannot open model %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) die(EXIT_BADINPUT, "cannot stat %s: %s", path, strerror(errno));
    int32_t h[7];
    if (!read_header(f, h)) die(EXIT_BADINPUT, "%s: too short for a llama2.c checkpoint header (%lld bytes)", path, (long long)st.st_size);
    if ((uint32_t)h[0] == LLAMA2C_MAGIC)
        die(EXIT_BADINPUT, "%s: a llama2.c export of version %d (magic \"ak42\"); only the legacy format (version 0) is read\n"
            "  hint: re-export with llama2.c export.py --version 0, or convert it to a checkpoint directory", path, h[1]);
    if (!header_plausible(h))
        die(EXIT_BADINPUT, "%s: header (dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, vocab_size %d, seq_len %d) "
            "is not a llama2.c legacy checkpoint", path, h[0], h[1], h[2], h[3], h[4], h[5], h[6]);

    ModelConfig cfg = {
        .dim = h[0], .hidden_dim = h[1], .n_layers = h[2], .n_heads = h[3], .n_kv_heads = h[4],
        .vocab_size = abs(h[5]), .max_seq_len = h[6], .rope_theta = 10000.0f, .norm_eps = 1e-5f,
        .qkv_bias = 0, .tied = h[5] > 0,
    };
    char why[200];
    if (model_config_check(&cfg, why, sizeof why)) die(EXIT_BADINPUT, "%s: %s", path, why);

    // expected size, in the file's order
    size_t C = cfg.dim, F = cfg.hidden_dim, L = cfg.n_layers, V = cfg.vocab_size;
    size_t hs = C / cfg.n_heads, kvd = (size_t)cfg.n_kv_heads * hs, T = cfg.max_seq_len;
    size_t floats = V * C + L * C + L * C * C + 2 * L * kvd * C + L * C * C + L * C + 3 * L * F * C + C
                    + 2 * T * (hs / 2) + (cfg.tied ? 0 : V * C);
    size_t want = 28 + 4 * floats;
    if ((size_t)st.st_size != want)
        die(EXIT_BADINPUT, "%s: %lld bytes, but its header (dim %zu, hidden %zu, %zu layers, %d heads, %d kv heads, vocab %zu%s, seq_len %zu) "
            "needs %zu\n  hint: the file is truncated or not a llama2.c legacy checkpoint", path, (long long)st.st_size,
            C, F, L, cfg.n_heads, cfg.n_kv_heads, V, cfg.tied ? "" : " untied", T, want);

    Model *m = model_create(&cfg);
    ParamViews *w = &m->w;
    read_floats(f, path, w->tok_emb, V * C, "token embedding");
    read_floats(f, path, w->attn_norm, L * C, "rms_att");
    read_floats(f, path, w->wq, L * C * C, "wq");
    read_floats(f, path, w->wk, L * kvd * C, "wk");
    read_floats(f, path, w->wv, L * kvd * C, "wv");
    read_floats(f, path, w->wo, L * C * C, "wo");
    read_floats(f, path, w->ffn_norm, L * C, "rms_ffn");
    read_floats(f, path, w->w1, L * F * C, "w1");
    read_floats(f, path, w->w2, L * C * F, "w2");
    read_floats(f, path, w->w3, L * F * C, "w3");
    read_floats(f, path, w->final_norm, C, "rms_final");
    if (fseek(f, (long)(2 * T * (hs / 2) * sizeof(float)), SEEK_CUR) != 0)   // legacy RoPE tables
        die(EXIT_BADINPUT, "%s: seek past the RoPE tables failed", path);
    if (!cfg.tied) read_floats(f, path, w->lm_head, V * C, "wcls");
    fclose(f);

    // interleaved-pair RoPE -> rotate_half: permute wq/wk rows within each head
    int *perm = xmalloc(hs * sizeof(int));
    llama2c_rope_perm((int)hs, perm);
    float *tmp = xmalloc(hs * C * sizeof(float));
    for (size_t l = 0; l < L; l++) {
        permute_heads(w->wq + l * C * C, cfg.n_heads, (int)hs, (int)C, perm, tmp);
        permute_heads(w->wk + l * kvd * C, cfg.n_kv_heads, (int)hs, (int)C, perm, tmp);
    }
    free(tmp);
    free(perm);
    return m;
}
