// test_generate.c — batched generation on stories260K: the same seed gives the same tokens
// for batch sizes 1, 7 and 64 and for 1 or 2 threads; continuous batching finishes rows at
// different times correctly; the recorded log-probs equal a teacher-forced forward; a NaN
// in the logits stops generation with exit 3 before any token is emitted.
#include "test.h"

#include "common.h"     // safe_data_dir, xmalloc
#include "generate.h"   // generate
#include "llama2c.h"    // llama2c_load
#include "logprob.h"    // logprob_forward for the teacher-forced check
#include "tokenizer.h"  // prompts -> ids

#include <jansson.h>
#include <omp.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { NPROMPT = 35, NSAMPLE = 2, NREQ = NPROMPT * NSAMPLE, MAXNEW = 24 };

static Model *model;
static Tokenizer *tok;
static char ids_buf[NPROMPT][16];
static int32_t *prompt_ids[NPROMPT];
static int prompt_len[NPROMPT];
static GenRequest reqs[NREQ];

static void load_prompts(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/tinystories/prompts.jsonl", safe_data_dir());
    FILE *f = fopen(path, "r");
    char line[4096];
    for (int i = 0; i < NPROMPT && fgets(line, sizeof line, f); i++) {
        json_t *j = json_loads(line, 0, NULL);
        const char *text = json_string_value(json_object_get(j, "prompt"));
        snprintf(ids_buf[i], sizeof ids_buf[i], "%s", json_string_value(json_object_get(j, "id")));
        prompt_ids[i] = xmalloc(tokenizer_max_tokens(text) * sizeof(int32_t));
        prompt_len[i] = tokenizer_encode(tok, text, 1, 0, prompt_ids[i]);
        json_decref(j);
    }
    fclose(f);
    // interleave samples so that equal prompts are not neighbours in the queue
    for (int k = 0; k < NSAMPLE; k++)
        for (int i = 0; i < NPROMPT; i++)
            reqs[k * NPROMPT + i] = (GenRequest){ids_buf[i], k, prompt_ids[i], prompt_len[i]};
}

static GenConfig base_config(void) {
    GenConfig c = {.sampler = sampler_defaults(), .max_new_tokens = MAXNEW, .batch = 1, .eos_id = tok->eos_id,
                   .seed = 1234, .iteration = 3, .quiet = 1};
    c.sampler.temperature = 0.9f;
    return c;
}

static GenResult *run(const GenConfig *c, int threads) {
    omp_set_num_threads(threads);
    GenResult *r = xcalloc(NREQ, sizeof(GenResult));
    generate(model, c, reqs, NREQ, r, NULL, NULL);
    omp_set_num_threads(2);
    return r;
}

static void free_results(GenResult *r) {
    for (int i = 0; i < NREQ; i++) gen_result_free(&r[i]);
    free(r);
}

// tokens and finish identical; log-probs within tol. Returns mismatching requests.
static int compare(const GenResult *a, const GenResult *b, const char *what, double *max_dlogp) {
    int bad = 0;
    double worst = 0;
    for (int i = 0; i < NREQ; i++) {
        int same = a[i].n == b[i].n && a[i].finish == b[i].finish &&
                   memcmp(a[i].tokens, b[i].tokens, (size_t)a[i].n * sizeof(int32_t)) == 0;
        if (!same && bad++ < 2 && what) printf("  %s: request %d (%s #%d) differs: %d vs %d tokens\n", what, i, reqs[i].id,
                                       reqs[i].sample_index, a[i].n, b[i].n);
        for (int j = 0; same && j < a[i].n; j++) worst = fmax(worst, fabs(a[i].logp[j] - b[i].logp[j]));
    }
    *max_dlogp = worst;
    return bad;
}

TEST(same_tokens_for_batch_and_threads) {
    GenConfig c = base_config();
    GenResult *ref = run(&c, 1);
    long total = 0;
    for (int i = 0; i < NREQ; i++) total += ref[i].n;
    int batches[3] = {1, 7, 64}, threads[2] = {1, 2};
    for (int b = 0; b < 3; b++) {
        for (int t = 0; t < 2; t++) {
            if (b == 0 && t == 0) continue;
            c.batch = batches[b];
            double t0 = now_seconds();
            GenResult *r = run(&c, threads[t]);
            double dt = now_seconds() - t0, dl;
            char what[64];
            snprintf(what, sizeof what, "batch %d, %d threads", batches[b], threads[t]);
            int bad = compare(ref, r, what, &dl);
            printf("  %-20s %ld tokens in %.2f s, %d of %d requests differ, max |dlogp| %.2g\n", what, total, dt, bad, NREQ, dl);
            CHECK(bad == 0, "%s: %d requests differ", what, bad);
            CHECK(dl < 1e-5, "%s: logp differs by %g", what, dl);
            free_results(r);
        }
    }
    // and a different seed gives different tokens
    c.seed = 1235;
    GenResult *r = run(&c, 1);
    double dl;
    int differ = compare(ref, r, NULL, &dl);
    CHECK(differ > NREQ / 2, "another seed changed only %d of %d requests", differ, NREQ);
    free_results(r);
    free_results(ref);
}

// Continuous batching: make "." the stop token so rows finish at different times.
static int done_order[NREQ], done_count;
static void on_done(void *ctx, int req, const GenResult *res) {
    (void)ctx;
    (void)res;
    done_order[done_count++] = req;
}

TEST(rows_finish_at_different_times) {
    GenConfig c = base_config();
    c.eos_id = tokenizer_lookup(tok, ".", 1);
    CHECK(c.eos_id > 0, "no '.' token");
    c.batch = 1;
    GenResult *one = run(&c, 1);
    c.batch = 7;
    done_count = 0;
    omp_set_num_threads(1);
    GenResult *seven = xcalloc(NREQ, sizeof(GenResult));
    generate(model, &c, reqs, NREQ, seven, on_done, NULL);
    double dl;
    int bad = compare(one, seven, "stop at '.'", &dl);
    int n_eos = 0, n_len = 0, ok = 1, lens_differ = 0, out_of_order = 0;
    for (int i = 0; i < NREQ; i++) {
        const GenResult *r = &seven[i];
        if (r->finish == GEN_FINISH_EOS) {
            n_eos++;
            ok &= r->tokens[r->n - 1] == c.eos_id;   // the stop token is part of the response
        } else {
            n_len++;
            ok &= r->finish == GEN_FINISH_LENGTH && r->n == MAXNEW;
        }
        for (int j = 0; j + 1 < r->n; j++) ok &= r->tokens[j] != c.eos_id;
        lens_differ |= r->n != seven[0].n;
        out_of_order |= done_order[i] != i;
    }
    printf("  %d rows stopped at '.', %d at the length limit; completion order %s request order\n", n_eos, n_len,
           out_of_order ? "differs from" : "equals");
    CHECK(bad == 0, "%d requests differ between batch 1 and 7", bad);
    CHECK(ok, "finish reasons or stop tokens are wrong");
    CHECK(n_eos > NREQ / 2 && lens_differ && out_of_order && done_count == NREQ, "rows did not finish at different times");
    free_results(one);
    free_results(seven);
}

TEST(logp_matches_teacher_forcing) {
    GenConfig c = base_config();
    c.batch = 7;
    c.sampler.top_k = 20;   // truncation changes what is sampled, not the recorded log-probs
    GenResult *r = run(&c, 1);
    double worst_lp = 0, worst_ent = 0;
    int checked = 0, kept_below_one = 0;
    for (int i = 0; i < NREQ; i += 9) {
        int P = reqs[i].n_tokens, T = P + r[i].n;
        int32_t *seq = xmalloc((size_t)T * sizeof(int32_t));
        uint8_t *mask = xmalloc((size_t)T);
        memcpy(seq, reqs[i].tokens, (size_t)P * sizeof(int32_t));
        memcpy(seq + P, r[i].tokens, (size_t)r[i].n * sizeof(int32_t));
        memset(mask, 1, (size_t)T);
        model_forward(model, seq, mask, 1, T, 1);
        float *lp = xmalloc((size_t)r[i].n * sizeof(float)), *ent = xmalloc((size_t)r[i].n * sizeof(float));
        // logits at position P-1+j predict response token j
        logprob_forward(model->logits + (size_t)(P - 1) * model->cfg.vocab_size, (size_t)r[i].n, model->cfg.vocab_size,
                        c.sampler.temperature, seq + P, lp, ent);
        for (int j = 0; j < r[i].n; j++) {
            worst_lp = fmax(worst_lp, fabs(lp[j] - r[i].logp[j]));
            worst_ent = fmax(worst_ent, fabs(ent[j] - r[i].entropy[j]));
            kept_below_one += r[i].kept_mass[j] < 1.0f;
        }
        if (checked == 0)
            printf("  request 0: logp generated %.6f %.6f %.6f, teacher-forced %.6f %.6f %.6f\n", r[i].logp[0],
                   r[i].logp[1], r[i].logp[2], lp[0], lp[1], lp[2]);
        checked++;
        free(seq); free(mask); free(lp); free(ent);
    }
    printf("  %d sequences: max |dlogp| %.2g, max |dentropy| %.2g; %d tokens drawn with kept mass < 1\n", checked,
           worst_lp, worst_ent, kept_below_one);
    CHECK(worst_lp < 1e-5, "logp differs by %g", worst_lp);
    CHECK(worst_ent < 1e-5, "entropy differs by %g", worst_ent);
    CHECK(kept_below_one > 0, "top-k 20 never truncated");
    free_results(r);
}

// ---- NaN: fork, poison, expect exit 3 naming the prompt and position, no token emitted ----

static void emitted(void *ctx, int req, const GenResult *res) {
    (void)ctx;
    fprintf(stderr, "EMITTED %d (%d tokens)\n", req, res->n);
}

static void child_poisoned_norm(const void *unused) {
    (void)unused;
    model->w.final_norm[5] = NAN;   // every logit becomes NaN
    GenConfig c = base_config();
    c.batch = 7;
    generate(model, &c, reqs, NREQ, NULL, emitted, NULL);
}

// Mid-run poisoning: an untied copy of the model whose *input* embedding of <unk> (id 0) is
// NaN. Requests 0 and 1 finish normally; request 2 ends its prompt with <unk> and enters the
// batch after them, so its first logits row is NaN: it must die without emitting a token.
static void child_poisoned_token(const void *unused) {
    (void)unused;
    ModelConfig cu = model->cfg;
    cu.tied = 0;
    Model *u = model_create(&cu);
    memcpy(u->params, model->params, model->n_params * sizeof(float));   // same layout, head last
    memcpy(u->w.lm_head, model->w.tok_emb, (size_t)cu.vocab_size * cu.dim * sizeof(float));
    for (int i = 0; i < cu.dim; i++) u->w.tok_emb[i] = NAN;
    GenConfig c = base_config();
    c.batch = 2;
    c.max_new_tokens = 5;
    GenRequest q[3] = {reqs[0], reqs[1], reqs[2]};
    static int32_t odd[256];
    memcpy(odd, reqs[2].tokens, (size_t)reqs[2].n_tokens * sizeof(int32_t));
    odd[reqs[2].n_tokens - 1] = 0;
    q[2].tokens = odd;
    generate(u, &c, q, 3, NULL, emitted, NULL);
}

static void print_indented(const char *s) {
    while (*s) {
        const char *nl = strchr(s, '\n');
        int n = nl ? (int)(nl - s) : (int)strlen(s);
        printf("  | %.*s\n", n, s);
        s += n + (nl != NULL);
    }
}

TEST(nan_logits_stop_generation) {
    char err[4096];
    int st = test_run_child(child_poisoned_norm, NULL, err, sizeof err);
    print_indented(err);
    char want[64];
    snprintf(want, sizeof want, "position %d", reqs[0].n_tokens);
    CHECK(st == 3, "exit %d, wanted 3", st);
    CHECK(strstr(err, reqs[0].id) && strstr(err, want) && strstr(err, "non-finite"), "message: %s", err);
    CHECK(!strstr(err, "EMITTED"), "a token was emitted: %s", err);
    st = test_run_child(child_poisoned_token, NULL, err, sizeof err);
    print_indented(err);
    snprintf(want, sizeof want, "position %d", reqs[2].n_tokens);
    CHECK(st == 3 && strstr(err, "EMITTED 0") && strstr(err, "EMITTED 1") && !strstr(err, "EMITTED 2") &&
          strstr(err, reqs[2].id) && strstr(err, want), "exit %d: %s", st, err);
}

int main(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/stories260K/stories260K.bin", safe_data_dir());
    model = llama2c_load(path);
    snprintf(path, sizeof path, "%s/stories260K/tok512.bin", safe_data_dir());
    tok = tokenizer_load(path, model->cfg.vocab_size);
    load_prompts();
    RUN(same_tokens_for_batch_and_threads);
    RUN(rows_finish_at_different_times);
    RUN(logp_matches_teacher_forcing);
    RUN(nan_logits_stop_generation);
    for (int i = 0; i < NPROMPT; i++) free(prompt_ids[i]);
    tokenizer_free(tok);
    model_free(model);
    return test_summary();
}
