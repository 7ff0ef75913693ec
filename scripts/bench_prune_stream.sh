#!/usr/bin/env bash
# Streaming prune of a synthetic 7B-shaped bf16 checkpoint vs `cp` of the same files, side by side.
#   scripts/bench_prune_stream.sh [WORK_DIR]      (needs ~40 GB free; a benchmark, not a test)
# Prints seconds, GB/s and the ratio, and orlik's peak RSS (target: <= 2 GiB, >= 50% of cp's speed).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/orlik-7b-bench}
ORLIK=${ORLIK:-target/release/orlik}
[ -f "$W/src/config.json" ] || python3 scripts/gen_synthetic_7b.py "$W/src"
rm -rf "$W/cp" "$W/pruned"
sync
bytes=$(du -sb "$W/src" | cut -f1)
t0=$(date +%s.%N); cp -r "$W/src" "$W/cp"; sync; t1=$(date +%s.%N)
/usr/bin/time -f "%M" -o "$W/rss" "$ORLIK" prune "$W/src" --importance random --layers 26 --ffn 11264 -o "$W/pruned" >/dev/null
sync; t2=$(date +%s.%N)
python3 - "$bytes" "$t0" "$t1" "$t2" "$(cat "$W/rss")" <<'PY'
import sys
b, t0, t1, t2, rss = int(sys.argv[1]), *map(float, sys.argv[2:5]), int(sys.argv[5])
cp, pr = t1 - t0, t2 - t1
print(f"checkpoint {b/1e9:.2f} GB; cp {cp:.1f} s ({b/cp/1e9:.2f} GB/s); orlik prune {pr:.1f} s ({b/pr/1e9:.2f} GB/s read)")
print(f"prune speed / cp speed = {cp/pr:.2f}; orlik peak RSS {rss/1024:.0f} MiB")
PY
rm -rf "$W/cp"
