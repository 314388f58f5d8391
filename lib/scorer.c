// scorer.c — reward scorers behind one interface: VADER and an external command (coprocess
// speaking JSON lines). See scorer.h for the protocol and the failure contract.
#include "scorer.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>  // strncasecmp
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"  // die, warn, xmalloc, now_seconds, exit codes
#include "vader.h"   // vader_load, vader_score

extern char **environ;

struct Scorer {
    const ScorerOps *ops;
    void *impl;
    char *desc;
};

typedef struct {
    Vader *vader;
    ScoreField field;
    char *lexicon, *emoji;
} VaderState;

typedef struct {
    char *cmd;
    pid_t pid;          // 0 once reaped
    int status;         // wait status once reaped
    int to_fd, from_fd; // our ends: requests out, answers in (both non-blocking)
    double timeout;
    int batch;
    char *in;           // bytes read from the command, not yet consumed
    size_t in_len, in_cap;
    int eof;
    char *out;          // encoded requests of the current batch
    size_t out_cap;
} Exec;

static const ScorerOps VADER_OPS, EXEC_OPS;

// ---- components ---------------------------------------------------------------------------

void components_clear(ScoreComponents *c) {
    for (int i = 0; i < c->n; i++) free(c->name[i]);
    c->n = 0;
}

void components_add(ScoreComponents *c, const char *name, double value) {
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 8;
        c->name = xrealloc(c->name, (size_t)c->cap * sizeof *c->name);
        c->value = xrealloc(c->value, (size_t)c->cap * sizeof *c->value);
    }
    c->name[c->n] = xstrdup(name);
    c->value[c->n++] = value;
}

void components_free(ScoreComponents *c) {
    components_clear(c);
    free(c->name);
    free(c->value);
    memset(c, 0, sizeof *c);
}

// ---- common -------------------------------------------------------------------------------

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

Scorer *scorer_new(const ScorerOps *ops, void *impl, const char *desc) {
    Scorer *s = xcalloc(1, sizeof *s);
    s->ops = ops;
    s->impl = impl;
    s->desc = xstrdup(desc);
    return s;
}

const char *scorer_describe(const Scorer *s) { return s->desc; }
const char *scorer_kind(const Scorer *s) { return s->ops->kind; }
int scorer_batch(const Scorer *s) { return s->ops->batch ? s->ops->batch(s->impl) : 64; }

void scorer_score_batch(Scorer *s, const ScoreRequest *req, int n, double *reward, ScoreComponents *comp) {
    s->ops->score_batch(s->impl, req, n, reward, comp);
}

double scorer_score(Scorer *s, const char *id, const char *prompt, const char *response,
                    ScoreComponents *out) {
    ScoreRequest r = {.id = id, .prompt = prompt, .prompt_len = prompt ? strlen(prompt) : 0,
                      .response = response, .response_len = response ? strlen(response) : 0};
    double reward;
    scorer_score_batch(s, &r, 1, &reward, out);
    return reward;
}

void scorer_free(Scorer *s) {
    if (!s) return;
    s->ops->free(s->impl);
    free(s->desc);
    free(s);
}

// ---- VADER --------------------------------------------------------------------------------

static void vader_describe(Scorer *s) {
    VaderState *v = s->impl;
    char *d = xasprintf("vader lexicon=%s entries=%zu field=%s%s%s", v->lexicon,
                        vader_lexicon_size(v->vader),
                        v->field == SCORE_RESPONSE ? "response" : "prompt+response",
                        v->emoji ? " emoji=" : "", v->emoji ? v->emoji : "");
    free(s->desc);
    s->desc = d;
}

Scorer *scorer_vader(const char *lexicon_path) {
    VaderState *v = xcalloc(1, sizeof *v);
    v->vader = vader_load(lexicon_path);
    v->lexicon = xstrdup(lexicon_path);
    v->field = SCORE_RESPONSE;
    Scorer *s = scorer_new(&VADER_OPS, v, "vader");
    vader_describe(s);
    return s;
}

void scorer_set_field(Scorer *s, ScoreField f) {
    if (s->ops != &VADER_OPS) return;
    ((VaderState *)s->impl)->field = f;
    vader_describe(s);
}

void scorer_vader_emoji(Scorer *s, const char *emoji_path) {
    if (s->ops != &VADER_OPS) return;
    VaderState *v = s->impl;
    vader_load_emoji(v->vader, emoji_path);
    free(v->emoji);
    v->emoji = xstrdup(emoji_path);
    vader_describe(s);
}

static int is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static double vader_one(VaderState *s, const ScoreRequest *r, ScoreComponents *comp) {
    VaderScores v;
    if (s->field == SCORE_RESPONSE || r->prompt_len == 0) {
        vader_score(s->vader, r->response, r->response_len, &v);
    } else {
        // prompt + response; a space between them when neither side has whitespace there
        int gap = r->response_len && !is_space(r->prompt[r->prompt_len - 1]) && !is_space(r->response[0]);
        size_t n = r->prompt_len + (size_t)gap + r->response_len;
        char *t = xmalloc(n + 1);
        memcpy(t, r->prompt, r->prompt_len);
        if (gap) t[r->prompt_len] = ' ';
        memcpy(t + r->prompt_len + gap, r->response, r->response_len);
        vader_score(s->vader, t, n, &v);
        free(t);
    }
    if (comp) {
        components_clear(comp);
        components_add(comp, "compound", v.compound);
        components_add(comp, "pos", v.pos);
        components_add(comp, "neg", v.neg);
        components_add(comp, "neu", v.neu);
    }
    return v.compound;
}

static void vader_batch(void *impl, const ScoreRequest *req, int n, double *reward, ScoreComponents *comp) {
    for (int i = 0; i < n; i++) reward[i] = vader_one(impl, &req[i], comp ? &comp[i] : NULL);
}

static void vader_state_free(void *impl) {
    VaderState *v = impl;
    vader_free(v->vader);
    free(v->lexicon);
    free(v->emoji);
    free(v);
}

static const ScorerOps VADER_OPS = {"vader", vader_batch, NULL, vader_state_free};

// ---- exec: process handling ---------------------------------------------------------------

// Move a pipe end above the standard descriptors, so the dup2 onto 0/1 in the child is clean
// even when our own stdin or stdout was closed.
static int fd_above_2(int fd) {
    if (fd > 2) return fd;
    int g = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (g < 0) die(EXIT_RUNTIME, "fcntl: %s", strerror(errno));
    close(fd);
    return g;
}

Scorer *scorer_exec(const char *cmd) {
    Exec *s = xcalloc(1, sizeof *s);
    s->cmd = xstrdup(cmd);
    s->timeout = SCORER_DEFAULT_TIMEOUT;
    s->batch = SCORER_DEFAULT_BATCH;

    int to[2], from[2];
    if (pipe2(to, O_CLOEXEC) || pipe2(from, O_CLOEXEC))
        die(EXIT_RUNTIME, "scorer command '%s': pipe: %s", cmd, strerror(errno));
    for (int i = 0; i < 2; i++) to[i] = fd_above_2(to[i]), from[i] = fd_above_2(from[i]);

    // environment: ours plus PYTHONUNBUFFERED=1 (Python scorers then answer line by line)
    size_t ne = 0;
    while (environ[ne]) ne++;
    char **envp = xmalloc((ne + 2) * sizeof *envp);
    size_t k = 0;
    for (size_t i = 0; i < ne; i++)
        if (strncmp(environ[i], "PYTHONUNBUFFERED=", 17) != 0) envp[k++] = environ[i];
    envp[k++] = "PYTHONUNBUFFERED=1";
    envp[k] = NULL;

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, to[0], 0);
    posix_spawn_file_actions_adddup2(&fa, from[1], 1);
    char *argv[] = {"sh", "-c", s->cmd, NULL};
    int err = posix_spawn(&s->pid, "/bin/sh", &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    free(envp);
    if (err) die(EXIT_RUNTIME, "scorer command '%s': cannot start /bin/sh: %s", cmd, strerror(err));
    close(to[0]);
    close(from[1]);
    s->to_fd = to[1];
    s->from_fd = from[0];
    fcntl(s->to_fd, F_SETFL, fcntl(s->to_fd, F_GETFL) | O_NONBLOCK);
    fcntl(s->from_fd, F_SETFL, fcntl(s->from_fd, F_GETFL) | O_NONBLOCK);
    char *desc = xasprintf("exec cmd=%s", cmd);
    Scorer *sc = scorer_new(&EXEC_OPS, s, desc);
    free(desc);
    return sc;
}

void scorer_set_timeout(Scorer *sc, double seconds) {
    if (sc->ops != &EXEC_OPS) return;
    Exec *s = sc->impl;
    if (!(seconds > 0)) die(EXIT_USAGE, "scorer timeout must be > 0, got %g", seconds);
    s->timeout = seconds;
}

void scorer_set_batch(Scorer *sc, int k) {
    if (sc->ops != &EXEC_OPS) return;
    Exec *s = sc->impl;
    if (k < 1) die(EXIT_USAGE, "scorer batch must be >= 1, got %d", k);
    s->batch = k;
}

// Wait up to `seconds` for the command to exit; 1 when reaped (s->status set).
static int reap(Exec *s, double seconds) {
    if (!s->pid) return 1;
    double t_end = now_seconds() + seconds;
    for (;;) {
        pid_t r = waitpid(s->pid, &s->status, WNOHANG);
        if (r == s->pid || (r < 0 && errno == ECHILD)) { s->pid = 0; return 1; }
        if (now_seconds() >= t_end) return 0;
        usleep(2000);
    }
}

static void kill_and_reap(Exec *s) {
    if (!s->pid) return;
    if (reap(s, 0)) return;
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &s->status, 0);
    s->pid = 0;
}

// How the command ended, for messages: "exited with status 1", "was killed by signal 9".
static const char *exit_words(int status, char *buf, size_t n) {
    if (WIFEXITED(status))
        snprintf(buf, n, "exited with status %d%s", WEXITSTATUS(status),
                 WEXITSTATUS(status) == 127 ? " (command not found?)" : "");
    else if (WIFSIGNALED(status))
        snprintf(buf, n, "was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        snprintf(buf, n, "ended (wait status %d)", status);
    return buf;
}

// The command is gone (EOF on its output, or EPIPE on its input) before answering `id`.
static void exec_dead(Exec *s, const char *id) __attribute__((noreturn));
static void exec_dead(Exec *s, const char *id) {
    char how[128];
    if (reap(s, 2.0))
        die(EXIT_RUNTIME, "scorer command '%s' %s before answering record '%s'", s->cmd,
            exit_words(s->status, how, sizeof how), id);
    kill_and_reap(s);
    die(EXIT_RUNTIME, "scorer command '%s' closed its output before answering record '%s'",
        s->cmd, id);
}

// write() with SIGPIPE blocked: a dead command must give EPIPE here, not kill us.
static ssize_t write_nosigpipe(int fd, const void *buf, size_t n) {
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    ssize_t w = write(fd, buf, n);
    int err = errno;
    if (w < 0 && err == EPIPE && !sigismember(&old, SIGPIPE)) {
        struct timespec zero = {0, 0};
        sigtimedwait(&set, NULL, &zero);  // consume the pending SIGPIPE
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return w;
}

// ---- exec: encoding requests, parsing answers ---------------------------------------------

// Copy of s[0..n) with each byte that is not part of valid UTF-8 replaced by U+FFFD.
static char *utf8_clean(const char *s, size_t n, size_t *out_n) {
    const unsigned char *p = (const unsigned char *)s;
    char *o = xmalloc(3 * n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        int ok = len > 0 && i + len <= n;
        unsigned v = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
        for (size_t j = 1; ok && j < len; j++) {
            ok = (p[i + j] & 0xC0) == 0x80;
            v = (v << 6) | (p[i + j] & 0x3F);
        }
        if (ok && len > 1) {
            static const unsigned min[5] = {0, 0, 0x80, 0x800, 0x10000};
            ok = v >= min[len] && v <= 0x10FFFF && !(v >= 0xD800 && v <= 0xDFFF);
        }
        if (ok) {
            memcpy(o + k, p + i, len);
            k += len;
            i += len;
        } else {
            memcpy(o + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i += 1;
        }
    }
    o[k] = '\0';
    *out_n = k;
    return o;
}

static json_t *json_text(const char *s, size_t n) {
    size_t m;
    char *c = utf8_clean(s, n, &m);
    json_t *j = json_stringn(c, m);
    free(c);
    if (!j) die(EXIT_RUNTIME, "jansson: cannot encode a string of %zu bytes", n);
    return j;
}

// Append one request line to s->out at *len.
static void encode_request(Exec *s, const ScoreRequest *r, size_t *len) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_text(r->id, strlen(r->id)));
    json_object_set_new(o, "prompt", json_text(r->prompt ? r->prompt : "", r->prompt ? r->prompt_len : 0));
    json_object_set_new(o, "response", json_text(r->response ? r->response : "", r->response ? r->response_len : 0));
    char *line = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!line) die(EXIT_RUNTIME, "jansson: cannot encode the request for record '%s'", r->id);
    size_t n = strlen(line);
    if (*len + n + 2 > s->out_cap) {
        s->out_cap = 2 * (*len + n + 2);
        s->out = xrealloc(s->out, s->out_cap);
    }
    memcpy(s->out + *len, line, n);
    s->out[*len + n] = '\n';
    *len += n + 1;
    free(line);
}

// Non-finite numbers in an answer. JSON has no tokens for them, so scorers write them the way
// their language prints floats: NaN, Infinity, -Infinity (Python's json module, JavaScript),
// nan, -nan, inf, -inf (C's printf, numpy, Rust), Inf, -Inf (R, Julia). The rule: outside
// string literals, an optional sign followed by nan, inf or infinity in any case is a
// non-finite number (NaN whatever its sign), and so is a JSON number beyond the range of a
// double (1e999, -1e999: ±Infinity, as Python's json and strtod read them; jansson refuses
// them). Each becomes a marker string (parsed with JSON_ALLOW_NUL) that json_num() maps back.
// Strings are never numbers: "NaN" in quotes stays a string.
// (Honest note: a scorer that sends the marker string "\u0000safe:nan" itself gets a NaN.)
#define NONFINITE_MARK "\\u0000safe:"   // + "nan", "+inf" or "-inf", inside quotes
static const char *const NONFINITE_NAME[3] = {"nan", "+inf", "-inf"};
enum { NF_NONE = -1, NF_NAN = 0, NF_PINF = 1, NF_NINF = 2 };

static int is_word_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

// The word w[0..n) as a non-finite value given the sign before it ('+', '-' or 0).
static int nonfinite_word(const char *w, size_t n, char sign) {
    if (n == 3 && strncasecmp(w, "nan", 3) == 0) return NF_NAN;
    if ((n == 3 && strncasecmp(w, "inf", 3) == 0) || (n == 8 && strncasecmp(w, "infinity", 8) == 0))
        return sign == '-' ? NF_NINF : NF_PINF;
    return NF_NONE;
}

// Length of the JSON number at s[0..n): -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?; 0 if none.
static size_t json_number_len(const char *s, size_t n) {
    size_t i = 0;
    if (i < n && s[i] == '-') i++;
    if (i < n && s[i] == '0') i++;
    else if (i < n && s[i] >= '1' && s[i] <= '9') while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    else return 0;
    if (i + 1 < n && s[i] == '.' && s[i + 1] >= '0' && s[i + 1] <= '9') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        size_t j = i + 1;
        if (j < n && (s[j] == '+' || s[j] == '-')) j++;
        if (j < n && s[j] >= '0' && s[j] <= '9') {
            while (j < n && s[j] >= '0' && s[j] <= '9') j++;
            i = j;
        }
    }
    return i;
}

// s[0..n) with the non-finite spellings above replaced by markers; NUL-terminated, malloc'ed.
static char *nonfinite_tokens(const char *s, size_t n) {
    size_t cap = 2 * n + 64, k = 0;
    char *o = xmalloc(cap);
    int in_str = 0;
    for (size_t i = 0; i < n;) {
        if (cap - k < 64) o = xrealloc(o, cap = 2 * cap);
        char c = s[i];
        if (in_str) {
            o[k++] = c;
            if (c == '\\' && i + 1 < n) o[k++] = s[++i];
            else if (c == '"') in_str = 0;
            i++;
            continue;
        }
        if (c == '"') { in_str = 1; o[k++] = c; i++; continue; }
        char sign = c == '+' || c == '-' ? c : 0;
        size_t j = i + (sign != 0);
        int nf = NF_NONE;
        size_t len = 0;   // bytes of s taken by the value at i
        if (j < n && is_word_char(s[j]) && !(s[j] >= '0' && s[j] <= '9')) {
            // a word: the non-finite spellings, or something jansson judges (true, garbage)
            size_t e = j;
            while (e < n && is_word_char(s[e])) e++;
            nf = nonfinite_word(s + j, e - j, sign);
            len = e - i;
        } else if (sign != '+' && (len = json_number_len(s + i, n - i)) > 0 &&
                   !(i + len < n && (is_word_char(s[i + len]) || s[i + len] == '.'))) {
            // a JSON number: overflow to ±HUGE_VAL is the only way strtod gives an infinity here
            char buf[64], *num = len < sizeof buf ? buf : xmalloc(len + 1);
            memcpy(num, s + i, len);
            num[len] = '\0';
            double x = strtod(num, NULL);
            if (num != buf) free(num);
            if (isinf(x)) nf = x < 0 ? NF_NINF : NF_PINF;
        } else {
            len = 1;
        }
        if (nf != NF_NONE) {
            k += (size_t)snprintf(o + k, cap - k, "\"%s%s\"", NONFINITE_MARK, NONFINITE_NAME[nf]);
        } else {
            if (cap - k < len + 64) o = xrealloc(o, cap = 2 * cap + len);
            memcpy(o + k, s + i, len);
            k += len;
        }
        i += len;
    }
    o[k] = '\0';
    return o;
}

// A JSON number, or one of the non-finite markers. 0 when it is neither.
static int json_num(const json_t *v, double *x) {
    if (json_is_number(v)) { *x = json_number_value(v); return 1; }
    static const size_t mark = 6;   // "\0safe:"
    if (json_is_string(v) && json_string_length(v) > mark &&
        memcmp(json_string_value(v), "\0safe:", mark) == 0) {
        const char *t = json_string_value(v) + mark;
        if (strcmp(t, "nan") == 0) { *x = NAN; return 1; }
        if (strcmp(t, "+inf") == 0) { *x = INFINITY; return 1; }
        if (strcmp(t, "-inf") == 0) { *x = -INFINITY; return 1; }
    }
    return 0;
}

static void exec_garbage(Exec *s, const char *id, const char *why, const char *line, size_t n)
    __attribute__((noreturn));
static void exec_garbage(Exec *s, const char *id, const char *why, const char *line, size_t n) {
    kill_and_reap(s);
    die(EXIT_BADINPUT, "scorer command '%s' answered record '%s' with garbage (%s): '%.*s'%s\n"
        "  hint: answer each request with one line: a number, or {\"reward\": x, ...}",
        s->cmd, id, why, (int)(n > 200 ? 200 : n), line, n > 200 ? "..." : "");
}

// Parse one answer line (without its '\n').
static double parse_answer(Exec *s, const char *id, const char *line, size_t n, ScoreComponents *comp) {
    while (n && is_space(line[n - 1])) n--;  // tolerate "\r\n" and trailing blanks
    char *fixed = nonfinite_tokens(line, n);
    json_error_t err;
    // integers as reals: a reward of 20 digits is a number, not jansson's "too big integer"
    json_t *j = json_loads(fixed, JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &err);
    free(fixed);
    if (!j) {
        char why[256];
        snprintf(why, sizeof why, "not JSON: %s", err.text);
        exec_garbage(s, id, why, line, n);
    }
    double reward;
    if (comp) components_clear(comp);
    if (json_num(j, &reward)) {
        // a bare number
    } else if (json_is_object(j)) {
        // answers come in request order; an answer that names its record must name this one
        json_t *aid = json_object_get(j, "id");
        if (aid && (!json_is_string(aid) || strcmp(json_string_value(aid), id) != 0)) {
            char why[512];
            snprintf(why, sizeof why, "answer names record '%.200s' (answers must come one per request, in order)",
                     json_is_string(aid) ? json_string_value(aid) : "?");
            json_decref(j);
            exec_garbage(s, id, why, line, n);
        }
        json_t *r = json_object_get(j, "reward");
        if (!r) { json_decref(j); exec_garbage(s, id, "no \"reward\" key", line, n); }
        if (!json_num(r, &reward)) { json_decref(j); exec_garbage(s, id, "\"reward\" is not a number", line, n); }
        const char *key;
        json_t *v;
        double x;
        json_object_foreach(j, key, v) {
            if (strcmp(key, "reward") != 0 && comp && json_num(v, &x)) components_add(comp, key, x);
        }
    } else {
        json_decref(j);
        exec_garbage(s, id, "neither a number nor an object", line, n);
    }
    json_decref(j);
    return reward;
}

// ---- exec: one batch in flight ------------------------------------------------------------

// Write the k requests while reading answers as they come: the command may answer before it
// has read everything, and both pipes have bounded buffers, so neither side may block.
static void exec_chunk(Exec *s, const ScoreRequest *req, int k, double *reward, ScoreComponents *comp) {
    size_t out_len = 0, off = 0;
    for (int i = 0; i < k; i++) encode_request(s, &req[i], &out_len);
    int answered = 0;
    double deadline = now_seconds() + s->timeout;
    while (answered < k) {
        // complete lines already read
        char *nl;
        while (answered < k && s->in_len && (nl = memchr(s->in, '\n', s->in_len))) {
            size_t n = (size_t)(nl - s->in);
            reward[answered] = parse_answer(s, req[answered].id, s->in, n, comp ? &comp[answered] : NULL);
            s->in_len -= n + 1;
            memmove(s->in, nl + 1, s->in_len);
            answered++;
            deadline = now_seconds() + s->timeout;
        }
        if (answered == k) {
            // every request of the chunk is answered: anything more is a surplus answer
            size_t i = 0;
            while (i < s->in_len && is_space(s->in[i])) i++;
            if (i < s->in_len)
                exec_garbage(s, req[k - 1].id, "more answer lines than requests (one line per request)",
                             s->in + i, strcspn(s->in + i, "\n") < s->in_len - i ? strcspn(s->in + i, "\n") : s->in_len - i);
            break;
        }
        if (s->eof) exec_dead(s, req[answered].id);
        double left = deadline - now_seconds();
        if (left <= 0) {
            kill_and_reap(s);
            die(EXIT_RUNTIME, "scorer command '%s' gave no answer for record '%s' within %g s "
                "(--exec-timeout); killed it", s->cmd, req[answered].id, s->timeout);
        }
        struct pollfd p[2] = {{s->from_fd, POLLIN, 0}, {s->to_fd, POLLOUT, 0}};
        int np = off < out_len ? 2 : 1;
        int r = poll(p, (nfds_t)np, left > 1000 ? 1000000 : (int)ceil(left * 1000));
        if (r < 0) {
            if (errno == EINTR) continue;
            die(EXIT_RUNTIME, "scorer command '%s': poll: %s", s->cmd, strerror(errno));
        }
        if (p[0].revents) {
            if (s->in_cap - s->in_len < 65536) {
                s->in_cap = 2 * s->in_cap + 65536;
                s->in = xrealloc(s->in, s->in_cap);
            }
            ssize_t got = read(s->from_fd, s->in + s->in_len, s->in_cap - s->in_len);
            if (got > 0) s->in_len += (size_t)got;
            else if (got == 0) s->eof = 1;
            else if (errno != EAGAIN && errno != EINTR) s->eof = 1;
        }
        if (np == 2 && p[1].revents) {
            ssize_t w = write_nosigpipe(s->to_fd, s->out + off, out_len - off);
            if (w > 0) off += (size_t)w;
            else if (w < 0 && errno == EPIPE) {
                // it stopped reading: collect what it did answer, then report the rest
                off = out_len;
            } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                die(EXIT_RUNTIME, "scorer command '%s': write: %s", s->cmd, strerror(errno));
            }
        }
    }
}

static void exec_batch(void *impl, const ScoreRequest *req, int n, double *reward, ScoreComponents *comp) {
    Exec *s = impl;
    for (int b = 0; b < n; b += s->batch) {
        int k = n - b < s->batch ? n - b : s->batch;
        exec_chunk(s, req + b, k, reward + b, comp ? comp + b : NULL);
    }
}

static int exec_batch_size(const void *impl) { return ((const Exec *)impl)->batch; }

// After the last request: read what the command still prints until it closes its output;
// anything but blanks is an answer without a request.
static void exec_drain(Exec *s) {
    double deadline = now_seconds() + (s->timeout < 10 ? s->timeout : 10);
    while (!s->eof && now_seconds() < deadline) {
        struct pollfd p = {s->from_fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0) continue;
        if (s->in_cap - s->in_len < 4096) s->in = xrealloc(s->in, s->in_cap = 2 * s->in_cap + 4096);
        ssize_t got = read(s->from_fd, s->in + s->in_len, s->in_cap - s->in_len);
        if (got > 0) s->in_len += (size_t)got;
        else if (got == 0 || (errno != EAGAIN && errno != EINTR)) s->eof = 1;
    }
    size_t i = 0;
    while (i < s->in_len && is_space(s->in[i])) i++;
    if (i < s->in_len) {
        size_t n = strcspn(s->in + i, "\n");
        if (n > s->in_len - i) n = s->in_len - i;
        exec_garbage(s, "(after the last record)", "more answer lines than requests (one line per request)",
                     s->in + i, n);
    }
    s->in_len = 0;
}

static void exec_free(void *impl) {
    Exec *s = impl;
    close(s->to_fd);  // EOF on its stdin: a well-behaved scorer exits now
    exec_drain(s);
    if (!reap(s, s->timeout < 10 ? s->timeout : 10)) {
        warn("scorer command '%s' did not exit after its input closed; killed it", s->cmd);
        kill_and_reap(s);
    } else if (!(WIFEXITED(s->status) && WEXITSTATUS(s->status) == 0)) {
        char how[128];
        warn("scorer command '%s' %s after answering", s->cmd, exit_words(s->status, how, sizeof how));
    }
    if (s->in_len) warn("scorer command '%s' sent %zu bytes after its last answer", s->cmd, s->in_len);
    close(s->from_fd);
    free(s->cmd);
    free(s->in);
    free(s->out);
    free(s);
}

static const ScorerOps EXEC_OPS = {"exec", exec_batch, exec_batch_size, exec_free};
