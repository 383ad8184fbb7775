#!/usr/bin/env python3
"""One RPO step's loss and parameter gradients in transformers, for `tests/llama_autograd.rs`:

    .venv/bin/python scripts/llama_rpo_grads.py MODEL_DIR BATCH.safetensors OUT.safetensors BETA ETA

BATCH holds `input_ids`, `attention_mask` and `labels` [2B, T] (chosen rows first, labels not shifted,
-100 where not scored) as `tch_rpo`'s collator lays them out. The loss is the crate's
`RpoConfig::paper(beta, eta)` without a reference model: per row `s = sum_t log p(labels[t] | <t)` over the
scored positions t >= 1 (logits at t - 1), then
`mean_pairs(-log sigmoid(beta * (s_chosen - s_rejected))) + eta * beta * mean_pairs(-s_chosen)`.
OUT gets `loss` (f64 scalar as [1]) and the gradient of every parameter under its Hugging Face name
(f32, eager attention, CPU).
"""
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM


def main(model_dir, batch_path, out, beta, eta):
    beta, eta = float(beta), float(eta)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.train()  # dropout is 0 in these configs
    batch = load_file(batch_path)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    scored = labels != -100
    token = torch.gather(logps, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * scored
    sums = token.sum(-1)
    pairs = sums.shape[0] // 2
    chosen, rejected = sums[:pairs], sums[pairs:]
    loss = (-torch.nn.functional.logsigmoid(beta * (chosen - rejected))).mean() + eta * beta * (-chosen).mean()
    loss.backward()
    grads = {name: p.grad.detach().contiguous() for name, p in model.named_parameters() if p.grad is not None}
    # A tied head appears once (as the embedding), as in the crate's parameter list.
    grads["loss"] = loss.detach().double().reshape(1)
    save_file(grads, out)


if __name__ == "__main__":
    main(*sys.argv[1:6])
