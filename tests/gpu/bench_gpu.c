// bench_gpu.c — throughput of the CUDA backend: KV-cached decoding (cuda_generate) at several
// batch sizes, and one training step (forward, log-probs at the response tokens, backward,
// gradient norm, AdamW) — the work of safe-rollout and safe-update. One JSON object per line
// on stdout; tests/gpu/run.sh puts them beside PyTorch's (torch_baseline.py) in one table.
//
//   build/gpu/bench_gpu --model stories260K.bin        the model file (llama2.c .bin or a checkpoint)
//   build/gpu/bench_gpu --config qwen0.5b              a random Qwen2-shaped model: dim 896, 24 layers,
//                                                      14 heads, 2 kv heads, hidden 4864, vocab 151936,
//                                                      qkv bias, tied embeddings (494M parameters)
//   options: --batches 1,64,512 --prompt 32 --new 128 --train-batch 16 --train-len 512 --steps 3
//
// Counting (METHOD.md, "two numbers first"):
//   decode bytes per step = bf16 weights read once (layers + LM head) + the KV cache of the
//     running rows (keys and values, bf16, each kv head once) + the fp32 logits written once
//     and read twice (sampler and log-softmax); fraction of 4.3 TB/s.
//   training FLOPs per step = 6 x (layer matmul parameters) x B*T tokens
//     + 6 x V x C x (response tokens: the LM head runs only there)
//     + 7 x 2 x hs x H x (T/2) x L per token (causal attention: QK^T and PV forward, five
//       products backward); MFU against 790 TFLOP/s bf16.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"   // model_load
#include "common.h"       // die, xmalloc, now_seconds
#include "generate.h"     // GenConfig, GenRequest
#include "model.h"        // Model

#ifdef SAFE_CUDA
#include "cuda_backend.h"   // cuda_sync, device name
#include "cuda_model.h"     // CudaModel, cuda_generate

static uint64_t xs = 88172645463325252ull;
static inline uint64_t xorshift(void) {
    xs ^= xs << 13;
    xs ^= xs >> 7;
    xs ^= xs << 17;
    return xs;
}

// A random model fast enough for 0.5B parameters: uniform in [-a, a] (std a/sqrt(3)), norm
// weights 1. Never zeros (zeros run faster than real data: METHOD.md).
static Model *random_model(const ModelConfig *c, float a) {
    Model *m = model_create(c);
    size_t n = m->n_params;
    #pragma omp parallel for schedule(static)
    for (long blk = 0; blk < (long)((n + 65535) / 65536); blk++) {
        uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(blk + 1);
        size_t lo = (size_t)blk * 65536, hi = lo + 65536 < n ? lo + 65536 : n;
        for (size_t i = lo; i < hi; i++) {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            m->params[i] = a * (float)(((s >> 40) * 0x1.0p-24) * 2.0 - 1.0);
        }
    }
    for (size_t i = 0; i < (size_t)c->n_layers * c->dim; i++) m->w.attn_norm[i] = m->w.ffn_norm[i] = 1.0f;
    for (int i = 0; i < c->dim; i++) m->w.final_norm[i] = 1.0f;
    return m;
}

static size_t layer_matmul_params(const ModelConfig *c) {
    size_t C = c->dim, F = c->hidden_dim, hs = C / c->n_heads, qd = c->n_heads * hs, kvd = c->n_kv_heads * hs;
    return (size_t)c->n_layers * (C * (qd + 2 * kvd) + qd * C + 3 * F * C);
}

static void bench_decode(CudaModel *cm, const ModelConfig *c, const char *name, int batch, int P, int new_tokens) {
    int V = c->vocab_size;
    GenRequest *req = xcalloc((size_t)batch, sizeof(GenRequest));
    int32_t *toks = xmalloc((size_t)batch * P * sizeof(int32_t));
    char **ids = xmalloc((size_t)batch * sizeof(char *));
    for (int i = 0; i < batch; i++) {
        ids[i] = xmalloc(16);
        snprintf(ids[i], 16, "b%d", i);
        for (int t = 0; t < P; t++) toks[(size_t)i * P + t] = (int32_t)(xorshift() % (uint64_t)V);
        req[i] = (GenRequest){.id = ids[i], .sample_index = 0, .tokens = toks + (size_t)i * P, .n_tokens = P};
    }
    GenConfig gc = {.sampler = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f}, .max_new_tokens = new_tokens,
                    .batch = batch, .eos_id = -1, .seed = 1, .iteration = 0, .quiet = 1};
    // warm-up: a short run of the same batch (cuBLASLt heuristics for every row count, module load)
    GenConfig warm = gc;
    warm.max_new_tokens = 4;
    cuda_generate(cm, &warm, req, batch, NULL, NULL, NULL);
    cuda_sync("decode warm-up");
    double t0 = now_seconds();
    cuda_generate(cm, &gc, req, batch, NULL, NULL, NULL);
    cuda_sync("decode");
    double dt = now_seconds() - t0;
    double tokens = (double)batch * new_tokens;
    // bytes: weights + KV cache (mean context P + new/2) + logits, per decoding step
    double hs = c->dim / c->n_heads, kvd = c->n_kv_heads * hs;
    double wbytes = 2.0 * (layer_matmul_params(c) + (double)V * c->dim);
    double kvbytes = (double)batch * (P + new_tokens / 2.0) * kvd * 2 * 2 * c->n_layers;
    double lbytes = 3.0 * batch * V * 4;
    double bytes = new_tokens * (wbytes + kvbytes + lbytes);
    printf("{\"bench\":\"decode\",\"impl\":\"safe-cuda\",\"model\":\"%s\",\"batch\":%d,\"prompt\":%d,\"new_tokens\":%d,"
           "\"seconds\":%.4f,\"tokens_per_s\":%.1f,\"ms_per_step\":%.3f,\"bw_frac\":%.4f}\n",
           name, batch, P, new_tokens, dt, tokens / dt, 1000.0 * dt / new_tokens, bytes / dt / 4.3e12);
    fflush(stdout);
    for (int i = 0; i < batch; i++) free(ids[i]);
    free(ids);
    free(toks);
    free(req);
}

static void bench_update(CudaModel *cm, const ModelConfig *c, const char *name, int B, int T, int steps) {
    int V = c->vocab_size, P = T / 4, R = T - P;
    size_t N = (size_t)B * T;
    int32_t *tok = xmalloc(N * sizeof(int32_t)), *rows = xmalloc((size_t)B * R * sizeof(int32_t));
    int32_t *tg = xmalloc((size_t)B * R * sizeof(int32_t));
    for (size_t i = 0; i < N; i++) tok[i] = (int32_t)(xorshift() % (uint64_t)V);
    int n = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < R; t++) {
            rows[n] = (int32_t)((size_t)b * T + P + t - 1);   // the column before each response token
            tg[n] = tok[(size_t)b * T + P + t];
            n++;
        }
    float *lp = xmalloc((size_t)n * sizeof(float)), *ent = xmalloc((size_t)n * sizeof(float));
    float *dl = xmalloc((size_t)n * sizeof(float)), *de = xmalloc((size_t)n * sizeof(float));
    for (int i = 0; i < n; i++) { dl[i] = -1.0f / n; de[i] = -0.01f / n; }
    AdamWConfig ac = {.lr = 1e-6f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};
    AdamW *opt = adamw_create(model_param_count(c), ac);
    double t_step = 0;
    for (int s = -1; s < steps; s++) {   // step -1: warm-up
        cuda_sync("update");
        double t0 = now_seconds();
        cuda_model_forward(cm, tok, NULL, B, T);
        cuda_model_logprob_rows(cm, n, rows, tg, 1.0f, lp, ent);
        cuda_model_zero_grad(cm);
        cuda_model_logprob_rows_backward(cm, dl, de);
        double norm = sqrt(cuda_model_grad_sumsq(cm));
        if (!isfinite(norm)) die(EXIT_RUNTIME, "bench: non-finite gradient norm");
        if (norm > 1.0) cuda_model_scale_grads(cm, (float)(1.0 / (norm + 1e-6)));
        cuda_model_adamw_step(cm, opt);
        cuda_sync("update");
        if (s >= 0) t_step += now_seconds() - t0;
        if (s == -1) cuda_model_report(cm, stderr, "bench_gpu");
    }
    t_step /= steps;
    double hs = c->dim / c->n_heads, qd = c->n_heads * hs;
    double flops = 6.0 * layer_matmul_params(c) * N + 6.0 * V * c->dim * n + 7.0 * 2 * qd * (T / 2.0) * c->n_layers * N;
    printf("{\"bench\":\"update\",\"impl\":\"safe-cuda\",\"model\":\"%s\",\"batch\":%d,\"seq_len\":%d,\"response\":%d,"
           "\"seconds_per_step\":%.4f,\"tokens_per_s\":%.1f,\"tflops\":%.2f,\"mfu\":%.4f}\n",
           name, B, T, R, t_step, N / t_step, flops / t_step / 1e12, flops / t_step / 790e12);
    fflush(stdout);
    adamw_free(opt);
    free(tok); free(rows); free(tg); free(lp); free(ent); free(dl); free(de);
}

int main(int argc, char **argv) {
    safe_progname = "bench_gpu";
    const char *model_path = NULL, *config = NULL, *batches = "1,64,512";
    int P = 32, new_tokens = 128, tb = 16, tl = 512, steps = 3;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) die(EXIT_USAGE, "%s needs a value", a);
        if (!strcmp(a, "--model")) model_path = v;
        else if (!strcmp(a, "--config")) config = v;
        else if (!strcmp(a, "--batches")) batches = v;
        else if (!strcmp(a, "--prompt")) P = atoi(v);
        else if (!strcmp(a, "--new")) new_tokens = atoi(v);
        else if (!strcmp(a, "--train-batch")) tb = atoi(v);
        else if (!strcmp(a, "--train-len")) tl = atoi(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else die(EXIT_USAGE, "unknown option %s (see the file header)", a);
        i++;
    }
    if (!model_path == !config) die(EXIT_USAGE, "give --model PATH or --config qwen0.5b");
    if (cuda_device_count() == 0) die(EXIT_USAGE, "no CUDA GPU visible");
    cuda_init();
    Model *m;
    const char *name;
    if (config) {
        if (strcmp(config, "qwen0.5b")) die(EXIT_USAGE, "--config: only qwen0.5b is known");
        ModelConfig c = {.dim = 896, .hidden_dim = 4864, .n_layers = 24, .n_heads = 14, .n_kv_heads = 2,
                         .vocab_size = 151936, .max_seq_len = 32768, .rope_theta = 1000000.0f, .norm_eps = 1e-6f,
                         .qkv_bias = 1, .tied = 1};
        m = random_model(&c, 0.035f);
        name = "qwen0.5b-random";
    } else {
        m = model_load(model_path);
        name = strrchr(model_path, '/') ? strrchr(model_path, '/') + 1 : model_path;
    }
    fprintf(stderr, "bench_gpu: %s on %s: %zu parameters\n", name, cuda_device_name(), m->n_params);
    if (m->cfg.max_seq_len > 0 && P + new_tokens > m->cfg.max_seq_len) new_tokens = m->cfg.max_seq_len - P;
    if (m->cfg.max_seq_len > 0 && tl > m->cfg.max_seq_len) tl = m->cfg.max_seq_len;
    CudaModel *cm = cuda_model_create(m);
    for (const char *p = batches; *p;) {
        int b = atoi(p);
        if (b > 0) bench_decode(cm, &m->cfg, name, b, P, new_tokens);
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }
    if (steps > 0) bench_update(cm, &m->cfg, name, tb, tl, steps);
    cuda_model_free(cm);
    model_free(m);
    return 0;
}

#else
int main(void) {
    fprintf(stderr, "bench_gpu: this build has no CUDA backend (CUDA=0 or no nvcc)\n");
    return 77;
}
#endif
