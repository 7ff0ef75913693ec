#!/usr/bin/env bash
# Build llama.cpp's own tools (CPU) from the sources vendored in the llama-cpp-python 0.3.36 sdist,
# cached outside the repository; prints the directory holding the binaries.
#
#   bash scripts/build-llamacpp.sh            # -> $ORLIK_CACHE/llamacpp/build-avx2/bin
#   LLAMACPP_ISA=avx512 bash scripts/build-llamacpp.sh   # AVX-512 kernels too (the speed benchmarks)
#
# Only the CMake targets orlik's checks use: llama-perplexity, llama-tokenize, llama-simple
# (greedy generation), llama-bench, llama-quantize (the reference for orlik's quantised
# exports). GGML_NATIVE=OFF with an explicit instruction set, so the build does not depend on
# the machine it was cached on; static, no curl, no server.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${ORLIK_CACHE:-$HOME/.cache/orlik}
ISA=${LLAMACPP_ISA:-avx2}
SRC=$CACHE/llamacpp/src-0.3.36
OUT=$CACHE/llamacpp/build-$ISA
TARGETS="llama-perplexity llama-tokenize llama-simple llama-bench llama-quantize"
if [ -x "$OUT/bin/llama-simple" ] && [ -x "$OUT/bin/llama-perplexity" ] && [ -x "$OUT/bin/llama-tokenize" ] && [ -x "$OUT/bin/llama-bench" ] && [ -x "$OUT/bin/llama-quantize" ]; then
  echo "$OUT/bin"; exit 0
fi
bash "$HERE/fetch-assets.sh" llamacpp pyenv >&2
PY=$CACHE/pyenv/bin
[ -x "$PY/cmake" ] || "$PY/pip" install --quiet cmake ninja >&2
case "$ISA" in
  avx2) FLAGS=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF) ;;
  avx512) FLAGS=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VNNI=ON) ;;
  *) echo "LLAMACPP_ISA=$ISA: avx2 or avx512" >&2; exit 2 ;;
esac
t0=$(date +%s)
rm -rf "$OUT.tmp"
"$PY/cmake" -S "$SRC" -B "$OUT.tmp" -G Ninja -DCMAKE_MAKE_PROGRAM="$PY/ninja" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF "${FLAGS[@]}" -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=ON >"$CACHE/llamacpp/cmake-$ISA.log" 2>&1 \
  || { tail -30 "$CACHE/llamacpp/cmake-$ISA.log" >&2; exit 1; }
"$PY/cmake" --build "$OUT.tmp" --target $TARGETS -j "$(nproc)" >"$CACHE/llamacpp/build-$ISA.log" 2>&1 \
  || { tail -30 "$CACHE/llamacpp/build-$ISA.log" >&2; exit 1; }
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
echo "llama.cpp ($ISA) built in $(( $(date +%s) - t0 )) s" >&2
echo "$OUT/bin"
