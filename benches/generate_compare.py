#!/usr/bin/env python3
"""Greedy generation speed, tch-rpo vs transformers, on Gemma 3 270M from its GGUF (run by
benches/generate_compare.sh, which builds the Rust side). Both sides: f32 weights dequantized from the same
file, CPU, the same threads, the same prompt ids (the Rust tokenizer's, with BOS), no stop token (every
prompt gets exactly --new-tokens tokens). Timed: the generate call only (not loading); median of
--repeats runs. Modes: each prompt alone (batch 1, one after another) and all prompts as one left-padded
batch."""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import os

import torch

PROMPTS = [
    "The capital of France is",
    "<start_of_turn>user\nName three colors and say why you like them.<end_of_turn>\n<start_of_turn>model\n",
    "Once upon a time, in a small village at the edge of a great forest,",
    " ".join(f"Step {i}: add {i * 3} grams of flour and stir for {i + 1} minutes." for i in range(12)),
]


def ours(binary, gguf, threads, new_tokens, one_by_one, prompts_file):
    cmd = [binary, "--gguf", gguf, "--prompts-file", prompts_file, "--max-new-tokens", str(new_tokens),
           "--ignore-eos", "--threads", str(threads), "--json"]
    if one_by_one:
        cmd.append("--one-by-one")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def theirs(model, prompt_ids, new_tokens, one_by_one):
    def run(batch):
        width = max(len(p) for p in batch)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=0)
        return out[:, width:].tolist()

    start = time.perf_counter()
    with torch.no_grad():
        if one_by_one:
            new_ids = [run([p])[0] for p in prompt_ids]
        else:
            new_ids = run(prompt_ids)
    return {"new_ids": new_ids, "seconds": time.perf_counter() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--ours", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(PROMPTS, f)
        prompts_file = f.name
    directory, name = os.path.dirname(args.gguf), os.path.basename(args.gguf)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    model.generation_config.eos_token_id = None  # no stop token: the same number of tokens on both sides

    rows = []
    for one_by_one in (True, False):
        mode = "batch 1 (each prompt alone)" if one_by_one else f"batch {len(PROMPTS)} (left-padded)"
        our_runs = [ours(args.ours, args.gguf, args.threads, args.new_tokens, one_by_one, prompts_file)
                    for _ in range(args.repeats)]
        prompt_ids = our_runs[0]["prompt_ids"]
        their_runs = [theirs(model, prompt_ids, args.new_tokens, one_by_one) for _ in range(args.repeats)]
        tokens = len(PROMPTS) * args.new_tokens
        our_s = statistics.median(r["seconds"] for r in our_runs)
        their_s = statistics.median(r["seconds"] for r in their_runs)
        same = our_runs[0]["new_ids"] == their_runs[0]["new_ids"]
        differing = sum(a != b for a, b in zip(our_runs[0]["new_ids"], their_runs[0]["new_ids"]))
        rows.append((mode, tokens, our_s, their_s, same, differing))
        print(f"{mode}: ours {tokens / our_s:.1f} tokens/s, transformers {tokens / their_s:.1f} tokens/s",
              file=sys.stderr)

    print(f"\ntransformers {transformers.__version__}, torch {torch.__version__}, {args.threads} threads, "
          f"{len(PROMPTS)} prompts × {args.new_tokens} new tokens, median of {args.repeats}\n")
    print("| mode | tokens | tch-rpo s | tch-rpo tokens/s | transformers s | transformers tokens/s | ratio (ours / theirs, tokens/s) | same tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, tokens, our_s, their_s, same, differing in rows:
        same_text = "yes" if same else f"no ({differing} of {len(PROMPTS)} rows differ)"
        print(f"| {mode} | {tokens} | {our_s:.2f} | {tokens / our_s:.1f} | {their_s:.2f} | {tokens / their_s:.1f} "
              f"| {their_s / our_s:.2f} | {same_text} |")
    os.unlink(prompts_file)


if __name__ == "__main__":
    main()
