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
# the inference executor against the candle model and the training executor against the CPU
# one (five configurations each); eval ppl and train on the tiny fixture, CPU against GPU; a
# distillation on the GPU killed and resumed against an uninterrupted one; a random
# Llama-3.2-1B-shaped model: `orlik bench --device cuda` against PyTorch (f32 eager / SDPA,
# bf16 SDPA) on the same GPU, ratios and MFU.
#
# ORLIK_GPU_CHECK_DEVICE=cpu runs the same steps with --device cpu and without the GPU test
# binaries and PyTorch: a dry run of this script on a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
DEV=${ORLIK_GPU_CHECK_DEVICE:-cuda}
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

step device 120 "$B/orlik" device --device "$DEV" --kernels || { say "smoke test failed: see $OUT/device.txt"; exit 1; }
cat "$OUT/device.txt" | tee -a "$SUM"
if [ "$DEV" != cpu ]; then
step nvrtc 60 "$B/test-nvrtc" --ignored --test-threads 1 --nocapture
step device-tests 30 "$B/test-device" --nocapture
step kernels 120 "$B/test-kernels" --ignored --test-threads 1 --nocapture
step infer 120 "$B/test-infer" --ignored --test-threads 1 --nocapture
step train-exec 180 "$B/test-cuda_exec" --ignored --test-threads 1 --nocapture
grep -E "test result|panicked|FAILED" "$OUT"/{nvrtc,device-tests,kernels,infer,train-exec}.txt | tee -a "$SUM"
fi

# eval ppl on the tiny fixture: CPU against GPU.
W="$OUT/work"; mkdir -p "$W"
"$B/orlik" convert tests/fixtures/gguf/tiny-llama.gguf -o "$W/tiny" > "$OUT/convert.txt" 2>&1
python3 -c 'print("the theater then the anthem " * 200)' > "$W/t.txt"
step ppl-cpu 60 "$B/orlik" eval ppl "$W/tiny" --text "$W/t.txt" --context 64 --json --device cpu
step ppl-cuda 60 "$B/orlik" eval ppl "$W/tiny" --text "$W/t.txt" --context 64 --json --device "$DEV"
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

# Training on the GPU: the tiny fixture trained 6 steps on the CPU and on the GPU (losses side by
# side), then a distillation on the GPU killed (SIGKILL) after its step-20 checkpoint and resumed,
# against an uninterrupted one: the final weights' sha256 must match.
python3 -c 'print(("the theater then the anthem heart earth " * 40 + "\n\n") * 40)' > "$W/train.txt"
step train-cpu 120 "$B/orlik" train "$W/tiny" --data "$W/train.txt" --steps 6 --batch 2 --seq-len 32 --device cpu -o "$W/train-cpu"
step train-cuda 120 "$B/orlik" train "$W/tiny" --data "$W/train.txt" --steps 6 --batch 2 --seq-len 32 --device "$DEV" -o "$W/train-cuda"
python3 - "$W/train-cpu/metrics.jsonl" "$W/train-cuda/metrics.jsonl" <<'PY' | tee -a "$SUM"
import json, sys
def losses(p):
    try:
        return [json.loads(l)["loss"] for l in open(p) if '"loss"' in l]
    except Exception as e:
        return f"unreadable ({e})"
c, g = losses(sys.argv[1]), losses(sys.argv[2])
print(f"train tiny, loss per step: cpu {c}; cuda {g}")
PY
step score-cpu 60 "$B/orlik" score "$W/tiny" --data "$W/train.txt" --samples 8 --seq-len 32 --batch 4 --device cpu -o "$W/score-cpu"
step score-cuda 60 "$B/orlik" score "$W/tiny" --data "$W/train.txt" --samples 8 --seq-len 32 --batch 4 --device "$DEV" -o "$W/score-cuda"
python3 - "$W/score-cpu/scores.json" "$W/score-cuda/scores.json" <<'PY' | tee -a "$SUM"
import json, sys
try:
    c, g = (json.load(open(p))["full_loss"] for p in sys.argv[1:3])
    print(f"score tiny, calibration loss: cpu {c} cuda {g} (relative {abs(c - g) / abs(c):.1e})")
except Exception as e:
    print(f"score tiny: no comparison ({e})")
PY
KD=("$B/orlik" distill --teacher "$W/tiny" --student "$W/tiny" --data "$W/train.txt" --steps 60 --batch 2 --seq-len 32 --save-every 10 --device "$DEV")
step distill-whole 120 "${KD[@]}" -o "$W/kd-whole"
( "${KD[@]}" -o "$W/kd-killed" > "$OUT/distill-killed.txt" 2>&1 & pid=$!
  for _ in $(seq 1 600); do [ -d "$W/kd-killed/checkpoints/step-00000020" ] && break; sleep 0.05; done
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; echo "killed at: $(ls "$W/kd-killed/checkpoints" 2>/dev/null | tr '\n' ' ')" >> "$OUT/distill-killed.txt" )
step distill-resumed 120 "${KD[@]}" -o "$W/kd-killed" --resume
tail -1 "$OUT/distill-killed.txt" | tee -a "$SUM"
say "distill kill + resume on the GPU: $( [ "$(cat "$W"/kd-whole/final/*.safetensors 2>/dev/null | sha256sum)" = "$(cat "$W"/kd-killed/final/*.safetensors 2>/dev/null | sha256sum)" ] && echo 'final weights bit-identical' || echo 'final weights DIFFER (or missing)')"

# Speed: a random Llama-3.2-1B-shaped model, orlik's GPU executor against PyTorch on the same GPU.
if [ "$DEV" = cpu ]; then say "dry run: no speed comparison"; rm -rf "$W"; say "done $(date -u +%FT%TZ)"; exit 0; fi
step make-1b 180 python3 scripts/gpu_bench.py make "$W/llama1b" --shape 1b
step orlik-bench 180 "$B/orlik" bench "$W/llama1b" --device cuda --reps 3 --json
step torch-bench 180 python3 scripts/gpu_bench.py bench "$W/llama1b" --reps 3
python3 scripts/gpu_bench.py compare <(grep '^\[' "$OUT/orlik-bench.txt") <(grep '^{' "$OUT/torch-bench.txt") 2>&1 | tee -a "$SUM"
# A training step (forward + CE backward + AdamW) of the same model, 2 x 1024 tokens.
step orlik-train-bench 240 "$B/orlik" bench "$W/llama1b" --train --batch 2 --seq-len 1024 --reps 3 --device cuda --json
grep '^{' "$OUT/orlik-train-bench.txt" > "$W/orlik-train.json"
step torch-train-bench 240 python3 scripts/gpu_bench.py train "$W/llama1b" --batch 2 --seq-len 1024 --reps 3 --orlik "$W/orlik-train.json"
grep -E "^train step" "$OUT/torch-train-bench.txt" | tee -a "$SUM"
rm -rf "$W"
say "done $(date -u +%FT%TZ)"
