#!/usr/bin/env python3
"""Writes the Llama-family fixtures used by `tests/llama_forward.rs` and `tests/llama_generate.rs`.

Reference implementation: Hugging Face `transformers` (the fixtures in the repo were made with
transformers 5.24.0 and torch 2.11.0, in f32 on CPU, eager attention). It installs nothing: run it with the
project's Python,

    .venv/bin/python scripts/make_llama_fixtures.py

For each family it writes, under `tests/fixtures/<name>/`:
  - `config.json` and `model.safetensors` (`save_pretrained`): a tiny config (vocabulary 128, hidden 64, 2-3
    layers, grouped-query attention) with the family's switches on, and seeded random weights (norm weights
    and biases randomized too, and a larger init scale, so that every switch changes the logits);
  - `expected.safetensors`:
    - `input_ids` / `attention_mask` [3, 12] i64 (right padding: rows of 12, 9 and 5 tokens, pad id 0) and
      `logits` [3, 12, 128] f32 of `XxxForCausalLM`;
    - `gen_input_ids` / `gen_attention_mask` [4, 8] i64 (four prompts of 8, 3, 6 and 5 tokens, left padding)
      and `gen_tokens` [4, 32] i64: `generate(do_sample=False, max_new_tokens=32)` with no stop token.
      The script checks that the top-1 / top-2 logit margin of every greedy step exceeds 1e-3 (else a
      rounding difference far below the logits tolerance could flip a token), drawing other prompts if not.

Families: `llama_tiny` (GQA 4 / 2 heads, RoPE scaling `llama3` whose three frequency bands all occur with
head_dim 16, untied head), `qwen2_tiny` (q / k / v bias, tied head), `qwen3_tiny` (per-head q / k RMSNorm,
head_dim 24 != 64 / 4, tied head), `mistral_tiny` (sliding window 5 < 12 tokens, untied head).
"""
import pathlib

import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    rms_norm_eps=1e-6,
    max_position_embeddings=128,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
    attn_implementation="eager",
)


def llama_config():
    return LlamaConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        **COMMON,
    )


def qwen2_config():
    return Qwen2Config(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
        **COMMON,
    )


def qwen3_config():
    return Qwen3Config(
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=24,
        hidden_act="silu",
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        **COMMON,
    )


def mistral_config():
    return MistralConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        tie_word_embeddings=False,
        sliding_window=5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        **COMMON,
    )


def randomize(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.copy_(1.0 + torch.randn(param.shape, generator=gen) * 0.3)
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


def generation(model, seed):
    """Left-padded prompts and the 32 greedy tokens of each, with a safe top-1 / top-2 margin."""
    lengths = [8, 3, 6, 5]
    width = max(lengths)
    for attempt in range(50):
        gen = torch.Generator().manual_seed(seed * 100 + attempt)
        ids = torch.zeros(4, width, dtype=torch.long)
        mask = torch.zeros(4, width, dtype=torch.long)
        for row, length in enumerate(lengths):
            ids[row, width - length :] = torch.randint(3, 128, (length,), generator=gen)
            ids[row, width - length] = 2  # <bos>
            mask[row, width - length :] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=32,
                min_new_tokens=32,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
                output_scores=True,
                return_dict_in_generate=True,
            )
        scores = torch.stack(out.scores, 1)  # [4, 32, V]
        top2 = scores.topk(2, dim=-1).values
        margin = (top2[..., 0] - top2[..., 1]).min().item()
        if margin > 1e-3:
            tokens = out.sequences[:, width:].contiguous()
            assert tokens.shape == (4, 32), tokens.shape
            return ids, mask, tokens, margin
    raise RuntimeError("no prompts with a safe greedy margin")


def write(name, config, model_cls, seed):
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    randomize(model, seed)
    model.generation_config.eos_token_id = None
    out = ROOT / name
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    ids, mask = inputs()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float().contiguous()
    gen_ids, gen_mask, gen_tokens, margin = generation(model, seed)
    save_file(
        {
            "input_ids": ids,
            "attention_mask": mask,
            "logits": logits,
            "gen_input_ids": gen_ids,
            "gen_attention_mask": gen_mask,
            "gen_tokens": gen_tokens,
        },
        out / "expected.safetensors",
    )
    for extra in out.iterdir():
        if extra.name not in {"config.json", "model.safetensors", "expected.safetensors"}:
            extra.unlink()
    print(
        f"{name}: logits {tuple(logits.shape)}, |logits| max {logits.abs().max():.3f}, "
        f"greedy margin >= {margin:.2e}"
    )
    return model, ids, mask, logits


def main():
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    write("llama_tiny", llama_config(), LlamaForCausalLM, 11)
    write("qwen2_tiny", qwen2_config(), Qwen2ForCausalLM, 12)
    write("qwen3_tiny", qwen3_config(), Qwen3ForCausalLM, 13)
    model, ids, mask, logits = write("mistral_tiny", mistral_config(), MistralForCausalLM, 14)
    # Sanity: the sliding window must matter for this input (else the test could not catch its absence).
    wide_config = mistral_config()
    wide_config.sliding_window = 64
    wide = MistralForCausalLM(wide_config).eval()
    wide.load_state_dict(model.state_dict())
    with torch.no_grad():
        real = mask.bool().unsqueeze(-1)
        diff = ((wide(input_ids=ids, attention_mask=mask).logits - logits).abs() * real).max().item()
    print(f"mistral_tiny: max |logits(window 64) - logits(window 5)| on real tokens = {diff:.4f}")
    assert diff > 1e-2, "sliding window has no visible effect"


if __name__ == "__main__":
    main()
