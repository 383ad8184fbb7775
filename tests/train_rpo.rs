//! RpoTrainer: learning, gradient accumulation, non-finite safety, reference sources, AdamW and schedule
//! against plain-Rust f64 formulas.
#![cfg(feature = "train")]

mod train_support;

use tch::{Device, Kind, Tensor};
use tch_rpo::data::{
    encode_record, ByteTokenizer, CollateConfig, CollatedBatch, Collator, EncodedPair, PreferenceRecord, Text,
};
use tch_rpo::train::{
    AdamW, AdamWConfig, Decay, LossPath, LrSchedule, PolicyModel, ReferenceCache, ReferenceSource,
    RpoTrainer, RpoTrainerConfig, Trainer, Warmup,
};
use tch_rpo::train::{Collective, ScoringOptions};
use tch_rpo::{compute_loss, LogProbOptions, LossBatch, RpoConfig};
use tch_rpo::{Error, InputError};
use train_support::{max_param_diff, preference_pairs, TinyLm, POISON};

const HIDDEN: i64 = 16;

fn collator() -> Collator {
    Collator::new(CollateConfig::new(ByteTokenizer::PAD)).unwrap()
}

fn batch(pairs: &[EncodedPair], indices: &[usize]) -> CollatedBatch {
    let chosen: Vec<(usize, &EncodedPair)> = indices.iter().map(|&i| (i, &pairs[i])).collect();
    collator().collate(&chosen, Device::Cpu).unwrap()
}

fn config(rpo: RpoConfig, lr: f64, total_steps: u64, warmup_ratio: f64) -> RpoTrainerConfig {
    RpoTrainerConfig {
        learning_rate: lr,
        warmup: Warmup::Ratio(warmup_ratio),
        seed: 7,
        progress: false,
        ..RpoTrainerConfig::paper(rpo, total_steps)
    }
}

fn trainer(seed: i64, reference: ReferenceSource, config: RpoTrainerConfig) -> RpoTrainer<TinyLm> {
    RpoTrainer::new(TinyLm::new(seed, HIDDEN), reference, config).unwrap()
}

fn model_reference(seed: i64) -> ReferenceSource {
    ReferenceSource::Model(Box::new(TinyLm::new(seed, HIDDEN)))
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn rpo_loss_falls_and_reward_accuracy_rises() {
    let pairs = preference_pairs(16);
    let mut t = trainer(
        1,
        model_reference(1),
        RpoTrainerConfig {
            batch_pairs: 8,
            ..config(RpoConfig::paper(0.1, 0.005), 5e-3, 30, 0.1)
        },
    );
    let before = t.evaluate(&pairs, &collator(), 8).unwrap();
    // policy == reference: every reward is 0, the loss is ln 2 + c·NLL
    assert!(
        before.get("rewards/accuracies").unwrap().abs() < 1e-12
            && before.get("rewards/margins").unwrap().abs() < 1e-6
    );
    let history = t.fit(&pairs, &collator()).unwrap();
    assert_eq!(history.len(), 30);
    assert!(history.iter().all(|m| !m.skipped));
    let first = mean(history[..3].iter().map(|m| m.loss()));
    let last = mean(history[27..].iter().map(|m| m.loss()));
    assert!(last < first - 0.2, "loss {first} -> {last}");
    let first_acc = mean(history[..3].iter().map(|m| m.get("rewards/accuracies").unwrap()));
    let last_acc = mean(history[27..].iter().map(|m| m.get("rewards/accuracies").unwrap()));
    assert!(last_acc > first_acc + 0.5, "accuracy {first_acc} -> {last_acc}");
    let after = t.evaluate(&pairs, &collator(), 8).unwrap();
    assert!(after.get("rewards/accuracies").unwrap() >= 0.9, "{after:?}");
    assert!(
        after.get("loss/dpo").unwrap() < std::f64::consts::LN_2 - 0.2,
        "{after:?}"
    );
    assert!(after.get("rewards/margins").unwrap() > 0.0);
}

/// N micro-batches (uneven sizes) give the loss, gradient norm and update of one batch of the same pairs,
/// for each SFT normalization (token-mean needs the whole step's chosen-token count).
#[test]
fn gradient_accumulation_equals_one_batch() {
    let pairs = preference_pairs(7);
    for rpo in [
        RpoConfig::paper(0.1, 0.5),
        RpoConfig::trl(0.1, 1.0),
        RpoConfig::openrlhf(0.1, 0.2),
    ] {
        let cfg = || {
            let mut c = config(rpo.clone(), 1e-2, 4, 0.0);
            c.max_grad_norm = None;
            // Adam's first update is lr·g/(|g| + ε) per element: with the default ε = 1e-8, float-order
            // noise on an element whose gradient is almost zero moves it by up to lr. ε = 1e-3 bounds that
            // sensitivity (d update / d g ≤ lr/ε = 10) without hiding a wrong gradient (|g| ≫ 1e-3 here).
            c.optimizer.eps = 1e-3;
            c.logprobs.token_stats = true;
            c
        };
        let mut whole = trainer(3, model_reference(4), cfg());
        let mut split = trainer(3, model_reference(4), cfg());
        let one = whole
            .train_step(&[batch(&pairs, &[0, 1, 2, 3, 4, 5, 6])])
            .unwrap();
        let many = split
            .train_step(&[
                batch(&pairs, &[0, 1, 2]),
                batch(&pairs, &[3]),
                batch(&pairs, &[4, 5, 6]),
            ])
            .unwrap();
        let close = |a: f64, b: f64, what: &str| {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                "{}: {what} {a} vs {b}",
                rpo.describe()
            );
        };
        close(one.loss(), many.loss(), "loss");
        close(one.get("nll").unwrap(), many.get("nll").unwrap(), "nll");
        close(one.grad_norm.unwrap(), many.grad_norm.unwrap(), "grad_norm");
        close(
            one.get("rewards/accuracies").unwrap(),
            many.get("rewards/accuracies").unwrap(),
            "accuracy",
        );
        close(
            one.get("logps/chosen").unwrap(),
            many.get("logps/chosen").unwrap(),
            "logps/chosen",
        );
        // token statistics, pooled over the step's scored tokens
        let token_statistics = tch_rpo::train::METRICS
            .iter()
            .filter(|m| m.average.is_token_statistic());
        for name in token_statistics.map(|m| m.name) {
            close(one.get(name).expect(name), many.get(name).expect(name), name);
            assert!(one.to_json()[name].is_number(), "{name}");
        }
        assert_eq!(one.pairs, 7);
        assert_eq!(many.pairs, 7);
        let diff = max_param_diff(
            &whole.model().named_parameters(),
            &split.model().named_parameters(),
        );
        assert!(diff < 1e-6, "{}: parameters differ by {diff}", rpo.describe());
        // and the update did happen
        let untouched = TinyLm::new(3, HIDDEN);
        assert!(max_param_diff(&whole.model().named_parameters(), &untouched.params()) > 1e-3);
    }
}

fn assert_untouched(t: &RpoTrainer<TinyLm>, snapshot: &[(String, Tensor)]) {
    assert_eq!(max_param_diff(&t.model().named_parameters(), snapshot), 0.0);
    assert_eq!(t.optimizer().step_count(), 0);
    for p in t.optimizer().params() {
        assert_eq!(p.m.abs().max().double_value(&[]), 0.0, "{}", p.name);
        assert_eq!(p.v.abs().max().double_value(&[]), 0.0, "{}", p.name);
    }
}

#[test]
fn nan_reference_logprob_skips_the_step() {
    let pairs = preference_pairs(6);
    let mut chosen = vec![-10.0; 6];
    chosen[2] = f64::NAN;
    let cache = ReferenceCache::from_values(chosen, vec![-12.0; 6]).unwrap();
    let mut t = trainer(
        5,
        ReferenceSource::Cached(cache),
        config(RpoConfig::paper(0.1, 0.005), 1e-2, 10, 0.0),
    );
    let snapshot = TinyLm::new(5, HIDDEN).snapshot();
    let m = t
        .train_step(&[batch(&pairs, &[0, 1]), batch(&pairs, &[2, 3])])
        .unwrap();
    assert!(m.skipped, "{m:?}");
    assert!(m.skip_reason.as_deref().unwrap().contains("non-finite"));
    assert_eq!((m.skipped_steps, t.skipped_steps(), t.step()), (1, 1, 1));
    assert!(m.to_json()["loss"].is_null());
    assert_untouched(&t, &snapshot);
    // a clean batch trains
    let m = t.train_step(&[batch(&pairs, &[0, 1, 4, 5])]).unwrap();
    assert!(!m.skipped && m.loss().is_finite());
    assert_eq!((m.skipped_steps, t.optimizer().step_count()), (1, 1));
    assert!(max_param_diff(&t.model().named_parameters(), &snapshot) > 0.0);
}

#[test]
fn nan_gradient_with_finite_loss_skips_the_step() {
    let tokenizer = ByteTokenizer::new();
    let poisoned = PreferenceRecord::new(
        Text::Plain(format!("poison {}", POISON as u8 as char)),
        Text::Plain("yes".into()),
        Text::Plain("no".into()),
    )
    .unwrap();
    let mut pairs = preference_pairs(3);
    pairs.push(encode_record(&tokenizer, &poisoned).unwrap());
    let mut t = trainer(
        6,
        model_reference(6),
        config(RpoConfig::paper(0.1, 0.005), 1e-2, 10, 0.0),
    );
    let snapshot = TinyLm::new(6, HIDDEN).snapshot();
    let m = t.train_step(&[batch(&pairs, &[0, 3])]).unwrap();
    assert!(m.loss().is_finite(), "the loss itself is finite: {m:?}");
    assert!(
        m.skipped && m.skip_reason.as_deref().unwrap().contains("gradient"),
        "{m:?}"
    );
    assert!(!m.grad_norm.unwrap().is_finite());
    assert_untouched(&t, &snapshot);
    assert!(!t.train_step(&[batch(&pairs, &[0, 1, 2])]).unwrap().skipped);
}

#[test]
fn eval_step_reports_the_training_loss_and_changes_nothing() {
    let pairs = preference_pairs(4);
    let mut t = trainer(
        8,
        model_reference(9),
        config(RpoConfig::paper(0.1, 0.005), 1e-2, 10, 0.0),
    );
    let b = batch(&pairs, &[0, 1, 2, 3]);
    let snapshot = TinyLm::new(8, HIDDEN).snapshot();
    let eval = t.eval_step(&b).unwrap();
    assert!(eval.grad_norm.is_none() && eval.lr.is_none() && !eval.skipped);
    assert_untouched(&t, &snapshot);
    assert_eq!(t.step(), 0);
    let train = t.train_step(&[b]).unwrap();
    assert!(
        (eval.loss() - train.loss()).abs() < 1e-6,
        "{} vs {}",
        eval.loss(),
        train.loss()
    );
    assert!((eval.get("rewards/margins").unwrap() - train.get("rewards/margins").unwrap()).abs() < 1e-6);
}

#[test]
fn cached_reference_matches_the_reference_model() {
    let pairs = preference_pairs(8);
    let reference = TinyLm::new(11, HIDDEN);
    let cache = tch_rpo::train::score_reference(
        &reference,
        &pairs,
        &collator(),
        &ScoringOptions::new(3).with_loss_path(LossPath::Logits),
        &Collective::single(),
    )
    .unwrap();
    assert_eq!(cache.len(), 8);
    let cfg = || RpoTrainerConfig {
        batch_pairs: 4,
        ..config(RpoConfig::paper(0.1, 0.005), 1e-2, 3, 0.0)
    };
    let mut with_model = trainer(10, model_reference(11), cfg());
    let mut with_cache = trainer(10, ReferenceSource::Cached(cache.clone()), cfg());
    let a = with_model.fit(&pairs, &collator()).unwrap();
    let b = with_cache.fit(&pairs, &collator()).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x.loss() - y.loss()).abs() < 1e-6
                && (x.get("rewards/chosen").unwrap() - y.get("rewards/chosen").unwrap()).abs() < 1e-6
        );
    }
    // the cache holds what the model says, per pair
    let b0 = batch(&pairs, &[5]);
    let logits = reference.forward(&b0.input_ids, &b0.attention_mask).unwrap();
    let lp = tch_rpo::sequence_logprobs(&logits, &b0.labels, &LogProbOptions::causal()).unwrap();
    let (c, r) = cache.get(5).unwrap();
    assert!((lp.sum.double_value(&[0]) - c).abs() < 1e-5 && (lp.sum.double_value(&[1]) - r).abs() < 1e-5);
    // save / load round trip
    let dir = std::env::temp_dir().join(format!("tch-rpo-refcache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    cache.save(&dir.join("ref.safetensors")).unwrap();
    assert_eq!(ReferenceCache::load(&dir.join("ref.safetensors")).unwrap(), cache);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn hidden_state_path_matches_logits_path() {
    let pairs = preference_pairs(6);
    let mut cfg = config(RpoConfig::paper(0.1, 0.005), 1e-2, 2, 0.0);
    cfg.loss_path = LossPath::Logits;
    let mut logits = trainer(12, ReferenceSource::Free, cfg.clone());
    cfg.loss_path = LossPath::Hidden;
    let mut hidden = trainer(12, ReferenceSource::Free, cfg);
    for _ in 0..2 {
        let a = logits.train_step(&[batch(&pairs, &[0, 1, 2, 3, 4, 5])]).unwrap();
        let b = hidden.train_step(&[batch(&pairs, &[0, 1, 2, 3, 4, 5])]).unwrap();
        assert!(
            (a.loss() - b.loss()).abs() < 1e-6 && (a.grad_norm.unwrap() - b.grad_norm.unwrap()).abs() < 1e-5
        );
    }
}

/// Training on the hidden-state path adds the head's gradient straight into its `.grad` (from the first
/// step on, when there is no `.grad` yet); with a model reference and two micro-batches per step the weights
/// after two steps still equal the logits path's.
#[test]
fn hidden_state_path_with_accumulation_matches_logits_path_weights() {
    let pairs = preference_pairs(8);
    let mut cfg = config(RpoConfig::paper(0.1, 0.005), 1e-2, 2, 0.0);
    cfg.loss_path = LossPath::Logits;
    let mut logits = trainer(15, model_reference(16), cfg.clone());
    cfg.loss_path = LossPath::Hidden;
    let mut hidden = trainer(15, model_reference(16), cfg);
    let micro = || vec![batch(&pairs, &[0, 1, 2]), batch(&pairs, &[3, 4, 5, 6, 7])];
    for _ in 0..2 {
        let a = logits.train_step(&micro()).unwrap();
        let b = hidden.train_step(&micro()).unwrap();
        assert!((a.loss() - b.loss()).abs() < 1e-6, "{} vs {}", a.loss(), b.loss());
        assert!((a.grad_norm.unwrap() - b.grad_norm.unwrap()).abs() < 1e-5);
    }
    let params = |t: &RpoTrainer<TinyLm>| t.model().named_parameters();
    for ((name, a), (_, b)) in params(&logits).iter().zip(params(&hidden).iter()) {
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{name}: max |Δ| = {diff}");
    }
    let grads = hidden.optimizer().params().iter().map(|p| p.grad().unwrap());
    for grad in grads.flatten() {
        assert_eq!(
            grad.abs().max().double_value(&[]),
            0.0,
            "gradients are cleared after the step"
        );
    }
}

/// The reported gradient norm equals `sqrt(Σ g²)` computed here independently, in f64.
#[test]
fn grad_norm_is_the_global_l2_norm() {
    let pairs = preference_pairs(4);
    let rpo = RpoConfig::paper(0.1, 0.005);
    let mut t = trainer(13, ReferenceSource::Free, config(rpo.clone(), 1e-2, 2, 0.0));
    let b = batch(&pairs, &[0, 1, 2, 3]);
    let reported = t
        .train_step(&[batch(&pairs, &[0, 1, 2, 3])])
        .unwrap()
        .grad_norm
        .unwrap();
    let model = TinyLm::new(13, HIDDEN);
    let logits = model.forward(&b.input_ids, &b.attention_mask).unwrap();
    let out = compute_loss(
        &rpo,
        &LossBatch::logits(&logits, &b.labels).with_options(LogProbOptions::causal()),
    )
    .unwrap();
    out.loss.backward();
    let mut squares = 0.0f64;
    for (_, p) in model.params() {
        let g = p.grad();
        if g.defined() {
            let values = Vec::<f64>::try_from(&g.to_kind(Kind::Double).flatten(0, -1)).unwrap();
            squares += values.iter().map(|x| x * x).sum::<f64>();
        }
    }
    assert!(
        (reported - squares.sqrt()).abs() < 1e-5 * squares.sqrt(),
        "{reported} vs {}",
        squares.sqrt()
    );
}

#[test]
fn weight_decay_groups_follow_names_and_shapes() {
    let t = trainer(
        14,
        ReferenceSource::Free,
        config(RpoConfig::default(), 1e-2, 2, 0.0),
    );
    let (decay, no_decay) = t.optimizer().groups();
    assert_eq!(decay, vec!["ctx.weight", "lm_head.weight", "proj.weight"]);
    assert_eq!(
        no_decay,
        vec!["embed.weight", "norm.weight", "poison.gate", "proj.bias"]
    );
}

/// AdamW against the update rule written out in f64 (decay group and no-decay group).
#[test]
fn adamw_matches_the_f64_formula() {
    let (lr, wd, b1, b2, eps) = (0.05, 0.1, 0.9, 0.999, 1e-8);
    let w = Tensor::from_slice(&[0.5f32, -1.0, 2.0])
        .view([3, 1])
        .set_requires_grad(true);
    let bias = Tensor::from_slice(&[0.3f32, -0.2]).set_requires_grad(true);
    let named = vec![
        ("layer.weight".to_string(), w.shallow_clone()),
        ("layer.bias".to_string(), bias.shallow_clone()),
    ];
    let config = AdamWConfig {
        weight_decay: wd,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(config, &named).unwrap();
    let coefficients = [1.0, -2.0, 0.5, 3.0, -1.5];
    let mut expected: Vec<f64> = vec![0.5, -1.0, 2.0, 0.3, -0.2];
    let mut m = [0.0f64; 5];
    let mut v = [0.0f64; 5];
    for t in 1..=4 {
        opt.zero_grad().unwrap();
        // loss = Σ c_i · x_i³  → g_i = 3 c_i x_i²
        let all = Tensor::cat(&[w.view([3]), bias.shallow_clone()], 0);
        let loss = (all.pow_tensor_scalar(3) * Tensor::from_slice(&coefficients).to_kind(Kind::Float))
            .sum(Kind::Float);
        loss.backward();
        opt.step(lr).unwrap();
        for i in 0..5 {
            let x = expected[i];
            let g = 3.0 * coefficients[i] * x * x;
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            let decayed = if i < 3 { x * (1.0 - lr * wd) } else { x };
            let m_hat = m[i] / (1.0 - b1.powi(t));
            let v_hat = v[i] / (1.0 - b2.powi(t));
            expected[i] = decayed - lr * m_hat / (v_hat.sqrt() + eps);
        }
    }
    let got: Vec<f64> =
        Vec::<f64>::try_from(&Tensor::cat(&[w.view([3]), bias], 0).to_kind(Kind::Double)).unwrap();
    for (g, e) in got.iter().zip(&expected) {
        assert!((g - e).abs() < 1e-5, "{got:?} vs {expected:?}");
    }
    assert_eq!(opt.step_count(), 4);
}

/// A parameter larger than the optimizer's update block (4 Mi elements, updated in row blocks) gets the
/// same update as the whole-tensor formula, computed here in f64 over the whole tensor: every row block,
/// the last partial one included.
#[test]
fn adamw_updates_a_large_parameter_in_blocks_like_the_whole_formula() {
    let (lr, wd, b1, b2, eps) = (0.01, 0.1, 0.9, 0.999, 1e-8);
    let shape = [5i64, 1_000_000]; // 5 M elements: blocks of rows 0..4 and 4..5
    let start = Tensor::randn(shape, (Kind::Float, Device::Cpu));
    let coefficients = Tensor::randn(shape, (Kind::Float, Device::Cpu));
    let x = start.copy().set_requires_grad(true);
    let config = AdamWConfig {
        weight_decay: wd,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(config, &[("big.weight".to_string(), x.shallow_clone())]).unwrap();
    let mut expected = start.to_kind(Kind::Double);
    let (mut m, mut v) = (expected.zeros_like(), expected.zeros_like());
    let c = coefficients.to_kind(Kind::Double);
    for t in 1..=2 {
        opt.zero_grad().unwrap();
        // loss = Σ c ⊙ x²  →  g = 2 c ⊙ x
        (&coefficients * &x * &x).sum(Kind::Float).backward();
        opt.step(lr).unwrap();
        let g = &c * &expected * 2.0;
        m = &m * b1 + &g * (1.0 - b1);
        v = &v * b2 + &g * &g * (1.0 - b2);
        let m_hat = &m / (1.0 - b1.powi(t));
        let v_hat = &v / (1.0 - b2.powi(t));
        expected = &expected * (1.0 - lr * wd) - m_hat / (v_hat.sqrt() + eps) * lr;
    }
    let diff = (x.detach().to_kind(Kind::Double) - &expected)
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-5, "max |Δ| {diff:e}");
    // every row block moved (the last, partial one included): mean |Δ| ≈ lr
    for row in 0..5 {
        let moved = (x.detach() - &start)
            .narrow(0, row, 1)
            .abs()
            .mean(Kind::Double)
            .double_value(&[]);
        assert!(moved > lr / 2.0, "row {row}: mean |Δ| {moved:e}");
    }
}

/// bf16 parameters get f32 master weights: updates far below bf16's resolution accumulate.
#[test]
fn bf16_parameters_accumulate_small_updates_through_master_weights() {
    let w = Tensor::ones([4], (Kind::BFloat16, Device::Cpu)).set_requires_grad(true);
    let mut opt = AdamW::new(AdamWConfig::default(), &[("w".to_string(), w.shallow_clone())]).unwrap();
    assert!(opt.params()[0].master.is_some());
    for _ in 0..200 {
        opt.zero_grad().unwrap();
        w.sum(Kind::Float).backward(); // g = 1: each Adam update is ≈ lr
        opt.step(1e-4).unwrap(); // 1e-4 ≪ bf16 spacing at 1.0 (2^-7 ≈ 0.0078)
    }
    let master = opt.params()[0].master.as_ref().unwrap().double_value(&[0]);
    assert!((master - (1.0 - 200.0 * 1e-4)).abs() < 1e-4, "{master}");
    let value = w.to_kind(Kind::Double).double_value(&[0]);
    assert!(
        (value - master).abs() < 0.008 && value < 0.99,
        "bf16 weight {value}, master {master}"
    );
}

#[test]
fn schedule_is_linear_warmup_then_cosine() {
    let s = LrSchedule::paper(2.0, 100).unwrap();
    assert_eq!(s.warmup_steps, 10);
    let expected = |step: u64| -> f64 {
        if step < 10 {
            2.0 * step as f64 / 10.0
        } else {
            let p = (step - 10) as f64 / 90.0;
            2.0 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        }
    };
    for step in [0, 1, 5, 9, 10, 11, 40, 55, 99, 100] {
        assert!((s.lr_at(step) - expected(step)).abs() < 1e-12, "step {step}");
    }
    assert!((s.lr_at(55) - 1.0).abs() < 1e-12);
    assert!(LrSchedule::with_warmup_ratio(1.0, 10, 1.5, Decay::Cosine).is_err());
    assert!(LrSchedule::paper(1.0, 0).is_err());
}

/// A tensor listed under two names (a tied head, as in a state dict) is one parameter: the step equals
/// the step of the same model listing it once.
/// `AdamW::zero_grad` releases the gradients (PyTorch's `set_to_none`), aliases included: `.grad` is
/// undefined afterwards, so the next backward's gradient is the new one alone, and `step` skips a parameter
/// that got none.
#[test]
fn zero_grad_releases_gradients_and_step_skips_parameters_without_one() {
    let w = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).set_requires_grad(true);
    let unused = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
    let named = vec![
        ("w".to_string(), w.shallow_clone()),
        ("w.alias".to_string(), w.shallow_clone()),
        ("unused".to_string(), unused.shallow_clone()),
    ];
    let mut opt = AdamW::new(AdamWConfig::default(), &named).unwrap();
    assert_eq!(opt.params()[0].aliases.len(), 1);
    (&w * &w).sum(Kind::Float).backward(); // g = 2w
    (&unused * 3.0).sum(Kind::Float).backward();
    assert!(w.grad().defined() && unused.grad().defined());
    opt.zero_grad().unwrap();
    assert!(!w.grad().defined(), "w's gradient was kept");
    assert!(!named[1].1.grad().defined(), "the alias's gradient was kept");
    assert!(!unused.grad().defined(), "unused's gradient was kept");
    // The next backward starts from nothing: g = 3·[1, 1, 1], not 2w + 3.
    (&w * 3.0).sum(Kind::Float).backward();
    assert_eq!(Vec::<f32>::try_from(&w.grad()).unwrap(), vec![3.0, 3.0, 3.0]);
    let before = unused.double_value(&[0]);
    opt.step(1e-2).unwrap();
    assert_eq!(
        unused.double_value(&[0]),
        before,
        "a parameter without gradient moved"
    );
    assert!(w.double_value(&[0]) < 1.0, "w did not move");
}

/// After a trainer step (two micro-batches) no parameter holds a gradient: nothing is kept between steps.
#[test]
fn train_step_leaves_no_gradient_behind() {
    let pairs = preference_pairs(4);
    let mut t = trainer(
        6,
        model_reference(6),
        config(RpoConfig::paper(0.1, 0.005), 1e-2, 10, 0.0),
    );
    let m = t
        .train_step(&[batch(&pairs, &[0, 1]), batch(&pairs, &[2, 3])])
        .unwrap();
    assert!(!m.skipped);
    for (name, p) in t.model().named_parameters() {
        assert!(!p.grad().defined(), "{name} still holds a gradient");
    }
}

#[test]
fn tensor_listed_twice_is_updated_once() {
    let pairs = preference_pairs(4);
    let cfg = config(RpoConfig::paper(0.1, 0.5), 1e-2, 3, 0.0);
    let mut once = trainer(15, ReferenceSource::Free, cfg.clone());
    let mut twice = RpoTrainer::new(
        Box::new(TinyLm::new(15, HIDDEN).listing_head_twice()),
        ReferenceSource::Free,
        cfg,
    )
    .unwrap();
    let tied = twice
        .optimizer()
        .params()
        .iter()
        .find(|p| p.name == "lm_head.weight")
        .unwrap();
    assert_eq!(tied.aliases.len(), 1);
    assert_eq!(tied.aliases[0].0, "tied.weight");
    for _ in 0..2 {
        let a = once.train_step(&[batch(&pairs, &[0, 1, 2, 3])]).unwrap();
        let b = twice.train_step(&[batch(&pairs, &[0, 1, 2, 3])]).unwrap();
        assert_eq!(a.grad_norm, b.grad_norm);
    }
    let n = once.model().named_parameters().len();
    let twice_params = twice.model().named_parameters();
    assert_eq!(
        max_param_diff(&once.model().named_parameters(), &twice_params[..n]),
        0.0
    );
    assert_eq!(
        once.optimizer().state_tensors().len(),
        twice.optimizer().state_tensors().len()
    );
}

/// Two separate autograd leaves over one storage: their gradients add up, the update happens once.
/// Tensors that overlap without being the same view are refused.
#[test]
fn shared_storage_is_one_parameter_and_partial_overlap_is_refused() {
    let w = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).set_requires_grad(true);
    let alias = w.detach().set_requires_grad(true); // same storage, its own gradient
    let named = vec![
        ("a".to_string(), w.shallow_clone()),
        ("b".to_string(), alias.shallow_clone()),
    ];
    let mut opt = AdamW::new(AdamWConfig::default(), &named).unwrap();
    assert_eq!(opt.params().len(), 1);
    ((&w * 2.0).sum(Kind::Float) + (&alias * 3.0).sum(Kind::Float)).backward();
    assert!((opt.grad_norm().unwrap() - (3.0f64 * 25.0).sqrt()).abs() < 1e-5);
    opt.step(0.1).unwrap();
    // Adam's first step moves each element by lr (sign of the gradient, 5 > 0): once, not twice
    let got = Vec::<f64>::try_from(&w.to_kind(Kind::Double)).unwrap();
    for (g, e) in got.iter().zip([0.9, -2.1, 2.9]) {
        assert!((g - e).abs() < 1e-5, "{got:?}");
    }
    let base = Tensor::zeros([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let part = base.detach().narrow(0, 1, 2).set_requires_grad(true);
    let overlapping = vec![("whole".to_string(), base), ("part".to_string(), part)];
    match AdamW::new(AdamWConfig::default(), &overlapping) {
        Err(Error::Input(InputError::Config { requirement, .. })) => {
            assert!(requirement.contains("overlaps"), "{requirement}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A head with a bias and a logit scale: the fused path (policy and reference scorer) equals the logits
/// path.
#[test]
fn head_bias_and_logit_scale_reach_the_fused_path() {
    let pairs = preference_pairs(6);
    let biased = |seed| TinyLm::new(seed, HIDDEN).with_head_bias(1.7);
    let mut cfg = config(RpoConfig::paper(0.1, 0.5), 1e-2, 2, 0.0);
    let reference = |seed| ReferenceSource::Model(Box::new(biased(seed)));
    let mut logits = RpoTrainer::new(biased(16), reference(17), cfg.clone()).unwrap();
    cfg.loss_path = LossPath::Hidden;
    let mut hidden = RpoTrainer::new(biased(16), reference(17), cfg).unwrap();
    for _ in 0..2 {
        let a = logits.train_step(&[batch(&pairs, &[0, 1, 2, 3, 4, 5])]).unwrap();
        let b = hidden.train_step(&[batch(&pairs, &[0, 1, 2, 3, 4, 5])]).unwrap();
        assert!((a.loss() - b.loss()).abs() < 1e-5, "{} vs {}", a.loss(), b.loss());
        assert!((a.get("rewards/chosen").unwrap() - b.get("rewards/chosen").unwrap()).abs() < 1e-5);
        assert!((a.grad_norm.unwrap() - b.grad_norm.unwrap()).abs() < 1e-4 * a.grad_norm.unwrap());
    }
    let model = biased(18);
    let cache = |path| {
        tch_rpo::train::score_reference(
            &model,
            &pairs,
            &collator(),
            &ScoringOptions::new(3).with_loss_path(path),
            &Collective::single(),
        )
        .unwrap()
    };
    let (from_logits, from_hidden) = (cache(LossPath::Logits), cache(LossPath::Hidden));
    for i in 0..pairs.len() {
        let (a, b) = (from_logits.get(i).unwrap(), from_hidden.get(i).unwrap());
        assert!(
            (a.0 - b.0).abs() < 1e-4 && (a.1 - b.1).abs() < 1e-4,
            "{a:?} vs {b:?}"
        );
    }
}

fn expect_invalid(result: tch_rpo::Result<RpoTrainer<TinyLm>>, name: &str) {
    match result {
        Err(Error::Input(InputError::InvalidParameter { name: got, .. })) => assert_eq!(got, name),
        other => panic!("expected InvalidParameter {name}, got {other:?}"),
    }
}

fn expect_config(result: tch_rpo::Result<RpoTrainer<TinyLm>>, name: &str) {
    match result {
        Err(Error::Input(InputError::Config { name: got, .. })) => assert_eq!(got, name),
        other => panic!("expected Config {name}, got {other:?}"),
    }
}

#[test]
fn bad_settings_are_refused() {
    let base = || config(RpoConfig::paper(0.1, 0.005), 1e-2, 4, 0.0);
    let build = |c: RpoTrainerConfig| RpoTrainer::new(TinyLm::new(19, HIDDEN), ReferenceSource::Free, c);
    expect_invalid(
        build(RpoTrainerConfig {
            grad_accum_steps: 0,
            ..base()
        }),
        "gradient_accumulation_steps",
    );
    expect_invalid(
        build(RpoTrainerConfig {
            logprobs: LogProbOptions::causal().with_fused_chunk_bytes(0),
            ..base()
        }),
        "fused_chunk_bytes",
    );
    expect_invalid(
        build(RpoTrainerConfig {
            batch_pairs: 0,
            ..base()
        }),
        "batch_size",
    );
    expect_invalid(
        build(RpoTrainerConfig {
            max_steps: 0,
            ..base()
        }),
        "max_steps",
    );
    expect_invalid(
        build(RpoTrainerConfig {
            max_grad_norm: Some(0.0),
            ..base()
        }),
        "max_grad_norm",
    );
    expect_invalid(
        build(RpoTrainerConfig {
            learning_rate: f64::NAN,
            ..base()
        }),
        "learning_rate",
    );
    expect_invalid(
        build(RpoTrainerConfig {
            checkpoint_dir: Some("x".into()),
            save_steps: Some(0),
            ..base()
        }),
        "save_steps",
    );
    expect_config(
        build(RpoTrainerConfig {
            save_total_limit: Some(2),
            ..base()
        }),
        "save_total_limit",
    );
    let mut t = build(base()).unwrap();
    let pairs = preference_pairs(2);
    assert!(matches!(
        t.evaluate(&pairs, &collator(), 0),
        Err(Error::Input(InputError::InvalidParameter {
            name: "batch_pairs",
            ..
        }))
    ));
    assert!(matches!(
        tch_rpo::train::score_reference(
            &TinyLm::new(19, HIDDEN),
            &pairs,
            &collator(),
            &ScoringOptions::new(0).with_loss_path(LossPath::Logits),
            &Collective::single()
        ),
        Err(Error::Input(InputError::InvalidParameter {
            name: "batch_pairs",
            ..
        }))
    ));
    let builder = || RpoTrainer::builder(TinyLm::new(19, HIDDEN)).max_steps(4);
    expect_config(builder().build(), "reference");
    expect_config(
        builder()
            .reference(ReferenceSource::Free)
            .loss("sigmoidd")
            .build(),
        "loss_type",
    );
    expect_config(
        builder().reference(ReferenceSource::Free).loss("sft").build(),
        "loss_type",
    );
    expect_config(
        builder()
            .reference(ReferenceSource::Free)
            .loss_types(&["sigmoid", "sft"], Some(&[1.0]))
            .build(),
        "loss_weights",
    );
    expect_config(
        builder().reference(ReferenceSource::Free).resume(true).build(),
        "resume",
    );
    expect_invalid(
        RpoTrainer::builder(TinyLm::new(19, HIDDEN))
            .reference(ReferenceSource::Free)
            .build(),
        "max_steps",
    );
    assert!(matches!(
        build(base()).unwrap().resume_latest(),
        Err(Error::Input(InputError::Config {
            name: "checkpoint_dir",
            ..
        }))
    ));
}

/// TRL's names set what TRL means: `rpo_alpha` is a token-mean NLL weight; defaults are TRL's.
#[test]
fn builder_maps_trl_names() {
    let t = RpoTrainer::builder(TinyLm::new(20, HIDDEN))
        .reference(ReferenceSource::Free)
        .loss("ipo")
        .beta(0.3)
        .rpo_alpha(0.7)
        .max_steps(10)
        .build()
        .unwrap();
    let c = t.config();
    assert_eq!(c.rpo.dpo.losses, vec![(tch_rpo::DpoLoss::Ipo, 1.0)]);
    assert_eq!(c.rpo.dpo.beta, 0.3);
    assert_eq!(c.rpo.sft_weight, tch_rpo::loss::rpo::SftWeight::Absolute(0.7));
    assert_eq!(c.rpo.sft_normalization, tch_rpo::SftNormalization::TokenMean);
    assert_eq!(
        *t.schedule(),
        LrSchedule {
            peak_lr: 1e-6,
            warmup_steps: 0,
            total_steps: 10,
            decay: Decay::Linear
        }
    );
    assert_eq!(
        (c.batch_pairs, c.grad_accum_steps, c.seed, c.max_grad_norm),
        (8, 1, 42, Some(1.0))
    );
}

/// The README's trainer quick start is `examples/train_quickstart.rs` (which the suite compiles and runs
/// as a doctest of `tch_rpo::train`), and its glue stays under 40 lines beside the model's code.
#[test]
fn readme_trainer_quick_start_is_the_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("examples/train_quickstart.rs")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("## Quick start: training a model with the trainer")
        .nth(1)
        .expect("the README has the trainer quick start");
    let block = section
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```\n").next())
        .expect("a rust block");
    assert_eq!(block, example, "README and examples/train_quickstart.rs differ");
    // glue: every non-blank line but the model's section and the file's doc line (imports included)
    let (before_model, rest) = example.split_once("// ---- the model's own code").unwrap();
    let (_, glue) = rest.split_once("// ---- the training glue ----").unwrap();
    let lines = before_model.lines().chain(glue.lines());
    let count = lines
        .filter(|l| !l.trim().is_empty() && !l.starts_with("//!"))
        .count();
    assert!(count < 40, "{count} lines of glue");
}

/// Settings that size what a step holds are bounded with a typed error, never a panic: accumulation over
/// more micro-batches than an epoch has (before: `gradient_accumulation_steps(usize::MAX)` built, then
/// `fit` panicked with "capacity overflow"); a batch size of `usize::MAX` takes the whole data set (before:
/// the sampler's `start + batch_pairs` overflowed). Error names are the builder's.
#[test]
fn huge_numeric_settings_are_errors_not_panics() {
    let pairs = preference_pairs(6);
    let build = |accum: usize, batch: usize| {
        RpoTrainer::builder(TinyLm::new(19, HIDDEN))
            .reference(ReferenceSource::Free)
            .max_steps(1)
            .progress(false)
            .batch_size(batch)
            .gradient_accumulation_steps(accum)
            .build()
            .unwrap()
    };
    for (accum, batch) in [(usize::MAX, 2), (4, 2), (2, usize::MAX)] {
        match build(accum, batch).fit(&pairs, &collator()) {
            Err(Error::Input(InputError::Config { name, requirement })) => {
                assert_eq!(name, "gradient_accumulation_steps");
                assert!(requirement.contains("one epoch"), "{requirement}");
            }
            other => panic!("accumulation {accum} × batch {batch}: expected a Config error, got {other:?}"),
        }
    }
    // At the bound (3 micro-batches of 2 = the 6 pairs) and with the whole set as one batch, it trains.
    assert_eq!(build(3, 2).fit(&pairs, &collator()).unwrap().len(), 1);
    let whole = build(1, usize::MAX).fit(&pairs, &collator()).unwrap();
    assert_eq!(whole.len(), 1);
}

/// The metrics schema: `StepMetrics::get(name)` of a one-micro-batch evaluation equals, exactly, the value
/// the loss reports positionally under that name (`RpoOutput::metric_values`, the order of 0.2's
/// `values[0..13]`) for the same batch, model, reference and normalizers — the token statistics included.
/// Exact: with one micro-batch every accumulation weight is 1 (`x · 1.0 == x`), and both read the same f32
/// scalars as f64.
#[test]
fn metrics_by_name_equal_the_loss_outputs_positional_values() {
    let pairs = preference_pairs(5);
    let rpo = RpoConfig::paper(0.1, 0.5);
    let options = LogProbOptions::causal().with_token_stats(true);
    let cfg = RpoTrainerConfig {
        loss_path: LossPath::Logits,
        logprobs: options,
        ..config(rpo.clone(), 1e-2, 2, 0.0)
    };
    let mut t = trainer(23, model_reference(24), cfg);
    let b = batch(&pairs, &[0, 1, 2, 3, 4]);
    let metrics = t.eval_step(&b).unwrap();

    let policy = TinyLm::new(23, HIDDEN);
    let reference = TinyLm::new(24, HIDDEN);
    let out = tch::no_grad(|| {
        let sums = tch_rpo::sequence_logprobs(
            &reference.forward(&b.input_ids, &b.attention_mask).unwrap(),
            &b.labels,
            &options,
        )
        .unwrap()
        .sum;
        let logits = policy.forward(&b.input_ids, &b.attention_mask).unwrap();
        let global = tch_rpo::GlobalBatch {
            pairs: 5.0,
            chosen_tokens: b.chosen_tokens.max(1) as f64,
        };
        compute_loss(
            &rpo,
            &LossBatch::logits(&logits, &b.labels)
                .with_reference(tch_rpo::Reference::LogProbs(&sums))
                .with_options(options)
                .with_global(global),
        )
        .unwrap()
    });
    let positional = out.metric_values().unwrap();
    assert_eq!(positional.len(), tch_rpo::train::METRICS.len());
    for (name, value) in positional {
        assert_eq!(metrics.get(name), Some(value), "{name}");
        assert_eq!(
            metrics.to_json()[name].as_f64(),
            Some(value),
            "{name} in the JSON line"
        );
    }
    // The schema names every metric once, in the loss's order.
    let names: Vec<&str> = tch_rpo::train::METRICS.iter().map(|m| m.name).collect();
    let reported: Vec<&str> = metrics.values().map(|(name, _)| name).collect();
    assert_eq!(names, reported);
    assert_eq!(metrics.get("no such metric"), None);
}

/// Stages chain on one model without copying parameters: an SFT trainer's `into_model()` is the policy
/// the DPO / RPO trainer is built on, and training continues from the SFT weights (the same tensors).
#[test]
fn sft_then_rpo_chain_on_one_model() {
    let pairs = preference_pairs(8);
    let sft = RpoConfig::sft_only(tch_rpo::SftNormalization::TokenMean);
    let mut first = trainer(31, ReferenceSource::Free, config(sft, 1e-2, 2, 0.0));
    first.fit(&pairs, &collator()).unwrap();
    let sft_weights = first.model().snapshot();
    let sft_model: TinyLm = first.into_model();
    let pointers: Vec<usize> = sft_model
        .named_parameters()
        .iter()
        .map(|(_, p)| p.data_ptr() as usize)
        .collect();
    assert_eq!(max_param_diff(&sft_model.named_parameters(), &sft_weights), 0.0);

    let mut second = RpoTrainer::builder(sft_model)
        .reference(ReferenceSource::InitialPolicy)
        .objective(RpoConfig::paper(0.1, 0.5))
        .learning_rate(1e-2)
        .batch_size(4)
        .max_steps(2)
        .progress(false)
        .build()
        .unwrap();
    // The same tensors, not copies.
    let same: Vec<usize> = second
        .model()
        .named_parameters()
        .iter()
        .map(|(_, p)| p.data_ptr() as usize)
        .collect();
    assert_eq!(pointers, same);
    let history = second.fit(&pairs, &collator()).unwrap();
    // The reference is the SFT model: the first step's rewards are exactly zero.
    assert_eq!(history[0].get("rewards/chosen"), Some(0.0));
    assert_eq!(second.model_mut().named_parameters().len(), pointers.len());
    assert!(max_param_diff(&second.into_model().named_parameters(), &sft_weights) > 0.0);
}

/// The fused path's chunk budget is the trainer's setting (`fused_chunk_bytes`, builder and config): a budget
/// of one byte (one row per chunk) trains as the default budget, up to f32 rounding of the chunked sums
/// (relative 1e-5: a few hundred f32 additions in another order, each off by at most 2^-24 relative).
#[test]
fn fused_chunk_budget_is_a_trainer_setting() {
    let pairs = preference_pairs(6);
    let run = |bytes: Option<usize>| {
        let builder = RpoTrainer::builder(TinyLm::new(41, HIDDEN))
            .reference(model_reference(42))
            .objective(RpoConfig::paper(0.1, 0.5))
            .loss_path(LossPath::Hidden)
            .learning_rate(1e-2)
            .batch_size(3)
            .max_steps(2)
            .progress(false);
        let mut t = match bytes {
            Some(bytes) => builder.fused_chunk_bytes(bytes),
            None => builder,
        }
        .build()
        .unwrap();
        assert_eq!(
            t.config().logprobs.fused_chunk_bytes,
            bytes.unwrap_or(tch_rpo::DEFAULT_FUSED_CHUNK_BYTES)
        );
        t.fit(&pairs, &collator()).unwrap()
    };
    let (small, default) = (run(Some(1)), run(None));
    for (a, b) in small.iter().zip(&default) {
        let (x, y) = (a.loss(), b.loss());
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
    }
}

/// A step with learning rate 0 moves nothing (f32 and a bf16 parameter with its f32 master copy), while
/// the moments still advance.
#[test]
fn adamw_with_zero_lr_leaves_the_parameters() {
    for kind in [Kind::Float, Kind::BFloat16] {
        let w = Tensor::from_slice(&[0.5f32, -1.0, 2.0])
            .to_kind(kind)
            .set_requires_grad(true);
        let before = w.detach().copy();
        let mut opt = AdamW::new(AdamWConfig::default(), &[("w".to_string(), w.shallow_clone())]).unwrap();
        (&w * &w).sum(kind).backward();
        opt.step(0.0).unwrap();
        assert!(w.detach().equal(&before), "{kind:?}");
        assert!(opt.params()[0].m.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
