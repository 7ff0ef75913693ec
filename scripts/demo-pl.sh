#!/usr/bin/env bash
# The Polish-teacher job (recipes/gemma-pl.toml): Gemma-3-270M, which reads and writes good
# Polish, with its vocabulary trimmed to the Polish corpus, pruned to 2/3 of what remains and
# distilled from the original. Opt-in: Gemma is under the Gemma terms, not an open licence; the
# script fetches it only when ORLIK_ACCEPT_GEMMA_TERMS=1 says you have read them
# (https://ai.google.dev/gemma/terms; the licence files travel with every model made from it).
#   ORLIK_CACHE   cache directory (default ~/.cache/orlik)
#   ORLIK_OUT     output directory (default runs/gemma-pl)
#   ORLIK         orlik binary to use (default: build it)
# Extra arguments go to `orlik run` (e.g. --set distill.tokens=1000000).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${ORLIK_ACCEPT_GEMMA_TERMS:-}" != 1 ]; then
  echo "demo-pl.sh runs Gemma-3-270M, which is under the Gemma terms of use." >&2
  echo "Read them (https://ai.google.dev/gemma/terms), then: ORLIK_ACCEPT_GEMMA_TERMS=1 bash scripts/demo-pl.sh" >&2
  exit 2
fi
CACHE=${ORLIK_CACHE:-$HOME/.cache/orlik}
OUT=${ORLIK_OUT:-runs/gemma-pl}
bash scripts/fetch-assets.sh gemma corpus
if [ -z "${ORLIK:-}" ]; then
  cargo build --release --quiet -p orlik
  ORLIK=target/release/orlik
fi
MODEL="$CACHE/models/gemma-3-270m"
if [ ! -f "$MODEL/config.json" ]; then
  "$ORLIK" convert "$CACHE/gemma3/gemma-3-270m-q4_k_m.gguf" -o "$MODEL"
fi
VALID="$CACHE/corpus-pl/valid-small.txt"
SETS=(--set "teacher=$MODEL" --set "data=[\"$CACHE/corpus-pl/train.txt\"]" --set "val=[\"$VALID\"]")
# Out-of-domain Polish (UD Polish-PUD) and the EXAMS questions when ../shared is beside the checkout.
PUD=../shared/data/pl/ud-pl-pud.txt
EXAMS=../shared/data/pl/exams-pl-train.jsonl
abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
[ -f "$PUD" ] && SETS+=(--set "eval.texts=[\"$VALID\", \"$(abs "$PUD")\"]")
[ -f "$EXAMS" ] && SETS+=(--set "eval.mc_tasks=$(abs "$EXAMS")")
"$ORLIK" run recipes/gemma-pl.toml "${SETS[@]}" -o "$OUT" "$@"
