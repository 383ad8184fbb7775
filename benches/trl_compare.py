#!/usr/bin/env python3
"""Whole RPO training steps of Gemma 3 270M: TRL's DPOTrainer side by side with tch-rpo's `rpo_gemma`.

Helper of benches/trl_compare.sh (which runs each measurement in its own process under /usr/bin/time -v).
Subcommands:

  data   --out FILE [--pairs 32] [--prompt-words 48] [--response-words 150]
         Writes a deterministic plain-text preference set ({"prompt","chosen","rejected"} per line) made
         here from word tables (no external data): rows of about 256 Gemma tokens, prompts of about 64.
  export --gguf FILE --out DIR
         Loads the GGUF with transformers, rebuilds the model from its config in f32, loads the dequantized
         weights and saves an f32 transformers folder (+ tokenizer): transformers refuses to fine-tune or to
         save_pretrained a GGUF-loaded model, so TRL trains this copy of the same weights.
  trl    --model DIR --data FILE --out JSON [--steps 6] [--batch 4] [--max-length 256]
         [--max-prompt-length 128] [--threads 2] [--beta 0.05] [--sft-weight 0.05] [--lr 1e-5]
         [--gradient-checkpointing] [--bf16]
         [--lora-r R --lora-alpha A --lora-dropout P --lora-targets q_proj,k_proj,...]
         Trains with DPOTrainer, loss_type=["sigmoid","sft"], precompute_ref_log_probs=True, f32 on CPU
         (--bf16: TRL's bf16=True, i.e. f32 weights under torch.autocast(bfloat16));
         --lora-r: peft LoRA (peft_config=peft.LoraConfig(...)), the reference = the model with its adapters
         disabled, computed every step (precompute_ref_log_probs=False; see cmd_trl);
         writes {"impl", "step_seconds": [...], "tokens_per_step": ...} to JSON.
  ours   --log train_log.jsonl --impl NAME --out JSON [--gc] [--precision f32|bf16] [--lora]
         Step times (and FLOPs) of an rpo_gemma run, read from the trainer's JSON Lines log.
  phases --log train_log.jsonl
         The phase table of an rpo_gemma --phase-timing run: median seconds per phase (without the first
         step) and its share of the step.
  rss    JSON KB
         Adds the peak RSS measured by /usr/bin/time -v to a result file.
  failed --impl NAME --reason TEXT --out JSON
         Records a run that did not finish (e.g. out of memory) so that the table shows it.
  table  [--peak-f32 GFLOPS] [--peak-bf16 GFLOPS] JSON...
         Prints the comparison table (median s/step, peak RSS, tokens/s, ratios to TRL's f32 run, and for
         our runs the MFU against the peak of their precision). LoRA results get a table of their own, whose
         ratios are to TRL + peft LoRA's f32 run (trl-lora), not to TRL's full fine-tune.

Only benches/trl_compare.sh installs TRL / transformers (into the project's venv, when it runs).
"""
import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import time

SUBJECTS = ["the river", "a small village", "the old library", "our garden", "the harbour", "a mountain road",
            "the night market", "an orchard", "the train station", "a quiet valley", "the workshop", "the bakery"]
VERBS = ["changes", "grows", "opens", "sleeps", "moves", "shines", "waits", "listens", "turns", "settles"]
ADVERBS = ["slowly", "quietly", "every morning", "after the rain", "in early spring", "at dusk", "without a sound",
           "before noon", "all winter", "when the wind drops"]
DETAILS = ["people gather to talk", "the light falls on the stones", "birds return from the south",
           "children count the boats", "the bells ring twice", "merchants set out their goods",
           "the fields turn golden", "lanterns are lit one by one", "the water runs clear", "old friends meet"]
WRONG = ["nothing ever happens there", "the sea is made of sand", "every door is painted on the wall",
         "time runs backwards on Sundays", "the moon is kept in a box", "stones float above the road"]


def sentence(rng, details):
    return (f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(ADVERBS)}, "
            f"and {rng.choice(details)}.")


def paragraph(rng, words, details):
    out = []
    while sum(len(s.split()) for s in out) < words:
        out.append(sentence(rng, details))
    return " ".join(out)


def cmd_data(args):
    rng = random.Random(1234)
    with open(args.out, "w") as f:
        for i in range(args.pairs):
            topic = rng.choice(SUBJECTS)
            prompt = (f"Question {i + 1}: describe {topic} in a calm, factual way. "
                      + paragraph(rng, args.prompt_words - 10, DETAILS) + " Answer:")
            chosen = " " + paragraph(rng, args.response_words, DETAILS)
            rejected = " " + paragraph(rng, args.response_words, DETAILS + WRONG)
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    print(f"wrote {args.pairs} pairs to {args.out}", file=sys.stderr)


def cmd_export(args):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.split(os.path.abspath(args.gguf))
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied to the embedding
    if missing or unexpected:
        sys.exit(f"export: state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.save_pretrained(args.out)
    AutoTokenizer.from_pretrained(directory, gguf_file=name).save_pretrained(args.out)
    print(f"saved f32 transformers folder {args.out}", file=sys.stderr)


class StepTimer:
    """A transformers TrainerCallback (built lazily) that records the wall time of every optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, *_args, **_kwargs):
                timer.start = time.perf_counter()

            def on_step_end(self, *_args, **_kwargs):
                timer.seconds.append(time.perf_counter() - timer.start)

        self.start = None
        self.seconds = []
        self.callback = Callback()


def cmd_trl(args):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    records = [json.loads(line) for line in open(args.data)]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    peft_config = None
    if args.lora_r is not None:
        import peft

        peft_config = peft.LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                      target_modules=args.lora_targets.split(","), task_type="CAUSAL_LM")
    # The reference. Full fine-tune: precomputed once before training (the `trl` row; rpo_gemma scores its
    # reference cache once too, before its steps). LoRA: issue 20 asks for the reference "by disabled adapters
    # on both sides", and rpo_gemma's ReferenceSource::AdaptersOff runs the base with the adapters off under
    # no_grad in every step; TRL 1.16 does the same with a peft_config, ref_model=None and
    # precompute_ref_log_probs=False (DPOTrainer._compute_loss: `use_adapter(model, None)`, i.e.
    # `model.disable_adapter()`, under torch.no_grad). Precomputing would move that forward out of TRL's
    # timed steps and make the step times incomparable, so the LoRA run does not precompute.
    precompute = peft_config is None
    wanted = dict(
        output_dir=os.path.join(os.path.dirname(os.path.abspath(args.out)), "trl_output"),
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_ratio=0.1, beta=args.beta,
        loss_type=["sigmoid", "sft"], loss_weights=[1.0, args.sft_weight], max_length=args.max_length,
        max_prompt_length=args.max_prompt_length, truncation_mode="keep_end",
        precompute_ref_log_probs=precompute, precompute_ref_batch_size=args.batch, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, bf16=args.bf16, fp16=False,
        gradient_checkpointing=args.gradient_checkpointing, dataloader_num_workers=0, seed=42,
        disable_dropout=True, remove_unused_columns=False,
    )
    fields = {f.name for f in dataclasses.fields(DPOConfig)}
    dropped = sorted(k for k in wanted if k not in fields)
    config = DPOConfig(**{k: v for k, v in wanted.items() if k in fields})
    timer = StepTimer()
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(records),
                         processing_class=tokenizer, callbacks=[timer.callback],
                         **({"peft_config": peft_config} if peft_config is not None else {}))
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    tokens = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]
    # TRL logs the cumulative number of input tokens seen; per step: its increments.
    per_step = [b - a for a, b in zip([0] + tokens[:-1], tokens)] if tokens else []
    lora = f" + peft LoRA r{args.lora_r}" if peft_config is not None else ""
    result = {"impl": "TRL DPOTrainer" + lora + (" bf16" if args.bf16 else "")
              + (" +gc" if args.gradient_checkpointing else ""),
              "gc": args.gradient_checkpointing, "bf16": args.bf16, "lora": peft_config is not None,
              "lr": args.lr, "precompute_ref_log_probs": precompute, "trainable_parameters": trainable,
              "peft": __import__("peft").__version__ if peft_config is not None else None,
              "step_seconds": timer.seconds,
              "tokens_per_step": statistics.median(per_step) if per_step else None,
              "dropped_config_fields": dropped, "trl": __import__("trl").__version__,
              "transformers": __import__("transformers").__version__,
              "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e]}
    json.dump(result, open(args.out, "w"))
    print(json.dumps(result))


def cmd_ours(args):
    """Step times of an `rpo_gemma` run from the trainer's JSON Lines log (training lines carry an lr)."""
    steps = [json.loads(line) for line in open(args.log)]
    steps = [s for s in steps if s.get("lr") is not None and s.get("tokens_per_second")]
    seconds = [s["tokens"] / s["tokens_per_second"] for s in steps]
    tokens = statistics.median(s["tokens"] for s in steps) if steps else None
    flops = [s["flops"] for s in steps if s.get("flops")]
    result = {"impl": args.impl, "gc": args.gc, "step_seconds": seconds, "tokens_per_step": tokens,
              "precision": args.precision, "flops_per_step": statistics.median(flops) if flops else None,
              "lora": args.lora}
    json.dump(result, open(args.out, "w"))
    print(json.dumps(result))


def cmd_failed(args):
    json.dump({"impl": args.impl, "failed": args.reason, "step_seconds": []}, open(args.out, "w"))


PHASES = ["data", "reference", "body_forward", "attention", "head", "loss_backward", "body_backward",
          "host_sync", "optimizer", "other", "total"]


def cmd_phases(args):
    """Median seconds per phase of an rpo_gemma --phase-timing run (the first step warms up)."""
    steps = [json.loads(line) for line in open(args.log)]
    steps = [s["phases"] for s in steps if s.get("lr") is not None and s.get("phases")]
    steps = steps[1:] or steps
    total = statistics.median(s["total"] for s in steps)
    print(f"| phase | median s/step ({len(steps)} steps) | share of the step |")
    print("|---|---|---|")
    for name in PHASES:
        med = statistics.median(s[name] for s in steps)
        note = " (inside body forward / backward)" if name == "attention" else ""
        print(f"| {name}{note} | {med:.2f} | {100 * med / total:.1f}% |")


def cmd_rss(args):
    result = json.load(open(args.json))
    result["max_rss_kb"] = args.kb
    json.dump(result, open(args.json, "w"))


def median_step(r):
    seconds = r["step_seconds"][1:] or r["step_seconds"]  # the first step warms up
    return statistics.median(seconds) if seconds else float("nan")


def cmd_table(args):
    results = [json.load(open(path)) for path in args.results]
    # Full fine-tunes against TRL's full f32 run; LoRA runs (issue 20) in a table of their own, against TRL + peft
    # LoRA's f32 run (same checkpointing column rule).
    families = [(False, "TRL"), (True, "TRL+peft")]
    first = True
    for lora, label in families:
        rows = [r for r in results if bool(r.get("lora")) == lora]
        if not rows:
            continue
        if not first:
            print()
        first = False
        print_table(rows, label, args)


def print_table(rows, label, args):
    trl = {r.get("gc", False): r for r in rows if r["impl"].startswith("TRL") and not r.get("bf16") and not r.get("failed")}
    peaks = {"f32": args.peak_f32, "bf16": args.peak_bf16}
    print(f"| run | steps | median s/step | peak RSS (GB) | tokens/s | time vs {label} | RSS vs {label} "
          f"| RSS vs {label} +gc | MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("failed"):
            print(f"| {r['impl']} | – | {r['failed']} | – | – | – | – | – | – |")
            continue
        med = median_step(r)
        rss = r["max_rss_kb"] / 1e6 if r.get("max_rss_kb") else float("nan")
        tps = f"{r['tokens_per_step'] / med:.0f}" if r.get("tokens_per_step") else "–"
        cells = []
        for base, what in ((trl.get(False), "time"), (trl.get(False), "rss"), (trl.get(True), "rss")):
            if base is None or not base.get("max_rss_kb"):
                cells.append("–")
            elif what == "time":
                cells.append(f"{med / median_step(base):.2f}×")
            else:
                cells.append(f"{rss / (base['max_rss_kb'] / 1e6):.2f}×")
        peak = peaks.get(r.get("precision") or "")
        mfu = f"{r['flops_per_step'] / med / (peak * 1e9):.2f}" if peak and r.get("flops_per_step") else "–"
        print(f"| {r['impl']} | {len(r['step_seconds'])} | {med:.1f} | {rss:.2f} | {tps} | " + " | ".join(cells)
              + f" | {mfu} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data")
    p.add_argument("--out", required=True)
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--prompt-words", type=int, default=48)
    p.add_argument("--response-words", type=int, default=150)
    p = sub.add_parser("export")
    p.add_argument("--gguf", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("trl")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--max-prompt-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--sft-weight", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--lora-r", type=int, default=None, help="peft LoRA rank (default: full fine-tune)")
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    p = sub.add_parser("ours")
    p.add_argument("--log", required=True)
    p.add_argument("--impl", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--gc", action="store_true")
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    p.add_argument("--lora", action="store_true", help="a LoRA run (its own table, ratios to trl-lora)")
    p = sub.add_parser("phases")
    p.add_argument("--log", required=True)
    p = sub.add_parser("rss")
    p.add_argument("json")
    p.add_argument("kb", type=int)
    p = sub.add_parser("failed")
    p.add_argument("--impl", required=True)
    p.add_argument("--reason", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("table")
    p.add_argument("--peak-f32", type=float, default=None)
    p.add_argument("--peak-bf16", type=float, default=None)
    p.add_argument("results", nargs="+")
    args = parser.parse_args()
    {"data": cmd_data, "export": cmd_export, "trl": cmd_trl, "ours": cmd_ours, "rss": cmd_rss,
     "failed": cmd_failed, "phases": cmd_phases, "table": cmd_table}[args.command](args)


if __name__ == "__main__":
    main()
