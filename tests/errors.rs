//! One test per bad input: each checks the typed [`Error`] variant, the argument it names, the values it
//! reports, and that the `Display` message names the argument too.

mod common;

use common::*;
use tch::{Device, Kind, Tensor};
use tch_rpo::{
    dpo_loss, rpo_loss, rpo_loss_from_logits, sequence_logprobs, sft_loss, token_logprobs, DpoConfig,
    DpoLoss, Error, GlobalBatch, LogProbOptions, PreferenceBatch, Reference, ReferenceLogits, RpoConfig,
    SequenceLogProbs, SftNormalization, SftWeight,
};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

/// The error of `r`, with its `Display` checked to mention `needle`.
#[track_caller]
fn err<T: std::fmt::Debug>(r: tch_rpo::Result<T>, needle: &str) -> Error {
    let e = r.expect_err("expected an error");
    let text = e.to_string();
    assert!(text.contains(needle), "message {text:?} does not name {needle:?}");
    e
}

fn logits(b: i64, t: i64, v: i64) -> Tensor {
    Tensor::randn([b, t, v], CPU)
}

fn labels(b: i64, t: i64, v: i64) -> Tensor {
    Tensor::randint(v, [b, t], (Kind::Int64, Device::Cpu))
}

fn seq(sums: &[f64], counts: &[i64]) -> SequenceLogProbs {
    SequenceLogProbs::new(
        tensor(sums, &[sums.len() as i64], Kind::Float),
        int_tensor(counts, &[counts.len() as i64]),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------- shapes

#[test]
fn labels_shape_mismatch() {
    let e = err(
        token_logprobs(&logits(2, 5, 7), &labels(2, 4, 7), &LogProbOptions::default()),
        "`labels`",
    );
    assert!(
        matches!(e, Error::Shape { arg: "labels", ref got, .. } if got == &[2, 4]),
        "{e:?}"
    );
    let e = err(
        token_logprobs(&logits(2, 5, 7), &labels(3, 5, 7), &LogProbOptions::default()),
        "`labels`",
    );
    assert!(matches!(e, Error::Shape { arg: "labels", .. }), "{e:?}");
    let flat = Tensor::randint(7, [10], (Kind::Int64, Device::Cpu));
    let e = err(
        token_logprobs(&logits(2, 5, 7), &flat, &LogProbOptions::default()),
        "`labels`",
    );
    assert!(matches!(e, Error::Shape { arg: "labels", .. }), "{e:?}");
}

#[test]
fn logits_not_rank_3() {
    let z = Tensor::randn([10, 7], CPU);
    let e = err(
        token_logprobs(&z, &labels(2, 5, 7), &LogProbOptions::default()),
        "`logits`",
    );
    assert!(
        matches!(e, Error::Shape { arg: "logits", ref got, .. } if got == &[10, 7]),
        "{e:?}"
    );
}

#[test]
fn reference_logits_shape_mismatch() {
    let (z, y, zr) = (logits(4, 5, 7), labels(4, 5, 7), logits(4, 5, 8));
    let r = rpo_loss_from_logits(
        &RpoConfig::default(),
        &z,
        &y,
        ReferenceLogits::Logits(&zr),
        &LogProbOptions::default(),
        None,
    );
    let e = err(r, "reference logits");
    assert!(
        matches!(
            e,
            Error::Shape {
                arg: "reference logits",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn odd_row_count_for_split_pairs() {
    let s = sequence_logprobs(&logits(3, 5, 7), &labels(3, 5, 7), &LogProbOptions::default()).unwrap();
    let e = err(s.split_pairs(), "`logits`");
    assert!(
        matches!(e, Error::Shape { arg: "logits", ref got, .. } if got == &[3]),
        "{e:?}"
    );
    let (z, y) = (logits(5, 4, 6), labels(5, 4, 6));
    let r = rpo_loss_from_logits(
        &RpoConfig::default(),
        &z,
        &y,
        ReferenceLogits::Free,
        &LogProbOptions::default(),
        None,
    );
    assert!(matches!(
        err(r, "even number"),
        Error::Shape { arg: "logits", .. }
    ));
}

// --------------------------------------------------------------------------------------------- batches

#[test]
fn chosen_rejected_batch_mismatch() {
    let (c, r) = (seq(&[-1.0, -2.0, -3.0], &[1, 2, 3]), seq(&[-1.0, -2.0], &[1, 2]));
    let e = err(
        dpo_loss(
            &DpoConfig::default(),
            &PreferenceBatch::new(&c, &r, Reference::Free),
        ),
        "`rejected.sum`",
    );
    assert!(
        matches!(
            e,
            Error::BatchMismatch {
                arg: "rejected.sum",
                other: "chosen.sum",
                expected: 3,
                got: 2
            }
        ),
        "{e:?}"
    );
    // RPO reports the same.
    let e = err(
        rpo_loss(
            &RpoConfig::default(),
            &PreferenceBatch::new(&c, &r, Reference::Free),
        ),
        "`rejected.sum`",
    );
    assert!(
        matches!(
            e,
            Error::BatchMismatch {
                arg: "rejected.sum",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn reference_batch_mismatch() {
    let (c, r) = (seq(&[-1.0, -2.0], &[1, 2]), seq(&[-1.0, -2.0], &[1, 2]));
    let two = Tensor::zeros([2], CPU);
    let three = Tensor::zeros([3], CPU);
    let batch = PreferenceBatch::new(
        &c,
        &r,
        Reference::LogProbs {
            chosen: &three,
            rejected: &two,
        },
    );
    let e = err(dpo_loss(&DpoConfig::default(), &batch), "`reference.chosen`");
    assert!(
        matches!(
            e,
            Error::BatchMismatch {
                arg: "reference.chosen",
                expected: 2,
                got: 3,
                ..
            }
        ),
        "{e:?}"
    );
    let batch = PreferenceBatch::new(
        &c,
        &r,
        Reference::LogProbs {
            chosen: &two,
            rejected: &three,
        },
    );
    let e = err(dpo_loss(&DpoConfig::default(), &batch), "`reference.rejected`");
    assert!(
        matches!(
            e,
            Error::BatchMismatch {
                arg: "reference.rejected",
                ..
            }
        ),
        "{e:?}"
    );
    // Cached reference log-probs for the concatenated rows: [2B] expected.
    let (z, y) = (logits(4, 5, 7), labels(4, 5, 7));
    let cached = Tensor::zeros([3], CPU);
    let r = rpo_loss_from_logits(
        &RpoConfig::default(),
        &z,
        &y,
        ReferenceLogits::LogProbs(&cached),
        &LogProbOptions::default(),
        None,
    );
    let e = err(r, "`reference log-probs`");
    assert!(
        matches!(
            e,
            Error::BatchMismatch {
                arg: "reference log-probs",
                expected: 4,
                got: 3,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn sums_and_counts_mismatch() {
    let e = err(
        SequenceLogProbs::new(
            Tensor::zeros([3], CPU),
            Tensor::zeros([2], (Kind::Int64, Device::Cpu)),
        ),
        "`count`",
    );
    assert!(
        matches!(
            e,
            Error::BatchMismatch {
                arg: "count",
                other: "sum",
                expected: 3,
                got: 2
            }
        ),
        "{e:?}"
    );
    let e = err(
        SequenceLogProbs::new(
            Tensor::zeros([3, 1], CPU),
            Tensor::zeros([3], (Kind::Int64, Device::Cpu)),
        ),
        "`sum`",
    );
    assert!(matches!(e, Error::Shape { arg: "sum", .. }), "{e:?}");
}

#[test]
fn empty_batch() {
    let o = LogProbOptions::default();
    let e = err(token_logprobs(&logits(0, 5, 7), &labels(0, 5, 7), &o), "`logits`");
    assert!(
        matches!(e, Error::EmptyBatch { arg: "logits", ref shape } if shape == &[0, 5, 7]),
        "{e:?}"
    );
    let e = err(token_logprobs(&logits(2, 0, 7), &labels(2, 0, 7), &o), "`logits`");
    assert!(matches!(e, Error::EmptyBatch { arg: "logits", .. }), "{e:?}");
    // One position and a causal shift leave nothing to score.
    let e = err(
        token_logprobs(&logits(2, 1, 7), &labels(2, 1, 7), &LogProbOptions::causal()),
        "`logits`",
    );
    assert!(matches!(e, Error::EmptyBatch { arg: "logits", .. }), "{e:?}");
    let e = err(
        token_logprobs(
            &Tensor::zeros([2, 3, 0], CPU),
            &Tensor::zeros([2, 3], (Kind::Int64, Device::Cpu)),
            &o,
        ),
        "`logits`",
    );
    assert!(matches!(e, Error::EmptyBatch { arg: "logits", .. }), "{e:?}");
    let e = err(
        SequenceLogProbs::new(
            Tensor::zeros([0], CPU),
            Tensor::zeros([0], (Kind::Int64, Device::Cpu)),
        ),
        "`sum`",
    );
    assert!(matches!(e, Error::EmptyBatch { arg: "sum", .. }), "{e:?}");
    // Fields are public, so an empty SequenceLogProbs can still reach the losses.
    let empty = SequenceLogProbs {
        sum: Tensor::zeros([0], CPU),
        count: Tensor::zeros([0], (Kind::Int64, Device::Cpu)),
    };
    let e = err(
        dpo_loss(
            &DpoConfig::default(),
            &PreferenceBatch::new(&empty, &empty, Reference::Free),
        ),
        "`chosen.sum`",
    );
    assert!(
        matches!(
            e,
            Error::EmptyBatch {
                arg: "chosen.sum",
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(
        sft_loss(SftNormalization::SequenceSum, &empty, None, true),
        "`chosen.sum`",
    );
    assert!(
        matches!(
            e,
            Error::EmptyBatch {
                arg: "chosen.sum",
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(empty.split_pairs(), "empty");
    assert!(matches!(e, Error::EmptyBatch { .. }), "{e:?}");
}

// ----------------------------------------------------------------------------------------------- dtypes

#[test]
fn non_integer_labels() {
    let y = labels(2, 5, 7).to_kind(Kind::Float);
    let e = err(
        token_logprobs(&logits(2, 5, 7), &y, &LogProbOptions::default()),
        "`labels`",
    );
    assert!(
        matches!(
            e,
            Error::DType {
                arg: "labels",
                got: Kind::Float,
                ..
            }
        ),
        "{e:?}"
    );
    let y = labels(2, 5, 7).to_kind(Kind::Int);
    let e = err(
        token_logprobs(&logits(2, 5, 7), &y, &LogProbOptions::default()),
        "`labels`",
    );
    assert!(
        matches!(
            e,
            Error::DType {
                arg: "labels",
                got: Kind::Int,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn non_float_logits_and_sums() {
    let z = Tensor::zeros([2, 5, 7], (Kind::Int64, Device::Cpu));
    let e = err(
        token_logprobs(&z, &labels(2, 5, 7), &LogProbOptions::default()),
        "`logits`",
    );
    assert!(
        matches!(
            e,
            Error::DType {
                arg: "logits",
                got: Kind::Int64,
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(
        SequenceLogProbs::new(
            Tensor::zeros([2], (Kind::Int64, Device::Cpu)),
            Tensor::zeros([2], (Kind::Int64, Device::Cpu)),
        ),
        "`sum`",
    );
    assert!(matches!(e, Error::DType { arg: "sum", .. }), "{e:?}");
    let (c, r) = (seq(&[-1.0], &[1]), seq(&[-1.0], &[1]));
    let int_ref = Tensor::zeros([1], (Kind::Int64, Device::Cpu));
    let batch = PreferenceBatch::new(
        &c,
        &r,
        Reference::LogProbs {
            chosen: &int_ref,
            rejected: &int_ref,
        },
    );
    let e = err(dpo_loss(&DpoConfig::default(), &batch), "`reference.chosen`");
    assert!(
        matches!(
            e,
            Error::DType {
                arg: "reference.chosen",
                ..
            }
        ),
        "{e:?}"
    );
}

// ----------------------------------------------------------------------------------------------- labels

#[test]
fn label_out_of_range() {
    let z = logits(2, 4, 7);
    let o = LogProbOptions::default();
    // Label = V at [1, 2]: flat position 1·4 + 2 = 6.
    let y = int_tensor(&[0, 1, 2, 3, 4, 5, 7, 6], &[2, 4]);
    let e = err(token_logprobs(&z, &y, &o), "`labels`");
    assert!(
        matches!(
            e,
            Error::LabelOutOfRange {
                arg: "labels",
                value: 7,
                position: 6,
                vocab: 7,
                ignore_index: -100
            }
        ),
        "{e:?}"
    );
    // Negative label that is not the ignore index.
    let y = int_tensor(&[0, -5, 2, 3, 4, 5, 6, 6], &[2, 4]);
    let e = err(token_logprobs(&z, &y, &o), "`labels`");
    assert!(
        matches!(
            e,
            Error::LabelOutOfRange {
                value: -5,
                position: 1,
                ..
            }
        ),
        "{e:?}"
    );
    // −100 is an ordinary bad label when the ignore index is −1.
    let y = int_tensor(&[0, 1, 2, -1, 4, 5, -100, 6], &[2, 4]);
    let e = err(
        token_logprobs(&z, &y, &o.clone().with_ignore_index(-1)),
        "`labels`",
    );
    assert!(
        matches!(
            e,
            Error::LabelOutOfRange {
                value: -100,
                position: 6,
                ignore_index: -1,
                ..
            }
        ),
        "{e:?}"
    );
    // And the ignore index itself is fine, even when it lies inside [0, V).
    let y = int_tensor(&[0, 1, 2, 3, 4, 5, 3, 6], &[2, 4]);
    let out = token_logprobs(&z, &y, &o.clone().with_ignore_index(3)).unwrap();
    assert_eq!(int_values(&out.mask), vec![1, 1, 1, 0, 1, 1, 0, 1]);
}

#[test]
fn label_out_of_range_with_shift_reports_the_callers_position() {
    let z = logits(2, 4, 7);
    // Bad label at [1, 3] of the caller's tensor: flat position 7.
    let y = int_tensor(&[0, 1, 2, 3, 4, 5, 6, 9], &[2, 4]);
    let e = err(token_logprobs(&z, &y, &LogProbOptions::causal()), "position 7");
    assert!(
        matches!(
            e,
            Error::LabelOutOfRange {
                value: 9,
                position: 7,
                ..
            }
        ),
        "{e:?}"
    );
    // With the shift, column 0 is never scored: a bad label there is not an error.
    let y = int_tensor(&[99, 1, 2, 3, -7, 5, 6, 0], &[2, 4]);
    assert!(token_logprobs(&z, &y, &LogProbOptions::causal()).is_ok());
    // … but without the shift it is.
    let e = err(token_logprobs(&z, &y, &LogProbOptions::default()), "`labels`");
    assert!(
        matches!(
            e,
            Error::LabelOutOfRange {
                value: 99,
                position: 0,
                ..
            }
        ),
        "{e:?}"
    );
}

// ------------------------------------------------------------------------------------------ parameters

#[test]
fn chunk_bytes_zero() {
    let o = LogProbOptions::default().with_chunk_bytes(0);
    let e = err(
        token_logprobs(&logits(2, 5, 7), &labels(2, 5, 7), &o),
        "`chunk_bytes`",
    );
    assert!(
        matches!(
            e,
            Error::InvalidParameter {
                name: "chunk_bytes",
                ..
            }
        ),
        "{e:?}"
    );
}

fn dpo_err(config: DpoConfig) -> Error {
    let (c, r) = (seq(&[-1.0, -2.0], &[1, 2]), seq(&[-3.0, -2.0], &[3, 2]));
    let name = match config.validate() {
        Err(Error::InvalidParameter { name, .. }) => name,
        other => panic!("validate() should fail: {other:?}"),
    };
    err(
        dpo_loss(&config, &PreferenceBatch::new(&c, &r, Reference::Free)),
        name,
    )
}

#[test]
fn invalid_beta() {
    for beta in [0.0, -0.1, f64::NAN, f64::INFINITY] {
        let e = dpo_err(DpoConfig::new(DpoLoss::Sigmoid, beta));
        assert!(
            matches!(e, Error::InvalidParameter { name: "beta", .. }),
            "β = {beta}: {e:?}"
        );
        let (c, r) = (seq(&[-1.0], &[1]), seq(&[-1.0], &[1]));
        let e = err(
            rpo_loss(
                &RpoConfig::paper(beta, 0.005).with_dpo(DpoConfig::new(DpoLoss::Sigmoid, beta)),
                &PreferenceBatch::new(&c, &r, Reference::Free),
            ),
            "beta",
        );
        assert!(matches!(e, Error::InvalidParameter { name: "beta", .. }), "{e:?}");
    }
}

#[test]
fn invalid_label_smoothing() {
    for eps in [-0.01, 0.5, 0.7, f64::NAN] {
        let e = dpo_err(DpoConfig::new(DpoLoss::Robust, 0.1).with_label_smoothing(eps));
        assert!(
            matches!(
                e,
                Error::InvalidParameter {
                    name: "label_smoothing",
                    ..
                }
            ),
            "ε = {eps}: {e:?}"
        );
    }
    // 0 and just below 0.5 are fine.
    let (c, r) = (seq(&[-1.0], &[1]), seq(&[-2.0], &[1]));
    for eps in [0.0, 0.499] {
        let config = DpoConfig::new(DpoLoss::Robust, 0.1).with_label_smoothing(eps);
        assert!(dpo_loss(&config, &PreferenceBatch::new(&c, &r, Reference::Free)).is_ok());
    }
}

#[test]
fn other_invalid_dpo_parameters() {
    let config = DpoConfig {
        discopop_tau: 0.0,
        ..DpoConfig::default()
    };
    assert!(matches!(
        dpo_err(config),
        Error::InvalidParameter {
            name: "discopop_tau",
            ..
        }
    ));
    let config = DpoConfig {
        bco_delta: f64::NAN,
        ..DpoConfig::default()
    };
    assert!(matches!(
        dpo_err(config),
        Error::InvalidParameter {
            name: "bco_delta",
            ..
        }
    ));
    assert!(matches!(
        dpo_err(DpoConfig::default().with_losses(vec![])),
        Error::InvalidParameter { name: "losses", .. }
    ));
    let config = DpoConfig::default().with_losses(vec![(DpoLoss::Hinge, f64::NAN)]);
    assert!(matches!(
        dpo_err(config),
        Error::InvalidParameter {
            name: "losses[].weight",
            ..
        }
    ));
}

#[test]
fn negative_eta_and_weight() {
    let (c, r) = (seq(&[-1.0], &[1]), seq(&[-2.0], &[1]));
    let batch = PreferenceBatch::new(&c, &r, Reference::Free);
    for eta in [-0.001, f64::NAN] {
        let config = RpoConfig::paper(0.1, eta);
        let e = err(rpo_loss(&config, &batch), "`eta`");
        assert!(matches!(e, Error::InvalidParameter { name: "eta", .. }), "{e:?}");
        assert!(matches!(
            config.coefficient(),
            Err(Error::InvalidParameter { name: "eta", .. })
        ));
        assert!(config.describe().contains("<invalid>"));
    }
    let config = RpoConfig {
        sft_weight: SftWeight::Absolute(-1.0),
        ..RpoConfig::trl(0.1, 0.0)
    };
    let e = err(rpo_loss(&config, &batch), "`sft_weight`");
    assert!(
        matches!(
            e,
            Error::InvalidParameter {
                name: "sft_weight",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn invalid_global_batch() {
    let (c, r) = (seq(&[-1.0], &[1]), seq(&[-2.0], &[1]));
    for pairs in [0.0, -1.0, f64::NAN] {
        let g = GlobalBatch {
            pairs,
            chosen_tokens: 10.0,
        };
        let batch = PreferenceBatch::new(&c, &r, Reference::Free).with_global(g);
        let e = err(dpo_loss(&DpoConfig::default(), &batch), "global.pairs");
        assert!(
            matches!(
                e,
                Error::InvalidParameter {
                    name: "global.pairs",
                    ..
                }
            ),
            "{e:?}"
        );
    }
    for tokens in [0.0, f64::INFINITY] {
        let g = GlobalBatch {
            pairs: 4.0,
            chosen_tokens: tokens,
        };
        let e = err(
            sft_loss(SftNormalization::TokenMean, &c, Some(g), true),
            "global.chosen_tokens",
        );
        assert!(
            matches!(
                e,
                Error::InvalidParameter {
                    name: "global.chosen_tokens",
                    ..
                }
            ),
            "{e:?}"
        );
    }
}

// -------------------------------------------------------------------------------------- no valid tokens

#[test]
fn sequence_mean_without_tokens() {
    let c = seq(&[-1.0, 0.0, -2.0], &[1, 0, 2]);
    let e = err(
        sft_loss(SftNormalization::SequenceMean, &c, None, true),
        "`chosen.count`",
    );
    assert!(
        matches!(
            e,
            Error::NoValidTokens {
                arg: "chosen.count",
                index: 1,
                ..
            }
        ),
        "{e:?}"
    );
    // Through RPO (OpenRLHF preset) as well.
    let r = seq(&[-1.0, -1.0, -2.0], &[1, 1, 2]);
    let e = err(
        rpo_loss(
            &RpoConfig::openrlhf(0.1, 0.2),
            &PreferenceBatch::new(&c, &r, Reference::Free),
        ),
        "sequence 1",
    );
    assert!(matches!(e, Error::NoValidTokens { index: 1, .. }), "{e:?}");
    // The per-sequence mean of log-probs, from logits with a fully ignored row.
    let y = int_tensor(&[1, 2, -100, -100], &[2, 2]);
    let s = sequence_logprobs(&logits(2, 2, 5), &y, &LogProbOptions::default()).unwrap();
    let e = err(s.mean(true), "`labels`");
    assert!(
        matches!(
            e,
            Error::NoValidTokens {
                arg: "labels",
                index: 1,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn length_normalised_ipo_without_tokens() {
    let (c, r) = (seq(&[-1.0, -2.0], &[1, 2]), seq(&[-1.0, 0.0], &[1, 0]));
    let e = err(
        dpo_loss(
            &DpoConfig::new(DpoLoss::Ipo, 0.1),
            &PreferenceBatch::new(&c, &r, Reference::Free),
        ),
        "`rejected.count`",
    );
    assert!(
        matches!(
            e,
            Error::NoValidTokens {
                arg: "rejected.count",
                index: 1,
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(
        dpo_loss(
            &DpoConfig::new(DpoLoss::Ipo, 0.1),
            &PreferenceBatch::new(&r, &c, Reference::Free),
        ),
        "`chosen.count`",
    );
    assert!(
        matches!(
            e,
            Error::NoValidTokens {
                arg: "chosen.count",
                index: 1,
                ..
            }
        ),
        "{e:?}"
    );
    // Un-normalised IPO needs no token count.
    let mut config = DpoConfig::new(DpoLoss::Ipo, 0.1);
    config.ipo_length_normalized = false;
    assert!(dpo_loss(&config, &PreferenceBatch::new(&c, &r, Reference::Free)).is_ok());
}

#[test]
fn token_mean_without_tokens() {
    let c = seq(&[0.0, 0.0], &[0, 0]);
    let e = err(
        sft_loss(SftNormalization::TokenMean, &c, None, true),
        "`chosen.count`",
    );
    assert!(
        matches!(
            e,
            Error::NoValidTokens {
                arg: "chosen.count",
                ..
            }
        ),
        "{e:?}"
    );
    // A batch with some tokens is fine even if one row has none (the mean is over all tokens).
    let c = seq(&[-3.0, 0.0], &[2, 0]);
    let out = sft_loss(SftNormalization::TokenMean, &c, None, true).unwrap();
    assert!((out.loss.double_value(&[]) - 1.5).abs() < 1e-6);
}

// ----------------------------------------------------------------------------------------- non-finite

#[test]
fn non_finite_logits_in_a_scored_row() {
    let o = LogProbOptions::default();
    let y = int_tensor(&[1, 2, 3, 4, 0, 1], &[2, 3]);
    for bad in [f64::NAN, f64::INFINITY] {
        let z = logits(2, 3, 5);
        let _ = z.get(1).get(2).get(4).fill_(bad); // a non-target entry of a scored row
        let e = err(token_logprobs(&z, &y, &o), "`logits`");
        assert!(
            matches!(
                e,
                Error::NonFinite {
                    arg: "logits",
                    count: 1,
                    ..
                }
            ),
            "{bad}: {e:?}"
        );
    }
    // −inf at the target makes log p = −inf: an error too.
    let z = logits(2, 3, 5);
    let _ = z.get(0).get(1).get(2).fill_(f64::NEG_INFINITY);
    let e = err(token_logprobs(&z, &y, &o), "`logits`");
    assert!(matches!(e, Error::NonFinite { arg: "logits", .. }), "{e:?}");
    // −inf elsewhere in the row (a masked-out vocabulary entry) is fine.
    let z = logits(2, 3, 5);
    let _ = z.get(0).get(1).get(4).fill_(f64::NEG_INFINITY);
    let out = token_logprobs(&z, &y, &o).unwrap();
    assert!(values(&out.logps).iter().all(|x| x.is_finite()));
}

#[test]
fn nan_in_an_ignored_row_is_fine() {
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
            let o = LogProbOptions::default().with_shift(shift);
            let s = sequence_logprobs(&z, &y, &o).unwrap();
            assert!(
                values(&s.sum).iter().all(|x| x.is_finite()),
                "{kind:?} shift {shift}"
            );
        }
    }
}

#[test]
fn non_finite_reference_logprobs() {
    let (c, r) = (seq(&[-1.0, -2.0], &[1, 2]), seq(&[-1.0, -2.0], &[1, 2]));
    let good = Tensor::zeros([2], CPU);
    let bad = tensor(&[-1.0, f64::NAN], &[2], Kind::Float);
    let batch = PreferenceBatch::new(
        &c,
        &r,
        Reference::LogProbs {
            chosen: &good,
            rejected: &bad,
        },
    );
    let e = err(dpo_loss(&DpoConfig::default(), &batch), "`reference.rejected`");
    assert!(
        matches!(
            e,
            Error::NonFinite {
                arg: "reference.rejected",
                count: 1,
                ..
            }
        ),
        "{e:?}"
    );
    let inf = tensor(&[f64::NEG_INFINITY, -1.0], &[2], Kind::Float);
    let batch = PreferenceBatch::new(
        &c,
        &r,
        Reference::LogProbs {
            chosen: &inf,
            rejected: &good,
        },
    );
    let e = err(rpo_loss(&RpoConfig::default(), &batch), "`reference.chosen`");
    assert!(
        matches!(
            e,
            Error::NonFinite {
                arg: "reference.chosen",
                ..
            }
        ),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------- validation off

#[test]
fn validation_off_skips_the_checks() {
    // Non-finite logits: returned as they are.
    let y = int_tensor(&[1, 2, 3, 4, 0, 1], &[2, 3]);
    let z = logits(2, 3, 5);
    let _ = z.get(1).get(2).get(4).fill_(f64::NAN);
    let off = LogProbOptions::default().with_validate(false);
    let out = token_logprobs(&z, &y, &off).unwrap();
    assert!(values(&out.logps)[5].is_nan());

    // Sequences without tokens: means are NaN/inf instead of an error.
    let c = seq(&[-1.0, 0.0], &[1, 0]);
    assert!(sft_loss(SftNormalization::SequenceMean, &c, None, false).is_ok());
    let none = seq(&[0.0, 0.0], &[0, 0]);
    assert!(sft_loss(SftNormalization::TokenMean, &none, None, false).is_ok());
    let mut config = DpoConfig::new(DpoLoss::Ipo, 0.1);
    config.validate = false;
    assert!(dpo_loss(&config, &PreferenceBatch::new(&c, &c, Reference::Free)).is_ok());
    let s = sequence_logprobs(&logits(2, 2, 5), &int_tensor(&[1, 2, -100, -100], &[2, 2]), &off).unwrap();
    assert!(values(&s.mean(false).unwrap())[1].is_nan());

    // Non-finite reference log-probs.
    let bad = tensor(&[-1.0, f64::NAN], &[2], Kind::Float);
    let batch = PreferenceBatch::new(
        &c,
        &c,
        Reference::LogProbs {
            chosen: &bad,
            rejected: &bad,
        },
    );
    let config = DpoConfig {
        validate: false,
        ..DpoConfig::default()
    };
    assert!(dpo_loss(&config, &batch).is_ok());

    // Label range: the crate's check is skipped; on CPU libtorch's own gather bounds check still fires
    // (as a `Torch` error, not `LabelOutOfRange`).
    let y = int_tensor(&[0, 1, 2, 3, 4, 5, 9, 6], &[2, 4]);
    match token_logprobs(
        &logits(2, 4, 7),
        &y,
        &LogProbOptions::default().with_validate(false),
    ) {
        Err(Error::Torch(_)) => {}
        other => panic!("expected libtorch's own error, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------- devices

#[cfg(feature = "cuda-tests")]
#[test]
fn tensors_on_different_devices() {
    assert!(
        tch::Cuda::is_available(),
        "the cuda-tests feature needs a CUDA device"
    );
    let gpu = Device::Cuda(0);
    let e = err(
        token_logprobs(
            &logits(2, 5, 7),
            &labels(2, 5, 7).to_device(gpu),
            &LogProbOptions::default(),
        ),
        "`labels`",
    );
    assert!(
        matches!(
            e,
            Error::DeviceMismatch {
                arg: "labels",
                other: "logits",
                ..
            }
        ),
        "{e:?}"
    );
    let (c, r) = (seq(&[-1.0, -2.0], &[1, 2]), seq(&[-1.0, -2.0], &[1, 2]));
    let on_gpu = Tensor::zeros([2], (Kind::Float, gpu));
    let cpu = Tensor::zeros([2], CPU);
    let batch = PreferenceBatch::new(
        &c,
        &r,
        Reference::LogProbs {
            chosen: &on_gpu,
            rejected: &cpu,
        },
    );
    let e = err(dpo_loss(&DpoConfig::default(), &batch), "`reference.chosen`");
    assert!(
        matches!(
            e,
            Error::DeviceMismatch {
                arg: "reference.chosen",
                ..
            }
        ),
        "{e:?}"
    );
    let r_gpu = SequenceLogProbs {
        sum: r.sum.to_device(gpu),
        count: r.count.to_device(gpu),
    };
    let e = err(
        dpo_loss(
            &DpoConfig::default(),
            &PreferenceBatch::new(&c, &r_gpu, Reference::Free),
        ),
        "`rejected.sum`",
    );
    assert!(
        matches!(
            e,
            Error::DeviceMismatch {
                arg: "rejected.sum",
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(
        SequenceLogProbs::new(Tensor::zeros([2], CPU), Tensor::zeros([2], (Kind::Int64, gpu))),
        "`count`",
    );
    assert!(matches!(e, Error::DeviceMismatch { arg: "count", .. }), "{e:?}");
}
