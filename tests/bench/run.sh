#!/bin/sh
# run.sh — the benchmarks, as a list of sections. Each section prints a titled table that
# names its baseline and the ratio against it.
#
#   make bench                              every section
#   sh tests/bench/run.sh shard             only the named sections (SAFE_BUILD set by make)
#
# Adding a section: write a function section_NAME that prints its table (a benchmark
# binary in $SAFE_BUILD/bench/, or a script), then add NAME to SECTIONS below.
: "${SAFE_BUILD:?run through make bench}"
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.." || exit 1

SECTIONS="shard model generate lora"

title() { printf '\n== %s\n\n' "$1"; }

# Shards: encode and decode+parse of 100k rollout-like records vs the zstd CLI on the same bytes.
section_shard() {
    title "shards: encode and decode+parse vs the zstd CLI (tests/bench/bench_shard.c)"
    "$SAFE_BUILD/bench/bench_shard" 100000
}

# Model engine (lib/model.c): forward+backward with the log-prob/entropy loss, and KV-cached
# decoding at batch 1/8/64, on stories260K and a random 15M Llama, against PyTorch eager on
# the same shapes and thread count. Threads: SAFE_BENCH_THREADS (default: all cores).
# SAFE_BENCH_CLOCK=cpu measures process CPU time (fair with 1 thread on a shared machine).
section_model() {
    threads=${SAFE_BENCH_THREADS:-$(nproc)}
    clock=""
    [ "${SAFE_BENCH_CLOCK:-wall}" = cpu ] && clock="--cpu-time"
    title "model: tokens/s, CPU fp32, $threads thread(s), ${SAFE_BENCH_CLOCK:-wall} clock, vs PyTorch eager (tests/bench/bench_model.c, bench_model_torch.py)"
    ours=$(mktemp) theirs=$(mktemp)
    OMP_NUM_THREADS=$threads "$SAFE_BUILD/bench/bench_model" $clock >"$ours" || { rm -f "$ours" "$theirs"; return 1; }
    if /usr/bin/python3 -c "import torch" 2>/dev/null; then
        OMP_NUM_THREADS=$threads /usr/bin/python3 tests/bench/bench_model_torch.py $clock >"$theirs" 2>/dev/null || : >"$theirs"
    fi
    awk -v theirs="$theirs" '
        BEGIN { while ((getline l < theirs) > 0) { split(l, f, " "); t[f[2] " " f[3]] = f[4] } }
        $1 == "model" {
            key = $2 " " $3; r = (key in t && t[key] > 0) ? sprintf("%.2fx", $4 / t[key]) : "-"
            rows[++n] = sprintf("%-12s %-22s %10s %10s %8s", $2, $3, $4, (key in t) ? t[key] : "-", r)
            if ($3 == "decode(batch=1)") b1[$2] = $4
            if ($3 == "decode(batch=64)") b64[$2] = $4
        }
        END {
            printf "%-12s %-22s %10s %10s %8s\n", "config", "measurement", "safe", "torch", "ratio"
            for (i = 1; i <= n; i++) print rows[i]
            printf "\ndecode scaling (safe, per-token rate batch 64 / batch 1):"
            for (c in b1) if (c in b64) printf "  %s %.2fx", c, b64[c] / b1[c]
            printf "\ngoals: fwd+bwd >= 1.5x torch; decode batch 64 >= 3x batch 1\n"
        }' "$ours"
    rm -f "$ours" "$theirs"
}

# Generation (lib/generate.c): batched sampling with continuous batching, per-token log-probs and
# entropy, against the bare model's prefill + decode on the same shapes (the sampling overhead).
section_generate() {
    title "generate: tokens/s vs the bare model's prefill+decode (tests/bench/bench_generate.c)"
    "$SAFE_BUILD/bench/bench_generate" --quick
}

# LoRA (lib/lora.c): one whole training step (forward, loss, backward, AdamW, the adapter's
# merge) with adapters of rank 8 against full fine-tuning of the same model in the same run,
# and the training state each keeps beside the weights.
section_lora() {
    title "lora: training step tokens/s and training state vs full fine-tuning (tests/bench/bench_model.c --lora)"
    out=$(mktemp)
    "$SAFE_BUILD/bench/bench_model" --lora ${SAFE_BENCH_QUICK:+--quick} >"$out" || { rm -f "$out"; return 1; }
    awk '
        $1 == "lora" { if ($3 == "full") { base[$2] = $4; mem[$2] = $5 }
                       rows[++n] = $0 }
        END {
            printf "%-12s %-24s %10s %8s %10s %8s\n", "config", "variant", "tok/s", "ratio", "state MB", "ratio"
            for (i = 1; i <= n; i++) {
                split(rows[i], f, " ")
                printf "%-12s %-24s %10s %7.2fx %10s %7.3fx\n", f[2], f[3], f[4], f[4] / base[f[2]], f[5], f[5] / mem[f[2]]
            }
            printf "\nbaseline: full fine-tuning of every weight (ratio 1.00x) measured in the same run\n"
        }' "$out"
    rm -f "$out"
}

failed=0
for s in ${*:-$SECTIONS}; do
    if ! command -v "section_$s" >/dev/null 2>&1; then
        echo "run.sh: no section \"$s\" (sections: $SECTIONS)" >&2
        failed=1
        continue
    fi
    "section_$s" || { echo "section $s FAILED"; failed=1; }
done
exit $failed

