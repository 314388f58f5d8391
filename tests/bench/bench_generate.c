// bench_generate.c — end-to-end sampling throughput of generate() (prefill, sampling, log-prob
// and entropy of every token, continuous batching, KV-cached decode) at batch 1, 8 and 64, on
// stories260K and on a random 15M-parameter Llama (vocab 32000: sampling is not free there).
// Baseline in the same run: the bare model (model_prefill, then model_decode steps with
// random tokens) on the same shapes, so the ratio is what everything around the model costs.
//
//   build/bench/bench_generate [--quick]      threads: OMP_NUM_THREADS (default: all cores)
//
// Output: "generate <model> batch=<B> <tokens/s> tok/s (<ratio>x the bare model ...)", one per line.
#include "common.h"     // now_seconds, safe_data_dir, xmalloc
#include "generate.h"   // the loop under test
#include "llama2c.h"    // stories260K

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { PROMPT = 16 };

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static int rand_tok(int V) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (int)(rng % (uint64_t)(V - 3)) + 3;
}

// the bare model on the same work: prefill n rows of PROMPT tokens, then `steps` decode
// steps; generated tokens/s (prefill time included, as generate() pays it too)
static double bench_model(Model *m, int n, int steps) {
    int V = m->cfg.vocab_size;
    KVCache *kv = kvcache_create(&m->cfg, n, PROMPT + steps);
    int *rows = xmalloc(n * sizeof(int)), *lens = xmalloc(n * sizeof(int));
    int32_t *ptok = xmalloc((size_t)n * PROMPT * 4), *tok = xmalloc((size_t)n * 4);
    const int32_t **pr = xmalloc(n * sizeof(*pr));
    float *logits = xmalloc((size_t)n * V * sizeof(float));
    for (int i = 0; i < n; i++) {
        rows[i] = i;
        lens[i] = PROMPT;
        pr[i] = ptok + (size_t)i * PROMPT;
        for (int t = 0; t < PROMPT; t++) ptok[(size_t)i * PROMPT + t] = rand_tok(V);
    }
    double t0 = now_seconds();
    model_prefill(m, kv, n, rows, pr, lens, logits);
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < n; i++) tok[i] = rand_tok(V);
        model_decode(m, kv, n, rows, tok, logits);
    }
    double dt = now_seconds() - t0;
    kvcache_free(kv);
    free(rows); free(lens); free(ptok); free(tok); free(pr); free(logits);
    return (double)n * steps / dt;
}

// generate() tokens/s: 2*batch requests (so freed rows are refilled), no EOS (every row runs
// to max_new), temperature 1 without truncation (the RL setting)
static double bench_generate(Model *m, int batch, int max_new) {
    int V = m->cfg.vocab_size, n = 2 * batch;
    GenRequest *req = xmalloc((size_t)n * sizeof(GenRequest));
    int32_t *ptok = xmalloc((size_t)n * PROMPT * 4);
    char (*ids)[16] = xmalloc((size_t)n * 16);
    for (int i = 0; i < n; i++) {
        for (int t = 0; t < PROMPT; t++) ptok[(size_t)i * PROMPT + t] = rand_tok(V);
        snprintf(ids[i], 16, "b-%d", i);
        req[i] = (GenRequest){.id = ids[i], .sample_index = 0, .tokens = ptok + (size_t)i * PROMPT, .n_tokens = PROMPT};
    }
    GenConfig gc = {.sampler = sampler_defaults(), .max_new_tokens = max_new, .batch = batch, .eos_id = -1,
                    .seed = 1, .quiet = 1};
    GenResult *res = xcalloc((size_t)n, sizeof(GenResult));
    double t0 = now_seconds();
    generate(m, &gc, req, n, res, NULL, NULL);
    double dt = now_seconds() - t0;
    long tokens = 0;
    for (int i = 0; i < n; i++) { tokens += res[i].n; gen_result_free(&res[i]); }
    free(res); free(req); free(ptok); free(ids);
    return tokens / dt;
}

static void run(const char *name, Model *m, int max_new) {
    int batches[3] = {1, 8, 64};
    for (int i = 0; i < 3; i++) {
        int b = batches[i];
        int new_tokens = b == 1 ? 4 * max_new : max_new;
        double g = bench_generate(m, b, new_tokens);
        double d = bench_model(m, b, new_tokens);
        printf("generate %s batch=%d %.0f tok/s (%.2fx the bare model at %.0f tok/s)\n", name, b, g, g / d, d);
        fflush(stdout);
    }
}

int main(int argc, char **argv) {
    int quick = argc > 1 && !strcmp(argv[1], "--quick");
    safe_progname = "bench_generate";
    fprintf(stderr, "bench_generate: %d threads\n", omp_get_max_threads());
    char path[1024];
    snprintf(path, sizeof path, "%s/stories260K/stories260K.bin", safe_data_dir());
    Model *m = llama2c_load(path);
    run("stories260K", m, quick ? 32 : 128);
    model_free(m);
    ModelConfig cfg = {.dim = 288, .hidden_dim = 768, .n_layers = 6, .n_heads = 6, .n_kv_heads = 6,
                       .vocab_size = 32000, .max_seq_len = 256, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
                       .qkv_bias = 0, .tied = 1};
    m = model_create(&cfg);
    model_init_random(m, 1, 0.02f);
    run("llama15M", m, quick ? 8 : 32);
    model_free(m);
    return 0;
}
