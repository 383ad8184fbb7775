//! The fused linear-head engine: per-row log-probs and exact gradients straight from the final hidden states
//! and the LM head, without ever holding the `[R, T, V]` logits or their gradient.
//!
//! The logits are `z = softcap(s · (h·Wᵀ + b))` with the head's optional bias `b`, logit scale `s` and Gemma-2
//! final-logit soft-cap `softcap(u) = c·tanh(u / c)` ([`LinearHead`]).
//!
//! Every loss of [`crate::loss`] runs on this engine from a [`crate::LossBatch::hidden`] batch
//! ([`crate::compute_loss`]); [`fused_loss`] runs any user-defined loss of the per-row log-probs on it, and
//! [`fused_sequence_logprobs`] scores rows without gradient. This module knows nothing of the losses (the
//! dependency goes `loss → fused → logprobs`).
//!
//! # Algorithm
//! 1. Select the scored positions (labels ≠ ignore index, after the optional causal shift) of the flattened
//!    hidden states: prompt and padding tokens never reach the matmul.
//! 2. **Pass 1** (no grad): for chunks of scored tokens, logits in f32, logsumexp and the target logit →
//!    per-token log-prob, index-added into per-row sums `[R]` accumulated in f64 (returned in f32);
//!    with [`crate::LogProbOptions::token_stats`] also the per-row token statistics.
//! 3. The loss is evaluated on those small tensors with ordinary autograd; one backward to a leaf gives
//!    `dL/d(sum of row r)` — the coefficient `c` of every token of `r`.
//! 4. **Pass 2** (no grad): recompute each chunk's logits and apply `dL/dz = c · (onehot(y) − softmax(z))`
//!    (chained through soft-cap and scale): `grad_h = dZ·W`, `grad_W += dZᵀ·h` (f32), `grad_b += Σ dZ`.
//! 5. The returned loss is `L.detach() + S − S.detach()` with `S = Σ h⊙g_h + Σ W⊙g_W + Σ b⊙g_b`
//!    (g detached): its value is `L`, and `loss.backward()` delivers exactly the gradients into whatever
//!    produced `h`, `W` and `b` (a head tied to the embedding included), scaled by any upstream factor.
//!
//! The built-in losses, separable over pairs (SFT: rows), use a one-pass schedule when every pair fits the
//! budget: the loss is evaluated per chunk on the sums so far (`one_pass`), one matmul per chunk instead of two.
//!
//! Memory: the head weight, one f32 working set of at most [`crate::LogProbOptions::fused_chunk_bytes`]
//! (never `[N, V]`), the f32 weight-gradient accumulator and `[N, H]` hidden-state gradients — independent of
//! `T·V`. See `docs/fused.md` for the design and measured numbers.
//!
//! Host syncs: selecting the scored positions (`nonzero`, `masked_select`: data-dependent sizes) reads the
//! token count back once per scored batch (policy, and a `Hidden` reference); validation
//! ([`crate::LogProbOptions::validate_inputs`]) reads its checks back.

#[cfg(feature = "autograd")]
mod bf16;
pub(crate) mod engine;
mod head;
mod one_pass;
mod schedule;

pub use head::LinearHead;
#[cfg(feature = "gguf")]
pub(crate) use head::VOCAB_BLOCK_ELEMENTS;
pub(crate) use one_pass::Grouping;
pub(crate) use schedule::{grouped_loss, WeightGrad};

use crate::error::Result;
use crate::logprobs::{LogProbOptions, SequenceLogProbs};
use crate::validate;
use engine::NAMES;
use tch::Tensor;

/// Result of [`fused_loss`].
#[derive(Debug)]
pub struct FusedLoss<T> {
    /// Scalar loss whose value is the closure's loss and whose gradient w.r.t. the hidden states, weight
    /// and bias is the exact gradient of that loss. Call `backward` on it.
    pub loss: Tensor,
    /// Detached per-row log-prob sums `[R]` (f32; f64 for f64 inputs) and scored-token counts `[R]`.
    pub logps: SequenceLogProbs,
    /// Whatever else the closure returned (its tensors hang off a leaf, not the model: treat as values).
    pub value: T,
}

/// Per-row summed log-probs `[R]` and counts of `labels` under the linear head, without gradient and
/// without materializing the `[R, T, V]` logits (pass 1 only). Use it for reference models or to
/// precompute reference log-probs.
///
/// # Arguments
/// `hidden [R, T, H]` (f32, f64, bf16, f16), `head` (`[V, H]` weight, `[V]` bias, same dtype and device;
/// scale and soft-cap), `labels [R, T]` i64 with `options.ignore_index` at unscored positions. With
/// `options.token_stats` the result carries the per-row token statistics.
///
/// # Errors
/// [`InputError::Shape`](crate::InputError::Shape) (ranks, `H` of hidden vs weight, labels vs hidden, bias), [`InputError::DType`](crate::InputError::DType),
/// [`InputError::DeviceMismatch`](crate::InputError::DeviceMismatch), [`InputError::EmptyBatch`](crate::InputError::EmptyBatch), [`InputError::InvalidParameter`](crate::InputError::InvalidParameter)
/// (options, head scale or soft-cap); with validation [`InputError::LabelOutOfRange`](crate::InputError::LabelOutOfRange) and
/// [`InputError::NonFinite`](crate::InputError::NonFinite).
pub fn fused_sequence_logprobs(
    hidden: &Tensor,
    head: &LinearHead,
    labels: &Tensor,
    options: &LogProbOptions,
) -> Result<SequenceLogProbs> {
    score(hidden, head, labels, options, NAMES)
}

/// [`fused_sequence_logprobs`] with the argument names used in errors (hidden, weight, bias).
pub(crate) fn score(
    hidden: &Tensor,
    head: &LinearHead,
    labels: &Tensor,
    options: &LogProbOptions,
    names: [&'static str; 3],
) -> Result<SequenceLogProbs> {
    let prep = tch::no_grad(|| engine::prepare(hidden, head, labels, options, names))?;
    let pass = engine::forward(&prep, head, options)?;
    check_finite(&pass.sums, options, names[0])?;
    Ok(SequenceLogProbs {
        sum: pass.sums,
        count: prep.counts,
        stats: pass.stats,
    })
}

/// With `options.validate_inputs`, [`InputError::NonFinite`](crate::InputError::NonFinite) for NaN / ±inf row sums.
fn check_finite(sums: &Tensor, options: &LogProbOptions, arg: &'static str) -> Result<()> {
    if options.validate_inputs {
        validate::all_finite(
            arg,
            sums,
            "in the log-probs of its scored positions (NaN/±inf logits)",
        )?;
    }
    Ok(())
}

/// The generic fused loss: per-row log-probs of `labels` from `hidden` through `head`, any scalar loss of
/// them computed by `loss_fn`, and a differentiable result. For user-defined losses; the built-in ones run
/// through [`crate::compute_loss`] on a [`crate::LossBatch::hidden`] batch.
///
/// `loss_fn` receives [`SequenceLogProbs`] whose `sum [R]` is a leaf that requires grad (f32; f64 for f64
/// inputs) and `count [R]`, and returns the scalar loss plus any value to pass through. The returned
/// [`FusedLoss::loss`] has the closure's value and carries the exact gradient of it w.r.t. `hidden`,
/// `head.weight` and `head.bias` (each only if it requires grad and grad mode is on).
///
/// # Errors
/// Everything [`fused_sequence_logprobs`] returns, whatever `loss_fn` returns, and [`InputError::Shape`](crate::InputError::Shape) if
/// the loss is not a scalar.
pub fn fused_loss<T, F>(
    hidden: &Tensor,
    head: &LinearHead,
    labels: &Tensor,
    options: &LogProbOptions,
    loss_fn: F,
) -> Result<FusedLoss<T>>
where
    F: FnOnce(&SequenceLogProbs) -> Result<(Tensor, T)>,
{
    schedule::two_pass_loss(hidden, head, labels, options, loss_fn)
}
