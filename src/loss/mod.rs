//! Preference losses on per-sequence log-probabilities: the DPO family ([`dpo`]), SFT / NLL on the chosen
//! response ([`sft`]), and RPO = DPO + coefficient × SFT ([`rpo`]), with the metrics users know ([`metrics`]).
//!
//! Every loss has the shape `fn(&Config, &Batch) -> Result<Output>`:
//!
//! | level | batch | losses |
//! |---|---|---|
//! | log-probs | [`PreferenceBatch`] (`[2B]` policy sums + [`Reference`]), [`SftBatch`] (`[B]`) | [`dpo::dpo_loss`], [`rpo::rpo_loss`], [`sft::sft_loss`] |
//! | logits | [`rpo::LogitsBatch`] (`[2B, T, V]` logits + `[2B, T]` labels + [`Reference`]) | [`rpo::rpo_loss_from_logits`] |
//! | hidden states | [`crate::fused::HiddenBatch`] (`[2B, T, H]` + head + labels + [`Reference`]) | [`crate::fused_rpo_loss`], [`crate::fused_dpo_loss`], [`crate::fused_sft_loss`] |
//!
//! Each batch carries the optional whole-step normalizer [`GlobalBatch`] (gradient accumulation) in its
//! `global` field; every preference batch is `2B` rows, the `B` chosen sequences first.

pub mod dpo;
pub mod metrics;
mod reference;
pub mod rpo;
pub mod sft;

pub(crate) use reference::fused_from;
pub use reference::Reference;

use crate::error::{Error, Result};
use crate::logprobs::{split_rows, SequenceLogProbs};
use crate::validate;
use tch::{Kind, Tensor};

/// Normalizers of the whole accumulated batch, for gradient accumulation and data parallelism.
///
/// When one optimizer step spans several micro-batches (or workers), pass the totals of the whole step:
/// each micro-batch's loss is then `Σ_(its pairs) loss_i / pairs` (and the token-mean SFT term
/// `Σ_(its tokens) −log p / chosen_tokens`), so the sum of the micro-batch losses — and of their
/// gradients — equals the loss and gradient of one batch holding all the pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlobalBatch {
    /// Number of preference pairs (SFT: sequences) in the whole step (> 0).
    pub pairs: f64,
    /// Number of scored chosen-response tokens in the whole step (> 0); used by
    /// [`sft::SftNormalization::TokenMean`].
    pub chosen_tokens: f64,
}

impl GlobalBatch {
    /// Checks both totals.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if a total is not finite and > 0.
    pub fn validate(&self) -> Result<()> {
        validate::positive_finite("global.pairs", self.pairs)?;
        validate::positive_finite("global.chosen_tokens", self.chosen_tokens)
    }
}

/// The input of the log-prob-level pair losses ([`dpo::dpo_loss`], [`rpo::rpo_loss`]).
#[derive(Debug, Clone, Copy)]
pub struct PreferenceBatch<'a> {
    /// Policy log-probs of the `2B` rows, chosen first: `sum [2B]`, `count [2B]` (e.g. from
    /// [`crate::sequence_logprobs`] on one concatenated forward pass).
    pub policy: &'a SequenceLogProbs,
    /// The reference: [`Reference::LogProbs`] `[2B]` or [`Reference::Free`].
    pub reference: Reference<'a>,
    /// Totals of the whole accumulated step; `None` normalizes within this batch.
    pub global: Option<GlobalBatch>,
}

impl<'a> PreferenceBatch<'a> {
    /// A batch normalized within itself.
    pub fn new(policy: &'a SequenceLogProbs, reference: Reference<'a>) -> Self {
        Self {
            policy,
            reference,
            global: None,
        }
    }
    /// Sets the totals of the whole accumulated step.
    pub fn with_global(mut self, global: GlobalBatch) -> Self {
        self.global = Some(global);
        self
    }
    /// Sets or clears the totals of the whole accumulated step.
    pub fn with_global_opt(mut self, global: Option<GlobalBatch>) -> Self {
        self.global = global;
        self
    }
}

/// The input of [`sft::sft_loss`]: the SFT targets' log-probs (the chosen responses) and the optional
/// whole-step totals.
#[derive(Debug, Clone, Copy)]
pub struct SftBatch<'a> {
    /// Policy log-probs of the `B` target sequences: `sum [B]`, `count [B]`.
    pub chosen: &'a SequenceLogProbs,
    /// Totals of the whole accumulated step; `None` normalizes within this batch.
    pub global: Option<GlobalBatch>,
}

impl<'a> SftBatch<'a> {
    /// A batch normalized within itself.
    pub fn new(chosen: &'a SequenceLogProbs) -> Self {
        Self { chosen, global: None }
    }
    /// Sets the totals of the whole accumulated step.
    pub fn with_global(mut self, global: GlobalBatch) -> Self {
        self.global = Some(global);
        self
    }
    /// Sets or clears the totals of the whole accumulated step.
    pub fn with_global_opt(mut self, global: Option<GlobalBatch>) -> Self {
        self.global = global;
        self
    }
}

/// `Σ per_pair / N` (global pair count) or the mean.
pub(crate) fn reduce_pairs(per_pair: &Tensor, global: Option<GlobalBatch>) -> Result<Tensor> {
    match global {
        None => Ok(per_pair.f_mean(None::<Kind>)?),
        Some(g) => {
            validate::positive_finite("global.pairs", g.pairs)?;
            Ok(per_pair.f_sum(None::<Kind>)?.f_div_scalar(g.pairs)?)
        }
    }
}

/// Validates a [`SequenceLogProbs`] argument (`[R]` float sums, `[R]` counts); returns the sums' dtype.
/// With `finite`, NaN or ±inf sums are refused (syncs the device).
pub(crate) fn check_sequences(
    sum_arg: &'static str,
    count_arg: &'static str,
    s: &SequenceLogProbs,
    finite: bool,
) -> Result<Kind> {
    let kind = validate::float_tensor(sum_arg, &s.sum)?;
    let b = validate::per_pair(sum_arg, &s.sum, sum_arg, None)?;
    validate::per_pair(count_arg, &s.count, sum_arg, Some(b))?;
    validate::same_device(count_arg, &s.count, sum_arg, &s.sum)?;
    if finite {
        validate::all_finite(sum_arg, &s.sum, "among the policy log-probs")?;
    }
    Ok(kind)
}

/// Sum of optional terms: `None + x = x`.
#[derive(Default)]
pub(crate) struct Accumulator(Option<Tensor>);

impl Accumulator {
    pub(crate) fn add(&mut self, t: Tensor) -> Result<()> {
        self.0 = Some(match self.0.take() {
            None => t,
            Some(acc) => acc.f_add(&t)?,
        });
        Ok(())
    }
    pub(crate) fn into_inner(self) -> Option<Tensor> {
        self.0
    }
}

/// A validated preference batch split into halves: policy log-probs and log-ratios per pair.
pub(crate) struct Pairs {
    /// Policy log-probs of the chosen rows `[B]` (sum, count, stats).
    pub chosen: SequenceLogProbs,
    /// Policy log-probs of the rejected rows `[B]`.
    pub rejected: SequenceLogProbs,
    /// The log-ratios `ℓ_c`, `ℓ_r`.
    pub ratios: LogRatios,
}

/// The log-ratios `ℓ_c = log π_θ(y_w) − log π_ref(y_w)` and `ℓ_r` likewise, `[B]` each.
pub(crate) struct LogRatios {
    pub chosen: Tensor,
    pub rejected: Tensor,
}

impl Pairs {
    /// Checks the batch (shapes, dtypes, devices; with `validate_inputs` finiteness of the policy and
    /// reference sums) and splits it.
    pub(crate) fn new(batch: &PreferenceBatch<'_>, validate_inputs: bool) -> Result<Self> {
        let policy = batch.policy;
        let kind = check_sequences("policy.sum", "policy.count", policy, validate_inputs)?;
        let (chosen, rejected) = policy.split_pairs()?;
        let reference: Option<(Tensor, Tensor)> =
            match batch.reference.log_probs(policy.len(), &policy.sum)? {
                None => None,
                Some(sums) => {
                    if validate_inputs {
                        validate::all_finite("reference log-probs", &sums, "among the reference log-probs")?;
                    }
                    let (c, r) = split_rows("reference log-probs", &sums.f_to_kind(kind)?)?;
                    Some((c, r))
                }
            };
        let ratios = match &reference {
            None => LogRatios {
                chosen: chosen.sum.shallow_clone(),
                rejected: rejected.sum.shallow_clone(),
            },
            Some((ref_c, ref_r)) => LogRatios {
                chosen: chosen.sum.f_sub(ref_c)?,
                rejected: rejected.sum.f_sub(ref_r)?,
            },
        };
        Ok(Self {
            chosen,
            rejected,
            ratios,
        })
    }
}

/// [`Error::Config`] for a reference the SFT loss cannot use.
pub(crate) fn sft_reference_error(reference: &Reference<'_>) -> Error {
    Error::Config {
        name: "reference",
        requirement: format!(
            "the SFT loss uses no reference; pass Reference::Free (got {})",
            reference.name()
        ),
    }
}
