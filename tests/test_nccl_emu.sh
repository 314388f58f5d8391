# test_nccl_emu.sh — the NCCL path of data-parallel safe-update and safe-critic with
# --device cuda, without a GPU: the tools linked with the CPU emulation of the kernels and
# its NCCL stand-in (tests/gpu/emu/nccl_emu.c: NCCL's all-reduce as comm.h's over MPI on the
# emulated memory; a bucket written after its all-reduce started stops the run).
#
# What "the same" means here:
#   - one rank: SAFE_NCCL=1 (a one-rank communicator), with the gradients summed during the
#     backward (one bucket per layer) or in one call after it, gives the bytes of the run
#     without NCCL (a sum over one rank is the buffer itself);
#   - 2 and 3 ranks: the overlapped buckets, the one-call all-reduce and SAFE_NCCL=0 (through
#     the host) give identical gradients and policies (each element is summed in double at
#     rank 0 in all three);
#   - N ranks against one rank: step-0 gradients within 1e-5 tensor-relative (each rank's
#     fp32 device gradient is a sum over its own rows; tests/gpu/multi_gpu.sh has the
#     tolerances for real GPUs).
# The real NCCL, streams and events run only on GPUs (tests/gpu/multi_gpu.sh).
. "$(dirname "$0")/lib.sh"

EMU="${SAFE_BUILD:?run through make test}/emu/bin"
if [ ! -x "$EMU/safe-update" ] || [ ! -x "$EMU/safe-critic" ]; then
    echo "  (no $EMU/safe-update: sanitizer build, skipped)"
    exit 0
fi
if ! command -v mpirun >/dev/null 2>&1 || ! mpirun --version 2>/dev/null | grep -q "Open MPI"; then
    echo "SKIP test_nccl_emu.sh: needs Open MPI's mpirun (tests/deps.sh installs openmpi-bin)"
    exit 0
fi
case "$(safe-update --version)" in
*MPI*) ;;
*) echo "SKIP test_nccl_emu.sh: this build has no MPI (install libopenmpi-dev, then make MPI=1)"; exit 0 ;;
esac

MODEL="$DATA/stories260K/stories260K.bin"
PROMPTS="$DATA/tinystories/prompts.jsonl"
CMP="$SAFE_BUILD/tests/test_stcompare"
if [ ! -x "$CMP" ]; then
    fail nccl_emu_needs_test_stcompare "no $CMP: run through make test (make tests builds it)"
    exit 0
fi
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset SAFE_NCCL SAFE_NCCL_OVERLAP SAFE_NCCL_BUCKET_MB SAFE_NCCL_EMU_LOG
MPIRUN="timeout 120 mpirun --oversubscribe --bind-to none"

# the batch: 4 prompts x 2 samples, 16 tokens (8 records; minibatches of 4)
safe-pid --init --quiet -o "$TMP/control.safe"
safe-rollout --policy "$MODEL" --prompts "$PROMPTS" --num-prompts 4 --samples-per-prompt 2 \
    --max-new-tokens 16 --seed 3 --iteration 0 --quiet --level 0 |
  safe-score --vader --quiet --level 0 -o "$TMP/scored.safe"
safe-critic --init-from "$MODEL" --control "$TMP/control.safe" --seed 3 --quiet -i "$TMP/scored.safe" \
    -o "$TMP/adv.safe" --out-critic "$TMP/critic0"
UPDATE="--policy $MODEL --control $TMP/control.safe --seed 3 --quiet --lr 1e-3 --epochs 1 --minibatches 2 --device cuda -i $TMP/adv.safe"
CRITIC="--init-from $MODEL --control $TMP/control.safe --seed 3 --quiet --lr 1e-3 --minibatches 2 --device cuda -i $TMP/scored.safe"

# update TAG [launcher...]: the emulated safe-update into $TMP/TAG (gradients in $TMP/TAG.g)
update() {
    tag=$1; shift
    mkdir -p "$TMP/$tag.g"
    SAFE_DUMP_GRADS="$TMP/$tag.g" "$@" "$EMU/safe-update" $UPDATE -o "$TMP/$tag" --stats "$TMP/$tag.stats" \
        >"$TMP/$tag.log" 2>&1 || { echo "  $tag failed:"; tail -n 5 "$TMP/$tag.log"; }
}
critic() {
    tag=$1; shift
    mkdir -p "$TMP/$tag.g"
    SAFE_DUMP_GRADS="$TMP/$tag.g" "$@" "$EMU/safe-critic" $CRITIC -o "$TMP/$tag.safe" --out-critic "$TMP/$tag" \
        >"$TMP/$tag.log" 2>&1 || { echo "  $tag failed:"; tail -n 5 "$TMP/$tag.log"; }
}
# same_bytes NAME DIR1 DIR2 FILE...: the files of two runs byte for byte
same_bytes() {
    name=$1 a=$2 b=$3; shift 3
    ok=1
    for f in "$@"; do cmp -s "$a/$f" "$b/$f" || { ok=0; echo "  $name: $f differs"; }; done
    check "$name" test "$ok" = 1
}
GRADS1="safe-update-step-0000.safetensors safe-update-step-0001.safetensors"
CGRADS="safe-critic-step-0000.safetensors safe-critic-step-0001.safetensors"
stats_of() { safe-cat "$1" | jq -cS 'del(.seconds, .peak_rss_mb)'; }

# ---- one rank: the one-rank communicator changes nothing ----
update u1
update u1_nccl_after env SAFE_NCCL=1 SAFE_NCCL_OVERLAP=0
update u1_nccl_during env SAFE_NCCL=1 SAFE_NCCL_BUCKET_MB=0
for t in u1_nccl_after u1_nccl_during; do
    same_bytes "nccl_emu_1_rank_${t#u1_}_same_gradients" "$TMP/u1.g" "$TMP/$t.g" $GRADS1
    same_bytes "nccl_emu_1_rank_${t#u1_}_same_policy" "$TMP/u1" "$TMP/$t" model.safetensors optimizer.safetensors
    check "nccl_emu_1_rank_${t#u1_}_same_stats" test "$(stats_of "$TMP/u1.stats")" = "$(stats_of "$TMP/$t.stats")"
done
critic c1
critic c1_nccl_during env SAFE_NCCL=1 SAFE_NCCL_BUCKET_MB=0
same_bytes nccl_emu_1_rank_critic_same_critic "$TMP/c1" "$TMP/c1_nccl_during" model.safetensors value_head.safetensors
check nccl_emu_1_rank_critic_same_records cmp -s "$TMP/c1.safe" "$TMP/c1_nccl_during.safe"

# ---- the NCCL route is taken and the buckets go out during the backward ----
# SAFE_NCCL_EMU_LOG (nccl_emu.c): "start L N WHAT" per bucket, L the kernels launched so far,
# then "wait L K". buckets_ok LOG PER_STEP STEPS: STEPS waits of PER_STEP buckets each, every
# bucket but the last started after more kernels than the one before it (so the backward
# went on between them), none of them after the wait.
buckets_ok() {
    awk -v per="$2" -v steps="$3" '
        $1 == "start" { n++; if (n > 1 && n < per && $2 <= last) bad = 1; last = $2 }
        $1 == "wait" { waits++; if ($3 != per || n != per || $2 < last) bad = 1; n = 0 }
        END { exit !(waits == steps && n == 0 && !bad) }' "$1"
}
STEPS=2   # --epochs 1 --minibatches 2
update u1_log_layer env SAFE_NCCL=1 SAFE_NCCL_BUCKET_MB=0 SAFE_NCCL_EMU_LOG="$TMP/layer.log"
check nccl_emu_1_rank_one_bucket_per_layer_during_backward buckets_ok "$TMP/layer.log" 7 $STEPS
update u1_log_joined env SAFE_NCCL=1 SAFE_NCCL_BUCKET_MB=0.3 SAFE_NCCL_EMU_LOG="$TMP/joined.log"
check nccl_emu_1_rank_buckets_of_two_layers_during_backward buckets_ok "$TMP/joined.log" 3 $STEPS
update u1_log_default env SAFE_NCCL=1 SAFE_NCCL_EMU_LOG="$TMP/default.log"
check nccl_emu_1_rank_default_bucket_size_one_bucket buckets_ok "$TMP/default.log" 1 $STEPS
for t in u1_log_joined u1_log_default; do
    same_bytes "nccl_emu_1_rank_${t#u1_log_}_buckets_same_policy" "$TMP/u1" "$TMP/$t" model.safetensors optimizer.safetensors
done
update u1_log_none env SAFE_NCCL_EMU_LOG="$TMP/none.log"
check nccl_emu_1_rank_without_safe_nccl_no_nccl test ! -s "$TMP/none.log"
critic c1_log env SAFE_NCCL=1 SAFE_NCCL_BUCKET_MB=0 SAFE_NCCL_EMU_LOG="$TMP/critic.log"
check nccl_emu_1_rank_critic_buckets_during_backward buckets_ok "$TMP/critic.log" 7 4   # 2 epochs x 2

# ---- 2 and 3 ranks: during the backward == after it == through the host ----
for n in 2 3; do
    update "u${n}_during" env SAFE_NCCL_BUCKET_MB=0 $MPIRUN -np $n
    update "u${n}_after" env SAFE_NCCL_OVERLAP=0 $MPIRUN -np $n
    update "u${n}_host" env SAFE_NCCL=0 $MPIRUN -np $n
    check "nccl_emu_${n}_ranks_update_ran" test -f "$TMP/u${n}_during/model.safetensors"
    for t in after host; do
        same_bytes "nccl_emu_${n}_ranks_during_vs_${t}_gradients" "$TMP/u${n}_during.g" "$TMP/u${n}_$t.g" $GRADS1
        same_bytes "nccl_emu_${n}_ranks_during_vs_${t}_policy" "$TMP/u${n}_during" "$TMP/u${n}_$t" model.safetensors \
            optimizer.safetensors
    done
    echo "  $n ranks against 1, step-0 gradients:"
    check "nccl_emu_${n}_ranks_gradients_near_1_rank" "$CMP" "$TMP/u1.g/safe-update-step-0000.safetensors" \
        "$TMP/u${n}_during.g/safe-update-step-0000.safetensors" 1e-5 tensor
done
# the default and joined bucket sizes on 2 ranks, and the route: NCCL without being asked
for mb in 0.3 16; do
    update "u2_mb$mb" env SAFE_NCCL_BUCKET_MB=$mb SAFE_NCCL_EMU_LOG="$TMP/u2_mb$mb.log" $MPIRUN -np 2
    same_bytes "nccl_emu_2_ranks_buckets_of_${mb}_mib_vs_host_policy" "$TMP/u2_host" "$TMP/u2_mb$mb" model.safetensors \
        optimizer.safetensors
done
check nccl_emu_2_ranks_take_nccl_route test "$(grep -c '^start ' "$TMP/u2_mb0.3.log")" -eq $((2 * 3 * STEPS))
critic c2_during env SAFE_NCCL_BUCKET_MB=0 $MPIRUN -np 2
critic c2_after env SAFE_NCCL_OVERLAP=0 $MPIRUN -np 2
same_bytes nccl_emu_2_ranks_critic_during_vs_after_gradients "$TMP/c2_during.g" "$TMP/c2_after.g" $CGRADS
same_bytes nccl_emu_2_ranks_critic_during_vs_after "$TMP/c2_during" "$TMP/c2_after" model.safetensors value_head.safetensors

# ---- settings the ranks must share, and bad values ----
expect_status nccl_emu_bad_safe_nccl_exit_1 1 env SAFE_NCCL=yes "$EMU/safe-update" $UPDATE -o "$TMP/x"
check nccl_emu_bad_safe_nccl_message grep -q "SAFE_NCCL must be 0 .* or 1" "$TMP/err"
expect_status nccl_emu_ranks_differ_in_safe_nccl_exit_1 1 $MPIRUN -np 1 env SAFE_NCCL=0 "$EMU/safe-update" $UPDATE \
    -o "$TMP/x" : -np 1 env SAFE_NCCL=1 "$EMU/safe-update" $UPDATE -o "$TMP/x"
check nccl_emu_ranks_differ_in_safe_nccl_message grep -q "SAFE_NCCL differs between the ranks" "$TMP/err"
expect_status nccl_emu_ranks_differ_in_overlap_exit_1 1 $MPIRUN -np 1 env SAFE_NCCL_OVERLAP=0 "$EMU/safe-update" \
    $UPDATE -o "$TMP/x" : -np 1 env SAFE_NCCL_OVERLAP=1 "$EMU/safe-update" $UPDATE -o "$TMP/x"
check nccl_emu_ranks_differ_in_overlap_message grep -q "SAFE_NCCL_OVERLAP or SAFE_NCCL_BUCKET_MB differs" "$TMP/err"
check nccl_emu_refusals_leave_no_output test ! -e "$TMP/x"
