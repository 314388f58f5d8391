#!/bin/sh
# tests/gpu/multi_gpu.sh — the multi-GPU checks, for a machine with one or more NVIDIA GPUs
# (not part of make test, which needs no GPU; tests/gpu/run.sh runs it on whatever GPUs the
# machine has, one included). From the repository root:
#
#   sh tests/gpu/multi_gpu.sh            # G = every visible GPU (at most 8)
#   GPUS=2 sh tests/gpu/multi_gpu.sh
#   BUILD=build/gpu-run BIN=build/gpu-run/bin sh tests/gpu/multi_gpu.sh   # a build made already
#   MULTI_GPU_SKIP_CPU=1 ...             # leave out step 4 (make test runs it on any machine)
#   MULTI_GPU_EMU=1 GPUS=2 sh tests/gpu/multi_gpu.sh   # no GPU: checks this script (below)
#
# What it checks, with G GPUs (one process per GPU):
#   1. world size 1: a one-rank NCCL communicator, all-reduce SUM/AVG/MAX of a 16 MiB buffer
#      against the exact CPU sum (build/gpu/nccl_check; the sum also in buckets issued without
#      waiting on a second stream, as the overlapped gradients are), standalone and under
#      mpirun -np 1;
#   2. G >= 2 under mpirun: the same on G ranks (NCCL id broadcast over MPI), and NCCL's sums
#      against the CPU path's (comm_allreduce_f32 over MPI); a bandwidth line;
#   3. G >= 2 without MPI: G processes with RANK/WORLD_SIZE/LOCAL_RANK, the NCCL id handed over
#      through SAFE_NCCL_ID_FILE (the file must be gone afterwards);
#   4. a data-parallel update and critic of the CPU backend over MPI against 1 rank
#      (tests/test_dp.sh: bit-identical on the CPU); step 5 runs the tools with --device cuda.
#   5. safe-update and safe-critic with --device cuda, the gradients' NCCL all-reduce
#      overlapped with the backward (SAFE_NCCL_OVERLAP=1, the default; SAFE_NCCL_BUCKET_MB=0,
#      one bucket per layer, so every layer's sum runs during the backward) against one
#      all-reduce after it (SAFE_NCCL_OVERLAP=0) and against the sum through the host
#      (SAFE_NCCL=0, over MPI).
#      G = 1: one process (no MPI needed) with SAFE_NCCL=1, a real one-rank communicator
#      that the overlapped buckets are issued to on the second stream, with its events and
#      the timed wait: gradients, policy, critic and optimiser moments byte for byte those of
#      the run without NCCL (a sum over one rank is the buffer itself). NCCL's one-rank
#      in-place all-reduce does no work, so this checks the tools' NCCL code and the
#      communicator on the GPU, not races between the streams: those need G >= 2.
#      G >= 2 under mpirun: the summed gradients of every step within 1e-5 tensor-relative
#      (fp32 summation order); with 2 ranks the updated policy, critic and optimiser moments
#      byte for byte (a + b is the same sum in any order), with more within 2e-4 absolute
#      (lr 1e-4: a gradient that cancels to rounding noise can move one Adam step of lr).
#      Honest note: written without a GPU and not yet run on one. What was checked: this step's
#      commands with --device cpu; the buckets by tests/gpu/test_kernels on the CPU emulator
#      (make test-gpu-emu); the emulated tools with the NCCL stand-in on 1, 2 and 3 ranks
#      (tests/test_nccl_emu.sh, in make test).
# MULTI_GPU_EMU=1 checks the script itself on a machine without a GPU: steps 1-3 (real NCCL)
# are left out and step 5 runs G "GPUs" (GPUS, default 1) with the tools linked to the CPU
# emulation of the kernels and its NCCL stand-in ($BUILD/emu/bin, make gpu-emu-tools).
# Prints PASS/FAIL lines and "N passed, N failed"; exits 0 only when everything passed.
set -u
cd "$(dirname "$0")/../.." || exit 2
log=$(mktemp)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/safe-gpu.XXXXXX")
trap 'rm -rf "$tmp" "$log"' EXIT
pass() { echo "PASS $1" | tee -a "$log"; }
fail() { echo "FAIL $1${2:+: $2}" | tee -a "$log"; }
check() { name=$1; shift; if "$@"; then pass "$name"; else fail "$name"; fi; }
# Open MPI refuses root unless told so (GPU machines in CI run as root)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN="mpirun --oversubscribe --bind-to none"

BUILD=${BUILD:-build}
BIN=${BIN:-bin}
SKIP_CPU=${MULTI_GPU_SKIP_CPU:-0}
EMU=${MULTI_GPU_EMU:-0}
targets="all $BUILD/tests/test_stcompare"
[ "$SKIP_CPU" = 1 ] || targets="$targets $BUILD/tests/test_comm"
if [ "$EMU" = 1 ]; then
    G=${GPUS:-1}
    targets="$targets gpu-emu-tools"
    echo "== no GPU: the CUDA emulation with its NCCL stand-in, $G emulated GPU(s); steps 1-3 left out"
else
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "multi_gpu.sh: no NVIDIA GPU visible (nvidia-smi -L fails): nothing to check (MULTI_GPU_EMU=1: the emulation)"
        exit 2
    fi
    found=$(nvidia-smi -L | grep -c '^GPU')
    G=${GPUS:-$found}
    [ "$G" -gt 8 ] && G=8
    [ "$G" -gt "$found" ] && { echo "multi_gpu.sh: GPUS=$G but only $found visible"; exit 2; }
    echo "== $found GPU(s) visible, using $G:"
    nvidia-smi -L | head -n "$G"
    targets="$targets $BUILD/gpu/nccl_check"
fi

echo "== build (NCCL=1) in $BUILD, tools in $BIN"
# (NVCCFLAGS, when tests/gpu/run.sh sets it for this GPU, reaches make through the environment)
make -s BUILD="$BUILD" BIN="$BIN" report-build $targets >"$tmp/build.log" 2>&1 ||
    { cat "$tmp/build.log"; echo "FAIL build"; exit 1; }
grep '^safe:' "$tmp/build.log"
[ "$EMU" = 1 ] && BIN=$BUILD/emu/bin   # the tools linked with the emulation (and links to the others)
[ "$EMU" = 1 ] || case "$("$BIN/safe-update" --version)" in
*NCCL*) ;;
*) echo "FAIL build: $BIN/safe-update has no NCCL (nccl.h not found? make NCCL=1)"; exit 1 ;;
esac
CHECK=$BUILD/gpu/nccl_check

# run NAME LOG CMD...: run a check program, show its output, pass when it exits 0
run() {
    name=$1 out=$2; shift 2
    "$@" >"$out" 2>&1
    rc=$?
    cat "$out"
    check "$name" test "$rc" -eq 0
}

# 1.-3. real NCCL (left out under MULTI_GPU_EMU=1)
if [ "$EMU" != 1 ]; then
    # 1. world size 1
    echo "== 1 rank, standalone"
    run gpu_world1_standalone "$tmp/one.log" timeout 120 $CHECK
    if command -v mpirun >/dev/null 2>&1; then
        echo "== 1 rank, mpirun -np 1"
        run gpu_world1_mpirun "$tmp/one_mpi.log" timeout 120 $MPIRUN -np 1 $CHECK
    fi

    if [ "$G" -ge 2 ]; then
        # 2. G ranks under mpirun
        if command -v mpirun >/dev/null 2>&1; then
            echo "== $G ranks, mpirun (NCCL id over MPI)"
            run gpu_world${G}_mpirun "$tmp/g_mpi.log" timeout 300 $MPIRUN -np "$G" $CHECK
        else
            fail gpu_world${G}_mpirun "mpirun not found (tests/deps.sh installs openmpi-bin)"
        fi
        # 3. G processes from RANK/WORLD_SIZE, id through a file
        echo "== $G ranks, RANK/WORLD_SIZE and SAFE_NCCL_ID_FILE"
        idfile="$tmp/nccl.id"
        r=0 pids=""
        while [ "$r" -lt "$G" ]; do
            RANK=$r WORLD_SIZE=$G LOCAL_RANK=$r SAFE_NCCL_ID_FILE=$idfile SAFE_COMM_TIMEOUT=120 \
                timeout 300 $CHECK >"$tmp/rank$r.log" 2>&1 &
            pids="$pids $!"
            r=$((r + 1))
        done
        bad=0
        for p in $pids; do wait "$p" || bad=$((bad + 1)); done
        cat "$tmp/rank0.log"
        check gpu_world${G}_id_file_all_ranks_exit_0 test "$bad" -eq 0
        check gpu_world${G}_id_file_removed test ! -e "$idfile"
        # a rank that never comes: the others stop after the timeout with a clear message
        echo "== a missing rank: rank 0 alone with WORLD_SIZE=2 must time out"
        RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 SAFE_NCCL_ID_FILE="$tmp/lonely.id" SAFE_COMM_TIMEOUT=10 \
            timeout 120 $CHECK >"$tmp/lonely.log" 2>&1
        rc=$?
        cat "$tmp/lonely.log"
        check gpu_missing_rank_exit_3 test "$rc" -eq 3
        check gpu_missing_rank_message grep -q "timed out after 10 s" "$tmp/lonely.log"
    fi
fi   # steps 1-3: real NCCL only

# 4. data-parallel update and critic on the ranks, CPU backend (tests/test_dp.sh)
if [ "$SKIP_CPU" != 1 ] && [ "$EMU" != 1 ] && command -v mpirun >/dev/null 2>&1; then
    echo "== data-parallel critic and update (CPU backend over MPI; tests/test_dp.sh)"
    SAFE_BIN=$(cd "$BIN" && pwd) SAFE_BUILD=$(cd "$BUILD" && pwd) sh tests/test_dp.sh 2>&1 | tee "$tmp/dp.log" | grep -E '^(PASS|FAIL)'
    grep '^PASS' "$tmp/dp.log" >>"$log"
    grep '^FAIL' "$tmp/dp.log" >>"$log"
fi

# 5. gradients summed during the backward, after it, and through the host, --device cuda.
# G = 1: one process, SAFE_NCCL=1 (a one-rank communicator); G >= 2: G ranks under mpirun.
if [ "$G" -eq 1 ] || command -v mpirun >/dev/null 2>&1; then
    echo "== gradient all-reduce during the backward vs after it vs through the host ($G rank(s), --device cuda)"
    DATA=${SAFE_DATA:-$(cd .. && pwd)/shared/data}
    MODEL=$DATA/stories260K/stories260K.bin PROMPTS=$DATA/tinystories/prompts.jsonl
    CMP=$BUILD/tests/test_stcompare
    ov=$tmp/overlap
    mkdir -p "$ov"
    if [ "$G" -eq 1 ]; then
        LAUNCH="env SAFE_NCCL=1" HOST="env"   # host: no NCCL at all with one rank
    else
        LAUNCH="$MPIRUN -np $G" HOST="env SAFE_NCCL=0 $MPIRUN -np $G"
    fi
    if [ ! -f "$MODEL" ] || [ ! -f "$PROMPTS" ]; then
        fail gpu_overlap_data "no $MODEL or $PROMPTS (set SAFE_DATA)"
    else
        # 8 prompts x 2 samples: minibatches of 8 records, at least one per rank up to 8 GPUs
        "$BIN/safe-pid" --init --quiet -o "$ov/control.safe"
        "$BIN/safe-rollout" --policy "$MODEL" --prompts "$PROMPTS" --num-prompts 8 --samples-per-prompt 2 \
            --max-new-tokens 16 --seed 3 --iteration 0 --quiet --level 0 --device cpu |
          "$BIN/safe-score" --vader --quiet --level 0 -o "$ov/scored.safe"
        "$BIN/safe-critic" --init-from "$MODEL" --control "$ov/control.safe" --seed 3 --quiet --device cpu \
            --minibatches 2 -i "$ov/scored.safe" -o "$ov/adv.safe" --out-critic "$ov/critic_cpu"
        # mode during|after|host: the launcher and the environment of each
        for mode in during after host; do
            case $mode in
                during) env="SAFE_NCCL_OVERLAP=1" launch=$LAUNCH ;;
                after) env="SAFE_NCCL_OVERLAP=0" launch=$LAUNCH ;;
                host) env="SAFE_NCCL_OVERLAP=1" launch=$HOST ;;
            esac
            mkdir -p "$ov/gu_$mode" "$ov/gc_$mode"
            env $env SAFE_NCCL_BUCKET_MB=0 SAFE_DUMP_GRADS="$ov/gu_$mode" timeout 300 $launch \
                "$BIN/safe-update" --policy "$MODEL" --control "$ov/control.safe" --seed 3 --quiet --lr 1e-4 \
                --epochs 2 --minibatches 2 --device cuda -i "$ov/adv.safe" -o "$ov/policy_$mode" \
                --stats "$ov/stats_$mode.safe" >"$ov/update_$mode.log" 2>&1
            rc=$?
            check gpu_${mode}_update_${G}_ranks_exit_0 test "$rc" -eq 0
            [ "$rc" -eq 0 ] || cat "$ov/update_$mode.log"
            env $env SAFE_NCCL_BUCKET_MB=0 SAFE_DUMP_GRADS="$ov/gc_$mode" timeout 300 $launch \
                "$BIN/safe-critic" --init-from "$MODEL" --control "$ov/control.safe" --seed 3 --quiet --lr 1e-4 \
                --minibatches 2 --device cuda -i "$ov/scored.safe" -o "$ov/adv_$mode.safe" \
                --out-critic "$ov/critic_$mode" >"$ov/critic_$mode.log" 2>&1
            rc=$?
            check gpu_${mode}_critic_${G}_ranks_exit_0 test "$rc" -eq 0
            [ "$rc" -eq 0 ] || cat "$ov/critic_$mode.log"
        done
        # same_files TAG DIR0 DIR1 TOL MEASURE FILE...: test_stcompare on each pair, and byte
        # for byte with 1 or 2 ranks
        same_files() {
            tag=$1 d0=$2 d1=$3 tol=$4 how=$5
            shift 5
            for f in "$@"; do
                echo "  $tag: $f"
                check "${tag}_$(basename "$f" .safetensors)" "$CMP" "$d0/$f" "$d1/$f" "$tol" "$how"
                [ "$G" -le 2 ] && check "${tag}_$(basename "$f" .safetensors)_bit_identical_${G}_ranks" cmp -s "$d0/$f" "$d1/$f"
            done
        }
        for other in after host; do
            same_files gpu_during_vs_${other}_update_gradients "$ov/gu_during" "$ov/gu_$other" 1e-5 tensor \
                safe-update-step-0000.safetensors safe-update-step-0001.safetensors \
                safe-update-step-0002.safetensors safe-update-step-0003.safetensors
            same_files gpu_during_vs_${other}_update_policy "$ov/policy_during" "$ov/policy_$other" 2e-4 abs \
                model.safetensors optimizer.safetensors
            same_files gpu_during_vs_${other}_critic_gradients "$ov/gc_during" "$ov/gc_$other" 1e-5 tensor \
                safe-critic-step-0000.safetensors safe-critic-step-0001.safetensors \
                safe-critic-step-0002.safetensors safe-critic-step-0003.safetensors
            same_files gpu_during_vs_${other}_critic "$ov/critic_during" "$ov/critic_$other" 2e-4 abs \
                model.safetensors value_head.safetensors
        done
    fi
fi

passed=$(grep -c '^PASS ' "$log")
failed=$(grep -c '^FAIL ' "$log")
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
