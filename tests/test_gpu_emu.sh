#!/bin/sh
# test_gpu_emu.sh — the CUDA kernels' lab (tests/gpu/test_kernels.c) on the CPU emulation of
# tests/gpu/emu/: every kernel against its CPU reference, the device model against model.c,
# without a GPU. Skipped under sanitizers (the build leaves the program out there).
. "$(dirname "$0")/lib.sh"
prog="$SAFE_BUILD/emu/test_kernels"
if [ ! -x "$prog" ]; then
    echo "  (no $prog: sanitizer build, skipped)"
    exit 0
fi
"$prog" --quick > "$TMP/log" 2>&1
st=$?
grep -E '^test_kernels:|FAIL$' "$TMP/log"
check gpu_kernels_on_cpu_emulation [ "$st" -eq 0 ]
check gpu_kernels_all_checks_ran grep -q '^test_kernels: [0-9]* checks, 0 failed' "$TMP/log"
