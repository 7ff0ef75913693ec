#!/usr/bin/env bash
# Data-parallel benchmark (a program, not a test): the same distillation step (teacher forward,
# student forward + backward, AdamW) on 1 process and on 2 ranks under mpirun, 1 thread per
# rank, the global batch fixed (batch x grad-accum). Prints tokens/s of each, the share of the
# 2-rank step spent in the sums over ranks (`comm_seconds` in metrics.jsonl: it includes waiting
# for the slower rank), and the bytes that crossed the loopback interface per step (MPI told to
# use TCP on lo) against the ring all-reduce formula 2·(N−1)/N·n per rank; then the same 2 ranks
# with the sharded optimizer (ZeRO-1, the default): a reduce-scatter of the gradients and an
# all-gather of the new weights, (N−1)/N·n per rank each, the bytes of one all-reduce (its
# collectives are in comm_seconds too).
#
#   bash scripts/bench_dp.sh [MODEL_DIR] [STEPS]
# MODEL_DIR: an HF directory (default: SmolLM2-135M converted from the cached GGUF, fetched by
# scripts/fetch-assets.sh); it is teacher and student at once. Needs mpirun (openmpi-bin).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${ORLIK_CACHE:-$HOME/.cache/orlik}
ORLIK=${ORLIK:-target/release/orlik}
STEPS=${2:-4}
command -v mpirun >/dev/null || { echo "mpirun not found: apt-get install openmpi-bin"; exit 1; }
[ -x "$ORLIK" ] || cargo build --release -q
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model=${1:-}
if [ -z "$model" ]; then
  bash scripts/fetch-assets.sh model corpus >/dev/null
  model="$work/smollm2"
  "$ORLIK" convert "$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$model" >/dev/null
fi
data="$CACHE/corpus-pl/train.txt"
[ -f "$data" ] || data="$CACHE/corpus-pl/valid-small.txt"
args=(distill --teacher "$model" --student "$model" --data "$data" --seq-len 128 --batch 1
  --grad-accum 2 --steps "$STEPS" --save-every 1000 --lr 1e-5)
mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2
  --mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
lo=/sys/class/net/lo/statistics/tx_bytes

RAYON_NUM_THREADS=1 "$ORLIK" "${args[@]}" -o "$work/one" >/dev/null 2>&1
before=$(cat $lo)
RAYON_NUM_THREADS=1 "${mpi[@]}" -x RAYON_NUM_THREADS "$ORLIK" "${args[@]}" --no-shard-optimizer -o "$work/two" >/dev/null 2>&1
moved=$(( $(cat $lo) - before ))
before=$(cat $lo)
RAYON_NUM_THREADS=1 "${mpi[@]}" -x RAYON_NUM_THREADS "$ORLIK" "${args[@]}" -o "$work/zero" 2>"$work/zero.err" >/dev/null
moved_zero=$(( $(cat $lo) - before ))
grep -h "optimizer state sharded" "$work/zero.err" || true
params=$(python3 - "$model" <<'EOF'
import json, os, struct, sys
n = 0
for f in os.listdir(sys.argv[1]):
    if f.endswith(".safetensors"):
        with open(os.path.join(sys.argv[1], f), "rb") as fh:
            h = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for k, v in h.items():
            if k != "__metadata__":
                p = 1
                for d in v["shape"]:
                    p *= d
                n += p
print(n)
EOF
)
python3 - "$work" "$STEPS" "$moved" "$params" "$moved_zero" <<'EOF'
import json, statistics, sys
work, steps, moved, params = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
moved_zero = int(sys.argv[5])
def rows(d):
    # The first step pays the page cache and the allocator: left out of the medians.
    r = [json.loads(l) for l in open(f"{work}/{d}/metrics.jsonl") if '"loss"' in l]
    return r[1:] if len(r) > 1 else r
one, two, zero = rows("one"), rows("two"), rows("zero")
t1 = statistics.median(r["tokens_per_s"] for r in one)
t2 = statistics.median(r["tokens_per_s"] for r in two)
tz = statistics.median(r["tokens_per_s"] for r in zero)
share = statistics.median(r["comm_seconds"] / r["seconds"] for r in two)
n = 4 * params  # bytes of an f32 gradient
ring = 2 * (2 - 1) / 2 * n  # per rank per step
print(f"model: {params / 1e6:.1f}M parameters, gradient {n / 2**20:.1f} MiB; global batch 2 x 128 tokens, {steps} steps, 1 thread per rank")
print(f"| ranks | tokens/s | ratio | time in sums over ranks |")
print(f"| --- | --- | --- | --- |")
print(f"| 1 | {t1:.1f} | 1.00 | - |")
print(f"| 2 | {t2:.1f} | {t2 / t1:.2f} | {100 * share:.1f}% |")
sz = statistics.median(r["comm_seconds"] / r["seconds"] for r in zero)
print(f"| 2, sharded optimizer | {tz:.1f} | {tz / t1:.2f} | {100 * sz:.1f}% |")
per_step = moved / steps
print(f"bytes on lo per step (both ranks): {per_step / 2**20:.1f} MiB; ring all-reduce: 2 x {ring / 2**20:.1f} MiB = {2 * ring / 2**20:.1f} MiB (measured / formula {per_step / (2 * ring):.2f})")
z = moved_zero / steps
print(f"sharded: {z / 2**20:.1f} MiB on lo per step; reduce-scatter + all-gather: 2 x ({ring / 2 / 2**20:.1f} + {ring / 2 / 2**20:.1f}) = {2 * ring / 2**20:.1f} MiB (measured / formula {z / (2 * ring):.2f})")
EOF
