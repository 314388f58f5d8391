// bench_model.c — tokens/s of the CPU engine: forward+backward (with the log-prob/entropy
// loss, as in training) and KV-cached batched decoding at batch 1, 8, 64, on stories260K and
// on a random 15M-parameter Llama (dim 288, 6 layers, 6 heads, hidden 768, vocab 32000).
//
//   build/bench/bench_model [--quick] [--cpu-time]    threads: OMP_NUM_THREADS (default: all)
//   build/bench/bench_model --lora [--quick]            one training step, full vs LoRA
//
// --cpu-time measures process CPU time instead of wall time: on a machine shared with other
// jobs, with OMP_NUM_THREADS=1, that is the fair clock (time spent descheduled is not ours).
//
// Output: one line per measurement, "model <config> <what> <tokens/s> tok/s", which
// tests/bench/run.sh joins with tests/bench/bench_model_torch.py's lines for ratios. With
// --lora: "lora <config> <variant> <tokens/s> <MB>" for one whole training step (forward,
// loss, backward, AdamW; with an adapter also its merge) of every weight ("full", the
// baseline) and of LoRA adapters, MB being the training state beside the weights (gradients,
// their double sums, AdamW moments; an adapter's kept copy of the base matrices it adapts).
#include "adamw.h"    // adamw_step: the optimiser in a whole training step
#include "common.h"   // now_seconds, safe_data_dir, xmalloc
#include "logprob.h"  // logprob_forward/backward: the training loss around the model
#include "lora.h"     // LoRA adapters: the --lora comparison
#include "matmul.h"   // matmul_isa: which kernel ran
#include "model.h"    // the engine under test

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int use_cpu_time;
static double clock_s(void) {
    if (!use_cpu_time) return now_seconds();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 88172645463325252ull;
static int rand_tok(int V) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (int)(rng % (uint64_t)(V - 1)) + 1;
}

// stories260K from the llama2.c .bin (wq/wk permuted to rotate_half; the layout does not
// matter for speed, the weights are real)
static Model *load_stories(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/stories260K/stories260K.bin", safe_data_dir());
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    int32_t h[7];
    if (fread(h, 4, 7, f) != 7) { fclose(f); return NULL; }
    ModelConfig cfg = {.dim = h[0], .hidden_dim = h[1], .n_layers = h[2], .n_heads = h[3], .n_kv_heads = h[4],
                       .vocab_size = abs(h[5]), .max_seq_len = h[6], .rope_theta = 10000.0f, .norm_eps = 1e-5f,
                       .qkv_bias = 0, .tied = 1};
    Model *m = model_create(&cfg);
    ParamViews *w = &m->w;
    size_t C = cfg.dim, L = cfg.n_layers, F = cfg.hidden_dim, kvd = cfg.n_kv_heads * (C / cfg.n_heads);
    float *dst[11] = {w->tok_emb, w->attn_norm, w->wq, w->wk, w->wv, w->wo, w->ffn_norm, w->w1, w->w2, w->w3, w->final_norm};
    size_t n[11] = {cfg.vocab_size * C, L * C, L * C * C, L * kvd * C, L * kvd * C, L * C * C, L * C, L * F * C, L * C * F, L * F * C, C};
    for (int i = 0; i < 11; i++)
        if (fread(dst[i], 4, n[i], f) != n[i]) { fclose(f); model_free(m); return NULL; }
    fclose(f);
    return m;
}

static Model *random_15m(void) {
    ModelConfig cfg = {.dim = 288, .hidden_dim = 768, .n_layers = 6, .n_heads = 6, .n_kv_heads = 6,
                       .vocab_size = 32000, .max_seq_len = 256, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
                       .qkv_bias = 0, .tied = 1};
    Model *m = model_create(&cfg);
    model_init_random(m, 1, 0.02f);
    return m;
}

// prefill `prompt` tokens for n rows, then `steps` decode steps for all rows; decode tokens/s
static double bench_decode(Model *m, int n, int prompt, int steps) {
    int V = m->cfg.vocab_size;
    KVCache *kv = kvcache_create(&m->cfg, n, prompt + steps);
    int *rows = xmalloc(n * sizeof(int)), *lens = xmalloc(n * sizeof(int));
    int32_t *ptok = xmalloc((size_t)n * prompt * 4), *tok = xmalloc(n * 4);
    const int32_t **pr = xmalloc(n * sizeof(*pr));
    float *logits = xmalloc((size_t)n * V * sizeof(float));
    for (int i = 0; i < n; i++) {
        rows[i] = i;
        lens[i] = prompt;
        pr[i] = ptok + (size_t)i * prompt;
        for (int t = 0; t < prompt; t++) ptok[(size_t)i * prompt + t] = rand_tok(V);
    }
    model_prefill(m, kv, n, rows, pr, lens, logits);
    double t0 = clock_s();
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < n; i++) tok[i] = rand_tok(V);  // stands in for sampling
        model_decode(m, kv, n, rows, tok, logits);
    }
    double dt = clock_s() - t0;
    kvcache_free(kv);
    free(rows); free(lens); free(ptok); free(tok); free(pr); free(logits);
    return (double)n * steps / dt;
}

// forward + per-token log-prob/entropy loss + backward over a (B,T) batch, and with opt an
// AdamW step (and an adapter's merge): a whole training step. Tokens/s of the best iteration.
static double bench_step(Model *m, AdamW *opt, int B, int T, int iters) {
    int V = m->cfg.vocab_size;
    size_t N = (size_t)B * T;
    int32_t *tok = xmalloc(N * 4), *tgt = xmalloc(N * 4);
    uint8_t *mask = xmalloc(N);
    float *logp = xmalloc(N * 4), *ent = xmalloc(N * 4), *dlogp = xmalloc(N * 4), *dent = xmalloc(N * 4);
    float *dlogits = xmalloc(N * V * sizeof(float));
    for (size_t i = 0; i < N; i++) {
        tok[i] = rand_tok(V);
        tgt[i] = rand_tok(V);
        mask[i] = 1;
        dlogp[i] = -1.0f / N;
        dent[i] = -0.01f / N;
    }
    double best = 1e30;
    for (int it = 0; it <= iters; it++) {  // iteration 0 warms up (allocations)
        double t0 = clock_s();
        model_forward(m, tok, mask, B, T, 1);
        logprob_forward(m->logits, N, V, 1.0f, tgt, logp, ent);
        memset(dlogits, 0, N * V * sizeof(float));
        logprob_backward(m->logits, N, V, 1.0f, tgt, dlogp, dent, dlogits);
        model_zero_grad(m);
        model_backward(m, dlogits, NULL);
        if (opt) {
            Trainable tr = model_trainable(m);
            adamw_step(opt, tr.params, tr.grads);
            lora_merge(m);
        }
        double dt = clock_s() - t0;
        if (it > 0 && dt < best) best = dt;
    }
    free(tok); free(tgt); free(mask); free(logp); free(ent); free(dlogp); free(dent); free(dlogits);
    return N / best;
}

// Full fine-tuning, then adapters of rank 8 on q,v and on every projection, of copies of m.
static void run_lora(const char *name, const Model *m, int B, int T, int iters) {
    static const char *const variants[3] = {"full", "lora(r=8,q_proj,v_proj)", "lora(r=8,all)"};
    unsigned targets[3] = {0, 1u << LORA_Q | 1u << LORA_V, (1u << LORA_NTARGETS) - 1};
    for (int k = 0; k < 3; k++) {
        Model *c = model_clone(m);
        double state = 0;   // bytes of training state
        if (targets[k]) {
            LoraConfig lc = {.r = 8, .alpha = 16, .targets = targets[k]};
            Lora *lo = lora_create(&c->cfg, &lc);
            lora_init(lo, 1);
            lora_attach(c, lo);
            for (int t = 0; t < LORA_NTARGETS; t++)
                if (lo->A[t]) state += 4.0 * lo->L * lo->out[t] * lo->in[t];
        }
        Trainable tr = model_trainable(c);
        state += 20.0 * tr.n;   // grads 4, grad_sum 8, AdamW m and v 8
        AdamW *opt = adamw_create(tr.n, adamw_defaults());
        double rate = bench_step(c, opt, B, T, iters);
        printf("lora %s %s %.0f %.1f\n", name, variants[k], rate, state / 1e6);
        fflush(stdout);
        adamw_free(opt);
        model_free(c);
    }
}

static void run(const char *name, Model *m, int B, int T, int iters, int steps_scale) {
    double tr = bench_step(m, NULL, B, T, iters);
    printf("model %s fwd+bwd(B=%d,T=%d) %.0f tok/s\n", name, B, T, tr);
    fflush(stdout);
    int batches[3] = {1, 8, 64};
    double d1 = 0;
    for (int i = 0; i < 3; i++) {
        int n = batches[i];
        int steps = steps_scale;  // the same contexts at every batch size
        double d = bench_decode(m, n, 16, steps);
        if (n == 1) d1 = d;
        printf("model %s decode(batch=%d) %.0f tok/s\n", name, n, d);
        fflush(stdout);
    }
    (void)d1;
}

int main(int argc, char **argv) {
    int quick = 0, lora = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--cpu-time")) use_cpu_time = 1;
        else if (!strcmp(argv[i], "--lora")) lora = 1;
        else die(EXIT_USAGE, "usage: bench_model [--quick] [--cpu-time] [--lora]");
    }
    fprintf(stderr, "bench_model: %d threads, matmul kernel %s, %s time\n", omp_get_max_threads(), matmul_isa(),
            use_cpu_time ? "process CPU" : "wall");
    Model *m = load_stories();
    if (!m) die(EXIT_BADINPUT, "cannot read %s/stories260K/stories260K.bin (set SAFE_DATA)", safe_data_dir());
    if (lora) {
        run_lora("stories260K", m, 8, 256, quick ? 1 : 3);
        model_free(m);
        m = random_15m();
        run_lora("llama15M", m, 4, 256, quick ? 1 : 2);
        model_free(m);
        return 0;
    }
    run("stories260K", m, 8, 256, quick ? 1 : 3, quick ? 16 : 64);
    model_free(m);
    m = random_15m();
    run("llama15M", m, 4, 256, quick ? 1 : 2, quick ? 4 : 16);
    model_free(m);
    return 0;
}
