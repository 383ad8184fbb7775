#!/usr/bin/env bash
# Whole RPO training steps of Gemma 3 270M (the PyPI GGUF), TRL's DPOTrainer vs tch-rpo's `rpo_gemma`, with
# identical data, batch, lengths, threads and steps; each run in its own process under /usr/bin/time -v.
# Prints one markdown table (median s/step without the first step, whole-process peak RSS, tokens/s, ratios).
#
#   benches/trl_compare.sh                      # all runs: TRL, ours (default = fused, logits path), each ± checkpointing
#   RUNS="trl ours" GC="0" benches/trl_compare.sh
#
# Environment: STEPS (6) BATCH (4 pairs) MAX_LENGTH (256) MAX_PROMPT_LENGTH (128) THREADS (2) PAIRS (32)
#   RUNS ("trl ours ours-logits"; also "ours-fused": --loss-path fused, which `ours` picks by default;
#     "ours-bf16": --precision bf16; "trl-bf16": TRL with bf16=True; "ours-phases": `ours` with --phase-timing,
#     whose phase table is printed after the main table; every `ours*` run but ours-bf16 is --precision f32;
#     LoRA (issue 20): "trl-lora": TRL + peft LoRA, the reference = the adapters disabled, computed every step;
#     "ours-lora": rpo_gemma --lora-r ... on an f32 base (the reference = adapters off, every step);
#     "ours-lora-keep": the same with --base-dtype keep (the GGUF's quantized blocks; needs an rpo_gemma that
#     has the flag). The LoRA runs get their own table, with ratios against trl-lora)
#   LORA_R (16) LORA_ALPHA (32) LORA_TARGETS (the seven projections, comma separated) LORA_LR (1e-4: the peak
#     learning rate of every LoRA run, ours and TRL's; the full runs keep 1e-5, both sides' default)
#   GC ("0 1": without / with per-layer gradient checkpointing)
#   PHASE_TIMING (0; 1: every `ours*` run with --phase-timing, each one's phase table printed)
#   PROMPT_WORDS (48) RESPONSE_WORDS (150): the generated data's lengths (≈ 1.25 Gemma tokens per word), used
#     when $WORK/prefs.jsonl does not exist yet (another shape: another WORK)
#   PEAK_F32, PEAK_BF16 (GFLOP/s, e.g. from examples/matmul_peak.rs): the table's MFU column
#   SKIP (names of runs to leave out, e.g. "ours-logits-gc"; a run's name is its RUNS entry, plus "-gc" with checkpointing)
#   WORK (output/trl_compare: data set, the f32 transformers folder, logs)  PYTHON (.venv/bin/python)
#   GGUF (default: the file scripts/get_gemma3_gguf.sh installs)
# Our runs evaluate only at the start and the end (--evals-per-epoch 1): TRL does not evaluate, and the table
# times training steps alone.
# It installs TRL 1.16.0, transformers 5.24.0, gguf, accelerate and datasets into the project's venv when it
# runs (bench-only packages: neither the set-up nor the tests use them), and builds the example.
# Needs /usr/bin/time (Debian package `time`). Run it on a quiet machine (check `uptime`).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-6}; BATCH=${BATCH:-4}; MAX_LENGTH=${MAX_LENGTH:-256}; MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-128}
THREADS=${THREADS:-2}; PAIRS=${PAIRS:-32}; RUNS=${RUNS:-trl ours ours-logits}; GC=${GC:-0 1}
WORK=${WORK:-output/trl_compare}; PYTHON=${PYTHON:-.venv/bin/python}
BIN=${CARGO_TARGET_DIR:-target}/release/examples/rpo_gemma
ETA=1.0; BETA=0.05   # RPO's SFT coefficient η·β = 0.05 on the summed NLL; TRL's "sft" weight 0.05 (token mean)
LORA_R=${LORA_R:-16}; LORA_ALPHA=${LORA_ALPHA:-32}; LORA_LR=${LORA_LR:-1e-4}
LORA_TARGETS=${LORA_TARGETS:-q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj}
lora_args=(--lora-r "$LORA_R" --lora-alpha "$LORA_ALPHA" --lora-dropout 0 --lora-targets "$LORA_TARGETS" --lr "$LORA_LR")

[ -x /usr/bin/time ] || { echo "trl_compare: /usr/bin/time missing (apt-get install time)" >&2; exit 1; }
"$PYTHON" -m pip install --quiet --disable-pip-version-check trl==1.16.0 transformers==5.24.0 peft==0.21.2 gguf \
  accelerate datasets
GGUF=${GGUF:-$(bash scripts/get_gemma3_gguf.sh)}
cargo build --release --example rpo_gemma >&2
case " $RUNS " in *" ours-lora-keep "*)
  [[ $("$BIN" --help) == *--base-dtype* ]] || {   # (not `| grep -q`: pipefail and SIGPIPE)
    echo "trl_compare: ours-lora-keep needs rpo_gemma --base-dtype keep, which $BIN lacks" >&2; exit 1; } ;;
esac
mkdir -p "$WORK"
[ -f "$WORK/prefs.jsonl" ] || "$PYTHON" benches/trl_compare.py data --out "$WORK/prefs.jsonl" --pairs "$PAIRS" \
  --prompt-words "${PROMPT_WORDS:-48}" --response-words "${RESPONSE_WORDS:-150}"
[ -f "$WORK/gemma3-270m-f32/config.json" ] || "$PYTHON" benches/trl_compare.py export --gguf "$GGUF" --out "$WORK/gemma3-270m-f32"

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; load before: $(uptime | sed 's/.*load average: //')" >&2
results=(); phase_logs=()
for gc in $GC; do
  for run in $RUNS; do
    name=$run$([ "$gc" = 1 ] && echo "-gc" || true)
    case " ${SKIP:-} " in *" $name "*) echo "== $name: skipped (SKIP)" >&2; continue ;; esac
    out="$WORK/$name.json"; timing="$WORK/$name.time"
    lora=0; case $run in *-lora|*-lora-*) lora=1 ;; esac
    if [ "$run" = trl ] || [ "$run" = trl-bf16 ] || [ "$run" = trl-lora ]; then
      cmd=(env OMP_NUM_THREADS="$THREADS" "$PYTHON" benches/trl_compare.py trl --model "$WORK/gemma3-270m-f32"
           --data "$WORK/prefs.jsonl" --out "$out" --steps "$STEPS" --batch "$BATCH" --max-length "$MAX_LENGTH"
           --max-prompt-length "$MAX_PROMPT_LENGTH" --threads "$THREADS" --beta "$BETA" --sft-weight 0.05)
      [ "$gc" = 1 ] && cmd+=(--gradient-checkpointing)
      [ "$run" = trl-bf16 ] && cmd+=(--bf16)
      [ "$lora" = 1 ] && cmd+=("${lora_args[@]}")
    else
      rm -rf "${WORK:?}/$name"
      cmd=("$BIN" --gguf "$GGUF" --data "$WORK/prefs.jsonl" --rpo-only --max-steps "$STEPS" --batch-size "$BATCH"
           --max-length "$MAX_LENGTH" --max-prompt-length "$MAX_PROMPT_LENGTH" --threads "$THREADS"
           --beta "$BETA" --eta "$ETA" --evals-per-epoch 1 --output "$WORK/$name")
      [ "$run" = ours-logits ] && cmd+=(--loss-path logits)
      [ "$run" = ours-fused ] && cmd+=(--loss-path fused)
      precision=f32; [ "$run" = ours-bf16 ] && precision=bf16
      cmd+=(--precision "$precision")
      phases=0; { [ "$run" = ours-phases ] || [ "${PHASE_TIMING:-0}" = 1 ]; } && phases=1
      [ "$phases" = 1 ] && cmd+=(--phase-timing)
      [ "$gc" = 1 ] && cmd+=(--gradient-checkpointing)
      # --lora-r: the trainer's reference is ReferenceSource::AdaptersOff (rpo_gemma has no other with LoRA);
      # the base is held in --precision's dtype (f32), or in the GGUF's blocks with --base-dtype keep.
      [ "$lora" = 1 ] && cmd+=("${lora_args[@]}")
      [ "$run" = ours-lora-keep ] && cmd+=(--base-dtype keep)
    fi
    echo "== $name: ${cmd[*]}" >&2
    /usr/bin/time -v "${cmd[@]}" >"$WORK/$name.log" 2>"$timing" || { tail -20 "$timing" >&2; exit 1; }
    case $run in trl*) ;; *)
      "$PYTHON" benches/trl_compare.py ours --log "$WORK/$name/train_log.jsonl" --impl "rpo_gemma $run$([ "$gc" = 1 ] && echo " +gc" || true)" \
        --out "$out" --precision "$precision" $([ "$gc" = 1 ] && echo --gc) $([ "$lora" = 1 ] && echo --lora) >/dev/null
      [ "$phases" = 1 ] && phase_logs+=("$WORK/$name/train_log.jsonl") ;;
    esac
    "$PYTHON" benches/trl_compare.py rss "$out" "$(awk '/Maximum resident/{print $NF}' "$timing")"
    results+=("$out")
  done
done
echo "load after: $(uptime | sed 's/.*load average: //')" >&2
"$PYTHON" benches/trl_compare.py table ${PEAK_F32:+--peak-f32 "$PEAK_F32"} ${PEAK_BF16:+--peak-bf16 "$PEAK_BF16"} "${results[@]}"
for log in ${phase_logs[@]+"${phase_logs[@]}"}; do
  echo; echo "phases of $log:"; "$PYTHON" benches/trl_compare.py phases --log "$log"
done
