# test_pipeline.sh — the five stages end to end on stories260K (small settings, CPU).
. "$(dirname "$0")/lib.sh"

MODEL="$DATA/stories260K/stories260K.bin"
PROMPTS="$DATA/tinystories/prompts.jsonl"
# small and quick: 4 prompts x 2 samples, 16 new tokens
SMALL="BATCH=4 SAMPLES=2 MAX_NEW=16 SEED=3 SAFE_BIN=$SAFE_BIN DATA=$DATA QUIET=--quiet"
export OMP_NUM_THREADS=2

stats_json() { safe-cat "$1" | jq -cS 'del(.seconds, .peak_rss_mb)'; }

# ---- a shell pipeline equals the makefile's iteration ----
make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/mk" ITERS=1 $SMALL UPDATE_OPTS="--lr 1e-3" >"$TMP/mk.log" 2>&1
check pipeline_makefile_runs test -f "$TMP/mk/0000/control.safe"

safe-pid --init --quiet -o "$TMP/control0.safe"
safe-rollout --policy "$MODEL" --prompts "$PROMPTS" --num-prompts 4 --samples-per-prompt 2 \
    --max-new-tokens 16 --seed 3 --iteration 0 --quiet --level 0 |
  safe-score --vader --quiet --level 0 |
  safe-critic --init-from "$MODEL" --control "$TMP/control0.safe" --seed 3 --quiet --level 0 \
    --out-critic "$TMP/hand_critic" |
  safe-update --policy "$MODEL" --control "$TMP/control0.safe" --seed 3 --quiet --lr 1e-3 \
    -o "$TMP/hand_policy" > "$TMP/hand_stats.safe"
check pipeline_by_hand_same_policy cmp -s "$TMP/hand_policy/model.safetensors" "$TMP/mk/0000/policy/model.safetensors"
check pipeline_by_hand_same_critic cmp -s "$TMP/hand_critic/model.safetensors" "$TMP/mk/0000/critic/model.safetensors"
check pipeline_by_hand_same_stats test "$(stats_json "$TMP/hand_stats.safe")" = "$(stats_json "$TMP/mk/0000/stats.safe")"

# ---- rerunning one stage on saved shards reproduces it bit for bit ----
safe-critic --init-from "$MODEL" --control "$TMP/mk/init/control.safe" --seed 3 --quiet \
    -i "$TMP/mk/0000/scored.safe" -o "$TMP/adv_again.safe" --out-critic "$TMP/critic_again"
check rerun_critic_same_records test "$(safe-cat "$TMP/adv_again.safe" | md5sum)" = "$(safe-cat "$TMP/mk/0000/adv.safe" | md5sum)"
safe-update --policy "$MODEL" --control "$TMP/mk/init/control.safe" --seed 3 --quiet --lr 1e-3 \
    -i "$TMP/mk/0000/adv.safe" -o "$TMP/policy_again" --stats "$TMP/stats_again.safe"
check rerun_update_same_policy cmp -s "$TMP/policy_again/model.safetensors" "$TMP/mk/0000/policy/model.safetensors"

# ---- resume: 4 iterations straight == 2, a kill during iteration 3's update, and make again ----
# (the resumed run also prunes optimiser state, KEEP_OPT=1: neither changes the result)
make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/straight" ITERS=4 $SMALL UPDATE_OPTS="--lr 1e-3" >/dev/null 2>&1
make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/resumed" ITERS=2 KEEP_OPT=1 $SMALL UPDATE_OPTS="--lr 1e-3" >/dev/null 2>&1
# iteration 3 (0002) up to its advantages, then an update killed with SIGKILL mid-way
make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/resumed" ITERS=4 KEEP_OPT=1 $SMALL "$TMP/resumed/0002/adv.safe" >/dev/null 2>&1
safe-update --policy "$TMP/resumed/0001/policy" --control "$TMP/resumed/0001/control.safe" --seed 3 \
    --quiet --lr 1e-3 --epochs 100000 -i "$TMP/resumed/0002/adv.safe" -o "$TMP/resumed/0002/policy" \
    --stats "$TMP/resumed/0002/stats.safe" &
pid=$!
sleep 1
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
check resume_kill_leaves_no_final_output test ! -e "$TMP/resumed/0002/stats.safe" -a ! -e "$TMP/resumed/0002/policy"
make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/resumed" ITERS=4 KEEP_OPT=1 $SMALL UPDATE_OPTS="--lr 1e-3" >/dev/null 2>&1
check resume_same_policy_bytes cmp -s "$TMP/straight/0003/policy/model.safetensors" "$TMP/resumed/0003/policy/model.safetensors"
check resume_same_stats test "$(stats_json "$TMP/straight/0003/stats.safe")" = "$(stats_json "$TMP/resumed/0003/stats.safe")"
check resume_same_control cmp -s "$TMP/straight/0003/control.safe" "$TMP/resumed/0003/control.safe"
check keep_opt_prunes_old_moments test -z "$(ls "$TMP"/resumed/000[012]/policy/optimizer.safetensors \
    "$TMP"/resumed/000[012]/critic/*optimizer.safetensors 2>/dev/null)"
check keep_opt_keeps_last_moments test -f "$TMP/resumed/0003/policy/optimizer.safetensors" \
    -a -f "$TMP/resumed/0003/critic/optimizer.safetensors" -a -f "$TMP/resumed/0003/critic/value_head_optimizer.safetensors"
check keep_opt_keeps_weights test -f "$TMP/resumed/0000/policy/model.safetensors" -a -f "$TMP/resumed/0000/critic/model.safetensors"
check no_keep_opt_keeps_all test -f "$TMP/straight/0000/policy/optimizer.safetensors"
expect_status keep_opt_refuses_0 2 make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/x" KEEP_OPT=0

# ---- SHARDS=2 gives the same records and the same next policy as SHARDS=1 ----
make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/sh2" ITERS=1 SHARDS=2 $SMALL UPDATE_OPTS="--lr 1e-3" >/dev/null 2>&1
check shards_same_records test "$(safe-cat "$TMP/sh2/0000/rollout.safe" | md5sum)" = "$(safe-cat "$TMP/mk/0000/rollout.safe" | md5sum)"
check shards_same_policy cmp -s "$TMP/sh2/0000/policy/model.safetensors" "$TMP/mk/0000/policy/model.safetensors"

# ---- SHARDS changed on an existing RUN: the done iteration stays, the next one uses the new
# split, and the result is the straight run's ----
cp -a "$TMP/sh2" "$TMP/chg"   # -a: make compares the times
before=$(cd "$TMP/chg/0000" && ls -l --time-style=+%s.%N stats.safe adv.safe scored.safe | md5sum)
make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/chg" ITERS=1 SHARDS=3 $SMALL UPDATE_OPTS="--lr 1e-3" >/dev/null 2>&1
check shards_changed_done_iteration_kept test "$(cd "$TMP/chg/0000" && ls -l --time-style=+%s.%N stats.safe adv.safe scored.safe | md5sum)" = "$before" \
    -a ! -e "$TMP/chg/0000/rollout.0-of-3.safe"
make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/chg" ITERS=2 SHARDS=3 $SMALL UPDATE_OPTS="--lr 1e-3" >/dev/null 2>&1
make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/mk" ITERS=2 $SMALL UPDATE_OPTS="--lr 1e-3" >/dev/null 2>&1
check shards_changed_next_iteration_split_3 test -f "$TMP/chg/0001/scored.2-of-3.safe"
check shards_changed_same_records test "$(safe-cat "$TMP/chg/0001/scored.safe" | md5sum)" = "$(safe-cat "$TMP/mk/0001/scored.safe" | md5sum)"
check shards_changed_same_policy cmp -s "$TMP/chg/0001/policy/model.safetensors" "$TMP/mk/0001/policy/model.safetensors"
# the slices carry i/N: safe-cat joins one split's slices only, each once
R="--policy $MODEL --prompts $PROMPTS --num-prompts 5 --samples-per-prompt 1 --max-new-tokens 4 --seed 3 --quiet"
safe-rollout $R -o "$TMP/whole.safe"
for k in 0 1 2; do safe-rollout $R --shard $k/3 -o "$TMP/sl$k.3.safe"; done
safe-rollout $R --shard 1/2 -o "$TMP/sl1.2.safe"
safe-cat -o "$TMP/joined.safe" "$TMP/sl0.3.safe" "$TMP/sl1.3.safe" "$TMP/sl2.3.safe"
check slices_joined_equal_whole_run cmp -s "$TMP/joined.safe" "$TMP/whole.safe"
check slices_header_says_which test "$(safe-cat --header "$TMP/sl1.3.safe" | jq -c '[.shard, .num_shards]')" = "[1,3]"
expect_status slices_of_two_splits_refused 2 safe-cat -o "$TMP/bad.safe" "$TMP/sl0.3.safe" "$TMP/sl1.2.safe"
check slices_of_two_splits_message grep -q 'sl1.2.safe: header: field "num_shards" is 2 but .*sl0.3.safe has 3' "$TMP/err"
expect_status slice_twice_refused 2 safe-cat -o "$TMP/bad.safe" "$TMP/sl0.3.safe" "$TMP/sl2.3.safe" "$TMP/sl0.3.safe"
check slice_twice_message grep -q "slice 0 of 3 is already among the inputs before it" "$TMP/err"
check slices_refused_no_output test ! -e "$TMP/bad.safe"
safe-cat -o "$TMP/part.safe" "$TMP/sl0.3.safe" "$TMP/sl1.3.safe"
check slices_partial_join_says_which test "$(safe-cat --header "$TMP/part.safe" | jq -c '[.shard, .shards, .num_shards]')" = "[null,[0,1],3]"
expect_status slices_partial_join_then_a_slice_again_refused 2 safe-cat -o "$TMP/bad.safe" "$TMP/part.safe" "$TMP/sl1.3.safe"
safe-cat -o "$TMP/joined2.safe" "$TMP/part.safe" "$TMP/sl2.3.safe"
check slices_partial_join_then_the_rest_equal_whole cmp -s "$TMP/joined2.safe" "$TMP/whole.safe"
expect_status slices_out_of_order_refused 2 safe-cat -o "$TMP/bad.safe" "$TMP/sl2.3.safe" "$TMP/sl0.3.safe" "$TMP/sl1.3.safe"
check slices_out_of_order_message grep -q "slice 0 of 3 comes after slice 2: join slices in order" "$TMP/err"
R6="--policy $MODEL --prompts $PROMPTS --samples-per-prompt 1 --max-new-tokens 4 --seed 3 --quiet"
safe-rollout $R6 --num-prompts 8 --shard 0/2 -o "$TMP/n8.safe"
safe-rollout $R6 --num-prompts 4 --shard 1/2 -o "$TMP/n4.safe"
expect_status slices_of_different_batches_refused 2 safe-cat -o "$TMP/bad.safe" "$TMP/n8.safe" "$TMP/n4.safe"
check slices_of_different_batches_names_field grep -q 'field "num_prompts" is 4 but .*n8.safe has 8' "$TMP/err"
safe-rollout $R --seed 4 --shard 1/3 -o "$TMP/seed4.safe"
expect_status slices_of_different_seeds_refused 2 safe-cat -o "$TMP/bad.safe" "$TMP/sl0.3.safe" "$TMP/seed4.safe"
safe-cat --with-header "$TMP/sl0.3.safe" | jq -c 'del(.shard, .num_shards)' | safe-cat --to-shard -o "$TMP/noslice.safe"
expect_status slices_beside_a_rollout_without_slice_fields_refused 2 safe-cat -o "$TMP/bad.safe" "$TMP/noslice.safe" "$TMP/sl1.3.safe"
safe-cat --with-header "$TMP/sl0.3.safe" > "$TMP/sl0.jsonl"
safe-cat "$TMP/sl1.3.safe" > "$TMP/sl1_noheader.jsonl"
expect_status slices_beside_headerless_json_refused 2 safe-cat -o "$TMP/bad.safe" "$TMP/sl0.3.safe" "$TMP/sl1_noheader.jsonl" "$TMP/sl2.3.safe"
check slices_beside_headerless_json_message grep -q "sl1_noheader.jsonl: no header .* is a rollout slice" "$TMP/err"
safe-rollout $R --temperature 0.7 --shard 1/3 -o "$TMP/t07.safe"
expect_status slices_of_different_temperatures_refused 2 safe-cat -o "$TMP/bad.safe" "$TMP/sl0.3.safe" "$TMP/t07.safe"
check slices_of_different_temperatures_show_values grep -q 'field "temperature" is 0.69999998807907104 but .* has 1' "$TMP/err"
expect_status slices_two_headers_in_one_stream_refused 2 sh -c "cat '$TMP/sl0.jsonl' '$TMP/sl0.jsonl' | safe-cat --to-shard -o '$TMP/bad.safe'"
safe-cat --force -o "$TMP/forced.safe" "$TMP/sl0.3.safe" "$TMP/seed4.safe"
check slices_force_output_has_no_slice_fields test "$(safe-cat --header "$TMP/forced.safe" | jq -c '[.shard, .shards, .num_shards]')" = "[null,null,null]"
check slices_refusals_leave_no_output test ! -e "$TMP/bad.safe"
# outputs: a FIFO is written as it is (not replaced by a file); '' and a trailing slash refused
mkfifo "$TMP/fifo"
safe-cat "$TMP/fifo" > "$TMP/from_fifo.jsonl" &
reader=$!
safe-pid --init --quiet -o "$TMP/fifo"
wait $reader
check output_to_fifo_streams test -p "$TMP/fifo" -a "$(jq -r .phase "$TMP/from_fifo.jsonl")" = WARMUP
expect_status output_empty_name_refused 1 safe-pid --init --quiet -o ""
expect_status output_trailing_slash_refused 1 safe-rollout $R -o "$TMP/newdir/"
check output_trailing_slash_message grep -q "that names a directory; give a file name" "$TMP/err"
for bad in 0/2x 1/2/5 " 0/2" 2/2 -1/2 1/0 +1/2 x; do
    expect_status "rollout_shard_refuses_'$bad'" 1 safe-rollout $R --shard "$bad" -o "$TMP/bad.safe"
done
for v in "SHARDS=0" "SHARDS=abc" "ITERS=0" "ITERS=1x"; do
    expect_status "pipeline_refuses_$v" 2 make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/bad" $SMALL "$v"
    check "pipeline_refuses_${v}_message" grep -q "${v%%=*} must be a whole number from 1 to 100000" "$TMP/err"
done

# ---- HOSTS: shard K on host K mod n through pipelines/on-host, the same records and policy ----
# A fake ssh: logs the host and the remote command, then runs the command here the way sshd
# would, as one string for a POSIX login shell (sh, dash on Debian) in a fresh environment.
cat >"$TMP/ssh" <<EOS
#!/bin/sh
host=\$1; shift
printf '%s %s\n' "\$host" "\$*" >>"$TMP/ssh.log"
exec env -i PATH="\$PATH" HOME="\$HOME" sh -c "\$*"
EOS
# A LAUNCH that logs what it runs (here, before the ssh) and runs it.
cat >"$TMP/here" <<EOS
#!/bin/sh
echo "\$(basename "\$1") \$2" >>"$TMP/launch.log"
exec "\$@"
EOS
chmod +x "$TMP/ssh" "$TMP/here"
export SAFE_SSH="$TMP/ssh"
make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/hosts" ITERS=1 SHARDS=3 HOSTS="h1 h2" \
    LAUNCH="$TMP/here" $SMALL UPDATE_OPTS="--lr 1e-3" >"$TMP/hosts.log" 2>&1
# host and output of each remote command: the six shard stages, round robin, nothing else
sed -n "s/^\([^ ]*\) .*'-o' '[^']*\/\([a-z]*\.[0-9]*\)-of-3\.safe'.*/\1 \2/p" "$TMP/ssh.log" 2>/dev/null | sort >"$TMP/ran"
printf '%s\n' "h1 rollout.0" "h1 rollout.2" "h1 scored.0" "h1 scored.2" "h2 rollout.1" "h2 scored.1" >"$TMP/want"
check hosts_round_robin test "$(wc -l <"$TMP/ssh.log")" -eq 6 -a "$(cat "$TMP/ran")" = "$(cat "$TMP/want")"
check hosts_launch_goes_first test "$(sort "$TMP/launch.log")" = "$(printf 'on-host h%s\n' 1 1 1 1 2 2)"
check hosts_same_records test "$(safe-cat "$TMP/hosts/0000/rollout.safe" | md5sum)" = "$(safe-cat "$TMP/mk/0000/rollout.safe" | md5sum)" \
    -a "$(safe-cat "$TMP/hosts/0000/scored.safe" | md5sum)" = "$(safe-cat "$TMP/mk/0000/scored.safe" | md5sum)"
check hosts_same_policy cmp -s "$TMP/hosts/0000/policy/model.safetensors" "$TMP/mk/0000/policy/model.safetensors"
# the launcher is found beside the makefile when make runs elsewhere
root=$(pwd)
(cd "$TMP" && make -n -f "$root/pipelines/safe.mk" RUN="$TMP/n" ITERS=1 SHARDS=2 HOSTS="h1 h2" \
    SAFE_BIN="$SAFE_BIN" DATA="$DATA") >"$TMP/dry.log" 2>&1
check hosts_launcher_found_from_elsewhere grep -q "^$root/pipelines/on-host h2 $SAFE_BIN/safe-score " "$TMP/dry.log"

# on-host alone: arguments unchanged (spaces, quotes, $, *, newline, empty), same directory,
# OMP_NUM_THREADS passed, the command's exit status; no host or command: exit 1
pipelines/on-host h1 printf '%s\n' "a b" "it's" '"q"' '$HOME' '*' 'x\y' '' "new
line" >"$TMP/args.remote"
printf '%s\n' "a b" "it's" '"q"' '$HOME' '*' 'x\y' '' "new
line" >"$TMP/args.here"
check on_host_args_unchanged cmp -s "$TMP/args.here" "$TMP/args.remote"
mkdir -p "$TMP/a dir"
check on_host_same_directory test "$(cd "$TMP/a dir" && "$root/pipelines/on-host" h1 pwd)" = "$TMP/a dir"
check on_host_passes_omp test "$(OMP_NUM_THREADS=5 pipelines/on-host h1 sh -c 'echo "$OMP_NUM_THREADS"')" = 5
expect_status on_host_exit_status 7 pipelines/on-host h1 sh -c 'exit 7'
expect_status on_host_needs_host_and_command 1 pipelines/on-host
check on_host_says_why grep -q 'need a host and a command' "$TMP/err"
expect_status on_host_needs_command 1 pipelines/on-host h1
