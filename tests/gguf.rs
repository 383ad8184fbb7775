//! `tch_rpo::gguf`: parsing, dequantization and errors.
//!
//! * Dequantization is compared bit for bit with the `gguf` Python package (numpy code, independent of
//!   ours) through `tests/fixtures/gguf/quants.gguf`, written by `scripts/make_gguf_fixture.py`: every
//!   tensor `X` there has a neighbour `X.expected` (F32) holding gguf-py's dequantization of it.
//! * Hand-built blocks check each format against the block layout written out index by index.
//! * A tiny GGUF writer (below, independent of the reader) builds files with metadata of every type and
//!   corrupts them in specific ways for the error tests.
#![cfg(feature = "gguf")]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use tch::{Device, Kind, Tensor};
use tch_rpo::gguf::{dequantize, GgmlType, GgufFile, GgufValue, GgufValueType};
use tch_rpo::Error;
use tch_rpo::{GgufError, InputError};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf/quants.gguf");

// ---------------------------------------------------------------------------------------------------------
// A minimal GGUF writer (little-endian, as in the GGUF spec).
// ---------------------------------------------------------------------------------------------------------

#[derive(Clone)]
enum Meta {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    /// Element tag and elements.
    Arr(u32, Vec<Meta>),
}

impl Meta {
    fn tag(&self) -> u32 {
        match self {
            Meta::U8(_) => 0,
            Meta::I8(_) => 1,
            Meta::U16(_) => 2,
            Meta::I16(_) => 3,
            Meta::U32(_) => 4,
            Meta::I32(_) => 5,
            Meta::F32(_) => 6,
            Meta::Bool(_) => 7,
            Meta::Str(_) => 8,
            Meta::Arr(..) => 9,
            Meta::U64(_) => 10,
            Meta::I64(_) => 11,
            Meta::F64(_) => 12,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Meta::U8(v) => out.push(*v),
            Meta::I8(v) => out.push(*v as u8),
            Meta::U16(v) => out.extend(v.to_le_bytes()),
            Meta::I16(v) => out.extend(v.to_le_bytes()),
            Meta::U32(v) => out.extend(v.to_le_bytes()),
            Meta::I32(v) => out.extend(v.to_le_bytes()),
            Meta::U64(v) => out.extend(v.to_le_bytes()),
            Meta::I64(v) => out.extend(v.to_le_bytes()),
            Meta::F32(v) => out.extend(v.to_le_bytes()),
            Meta::F64(v) => out.extend(v.to_le_bytes()),
            Meta::Bool(v) => out.push(u8::from(*v)),
            Meta::Str(s) => write_str(out, s),
            Meta::Arr(tag, values) => {
                out.extend(tag.to_le_bytes());
                out.extend((values.len() as u64).to_le_bytes());
                for v in values {
                    v.write(out);
                }
            }
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

struct RawTensor {
    name: String,
    /// ggml order: fastest-varying first.
    dims: Vec<u64>,
    type_id: u32,
    data: Vec<u8>,
    offset_override: Option<u64>,
}

struct Writer {
    version: u32,
    alignment: u64,
    kv: Vec<(String, Meta)>,
    tensors: Vec<RawTensor>,
}

impl Writer {
    fn new() -> Self {
        Writer {
            version: 3,
            alignment: 32,
            kv: vec![("general.architecture".into(), Meta::Str("test".into()))],
            tensors: vec![],
        }
    }

    fn kv(mut self, key: &str, value: Meta) -> Self {
        self.kv.push((key.into(), value));
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> Self {
        self.tensors.push(RawTensor {
            name: name.into(),
            dims: dims.to_vec(),
            type_id,
            data,
            offset_override: None,
        });
        self
    }

    /// The file's bytes, and the absolute offset of the data section.
    fn build(&self) -> (Vec<u8>, usize) {
        let align = |n: usize| n.div_ceil(self.alignment as usize) * self.alignment as usize;
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (key, value) in &self.kv {
            write_str(&mut out, key);
            out.extend(value.tag().to_le_bytes());
            value.write(&mut out);
        }
        let mut offset = 0usize;
        let mut offsets = vec![];
        for t in &self.tensors {
            write_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.type_id.to_le_bytes());
            out.extend(t.offset_override.unwrap_or(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = align(offset + t.data.len());
        }
        let data_start = align(out.len());
        out.resize(data_start, 0);
        for (t, &at) in self.tensors.iter().zip(&offsets) {
            out.resize(data_start + at, 0);
            out.extend(&t.data);
        }
        (out, data_start)
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn temp_file(bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tch-rpo-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.gguf", COUNTER.fetch_add(1, Ordering::SeqCst)));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn gguf_reason(result: tch_rpo::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(Error::Gguf(GgufError::Invalid { path, reason })) => {
            assert!(!path.is_empty());
            reason
        }
        other => panic!("expected GgufError::Invalid, got {other:?}"),
    }
}

/// Opens `bytes` written to a temporary file; the file is removed at once when opening fails, and kept (a
/// few hundred bytes) when it succeeds, since tensors are read from it later.
fn open_bytes(bytes: &[u8]) -> tch_rpo::Result<GgufFile> {
    let path = temp_file(bytes);
    let result = GgufFile::open(&path);
    if result.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    result
}

// Half-precision constants (bit patterns from the IEEE 754 binary16 definition).
const F16_ONE: u16 = 0x3c00;
const F16_HALF: u16 = 0x3800;
const F16_QUARTER: u16 = 0x3400;
const F16_TWO: u16 = 0x4000;

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn tensor_values(t: &Tensor) -> Vec<f32> {
    let flat = t.to_kind(Kind::Float).flatten(0, -1);
    Vec::<f32>::try_from(&flat).unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// The fixture written by gguf-py.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn fixture_header_and_metadata_of_every_type() {
    let file = GgufFile::open(FIXTURE).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    assert_eq!(file.get_str("general.architecture").unwrap(), "fixture");
    let m = file.metadata();
    assert_eq!(m["test.u8"], GgufValue::U8(200));
    assert_eq!(m["test.i8"], GgufValue::I8(-100));
    assert_eq!(m["test.u16"], GgufValue::U16(60000));
    assert_eq!(m["test.i16"], GgufValue::I16(-30000));
    assert_eq!(m["test.u32"], GgufValue::U32(4_000_000_000));
    assert_eq!(m["test.i32"], GgufValue::I32(-2_000_000_000));
    assert_eq!(m["test.u64"], GgufValue::U64(18_000_000_000_000_000_000));
    assert_eq!(m["test.i64"], GgufValue::I64(-9_000_000_000_000_000_000));
    assert_eq!(m["test.f32"], GgufValue::F32(0.1));
    assert_eq!(m["test.f64"], GgufValue::F64(-2.5e-300));
    assert_eq!(m["test.bool_true"], GgufValue::Bool(true));
    assert_eq!(m["test.bool_false"], GgufValue::Bool(false));
    assert_eq!(file.get_str("test.string").unwrap(), "héllo ▁wörld 🦀");
    assert_eq!(file.get_i64_array("test.array_i32").unwrap(), vec![1, -2, 3]);
    assert_eq!(file.get_f32_array("test.array_f32").unwrap(), vec![0.5, -1.25]);
    assert_eq!(
        file.get_str_array("test.array_str").unwrap(),
        vec!["<pad>", "", "▁the"]
    );
    assert_eq!(
        m["test.array_u8"],
        GgufValue::Array {
            elem: GgufValueType::U8,
            values: vec![GgufValue::U8(0), GgufValue::U8(255)]
        }
    );
    // Width conversions of the getters.
    assert_eq!(file.get_u64("test.u8").unwrap(), 200);
    assert_eq!(file.get_i64("test.i32").unwrap(), -2_000_000_000);
    assert!(file.get_u64("test.i8").is_err(), "negative integer is not a u64");
    assert!(file.get_i64("test.u64").is_err(), "u64 beyond i64::MAX");
    assert_eq!(file.get_f64("test.f32").unwrap(), 0.1f32 as f64);
    assert_eq!(file.get_f64("test.u16").unwrap(), 60000.0);
    assert!(file.get_bool("test.bool_true").unwrap());
    let reason = gguf_reason(file.get_str("test.u8"));
    assert!(
        reason.contains("`test.u8`") && reason.contains("expected a string"),
        "{reason}"
    );
    let reason = gguf_reason(file.get_u64("no.such.key"));
    assert!(reason.contains("`no.such.key` is missing"), "{reason}");
    assert!(gguf_reason(file.get_str_array("test.array_i32")).contains("array of strings"));
}

#[test]
fn fixture_dequantization_matches_gguf_py_bit_for_bit() {
    let file = GgufFile::open(FIXTURE).unwrap();
    let mut types_seen = std::collections::BTreeSet::new();
    let mut compared = 0;
    for info in file.tensors().iter().filter(|t| !t.name.ends_with(".expected")) {
        let expected_info = file.tensor_info(&format!("{}.expected", info.name)).unwrap();
        assert_eq!(expected_info.ggml_type, GgmlType::F32);
        assert_eq!(info.shape, expected_info.shape, "{}", info.name);
        let expected = file.tensor_f32(&expected_info.name).unwrap();
        let got = file.tensor_f32(&info.name).unwrap();
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "{} [{i}]: got {g:e}, gguf-py {e:e}",
                info.name
            );
        }
        // Through tch, in PyTorch shape, as f32 and bf16.
        let float = file.tensor(&info.name, Kind::Float, Device::Cpu).unwrap();
        assert_eq!(float.size(), info.shape);
        assert_eq!(float.kind(), Kind::Float);
        assert_eq!(tensor_values(&float), expected);
        let bf16 = file.tensor(&info.name, Kind::BFloat16, Device::Cpu).unwrap();
        assert_eq!(bf16.kind(), Kind::BFloat16);
        let expected_bf16 = Tensor::from_slice(&expected)
            .to_kind(Kind::BFloat16)
            .reshape(&info.shape);
        assert!(bf16.equal(&expected_bf16), "{} as bf16", info.name);
        types_seen.insert(info.ggml_type.name());
        compared += 1;
    }
    let all = [
        "BF16", "F16", "F32", "F64", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0",
    ];
    assert_eq!(types_seen.into_iter().collect::<Vec<_>>(), all);
    assert!(compared >= 17);
    // PyTorch order: the 3-D fixture tensors are [3, 5, 32] (GGUF stores ne = [32, 5, 3]).
    assert_eq!(file.tensor_info("f16").unwrap().shape, vec![3, 5, 32]);
    assert_eq!(file.tensor_info("q8_0.quantized").unwrap().shape, vec![2, 3, 64]);
    let q6 = file.tensor_info("q6_k.random").unwrap();
    assert_eq!((q6.n_elements, q6.n_bytes), (1024, 4 * 210));
}

// ---------------------------------------------------------------------------------------------------------
// Hand-built blocks, expected values written index by index from the block layouts.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn q8_0_block() {
    let mut block = F16_HALF.to_le_bytes().to_vec();
    block.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let expected: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect();
    assert_eq!(dequantize(GgmlType::Q8_0, &block).unwrap(), expected);
}

#[test]
fn q4_0_block() {
    let mut block = F16_TWO.to_le_bytes().to_vec();
    block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    // Value i < 16: low nibble of byte i; value 16 + j: high nibble of byte j. x = d·(q − 8).
    let expected: Vec<f32> = (0..32)
        .map(|i| {
            if i < 16 {
                (i as f32 - 8.0) * 2.0
            } else {
                (15.0 - (i - 16) as f32 - 8.0) * 2.0
            }
        })
        .collect();
    assert_eq!(dequantize(GgmlType::Q4_0, &block).unwrap(), expected);
}

#[test]
fn q5_0_and_q5_1_blocks() {
    let qh: u32 = 0xa5a5_0f01;
    let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
    let q = |i: usize| -> f32 {
        let nibble = if i < 16 { qs[i] & 15 } else { qs[i - 16] >> 4 };
        (u32::from(nibble) | (((qh >> i) & 1) << 4)) as f32
    };
    let mut q5_0 = F16_QUARTER.to_le_bytes().to_vec();
    q5_0.extend(qh.to_le_bytes());
    q5_0.extend(&qs);
    let expected: Vec<f32> = (0..32).map(|i| (q(i) - 16.0) * 0.25).collect();
    assert_eq!(dequantize(GgmlType::Q5_0, &q5_0).unwrap(), expected);

    let mut q5_1 = F16_HALF.to_le_bytes().to_vec();
    q5_1.extend(F16_ONE.to_le_bytes()); // m = 1
    q5_1.extend(qh.to_le_bytes());
    q5_1.extend(&qs);
    let expected: Vec<f32> = (0..32).map(|i| q(i) * 0.5 + 1.0).collect();
    assert_eq!(dequantize(GgmlType::Q5_1, &q5_1).unwrap(), expected);
}

/// Packs 8 six-bit scales and mins the way Q4_K / Q5_K store them.
fn pack_k_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for j in 0..4 {
        out[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
    }
    out
}

#[test]
fn q4_k_and_q5_k_blocks() {
    let sc = [1, 63, 5, 7, 17, 33, 48, 63];
    let m = [0, 1, 2, 62, 16, 31, 47, 5];
    let qs: Vec<u8> = (0..128).map(|i| (i * 37 % 256) as u8).collect();
    let qh: Vec<u8> = (0..32).map(|i| (i * 91 % 256) as u8).collect();
    // Value 32·s + l of sub-block s: nibble (s even: low, odd: high) of qs[32·(s/2) + l].
    let nibble = |s: usize, l: usize| -> f64 {
        let byte = qs[32 * (s / 2) + l];
        f64::from(if s % 2 == 0 { byte & 15 } else { byte >> 4 })
    };
    let (d, dmin) = (1.0, 0.5);
    let mut q4 = [F16_ONE.to_le_bytes(), F16_HALF.to_le_bytes()].concat();
    q4.extend(pack_k_scales(sc, m));
    q4.extend(&qs);
    let expected: Vec<f32> = (0..256)
        .map(|i| {
            let (s, l) = (i / 32, i % 32);
            (d * f64::from(sc[s]) * nibble(s, l) - dmin * f64::from(m[s])) as f32
        })
        .collect();
    assert_eq!(dequantize(GgmlType::Q4_K, &q4).unwrap(), expected);

    let mut q5 = [F16_ONE.to_le_bytes(), F16_HALF.to_le_bytes()].concat();
    q5.extend(pack_k_scales(sc, m));
    q5.extend(&qh);
    q5.extend(&qs);
    let expected: Vec<f32> = (0..256)
        .map(|i| {
            let (s, l) = (i / 32, i % 32);
            let fifth = f64::from((qh[l] >> s) & 1) * 16.0; // bit s of qh[l]
            (d * f64::from(sc[s]) * (nibble(s, l) + fifth) - dmin * f64::from(m[s])) as f32
        })
        .collect();
    assert_eq!(dequantize(GgmlType::Q5_K, &q5).unwrap(), expected);
}

#[test]
fn q6_k_block() {
    let ql: Vec<u8> = (0..128).map(|i| (i * 53 % 256) as u8).collect();
    let qh: Vec<u8> = (0..64).map(|i| (i * 29 % 256) as u8).collect();
    let scales: Vec<i8> = (0..16).map(|i| (i as i8 - 5) * 3).collect();
    let mut block = ql.clone();
    block.extend(&qh);
    block.extend(scales.iter().map(|&s| s as u8));
    block.extend(F16_QUARTER.to_le_bytes());
    let expected: Vec<f32> = (0..256)
        .map(|i| {
            let (half, r) = (i / 128, i % 128);
            let (k, l) = (r / 32, r % 32);
            let low = (ql[64 * half + l + 32 * (k % 2)] >> (4 * (k / 2))) & 15;
            let high = (qh[32 * half + l] >> (2 * k)) & 3;
            let q = f64::from(low | (high << 4)) - 32.0;
            let scale = f64::from(scales[8 * half + l / 16 + 2 * k]);
            (0.25 * scale * q) as f32
        })
        .collect();
    assert_eq!(dequantize(GgmlType::Q6_K, &block).unwrap(), expected);
}

#[test]
fn half_precision_and_bf16_values() {
    // (bits, value) pairs from the binary16 definition: subnormals, extremes, signed zero, infinities.
    let cases: [(u16, f32); 8] = [
        (0x0000, 0.0),
        (0x8000, -0.0),
        (0x0001, 1.0 / 16_777_216.0), // 2^-24
        (0x03ff, 1023.0 / 16_777_216.0),
        (0x7bff, 65504.0),
        (0xc000, -2.0),
        (0x7c00, f32::INFINITY),
        (0xfc00, f32::NEG_INFINITY),
    ];
    let bytes: Vec<u8> = cases.iter().flat_map(|(b, _)| b.to_le_bytes()).collect();
    let got = dequantize(GgmlType::F16, &bytes).unwrap();
    for ((bits, want), got) in cases.iter().zip(&got) {
        assert_eq!(got.to_bits(), want.to_bits(), "f16 {bits:#06x}");
    }
    assert!(dequantize(GgmlType::F16, &0x7e00u16.to_le_bytes()).unwrap()[0].is_nan());
    let bf16 = dequantize(GgmlType::BF16, &[0x80, 0x3f, 0x49, 0xc0]).unwrap(); // 0x3f80, 0xc049
    assert_eq!(bf16, vec![1.0, -3.140_625]);
    assert!(gguf_reason(dequantize(GgmlType::Q8_0, &[0u8; 33])).contains("not whole Q8_0 blocks"));
    assert!(
        gguf_reason(dequantize(GgmlType::Q2_K, &[0u8; 84])).contains("unsupported tensor type Q2_K (id 10)")
    );
}

// ---------------------------------------------------------------------------------------------------------
// Files from the test writer.
// ---------------------------------------------------------------------------------------------------------

fn every_meta_type(w: Writer) -> Writer {
    w.kv("k.u8", Meta::U8(7))
        .kv("k.i8", Meta::I8(-7))
        .kv("k.u16", Meta::U16(65535))
        .kv("k.i16", Meta::I16(-32768))
        .kv("k.u32", Meta::U32(123_456))
        .kv("k.i32", Meta::I32(-5))
        .kv("k.u64", Meta::U64(u64::MAX))
        .kv("k.i64", Meta::I64(i64::MIN))
        .kv("k.f32", Meta::F32(1.5))
        .kv("k.f64", Meta::F64(std::f64::consts::PI))
        .kv("k.bool", Meta::Bool(true))
        .kv("k.str", Meta::Str("a\u{0}b ▁ß".into()))
        .kv("k.empty_str", Meta::Str(String::new()))
        .kv("k.empty_arr", Meta::Arr(6, vec![]))
        .kv(
            "k.nested",
            Meta::Arr(
                9,
                vec![Meta::Arr(0, vec![Meta::U8(1), Meta::U8(2)]), Meta::Arr(0, vec![])],
            ),
        )
        .kv(
            "k.strs",
            Meta::Arr(8, vec![Meta::Str("x".into()), Meta::Str("yz".into())]),
        )
}

fn small_model() -> Writer {
    let q8_block = |d: u16| {
        let mut b = d.to_le_bytes().to_vec();
        b.extend((0..32).map(|i| i as u8));
        b
    };
    every_meta_type(Writer::new())
        .tensor(
            "embd",
            &[4, 3],
            0,
            f32_bytes(&(0..12).map(|i| i as f32).collect::<Vec<_>>()),
        )
        .tensor(
            "half",
            &[2],
            1,
            [F16_HALF.to_le_bytes(), F16_TWO.to_le_bytes()].concat(),
        )
        .tensor("bf", &[1, 1, 2], 30, vec![0x80, 0x3f, 0x00, 0xc0])
        .tensor(
            "q8",
            &[64, 1],
            8,
            [q8_block(F16_ONE), q8_block(F16_HALF)].concat(),
        )
}

#[test]
fn writer_file_parses_metadata_and_tensors() {
    for version in [2u32, 3] {
        let mut w = small_model();
        w.version = version;
        let (bytes, data_start) = w.build();
        let file = open_bytes(&bytes).unwrap();
        assert_eq!(file.version(), version);
        assert_eq!(file.alignment(), 32);
        assert_eq!(file.data_offset(), data_start as u64);
        let m = file.metadata();
        assert_eq!(m.len(), 17);
        assert_eq!(m["k.u16"], GgufValue::U16(65535));
        assert_eq!(m["k.i16"], GgufValue::I16(-32768));
        assert_eq!(file.get_u64("k.u64").unwrap(), u64::MAX);
        assert_eq!(file.get_i64("k.i64").unwrap(), i64::MIN);
        assert_eq!(file.get_f64("k.f64").unwrap(), std::f64::consts::PI);
        assert_eq!(file.get_str("k.str").unwrap(), "a\u{0}b ▁ß");
        assert_eq!(file.get_str("k.empty_str").unwrap(), "");
        assert_eq!(
            m["k.empty_arr"],
            GgufValue::Array {
                elem: GgufValueType::F32,
                values: vec![]
            }
        );
        let nested = file.get_array("k.nested").unwrap();
        assert_eq!(nested.len(), 2);
        assert_eq!(
            nested[0].as_array().unwrap(),
            &[GgufValue::U8(1), GgufValue::U8(2)]
        );
        assert_eq!(file.get_str_array("k.strs").unwrap(), vec!["x", "yz"]);

        let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["embd", "half", "bf", "q8"]);
        let embd = file.tensor_info("embd").unwrap();
        assert_eq!(
            (embd.shape.clone(), embd.ggml_type, embd.offset, embd.n_bytes),
            (vec![3, 4], GgmlType::F32, 0, 48)
        );
        assert_eq!(
            file.tensor_info("half").unwrap().offset,
            64,
            "offsets are aligned to 32"
        );
        assert_eq!(file.tensor_info("bf").unwrap().shape, vec![2, 1, 1]);
        assert_eq!(file.tensor_info("q8").unwrap().shape, vec![1, 64]);

        let t = file.tensor("embd", Kind::Float, Device::Cpu).unwrap();
        assert_eq!(t.size(), [3, 4]);
        // Row-major [3, 4]: element [r, c] is the value at flat index 4r + c.
        assert_eq!(t.double_value(&[2, 1]), 9.0);
        assert_eq!(
            tensor_values(&file.tensor("half", Kind::Double, Device::Cpu).unwrap()),
            vec![0.5, 2.0]
        );
        assert_eq!(
            tensor_values(&file.tensor("bf", Kind::Half, Device::Cpu).unwrap()),
            vec![1.0, -2.0]
        );
        let q8 = file.tensor_f32("q8").unwrap();
        let expected: Vec<f32> = (0..64)
            .map(|i| if i < 32 { i as f32 } else { (i - 32) as f32 * 0.5 })
            .collect();
        assert_eq!(q8, expected);
        assert_eq!(file.tensor_bytes("q8").unwrap().len(), 68);
    }
}

#[test]
fn custom_alignment_is_honoured() {
    let mut w = small_model().kv("general.alignment", Meta::U32(256));
    w.alignment = 256;
    let (bytes, data_start) = w.build();
    assert_eq!(data_start % 256, 0);
    let file = open_bytes(&bytes).unwrap();
    assert_eq!((file.alignment(), file.data_offset()), (256, data_start as u64));
    assert_eq!(file.tensor_info("q8").unwrap().offset, 3 * 256);
    assert_eq!(file.tensor_f32("half").unwrap(), vec![0.5, 2.0]);

    let (bytes, _) = small_model().kv("general.alignment", Meta::U32(48)).build();
    assert!(gguf_reason(open_bytes(&bytes)).contains("power of two"));
}

#[test]
fn large_tensor_crosses_chunk_boundaries() {
    // 4 Mi + 2 blocks of Q8_0 values: more than one 4 Mi-value chunk, the last chunk partial.
    let n_blocks = (1usize << 22) / 32 + 2;
    let mut data = Vec::with_capacity(n_blocks * 34);
    for b in 0..n_blocks {
        data.extend([F16_ONE, F16_HALF, F16_QUARTER][b % 3].to_le_bytes());
        data.extend((0..32).map(|i| ((i + b) % 256) as u8));
    }
    let (bytes, _) = Writer::new()
        .tensor("big", &[64, n_blocks as u64 / 2], 8, data)
        .build();
    let path = temp_file(&bytes);
    let file = GgufFile::open(&path).unwrap();
    let expected: Vec<f32> = (0..n_blocks * 32)
        .map(|i| {
            let (b, j) = (i / 32, i % 32);
            ((j + b) % 256) as u8 as i8 as f32 * [1.0, 0.5, 0.25][b % 3]
        })
        .collect();
    let t = file.tensor("big", Kind::Float, Device::Cpu).unwrap();
    assert_eq!(t.size(), [n_blocks as i64 / 2, 64]);
    assert_eq!(tensor_values(&t), expected);
    let bf = file.tensor("big", Kind::BFloat16, Device::Cpu).unwrap();
    assert!(bf.equal(
        &Tensor::from_slice(&expected)
            .to_kind(Kind::BFloat16)
            .reshape([n_blocks as i64 / 2, 64])
    ));
    std::fs::remove_file(path).unwrap();
}

// ---------------------------------------------------------------------------------------------------------
// Errors: typed, with the path, never a panic.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn every_truncation_is_an_error() {
    let (bytes, data_start) = small_model().build();
    for cut in 0..bytes.len() {
        let reason = gguf_reason(open_bytes(&bytes[..cut]));
        assert!(reason.contains("truncated"), "cut at {cut}: {reason}");
        if cut >= data_start {
            assert!(
                reason.contains("tensor `"),
                "cut at {cut} (in the data): {reason}"
            );
        }
    }
    assert!(open_bytes(&bytes).is_ok());
}

#[test]
fn the_fixture_truncated_is_an_error() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    for cut in [0, 3, 7, 23, 100, 1000, 2000, bytes.len() - 1] {
        assert!(
            gguf_reason(open_bytes(&bytes[..cut])).contains("truncated"),
            "cut at {cut}"
        );
    }
}

#[test]
fn bad_magic_and_versions() {
    let (mut bytes, _) = small_model().build();
    bytes[0] = b'g';
    assert!(gguf_reason(open_bytes(&bytes)).contains("not a GGUF file"));
    for (version, hint) in [
        (1u32, "v1 is obsolete"),
        (4, "expected 2 or 3"),
        (3u32.swap_bytes(), "big-endian"),
    ] {
        let mut w = small_model();
        w.version = version;
        let reason = gguf_reason(open_bytes(&w.build().0));
        assert!(
            reason.contains("unsupported GGUF version") && reason.contains(hint),
            "{reason}"
        );
    }
    let missing = GgufFile::open("/nonexistent/model.gguf");
    assert!(matches!(missing, Err(Error::Io { .. })));
}

#[test]
fn unsupported_and_unknown_tensor_types() {
    // Q2_K is a known type: the file opens, the layout is checked, but it cannot be dequantized.
    let (bytes, _) = small_model().tensor("q2", &[256], 10, vec![0; 84]).build();
    let file = open_bytes(&bytes).unwrap();
    assert_eq!(file.tensor_info("q2").unwrap().ggml_type, GgmlType::Q2_K);
    let reason = gguf_reason(file.tensor("q2", Kind::Float, Device::Cpu));
    assert!(
        reason.contains("unsupported tensor type Q2_K (id 10) for tensor `q2`"),
        "{reason}"
    );
    assert!(gguf_reason(file.tensor_f32("q2")).contains("Q2_K"));
    assert_eq!(file.tensor_bytes("q2").unwrap(), vec![0; 84]);
    // Id 99 is not a ggml type.
    let (bytes, _) = small_model().tensor("odd", &[4], 99, vec![0; 16]).build();
    let reason = gguf_reason(open_bytes(&bytes));
    assert!(
        reason.contains("tensor `odd` has unknown ggml type id 99"),
        "{reason}"
    );
    // Unknown metadata value type.
    let (mut bytes, _) = Writer::new().build();
    bytes[24 + 8 + "general.architecture".len()] = 13;
    assert!(gguf_reason(open_bytes(&bytes)).contains("unknown value type 13"));
}

#[test]
fn missing_tensor_lists_close_names() {
    let (bytes, _) = small_model().build();
    let file = open_bytes(&bytes).unwrap();
    let reason = gguf_reason(file.tensor("q9", Kind::Float, Device::Cpu));
    assert!(
        reason.contains("no tensor named `q9`") && reason.contains("4 tensors"),
        "{reason}"
    );
    assert!(reason.contains("`q8`"), "{reason}");
    assert!(!file.has_tensor("q9") && file.has_tensor("q8"));
}

#[test]
fn wrong_output_kind() {
    let (bytes, _) = small_model().build();
    let file = open_bytes(&bytes).unwrap();
    assert!(matches!(
        file.tensor("embd", Kind::Int64, Device::Cpu),
        Err(Error::Input(InputError::DType { arg: "kind", .. }))
    ));
}

#[test]
fn bad_layouts() {
    // Misaligned offset.
    let mut w = small_model();
    w.tensors[1].offset_override = Some(50);
    assert!(gguf_reason(open_bytes(&w.build().0)).contains("not a multiple of the alignment 32"));
    // Offset beyond the end of the file.
    let mut w = small_model();
    w.tensors[1].offset_override = Some(1 << 40);
    assert!(gguf_reason(open_bytes(&w.build().0)).contains("tensor `half`"));
    // Row length not a multiple of the block size.
    let (bytes, _) = Writer::new().tensor("q", &[16, 2], 8, vec![0; 34]).build();
    assert!(gguf_reason(open_bytes(&bytes)).contains("not a multiple of the block size 32"));
    // Too many dimensions; dimensions whose product overflows.
    let (bytes, _) = Writer::new().tensor("t", &[1, 1, 1, 1, 1], 0, vec![0; 4]).build();
    assert!(gguf_reason(open_bytes(&bytes)).contains("5 dimensions"));
    let (bytes, _) = Writer::new().tensor("t", &[1 << 40, 1 << 40], 0, vec![]).build();
    assert!(gguf_reason(open_bytes(&bytes)).contains("absurd dimensions"));
    // Duplicate key, duplicate tensor name, bool that is neither 0 nor 1.
    let (bytes, _) = small_model().kv("k.u8", Meta::U8(1)).build();
    assert!(gguf_reason(open_bytes(&bytes)).contains("duplicate metadata key `k.u8`"));
    let (bytes, _) = small_model().tensor("half", &[2], 1, vec![0; 4]).build();
    assert!(gguf_reason(open_bytes(&bytes)).contains("duplicate tensor name `half`"));
    let (mut bytes, _) = Writer::new().kv("b", Meta::U8(2)).build();
    // Header (24 bytes), the architecture entry, then key "b" and its type tag.
    let tag_at = 24 + (8 + "general.architecture".len() + 4 + 8 + "test".len()) + 8 + 1;
    assert_eq!(bytes[tag_at], 0, "the u8 tag");
    bytes[tag_at] = 7;
    assert!(gguf_reason(open_bytes(&bytes)).contains("bool with byte 2"));
}

#[test]
fn absurd_counts_do_not_allocate() {
    let (base, _) = Writer::new().kv("a", Meta::Arr(4, vec![Meta::U32(1)])).build();
    let patch = |at: usize, value: u64| {
        let mut bytes = base.clone();
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        gguf_reason(open_bytes(&bytes))
    };
    assert!(patch(8, u64::MAX).contains("tensor infos"), "tensor count");
    assert!(patch(16, 1 << 40).contains("metadata entries"), "metadata count");
    assert!(patch(24, u64::MAX).contains("claims"), "key length");
    // The array: after the first entry (key, tag, value) come key "a", tag 9, element tag, length.
    let first = 24 + 8 + "general.architecture".len() + 4 + 8 + "test".len();
    let len_at = first + 8 + 1 + 4 + 4;
    assert_eq!(base[len_at], 1, "the array length field");
    assert!(patch(len_at, u64::MAX / 2).contains("elements of metadata array `a`"));
}

#[test]
fn error_message_names_the_file() {
    let (mut bytes, _) = small_model().build();
    bytes[1] = 0;
    let path = temp_file(&bytes);
    let err = GgufFile::open(&path).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("GGUF {}:", Path::new(&path).display())),
        "{err}"
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn ggml_types_parse_from_their_names_in_any_case() {
    assert_eq!("q8_0".parse::<GgmlType>().unwrap(), GgmlType::Q8_0);
    assert_eq!("Q4_K".parse::<GgmlType>().unwrap(), GgmlType::Q4_K);
    assert_eq!("bf16".parse::<GgmlType>().unwrap(), GgmlType::BF16);
    // ALL lists each id ggml defines once, and each name parses back to its type.
    let defined: Vec<GgmlType> = (0..256).filter_map(GgmlType::from_id).collect();
    assert_eq!(GgmlType::ALL, defined.as_slice());
    for &ty in GgmlType::ALL {
        assert_eq!(ty.name().to_lowercase().parse::<GgmlType>().unwrap(), ty);
    }
    for bad in ["q9_0", "", "f32 "] {
        let err = bad.parse::<GgmlType>().unwrap_err().to_string();
        assert!(
            err.contains("ggml type") && err.contains(&format!("{bad:?}")),
            "{err}"
        );
    }
}
