#!/usr/bin/env bash
# tests/gpu/run.sh — the one script a session with a GPU runs: build for the GPU that is there,
# kernel parity against CPU references, one SAFE iteration on both backends, the multi-GPU
# checks on the GPUs there are (tests/gpu/multi_gpu.sh: NCCL with world size 1 on a one-GPU
# machine), benchmarks beside PyTorch, and `make demo DEVICE=cuda` (2 iterations) when time
# is left. Under 8 minutes on an
# H200; everything lands in $OUT (summary.md first), and the exit status is non-zero when any
# parity check fails. See tests/gpu/RESULTS.md for how to call it through the device tool.
#
#   OUT=/tmp/out SAFE_DATA=.gpu-data bash tests/gpu/run.sh
#
# Environment:
#   OUT            where the results go (default build/gpu-out): summary.md, run.log,
#                  kernels.log, bench.jsonl, logs.tar.gz — five files, as the device tool brings
#                  back at most eight; the work files stay in build/gpu-work
#   SAFE_DATA      the data folder (stories260K/, tinystories/, vader/); default: the first of
#                  ../shared/data, .gpu-data, shared/data that has stories260K
#   GPU_RUN_DRY=1  no GPU: build CPU-only, run the iteration with --device cpu on both legs
#                  (checks the script and report.py; the kernel tests and benchmarks are skipped)
#   GPU_RUN_SKIP   space-separated stages to skip: kernels iteration multi bench torch demo
#   GPU_RUN_BIN    use the tools already built there (skips the build; for reruns, and for
#                  checking the script against tools linked with an emulated device:
#                  make gpu-emu-tools, then GPU_RUN_BIN=build/emu/bin)
#   GPU_RUN_FALLBACK_BIN  tools, test_kernels and bench_gpu built elsewhere, a folder or the
#                  tests/gpu/bundle.sh archive (.gpu-bin/bundle.tar.xz), used when the build here
#                  fails (the GPU image may lack the -dev packages and cannot install them)
#   BUDGET         seconds for the whole run (default 470): stages left when it runs out are skipped
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 2
ROOT=$(pwd)
OUT=${OUT:-$ROOT/build/gpu-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$ROOT/build/gpu-work
rm -rf "$WORK"
mkdir -p "$WORK"
LOG=$OUT/run.log
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s)
BUDGET=${BUDGET:-470}
DRY=${GPU_RUN_DRY:-0}
SKIP=" ${GPU_RUN_SKIP:-} "
FAILED=0
SUMMARY=$OUT/summary.md
: > "$SUMMARY"

elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(elapsed) )); }
tlim() {   # a stage's timeout: its own limit, or what is left of the budget
    local l; l=$(( $(left) - 5 ))
    [ "$l" -lt "$1" ] && echo $(( l > 5 ? l : 5 )) || echo "$1"
}
stage_row() {   # name status seconds detail
    printf '| %-28s | %-7s | %5ss | %s |\n' "$1" "$2" "$3" "$4" >> "$WORK/stages.md"
}
skipped() { case "$SKIP" in *" $1 "*) return 0 ;; esac; return 1; }

for d in "${SAFE_DATA:-}" ../shared/data .gpu-data shared/data; do
    if [ -n "$d" ] && [ -f "$d/stories260K/stories260K.bin" ]; then DATA=$(cd "$d" && pwd); break; fi
done
if [ -z "${DATA:-}" ]; then
    echo "run.sh: no data folder with stories260K/stories260K.bin: set SAFE_DATA (see tests/gpu/RESULTS.md)"
    exit 2
fi
export SAFE_DATA=$DATA
MODEL=$DATA/stories260K/stories260K.bin
PROMPTS=$DATA/tinystories/prompts.jsonl
echo "== tests/gpu/run.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ), data $DATA, out $OUT, budget ${BUDGET}s, dry=$DRY"
printf '| %-28s | %-7s | %6s | %s |\n|---|---|---|---|\n' stage result time detail > "$WORK/stages.md"

# ---- 0. the machine ---------------------------------------------------------------------------
CC_ARCH=
if [ "$DRY" != 1 ] && [ -z "${GPU_RUN_BIN:-}" ]; then
    nvidia-smi -L || { echo "run.sh: nvidia-smi failed: no GPU? (GPU_RUN_DRY=1 runs without one)"; exit 2; }
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
    CC_ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
    nvcc --version | tail -2
    python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)' 2>/dev/null || echo "python3: no torch"
fi

# ---- 1. build ---------------------------------------------------------------------------------
BUILD=build/gpu-run
BIN=${GPU_RUN_BIN:-$BUILD/bin}
s0=$(elapsed)
if [ -n "${GPU_RUN_BIN:-}" ]; then
    echo "prebuilt tools in $BIN" > "$WORK/build.log"
elif [ "$DRY" = 1 ]; then
    make -j"$(nproc)" BUILD=$BUILD BIN=$BIN CUDA=0 all > "$WORK/build.log" 2>&1
else
    NVF="-O2 -std=c++17 -Ilib -Xcompiler -Wall,-Wextra -gencode arch=compute_${CC_ARCH},code=sm_${CC_ARCH}"
    make -j"$(nproc)" BUILD=$BUILD BIN=$BIN NVCCFLAGS="$NVF" all $BUILD/gpu/test_kernels $BUILD/gpu/bench_gpu \
        > "$WORK/build.log" 2>&1
fi
rc=$?
grep -E "warning|error" "$WORK/build.log" | head -20
TK=$BUILD/gpu/test_kernels
BG=$BUILD/gpu/bench_gpu
MAKE_DEMO="make -s BUILD=$BUILD BIN=$BIN"
[ -n "${GPU_RUN_BIN:-}" ] && { TK=$BIN/test_kernels; BG=$BIN/bench_gpu; MAKE_DEMO="make -s -o all BIN=$BIN"; }
FB=${GPU_RUN_FALLBACK_BIN:-}
case "$FB" in
    *.tar.xz) [ -f "$FB" ] && mkdir -p "$WORK/fallback" && tar -C "$WORK/fallback" -xJf "$FB" && FB=$WORK/fallback/bin ;;
esac
if [ $rc -ne 0 ] && [ -n "$FB" ] && [ -x "$FB/test_kernels" ]; then
    tail -5 "$WORK/build.log"
    BIN=$(cd "$FB" && pwd)
    TK=$BIN/test_kernels
    BG=$BIN/bench_gpu
    MAKE_DEMO="make -s -o all BIN=$BIN"
    stage_row build "fallback" $(( $(elapsed) - s0 )) "make exit $rc here (build.log); using $GPU_RUN_FALLBACK_BIN"
    "$BIN/safe-cat" --version >/dev/null || { echo "run.sh: the fallback binaries do not run here"; ldd "$BIN/safe-cat"; exit 1; }
elif [ $rc -ne 0 ]; then
    tail -30 "$WORK/build.log"
    stage_row build FAIL $(( $(elapsed) - s0 )) "make exit $rc (build.log)"
    cat "$WORK/stages.md"
    exit 1
elif [ -n "${GPU_RUN_BIN:-}" ]; then
    stage_row build prebuilt 0 "$BIN"
else
    stage_row build ok $(( $(elapsed) - s0 )) "sm_${CC_ARCH:-none}; $(grep -c warning "$WORK/build.log") warnings"
fi
echo "== built in $(( $(elapsed) - s0 ))s"

# ---- 2. kernels against their CPU twins -------------------------------------------------------
if [ "$DRY" != 1 ] && ! skipped kernels; then
    s0=$(elapsed)
    timeout "$(tlim 200)" "$TK" > "$OUT/kernels.log" 2>&1
    rc=$?
    grep -B1 -A5 'FAIL$' "$OUT/kernels.log" | grep -v '^check' | head -60   # the failing checks, with their values
    sed -n '/^check /,$p' "$OUT/kernels.log"
    grep '^  bench' "$OUT/kernels.log"
    res=$(grep '^test_kernels:' "$OUT/kernels.log" | tail -1)
    if [ $rc -eq 0 ]; then stage_row "kernel parity" ok $(( $(elapsed) - s0 )) "$res"
    else stage_row "kernel parity" FAIL $(( $(elapsed) - s0 )) "exit $rc: $res"; FAILED=1; fi
fi

# ---- 3. one SAFE iteration on both backends ---------------------------------------------------
# The CPU pipeline is the reference; the CUDA critic and update run on the CPU's inputs, so
# they are compared on the same batch; the CUDA rollout uses the same seed (same draws).
if ! skipped iteration && [ "$(left)" -gt 60 ]; then
    s0=$(elapsed)
    IT=$WORK/iter
    rm -rf "$IT"
    mkdir -p "$IT/cpu/grads" "$IT/cuda/grads"
    GPU=cuda
    [ "$DRY" = 1 ] && GPU=cpu
    COMMON="--quiet --level 1"
    ROLL="--policy $MODEL --prompts $PROMPTS --num-prompts 16 --samples-per-prompt 4 --max-new-tokens 48 --seed 1 --iteration 0"
    (
        set -e
        T() { timeout "$(tlim 120)" "$@"; }   # a hung stage cannot take the whole run
        T "$BIN/safe-convert" --quiet --no-tokenizer "$MODEL" "$IT/init"
        T "$BIN/safe-pid" --init -o "$IT/control.safe"
        T "$BIN/safe-rollout" $ROLL --device cpu $COMMON -o "$IT/cpu/rollout.safe"
        T "$BIN/safe-score" --vader $COMMON -i "$IT/cpu/rollout.safe" -o "$IT/cpu/scored.safe"
        T "$BIN/safe-rollout" $ROLL --device $GPU $COMMON -o "$IT/cuda/rollout.safe"
        T "$BIN/safe-score" --vader $COMMON -i "$IT/cuda/rollout.safe" -o "$IT/cuda/scored.safe"
        # critic: both devices on the CPU's scored batch
        T "$BIN/safe-critic" --init-from "$MODEL" --control "$IT/control.safe" --lr 1e-4 --seed 1 --device cpu $COMMON \
            -i "$IT/cpu/scored.safe" -o "$IT/cpu/adv.safe" --out-critic "$IT/cpu/critic"
        T "$BIN/safe-critic" --init-from "$MODEL" --control "$IT/control.safe" --lr 1e-4 --seed 1 --device $GPU $COMMON \
            -i "$IT/cpu/scored.safe" -o "$IT/cuda/adv.safe" --out-critic "$IT/cuda/critic"
        # update: both devices on the CPU's advantaged batch; step-0 gradients dumped
        SAFE_DUMP_GRADS=$IT/cpu/grads T "$BIN/safe-update" --policy "$MODEL" --control "$IT/control.safe" --lr 1e-4 \
            --seed 1 --device cpu $COMMON -i "$IT/cpu/adv.safe" -o "$IT/cpu/policy" > "$IT/cpu/stats.safe"
        SAFE_DUMP_GRADS=$IT/cuda/grads T "$BIN/safe-update" --policy "$MODEL" --control "$IT/control.safe" --lr 1e-4 \
            --seed 1 --device $GPU $COMMON -i "$IT/cpu/adv.safe" -o "$IT/cuda/policy" > "$IT/cuda/stats.safe"
        # ratios at lr 0: the CUDA update against the CUDA rollout's recorded logp (same path),
        # and against the CPU rollout's (cross-device)
        T "$BIN/safe-critic" --init-from "$MODEL" --control "$IT/control.safe" --seed 1 --device $GPU $COMMON \
            -i "$IT/cuda/scored.safe" -o "$IT/cuda/adv_own.safe" --out-critic "$IT/cuda/critic_own"
        T "$BIN/safe-update" --policy "$MODEL" --control "$IT/control.safe" --lr 0 --epochs 1 --device $GPU $COMMON \
            -i "$IT/cuda/adv_own.safe" -o "$IT/cuda/policy_lr0" > "$IT/ratio_cuda_adv.safe"
        T "$BIN/safe-update" --policy "$MODEL" --control "$IT/control.safe" --lr 0 --epochs 1 --device $GPU $COMMON \
            -i "$IT/cpu/adv.safe" -o "$IT/cpu/policy_lr0" > "$IT/ratio_cpu_adv.safe"
    ) > "$WORK/iteration.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then
        tail -20 "$WORK/iteration.log"
        stage_row "SAFE iteration" FAIL $(( $(elapsed) - s0 )) "a stage exited $rc (iteration.log)"
        FAILED=1
    else
        python3 tests/gpu/report.py iteration --bin "$BIN" --dir "$IT" --init "$IT/init" | tee "$WORK/iteration.txt"
        rc=$?
        res=$(tail -1 "$WORK/iteration.txt")
        if [ $rc -eq 0 ]; then stage_row "SAFE iteration parity" ok $(( $(elapsed) - s0 )) "$res"
        else stage_row "SAFE iteration parity" FAIL $(( $(elapsed) - s0 )) "$res"; FAILED=1; fi
    fi
fi

# ---- 3b. multi-GPU: NCCL on the GPUs there are (world size 1 on a one-GPU machine) ------------
# tests/gpu/multi_gpu.sh on this build: the one-rank (or G-rank) communicator against exact
# sums, and safe-update/safe-critic with the gradients summed during the backward, after it
# and through the host. It needs NCCL in this build: the prebuilt and fallback tools have none.
if [ "$DRY" != 1 ] && ! skipped multi && [ "$(left)" -gt 90 ]; then
    s0=$(elapsed)
    if [ "$BIN" != "$BUILD/bin" ] || ! "$BIN/safe-update" --version | grep -q NCCL; then
        stage_row "multi-GPU (NCCL)" skipped 0 "$BIN/safe-update has no NCCL (prebuilt or fallback tools)"
    else
        timeout "$(tlim 150)" env BUILD=$BUILD BIN=$BIN NVCCFLAGS="${NVF:-}" MULTI_GPU_SKIP_CPU=1 \
            sh tests/gpu/multi_gpu.sh > "$WORK/multi_gpu.log" 2>&1
        rc=$?
        grep -E '^(== |FAIL )' "$WORK/multi_gpu.log"
        res=$(tail -1 "$WORK/multi_gpu.log")
        if [ $rc -eq 0 ]; then stage_row "multi-GPU (NCCL)" ok $(( $(elapsed) - s0 )) "$res (multi_gpu.log)"
        else stage_row "multi-GPU (NCCL)" FAIL $(( $(elapsed) - s0 )) "exit $rc: $res (multi_gpu.log)"; FAILED=1; fi
    fi
fi

# ---- 4. benchmarks: safe-cuda and PyTorch on the same shapes ----------------------------------
if [ "$DRY" != 1 ] && ! skipped bench && [ "$(left)" -gt 60 ]; then
    s0=$(elapsed)
    B=$OUT/bench.jsonl
    : > "$B"
    timeout "$(tlim 60)" "$BG" --model "$MODEL" --batches 1,64,512 --new 128 --train-batch 64 --train-len 256 \
        >> "$B" 2> "$WORK/bench_stories.log" || echo "bench_gpu stories260K: exit $? (bench_stories.log)"
    timeout "$(tlim 150)" "$BG" --config qwen0.5b --batches 1,64,512 --new 128 --train-batch 16 --train-len 512 \
        >> "$B" 2> "$WORK/bench_qwen.log" || echo "bench_gpu qwen0.5b: exit $? (bench_qwen.log)"
    if ! skipped torch && [ "$(left)" -gt 40 ]; then
        PYTHONUNBUFFERED=1 timeout "$(tlim 60)" python3 tests/gpu/torch_baseline.py --config stories260K --train-batch 64 \
            --train-len 256 >> "$B" 2> "$WORK/torch_stories.log" || echo "torch stories260K: exit $? (torch_stories.log)"
        PYTHONUNBUFFERED=1 timeout "$(tlim 150)" python3 tests/gpu/torch_baseline.py --config qwen0.5b >> "$B" \
            2> "$WORK/torch_qwen.log" || echo "torch qwen0.5b: exit $? (torch_qwen.log)"
    fi
    python3 tests/gpu/report.py bench "$B" | tee "$WORK/bench.txt"
    stage_row benchmarks done $(( $(elapsed) - s0 )) "$(grep -c '"impl"' "$B") results (bench.txt)"
fi

# ---- 5. make demo DEVICE=cuda, 2 iterations -----------------------------------------------------
if [ "$DRY" != 1 ] && ! skipped demo && [ "$(left)" -gt 45 ]; then
    s0=$(elapsed)
    timeout "$(tlim 120)" $MAKE_DEMO NVCCFLAGS="${NVF:-}" demo DEVICE=cuda DEMO_ITERS=2 \
        DEMO_DIR="$WORK/demo" DEMO_MODEL="$MODEL" DATA="$DATA" > "$WORK/demo.log" 2>&1
    rc=$?
    tail -12 "$WORK/demo.log"
    if [ $rc -eq 0 ]; then stage_row "make demo DEVICE=cuda (2 it.)" ok $(( $(elapsed) - s0 )) "demo.log"
    else stage_row "make demo DEVICE=cuda (2 it.)" FAIL $(( $(elapsed) - s0 )) "exit $rc (demo.log)"; FAILED=1; fi
    fi

# ---- summary ------------------------------------------------------------------------------------
{
    gpu="DRY run (no GPU)"
    [ "$DRY" = 1 ] || gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
    echo "# tests/gpu/run.sh — $(date -u +%Y-%m-%d) — ${gpu:-no nvidia-smi}"
    echo
    cat "$WORK/stages.md"
    for f in iteration.txt bench.txt; do
        [ -f "$WORK/$f" ] && { echo; echo '```'; cat "$WORK/$f"; echo '```'; }
    done
    [ -f "$OUT/kernels.log" ] && { echo; echo '```'; sed -n '/^check /,$p' "$OUT/kernels.log"; grep '^  bench' "$OUT/kernels.log"; echo '```'; }
} > "$SUMMARY"
(cd "$WORK" && tar czf "$OUT/logs.tar.gz" --exclude=iter --exclude=demo ./*.log ./*.txt ./*.md 2>/dev/null)
echo
cat "$WORK/stages.md"
echo "== run.sh: $(elapsed)s, $( [ $FAILED = 0 ] && echo 'all parity checks passed' || echo 'PARITY FAILURES (see above)')"
exit $FAILED
