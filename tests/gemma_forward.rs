//! `tch_rpo::models::gemma` against Hugging Face `transformers` (5.24.0, f32, eager attention):
//! the fixtures in `tests/fixtures/{gemma_tiny,gemma2_tiny}` (config.json, model.safetensors, and the
//! reference logits in expected.safetensors) are written by `scripts/make_gemma_fixture.py`; no Python runs
//! here. Also: loading errors (missing tensor, shape mismatch, unknown model_type), sharded checkpoints,
//! and the sliding window / soft-capping / padding behaviour.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tch::{nn, Device, Kind, Tensor};
use tch_rpo::models::gemma::export::{save_pretrained, TokenizerSource};
use tch_rpo::models::gemma::{self, Gemma, GemmaConfig, LoadOptions, WeightSource, NO_WEIGHTS};
use tch_rpo::{CheckpointError, InputError, WeightsError};
use tch_rpo::{Error, ShapeMismatch};

/// Held by every test here: libtorch's random generator is global, and a seeded init must not interleave
/// with another test drawing from it.
static RNG: Mutex<()> = Mutex::new(());

/// Max |ours − transformers| allowed on f32 logits (values up to ~7).
const F32_TOLERANCE: f64 = 2e-5;

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

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn check_against_reference(name: &str, arch: gemma::GemmaArch) {
    let (_vs, model) = Gemma::load(
        WeightSource::HfDir(&fixture(name)),
        &LoadOptions::new(Device::Cpu, Kind::Float),
    )
    .unwrap();
    assert_eq!(model.arch(), arch);
    let exp = expected(name);
    let (ids, mask, reference) = (&exp["input_ids"], &exp["attention_mask"], &exp["logits"]);
    let logits = tch::no_grad(|| model.forward(ids, mask)).unwrap();
    assert_eq!(logits.size(), reference.size());
    let diff = max_abs_diff(&logits, reference);
    println!("{name}: max |logits - transformers| = {diff:.3e}");
    assert!(
        diff < F32_TOLERANCE,
        "{name}: max abs diff {diff:e} >= {F32_TOLERANCE:e}"
    );

    // forward_hidden · head_weightᵀ (+ the final soft-cap) is forward.
    let hidden = tch::no_grad(|| model.forward_hidden(ids, mask)).unwrap();
    assert_eq!(hidden.size(), vec![3, 12, model.config().hidden_size]);
    let mut manual = hidden.matmul(&model.head_weight().expect("head weight").tr());
    if let Some(cap) = model.final_logit_softcap() {
        manual = (manual / cap).tanh() * cap;
    }
    assert!(max_abs_diff(&manual, &logits) < 1e-6);
}

#[test]
fn gemma1_logits_match_transformers() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    check_against_reference("gemma_tiny", gemma::GemmaArch::Gemma);
}

#[test]
fn gemma2_logits_match_transformers() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    check_against_reference("gemma2_tiny", gemma::GemmaArch::Gemma2);
}

#[test]
fn bf16_forward_is_close_to_f32() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fixture("gemma2_tiny");
    let (_vs, model) = Gemma::load(
        WeightSource::HfDir(&dir),
        &LoadOptions::new(Device::Cpu, Kind::BFloat16),
    )
    .unwrap();
    let exp = expected("gemma2_tiny");
    let logits = tch::no_grad(|| model.forward(&exp["input_ids"], &exp["attention_mask"])).unwrap();
    assert_eq!(logits.kind(), Kind::BFloat16);
    // Logits are soft-capped at 3: bf16 (8 mantissa bits) through 3 layers stays within a few 1e-2.
    let diff = max_abs_diff(&logits, &exp["logits"]);
    assert!(diff < 0.1, "bf16 vs f32 reference: {diff}");
}

/// Padding on the right must not change the logits of the real tokens: the padded row equals the same
/// tokens run alone without padding.
#[test]
fn right_padding_does_not_change_real_tokens() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["gemma_tiny", "gemma2_tiny"] {
        let (_vs, model) = Gemma::load(
            WeightSource::HfDir(&fixture(name)),
            &LoadOptions::new(Device::Cpu, Kind::Float),
        )
        .unwrap();
        let exp = expected(name);
        let (ids, mask) = (&exp["input_ids"], &exp["attention_mask"]);
        let batch = tch::no_grad(|| model.forward(ids, mask)).unwrap();
        let row = ids.narrow(0, 2, 1).narrow(1, 0, 5); // row 2 has 5 real tokens
        let alone = tch::no_grad(|| model.forward(&row, &row.ones_like())).unwrap();
        let diff = max_abs_diff(&alone, &batch.narrow(0, 2, 1).narrow(1, 0, 5));
        assert!(diff < 1e-5, "{name}: {diff}");
        // Changing a padding token's id changes nothing at the real tokens either.
        let other = ids.copy();
        let _ = other.narrow(0, 2, 1).narrow(1, 7, 1).fill_(77);
        let changed = tch::no_grad(|| model.forward(&other, mask)).unwrap();
        let real = mask.unsqueeze(-1).to_kind(Kind::Double);
        let leak = max_abs_diff(&(changed * &real), &(&batch * &real));
        assert!(
            leak < 1e-6,
            "{name}: a padding id leaked into the logits of real tokens ({leak})"
        );
    }
}

fn config_text(name: &str) -> String {
    std::fs::read_to_string(fixture(name).join("config.json")).unwrap()
}

/// A copy of a fixture directory with config.json edited by `edit`, and the weights written by `weights`.
fn scratch_dir(
    tag: &str,
    source: &str,
    edit: impl Fn(&mut serde_json::Value),
    weights: impl Fn(&Path, Vec<(String, Tensor)>),
) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tch_rpo_gemma_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config_text(source)).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), serde_json::to_string(&config).unwrap()).unwrap();
    let tensors = Tensor::read_safetensors(fixture(source).join("model.safetensors")).unwrap();
    weights(&dir, tensors);
    dir
}

fn write_single(dir: &Path, tensors: Vec<(String, Tensor)>) {
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
}

fn load_err(dir: &Path) -> Error {
    match Gemma::load(
        WeightSource::HfDir(dir),
        &LoadOptions::new(Device::Cpu, Kind::Float),
    ) {
        Ok(_) => panic!("loading {} succeeded", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn sharded_checkpoint_loads_like_single_file() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir(
        "sharded",
        "gemma2_tiny",
        |_| {},
        |dir, tensors| {
            let (first, second): (Vec<_>, Vec<_>) =
                tensors.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
            let strip = |v: Vec<(usize, (String, Tensor))>| v.into_iter().map(|(_, t)| t).collect::<Vec<_>>();
            let (first, second) = (strip(first), strip(second));
            let mut map = serde_json::Map::new();
            for (file, part) in [
                ("model-00001-of-00002.safetensors", &first),
                ("model-00002-of-00002.safetensors", &second),
            ] {
                for (name, _) in part.iter() {
                    map.insert(name.clone(), serde_json::Value::String(file.to_string()));
                }
                Tensor::write_safetensors(part, dir.join(file)).unwrap();
            }
            let index = serde_json::json!({"metadata": {}, "weight_map": map});
            std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        },
    );
    let (_vs, model) = Gemma::load(
        WeightSource::HfDir(&dir),
        &LoadOptions::new(Device::Cpu, Kind::Float),
    )
    .unwrap();
    let exp = expected("gemma2_tiny");
    let logits = tch::no_grad(|| model.forward(&exp["input_ids"], &exp["attention_mask"])).unwrap();
    assert!(max_abs_diff(&logits, &exp["logits"]) < F32_TOLERANCE);

    // A tensor listed in the index but absent from its shard is reported with the shard's name.
    let shard = dir.join("model-00002-of-00002.safetensors");
    let mut kept = Tensor::read_safetensors(&shard).unwrap();
    let dropped = kept.remove(0).0;
    Tensor::write_safetensors(&kept, &shard).unwrap();
    match load_err(&dir) {
        Error::Weights(WeightsError::Parameters { origin, mismatch, .. }) => {
            assert_eq!(mismatch.missing, vec![dropped]);
            assert!(mismatch.unexpected.is_empty() && mismatch.mismatched.is_empty());
            assert_eq!(origin, shard.display().to_string());
        }
        other => panic!("expected Parameters, got {other}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_tensor_is_reported_by_name() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let victim = "model.layers.1.mlp.up_proj.weight";
    let dir = scratch_dir(
        "missing",
        "gemma_tiny",
        |_| {},
        |dir, tensors| write_single(dir, tensors.into_iter().filter(|(n, _)| n != victim).collect()),
    );
    let err = load_err(&dir);
    let message = err.to_string();
    assert!(
        matches!(&err, Error::Weights(WeightsError::Parameters { mismatch, .. }) if mismatch.missing == [victim]),
        "{message}"
    );
    assert!(
        message.contains(victim) && message.contains("model.safetensors"),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shape_mismatch_is_reported() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    // The config says 2 kv heads where the file has 1 (k_proj [24, 64] vs the implied [48, 64]).
    let dir = scratch_dir(
        "shape",
        "gemma_tiny",
        |c| c["num_key_value_heads"] = serde_json::json!(2),
        write_single,
    );
    match load_err(&dir) {
        Error::Weights(WeightsError::Parameters { mismatch, .. }) => {
            assert!(!mismatch.mismatched.is_empty(), "{mismatch}");
            for ShapeMismatch { name, expected, got } in &mismatch.mismatched {
                assert!(
                    name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight"),
                    "{name}"
                );
                assert_eq!(expected, &vec![48, 64]);
                assert_eq!(got, &vec![24, 64]);
            }
            assert!(mismatch.missing.is_empty() && mismatch.unexpected.is_empty());
        }
        other => panic!("expected Parameters, got {other}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn architecture_mismatch_and_unknown_model_type_are_errors() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    // Gemma 2 weights under a Gemma 1 config: the extra norms are unexpected.
    let dir = scratch_dir(
        "arch",
        "gemma2_tiny",
        |c| c["model_type"] = serde_json::json!("gemma"),
        write_single,
    );
    let err = load_err(&dir);
    assert!(
        matches!(err, Error::Weights(WeightsError::Parameters { ref mismatch, .. })
            if !mismatch.unexpected.is_empty()
                && mismatch.unexpected.iter().all(|name| name.contains("feedforward_layernorm"))),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = scratch_dir(
        "unknown",
        "gemma_tiny",
        |c| c["model_type"] = serde_json::json!("llama"),
        write_single,
    );
    let err = load_err(&dir);
    assert!(
        matches!(err, Error::Weights(WeightsError::UnsupportedArchitecture { ref found, .. }) if found == "llama"),
        "{err}"
    );
    assert!(err.to_string().contains("llama"));
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = scratch_dir("noweights", "gemma_tiny", |_| {}, |_, _| {});
    assert!(
        matches!(load_err(&dir), Error::Checkpoint(CheckpointError::Invalid { ref reason, .. }) if reason == NO_WEIGHTS)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_validation() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let base = GemmaConfig::small_gemma2(32);
    base.validate().unwrap();
    let mut bad = base.clone();
    bad.num_key_value_heads = Some(3);
    assert!(matches!(
        bad.validate(),
        Err(Error::Input(InputError::Config { .. }))
    ));
    let mut bad = base.clone();
    bad.tie_word_embeddings = false;
    assert!(matches!(
        bad.validate(),
        Err(Error::Input(InputError::Config { .. }))
    ));
    let mut bad = base.clone();
    bad.rope_parameters = Some(serde_json::json!({"rope_type": "yarn", "factor": 4.0}));
    assert!(matches!(
        bad.validate(),
        Err(Error::Input(InputError::Config { .. }))
    ));
    let mut bad = base;
    bad.layer_types = Some(vec!["full_attention".into()]);
    assert!(matches!(
        bad.validate(),
        Err(Error::Input(InputError::Config { .. }))
    ));

    // An older-style Gemma 1 config: top-level rope_theta, legacy hidden_act "gelu", no head_dim.
    let old = r#"{"model_type": "gemma", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "rope_theta": 500.0,
        "hidden_act": "gelu"}"#;
    let config = GemmaConfig::from_json_str(old, Path::new("inline")).unwrap();
    config.validate().unwrap();
    assert_eq!(config.rope_base().unwrap(), 500.0);
    assert_eq!(config.head_size(), 4);
    assert_eq!(config.activation().unwrap(), gemma::Activation::GeluTanh);
    // Gemma 2 defaults when fields are absent; explicit null disables a soft-cap.
    let g2 = r#"{"model_type": "gemma2", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 2, "final_logit_softcapping": null}"#;
    let config = GemmaConfig::from_json_str(g2, Path::new("inline")).unwrap();
    assert_eq!(config.final_logit_softcapping, None);
    assert_eq!(config.attn_logit_softcapping, Some(50.0));
    assert_eq!(config.layer_windows().unwrap(), vec![Some(4096), None]);
}

/// Input checks: wrong dtype / shape / out-of-range ids are errors, not panics.
#[test]
fn bad_inputs_are_errors() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gemma::random(&vs.root(), &GemmaConfig::small_gemma2(32)).unwrap();
    let ids = Tensor::from_slice(&[2i64, 5, 6]).view([1, 3]);
    assert!(model.forward(&ids.to_kind(Kind::Int), &ids.ones_like()).is_err());
    assert!(model
        .forward(&ids, &Tensor::ones([1, 4], (Kind::Int64, Device::Cpu)))
        .is_err());
    assert!(model
        .forward(&(ids.shallow_clone() + 40), &ids.ones_like())
        .is_err());
    assert!(model.forward(&ids.view([3]), &ids.view([3])).is_err());
}

/// A seeded random init is reproducible, its norms start at zero (scale 1 + 0), and a save → load round
/// trip reproduces the logits.
#[test]
fn random_init_is_seeded_and_round_trips() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let config = GemmaConfig::small_gemma2(32);
    let build = || {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Gemma::random(&vs.root(), &config).unwrap();
        (vs, model)
    };
    let (vs, model) = build();
    let (_vs2, model2) = build();
    let ids = Tensor::from_slice(&[2i64, 5, 6, 7, 3, 4]).view([2, 3]);
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0]).view([2, 3]);
    let a = tch::no_grad(|| model.forward(&ids, &mask)).unwrap();
    let b = tch::no_grad(|| model2.forward(&ids, &mask)).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    let norm = &vs.variables()["model.norm.weight"];
    assert_eq!(norm.abs().sum(Kind::Double).double_value(&[]), 0.0);
    let std = vs.variables()["model.embed_tokens.weight"]
        .std(true)
        .double_value(&[]);
    assert!((std - 0.02).abs() < 0.003, "embedding std {std}");

    let dir = std::env::temp_dir().join(format!("tch_rpo_gemma_roundtrip_{}", std::process::id()));
    let parameters: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    save_pretrained(&dir, &config, &parameters, Kind::Float, TokenizerSource::None).unwrap();
    let (_vs3, loaded) = Gemma::load(
        WeightSource::HfDir(&dir),
        &LoadOptions::new(Device::Cpu, Kind::Float),
    )
    .unwrap();
    let c = tch::no_grad(|| loaded.forward(&ids, &mask)).unwrap();
    assert_eq!(max_abs_diff(&a, &c), 0.0);
    std::fs::remove_dir_all(&dir).unwrap();

    // A fresh VarStore loaded from the saved folder gets gradients on its variables.
    let mut vs4 = nn::VarStore::new(Device::Cpu);
    let trained = Gemma::random(&vs4.root(), &config).unwrap();
    vs4.copy(&vs).unwrap();
    let loss = trained.forward(&ids, &mask).unwrap().square().mean(Kind::Float);
    loss.backward();
    let grad = vs4.variables()["model.layers.0.self_attn.q_proj.weight"].grad();
    assert!(grad.defined() && grad.abs().sum(Kind::Double).double_value(&[]) > 0.0);
}

/// Every parameter of the model comes from the folder, bit for bit (2 + 3 · 11 tensors).
#[test]
fn hf_loader_copies_every_parameter() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fixture("gemma2_tiny");
    let (vs, _model) = Gemma::load(WeightSource::HfDir(&dir), &LoadOptions::default()).unwrap();
    let file: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let variables = vs.variables();
    assert_eq!(variables.len(), 2 + 3 * 11);
    for (name, variable) in &variables {
        let stored = file[name].to_kind(Kind::Float);
        assert_eq!(max_abs_diff(variable, &stored), 0.0, "{name}");
    }
}

/// Sizes that size an allocation are bounded: a configuration whose parameter count overflows i64 is a
/// `Config` error, one too large for the memory is `OutOfMemory` naming the parameter (before: tch's
/// `var` panicked, or the shape products overflowed).
#[test]
fn huge_configurations_are_errors_not_panics() {
    let base = GemmaConfig::small_gemma2(32);
    let mut overflowing = base.clone();
    overflowing.hidden_size = 1 << 40;
    overflowing.intermediate_size = 1 << 40;
    assert!(
        matches!(
            overflowing.validate(),
            Err(Error::Input(InputError::Config {
                name: "hidden_size",
                ..
            }))
        ),
        "{:?}",
        overflowing.validate()
    );
    // 2^40 vocabulary rows of f32 (over 100 TiB): a valid size that no machine can allocate.
    let mut huge = base;
    huge.vocab_size = 1 << 40;
    huge.validate().unwrap();
    let vs = tch::nn::VarStore::new(Device::Cpu);
    match gemma::Gemma::random(&vs.root(), &huge) {
        Err(Error::OutOfMemory { what, bytes }) => {
            assert!(what.contains("model.embed_tokens.weight"), "{what}");
            assert_eq!(bytes, (1u64 << 40) * huge.hidden_size as u64 * 4);
        }
        Err(other) => panic!("expected OutOfMemory, got {other:?}"),
        Ok(_) => panic!("a 16 PiB parameter was allocated"),
    }
}
