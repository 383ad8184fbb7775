//! Per-layer activation (gradient) checkpointing for [`Decoder`]: [`Decoder::forward_hidden_checkpointed`]
//! and [`LayerCheckpoints`].
//!
//! libtorch's C++ API has no `torch.utils.checkpoint`, and tch offers no custom autograd function, so the
//! backward pass is split at the layer boundaries by hand:
//! 1. forward under `no_grad`, keeping only each layer's input `h_l` `[N, T, H]` (and the shared RoPE
//!    tables and masks); the last layer's output `h_L` becomes a detached leaf that requires grad, and the
//!    final norm runs on it with grad;
//! 2. the caller's `loss.backward()` fills `dL/dh_L` (and the head's gradient);
//! 3. [`LayerCheckpoints::backward`], for `l = L−1 … 0`: recompute layer `l` from a detached leaf copy of
//!    `h_l` with grad, and backpropagate `g = dL/dh_{l+1}` through it as the gradient of `Σ(out ⊙ g)`
//!    (`g` detached, so the gradient reaching `out` is exactly `g`): the layer's parameters accumulate
//!    their gradient and the leaf receives `dL/dh_l`; finally the embedding rows of the tokens gain their
//!    share, index-added into the embedding's `.grad` when it exists (no dense `[V, H]` temporary).
//!
//! The recomputation runs a block of `max(1, 512 / T)` batch rows at a time (the rows of a layer are
//! independent), and each layer input is freed once its layer is done.
//!
//! Each recomputation runs the same ops on the same inputs as the checkpoint-free pass. With one row block
//! (`N·T ≤ 512`) activations and gradients are the same values; with several, a layer's parameter
//! gradient is the sum of its blocks' contributions, added in another order (and row blocks may take other
//! matrix-multiply kernels), so gradients agree within f32 rounding. Activation memory: `L + 1` hidden states plus one layer's
//! autograd graph for one row block at a time, instead of every layer's for the whole batch.

use tch::{Kind, Tensor};

use super::model::{AttentionInputs, Decoder};
use crate::autograd::backward_from;
use crate::error::Result;

/// What [`Decoder::forward_hidden_checkpointed`] keeps to finish the backward pass: the layer inputs, the
/// per-layer attention inputs, the token ids and the checkpoint leaf `h_L`.
pub struct LayerCheckpoints<'a> {
    model: &'a Decoder,
    input_ids: Tensor,
    attention: AttentionInputs,
    /// `h_0 … h_{L−1}`, no grad.
    layer_inputs: Vec<Tensor>,
    /// `h_L`, a leaf that requires grad.
    last: Tensor,
}

impl std::fmt::Debug for LayerCheckpoints<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerCheckpoints")
            .field("layers", &self.layer_inputs.len())
            .field("hidden", &self.last.size())
            .finish()
    }
}

impl Decoder {
    /// The final normed hidden states `[N, T, H]`, as [`Decoder::forward_hidden`] computes them, with
    /// per-layer activation checkpointing: the layers run without an autograd graph and the returned
    /// tensor is differentiable only down to the last layer's output. After `loss.backward()` on a loss
    /// of the returned states (and of the head, e.g. through [`Decoder::logits`]), call
    /// [`LayerCheckpoints::backward`] to carry the gradient through the layers and the embedding: the
    /// parameters then hold the gradients one `backward` through [`Decoder::forward_hidden`] would give.
    ///
    /// Same inputs and errors as [`Decoder::forward_hidden`]. Runs with gradients enabled whatever the
    /// caller's grad mode.
    pub fn forward_hidden_checkpointed(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<(Tensor, LayerCheckpoints<'_>)> {
        let (_, t) = self.check_inputs(input_ids, attention_mask, None)?;
        let device = input_ids.device();
        let positions = Tensor::f_arange(t, (Kind::Int64, device))?.f_unsqueeze(0)?;
        let (attention, layer_inputs, last) = tch::no_grad(|| -> Result<_> {
            let attention = self.attention_inputs(attention_mask, &positions, 0, t, device)?;
            let mut xs = self.embed(input_ids)?;
            let mut layer_inputs = Vec::with_capacity(self.layers().len());
            for layer in self.layers() {
                let (blocked, (cos, sin)) = attention.of(layer);
                let out = layer.forward(&xs, cos, sin, blocked, None)?;
                layer_inputs.push(std::mem::replace(&mut xs, out));
            }
            Ok((attention, layer_inputs, xs))
        })?;
        let last = last.f_detach()?.set_requires_grad(true);
        let hidden = tch::with_grad(|| self.final_norm().forward(&last))?;
        let checkpoints = LayerCheckpoints {
            model: self,
            input_ids: input_ids.shallow_clone(),
            attention,
            layer_inputs,
            last,
        };
        Ok((hidden, checkpoints))
    }
}

/// Tokens per recomputed block of batch rows in [`LayerCheckpoints::backward`]: blocks of
/// `max(1, RECOMPUTE_TOKENS / T)` rows.
const RECOMPUTE_TOKENS: i64 = 512;

/// Rows per recomputed block for a batch of `n` rows of `t` positions.
fn recompute_rows(n: i64, t: i64) -> i64 {
    (RECOMPUTE_TOKENS / t.max(1)).clamp(1, n.max(1))
}

impl LayerCheckpoints<'_> {
    /// Carries the gradient of the checkpoint `h_L` (left there by the caller's `loss.backward()`) back
    /// through every layer (recomputed one layer and one block of rows at a time) and the embedding into
    /// the parameters' `.grad` (accumulating, like `backward`). Nothing happens if no gradient reached `h_L`.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] if an op fails.
    pub fn backward(self) -> Result<()> {
        let LayerCheckpoints {
            model,
            input_ids,
            attention,
            mut layer_inputs,
            last,
        } = self;
        let mut grad = last.f_grad()?;
        drop(last);
        if !grad.defined() {
            return Ok(());
        }
        // `backward_from` backpropagates `g` as the backward of `Σ(out ⊙ g)`: exactly `g` reaches `out`.
        // Each layer input is freed once its layer is done, so the checkpoints shrink as the layers'
        // gradients grow; each layer is recomputed a block of batch rows at a time (rows are independent
        // in a layer), so one block's activations are alive at once, not the whole batch's.
        let (n, t) = match grad.size()[..] {
            [n, t, ..] => (n, t),
            [n] => (n, 1),
            [] => (1, 1),
        };
        let block = recompute_rows(n, t);
        let blocks: Vec<(i64, i64)> = (0..n)
            .step_by(block as usize)
            .map(|s| (s, block.min(n - s)))
            .collect();
        // Narrowing to all rows (one block) gives views of the whole tensors: the same values.
        let attention: Vec<AttentionInputs> = blocks
            .iter()
            .map(|&(start, len)| attention.rows(start, len))
            .collect::<Result<_>>()?;
        tch::with_grad(|| -> Result<()> {
            for layer in model.layers().iter().rev() {
                let Some(input) = layer_inputs.pop() else {
                    break;
                };
                let mut input_grads = Vec::with_capacity(blocks.len());
                for (&(start, len), attention) in blocks.iter().zip(&attention) {
                    let leaf = input.f_narrow(0, start, len)?.f_detach()?.set_requires_grad(true);
                    let g = grad.f_narrow(0, start, len)?;
                    let (blocked, (cos, sin)) = attention.of(layer);
                    let out = layer.forward(&leaf, cos, sin, blocked, None)?;
                    backward_from(&out, &g)?;
                    input_grads.push(leaf.f_grad()?);
                }
                drop(input);
                grad = match input_grads.len() {
                    1 => input_grads.swap_remove(0),
                    _ => Tensor::f_cat(&input_grads, 0)?,
                };
            }
            model.embed_backward(&input_ids, &grad)
        })
    }
}
