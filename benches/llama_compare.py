#!/usr/bin/env python3
"""Makes the random-weight Llama-family models of benches/llama_compare.sh (no downloads):

  make --shape qwen2.5-0.5b|llama-3.2-1b --out DIR [--tiny] [--data FILE]
       A byte-level BPE tokenizer trained here with the `tokenizers` package on the benchmark's own preference
       texts (--data, the file `trl_compare.py data` writes) plus the family's special tokens, and a model
       with random weights (transformers' init, seed 0) of the named shape, saved in f32 as a Hugging Face
       folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json):
         qwen2.5-0.5b: Qwen2ForCausalLM, hidden 896, 24 layers, MLP 4864, 14 heads, 2 KV heads, vocab 151936,
                       tied head, q/k/v biases, θ 1e6;
         llama-3.2-1b: LlamaForCausalLM, hidden 2048, 16 layers, MLP 8192, 32 heads, 8 KV heads, head dim 64,
                       vocab 128256, tied head, θ 5e5 with llama3 RoPE scaling (factor 32, low 1, high 4,
                       original 8192).
       --tiny shrinks every size (2 layers, hidden 64, vocab 4096) for a smoke test of the script.
"""
import argparse
import json
import sys

SHAPES = {
    "qwen2.5-0.5b": dict(
        family="qwen2", hidden_size=896, num_hidden_layers=24, intermediate_size=4864, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
        rope_theta=1e6, specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos="<|endoftext|>",
        pad="<|endoftext|>",
    ),
    "llama-3.2-1b": dict(
        family="llama", hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
        max_position_embeddings=131072, rope_theta=5e5,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], eos="<|end_of_text|>",
        pad="<|end_of_text|>",
    ),
}


def texts_of(path):
    out = []
    if path:
        for line in open(path):
            record = json.loads(line)
            out.extend([record["prompt"], record["chosen"], record["rejected"]])
    return out or ["The river changes slowly, and people gather to talk."]


def make_tokenizer(shape, data, vocab):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(texts_of(data), trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in shape["specials"]])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=shape["eos"], pad_token=shape["pad"])


def cmd_make(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(SHAPES[args.shape])
    if args.tiny:
        shape.update(hidden_size=64, num_hidden_layers=2, intermediate_size=128, vocab_size=4096,
                     num_attention_heads=4, num_key_value_heads=2)
        if "head_dim" in shape:
            shape["head_dim"] = 16
    tokenizer = make_tokenizer(shape, args.data, min(4000, shape["vocab_size"] - len(shape["specials"])))
    assert len(tokenizer) <= shape["vocab_size"]
    fields = {k: v for k, v in shape.items() if k not in ("family", "specials", "eos", "pad", "rope_scaling")}
    fields["rope_parameters"] = dict(shape.get("rope_scaling", {"rope_type": "default"}), rope_theta=shape["rope_theta"])
    del fields["rope_theta"]
    fields.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    if shape["family"] == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**fields))
    else:
        model = LlamaForCausalLM(LlamaConfig(**fields))
    model = model.float()
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"saved {args.shape}{' (tiny)' if args.tiny else ''}: {params / 1e6:.1f} M parameters, "
          f"{len(tokenizer)} tokens, in {args.out}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make")
    p.add_argument("--shape", required=True, choices=sorted(SHAPES))
    p.add_argument("--out", required=True)
    p.add_argument("--data")
    p.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    {"make": cmd_make}[args.command](args)


if __name__ == "__main__":
    main()
