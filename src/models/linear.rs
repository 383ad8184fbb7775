//! [`Linear`]: the linear layer the decoders share, `y = x·Wᵀ + b` (crate-internal).
//!
//! Every projection of a decoder layer (attention's q / k / v / o, the MLP's gate / up / down) is one,
//! so that what changes how a projection is applied (adapters, a weight kept in another format) is written
//! once for every model.

use tch::Tensor;

use crate::error::Result;

/// A linear layer: weight `[out, in]` and an optional bias `[out]`; `forward(x)` = `x·Wᵀ + b` over the
/// last dimension of `x` `[..., in]` → `[..., out]`.
pub(crate) struct Linear {
    /// `[out, in]`, a variable of the model's store.
    pub(crate) weight: Tensor,
    /// `[out]`, when the layer has one.
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    /// A layer without bias.
    pub(crate) fn new(weight: Tensor) -> Self {
        Self { weight, bias: None }
    }

    /// The same tensors (shallow clones).
    pub(crate) fn shallow_clone(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
        }
    }

    /// `xs [..., in]` → `[..., out]`.
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs.f_linear(&self.weight, self.bias.as_ref())?)
    }
}
