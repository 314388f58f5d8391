#!/bin/sh
# test_device.sh — --device on the model tools: bad values and an unusable cuda exit 1 before
# any work, naming what is missing; --device cpu changes nothing; SAFE_DEVICE sets the default.
. "$(dirname "$0")/lib.sh"
cd "$TMP" || exit 1
M="$DATA/stories260K/stories260K.bin"

for t in "safe-rollout --policy $M --prompts x" "safe-critic --init-from $M --out-critic c" \
         "safe-update --policy $M -o p" "safe-generate --model $M --prompt hi"; do
    tool=$(echo "$t" | cut -d' ' -f1)
    expect_status "${tool}_device_bogus_exit_1" 1 $t --device gpu
    check "${tool}_device_bogus_names_values" grep -q "cpu, cuda or auto" "$TMP/err"
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        pass "${tool}_device_cuda_without_gpu_exit_1 (skipped: this machine has a GPU)"
    else
        expect_status "${tool}_device_cuda_without_gpu_exit_1" 1 $t --device cuda
        check "${tool}_device_cuda_says_why" grep -q -e "no CUDA GPU is visible" -e "has no CUDA backend" "$TMP/err"
    fi
done
SAFE_DEVICE=tpu safe-generate --model "$M" --prompt hi -q >/dev/null 2>"$TMP/err"; st=$?
check env_device_bogus_exit_1 [ "$st" -eq 1 ]
check env_device_named_in_message grep -q 'SAFE_DEVICE' "$TMP/err"

# --device cpu is the reference engine: the same text as the default on a machine without a GPU
safe-generate --model "$M" --prompt "Once upon a time" -n 2 --seed 3 --max-new-tokens 24 -q --device cpu > cpu.txt
SAFE_DEVICE=cpu safe-generate --model "$M" --prompt "Once upon a time" -n 2 --seed 3 --max-new-tokens 24 -q > env.txt
check device_cpu_same_as_safe_device_cpu cmp -s cpu.txt env.txt
