# test_safe_pid.sh — safe-pid: initial state, the first update (τ 0.45, WARMUP), resuming from
# a control state, the PPO Ziegler update, and refusals (bad options exit 1, bad input exit 2).
. "$(dirname "$0")/lib.sh"

# Stats shards are made from JSON lines with safe-cat (raw msgpack: --level 0; one control
# state below goes through the default zstd output).
stats() {   # stats FILE JSON-RECORD
    printf '%s\n%s\n' '{"format":"safe-shard","version":1,"kind":"stats"}' "$2" |
        safe-cat --level 0 --to-shard -o "$1" -
}
# field FILE NAME: the value of a top-level field of the first record, as safe-cat prints it
field() { safe-cat "$1" | sed -n 1p | tr ',' '\n' | sed -n "s/^{*\"$2\":\(.*\)/\1/p" | tr -d '}'; }
near() { awk -v a="$1" -v b="$2" -v t="${3:-1e-9}" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= t) }'; }

stats "$TMP/s0.safe" '{"iteration":0,"reward_mean":0.5,"kl":0.02,"k_short":0.01,"k_long":0.001,"samples":16,"kl_seq":9.0}'

# --init: τ 0.45, WARMUP, iteration 0
safe-pid --init --level 0 -q -o "$TMP/c0.safe"
check pid_init_written test -s "$TMP/c0.safe"
check pid_init_tau near "$(field "$TMP/c0.safe" tau)" 0.45
check pid_init_phase test "$(field "$TMP/c0.safe" phase)" = '"WARMUP"'
check pid_init_iteration test "$(field "$TMP/c0.safe" iteration)" = 0

# the first update from the initial state (explicit and implicit): τ 0.45, WARMUP, PID 0
safe-pid --level 0 -q --control "$TMP/c0.safe" -o "$TMP/c1.safe" "$TMP/s0.safe"
check pid_first_tau near "$(field "$TMP/c1.safe" tau)" 0.45
check pid_first_phase test "$(field "$TMP/c1.safe" phase)" = '"WARMUP"'
check pid_first_pid near "$(field "$TMP/c1.safe" pid)" 0
check pid_first_iteration test "$(field "$TMP/c1.safe" iteration)" = 1
check pid_first_carries_k_short near "$(field "$TMP/c1.safe" k_short)" 0.01
safe-pid -q "$TMP/s0.safe" <"$TMP/s0.safe" >"$TMP/c1b.safe"   # default level: zstd
check pid_first_without_control near "$(field "$TMP/c1b.safe" tau)" 0.45
safe-pid 2>"$TMP/err" --level 0 <"$TMP/s0.safe" >/dev/null
check pid_summary_line grep -q 'tau 0.450000 phi 1.5 phase WARMUP' "$TMP/err"

# resuming: the second update with the same reward gives err = -0.001,
# PID = 0.3(-0.001) + 0.01(-0.001) + 0.05(-0.001) = -0.00036, τ = (0.3 - 0.00036)·1.5
stats "$TMP/s1.safe" '{"iteration":1,"reward_mean":0.5,"kl":0.02,"k_short":0.02,"k_long":0.002}'
safe-pid --level 0 -q --control "$TMP/c1.safe" -o "$TMP/c2.safe" "$TMP/s1.safe"
check pid_second_pid near "$(field "$TMP/c2.safe" pid)" -0.00036 1e-12
check pid_second_tau near "$(field "$TMP/c2.safe" tau)" 0.44946 1e-12
check pid_second_history test "$(field "$TMP/c2.safe" reward_history_count)" = 2
# --rate 2 from the initial state does both updates at once
safe-pid --level 0 -q --rate 2 -o "$TMP/c2r.safe" "$TMP/s0.safe"
check pid_rate_two near "$(field "$TMP/c2r.safe" pid)" -0.00036 1e-12

# PPO: Ziegler β update from the stats' kl_seq (9 > target 6: e = 0.2), n = samples (16)
safe-pid --level 0 -q --algo ppo --beta 0.15 -o "$TMP/p1.safe" "$TMP/s0.safe"
check pid_ppo_beta near "$(field "$TMP/p1.safe" beta)" "$(awk 'BEGIN { printf "%.17g", 0.15 * (1 + 0.2 * 16 / 10000) }')" 1e-12
safe-pid --level 0 -q --algo ppo --beta 0.15 --kl-n 512 -o "$TMP/p2.safe" "$TMP/s0.safe"
check pid_ppo_beta_oracle near "$(field "$TMP/p2.safe" beta)" 0.151536 1e-12
safe-pid --level 0 -q --algo ppo --beta 0.15 --beta-fixed -o "$TMP/p3.safe" "$TMP/s1.safe"
check pid_ppo_beta_fixed near "$(field "$TMP/p3.safe" beta)" 0.15

# refusals: bad options exit 1 and name the option
expect_status pid_refuse_kp 1 safe-pid --init --kp 0
check pid_refuse_kp_says grep -q -- '--kp' "$TMP/err"
expect_status pid_refuse_ki 1 safe-pid --init --ki -0.01
expect_status pid_refuse_kd 1 safe-pid --init --kd 0
expect_status pid_refuse_tau_order 1 safe-pid --init --tau-min 0.7 --tau-max 0.6
check pid_refuse_tau_order_says grep -q -- '--tau-min' "$TMP/err"
expect_status pid_refuse_kl_target 1 safe-pid --init --kl-target 0
expect_status pid_refuse_kl_horizon 1 safe-pid --init --kl-horizon -5
expect_status pid_refuse_window 1 safe-pid --init --window 0
expect_status pid_refuse_ema 1 safe-pid --init --ema 1
expect_status pid_refuse_factors 1 safe-pid --init --phase-factors 1.5,1.2,1.0
expect_status pid_refuse_number 1 safe-pid --init --kp abc
expect_status pid_refuse_unknown 1 safe-pid --no-such-option
expect_status pid_help 0 safe-pid --help
expect_status pid_version 0 safe-pid --version

# bad input exits 2 and names file, record and field
stats "$TMP/nor.safe" '{"iteration":0,"kl":0.02,"k_short":0.01,"k_long":0.001}'
expect_status pid_missing_reward_mean 2 safe-pid --level 0 "$TMP/nor.safe"
check pid_missing_reward_mean_says grep -q 'nor.safe: record 0: field "reward_mean": missing' "$TMP/err"
stats "$TMP/str.safe" '{"iteration":0,"reward_mean":"high","k_short":0.01,"k_long":0.001}'
expect_status pid_bad_reward_type 2 safe-pid --level 0 "$TMP/str.safe"
check pid_bad_reward_type_says grep -q 'field "reward_mean"' "$TMP/err"
expect_status pid_ppo_missing_kl 2 safe-pid --level 0 --algo ppo "$TMP/s1.safe"
check pid_ppo_missing_kl_says grep -q 'field "kl_seq"' "$TMP/err"
expect_status pid_stats_as_control 2 safe-pid --level 0 --control "$TMP/s0.safe" "$TMP/s0.safe"
expect_status pid_control_as_stats 2 safe-pid --level 0 "$TMP/c0.safe"
expect_status pid_missing_control 2 safe-pid --level 0 --control "$TMP/nonexistent.safe" "$TMP/s0.safe"
