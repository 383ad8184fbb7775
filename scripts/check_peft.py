#!/usr/bin/env python3
"""Loads a PEFT LoRA adapter folder written by tch-rpo on the transformers model of its base, as a PEFT
user does, and writes the adapted model's logits. The Rust test tests/lora_export.rs runs this through the
project's environment (`.venv/bin/python`, `peft` installed by `scripts/setup.sh`) and compares the logits
with its own; errors (a folder PEFT refuses, a key it does not find) end the script with a non-zero exit
status and the exception.

    check_peft.py BASE_DIR ADAPTER_DIR IN.safetensors OUT_DIR

BASE_DIR is a Hugging Face model folder (loaded by `AutoModelForCausalLM` in f32, eager attention, CPU);
ADAPTER_DIR the adapter folder (`PeftModel.from_pretrained(base, ADAPTER_DIR)`); IN.safetensors holds
`input_ids` and `attention_mask` [N, T]. Writes OUT_DIR/peft.safetensors (`logits` [N, T, V]) and
OUT_DIR/result.json (the adapted module names PEFT found, its scaling per module, the peft version).
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file


def main():
    base_dir, adapter_dir, inputs_path, out = sys.argv[1:5]
    import peft
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    inputs = load_file(inputs_path)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    adapted = {}
    for name, module in model.named_modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and "default" in scaling:
            adapted[name] = float(scaling["default"])
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    os.makedirs(out, exist_ok=True)
    save_file({"logits": logits.float().contiguous()}, os.path.join(out, "peft.safetensors"))
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump({"peft_version": peft.__version__, "scaling": adapted}, f)


if __name__ == "__main__":
    main()
