#!/bin/sh
# Install the Debian packages the build and the tests need (run as root, or with sudo).
#   libmsgpack-dev   msgpack-c: the record stream encoding
#   libzstd-dev      zstd: shard compression
#   libjansson-dev   jansson: strict JSON parsing with line/column errors (JSONL, config.json)
#   libopenblas-dev  OpenBLAS: sgemm for the CPU engine's large matrix products
#   zstd, jq         command-line tools used by tests, the benchmark baseline and the README
set -e
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential make pkg-config libmsgpack-dev libzstd-dev libjansson-dev libopenblas-dev zstd jq
