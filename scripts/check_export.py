#!/usr/bin/env python3
"""Independent readers for what tch-rpo writes: the `gguf` Python package for GGUF files, Hugging Face
`transformers` for the saved model folder and GGUF models. The Rust tests (tests/export_*.rs) run this
through the project's environment (`.venv/bin/python`, packages installed by `scripts/setup.sh`), then
assert on the JSON it writes. It prints no verdict of its own except for errors: a file that cannot be
read or a model that transformers cannot load ends the script with a non-zero exit status and the
exception, so the calling test fails.

Modes:

    check_export.py gguf-dump FILE OUT.json [--no-values]
        Reads FILE with `gguf.GGUFReader`: every metadata key with its value types and value, every tensor
        with its GGUF dims (fastest first), type, absolute data offset and dequantized values
        (`gguf.quants.dequantize`, as the bits of each f32). For each
        tensor named `BASE.f16` / `BASE.bf16` / `BASE.q8_0` whose twin `BASE.f32` is in the file, whether
        `gguf.quants.quantize(twin, type)` gives exactly the bytes stored (the reference encoders of
        gguf-py, which follow ggml's). With --no-values: no tensor data, and metadata arrays longer than 16
        as {"len": n, "head": the first 16}.

    check_export.py models --inputs IN.safetensors [--hf DIR] [--gguf FILE ...] [--texts TEXTS.json]
                           [--gguf-tokenizers] OUT_DIR
        IN.safetensors holds `input_ids` and `attention_mask` [N, T] (int64). Each model (the folder DIR,
        each GGUF FILE via `from_pretrained(folder, gguf_file=name)`) is loaded by `AutoModelForCausalLM`
        in f32 with eager attention on the CPU and run on them; its logits [N, T, V] go to
        OUT_DIR/<hf | file name>.safetensors. OUT_DIR/result.json has, per model, its class, its config
        as transformers read it and the load time; with --texts (a JSON list of strings) also the ids of
        each text from `AutoTokenizer` (with special tokens) and their decoding, for the folder (and the
        GGUF files with --gguf-tokenizers: slow, transformers rebuilds the merges).
"""
import argparse
import json
import os
import sys
import time

import numpy as np


def json_value(value):
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return repr(value)
    if isinstance(value, list):
        return [json_value(v) for v in value]
    return value


def gguf_dump(path, out, with_values):
    import gguf

    reader = gguf.GGUFReader(path)
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = json_value(field.contents())
        if not with_values and isinstance(value, list) and len(value) > 16:
            value = {"len": len(value), "head": value[:16]}
        metadata[key] = {"types": [int(t) for t in field.types], "value": value}
    tensors = {}
    raw = {}
    for t in reader.tensors:
        tensors[t.name] = {
            "dims": [int(d) for d in t.shape],
            "type": t.tensor_type.name,
            "offset": int(t.data_offset),
        }
        if with_values:
            values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
            raw[t.name] = (t.tensor_type, np.asarray(t.data))
            tensors[t.name]["bits"] = values.view(np.uint32).tolist()
    twins = {}
    for name, (ty, data) in raw.items():
        base, _, suffix = name.rpartition(".")
        twin = raw.get(f"{base}.f32")
        if suffix in ("f16", "bf16", "q8_0") and twin is not None:
            source = np.asarray(twin[1], dtype=np.float32)
            ours = data.view(np.uint8).reshape(-1)
            theirs = gguf.quants.quantize(source, ty).view(np.uint8).reshape(-1)
            twins[name] = bool(ours.shape == theirs.shape and np.array_equal(ours, theirs))
    result = {
        "version": int(reader.fields["GGUF.version"].contents()),
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "metadata": metadata,
        "tensors": tensors,
        "twins_equal": twins,
    }
    with open(out, "w") as f:
        json.dump(result, f)


def models(args):
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    inputs = load_file(args.inputs)
    texts = None
    if args.texts:
        with open(args.texts) as f:
            texts = json.load(f)
    sources = []
    if args.hf:
        sources.append(("hf", args.hf, {}))
    for path in args.gguf or []:
        folder, name = os.path.split(os.path.abspath(path))
        sources.append((name, folder, {"gguf_file": name}))
    os.makedirs(args.out, exist_ok=True)
    result = {}
    for label, folder, extra in sources:
        start = time.time()
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager", **extra
        )
        model.eval()
        entry = {
            "class": type(model).__name__,
            "config": {k: v for k, v in model.config.to_dict().items() if isinstance(v, (int, float, str, bool, list, dict)) or v is None},
            "load_seconds": round(time.time() - start, 1),
        }
        with torch.no_grad():
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        save_file({"logits": logits.float().contiguous()}, os.path.join(args.out, f"{label}.safetensors"))
        del model
        if texts is not None and (not extra or args.gguf_tokenizers):
            start = time.time()
            tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
            entry["tokenizer_class"] = type(tokenizer).__name__
            entry["tokenizer_seconds"] = round(time.time() - start, 1)
            entry["ids"] = [tokenizer(text)["input_ids"] for text in texts]
            entry["decoded"] = [tokenizer.decode(ids, skip_special_tokens=True) for ids in entry["ids"]]
        result[label] = entry
        print(f"{label}: {entry['class']}, loaded in {entry['load_seconds']} s", file=sys.stderr)
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    dump = sub.add_parser("gguf-dump")
    dump.add_argument("file")
    dump.add_argument("out")
    dump.add_argument("--no-values", action="store_true")
    check = sub.add_parser("models")
    check.add_argument("--inputs", required=True)
    check.add_argument("--hf")
    check.add_argument("--gguf", action="append")
    check.add_argument("--texts")
    check.add_argument("--gguf-tokenizers", action="store_true")
    check.add_argument("out")
    args = parser.parse_args()
    if args.mode == "gguf-dump":
        gguf_dump(args.file, args.out, not args.no_values)
    else:
        models(args)


if __name__ == "__main__":
    main()
