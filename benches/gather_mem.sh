#!/usr/bin/env bash
# Peak resident memory and time of log-prob gathering, each implementation in its own process:
# `none` (inputs only), `chunked` (tch_rpo::sequence_logprobs), `naive` (log_softmax + gather).
# Usage: bash benches/gather_mem.sh [B] [T] [V...]   (default 8 512 32000 128256)
# Prints a markdown table; "above inputs" = peak RSS minus the `none` run's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
b=${1:-8}; t=${2:-512}; shift $(( $# >= 2 ? 2 : $# )) || true
vocabs=("$@"); [ ${#vocabs[@]} -gt 0 ] || vocabs=(32000 128256)
cargo build --release --example gather_mem >/dev/null 2>&1
bin=target/release/examples/gather_mem
echo "| V | dtype | backward | impl | peak RSS (MiB) | above inputs (MiB) | % of one f32 [B,T,V] | ms |"
echo "|---|---|---|---|---|---|---|---|"
for v in "${vocabs[@]}"; do
  for dtype in f32 bf16; do
    for bw in "" "--backward"; do
      base=""
      for impl in none chunked naive; do
        out=$( { /usr/bin/time -v "$bin" --impl $impl --batch "$b" --seq "$t" --vocab "$v" --dtype $dtype $bw; } 2>&1 )
        rss_kb=$(grep "Maximum resident set size" <<<"$out" | awk '{print $NF}')
        ms=$(grep -o '"ms":[0-9.]*' <<<"$out" | cut -d: -f2)
        rss=$(( rss_kb / 1024 ))
        [ "$impl" = none ] && base=$rss
        full=$(( b * t * v * 4 / 1048576 ))
        above=$(( rss - base ))
        pct=$(awk -v a=$above -v f=$full 'BEGIN{printf "%.1f", 100*a/f}')
        bwname=no; [ -n "$bw" ] && bwname=yes
        echo "| $v | $dtype | $bwname | $impl | $rss | $above | $pct% | $ms |"
      done
    done
  done
done
