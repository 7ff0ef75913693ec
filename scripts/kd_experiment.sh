#!/usr/bin/env bash
# Issue 4's experiment: SmolLM2-135M pruned to ~67% on Polish text, then healed three ways with
# the same token budget — cross-entropy fine-tuning, logit distillation from the unpruned model
# (forward KL, top-64 teacher cache), and training the same architecture from random init — and
# bits/byte on the Polish validation text for teacher, pruned, CE, KD and scratch.
#
#   bash scripts/kd_experiment.sh OUT [STEPS]      (ORLIK=path/to/orlik to use another binary)
#
# STEPS optimizer steps of 8 x 256 tokens (default 150 = 307,200 tokens per run). Each stage is
# skipped when its output exists, so an interrupted experiment continues where it stopped.
set -euo pipefail
OUT=${1:?usage: kd_experiment.sh OUT [STEPS]}
STEPS=${2:-150}
ORLIK=${ORLIK:-target/release/orlik}
CACHE=${ORLIK_CACHE:-$HOME/.cache/orlik}
bash "$(dirname "$0")/fetch-assets.sh" model corpus >&2
mkdir -p "$OUT"
timed() { # name, command...: wall seconds and peak RSS of the command into OUT/times.tsv
  local name=$1; shift
  /usr/bin/time -f "$name\t%e\t%M" -a -o "$OUT/times.tsv" "$@"
}
# Training text: the first ~730 KB of paragraphs of train.txt (~340k tokens: one epoch covers the
# budget); in-loop validation: the first ~40 KB of valid-small.txt; final numbers on valid-small.txt.
python3 - "$CACHE/corpus-pl" "$OUT" <<'PY'
import sys
src, out = sys.argv[1], sys.argv[2]
def head(name, limit, dst):
    paras, n = [], 0
    for p in open(f"{src}/{name}", encoding="utf-8").read().split("\n\n"):
        paras.append(p); n += len(p.encode())
        if n > limit: break
    open(f"{out}/{dst}", "w", encoding="utf-8").write("\n\n".join(paras))
head("train.txt", 730_000, "train.txt")
head("valid-small.txt", 40_000, "val.txt")
PY
[ -d "$OUT/teacher" ] || timed convert "$ORLIK" convert "$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$OUT/teacher"
[ -d "$OUT/scores" ] || timed score "$ORLIK" score "$OUT/teacher" --data "$CACHE/corpus-pl/train.txt" --samples 64 --seq-len 256 -o "$OUT/scores" > /dev/null
[ -d "$OUT/pruned" ] || timed prune "$ORLIK" prune "$OUT/teacher" --scores "$OUT/scores" --params 0.67 --data "$CACHE/corpus-pl/train.txt" -o "$OUT/pruned"
if [ ! -f "$OUT/cache/.done" ]; then
  timed teacher-cache "$ORLIK" teacher-cache --teacher "$OUT/teacher" --data "$OUT/train.txt" --val "$OUT/val.txt" --topk 64 --seq-len 256 -o "$OUT/cache"
  touch "$OUT/cache/.done"
fi
COMMON=(--data "$OUT/train.txt" --val "$OUT/val.txt" --steps "$STEPS" --batch 8 --seq-len 256 --eval-every 25 --val-tokens 8192 --save-every 25)
run() { # name, command...
  local name=$1; shift
  if [ ! -d "$OUT/$name/final" ]; then
    local resume=(); [ -f "$OUT/$name/run.json" ] && resume=(--resume)
    timed "$name" "$@" "${COMMON[@]}" -o "$OUT/$name" "${resume[@]}"
  fi
}
run kd "$ORLIK" distill --student "$OUT/pruned" --teacher-cache "$OUT/cache" --lr 3e-4
run ce "$ORLIK" train "$OUT/pruned" --lr 3e-4
run scratch "$ORLIK" train "$OUT/pruned" --init random --lr 1e-3
# Bits/byte on the held-out Polish validation text (same sources as the training text) and, when
# ../shared is present, on ud-pl-pud.txt (Polish news/wiki: out of domain).
TEXTS=("$CACHE/corpus-pl/valid-small.txt")
PUD="$(dirname "$0")/../../shared/data/pl/ud-pl-pud.txt"
[ -f "$PUD" ] && TEXTS+=("$PUD")
{ printf "| model | params |"; for t in "${TEXTS[@]}"; do printf " bits/byte %s |" "$(basename "$t")"; done; echo
  printf "| --- | --- |"; for t in "${TEXTS[@]}"; do printf " --- |"; done; echo; } > "$OUT/results.md"
for m in teacher pruned kd/final ce/final scratch/final; do
  bash "$(dirname "$0")/bpb_row.sh" "$ORLIK" "$OUT" "$m" "${TEXTS[@]}" >> "$OUT/results.md"
done
"$ORLIK" curves "$OUT/kd" "$OUT/ce" "$OUT/scratch" --key val_bits_per_byte -o "$OUT/val_bpb.png"
cat "$OUT/results.md"
echo; echo "stage, wall seconds, peak RSS KB:"; cat "$OUT/times.tsv"
