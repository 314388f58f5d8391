#!/usr/bin/env bash
# tests/gpu/bundle.sh — build, on this machine, everything tests/gpu/run.sh needs into .gpu-bin/
# (tools, test_kernels, bench_gpu), linked so that the GPU machine needs only glibc, its CUDA
# 13 cuBLAS libraries and the driver: the third-party libraries (msgpack-c, zstd, jansson,
# PCRE2, utf8proc, OpenBLAS), OpenMP, libstdc++ and the CUDA runtime are linked statically.
#
# The GPU machine's image has nvcc and PyTorch but, as far as anyone here knows, not the
# Debian -dev packages this project builds against, and it cannot reach a package registry.
# run.sh tries to build there first and falls back to these binaries when it cannot:
#
#   bash tests/gpu/bundle.sh            # here, once (about a minute on 2 cores)
#   # device tool: carry [".gpu-data", ".gpu-bin/bundle.tar.xz"], command:
#   SAFE_DATA=.gpu-data GPU_RUN_FALLBACK_BIN=.gpu-bin/bundle.tar.xz bash tests/gpu/run.sh
#
# The binaries are stripped and packed (about 4 MB; unpacked 52 MB, over half of it OpenBLAS
# in safe-critic), since everything that travels counts against the tool's 64 MiB.
#
# Compute capability: sm_90 (H100/H200) machine code plus compute_90 PTX; set ARCH=80 etc.
set -eu -o pipefail
cd "$(dirname "$0")/../.."
ARCH=${ARCH:-90}
OUTD=.gpu-bin
GCCDIR=$(dirname "$(gcc -print-libgcc-file-name)")
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
STATIC="-Wl,-Bstatic -lmsgpackc -lzstd -ljansson -lpcre2-8 -lutf8proc -lopenblas -Wl,-Bdynamic"
CUDALIBS="-L$CUDA_HOME/lib64 -Wl,-rpath,$CUDA_HOME/lib64 -lcublasLt -lcublas $CUDA_HOME/lib64/libcudart_static.a -ldl -lrt"
RUNTIME="$GCCDIR/libstdc++.a $GCCDIR/libgomp.a -static-libgcc -lm -lpthread"
grep -qx '/.gpu-bin/' .git/info/exclude 2>/dev/null || echo '/.gpu-bin/' >> .git/info/exclude
make -j"$(nproc)" BUILD=$OUTD/build BIN=$OUTD/bin MPI=0 NCCL=0 \
    NVCCFLAGS="-O2 -std=c++17 -Ilib -Xcompiler -Wall,-Wextra -gencode arch=compute_$ARCH,code=sm_$ARCH -gencode arch=compute_$ARCH,code=compute_$ARCH" \
    LDFLAGS="-static-libgcc" LDLIBS="$STATIC $CUDALIBS $RUNTIME" \
    all $OUTD/build/gpu/test_kernels $OUTD/build/gpu/bench_gpu > $OUTD/build.log 2>&1 ||
    { tail -20 $OUTD/build.log; exit 1; }
grep -E 'warning|error' $OUTD/build.log || true
rm -rf $OUTD/stage && mkdir -p $OUTD/stage/bin
cp $OUTD/bin/safe-* $OUTD/build/gpu/test_kernels $OUTD/build/gpu/bench_gpu $OUTD/stage/bin/
strip $OUTD/stage/bin/*
tar -C $OUTD/stage -cJf $OUTD/bundle.tar.xz bin
echo "== $OUTD/bundle.tar.xz ($(du -h $OUTD/bundle.tar.xz | cut -f1)): $(ls $OUTD/stage/bin | tr '\n' ' ')"
echo "== shared libraries still needed (safe-update), newest glibc symbol version:"
ldd $OUTD/stage/bin/safe-update | awk '{print "   ", $1}'
objdump -T $OUTD/stage/bin/safe-update | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -1
