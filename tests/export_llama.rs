//! Export of the Llama family (`models::llama::export`), each family's tiny fixture (`tests/fixtures/*_tiny`,
//! made by transformers: Llama with llama3 RoPE scaling and an untied head, Qwen2 with q / k / v biases,
//! Qwen3 with q / k norms and GQA 4:1, Mistral with a sliding window):
//!
//! - Hugging Face folder: transformers (`scripts/check_export.py models`, f32, eager attention) loads it and
//!   its logits equal ours within the forward tests' bound (1e-4 abs; the same arithmetic in another
//!   order); `config.json` reads back here to the same switches;
//! - GGUF F32: the file equals, tensor by tensor and bit for bit, what the independent Python converter
//!   `scripts/llama_hf_to_gguf.py` (llama.cpp's layout, q / k rows permuted for `llama`) writes, except
//!   `rope_freqs.weight` (ours in f64 then rounded, the converter's in f32: ≤ 2 f32 ulps); read back by our
//!   loader it gives our logits exactly (Llama 3: through llama.cpp's frequency divisors, within 1e-4 as
//!   in `tests/llama_gguf.rs`); gguf-py reads its names, shapes and metadata;
//! - GGUF Q8_0: every dequantized weight within the Q8_0 bound of ours (`d/2 + 127·2^-11·d` per block of
//!   32, `d = amax/127`, the second term from storing `d` as f16);
//! - a byte-level BPE tokenizer (`scripts/make_bpe_fixture.py`'s qwen2 GGUF) is copied into the export and
//!   reads back to the same ids;
//! - errors for every bad input.

mod bpe_support;
mod export_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use export_support::{load_logits, max_abs_diff, python, run_check, run_models, TempDir, SEED_LOCK};
use serde_json::Value;
use tch::{nn, Device, Kind, Tensor};
use tch_rpo::gguf::{GgmlType, GgufFile};
use tch_rpo::models::decoder::export::TokenizerSource;
use tch_rpo::models::decoder::{LoadOptions, WeightSource};
use tch_rpo::models::llama::export::{hf_config_json, save_gguf, save_pretrained};
use tch_rpo::models::llama::{Llama, LlamaConfig};
use tch_rpo::{DataError, Error, GgufError, InputError, WeightsError};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name).join("expected.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn load_fixture(name: &str) -> (nn::VarStore, Llama) {
    Llama::load(WeightSource::HfDir(&fixture(name)), &LoadOptions::default()).unwrap()
}

fn parameters(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut p: Vec<_> = vs.variables().into_iter().collect();
    p.sort_by(|a, b| a.0.cmp(&b.0));
    p
}

fn logits(model: &Llama, exp: &HashMap<String, Tensor>) -> Tensor {
    tch::no_grad(|| model.forward(&exp["input_ids"], &exp["attention_mask"])).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

const FAMILIES: [(&str, &str); 4] = [
    ("llama_tiny", "llama"),
    ("qwen2_tiny", "qwen2"),
    ("qwen3_tiny", "qwen3"),
    ("mistral_tiny", "llama"),
];

#[test]
fn hf_folders_load_in_transformers_with_our_logits() {
    let dir = TempDir::new("export-llama-hf");
    for (name, _) in FAMILIES {
        let (vs, model) = load_fixture(name);
        let out = dir.path(name);
        save_pretrained(
            &out,
            model.config(),
            &parameters(&vs),
            Kind::Float,
            TokenizerSource::None,
        )
        .unwrap();
        // Read back here: the same switches.
        let back = LlamaConfig::from_file(&out.join("config.json")).unwrap();
        let c = model.config();
        assert_eq!(back.arch().unwrap(), c.arch().unwrap(), "{name}");
        assert_eq!(
            back.parameter_shapes().unwrap(),
            c.parameter_shapes().unwrap(),
            "{name}"
        );
        assert_eq!(
            back.layer_windows().unwrap(),
            c.layer_windows().unwrap(),
            "{name}"
        );
        assert_eq!(back.rope().unwrap(), c.rope().unwrap(), "{name}");
        assert_eq!(back.head_size(), c.head_size(), "{name}");
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        let original: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap())
                .unwrap();
        for key in [
            "architectures",
            "model_type",
            "rope_parameters",
            "tie_word_embeddings",
            "num_key_value_heads",
        ] {
            assert_eq!(json[key], original[key], "{name}: {key}");
        }
        // transformers' logits on the fixture's inputs equal ours.
        let exp = expected(name);
        let ours = logits(&model, &exp);
        let result_dir = dir.path(&format!("{name}-out"));
        let result = run_models(
            &dir,
            &exp["input_ids"],
            &exp["attention_mask"],
            &["--hf".into(), out.display().to_string()],
            None,
            &result_dir,
        );
        let theirs = load_logits(&result_dir, "hf");
        let diff = max_abs_diff(&ours, &theirs, &exp["attention_mask"]);
        println!(
            "{name}: transformers class {}, max |ours − transformers| = {diff:.3e}",
            result["hf"]["class"]
        );
        assert!(diff <= 1e-4, "{name}: {diff:e}");
    }
}

/// `scripts/llama_hf_to_gguf.py` (the reference converter) on a folder.
fn reference_gguf(folder: &Path, out: &Path, arch: &str) -> GgufFile {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llama_hf_to_gguf.py");
    let status = std::process::Command::new(python())
        .arg(script)
        .arg(folder)
        .arg(out)
        .arg(arch)
        .status()
        .unwrap();
    assert!(status.success());
    GgufFile::open(out).unwrap()
}

#[test]
fn f32_gguf_equals_the_converter_and_reads_back_to_our_logits() {
    let dir = TempDir::new("export-llama-gguf");
    for (name, arch) in FAMILIES {
        let (vs, model) = load_fixture(name);
        let mut config = model.config().clone();
        if name == "mistral_tiny" {
            // llama.cpp's `llama` architecture has no window: export Mistral's weights without one.
            config.sliding_window = None;
        }
        let params = parameters(&vs);
        let path = dir.path(&format!("{name}.gguf"));
        save_gguf(&path, &config, &params, GgmlType::F32, TokenizerSource::None).unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.get_str("general.architecture").unwrap(), arch);

        // Tensor by tensor equal to the reference converter's file (written from the same weights).
        let folder = dir.path(&format!("{name}-hf"));
        save_pretrained(&folder, &config, &params, Kind::Float, TokenizerSource::None).unwrap();
        let reference = reference_gguf(&folder, &dir.path(&format!("{name}-ref.gguf")), arch);
        let mut ours: Vec<_> = file.tensors().iter().map(|t| t.name.clone()).collect();
        let mut theirs: Vec<_> = reference.tensors().iter().map(|t| t.name.clone()).collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{name}: tensor names");
        for t in &ours {
            let a = file.tensor(t, Kind::Float, Device::Cpu).unwrap();
            let b = reference.tensor(t, Kind::Float, Device::Cpu).unwrap();
            assert_eq!(a.size(), b.size(), "{name}: {t}");
            let d = max_diff(&a, &b);
            if t == "rope_freqs.weight" {
                assert!(
                    d <= 2.0 * f64::from(f32::EPSILON) * max_diff(&b, &b.zeros_like()),
                    "{name}: {t} {d:e}"
                );
            } else {
                assert_eq!(d, 0.0, "{name}: {t}");
            }
        }
        for key in [
            "context_length",
            "embedding_length",
            "block_count",
            "feed_forward_length",
            "attention.head_count",
            "attention.head_count_kv",
            "attention.key_length",
            "rope.dimension_count",
        ] {
            let k = format!("{arch}.{key}");
            assert_eq!(file.get(&k), reference.get(&k), "{name}: {k}");
        }

        // Read back by our loader.
        let (_vs, back) = Llama::load(WeightSource::Gguf(&file), &LoadOptions::default()).unwrap();
        let (_vs2, same) = Llama::load(
            WeightSource::Parameters {
                config: &config,
                parameters: &params,
            },
            &LoadOptions::default(),
        )
        .unwrap();
        let exp = expected(name);
        let d = max_diff(&logits(&back, &exp), &logits(&same, &exp));
        println!("{name}: GGUF F32 read back, max |Δ logits| = {d:.3e}");
        if name == "llama_tiny" {
            assert!(d <= 1e-4, "{name}: {d:e}");
        } else {
            assert_eq!(d, 0.0, "{name}");
        }
    }
}

#[test]
fn gguf_py_reads_names_shapes_and_metadata() {
    let dir = TempDir::new("export-llama-gguf-py");
    let (vs, model) = load_fixture("qwen3_tiny");
    let path = dir.path("qwen3.gguf");
    save_gguf(
        &path,
        model.config(),
        &parameters(&vs),
        GgmlType::BF16,
        TokenizerSource::None,
    )
    .unwrap();
    let out = dir.path("dump.json");
    run_check(&[
        "gguf-dump".to_string(),
        path.display().to_string(),
        out.display().to_string(),
        "--no-values".into(),
    ]);
    let dump: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let meta = &dump["metadata"];
    assert_eq!(meta["general.architecture"]["value"], "qwen3");
    assert_eq!(meta["general.file_type"]["value"], 32);
    assert_eq!(meta["qwen3.attention.key_length"]["value"], 24);
    assert_eq!(meta["qwen3.attention.head_count_kv"]["value"], 1);
    assert_eq!(meta["qwen3.block_count"]["value"], 3);
    let tensors = dump["tensors"].as_object().unwrap();
    assert_eq!(
        tensors["blk.0.attn_q.weight"]["dims"],
        serde_json::json!([64, 96])
    );
    assert_eq!(tensors["blk.0.attn_q.weight"]["type"], "BF16");
    assert_eq!(
        tensors["blk.2.attn_k_norm.weight"]["dims"],
        serde_json::json!([24])
    );
    assert_eq!(tensors["blk.2.attn_k_norm.weight"]["type"], "F32");
    assert!(!tensors.contains_key("output.weight"), "tied");
    assert_eq!(tensors.len(), 2 + 3 * 11);
}

#[test]
fn q8_0_weights_are_within_the_block_bound() {
    let dir = TempDir::new("export-llama-q8");
    let (vs, model) = load_fixture("qwen2_tiny");
    let params = parameters(&vs);
    let path = dir.path("qwen2-q8_0.gguf");
    save_gguf(
        &path,
        model.config(),
        &params,
        GgmlType::Q8_0,
        TokenizerSource::None,
    )
    .unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(
        file.tensor_info("blk.0.attn_q.weight").unwrap().ggml_type,
        GgmlType::Q8_0
    );
    assert_eq!(
        file.tensor_info("blk.0.attn_q.bias").unwrap().ggml_type,
        GgmlType::F32
    );
    for (name, ours) in &params {
        let gguf = tch_rpo::models::llama::gguf_tensor_name(name).unwrap();
        let back = file.tensor(&gguf, Kind::Float, Device::Cpu).unwrap();
        if ours.dim() == 1 {
            assert_eq!(max_diff(&back, ours), 0.0, "{name}");
            continue;
        }
        // Per block of 32 (ggml's quantize_row_q8_0): d = amax / 127, q = round(w / d), stored d16 = f16(d)
        // with |d16 − d| ≤ 2^-11·d; so |w − q·d16| ≤ d/2 + 127·2^-11·d.
        let blocks = ours.reshape([-1, 32]).to_kind(Kind::Double);
        let d = blocks.abs().amax([1], true) / 127.0;
        let err = (back.reshape([-1, 32]).to_kind(Kind::Double) - &blocks).abs();
        let bound = d * (0.5 + 127.0 * 2f64.powi(-11)) * (1.0 + 1e-6);
        let excess = (err - bound).max().double_value(&[]);
        assert!(excess <= 0.0, "{name}: Q8_0 error exceeds d/2 by {excess:e}");
    }
    // And the quantized model still runs, close to ours.
    let (_vs, back) = Llama::load(WeightSource::Gguf(&file), &LoadOptions::default()).unwrap();
    let exp = expected("qwen2_tiny");
    let d = max_diff(&logits(&back, &exp), &logits(&model, &exp));
    println!("qwen2_tiny Q8_0: max |Δ logits| = {d:.3e}");
    assert!(d.is_finite());
}

#[test]
fn a_bpe_tokenizer_is_copied_into_the_gguf() {
    let bpe = bpe_support::fixture("export-llama");
    let source = bpe.gguf("qwen2");
    let tokens = source.get_array("tokenizer.ggml.tokens").unwrap().len() as i64;
    let dir = TempDir::new("export-llama-bpe");
    let _guard = SEED_LOCK.lock().unwrap();
    tch::manual_seed(7);
    let mut config = LlamaConfig::from_file(&fixture("qwen2_tiny").join("config.json")).unwrap();
    config.vocab_size = tokens;
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Llama::random(&vs.root(), &config).unwrap();
    let path = dir.path("qwen2-bpe.gguf");
    save_gguf(
        &path,
        &config,
        &parameters(&vs),
        GgmlType::F32,
        TokenizerSource::Gguf(&source),
    )
    .unwrap();
    let file = GgufFile::open(&path).unwrap();
    for (key, value) in source.metadata() {
        if key.starts_with("tokenizer.") {
            assert_eq!(file.get(key), Some(value), "{key}");
        }
    }
    assert_eq!(file.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    let ours = tch_rpo::models::tokenizer::BpeTokenizer::from_gguf(&file).unwrap();
    let theirs = tch_rpo::models::tokenizer::BpeTokenizer::from_gguf(&source).unwrap();
    for text in ["Hello world, 12345!  ok", "café 日本語 🙂\n\tcode()"] {
        assert_eq!(ours.encode_text(text).unwrap(), theirs.encode_text(text).unwrap());
    }
    // A tokenizer of another size than the vocabulary is refused.
    config.vocab_size = tokens + 1;
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Llama::random(&vs.root(), &config).unwrap();
    let err = save_gguf(
        &dir.path("bad.gguf"),
        &config,
        &parameters(&vs),
        GgmlType::F32,
        TokenizerSource::Gguf(&source),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Input(InputError::Config {
                name: "vocab_size",
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn export_errors_name_what_is_wrong() {
    let dir = TempDir::new("export-llama-errors");
    let (vs, model) = load_fixture("mistral_tiny");
    let config = model.config();
    let params = parameters(&vs);
    let path = dir.path("m.gguf");
    // A sliding window llama.cpp's `llama` architecture cannot express.
    let err = save_gguf(&path, config, &params, GgmlType::F32, TokenizerSource::None).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Input(InputError::Config {
                name: "sliding_window",
                ..
            })
        ),
        "{err:?}"
    );
    let mut no_window = config.clone();
    no_window.sliding_window = None;
    // A matrix type that cannot be written.
    let err = save_gguf(&path, &no_window, &params, GgmlType::Q4_K, TokenizerSource::None).unwrap_err();
    assert!(matches!(err, Error::Gguf(GgufError::Invalid { .. })), "{err:?}");
    // A folder without tokenizer.json for a GGUF.
    let err = save_gguf(
        &path,
        &no_window,
        &params,
        GgmlType::F32,
        TokenizerSource::HfDir(&fixture("mistral_tiny")),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Data(DataError::Tokenizer(_))), "{err:?}");
    // A dtype a folder cannot hold.
    let err = save_pretrained(&dir.path("f"), config, &params, Kind::Int, TokenizerSource::None).unwrap_err();
    assert!(
        matches!(err, Error::Input(InputError::DType { arg: "kind", .. })),
        "{err:?}"
    );
    // A missing parameter.
    let missing: Vec<_> = params
        .iter()
        .skip(1)
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let err = save_gguf(&path, &no_window, &missing, GgmlType::F32, TokenizerSource::None).unwrap_err();
    assert!(
        matches!(err, Error::Weights(WeightsError::Parameters { .. })),
        "{err:?}"
    );
    // A non-finite weight: nothing written.
    let bad: Vec<_> = params
        .iter()
        .map(|(n, t)| {
            let t = t.copy();
            if n == "model.norm.weight" {
                let _ = t.get(0).fill_(f64::NAN);
            }
            (n.clone(), t)
        })
        .collect();
    let err = save_gguf(&path, &no_window, &bad, GgmlType::Q8_0, TokenizerSource::None).unwrap_err();
    assert!(
        matches!(err, Error::Weights(WeightsError::NonFinite { .. })),
        "{err:?}"
    );
    assert!(!path.exists());
    let err = save_pretrained(&dir.path("f"), config, &bad, Kind::Float, TokenizerSource::None).unwrap_err();
    assert!(
        matches!(err, Error::Weights(WeightsError::NonFinite { .. })),
        "{err:?}"
    );
    // llama.cpp's RoPE frequency factors have no config.json field.
    let mut factors = LlamaConfig::from_file(&fixture("qwen2_tiny").join("config.json")).unwrap();
    factors.rope_freq_factors = Some(vec![1.0; 8]);
    let err = hf_config_json(&factors, Kind::Float).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Input(InputError::Config {
                name: "rope_freqs.weight",
                ..
            })
        ),
        "{err:?}"
    );
}
