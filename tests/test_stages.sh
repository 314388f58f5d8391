# test_stages.sh — properties of the individual stages: PPO ratio invariants, the EOS mask,
# the EPC gradient switch, NaN rewards, refused settings, the PPO baseline, learning.
. "$(dirname "$0")/lib.sh"

MODEL="$DATA/stories260K/stories260K.bin"
PROMPTS="$DATA/tinystories/prompts.jsonl"
export OMP_NUM_THREADS=2
stat_of() { safe-cat "$1" | jq -r ".$2"; }

# ---- learning rate 0: ratio == 1 and clip fraction 0, whatever the batch and sampling ----
safe-pid --init --quiet -o "$TMP/control0.safe"
for cfg in "1 1.0 8" "5 0.7 24" "64 1.3 40 --top-p 0.9 --allow-truncation" "3 1.0 16 --top-k 50 --allow-truncation"; do
    set -- $cfg
    batch=$1 temp=$2 maxnew=$3
    shift 3
    name="lr0_batch${batch}_T${temp}_len${maxnew}${1:+_trunc}"
    safe-rollout --policy "$MODEL" --prompts "$PROMPTS" --num-prompts 4 --samples-per-prompt 3 \
        --batch "$batch" --temperature "$temp" --max-new-tokens "$maxnew" --seed 11 --quiet "$@" |
      safe-score --vader --quiet |
      safe-critic --init-from "$MODEL" --quiet --out-critic "$TMP/c_$name" |
      safe-update --policy "$MODEL" --lr 0 --quiet -o "$TMP/p_$name" > "$TMP/s_$name.safe"
    ok=$(safe-cat "$TMP/s_$name.safe" | jq '(.ratio_max - 1 | fabs) < 1e-4 and (.ratio_mean - 1 | fabs) < 1e-5 and .clip_frac == 0')
    check "$name" test "$ok" = true
done
expect_status rollout_refuses_top_p_without_flag 1 safe-rollout --policy "$MODEL" --prompts "$PROMPTS" --top-p 0.9
expect_status rollout_refuses_greedy 1 safe-rollout --policy "$MODEL" --prompts "$PROMPTS" --greedy
expect_status rollout_refuses_zero_temperature 1 safe-rollout --policy "$MODEL" --prompts "$PROMPTS" --temperature 0

# ---- pad = EOS: the terminating EOS is a valid token, the score sits on it ----
# stories260K's tokenizer pads with the EOS id (2); rows of different lengths are padded.
cat > "$TMP/eos.jsonl" <<'EOF'
{"format":"safe-shard","version":1,"kind":"scored","temperature":1.0,"iteration":0}
{"id":"a/0","prompt_tokens":[1,403,407],"response_tokens":[426,291,2],"finish":"eos","logp":[-0.5,-1.0,-0.25],"ref_logp":[-0.5,-1.0,-0.25],"entropy":[1.5,1.25,0.5],"reward":0.75}
{"id":"b/0","prompt_tokens":[1,403],"response_tokens":[300,2],"finish":"eos","logp":[-2.0,-0.125],"ref_logp":[-2.0,-0.125],"entropy":[2.0,0.75],"reward":-0.5}
{"id":"c/0","prompt_tokens":[1,403,407,261],"response_tokens":[300,301,302,303,304],"finish":"length","logp":[-1.0,-1.0,-1.0,-1.0,-1.0],"ref_logp":[-1.0,-1.0,-1.0,-1.0,-1.0],"entropy":[1.0,1.0,1.0,1.0,1.0],"reward":0.25}
EOF
safe-cat --to-shard "$TMP/eos.jsonl" > "$TMP/eos.safe"
safe-critic --init-from "$MODEL" --quiet -i "$TMP/eos.safe" -o "$TMP/eos_adv.safe" --out-critic "$TMP/eos_critic"
safe-cat "$TMP/eos_adv.safe" > "$TMP/eos_adv.jsonl"
check eos_token_rewards_cover_response test "$(jq -s 'all(.[]; (.token_reward|length) == (.response_tokens|length))' "$TMP/eos_adv.jsonl")" = true
check eos_score_on_last_token test "$(jq -s 'all(.[]; (.token_reward[-1] - .reward_norm | fabs) < 1e-6 and ([.token_reward[:-1][] | select(. != 0)] | length) == 0)' "$TMP/eos_adv.jsonl")" = true
check eos_nonzero_advantages_equal_valid_tokens test "$(jq -s '[.[].adv[] | select(. != 0)] | length' "$TMP/eos_adv.jsonl")" = 10
check eos_last_token_is_eos test "$(jq -s '[.[] | select(.finish == "eos") | .response_tokens[-1]] | unique' -c "$TMP/eos_adv.jsonl")" = "[2]"

# ---- EPC: gradient when k_short > tau, exactly none below, none with --epc-detach ----
printf '%s\n' '{"format":"safe-shard","version":1,"kind":"control"}' \
    '{"iteration":0,"tau":0.1,"k_short":5.0,"k_long":0.0}' | safe-cat --to-shard > "$TMP/ctl_hot.safe"
printf '%s\n' '{"format":"safe-shard","version":1,"kind":"control"}' \
    '{"iteration":0,"tau":0.6,"k_short":0.0,"k_long":0.0}' | safe-cat --to-shard > "$TMP/ctl_cold.safe"
safe-rollout --policy "$MODEL" --prompts "$PROMPTS" --num-prompts 4 --samples-per-prompt 2 --max-new-tokens 16 --seed 5 --quiet |
  safe-score --vader --quiet | safe-critic --init-from "$MODEL" --quiet --out-critic "$TMP/epc_critic" > "$TMP/epc_adv.safe"
for ctl in hot cold; do
    for mode in grad detach; do
        flag=""; [ $mode = detach ] && flag=--epc-detach
        safe-update --policy "$MODEL" --control "$TMP/ctl_$ctl.safe" --lr 1e-3 --quiet $flag \
            -i "$TMP/epc_adv.safe" -o "$TMP/epc_${ctl}_$mode" --stats "$TMP/epc_${ctl}_$mode.safe"
    done
done
check epc_active_above_tau test "$(stat_of "$TMP/epc_hot_grad.safe" penalty_active)" = true
check epc_gradient_changes_step_above_tau sh -c "! cmp -s '$TMP/epc_hot_grad/model.safetensors' '$TMP/epc_hot_detach/model.safetensors'"
check epc_inactive_below_tau test "$(safe-cat "$TMP/epc_cold_grad.safe" | jq '.penalty == 0 and .penalty_active == false')" = true
check epc_no_gradient_below_tau cmp -s "$TMP/epc_cold_grad/model.safetensors" "$TMP/epc_cold_detach/model.safetensors"

# ---- a NaN or infinite reward stops safe-critic (exit 3, record named); a dead scorer stops safe-score ----
safe-rollout --policy "$MODEL" --prompts "$PROMPTS" --num-prompts 2 --samples-per-prompt 2 --max-new-tokens 8 --seed 5 --quiet -o "$TMP/small.safe"
safe-score --exec 'while read -r line; do echo NaN; done' --quiet -i "$TMP/small.safe" -o "$TMP/nan.safe"
expect_status nan_reward_stops_critic 3 safe-critic --init-from "$MODEL" --quiet -i "$TMP/nan.safe" -o "$TMP/nan_adv.safe" --out-critic "$TMP/nan_critic"
check nan_reward_message_names_record grep -q "record 0.*reward" "$TMP/err"
check nan_reward_leaves_no_output test ! -e "$TMP/nan_adv.safe" -a ! -e "$TMP/nan_critic"
# the same for every spelling of a non-finite reward (safe-score(1): C's and numpy's, overflow)
for x in -inf 1e999 nan; do
    safe-score --exec "while read -r line; do echo $x; done" --quiet -i "$TMP/small.safe" -o "$TMP/nf.safe" 2>/dev/null
    expect_status "nonfinite_reward_${x}_stops_critic" 3 safe-critic --init-from "$MODEL" --quiet -i "$TMP/nf.safe" -o "$TMP/nf_adv.safe" --out-critic "$TMP/nf_critic"
    check "nonfinite_reward_${x}_message_names_record" grep -q "record 0.*reward.*non-finite" "$TMP/err"
done
expect_status dead_scorer_exit_3 3 safe-score --exec 'exit 0' --quiet -i "$TMP/small.safe" -o "$TMP/dead.safe"
expect_status garbage_scorer_exit_2 2 safe-score --exec 'while read -r line; do echo hello; done' --quiet -i "$TMP/small.safe" -o "$TMP/garbage.safe"

expect_status surplus_answers_exit_2 2 safe-score --exec 'sed -u "s/.*/0.1\n0.2/"' --quiet -i "$TMP/small.safe" -o "$TMP/surplus.safe"
check surplus_answers_leave_no_output test ! -e "$TMP/surplus.safe"
expect_status answer_for_other_record_exit_2 2 safe-score --exec 'while read -r l; do echo "{\"id\": \"nope\", \"reward\": 1}"; done' --quiet -i "$TMP/small.safe" -o "$TMP/wrongid.safe"
check answer_for_other_record_named grep -q "nope" "$TMP/err"

# ---- refused settings and bad input ----
mkdir -p "$TMP/precious/sub" && echo keep > "$TMP/precious/notes.txt"
expect_status update_refuses_non_checkpoint_dir 1 safe-update --policy "$MODEL" --lr 0 --quiet -i "$TMP/epc_adv.safe" -o "$TMP/precious" --stats "$TMP/precious_stats.safe"
check update_keeps_non_checkpoint_dir test -f "$TMP/precious/notes.txt" -a -d "$TMP/precious/sub" -a ! -e "$TMP/precious_stats.safe"
# outputs that cannot be written stop the run before any work, leaving nothing behind
expect_status update_stats_dir_missing 1 safe-update --policy "$MODEL" --lr 0 --quiet -i "$TMP/epc_adv.safe" -o "$TMP/p_nodir" --stats "$TMP/nodir/stats.safe"
check update_stats_dir_missing_says_so grep -q -- "--stats .*nodir/stats.safe: the directory .*nodir does not exist" "$TMP/err"
check update_stats_dir_missing_no_policy test ! -e "$TMP/p_nodir"
expect_status update_output_dir_missing 1 safe-update --policy "$MODEL" --lr 0 --quiet -i "$TMP/epc_adv.safe" -o "$TMP/nodir/p" --stats "$TMP/s_nodir.safe"
check update_output_dir_missing_no_stats test ! -e "$TMP/s_nodir.safe"
expect_status critic_output_dir_missing 1 safe-critic --init-from "$MODEL" --quiet -i "$TMP/epc_adv.safe" -o "$TMP/nodir/adv.safe" --out-critic "$TMP/c_nodir"
check critic_output_dir_missing_no_critic test ! -e "$TMP/c_nodir"
expect_status critic_output_is_a_directory 1 safe-critic --init-from "$MODEL" --quiet -i "$TMP/epc_adv.safe" -o "$TMP" --out-critic "$TMP/c_nodir"

expect_status update_minibatches_must_divide 1 safe-update --policy "$MODEL" --minibatches 3 -i "$TMP/epc_adv.safe" -o "$TMP/x"
expect_status critic_needs_one_source 1 safe-critic -i "$TMP/epc_adv.safe" --out-critic "$TMP/x"
expect_status update_refuses_rollout_shard 2 safe-update --policy "$MODEL" -i "$TMP/small.safe" -o "$TMP/x"
check update_names_expected_kind grep -q "kind.*expected adv" "$TMP/err"
safe-cat --with-header "$TMP/epc_adv.safe" | jq -c 'del(.adv)' | safe-cat --to-shard > "$TMP/noadv.safe"
expect_status update_missing_adv_field 2 safe-update --policy "$MODEL" -i "$TMP/noadv.safe" -o "$TMP/x"
check update_missing_field_named grep -q "record 0.*adv" "$TMP/err"

# ---- the PPO baseline runs through the same pipeline ----
make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/ppo" ITERS=2 ALGO=ppo BATCH=4 SAMPLES=2 MAX_NEW=16 \
    SAFE_BIN="$SAFE_BIN" DATA="$DATA" UPDATE_OPTS="--lr 1e-3" >/dev/null 2>&1
check ppo_pipeline_runs test -f "$TMP/ppo/0001/control.safe"
check ppo_beta_adapts test "$(safe-cat "$TMP/ppo/0001/control.safe" | jq '.beta != 0.05 and .beta > 0')" = true

# ---- a short SAFE run learns: reward rises, KL stays bounded ----
make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/learn" ITERS=6 BATCH=8 SAMPLES=4 MAX_NEW=24 SEED=1 \
    SAFE_BIN="$SAFE_BIN" DATA="$DATA" UPDATE_OPTS="--lr 5e-4" CRITIC_OPTS="--lr 1e-4" >/dev/null 2>&1
for i in 0 1 2 3 4 5; do safe-cat "$TMP/learn/000$i/stats.safe"; done > "$TMP/learn.jsonl"
first=$(jq -s '(.[0].reward_mean + .[1].reward_mean) / 2' "$TMP/learn.jsonl")
last=$(jq -s '(.[4].reward_mean + .[5].reward_mean) / 2' "$TMP/learn.jsonl")
check learning_reward_rises test "$(jq -n "$last > $first + 0.05")" = true
check learning_kl_bounded test "$(jq -s 'all(.[]; .kl < 1.0)' "$TMP/learn.jsonl")" = true
echo "  learning: reward first-2 mean $first, last-2 mean $last"
