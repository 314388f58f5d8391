// losses.c — PPO surrogate, entropy bonus, EPC penalty, value losses and the Ziegler KL
// controller, each forward next to its backward (SAFE-SPEC §3–§7). Per-token math in double.
#include "losses.h"   // PPOStats, EPCConfig/EPCResult, ValueStats, kl_ctl_update

#include <math.h>
#include <stdio.h>

#define VALID(mask, i) (!(mask) || (mask)[i])

size_t mask_count(const uint8_t *mask, size_t N) {
    if (!mask) return N;
    size_t n = 0;
    for (size_t i = 0; i < N; i++) n += mask[i] != 0;
    return n;
}

// x (N), mask (N) or NULL
double masked_mean(const float *x, const uint8_t *mask, size_t N) {
    size_t n = 0;
    double s = 0.0;
    for (size_t i = 0; i < N; i++)
        if (VALID(mask, i)) { s += x[i]; n++; }
    return n ? s / (double)n : 0.0;
}

static inline double clampd(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }

// ---- (a) PPO clipped surrogate ----

// logp, logp_old, adv (N)
PPOStats ppo_loss_forward(const float *logp, const float *logp_old, const float *adv,
                          const uint8_t *mask, size_t N, float clip_eps) {
    PPOStats st = {0};
    double sum = 0.0, nclip = 0.0, rsum = 0.0, rmax = 0.0, kl = 0.0;
    for (size_t i = 0; i < N; i++) {
        if (!VALID(mask, i)) continue;
        double rho = exp((double)logp[i] - logp_old[i]);
        double rho_c = clampd(rho, 1.0 - clip_eps, 1.0 + clip_eps);
        double a = adv[i];
        sum += fmin(rho * a, rho_c * a);
        nclip += fabs(rho - 1.0) > clip_eps;
        rsum += rho;
        if (st.n_valid == 0 || rho > rmax) rmax = rho;
        kl += (double)logp_old[i] - logp[i];
        st.n_valid++;
    }
    if (st.n_valid == 0) return st;
    double n = (double)st.n_valid;
    st.loss = -sum / n;
    st.clip_frac = nclip / n;
    st.ratio_mean = rsum / n;
    st.loss_sum = -sum;
    st.clip_count = nclip;
    st.ratio_sum = rsum;
    st.ratio_max = rmax;
    st.approx_kl = kl / n;
    return st;
}

// logp, logp_old, adv, dlogp (N)
void ppo_loss_backward(const float *logp, const float *logp_old, const float *adv,
                       const uint8_t *mask, size_t N, float clip_eps, float dloss, size_t n_mean,
                       float *dlogp) {
    size_t n = n_mean ? n_mean : mask_count(mask, N);
    if (n == 0) return;
    double scale = (double)dloss / (double)n;
    for (size_t i = 0; i < N; i++) {
        if (!VALID(mask, i)) continue;
        double rho = exp((double)logp[i] - logp_old[i]);
        double rho_c = clampd(rho, 1.0 - clip_eps, 1.0 + clip_eps);
        double a = adv[i];
        // L_t = −min(ρA, clip(ρ)A)/n, ∂ρ/∂ℓ_θ = ρ. When the clipped branch is strictly
        // smaller, ρ lies outside the clip range and clamp passes no gradient.
        if (rho_c * a < rho * a) continue;
        dlogp[i] += (float)(-scale * rho * a);
    }
}

// ---- (b) entropy bonus ----

// entropy (N)
double entropy_bonus_forward(const float *entropy, const uint8_t *mask, size_t N, float c_h,
                             double *mean_entropy) {
    double h = masked_mean(entropy, mask, N);
    if (mean_entropy) *mean_entropy = h;
    return -(double)c_h * h;
}

// dentropy (N)
void entropy_bonus_backward(const uint8_t *mask, size_t N, float c_h, float dloss, size_t n_mean,
                            float *dentropy) {
    size_t n = n_mean ? n_mean : mask_count(mask, N);
    if (n == 0) return;
    // L_H = −c_H·Σ m_t H_t / n
    float g = (float)(-(double)c_h * dloss / (double)n);
    for (size_t i = 0; i < N; i++)
        if (VALID(mask, i)) dentropy[i] += g;
}

// ---- (c) EPC ----

// k(r) and k'(r) for r = ℓ_p − ℓ_q
static inline double kl_k(double r, KLEstimator est) {
    if (est == KL_K1) return r;
    double rc = clampd(r, -KL_K3_CLAMP, KL_K3_CLAMP);
    return expm1(-rc) + rc;   // (e^{−r} − 1) + r
}
static inline double kl_k_grad(double r, KLEstimator est) {
    if (est == KL_K1) return 1.0;
    if (r < -KL_K3_CLAMP || r > KL_K3_CLAMP) return 0.0;
    return -expm1(-r);        // 1 − e^{−r}
}

// logp_p, logp_q (N)
double kl_estimate_sum(const float *logp_p, const float *logp_q, const uint8_t *mask, size_t N,
                       KLEstimator est) {
    double s = 0.0;
    for (size_t i = 0; i < N; i++)
        if (VALID(mask, i)) s += kl_k((double)logp_p[i] - logp_q[i], est);
    return s;
}

// logp_p, logp_q (N)
double kl_estimate(const float *logp_p, const float *logp_q, const uint8_t *mask, size_t N,
                   KLEstimator est) {
    size_t n = mask_count(mask, N);
    return n ? kl_estimate_sum(logp_p, logp_q, mask, N, est) / (double)n : 0.0;
}

// logp_p, logp_q, dlogp_p (N)
void kl_estimate_backward(const float *logp_p, const float *logp_q, const uint8_t *mask, size_t N,
                          KLEstimator est, float dkl, size_t n_mean, float *dlogp_p) {
    size_t n = n_mean ? n_mean : mask_count(mask, N);
    if (n == 0 || dkl == 0.0f) return;
    double scale = (double)dkl / (double)n;
    for (size_t i = 0; i < N; i++) {
        if (!VALID(mask, i)) continue;
        // κ = Σ m_t k(ℓ_p − ℓ_q)/n
        dlogp_p[i] += (float)(scale * kl_k_grad((double)logp_p[i] - logp_q[i], est));
    }
}

EPCConfig epc_defaults(void) {
    EPCConfig c = {
        .lambda_a = 0.1, .h_floor = 2.0, .eps_h = 0.1, .gate_min = 0.5,
        .short_decay = 0.9, .long_decay = 0.99, .est = KL_K1, .detach = 0,
        .momentum = 0, .lambda_m = 5.0, .momentum_window = 50,
    };
    return c;
}

int epc_config_check(const EPCConfig *c, char *why, size_t why_len) {
#define REFUSE(...) do { snprintf(why, why_len, __VA_ARGS__); return -1; } while (0)
    if (!(c->lambda_a >= 0) || !isfinite(c->lambda_a)) REFUSE("lambda_a must be >= 0 (got %g)", c->lambda_a);
    if (!(c->h_floor > 0) || !isfinite(c->h_floor)) REFUSE("h_floor must be > 0 (got %g)", c->h_floor);
    if (!(c->eps_h > 0) || !isfinite(c->eps_h)) REFUSE("eps_h must be > 0 (got %g)", c->eps_h);
    if (!(c->gate_min >= 0) || !isfinite(c->gate_min)) REFUSE("gate_min must be >= 0 (got %g)", c->gate_min);
    if (!(c->short_decay >= 0 && c->short_decay < 1)) REFUSE("short_decay must be in [0,1) (got %g)", c->short_decay);
    if (!(c->long_decay >= 0 && c->long_decay < 1)) REFUSE("long_decay must be in [0,1) (got %g)", c->long_decay);
    if (c->est != KL_K1 && c->est != KL_K3) REFUSE("KL estimator must be k1 or k3 (got %d)", (int)c->est);
    if (c->momentum) {
        if (!(c->lambda_m > 0) || !isfinite(c->lambda_m)) REFUSE("lambda_m must be > 0 (got %g)", c->lambda_m);
        if (c->momentum_window < 1) REFUSE("momentum window must be >= 1 (got %d)", c->momentum_window);
    }
#undef REFUSE
    return 0;
}

double epc_gate(const EPCConfig *cfg, double h_roll) {
    double g = cfg->h_floor / (h_roll + cfg->eps_h);
    return g > cfg->gate_min ? g : cfg->gate_min;
}

EPCResult epc_forward(const EPCConfig *cfg, double kappa, double k_short_prev, double k_long_prev,
                      double tau, double h_roll, const double *kappa_lag) {
    EPCResult r = {0};
    r.kappa = kappa;
    r.tau = tau;
    // trackers: k_short = 0.9·sg(k_short_prev) + 0.1·κ(θ)
    r.k_short = cfg->short_decay * k_short_prev + (1.0 - cfg->short_decay) * kappa;
    r.k_long = cfg->long_decay * k_long_prev + (1.0 - cfg->long_decay) * kappa;
    r.gate = epc_gate(cfg, h_roll);
    r.active = r.k_short > tau;
    double dbase = 0.0;   // ∂L_base/∂κ
    if (r.active) {
        double over = r.k_short - tau;
        r.base = cfg->lambda_a * over * over;
        dbase = cfg->lambda_a * 2.0 * over * (1.0 - cfg->short_decay);
    }
    double dmom = 0.0;    // ∂(λ_m m²)/∂κ
    if (cfg->momentum && kappa_lag) {
        double W = (double)cfg->momentum_window;
        r.momentum_m = (kappa - *kappa_lag) / W;
        if (r.momentum_m > 0) {
            r.momentum_loss = cfg->lambda_m * r.momentum_m * r.momentum_m;
            dmom = 2.0 * cfg->lambda_m * r.momentum_m / W;
        }
    }
    r.loss = r.gate * r.base + r.momentum_loss;
    r.dloss_dkappa = cfg->detach ? 0.0 : r.gate * dbase + dmom;
    return r;
}

// logp, logp_ref, dlogp (N)
void epc_backward(const EPCConfig *cfg, const EPCResult *res, const float *logp,
                  const float *logp_ref, const uint8_t *mask, size_t N, float dloss, size_t n_mean,
                  float *dlogp) {
    if (cfg->detach || res->dloss_dkappa == 0.0) return;
    // L_EPC(κ(θ)): chain ∂L/∂κ into ∂κ/∂ℓ_θ
    kl_estimate_backward(logp, logp_ref, mask, N, cfg->est, (float)(dloss * res->dloss_dkappa), n_mean, dlogp);
}

double step_limit_scale(double kl, double kl_max) {
    if (!(kl > kl_max) || kl <= 0.0) return 1.0;
    return kl_max / kl;
}

// ---- (d) value losses ----

double huber(double x, double delta) {
    double a = fabs(x);
    return a <= delta ? 0.5 * x * x : delta * (a - 0.5 * delta);
}

double huber_grad(double x, double delta) {
    if (fabs(x) <= delta) return x;
    return x > 0 ? delta : -delta;
}

// v, v_old, ret (N)
ValueStats value_loss_safe_forward(const float *v, const float *v_old, const float *ret,
                                   const uint8_t *mask, size_t N, float clip_eps, float delta) {
    ValueStats st = {0};
    double sum = 0.0, nclip = 0.0, vsum = 0.0;
    for (size_t i = 0; i < N; i++) {
        if (!VALID(mask, i)) continue;
        double d = (double)v[i] - v_old[i];
        double vclip = v_old[i] + clampd(d, -clip_eps, clip_eps);
        sum += 0.5 * (huber(v[i] - (double)ret[i], delta) + huber(vclip - ret[i], delta));
        nclip += fabs(d) > clip_eps;
        vsum += v[i];
        st.n_valid++;
    }
    if (st.n_valid == 0) return st;
    double n = (double)st.n_valid;
    st.loss = sum / n;
    st.clip_frac = nclip / n;
    st.mean_value = vsum / n;
    st.loss_sum = sum;
    st.clip_count = nclip;
    return st;
}

// v, v_old, ret, dv (N)
void value_loss_safe_backward(const float *v, const float *v_old, const float *ret,
                              const uint8_t *mask, size_t N, float clip_eps, float delta,
                              float dloss, size_t n_mean, float *dv) {
    size_t n = n_mean ? n_mean : mask_count(mask, N);
    if (n == 0) return;
    double scale = (double)dloss / (double)n;
    for (size_t i = 0; i < N; i++) {
        if (!VALID(mask, i)) continue;
        double d = (double)v[i] - v_old[i];
        double vclip = v_old[i] + clampd(d, -clip_eps, clip_eps);
        // L_t = ½[Huber(V − R) + Huber(V_clip − R)], ∂V_clip/∂V = 1{|V − V_old| ≤ ε_V}
        double g = huber_grad(v[i] - (double)ret[i], delta);
        if (fabs(d) <= clip_eps) g += huber_grad(vclip - ret[i], delta);
        dv[i] += (float)(scale * 0.5 * g);
    }
}

// v, v_old, ret (N)
ValueStats value_loss_ppo_forward(const float *v, const float *v_old, const float *ret,
                                  const uint8_t *mask, size_t N, float clip_eps) {
    ValueStats st = {0};
    double sum = 0.0, nclip = 0.0, vsum = 0.0;
    for (size_t i = 0; i < N; i++) {
        if (!VALID(mask, i)) continue;
        double d = (double)v[i] - v_old[i];
        double vclip = v_old[i] + clampd(d, -clip_eps, clip_eps);
        double e1 = v[i] - (double)ret[i], e2 = vclip - ret[i];
        sum += 0.5 * fmax(e1 * e1, e2 * e2);
        nclip += e2 * e2 > e1 * e1;
        vsum += v[i];
        st.n_valid++;
    }
    if (st.n_valid == 0) return st;
    double n = (double)st.n_valid;
    st.loss = sum / n;
    st.clip_frac = nclip / n;
    st.mean_value = vsum / n;
    st.loss_sum = sum;
    st.clip_count = nclip;
    return st;
}

// v, v_old, ret, dv (N)
void value_loss_ppo_backward(const float *v, const float *v_old, const float *ret,
                             const uint8_t *mask, size_t N, float clip_eps, float dloss, size_t n_mean,
                             float *dv) {
    size_t n = n_mean ? n_mean : mask_count(mask, N);
    if (n == 0) return;
    double scale = (double)dloss / (double)n;
    for (size_t i = 0; i < N; i++) {
        if (!VALID(mask, i)) continue;
        double d = (double)v[i] - v_old[i];
        double vclip = v_old[i] + clampd(d, -clip_eps, clip_eps);
        double e1 = v[i] - (double)ret[i], e2 = vclip - ret[i];
        // L_t = ½·max(e1², e2²): gradient of the larger branch, ties averaged (torch.max)
        double g1 = 2.0 * e1, g2 = fabs(d) <= clip_eps ? 2.0 * e2 : 0.0;
        double l1 = e1 * e1, l2 = e2 * e2;
        double g = l1 > l2 ? g1 : l2 > l1 ? g2 : 0.5 * (g1 + g2);
        dv[i] += (float)(scale * 0.5 * g);
    }
}

// ---- (e) Ziegler adaptive KL controller ----

double kl_ctl_update(double beta, double kl, double target, double horizon, double n_steps) {
    double e = clampd(kl / target - 1.0, -0.2, 0.2);
    return beta * (1.0 + e * n_steps / horizon);
}
