//! bf16 mixed precision ([`Precision::Bf16`]) through the trainer, on small Gemma 2 and Gemma 3 models: the
//! parameters become bf16, the optimizer's master weights and moments stay f32 (and start from the f32
//! values), and the training curve (loss per step) equals the f32 run's within a bound derived from bf16's
//! unit roundoff `u = 2^-8`:
//!
//! ```text
//! |L_bf16(k) − L_f32(k)| ≤ (1 + 1/16) · [ β·(2 + η) · T · 2·ρ·u·Z  +  √P · g(k) · (k − 1) · 2·a·lr ]
//! ```
//!
//! - forward term: a per-token log-prob `z_y − logsumexp(z)` moves by at most `2·max|δz|`; each logit is
//!   reached through `ρ` bf16 roundings of relative error `u` (per layer: the norm output, q, k, v, the
//!   attention output, o, the residual sum, the second norm, gate, up, the activation product, down, the
//!   second residual — 13 — plus the embedding, the final norm, the head's inputs and product — 4), each
//!   taken to reach the logits with gain at most 1 (first order), so `max|δz| ≤ ρ·u·Z` with `Z` the largest
//!   logit magnitude of the f32 model on the data; a row's sum of `T` (the longest row's scored tokens)
//!   such terms moves by `T·2·ρ·u·Z`, and the reference-free objective (sigmoid DPO on `β·(s_c − s_r)`
//!   plus `η·β`·the chosen NLL, per pair) has slope at most `β`, `β` and `η·β` in `s_c`, `s_r`, `s_c`;
//! - drift term: after `k − 1` AdamW updates the two runs' weights differ by at most
//!   `(k − 1)·2·a·lr` per entry (each update is at most `a·lr`, `a = (1 − β1)/√(1 − β2)` for PyTorch's
//!   AdamW without weight decay), which moves the loss by at most `‖∇L‖₁ ≤ √P·g(k)` times that (`g(k)` the
//!   f32 run's gradient norm at step `k`, `P` parameters).
//!
//! The f32 run itself is the trainer's default; the peer-equality tests (all f32) are untouched.

mod train_support;

use tch::{nn, Device, Kind, Tensor};
use tch_rpo::data::{ByteTokenizer, CollateConfig, Collator, Tokenizer};
use tch_rpo::models::gemma::{Gemma, GemmaConfig, GemmaPolicy, LoadOptions, WeightSource};
use tch_rpo::train::{cpu_has_native_bf16, PolicyModel, Precision, ReferenceSource, RpoTrainer, StepMetrics};
use tch_rpo::{Error, InputError, RpoConfig};
use train_support::preference_pairs;

const U_BF16: f64 = 1.0 / 256.0;
const SECOND_ORDER: f64 = 1.0 + 1.0 / 16.0;
const BETA: f64 = 0.1;
const ETA: f64 = 0.5;
const LR: f64 = 1e-4;
const STEPS: u64 = 4;

fn configs() -> Vec<GemmaConfig> {
    let mut gemma2 = GemmaConfig::small_gemma2(ByteTokenizer::new().vocab_size());
    gemma2.num_hidden_layers = 2;
    gemma2.sliding_window = Some(4);
    let mut gemma3 = gemma2.clone();
    gemma3.model_type = "gemma3_text".into();
    gemma3.final_logit_softcapping = None;
    gemma3.attn_logit_softcapping = None;
    gemma3.rope_local_base_freq = Some(100.0);
    vec![gemma2, gemma3]
}

/// A policy with seeded random weights (initializer range 0.2, so that the layers matter).
fn policy(config: &GemmaConfig, seed: i64) -> GemmaPolicy {
    let mut config = config.clone();
    config.initializer_range = 0.2;
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gemma::random(&vs.root(), &config).unwrap();
    GemmaPolicy::new(vs, model)
}

/// A copy of `policy` (same f32 weights).
fn copy(policy: &GemmaPolicy) -> GemmaPolicy {
    let parameters = policy.named_parameters();
    let config = policy.model().config().clone();
    let source = WeightSource::Parameters {
        config: &config,
        parameters: &parameters,
    };
    let (vs, model) = Gemma::load(source, &LoadOptions::new(Device::Cpu, Kind::Float)).unwrap();
    GemmaPolicy::new(vs, model)
}

fn trainer(policy: GemmaPolicy, precision: Option<Precision>) -> tch_rpo::Result<RpoTrainer<GemmaPolicy>> {
    let mut builder = RpoTrainer::builder(policy)
        .reference(ReferenceSource::Free)
        .objective(RpoConfig::paper(BETA, ETA))
        .learning_rate(LR)
        .max_steps(STEPS)
        .warmup_steps(0)
        .max_grad_norm(None)
        .batch_size(3)
        .shuffle(false)
        .progress(false);
    if let Some(precision) = precision {
        builder = builder.precision(precision);
    }
    builder.build()
}

fn run(trainer: &mut RpoTrainer<GemmaPolicy>) -> Vec<StepMetrics> {
    let pairs = preference_pairs(6);
    let collator = Collator::new(CollateConfig::new(ByteTokenizer::PAD)).unwrap();
    trainer.fit(&pairs, &collator).unwrap()
}

/// The largest logit magnitude of `policy` on the training pairs and the most scored tokens in a row.
fn logit_scale_and_tokens(policy: &GemmaPolicy) -> (f64, f64) {
    let pairs = preference_pairs(6);
    let collator = Collator::new(CollateConfig::new(ByteTokenizer::PAD)).unwrap();
    let chunk: Vec<_> = pairs.iter().enumerate().collect();
    let batch = collator.collate(&chunk, Device::Cpu).unwrap();
    let logits = tch::no_grad(|| policy.forward(&batch.input_ids, &batch.attention_mask).unwrap());
    let z = logits.abs().max().double_value(&[]);
    let scored = batch
        .labels
        .ne(-100)
        .sum_dim_intlist(-1, false, Kind::Int64)
        .max();
    (z, scored.double_value(&[]))
}

#[test]
fn bf16_curve_equals_f32_within_the_bound() {
    for (i, config) in configs().iter().enumerate() {
        let base = policy(config, 7 + i as i64);
        let (z, tokens) = logit_scale_and_tokens(&base);
        let params = base
            .named_parameters()
            .iter()
            .map(|(_, p)| p.numel())
            .sum::<usize>() as f64;
        let originals: Vec<(String, Tensor)> = base
            .named_parameters()
            .into_iter()
            .map(|(n, p)| (n, p.detach().copy()))
            .collect();
        let mut f32_trainer = trainer(copy(&base), None).unwrap();
        let mut bf16_trainer = trainer(base, Some(Precision::Bf16)).unwrap();

        // The parameters are bf16, the master weights f32 and equal to the f32 values before rounding.
        for state in bf16_trainer.optimizer().params() {
            assert_eq!(state.param.kind(), Kind::BFloat16, "{}", state.name);
            assert_eq!(state.m.kind(), Kind::Float);
            let master = state.master.as_ref().expect("a master copy");
            assert_eq!(master.kind(), Kind::Float);
            let original = &originals.iter().find(|(n, _)| *n == state.name).unwrap().1;
            assert!(
                master.equal(original),
                "{}: master is not the f32 original",
                state.name
            );
        }
        for (name, p) in bf16_trainer.model().named_parameters() {
            assert_eq!(p.kind(), Kind::BFloat16, "{name}");
        }

        let f32_curve = run(&mut f32_trainer);
        let bf16_curve = run(&mut bf16_trainer);
        assert_eq!(f32_curve.len(), STEPS as usize);
        assert_eq!(bf16_curve.len(), STEPS as usize);
        let layers = config.num_hidden_layers as f64;
        let rho = 13.0 * layers + 4.0;
        let a = 0.1 / 0.001f64.sqrt();
        for (k, (f, b)) in f32_curve.iter().zip(&bf16_curve).enumerate() {
            let forward = BETA * (2.0 + ETA) * tokens * 2.0 * rho * U_BF16 * z;
            let drift = params.sqrt() * f.grad_norm.unwrap() * k as f64 * 2.0 * a * LR;
            let bound = SECOND_ORDER * (forward + drift);
            let gap = (b.loss() - f.loss()).abs();
            eprintln!(
                "config {i} step {}: f32 {:.6} bf16 {:.6} gap {gap:.3e} bound {bound:.3e} (forward {forward:.3e})",
                k + 1,
                f.loss(),
                b.loss()
            );
            assert!(
                b.loss().is_finite() && gap <= bound,
                "step {}: gap {gap} > bound {bound}",
                k + 1
            );
        }
        // The master weights are still f32 after training, and the parameters their rounding.
        for state in bf16_trainer.optimizer().params() {
            let master = state.master.as_ref().unwrap();
            assert_eq!(master.kind(), Kind::Float);
            assert!(
                state.param.equal(&master.to_kind(Kind::BFloat16)),
                "{}",
                state.name
            );
        }
    }
}

#[test]
fn f32_precision_changes_nothing() {
    let config = &configs()[1];
    let base = policy(config, 3);
    let mut plain = trainer(copy(&base), None).unwrap();
    let mut explicit = trainer(base, Some(Precision::F32)).unwrap();
    let (a, b) = (run(&mut plain), run(&mut explicit));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.loss().to_bits(), y.loss().to_bits());
    }
    assert!(explicit.optimizer().params().iter().all(|p| p.master.is_none()));
}

#[test]
fn auto_follows_the_cpu() {
    let expected = if cpu_has_native_bf16() {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    assert_eq!(Precision::Auto.resolve(Device::Cpu), expected);
    assert_eq!(Precision::F32.resolve(Device::Cpu), Kind::Float);
    assert_eq!(Precision::Bf16.resolve(Device::Cpu), Kind::BFloat16);
    assert_eq!(Precision::Auto.resolve(Device::Cuda(0)), Kind::Float);
    for name in ["auto", "f32", "bf16"] {
        assert_eq!(name.parse::<Precision>().unwrap().name(), name);
    }
}

#[test]
fn unknown_precision_name_is_refused() {
    let err = "fp8".parse::<Precision>().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Input(InputError::Config {
                name: "precision",
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn phase_timing_reports_every_phase() {
    let base = policy(&configs()[1], 5);
    let mut trainer = RpoTrainer::builder(base)
        .reference(ReferenceSource::Free)
        .objective(RpoConfig::paper(BETA, ETA))
        .max_steps(2)
        .batch_size(3)
        .phase_timing(true)
        .progress(false)
        .build()
        .unwrap();
    let metrics = run(&mut trainer);
    for m in &metrics {
        let phases = m.phases.expect("phase times");
        let json = m.to_json();
        for (name, seconds) in phases.entries() {
            assert!(seconds >= 0.0 && seconds <= phases.total(), "{name}: {seconds}");
            assert_eq!(json["phases"][name].as_f64(), Some(seconds), "{name}");
        }
        use tch_rpo::timing::Phase;
        for phase in [
            Phase::Data,
            Phase::BodyForward,
            Phase::Attention,
            Phase::Head,
            Phase::BodyBackward,
            Phase::Optimizer,
        ] {
            assert!(phases.get(phase) > 0.0, "{phase:?} not timed");
        }
        assert!(
            phases.get(Phase::Attention) <= phases.get(Phase::BodyForward) + phases.get(Phase::BodyBackward)
        );
    }
    // Off by default: no phases, no JSON key.
    let mut plain = trainer_without_timing();
    let metrics = run(&mut plain);
    assert!(metrics
        .iter()
        .all(|m| m.phases.is_none() && m.to_json().get("phases").is_none()));
}

fn trainer_without_timing() -> RpoTrainer<GemmaPolicy> {
    trainer(policy(&configs()[1], 5), None).unwrap()
}

/// The gradient norm of bf16 parameters (computed from f32 copies of row blocks) equals the f64 norm of
/// the bf16 gradients within f32 summation error: a sum of `n` squares in f32 is within `γ(n)` relative
/// (`n·u_f32`, any order), and the square root halves it.
#[test]
fn bf16_gradient_norm_in_blocks() {
    let u_f32 = 1.0 / 16_777_216.0;
    for shape in [vec![3i64, 2_000_000], vec![7, 5], vec![11]] {
        tch::manual_seed(1);
        let w = Tensor::randn(&shape[..], (Kind::BFloat16, Device::Cpu)).set_requires_grad(true);
        let c = Tensor::randn(&shape[..], (Kind::BFloat16, Device::Cpu));
        let opt =
            tch_rpo::train::AdamW::new(Default::default(), &[("w".to_string(), w.shallow_clone())]).unwrap();
        (&w * &c).sum(Kind::BFloat16).backward();
        let expected = w
            .grad()
            .to_kind(Kind::Double)
            .square()
            .sum(Kind::Double)
            .sqrt()
            .double_value(&[]);
        let n = w.numel() as f64;
        let got = opt.grad_norm().unwrap();
        assert!(
            (got - expected).abs() <= n * u_f32 * expected,
            "{shape:?}: {got} vs {expected}"
        );
    }
}
