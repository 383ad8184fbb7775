//! SFT: negative log-likelihood of the chosen responses, with the normalization named explicitly.
//!
//! With `s_i = Σ_t log π_θ(y_w,t | x, y_w,<t)` (the summed log-prob of chosen response `i`), `n_i` its
//! number of scored tokens, `B` the pairs of this batch, and optional whole-step totals `P` (pairs) and
//! `N` (chosen tokens) from a [`GlobalBatch`]:
//!
//! | [`SftNormalization`] | loss (local) | loss (with [`GlobalBatch`]) | used by |
//! |---|---|---|---|
//! | `SequenceSum` | `−(1/B)·Σ_i s_i` | `−(1/P)·Σ_i s_i` | RPO paper, main results (η·β coefficient) |
//! | `SequenceMean` | `−(1/B)·Σ_i s_i/n_i` | `−(1/P)·Σ_i s_i/n_i` | OpenRLHF `nll_loss_coef`, paper appendix |
//! | `TokenMean` | `−Σ_i s_i / Σ_i n_i` | `−(1/N)·Σ_i s_i` | TRL `"sft"` loss, Liger-Kernel `compute_nll_loss` |
//!
//! The same coefficient means very different things under different normalizations: a summed NLL over a
//! 300-token response is ~300× the token mean. Compare coefficients only within one normalization.

use crate::error::{Error, InputError, Result};
use crate::logprobs::SequenceLogProbs;
use crate::loss::objective::reduce_pairs;
use crate::loss::{GlobalBatch, Objective, RowLayout, Sequences};
use crate::validate;
use tch::{Kind, Tensor};

/// How the chosen-response NLL is normalized (formulas in the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SftNormalization {
    /// Per-sequence sum of `−log p`, mean over pairs (the RPO paper's main recipe).
    SequenceSum,
    /// Per-sequence mean of `−log p` over its tokens, mean over pairs (OpenRLHF, the paper's appendix).
    SequenceMean,
    /// Mean of `−log p` over all chosen tokens of the batch (TRL, Liger-Kernel).
    TokenMean,
}

impl SftNormalization {
    /// A short name (`"sequence_sum"`, `"sequence_mean"`, `"token_mean"`).
    pub fn name(self) -> &'static str {
        match self {
            SftNormalization::SequenceSum => "sequence_sum",
            SftNormalization::SequenceMean => "sequence_mean",
            SftNormalization::TokenMean => "token_mean",
        }
    }
}

/// Configuration of the SFT loss: an [`Objective`] over target rows ([`RowLayout::Rows`]: `[B]` rows, every
/// one a target sequence, no reference), run at any input level by [`crate::compute_loss`]. Input validation
/// is [`crate::LogProbOptions::validate_inputs`], in the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SftConfig {
    /// How the NLL is normalized. Default [`SftNormalization::TokenMean`] (TRL, Liger-Kernel).
    pub normalization: SftNormalization,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self::new(SftNormalization::TokenMean)
    }
}

impl SftConfig {
    /// The given normalization.
    pub fn new(normalization: SftNormalization) -> Self {
        Self { normalization }
    }
    /// Checks the configuration (every value is valid today; kept for the one `validate()` shape).
    ///
    /// # Errors
    /// None at present.
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// Result of the SFT loss ([`SftConfig`] through [`crate::compute_loss`]).
#[derive(Debug)]
pub struct SftOutput {
    /// Scalar NLL under the chosen normalization (differentiable).
    pub loss: Tensor,
    /// `[B]` per-sequence NLL in pair units: `loss = mean(per_sequence)` (or `Σ per_sequence / P` with a
    /// [`crate::GlobalBatch`]). `SequenceSum`: `−s_i`; `SequenceMean`: `−s_i/n_i`; `TokenMean`: `−s_i·B/Σn`
    /// (or `−s_i·P/N`). Lets RPO form per-pair losses that reduce exactly like the total. Detached on the
    /// hidden-state level.
    pub per_sequence: Tensor,
}

impl SftOutput {
    /// This output with `loss` in place of its loss and `per_sequence` detached.
    pub(crate) fn with_fused_loss(self, loss: Tensor) -> Result<Self> {
        Ok(Self {
            loss,
            per_sequence: self.per_sequence.f_detach()?,
        })
    }
}

/// The SFT loss (NLL of the target rows `sum [B]`, `count [B]`).
///
/// # Errors
/// [`InputError::InvalidParameter`](crate::InputError::InvalidParameter) for a non-positive or non-finite global total; with `validate_inputs`
/// ([`Objective::check_inputs`]), [`InputError::NoValidTokens`](crate::InputError::NoValidTokens) when `SequenceMean` meets a sequence with no
/// token, or `TokenMean` a batch with no token (and no global token count).
impl Objective for SftConfig {
    type Output = SftOutput;

    fn layout(&self) -> RowLayout {
        RowLayout::Rows
    }

    fn validate(&self) -> Result<()> {
        SftConfig::validate(self)
    }

    fn check_inputs(&self, sequences: &Sequences<'_>) -> Result<()> {
        check_targets(self.normalization, sequences.policy, sequences.global)
    }

    fn evaluate(&self, sequences: &Sequences<'_>) -> Result<SftOutput> {
        sft_of(self.normalization, sequences.policy, sequences.global)
    }

    fn loss(output: &SftOutput) -> &Tensor {
        &output.loss
    }

    fn with_fused_loss(output: SftOutput, loss: Tensor) -> Result<SftOutput> {
        output.with_fused_loss(loss)
    }
}

/// The token counts a normalization divides by are non-zero (syncs the device).
pub(crate) fn check_targets(
    normalization: SftNormalization,
    chosen: &SequenceLogProbs,
    global: Option<GlobalBatch>,
) -> Result<()> {
    match (normalization, global) {
        (SftNormalization::SequenceMean, _) => validate::nonzero_counts(
            "chosen.count",
            &chosen.count,
            "the sequence-mean SFT normalization",
        ),
        (SftNormalization::TokenMean, None) => {
            if chosen.count.f_sum(Kind::Int64)?.f_int64_value(&[])? <= 0 {
                return Err(Error::Input(InputError::NoValidTokens {
                    arg: "chosen.count",
                    index: 0,
                    reduction: "the token-mean SFT normalization (no sequence of the batch has one)",
                }));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The SFT loss of the target rows `chosen` (pure).
pub(crate) fn sft_of(
    normalization: SftNormalization,
    chosen: &SequenceLogProbs,
    global: Option<GlobalBatch>,
) -> Result<SftOutput> {
    let kind = chosen.sum.f_kind()?;
    let nll = chosen.sum.f_neg()?;
    let per_sequence = match normalization {
        SftNormalization::SequenceSum => nll,
        SftNormalization::SequenceMean => nll.f_div(&chosen.count.f_to_kind(kind)?)?,
        // −Σ s_i / N overall, in pair units: −s_i · P / N.
        SftNormalization::TokenMean => match global {
            Some(g) => {
                validate::positive_finite("global.pairs", g.pairs)?;
                validate::positive_finite("global.chosen_tokens", g.chosen_tokens)?;
                nll.f_mul_scalar(g.pairs / g.chosen_tokens)?
            }
            None => {
                let tokens = chosen.count.f_sum(kind)?;
                nll.f_mul_scalar(chosen.len() as f64)?.f_div(&tokens)?
            }
        },
    };
    let loss = reduce_pairs(&per_sequence, global)?;
    Ok(SftOutput { loss, per_sequence })
}

/// The whole-step chosen-token count of a micro-batch's chosen log-probs, as f64 (syncs the device).
/// Sum it over the micro-batches of a step to fill [`crate::GlobalBatch::chosen_tokens`].
pub fn count_tokens(chosen: &SequenceLogProbs) -> Result<f64> {
    Ok(chosen.count.f_sum(Kind::Int64)?.f_int64_value(&[])? as f64)
}
