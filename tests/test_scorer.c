// test_scorer.c — lib/scorer: the VADER scorer's fields and components, and the exec protocol
// (answer forms, the spellings of non-finite numbers, components, batches larger than the pipes).
// The failure exits (dead, hung, garbage) are covered by tests/test_safe_score.sh.
#include <string.h>

#include "common.h"  // safe_data_dir, xmalloc
#include "scorer.h"  // scorer_vader, scorer_exec, scorer_score_batch
#include "test.h"

static double comp_get(const ScoreComponents *c, const char *name, int *found) {
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->name[i], name) == 0) { *found = 1; return c->value[i]; }
    *found = 0;
    return 0;
}

TEST(vader_scorer) {
    char path[4096];
    snprintf(path, sizeof path, "%s/vader/vader_lexicon.txt", safe_data_dir());
    Scorer *s = scorer_vader(path);
    ScoreComponents c = {0};
    double r = scorer_score(s, "a", "The movie", " was very good.", &c);
    int f;
    CHECK(fabs(r - 0.4927250317396701) < 1e-12, "reward %.17g", r);  // reference: "was very good."
    CHECK(c.n == 4 && comp_get(&c, "compound", &f) == r && f, "components: %d", c.n);
    CHECK(strstr(scorer_describe(s), "field=response") != NULL, "%s", scorer_describe(s));
    // prompt+response: "Bad." + "Good." joined with a space
    scorer_set_field(s, SCORE_PROMPT_RESPONSE);
    double a = scorer_score(s, "b", "Bad.", "Good.", &c), b = scorer_score(s, "c", "", "Bad. Good.", NULL);
    CHECK(a == b, "joined %.17g vs %.17g", a, b);
    CHECK(strcmp(scorer_kind(s), "vader") == 0, "kind %s", scorer_kind(s));
    components_free(&c);
    scorer_free(s);
}

TEST(exec_answer_forms) {
    // one fixed answer per request, exercising the Python json tokens and key handling
    Scorer *s = scorer_exec("while read l; do echo '{\"reward\": -Infinity, \"note\": \"NaN Infinity\", "
                            "\"x\": NaN, \"y\": 2, \"flag\": true}'; done");
    ScoreComponents c = {0};
    double r = scorer_score(s, "q1", "p", "r", &c);
    int fx, fy, fn;
    double x = comp_get(&c, "x", &fx), y = comp_get(&c, "y", &fy);
    comp_get(&c, "note", &fn);
    CHECK(isinf(r) && r < 0, "reward %g", r);
    CHECK(fx && isnan(x), "x %g", x);
    CHECK(fy && y == 2, "y %g", y);
    CHECK(!fn && c.n == 2, "strings and booleans are not components (n %d)", c.n);
    scorer_free(s);

    s = scorer_exec("read l; echo 'Infinity'; echo ' 0.25 '; echo 'NaN'; echo 3; cat >/dev/null");
    double rw[4];
    ScoreRequest req[4] = {{.id = "a", .prompt = "", .response = "x", .response_len = 1},
                           {.id = "b", .prompt = "", .response = "y", .response_len = 1},
                           {.id = "c", .prompt = "", .response = "z", .response_len = 1},
                           {.id = "d", .prompt = "", .response = "w", .response_len = 1}};
    scorer_score_batch(s, req, 1, rw, NULL);
    CHECK(isinf(rw[0]) && rw[0] > 0, "Infinity -> %g", rw[0]);
    // the next three answers are already on their way: one batch of three reads them in order
    ScoreComponents cs[3] = {{0}};
    scorer_score_batch(s, req + 1, 3, rw + 1, cs);
    CHECK(rw[1] == 0.25 && isnan(rw[2]) && rw[3] == 3, "%g %g %g", rw[1], rw[2], rw[3]);
    CHECK(cs[0].n == 0 && cs[2].n == 0, "bare numbers have no components");
    for (int i = 0; i < 3; i++) components_free(&cs[i]);
    components_free(&c);
    scorer_free(s);
}

TEST(exec_protocol_and_batches) {
    // the request reaches the command as JSON (escaped, invalid UTF-8 replaced); answers
    // echo the response length in code points, with a component, 200 requests in batches of 7
    Scorer *s = scorer_exec("python3 -c 'import json,sys\n"
                            "for l in sys.stdin:\n"
                            "    q = json.loads(l)\n"
                            "    print(json.dumps({\"reward\": len(q[\"response\"]), \"id_num\": int(q[\"id\"]),"
                            " \"plen\": len(q[\"prompt\"])}))'");
    scorer_set_batch(s, 7);
    CHECK(scorer_batch(s) == 7, "batch %d", scorer_batch(s));
    enum { N = 200 };
    ScoreRequest req[N];
    char ids[N][16], *texts[N];
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "%d", i);
        size_t len = (size_t)i * 97 + 3;
        texts[i] = xmalloc(len + 1);
        for (size_t j = 0; j < len; j++) texts[i][j] = "a\"\\\n\t\x01 z"[j % 8];
        if (i % 10 == 0) texts[i][1] = (char)0xff;   // invalid UTF-8 -> one U+FFFD
        texts[i][len] = '\0';
        req[i] = (ScoreRequest){.id = ids[i], .prompt = "pr\xc3\xa9", .prompt_len = 4, .response = texts[i], .response_len = len};
    }
    double rw[N];
    ScoreComponents *cs = xcalloc(N, sizeof *cs);
    scorer_score_batch(s, req, N, rw, cs);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        int f1, f2;
        double idn = comp_get(&cs[i], "id_num", &f1), plen = comp_get(&cs[i], "plen", &f2);
        bad += rw[i] != (double)req[i].response_len || !f1 || idn != i || !f2 || plen != 3;
    }
    CHECK(bad == 0, "%d of %d answers wrong (first: reward %g for len %zu)", bad, N, rw[0], req[0].response_len);
    for (int i = 0; i < N; i++) free(texts[i]), components_free(&cs[i]);
    free(cs);
    scorer_free(s);
}

TEST(exec_nonfinite_spellings) {
    // One rule for non-finite rewards: an optional sign and nan / inf / infinity in any case,
    // or a JSON number beyond the double range, is NaN or ±Infinity; a string is never a number.
    static const struct { const char *answer; int kind; double value; } A[] = {
        // kind: 'n' NaN, '+' +Infinity, '-' -Infinity, 'f' the finite value
        {"NaN", 'n', 0}, {"nan", 'n', 0}, {"-nan", 'n', 0}, {"+NAN", 'n', 0},
        {"Infinity", '+', 0}, {"-Infinity", '-', 0}, {"inf", '+', 0}, {"-inf", '-', 0},
        {"+inf", '+', 0}, {"Inf", '+', 0}, {"-INFINITY", '-', 0},
        {"1e999", '+', 0}, {"-1e999", '-', 0}, {"1.5E+400", '+', 0}, {"{\"reward\": -2e308}", '-', 0},
        {"{\"reward\": nan, \"id\": \"q\"}", 'n', 0}, {"{\"reward\": -inf}", '-', 0},
        {"1e-999", 'f', 0.0}, {"-0.5e-3", 'f', -0.0005}, {"12345678901234567890123", 'f', 1.2345678901234567e22},
        {"{\"reward\": 7, \"note\": \"nan inf 1e999\"}", 'f', 7},
    };
    enum { N = sizeof A / sizeof A[0] };
    // the command prints the answers in order: one line per request
    char cmd[4096] = "read l; cat <<'EOF'\n";
    for (int i = 0; i < N; i++) strcat(strcat(cmd, A[i].answer), "\n");
    strcat(cmd, "EOF\ncat >/dev/null");
    Scorer *s = scorer_exec(cmd);
    scorer_set_batch(s, N);   // one batch: the answers come all at once
    ScoreRequest req[N];
    for (int i = 0; i < N; i++) req[i] = (ScoreRequest){.id = "q", .prompt = "", .response = "x", .response_len = 1};
    double rw[N];
    ScoreComponents cs[N];
    memset(cs, 0, sizeof cs);
    scorer_score_batch(s, req, N, rw, cs);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        int ok = A[i].kind == 'n' ? isnan(rw[i])
               : A[i].kind == '+' ? isinf(rw[i]) && rw[i] > 0
               : A[i].kind == '-' ? isinf(rw[i]) && rw[i] < 0
               : rw[i] == A[i].value;
        if (!ok && bad++ < 8) printf("  answer %-40s -> %g (wanted %c %g)\n", A[i].answer, rw[i], A[i].kind, A[i].value);
    }
    CHECK(bad == 0, "%d of %d answers read wrong", bad, (int)N);
    int f;
    comp_get(&cs[N - 1], "note", &f);
    CHECK(!f && cs[N - 1].n == 0, "a string mentioning nan and inf is not a component");
    for (int i = 0; i < N; i++) components_free(&cs[i]);
    scorer_free(s);
}

int main(void) {
    RUN(vader_scorer);
    RUN(exec_answer_forms);
    RUN(exec_protocol_and_batches);
    RUN(exec_nonfinite_spellings);
    return test_summary();
}
