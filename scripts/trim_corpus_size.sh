#!/usr/bin/env bash
# How much a trimmed vocabulary costs on Polish text it was not trimmed on, as the trimming
# corpus grows (issue 20 item 1): the model's vocabulary is trimmed (`orlik trim-vocab`, no
# training) on the first N bytes of the training corpus for each N, and bits/byte of every
# trimmed model and of the original are measured on out-of-domain text (default: UD Polish-PUD,
# never used for training or trimming). Prints a markdown table; writes OUT/results.tsv.
#   scripts/trim_corpus_size.sh MODEL_DIR [OUT]
#   SIZES     bytes of the corpus prefixes (default "120000 1000000 6300000"; 6.3 MB = all of it)
#   CORPUS    trimming text (default $ORLIK_CACHE/corpus-pl/train.txt)
#   TEXT      evaluation text (default ../shared/data/pl/ud-pl-pud.txt)
#   CONTEXT   bits/byte window (default 1024)
#   ORLIK     orlik binary (default target/release/orlik)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: scripts/trim_corpus_size.sh MODEL_DIR [OUT]}
OUT=${2:-runs/trim-corpus-size}
CACHE=${ORLIK_CACHE:-$HOME/.cache/orlik}
CORPUS=${CORPUS:-$CACHE/corpus-pl/train.txt}
TEXT=${TEXT:-../shared/data/pl/ud-pl-pud.txt}
SIZES=${SIZES:-120000 1000000 6300000}
CONTEXT=${CONTEXT:-1024}
ORLIK=${ORLIK:-target/release/orlik}
for f in "$MODEL/config.json" "$CORPUS" "$TEXT" "$ORLIK"; do
  [ -e "$f" ] || { echo "missing: $f" >&2; exit 2; }
done
mkdir -p "$OUT"
bpb() { "$ORLIK" eval ppl "$1" --text "$TEXT" --context "$CONTEXT" --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["bits_per_byte"])'; }
vocab() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$1/config.json"; }
params() { "$ORLIK" inspect "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["parameters"]["total"])'; }
RES="$OUT/results.tsv"
[ -f "$RES" ] || printf 'corpus_bytes\tvocab\tparameters\tbits_per_byte\n' > "$RES"
if ! grep -q '^0	' "$RES"; then
  printf '0\t%s\t%s\t%s\n' "$(vocab "$MODEL")" "$(params "$MODEL")" "$(bpb "$MODEL")" >> "$RES"
fi
for n in $SIZES; do
  grep -q "^$n	" "$RES" && continue   # measured before (the script resumes)
  head -c "$n" "$CORPUS" > "$OUT/corpus-$n.txt"
  "$ORLIK" trim-vocab "$MODEL" --data "$OUT/corpus-$n.txt" -o "$OUT/trim-$n" --force >&2
  printf '%s\t%s\t%s\t%s\n' "$n" "$(vocab "$OUT/trim-$n")" "$(params "$OUT/trim-$n")" "$(bpb "$OUT/trim-$n")" >> "$RES"
  rm -rf "$OUT/trim-$n"
done
python3 - "$RES" "$TEXT" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
base = float(rows[0]["bits_per_byte"])
print(f"bits/byte on {sys.argv[2]} (no training; 0 = the original vocabulary)\n")
print("| trimmed on (bytes of the corpus) | vocabulary | parameters | bits/byte | vs original |")
print("| --- | --- | --- | --- | --- |")
for r in rows:
    b = float(r["bits_per_byte"])
    n = int(r["corpus_bytes"])
    print(f"| {'— (original)' if n == 0 else f'{n:,}'} | {int(r['vocab']):,} | {int(r['parameters'])/1e6:.1f} M | {b:.4f} | {b - base:+.4f} |")
PY
