#!/usr/bin/env bash
# Alignment demo: SFT -> DPO-Positive -> GRPO on Polish data the project makes itself
# (scripts/make_align_data.py: EXAMS-pl from ../shared when present, and generated Polish
# arithmetic word problems), with held-out accuracy before and after. Sized for 2 CPU cores in
# under 30 minutes with SmolLM2-135M-Instruct.
#
#   bash scripts/align-demo.sh MODEL OUT        (ORLIK=path/to/orlik for another binary;
#                                                ALIGN_SCALE=0.1 for a quick smoke run;
#                                                KEEP_CHECKPOINTS=0 drops a finished stage's
#                                                checkpoint: 3 model sizes of disk each)
#
# Writes OUT/data/, OUT/sft/, OUT/dpo/, OUT/grpo/ (each with final/, metrics.jsonl, PNG curves),
# OUT/eval/*.json and OUT/summary.md (held-out accuracy of every stage, reward curves).
set -euo pipefail
MODEL=${1:?usage: align-demo.sh MODEL OUT}
OUT=${2:?usage: align-demo.sh MODEL OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
ORLIK=${ORLIK:-$HERE/../target/release/orlik}
SCALE=${ALIGN_SCALE:-1}
[ -x "$ORLIK" ] || { echo "error: $ORLIK not found (cargo build --release, or set ORLIK)" >&2; exit 2; }
[ -f "$MODEL/config.json" ] || { echo "error: $MODEL is not an HF model directory" >&2; exit 2; }
n() { python3 -c "import math; print(max(1, math.ceil($1 * $SCALE)))"; }
mkdir -p "$OUT/eval"
D=$OUT/data
python3 "$HERE/make_align_data.py" "$D" >/dev/null
HAVE_EXAMS=0; [ -f "$D/exams-sft.jsonl" ] && HAVE_EXAMS=1
EVAL_N=$(n 50)

# Disjoint slices of the training rows for each stage (SFT never sees the DPO or GRPO problems).
slice() { sed -n "$(( $2 + 1 )),$(( $2 + $3 ))p" "$1"; }
# Sizes match the steps below (one pass: SFT 24 x 4 x 2, DPO 20 x 2 x 2, GRPO 20 x 1 x 2); micro-batches
# of 4 conversations / 2 pairs / 1 prompt group keep the peak memory near 8 GB.
{ slice "$D/arith-sft.jsonl" 0 "$(n 120)"; [ $HAVE_EXAMS = 1 ] && slice "$D/exams-sft.jsonl" 0 "$(n 72)"; true; } > "$D/stage-sft.jsonl"
{ slice "$D/arith-dpo.jsonl" 600 "$(n 50)"; [ $HAVE_EXAMS = 1 ] && slice "$D/exams-dpo.jsonl" 600 "$(n 30)"; true; } > "$D/stage-dpo.jsonl"
slice "$D/arith-grpo.jsonl" 900 "$(n 40)" > "$D/stage-grpo.jsonl"

evaluate() { # name model [mc]: generated answers on both held-out sets; EXAMS log-likelihood with "mc"
  local name=$1 m=$2 f=$OUT/eval/$1.json
  [ -f "$f" ] && return 0
  local arith exams mc
  arith=$("$ORLIK" eval reward "$m" --prompts "$D/arith-heldout.jsonl" --reward numeric --limit "$EVAL_N" --max-new-tokens 24 --json)
  exams=null; mc=null
  if [ $HAVE_EXAMS = 1 ]; then
    exams=$("$ORLIK" eval reward "$m" --prompts "$D/exams-heldout-grpo.jsonl" --reward choice --limit "$EVAL_N" --max-new-tokens 6 --json)
    [ "${3:-}" = mc ] && mc=$("$ORLIK" eval mc "$m" --tasks "$D/exams-heldout.jsonl" --limit "$EVAL_N" --json)
  fi
  printf '{"stage": "%s", "arith": %s, "exams_generated": %s, "exams_mc": %s}\n' "$name" "$arith" "$exams" "$mc" > "$f.tmp"
  mv "$f.tmp" "$f"
  echo "eval $name: $(python3 -c "import json; d=json.load(open('$f')); print('arith', d['arith']['reward_mean'], 'exams', d['exams_generated'] and d['exams_generated']['reward_mean'])")"
}

stage() { # name command... (skipped when OUT/name/final exists; resumed when interrupted)
  local name=$1; shift
  [ -d "$OUT/$name/final" ] && return 0
  local resume=(); [ -f "$OUT/$name/run.json" ] && resume=(--resume)
  /usr/bin/time -f "$name\t%e\t%M" -a -o "$OUT/times.tsv" "$ORLIK" "$@" -o "$OUT/$name" "${resume[@]}"
  if [ "${KEEP_CHECKPOINTS:-1}" = 0 ]; then rm -rf "$OUT/$name/checkpoints"; fi
}

evaluate before "$MODEL" mc
stage sft sft "$MODEL" --data "$D/stage-sft.jsonl" --steps "$(n 24)" --batch 4 --grad-accum 2 --lr 5e-5 --max-len 192 --save-every 12
evaluate sft "$OUT/sft/final"
stage dpo dpo "$OUT/sft/final" --data "$D/stage-dpo.jsonl" --loss dpop --beta 0.1 --lambda 5 --steps "$(n 20)" --batch 2 --grad-accum 2 --lr 5e-6 --max-len 192 --max-prompt 144 --save-every 10
evaluate dpo "$OUT/dpo/final"
stage grpo grpo "$OUT/dpo/final" --prompts "$D/stage-grpo.jsonl" --reward numeric --group 8 --max-new-tokens 24 --temperature 1.0 \
  --steps "$(n 20)" --batch 1 --grad-accum 2 --lr 1e-5 --max-len 192 --max-prompt 96 --save-every 10 --log-samples 5
evaluate grpo "$OUT/grpo/final" mc

python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
def mean(rows, k, a, b):
    v = [r[k] for r in rows[a:b] if k in r]
    return sum(v) / len(v) if v else float("nan")
def metrics(stage):
    return [json.loads(l) for l in open(os.path.join(out, stage, "metrics.jsonl"))]
lines = ["# Alignment demo", "", "Held-out accuracy (greedy generation; EXAMS also by log-likelihood):", "",
         "| stage | arithmetic (numeric) | EXAMS-pl generated letter | EXAMS-pl log-likelihood (norm.) |", "| --- | --- | --- | --- |"]
for s in ["before", "sft", "dpo", "grpo"]:
    d = json.load(open(os.path.join(out, "eval", s + ".json")))
    ex = d["exams_generated"]["reward_mean"] if d["exams_generated"] else None
    mc = d["exams_mc"]["result"]["accuracy_norm"] if d["exams_mc"] else None
    f = lambda x: "n/a" if x is None else f"{x:.3f}"
    lines.append(f"| {s} | {f(d['arith']['reward_mean'])} (n={d['arith']['n']}) | {f(ex)} | {f(mc)} |")
dpo, grpo = metrics("dpo"), metrics("grpo")
q = lambda rows: max(1, len(rows) // 4)
lines += ["", "Training signals (mean of the first vs the last quarter of the steps):", "",
          f"- DPO-P rewards_accuracy {mean(dpo, 'rewards_accuracy', 0, q(dpo)):.3f} -> {mean(dpo, 'rewards_accuracy', len(dpo) - q(dpo), len(dpo)):.3f}, "
          f"rewards_margin {mean(dpo, 'rewards_margin', 0, q(dpo)):.4f} -> {mean(dpo, 'rewards_margin', len(dpo) - q(dpo), len(dpo)):.4f}",
          f"- GRPO reward_mean {mean(grpo, 'reward_mean', 0, q(grpo)):.3f} -> {mean(grpo, 'reward_mean', len(grpo) - q(grpo), len(grpo)):.3f}, "
          f"completion_length {mean(grpo, 'completion_length', 0, q(grpo)):.1f} -> {mean(grpo, 'completion_length', len(grpo) - q(grpo), len(grpo)):.1f}",
          "", "Curves: dpo/rewards_accuracy.png, dpo/rewards_margin.png, grpo/reward_mean.png, sft/loss.png (blue raw, red smoothed).",
          "Stage wall seconds and peak RSS KB: times.tsv."]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
