//! The linear LM head of the fused path.

use crate::error::Result;
#[cfg(feature = "gguf")]
use crate::gguf::BlockMatrix;
use crate::validate;
use tch::Tensor;

/// Rows of a head kept in its GGUF blocks dequantized at a time (a vocabulary block): about 4 Mi values.
#[cfg(feature = "gguf")]
pub(crate) const VOCAB_BLOCK_ELEMENTS: i64 = 1 << 22;

/// A linear LM head: `weight [V, H]`, an optional `bias [V]`, an optional logit scale and an optional
/// final-logit soft-cap. The logits it produces are
///
/// ```text
/// z = softcap(s · (h·Wᵀ + b)),   softcap(u) = c·tanh(u / c)  (identity without a soft-cap)
/// ```
///
/// Weight and bias are in the hidden states' dtype and on their device. The weight may be tied to the input
/// embedding; gradients reach weight and bias either way. Every part of the head (bias, scale, soft-cap) is
/// applied on every fused pass — policy and reference, forward and backward.
///
/// The head owns shallow clones of its tensors (handles sharing their storage and autograd identity, no copy),
/// so it has no lifetime: a model's forward pass can return it ([`crate::train::HiddenOutput`]) and a batch
/// can hold it. [`Clone`] makes shallow clones too.
///
/// A model whose tied head is kept in its GGUF blocks
/// ([`WeightFormat::KeepQuantized`](crate::models::decoder::WeightFormat)) gives a head whose `weight` is a
/// stand-in (its shape, dtype and device, no values) over the blocks: every fused pass then computes
/// `h·Wᵀ` and `g·W` a vocabulary block of about 4 Mi weights at a time, dequantizing only that block, so
/// the `[V, H]` matrix is never held whole; such a head is frozen (no weight gradient).
#[derive(Debug)]
pub struct LinearHead {
    /// `[V, H]` weight (the layout of `nn::Linear` and of an embedding table), the parameter itself (a
    /// shallow clone), so that gradients reach it.
    pub weight: Tensor,
    /// Optional `[V]` bias (the parameter itself).
    pub bias: Option<Tensor>,
    /// Logit scale `s > 0` applied before the soft-cap (e.g. `1 / temperature`). Default 1.
    pub logit_scale: f64,
    /// Final-logit soft-cap `c > 0` (Gemma 2 uses 30). Default `None`.
    pub final_logit_softcap: Option<f64>,
    /// The weight kept in its GGUF blocks (`weight` is then a stand-in).
    #[cfg(feature = "gguf")]
    pub(crate) blocks: Option<BlockMatrix>,
}

impl Clone for LinearHead {
    /// Shallow clones of the tensors (same storage, same autograd identity).
    fn clone(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            logit_scale: self.logit_scale,
            final_logit_softcap: self.final_logit_softcap,
            #[cfg(feature = "gguf")]
            blocks: self.blocks.clone(),
        }
    }
}

impl LinearHead {
    /// A head on `weight` (a shallow clone), without bias, scale 1, no soft-cap.
    pub fn new(weight: &Tensor) -> Self {
        Self {
            weight: weight.shallow_clone(),
            bias: None,
            logit_scale: 1.0,
            final_logit_softcap: None,
            #[cfg(feature = "gguf")]
            blocks: None,
        }
    }

    /// A frozen head kept in its GGUF blocks: `stand_in` `[V, H]` gives the shape, dtype and device the
    /// blocks are dequantized to (its values are not read).
    #[cfg(all(feature = "gguf", feature = "train"))]
    pub(crate) fn kept(stand_in: &Tensor, blocks: BlockMatrix) -> Self {
        Self {
            blocks: Some(blocks),
            ..Self::new(stand_in)
        }
    }

    /// `h·Wᵀ + b` `[n, V]` in `h`'s dtype for `h [n, H]`, into `out` when given (a contiguous `[n, V]`
    /// buffer of that dtype); a kept head a vocabulary block at a time ([`BlockMatrix::linear`]).
    pub(crate) fn linear(&self, h: &Tensor, out: Option<&Tensor>) -> Result<Tensor> {
        #[cfg(feature = "gguf")]
        if let Some(blocks) = &self.blocks {
            return blocks.linear(h, self.bias.as_ref(), out, VOCAB_BLOCK_ELEMENTS);
        }
        match (out, &self.bias) {
            (None, _) => Ok(h.f_linear(&self.weight, self.bias.as_ref())?),
            (Some(z), Some(b)) => Ok(b.f_addmm_out(z, h, &self.weight.f_tr()?)?),
            (Some(z), None) => Ok(h.f_mm_out(z, &self.weight.f_tr()?)?),
        }
    }

    /// `g·W` `[n, H]` for `g [n, V]` in the weight's dtype: the gradient reaching the hidden states; a kept
    /// head a vocabulary block at a time (the blocks' products added in vocabulary order).
    pub(crate) fn input_grad(&self, g: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "gguf")]
        if let Some(blocks) = &self.blocks {
            let mut total: Option<Tensor> = None;
            for (start, rows) in blocks.row_blocks(VOCAB_BLOCK_ELEMENTS) {
                let w = blocks.dequantize_rows(start, rows, g.kind(), g.device())?;
                let part = g.f_narrow(1, start, rows)?.f_mm(&w)?;
                total = Some(match total {
                    Some(mut t) => {
                        let _ = t.f_add_(&part)?;
                        t
                    }
                    None => part,
                });
            }
            return match total {
                Some(t) => Ok(t),
                None => Ok(Tensor::f_zeros(
                    [g.size()[0], blocks.shape()[1]],
                    (g.kind(), g.device()),
                )?),
            };
        }
        Ok(g.f_mm(&self.weight)?)
    }
    /// Sets the `[V]` bias (a shallow clone).
    pub fn with_bias(mut self, bias: &Tensor) -> Self {
        self.bias = Some(bias.shallow_clone());
        self
    }
    /// Sets [`LinearHead::logit_scale`].
    pub fn with_logit_scale(mut self, logit_scale: f64) -> Self {
        self.logit_scale = logit_scale;
        self
    }
    /// Sets [`LinearHead::final_logit_softcap`].
    pub fn with_final_logit_softcap(mut self, cap: Option<f64>) -> Self {
        self.final_logit_softcap = cap;
        self
    }
    /// The vocabulary size `V` (rows of the weight; 0 for a weight that is not rank 2).
    pub fn vocab(&self) -> i64 {
        let size = self.weight.size();
        if size.len() == 2 {
            size[0]
        } else {
            0
        }
    }

    /// Checks the scalar parts (tensor shapes are checked where the head is used).
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`](crate::InputError::InvalidParameter) for a scale or soft-cap that is not finite and > 0.
    pub fn validate(&self) -> Result<()> {
        validate::positive_finite("logit_scale", self.logit_scale)?;
        if let Some(cap) = self.final_logit_softcap {
            validate::positive_finite("final_logit_softcap", cap)?;
        }
        Ok(())
    }
}
