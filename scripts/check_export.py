#!/usr/bin/env python3
"""Independent readers for what tch-rpo writes: the `gguf` Python package for GGUF files, Hugging Face
`transformers` for the saved model folder and GGUF models. The Rust tests (tests/export_*.rs) run this
through the project's environment (`.venv/bin/python`, packages installed by `scripts/setup.sh`), then
assert on the JSON it writes. It prints no verdict of its own except for errors: a file that cannot be
read or a model that transformers cannot load ends the script with a non-zero exit status and the
exception, so the calling test fails.

Modes:

    check_export.py gguf-dump FILE OUT.json
        Reads FILE with `gguf.GGUFReader`: every metadata key with its value types and value, every tensor
        with its GGUF dims (fastest first), type, absolute data offset and dequantized values
        (`gguf.quants.dequantize`, as the bits of each f32). For each
        tensor named `BASE.f16` / `BASE.bf16` / `BASE.q8_0` whose twin `BASE.f32` is in the file, whether
        `gguf.quants.quantize(twin, type)` gives exactly the bytes stored (the reference encoders of
        gguf-py, which follow ggml's).

    check_export.py models --inputs IN.safetensors [--hf DIR] [--gguf FILE ...] [--texts TEXTS.json] OUT.json
        IN.safetensors holds `input_ids` and `attention_mask` [N, T] (int64) and our `logits` [N, T, V]
        (f32). Each model (the folder DIR, each GGUF FILE via `from_pretrained(dir, gguf_file=name)`) runs
        in f32 with eager attention on CPU; for each, the largest |ours − theirs| over positions where the
        mask is 1, the largest |ours|, and the share of positions whose argmax agrees. With --texts (a JSON
        list of strings), each model's tokenizer (`AutoTokenizer`, same sources) encodes each text with
        its special tokens; the ids are written out.
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


def gguf_dump(path, out):
    import gguf

    reader = gguf.GGUFReader(path)
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        metadata[key] = {
            "types": [int(t) for t in field.types],
            "value": json_value(field.contents()),
        }
    tensors = {}
    raw = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        raw[t.name] = (t.tensor_type, np.asarray(t.data))
        tensors[t.name] = {
            "dims": [int(d) for d in t.shape],
            "type": t.tensor_type.name,
            "offset": int(t.data_offset),
            "bits": values.view(np.uint32).tolist(),
        }
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


def run_model(model, inputs):
    import torch

    ids, mask, ours = inputs["input_ids"], inputs["attention_mask"], inputs["logits"].float()
    with torch.no_grad():
        theirs = model(input_ids=ids, attention_mask=mask).logits.float()
    valid = mask.bool()
    diff = (ours - theirs).abs()[valid]
    agree = (ours.argmax(-1) == theirs.argmax(-1))[valid].float().mean()
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_ours": float(ours.abs()[valid].max()),
        "argmax_agreement": float(agree),
        "vocab": int(theirs.shape[-1]),
    }


def models(args):
    import torch
    from safetensors.torch import load_file
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
        sources.append((f"gguf:{name}", folder, {"gguf_file": name}))
    result = {}
    for label, folder, extra in sources:
        start = time.time()
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager", **extra
        )
        model.eval()
        entry = {"class": type(model).__name__, "load_seconds": round(time.time() - start, 1)}
        entry.update(run_model(model, inputs))
        del model
        if texts is not None:
            tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
            entry["tokenizer_class"] = type(tokenizer).__name__
            entry["ids"] = [tokenizer(text)["input_ids"] for text in texts]
            entry["decoded"] = [tokenizer.decode(ids, skip_special_tokens=False) for ids in entry["ids"]]
        result[label] = entry
        print(f"{label}: {json.dumps({k: v for k, v in entry.items() if k not in ('ids', 'decoded')})}",
              file=sys.stderr)
    with open(args.out, "w") as f:
        json.dump(result, f)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    dump = sub.add_parser("gguf-dump")
    dump.add_argument("file")
    dump.add_argument("out")
    check = sub.add_parser("models")
    check.add_argument("--inputs", required=True)
    check.add_argument("--hf")
    check.add_argument("--gguf", action="append")
    check.add_argument("--texts")
    check.add_argument("out")
    args = parser.parse_args()
    if args.mode == "gguf-dump":
        gguf_dump(args.file, args.out)
    else:
        models(args)


if __name__ == "__main__":
    main()
