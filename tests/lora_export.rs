//! Exporting LoRA adapters: a PEFT adapter folder that `peft.PeftModel.from_pretrained` loads on the
//! transformers model of the base, giving our logits (f32, ≤ 1e-4); the merged model through the existing
//! writers; a llama.cpp adapter GGUF read back by gguf-py (names, shapes, alpha, values); bad inputs.

mod export_support;
mod lora_support;

use std::path::Path;

use export_support::{max_abs_diff, python, run_check, TempDir};
use lora_support::{gemma3_config, inputs, random_policy, randomize_b, seeded};
use serde_json::Value;
use tch::{Device, Kind, Tensor};
use tch_rpo::gguf::GgmlType;
use tch_rpo::lora::{LoraConfig, LoraPolicy};
use tch_rpo::models::gemma::export::TokenizerSource;
use tch_rpo::models::gemma::{gguf_tensor_name, Gemma, GemmaConfig, GemmaPolicy, LoadOptions, WeightSource};
use tch_rpo::train::PolicyModel;
use tch_rpo::{CheckpointError, Error, GgufError, InputError, WeightsError};

/// Gemma 3 with transformers' default init range (logits of order 1, so that 1e-4 is f32 rounding).
fn config() -> GemmaConfig {
    let mut config = gemma3_config(128);
    config.initializer_range = 0.02;
    config
}

fn adapted(seed: i64, lora: &LoraConfig) -> LoraPolicy<GemmaPolicy> {
    let base = random_policy(&config(), 30);
    let policy = seeded(seed, || LoraPolicy::new(base, lora)).unwrap();
    randomize_b(policy.adapters(), seed + 1, 0.05);
    policy
}

fn rslora(r: i64, alpha: f64) -> LoraConfig {
    let mut config = LoraConfig::new(r, alpha);
    config.use_rslora = true;
    config
}

/// Runs `scripts/check_peft.py`; returns its result.json.
fn run_peft(base: &Path, adapter: &Path, inputs: &Path, out: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_peft.py");
    let status = std::process::Command::new(python())
        .arg(&script)
        .args([base, adapter, inputs, out])
        .status()
        .expect("running scripts/check_peft.py");
    assert!(
        status.success(),
        "scripts/check_peft.py failed ({status}): is peft installed (`bash scripts/setup.sh`)?"
    );
    serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap()
}

#[test]
fn peft_loads_the_adapter_folder_and_gives_our_logits() {
    let dir = TempDir::new("lora-peft");
    let (ids, mask) = inputs(128, 31);
    let input_file = dir.path("inputs.safetensors");
    Tensor::write_safetensors(&[("input_ids", &ids), ("attention_mask", &mask)], &input_file).unwrap();
    for (label, lora) in [("plain", LoraConfig::new(4, 8.0)), ("rslora", rslora(8, 4.0))] {
        let policy = adapted(32, &lora);
        let base_dir = dir.path(&format!("base-{label}"));
        policy
            .base()
            .save_pretrained(&base_dir, Kind::Float, TokenizerSource::None)
            .unwrap();
        let adapter_dir = dir.path(&format!("adapter-{label}"));
        policy.adapters().save_peft(&adapter_dir, None).unwrap();
        let ours = policy.forward(&ids, &mask).unwrap();
        let base_logits = tch::no_grad(|| {
            policy.adapters().set_enabled(false);
            let logits = policy.forward(&ids, &mask).unwrap();
            policy.adapters().set_enabled(true);
            logits
        });
        let out = dir.path(&format!("out-{label}"));
        let result = run_peft(&base_dir, &adapter_dir, &input_file, &out);
        let theirs = Tensor::read_safetensors(out.join("peft.safetensors"))
            .unwrap()
            .pop()
            .unwrap()
            .1;
        let diff = max_abs_diff(&ours, &theirs, &mask);
        let moved = max_abs_diff(&ours, &base_logits, &mask);
        eprintln!(
            "{label}: peft {} vs ours: max |Δlogit| {diff:e}; the adapters moved logits by {moved:e}",
            result["peft_version"]
        );
        assert!(diff <= 1e-4, "{label}: max |Δlogit| {diff:e}");
        assert!(
            moved > 1e-2,
            "{label}: the adapters barely change the logits ({moved:e})"
        );
        // PEFT found every adapted layer, with our scaling.
        let scaling = result["scaling"].as_object().unwrap();
        assert_eq!(scaling.len(), policy.adapters().paths().len(), "{label}");
        for (module, s) in scaling {
            assert!(
                policy.adapters().paths().iter().any(|p| module.ends_with(p)),
                "{module}"
            );
            assert_eq!(s.as_f64().unwrap(), lora.scaling(), "{label} {module}");
        }
        // And back: other adapters over the same base load the folder to the same values.
        let other = adapted(33, &lora);
        other.adapters().load_peft(&adapter_dir).unwrap();
        for ((name, a), (_, b)) in other.named_parameters().iter().zip(&policy.named_parameters()) {
            assert!(a.equal(b), "{label}: {name} after load_peft");
        }
    }
}

#[test]
fn merged_model_goes_through_the_existing_writers() {
    let dir = TempDir::new("lora-merged");
    let policy = adapted(34, &LoraConfig::new(4, 8.0));
    let (ids, mask) = inputs(128, 35);
    let ours = policy.forward(&ids, &mask).unwrap();
    let merged = policy.merged_parameters().unwrap();
    let options = LoadOptions::new(Device::Cpu, Kind::Float);
    let (_vs, model) = Gemma::load(
        WeightSource::Parameters {
            config: &config(),
            parameters: &merged,
        },
        &options,
    )
    .unwrap();
    let from_merged = model.forward(&ids, &mask).unwrap();
    // W + s·B·A rounded to f32 once per weight: the logits within 1e-4 (the PEFT round trip's bar).
    let diff = max_abs_diff(&ours, &from_merged, &mask);
    assert!(diff <= 1e-4, "merged parameters: max |Δlogit| {diff:e}");
    // merge_and_unload: the same merged weights in place, trainable again, no adapter left.
    let unloaded = policy.merge_and_unload().unwrap();
    assert!(unloaded.forward(&ids, &mask).unwrap().equal(&from_merged));
    assert!(unloaded.named_parameters().iter().all(|(_, p)| p.requires_grad()));
    // The existing writer: a folder whose reload computes the same logits.
    let folder = dir.path("merged");
    unloaded
        .save_pretrained(&folder, Kind::Float, TokenizerSource::None)
        .unwrap();
    let (_vs, reloaded) = Gemma::load(WeightSource::HfDir(&folder), &options).unwrap();
    assert!(reloaded.forward(&ids, &mask).unwrap().equal(&from_merged));
}

fn f32_bits(t: &Tensor) -> Vec<u64> {
    Vec::<f32>::try_from(t.detach().to_kind(Kind::Float).reshape([-1]))
        .unwrap()
        .iter()
        .map(|v| u64::from(v.to_bits()))
        .collect()
}

#[test]
fn llama_cpp_adapter_gguf_reads_back_in_gguf_py() {
    let dir = TempDir::new("lora-gguf");
    for (label, lora, alpha) in [
        ("plain", LoraConfig::new(4, 8.0), 8.0),
        ("rslora", rslora(4, 8.0), 16.0),
    ] {
        let policy = adapted(36, &lora);
        let path = dir.path(&format!("{label}.gguf"));
        let bytes = policy.save_gguf_adapter(&path, GgmlType::F32).unwrap();
        assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
        let out = dir.path(&format!("{label}.json"));
        run_check(&["gguf-dump", path.to_str().unwrap(), out.to_str().unwrap()]);
        let dump: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let metadata = &dump["metadata"];
        assert_eq!(metadata["general.architecture"]["value"], "gemma3");
        assert_eq!(metadata["general.type"]["value"], "adapter");
        assert_eq!(metadata["adapter.type"]["value"], "lora");
        assert_eq!(metadata["adapter.lora.alpha"]["types"][0], 6, "alpha is f32");
        assert_eq!(
            metadata["adapter.lora.alpha"]["value"].as_f64().unwrap(),
            alpha as f32 as f64
        );
        let tensors = dump["tensors"].as_object().unwrap();
        let adapters = policy.adapters();
        assert_eq!(tensors.len(), 2 * adapters.paths().len());
        for path_name in adapters.paths() {
            let adapter = adapters.adapter(path_name).unwrap();
            let base = gguf_tensor_name(&format!("{path_name}.weight")).unwrap();
            assert!(base.starts_with("blk.") && base.ends_with(".weight"), "{base}");
            let (a, b) = (adapter.lora_a(), adapter.lora_b());
            for (suffix, tensor) in [("lora_a", &a), ("lora_b", &b)] {
                let entry = &tensors[&format!("{base}.{suffix}")];
                // GGUF dims fastest first: lora_a [in, r], lora_b [r, out] (llama.cpp's layout).
                let size = tensor.size();
                let dims: Vec<i64> = entry["dims"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_i64().unwrap())
                    .collect();
                assert_eq!(dims, vec![size[1], size[0]], "{base}.{suffix}");
                assert_eq!(entry["type"], "F32");
                let bits: Vec<u64> = entry["bits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                assert_eq!(bits, f32_bits(tensor), "{base}.{suffix} values");
            }
            // llama.cpp's check: a.ne[0] == base in, b.ne[1] == base out, a.ne[1] == b.ne[0].
            assert_eq!(a.size()[0], b.size()[1]);
        }
    }
}

#[test]
fn export_errors_are_typed() {
    let dir = TempDir::new("lora-errors");
    let policy = adapted(37, &LoraConfig::new(4, 8.0));
    // Targets: a folder whose parent does not exist; a GGUF type that cannot hold the factors.
    let missing = dir.path("no/such/dir");
    let error = policy.adapters().save_peft(&missing, None).unwrap_err();
    assert!(
        matches!(error, Error::Input(InputError::InvalidPath { .. })),
        "{error:?}"
    );
    let error = policy
        .save_gguf_adapter(&dir.path("q8.gguf"), GgmlType::Q8_0)
        .unwrap_err();
    assert!(
        matches!(error, Error::Gguf(GgufError::Invalid { .. })),
        "{error:?}"
    );
    assert!(!dir.path("q8.gguf").exists());
    // A PEFT folder of another rank or scaling; of other targets.
    let saved = dir.path("saved");
    policy.adapters().save_peft(&saved, None).unwrap();
    let other_rank = adapted(38, &LoraConfig::new(2, 8.0));
    let error = other_rank.adapters().load_peft(&saved).unwrap_err();
    assert!(
        matches!(error, Error::Checkpoint(CheckpointError::Invalid { .. })),
        "{error:?}"
    );
    let other_alpha = adapted(38, &LoraConfig::new(4, 16.0));
    assert!(other_alpha.adapters().load_peft(&saved).is_err());
    let mut fewer = LoraConfig::new(4, 8.0);
    fewer.target_modules = Some(vec!["q_proj".into()]);
    let error = adapted(39, &fewer).adapters().load_peft(&saved).unwrap_err();
    assert!(
        matches!(error, Error::Weights(WeightsError::Parameters { .. })),
        "{error:?}"
    );
    // A non-finite adapter is never written.
    let (_, b) = &policy.named_parameters()[1];
    tch::no_grad(|| {
        let _ = b.shallow_clone().get(0).get(0).fill_(f64::NAN);
    });
    let error = policy.adapters().save_peft(&dir.path("nan"), None).unwrap_err();
    assert!(
        matches!(error, Error::Weights(WeightsError::NonFinite { .. })),
        "{error:?}"
    );
    let error = policy
        .save_gguf_adapter(&dir.path("nan.gguf"), GgmlType::F32)
        .unwrap_err();
    assert!(
        matches!(error, Error::Weights(WeightsError::NonFinite { .. })),
        "{error:?}"
    );
    assert!(!dir.path("nan").exists() && !dir.path("nan.gguf").exists());
}
