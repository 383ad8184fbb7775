//! [`Linear`]: the linear layer the decoders share, `y = x·Wᵀ + b` (crate-internal).
//!
//! Every projection of a decoder layer (attention's q / k / v / o, the MLP's gate / up / down) is one,
//! so that what changes how a projection is applied (adapters, a weight kept in another format) is written
//! once for every model. With feature `lora`, a layer may hold a LoRA adapter, applied to its output
//! ([`crate::lora::LoraAdapter::apply`]).

use tch::Tensor;

use crate::error::Result;
#[cfg(feature = "lora")]
use crate::lora::LoraAdapter;
use crate::models::kept::KeptWeight;

/// A linear layer: weight `[out, in]` and an optional bias `[out]`; `forward(x)` = `x·Wᵀ + b` over the
/// last dimension of `x` `[..., in]` → `[..., out]` (plus the LoRA update when an adapter is attached).
///
/// The weight is a variable of the model's store, or kept in its GGUF blocks (`kept`): then `forward`
/// dequantizes it for the product (the same values as the dense variable a dense load holds) and
/// `weight` is only a stand-in with its shape, dtype and device ([`KeptWeight::placeholder`]).
pub(crate) struct Linear {
    /// `[out, in]`, a variable of the model's store (a stand-in when `kept`).
    pub(crate) weight: Tensor,
    /// The weight kept in its GGUF blocks, frozen.
    pub(crate) kept: Option<KeptWeight>,
    /// `[out]`, when the layer has one.
    pub(crate) bias: Option<Tensor>,
    /// The LoRA adapter attached to this layer, if any.
    #[cfg(feature = "lora")]
    pub(crate) lora: Option<LoraAdapter>,
}

impl Linear {
    /// A layer without bias.
    pub(crate) fn new(weight: Tensor) -> Self {
        Self {
            weight,
            kept: None,
            bias: None,
            #[cfg(feature = "lora")]
            lora: None,
        }
    }

    /// The same tensors (shallow clones; the same adapter).
    pub(crate) fn shallow_clone(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            kept: self.kept.as_ref().map(KeptWeight::shallow_clone),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            #[cfg(feature = "lora")]
            lora: self.lora.as_ref().map(LoraAdapter::shallow_clone),
        }
    }

    /// `xs [..., in]` → `[..., out]`.
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let out = match &self.kept {
            Some(kept) => xs.f_linear(&kept.dense()?, self.bias.as_ref())?,
            None => xs.f_linear(&self.weight, self.bias.as_ref())?,
        };
        #[cfg(feature = "lora")]
        if let Some(adapter) = &self.lora {
            return adapter.apply(xs, out);
        }
        Ok(out)
    }
}
