#!/usr/bin/env bash
# The memory planner against the measured peak RSS: each training command once with
# /usr/bin/time (2 steps), beside `orlik mem` of the same command. Prints a Markdown table.
#
#   bash scripts/mem_check.sh MODEL STUDENT TEXT      (STUDENT: e.g. a pruned MODEL)
#
# Writes nothing but scratch output under a temporary directory (removed at the end).
set -euo pipefail
M=${1:?usage: mem_check.sh MODEL STUDENT TEXT}; S=${2:?}; D=${3:?}
O=${ORLIK:-$(cd "$(dirname "$0")/.." && pwd)/target/release/orlik}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
python3 - "$T" > "$T/sft.jsonl" <<'PY'
import json, sys
for i in range(64):
    print(json.dumps({"messages": [{"role": "user", "content": f"Ile to {i} + {i}? " * 20}, {"role": "assistant", "content": f"To {2*i}. " * 40}]}))
PY
python3 - > "$T/dpo.jsonl" <<'PY'
import json
for i in range(64):
    print(json.dumps({"prompt": f"Ile to {i} + {i}? " * 20, "chosen": f"To {2*i}. " * 40, "rejected": f"To {2*i+1}. " * 40}))
PY
echo "| command | estimated peak (MiB) | measured peak RSS (MiB) | estimate / measured |"
echo "| --- | --- | --- | --- |"
n=0
row() { # name, then the command's arguments after `orlik` (OUT: a fresh output directory)
  local name=$1; shift; n=$((n + 1))
  set -- "${@/#OUT/$T/out$n}"
  est=$("$O" mem --json "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["peak_bytes"])')
  /usr/bin/time -f "%M" -o "$T/rss" "$O" "$@" > /dev/null 2> "$T/err" || { tail -3 "$T/err"; exit 1; }
  kb=$(tail -1 "$T/rss")
  rm -rf "$T/out$n"   # a run's weights, moments and final model: several model sizes of disk
  python3 -c "e=$est/2**20; m=$kb/1024; print(f'| $name | {e:.0f} | {m:.0f} | {e/m:.3f} |')"
}
row "train MODEL b4x128" train "$M" --data "$D" --steps 2 --batch 4 --seq-len 128 -o OUT
row "train MODEL b8x512" train "$M" --data "$D" --steps 2 --batch 8 --seq-len 512 -o OUT
row "train MODEL b8x128 --checkpoint-layers" train "$M" --data "$D" --steps 2 --batch 8 --seq-len 128 --checkpoint-layers -o OUT
row "train MODEL b2x1024 --checkpoint-layers" train "$M" --data "$D" --steps 2 --batch 2 --seq-len 1024 --checkpoint-layers -o OUT
row "distill MODEL->MODEL b4x128" distill --teacher "$M" --student "$M" --data "$D" --steps 2 --batch 4 --seq-len 128 -o OUT
row "distill MODEL->MODEL b8x512" distill --teacher "$M" --student "$M" --data "$D" --steps 2 --batch 8 --seq-len 512 -o OUT
row "distill MODEL->STUDENT b4x256" distill --teacher "$M" --student "$S" --data "$D" --steps 2 --batch 4 --seq-len 256 -o OUT
row "train STUDENT b4x256" train "$S" --data "$D" --steps 2 --batch 4 --seq-len 256 -o OUT
row "sft MODEL b4, max-len 256" sft "$M" --data "$T/sft.jsonl" --steps 2 --batch 4 --max-len 256 -o OUT
row "dpo MODEL b2, max-len 256" dpo "$M" --data "$T/dpo.jsonl" --steps 2 --batch 2 --max-len 256 -o OUT
row "sft STUDENT b4, max-len 256" sft "$S" --data "$T/sft.jsonl" --steps 2 --batch 4 --max-len 256 -o OUT
row "dpo STUDENT b2, max-len 256" dpo "$S" --data "$T/dpo.jsonl" --steps 2 --batch 2 --max-len 256 -o OUT
