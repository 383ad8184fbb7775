#!/usr/bin/env python3
"""The Python side of tests/tokenizer_convert.rs (the byte-level BPE tokenizer converted between a Hugging Face
folder and GGUF metadata):

    .venv/bin/python scripts/bpe_convert_check.py reference DIR PRE VOCAB_SIZE OUT.gguf
        The `tokenizer.*` keys llama.cpp's convert_hf_to_gguf.py writes for the byte-level BPE tokenizer of
        the folder DIR (`_set_vocab_gpt2`): the tokens and token types as its `get_vocab_base` makes them
        (transformers' AutoTokenizer on DIR), then gguf-py's own `SpecialVocab(DIR, load_merges=True)` (merges,
        special ids, add_bos / add_eos, chat template). The converter names the pre-tokenizer by hashing a
        tokenization, which knows only published vocabularies, so PRE is given. Written to a tokenizer-only
        GGUF.

    .venv/bin/python scripts/bpe_convert_check.py hf DIR REQUEST.json OUT.json
        transformers' AutoTokenizer.from_pretrained(DIR) on REQUEST's "texts" (input_ids without special
        tokens, and with them: BOS when the folder adds one) and "conversations" (apply_chat_template(...,
        tokenize=False) with and without the generation prompt). Run with TZ=UTC (strftime_now).
"""
import json
import sys

import gguf
from transformers import AutoTokenizer


def looks_special(token):
    """The converter's `does_token_look_special`."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def reference(folder, pre, vocab_size, out):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    by_id = {i: t for t, i in tokenizer.vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    assert max(by_id) < vocab_size
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = by_id[i]
        if token in added:
            if not decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if decoder[i].special or looks_special(token):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    writer = gguf.GGUFWriter(out, arch="llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True).add_to_gguf(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def hf(folder, request_path, out):
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    result = {
        "class": type(tokenizer).__name__,
        "ids": [tokenizer(t, add_special_tokens=False)["input_ids"] for t in request["texts"]],
        "ids_special": [tokenizer(t)["input_ids"] for t in request["texts"]],
        "renders": [],
    }
    for conversation in request["conversations"]:
        messages = [{"role": r, "content": c} for r, c in conversation]
        for generation in (False, True):
            result["renders"].append(
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
            )
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False)


if __name__ == "__main__":
    if sys.argv[1] == "reference":
        reference(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif sys.argv[1] == "hf":
        hf(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(f"unknown command {sys.argv[1]!r}")
