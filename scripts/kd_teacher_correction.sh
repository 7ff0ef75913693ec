#!/usr/bin/env bash
# Teacher correction (Minitron, Sreenivas et al. 2024, "LLM Pruning and Distillation in Practice"):
# when the distillation data is unlike the teacher's own pretraining data, fine-tune the teacher on
# it first, then distil from the corrected teacher. Continues an experiment made by
# scripts/kd_experiment.sh OUT (reuses its teacher, pruned student, text and settings):
#
#   bash scripts/kd_teacher_correction.sh OUT [STEPS]     (ORLIK=path/to/orlik for another binary)
#
# Stages (each skipped when done): OUT/teacher-tc (teacher + STEPS of CE on OUT/train.txt, the same
# token budget as the student runs), OUT/cache-tc (its top-64 cache), OUT/kd-tc (KD, same settings
# as OUT/kd), OUT/kd-tc-ce (the same plus a CE term of weight 1, Hinton et al.'s mix). Appends rows
# to OUT/results.md and draws OUT/val_bpb_tc.png.
set -euo pipefail
OUT=${1:?usage: kd_teacher_correction.sh OUT [STEPS]}
STEPS=${2:-150}
ORLIK=${ORLIK:-target/release/orlik}
CACHE=${ORLIK_CACHE:-$HOME/.cache/orlik}
for need in teacher pruned train.txt val.txt kd/final ce/final; do
  [ -e "$OUT/$need" ] || { echo "error: $OUT/$need is missing: run scripts/kd_experiment.sh $OUT first" >&2; exit 2; }
done
timed() { local name=$1; shift; /usr/bin/time -f "$name\t%e\t%M" -a -o "$OUT/times.tsv" "$@"; }
COMMON=(--data "$OUT/train.txt" --val "$OUT/val.txt" --steps "$STEPS" --seq-len 256 --eval-every 25 --val-tokens 8192 --save-every 25)
run() { # name, command...
  local name=$1; shift
  if [ ! -d "$OUT/$name/final" ]; then
    local resume=(); [ -f "$OUT/$name/run.json" ] && resume=(--resume)
    timed "$name" "$@" "${COMMON[@]}" -o "$OUT/$name" "${resume[@]}"
  fi
}
# The 135M teacher at 8 x 256 would need ~17 GB of activations; 2 micro-batches of 4 are the
# same optimizer step (same tokens, averaged gradient) in half the memory.
run teacher-tc "$ORLIK" train "$OUT/teacher" --lr 3e-4 --batch 4 --grad-accum 2
if [ ! -f "$OUT/cache-tc/.done" ]; then
  timed teacher-cache-tc "$ORLIK" teacher-cache --teacher "$OUT/teacher-tc/final" --data "$OUT/train.txt" --val "$OUT/val.txt" --topk 64 --seq-len 256 -o "$OUT/cache-tc"
  touch "$OUT/cache-tc/.done"
fi
run kd-tc "$ORLIK" distill --student "$OUT/pruned" --teacher-cache "$OUT/cache-tc" --lr 3e-4 --batch 8
run kd-tc-ce "$ORLIK" distill --student "$OUT/pruned" --teacher-cache "$OUT/cache-tc" --lr 3e-4 --batch 8 --ce-weight 1
TEXTS=("$CACHE/corpus-pl/valid-small.txt")
PUD="$(dirname "$0")/../../shared/data/pl/ud-pl-pud.txt"
[ -f "$PUD" ] && TEXTS+=("$PUD")
for m in teacher-tc/final kd-tc/final kd-tc-ce/final; do
  grep -q "^| $m |" "$OUT/results.md" 2>/dev/null && continue
  bash "$(dirname "$0")/bpb_row.sh" "$ORLIK" "$OUT" "$m" "${TEXTS[@]}" >> "$OUT/results.md"
done
"$ORLIK" curves "$OUT/kd-tc-ce" "$OUT/kd-tc" "$OUT/ce" --key val_bits_per_byte -o "$OUT/val_bpb_tc.png"
cat "$OUT/results.md"
echo; echo "stage, wall seconds, peak RSS KB:"; cat "$OUT/times.tsv"
