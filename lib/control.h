// control.h — the PID-adapted KL threshold and the phase detector (SAFE-SPEC §6), as one
// persistent state struct and one parameter struct. safe-pid reads/writes the state as a
// shard of kind "control"; safe-update reads tau from it.
//
//   e_t  = ema·e_{t−1} + (1−ema)·r̄_t           (first call: e = r̄, PID = 0)
//   v_t  = e_t − e_{t−1},  err_t = v_t − v*
//   I_t  = clip(I_{t−1} + err_t, −Iclip, Iclip)
//   PID  = Kp·err_t + Ki·I_t + Kd·(err_t − err_{t−1})          err_0 = 0
//   φ_t  = phase factor of the detector over the history of r̄ (r̄_t included)
//   τ_t  = clip((τ_base + PID)·φ_t, τ_min, τ_max)
//
// The first call sets e = r̄ and returns PID = 0 WITHOUT touching the integral or the last
// error (they stay 0), like the reference; the second call's derivative term is err_2 − 0.
//
// Initial state (control_init, before any call): calls 0, history empty, e = 0 (unused),
// I = 0, err = 0, phase WARMUP, φ = phase_factor[WARMUP], PID terms 0 and
// τ = clip(τ_base·φ_WARMUP) = 0.45 with the defaults — exactly what the first call returns,
// so iteration 0 (which runs before safe-pid has seen any reward) uses the same τ as the
// first controller update.
#ifndef SAFE_CONTROL_H
#define SAFE_CONTROL_H

#include <stddef.h>

typedef enum { PHASE_WARMUP = 0, PHASE_CLIMBING = 1, PHASE_CONVERGED = 2, PHASE_PLATEAU = 3 } Phase;
#define PHASE_COUNT 4

// The history keeps the last 2·window rewards (all the detector reads); the window is
// limited so that the state has a fixed size.
#define CONTROL_WINDOW_MAX 512
#define CONTROL_HIST_CAP (2 * CONTROL_WINDOW_MAX)

typedef struct {
    double kp, ki, kd;           // 0.3, 0.01, 0.05
    double v_target;             // v* = 0.001 (reward velocity aimed for)
    double tau_base;             // 0.3
    double tau_min, tau_max;     // 0.1, 0.6
    double ema;                  // 0.95 (weight of the previous EMA)
    int window;                  // 50 (1..CONTROL_WINDOW_MAX)
    double climb_threshold;      // 0.01: CLIMBING if mean(R) > mean(O) + this
    double converged_std;        // 0.02: CONVERGED needs std(R) < this ...
    double converged_reward;     // 0.7:  ... and mean(R) > this (reward-scale dependent!)
    double phase_factor[PHASE_COUNT];  // WARMUP 1.5, CLIMBING 1.2, CONVERGED 1.0, PLATEAU 0.8
    double integral_clip;        // 1.0
} ControlParams;

typedef struct {
    long calls;              // control_update calls so far (0 = initial state)
    double reward_ema;       // e_{t}, valid once calls > 0
    double integral;         // I_t
    double last_err;         // err_t (0 until the second call)
    double tau;              // last τ (the value safe-update uses next)
    double phi;              // last phase factor
    Phase phase;             // last phase
    double pid, pid_p, pid_i, pid_d;   // last PID output and its terms Kp·err, Ki·I, Kd·Δerr
    double last_velocity;    // v_t (0 on the first call)
    long hist_count;         // rewards pushed in total
    int hist_len;            // rewards kept in hist (≤ CONTROL_HIST_CAP)
    double hist[CONTROL_HIST_CAP];   // last hist_len values of r̄, oldest first
} ControlState;

void control_params_default(ControlParams *p);
// 0 when usable; else -1 and why[why_len] names the option (by its safe-pid spelling, e.g.
// "--kp must be > 0 (got -1)"). Refused: non-positive gains Kp/Ki/Kd, v*, tau-base, window
// (or > CONTROL_WINDOW_MAX), integral clip, converged-std, phase factors; ema outside (0,1);
// tau-min ≤ 0 or tau-min > tau-max; climb-threshold < 0; any non-finite value.
int control_params_check(const ControlParams *p, char *why, size_t why_len);

// Initial state (see the header comment): τ = clip(τ_base·φ_WARMUP, τ_min, τ_max).
void control_init(ControlState *s, const ControlParams *p);
// One controller step with the raw reward mean r̄ of the iteration; returns the new τ
// (also in s->tau). The caller refuses non-finite r̄ before calling.
double control_update(ControlState *s, const ControlParams *p, double reward_mean);

// Push a reward into the history (drops the oldest past CONTROL_HIST_CAP).
void control_history_push(ControlState *s, double r);
// The phase detector over hist (n values, oldest first): R = last `window`, O = the `window`
// before, or R when n < 2·window. WARMUP while n < window. std is the population std (ddof 0,
// numpy's default).
Phase control_phase(const double *hist, int n, const ControlParams *p);

const char *phase_name(Phase ph);        // "WARMUP", "CLIMBING", "CONVERGED", "PLATEAU"
int phase_parse(const char *name);       // Phase, or -1 when unknown

#endif
