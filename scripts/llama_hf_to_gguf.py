#!/usr/bin/env python3
"""Writes a Hugging Face Llama-family folder (config.json + model.safetensors, f32) as an F32 GGUF file the
way llama.cpp's `convert_hf_to_gguf.py` lays it out, for `tests/llama_gguf.rs`:

    .venv/bin/python scripts/llama_hf_to_gguf.py DIR OUT.gguf ARCH      (ARCH: llama, qwen2 or qwen3)

- metadata `ARCH.{context_length, embedding_length, block_count, feed_forward_length,
  attention.head_count, attention.head_count_kv, attention.key_length, attention.value_length,
  attention.layer_norm_rms_epsilon, rope.freq_base, rope.dimension_count}` (no tokenizer);
- llama.cpp's tensor names (`token_embd`, `output_norm`, `output` when untied, `blk.N.attn_q` / `attn_k` /
  `attn_v` / `attn_output` (+ `.bias`), `attn_q_norm` / `attn_k_norm`, `attn_norm`, `ffn_norm`, `ffn_gate` /
  `ffn_up` / `ffn_down`);
- for ARCH `llama`, the q / k rows permuted per head as `LlamaModel.permute` does (keys with the key /
  value head count): `w.reshape(heads, 2, rows // heads // 2, *rest).swapaxes(1, 2).reshape(w.shape)`.
- RoPE type `llama3`: llama.cpp's `rope_freqs.weight` tensor of per-frequency divisors
  (`LlamaModel.generate_extra_tensors`: 1 where the wavelength is below original / high_freq_factor, `factor`
  above original / low_freq_factor, `1 / ((1 - s) / factor + s)` between).
"""
import json
import math
import pathlib
import sys

import gguf
import numpy as np
import torch
from safetensors.numpy import load_file

NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def permute(weights, n_head):
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape
    )


def rope_factors(rope, dim, base):
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array([float(f) for f in factors], dtype=np.float32)


def gguf_name(name):
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if name in top:
        return top[name]
    _, _, layer, rest = name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{NAMES[module]}.{kind}"


def main(folder, out, arch):
    folder = pathlib.Path(folder)
    config = json.loads((folder / "config.json").read_text())
    tensors = load_file(str(folder / "model.safetensors"))
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    assert rope.get("rope_type", "default") in ("default", "llama3"), "only default and llama3 RoPE"
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    writer = gguf.GGUFWriter(out, arch)
    writer.add_uint32(f"{arch}.context_length", config["max_position_embeddings"])
    writer.add_uint32(f"{arch}.embedding_length", config["hidden_size"])
    writer.add_uint32(f"{arch}.block_count", config["num_hidden_layers"])
    writer.add_uint32(f"{arch}.feed_forward_length", config["intermediate_size"])
    writer.add_uint32(f"{arch}.attention.head_count", heads)
    writer.add_uint32(f"{arch}.attention.head_count_kv", kv_heads)
    writer.add_uint32(f"{arch}.attention.key_length", head_dim)
    writer.add_uint32(f"{arch}.attention.value_length", head_dim)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", config["rms_norm_eps"])
    writer.add_float32(f"{arch}.rope.freq_base", theta)
    writer.add_uint32(f"{arch}.rope.dimension_count", head_dim)
    if rope.get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", rope_factors(rope, head_dim, theta))
    for name in sorted(tensors):
        value = tensors[name].astype(np.float32)
        if arch == "llama" and ".self_attn.q_proj." in name:
            value = permute(value, heads)
        if arch == "llama" and ".self_attn.k_proj." in name:
            value = permute(value, kv_heads)
        writer.add_tensor(gguf_name(name), np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
