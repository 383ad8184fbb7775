#!/usr/bin/env python3
"""Writes tests/fixtures/gguf/quants.gguf: one small tensor of every ggml type that `tch_rpo::gguf`
dequantizes, each next to `<name>.expected` (F32), its dequantization by the `gguf` Python package
(gguf.quants.dequantize, a numpy implementation independent of the Rust code), plus metadata of every
GGUF value type. `tests/gguf.rs` reads the file with the Rust reader and compares bit for bit.

Usage (from the repository root):
    .venv/bin/python -m pip install gguf==0.19.0 numpy
    .venv/bin/python scripts/make_gguf_fixture.py

Deterministic (seeded). Two tensors per quantized type:
  * `<type>.random`: random bytes with finite random f16 scale fields, so every bit pattern of the packed
    values occurs (including Q6_K's negative sub-block scales);
  * `<type>.quantized` (where gguf-py can quantize): gguf.quants.quantize of Gaussian weights, the
    realistic case.
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "gguf", "quants.gguf")
rng = np.random.default_rng(20240607)

# Byte offsets of the f16 scale fields in each block (the rest of a block is free bit patterns).
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
QUANTIZABLE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16]


def random_blocks(qtype, n_rows, row_len):
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = n_rows * row_len // block_size
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for at in F16_FIELDS[qtype]:
        scales = rng.uniform(-0.05, 0.05, size=n_blocks).astype(np.float16)
        scales[0] = np.float16(6.0e-8)  # a subnormal f16 scale
        blocks[:, at : at + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(n_rows, row_len // block_size * type_size)


def main():
    writer = gguf.GGUFWriter(OUT, arch="fixture")
    writer.add_custom_alignment(64)  # not the default 32, so the reader must honour general.alignment
    # Metadata of every value type.
    writer.add_uint8("test.u8", 200)
    writer.add_int8("test.i8", -100)
    writer.add_uint16("test.u16", 60000)
    writer.add_int16("test.i16", -30000)
    writer.add_uint32("test.u32", 4_000_000_000)
    writer.add_int32("test.i32", -2_000_000_000)
    writer.add_uint64("test.u64", 18_000_000_000_000_000_000)
    writer.add_int64("test.i64", -9_000_000_000_000_000_000)
    writer.add_float32("test.f32", 0.1)
    writer.add_float64("test.f64", -2.5e-300)
    writer.add_bool("test.bool_true", True)
    writer.add_bool("test.bool_false", False)
    writer.add_string("test.string", "héllo ▁wörld 🦀")
    writer.add_key_value("test.array_i32", [1, -2, 3], V.ARRAY, sub_type=V.INT32)
    writer.add_key_value("test.array_f32", [0.5, -1.25], V.ARRAY, sub_type=V.FLOAT32)
    writer.add_key_value("test.array_str", ["<pad>", "", "▁the"], V.ARRAY, sub_type=V.STRING)
    writer.add_key_value("test.array_u8", [0, 255], V.ARRAY, sub_type=V.UINT8)

    def add(name, data, raw_dtype, expected):
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
        writer.add_tensor(name + ".expected", np.ascontiguousarray(expected, dtype=np.float32))

    # Plain float types; a 3-D shape checks the dimension order.
    shape = (3, 5, 32)
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[0], x.flat[1] = np.float32(1e-40), np.float32(-0.0)  # an f32 subnormal, a negative zero
    add("f32", x, None, x)
    h = x.astype(np.float16)
    h.flat[2] = np.float16(6.0e-8)  # f16 subnormal
    add("f16", h, None, gguf.quants.dequantize(h.view(np.uint8), T.F16))
    d = x.astype(np.float64) * 1.0000001
    add("f64", d, None, d.astype(np.float32))
    bf = gguf.quants.quantize(x, T.BF16)
    add("bf16", bf, T.BF16, gguf.quants.dequantize(bf, T.BF16))

    for qtype in F16_FIELDS:
        row_len = 512
        blocks = random_blocks(qtype, 2, row_len)
        name = qtype.name.lower()
        add(name + ".random", blocks, qtype, gguf.quants.dequantize(blocks, qtype))
        if qtype in QUANTIZABLE:
            weights = (rng.standard_normal((2, 3, 64)) * 0.02).astype(np.float32)
            q = gguf.quants.quantize(weights, qtype)
            add(name + ".quantized", q, qtype, gguf.quants.dequantize(q, qtype))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes) with gguf {getattr(gguf, '__version__', '?')}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
