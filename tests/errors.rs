//! Every bad input, as tables: each case runs one call and names the typed [`Error`] it must return (the
//! variant, the argument it names and the values it reports) and a text its `Display` message must contain.
//! A second table lists inputs that look suspicious but must succeed (validation off, ignored rows, …).

mod common;

use common::*;
use tch::{Device, Kind, Tensor};
use tch_rpo::data::{PreferenceRecord, Text};
use tch_rpo::{
    compute_loss, sequence_logprobs, token_logprobs, DpoConfig, DpoLoss, Error, GlobalBatch, LinearHead,
    LogProbOptions, LossBatch, Reference, RpoConfig, SequenceLogProbs, SftConfig, SftNormalization,
    SftWeight,
};
use tch_rpo::{DataError, InputError};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);
const I64: (Kind, Device) = (Kind::Int64, Device::Cpu);

/// One bad input: `run` must fail with an error matching `check` whose message contains `needle`.
struct Case {
    name: &'static str,
    needle: &'static str,
    run: Box<dyn Fn() -> tch_rpo::Result<()>>,
    check: Box<dyn Fn(&Error) -> bool>,
}

/// `case!(name, needle, call, pattern)`: `call` returns any `tch_rpo::Result`, `pattern` matches the error.
macro_rules! case {
    ($name:literal, $needle:expr, $call:expr, $($pat:tt)+) => {
        Case {
            name: $name,
            needle: $needle,
            run: Box::new(move || $call.map(|_| ())),
            check: Box::new(|e: &Error| matches!(e, $($pat)+)),
        }
    };
}

/// Runs every case and reports all failures at once.
fn run_table(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in &cases {
        match (case.run)() {
            Ok(()) => failures.push(format!("{}: succeeded, expected an error", case.name)),
            Err(e) => {
                let text = e.to_string();
                if !(case.check)(&e) {
                    failures.push(format!("{}: unexpected error {e:?}", case.name));
                } else if !text.contains(case.needle) {
                    failures.push(format!(
                        "{}: message {text:?} does not contain {:?}",
                        case.name, case.needle
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn logits(b: i64, t: i64, v: i64) -> Tensor {
    Tensor::randn([b, t, v], CPU)
}

fn labels(b: i64, t: i64, v: i64) -> Tensor {
    Tensor::randint(v, [b, t], I64)
}

/// `[R]` sequence log-probs from sums and counts.
fn seq(sums: &[f64], counts: &[i64]) -> SequenceLogProbs {
    SequenceLogProbs::new(
        tensor(sums, &[sums.len() as i64], Kind::Float),
        int_tensor(counts, &[counts.len() as i64]),
    )
    .unwrap()
}

/// A valid `[2B]` policy (B = 2).
fn policy() -> SequenceLogProbs {
    seq(&[-1.0, -2.0, -3.0, -2.0], &[1, 2, 3, 2])
}

fn dpo(config: DpoConfig, policy: &SequenceLogProbs) -> tch_rpo::Result<tch_rpo::DpoOutput> {
    compute_loss(
        &config,
        &LossBatch::log_probs(policy).with_reference(Reference::Free),
    )
}

fn dpo_ref(policy: &SequenceLogProbs, reference: &Tensor) -> tch_rpo::Result<tch_rpo::DpoOutput> {
    compute_loss(
        &DpoConfig::default(),
        &LossBatch::log_probs(policy).with_reference(Reference::LogProbs(reference)),
    )
}

fn rpo_logits(z: &Tensor, y: &Tensor, reference: Reference<'_>) -> tch_rpo::Result<tch_rpo::RpoOutput> {
    compute_loss(
        &RpoConfig::default(),
        &LossBatch::logits(z, y).with_reference(reference),
    )
}

fn sft(
    norm: SftNormalization,
    chosen: &SequenceLogProbs,
    global: Option<GlobalBatch>,
) -> tch_rpo::Result<tch_rpo::SftOutput> {
    compute_loss(
        &SftConfig::new(norm),
        &LossBatch::log_probs(chosen).with_global(global),
    )
}

/// Fused RPO on `hidden [4, 5, 3]`, a `[7, 3]` head and `[4, 5]` labels unless given.
fn fused(
    hidden: &Tensor,
    weight: &Tensor,
    labels: &Tensor,
    reference: Reference<'_>,
    config: &RpoConfig,
) -> tch_rpo::Result<tch_rpo::RpoOutput> {
    compute_loss(
        config,
        &LossBatch::hidden(hidden, LinearHead::new(weight), labels).with_reference(reference),
    )
}

#[test]
fn shapes_and_batches() {
    run_table(vec![
        case!("labels [2,4] vs logits [2,5,7]", "`labels`",
            token_logprobs(&logits(2, 5, 7), &labels(2, 4, 7), &LogProbOptions::default()),
            Error::Input(InputError::Shape { arg: "labels", got, .. }) if got == &[2, 4]),
        case!(
            "labels rows differ",
            "`labels`",
            token_logprobs(&logits(2, 5, 7), &labels(3, 5, 7), &LogProbOptions::default()),
            Error::Input(InputError::Shape { arg: "labels", .. })
        ),
        case!(
            "flat labels",
            "`labels`",
            token_logprobs(
                &logits(2, 5, 7),
                &Tensor::randint(7, [10], I64),
                &LogProbOptions::default()
            ),
            Error::Input(InputError::Shape { arg: "labels", .. })
        ),
        case!("logits not rank 3", "`logits`",
            token_logprobs(&Tensor::randn([10, 7], CPU), &labels(2, 5, 7), &LogProbOptions::default()),
            Error::Input(InputError::Shape { arg: "logits", got, .. }) if got == &[10, 7]),
        case!(
            "reference logits with another V",
            "reference logits",
            rpo_logits(
                &logits(4, 5, 7),
                &labels(4, 5, 7),
                Reference::Logits(&logits(4, 5, 8))
            ),
            Error::Input(InputError::Shape {
                arg: "reference logits",
                ..
            })
        ),
        case!("split_pairs of 3 rows", "even number",
            sequence_logprobs(&logits(3, 5, 7), &labels(3, 5, 7), &LogProbOptions::default())?.split_pairs(),
            Error::Input(InputError::Shape { arg: "policy.sum", got, .. }) if got == &[3]),
        case!(
            "odd rows from logits",
            "even number",
            rpo_logits(&logits(5, 4, 6), &labels(5, 4, 6), Reference::Free),
            Error::Input(InputError::Shape {
                arg: "policy.sum",
                ..
            })
        ),
        case!(
            "odd policy rows",
            "even number",
            dpo(DpoConfig::default(), &seq(&[-1.0, -2.0, -3.0], &[1, 2, 3])),
            Error::Input(InputError::Shape {
                arg: "policy.sum",
                ..
            })
        ),
        case!(
            "odd policy rows (rpo)",
            "even number",
            compute_loss(
                &RpoConfig::default(),
                &LossBatch::log_probs(&seq(&[-1.0, -2.0, -3.0], &[1, 2, 3])).with_reference(Reference::Free)
            ),
            Error::Input(InputError::Shape {
                arg: "policy.sum",
                ..
            })
        ),
        case!(
            "reference [3] vs policy [4]",
            "`reference log-probs`",
            dpo_ref(&policy(), &Tensor::zeros([3], CPU)),
            Error::Input(InputError::BatchMismatch {
                arg: "reference log-probs",
                expected: 4,
                got: 3,
                ..
            })
        ),
        case!(
            "cached reference [3] vs logits rows 4",
            "`reference log-probs`",
            rpo_logits(
                &logits(4, 5, 7),
                &labels(4, 5, 7),
                Reference::LogProbs(&Tensor::zeros([3], CPU))
            ),
            Error::Input(InputError::BatchMismatch {
                arg: "reference log-probs",
                expected: 4,
                got: 3,
                ..
            })
        ),
        case!(
            "sums [3] vs counts [2]",
            "`count`",
            SequenceLogProbs::new(Tensor::zeros([3], CPU), Tensor::zeros([2], I64)),
            Error::Input(InputError::BatchMismatch {
                arg: "count",
                other: "sum",
                expected: 3,
                got: 2
            })
        ),
        case!(
            "sums not a vector",
            "`sum`",
            SequenceLogProbs::new(Tensor::zeros([3, 1], CPU), Tensor::zeros([3], I64)),
            Error::Input(InputError::Shape { arg: "sum", .. })
        ),
        case!(
            "public-field policy with mismatched counts",
            "`policy.count`",
            dpo(
                DpoConfig::default(),
                &SequenceLogProbs {
                    sum: Tensor::zeros([4], CPU),
                    count: Tensor::zeros([2], I64),
                    stats: None
                }
            ),
            Error::Input(InputError::BatchMismatch {
                arg: "policy.count",
                expected: 4,
                got: 2,
                ..
            })
        ),
    ]);
}

#[test]
fn empty_inputs() {
    let empty = || SequenceLogProbs {
        sum: Tensor::zeros([0], CPU),
        count: Tensor::zeros([0], I64),
        stats: None,
    };
    run_table(vec![
        case!("B = 0", "`logits`",
            token_logprobs(&logits(0, 5, 7), &labels(0, 5, 7), &LogProbOptions::default()),
            Error::Input(InputError::EmptyBatch { arg: "logits", shape }) if shape == &[0, 5, 7]),
        case!(
            "T = 0",
            "`logits`",
            token_logprobs(&logits(2, 0, 7), &labels(2, 0, 7), &LogProbOptions::default()),
            Error::Input(InputError::EmptyBatch { arg: "logits", .. })
        ),
        case!(
            "T = 1 with shift",
            "`logits`",
            token_logprobs(&logits(2, 1, 7), &labels(2, 1, 7), &LogProbOptions::causal()),
            Error::Input(InputError::EmptyBatch { arg: "logits", .. })
        ),
        case!(
            "V = 0",
            "`logits`",
            token_logprobs(
                &Tensor::zeros([2, 3, 0], CPU),
                &Tensor::zeros([2, 3], I64),
                &LogProbOptions::default()
            ),
            Error::Input(InputError::EmptyBatch { arg: "logits", .. })
        ),
        case!(
            "empty SequenceLogProbs::new",
            "`sum`",
            SequenceLogProbs::new(Tensor::zeros([0], CPU), Tensor::zeros([0], I64)),
            Error::Input(InputError::EmptyBatch { arg: "sum", .. })
        ),
        case!(
            "empty policy through public fields",
            "`policy.sum`",
            dpo(DpoConfig::default(), &empty()),
            Error::Input(InputError::EmptyBatch {
                arg: "policy.sum",
                ..
            })
        ),
        case!(
            "empty SFT batch",
            "`chosen.sum`",
            sft(SftNormalization::SequenceSum, &empty(), None),
            Error::Input(InputError::EmptyBatch {
                arg: "chosen.sum",
                ..
            })
        ),
        case!(
            "split_pairs of nothing",
            "empty",
            empty().split_pairs(),
            Error::Input(InputError::EmptyBatch { .. })
        ),
    ]);
}

#[test]
fn dtypes() {
    run_table(vec![
        case!(
            "f32 labels",
            "`labels`",
            token_logprobs(
                &logits(2, 5, 7),
                &labels(2, 5, 7).to_kind(Kind::Float),
                &LogProbOptions::default()
            ),
            Error::Input(InputError::DType {
                arg: "labels",
                got: Kind::Float,
                ..
            })
        ),
        case!(
            "i32 labels",
            "`labels`",
            token_logprobs(
                &logits(2, 5, 7),
                &labels(2, 5, 7).to_kind(Kind::Int),
                &LogProbOptions::default()
            ),
            Error::Input(InputError::DType {
                arg: "labels",
                got: Kind::Int,
                ..
            })
        ),
        case!(
            "integer logits",
            "`logits`",
            token_logprobs(
                &Tensor::zeros([2, 5, 7], I64),
                &labels(2, 5, 7),
                &LogProbOptions::default()
            ),
            Error::Input(InputError::DType {
                arg: "logits",
                got: Kind::Int64,
                ..
            })
        ),
        case!(
            "integer sums",
            "`sum`",
            SequenceLogProbs::new(Tensor::zeros([2], I64), Tensor::zeros([2], I64)),
            Error::Input(InputError::DType { arg: "sum", .. })
        ),
        case!(
            "integer reference log-probs",
            "`reference log-probs`",
            dpo_ref(&policy(), &Tensor::zeros([4], I64)),
            Error::Input(InputError::DType {
                arg: "reference log-probs",
                ..
            })
        ),
    ]);
}

#[test]
fn labels_out_of_range() {
    run_table(vec![
        // Label = V at [1, 2]: flat position 1·4 + 2 = 6.
        case!(
            "label = V",
            "`labels`",
            token_logprobs(
                &logits(2, 4, 7),
                &int_tensor(&[0, 1, 2, 3, 4, 5, 7, 6], &[2, 4]),
                &LogProbOptions::default()
            ),
            Error::Input(InputError::LabelOutOfRange {
                arg: "labels",
                value: 7,
                position: 6,
                vocab: 7,
                ignore_index: -100
            })
        ),
        case!(
            "negative label",
            "`labels`",
            token_logprobs(
                &logits(2, 4, 7),
                &int_tensor(&[0, -5, 2, 3, 4, 5, 6, 6], &[2, 4]),
                &LogProbOptions::default()
            ),
            Error::Input(InputError::LabelOutOfRange {
                value: -5,
                position: 1,
                ..
            })
        ),
        case!(
            "-100 when the ignore index is -1",
            "`labels`",
            token_logprobs(
                &logits(2, 4, 7),
                &int_tensor(&[0, 1, 2, -1, 4, 5, -100, 6], &[2, 4]),
                &LogProbOptions::default().with_ignore_index(-1)
            ),
            Error::Input(InputError::LabelOutOfRange {
                value: -100,
                position: 6,
                ignore_index: -1,
                ..
            })
        ),
        // Bad label at [1, 3] of the caller's tensor: flat position 7, also with the shift.
        case!(
            "shifted position is the caller's",
            "position 7",
            token_logprobs(
                &logits(2, 4, 7),
                &int_tensor(&[0, 1, 2, 3, 4, 5, 6, 9], &[2, 4]),
                &LogProbOptions::causal()
            ),
            Error::Input(InputError::LabelOutOfRange {
                value: 9,
                position: 7,
                ..
            })
        ),
        case!(
            "column 0 is scored without the shift",
            "`labels`",
            token_logprobs(
                &logits(2, 4, 7),
                &int_tensor(&[99, 1, 2, 3, -7, 5, 6, 0], &[2, 4]),
                &LogProbOptions::default()
            ),
            Error::Input(InputError::LabelOutOfRange {
                value: 99,
                position: 0,
                ..
            })
        ),
        case!(
            "fused label = V",
            "`labels`",
            {
                let y = Tensor::randint(7, [4, 5], I64);
                let _ = y.get(2).get(3).fill_(7);
                fused(
                    &Tensor::randn([4, 5, 3], CPU),
                    &Tensor::randn([7, 3], CPU),
                    &y,
                    Reference::Free,
                    &RpoConfig::default(),
                )
            },
            Error::Input(InputError::LabelOutOfRange {
                value: 7,
                position: 13,
                vocab: 7,
                ..
            })
        ),
    ]);
}

fn dpo_params(config: DpoConfig) -> tch_rpo::Result<tch_rpo::DpoOutput> {
    dpo(config, &policy())
}

#[test]
fn hyper_parameters() {
    let mut cases = vec![];
    for beta in [0.0, -0.1, f64::NAN, f64::INFINITY] {
        cases.push(case!(
            "invalid β (dpo)",
            "`beta`",
            dpo_params(DpoConfig::new(DpoLoss::Sigmoid, beta)),
            Error::Input(InputError::InvalidParameter { name: "beta", .. })
        ));
        cases.push(case!(
            "invalid β (rpo)",
            "`beta`",
            compute_loss(
                &RpoConfig::paper(beta, 0.005),
                &LossBatch::log_probs(&policy()).with_reference(Reference::Free)
            ),
            Error::Input(InputError::InvalidParameter { name: "beta", .. })
        ));
    }
    for eps in [-0.01, 0.5, 0.7, f64::NAN] {
        cases.push(case!(
            "ε outside [0, 0.5)",
            "`label_smoothing`",
            dpo_params(DpoConfig::new(DpoLoss::Robust, 0.1).with_label_smoothing(eps)),
            Error::Input(InputError::InvalidParameter {
                name: "label_smoothing",
                ..
            })
        ));
    }
    for loss in [DpoLoss::Ipo, DpoLoss::SppoHard] {
        // (1/(2β))² overflows f32: the loss would be inf.
        cases.push(case!(
            "quadratic loss with β = 1e-300",
            "`beta`",
            dpo_params(DpoConfig::new(loss, 1e-300)),
            Error::Input(InputError::InvalidParameter { name: "beta", .. })
        ));
    }
    for eta in [-0.001, f64::NAN] {
        cases.push(case!(
            "invalid η",
            "`eta`",
            compute_loss(
                &RpoConfig::paper(0.1, eta),
                &LossBatch::log_probs(&policy()).with_reference(Reference::Free)
            ),
            Error::Input(InputError::InvalidParameter { name: "eta", .. })
        ));
        cases.push(case!(
            "invalid η (coefficient)",
            "`eta`",
            RpoConfig::paper(0.1, eta).coefficient(),
            Error::Input(InputError::InvalidParameter { name: "eta", .. })
        ));
    }
    cases.extend(vec![
        case!(
            "τ = 0",
            "`discopop_tau`",
            dpo_params(DpoConfig {
                discopop_tau: 0.0,
                ..DpoConfig::default()
            }),
            Error::Input(InputError::InvalidParameter {
                name: "discopop_tau",
                ..
            })
        ),
        case!(
            "δ = NaN",
            "`bco_delta`",
            dpo_params(DpoConfig {
                bco_delta: f64::NAN,
                ..DpoConfig::default()
            }),
            Error::Input(InputError::InvalidParameter {
                name: "bco_delta",
                ..
            })
        ),
        case!(
            "no losses",
            "`losses`",
            dpo_params(DpoConfig::default().with_losses(vec![])),
            Error::Input(InputError::InvalidParameter { name: "losses", .. })
        ),
        case!(
            "NaN weight",
            "`losses[].weight`",
            dpo_params(DpoConfig::default().with_losses(vec![(DpoLoss::Hinge, f64::NAN)])),
            Error::Input(InputError::InvalidParameter {
                name: "losses[].weight",
                ..
            })
        ),
        case!(
            "negative absolute weight",
            "`sft_weight`",
            compute_loss(
                &RpoConfig {
                    sft_weight: SftWeight::Absolute(-1.0),
                    ..RpoConfig::trl(0.1, 0.0)
                },
                &LossBatch::log_probs(&policy()).with_reference(Reference::Free)
            ),
            Error::Input(InputError::InvalidParameter {
                name: "sft_weight",
                ..
            })
        ),
        case!(
            "chunk_bytes = 0",
            "`chunk_bytes`",
            token_logprobs(
                &logits(2, 5, 7),
                &labels(2, 5, 7),
                &LogProbOptions::default().with_chunk_bytes(0)
            ),
            Error::Input(InputError::InvalidParameter {
                name: "chunk_bytes",
                ..
            })
        ),
        // TRL semantics that differ from a naive reading: refused with the difference named.
        case!(
            "sigmoid with ε > 0",
            "TRL's sigmoid ignores label_smoothing",
            dpo_params(DpoConfig::new(DpoLoss::Sigmoid, 0.1).with_label_smoothing(0.1)),
            Error::Input(InputError::Config {
                name: "label_smoothing",
                ..
            })
        ),
        case!(
            "exo_pair with ε = 0",
            "TRL refuses 0",
            dpo_params(DpoConfig::new(DpoLoss::ExoPair, 0.1)),
            Error::Input(InputError::Config {
                name: "label_smoothing",
                ..
            })
        ),
        case!(
            "ε > 0 read by no loss",
            "no configured loss reads it",
            dpo_params(DpoConfig::new(DpoLoss::Hinge, 0.1).with_label_smoothing(0.2)),
            Error::Input(InputError::Config {
                name: "label_smoothing",
                ..
            })
        ),
    ]);
    run_table(cases);
}

#[test]
fn loss_names() {
    run_table(vec![
        case!(
            "unknown loss name",
            "unknown DPO loss `sigmod`",
            "sigmod".parse::<DpoLoss>(),
            Error::Input(InputError::Config {
                name: "loss_type",
                ..
            })
        ),
        case!(
            "sft is not a DPO loss",
            "RpoConfig::from_trl",
            "sft".parse::<DpoLoss>(),
            Error::Input(InputError::Config {
                name: "loss_type",
                ..
            })
        ),
        case!(
            "aot is not implemented",
            "not implemented",
            "aot".parse::<DpoLoss>(),
            Error::Input(InputError::Config {
                name: "loss_type",
                ..
            })
        ),
        case!(
            "weights of another length",
            "2 types, 1 weights",
            DpoLoss::parse_weighted(&["sigmoid", "hinge"], Some(&[1.0])),
            Error::Input(InputError::Config {
                name: "loss_weights",
                ..
            })
        ),
        case!(
            "empty loss_type list",
            "at least one loss type",
            DpoLoss::parse_weighted(&[], None),
            Error::Input(InputError::Config {
                name: "loss_type",
                ..
            })
        ),
        case!(
            "NaN loss weight",
            "`loss_weights[]`",
            DpoLoss::parse_weighted(&["ipo"], Some(&[f64::NAN])),
            Error::Input(InputError::InvalidParameter {
                name: "loss_weights[]",
                ..
            })
        ),
        case!(
            "sft twice",
            "listed twice",
            RpoConfig::from_trl(0.1, &["sft", "sigmoid", "sft"], None, 0.0),
            Error::Input(InputError::Config {
                name: "loss_type",
                ..
            })
        ),
    ]);
}

#[test]
fn global_batch() {
    let mut cases = vec![];
    for pairs in [0.0, -1.0, f64::NAN] {
        cases.push(case!(
            "global pairs",
            "global.pairs",
            compute_loss(
                &DpoConfig::default(),
                &LossBatch::log_probs(&policy())
                    .with_reference(Reference::Free)
                    .with_global(GlobalBatch {
                        pairs,
                        chosen_tokens: 10.0
                    })
            ),
            Error::Input(InputError::InvalidParameter {
                name: "global.pairs",
                ..
            })
        ));
    }
    for tokens in [0.0, f64::INFINITY] {
        cases.push(case!(
            "global chosen tokens",
            "global.chosen_tokens",
            sft(
                SftNormalization::TokenMean,
                &seq(&[-1.0], &[1]),
                Some(GlobalBatch {
                    pairs: 4.0,
                    chosen_tokens: tokens
                })
            ),
            Error::Input(InputError::InvalidParameter {
                name: "global.chosen_tokens",
                ..
            })
        ));
    }
    run_table(cases);
}

#[test]
fn sequences_without_tokens() {
    run_table(vec![
        case!(
            "sequence mean, row 1 empty",
            "`chosen.count`",
            sft(
                SftNormalization::SequenceMean,
                &seq(&[-1.0, 0.0, -2.0], &[1, 0, 2]),
                None
            ),
            Error::Input(InputError::NoValidTokens {
                arg: "chosen.count",
                index: 1,
                ..
            })
        ),
        case!(
            "OpenRLHF RPO, chosen row 1 empty",
            "sequence 1",
            compute_loss(
                &RpoConfig::openrlhf(0.1, 0.2),
                &LossBatch::log_probs(&seq(&[-1.0, 0.0, -1.0, -1.0], &[1, 0, 1, 1]))
                    .with_reference(Reference::Free)
            ),
            Error::Input(InputError::NoValidTokens { index: 1, .. })
        ),
        case!(
            "per-sequence mean from logits",
            "`labels`",
            sequence_logprobs(
                &logits(2, 2, 5),
                &int_tensor(&[1, 2, -100, -100], &[2, 2]),
                &LogProbOptions::default()
            )?
            .mean(true),
            Error::Input(InputError::NoValidTokens {
                arg: "labels",
                index: 1,
                ..
            })
        ),
        case!(
            "length-normalised IPO, rejected row 1 empty",
            "rejected rows",
            dpo(
                DpoConfig::new(DpoLoss::Ipo, 0.1),
                &seq(&[-1.0, -2.0, -1.0, 0.0], &[1, 2, 1, 0])
            ),
            Error::Input(InputError::NoValidTokens {
                arg: "policy.count (rejected rows)",
                index: 1,
                ..
            })
        ),
        case!(
            "length-normalised IPO, chosen row 1 empty",
            "chosen rows",
            dpo(
                DpoConfig::new(DpoLoss::Ipo, 0.1),
                &seq(&[-1.0, 0.0, -1.0, -2.0], &[1, 0, 1, 2])
            ),
            Error::Input(InputError::NoValidTokens {
                arg: "policy.count (chosen rows)",
                index: 1,
                ..
            })
        ),
        case!(
            "sigmoid_norm, chosen row 0 empty",
            "chosen rows",
            dpo(
                DpoConfig::new(DpoLoss::SigmoidNorm, 0.1),
                &seq(&[0.0, -1.0, -1.0, -2.0], &[0, 1, 1, 2])
            ),
            Error::Input(InputError::NoValidTokens {
                arg: "policy.count (chosen rows)",
                index: 0,
                ..
            })
        ),
        case!(
            "token mean without any token",
            "`chosen.count`",
            sft(SftNormalization::TokenMean, &seq(&[0.0, 0.0], &[0, 0]), None),
            Error::Input(InputError::NoValidTokens {
                arg: "chosen.count",
                ..
            })
        ),
        case!(
            "fused OpenRLHF RPO, chosen row 1 empty",
            "sequence 1",
            {
                let y = Tensor::randint(7, [4, 5], I64);
                let _ = y.get(1).fill_(-100);
                fused(
                    &Tensor::randn([4, 5, 3], CPU),
                    &Tensor::randn([7, 3], CPU),
                    &y,
                    Reference::Free,
                    &RpoConfig::openrlhf(0.1, 0.2),
                )
            },
            Error::Input(InputError::NoValidTokens { .. })
        ),
        case!(
            "fused IPO, rejected row 3 empty",
            "rejected rows",
            {
                let y = Tensor::randint(7, [4, 5], I64);
                let _ = y.get(3).fill_(-100);
                fused(
                    &Tensor::randn([4, 5, 3], CPU),
                    &Tensor::randn([7, 3], CPU),
                    &y,
                    Reference::Free,
                    &RpoConfig::default().with_dpo(DpoConfig::new(DpoLoss::Ipo, 0.1)),
                )
            },
            Error::Input(InputError::NoValidTokens { .. })
        ),
    ]);
}

#[test]
fn non_finite_values() {
    let y = || int_tensor(&[1, 2, 3, 4, 0, 1], &[2, 3]);
    let mut cases = vec![];
    for bad in [f64::NAN, f64::INFINITY] {
        cases.push(case!(
            "non-finite logit in a scored row",
            "`logits`",
            {
                let z = logits(2, 3, 5);
                let _ = z.get(1).get(2).get(4).fill_(bad); // a non-target entry of a scored row
                token_logprobs(&z, &y(), &LogProbOptions::default())
            },
            Error::Input(InputError::NonFinite {
                arg: "logits",
                count: 1,
                ..
            })
        ));
        // The policy's own log-probs are checked like the reference's: NaN in is an error, not a NaN loss.
        cases.push(case!(
            "non-finite policy log-probs",
            "`policy.sum`",
            dpo(
                DpoConfig::default(),
                &seq(&[-1.0, bad, -1.0, -2.0], &[1, 2, 1, 2])
            ),
            Error::Input(InputError::NonFinite {
                arg: "policy.sum",
                count: 1,
                ..
            })
        ));
        cases.push(case!(
            "non-finite policy log-probs (rpo)",
            "`policy.sum`",
            compute_loss(
                &RpoConfig::default(),
                &LossBatch::log_probs(&seq(&[-1.0, -2.0, -1.0, -bad], &[1, 2, 1, 2]))
                    .with_reference(Reference::Free)
            ),
            Error::Input(InputError::NonFinite {
                arg: "policy.sum",
                ..
            })
        ));
        cases.push(case!(
            "non-finite SFT log-probs",
            "`chosen.sum`",
            sft(SftNormalization::SequenceSum, &seq(&[bad, -2.0], &[1, 2]), None),
            Error::Input(InputError::NonFinite {
                arg: "chosen.sum",
                ..
            })
        ));
    }
    cases.extend(vec![
        case!(
            "-inf at the target",
            "`logits`",
            {
                let z = logits(2, 3, 5);
                let _ = z.get(0).get(1).get(2).fill_(f64::NEG_INFINITY);
                token_logprobs(&z, &y(), &LogProbOptions::default())
            },
            Error::Input(InputError::NonFinite { arg: "logits", .. })
        ),
        case!(
            "NaN reference log-probs",
            "`reference log-probs`",
            dpo_ref(&policy(), &tensor(&[0.0, 0.0, -1.0, f64::NAN], &[4], Kind::Float)),
            Error::Input(InputError::NonFinite {
                arg: "reference log-probs",
                count: 1,
                ..
            })
        ),
        case!(
            "-inf reference log-probs (rpo)",
            "`reference log-probs`",
            compute_loss(
                &RpoConfig::default(),
                &LossBatch::log_probs(&policy()).with_reference(Reference::LogProbs(&tensor(
                    &[f64::NEG_INFINITY, -1.0, 0.0, 0.0],
                    &[4],
                    Kind::Float
                )))
            ),
            Error::Input(InputError::NonFinite {
                arg: "reference log-probs",
                ..
            })
        ),
        case!(
            "fused NaN hidden state",
            "`hidden`",
            {
                let h = Tensor::randn([4, 5, 3], CPU);
                let _ = h.get(0).get(0).fill_(f64::NAN);
                fused(
                    &h,
                    &Tensor::randn([7, 3], CPU),
                    &Tensor::zeros([4, 5], I64),
                    Reference::Free,
                    &RpoConfig::default(),
                )
            },
            Error::Input(InputError::NonFinite { .. })
        ),
    ]);
    run_table(cases);
}

#[test]
fn references() {
    let h = || Tensor::randn([4, 5, 3], CPU);
    let w = || Tensor::randn([7, 3], CPU);
    let y = || Tensor::randint(7, [4, 5], I64);
    run_table(vec![
        case!(
            "logits reference at the log-prob level",
            "needs labels",
            compute_loss(
                &DpoConfig::default(),
                &LossBatch::log_probs(&policy()).with_reference(Reference::Logits(&logits(4, 5, 7)))
            ),
            Error::Input(InputError::Config {
                name: "reference",
                ..
            })
        ),
        case!(
            "hidden reference at the log-prob level",
            "Reference::Hidden",
            {
                let (hr, wr) = (h(), w());
                compute_loss(
                    &RpoConfig::default(),
                    &LossBatch::log_probs(&policy()).with_reference(Reference::Hidden {
                        hidden: &hr,
                        head: &LinearHead::new(&wr),
                    }),
                )
            },
            Error::Input(InputError::Config {
                name: "reference",
                ..
            })
        ),
        // The fused path refuses a reference head over another vocabulary, as the logits path does.
        case!("fused reference head with V = 8 vs 7", "policy's vocabulary V = 7",
            {
                let wr = Tensor::randn([8, 3], CPU);
                fused(&h(), &w(), &y(), Reference::Hidden { hidden: &h(), head: &LinearHead::new(&wr) }, &RpoConfig::default())
            },
            Error::Input(InputError::Shape { arg: "reference.weight", got, .. }) if got == &[8, 3]),
        case!(
            "fused reference head with another H",
            "`reference.weight`",
            {
                let wr = Tensor::randn([7, 2], CPU);
                fused(
                    &h(),
                    &w(),
                    &y(),
                    Reference::Hidden {
                        hidden: &h(),
                        head: &LinearHead::new(&wr),
                    },
                    &RpoConfig::default(),
                )
            },
            Error::Input(InputError::Shape {
                arg: "reference.weight",
                ..
            })
        ),
        case!(
            "fused reference logits with another V",
            "reference logits",
            fused(
                &h(),
                &w(),
                &y(),
                Reference::Logits(&logits(4, 5, 8)),
                &RpoConfig::default()
            ),
            Error::Input(InputError::Shape {
                arg: "reference logits",
                ..
            })
        ),
        case!(
            "fused reference log-probs [3]",
            "`reference log-probs`",
            fused(
                &h(),
                &w(),
                &y(),
                Reference::LogProbs(&Tensor::randn([3], CPU)),
                &RpoConfig::default()
            ),
            Error::Input(InputError::BatchMismatch { .. })
        ),
        case!(
            "fused SFT with a reference",
            "the SFT loss uses no reference",
            {
                let (hs, ws, ys, sums) = (h(), w(), y(), Tensor::zeros([4], CPU));
                compute_loss(
                    &SftConfig::default(),
                    &LossBatch::hidden(&hs, LinearHead::new(&ws), &ys)
                        .with_reference(Reference::LogProbs(&sums)),
                )
            },
            Error::Input(InputError::Config {
                name: "reference",
                ..
            })
        ),
    ]);
}

#[test]
fn fused_inputs() {
    let h = || Tensor::randn([4, 5, 3], CPU);
    let w = || Tensor::randn([7, 3], CPU);
    let y = || Tensor::randint(7, [4, 5], I64);
    run_table(vec![
        case!(
            "weight with another H",
            "`weight`",
            fused(
                &h(),
                &Tensor::randn([7, 4], CPU),
                &y(),
                Reference::Free,
                &RpoConfig::default()
            ),
            Error::Input(InputError::Shape { arg: "weight", .. })
        ),
        case!(
            "odd row count",
            "`labels`",
            fused(
                &Tensor::randn([3, 5, 3], CPU),
                &w(),
                &Tensor::randint(7, [3, 5], I64),
                Reference::Free,
                &RpoConfig::default()
            ),
            Error::Input(InputError::Shape { arg: "labels", .. })
        ),
        case!(
            "labels [4, 4]",
            "`labels`",
            fused(
                &h(),
                &w(),
                &Tensor::randint(7, [4, 4], I64),
                Reference::Free,
                &RpoConfig::default()
            ),
            Error::Input(InputError::Shape { arg: "labels", .. })
        ),
        case!(
            "f64 weight",
            "`weight`",
            fused(
                &h(),
                &w().to_kind(Kind::Double),
                &y(),
                Reference::Free,
                &RpoConfig::default()
            ),
            Error::Input(InputError::DType { arg: "weight", .. })
        ),
        case!(
            "i32 labels",
            "`labels`",
            fused(
                &h(),
                &w(),
                &y().to_kind(Kind::Int),
                Reference::Free,
                &RpoConfig::default()
            ),
            Error::Input(InputError::DType { arg: "labels", .. })
        ),
        case!(
            "bias [6]",
            "`bias`",
            {
                let (hs, ws, ys, b) = (h(), w(), y(), Tensor::randn([6], CPU));
                compute_loss(
                    &RpoConfig::default(),
                    &LossBatch::hidden(&hs, LinearHead::new(&ws).with_bias(&b), &ys),
                )
            },
            Error::Input(InputError::Shape { arg: "bias", .. })
        ),
        case!(
            "fused chunk_bytes = 0",
            "`chunk_bytes`",
            {
                let (hs, ws, ys) = (h(), w(), y());
                compute_loss(
                    &RpoConfig::default(),
                    &LossBatch::hidden(&hs, LinearHead::new(&ws), &ys)
                        .with_options(LogProbOptions::default().with_chunk_bytes(0)),
                )
            },
            Error::Input(InputError::InvalidParameter {
                name: "chunk_bytes",
                ..
            })
        ),
        case!(
            "logit scale 0",
            "`logit_scale`",
            {
                let (hs, ws, ys) = (h(), w(), y());
                compute_loss(
                    &RpoConfig::default(),
                    &LossBatch::hidden(&hs, LinearHead::new(&ws).with_logit_scale(0.0), &ys),
                )
            },
            Error::Input(InputError::InvalidParameter {
                name: "logit_scale",
                ..
            })
        ),
        case!(
            "NaN soft-cap",
            "`final_logit_softcap`",
            {
                let (hs, ws, ys) = (h(), w(), y());
                compute_loss(
                    &RpoConfig::default(),
                    &LossBatch::hidden(
                        &hs,
                        LinearHead::new(&ws).with_final_logit_softcap(Some(f64::NAN)),
                        &ys,
                    ),
                )
            },
            Error::Input(InputError::InvalidParameter {
                name: "final_logit_softcap",
                ..
            })
        ),
    ]);
}

#[test]
fn preference_records() {
    run_table(vec![
        case!(
            "empty chosen response",
            "`chosen` is an empty response",
            PreferenceRecord::new(
                Text::Plain("p".into()),
                Text::Plain("  ".into()),
                Text::Plain("r".into())
            ),
            Error::Data(DataError::Record { line: 1, .. })
        ),
        case!(
            "invalid JSON",
            "invalid JSON",
            PreferenceRecord::from_json("{not json"),
            Error::Data(DataError::Record { line: 1, .. })
        ),
        case!(
            "missing field",
            "missing field `rejected`",
            PreferenceRecord::from_json(r#"{"prompt": "p", "chosen": "c"}"#),
            Error::Data(DataError::Record { .. })
        ),
    ]);
}

/// Inputs that look suspicious but are valid, and validation switched off: these must succeed.
#[test]
fn accepted_inputs() {
    let ok = |name: &str, r: tch_rpo::Result<()>| {
        if let Err(e) = r {
            panic!("{name}: {e:?}");
        }
    };
    let z = logits(2, 4, 7);
    // The ignore index is fine even inside [0, V).
    let out = token_logprobs(
        &z,
        &int_tensor(&[0, 1, 2, 3, 4, 5, 3, 6], &[2, 4]),
        &LogProbOptions::default().with_ignore_index(3),
    )
    .unwrap();
    assert_eq!(int_values(&out.mask), vec![1, 1, 1, 0, 1, 1, 0, 1]);
    // With the shift, column 0 is never scored: a bad label there is not an error.
    ok(
        "bad label in column 0 with shift",
        token_logprobs(
            &z,
            &int_tensor(&[99, 1, 2, 3, -7, 5, 6, 0], &[2, 4]),
            &LogProbOptions::causal(),
        )
        .map(drop),
    );
    // ε = 0 and just below 0.5 are fine for robust.
    for eps in [0.0, 0.499] {
        ok(
            "robust ε",
            dpo_params(DpoConfig::new(DpoLoss::Robust, 0.1).with_label_smoothing(eps)).map(drop),
        );
    }
    // A batch with some tokens is fine for the token mean even if one row has none.
    let out = sft(SftNormalization::TokenMean, &seq(&[-3.0, 0.0], &[2, 0]), None).unwrap();
    assert!((out.loss.double_value(&[]) - 1.5).abs() < 1e-6);
    // Un-normalised IPO needs no token count.
    let mut ipo = DpoConfig::new(DpoLoss::Ipo, 0.1);
    ipo.ipo_length_normalized = false;
    ok(
        "un-normalised IPO",
        dpo(ipo, &seq(&[-1.0, -2.0, -1.0, 0.0], &[1, 2, 1, 0])).map(drop),
    );
    // IPO at the smallest accepted β is finite.
    let out = dpo_params(DpoConfig::new(DpoLoss::Ipo, tch_rpo::MIN_QUADRATIC_BETA)).unwrap();
    assert!(out.loss.double_value(&[]).is_finite());
    // −inf at a non-target entry of a scored row (a masked-out vocabulary entry) is fine.
    let y = int_tensor(&[1, 2, 3, 4, 0, 1], &[2, 3]);
    let z = logits(2, 3, 5);
    let _ = z.get(0).get(1).get(4).fill_(f64::NEG_INFINITY);
    let out = token_logprobs(&z, &y, &LogProbOptions::default()).unwrap();
    assert!(values(&out.logps).iter().all(|x| x.is_finite()));
    // NaN in ignored rows does not reach the result.
    let y = int_tensor(&[1, -100, 3, 4, 0, -100], &[2, 3]);
    for kind in [Kind::Float, Kind::Double, Kind::BFloat16] {
        for shift in [false, true] {
            let z = logits(2, 3, 5).to_kind(kind);
            // Without shift rows (0,1) and (1,2) are ignored; with shift the logits at (b, t) score label
            // (b, t+1), so rows (0,0) and (1,1) are ignored, and (b, 2) is never used.
            let ignored: [(i64, i64); 3] = if shift {
                [(0, 0), (1, 1), (0, 2)]
            } else {
                [(0, 1), (1, 2), (1, 2)]
            };
            for (b, t) in ignored {
                let _ = z.get(b).get(t).fill_(f64::NAN);
            }
            let s = sequence_logprobs(&z, &y, &LogProbOptions::default().with_shift(shift)).unwrap();
            assert!(
                values(&s.sum).iter().all(|x| x.is_finite()),
                "{kind:?} shift {shift}"
            );
        }
    }
}

#[test]
fn validation_off_skips_the_checks() {
    let off = LogProbOptions::default().with_validate_inputs(false);
    // Non-finite logits: returned as they are.
    let y = int_tensor(&[1, 2, 3, 4, 0, 1], &[2, 3]);
    let z = logits(2, 3, 5);
    let _ = z.get(1).get(2).get(4).fill_(f64::NAN);
    let out = token_logprobs(&z, &y, &off).unwrap();
    assert!(values(&out.logps)[5].is_nan());
    // Sequences without tokens: means are NaN/inf instead of an error.
    let c = seq(&[-1.0, 0.0], &[1, 0]);
    let unchecked = |norm, s| compute_loss(&SftConfig::new(norm), &LossBatch::log_probs(s).with_options(off));
    assert!(unchecked(SftNormalization::SequenceMean, &c).is_ok());
    let none = seq(&[0.0, 0.0], &[0, 0]);
    assert!(unchecked(SftNormalization::TokenMean, &none).is_ok());
    fn unchecked_dpo(
        config: &DpoConfig,
        s: &SequenceLogProbs,
        reference: Reference<'_>,
    ) -> tch_rpo::Result<tch_rpo::DpoOutput> {
        let off = LogProbOptions::default().with_validate_inputs(false);
        compute_loss(
            config,
            &LossBatch::log_probs(s)
                .with_reference(reference)
                .with_options(off),
        )
    }
    let ipo = DpoConfig::new(DpoLoss::Ipo, 0.1);
    let no_tokens = seq(&[-1.0, 0.0, -1.0, 0.0], &[1, 0, 1, 0]);
    assert!(unchecked_dpo(&ipo, &no_tokens, Reference::Free).is_ok());
    let s = sequence_logprobs(&logits(2, 2, 5), &int_tensor(&[1, 2, -100, -100], &[2, 2]), &off).unwrap();
    assert!(values(&s.mean(false).unwrap())[1].is_nan());
    // Non-finite reference and policy log-probs.
    let bad = tensor(&[-1.0, f64::NAN, 0.0, 0.0], &[4], Kind::Float);
    let sigmoid = DpoConfig::default();
    assert!(unchecked_dpo(&sigmoid, &policy(), Reference::LogProbs(&bad)).is_ok());
    let nan_policy = seq(&[-1.0, f64::NAN, -1.0, -2.0], &[1, 2, 1, 2]);
    assert!(unchecked_dpo(&sigmoid, &nan_policy, Reference::Free).is_ok());
    // Label range: the crate's check is skipped; on CPU libtorch's own gather bounds check still fires
    // (as a `Torch` error, not `LabelOutOfRange`).
    let y = int_tensor(&[0, 1, 2, 3, 4, 5, 9, 6], &[2, 4]);
    match token_logprobs(&logits(2, 4, 7), &y, &off) {
        Err(Error::Torch(_)) => {}
        other => panic!("expected libtorch's own error, got {other:?}"),
    }
}

#[cfg(feature = "cuda-tests")]
#[test]
fn tensors_on_different_devices() {
    assert!(
        tch::Cuda::is_available(),
        "the cuda-tests feature needs a CUDA device"
    );
    let gpu = Device::Cuda(0);
    run_table(vec![
        case!(
            "labels on another device",
            "`labels`",
            token_logprobs(
                &logits(2, 5, 7),
                &labels(2, 5, 7).to_device(gpu),
                &LogProbOptions::default()
            ),
            Error::Input(InputError::DeviceMismatch {
                arg: "labels",
                other: "logits",
                ..
            })
        ),
        case!(
            "reference on another device",
            "`reference log-probs`",
            dpo_ref(&policy(), &Tensor::zeros([4], (Kind::Float, gpu))),
            Error::Input(InputError::DeviceMismatch {
                arg: "reference log-probs",
                ..
            })
        ),
        case!(
            "counts on another device",
            "`policy.count`",
            {
                let p = policy();
                dpo(
                    DpoConfig::default(),
                    &SequenceLogProbs {
                        sum: p.sum,
                        count: p.count.to_device(gpu),
                        stats: None,
                    },
                )
            },
            Error::Input(InputError::DeviceMismatch {
                arg: "policy.count",
                ..
            })
        ),
        case!(
            "SequenceLogProbs::new across devices",
            "`count`",
            SequenceLogProbs::new(Tensor::zeros([2], CPU), Tensor::zeros([2], (Kind::Int64, gpu))),
            Error::Input(InputError::DeviceMismatch { arg: "count", .. })
        ),
    ]);
}
