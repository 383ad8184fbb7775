//! Preference losses on per-sequence log-probabilities: the DPO family ([`dpo`]), SFT / NLL on the chosen
//! response ([`sft`]), and RPO = DPO + coefficient × SFT ([`rpo`]), with the metrics users know ([`metrics`]).
//!
//! All losses take a [`PreferenceBatch`]: the policy's chosen and rejected [`SequenceLogProbs`] (sums and
//! token counts, `[B]` each), a [`Reference`], and an optional [`GlobalBatch`] for gradient accumulation.

pub mod dpo;
pub mod metrics;
pub mod rpo;
pub mod sft;

use crate::logprobs::SequenceLogProbs;
use tch::Tensor;

/// The reference policy's per-sequence log-probabilities, or none.
#[derive(Debug, Clone, Copy)]
pub enum Reference<'a> {
    /// Summed reference log-probs `log π_ref(y_w | x)` and `log π_ref(y_l | x)`, `[B]` each (computed by a
    /// frozen model under `no_grad`, or precomputed once and cached). Any float dtype; same device as the
    /// policy.
    LogProbs {
        /// `[B]` `log π_ref(y_w | x)`.
        chosen: &'a Tensor,
        /// `[B]` `log π_ref(y_l | x)`.
        rejected: &'a Tensor,
    },
    /// Reference-free: the log-ratios are the policy log-probs themselves (`log π_ref ≡ 0`).
    Free,
}

/// Normalizers of the whole accumulated batch, for gradient accumulation and data parallelism.
///
/// When one optimizer step spans several micro-batches (or workers), pass the totals of the whole step:
/// each micro-batch's loss is then `Σ_(its pairs) loss_i / pairs` (and the token-mean SFT term
/// `Σ_(its tokens) −log p / chosen_tokens`), so the sum of the micro-batch losses — and of their
/// gradients — equals the loss and gradient of one batch holding all the pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlobalBatch {
    /// Number of preference pairs in the whole step (> 0).
    pub pairs: f64,
    /// Number of scored chosen-response tokens in the whole step (> 0); used by
    /// [`sft::SftNormalization::TokenMean`].
    pub chosen_tokens: f64,
}

/// The inputs shared by [`dpo::dpo_loss`], [`sft::sft_loss`] and [`rpo::rpo_loss`].
#[derive(Debug, Clone, Copy)]
pub struct PreferenceBatch<'a> {
    /// Policy log-probs of the chosen responses: `sum [B]`, `count [B]`.
    pub chosen: &'a SequenceLogProbs,
    /// Policy log-probs of the rejected responses: `sum [B]`, `count [B]`.
    pub rejected: &'a SequenceLogProbs,
    /// Reference log-probs or reference-free.
    pub reference: Reference<'a>,
    /// Totals of the whole accumulated step; `None` normalizes within this batch.
    pub global: Option<GlobalBatch>,
}

impl<'a> PreferenceBatch<'a> {
    /// A batch normalized within itself.
    pub fn new(
        chosen: &'a SequenceLogProbs,
        rejected: &'a SequenceLogProbs,
        reference: Reference<'a>,
    ) -> Self {
        Self {
            chosen,
            rejected,
            reference,
            global: None,
        }
    }
    /// Sets the totals of the whole accumulated step.
    pub fn with_global(mut self, global: GlobalBatch) -> Self {
        self.global = Some(global);
        self
    }
}
