//! The loss trait every objective implements, and the per-sequence quantities it is a function of.

use crate::error::{Error, InputError, Result};
use crate::logprobs::{split_rows, SequenceLogProbs};
use crate::loss::GlobalBatch;
use crate::validate;
use tch::{Kind, Tensor};

/// How an objective reads the rows of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowLayout {
    /// `2B` rows, the `B` chosen sequences then the `B` rejected ones; the loss is a sum of per-pair terms
    /// (pair `i` = rows `i` and `i + B`). Takes any [`crate::Reference`].
    Pairs,
    /// `B` target rows; the loss is a sum of per-row terms. Takes no reference ([`crate::Reference::Free`]).
    Rows,
}

/// The per-sequence quantities of a batch, the whole input of an [`Objective`].
#[derive(Debug, Clone, Copy)]
pub struct Sequences<'a> {
    /// The policy's `sum [R]` (float, differentiable) and `count [R]` (i64), with the token statistics when
    /// they were computed.
    pub policy: &'a SequenceLogProbs,
    /// The reference's summed log-probs `[R]` (detached), or `None` for a reference-free batch (`log π_ref ≡ 0`).
    pub reference: Option<&'a Tensor>,
    /// Totals of the whole accumulated step; `None` normalizes within this batch.
    pub global: Option<GlobalBatch>,
}

/// A loss: a pure function of per-sequence quantities ([`Sequences`]) to the loss and its metric tensors.
///
/// [`crate::compute_loss`] runs any implementation from every input level (log-probs, logits, hidden states)
/// and does the rest once per call: [`Objective::validate`], shape and device checks, the reference's
/// resolution, and — with [`crate::LogProbOptions::validate_inputs`] — the finiteness checks of the policy
/// and reference log-probs and [`Objective::check_inputs`]. On hidden states, [`Objective::evaluate`] is
/// called once per chunk of whole groups of [`Objective::layout`] (on the sums so far; rows not yet scored hold
/// 0) and once at the end, so it must be separable over those groups, read nothing back from the device and
/// validate nothing.
pub trait Objective {
    /// What [`Objective::evaluate`] returns: the loss and its parts and metrics.
    type Output;

    /// How the rows are grouped (the fused one-pass schedule relies on separability over the groups).
    fn layout(&self) -> RowLayout;

    /// Checks the configuration (no tensors involved).
    ///
    /// # Errors
    /// Whatever the configuration refuses.
    fn validate(&self) -> Result<()>;

    /// Checks on the inputs that read values back from the device (e.g. non-zero token counts where the loss
    /// divides by them). Called once per call, only with `validate_inputs`. Default: none.
    ///
    /// # Errors
    /// Whatever the objective refuses.
    fn check_inputs(&self, sequences: &Sequences<'_>) -> Result<()> {
        let _ = sequences;
        Ok(())
    }

    /// The loss and its metric tensors (pure: no validation, no host reads).
    ///
    /// # Errors
    /// Tensor errors.
    fn evaluate(&self, sequences: &Sequences<'_>) -> Result<Self::Output>;

    /// The scalar loss of an output (the fused engine differentiates it).
    fn loss(output: &Self::Output) -> &Tensor;

    /// The output of the fused level: `loss` (differentiable w.r.t. the hidden states and head) in place of
    /// the output's loss, every other tensor detached.
    ///
    /// # Errors
    /// Tensor errors.
    fn with_fused_loss(output: Self::Output, loss: Tensor) -> Result<Self::Output>;
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

/// A preference batch split into halves: policy log-probs and log-ratios per pair.
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
    /// Splits `[2B]` sequences (checked by the caller) into pairs; the reference is converted to the policy
    /// sums' dtype.
    pub(crate) fn new(sequences: &Sequences<'_>) -> Result<Self> {
        let policy = sequences.policy;
        let (chosen, rejected) = policy.split_pairs()?;
        let ratios = match sequences.reference {
            None => LogRatios {
                chosen: chosen.sum.shallow_clone(),
                rejected: rejected.sum.shallow_clone(),
            },
            Some(sums) => {
                let kind = policy.sum.f_kind()?;
                let (ref_c, ref_r) = split_rows("reference log-probs", &sums.f_to_kind(kind)?)?;
                LogRatios {
                    chosen: chosen.sum.f_sub(&ref_c)?,
                    rejected: rejected.sum.f_sub(&ref_r)?,
                }
            }
        };
        Ok(Self {
            chosen,
            rejected,
            ratios,
        })
    }
}

/// [`InputError::Config`](crate::InputError::Config) for a reference given to a [`RowLayout::Rows`] objective.
pub(crate) fn rows_reference_error(reference: &crate::Reference<'_>) -> Error {
    Error::Input(InputError::Config {
        name: "reference",
        requirement: format!(
            "the SFT loss uses no reference; pass Reference::Free (got {})",
            reference.name()
        ),
    })
}
