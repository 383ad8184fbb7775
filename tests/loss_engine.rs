//! The one loss engine: every objective runs from every input level through `compute_loss`, and the levels
//! agree — exactly where they do the same arithmetic (logits → `sequence_logprobs` → the objective; hidden
//! states without gradient → `fused_sequence_logprobs` → the objective). The fused level with gradients is
//! compared with the unfused one in `tests/fused.rs`.
//!
//! Also the 0.3 friction fixes: `cdpo` at ε = 0 is `sigmoid` bit for bit; `RpoConfig::from_trl` with TRL's
//! `label_smoothing` is the config the two separate routes of 0.2 built; a user-defined `Objective` runs at
//! every level.

use tch::{Device, Kind, Tensor};
use tch_rpo::{
    compute_loss, fused_sequence_logprobs, sequence_logprobs, DpoConfig, DpoLoss, GlobalBatch, LinearHead,
    LogProbOptions, LossBatch, Objective, Reference, RowLayout, RpoConfig, SequenceLogProbs, Sequences,
    SftConfig, SftNormalization, SftWeight,
};

const CPU: Device = Device::Cpu;
const NORMS: [SftNormalization; 3] = [
    SftNormalization::SequenceSum,
    SftNormalization::SequenceMean,
    SftNormalization::TokenMean,
];

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

/// `[rows, t]` labels: a prompt of 2 ignored positions, then scored tokens, the last `row % 3` positions
/// padding (every row keeps at least one scored token after the causal shift).
fn labels(rows: i64, t: i64, vocab: i64) -> Tensor {
    let y = Tensor::randint(vocab, [rows, t], (Kind::Int64, CPU));
    for r in 0..rows {
        let row = y.get(r);
        let _ = row.narrow(0, 0, 2).fill_(-100);
        let pad = r % 3;
        if pad > 0 {
            let _ = row.narrow(0, t - pad, pad).fill_(-100);
        }
    }
    y
}

fn leaf(t: &Tensor) -> Tensor {
    t.detach().copy().set_requires_grad(true)
}

/// The DPO variants with the label smoothing each accepts.
fn dpo_configs() -> Vec<DpoConfig> {
    DpoLoss::ALL
        .into_iter()
        .map(|variant| {
            let eps = if variant.uses_label_smoothing() { 0.1 } else { 0.0 };
            DpoConfig::new(variant, 0.3).with_label_smoothing(eps)
        })
        .collect()
}

/// Every DPO variant and SFT normalization from `[R, T, V]` logits is the log-prob level on
/// `sequence_logprobs` of the same logits: the same values, metrics and gradients, bit for bit.
#[test]
fn dpo_and_sft_from_logits_equal_the_log_prob_level() {
    tch::manual_seed(11);
    let (pairs, t, v) = (3i64, 7i64, 13i64);
    let z = Tensor::randn([2 * pairs, t, v], (Kind::Float, CPU));
    let y = labels(2 * pairs, t, v);
    let reference = Tensor::randn([2 * pairs], (Kind::Float, CPU)) - 8.0;
    let options = LogProbOptions::causal().with_chunk_bytes(4 * v as usize * 4);
    let global = GlobalBatch {
        pairs: 5.0,
        chosen_tokens: 40.0,
    };
    for config in dpo_configs() {
        let (zl, zp) = (leaf(&z), leaf(&z));
        let from_logits = compute_loss(
            &config,
            &LossBatch::logits(&zl, &y)
                .with_reference(Reference::LogProbs(&reference))
                .with_options(options)
                .with_global(global),
        )
        .unwrap();
        let policy = sequence_logprobs(&zp, &y, &options).unwrap();
        let from_log_probs = compute_loss(
            &config,
            &LossBatch::log_probs(&policy)
                .with_reference(Reference::LogProbs(&reference))
                .with_global(global),
        )
        .unwrap();
        let name = config.losses[0].0;
        assert_eq!(values(&from_logits.loss), values(&from_log_probs.loss), "{name}");
        assert_eq!(
            values(&from_logits.per_pair),
            values(&from_log_probs.per_pair),
            "{name}"
        );
        assert_eq!(
            from_logits.metrics.values().unwrap(),
            from_log_probs.metrics.values().unwrap(),
            "{name}"
        );
        from_logits.loss.backward();
        from_log_probs.loss.backward();
        assert_eq!(values(&zl.grad()), values(&zp.grad()), "{name} gradient");
    }
    let chosen_z = z.narrow(0, 0, pairs);
    let chosen_y = y.narrow(0, 0, pairs);
    for norm in NORMS {
        for global in [None, Some(global)] {
            let config = SftConfig::new(norm);
            let (zl, zp) = (leaf(&chosen_z), leaf(&chosen_z));
            let from_logits = compute_loss(
                &config,
                &LossBatch::logits(&zl, &chosen_y)
                    .with_options(options)
                    .with_global(global),
            )
            .unwrap();
            let targets = sequence_logprobs(&zp, &chosen_y, &options).unwrap();
            let from_log_probs =
                compute_loss(&config, &LossBatch::log_probs(&targets).with_global(global)).unwrap();
            assert_eq!(
                values(&from_logits.loss),
                values(&from_log_probs.loss),
                "{norm:?}"
            );
            assert_eq!(
                values(&from_logits.per_sequence),
                values(&from_log_probs.per_sequence),
                "{norm:?}"
            );
            from_logits.loss.backward();
            from_log_probs.loss.backward();
            assert_eq!(values(&zl.grad()), values(&zp.grad()), "{norm:?} gradient");
        }
    }
}

/// Without gradients the hidden-state level is the log-prob level on `fused_sequence_logprobs`: the same
/// values bit for bit, for every DPO variant, SFT normalization and an RPO mix, with a reference given as
/// hidden states (scored once, by the same fused pass).
#[test]
fn dpo_sft_and_rpo_from_hidden_states_equal_the_log_prob_level() {
    tch::manual_seed(12);
    let (pairs, t, h, v) = (3i64, 6i64, 5i64, 11i64);
    let hidden = Tensor::randn([2 * pairs, t, h], (Kind::Float, CPU));
    let ref_hidden = Tensor::randn([2 * pairs, t, h], (Kind::Float, CPU));
    let head = LinearHead::new(&(Tensor::randn([v, h], (Kind::Float, CPU)) * 0.5)).with_logit_scale(0.8);
    let ref_head = LinearHead::new(&(Tensor::randn([v, h], (Kind::Float, CPU)) * 0.5));
    let y = labels(2 * pairs, t, v);
    let options = LogProbOptions::causal().with_fused_chunk_bytes(3 * v as usize * 8);
    let policy = fused_sequence_logprobs(&hidden, &head, &y, &options).unwrap();
    let reference = fused_sequence_logprobs(&ref_hidden, &ref_head, &y, &options)
        .unwrap()
        .sum;
    let reference_hidden = Reference::Hidden {
        hidden: &ref_hidden,
        head: &ref_head,
    };
    for config in dpo_configs() {
        let fused = compute_loss(
            &config,
            &LossBatch::hidden(&hidden, head.clone(), &y)
                .with_reference(reference_hidden)
                .with_options(options),
        )
        .unwrap();
        let unfused = compute_loss(
            &config,
            &LossBatch::log_probs(&policy).with_reference(Reference::LogProbs(&reference)),
        )
        .unwrap();
        let name = config.losses[0].0;
        assert_eq!(values(&fused.loss), values(&unfused.loss), "{name}");
        assert_eq!(values(&fused.per_pair), values(&unfused.per_pair), "{name}");
        assert_eq!(
            fused.metrics.values().unwrap(),
            unfused.metrics.values().unwrap(),
            "{name}"
        );
    }
    let rpo = RpoConfig::from_trl(0.2, &["robust", "sft"], Some(&[1.0, 0.3]), 0.05).unwrap();
    let fused = compute_loss(
        &rpo,
        &LossBatch::hidden(&hidden, head.clone(), &y)
            .with_reference(reference_hidden)
            .with_options(options),
    )
    .unwrap();
    let unfused = compute_loss(
        &rpo,
        &LossBatch::log_probs(&policy).with_reference(Reference::LogProbs(&reference)),
    )
    .unwrap();
    assert_eq!(fused.metric_values().unwrap(), unfused.metric_values().unwrap());
    let chosen = hidden.narrow(0, 0, pairs);
    let chosen_y = y.narrow(0, 0, pairs);
    let targets = fused_sequence_logprobs(&chosen, &head, &chosen_y, &options).unwrap();
    for norm in NORMS {
        let config = SftConfig::new(norm);
        let fused = compute_loss(
            &config,
            &LossBatch::hidden(&chosen, head.clone(), &chosen_y).with_options(options),
        )
        .unwrap();
        let unfused = compute_loss(&config, &LossBatch::log_probs(&targets)).unwrap();
        assert_eq!(values(&fused.loss), values(&unfused.loss), "{norm:?}");
        assert_eq!(
            values(&fused.per_sequence),
            values(&unfused.per_sequence),
            "{norm:?}"
        );
    }
}

/// `cdpo` at ε = 0 is `sigmoid`: the same per-pair losses, loss and gradient bit for bit, also where
/// `log σ(−βΔ)` is −inf (a margin of 2,000 at β = 1), which a naive `0 · log σ(−βΔ)` would turn into NaN.
#[test]
fn cdpo_at_zero_label_smoothing_is_sigmoid() {
    let sums = [-3.0, -10.0, 1500.0, -7.5, -2.0, -500.0];
    let counts = [3i64, 4, 5, 2, 6, 1];
    let run = |variant: DpoLoss| {
        let sum = Tensor::from_slice(&sums)
            .to_kind(Kind::Float)
            .set_requires_grad(true);
        let policy = SequenceLogProbs::new(sum.shallow_clone(), Tensor::from_slice(&counts)).unwrap();
        let config = DpoConfig::new(variant, 1.0).with_label_smoothing(0.0);
        let out = compute_loss(&config, &LossBatch::log_probs(&policy)).unwrap();
        out.loss.backward();
        (values(&out.per_pair), values(&out.loss), values(&sum.grad()))
    };
    let (cdpo, sigmoid) = (run(DpoLoss::Cdpo), run(DpoLoss::Sigmoid));
    assert_eq!(cdpo, sigmoid);
    assert!(cdpo.0.iter().chain(&cdpo.2).all(|x| x.is_finite()), "{cdpo:?}");
    assert_eq!(cdpo.0[2], 0.0, "a margin of 2,000 has zero loss");
}

/// TRL's `DPOConfig(loss_type=[…, "sft"], loss_weights, label_smoothing=ε)` is one call of
/// `RpoConfig::from_trl`: the same config (and loss) as building the smoothed DPO part and the SFT term
/// separately, the two routes 0.2 needed.
#[test]
fn from_trl_with_label_smoothing_is_the_two_route_config() {
    tch::manual_seed(13);
    let b = 4i64;
    let policy = SequenceLogProbs::new(
        Tensor::randn([2 * b], (Kind::Double, CPU)) * 3.0 - 20.0,
        Tensor::from_slice(&[5i64, 3, 7, 2, 4, 6, 1, 8]),
    )
    .unwrap();
    let reference = Tensor::randn([2 * b], (Kind::Double, CPU)) * 3.0 - 20.0;
    type TrlCase<'a> = (&'a [&'a str], Option<&'a [f64]>, f64);
    let cases: [TrlCase<'_>; 4] = [
        (&["exo_pair", "sft"], None, 1e-3),
        (&["robust", "sft"], Some(&[1.0, 0.05]), 0.2),
        (&["cdpo", "hinge", "sft"], Some(&[0.5, 0.5, 0.01]), 0.1),
        (&["sigmoid", "sft"], Some(&[1.0, 0.005]), 0.0),
    ];
    for (loss_type, loss_weights, eps) in cases {
        let one_route = RpoConfig::from_trl(0.1, loss_type, loss_weights, eps).unwrap();
        let dpo_types: Vec<&str> = loss_type.iter().copied().filter(|n| *n != "sft").collect();
        let weights = loss_weights.map_or(vec![1.0; loss_type.len()], <[f64]>::to_vec);
        let sft_weight = weights[loss_type.iter().position(|n| *n == "sft").unwrap()];
        let dpo_weights: Vec<f64> = loss_type
            .iter()
            .zip(&weights)
            .filter(|(n, _)| **n != "sft")
            .map(|(_, w)| *w)
            .collect();
        let two_routes = RpoConfig {
            dpo: DpoConfig {
                beta: 0.1,
                losses: DpoLoss::parse_weighted(&dpo_types, Some(&dpo_weights)).unwrap(),
                ..DpoConfig::default()
            }
            .with_label_smoothing(eps),
            sft_weight: SftWeight::Absolute(sft_weight),
            sft_normalization: SftNormalization::TokenMean,
        };
        assert_eq!(one_route, two_routes, "{loss_type:?}");
        let batch = LossBatch::log_probs(&policy).with_reference(Reference::LogProbs(&reference));
        let (a, b) = (
            compute_loss(&one_route, &batch).unwrap(),
            compute_loss(&two_routes, &batch).unwrap(),
        );
        assert_eq!(
            a.metric_values().unwrap(),
            b.metric_values().unwrap(),
            "{loss_type:?}"
        );
    }
    // ε is checked with the rest of the configuration when the loss runs.
    let bad = RpoConfig::from_trl(0.1, &["robust", "sft"], None, 0.5).unwrap();
    assert!(bad.validate().is_err());
}

/// A user-defined objective: the mean summed log-prob of the chosen rows minus the reference's, negated.
struct ChosenRatio;

impl Objective for ChosenRatio {
    type Output = Tensor;
    fn layout(&self) -> RowLayout {
        RowLayout::Pairs
    }
    fn validate(&self) -> tch_rpo::Result<()> {
        Ok(())
    }
    fn evaluate(&self, s: &Sequences<'_>) -> tch_rpo::Result<Tensor> {
        let b = s.policy.len() / 2;
        let chosen = s.policy.sum.narrow(0, 0, b);
        let ratio = match s.reference {
            Some(reference) => chosen - reference.narrow(0, 0, b),
            None => chosen,
        };
        Ok(-ratio.mean(Kind::Float))
    }
    fn loss(output: &Tensor) -> &Tensor {
        output
    }
    fn with_fused_loss(_: Tensor, loss: Tensor) -> tch_rpo::Result<Tensor> {
        Ok(loss)
    }
}

/// Any `Objective` runs at every level: from logits it is the log-prob level on `sequence_logprobs`, from
/// hidden states (no gradient) the log-prob level on `fused_sequence_logprobs`, bit for bit.
#[test]
fn a_user_defined_objective_runs_at_every_level() {
    tch::manual_seed(14);
    let (pairs, t, h, v) = (2i64, 5i64, 4i64, 9i64);
    let hidden = Tensor::randn([2 * pairs, t, h], (Kind::Float, CPU));
    let head = LinearHead::new(&Tensor::randn([v, h], (Kind::Float, CPU)));
    let y = labels(2 * pairs, t, v);
    let reference = Tensor::randn([2 * pairs], (Kind::Float, CPU));
    let options = LogProbOptions::causal();
    let logits = hidden.linear::<Tensor>(&head.weight, None);
    let at = |batch: LossBatch<'_>| {
        let batch = batch
            .with_reference(Reference::LogProbs(&reference))
            .with_options(options);
        values(&compute_loss(&ChosenRatio, &batch).unwrap())
    };
    let unfused = sequence_logprobs(&logits, &y, &options).unwrap();
    assert_eq!(
        at(LossBatch::logits(&logits, &y)),
        at(LossBatch::log_probs(&unfused))
    );
    let fused = fused_sequence_logprobs(&hidden, &head, &y, &options).unwrap();
    assert_eq!(
        at(LossBatch::hidden(&hidden, head.clone(), &y)),
        at(LossBatch::log_probs(&fused))
    );
}

/// The metrics schema drives the loss outputs: `metric_values()` lists TRL's names in 0.2's order (written out
/// here, not read from the library), with token statistics and without; each value is `metric(name)` read
/// back; `PreferenceMetrics::values` is the same list after `loss`, `loss/dpo`, `nll`.
#[test]
fn loss_output_metrics_follow_the_schema_by_name() {
    let order = [
        "loss",
        "loss/dpo",
        "nll",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
        "entropy",
        "mean_token_accuracy",
    ];
    let schema: Vec<&str> = tch_rpo::loss::metrics::METRICS.iter().map(|m| m.name).collect();
    assert_eq!(schema, order);
    tch::manual_seed(7);
    let (rows, t, vocab) = (4, 6, 11);
    let logits = Tensor::randn([rows, t, vocab], (Kind::Float, CPU));
    let y = labels(rows, t, vocab);
    let reference = Tensor::randn([rows], (Kind::Float, CPU));
    let config = RpoConfig::paper(0.1, 0.5);
    for token_stats in [true, false] {
        let options = LogProbOptions::causal().with_token_stats(token_stats);
        let batch = LossBatch::logits(&logits, &y)
            .with_reference(Reference::LogProbs(&reference))
            .with_options(options);
        let out = compute_loss(&config, &batch).unwrap();
        let listed = out.metric_values().unwrap();
        let want: &[&str] = if token_stats { &order } else { &order[..9] };
        let names: Vec<&str> = listed.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, want);
        for (name, value) in &listed {
            let t = out.metric(name).unwrap();
            assert_eq!(t.double_value(&[]), *value, "{name}");
        }
        assert_eq!(out.metric("logits/chosen").is_some(), token_stats);
        assert!(out.metric("no such metric").is_none());
        let preference = out.dpo.metrics.values().unwrap();
        assert_eq!(preference.as_slice(), &listed[3..]);
    }
}
