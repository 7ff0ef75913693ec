#!/usr/bin/env bash
# Build, here, what scripts/gpu-check.sh runs on a GPU machine (which has no Rust toolchain):
# the release `orlik` and the GPU test binaries (orlik-cuda's, orlik-train's cuda_exec), stripped, in target/gpu-bundle
# (carried to the GPU machine: under 64 MB in all).
#
#   bash scripts/gpu-bundle.sh            # then: run  bash scripts/gpu-check.sh  there, carrying target/gpu-bundle
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/gpu-bundle
rm -rf "$B"; mkdir -p "$B"
cargo build --release -p orlik
cp target/release/orlik "$B/orlik"
# The GPU test executables (orlik-cuda's, orlik-train's cuda_exec) by name: cargo prints each
# one's path as JSON.
cargo test --release -p orlik-cuda -p orlik-train --test cuda_exec --test kernels --test infer --test nvrtc --test device \
  --no-run --message-format=json 2>/dev/null | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        shutil.copy(m["executable"], sys.argv[1] + "/test-" + m["target"]["name"])
' "$B"
strip "$B"/*
git rev-parse HEAD > "$B/COMMIT"
ls -la "$B"
total=$(du -sm "$B" | cut -f1)
echo "gpu bundle: $total MB in $B (carry limit 64 MB)"
[ "$total" -lt 64 ] || { echo "too large to carry"; exit 1; }
