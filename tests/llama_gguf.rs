//! Llama-family GGUF files: the tiny Hugging Face fixtures (`tests/fixtures/*_tiny`, see
//! `tests/llama_forward.rs`) written as F32 GGUF files laid out as llama.cpp's converter lays them out
//! (`scripts/llama_hf_to_gguf.py`, run with `.venv/bin/python` at test time: llama.cpp's names, q / k rows
//! permuted per head for the `llama` architecture), then loaded with [`Llama::load`].
//!
//! - qwen2 (tied, q / k / v biases) and qwen3 (q / k norms): the configuration read from the metadata and
//!   the logits equal transformers' reference within the forward tests' bound (1e-4; the GGUF stores ε as
//!   f32, a relative change of ~1e-8 of ε);
//! - llama with llama3 RoPE scaling (the `llama_tiny` fixture, stored as llama.cpp's `rope_freqs.weight`
//!   divisors; q / k rows permuted): logits equal transformers' reference within 1e-4 (the divisors change
//!   the inverse frequencies by f32 rounding, ~1e-7 relative, so positions ≤ 12 move the angles by ≤ ~1e-6);
//! - llama: the Mistral fixture's weights (untied; llama.cpp converts Mistral as `llama`, without the
//!   window): the GGUF-loaded model equals, bit for bit, the same weights loaded from memory under the
//!   configuration read from the GGUF — so the q / k un-permutation restores every row exactly.

mod export_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use export_support::{python, TempDir};
use tch::{Device, Kind, Tensor};
use tch_rpo::gguf::GgufFile;
use tch_rpo::models::decoder::{LoadOptions, WeightSource};
use tch_rpo::models::llama::{unpermute_rows, Llama, LlamaArch, LlamaConfig};
use tch_rpo::{Error, WeightsError};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Writes `tests/fixtures/{name}` as a GGUF of architecture `arch` under `dir`.
fn to_gguf(dir: &TempDir, name: &str, arch: &str) -> PathBuf {
    let out = dir.path(&format!("{name}.gguf"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llama_hf_to_gguf.py");
    let status = std::process::Command::new(python())
        .arg(script)
        .arg(fixture(name))
        .arg(&out)
        .arg(arch)
        .status()
        .expect("running .venv/bin/python");
    assert!(status.success(), "llama_hf_to_gguf.py failed for {name}");
    out
}

fn expected(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name).join("expected.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn max_abs_diff_on(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let keep = mask.to_kind(Kind::Double).unsqueeze(-1);
    ((a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs() * keep)
        .max()
        .double_value(&[])
}

#[test]
fn qwen_gguf_files_match_transformers() {
    let dir = TempDir::new("llama-gguf");
    for (name, arch, expected_arch) in [
        ("qwen2_tiny", "qwen2", LlamaArch::Qwen2),
        ("qwen3_tiny", "qwen3", LlamaArch::Qwen3),
    ] {
        let file = GgufFile::open(to_gguf(&dir, name, arch)).unwrap();
        let config = LlamaConfig::from_gguf(&file).unwrap();
        assert_eq!(config.arch().unwrap(), expected_arch);
        assert!(config.tie_word_embeddings, "{name}: tied (no output.weight)");
        let (_vs, model) = Llama::load(WeightSource::Gguf(&file), &LoadOptions::default()).unwrap();
        let exp = expected(name);
        let logits = tch::no_grad(|| model.forward(&exp["input_ids"], &exp["attention_mask"])).unwrap();
        let diff = max_abs_diff_on(&logits, &exp["logits"], &exp["attention_mask"]);
        println!("{name} (GGUF): max |logits - transformers| = {diff:.3e}");
        assert!(diff < 1e-4, "{name}: {diff:e}");
    }
}

#[test]
fn llama3_gguf_with_rope_factors_matches_transformers() {
    let dir = TempDir::new("llama3-gguf");
    let file = GgufFile::open(to_gguf(&dir, "llama_tiny", "llama")).unwrap();
    let config = LlamaConfig::from_gguf(&file).unwrap();
    assert_eq!(config.rope_freq_factors.as_ref().map(Vec::len), Some(8));
    assert!(!config.tie_word_embeddings);
    let (_vs, model) = Llama::load(WeightSource::Gguf(&file), &LoadOptions::default()).unwrap();
    let exp = expected("llama_tiny");
    let logits = tch::no_grad(|| model.forward(&exp["input_ids"], &exp["attention_mask"])).unwrap();
    let diff = max_abs_diff_on(&logits, &exp["logits"], &exp["attention_mask"]);
    println!("llama_tiny (GGUF, rope_freqs): max |logits - transformers| = {diff:.3e}");
    assert!(diff < 1e-4, "llama_tiny: {diff:e}");

    // Factors of the wrong length are refused naming the tensor.
    let mut bad = config.clone();
    bad.rope_freq_factors = Some(vec![1.0; 3]);
    match bad.validate() {
        Err(Error::Input(tch_rpo::InputError::Config { name, .. })) => assert_eq!(name, "rope_freqs.weight"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn llama_gguf_q_k_rows_are_unpermuted_exactly() {
    let dir = TempDir::new("llama-gguf-permute");
    let file = GgufFile::open(to_gguf(&dir, "mistral_tiny", "llama")).unwrap();
    let config = LlamaConfig::from_gguf(&file).unwrap();
    assert_eq!(config.arch().unwrap(), LlamaArch::Llama);
    assert!(!config.tie_word_embeddings);
    let (_vs, from_gguf) = Llama::load(WeightSource::Gguf(&file), &LoadOptions::default()).unwrap();
    let parameters = Tensor::read_safetensors(fixture("mistral_tiny").join("model.safetensors")).unwrap();
    let source = WeightSource::Parameters {
        config: &config,
        parameters: &parameters,
    };
    let (_vs, from_memory) = Llama::load(source, &LoadOptions::default()).unwrap();
    let exp = expected("mistral_tiny");
    let (ids, mask) = (&exp["input_ids"], &exp["attention_mask"]);
    let a = tch::no_grad(|| from_gguf.forward(ids, mask)).unwrap();
    let b = tch::no_grad(|| from_memory.forward(ids, mask)).unwrap();
    assert_eq!(f64::try_from((a - b).abs().max()).unwrap(), 0.0);

    // The raw file rows are permuted (else the test above would not test the un-permutation).
    let raw = file
        .tensor("blk.0.attn_q.weight", Kind::Float, Device::Cpu)
        .unwrap();
    let hf = &parameters
        .iter()
        .find(|(n, _)| n == "model.layers.0.self_attn.q_proj.weight")
        .unwrap()
        .1;
    assert!(f64::try_from((&raw - hf).abs().max()).unwrap() > 0.0);
    let restored = unpermute_rows(&raw, config.num_attention_heads).unwrap();
    assert_eq!(f64::try_from((&restored - hf).abs().max()).unwrap(), 0.0);
}

#[test]
fn unsupported_gguf_architecture_is_named() {
    let dir = TempDir::new("llama-gguf-arch");
    // A gemma3 file is not a Llama-family file.
    let path = to_gguf(&dir, "qwen2_tiny", "qwen2");
    let file = GgufFile::open(&path).unwrap();
    assert!(LlamaConfig::from_gguf(&file).is_ok());
    let gemma = tch_rpo::models::gemma::GemmaConfig::from_gguf(&file).unwrap_err();
    assert!(
        matches!(gemma, Error::Weights(WeightsError::UnsupportedArchitecture { ref found, .. }) if found == "qwen2")
    );
    let wrong = to_gguf(&dir, "qwen3_tiny", "phi3");
    let file = GgufFile::open(&wrong).unwrap();
    match LlamaConfig::from_gguf(&file) {
        Err(Error::Weights(WeightsError::UnsupportedArchitecture { found, .. })) => assert_eq!(found, "phi3"),
        other => panic!("expected UnsupportedArchitecture, got {other:?}"),
    }
}
