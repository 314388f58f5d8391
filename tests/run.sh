#!/bin/sh
# run.sh — run every test program and shell test; the last line is "N passed, N failed".
: "${SAFE_BUILD:?run through make test}"
here=$(cd "$(dirname "$0")" && pwd)
# The suite checks the CPU reference engine, also on a machine with a GPU (where the tools
# would default to cuda); tests/gpu/run.sh checks the CUDA backend.
SAFE_DEVICE=${SAFE_DEVICE:-cpu}
export SAFE_DEVICE
log=$(mktemp)
for t in "$SAFE_BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    echo "== $(basename "$t")"
    (cd "$here/.." && "$t") 2>&1 | tee -a "$log" || true
done
for t in "$here"/test_*.sh; do
    [ -f "$t" ] || continue
    echo "== $(basename "$t")"
    (cd "$here/.." && sh "$t") 2>&1 | tee -a "$log" || true
done
passed=$(grep -c '^PASS ' "$log")
failed=$(grep -c '^FAIL ' "$log")
if [ "$failed" -gt 0 ]; then
    echo "failed tests:"; grep '^FAIL ' "$log"
fi
rm -f "$log"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
