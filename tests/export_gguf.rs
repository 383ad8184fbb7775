//! `tch_rpo::gguf::GgufWriter` and `quantize`: files read back by the crate's reader and by the `gguf`
//! Python package (run through `.venv/bin/python scripts/check_export.py`), encodings against libtorch's
//! conversions and against gguf-py's reference quantizers, and an error for every bad input.
//!
//! The Python check needs the project's environment (`bash scripts/setup.sh` installs `gguf`); without it
//! the test FAILS, saying so.
#![cfg(feature = "gguf")]

mod common;
mod export_support;

use export_support::{run_check, TempDir};
use proptest::prelude::*;
use serde_json::Value;
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tch_rpo::gguf::{dequantize, quantize, GgmlType, GgufFile, GgufValue, GgufValueType, GgufWriter};
use tch_rpo::Error;
use tch_rpo::{GgufError, InputError};

/// Deterministic values with every kind of f32: normal of many magnitudes, subnormal, signed zeros.
fn sample_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|i| match i % 17 {
            0 => 0.0,
            1 => -0.0,
            2 => f32::from_bits(((next() as u32) & 0x007f_ffff) | 1), // f32 subnormal
            3 => 3e-6 * (next() % 1000) as f32,                       // f16 subnormal range
            _ => {
                let unit = (next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
                let scale = 10f64.powi((next() % 7) as i32 - 3);
                (unit * scale) as f32
            }
        })
        .collect()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// libtorch's conversion of `values` to `kind` (Half or BFloat16), as raw little-endian 16-bit words.
fn libtorch_words(values: &[f32], kind: Kind) -> Vec<u16> {
    let t = Tensor::from_slice(values).to_kind(kind);
    let mut bytes = vec![0u8; values.len() * 2];
    t.copy_data_u8(&mut bytes, values.len());
    bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn words(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// The Q8_0 error bound: |x − d16·q| ≤ d/2 (rounding q) + 127·|d16 − d| (the f16 scale), with
/// d = amax/127; |d16 − d| ≤ d·2⁻¹¹ for a normal f16 and ≤ 2⁻²⁵ below; plus the f32 arithmetic (unit
/// roundoff u = 2⁻²⁴): `d = amax/127`, `id = 1/d` and `x·id` shift `x/d` by ≤ 3u relative (≤ 2u·|x| + u·d/2
/// in x's units once multiplied back by d), the f16 rounding of the (rounded) d adds ≤ 127·2⁻¹¹·u·d, and
/// the dequantized product `d16·q` rounds by u·|y| ≤ 1.001·u·amax: together < 3.01·u·amax, bounded by 4u·amax.
fn q8_0_bound(block: &[f32]) -> f64 {
    let amax = block.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let d = amax / 127.0;
    d / 2.0 + 127.0 * (d * 2f64.powi(-11)).max(2f64.powi(-25)) + 4.0 * 2f64.powi(-24) * amax
}

fn all_metadata() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("general.architecture", GgufValue::String("test".into())),
        ("general.alignment", GgufValue::U32(64)),
        ("t.u8", GgufValue::U8(200)),
        ("t.i8", GgufValue::I8(-100)),
        ("t.u16", GgufValue::U16(65000)),
        ("t.i16", GgufValue::I16(-32000)),
        ("t.u32", GgufValue::U32(4_000_000_000)),
        ("t.i32", GgufValue::I32(-2_000_000_000)),
        ("t.u64", GgufValue::U64(u64::MAX - 5)),
        ("t.i64", GgufValue::I64(i64::MIN + 7)),
        ("t.f32", GgufValue::F32(-1.5e-7)),
        ("t.f64", GgufValue::F64(std::f64::consts::PI)),
        ("t.true", GgufValue::Bool(true)),
        ("t.false", GgufValue::Bool(false)),
        ("t.string", GgufValue::String("héllo ▁ 日本 🙂\n\"q\"".into())),
        ("t.empty_string", GgufValue::String(String::new())),
        (
            "t.array_f32",
            GgufValue::Array {
                elem: GgufValueType::F32,
                values: vec![GgufValue::F32(0.25), GgufValue::F32(-3.0), GgufValue::F32(1e30)],
            },
        ),
        (
            "t.array_i32",
            GgufValue::Array {
                elem: GgufValueType::I32,
                values: vec![GgufValue::I32(1), GgufValue::I32(-4), GgufValue::I32(3)],
            },
        ),
        (
            "t.array_strings",
            GgufValue::Array {
                elem: GgufValueType::String,
                values: ["<pad>", "", "▁▁", "a b"]
                    .iter()
                    .map(|s| GgufValue::String((*s).into()))
                    .collect(),
            },
        ),
        (
            "t.array_empty_u64",
            GgufValue::Array {
                elem: GgufValueType::U64,
                values: vec![],
            },
        ),
        (
            "t.array_bool",
            GgufValue::Array {
                elem: GgufValueType::Bool,
                values: vec![GgufValue::Bool(true), GgufValue::Bool(false)],
            },
        ),
        (
            "t.array_nested",
            GgufValue::Array {
                elem: GgufValueType::Array,
                values: vec![
                    GgufValue::Array {
                        elem: GgufValueType::U8,
                        values: vec![GgufValue::U8(1), GgufValue::U8(2)],
                    },
                    GgufValue::Array {
                        elem: GgufValueType::String,
                        values: vec![GgufValue::String("x".into())],
                    },
                ],
            },
        ),
    ]
}

/// Writes a file with every metadata type, and F32 tensors with F16 / BF16 / Q8_0 twins, and returns the
/// source values by base name.
fn write_sample(path: &Path) -> Vec<(&'static str, Vec<i64>, Vec<f32>)> {
    let mut writer = GgufWriter::new();
    for (key, value) in all_metadata() {
        writer.add_metadata(key, value).unwrap();
    }
    assert_eq!(writer.alignment(), 64);
    let sources: Vec<(&'static str, Vec<i64>)> = vec![
        ("matrix", vec![3, 64]),
        ("vector", vec![32]),
        ("cube", vec![2, 3, 32]),
        ("four", vec![2, 1, 2, 32]),
    ];
    let mut out = Vec::new();
    for (i, (base, shape)) in sources.into_iter().enumerate() {
        let n = shape.iter().product::<i64>() as usize;
        let values = sample_values(n, 7 + i as u64);
        let tensor = Tensor::from_slice(&values).reshape(shape.as_slice());
        for (suffix, ty) in [
            ("f32", GgmlType::F32),
            ("f16", GgmlType::F16),
            ("bf16", GgmlType::BF16),
            ("q8_0", GgmlType::Q8_0),
        ] {
            writer
                .add_tensor(format!("{base}.{suffix}"), &tensor, ty)
                .unwrap();
        }
        out.push((base, shape, values));
    }
    // A raw tensor of a type the writer cannot encode itself (Q4_0: 18-byte blocks of 32).
    let raw: Vec<u8> = (0..36u8).collect();
    writer
        .add_raw_tensor("raw.q4_0", &[64], GgmlType::Q4_0, raw)
        .unwrap();
    let len = writer.write(path).unwrap();
    assert_eq!(len, std::fs::metadata(path).unwrap().len());
    out
}

#[test]
fn written_file_reads_back_bit_exact_with_the_crate_reader() {
    let dir = TempDir::new("gguf-write");
    let path = dir.path("sample.gguf");
    let sources = write_sample(&path);
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    // Metadata: every value, in order, as written.
    let want = all_metadata();
    assert_eq!(file.metadata().len(), want.len());
    for (key, value) in &want {
        assert_eq!(file.get(key), Some(value), "metadata {key}");
    }
    for info in file.tensors() {
        assert_eq!(info.offset % 64, 0, "{} offset", info.name);
    }
    for (base, shape, values) in &sources {
        // F32: the same bytes.
        let info = file.tensor_info(&format!("{base}.f32")).unwrap();
        assert_eq!(&info.shape, shape);
        assert_eq!(info.ggml_type, GgmlType::F32);
        assert_eq!(file.tensor_bytes(&info.name).unwrap(), f32_bytes(values));
        // F16 / BF16: libtorch's round-to-nearest-even conversion, bit for bit.
        for (suffix, kind, ty) in [
            ("f16", Kind::Half, GgmlType::F16),
            ("bf16", Kind::BFloat16, GgmlType::BF16),
        ] {
            let name = format!("{base}.{suffix}");
            let info = file.tensor_info(&name).unwrap();
            assert_eq!((&info.shape, info.ggml_type), (shape, ty));
            assert_eq!(
                words(&file.tensor_bytes(&name).unwrap()),
                libtorch_words(values, kind),
                "{name}"
            );
            // The reader's f32 values are libtorch's widening of those words.
            let widened = Tensor::from_slice(values).to_kind(kind).to_kind(Kind::Float);
            let got = file.tensor(&name, Kind::Float, Device::Cpu).unwrap();
            assert!(got.equal(&widened.reshape(shape.as_slice())), "{name}");
        }
        // Q8_0: within the quantization error of each block.
        let name = format!("{base}.q8_0");
        let info = file.tensor_info(&name).unwrap();
        assert_eq!((&info.shape, info.ggml_type), (shape, GgmlType::Q8_0));
        let got = file.tensor_f32(&name).unwrap();
        for (b, (block, back)) in values.chunks(32).zip(got.chunks(32)).enumerate() {
            let bound = q8_0_bound(block);
            for (x, y) in block.iter().zip(back) {
                assert!(
                    ((*x as f64) - (*y as f64)).abs() <= bound,
                    "{name} block {b}: {x} → {y}, bound {bound}"
                );
            }
        }
    }
    assert_eq!(
        file.tensor_bytes("raw.q4_0").unwrap(),
        (0..36u8).collect::<Vec<_>>()
    );
}

fn json_f64(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        Value::String(s) if s == "nan" => f64::NAN,
        other => panic!("not a number: {other}"),
    }
}

/// The value as gguf-py's `contents()` gives it, in JSON.
fn expected_json(value: &GgufValue) -> Value {
    match value {
        GgufValue::Array { values, .. } => Value::Array(values.iter().map(expected_json).collect()),
        GgufValue::String(s) => Value::String(s.clone()),
        GgufValue::Bool(b) => Value::Bool(*b),
        GgufValue::F32(x) => serde_json::json!(*x as f64),
        GgufValue::F64(x) => serde_json::json!(*x),
        other => match other.as_i64() {
            Some(i) => serde_json::json!(i),
            None => serde_json::json!(other.as_u64().unwrap()),
        },
    }
}

/// Equal JSON, floats within 1e-12 relative (decimal printing and parsing), everything else exactly.
fn assert_json_eq(want: &Value, got: &Value, key: &str) {
    match (want, got) {
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{key}: length");
            for (x, y) in a.iter().zip(b) {
                assert_json_eq(x, y, key);
            }
        }
        (Value::Number(a), b) if a.is_f64() => {
            let (a, b) = (a.as_f64().unwrap(), json_f64(b));
            assert!((a - b).abs() <= 1e-12 * a.abs(), "{key}: {a} vs {b}");
        }
        (a, b) => assert_eq!(a, b, "{key}"),
    }
}

#[test]
fn written_file_reads_back_with_the_gguf_python_package() {
    let dir = TempDir::new("gguf-py");
    let path = dir.path("sample.gguf");
    let sources = write_sample(&path);
    let out = dir.path("dump.json");
    run_check(&["gguf-dump", path.to_str().unwrap(), out.to_str().unwrap()]);
    let dump: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(dump["version"], 3);
    assert_eq!(dump["alignment"], 64);
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(dump["data_offset"].as_u64().unwrap(), file.data_offset());
    // Metadata: gguf-py sees every key with the type tags and values we wrote.
    let metadata = dump["metadata"].as_object().unwrap();
    for (key, value) in all_metadata() {
        let entry = &metadata[key];
        let tags: Vec<u64> = entry["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        assert_eq!(tags[0], value.value_type().id() as u64, "{key} type");
        if let GgufValue::Array { elem, values } = &value {
            if !values.is_empty() {
                assert_eq!(tags.get(1), Some(&(elem.id() as u64)), "{key} element type");
            }
            if *elem == GgufValueType::Array {
                // gguf-py parses nested arrays (the keys after this one read correctly) but its
                // `contents()` flattens them (a FIXME in gguf_reader.py): only the types are compared.
                continue;
            }
        }
        assert_json_eq(&expected_json(&value), &entry["value"], key);
    }
    assert_eq!(metadata.len(), all_metadata().len());
    // Tensors: dims fastest-first, types, offsets, and the dequantized values equal ours bit for bit.
    let tensors = dump["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), file.tensors().len());
    for info in file.tensors() {
        let t = &tensors[&info.name];
        let dims: Vec<i64> = t["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        let mut reversed = info.shape.clone();
        reversed.reverse();
        assert_eq!(dims, reversed, "{} dims", info.name);
        assert_eq!(t["type"], info.ggml_type.name(), "{}", info.name);
        assert_eq!(t["offset"].as_u64().unwrap(), file.data_offset() + info.offset);
        if info.ggml_type.is_dequantizable() {
            let ours: Vec<u64> = file
                .tensor_f32(&info.name)
                .unwrap()
                .iter()
                .map(|v| u64::from(v.to_bits()))
                .collect();
            let theirs: Vec<u64> = t["bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap())
                .collect();
            assert_eq!(
                ours, theirs,
                "{}: ours vs gguf-py's dequantization, as f32 bits",
                info.name
            );
        }
    }
    // gguf-py's own quantizers, run on the F32 twin, give exactly the bytes we stored.
    let twins = dump["twins_equal"].as_object().unwrap();
    assert_eq!(twins.len(), sources.len() * 3);
    for (name, equal) in twins {
        assert_eq!(
            equal,
            &Value::Bool(true),
            "{name}: bytes differ from gguf.quants.quantize"
        );
    }
}

#[test]
fn bf16_and_f16_sources_are_stored_exactly() {
    let dir = TempDir::new("gguf-kinds");
    let path = dir.path("kinds.gguf");
    let values = sample_values(64, 3);
    let bf16 = Tensor::from_slice(&values)
        .to_kind(Kind::BFloat16)
        .reshape([2, 32]);
    let half = Tensor::from_slice(&values).to_kind(Kind::Half).reshape([2, 32]);
    let double = Tensor::from_slice(&values).to_kind(Kind::Double).reshape([2, 32]);
    let mut writer = GgufWriter::new();
    writer.add_tensor("bf16", &bf16, GgmlType::BF16).unwrap();
    writer.add_tensor("half", &half, GgmlType::F16).unwrap();
    writer.add_tensor("double", &double, GgmlType::F32).unwrap();
    writer.write(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert!(file
        .tensor("bf16", Kind::BFloat16, Device::Cpu)
        .unwrap()
        .equal(&bf16));
    assert!(file.tensor("half", Kind::Half, Device::Cpu).unwrap().equal(&half));
    assert!(file
        .tensor("double", Kind::Float, Device::Cpu)
        .unwrap()
        .equal(&double.to_kind(Kind::Float)));
}

#[test]
fn tensors_larger_than_one_chunk_are_written_whole() {
    // 1 Mi values per chunk: 2.5 chunks.
    let dir = TempDir::new("gguf-big");
    let path = dir.path("big.gguf");
    let n = (1 << 20) * 5 / 2;
    let values = sample_values(n, 11);
    let t = Tensor::from_slice(&values).reshape([(n / 64) as i64, 64]);
    let mut writer = GgufWriter::new();
    writer.add_tensor("big.f32", &t, GgmlType::F32).unwrap();
    writer.add_tensor("big.q8_0", &t, GgmlType::Q8_0).unwrap();
    writer.write(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.tensor_bytes("big.f32").unwrap(), f32_bytes(&values));
    assert_eq!(
        file.tensor_bytes("big.q8_0").unwrap(),
        quantize(GgmlType::Q8_0, &values).unwrap()
    );
}

#[test]
fn q8_0_blocks_follow_the_ggml_layout() {
    // One block with amax 127·0.5: d = 0.5 exactly, q = round(x / 0.5), halves away from zero.
    let mut block = [0f32; 32];
    block[0] = 63.5; // amax → q = 127
    block[1] = -63.5; // q = −127
    block[2] = 0.25; // 0.5 → 1 (half away from zero)
    block[3] = -0.25; // −0.5 → −1
    block[4] = 0.74; // 1.48 → 1
    block[5] = 1.0; // 2
    let bytes = quantize(GgmlType::Q8_0, &block).unwrap();
    assert_eq!(bytes.len(), 34);
    assert_eq!(u16::from_le_bytes([bytes[0], bytes[1]]), 0x3800); // f16 0.5
    let q: Vec<i8> = bytes[2..].iter().map(|&b| b as i8).collect();
    assert_eq!(&q[..6], &[127, -127, 1, -1, 1, 2]);
    assert!(q[6..].iter().all(|&v| v == 0));
    // A block of zeros: d = 0, q = 0.
    let zeros = quantize(GgmlType::Q8_0, &[0.0; 32]).unwrap();
    assert!(zeros.iter().all(|&b| b == 0));
    assert_eq!(dequantize(GgmlType::Q8_0, &zeros).unwrap(), vec![0.0; 32]);
}

#[test]
fn special_values_encode_as_ggml_does() {
    let values = [
        f32::INFINITY,
        f32::NEG_INFINITY,
        65504.0,
        -65504.0,
        65519.0, // rounds down to 65504
        5.96e-8, // the smallest f16 subnormal (2^-24), rounded
        2.98e-8, // just below half of it: rounds to 0
        -0.0,
    ];
    let half = quantize(GgmlType::F16, &values).unwrap();
    assert_eq!(words(&half), libtorch_words(&values, Kind::Half));
    let bf16 = quantize(GgmlType::BF16, &values).unwrap();
    assert_eq!(words(&bf16), libtorch_words(&values, Kind::BFloat16));
    // NaN stays a (quiet) NaN in both.
    let nan = quantize(GgmlType::F16, &[f32::NAN, -f32::NAN]).unwrap();
    assert!(dequantize(GgmlType::F16, &nan)
        .unwrap()
        .iter()
        .all(|x| x.is_nan()));
    let nan = quantize(GgmlType::BF16, &[f32::from_bits(0x7f80_0001)]).unwrap();
    assert_eq!(words(&nan), vec![0x7fc0]);
}

proptest! {
    #![proptest_config(common::proptest_config(64))]

    #[test]
    fn f16_and_bf16_match_libtorch(bits in proptest::collection::vec(any::<u32>(), 1..200)) {
        let values: Vec<f32> = bits
            .iter()
            .map(|&b| f32::from_bits(b))
            .filter(|x| !x.is_nan() && x.abs() < 65504.0)
            .collect();
        prop_assume!(!values.is_empty());
        let half = quantize(GgmlType::F16, &values).unwrap();
        prop_assert_eq!(words(&half), libtorch_words(&values, Kind::Half));
        let finite: Vec<f32> = values.iter().copied().filter(|x| x.abs() < 3.3e38).collect();
        let bf16 = quantize(GgmlType::BF16, &finite).unwrap();
        prop_assert_eq!(words(&bf16), libtorch_words(&finite, Kind::BFloat16));
        // And the reader's widening gives back the same f16 values libtorch does.
        let back = dequantize(GgmlType::F16, &half).unwrap();
        let want = Tensor::from_slice(&values).to_kind(Kind::Half).to_kind(Kind::Float);
        prop_assert!(Tensor::from_slice(&back).equal(&want));
    }

    #[test]
    fn q8_0_round_trip_is_within_the_block_error(
        blocks in 1usize..8,
        scale_exp in -6i32..4,
        seed in any::<u64>(),
    ) {
        let scale = 10f32.powi(scale_exp);
        let values: Vec<f32> = sample_values(blocks * 32, seed).iter().map(|x| x * scale).collect();
        let bytes = quantize(GgmlType::Q8_0, &values).unwrap();
        prop_assert_eq!(bytes.len(), blocks * 34);
        let back = dequantize(GgmlType::Q8_0, &bytes).unwrap();
        for (b, (block, got)) in values.chunks(32).zip(back.chunks(32)).enumerate() {
            let bound = q8_0_bound(block);
            for (x, y) in block.iter().zip(got) {
                prop_assert!(((*x as f64) - (*y as f64)).abs() <= bound, "{} → {} (bound {})", x, y, bound);
            }
            // The largest magnitude maps to ±127.
            let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
            if amax > 0.0 {
                let q = &bytes[b * 34 + 2..(b + 1) * 34];
                prop_assert!(q.iter().any(|&q| (q as i8).unsigned_abs() == 127));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------------------

fn gguf_reason(e: Error) -> String {
    match e {
        Error::Gguf(GgufError::Invalid { reason, .. }) => reason,
        other => panic!("expected GgufError::Invalid, got {other:?}"),
    }
}

#[test]
fn bad_metadata_is_rejected() {
    let mut w = GgufWriter::new();
    w.add_metadata("a", GgufValue::U8(1)).unwrap();
    assert!(gguf_reason(w.add_metadata("a", GgufValue::U8(2)).unwrap_err())
        .contains("duplicate metadata key `a`"));
    assert!(gguf_reason(w.add_metadata("", GgufValue::U8(2)).unwrap_err()).contains("empty"));
    let mixed = GgufValue::Array {
        elem: GgufValueType::U32,
        values: vec![GgufValue::U32(1), GgufValue::I32(2)],
    };
    let reason = gguf_reason(w.add_metadata("mixed", mixed).unwrap_err());
    assert!(
        reason.contains("element 1 is i32") && reason.contains("u32"),
        "{reason}"
    );
    let nested_bad = GgufValue::Array {
        elem: GgufValueType::Array,
        values: vec![GgufValue::Array {
            elem: GgufValueType::String,
            values: vec![GgufValue::Bool(true)],
        }],
    };
    assert!(gguf_reason(w.add_metadata("nested", nested_bad).unwrap_err()).contains("bool"));
    for bad in [GgufValue::U32(48), GgufValue::U32(0), GgufValue::U64(64)] {
        let reason = gguf_reason(w.add_metadata("general.alignment", bad).unwrap_err());
        assert!(reason.contains("power of two"), "{reason}");
    }
    // Alignment after a tensor would move offsets already planned.
    w.add_tensor(
        "t",
        &Tensor::zeros([32], (Kind::Float, Device::Cpu)),
        GgmlType::F32,
    )
    .unwrap();
    let reason = gguf_reason(
        w.add_metadata("general.alignment", GgufValue::U32(64))
            .unwrap_err(),
    );
    assert!(reason.contains("before the first tensor"), "{reason}");
    // Nothing rejected was kept.
    assert_eq!(w.metadata_len(), 1);
}

#[test]
fn bad_tensors_are_rejected() {
    let mut w = GgufWriter::new();
    let f = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    w.add_tensor("a", &f(&[2, 32]), GgmlType::F32).unwrap();
    let cases: Vec<(&str, Tensor, GgmlType, &str)> = vec![
        ("a", f(&[32]), GgmlType::F32, "duplicate tensor name `a`"),
        ("", f(&[32]), GgmlType::F32, "empty"),
        (
            "q",
            f(&[2, 31]),
            GgmlType::Q8_0,
            "not a multiple of the Q8_0 block size 32",
        ),
        ("scalar", f(&[]), GgmlType::F32, "has 0 dimensions"),
        ("five", f(&[1, 1, 1, 1, 32]), GgmlType::F32, "has 5 dimensions"),
        ("zero", f(&[0, 32]), GgmlType::F32, "dimension 0"),
        ("k", f(&[256]), GgmlType::Q4_K, "cannot write tensor type Q4_K"),
    ];
    for (name, tensor, ty, want) in cases {
        let reason = gguf_reason(w.add_tensor(name, &tensor, ty).unwrap_err());
        assert!(reason.contains(want), "{name}: {reason}");
    }
    match w.add_tensor(
        "ints",
        &Tensor::zeros([32], (Kind::Int64, Device::Cpu)),
        GgmlType::F32,
    ) {
        Err(Error::Input(InputError::DType {
            arg: "tensor",
            got: Kind::Int64,
            ..
        })) => {}
        other => panic!("expected a dtype error, got {other:?}"),
    }
    let reason = gguf_reason(
        w.add_raw_tensor("raw", &[64], GgmlType::Q4_0, vec![0; 35])
            .unwrap_err(),
    );
    assert!(
        reason.contains("35 bytes given") && reason.contains("needs 36"),
        "{reason}"
    );
    assert_eq!(w.tensor_count(), 1);
}

#[test]
fn unencodable_values_fail_the_write_and_leave_no_file() {
    let dir = TempDir::new("gguf-err");
    for (ty, value, want) in [
        (GgmlType::F16, 70000.0f32, "does not fit F16"),
        (GgmlType::F16, -65520.0, "does not fit F16"),
        (GgmlType::BF16, f32::MAX, "does not fit BF16"),
        (GgmlType::Q8_0, f32::NAN, "cannot be quantized to Q8_0"),
        (GgmlType::Q8_0, f32::INFINITY, "cannot be quantized to Q8_0"),
    ] {
        let mut values = vec![0.5f32; 64];
        values[37] = value;
        let path = dir.path("bad.gguf");
        let mut w = GgufWriter::new();
        w.add_tensor("ok", &Tensor::from_slice(&[1f32; 32]), GgmlType::F32)
            .unwrap();
        w.add_tensor("w", &Tensor::from_slice(&values).reshape([2, 32]), ty)
            .unwrap();
        let e = w.write(&path).unwrap_err();
        let reason = gguf_reason(e);
        assert!(
            reason.contains("tensor `w`") && reason.contains("index 37") && reason.contains(want),
            "{ty}: {reason}"
        );
        assert!(!path.exists() && !dir.path("bad.gguf.partial").exists());
        // The same rule through `quantize`.
        assert!(gguf_reason(quantize(ty, &values).unwrap_err()).contains("index 37"));
    }
    let reason = gguf_reason(quantize(GgmlType::Q8_0, &[0.0; 33]).unwrap_err());
    assert!(reason.contains("33 values are not whole Q8_0 blocks"), "{reason}");
    let reason = gguf_reason(quantize(GgmlType::Q6_K, &[0.0; 256]).unwrap_err());
    assert!(reason.contains("cannot write tensor type Q6_K"), "{reason}");
}

#[test]
fn path_in_a_missing_folder_is_refused() {
    let dir = TempDir::new("gguf-io");
    let path = dir.path("missing/sub/file.gguf");
    let w = GgufWriter::new();
    match w.write(&path) {
        Err(Error::Input(InputError::InvalidPath { path: p, reason, .. })) => {
            assert!(p.contains("file.gguf"), "{p}");
            assert!(reason.contains("create it first"), "{reason}");
        }
        other => panic!("expected InputError::InvalidPath, got {other:?}"),
    }
}

#[test]
fn an_empty_writer_writes_a_valid_file() {
    let dir = TempDir::new("gguf-empty");
    let path = dir.path("empty.gguf");
    assert_eq!(GgufWriter::new().write(&path).unwrap(), 32); // 24 header bytes, padded to 32
    let file = GgufFile::open(&path).unwrap();
    assert!(file.metadata().is_empty() && file.tensors().is_empty());
}
