//! Corrupt GGUF files: a small Gemma 3 saved with `save_gguf` (F32, F16, BF16, Q8_0), its tensor-info table
//! mutated systematically (every tensor's type id to every other known id and a few unknown ones, every
//! dimension ±1 / doubled / zeroed, the dimension count changed, offsets shifted or swapped) and random
//! header bytes changed; every mutated file must be refused by `GgufFile::open` + `Gemma::load` with a typed error, or
//! load and give finite logits. Also: non-finite weights are refused when loading and when saving, in every
//! format.
//!
//! The header is parsed here independently of the crate's reader (a few lines over the GGUF layout), to
//! find the byte position of each field.
#![cfg(feature = "gemma")]

mod export_support;

use export_support::{TempDir, SEED_LOCK};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tch_rpo::gguf::{GgmlType, GgufFile, GgufWriter};
use tch_rpo::models::gemma::export::{save_gguf, save_pretrained, TokenizerSource};
use tch_rpo::models::gemma::{Gemma, GemmaConfig, LoadOptions, WeightSource};
use tch_rpo::train::var_store_parameters;
use tch_rpo::Error;
use tch_rpo::{GgufError, InputError, ShapeMismatch, WeightsError};

/// A small Gemma 3: V = 96, H = 64, 2 sliding layers, 2 query heads × 32, 1 key/value head; every row
/// length a multiple of 32, so a Q8_0 export quantizes every matrix.
fn small_config() -> GemmaConfig {
    let text = r#"{
        "model_type": "gemma3_text", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
        "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "max_position_embeddings": 64,
        "query_pre_attn_scalar": 256, "sliding_window": 4,
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1
    }"#;
    GemmaConfig::from_json_str(text, Path::new("small")).unwrap()
}

/// Seeded parameters: matrices N(0, 0.05²), norm weights N(0, 0.3²).
fn small_parameters() -> Vec<(String, Tensor)> {
    let _guard = SEED_LOCK.lock().unwrap();
    tch::manual_seed(20261206);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let _model = Gemma::random(&vs.root(), &small_config()).unwrap();
    tch::no_grad(|| {
        for (name, mut var) in var_store_parameters(&vs) {
            let std = if name.ends_with("norm.weight") { 0.3 } else { 0.05 };
            var.copy_(&(Tensor::randn(var.size(), (Kind::Float, Device::Cpu)) * std));
        }
    });
    var_store_parameters(&vs)
        .into_iter()
        .map(|(name, t)| (name, t.detach().copy()))
        .collect()
}

/// Token ids `[1, 8]` inside the vocabulary, and their all-ones mask.
fn inputs() -> (Tensor, Tensor) {
    let ids = Tensor::from_slice(&[2i64, 17, 5, 90, 33, 64, 8, 41]).reshape([1, 8]);
    (ids.shallow_clone(), ids.ones_like())
}

/// Opens `path`, loads it with `Gemma::load` and runs it on [`inputs`]: the logits, or the error.
fn load_logits(path: &Path) -> tch_rpo::Result<Tensor> {
    let file = GgufFile::open(path)?;
    let (_vs, model) = Gemma::load(
        WeightSource::Gguf(&file),
        &LoadOptions::new(Device::Cpu, Kind::Float),
    )?;
    let (ids, mask) = inputs();
    model.forward(&ids, &mask)
}

/// Where one tensor's fields sit in the header.
#[derive(Debug, Clone)]
struct InfoFields {
    name: String,
    n_dims_at: usize,
    dims: Vec<u64>,
    dims_at: Vec<usize>,
    type_id: u32,
    type_at: usize,
    offset: u64,
    offset_at: usize,
}

/// The header's tensor infos and the position where the header ends (before the padding).
struct Header {
    tensors: Vec<InfoFields>,
    end: usize,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        out
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let len = self.u64() as usize;
        String::from_utf8(self.take(len).to_vec()).unwrap()
    }
    /// Skips a metadata value of type `tag` (the GGUF value tags 0 … 12).
    fn skip_value(&mut self, tag: u32) {
        match tag {
            0 | 1 | 7 => self.at += 1,
            2 | 3 => self.at += 2,
            4..=6 => self.at += 4,
            10..=12 => self.at += 8,
            8 => {
                self.string();
            }
            9 => {
                let elem = self.u32();
                for _ in 0..self.u64() {
                    self.skip_value(elem);
                }
            }
            other => panic!("unknown value tag {other}"),
        }
    }
}

fn parse_header(bytes: &[u8]) -> Header {
    let mut c = Cursor { bytes, at: 0 };
    assert_eq!(c.take(4), b"GGUF");
    assert_eq!(c.u32(), 3);
    let n_tensors = c.u64();
    let n_kv = c.u64();
    for _ in 0..n_kv {
        c.string();
        let tag = c.u32();
        c.skip_value(tag);
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = c.string();
        let n_dims_at = c.at;
        let n_dims = c.u32();
        let mut dims = Vec::new();
        let mut dims_at = Vec::new();
        for _ in 0..n_dims {
            dims_at.push(c.at);
            dims.push(c.u64());
        }
        let type_at = c.at;
        let type_id = c.u32();
        let offset_at = c.at;
        let offset = c.u64();
        tensors.push(InfoFields {
            name,
            n_dims_at,
            dims,
            dims_at,
            type_id,
            type_at,
            offset,
            offset_at,
        });
    }
    Header { tensors, end: c.at }
}

/// What a mutation changed, for the assertions on which ones may load.
#[derive(Debug, Clone, PartialEq)]
enum Class {
    /// A tensor's type id, from one type to another (or an unknown id).
    Type { from: u32, to: u32 },
    /// A dimension, the dimension count or an offset of a tensor info.
    Layout,
    /// A random byte anywhere in the header (metadata included).
    HeaderByte,
}

struct Mutation {
    what: String,
    class: Class,
    /// Bytes written at a position.
    patch: Vec<(usize, Vec<u8>)>,
}

/// Every mutation of the tensor-info table of `header`, then `random` random header bytes (seeded).
fn mutations(bytes: &[u8], header: &Header, random: usize, seed: u64) -> Vec<Mutation> {
    let mut out = Vec::new();
    for (index, t) in header.tensors.iter().enumerate() {
        // Every other known type id, and ids ggml never assigned or has retired.
        let ids = (0u32..64).filter(|&id| GgmlType::from_id(id).is_some());
        for to in ids.chain([4, 31, 1000, u32::MAX]) {
            if to != t.type_id {
                out.push(Mutation {
                    what: format!("{}: type {} → {to}", t.name, t.type_id),
                    class: Class::Type { from: t.type_id, to },
                    patch: vec![(t.type_at, to.to_le_bytes().to_vec())],
                });
            }
        }
        for (d, (&dim, &at)) in t.dims.iter().zip(&t.dims_at).enumerate() {
            for new in [dim + 1, dim - 1, 2 * dim, 0, u64::MAX] {
                out.push(Mutation {
                    what: format!("{}: dimension {d} {dim} → {new}", t.name),
                    class: Class::Layout,
                    patch: vec![(at, new.to_le_bytes().to_vec())],
                });
            }
        }
        let n_dims = t.dims.len() as u32;
        for new in [0, n_dims - 1, n_dims + 1, 5] {
            if new != n_dims {
                out.push(Mutation {
                    what: format!("{}: dimension count {n_dims} → {new}", t.name),
                    class: Class::Layout,
                    patch: vec![(t.n_dims_at, new.to_le_bytes().to_vec())],
                });
            }
        }
        let mut offsets = vec![
            t.offset + 1,
            t.offset + 32,
            t.offset + 64,
            t.offset.wrapping_sub(32),
            0,
            u64::MAX - 31,
        ];
        if let Some(next) = header.tensors.get(index + 1) {
            offsets.push(next.offset);
        }
        if index > 0 {
            offsets.push(header.tensors[index - 1].offset);
        }
        for new in offsets {
            if new != t.offset {
                out.push(Mutation {
                    what: format!("{}: offset {} → {new}", t.name, t.offset),
                    class: Class::Layout,
                    patch: vec![(t.offset_at, new.to_le_bytes().to_vec())],
                });
            }
        }
        // Two tensors' offsets swapped.
        if let Some(next) = header.tensors.get(index + 1) {
            out.push(Mutation {
                what: format!("{} and {}: offsets swapped", t.name, next.name),
                class: Class::Layout,
                patch: vec![
                    (t.offset_at, next.offset.to_le_bytes().to_vec()),
                    (next.offset_at, t.offset.to_le_bytes().to_vec()),
                ],
            });
        }
    }
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    for _ in 0..random {
        let at = next() as usize % header.end;
        let mut byte = next() as u8;
        if byte == bytes[at] {
            byte ^= 0x5a;
        }
        out.push(Mutation {
            what: format!("header byte {at}: {:#04x} → {byte:#04x}", bytes[at]),
            class: Class::HeaderByte,
            patch: vec![(at, vec![byte])],
        });
    }
    out
}

#[derive(Debug, Default)]
struct Counts {
    tried: usize,
    refused: usize,
    loaded_same: usize,
    loaded_finite: usize,
    loaded_non_finite: Vec<String>,
    panicked: Vec<String>,
    /// Tensor-info mutations that loaded, other than an F16 ↔ BF16 type swap.
    unexpected_loads: Vec<String>,
    /// F16 ↔ BF16 type swaps that loaded (undetectable: same size).
    loaded_type_swaps: usize,
    /// Random header bytes that loaded (e.g. a changed name, ε or RoPE θ).
    loaded_header_bytes: usize,
}

/// Whether a typed error is one a corrupt file may give (not `Torch`: libtorch failing on a corrupt file
/// means a check is missing).
fn is_file_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Gguf(GgufError::Invalid { .. })
            | Error::Input(InputError::Config { .. })
            | Error::Weights(WeightsError::Parameters { .. })
            | Error::Weights(WeightsError::TensorType { .. })
            | Error::Weights(WeightsError::UnsupportedArchitecture { .. })
            | Error::Weights(WeightsError::NonFinite { .. })
            | Error::Input(InputError::TokenOutOfRange { .. })
            | Error::OutOfMemory { .. }
    )
}

fn run_mutations(ty: GgmlType, dir: &TempDir, counts: &mut Counts) {
    let (path, original, header) = saved(dir, ty);
    let reference = load_logits(&path).unwrap();
    assert!(bool::try_from(reference.isfinite().all()).unwrap());
    let mutated_path = dir.path(&format!("mutated-{ty}.gguf"));
    for m in mutations(&original, &header, 150, 7 + ty.id() as u64) {
        let mut bytes = original.clone();
        for (at, patch) in &m.patch {
            bytes[*at..*at + patch.len()].copy_from_slice(patch);
        }
        std::fs::write(&mutated_path, &bytes).unwrap();
        counts.tried += 1;
        let what = format!("{ty} file, {}", m.what);
        match catch_unwind(AssertUnwindSafe(|| load_logits(&mutated_path))) {
            Err(_) => counts.panicked.push(what),
            Ok(Err(e)) => {
                assert!(is_file_error(&e), "{what}: unexpected error kind {e:?}");
                counts.refused += 1;
            }
            Ok(Ok(logits)) => {
                if !bool::try_from(logits.isfinite().all()).unwrap() {
                    counts.loaded_non_finite.push(what.clone());
                } else if logits.equal(&reference) {
                    counts.loaded_same += 1;
                } else {
                    counts.loaded_finite += 1;
                }
                let f16_bf16 = [GgmlType::F16.id(), GgmlType::BF16.id()];
                match m.class {
                    Class::HeaderByte => counts.loaded_header_bytes += 1,
                    Class::Type { from, to } if f16_bf16.contains(&from) && f16_bf16.contains(&to) => {
                        counts.loaded_type_swaps += 1
                    }
                    _ => counts.unexpected_loads.push(what),
                }
            }
        }
    }
}

/// Issue 18: of the mutations of a `save_gguf` file, 15 loaded and gave non-finite logits (a type or a
/// dimension changed in the tensor-info table, so other bytes were read as weights). Now each is refused
/// with a typed error (never a panic, never `Error::Torch`), or loads with finite logits; of the
/// tensor-info mutations only an F16 ↔ BF16 swap of a matrix's type may load: both are 2 bytes a value,
/// so nothing in the layout can tell them apart (the values are then wrong but finite).
#[test]
fn mutated_headers_are_refused_or_load_with_finite_logits() {
    let dir = TempDir::new("gguf-mutations");
    let mut counts = Counts::default();
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
        run_mutations(ty, &dir, &mut counts);
    }
    eprintln!(
        "mutations tried {}, refused {}, loaded with the same logits {}, loaded with other finite logits \
         {}, loaded with non-finite logits {}, panicked {}; of those loaded: F16 ↔ BF16 type swaps {}, random \
         header bytes {}, other tensor-info mutations {}",
        counts.tried,
        counts.refused,
        counts.loaded_same,
        counts.loaded_finite,
        counts.loaded_non_finite.len(),
        counts.panicked.len(),
        counts.loaded_type_swaps,
        counts.loaded_header_bytes,
        counts.unexpected_loads.len()
    );
    assert!(counts.panicked.is_empty(), "panicked: {:#?}", counts.panicked);
    assert!(
        counts.loaded_non_finite.is_empty(),
        "{} loaded with non-finite logits: {:#?}",
        counts.loaded_non_finite.len(),
        counts.loaded_non_finite
    );
    assert!(
        counts.unexpected_loads.is_empty(),
        "tensor-info mutations other than an F16 ↔ BF16 swap loaded: {:#?}",
        counts.unexpected_loads
    );
    assert!(counts.tried > 4000 && counts.refused > counts.tried * 9 / 10);
}

/// The byte position of the tensor info named `name` in `bytes`.
fn info<'h>(header: &'h Header, name: &str) -> &'h InfoFields {
    header.tensors.iter().find(|t| t.name == name).unwrap()
}

fn saved(dir: &TempDir, ty: GgmlType) -> (std::path::PathBuf, Vec<u8>, Header) {
    let path = dir.path(&format!("saved-{ty}.gguf"));
    save_gguf(
        &path,
        &small_config(),
        &small_parameters(),
        ty,
        TokenizerSource::None,
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header = parse_header(&bytes);
    (path, bytes, header)
}

/// A norm weight (F32 in every export and in llama.cpp's files) retyped as F16 read half its bytes as
/// half-precision values; it is refused for its type, naming the tensor. (The last tensor, whose smaller
/// size moves no other tensor off its place, so the layout check cannot see it.)
#[test]
fn a_norm_weight_of_another_type_is_refused() {
    let dir = TempDir::new("gguf-norm-type");
    let (path, mut bytes, header) = saved(&dir, GgmlType::F16);
    let norm = info(&header, "output_norm.weight");
    assert_eq!(header.tensors.last().unwrap().name, "output_norm.weight");
    bytes[norm.type_at..norm.type_at + 4].copy_from_slice(&GgmlType::F16.id().to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    match load_logits(&path) {
        Err(Error::Weights(WeightsError::TensorType { name, got, .. })) => {
            assert_eq!((name.as_str(), got.as_str()), ("output_norm.weight", "F16"))
        }
        other => panic!("expected WeightsError::TensorType, got {other:?}"),
    }
}

/// A GGUF file whose tensors do not match its config is refused with one parameter-set error listing
/// every difference (here a missing FFN matrix, a tensor no Gemma 3 has and a reshaped norm), before
/// anything is allocated.
#[test]
fn a_gguf_with_other_tensors_lists_every_mismatch() {
    let dir = TempDir::new("gguf-parameter-set");
    let (path, _, _) = saved(&dir, GgmlType::F32);
    let file = GgufFile::open(&path).unwrap();
    let mut writer = GgufWriter::new();
    for (key, value) in file.metadata() {
        if !key.starts_with("general.alignment") {
            writer.add_metadata(key.clone(), value.clone()).unwrap();
        }
    }
    for info in file.tensors() {
        let tensor = file.tensor(&info.name, Kind::Float, Device::Cpu).unwrap();
        match info.name.as_str() {
            "blk.1.ffn_up.weight" => {}
            "output_norm.weight" => writer
                .add_tensor(info.name.clone(), &tensor.narrow(0, 0, 32), GgmlType::F32)
                .unwrap(),
            _ => writer
                .add_tensor(info.name.clone(), &tensor, GgmlType::F32)
                .unwrap(),
        }
    }
    writer
        .add_tensor(
            "blk.0.extra_norm.weight",
            &Tensor::zeros([64], (Kind::Float, Device::Cpu)),
            GgmlType::F32,
        )
        .unwrap();
    let other = dir.path("other-tensors.gguf");
    writer.write(&other).unwrap();
    match load_logits(&other) {
        Err(Error::Weights(WeightsError::Parameters { origin, mismatch, .. })) => {
            assert_eq!(origin, other.display().to_string());
            assert_eq!(mismatch.missing, ["blk.1.ffn_up.weight"]);
            assert_eq!(mismatch.unexpected, ["blk.0.extra_norm.weight"]);
            assert_eq!(
                mismatch.mismatched,
                [ShapeMismatch {
                    name: "output_norm.weight".into(),
                    expected: vec![64],
                    got: vec![32],
                }]
            );
        }
        other => panic!("expected WeightsError::Parameters, got {other:?}"),
    }
}

/// A matrix retyped so that its data is shorter or longer than the space it was written in (F16 → Q8_0
/// is 34 bytes per 32 values instead of 64) reads the wrong bytes; ggml refuses a tensor that does not
/// start where the previous one's padded data ends, and so does the reader now.
#[test]
fn tensors_must_be_laid_out_back_to_back() {
    let dir = TempDir::new("gguf-layout");
    let (path, original, header) = saved(&dir, GgmlType::F16);
    let up = info(&header, "blk.0.ffn_up.weight");
    let mut bytes = original.clone();
    bytes[up.type_at..up.type_at + 4].copy_from_slice(&GgmlType::Q8_0.id().to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let e = load_logits(&path).unwrap_err();
    assert!(
        matches!(&e, Error::Gguf(GgufError::Invalid { reason, .. }) if reason.contains("ggml's layout")),
        "{e}"
    );
    // Two same-size tensors' offsets swapped: each reads the other's weights.
    let (q, k) = (
        info(&header, "blk.0.attn_k.weight"),
        info(&header, "blk.0.attn_v.weight"),
    );
    let mut bytes = original.clone();
    bytes[q.offset_at..q.offset_at + 8].copy_from_slice(&k.offset.to_le_bytes());
    bytes[k.offset_at..k.offset_at + 8].copy_from_slice(&q.offset.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let e = load_logits(&path).unwrap_err();
    assert!(
        matches!(&e, Error::Gguf(GgufError::Invalid { reason, .. }) if reason.contains("blk.0.attn_k.weight")),
        "{e}"
    );
}

/// A NaN or an infinity in a file's weights is refused when loading, naming the tensor.
#[test]
fn non_finite_weights_in_a_file_are_refused() {
    let dir = TempDir::new("gguf-nan-load");
    let (path, original, header) = saved(&dir, GgmlType::F32);
    let data_start = header.end.div_ceil(32) * 32;
    for (value, bits) in [("NaN", 0x7fc0_0000u32), ("inf", 0x7f80_0000)] {
        let up = info(&header, "blk.1.ffn_up.weight");
        let at = data_start + up.offset as usize + 4 * 70;
        let mut bytes = original.clone();
        bytes[at..at + 4].copy_from_slice(&bits.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        match load_logits(&path) {
            Err(Error::Weights(WeightsError::NonFinite {
                tensor,
                count,
                index,
                value: v,
                ..
            })) => {
                assert_eq!((tensor.as_str(), count, index), ("blk.1.ffn_up.weight", 1, 70));
                assert_eq!(format!("{v}"), value);
            }
            other => panic!("{value}: expected WeightsError::NonFinite, got {other:?}"),
        }
    }
}

/// Issue 18: an F16 export wrote NaN weights while a Q8_0 export refused them. Every format (and the
/// Hugging Face folder in every dtype) now refuses NaN and ±inf with the same error, naming the
/// parameter, and writes nothing.
#[test]
fn non_finite_weights_are_refused_by_every_export() {
    let dir = TempDir::new("gguf-nan-save");
    let config = small_config();
    let name = "model.layers.1.mlp.down_proj.weight";
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut params = small_parameters();
        let target = params.iter_mut().find(|(n, _)| n == name).unwrap();
        let _ = target.1.get(3).get(5).fill_(bad);
        let check = |e: Error, what: &str| match e {
            Error::Weights(WeightsError::NonFinite {
                tensor, count, index, ..
            }) => assert_eq!((tensor.as_str(), count, index), (name, 1, 3 * 64 + 5), "{what}"),
            other => panic!("{what}: expected WeightsError::NonFinite, got {other:?}"),
        };
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
            let path = dir.path(&format!("bad-{ty}.gguf"));
            let e = save_gguf(&path, &config, &params, ty, TokenizerSource::None).unwrap_err();
            check(e, &format!("{bad} as {ty}"));
            assert!(!path.exists(), "{bad} as {ty}: a file was written");
        }
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            let folder = dir.path(&format!("bad-{kind:?}"));
            let e = save_pretrained(&folder, &config, &params, kind, TokenizerSource::None).unwrap_err();
            check(e, &format!("{bad} as {kind:?} safetensors"));
            assert!(!folder.join("model.safetensors").exists());
        }
    }
}

/// The same model with finite weights saves and loads in every format (the checks refuse nothing valid).
#[test]
fn finite_weights_save_and_load_in_every_format() {
    let dir = TempDir::new("gguf-finite");
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
        let (path, _, _) = saved(&dir, ty);
        let logits = load_logits(&path).unwrap();
        assert!(bool::try_from(logits.isfinite().all()).unwrap(), "{ty}");
    }
}

/// The two new errors say which tensor, where, and what is wrong.
#[test]
fn new_errors_display_what_is_wrong() {
    let e = Error::Weights(WeightsError::NonFinite {
        tensor: "blk.1.ffn_up.weight".into(),
        file: "m.gguf".into(),
        count: 2,
        index: 70,
        value: f64::NEG_INFINITY,
    });
    assert_eq!(
        e.to_string(),
        "tensor `blk.1.ffn_up.weight` in m.gguf holds 2 non-finite value(s) (NaN or ±inf), the first (-inf) \
         at flat index 70"
    );
    let e = Error::Weights(WeightsError::TensorType {
        name: "output_norm.weight".into(),
        file: "m.gguf".into(),
        expected: "F32".into(),
        got: "F16".into(),
    });
    assert_eq!(
        e.to_string(),
        "tensor `output_norm.weight` in m.gguf is stored as F16, but the model accepts F32 for it"
    );
}
