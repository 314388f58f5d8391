// losses.h — the RL losses of SAFE and of the PPO baseline, with their gradients
// (SAFE-SPEC §4, §5, §3 value loss, §7).
//
// All token arrays are flat (N) with `const uint8_t *mask` (N): 1 = valid, 0 = padding,
// NULL = all valid. "Masked mean" divides by the number of valid tokens n = Σ mask of the
// arrays passed in. To split a minibatch into chunks, pass dloss = n_chunk / n_minibatch to
// each chunk's backward so the gradients add up to the minibatch's.
//
// Convention: every *_backward ACCUMULATES (+=) dloss · ∂L/∂x into the gradient buffer, so
// the total loss L = L_clip + c_V·L_V + L_EPC − c_H·H_train is one dlogp buffer.
// Scalars are returned in double; per-token math is double inside, float in/out.
#ifndef SAFE_LOSSES_H
#define SAFE_LOSSES_H

#include <stddef.h>
#include <stdint.h>

// Number of valid tokens (Σ mask, or N when mask is NULL).
size_t mask_count(const uint8_t *mask, size_t N);
double masked_mean(const float *x, const uint8_t *mask, size_t N);

// ---- (a) PPO clipped surrogate ----
//   ρ_t = exp(ℓ_θ − ℓ_old),  L = − mean_t min(ρ_t A_t, clip(ρ_t, 1−ε, 1+ε) A_t)
typedef struct {
    double loss;
    double clip_frac;    // fraction of valid tokens with |ρ − 1| > ε (TRL's pg_clipfrac)
    double ratio_mean;   // masked mean of ρ
    double ratio_max;    // max of ρ over valid tokens
    double approx_kl;    // masked mean of ℓ_old − ℓ_θ (k1 KL(old‖θ)), logged only
    size_t n_valid;
    double loss_sum, clip_count, ratio_sum;   // the sums behind loss, clip_frac, ratio_mean
} PPOStats;

// logp, logp_old, adv (N). Returns the stats (loss 0 and n_valid 0 when nothing is valid).
PPOStats ppo_loss_forward(const float *logp, const float *logp_old, const float *adv,
                          const uint8_t *mask, size_t N, float clip_eps);
// dlogp (N) += dloss · ∂L/∂ℓ_θ:  −ρ_t A_t / n, or 0 where the clipped branch is strictly the
// smaller one (torch.min/clamp semantics; ties give the unclipped gradient).
// In every backward below, n is n_mean when it is not 0, else the valid tokens of these N:
// a rank of a data-parallel step passes the minibatch's token count over all ranks, so its
// tokens get exactly the gradients they get in one rank's mean (the same division).
void ppo_loss_backward(const float *logp, const float *logp_old, const float *adv,
                       const uint8_t *mask, size_t N, float clip_eps, float dloss, size_t n_mean,
                       float *dlogp);

// ---- (b) entropy bonus ----
//   L_H = −c_H · masked mean of H_t           (SAFE c_H = 0.01; PPO baseline c_H = 0)
// entropy (N). Returns L_H; mean_entropy (may be NULL) receives the masked mean of H.
double entropy_bonus_forward(const float *entropy, const uint8_t *mask, size_t N, float c_h,
                             double *mean_entropy);
// dentropy (N) += dloss · (−c_H / n) on valid tokens.
void entropy_bonus_backward(const uint8_t *mask, size_t N, float c_h, float dloss, size_t n_mean,
                            float *dentropy);

// ---- (c) EPC: entropy-aware predictive KL control (SAFE-SPEC §5) ----
// Sign convention: r_t = ℓ_p(t) − ℓ_q(t), the log-ratio of the sampling policy p over q.
// For the EPC penalty p = π_θ, q = π_ref, so r = ℓ_θ − ℓ_ref and
//   k1(r) = r                              (negative values kept: the asymmetry spares them)
//   k3(r) = (e^{−r} − 1) + r, r clamped to [−20, 20]   (≥ 0; Schulman's k3 of KL(p‖q))
// dk1/dr = 1; dk3/dr = 1 − e^{−r} inside the clamp, 0 outside (torch.clamp semantics).
typedef enum { KL_K1 = 1, KL_K3 = 3 } KLEstimator;
#define KL_K3_CLAMP 20.0

// Masked mean of k(ℓ_p − ℓ_q): κ for EPC (p = θ, q = ref), the logged rollout KL (p = old,
// q = ref), or the predictive step limit's KL(old‖new) (p = old, q = new).
double kl_estimate(const float *logp_p, const float *logp_q, const uint8_t *mask, size_t N,
                   KLEstimator est);
// The masked sum of k(ℓ_p − ℓ_q), in token order (kl_estimate is it over the valid count).
double kl_estimate_sum(const float *logp_p, const float *logp_q, const uint8_t *mask, size_t N,
                       KLEstimator est);
// dlogp_p (N) += dkl · ∂κ/∂ℓ_p = dkl · k'(r_t) / n on valid tokens (∂κ/∂ℓ_q is the negative).
void kl_estimate_backward(const float *logp_p, const float *logp_q, const uint8_t *mask, size_t N,
                          KLEstimator est, float dkl, size_t n_mean, float *dlogp_p);

typedef struct {
    double lambda_a;      // 0.1   one-sided penalty weight
    double h_floor;       // 2.0   entropy floor of the gate
    double eps_h;         // 0.1
    double gate_min;      // 0.5   g = max(gate_min, h_floor / (H_roll + eps_h))
    double short_decay;   // 0.9   k_short ← 0.9·sg(k_short) + 0.1·κ
    double long_decay;    // 0.99  k_long  ← 0.99·k_long + 0.01·κ (logged only)
    KLEstimator est;      // KL_K1
    int detach;           // 1: reference behaviour, the penalty has no gradient (default 0)
    int momentum;         // 1: add λ_m·m² when m = (κ_t − κ_{t−W})/W > 0 (default 0)
    double lambda_m;      // 5.0
    int momentum_window;  // W = 50 (the caller keeps the κ history and passes κ_{t−W})
} EPCConfig;

EPCConfig epc_defaults(void);
// Returns 0 when the configuration is usable, else -1 and a reason in why[why_len].
int epc_config_check(const EPCConfig *cfg, char *why, size_t why_len);

typedef struct {
    double kappa;         // κ(θ) of this update
    double k_short;       // tracker after this update (persist it)
    double k_long;        // tracker after this update (persist it)
    double tau;           // threshold used
    double gate;          // g_t
    double base;          // L_base = λ_a (k_short − τ)² if k_short > τ else 0
    double momentum_m;    // m_t (0 when the momentum term is off or κ_{t−W} unknown)
    double momentum_loss; // λ_m·m² if m > 0 else 0 (not gated)
    double loss;          // L_EPC = g·L_base + momentum_loss
    double dloss_dkappa;  // ∂L_EPC/∂κ (0 when detached or inactive)
    int active;           // k_short > τ
} EPCResult;

// The entropy gate alone: max(gate_min, h_floor / (h_roll + eps_h)).
double epc_gate(const EPCConfig *cfg, double h_roll);
// Scalar part of EPC. kappa from kl_estimate(logp, logp_ref, ...); k_short_prev, k_long_prev
// the persisted trackers (0 at the start of a run); tau from the control state; h_roll the
// rollout entropy of the batch. kappa_lag = κ_{t−W} for the momentum term, or NULL.
EPCResult epc_forward(const EPCConfig *cfg, double kappa, double k_short_prev, double k_long_prev,
                      double tau, double h_roll, const double *kappa_lag);
// logp, logp_ref (N): dlogp (N) += dloss · ∂L_EPC/∂ℓ_θ, flowing through κ only:
//   ∂L/∂κ = g·2λ_a(k_short − τ)·0.1 (+ 2λ_m m / W when the momentum term is positive).
// Adds nothing when cfg->detach or res->dloss_dkappa == 0.
void epc_backward(const EPCConfig *cfg, const EPCResult *res, const float *logp,
                  const float *logp_ref, const uint8_t *mask, size_t N, float dloss, size_t n_mean,
                  float *dlogp);

// Predictive step limit (optional, off by default): scale = min(1, kl_max / kl) for the
// measured KL(old‖new) of a tentative step; 1 when kl ≤ kl_max (or kl ≤ 0).
double step_limit_scale(double kl, double kl_max);

// ---- (d) value losses ----
// Huber with threshold δ (torch.nn.functional.huber_loss): ½x² if |x| ≤ δ else δ(|x| − ½δ).
double huber(double x, double delta);
double huber_grad(double x, double delta);   // x if |x| ≤ δ else δ·sign(x)

typedef struct {
    double loss;
    double clip_frac;    // fraction of valid tokens with |V − V_old| > ε_V
    double mean_value;   // masked mean of V
    size_t n_valid;
    double loss_sum, clip_count;   // the sums behind loss and clip_frac
} ValueStats;

// SAFE form (SAFE-SPEC §3): V_clip = V_old + clip(V − V_old, −ε_V, ε_V),
//   L_V = masked mean of ½[Huber(V − R) + Huber(V_clip − R)]   (ε_V 0.2, δ 0.5)
// v, v_old, ret (N). The outer weight (0.5) is the caller's.
ValueStats value_loss_safe_forward(const float *v, const float *v_old, const float *ret,
                                   const uint8_t *mask, size_t N, float clip_eps, float delta);
// dv (N) += dloss · ½[huber'(V − R) + huber'(V_clip − R)·1{|V − V_old| ≤ ε_V}] / n
void value_loss_safe_backward(const float *v, const float *v_old, const float *ret,
                              const uint8_t *mask, size_t N, float clip_eps, float delta,
                              float dloss, size_t n_mean, float *dv);

// PPO baseline form (TRL/Ziegler convention):
//   L_V = ½ · masked mean of max((V − R)², (V_clip − R)²)
// clip_frac here is the fraction where the clipped error is strictly larger (TRL vf_clipfrac).
ValueStats value_loss_ppo_forward(const float *v, const float *v_old, const float *ret,
                                  const uint8_t *mask, size_t N, float clip_eps);
// dv (N) += dloss · ∂L/∂V: the larger branch's gradient; ties average both (torch.max).
void value_loss_ppo_backward(const float *v, const float *v_old, const float *ret,
                             const uint8_t *mask, size_t N, float clip_eps, float dloss, size_t n_mean,
                             float *dv);

// ---- (e) Ziegler adaptive KL controller (PPO baseline, SAFE-SPEC §7) ----
//   e = clip(KL/target − 1, −0.2, 0.2),  β ← β·(1 + e·n_steps/horizon)
// target > 0 and horizon > 0 (the caller validates at start-up). n_steps: samples this
// iteration (batch size), as in Ziegler et al. Per-token KL rewards: token_rewards() in
// advantage.h.
double kl_ctl_update(double beta, double kl, double target, double horizon, double n_steps);

#endif
