#!/usr/bin/env bash
# Tokens/s of greedy generation on Gemma 3 270M (the PyPI GGUF, dequantized to f32, CPU):
# tch_rpo::models::gemma::generate (examples/gemma_generate.rs, KV cache) against transformers'
# `generate` (eager attention, its default dynamic cache) on the same prompts, token ids and threads,
# one prompt at a time and as one left-padded batch. Also says whether both produced the same tokens.
#
#   bash benches/generate_compare.sh            # THREADS=2 NEW_TOKENS=64 REPEATS=3 by default
#
# transformers / gguf / accelerate are installed into the project's .venv only here (and by the fixture
# scripts), never by the set-up or the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
NEW_TOKENS=${NEW_TOKENS:-64}
REPEATS=${REPEATS:-3}
PY=.venv/bin/python
GGUF=${TCH_RPO_GEMMA3_GGUF:-$(bash scripts/get_gemma3_gguf.sh | tail -n 1)}
if ! "$PY" -c "import transformers, gguf, accelerate" 2>/dev/null; then
    "$PY" -m pip install --quiet "transformers>=4.56" gguf accelerate
fi
cargo build --release --quiet --example gemma_generate
OURS="${CARGO_TARGET_DIR:-target}/release/examples/gemma_generate"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load before: $(uptime)"
"$PY" benches/generate_compare.py --gguf "$GGUF" --ours "$OURS" --threads "$THREADS" \
    --new-tokens "$NEW_TOKENS" --repeats "$REPEATS"
echo "load after: $(uptime)"
