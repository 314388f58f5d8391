# test_dp.sh — data-parallel safe-critic and safe-update: 2 and 3 MPI ranks on one machine
# against 1 rank on the whole batch; uneven slices; refused splits; a rank that dies or hangs;
# the make pipeline with LAUNCH_DP=mpirun.
#
# What "the same" means here (each comparison prints its measured numbers):
#   - the critic's records (values, advantages, returns, normalised rewards): byte for byte,
#     since the value pass is batch-invariant and reward normalisation and whitening use the
#     whole batch on every rank; its header equal but for the training statistics;
#   - gradients, parameters and optimiser moments after every step, of the policy, the critic
#     backbone and the value heads: within 1e-6 relative, element by element. Each gradient
#     is a double sum of per-sequence terms that do not depend on the batch (model.h), the
#     ranks sum those double sums, and the loss means divide by the global token count on
#     every rank, so N ranks reproduce 1 rank up to the rounding of double sums (measured:
#     bit-identical on this batch for 2 and 3 ranks);
#   - stats: identical, rollout and training statistics alike (the training statistics are
#     sums of per-record sums taken in record order over all ranks, comm_record_sums), but
#     for seconds and peak_rss_mb;
#   - 1 rank under mpirun: byte for byte the standalone run.
. "$(dirname "$0")/lib.sh"

if ! command -v mpirun >/dev/null 2>&1; then
    echo "SKIP test_dp.sh: mpirun not found (tests/deps.sh installs openmpi-bin and libopenmpi-dev)"
    exit 0
fi
if ! mpirun --version 2>/dev/null | grep -q "Open MPI"; then
    echo "SKIP test_dp.sh: these tests drive Open MPI's mpirun (--oversubscribe), and $(command -v mpirun) is another MPI"
    exit 0
fi
case "$(safe-update --version)" in
*MPI*) ;;
*) echo "SKIP test_dp.sh: this build has no MPI (install libopenmpi-dev, then make MPI=1)"; exit 0 ;;
esac

MODEL="$DATA/stories260K/stories260K.bin"
PROMPTS="$DATA/tinystories/prompts.jsonl"
CMP="${SAFE_BUILD:?run through make test}/tests/test_stcompare"
export OMP_NUM_THREADS=1
# Open MPI refuses to start as root unless told so (CI containers run as root).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Sanitizer builds (make test-asan): Open MPI leaves allocations behind at MPI_Finalize (in
# libmpi, libopen-pal, hwloc and its dlopen'ed components, which no suppression file can name),
# so LeakSanitizer is off for processes started by mpirun, and only for them: the
# single-process runs below keep leak checking, and AddressSanitizer's other checks stay on.
MPIRUN="env ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 mpirun --oversubscribe --bind-to none"
LR=1e-3

# records_md5 FILE: the records as JSON lines, and the header but for the training statistics
TRAIN_KEYS='{value_loss, critic_grad_norm, value_clip_frac}'
records_md5() {
    safe-cat "$1" | md5sum | cut -d' ' -f1
    safe-cat --header "$1" | jq -cS 'del(.value_loss, .critic_grad_norm, .value_clip_frac)' | md5sum | cut -d' ' -f1
}
# same_checkpoint TAG DIR1 DIRN FILE...: each FILE of the two checkpoints within 1e-6
# element-relative (test_stcompare's default), and says when they are bit-identical
same_checkpoint() {
    tag=$1 d1=$2 dn=$3
    shift 3
    for f in "$@"; do
        echo "  $tag: $f"
        check "${tag}_$(basename "$f" .safetensors)" "$CMP" "$d1/$f" "$dn/$f" 1e-6 elem
        cmp -s "$d1/$f" "$dn/$f" && echo "  (bit-identical)"
    done
}
stats_of() { safe-cat "$1" | jq -cS 'del(.seconds, .peak_rss_mb)'; }
ROLLOUT_KEYS='{samples, reward_mean, reward_std, reward_norm_mean, kl, kl_seq, entropy, length_mean, eos_rate, tau, gate}'

# ---- the collectives themselves, on 3 ranks (lib/comm.c) ----
timeout 60 $MPIRUN -np 3 "$SAFE_BUILD/tests/test_comm" >"$TMP/comm.log" 2>&1
check dp_comm_3_ranks_exit_0 test $? -eq 0
sed 's/^\(PASS\|FAIL\) /\1 dp_/' "$TMP/comm.log"

# ---- the batch: 4 prompts x 2 samples, 16 tokens (8 records) ----
safe-pid --init --quiet -o "$TMP/control0.safe"
safe-rollout --policy "$MODEL" --prompts "$PROMPTS" --num-prompts 4 --samples-per-prompt 2 \
    --max-new-tokens 16 --seed 3 --iteration 0 --quiet --level 0 |
  safe-score --vader --quiet --level 0 -o "$TMP/scored.safe"

# ---- safe-critic: 1 rank, then 2 (4+4 records) and 3 ranks (2+3+3: uneven) ----
CRITIC="--init-from $MODEL --control $TMP/control0.safe --seed 3 --quiet --lr $LR -i $TMP/scored.safe"
mkdir -p "$TMP/g1c" "$TMP/g2c" "$TMP/g3c"
SAFE_DUMP_GRADS="$TMP/g1c" safe-critic $CRITIC -o "$TMP/adv1.safe" --out-critic "$TMP/critic1"
for n in 2 3; do
    SAFE_DUMP_GRADS="$TMP/g${n}c" timeout 60 $MPIRUN -np $n safe-critic $CRITIC -o "$TMP/adv$n.safe" \
        --out-critic "$TMP/critic$n" >"$TMP/critic$n.log" 2>&1 || cat "$TMP/critic$n.log"
    check dp_critic_${n}_ranks_same_records test "$(records_md5 "$TMP/adv1.safe")" = "$(records_md5 "$TMP/adv$n.safe")"
    same_checkpoint dp_critic_${n}_ranks_gradients "$TMP/g1c" "$TMP/g${n}c" safe-critic-step-0000.safetensors \
        safe-critic-step-0001.safetensors
    same_checkpoint dp_critic_${n}_ranks_after_2_steps "$TMP/critic1" "$TMP/critic$n" model.safetensors \
        value_head.safetensors optimizer.safetensors value_head_optimizer.safetensors
    h1=$(safe-cat --header "$TMP/adv1.safe" | jq -c "$TRAIN_KEYS") hn=$(safe-cat --header "$TMP/adv$n.safe" | jq -c "$TRAIN_KEYS")
    check dp_critic_${n}_ranks_stats_identical test "$h1" = "$hn"
done
timeout 60 $MPIRUN -np 1 safe-critic $CRITIC -o "$TMP/adv1m.safe" --out-critic "$TMP/critic1m"
check dp_critic_1_rank_mpirun_same_critic cmp -s "$TMP/critic1/model.safetensors" "$TMP/critic1m/model.safetensors"
check dp_critic_1_rank_mpirun_same_output cmp -s "$TMP/adv1.safe" "$TMP/adv1m.safe"
# the PPO baseline's critic (one head, KL in the reward) on 2 ranks: the same records
safe-critic $CRITIC --algo ppo -o "$TMP/ppo1.safe" --out-critic "$TMP/ppo_critic1"
timeout 60 $MPIRUN -np 2 safe-critic $CRITIC --algo ppo -o "$TMP/ppo2.safe" --out-critic "$TMP/ppo_critic2"
check dp_critic_ppo_2_ranks_same_records test "$(records_md5 "$TMP/ppo1.safe")" = "$(records_md5 "$TMP/ppo2.safe")"
# whitening is global: the advantages of the 3-rank run have mean 0 and std 1 over the batch
check dp_critic_global_whitening test "$(safe-cat "$TMP/adv3.safe" | jq -s '[.[].adv[]] | (add / length) as $m |
    ((map((. - $m) * (. - $m)) | add) / (length - 1) | sqrt) as $s | ($m | fabs) < 1e-5 and (($s - 1) | fabs) < 1e-4')" = true

# ---- where the ranks come from without mpirun ----
# RANK/WORLD_SIZE (or an srun task) name 2 ranks but carry no CPU transport: a clear stop
expect_status dp_world_from_env_needs_mpi 1 env WORLD_SIZE=2 RANK=1 safe-update --policy "$MODEL" --quiet -i "$TMP/adv1.safe" -o "$TMP/x"
check dp_world_from_env_message grep -q "rank 1: collective .* needs MPI.*mpirun -np 2" "$TMP/err"
expect_status dp_world_from_srun_needs_mpi 1 env SLURM_STEP_NUM_TASKS=2 SLURM_NTASKS=2 SLURM_PROCID=0 SLURM_LOCALID=0 \
    safe-update --policy "$MODEL" --quiet -i "$TMP/adv1.safe" -o "$TMP/x"
# a batch script's own shell (SLURM_PROCID=0, the job's SLURM_NTASKS, no srun step) is one rank
expect_status dp_batch_script_is_one_rank 2 env SLURM_NTASKS=4 SLURM_PROCID=0 SLURM_LOCALID=0 \
    safe-update --policy "$MODEL" --quiet -i "$TMP/scored.safe" -o "$TMP/x"
check dp_batch_script_reads_input grep -q "kind.*expected adv" "$TMP/err"
# partial or inconsistent srun variables: refused (exit 1), never read as "rank 1 of 1"
expect_status dp_srun_step_without_ntasks 1 env SLURM_STEP_NUM_TASKS=2 SLURM_PROCID=1 \
    safe-update --policy "$MODEL" --quiet -i "$TMP/adv1.safe" -o "$TMP/x"
expect_status dp_srun_step_without_procid 1 env SLURM_STEP_NUM_TASKS=2 safe-pid --init --quiet -o "$TMP/x.safe"
expect_status dp_srun_step_and_ntasks_disagree 1 env SLURM_STEP_NUM_TASKS=2 SLURM_NTASKS=3 SLURM_PROCID=0 \
    safe-pid --init --quiet -o "$TMP/x.safe"
# srun --mpi=pmix -n 2 (PMIx gives the rank only; the step says 2): rank 0 refuses too
expect_status dp_pmix_rank_0_of_srun_step_refused 1 env PMIX_RANK=0 SLURM_STEP_NUM_TASKS=2 SLURM_NTASKS=2 \
    SLURM_PROCID=0 safe-pid --init --quiet -o "$TMP/x.safe"
check dp_srun_refusals_no_output test ! -e "$TMP/x.safe"
expect_status dp_rank_beyond_world 1 env WORLD_SIZE=2 RANK=2 safe-update --policy "$MODEL" --quiet -i "$TMP/adv1.safe" -o "$TMP/x"
expect_status dp_bad_comm_timeout 1 safe-update --policy "$MODEL" --comm-timeout 0 -o "$TMP/x"

# ---- safe-update: 1 rank, 1 rank under mpirun, 2 ranks (2+2 per minibatch), 3 (1+1+2) ----
UPDATE="--policy $MODEL --control $TMP/control0.safe --seed 3 --quiet --lr $LR --epochs 2 --minibatches 2 -i $TMP/adv1.safe"
mkdir -p "$TMP/g1u" "$TMP/g2u" "$TMP/g3u"
SAFE_DUMP_GRADS="$TMP/g1u" safe-update $UPDATE -o "$TMP/policy1" --stats "$TMP/stats1.safe"
timeout 60 $MPIRUN -np 1 safe-update $UPDATE -o "$TMP/policy1m" --stats "$TMP/stats1m.safe"
check dp_update_1_rank_mpirun_same_policy cmp -s "$TMP/policy1/model.safetensors" "$TMP/policy1m/model.safetensors"
check dp_update_1_rank_mpirun_same_stats test "$(stats_of "$TMP/stats1.safe")" = "$(stats_of "$TMP/stats1m.safe")"
for n in 2 3; do
    SAFE_DUMP_GRADS="$TMP/g${n}u" timeout 60 $MPIRUN -np $n safe-update $UPDATE -o "$TMP/policy$n" \
        --stats "$TMP/stats$n.safe" >"$TMP/update$n.log" 2>&1 || cat "$TMP/update$n.log"
    same_checkpoint dp_update_${n}_ranks_gradients "$TMP/g1u" "$TMP/g${n}u" safe-update-step-0000.safetensors \
        safe-update-step-0001.safetensors safe-update-step-0002.safetensors safe-update-step-0003.safetensors
    same_checkpoint dp_update_${n}_ranks_after_4_steps "$TMP/policy1" "$TMP/policy$n" model.safetensors optimizer.safetensors
    check dp_update_${n}_ranks_optimizer_step test "$(jq .step "$TMP/policy$n/trainer_state.json")" = 4
    r1=$(safe-cat "$TMP/stats1.safe" | jq -cS "$ROLLOUT_KEYS") rn=$(safe-cat "$TMP/stats$n.safe" | jq -cS "$ROLLOUT_KEYS")
    check dp_update_${n}_ranks_rollout_stats_identical test "$r1" = "$rn"
    check dp_update_${n}_ranks_stats_identical test "$(stats_of "$TMP/stats1.safe")" = "$(stats_of "$TMP/stats$n.safe")"
done
# the predictive step limit measures KL(old||new) over all ranks' tokens: the same scaling
STEPLIM="--policy $MODEL --control $TMP/control0.safe --seed 3 --quiet --lr $LR --epochs 1 --minibatches 2 --step-limit 1e-5 -i $TMP/adv1.safe"
safe-update $STEPLIM -o "$TMP/sl1" --stats "$TMP/sl1.safe"
timeout 60 $MPIRUN -np 2 safe-update $STEPLIM -o "$TMP/sl2" --stats "$TMP/sl2.safe"
check dp_step_limit_scaled test "$(safe-cat "$TMP/sl1.safe" | jq '.step_scale_min < 1')" = true
check dp_step_limit_2_ranks_stats_identical test "$(stats_of "$TMP/sl1.safe")" = "$(stats_of "$TMP/sl2.safe")"
same_checkpoint dp_step_limit_2_ranks "$TMP/sl1" "$TMP/sl2" model.safetensors
# only rank 0 writes: one stats record, no stray temporary files
check dp_update_one_stats_record test "$(safe-cat "$TMP/stats3.safe" | wc -l)" = 1
check dp_no_stray_temporaries test -z "$(find "$TMP" -name '*.tmp*')"

# ---- the tools that are not data parallel refuse to run as several ranks ----
expect_status dp_rollout_refuses_ranks 1 timeout 60 $MPIRUN -np 2 safe-rollout --policy "$MODEL" --prompts "$PROMPTS" \
    --num-prompts 2 --quiet -o "$TMP/x.safe"
check dp_rollout_refusal_says_shard grep -q "not data parallel, but started as rank . of 2 (OMPI_COMM_WORLD_SIZE).*--shard K/N" "$TMP/err"
check dp_rollout_refusal_no_output test ! -e "$TMP/x.safe"
for t in "safe-score --vader -i $TMP/scored.safe" "safe-pid --init" "safe-cat $TMP/scored.safe"; do
    expect_status "dp_$(echo "$t" | cut -d' ' -f1)_refuses_world_2" 1 env WORLD_SIZE=2 RANK=1 $t -o "$TMP/x.safe"
done
expect_status dp_one_process_under_mpirun_np_1 0 timeout 60 $MPIRUN -np 1 safe-pid --init --quiet -o "$TMP/x.safe"
# mpirun inside an srun step (an interactive allocation; mpirun's own daemons run as srun
# steps over the nodes): MPI's world is the truth, the step's task count is not the ranks'
rm -f "$TMP/x.safe"
expect_status dp_mpirun_inside_srun_step_update 0 env SLURM_STEP_NUM_TASKS=1 SLURM_NTASKS=1 SLURM_PROCID=0 \
    timeout 60 $MPIRUN -np 2 safe-update $UPDATE -o "$TMP/policy_srun" --stats "$TMP/stats_srun.safe"
check dp_mpirun_inside_srun_step_same_policy cmp -s "$TMP/policy1/model.safetensors" "$TMP/policy_srun/model.safetensors"

# ---- refused settings ----
expect_status dp_refuses_minibatch_smaller_than_ranks 1 timeout 60 $MPIRUN -np 3 safe-update $UPDATE --minibatches 4 -o "$TMP/x"
check dp_refusal_names_ranks grep -q "cannot be split over 3 ranks" "$TMP/err"
expect_status dp_refuses_different_options 1 timeout 60 $MPIRUN -np 1 safe-update $UPDATE --seed 4 -o "$TMP/x" : \
    -np 1 safe-update $UPDATE -o "$TMP/x"
check dp_different_options_message grep -q "started with different options" "$TMP/err"
check dp_different_options_no_output test ! -e "$TMP/x"
# the same command line, but each rank reads another batch (a filesystem that is not shared):
# stopped at the start, naming what differs
mkdir -p "$TMP/wd0" "$TMP/wd1"
cp "$TMP/adv1.safe" "$TMP/wd0/adv.safe"
safe-rollout --policy "$MODEL" --prompts "$PROMPTS" --num-prompts 4 --samples-per-prompt 2 --max-new-tokens 16 \
    --seed 4 --iteration 0 --quiet | safe-score --vader --quiet |
  safe-critic --init-from "$MODEL" --control "$TMP/control0.safe" --seed 3 --quiet -o "$TMP/wd1/adv.safe" --out-critic "$TMP/wd1/c"
ONE="--policy $MODEL --control $TMP/control0.safe --seed 3 --quiet -i adv.safe -o p --stats s.safe"
expect_status dp_different_inputs_exit_3 3 timeout 60 $MPIRUN -np 1 -wdir "$TMP/wd0" safe-update $ONE : \
    -np 1 -wdir "$TMP/wd1" safe-update $ONE
check dp_different_inputs_named grep -q "the ranks hold different input batches (tokens), input advantages, input log-probs:" "$TMP/err"
check dp_different_inputs_not_the_weights sh -c "! grep -q 'policy weights' '$TMP/err'"
expect_status dp_refuses_stdin 1 timeout 60 $MPIRUN -np 2 safe-critic --init-from "$MODEL" --quiet --out-critic "$TMP/x" -o "$TMP/x.safe"
check dp_stdin_refusal_says_why grep -q "input must be a file" "$TMP/err"

# ---- a rank that dies or hangs stops the job, with a clear error, instead of hanging ----
t0=$(date +%s)
SAFE_TEST_KILL_RANK=1 timeout 60 $MPIRUN -np 2 safe-update $UPDATE -o "$TMP/killed" --stats "$TMP/killed.safe" >"$TMP/out" 2>"$TMP/err"
rc=$?
check dp_killed_rank_stops_job test "$rc" -ne 0 -a "$rc" -ne 124
check dp_killed_rank_is_named grep -q "rank 1" "$TMP/err"
check dp_killed_rank_leaves_no_output test ! -e "$TMP/killed" -a ! -e "$TMP/killed.safe"
SAFE_TEST_STALL_RANK=1 timeout 60 $MPIRUN -np 2 safe-update $UPDATE --comm-timeout 2 -o "$TMP/hung" --stats "$TMP/hung.safe" >"$TMP/out" 2>"$TMP/err"
rc=$?
check dp_hung_rank_times_out_exit_3 test "$rc" -eq 3
check dp_hung_rank_message grep -q "rank 0: collective .* timed out after 2 s: a peer rank probably died" "$TMP/err"
SAFE_COMM_TIMEOUT=2 SAFE_TEST_STALL_RANK=0 timeout 60 $MPIRUN -np 3 safe-critic $CRITIC -o "$TMP/hung2.safe" --out-critic "$TMP/hung2" >"$TMP/out" 2>"$TMP/err"
rc=$?
check dp_hung_rank0_critic_times_out test "$rc" -eq 3 && grep -q "timed out after 2 s" "$TMP/err"
check dp_hung_ranks_leave_no_output test ! -e "$TMP/hung" -a ! -e "$TMP/hung.safe" -a ! -e "$TMP/hung2.safe"
# a rank stopped after the last collective: rank 0 has written its outputs, then waits for it
# at most the timeout (exit 3) instead of holding the job in MPI_Finalize forever
SAFE_TEST_STALL_END_RANK=1 timeout 60 $MPIRUN -np 2 safe-update $UPDATE --comm-timeout 2 -o "$TMP/endhung" \
    --stats "$TMP/endhung.safe" >"$TMP/out" 2>"$TMP/err"
rc=$?
check dp_rank_hung_at_end_times_out_exit_3 test "$rc" -eq 3
check dp_rank_hung_at_end_message grep -q "rank 0: collective barrier (the end of the run) timed out after 2 s" "$TMP/err"
check dp_rank_hung_at_end_outputs_complete cmp -s "$TMP/policy1/model.safetensors" "$TMP/endhung/model.safetensors"
check dp_failures_took_under_40s test $(($(date +%s) - t0)) -lt 40
grep -h "timed out" "$TMP/err" | head -n 1

# ---- the make pipeline with LAUNCH_DP: same advantages and stats as 1 rank ----
SMALL="ITERS=1 BATCH=4 SAMPLES=2 MAX_NEW=16 SEED=3 SAFE_BIN=$SAFE_BIN DATA=$DATA QUIET=--quiet UPDATE_OPTS=--lr=$LR"
make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/mk1" $SMALL >"$TMP/mk1.log" 2>&1
make -s --no-print-directory -f pipelines/safe.mk RUN="$TMP/mk2" $SMALL LAUNCH_DP="$MPIRUN -np 2" >"$TMP/mk2.log" 2>&1 || cat "$TMP/mk2.log"
check dp_pipeline_2_ranks_runs test -f "$TMP/mk2/0000/control.safe"
check dp_pipeline_2_ranks_same_advantages test "$(records_md5 "$TMP/mk1/0000/adv.safe")" = "$(records_md5 "$TMP/mk2/0000/adv.safe")"
check dp_pipeline_2_ranks_stats_identical test "$(stats_of "$TMP/mk1/0000/stats.safe")" = "$(stats_of "$TMP/mk2/0000/stats.safe")"
same_checkpoint dp_pipeline_2_ranks_policy "$TMP/mk1/0000/policy" "$TMP/mk2/0000/policy" model.safetensors
same_checkpoint dp_pipeline_2_ranks_critic "$TMP/mk1/0000/critic" "$TMP/mk2/0000/critic" model.safetensors value_head.safetensors
