// control.c — PID-adapted KL threshold and phase detector (SAFE-SPEC §6).
#include "control.h"   // ControlParams, ControlState, control_update, control_phase

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *phase_names[PHASE_COUNT] = {"WARMUP", "CLIMBING", "CONVERGED", "PLATEAU"};

const char *phase_name(Phase ph) {
    return (int)ph >= 0 && (int)ph < PHASE_COUNT ? phase_names[ph] : "UNKNOWN";
}

int phase_parse(const char *name) {
    for (int i = 0; i < PHASE_COUNT; i++)
        if (strcmp(name, phase_names[i]) == 0) return i;
    return -1;
}

void control_params_default(ControlParams *p) {
    memset(p, 0, sizeof *p);
    p->kp = 0.3;
    p->ki = 0.01;
    p->kd = 0.05;
    p->v_target = 0.001;
    p->tau_base = 0.3;
    p->tau_min = 0.1;
    p->tau_max = 0.6;
    p->ema = 0.95;
    p->window = 50;
    p->climb_threshold = 0.01;
    p->converged_std = 0.02;
    p->converged_reward = 0.7;
    p->phase_factor[PHASE_WARMUP] = 1.5;
    p->phase_factor[PHASE_CLIMBING] = 1.2;
    p->phase_factor[PHASE_CONVERGED] = 1.0;
    p->phase_factor[PHASE_PLATEAU] = 0.8;
    p->integral_clip = 1.0;
}

int control_params_check(const ControlParams *p, char *why, size_t why_len) {
#define REFUSE(...) do { snprintf(why, why_len, __VA_ARGS__); return -1; } while (0)
#define POSITIVE(x, opt) \
    if (!(isfinite(x) && (x) > 0)) REFUSE(opt " must be a finite number > 0 (got %g)", (double)(x))
    POSITIVE(p->kp, "--kp");
    POSITIVE(p->ki, "--ki");
    POSITIVE(p->kd, "--kd");
    POSITIVE(p->v_target, "--v-target");
    POSITIVE(p->tau_base, "--tau-base");
    POSITIVE(p->tau_min, "--tau-min");
    POSITIVE(p->tau_max, "--tau-max");
    POSITIVE(p->integral_clip, "--integral-clip");
    POSITIVE(p->converged_std, "--converged-std");
    for (int i = 0; i < PHASE_COUNT; i++)
        if (!(isfinite(p->phase_factor[i]) && p->phase_factor[i] > 0))
            REFUSE("--phase-factors: the %s factor must be a finite number > 0 (got %g)",
                   phase_names[i], p->phase_factor[i]);
    if (p->tau_min > p->tau_max)
        REFUSE("--tau-min (%g) must not exceed --tau-max (%g)", p->tau_min, p->tau_max);
    if (p->tau_base < p->tau_min || p->tau_base > p->tau_max)
        REFUSE("--tau-base (%g) must lie within --tau-min (%g) and --tau-max (%g)", p->tau_base, p->tau_min, p->tau_max);
    if (!(p->ema > 0 && p->ema < 1)) REFUSE("--ema must lie strictly between 0 and 1 (got %g)", p->ema);
    if (p->window < 1 || p->window > CONTROL_WINDOW_MAX)
        REFUSE("--window must be in 1..%d (got %d)", CONTROL_WINDOW_MAX, p->window);
    if (!(isfinite(p->climb_threshold) && p->climb_threshold >= 0))
        REFUSE("--climb-threshold must be a finite number >= 0 (got %g)", p->climb_threshold);
    if (!isfinite(p->converged_reward))
        REFUSE("--converged-reward must be finite (got %g)", p->converged_reward);
#undef POSITIVE
#undef REFUSE
    return 0;
}

static double clampd(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }

void control_init(ControlState *s, const ControlParams *p) {
    memset(s, 0, sizeof *s);
    s->phase = PHASE_WARMUP;
    s->phi = p->phase_factor[PHASE_WARMUP];
    // what the first control_update returns: PID 0, phase WARMUP
    s->tau = clampd(p->tau_base * s->phi, p->tau_min, p->tau_max);
}

void control_history_push(ControlState *s, double r) {
    if (s->hist_len == CONTROL_HIST_CAP) {   // drop the oldest
        memmove(s->hist, s->hist + 1, (CONTROL_HIST_CAP - 1) * sizeof s->hist[0]);
        s->hist_len--;
    }
    s->hist[s->hist_len++] = r;
    s->hist_count++;
}

// x (n): mean and population std (ddof 0)
static void mean_std(const double *x, int n, double *mean, double *std) {
    double m = 0.0, ss = 0.0;
    for (int i = 0; i < n; i++) m += x[i];
    m /= n;
    for (int i = 0; i < n; i++) ss += (x[i] - m) * (x[i] - m);
    *mean = m;
    *std = sqrt(ss / n);
}

// hist (n), oldest first
Phase control_phase(const double *hist, int n, const ControlParams *p) {
    int W = p->window;
    if (n < W) return PHASE_WARMUP;
    double mr, sr, mo, so;
    mean_std(hist + n - W, W, &mr, &sr);                 // R: the last W
    if (n >= 2 * W) mean_std(hist + n - 2 * W, W, &mo, &so);   // O: the W before
    else { mo = mr; so = sr; }                           // too short: O = R
    (void)so;
    if (mr > mo + p->climb_threshold) return PHASE_CLIMBING;
    if (sr < p->converged_std && mr > p->converged_reward) return PHASE_CONVERGED;
    return PHASE_PLATEAU;
}

double control_update(ControlState *s, const ControlParams *p, double reward_mean) {
    control_history_push(s, reward_mean);
    if (s->calls == 0) {
        // first call: the EMA starts at r̄, no velocity yet, PID 0; I and err stay 0
        s->reward_ema = reward_mean;
        s->last_velocity = 0.0;
        s->pid = s->pid_p = s->pid_i = s->pid_d = 0.0;
    } else {
        double e_prev = s->reward_ema;
        s->reward_ema = p->ema * e_prev + (1.0 - p->ema) * reward_mean;
        double v = s->reward_ema - e_prev;                // reward velocity
        double err = v - p->v_target;
        s->integral = clampd(s->integral + err, -p->integral_clip, p->integral_clip);
        s->pid_p = p->kp * err;
        s->pid_i = p->ki * s->integral;
        s->pid_d = p->kd * (err - s->last_err);
        s->pid = s->pid_p + s->pid_i + s->pid_d;
        s->last_err = err;
        s->last_velocity = v;
    }
    s->phase = control_phase(s->hist, s->hist_len, p);
    s->phi = p->phase_factor[s->phase];
    s->tau = clampd((p->tau_base + s->pid) * s->phi, p->tau_min, p->tau_max);
    s->calls++;
    return s->tau;
}
