//! LoRA adapters (`tch_rpo::lora`): PEFT's init, scaling and names; a fresh adapter leaves Gemma's
//! outputs bit-for-bit unchanged; the switch; dropout only while training; the adapter gradients are the
//! chain rule of the merged weight `W + s·B·A` (a plain-Rust f64 reference and autograd on the merged
//! weight); and every bad setting is a typed error.

mod common;
mod lora_support;

use common::tolerance::{gamma, SECOND_ORDER, U_F64};
use lora_support::{fixture_policy, gemma3_config, inputs, random_policy, randomize_b, rng_lock, seeded};
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};
use tch_rpo::lora::{AdaptableLinear, LoraAdapter, LoraAdapters, LoraConfig, LoraModel};
use tch_rpo::models::gemma::{GemmaPolicy, GEMMA_LORA_TARGETS};
use tch_rpo::train::PolicyModel;
use tch_rpo::{Error, InputError, LoraError};

/// Every Gemma generation: the committed Gemma 1 and Gemma 2 fixtures and a random Gemma 3.
fn gemma_policies() -> Vec<(String, GemmaPolicy)> {
    vec![
        ("gemma_tiny".into(), fixture_policy("gemma_tiny")),
        ("gemma2_tiny".into(), fixture_policy("gemma2_tiny")),
        ("gemma3".into(), random_policy(&gemma3_config(128), 3)),
    ]
}

#[test]
fn fresh_adapters_leave_logits_bit_identical_and_the_switch_restores_the_base() {
    for (label, mut policy) in gemma_policies() {
        let vocab = policy.model().config().vocab_size;
        let (ids, mask) = inputs(vocab, 5);
        let base_logits = policy.forward(&ids, &mask).unwrap();
        let base_hidden = policy.forward_hidden(&ids, &mask).unwrap().unwrap().hidden;
        let adapters = seeded(11, || LoraAdapters::attach(&mut policy, &LoraConfig::new(4, 8.0))).unwrap();
        let layers = policy.model().config().num_hidden_layers as usize;
        assert_eq!(adapters.paths().len(), 7 * layers, "{label}");
        // B = 0: exactly the base (the update adds zeros).
        assert!(
            policy.forward(&ids, &mask).unwrap().equal(&base_logits),
            "{label}: logits"
        );
        let hidden = policy.forward_hidden(&ids, &mask).unwrap().unwrap().hidden;
        assert!(hidden.equal(&base_hidden), "{label}: hidden states");
        // Nonzero B changes the outputs; switched off, the model is the base again, bit for bit.
        randomize_b(&adapters, 12, 0.5);
        let adapted = policy.forward(&ids, &mask).unwrap();
        assert!(
            !adapted.equal(&base_logits),
            "{label}: the adapters changed nothing"
        );
        assert!(adapters.set_enabled(false));
        assert!(
            policy.forward(&ids, &mask).unwrap().equal(&base_logits),
            "{label}: off"
        );
        assert!(!adapters.set_enabled(true));
        assert!(
            policy.forward(&ids, &mask).unwrap().equal(&adapted),
            "{label}: on again"
        );
        // Detached: the base.
        adapters.detach(&mut policy).unwrap();
        assert!(
            policy.forward(&ids, &mask).unwrap().equal(&base_logits),
            "{label}: detached"
        );
    }
}

#[test]
fn adapters_follow_peft_names_shapes_init_and_scaling() {
    let mut policy = random_policy(&gemma3_config(128), 4);
    let config = LoraConfig::new(8, 16.0);
    let adapters = seeded(13, || LoraAdapters::attach(&mut policy, &config)).unwrap();
    let linears = policy.adaptable_linears();
    assert_eq!(linears.len(), 7 * 3);
    let named = adapters.named_parameters();
    assert_eq!(named.len(), 2 * linears.len());
    for (linear, pair) in linears.iter().zip(named.chunks(2)) {
        let (out, input) = linear.features();
        assert!(GEMMA_LORA_TARGETS.contains(&linear.short_name()));
        let (a_name, a) = &pair[0];
        let (b_name, b) = &pair[1];
        assert_eq!(a_name, &format!("base_model.model.{}.lora_A.weight", linear.path));
        assert_eq!(b_name, &format!("base_model.model.{}.lora_B.weight", linear.path));
        assert_eq!((a.size(), b.size()), (vec![8, input], vec![out, 8]));
        assert!(a.requires_grad() && b.requires_grad());
        // PEFT: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform_ with a = sqrt(5)), B = 0.
        let bound = 1.0 / (input as f64).sqrt();
        let max = a.abs().max().double_value(&[]);
        assert!(
            max <= bound && max > 0.5 * bound,
            "{a_name}: max |A| {max} vs bound {bound}"
        );
        assert_eq!(b.abs().max().double_value(&[]), 0.0);
        let adapter = adapters.adapter(&linear.path).unwrap();
        assert_eq!(adapter.scaling(), 2.0);
    }
    // The embedding (tied head) is never a target.
    assert!(policy
        .adaptable_linears()
        .iter()
        .all(|l| !l.path.contains("embed")));
    let mut rs = config.clone();
    rs.use_rslora = true;
    assert_eq!(rs.scaling(), 16.0 / 8f64.sqrt());
    assert_eq!(rs.plain_alpha(), 16.0 * 8f64.sqrt());
}

#[test]
fn targets_pick_short_names_or_paths() {
    let mut policy = random_policy(&gemma3_config(128), 5);
    let mut config = LoraConfig::new(2, 4.0);
    config.target_modules = Some(vec!["q_proj".into(), "model.layers.1.mlp.down_proj".into()]);
    let adapters = LoraAdapters::attach(&mut policy, &config).unwrap();
    assert_eq!(
        adapters.paths(),
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.mlp.down_proj",
            "model.layers.2.self_attn.q_proj",
        ]
    );
}

/// A downstream model with one adapted linear layer, in f64: `y = x·Wᵀ (+ LoRA)`.
struct OneLinear {
    weight: Tensor,
    adapter: Option<LoraAdapter>,
}

impl OneLinear {
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear::<&Tensor>(&self.weight, None);
        match &self.adapter {
            Some(adapter) => adapter.apply(x, y).unwrap(),
            None => y,
        }
    }
}

impl LoraModel for OneLinear {
    fn adaptable_linears(&self) -> Vec<AdaptableLinear> {
        vec![AdaptableLinear {
            path: "proj".into(),
            weight: self.weight.shallow_clone(),
        }]
    }
    fn default_lora_targets(&self) -> Vec<String> {
        vec!["proj".into()]
    }
    fn set_lora_adapter(&mut self, path: &str, adapter: Option<LoraAdapter>) -> tch_rpo::Result<()> {
        assert_eq!(path, "proj");
        self.adapter = adapter;
        Ok(())
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

/// `Σ_k a[i][k]·b[k][j]` of row-major `a` `[n, m]`, `b` `[m, p]`, and the same of `|a|`, `|b|`.
fn matmul(a: &[f64], b: &[f64], (n, m, p): (usize, usize, usize)) -> (Vec<f64>, Vec<f64>) {
    let (mut out, mut abs) = (vec![0.0; n * p], vec![0.0; n * p]);
    for i in 0..n {
        for k in 0..m {
            for j in 0..p {
                out[i * p + j] += a[i * m + k] * b[k * p + j];
                abs[i * p + j] += (a[i * m + k] * b[k * p + j]).abs();
            }
        }
    }
    (out, abs)
}

fn transpose(a: &[f64], (n, m): (usize, usize)) -> Vec<f64> {
    let mut t = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            t[j * n + i] = a[i * m + j];
        }
    }
    t
}

proptest! {
    #![proptest_config(common::proptest_config(24))]

    /// For `L = Σ y ⊙ R`, `y = x·Wᵀ + s·x·Aᵀ·Bᵀ` (f64): autograd's `dL/dB` and `dL/dA` equal the plain-Rust
    /// formulas `s·Rᵀ·(x·Aᵀ)` and `s·(R·B)ᵀ·x`, and the chain rule of the merged weight `W' = W + s·B·A`
    /// (autograd's `G = dL/dW'`): `dL/dB = s·G·Aᵀ`, `dL/dA = s·Bᵀ·G`.
    ///
    /// Tolerance: each side is a product of three matrices (inner sizes `m₁`, `m₂`) and a scaling, each
    /// entry within `γ(m₁ + m₂ + 2)·s·(|·|·|·|·|·|)` of the exact value (the same product of absolute
    /// values); two sides differ by at most twice that (first order, [`SECOND_ORDER`] for the rest).
    #[test]
    fn adapter_gradients_are_the_merged_weight_chain_rule(
        n in 1usize..6, input in 1usize..12, out in 1usize..10, r_seed in 0i64..1000, seed in 0i64..1000,
        alpha in 0.25f64..8.0, rslora in any::<bool>(),
    ) {
        let r = 1 + (r_seed as usize) % input.min(out);
        let options = (Kind::Double, Device::Cpu);
        let _generator = rng_lock();
        tch::manual_seed(seed);
        let weight = Tensor::randn([out as i64, input as i64], options);
        let mut model = OneLinear { weight: weight.shallow_clone(), adapter: None };
        let mut config = LoraConfig::new(r as i64, alpha);
        config.use_rslora = rslora;
        let adapters = LoraAdapters::attach(&mut model, &config).unwrap();
        let s = config.scaling();
        let adapter = adapters.adapter("proj").unwrap();
        let (a, b) = (adapter.lora_a(), adapter.lora_b());
        tch::no_grad(|| b.shallow_clone().copy_(&Tensor::randn(b.size(), options)));
        let x = Tensor::randn([n as i64, input as i64], options);
        let rr = Tensor::randn([n as i64, out as i64], options);
        (model.forward(&x) * &rr).sum(Kind::Double).backward();
        let (grad_a, grad_b) = (values(&a.grad()), values(&b.grad()));
        // Autograd on the merged weight.
        let merged = (&weight + b.detach().matmul(&a.detach()) * s).set_requires_grad(true);
        (x.linear::<&Tensor>(&merged, None) * &rr).sum(Kind::Double).backward();
        let g = values(&merged.grad()); // [out, in]
        let (xv, rv, av, bv) = (values(&x), values(&rr), values(&a), values(&b));
        let abs = |v: &[f64]| -> Vec<f64> { v.iter().map(|x| x.abs()).collect() };
        // Plain formulas: dB = s·Rᵀ·(x·Aᵀ) [out, r]; dA = s·(R·B)ᵀ·x [r, in]; with the products of |·|.
        let rt = transpose(&rv, (n, out));
        let (xa, xa_abs) = matmul(&xv, &transpose(&av, (r, input)), (n, input, r));
        let db = matmul(&rt, &xa, (out, n, r)).0;
        let db_abs = matmul(&abs(&rt), &xa_abs, (out, n, r)).0;
        let (rb, rb_abs) = matmul(&rv, &bv, (n, out, r));
        let da = matmul(&transpose(&rb, (n, r)), &xv, (r, n, input)).0;
        let da_abs = matmul(&transpose(&rb_abs, (n, r)), &abs(&xv), (r, n, input)).0;
        // Chain rule of the merged weight: s·G·Aᵀ and s·Bᵀ·G.
        let g_at = matmul(&g, &transpose(&av, (r, input)), (out, input, r)).0;
        let bt_g = matmul(&transpose(&bv, (out, r)), &g, (r, out, input)).0;
        let bound_b = 2.0 * SECOND_ORDER * gamma(n + input + 2, U_F64) * s;
        let bound_a = 2.0 * SECOND_ORDER * gamma(n + out + 2, U_F64) * s;
        for i in 0..out * r {
            let tol = bound_b * db_abs[i];
            prop_assert!((grad_b[i] - s * db[i]).abs() <= tol, "dB[{i}]: {} vs {}", grad_b[i], s * db[i]);
            prop_assert!((grad_b[i] - s * g_at[i]).abs() <= tol, "dB[{i}] vs merged: {} vs {}", grad_b[i], s * g_at[i]);
        }
        for i in 0..r * input {
            let tol = bound_a * da_abs[i];
            prop_assert!((grad_a[i] - s * da[i]).abs() <= tol, "dA[{i}]: {} vs {}", grad_a[i], s * da[i]);
            prop_assert!((grad_a[i] - s * bt_g[i]).abs() <= tol, "dA[{i}] vs merged: {} vs {}", grad_a[i], s * bt_g[i]);
        }
    }
}

/// In a whole Gemma model (f64 weights) with fresh adapters (`B = 0`, so the forward pass is the base's,
/// bit for bit, and so is the gradient reaching every projection), one backward pass gives each adapter
/// `dL/dB = s·G·Aᵀ` and `dL/dA = s·Bᵀ·G = 0` exactly, with `G = dL/dW` the base weight's gradient from the
/// same pass. `dL/dB` sums the rows' products in another association than `G·Aᵀ` (`(gᵀ·x)·Aᵀ` against
/// `gᵀ·(x·Aᵀ)`, inner sizes N·T = 14 and `in` ≤ 128, f64): relative differences of `γ(142)·κ ≈ 3e-14·κ`
/// for a cancellation factor κ; the test allows 1e-9 of the largest entry (κ up to ~3e4).
#[test]
fn gemma_adapter_gradients_are_the_base_weight_chain_rule() {
    let mut policy = random_policy(&gemma3_config(128), 6);
    let (mut vs, model) = policy.into_parts();
    vs.set_kind(Kind::Double);
    policy = GemmaPolicy::new(vs, model);
    let config = LoraConfig::new(4, 6.0);
    let adapters = seeded(14, || LoraAdapters::attach(&mut policy, &config)).unwrap();
    let (ids, mask) = inputs(128, 7);
    let logits = policy.forward(&ids, &mask).unwrap();
    assert_eq!(logits.kind(), Kind::Double);
    let weights = seeded(16, || Tensor::randn(logits.size(), (Kind::Double, Device::Cpu)));
    (logits * weights).sum(Kind::Double).backward();
    let base: std::collections::HashMap<String, Tensor> = policy.named_parameters().into_iter().collect();
    let s = config.scaling();
    for path in adapters.paths() {
        let adapter = adapters.adapter(path).unwrap();
        let g = base[&format!("{path}.weight")].grad();
        let want_b = g.matmul(&adapter.lora_a().detach().tr()) * s;
        let got_b = adapter.lora_b().grad();
        let scale = want_b.abs().max().double_value(&[]);
        assert!(scale > 0.0, "{path}: zero gradient, nothing tested");
        let diff = (&got_b - &want_b).abs().max().double_value(&[]);
        assert!(diff <= 1e-9 * scale, "{path}: dB off by {diff:e} (max {scale:e})");
        assert_eq!(
            adapter.lora_a().grad().abs().max().double_value(&[]),
            0.0,
            "{path}: dA"
        );
    }
}

#[test]
fn dropout_applies_while_training_with_autograd_only() {
    let mut policy = random_policy(&gemma3_config(128), 8);
    let (ids, mask) = inputs(128, 9);
    let mut config = LoraConfig::new(4, 8.0);
    config.lora_dropout = 0.5;
    let adapters = seeded(15, || LoraAdapters::attach(&mut policy, &config)).unwrap();
    randomize_b(&adapters, 16, 0.5);
    // Evaluation (no_grad): no dropout — the same values as in evaluation mode with autograd.
    let eval = tch::no_grad(|| policy.forward(&ids, &mask).unwrap());
    adapters.set_training(false);
    assert!(!adapters.training());
    assert!(
        policy.forward(&ids, &mask).unwrap().equal(&eval),
        "eval mode with grad"
    );
    // Training mode with autograd: dropout masks, different on every pass.
    adapters.set_training(true);
    let (first, second) = {
        let _generator = rng_lock();
        (
            policy.forward(&ids, &mask).unwrap(),
            policy.forward(&ids, &mask).unwrap(),
        )
    };
    assert!(
        !first.equal(&eval) && !second.equal(&first),
        "dropout not applied"
    );
    // Switched off: the base, whatever the mode.
    adapters.set_enabled(false);
    let base = policy.forward(&ids, &mask).unwrap();
    adapters.detach(&mut policy).unwrap();
    assert!(policy.forward(&ids, &mask).unwrap().equal(&base));
}

fn attach_error(config: LoraConfig) -> Error {
    let mut policy = random_policy(&gemma3_config(128), 10);
    LoraAdapters::attach(&mut policy, &config).unwrap_err()
}

fn invalid_parameter(error: &Error) -> &'static str {
    match error {
        Error::Input(InputError::InvalidParameter { name, .. }) => name,
        other => panic!("expected InvalidParameter, got {other:?}"),
    }
}

#[test]
fn bad_settings_are_typed_errors() {
    assert_eq!(invalid_parameter(&attach_error(LoraConfig::new(0, 8.0))), "r");
    assert_eq!(invalid_parameter(&attach_error(LoraConfig::new(-3, 8.0))), "r");
    for alpha in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert_eq!(
            invalid_parameter(&attach_error(LoraConfig::new(4, alpha))),
            "lora_alpha"
        );
    }
    for dropout in [1.0, -0.1, f64::NAN, 1.5] {
        let mut config = LoraConfig::new(4, 8.0);
        config.lora_dropout = dropout;
        assert_eq!(invalid_parameter(&attach_error(config)), "lora_dropout");
    }
    // k_proj is [16, 64] in this config: r = 17 > min(16, 64).
    match attach_error(LoraConfig::new(17, 8.0)) {
        Error::Lora(LoraError::Rank { layer, rank, max, .. }) => {
            assert_eq!(
                (layer.as_str(), rank, max),
                ("model.layers.0.self_attn.k_proj", 17, 16)
            );
        }
        other => panic!("{other:?}"),
    }
    let mut config = LoraConfig::new(4, 8.0);
    config.target_modules = Some(vec!["q_proj".into(), "lm_head".into()]);
    let error = attach_error(config);
    match &error {
        Error::Lora(LoraError::UnknownTarget { target, available }) => {
            assert_eq!(target, "lm_head");
            assert_eq!(available, &GEMMA_LORA_TARGETS.join(", "));
        }
        other => panic!("{other:?}"),
    }
    assert!(error
        .to_string()
        .contains("q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"));
    for targets in [vec![], vec![" ".to_string()]] {
        let mut config = LoraConfig::new(4, 8.0);
        config.target_modules = Some(targets);
        assert!(matches!(
            attach_error(config),
            Error::Input(InputError::Config {
                name: "target_modules",
                ..
            })
        ));
    }
    // A path that names no layer of the model.
    let mut policy = random_policy(&gemma3_config(128), 10);
    let error = policy
        .set_lora_adapter("model.layers.9.self_attn.q_proj", None)
        .unwrap_err();
    assert!(
        matches!(error, Error::Input(InputError::Config { name: "path", .. })),
        "{error:?}"
    );
    // Nothing attached after a failed attach.
    let (ids, mask) = inputs(128, 1);
    let before = policy.forward(&ids, &mask).unwrap();
    assert!(LoraAdapters::attach(&mut policy, &LoraConfig::new(17, 8.0)).is_err());
    assert!(policy.forward(&ids, &mask).unwrap().equal(&before));
}

/// The Llama family gets LoRA through the shared decoder: on the committed Llama (untied, llama3 RoPE),
/// Qwen2 (q / k / v biases), Qwen3 (q / k norms) and Mistral (sliding window) fixtures, fresh adapters on the
/// seven projections of every layer leave the logits bit for bit, nonzero `B` changes them, and switched off
/// the model is the base again, bit for bit.
#[test]
fn llama_family_models_take_adapters_through_the_shared_decoder() {
    use tch_rpo::models::decoder::{LoadOptions, WeightSource};
    use tch_rpo::models::llama::{Llama, LlamaPolicy};
    for label in ["llama_tiny", "qwen2_tiny", "qwen3_tiny", "mistral_tiny"] {
        let (vs, model) = Llama::load(
            WeightSource::HfDir(&lora_support::fixture(label)),
            &LoadOptions::new(Device::Cpu, Kind::Float),
        )
        .unwrap();
        let mut policy = LlamaPolicy::new(vs, model);
        let config = policy.model().config().clone();
        let (ids, mask) = inputs(config.vocab_size, 5);
        let base_logits = policy.forward(&ids, &mask).unwrap();
        assert_eq!(
            policy.default_lora_targets(),
            GEMMA_LORA_TARGETS.map(String::from),
            "{label}"
        );
        let adapters = seeded(11, || LoraAdapters::attach(&mut policy, &LoraConfig::new(4, 8.0))).unwrap();
        assert_eq!(
            adapters.paths().len(),
            7 * config.num_hidden_layers as usize,
            "{label}"
        );
        assert!(
            policy.forward(&ids, &mask).unwrap().equal(&base_logits),
            "{label}: B = 0"
        );
        randomize_b(&adapters, 12, 0.5);
        assert!(
            !policy.forward(&ids, &mask).unwrap().equal(&base_logits),
            "{label}: B ≠ 0"
        );
        assert!(adapters.set_enabled(false));
        assert!(
            policy.forward(&ids, &mask).unwrap().equal(&base_logits),
            "{label}: off"
        );
    }
}
