#!/usr/bin/env bash
# Inference speed, orlik vs llama.cpp on the same weights, side by side in one run (a benchmark
# program, not a test).
#
#   bash scripts/bench_llamacpp.sh HF_DIR [ROUNDS] [DTYPES]     (defaults: 3 rounds, "f32 bf16 f16")
#
# For each dtype: `orlik export --type DT` writes HF_DIR's weights as a GGUF (matrices in DT, norms
# f32), llama.cpp's `llama-bench` runs it (-p 512 -n 64, all cores, its own 3 repetitions), and
# `orlik bench --compute-dtype DT` runs HF_DIR with the matrices held in DT. Rounds alternate the
# two so the machine's noise hits both; medians and the ratio orlik / llama.cpp are printed
# (> 1: orlik is faster). llama.cpp is built by scripts/build-llamacpp.sh (cached outside the
# repository; the AVX-512 build where the CPU has AVX-512F). What is compared: prefill of 512
# tokens at batch 1 (llama-bench pp512, orlik "prefill b1x512") and decode at batch 1
# (llama-bench tg64 from an empty context; orlik 64 tokens after a 16-token prompt).
# Also printed: the gemm roofline of this run (`gemm_speed` example), so the figures can be read
# against the machine's own f32 and 16-bit matrix throughput.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
MODEL=${1:?usage: bench_llamacpp.sh HF_DIR [ROUNDS] [DTYPES]}
ROUNDS=${2:-3}
DTYPES=${3:-f32 bf16 f16}
ORLIK=${ORLIK:-$HERE/../target/release/orlik}
[ -x "$ORLIK" ] || { echo "no orlik binary at $ORLIK (cargo build --release, or ORLIK=...)" >&2; exit 2; }
if grep -q avx512f /proc/cpuinfo; then ISA=avx512; else ISA=avx2; fi
BIN=$(LLAMACPP_ISA=$ISA bash "$HERE/build-llamacpp.sh")
THREADS=$(nproc)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for dt in $DTYPES; do
  "$ORLIK" export "$MODEL" --gguf "$WORK/model-$dt.gguf" --type "$dt" >/dev/null
done
echo "llama.cpp: $BIN ($ISA build), $THREADS threads; orlik: $ORLIK" >&2
for r in $(seq 1 "$ROUNDS"); do
  for dt in $DTYPES; do
    echo "round $r/$ROUNDS $dt" >&2
    "$ORLIK" bench "$MODEL" --reps 3 --compute-dtype "$dt" --json 2>/dev/null \
      | sed "s/^/orlik $dt /" >>"$WORK/results"
    "$BIN/llama-bench" -m "$WORK/model-$dt.gguf" -p 512 -n 64 -t "$THREADS" -r 3 -o json 2>/dev/null \
      | tr -d '\n' | sed "s/^/llama $dt /; s/\$/\n/" >>"$WORK/results"
  done
done
ROOF=$(cd "$HERE/.." && cargo run --release -q -p orlik-model --example gemm_speed -- 3 2>/dev/null || true)
PEAK=$(echo "$ROOF" | sed -n 's/^f32 peak GF\/s //p')
"$ORLIK" inspect "$MODEL" --json >"$WORK/inspect.json"
python3 - "$WORK/results" "$ROUNDS" "$WORK/inspect.json" "${PEAK:-0}" <<'EOF'
import json, statistics, sys
p = json.load(open(sys.argv[3]))
n = p["parameters"]
# Matrix FLOPs per token of a forward (attention scores left out): every matrix once, the
# embedding only when it is also the (tied) lm_head. Prefill takes the lm_head at the last
# position only (both sides: llama-bench's pp and orlik's `last_logits`), so its count leaves the
# head out (1/512 of it per token).
matrix = n["total"] - (0 if p["tie_word_embeddings"] else n["embeddings"])
head = p["vocab_size"] * p["hidden_size"]
body = matrix - head
peak = float(sys.argv[4])
wbytes = {"f32": 4, "bf16": 2, "f16": 2}
rows = {}
for line in open(sys.argv[1]):
    who, dt, payload = line.split(" ", 2)
    data = json.loads(payload)
    if who == "orlik":
        got = {t["what"]: t["tokens_per_s"] for t in data}
        pp = got["prefill b1x512"]
        tg = next(v for k, v in got.items() if k.startswith("decode b1"))
    else:
        pp = next(e["avg_ts"] for e in data if e["n_prompt"] == 512 and e["n_gen"] == 0)
        tg = next(e["avg_ts"] for e in data if e["n_gen"] == 64 and e["n_prompt"] == 0)
    for what, v in (("prefill 1 x 512", pp), ("decode b1", tg)):
        rows.setdefault((dt, what), {}).setdefault(who, []).append(v)
print(f"medians of {sys.argv[2]} alternating rounds, tokens/s")
print("| dtype | measurement | orlik | llama.cpp | ratio | orlik / llama.cpp of the limit |")
print("| --- | --- | --- | --- | --- | --- |")
for (dt, what), v in rows.items():
    o, l = statistics.median(v["orlik"]), statistics.median(v["llama"])
    if what.startswith("prefill") and peak > 0:  # compute-bound: MFU against this run's f32 gemm
        lim = lambda r: f"{2 * body * r / (peak * 1e9):.0%}"
        note = f"MFU {lim(o)} / {lim(l)} of {peak:.0f} GFLOP/s"
    else:  # memory-bound: the weight bytes streamed per second
        gbs = lambda r: f"{wbytes.get(dt, 4) * matrix * r / 1e9:.1f}"
        note = f"{gbs(o)} / {gbs(l)} GB/s of weights"
    print(f"| {dt} | {what} | {o:.1f} | {l:.1f} | {o / l:.2f} | {note} |")
EOF
[ -n "$ROOF" ] && { echo; echo "gemm throughput in this run (cargo run --release -p orlik-model --example gemm_speed):"; echo "$ROOF"; }
