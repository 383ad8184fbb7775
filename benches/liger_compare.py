"""Liger-Kernel's fused linear DPO(+NLL) loss at the shapes of `examples/fused_bench.rs`, on seeded random
inputs; prints one JSON line with the same fields. Run one process per measurement under /usr/bin/time -v.

    python benches/liger_compare.py --pairs 4 --seq 512 --hidden 1024 --vocab 32000 [--dtype f32|bf16]
        [--reference model|none] [--device cpu|cuda] [--seed 0]

Loss: LigerFusedLinearDPOLoss(compute_nll_loss=True, compiled=False), sigmoid DPO with beta = 0.01 and
alpha = 5e-5 on Liger's token-mean NLL (Liger has no sequence-sum NLL, so the loss *value* is not the paper
RPO value of fused_bench; the work and memory are comparable: one forward + backward through the head).
Liger takes no precomputed reference log-probs: --reference precomputed exits with an error line.
Liger does not shift labels; the bench's hidden states and labels are used as aligned (same token count).
"""
import argparse
import json
import time

import torch
from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss


def status_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--reference", default="model", choices=["model", "precomputed", "none"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.reference == "precomputed":
        print(json.dumps({"impl": "liger", "error": "Liger-Kernel takes no precomputed reference log-probs"}))
        raise SystemExit(2)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    dev = torch.device("cuda" if a.device == "cuda" else "cpu")
    torch.manual_seed(a.seed)
    rows, t, h, v = 2 * a.pairs, a.seq, a.hidden, a.vocab
    hidden = torch.randn(rows, t, h, device=dev).to(dtype).requires_grad_(True)
    weight = (torch.randn(v, h, device=dev) / h**0.5).to(dtype).requires_grad_(True)
    target = torch.randint(0, v, (rows, t), device=dev)
    target[:, : t // 2] = -100
    use_ref = a.reference == "model"
    ref_hidden = torch.randn(rows, t, h, device=dev).to(dtype) if use_ref else None
    ref_weight = (torch.randn(v, h, device=dev) / h**0.5).to(dtype) if use_ref else None
    loss_fn = LigerFusedLinearDPOLoss(
        beta=0.01, alpha=5e-5, compute_nll_loss=True, compiled=False, use_ref_model=use_ref
    )
    # Warm-up of the runtime (thread pools), as in fused_bench.
    (torch.randn(64, 64, device=dev) @ torch.randn(64, 64, device=dev)).logsumexp(-1)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = status_kb("VmRSS")
    start = time.perf_counter()
    out = loss_fn(weight, hidden, target, None, ref_hidden, ref_weight, None)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - start) * 1e3
    rec = {
        "impl": "liger",
        "loss": float(loss),
        "ms": round(ms, 1),
        "grad_weight_abs_sum": float(torch.linalg.vector_norm(weight.grad, 1)),
        "grad_hidden_abs_sum": float(torch.linalg.vector_norm(hidden.grad, 1)),
        "pairs": a.pairs, "seq": t, "hidden": h, "vocab": v, "dtype": a.dtype,
        "reference": a.reference, "device": a.device, "seed": a.seed,
        "rss_before_kb": rss_before, "rss_peak_kb": status_kb("VmHWM"),
    }
    if dev.type == "cuda":
        rec["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
