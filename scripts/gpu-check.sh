#!/usr/bin/env bash
# Issue 17's checks on a GPU machine, in at most ~5 minutes, smoke test first; every step's output
# goes to $OUT as it runs (a killed run leaves what it reached) and a summary line per step to
# $OUT/summary.txt. The GPU machine has no Rust toolchain: build the bundle here first,
#
#   bash scripts/gpu-bundle.sh      # target/gpu-bundle: release orlik + orlik-cuda's test binaries, stripped
#
# then run this there, carrying target/gpu-bundle (the device tool's `carry`):
#
#   bash scripts/gpu-check.sh [BUNDLE] [OUT]    # defaults: target/gpu-bundle, $OUT or gpu-check-out
#
# Steps: nvidia-smi and the libraries found; `orlik device --device cuda --kernels` (NVRTC compiles
# and the driver loads every kernel); NVRTC tests; every kernel against the CPU executor's;
# the inference executor against the candle model (five configurations); eval ppl on the tiny
# fixture, CPU against GPU; a random Llama-3.2-1B-shaped model: `orlik bench --device cuda`
# against PyTorch (f32 eager / SDPA, bf16 SDPA) on the same GPU, ratios and MFU.
set -uo pipefail
cd "$(dirname "$0")/.."
B=${1:-target/gpu-bundle}
OUT=${2:-${OUT:-gpu-check-out}}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
: > "$SUM"
say() { echo "$*" | tee -a "$SUM"; }
# step NAME SECONDS CMD...: run with a time limit, output in $OUT/NAME.txt, one summary line.
step() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  say "$name: rc=$rc, $(python3 -c "import time; print(f'{time.time() - $t0:.1f}')") s$([ $rc = 124 ] && echo ' (timed out)')"
  return $rc
}

say "commit $(cat "$B/COMMIT" 2>/dev/null || echo unknown), $(date -u +%FT%TZ)"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || say "nvidia-smi failed"
# The driver's libcuda is on the system path; cuBLAS and NVRTC come from the CUDA toolkit when it
# has them (its NVRTC matches the driver), else from the python environment's nvidia packages.
LIBS=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         $(python3 -c 'import glob, site; print(" ".join(sorted(glob.glob(site.getsitepackages()[0] + "/nvidia/*/lib"))))' 2>/dev/null); do
  [ -d "$d" ] && LIBS="$LIBS:$d"
done
export LD_LIBRARY_PATH="${LIBS#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for l in libcuda.so.1 libnvrtc.so.13 libcublas.so.13; do
  say "$l: $( (ldconfig -p | grep -m1 "$l" | sed 's/.*=> //') ; for d in ${LD_LIBRARY_PATH//:/ }; do [ -e "$d/$l" ] && echo "$d/$l"; done | head -1)"
done
export ORLIK_CACHE="$OUT/cache"

step device 120 "$B/orlik" device --device cuda --kernels || { say "smoke test failed: see $OUT/device.txt"; exit 1; }
cat "$OUT/device.txt" | tee -a "$SUM"
step nvrtc 60 "$B/test-nvrtc" --ignored --test-threads 1 --nocapture
step device-tests 30 "$B/test-device" --nocapture
step kernels 120 "$B/test-kernels" --ignored --test-threads 1 --nocapture
step infer 120 "$B/test-infer" --ignored --test-threads 1 --nocapture
grep -E "test result|panicked|FAILED" "$OUT"/{nvrtc,device-tests,kernels,infer}.txt | tee -a "$SUM"

# eval ppl on the tiny fixture: CPU against GPU.
W="$OUT/work"; mkdir -p "$W"
"$B/orlik" convert tests/fixtures/gguf/tiny-llama.gguf -o "$W/tiny" > "$OUT/convert.txt" 2>&1
python3 -c 'print("the theater then the anthem " * 200)' > "$W/t.txt"
for d in cpu cuda; do
  step ppl-$d 60 "$B/orlik" eval ppl "$W/tiny" --text "$W/t.txt" --context 64 --json --device $d
done
python3 - "$OUT/ppl-cpu.txt" "$OUT/ppl-cuda.txt" <<'PY' | tee -a "$SUM"
import json, sys
def last_json(p):
    text = open(p).read()
    return json.loads(text[text.index("{"):])
try:
    c, g = last_json(sys.argv[1]), last_json(sys.argv[2])
    rel = abs(g["bits_per_byte"] - c["bits_per_byte"]) / c["bits_per_byte"]
    print(f"eval ppl tiny: bits/byte cpu {c['bits_per_byte']:.8f} cuda {g['bits_per_byte']:.8f} (relative {rel:.1e}); "
          f"tokens/s cpu {c['tokens_per_s']:.0f} cuda {g['tokens_per_s']:.0f}")
except Exception as e:
    print(f"eval ppl tiny: no comparison ({e})")
PY

# Speed: a random Llama-3.2-1B-shaped model, orlik's GPU executor against PyTorch on the same GPU.
step make-1b 180 python3 scripts/gpu_bench.py make "$W/llama1b" --shape 1b
step orlik-bench 180 "$B/orlik" bench "$W/llama1b" --device cuda --reps 3 --json
step torch-bench 180 python3 scripts/gpu_bench.py bench "$W/llama1b" --reps 3
python3 scripts/gpu_bench.py compare <(grep '^\[' "$OUT/orlik-bench.txt") <(grep '^{' "$OUT/torch-bench.txt") 2>&1 | tee -a "$SUM"
rm -rf "$W"
say "done $(date -u +%FT%TZ)"
