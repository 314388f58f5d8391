// test_vader.c — lib/vader against vaderSentiment 3.3.2 (tests/gen/gen_vader_ref.py):
//   - all 10,605 ICWSM-2014 movie-review snippets: compound within 1e-4 (and pos/neg/neu),
//     with the count of mismatches, the largest differences and the worst cases side by side;
//   - hand cases per rule (tests/fixtures/vader_hand.tsv, scored by the reference), plus a few
//     direction checks that say what each rule does;
//   - odd input (invalid UTF-8, NUL bytes, a long text) for the sanitizers.
// Run from the repository root (tests/run.sh does).
#include <string.h>

#include "common.h"  // safe_data_dir, xmalloc, die
#include "test.h"
#include "vader.h"   // vader_load, vader_score, vader_round

#define TOL 1e-4

static Vader *vader;        // the data lexicon
static Vader *vader_emoji;  // the same plus tests/fixtures/vader_emoji_subset.txt

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die(EXIT_BADINPUT, "%s: cannot open (run from the repository root)", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = xmalloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) die(EXIT_BADINPUT, "%s: short read", path);
    fclose(f);
    buf[n] = '\0';
    if (len) *len = (size_t)n;
    return buf;
}

// Split buf in place into lines (dropping one trailing '\r'); returns the count.
static size_t split_lines(char *buf, char ***out) {
    size_t n = 0, cap = 1024;
    char **lines = xmalloc(cap * sizeof *lines);
    for (char *p = buf; *p;) {
        char *e = strchr(p, '\n');
        if (e) *e = '\0';
        size_t l = strlen(p);
        if (l && p[l - 1] == '\r') p[l - 1] = '\0';
        if (n == cap) lines = xrealloc(lines, (cap *= 2) * sizeof *lines);
        lines[n++] = p;
        if (!e) break;
        p = e + 1;
    }
    *out = lines;
    return n;
}

// Split a line in place at tabs into at most `max` fields; returns the count.
static int split_tabs(char *line, char **f, int max) {
    int n = 0;
    f[n++] = line;
    for (char *p = line; *p && n < max; p++)
        if (*p == '\t') { *p = '\0'; f[n++] = p + 1; }
    return n;
}

typedef struct { double d; long row; } Worst;

TEST(movie_snippets_parity) {
    char path[4096];
    snprintf(path, sizeof path, "%s/vader/movieReviewSnippets_GroundTruth.txt", safe_data_dir());
    char *sbuf = slurp(path, NULL), *rbuf = slurp("tests/fixtures/vader_ref.tsv", NULL);
    char **sl, **rl;
    size_t ns = split_lines(sbuf, &sl), nr = split_lines(rbuf, &rl);
    size_t nref = 0;
    for (size_t i = 0; i < nr; i++) nref += rl[i][0] && rl[i][0] != '#';
    CHECK(ns == 10605, "%zu snippets, expected 10605", ns);
    CHECK(nref == ns, "%zu reference rows for %zu snippets", nref, ns);

    double maxd[4] = {0}, t0 = now_seconds();
    long mism[4] = {0}, exact = 0, round_eq = 0, n = 0;
    Worst worst[5] = {{0, -1}, {0, -1}, {0, -1}, {0, -1}, {0, -1}};
    char **text = xmalloc(ns * sizeof *text);
    double (*ref)[4] = xmalloc(ns * sizeof *ref), (*got)[4] = xmalloc(ns * sizeof *got);
    size_t r = 0;
    for (size_t i = 0; i < ns && r < nr; i++) {
        char *sf[3], *rf[5];
        while (r < nr && (!rl[r][0] || rl[r][0] == '#')) r++;
        if (r == nr) break;
        CHECK(split_tabs(sl[i], sf, 3) == 3, "snippet line %zu: not id TAB rating TAB text", i + 1);
        CHECK(split_tabs(rl[r], rf, 5) == 5, "reference row %zu: not 5 fields", r + 1);
        CHECK(strcmp(sf[0], rf[0]) == 0, "line %zu: snippet id %s, reference id %s", i + 1, sf[0], rf[0]);
        VaderScores s, sr;
        vader_score(vader, sf[2], strlen(sf[2]), &s);
        double g[4] = {s.compound, s.pos, s.neg, s.neu};
        int same = 1;
        for (int k = 0; k < 4; k++) {
            ref[n][k] = strtod(rf[k + 1], NULL);
            got[n][k] = g[k];
            double d = fabs(g[k] - ref[n][k]);
            if (d > maxd[k]) maxd[k] = d;
            if (d > TOL) mism[k]++;
            same &= g[k] == ref[n][k];
        }
        exact += same;
        // rounded as polarity_scores() returns them
        sr = s;
        vader_round(&sr);
        VaderScores rr = {ref[n][0], ref[n][1], ref[n][2], ref[n][3]};
        vader_round(&rr);
        round_eq += sr.compound == rr.compound && sr.pos == rr.pos && sr.neg == rr.neg && sr.neu == rr.neu;
        // keep the five largest compound differences
        double d = fabs(g[0] - ref[n][0]);
        for (int w = 0; w < 5; w++) {
            if (worst[w].row < 0 || d > worst[w].d) {
                memmove(&worst[w + 1], &worst[w], (size_t)(4 - w) * sizeof *worst);
                worst[w] = (Worst){d, n};
                break;
            }
        }
        text[n++] = sf[2];
        r++;
    }
    double dt = now_seconds() - t0;
    printf("  %ld snippets in %.3f s (%.0f/s)\n", n, dt, (double)n / dt);
    printf("  max |diff|: compound %.3g, pos %.3g, neg %.3g, neu %.3g\n", maxd[0], maxd[1], maxd[2], maxd[3]);
    printf("  mismatches > %g: compound %ld, pos %ld, neg %ld, neu %ld\n", TOL, mism[0], mism[1], mism[2], mism[3]);
    printf("  bit-identical on all four: %ld/%ld; equal after polarity_scores rounding: %ld/%ld\n",
           exact, n, round_eq, n);
    printf("  first rows, then the largest compound differences (ours | reference):\n");
    for (int w = 0; w < 3 && w < n; w++)
        printf("    [%d] %+.17f | %+.17f  %.60s\n", w, got[w][0], ref[w][0], text[w]);
    if (worst[0].d == 0) printf("    (no differences at all)\n");
    for (int w = 0; w < 5; w++) {
        if (worst[w].row < 0 || worst[w].d == 0) break;
        long i = worst[w].row;
        printf("    [%ld] %+.17f | %+.17f  |d| %.2g  %.60s\n", i, got[i][0], ref[i][0], worst[w].d, text[i]);
    }
    CHECK(n == 10605, "compared %ld snippets", n);
    for (int k = 0; k < 4; k++) CHECK(mism[k] == 0, "field %d: %ld mismatches > %g", k, mism[k], TOL);
    free(text), free(ref), free(got), free(sl), free(rl), free(sbuf), free(rbuf);
}

// ---- hand cases ------------------------------------------------------------------------

static char *hand_buf;
static char **hand_lines;
static size_t hand_n;

// Compare every hand case of `rule` with the reference; returns how many there were.
static int hand_rule(const char *rule) {
    int count = 0;
    for (size_t i = 0; i < hand_n; i++) {
        if (!hand_lines[i][0] || hand_lines[i][0] == '#') continue;
        char line[4096], *f[6];
        snprintf(line, sizeof line, "%s", hand_lines[i]);
        if (split_tabs(line, f, 6) != 6) { CHECK(0, "vader_hand.tsv line %zu: not 6 fields", i + 1); continue; }
        if (strcmp(f[0], rule) != 0) continue;
        count++;
        const Vader *v = strcmp(rule, "emoji") == 0 ? vader_emoji : vader;
        VaderScores s;
        vader_score(v, f[1], strlen(f[1]), &s);
        double g[4] = {s.compound, s.pos, s.neg, s.neu}, d = 0;
        for (int k = 0; k < 4; k++) d = fmax(d, fabs(g[k] - strtod(f[k + 2], NULL)));
        CHECK(d <= TOL, "\"%s\": compound %.6f pos %.4f neg %.4f neu %.4f, reference %s %s %s %s",
              f[1], g[0], g[1], g[2], g[3], f[2], f[3], f[4], f[5]);
        if (count <= 3) printf("    %+.4f | %+.4f  %s\n", g[0], strtod(f[2], NULL), f[1]);
    }
    CHECK(count > 0, "no hand cases for rule '%s'", rule);
    return count;
}

static double cmp(const char *text) {
    VaderScores s;
    vader_score(vader, text, strlen(text), &s);
    return s.compound;
}

TEST(rule_lexicon) {
    hand_rule("lexicon");
    CHECK(cmp("The book was good.") > 0 && cmp("The book was bad.") < 0, "sign of plain valence");
    CHECK(cmp("The book was a book.") == 0, "no lexicon word: 0");
}

TEST(rule_negation) {
    hand_rule("negation");
    double good = cmp("The book was good.");
    CHECK(fabs(cmp("The book was not good.") - cmp("The book isn't good.")) < 1e-12, "n't = not");
    CHECK(cmp("The book was not good.") < 0, "not good < 0");
    CHECK(cmp("It was never so good") > good, "never so good: x1.25");
    CHECK(cmp("Without a doubt, excellent idea.") > 0, "without doubt is no negation");
}

TEST(rule_no) { hand_rule("no"); CHECK(cmp("There is no good answer") < 0, "no good < 0"); }

TEST(rule_booster) {
    hand_rule("booster");
    double good = cmp("The book was good.");
    CHECK(cmp("The book was very good.") > good, "very boosts");
    CHECK(cmp("The book was slightly good.") < good, "slightly dampens");
    CHECK(cmp("The book was VERY good.") > cmp("The book was very good."), "caps booster");
}

TEST(rule_caps) {
    hand_rule("caps");
    CHECK(cmp("The book was GOOD.") > cmp("The book was good."), "GOOD among lowercase boosts");
    CHECK(cmp("THE BOOK WAS GOOD.") == cmp("The book was good."), "all caps: no emphasis");
}

TEST(rule_but) {
    hand_rule("but");
    CHECK(cmp("good but bad") < 0 && cmp("bad but good") > 0, "the clause after but dominates");
}

TEST(rule_kind_of) {
    hand_rule("kind of");
    CHECK(cmp("The book was only kind of good.") < cmp("The book was good."), "kind of dampens");
}

TEST(rule_exclamation) {
    hand_rule("exclamation");
    CHECK(cmp("Good!") > cmp("Good") && cmp("Good!!") > cmp("Good!"), "! adds emphasis");
    CHECK(cmp("Good!!!!") == cmp("Good!!!!!!!"), "at most 4 count");
    CHECK(cmp("book!!!") == 0, "no emphasis without sentiment");
}

TEST(rule_question) {
    hand_rule("question");
    CHECK(cmp("Good?") == cmp("Good"), "one ? does nothing");
    CHECK(cmp("Good??") > cmp("Good") && cmp("Good????") > cmp("Good???"), "?? and more add emphasis");
}

TEST(rule_idiom) {
    hand_rule("idiom");
    CHECK(cmp("With VADER, sentiment analysis is the shit!") > 0, "the shit is positive");
}

TEST(rule_least) {
    hand_rule("least");
    CHECK(cmp("least good") < 0 && cmp("the very least good") > 0, "least negates, very least not");
}

TEST(rule_tokens) { hand_rule("tokens"); CHECK(cmp("") == 0 && cmp("   ") == 0, "empty text"); }
TEST(rule_unicode) { hand_rule("unicode"); }

TEST(rule_emoji) {
    hand_rule("emoji");
    // without the emoji lexicon an emoji is an unknown token
    CHECK(cmp("\xf0\x9f\x98\x81\xf0\x9f\x98\x81 sad") < 0, "emoji ignored without the emoji lexicon");
}

TEST(rounding) {
    // Python: round(0.44043357076016854, 4) = 0.4404; ties go to even on the exact binary value
    VaderScores s = {0.44043357076016854, 0.0625, 0.1875, 0.00049999999999999990};
    vader_round(&s);
    CHECK(s.compound == 0.4404, "%.17g", s.compound);
    CHECK(s.pos == 0.062 && s.neg == 0.188 && s.neu == 0.0, "%.17g %.17g %.17g", s.pos, s.neg, s.neu);
}

TEST(odd_input) {
    // invalid UTF-8, a NUL byte, and a long text with "but" (quadratic-ish path) must not crash
    const char bad[] = "good \xff\xfe \xc3 bad\0 great \xed\xa0\x80 !!";
    VaderScores s;
    vader_score(vader, bad, sizeof bad - 1, &s);
    CHECK(isfinite(s.compound) && fabs(s.compound) <= 1, "compound %g", s.compound);
    size_t n = 200000;
    char *big = xmalloc(n + 1);
    for (size_t i = 0; i < n; i += 20) memcpy(big + i, i == n / 2 ? "but but but but but " : "good bad. nice  no ", 20);
    big[n] = '\0';
    vader_score(vader, big, n, &s);
    CHECK(isfinite(s.compound) && fabs(s.pos + s.neg + s.neu - 1) < 1e-9, "long text %g", s.compound);
    free(big);
}

int main(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/vader/vader_lexicon.txt", safe_data_dir());
    vader = vader_load(path);
    vader_emoji = vader_load(path);
    size_t ne = vader_load_emoji(vader_emoji, "tests/fixtures/vader_emoji_subset.txt");
    printf("  lexicon %s: %zu entries; emoji subset: %zu\n", path, vader_lexicon_size(vader), ne);
    hand_buf = slurp("tests/fixtures/vader_hand.tsv", NULL);
    hand_n = split_lines(hand_buf, &hand_lines);

    RUN(movie_snippets_parity);
    RUN(rule_lexicon);
    RUN(rule_negation);
    RUN(rule_no);
    RUN(rule_booster);
    RUN(rule_caps);
    RUN(rule_but);
    RUN(rule_kind_of);
    RUN(rule_exclamation);
    RUN(rule_question);
    RUN(rule_idiom);
    RUN(rule_least);
    RUN(rule_tokens);
    RUN(rule_unicode);
    RUN(rule_emoji);
    RUN(rounding);
    RUN(odd_input);

    free(hand_lines);
    free(hand_buf);
    vader_free(vader);
    vader_free(vader_emoji);
    return test_summary();
}
