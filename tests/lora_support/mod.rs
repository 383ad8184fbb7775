//! Helpers of the LoRA tests: small Gemma models (the committed fixtures and seeded random ones), inputs,
//! and adapters given nonzero values.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tch::{nn, Device, Kind, Tensor};
use tch_rpo::lora::LoraAdapters;
use tch_rpo::models::gemma::{Gemma, GemmaConfig, GemmaPolicy, LoadOptions, WeightSource};
use tch_rpo::train::PolicyModel;

/// Serializes the tests of one binary that draw from libtorch's global generator (seeded initializations,
/// random values, dropout): another test drawing between `manual_seed` and the draws would change them.
static SEED_LOCK: Mutex<()> = Mutex::new(());

/// Holds [`SEED_LOCK`] (a test that failed while holding it does not poison the others).
pub fn rng_lock() -> MutexGuard<'static, ()> {
    SEED_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `f()` after `tch::manual_seed(seed)`, holding the generator for the two.
pub fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    let _guard = rng_lock();
    tch::manual_seed(seed);
    f()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A committed tiny fixture (`gemma_tiny`: Gemma 1, `gemma2_tiny`: Gemma 2) as a policy, f32 CPU.
pub fn fixture_policy(name: &str) -> GemmaPolicy {
    let (vs, model) = Gemma::load(
        WeightSource::HfDir(&fixture(name)),
        &LoadOptions::new(Device::Cpu, Kind::Float),
    )
    .unwrap();
    GemmaPolicy::new(vs, model)
}

/// A small Gemma 3 configuration (3 layers: sliding, sliding, full; q/k norms; two RoPE bases).
pub fn gemma3_config(vocab: i64) -> GemmaConfig {
    let mut config = GemmaConfig::small_gemma2(vocab);
    config.model_type = "gemma3_text".into();
    config.num_hidden_layers = 3;
    config.sliding_window = Some(4);
    config.final_logit_softcapping = None;
    config.attn_logit_softcapping = None;
    config.rope_local_base_freq = Some(100.0);
    config.layer_types = Some(vec![
        "sliding_attention".into(),
        "sliding_attention".into(),
        "full_attention".into(),
    ]);
    config.initializer_range = 0.2;
    config
}

/// A seeded random policy of `config` whose norm weights are nonzero too.
pub fn random_policy(config: &GemmaConfig, seed: i64) -> GemmaPolicy {
    seeded(seed, || {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Gemma::random(&vs.root(), config).unwrap();
        let policy = GemmaPolicy::new(vs, model);
        tch::no_grad(|| {
            for (name, p) in policy.named_parameters() {
                if name.contains("norm") {
                    p.shallow_clone()
                        .copy_(&(Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * 0.3));
                }
            }
        });
        policy
    })
}

/// Token ids `[2, 7]` in `[3, vocab)` and a mask with right padding on the second row.
pub fn inputs(vocab: i64, seed: i64) -> (Tensor, Tensor) {
    let ids = seeded(seed, || {
        Tensor::randint_low(3, vocab, [2, 7], (Kind::Int64, Device::Cpu))
    });
    let mask = Tensor::ones([2, 7], (Kind::Int64, Device::Cpu));
    let _ = mask.narrow(1, 5, 2).get(1).fill_(0);
    (ids, mask)
}

/// Gives every `B` of `adapters` random values (N(0, scale²)), so that the adapters change the model.
pub fn randomize_b(adapters: &LoraAdapters, seed: i64, scale: f64) {
    seeded(seed, || {
        tch::no_grad(|| {
            for (name, p) in adapters.named_parameters() {
                if name.ends_with("lora_B.weight") {
                    let values = Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * scale;
                    p.shallow_clone().copy_(&values.to_kind(p.kind()));
                }
            }
        })
    });
}

/// Copies of every tensor (to compare bytes before / after).
pub fn snapshot(named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    named
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().copy()))
        .collect()
}
