#!/usr/bin/env bash
# One markdown row for the KD experiments' results tables: name, parameters, and bits/byte at
# context 1024 on each text.   bpb_row.sh ORLIK OUT NAME TEXT...   (model directory: OUT/NAME)
set -euo pipefail
ORLIK=$1 OUT=$2 m=$3; shift 3
p=$("$ORLIK" inspect "$OUT/$m" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["parameters"]["total"])')
row="| $m | $(python3 -c "print('%.1fM' % ($p / 1e6))") |"
for t in "$@"; do
  b=$("$ORLIK" eval ppl "$OUT/$m" --text "$t" --context 1024 --json | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["bits_per_byte"])')
  row="$row $b |"
done
echo "$row"
