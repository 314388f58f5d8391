// progress.c — see progress.h.
#include "progress.h"
#include "common.h"   // safe_progname, now_seconds, xcalloc

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct Progress {
    char what[64], unit[24], xunit[24];
    long total, done;
    double extra;
    int tty, quiet, printed;
    double t0, last, interval;
};

Progress *progress_start(const char *what, long total, const char *unit, int quiet) {
    Progress *p = xcalloc(1, sizeof(Progress));
    snprintf(p->what, sizeof p->what, "%s", what);
    snprintf(p->unit, sizeof p->unit, "%s", unit);
    p->total = total;
    p->quiet = quiet;
    p->tty = isatty(2);
    const char *iv = getenv("SAFE_PROGRESS_INTERVAL");
    p->interval = p->tty ? 0.2 : (iv && *iv ? atof(iv) : 10.0);
    p->t0 = p->last = now_seconds();
    return p;
}

void progress_extra_unit(Progress *p, const char *unit) {
    if (p) snprintf(p->xunit, sizeof p->xunit, "%s", unit);
}

// "1.23k" style, for rates and counts in the bar.
static void human(char *buf, size_t n, double v) {
    const char *suf = "";
    if (v >= 1e9) { v /= 1e9; suf = "G"; }
    else if (v >= 1e6) { v /= 1e6; suf = "M"; }
    else if (v >= 1e4) { v /= 1e3; suf = "k"; }
    snprintf(buf, n, v >= 100 || *suf == 0 ? "%.0f%s" : "%.3g%s", v, suf);
}

static void hms(char *buf, size_t n, double s) {
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

// One status text: "1234/5000 prompts (24%), 321 prompts/s, 12.3k tok/s, ETA 0:12".
static void status(Progress *p, double now, char *buf, size_t n) {
    double dt = now - p->t0 > 1e-9 ? now - p->t0 : 1e-9;
    char rate[32], xrate[32], eta[32] = "";
    human(rate, sizeof rate, (double)p->done / dt);
    human(xrate, sizeof xrate, p->extra / dt);
    size_t len = 0;
    if (p->total >= 0) {
        len += (size_t)snprintf(buf + len, n - len, "%ld/%ld %s (%d%%)", p->done, p->total, p->unit,
                                p->total ? (int)(100.0 * (double)p->done / (double)p->total) : 100);
        if (p->done > 0 && p->done < p->total) hms(eta, sizeof eta, dt * (double)(p->total - p->done) / (double)p->done);
    } else {
        len += (size_t)snprintf(buf + len, n - len, "%ld %s", p->done, p->unit);
    }
    len += (size_t)snprintf(buf + len, n - len, ", %s %s/s", rate, p->unit);
    if (p->xunit[0] && len < n) len += (size_t)snprintf(buf + len, n - len, ", %s %s/s", xrate, p->xunit);
    if (eta[0] && len < n) snprintf(buf + len, n - len, ", ETA %s", eta);
}

static void draw(Progress *p, double now, int final) {
    char text[256];
    status(p, now, text, sizeof text);
    if (p->tty) {
        char bar[32] = "";
        if (p->total > 0) {
            int w = 20, k = (int)(w * (double)p->done / (double)p->total);
            if (k > w) k = w;
            bar[0] = '[';
            for (int i = 0; i < w; i++) bar[1 + i] = i < k ? '=' : ' ';
            bar[w + 1] = ']';
            bar[w + 2] = ' ';
            bar[w + 3] = 0;
        }
        fprintf(stderr, "\r%s: %s %s%s\033[K%s", safe_progname, p->what, bar, text, final ? "\n" : "");
    } else {
        char el[32];
        hms(el, sizeof el, now - p->t0);
        fprintf(stderr, "%s: %s: %s%s, elapsed %s\n", safe_progname, p->what, final ? "done: " : "", text, el);
    }
    fflush(stderr);
    p->printed = 1;
}

void progress_update(Progress *p, long done, double extra) {
    if (!p) return;
    p->done = done;
    p->extra = extra;
    if (p->quiet) return;
    double now = now_seconds();
    if (now - p->last < p->interval) return;
    p->last = now;
    draw(p, now, 0);
}

void progress_end(Progress *p) {
    if (!p) return;
    // a final line only where progress was already shown: short runs stay silent
    if (!p->quiet && p->printed) draw(p, now_seconds(), 1);
    free(p);
}
