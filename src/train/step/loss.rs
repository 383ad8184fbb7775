//! Every call of the trainer into the loss API, in one place: the loss of a micro-batch from a model
//! output, and the summed log-probs of a batch (reference scoring).

use tch::Tensor;

use crate::autograd::ensure_grad;
use crate::error::Result;
use crate::fused::{fused_sequence_logprobs, WeightGrad};
use crate::logprobs::{sequence_logprobs, LogProbOptions};
use crate::loss::rpo::{RpoConfig, RpoOutput};
use crate::loss::{compute_loss_with, GlobalBatch, LossBatch, Reference};
use crate::train::model::ModelOutput;

/// How the loss reads a model output: the objective and the log-prob options (the fused chunk budget
/// included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LossSettings<'a> {
    /// The objective.
    pub(crate) rpo: &'a RpoConfig,
    /// How rows are scored.
    pub(crate) logprobs: LogProbOptions,
}

/// The RPO loss of one micro-batch from the policy's `output` (`[2B, T, V]` logits, or the hidden states
/// and head for the fused path) and `labels` `[2B, T]`, against the `[2B]` `reference` log-probs (`None`:
/// reference-free), normalized by the step's `global` totals. With `train`, the fused path puts the head
/// weight's gradient straight into its `.grad` (the loss is backpropagated once, unscaled, and a skipped
/// step clears `.grad`); otherwise it builds the usual autograd graph (or none under `no_grad`).
pub(crate) fn micro_batch_loss(
    settings: LossSettings<'_>,
    output: &ModelOutput,
    labels: &Tensor,
    reference: Option<&Tensor>,
    global: Option<GlobalBatch>,
    train: bool,
) -> Result<RpoOutput> {
    let reference = match reference {
        Some(sums) => Reference::LogProbs(sums),
        None => Reference::Free,
    };
    let (batch, weight_grad) = match output {
        ModelOutput::Logits(logits) => (LossBatch::logits(logits, labels), WeightGrad::Surrogate),
        ModelOutput::Hidden(states) => {
            let weight_grad = match train {
                true => {
                    ensure_grad(&states.head.weight)?;
                    WeightGrad::IntoGrad
                }
                false => WeightGrad::Surrogate,
            };
            let batch = LossBatch::hidden(&states.hidden, states.head.clone(), labels);
            (batch, weight_grad)
        }
    };
    let batch = batch
        .with_reference(reference)
        .with_options(settings.logprobs)
        .with_global(global);
    compute_loss_with(settings.rpo, &batch, weight_grad)
}

/// The `[2B]` summed log-probs of the rows of `output` with `labels`, scored with `logprobs` (the fused
/// path, with its chunk budget, for hidden states).
pub(crate) fn sequence_sums(
    output: &ModelOutput,
    labels: &Tensor,
    logprobs: &LogProbOptions,
) -> Result<Tensor> {
    Ok(match output {
        ModelOutput::Hidden(states) => {
            fused_sequence_logprobs(&states.hidden, &states.head, labels, logprobs)?.sum
        }
        ModelOutput::Logits(logits) => sequence_logprobs(logits, labels, logprobs)?.sum,
    })
}
