#!/usr/bin/env bash
# Streaming prune of a synthetic 7B-shaped bf16 checkpoint vs `cp` of the same files, side by side.
#   scripts/bench_prune_stream.sh [WORK_DIR] [ROUNDS]    (a benchmark, not a test; default 3 rounds)
# Needs the checkpoint (~14.5 GB) plus one copy of it free; it says so and stops when there is not.
# Rounds alternate `cp -r` and `orlik prune` (26 of 32 layers, MLP 11264), each from a cold page
# cache where this process may drop it (root: /proc/sys/vm/drop_caches; otherwise it says the reads
# may come from memory) and each output synced and deleted before the next: the page cache and
# the disk's own moods hit both sides. Prints per-round seconds, the medians, GB/s of checkpoint
# read, the ratio (target >= 0.8 of cp's speed) and orlik's peak RSS (target <= 2 GiB).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/orlik-7b-bench}
ROUNDS=${2:-3}
ORLIK=${ORLIK:-target/release/orlik}
[ -x "$ORLIK" ] || { echo "no orlik binary at $ORLIK (cargo build --release, or ORLIK=...)" >&2; exit 2; }
mkdir -p "$W"
free_kb() { df -Pk "$W" | awk 'NR == 2 { print $4 }'; }
if [ ! -f "$W/src/config.json" ]; then
  need=$((2 * 15500000))
  [ "$(free_kb)" -ge "$need" ] || { echo "need ~31 GB free in $W for the checkpoint and one copy; $(($(free_kb) / 1000000)) GB free" >&2; exit 2; }
  python3 scripts/gen_synthetic_7b.py "$W/src"
fi
rm -rf "$W/cp" "$W/pruned"
bytes=$(du -sb "$W/src" | cut -f1)
[ "$(free_kb)" -ge $((bytes / 1000 + 500000)) ] || { echo "need $((bytes / 1000000000)) GB free in $W for one copy" >&2; exit 2; }
cold() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 1 > /proc/sys/vm/drop_caches; else echo "warm" > "$W/cache"; fi
}
now() { date +%s.%N; }
: > "$W/times"
for r in $(seq 1 "$ROUNDS"); do
  cold; t0=$(now); cp -r "$W/src" "$W/cp"; sync; t1=$(now)
  rm -rf "$W/cp"
  cold; t2=$(now)
  /usr/bin/time -f "%M" -o "$W/rss" "$ORLIK" prune "$W/src" --importance random --layers 26 --ffn 11264 -o "$W/pruned" >/dev/null
  sync; t3=$(now)
  rm -rf "$W/pruned"
  echo "$t0 $t1 $t2 $t3 $(cat "$W/rss")" >> "$W/times"
  echo "round $r/$ROUNDS done" >&2
done
python3 - "$bytes" "$W/times" "$([ -f "$W/cache" ] && echo warm || echo cold)" <<'PY'
import statistics, sys
b, cache = int(sys.argv[1]), sys.argv[3]
rows = [list(map(float, l.split())) for l in open(sys.argv[2]) if l.strip()]
cps = [t1 - t0 for t0, t1, _, _, _ in rows]
prs = [t3 - t2 for _, _, t2, t3, _ in rows]
rss = max(r[4] for r in rows)
print(f"checkpoint {b/1e9:.2f} GB, {len(rows)} alternating rounds, page cache {cache} before each")
print("cp s:    " + " ".join(f"{x:.1f}" for x in cps))
print("prune s: " + " ".join(f"{x:.1f}" for x in prs))
cp, pr = statistics.median(cps), statistics.median(prs)
print(f"medians: cp {cp:.1f} s ({b/cp/1e9:.2f} GB/s); orlik prune {pr:.1f} s ({b/pr/1e9:.2f} GB/s read)")
print(f"prune speed / cp speed = {cp/pr:.2f}; orlik peak RSS {rss/1024:.0f} MiB")
PY
