// safe-report — read a run directory's per-iteration stats and control states and print
// one line per iteration and the end-of-run summary of SAFE-SPEC §8.
//
//   safe-report run/demo               table of every iteration, then the summary
//   safe-report --line run/demo/0007   the line of one iteration (what the pipeline prints)
//   safe-report --summary run/demo     the summary alone
#include <dirent.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"   // die, xmalloc, exit codes
#include "ranks.h"       // ranks_require_one: one process, not several ranks
#include "shard.h"    // reading stats and control shards

typedef struct {
    long iteration;
    double reward_mean, reward_std, kl, tau, gate, entropy, length, eos_rate, seconds;
    double penalty, value_loss, clip_frac;
    int penalty_active, penalty_updates;
    char phase[16];
    double next_tau;
} Iter;

static void usage(FILE *f) {
    fprintf(f,
        "usage: safe-report [--line | --summary | --header] [--tsv] RUN_DIR | ITER_DIR\n"
        "\n"
        "Print one line per iteration of a training run (from ITER/stats.safe and\n"
        "ITER/control.safe) and the end-of-run summary: mean reward (all, last 200),\n"
        "volatility, reward crashes, KL percentiles, penalty activations.\n"
        "\n"
        "  --line        only the line of ITER_DIR (no header)\n"
        "  --summary     only the summary of RUN_DIR\n"
        "  --header      only the table's column names\n"
        "  --tsv         tab-separated table with a header row, for plotting\n"
        "  --help, --version\n");
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static double get(const Record *r, const char *key) {
    return rec_has(r, key) ? rec_f64(r, key) : NAN;
}

// Read ITER_DIR/stats.safe (required) and ITER_DIR/control.safe (optional).
static Iter read_iter(const char *dir) {
    Iter it = {0};
    char path[4096];
    snprintf(path, sizeof path, "%s/stats.safe", dir);
    ShardReader *r = shard_open(path);
    Record rec;
    if (!shard_next(r, &rec)) die(EXIT_BADINPUT, "%s: no stats record", path);
    it.iteration = rec_i64(&rec, "iteration");
    it.reward_mean = rec_f64(&rec, "reward_mean");
    it.reward_std = get(&rec, "reward_std");
    it.kl = get(&rec, "kl");
    it.tau = get(&rec, "tau");
    it.gate = get(&rec, "gate");
    it.entropy = get(&rec, "entropy");
    it.length = get(&rec, "length_mean");
    it.eos_rate = get(&rec, "eos_rate");
    it.seconds = get(&rec, "seconds");
    it.penalty = get(&rec, "penalty");
    it.value_loss = get(&rec, "value_loss");
    it.clip_frac = get(&rec, "clip_frac");
    it.penalty_active = rec_has(&rec, "penalty_active") && rec_bool(&rec, "penalty_active");
    it.penalty_updates = rec_has(&rec, "penalty_active_updates") ? (int)rec_i64(&rec, "penalty_active_updates") : 0;
    shard_close(r);
    strcpy(it.phase, "-");
    it.next_tau = NAN;
    snprintf(path, sizeof path, "%s/control.safe", dir);
    if (exists(path)) {
        r = shard_open(path);
        if (shard_next(r, &rec)) {
            size_t n;
            const char *ph = rec_str(&rec, "phase", &n);
            snprintf(it.phase, sizeof it.phase, "%.*s", (int)n, ph);
            it.next_tau = rec_f64(&rec, "tau");
        }
        shard_close(r);
    }
    return it;
}

static void print_header(int tsv) {
    if (tsv) {
        printf("iteration\treward_mean\treward_std\tkl\ttau\tphase\tgate\tpenalty_active\tentropy\tlength\teos_rate\tvalue_loss\tseconds\n");
        return;
    }
    printf("%5s  %-16s %9s %6s %-9s %6s %4s %7s %6s %5s %6s\n", "iter", "reward mean±std", "kl", "tau",
           "phase", "gate", "pen", "entropy", "length", "eos", "sec");
}

static void print_line(const Iter *it, int tsv) {
    if (tsv) {
        printf("%ld\t%.6g\t%.6g\t%.6g\t%.6g\t%s\t%.6g\t%d\t%.6g\t%.6g\t%.6g\t%.6g\t%.6g\n", it->iteration,
               it->reward_mean, it->reward_std, it->kl, it->tau, it->phase, it->gate, it->penalty_active,
               it->entropy, it->length, it->eos_rate, it->value_loss, it->seconds);
        return;
    }
    char rw[32];
    snprintf(rw, sizeof rw, "%+.3f±%.3f", it->reward_mean, it->reward_std);
    printf("%5ld  %-16s %9.5f %6.3f %-9s %6.2f %4s %7.3f %6.1f %5.2f %6.1f\n", it->iteration, rw, it->kl,
           it->tau, it->phase, it->gate, it->penalty_active ? "yes" : "no", it->entropy, it->length,
           it->eos_rate, it->seconds);
    fflush(stdout);
}

// ---- the run ----

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int cmp_dbl(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// Iteration directories of RUN that have a stats.safe, in name order.
static Iter *read_run(const char *run, int *n) {
    DIR *d = opendir(run);
    if (!d) die(EXIT_BADINPUT, "%s: cannot open run directory", run);
    char **names = NULL;
    int cnt = 0, cap = 0;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s/stats.safe", run, e->d_name);
        if (!exists(path)) continue;
        if (cnt == cap) names = xrealloc(names, (cap = cap ? 2 * cap : 64) * sizeof(char *));
        names[cnt++] = xstrdup(e->d_name);
    }
    closedir(d);
    qsort(names, cnt, sizeof(char *), cmp_str);
    Iter *its = xmalloc((cnt ? cnt : 1) * sizeof(Iter));
    for (int i = 0; i < cnt; i++) {
        snprintf(path, sizeof path, "%s/%s", run, names[i]);
        its[i] = read_iter(path);
        free(names[i]);
    }
    free(names);
    *n = cnt;
    return its;
}

static double mean_of(const double *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    return n ? s / n : NAN;
}

static double std_of(const double *x, int n) {   // population std (ddof 0)
    if (n < 1) return NAN;
    double m = mean_of(x, n), s = 0;
    for (int i = 0; i < n; i++) s += (x[i] - m) * (x[i] - m);
    return sqrt(s / n);
}

static double percentile(const double *sorted, int n, double q) {
    if (n == 0) return NAN;
    double pos = q * (n - 1);
    int lo = (int)floor(pos), hi = lo + 1 < n ? lo + 1 : lo;
    return sorted[lo] + (pos - lo) * (sorted[hi] - sorted[lo]);
}

// Reward crashes (SAFE-SPEC §8): step t is an onset if r_t < MA50 - 3*SD50 of the trailing 50
// steps, or more than 15% below MA50; onsets within 20 steps of the previous one merge.
// Like a pandas rolling(50) window, a step is judged only once 50 earlier steps exist.
static int count_crashes(const double *r, int n) {
    int crashes = 0, last = -1000;
    for (int t = 50; t < n; t++) {
        double ma = mean_of(r + t - 50, 50), sd = std_of(r + t - 50, 50);
        int onset = r[t] < ma - 3 * sd || r[t] < ma - 0.15 * fabs(ma);
        if (onset && t - last > 20) crashes++;
        if (onset) last = t;
    }
    return crashes;
}

static void print_summary(const Iter *its, int n) {
    if (n == 0) {
        printf("no iterations with stats yet\n");
        return;
    }
    double *r = xmalloc(n * sizeof(double)), *kl = xmalloc(n * sizeof(double));
    double within = 0, rolling = 0, seconds = 0;
    int active = 0, updates = 0;
    for (int i = 0; i < n; i++) {
        r[i] = its[i].reward_mean;
        kl[i] = its[i].kl;
        within += its[i].reward_std;
        seconds += its[i].seconds;
        active += its[i].penalty_active;
        updates += its[i].penalty_updates;
        int lo = i - 49 < 0 ? 0 : i - 49;
        rolling += std_of(r + lo, i - lo + 1);
    }
    int tail = n < 200 ? n : 200, k3 = n < 3 ? n : 3;
    qsort(kl, n, sizeof(double), cmp_dbl);
    printf("summary over %d iterations (%.1f s in safe-update):\n", n, seconds);
    printf("  reward mean: all %.4f, last %d %.4f; first %d %.4f -> last %d %.4f\n", mean_of(r, n), tail,
           mean_of(r + n - tail, tail), k3, mean_of(r, k3), k3, mean_of(r + n - k3, k3));
    printf("  volatility: std of per-step mean %.4f, mean rolling-50 std %.4f, mean within-batch std %.4f\n",
           std_of(r, n), rolling / n, within / n);
    printf("  reward crashes: %d\n", count_crashes(r, n));
    printf("  KL (k1, rollout): p50 %.5f  p90 %.5f  p99 %.5f  max %.5f\n", percentile(kl, n, 0.5),
           percentile(kl, n, 0.9), percentile(kl, n, 0.99), kl[n - 1]);
    printf("  EPC penalty active: %d of %d iterations (%d optimiser steps)\n", active, n, updates);
    free(r);
    free(kl);
}

int main(int argc, char **argv) {
    safe_progname = "safe-report";
    enum { O_LINE = 256, O_SUMMARY, O_TSV, O_HEADER, O_HELP, O_VERSION };
    static const struct option longs[] = {{"line", 0, 0, O_LINE}, {"summary", 0, 0, O_SUMMARY},
                                          {"tsv", 0, 0, O_TSV}, {"header", 0, 0, O_HEADER}, {"help", 0, 0, O_HELP},
                                          {"version", 0, 0, O_VERSION}, {0, 0, 0, 0}};
    int line = 0, summary = 0, tsv = 0, c;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case O_LINE: line = 1; break;
        case O_SUMMARY: summary = 1; break;
        case O_TSV: tsv = 1; break;
        case O_HEADER: print_header(tsv); return EXIT_OK;
        case O_HELP: usage(stdout); return EXIT_OK;
        case O_VERSION: safe_print_version("safe-report"); return EXIT_OK;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *dir = argv[optind];
    ranks_require_one("start it once, without a launcher (only safe-critic and safe-update run as several ranks)");
    if (line) {
        Iter it = read_iter(dir);
        print_line(&it, tsv);
        return EXIT_OK;
    }
    int n;
    Iter *its = read_run(dir, &n);
    if (!summary) {
        print_header(tsv);
        for (int i = 0; i < n; i++) print_line(&its[i], tsv);
    }
    if (!tsv) print_summary(its, n);
    free(its);
    return EXIT_OK;
}
