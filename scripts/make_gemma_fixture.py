#!/usr/bin/env python3
"""Writes the Gemma / Gemma 2 forward-test fixtures used by `tests/gemma_forward.rs`.

Reference implementation: Hugging Face `transformers` (the fixtures in the repo were made with
transformers 5.24.0 and torch 2.11.0, in f32 on CPU, eager attention). This script installs nothing: run it
with a Python that has both, e.g.

    /work/main/.venv/bin/python -m pip install transformers==5.24.0
    /work/main/.venv/bin/python scripts/make_gemma_fixture.py

For each architecture it writes, under `tests/fixtures/<name>/`:
  - `config.json` and `model.safetensors`: a tiny config and seeded random weights (norm weights and a
    larger init scale are randomized on purpose, so that (1 + w), the soft-caps, the embedding scale and
    the sliding window all change the logits measurably);
  - `expected.safetensors`: `input_ids` [3, 12] i64 and `attention_mask` [3, 12] i64 (right padding:
    rows of length 12, 9 and 5, pad id 0), and `logits` [3, 12, 128] f32 from `XxxForCausalLM`.
The Gemma 2 model (2 + 1 layers) uses sliding window 4 < 12 tokens, so its sliding layers differ from full
attention; the test checks that too.
"""
import json
import pathlib

import torch
import transformers
from safetensors.torch import save_file
from transformers import Gemma2Config, Gemma2ForCausalLM, GemmaConfig, GemmaForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    rms_norm_eps=1e-6,
    max_position_embeddings=64,
    tie_word_embeddings=True,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
    attn_implementation="eager",
)


def gemma_config():
    # Multi-query attention (1 kv head) with head_dim 24: 4 heads x 24 = 96 != hidden 64.
    return GemmaConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=24,
        hidden_act="gelu_pytorch_tanh",
        rope_parameters={"rope_type": "default", "rope_theta": 100.0},
        **COMMON,
    )


def gemma2_config():
    # Grouped attention (2 kv heads), query_pre_attn_scalar != head_dim, small soft-caps, window 4.
    return Gemma2Config(
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        hidden_activation="gelu_pytorch_tanh",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        query_pre_attn_scalar=24,
        sliding_window=4,
        final_logit_softcapping=3.0,
        attn_logit_softcapping=2.0,
        **COMMON,
    )


def randomize(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.15)


def inputs():
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 128, (3, 12), generator=gen)
    ids[:, 0] = 2  # <bos>
    lengths = [12, 9, 5]
    mask = torch.zeros(3, 12, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, length:] = 0  # <pad>, right padding
    return ids, mask


def write(name, config, model_cls, seed):
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    randomize(model, seed)
    out = ROOT / name
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    ids, mask = inputs()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float().contiguous()
    save_file({"input_ids": ids, "attention_mask": mask, "logits": logits}, out / "expected.safetensors")
    # Only the files the Rust test reads are kept.
    for extra in out.iterdir():
        if extra.name not in {"config.json", "model.safetensors", "expected.safetensors"}:
            extra.unlink()
    print(f"{name}: logits {tuple(logits.shape)}, |logits| max {logits.abs().max():.3f}")
    return model, ids, mask, logits


def main():
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    write("gemma_tiny", gemma_config(), GemmaForCausalLM, 1)
    model, ids, mask, logits = write("gemma2_tiny", gemma2_config(), Gemma2ForCausalLM, 2)
    # Sanity: the sliding window must matter for this input (else the test could not catch its absence).
    full = json.loads((ROOT / "gemma2_tiny" / "config.json").read_text())
    config = Gemma2Config(**{**full, "sliding_window": 64, "attn_implementation": "eager"})
    wide = Gemma2ForCausalLM(config).eval()
    wide.load_state_dict(model.state_dict())
    with torch.no_grad():
        diff = (wide(input_ids=ids, attention_mask=mask).logits - logits).abs().max().item()
    print(f"gemma2_tiny: max |logits(window 64) - logits(window 4)| = {diff:.4f}")
    assert diff > 1e-2, "sliding window has no visible effect"


if __name__ == "__main__":
    main()
