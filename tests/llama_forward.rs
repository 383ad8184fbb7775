//! `tch_rpo::models::llama` against Hugging Face `transformers` (5.24.0, f32, eager attention): the
//! fixtures in `tests/fixtures/{llama,qwen2,qwen3,mistral}_tiny` (config.json, model.safetensors, and
//! expected.safetensors with reference logits and greedy generations) are written by
//! `scripts/make_llama_fixtures.py`; no Python runs here.
//!
//! - Llama: grouped-query attention, RoPE scaling `llama3` (all three frequency bands occur), untied head;
//! - Qwen2: q / k / v biases, tied head;
//! - Qwen3: per-head q / k RMSNorm, head_dim 24 ≠ 64 / 4, tied head;
//! - Mistral: sliding window 5 < 12 tokens on every layer, untied head.
//!
//! Logits bound: both sides evaluate the same formula in f32 with the same op order except for the
//! reduction order inside matrix products and sums (libtorch's kernels vs transformers' on the same
//! libtorch — they differ only where shapes pick other kernels). A dot product of `n` terms in another
//! order differs by at most `γ(n−1)·Σ|terms|`, `γ(k) = k·u/(1 − k·u)`, u = 2⁻²⁴; the longest reductions
//! here are the MLP's `n = 96` (γ ≈ 5.7e-6) and the head's `n = 64`. Each layer's output error is at most
//! that relative bound of the layer's term magnitudes (≤ ~10 here), carried through ≤ 3 layers and the head
//! (gains ≤ ~3 each in these small random models): ≈ 5.7e-6 · 10 · 3 · 3 ≈ 5e-4 in the worst case.
//! Observed: 0 (bitwise equal: same libtorch, same op order and shapes); the test keeps the 1e-4 bound,
//! which the worst case would exceed only if every rounding went the same way, and prints the observed
//! maximum. Padding positions (right padding) are excluded: their outputs are unspecified.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tch_rpo::models::decoder::{generate, GenerationConfig, LoadOptions, WeightSource};
use tch_rpo::models::llama::{Llama, LlamaArch, LlamaConfig};
use tch_rpo::{Error, InputError, WeightsError};

/// Max |ours − transformers| allowed on f32 logits (see the module docs).
const F32_TOLERANCE: f64 = 1e-4;

const FAMILIES: [(&str, LlamaArch); 4] = [
    ("llama_tiny", LlamaArch::Llama),
    ("qwen2_tiny", LlamaArch::Qwen2),
    ("qwen3_tiny", LlamaArch::Qwen3),
    ("mistral_tiny", LlamaArch::Mistral),
];

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

fn load(name: &str) -> Llama {
    let (_vs, model) = Llama::load(
        WeightSource::HfDir(&fixture(name)),
        &LoadOptions::new(Device::Cpu, Kind::Float),
    )
    .unwrap();
    model
}

/// Max |a − b| over the positions where `mask` `[N, T]` is 1 (a, b `[N, T, V]`).
fn max_abs_diff_on(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let keep = mask.to_kind(Kind::Double).unsqueeze(-1);
    ((a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs() * keep)
        .max()
        .double_value(&[])
}

#[test]
fn logits_match_transformers_with_right_padding() {
    for (name, arch) in FAMILIES {
        let model = load(name);
        assert_eq!(model.arch(), arch, "{name}");
        let exp = expected(name);
        let (ids, mask, reference) = (&exp["input_ids"], &exp["attention_mask"], &exp["logits"]);
        let logits = tch::no_grad(|| model.forward(ids, mask)).unwrap();
        assert_eq!(logits.size(), reference.size(), "{name}");
        let diff = max_abs_diff_on(&logits, reference, mask);
        println!("{name}: max |logits - transformers| on real tokens = {diff:.3e}");
        assert!(
            diff < F32_TOLERANCE,
            "{name}: max abs diff {diff:e} >= {F32_TOLERANCE:e}"
        );

        // forward_hidden · head_weightᵀ is forward (no soft-cap in this family).
        let hidden = tch::no_grad(|| model.forward_hidden(ids, mask)).unwrap();
        let manual = hidden.matmul(&model.head_weight().expect("head weight").tr());
        assert!(max_abs_diff_on(&manual, &logits, mask) < 1e-6, "{name}");
    }
}

#[test]
fn switches_are_read_from_the_configs() {
    let llama = load("llama_tiny");
    assert!(!llama.config().tie_word_embeddings);
    assert!(matches!(
        llama.config().rope().unwrap().1,
        tch_rpo::models::decoder::RopeScaling::Llama3 { .. }
    ));
    assert_eq!(llama.config().kv_heads(), 2);
    let qwen2 = load("qwen2_tiny");
    assert!(qwen2.config().tie_word_embeddings);
    assert!(qwen2
        .config()
        .parameter_shapes()
        .unwrap()
        .contains_key("model.layers.0.self_attn.q_proj.bias"));
    let qwen3 = load("qwen3_tiny");
    assert_eq!(qwen3.config().head_size(), 24);
    let mistral = load("mistral_tiny");
    assert_eq!(mistral.config().layer_windows().unwrap(), vec![Some(5); 2]);
}

#[test]
fn greedy_generation_matches_transformers() {
    for (name, _) in FAMILIES {
        let model = load(name);
        let exp = expected(name);
        let (ids, mask, reference) = (
            &exp["gen_input_ids"],
            &exp["gen_attention_mask"],
            &exp["gen_tokens"],
        );
        // The prompts without their left padding.
        let rows = ids.size()[0];
        let prompts: Vec<Vec<i64>> = (0..rows)
            .map(|r| {
                let row = Vec::<i64>::try_from(ids.get(r)).unwrap();
                let keep = Vec::<i64>::try_from(mask.get(r)).unwrap();
                row.into_iter()
                    .zip(keep)
                    .filter(|(_, k)| *k == 1)
                    .map(|(t, _)| t)
                    .collect()
            })
            .collect();
        let want: Vec<Vec<i64>> = (0..rows)
            .map(|r| Vec::<i64>::try_from(reference.get(r)).unwrap())
            .collect();
        let mut config = GenerationConfig::greedy(32, vec![], 0);
        let cached = generate(&model, &prompts, &config).unwrap();
        assert_eq!(cached.tokens, want, "{name}: with the KV cache");
        config.use_cache = false;
        let uncached = generate(&model, &prompts, &config).unwrap();
        assert_eq!(uncached.tokens, want, "{name}: without the KV cache");
    }
}

#[test]
fn bf16_loads_and_stays_close() {
    let name = "qwen2_tiny";
    let (_vs, model) = Llama::load(
        WeightSource::HfDir(&fixture(name)),
        &LoadOptions::new(Device::Cpu, Kind::BFloat16),
    )
    .unwrap();
    let exp = expected(name);
    let logits = tch::no_grad(|| model.forward(&exp["input_ids"], &exp["attention_mask"])).unwrap();
    assert_eq!(logits.kind(), Kind::BFloat16);
    // bf16 keeps 8 significant bits: only a sanity bound (logits of magnitude ≤ ~10, 2 layers).
    let diff = max_abs_diff_on(&logits, &exp["logits"], &exp["attention_mask"]);
    assert!(diff < 1.0, "bf16 diff {diff}");
}

fn config_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap()).unwrap()
}

fn parse(value: &serde_json::Value) -> tch_rpo::Result<LlamaConfig> {
    let config = LlamaConfig::from_json_str(&value.to_string(), Path::new("config.json"))?;
    config.validate()?;
    Ok(config)
}

fn config_error_name(result: tch_rpo::Result<LlamaConfig>) -> (&'static str, String) {
    match result {
        Err(Error::Input(InputError::Config { name, requirement })) => (name, requirement),
        other => panic!("expected InputError::Config, got {other:?}"),
    }
}

#[test]
fn bad_configs_are_typed_errors() {
    let base = config_json("llama_tiny");
    assert!(parse(&base).is_ok());

    let mut other = base.clone();
    other["model_type"] = "gpt2".into();
    let err = parse(&other).unwrap_err();
    assert!(
        matches!(err, Error::Weights(WeightsError::UnsupportedArchitecture { ref found, .. }) if found == "gpt2"),
        "{err:?}"
    );

    let mut yarn = base.clone();
    yarn["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0});
    let (name, why) = config_error_name(parse(&yarn));
    assert_eq!(name, "rope_parameters");
    assert!(why.contains("yarn"), "{why}");

    let mut old_style = base.clone();
    old_style.as_object_mut().unwrap().remove("rope_parameters");
    old_style["rope_theta"] = 500000.0.into();
    old_style["rope_scaling"] = serde_json::json!({"type": "dynamic", "factor": 2.0});
    let (name, why) = config_error_name(parse(&old_style));
    assert_eq!(name, "rope_scaling");
    assert!(why.contains("dynamic"), "{why}");

    let mut missing = base.clone();
    missing["rope_parameters"]
        .as_object_mut()
        .unwrap()
        .remove("low_freq_factor");
    let (name, why) = config_error_name(parse(&missing));
    assert_eq!(name, "rope_parameters");
    assert!(why.contains("low_freq_factor"), "{why}");

    let mut inverted = base.clone();
    inverted["rope_parameters"]["high_freq_factor"] = 0.5.into();
    assert_eq!(config_error_name(parse(&inverted)).0, "rope_parameters");

    let mut partial = base.clone();
    partial["rope_parameters"]["partial_rotary_factor"] = 0.5.into();
    assert_eq!(config_error_name(parse(&partial)).0, "rope_parameters");

    let mut act = base.clone();
    act["hidden_act"] = "gelu".into();
    let (name, why) = config_error_name(parse(&act));
    assert_eq!(name, "hidden_act");
    assert!(why.contains("gelu"), "{why}");

    let mut heads = base.clone();
    heads["num_key_value_heads"] = 3.into();
    assert_eq!(config_error_name(parse(&heads)).0, "num_attention_heads");

    let mut zero = base.clone();
    zero["hidden_size"] = 0.into();
    assert_eq!(config_error_name(parse(&zero)).0, "hidden_size");

    let mut eps = base.clone();
    eps["rms_norm_eps"] = (-1.0).into();
    assert_eq!(config_error_name(parse(&eps)).0, "rms_norm_eps");

    let mut window = config_json("mistral_tiny");
    window["sliding_window"] = 0.into();
    assert_eq!(config_error_name(parse(&window)).0, "sliding_window");

    let mut types = config_json("qwen2_tiny");
    types["layer_types"] = serde_json::json!(["full_attention"]);
    assert_eq!(config_error_name(parse(&types)).0, "layer_types");
    types["layer_types"] = serde_json::json!(["full_attention", "chunked_attention"]);
    let (name, why) = config_error_name(parse(&types));
    assert_eq!(name, "layer_types");
    assert!(why.contains("chunked_attention"), "{why}");

    let not_json = LlamaConfig::from_json_str("{", Path::new("x/config.json")).unwrap_err();
    assert!(matches!(not_json, Error::Checkpoint(_)), "{not_json:?}");
}

#[test]
fn bad_weights_are_typed_errors() {
    // An untied model without its head; a tied model given an unexpected bias.
    let (_vs, llama) = Llama::load(
        WeightSource::HfDir(&fixture("llama_tiny")),
        &LoadOptions::default(),
    )
    .unwrap();
    let parameters: Vec<(String, Tensor)> =
        Tensor::read_safetensors(fixture("llama_tiny").join("model.safetensors"))
            .unwrap()
            .into_iter()
            .filter(|(name, _)| name != "lm_head.weight")
            .collect();
    let source = WeightSource::Parameters {
        config: llama.config(),
        parameters: &parameters,
    };
    match Llama::load(source, &LoadOptions::default()) {
        Err(Error::Weights(WeightsError::Parameters { mismatch, .. })) => {
            assert_eq!(mismatch.missing, vec!["lm_head.weight".to_string()]);
        }
        other => panic!("expected a missing lm_head.weight, got {:?}", other.err()),
    }

    let mut extra = parameters;
    extra.push((
        "lm_head.weight".into(),
        llama.head_weight().expect("head weight").copy(),
    ));
    extra.push((
        "model.layers.0.self_attn.o_proj.bias".into(),
        Tensor::zeros([64], (Kind::Float, Device::Cpu)),
    ));
    let source = WeightSource::Parameters {
        config: llama.config(),
        parameters: &extra,
    };
    match Llama::load(source, &LoadOptions::default()) {
        Err(Error::Weights(WeightsError::Parameters { mismatch, .. })) => {
            assert_eq!(
                mismatch.unexpected,
                vec!["model.layers.0.self_attn.o_proj.bias".to_string()]
            );
        }
        other => panic!("expected an unexpected bias, got {:?}", other.err()),
    }

    let int_kind = Llama::load(
        WeightSource::HfDir(&fixture("llama_tiny")),
        &LoadOptions::new(Device::Cpu, Kind::Int64),
    );
    assert!(matches!(int_kind, Err(Error::Input(InputError::DType { .. }))));

    let missing = Llama::load(
        WeightSource::HfDir(Path::new("/nonexistent/llama")),
        &LoadOptions::default(),
    );
    assert!(matches!(missing, Err(Error::Io { .. })), "{:?}", missing.err());
}

#[test]
fn sharded_folder_with_the_untied_head_in_its_own_shard_loads() {
    let name = "llama_tiny";
    let dir = std::env::temp_dir().join(format!("tch-rpo-llama-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture(name).join("config.json"), dir.join("config.json")).unwrap();
    let tensors = Tensor::read_safetensors(fixture(name).join("model.safetensors")).unwrap();
    let (head, body): (Vec<_>, Vec<_>) = tensors.into_iter().partition(|(n, _)| n == "lm_head.weight");
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", &body),
        ("model-00002-of-00002.safetensors", &head),
    ] {
        let named: Vec<(&str, &Tensor)> = part.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_safetensors(&named, dir.join(file)).unwrap();
        for (n, _) in part {
            weight_map.insert(n.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let (_vs, model) = Llama::load(WeightSource::HfDir(&dir), &LoadOptions::default()).unwrap();
    let exp = expected(name);
    let logits = tch::no_grad(|| model.forward(&exp["input_ids"], &exp["attention_mask"])).unwrap();
    let diff = max_abs_diff_on(&logits, &exp["logits"], &exp["attention_mask"]);
    assert!(diff < F32_TOLERANCE, "sharded: {diff:e}");
    let _ = std::fs::remove_dir_all(&dir);
}
