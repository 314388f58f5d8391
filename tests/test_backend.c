// test_backend.c — lib/backend.c on the CPU: every call gives the same bits as the call it
// replaced in the tools (so `--device cpu` changed nothing), and device selection follows
// --device / $SAFE_DEVICE / what this build and machine have. The CUDA branch is checked by
// tests/gpu/run.sh on a machine with a GPU.
#include "test.h"

#include <stdlib.h>
#include <string.h>

#include "adamw.h"      // AdamW, grad_clip, adamw_step: the direct calls
#include "backend.h"    // the interface under test
#include "generate.h"   // generate: the direct call
#include "model.h"      // Model
#include "seqbatch.h"   // SeqBatch, seqbatch_logprobs

static Model *tiny(uint64_t seed) {
    ModelConfig c = {.dim = 32, .hidden_dim = 48, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = 40,
                     .max_seq_len = 64, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .qkv_bias = 1, .tied = 0};
    Model *m = model_create(&c);
    model_init_random(m, seed, 0.1f);
    return m;
}

static SeqBatch *batch(void) {
    static const int32_t p0[] = {1, 5, 9}, p1[] = {1, 7}, r0[] = {3, 4, 2, 8}, r1[] = {6, 6};
    const int32_t *pr[] = {p0, p1}, *rs[] = {r0, r1};
    int pl[] = {3, 2}, rl[] = {4, 2};
    return seqbatch_build(2, pr, pl, rs, rl);
}

TEST(device_selection) {
    unsetenv("SAFE_DEVICE");
    Device want_auto = device_cuda_available() ? DEVICE_CUDA : DEVICE_CPU;
    printf("  built with CUDA: %d, GPU visible: %d, auto -> %s\n", device_cuda_built(), device_cuda_available(),
           device_name(want_auto));
    CHECK(device_select("cpu") == DEVICE_CPU, "--device cpu");
    CHECK(device_select("auto") == want_auto, "--device auto");
    CHECK(device_select(NULL) == want_auto, "no --device, no $SAFE_DEVICE");
    setenv("SAFE_DEVICE", "cpu", 1);
    CHECK(device_select(NULL) == DEVICE_CPU, "$SAFE_DEVICE=cpu");
    CHECK(device_select("auto") == want_auto, "--device wins over $SAFE_DEVICE");
    unsetenv("SAFE_DEVICE");
    CHECK(!device_cuda_available() || device_cuda_built(), "a GPU is only usable by a CUDA build");
}

TEST(cpu_logprobs_and_step_are_the_direct_calls) {
    Model *a = tiny(3), *b = model_clone(a);
    SeqBatch *sb = batch();
    size_t n = sb->n_resp;
    float *la = malloc(n * 4), *ea = malloc(n * 4), *lb = malloc(n * 4), *eb = malloc(n * 4);
    float dl[6] = {0.3f, -0.2f, 0.5f, 0.1f, -0.4f, 0.2f}, de[6] = {0.01f, 0.02f, -0.01f, 0.03f, 0.0f, 0.01f};
    AdamWConfig ac = adamw_defaults();
    ac.lr = 1e-3f;
    AdamW *oa = adamw_create(a->n_params, ac), *ob = adamw_create(b->n_params, ac);
    Backend *bk = backend_create(b, DEVICE_CPU, "test", 1);
    CHECK(backend_device(bk) == DEVICE_CPU, "device");
    for (int step = 0; step < 2; step++) {
        // direct: what safe-update did before the backend
        seqbatch_logprobs(a, sb, 0.9f, la, ea);
        model_zero_grad(a);
        seqbatch_logprobs_backward(a, sb, 0.9f, dl, de);
        double na = grad_clip(a->grads, a->n_params, 0.05);
        adamw_step(oa, a->params, a->grads);
        // through the backend
        backend_logprobs(bk, sb, 0.9f, lb, eb);
        backend_zero_grad(bk);
        backend_logprobs_backward(bk, sb, 0.9f, dl, de);
        backend_allreduce_grads(bk, "test gradients");   // one rank: nothing
        CHECK(backend_first_nonfinite_grad(bk) == -1, "finite gradients");
        const float *dump = backend_grads_for_dump(bk);
        CHECK(dump == b->grads, "the CPU dumps its own gradient buffer");
        double nb = backend_clip_grads(bk, 0.05);
        backend_adamw_step(bk, ob);
        printf("  step %d: logp[0] %.9g vs %.9g, norm %.9g vs %.9g\n", step, la[0], lb[0], na, nb);
        CHECK(memcmp(la, lb, n * 4) == 0 && memcmp(ea, eb, n * 4) == 0, "log-probs and entropies, step %d", step);
        CHECK(na == nb, "gradient norm, step %d", step);
    }
    backend_sync(bk, ob);   // nothing to move on the CPU
    CHECK(memcmp(a->params, b->params, a->n_params * 4) == 0, "parameters after two steps");
    CHECK(memcmp(oa->m, ob->m, a->n_params * 4) == 0 && memcmp(oa->v, ob->v, a->n_params * 4) == 0, "moments");
    // the step limit's snapshot and blend: w = w0 + s (w - w0)
    float *w0 = malloc(b->n_params * 4), *w1 = malloc(b->n_params * 4);
    memcpy(w0, b->params, b->n_params * 4);
    backend_snapshot(bk);
    backend_adamw_step(bk, ob);
    memcpy(w1, b->params, b->n_params * 4);
    backend_blend(bk, 0.25f);
    int bad = 0;
    for (size_t i = 0; i < b->n_params; i++) bad += b->params[i] != w0[i] + 0.25f * (w1[i] - w0[i]);
    CHECK(bad == 0, "blend: %d parameters differ", bad);
    // scale: the critic's joint clip
    model_zero_grad(b);
    for (size_t i = 0; i < b->n_params; i++) b->grads[i] = (float)i;
    backend_scale_grads(bk, 0.5f);
    CHECK(b->grads[10] == 5.0f, "scale");
    b->grads[7] = NAN;
    CHECK(backend_first_nonfinite_grad(bk) == 7, "first non-finite gradient");
    backend_free(bk);
    adamw_free(oa); adamw_free(ob);
    model_free(a); model_free(b);
    seqbatch_free(sb);
    free(la); free(ea); free(lb); free(eb); free(w0); free(w1);
}

TEST(cpu_hidden_path_is_the_direct_call) {
    Model *a = tiny(5), *b = model_clone(a);
    SeqBatch *sb = batch();
    int C = a->cfg.dim;
    size_t n = sb->n_resp;
    float *ha = malloc(n * C * 4), *hb = malloc(n * C * 4), *dh = malloc(n * C * 4);
    for (size_t i = 0; i < n * C; i++) dh[i] = (float)((int)(i % 7) - 3) * 0.01f;
    // direct: what safe-critic did
    model_forward(a, sb->tokens, sb->mask, sb->B, sb->T, 0);
    seqbatch_gather(sb, a->hidden, C, ha);
    model_zero_grad(a);
    float *full = calloc((size_t)sb->B * sb->T * C, 4);
    seqbatch_scatter(sb, dh, C, full);
    model_backward(a, NULL, full);
    Backend *bk = backend_create(b, DEVICE_CPU, "test", 1);
    backend_hidden(bk, sb, hb);
    backend_zero_grad(bk);
    backend_hidden_backward(bk, sb, dh);
    CHECK(memcmp(ha, hb, n * C * 4) == 0, "hidden states");
    CHECK(memcmp(a->grads, b->grads, a->n_params * 4) == 0, "gradients");
    backend_free(bk);
    model_free(a); model_free(b);
    seqbatch_free(sb);
    free(ha); free(hb); free(dh); free(full);
}

TEST(cpu_generate_is_generate) {
    Model *a = tiny(7);
    static const int32_t p[] = {1, 4, 2};
    GenRequest req[3] = {{"a", 0, p, 3}, {"a", 1, p, 3}, {"b", 0, p, 2}};
    GenConfig gc = {.sampler = sampler_defaults(), .max_new_tokens = 6, .batch = 2, .eos_id = -1, .seed = 9,
                    .iteration = 1, .quiet = 1};
    GenResult ra[3] = {0}, rb[3] = {0};
    generate(a, &gc, req, 3, ra, NULL, NULL);
    Backend *bk = backend_create(a, DEVICE_CPU, "test", 1);
    backend_generate(bk, &gc, req, 3, rb, NULL, NULL);
    for (int i = 0; i < 3; i++) {
        CHECK(ra[i].n == rb[i].n && memcmp(ra[i].tokens, rb[i].tokens, ra[i].n * 4) == 0 &&
                  memcmp(ra[i].logp, rb[i].logp, ra[i].n * 4) == 0, "request %d", i);
        gen_result_free(&ra[i]);
        gen_result_free(&rb[i]);
    }
    backend_free(bk);
    model_free(a);
}

int main(void) {
    RUN(device_selection);
    RUN(cpu_logprobs_and_step_are_the_direct_calls);
    RUN(cpu_hidden_path_is_the_direct_call);
    RUN(cpu_generate_is_generate);
    return test_summary();
}
