#!/bin/sh
# Install the Debian packages the build and the tests need (run as root, or with sudo).
#   libmsgpack-dev   msgpack-c: the record stream encoding
#   libzstd-dev      zstd: shard compression
#   libjansson-dev   jansson: strict JSON parsing with line/column errors (JSONL, config.json)
#   libopenblas-dev  OpenBLAS: sgemm for the CPU engine's large matrix products
#   libpcre2-dev     PCRE2: the Unicode-property regexes of tokenizer.json pre-tokenizers
#   libutf8proc-dev  utf8proc: NFC/NFKC normalizers (Qwen2's tokenizer.json), Unicode categories
#   zstd, jq         command-line tools used by tests, the benchmark baseline and the README
#   libopenmpi-dev, openmpi-bin
#                    Open MPI: data-parallel safe-update/safe-critic (mpirun) and its tests
set -e
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential make pkg-config libmsgpack-dev libzstd-dev libjansson-dev libpcre2-dev libutf8proc-dev libopenblas-dev zstd jq \
    libopenmpi-dev openmpi-bin
