//! The one batch type of every loss, over the input level, and the whole-step normalizers.

use crate::error::Result;
use crate::fused::LinearHead;
use crate::logprobs::{LogProbOptions, SequenceLogProbs};
use crate::loss::Reference;
use crate::validate;
use tch::Tensor;

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
    /// [`crate::loss::sft::SftNormalization::TokenMean`].
    pub chosen_tokens: f64,
}

impl GlobalBatch {
    /// Checks both totals.
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`](crate::InputError::InvalidParameter) if a total is not finite and > 0.
    pub fn validate(&self) -> Result<()> {
        validate::positive_finite("global.pairs", self.pairs)?;
        validate::positive_finite("global.chosen_tokens", self.chosen_tokens)
    }
}

/// The policy side of a [`LossBatch`]: the input level the per-sequence log-probs come from.
#[derive(Debug, Clone)]
pub enum PolicyInput<'a> {
    /// Per-sequence log-probs `sum [R]`, `count [R]` (e.g. from [`crate::sequence_logprobs`]).
    LogProbs(&'a SequenceLogProbs),
    /// `[R, T, V]` logits (f32, f64, bf16, f16) and `[R, T]` i64 labels (`options.ignore_index` at prompt and
    /// padding positions), scored with [`crate::sequence_logprobs`].
    Logits {
        /// `[R, T, V]` logits.
        logits: &'a Tensor,
        /// `[R, T]` i64 labels.
        labels: &'a Tensor,
    },
    /// `[R, T, H]` final hidden states (after the last norm), the LM head and `[R, T]` i64 labels, scored by
    /// the fused engine ([`crate::fused`]) without forming the logits.
    Hidden {
        /// `[R, T, H]` hidden states, in the head's dtype and on its device.
        hidden: &'a Tensor,
        /// The policy's LM head (weight, bias, logit scale, soft-cap).
        head: LinearHead,
        /// `[R, T]` i64 labels.
        labels: &'a Tensor,
    },
}

/// The input of every loss ([`crate::compute_loss`]): the policy at one input level, the reference, the optional
/// whole-step normalizers and the options.
///
/// Rows: a preference objective ([`crate::loss::RowLayout::Pairs`]) takes `R = 2B` rows, the `B` chosen
/// sequences followed by the `B` rejected ones (one concatenated forward pass); an SFT objective
/// ([`crate::loss::RowLayout::Rows`]) takes `R = B` target rows and no reference.
///
/// ```
/// # use tch::{Device, Kind, Tensor};
/// # use tch_rpo::{LogProbOptions, LossBatch, Reference, GlobalBatch};
/// let logits = Tensor::zeros([4, 6, 11], (Kind::Float, Device::Cpu));
/// let labels = Tensor::zeros([4, 6], (Kind::Int64, Device::Cpu));
/// let ref_sums = Tensor::zeros([4], (Kind::Float, Device::Cpu));
/// let batch = LossBatch::logits(&logits, &labels)
///     .with_reference(Reference::LogProbs(&ref_sums))
///     .with_options(LogProbOptions::causal())
///     .with_global(GlobalBatch { pairs: 8.0, chosen_tokens: 40.0 });
/// assert!(batch.global.is_some());
/// ```
#[derive(Debug, Clone)]
pub struct LossBatch<'a> {
    /// The policy's rows at their input level.
    pub policy: PolicyInput<'a>,
    /// The reference (default [`Reference::Free`]).
    pub reference: Reference<'a>,
    /// Totals of the whole accumulated step; `None` (the default) normalizes within this batch.
    pub global: Option<GlobalBatch>,
    /// How labels are read, checked and chunked (default [`LogProbOptions::default`]: unshifted labels;
    /// [`LogProbOptions::causal`] for causal-LM logits / hidden states). At the log-prob level only
    /// `validate_inputs` is read.
    pub options: LogProbOptions,
}

impl<'a> LossBatch<'a> {
    fn of(policy: PolicyInput<'a>) -> Self {
        Self {
            policy,
            reference: Reference::Free,
            global: None,
            options: LogProbOptions::default(),
        }
    }
    /// A batch of per-sequence log-probs `[R]`, reference-free, default options.
    pub fn log_probs(policy: &'a SequenceLogProbs) -> Self {
        Self::of(PolicyInput::LogProbs(policy))
    }
    /// A batch of `[R, T, V]` logits and `[R, T]` labels, reference-free, default options.
    pub fn logits(logits: &'a Tensor, labels: &'a Tensor) -> Self {
        Self::of(PolicyInput::Logits { logits, labels })
    }
    /// A batch of `[R, T, H]` hidden states, the LM head and `[R, T]` labels (fused), reference-free, default
    /// options.
    pub fn hidden(hidden: &'a Tensor, head: LinearHead, labels: &'a Tensor) -> Self {
        Self::of(PolicyInput::Hidden { hidden, head, labels })
    }
    /// Sets the reference.
    pub fn with_reference(mut self, reference: Reference<'a>) -> Self {
        self.reference = reference;
        self
    }
    /// Sets (`GlobalBatch` or `Some`) or clears (`None`) the totals of the whole accumulated step.
    pub fn with_global(mut self, global: impl Into<Option<GlobalBatch>>) -> Self {
        self.global = global.into();
        self
    }
    /// Sets the options.
    pub fn with_options(mut self, options: LogProbOptions) -> Self {
        self.options = options;
        self
    }
}
