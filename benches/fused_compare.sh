#!/usr/bin/env bash
# Fused vs unfused (tch-rpo) vs Liger-Kernel: one forward + backward of the preference loss through the LM
# head, each measurement in its own process under /usr/bin/time -v. Prints one JSON line per run with
# "max_rss_kb" (from /usr/bin/time) added.
#   benches/fused_compare.sh [RUNS] [VOCAB...]          e.g. benches/fused_compare.sh 3 32000 128256
# Environment: PAIRS (4) SEQ (512) HIDDEN (1024) DTYPE (f32) REFERENCE (model) DEVICE (cpu)
#              PYTHON (.venv/bin/python), IMPLS ("fused unfused liger").
# Needs a release build of the example (cargo build --release --example fused_bench), liger-kernel in the
# Python environment (pip install liger-kernel), and /usr/bin/time (Debian package `time`).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; shift || true
VOCABS=${*:-32000 128256}
PAIRS=${PAIRS:-4}; SEQ=${SEQ:-512}; HIDDEN=${HIDDEN:-1024}; DTYPE=${DTYPE:-f32}
REFERENCE=${REFERENCE:-model}; DEVICE=${DEVICE:-cpu}; PYTHON=${PYTHON:-.venv/bin/python}
IMPLS=${IMPLS:-fused unfused liger}
BIN=${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/examples/fused_bench}
for vocab in $VOCABS; do
  for run in $(seq "$RUNS"); do
    for impl in $IMPLS; do
      args=(--pairs "$PAIRS" --seq "$SEQ" --hidden "$HIDDEN" --vocab "$vocab" --dtype "$DTYPE"
            --reference "$REFERENCE" --device "$DEVICE" --seed "$run")
      if [ "$impl" = liger ]; then cmd=("$PYTHON" benches/liger_compare.py "${args[@]}")
      else cmd=("$BIN" --impl "$impl" "${args[@]}"); fi
      out=$(/usr/bin/time -v "${cmd[@]}" 2>/tmp/fused_compare_time.$$ || true)
      rss=$(grep "Maximum resident" /tmp/fused_compare_time.$$ | awk '{print $NF}')
      echo "${out%\}},\"max_rss_kb\":${rss:-null}}"
    done
  done
done
rm -f /tmp/fused_compare_time.$$
