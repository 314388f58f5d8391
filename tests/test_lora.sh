# test_lora.sh — LoRA adapters through the tools: safe-update --lora-r writes a PEFT adapter,
# the other tools read it as its base with the adapter merged, training goes on from it, data
# parallel gives the one-rank adapter, and the pipeline runs with UPDATE_OPTS=--lora-r.
. "$(dirname "$0")/lib.sh"

MODEL="$DATA/stories260K/stories260K.bin"
PROMPTS="$DATA/tinystories/prompts.jsonl"
export OMP_NUM_THREADS=2
stat_of() { safe-cat "$1" | jq -r ".$2"; }

# the batch: 4 prompts x 2 samples, 16 tokens
safe-pid --init --quiet -o "$TMP/control0.safe"
batch() {   # batch POLICY K: rollout, score (scoredK.safe) and critic (advK.safe) of POLICY's completions
    safe-rollout --policy "$1" --ref "$MODEL" --prompts "$PROMPTS" --num-prompts 4 --samples-per-prompt 2 \
        --max-new-tokens 16 --seed 5 --quiet |
      safe-score --vader --quiet -o "$TMP/scored$2.safe"
    safe-critic --init-from "$MODEL" --quiet --out-critic "$TMP/critic" -i "$TMP/scored$2.safe" -o "$TMP/adv$2.safe"
}
batch "$MODEL" 0
UPD="--control $TMP/control0.safe --quiet -i $TMP/adv0.safe"

# ---- a new adapter: B = 0, so lr 0 is the base exactly ----
safe-update --policy "$MODEL" $UPD --lr 0 -o "$TMP/full0" --stats "$TMP/full0.safe"
safe-update --policy "$MODEL" $UPD --lr 0 --lora-r 4 -o "$TMP/lora0" --stats "$TMP/lora0.safe"
check lora_lr0_ratio_one test "$(safe-cat "$TMP/lora0.safe" | jq '(.ratio_mean - 1 | fabs) < 1e-5 and .clip_frac == 0')" = true
check lora_lr0_same_stats_as_full test "$(safe-cat "$TMP/lora0.safe" | jq -cS 'del(.seconds, .peak_rss_mb, .grad_norm)')" = \
    "$(safe-cat "$TMP/full0.safe" | jq -cS 'del(.seconds, .peak_rss_mb, .grad_norm)')"
check lora_output_is_peft_adapter test -f "$TMP/lora0/adapter_config.json" -a -f "$TMP/lora0/adapter_model.safetensors" \
    -a ! -e "$TMP/lora0/model.safetensors" -a ! -e "$TMP/lora0/config.json" -a -f "$TMP/lora0/optimizer.safetensors"
check lora_config_fields test "$(jq -c '[.peft_type, .r, .lora_alpha, .target_modules, .bias, .use_dora]' "$TMP/lora0/adapter_config.json")" = \
    '["LORA",4,8,["q_proj","v_proj"],"none",false]'
check lora_config_names_base test "$(jq -r .base_model_name_or_path "$TMP/lora0/adapter_config.json")" = "$(realpath "$MODEL")"
check lora_adapter_is_small test "$(stat -c %s "$TMP/lora0/adapter_model.safetensors")" -lt 100000

# ---- a real step: the adapter moves the policy; the rollout of the adapter reads it merged ----
safe-update --policy "$MODEL" $UPD --lr 3e-2 --lora-r 4 --lora-alpha 16 --lora-targets all -o "$TMP/lora1" \
    --stats "$TMP/lora1.safe"
check lora_step_took test "$(stat_of "$TMP/lora1.safe" grad_norm | jq '. > 0')" = true
batch "$TMP/lora1" 1
check lora_rollout_of_adapter_differs test "$(safe-cat "$TMP/adv1.safe" | jq -s '[.[].logp] | add | add')" != \
    "$(safe-cat "$TMP/adv0.safe" | jq -s '[.[].logp] | add | add')"
# going on from the adapter: its merged weights are the rollout's, so lr 0 gives ratio 1
U1="--control $TMP/control0.safe --quiet -i $TMP/adv1.safe"
safe-update --policy "$TMP/lora1" $U1 --lr 0 -o "$TMP/lora1b" --stats "$TMP/lora1b.safe"
check lora_continue_lr0_ratio_one test "$(safe-cat "$TMP/lora1b.safe" | jq '(.ratio_mean - 1 | fabs) < 1e-5 and .clip_frac == 0')" = true
check lora_continue_keeps_config test "$(jq -c '[.r, .lora_alpha, (.target_modules | length)]' "$TMP/lora1b/adapter_config.json")" = '[4,16,7]'
check lora_continue_keeps_base test "$(jq -r .base_model_name_or_path "$TMP/lora1b/adapter_config.json")" = "$(realpath "$MODEL")"
check lora_continue_optimizer_step test "$(jq .step "$TMP/lora1b/trainer_state.json")" = 4
# the pipeline passes the same --lora-* every iteration: accepted when they agree, else refused
safe-update --policy "$TMP/lora1" $U1 --lr 1e-3 --lora-r 4 --lora-alpha 16 --lora-targets all -o "$TMP/lora1c" --stats /dev/null
check lora_same_options_accepted test -f "$TMP/lora1c/adapter_model.safetensors"
expect_status lora_other_rank_refused 1 safe-update --policy "$TMP/lora1" $U1 --lora-r 8 -o "$TMP/bad" --stats /dev/null
check lora_other_rank_message grep -q "is an adapter of rank 4, alpha 16 on q_proj" "$TMP/err"
expect_status lora_alpha_without_r_refused 1 safe-update --policy "$MODEL" $UPD --lora-alpha 4 -o "$TMP/bad"
expect_status lora_bad_target_refused 1 safe-update --policy "$MODEL" $UPD --lora-r 2 --lora-targets lm_head -o "$TMP/bad"
expect_status lora_bad_rank_refused 1 safe-update --policy "$MODEL" $UPD --lora-r 0 -o "$TMP/bad"
check lora_refusals_no_output test ! -e "$TMP/bad"

# ---- a new adapter on a trained full checkpoint: zero moments, not the checkpoint's ----
safe-update --policy "$MODEL" $UPD --lr 1e-3 -o "$TMP/full1" --stats /dev/null
safe-update --policy "$TMP/full1" $UPD --lr 1e-3 --lora-r 2 -o "$TMP/onfull" --stats /dev/null
check lora_new_adapter_on_trained_checkpoint test "$(jq .step "$TMP/onfull/trainer_state.json")" = 2
check lora_new_adapter_names_checkpoint test "$(jq -r .base_model_name_or_path "$TMP/onfull/adapter_config.json")" = "$(realpath "$TMP/full1")"
# the output may not be the base: that would replace the model the adapter needs
expect_status lora_output_is_base_refused 1 safe-update --policy "$TMP/full1" $UPD --lora-r 2 -o "$TMP/full1" --stats /dev/null
check lora_output_is_base_message grep -q "holds the base model of the new adapter" "$TMP/err"
expect_status lora_output_is_base_of_continued_refused 1 safe-update --policy "$TMP/onfull" $UPD -o "$TMP/full1" --stats /dev/null
check lora_output_is_base_kept test -f "$TMP/full1/model.safetensors" -a ! -e "$TMP/full1/adapter_config.json"
# nor the base of an adapter read some other way: a critic started from it, safe-convert's output
expect_status lora_critic_output_is_base_refused 1 safe-critic --init-from "$TMP/onfull" --control "$TMP/control0.safe" \
    --quiet -i "$TMP/scored0.safe" -o "$TMP/bad.safe" --out-critic "$TMP/full1"
check lora_critic_output_is_base_message grep -q "holds the base model of the adapter .*onfull" "$TMP/err"
expect_status lora_convert_output_is_base_refused 1 safe-convert "$TMP/onfull" "$TMP/full1"
check lora_output_is_base_kept_again test -f "$TMP/full1/model.safetensors" -a -f "$TMP/full1/optimizer.safetensors"
expect_status lora_new_adapter_on_adapter_refused 1 safe-critic --init-from "$TMP/onfull" --lora-r 2 \
    --control "$TMP/control0.safe" --quiet -i "$TMP/scored0.safe" -o "$TMP/bad.safe" --out-critic "$TMP/bad"
check lora_new_adapter_on_adapter_message grep -q "merge it first" "$TMP/err"
expect_status lora_targets_all_in_list_refused 1 safe-update --policy "$MODEL" $UPD --lora-r 2 --lora-targets all,q -o "$TMP/bad"
check lora_targets_all_in_list_message grep -q "give it alone" "$TMP/err"
# files of the run inside the directory it replaces would be lost: refused before any work
cp -r "$TMP/onfull" "$TMP/inside"
cp "$TMP/adv0.safe" "$TMP/inside/adv.safe"
expect_status output_inside_checkpoint_refused 1 safe-update --policy "$TMP/inside" --control "$TMP/control0.safe" \
    --quiet -i "$TMP/adv0.safe" --stats "$TMP/inside/stats.safe" -o "$TMP/inside"
expect_status input_inside_checkpoint_refused 1 safe-update --policy "$TMP/inside" --control "$TMP/control0.safe" \
    --quiet -i "$TMP/inside/adv.safe" --stats /dev/null -o "$TMP/inside"
check input_inside_checkpoint_message grep -q "lies inside .*inside, which this run replaces whole" "$TMP/err"
cp "$MODEL" "$TMP/inside/model.bin"
expect_status policy_inside_checkpoint_refused 1 safe-update --policy "$TMP/inside/model.bin" --control "$TMP/control0.safe" \
    --quiet -i "$TMP/adv0.safe" --stats /dev/null -o "$TMP/inside"
check policy_inside_checkpoint_kept test -f "$TMP/inside/model.bin"
cp -r "$TMP/critic" "$TMP/cin"
cp "$MODEL" "$TMP/cin/init.bin"
expect_status init_from_inside_checkpoint_refused 1 safe-critic --init-from "$TMP/cin/init.bin" --control "$TMP/control0.safe" \
    --quiet -i "$TMP/scored0.safe" -o "$TMP/bad.safe" --out-critic "$TMP/cin"
expect_status critic_output_inside_checkpoint_refused 1 safe-critic --critic "$TMP/cin" --control "$TMP/control0.safe" \
    --quiet -i "$TMP/scored0.safe" -o "$TMP/cin/adv.safe" --out-critic "$TMP/cin"
check inside_refusals_lose_nothing test -f "$TMP/inside/adv.safe" -a ! -e "$TMP/inside/stats.safe" -a \
    "$(jq .step "$TMP/inside/trainer_state.json")" = 2 -a ! -e "$TMP/cin/adv.safe"
# a relative base (as PEFT may write it) is read beside the adapter and saved as absolute
mkdir -p "$TMP/rel/base" "$TMP/rel/sub"
cp "$MODEL" "$DATA/stories260K/tok512.bin" "$TMP/rel/base/"
cp -r "$TMP/lora0" "$TMP/rel/a"
jq '.base_model_name_or_path = "../base/stories260K.bin"' "$TMP/lora0/adapter_config.json" > "$TMP/rel/a/adapter_config.json"
(cd / && safe-update --policy "$TMP/rel/a" $UPD --lr 1e-3 -o "$TMP/rel/sub/b" --stats /dev/null)
check lora_relative_base_saved_absolute test "$(jq -r .base_model_name_or_path "$TMP/rel/sub/b/adapter_config.json")" = \
    "$(realpath "$TMP/rel/base/stories260K.bin")"

# the predictive step limit scales the adapter's step back (the merged weights follow it)
safe-update --policy "$MODEL" $UPD --lr 1e-1 --lora-r 2 --step-limit 1e-5 -o "$TMP/steplim" --stats "$TMP/steplim.safe"
check lora_step_limit_scales test "$(stat_of "$TMP/steplim.safe" step_scale_min | jq '. < 1 and . > 0')" = true
batch "$TMP/steplim" 2
U2="--control $TMP/control0.safe --quiet -i $TMP/adv2.safe --lr 0"
safe-update --policy "$TMP/steplim" $U2 -o "$TMP/steplim0" --stats "$TMP/steplim0.safe"
check lora_step_limit_saved_weights_are_the_rollouts test "$(safe-cat "$TMP/steplim0.safe" | jq '(.ratio_mean - 1 | fabs) < 1e-5 and .clip_frac == 0')" = true
safe-update --policy "$MODEL" $UPD --algo ppo --lr 1e-2 --lora-r 2 -o "$TMP/ppo" --stats "$TMP/ppo.safe"
check lora_ppo_baseline test -f "$TMP/ppo/adapter_model.safetensors" -a "$(stat_of "$TMP/ppo.safe" algo)" = ppo

# ---- safe-convert merges an adapter into a full checkpoint; generation agrees ----
safe-convert "$TMP/lora1" "$TMP/merged" >/dev/null 2>&1
check lora_convert_merges test -f "$TMP/merged/model.safetensors" -a -f "$TMP/merged/config.json"
G="--max-new-tokens 24 --seed 2 --samples 4 --quiet"
safe-generate --model "$TMP/lora1" -p "Once upon a time" $G > "$TMP/g_adapter.txt"
safe-generate --model "$TMP/merged" -p "Once upon a time" $G > "$TMP/g_merged.txt"
check lora_generate_adapter_equals_merged cmp -s "$TMP/g_adapter.txt" "$TMP/g_merged.txt"
check lora_generate_not_empty test -s "$TMP/g_adapter.txt"

# ---- data parallel: 2 ranks give the one-rank adapter, byte for byte ----
if command -v mpirun >/dev/null 2>&1 && safe-update --version | grep -q MPI; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    DP="$UPD --lr 3e-2 --lora-r 2 --lora-targets q,o,down --epochs 2 --minibatches 2"
    OMP_NUM_THREADS=1 safe-update --policy "$MODEL" $DP -o "$TMP/dp1" --stats "$TMP/dp1.safe"
    OMP_NUM_THREADS=1 ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 timeout 120 \
        mpirun --oversubscribe --bind-to none -np 2 safe-update --policy "$MODEL" $DP -o "$TMP/dp2" --stats "$TMP/dp2.safe"
    check lora_dp_2_ranks_same_adapter cmp -s "$TMP/dp1/adapter_model.safetensors" "$TMP/dp2/adapter_model.safetensors"
    check lora_dp_2_ranks_same_moments cmp -s "$TMP/dp1/optimizer.safetensors" "$TMP/dp2/optimizer.safetensors"
    check lora_dp_2_ranks_same_stats test "$(safe-cat "$TMP/dp1.safe" | jq -cS 'del(.seconds, .peak_rss_mb)')" = \
        "$(safe-cat "$TMP/dp2.safe" | jq -cS 'del(.seconds, .peak_rss_mb)')"
else
    echo "SKIP lora_dp: no mpirun or no MPI in this build"
fi

# ---- the CUDA backend on the CPU emulation of its kernels (built by make tests, not under
# the sanitizers): the adapter's gradients come from the device's weight gradients by the
# chain rule; the first step's gradient agrees with the CPU's to bf16 precision: within 5e-2
# of the tensor's scale (measured 3.0e-2; the full model's weight gradient: 1.9e-2), and the
# gradient norm within 2% ----
EMU="$SAFE_BUILD/emu/bin"
if [ -x "$EMU/safe-update" ] && [ -x "$SAFE_BUILD/tests/test_stcompare" ]; then
    EU="--policy $MODEL --control $TMP/control0.safe --quiet -i $TMP/adv0.safe --lr 1e-2 --lora-r 2 --lora-targets all"
    mkdir -p "$TMP/gcpu" "$TMP/gcuda"
    SAFE_DUMP_GRADS="$TMP/gcpu" safe-update $EU --device cpu -o "$TMP/ecpu" --stats "$TMP/ecpu.safe"
    SAFE_DUMP_GRADS="$TMP/gcuda" "$EMU/safe-update" $EU --device cuda -o "$TMP/ecuda" --stats "$TMP/ecuda.safe"
    check lora_cuda_emu_writes_adapter test -f "$TMP/ecuda/adapter_model.safetensors" -a ! -e "$TMP/ecuda/model.safetensors"
    check lora_cuda_emu_first_gradient_near_cpu "$SAFE_BUILD/tests/test_stcompare" "$TMP/gcpu/safe-update-step-0000.safetensors" \
        "$TMP/gcuda/safe-update-step-0000.safetensors" 5e-2 tensor
    safe-cat "$TMP/ecpu.safe" > "$TMP/ecpu.json"
    safe-cat "$TMP/ecuda.safe" > "$TMP/ecuda.json"
    check lora_cuda_emu_grad_norm_near_cpu test "$(jq -n --slurpfile a "$TMP/ecpu.json" --slurpfile b "$TMP/ecuda.json" \
        '(($a[0].grad_norm - $b[0].grad_norm) | fabs) < 0.02 * $a[0].grad_norm')" = true
    "$EMU/safe-update" --policy "$TMP/ecuda" --control "$TMP/control0.safe" --quiet -i "$TMP/adv0.safe" --lr 1e-2 \
        --device cuda -o "$TMP/ecuda2" --stats /dev/null
    check lora_cuda_emu_continues test "$(jq .step "$TMP/ecuda2/trainer_state.json")" = 4
    "$EMU/safe-critic" --init-from "$MODEL" --control "$TMP/control0.safe" --quiet -i "$TMP/scored0.safe" --lora-r 2 \
        --device cuda -o "$TMP/ecadv.safe" --out-critic "$TMP/ecrit"
    check lora_cuda_emu_critic_adapter test -f "$TMP/ecrit/adapter_model.safetensors" -a -f "$TMP/ecrit/value_head.safetensors"
else
    echo "SKIP lora_cuda_emu: no emulated CUDA tools (a sanitizer build or no CUDA)"
fi

# ---- the critic's backbone with an adapter: new, then going on; 2 ranks = 1 rank ----
CR="--control $TMP/control0.safe --quiet --lr 1e-2 -i $TMP/scored0.safe"
safe-critic --init-from "$MODEL" $CR --lora-r 4 --lora-targets all -o "$TMP/cadv0.safe" --out-critic "$TMP/clora0"
check lora_critic_is_adapter test -f "$TMP/clora0/adapter_model.safetensors" -a -f "$TMP/clora0/value_head.safetensors" \
    -a ! -e "$TMP/clora0/model.safetensors"
safe-critic --critic "$TMP/clora0" $CR --lora-r 4 --lora-targets all -o "$TMP/cadv1.safe" --out-critic "$TMP/clora1"
check lora_critic_continues test "$(jq .step "$TMP/clora1/trainer_state.json")" = 4 -a \
    "$(jq -r .base_model_name_or_path "$TMP/clora1/adapter_config.json")" = "$(realpath "$MODEL")"
check lora_critic_values_move test "$(safe-cat "$TMP/cadv0.safe" | md5sum)" != "$(safe-cat "$TMP/cadv1.safe" | md5sum)"
expect_status lora_critic_other_rank_refused 1 safe-critic --critic "$TMP/clora0" $CR --lora-r 8 -o "$TMP/bad.safe" \
    --out-critic "$TMP/bad"
# a new adapter on a full critic: zero moments for it and the heads
safe-critic --critic "$TMP/critic" $CR --lora-r 2 -o "$TMP/cadv2.safe" --out-critic "$TMP/clora2"
check lora_critic_new_adapter_on_full_critic test "$(jq .step "$TMP/clora2/trainer_state.json")" = 2
if command -v mpirun >/dev/null 2>&1 && safe-critic --version | grep -q MPI; then
    CDP="$CR --lora-r 2 --lora-targets q,o,down --minibatches 2"
    OMP_NUM_THREADS=1 safe-critic --init-from "$MODEL" $CDP -o "$TMP/cdp1.safe" --out-critic "$TMP/cdp1"
    OMP_NUM_THREADS=1 ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 timeout 120 \
        mpirun --oversubscribe --bind-to none -np 2 safe-critic --init-from "$MODEL" $CDP -o "$TMP/cdp2.safe" --out-critic "$TMP/cdp2"
    for f in adapter_model.safetensors optimizer.safetensors value_head.safetensors; do
        check "lora_critic_dp_2_ranks_same_$f" cmp -s "$TMP/cdp1/$f" "$TMP/cdp2/$f"
    done
    check lora_critic_dp_2_ranks_same_records test "$(safe-cat "$TMP/cdp1.safe" | md5sum)" = "$(safe-cat "$TMP/cdp2.safe" | md5sum)"
fi

# ---- the make pipeline with an adapter: iteration 1 rolls out iteration 0's adapter ----
cd "$(dirname "$0")/.."
make -s --no-print-directory -f pipelines/safe.mk DATA="$DATA" RUN="$TMP/run" ITERS=2 BATCH=4 SAMPLES=2 \
    MAX_NEW=12 UPDATE_OPTS="--lora-r 4 --lr 1e-2" CRITIC_OPTS="--lora-r 4 --lr 1e-3" >"$TMP/make.log" 2>&1
check lora_pipeline_runs test -f "$TMP/run/0001/policy/adapter_model.safetensors" -a \
    -f "$TMP/run/0001/critic/adapter_model.safetensors"
check lora_pipeline_stats test "$(safe-cat "$TMP/run/0001/stats.safe" | jq .iteration)" = 1 || cat "$TMP/make.log"
