//! The linear LM head of the fused path.

use crate::error::Result;
use crate::validate;
use tch::Tensor;

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
}

impl Clone for LinearHead {
    /// Shallow clones of the tensors (same storage, same autograd identity).
    fn clone(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            logit_scale: self.logit_scale,
            final_logit_softcap: self.final_logit_softcap,
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
        }
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
