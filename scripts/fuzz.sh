#!/usr/bin/env bash
# Fuzz every reader of untrusted files with cargo fuzz (libFuzzer): safetensors, shard index,
# GGUF (+ config from its metadata, dequantisation), tokenizer from GGUF, config.json, JSONL rows,
# recipe TOML, teacher-cache manifest and records.
#
#   bash scripts/fuzz.sh [SECONDS]      # SECONDS in all (default 300), split over the targets
#   FUZZ_TARGETS="gguf recipe" bash scripts/fuzz.sh 600
#
# The corpus grows in $ORLIK_CACHE/fuzz-corpus (seeded from tests/fixtures and recipes/), crashes
# land in $ORLIK_CACHE/fuzz-artifacts; copy a crashing input into tests/fuzz-regressions/TARGET/
# so that the README's test command replays it for ever (crates/cli/tests/fuzz_regressions.rs).
# Uses the nightly toolchain with AddressSanitizer where there is one, else the stable toolchain
# with RUSTC_BOOTSTRAP=1 and no sanitizer; skips, saying why, where neither builds.
set -uo pipefail
cd "$(dirname "$0")/.."
TOTAL=${1:-300}
CACHE=${ORLIK_CACHE:-$HOME/.cache/orlik}
CORPUS=$CACHE/fuzz-corpus
ART=$CACHE/fuzz-artifacts
TDIR=$CACHE/fuzz-target   # outside the repository, kept between runs (a first build takes ~14 min on 2 cores)
TARGETS=${FUZZ_TARGETS:-safetensors shard_index gguf gguf_tokenizer config_json jsonl_rows recipe teacher_cache}

if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked >/dev/null 2>&1 || { echo "fuzz: skipped: cargo-fuzz could not be installed"; exit 0; }
fi
TC=(+nightly); SAN=()
if ! cargo +nightly --version >/dev/null 2>&1; then
  TC=(); SAN=(-s none); export RUSTC_BOOTSTRAP=1
  echo "fuzz: no nightly toolchain: stable with RUSTC_BOOTSTRAP=1, without sanitizer"
fi
t0=$(date +%s)
# A Rust compile error in orlik's own code is a failure, not a machine without the tools.
own_error() {
  if grep -q '^error\[E[0-9]*\]' /tmp/orlik-fuzz-build.log; then
    grep -A8 '^error\[E[0-9]*\]' /tmp/orlik-fuzz-build.log | head -40
    echo "fuzz: FAILED: the fuzz targets do not compile (see above)"
    exit 1
  fi
}
if ! cargo "${TC[@]}" fuzz build "${SAN[@]}" --target-dir "$TDIR" >/tmp/orlik-fuzz-build.log 2>&1; then
  own_error
  if [ ${#SAN[@]} -eq 0 ]; then
    echo "fuzz: the sanitizer build failed; retrying without sanitizer"
    SAN=(-s none)
    cargo "${TC[@]}" fuzz build "${SAN[@]}" --target-dir "$TDIR" >/tmp/orlik-fuzz-build.log 2>&1 || { own_error; tail -20 /tmp/orlik-fuzz-build.log; echo "fuzz: skipped: the fuzz targets do not build here"; exit 0; }
  else
    tail -20 /tmp/orlik-fuzz-build.log; echo "fuzz: skipped: the fuzz targets do not build here"; exit 0
  fi
fi
echo "fuzz: targets built in $(( $(date +%s) - t0 )) s"

# Seeds: real files of each kind from the fixtures (copied, never modified).
mkdir -p "$CORPUS" "$ART"
for t in $TARGETS; do mkdir -p "$CORPUS/$t" "$ART/$t"; done
for f in tests/fixtures/{llama,qwen2,gemma3}/model.safetensors tests/fixtures/mistral/model-00001-of-00005.safetensors; do cp -n "$f" "$CORPUS/safetensors/$(basename "$(dirname "$f")").st" 2>/dev/null; done
cp -n tests/fixtures/mistral/model.safetensors.index.json "$CORPUS/shard_index/mistral.json" 2>/dev/null
for f in tests/fixtures/gguf/*.gguf; do cp -n "$f" "$CORPUS/gguf/" 2>/dev/null; cp -n "$f" "$CORPUS/gguf_tokenizer/" 2>/dev/null; done
for d in llama qwen2 gemma3 mistral; do cp -n "tests/fixtures/$d/config.json" "$CORPUS/config_json/$d.json" 2>/dev/null; done
for f in recipes/*.toml; do cp -n "$f" "$CORPUS/recipe/" 2>/dev/null; done
printf '%s\n' '{"messages": [{"role": "user", "content": "Ile to 2+2?"}, {"role": "assistant", "content": "4"}]}' \
  '{"prompt": [{"role": "user", "content": "Stolica Polski?"}], "chosen": "Warszawa", "rejected": "Kraków"}' \
  '{"prompt": "2+3=", "answer": "5"}' > "$CORPUS/jsonl_rows/seed.jsonl"
{ printf '%s' '{"format":"orlik-teacher-cache","version":1,"teacher_sha256":"a","tokenizer_sha256":"b","vocab_size":64,"topk":2,"temperature":1.0,"seq_len":2,"train":{"data_sha256":"c","windows":3,"shard_windows":2,"shards":["train-00000.bin","train-00001.bin"]},"val":null}'
  printf '\0\1\0\0\0\2\0\0\0\0\0\0\277\0\0\0\300\0\0\200\277'; } > "$CORPUS/teacher_cache/seed.bin"
rm -f /dev/shm/orlik-fuzz-* 2>/dev/null

n=$(echo $TARGETS | wc -w)
per=$(( TOTAL / n )); [ "$per" -lt 5 ] && per=5
status=0
for t in $TARGETS; do
  log=$ART/$t.log
  cargo "${TC[@]}" fuzz run "${SAN[@]}" --target-dir "$TDIR" "$t" "$CORPUS/$t" -- -max_total_time="$per" -rss_limit_mb=2048 -timeout=20 \
    -print_final_stats=1 -artifact_prefix="$ART/$t/" >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'exec/s: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  if [ $rc -ne 0 ]; then
    status=1
    echo "fuzz: $t: FAILED after ${execs:-?} executions (exit $rc); input in $ART/$t/:"
    grep -E "^==[0-9]+==ERROR|panicked|SUMMARY|Test unit written" "$log" | head -5
  else
    echo "fuzz: $t: ${execs:-?} executions in ${per} s (${rate:-?}/s), corpus $(ls "$CORPUS/$t" | wc -l) inputs, no crash"
  fi
done
rm -f /dev/shm/orlik-fuzz-* 2>/dev/null
exit $status
