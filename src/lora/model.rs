//! [`LoraModel`]: how a model exposes the linear layers adapters may attach to.

use tch::Tensor;

use super::adapter::LoraAdapter;
use crate::error::Result;

/// One linear layer of a model that an adapter may attach to.
#[derive(Debug)]
pub struct AdaptableLinear {
    /// The layer's module path, the name of its weight without `.weight` (Hugging Face / PEFT naming,
    /// e.g. `model.layers.0.self_attn.q_proj`).
    pub path: String,
    /// The base weight `[out, in]` (a shallow handle sharing storage with the model's parameter).
    pub weight: Tensor,
}

impl AdaptableLinear {
    /// The short name a target matches: the last part of the path (`q_proj`).
    pub fn short_name(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or(&self.path)
    }

    /// `(out, in)` of the weight (`(0, 0)` for a weight that is not a matrix).
    pub fn features(&self) -> (i64, i64) {
        match self.weight.size()[..] {
            [out, input] => (out, input),
            _ => (0, 0),
        }
    }

    /// The name of the weight parameter, `<path>.weight`.
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.path)
    }
}

/// A model whose linear layers LoRA adapters can attach to ([`crate::lora::LoraAdapters::attach`]).
///
/// The model lists its adaptable layers and holds an optional [`LoraAdapter`] per layer, which its forward
/// pass applies to the layer's output ([`LoraAdapter::apply`]: `y + s·dropout(x)·Aᵀ·Bᵀ`). The crate's
/// Gemma implements it; a downstream model does the same with its own linear layers:
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// use tch_rpo::lora::{AdaptableLinear, LoraAdapter, LoraAdapters, LoraConfig, LoraModel};
///
/// struct Tiny { w: Tensor, adapter: Option<LoraAdapter> }
///
/// impl Tiny {
///     fn forward(&self, x: &Tensor) -> tch_rpo::Result<Tensor> {
///         let y = x.f_linear::<&Tensor>(&self.w, None)?;
///         match &self.adapter {
///             Some(adapter) => adapter.apply(x, y),
///             None => Ok(y),
///         }
///     }
/// }
///
/// impl LoraModel for Tiny {
///     fn adaptable_linears(&self) -> Vec<AdaptableLinear> {
///         vec![AdaptableLinear { path: "proj".into(), weight: self.w.shallow_clone() }]
///     }
///     fn default_lora_targets(&self) -> Vec<String> {
///         vec!["proj".into()]
///     }
///     fn set_lora_adapter(&mut self, path: &str, adapter: Option<LoraAdapter>) -> tch_rpo::Result<()> {
///         assert_eq!(path, "proj");
///         self.adapter = adapter;
///         Ok(())
///     }
/// }
///
/// # fn main() -> tch_rpo::Result<()> {
/// let mut model = Tiny { w: Tensor::randn([4, 8], (Kind::Float, Device::Cpu)), adapter: None };
/// let x = Tensor::randn([3, 8], (Kind::Float, Device::Cpu));
/// let before = model.forward(&x)?;
/// let adapters = LoraAdapters::attach(&mut model, &LoraConfig::new(2, 4.0))?;
/// assert!(model.forward(&x)?.equal(&before)); // B = 0: unchanged
/// assert_eq!(adapters.named_parameters().len(), 2); // lora_A and lora_B
/// # Ok(())
/// # }
/// ```
pub trait LoraModel {
    /// Every linear layer an adapter may attach to, in a fixed order.
    fn adaptable_linears(&self) -> Vec<AdaptableLinear>;

    /// The targets used when [`crate::lora::LoraConfig::target_modules`] is `None` (short names or
    /// paths).
    fn default_lora_targets(&self) -> Vec<String>;

    /// Attaches `adapter` to the layer at `path` (`Some`), replacing any adapter there, or detaches it
    /// (`None`).
    ///
    /// # Errors
    /// An error naming `path` when the model has no such layer.
    fn set_lora_adapter(&mut self, path: &str, adapter: Option<LoraAdapter>) -> Result<()>;

    /// Frozen weights the model holds outside its parameters (e.g. matrices kept in their GGUF blocks),
    /// given to `visit` as `(name, bytes)` in a fixed order: [`crate::lora::LoraPolicy`] hashes them into
    /// the base fingerprint after the parameters. Default: none.
    fn visit_frozen_bytes(&self, visit: &mut dyn FnMut(&str, &[u8])) {
        let _ = visit;
    }
}
