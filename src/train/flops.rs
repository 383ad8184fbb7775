//! The floating-point operations of a training step, and the utilization they give: what a model reports
//! of its passes ([`PassFlops`], through [`PolicyModel::pass_flops`]),
//! and what a step computes with them ([`training_flops`], [`forward_flops`]).
//!
//! Convention (the usual one of MFU reports, counting what the kernels compute):
//! - a matrix product of `[m, k]` by `[k, n]` is `2·m·n·k` FLOPs; elementwise work (norms, activations,
//!   softmax, RoPE, the optimizer) and gathers (the embedding) are not counted;
//! - a backward pass is twice its forward (the gradients of both operands of every product);
//! - the body (everything before the LM head) runs over every position of the padded batch; attention
//!   counts `q·kᵀ` and `p·v` over every query and key slot it computes (with a mask, the whole `T × S`
//!   square, causal or not);
//! - the head runs over the scored tokens only on the fused path ([`crate::fused`]: prompt and padding
//!   positions never reach it), over every position on the logits path; the fused path's gradient is
//!   counted as one backward (its one-pass schedule; the two-pass schedule, used when one pair does not fit
//!   the chunk budget, recomputes the logits once more, which is not counted);
//! - a reference model's pass is a forward pass; a cached reference costs nothing in the step;
//! - with gradient checkpointing, the body's recomputation in the backward pass is counted
//!   ([`PassFlops::body_recomputes`]).

use crate::data::CollatedBatch;
use crate::train::model::{LossPath, PolicyModel};
use crate::train::reference::ReferenceSource;
use crate::train::trainer::RpoTrainer;

/// The FLOPs of one model's passes over a padded batch of `rows × positions` token ids, as
/// [`PolicyModel::pass_flops`] reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassFlops {
    /// One forward pass of the body (every layer's linears and attention products; everything before the
    /// LM head) over all `rows × positions` positions.
    pub body_forward: f64,
    /// The LM head's forward pass for one position: `2·H·V` for a `[V, H]` head.
    pub head_per_position: f64,
    /// Forward passes of the body recomputed during a training backward pass (1 with per-layer activation
    /// checkpointing, 0 without).
    pub body_recomputes: u32,
    /// Whether the model's `forward_hidden` returns hidden states (then [`LossPath::Auto`] takes the
    /// fused path).
    pub offers_hidden: bool,
}

/// The sizes of one micro-batch that the FLOP count reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchShape {
    /// Rows (chosen and rejected sequences: `2 ×` pairs).
    pub rows: usize,
    /// Padded positions per row.
    pub positions: usize,
    /// Scored tokens (chosen and rejected response tokens).
    pub scored_tokens: usize,
}

impl PassFlops {
    /// Whether a pass of this model on `path` runs the fused head (scored tokens only).
    pub fn fused_head(&self, path: LossPath) -> bool {
        match path {
            LossPath::Logits => false,
            LossPath::Hidden => true,
            LossPath::Auto => self.offers_hidden,
        }
    }

    /// The head's forward FLOPs of one pass on `path` over `shape`: `head_per_position` times the scored
    /// tokens (fused) or every position (logits).
    pub fn head_forward(&self, shape: BatchShape, path: LossPath) -> f64 {
        let positions = match self.fused_head(path) {
            true => shape.scored_tokens,
            false => shape.rows * shape.positions,
        };
        self.head_per_position * positions as f64
    }
}

/// The FLOPs of one training pass (forward and backward) of the policy over `shape` on `path`:
/// `(3 + body_recomputes) · body_forward + 3 · head_forward` (a backward is twice its forward).
pub fn training_flops(policy: &PassFlops, shape: BatchShape, path: LossPath) -> f64 {
    (3.0 + f64::from(policy.body_recomputes)) * policy.body_forward + 3.0 * policy.head_forward(shape, path)
}

/// The FLOPs of one forward pass (no gradient: evaluation, reference scoring) over `shape` on `path`:
/// `body_forward + head_forward`.
pub fn forward_flops(model: &PassFlops, shape: BatchShape, path: LossPath) -> f64 {
    model.body_forward + model.head_forward(shape, path)
}

impl<M: PolicyModel> RpoTrainer<M> {
    /// The FLOPs of a training step over `micro_batches` in this process: for each, the policy's training
    /// pass and, with a [`ReferenceSource::Model`], the reference's forward pass (on the configured loss
    /// path; with [`ReferenceSource::AdaptersOff`], the policy's own forward pass). `None` when the policy, or a reference model, does not count its FLOPs.
    pub(crate) fn step_flops(&self, micro_batches: &[CollatedBatch]) -> Option<f64> {
        let path = self.config.loss_path;
        let mut total = 0.0;
        for batch in micro_batches {
            let shape = batch_shape(batch)?;
            let policy = self.model.pass_flops(shape.rows, shape.positions)?;
            total += training_flops(&policy, shape, path);
            // Exhaustive, so that a new kind of reference decides what it costs.
            match &self.reference {
                ReferenceSource::Model(reference) => {
                    let reference = reference.pass_flops(shape.rows, shape.positions)?;
                    total += forward_flops(&reference, shape, path);
                }
                // The policy's own forward pass, adapters off.
                ReferenceSource::AdaptersOff => total += forward_flops(&policy, shape, path),
                ReferenceSource::Cached(_) | ReferenceSource::InitialPolicy | ReferenceSource::Free => {}
            }
        }
        Some(total)
    }
}

/// The [`BatchShape`] of a collated micro-batch (`None` for ids that are not `[rows, positions]`).
fn batch_shape(batch: &CollatedBatch) -> Option<BatchShape> {
    let [rows, positions] = batch.input_ids.size()[..] else {
        return None;
    };
    Some(BatchShape {
        rows: usize::try_from(rows).ok()?,
        positions: usize::try_from(positions).ok()?,
        scored_tokens: usize::try_from(batch.chosen_tokens + batch.rejected_tokens).ok()?,
    })
}
