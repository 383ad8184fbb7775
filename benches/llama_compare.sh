#!/usr/bin/env bash
# One RPO step on Llama-family models of real sizes with random weights — a Qwen2.5-0.5B-shaped and a
# Llama-3.2-1B-shaped model made by transformers (benches/llama_compare.py make: f32 Hugging Face folders with a
# byte-level BPE tokenizer trained offline) — TRL's DPOTrainer vs tch-rpo's `rpo_gemma --model-dir`, with the
# same preference data (benches/trl_compare.py data), batch, lengths, threads and steps; each run in its own
# process under /usr/bin/time -v. Prints one markdown table per shape (median s/step without the first step,
# whole-process peak RSS, tokens/s, ratios to TRL). A run that fails (e.g. killed out of memory) or does not
# finish before DEADLINE is recorded as such in the table; the script goes on.
#
#   benches/llama_compare.sh
#   TINY=1 benches/llama_compare.sh           # smoke test: tiny models of the same families
#
# Environment: SHAPES ("qwen2.5-0.5b llama-3.2-1b") RUNS ("trl ours"; also "ours-bf16": --precision bf16, which
#   `--precision auto`, rpo_gemma's default with --model-dir, picks on a CPU with AVX-512 BF16 / AMX; and
#   "trl-bf16": TRL's bf16=True, its own default since TRL 1.x, f32 weights under torch.autocast(bfloat16)) STEPS (3) BATCH (2 pairs) PAIRS (8)
#   MAX_LENGTH (256) MAX_PROMPT_LENGTH (128) THREADS (2) TINY (0) WORK (output/llama_compare) PYTHON (.venv/bin/python)
#   DEADLINE (unix time; runs not started before it are recorded "not run", a run still going then is stopped)
# TRL runs as benches/trl_compare.sh runs it: f32, precompute_ref_log_probs, loss_type sigmoid + sft (weight 0.05),
# lr 1e-5 cosine; ours: --rpo-only --sft-epochs 0 (the loaded model is the reference), η·β = 0.05, lr 1e-5.
# It installs TRL 1.16.0 (and datasets) into the project's venv when it runs (bench-only: neither the set-up
# nor the tests use them) and builds the example with --features hf-tokenizers. Needs /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-3}; BATCH=${BATCH:-2}; PAIRS=${PAIRS:-8}; MAX_LENGTH=${MAX_LENGTH:-256}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-128}; THREADS=${THREADS:-2}; TINY=${TINY:-0}
SHAPES=${SHAPES:-qwen2.5-0.5b llama-3.2-1b}; RUNS=${RUNS:-trl ours}
WORK=${WORK:-output/llama_compare$([ "$TINY" = 1 ] && echo -tiny || true)}; PYTHON=${PYTHON:-.venv/bin/python}
DEADLINE=${DEADLINE:-0}
BIN=${CARGO_TARGET_DIR:-target}/release/examples/rpo_gemma
ETA=1.0; BETA=0.05

[ -x /usr/bin/time ] || { echo "llama_compare: /usr/bin/time missing (apt-get install time)" >&2; exit 1; }
"$PYTHON" -m pip install --quiet --disable-pip-version-check trl==1.16.0 transformers==5.24.0 accelerate datasets
cargo build --release --features hf-tokenizers --example rpo_gemma >&2
mkdir -p "$WORK"
[ -f "$WORK/prefs.jsonl" ] || "$PYTHON" benches/trl_compare.py data --out "$WORK/prefs.jsonl" --pairs "$PAIRS"
for shape in $SHAPES; do
  [ -f "$WORK/$shape/config.json" ] || "$PYTHON" benches/llama_compare.py make --shape "$shape" --out "$WORK/$shape" \
    --data "$WORK/prefs.jsonl" $([ "$TINY" = 1 ] && echo --tiny || true)
done

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; load before: $(uptime | sed 's/.*load average: //')" >&2
for shape in $SHAPES; do
  results=()
  for run in $RUNS; do
    name=$shape-$run; out="$WORK/$name.json"; timing="$WORK/$name.time"
    case $run in trl) impl="TRL DPOTrainer";; trl-bf16) impl="TRL DPOTrainer bf16";; *) impl="rpo_gemma $run";; esac
    now=$(date +%s)
    if [ "$DEADLINE" != 0 ] && [ "$now" -ge "$DEADLINE" ]; then
      "$PYTHON" benches/trl_compare.py failed --impl "$impl" --reason "not run (time window over)" --out "$out"
      results+=("$out"); continue
    fi
    limit=$([ "$DEADLINE" != 0 ] && echo $((DEADLINE - now)) || echo 86400)
    if [ "$run" = trl ] || [ "$run" = trl-bf16 ]; then
      cmd=(env OMP_NUM_THREADS="$THREADS" "$PYTHON" benches/trl_compare.py trl --model "$WORK/$shape"
           --data "$WORK/prefs.jsonl" --out "$out" --steps "$STEPS" --batch "$BATCH" --max-length "$MAX_LENGTH"
           --max-prompt-length "$MAX_PROMPT_LENGTH" --threads "$THREADS" --beta "$BETA" --sft-weight 0.05
           $([ "$run" = trl-bf16 ] && echo --bf16 || true))
    else
      rm -rf "${WORK:?}/$name"
      cmd=("$BIN" --model-dir "$WORK/$shape" --data "$WORK/prefs.jsonl" --rpo-only --sft-epochs 0 --lr 1e-5
           --max-steps "$STEPS" --batch-size "$BATCH" --eval-batch "$BATCH" --max-length "$MAX_LENGTH"
           --max-prompt-length "$MAX_PROMPT_LENGTH" --threads "$THREADS" --beta "$BETA" --eta "$ETA"
           --evals-per-epoch 1 --precision "$([ "$run" = ours-bf16 ] && echo bf16 || echo f32)" --output "$WORK/$name")
    fi
    echo "== $name: ${cmd[*]}" >&2
    status=0
    timeout --signal=KILL "$limit" /usr/bin/time -v "${cmd[@]}" >"$WORK/$name.log" 2>"$timing" || status=$?
    if [ "$status" != 0 ]; then
      tail -5 "$timing" >&2
      reason="failed (exit $status)"
      grep -q "signal 9" "$timing" && reason="killed (signal 9: out of memory)"
      [ "$status" = 137 ] && [ "$DEADLINE" != 0 ] && [ "$(date +%s)" -ge "$DEADLINE" ] && reason="stopped at the end of the time window"
      grep -qi "out of memory\|MemoryError\|std::bad_alloc" "$WORK/$name.log" "$timing" && reason="out of memory"
      peak=$(awk '/Maximum resident/{print $NF}' "$timing" || true)
      "$PYTHON" benches/trl_compare.py failed --impl "$impl" --reason "$reason${peak:+, peak RSS $((peak / 1000000)) GB}" --out "$out"
      results+=("$out"); continue
    fi
    if [ "$run" != trl ] && [ "$run" != trl-bf16 ]; then
      "$PYTHON" benches/trl_compare.py ours --log "$WORK/$name/train_log.jsonl" --impl "$impl" --out "$out" >/dev/null
    fi
    "$PYTHON" benches/trl_compare.py rss "$out" "$(awk '/Maximum resident/{print $NF}' "$timing")"
    results+=("$out")
  done
  echo "### $shape$([ "$TINY" = 1 ] && echo " (tiny smoke test)" || true)"
  "$PYTHON" benches/trl_compare.py table "${results[@]}"
done
echo "load after: $(uptime | sed 's/.*load average: //')" >&2
