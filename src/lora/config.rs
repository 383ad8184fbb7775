//! [`LoraConfig`]: rank, `lora_alpha`, dropout, rsLoRA scaling and target layers, as PEFT's `LoraConfig`.

use crate::error::{Error, InputError, Result};

/// The settings of LoRA adapters, named as PEFT's `LoraConfig`.
///
/// An adapted linear layer `y = x·Wᵀ (+ b)` (weight `W` `[out, in]`) computes
/// `y = x·Wᵀ (+ b) + s · dropout(x)·Aᵀ·Bᵀ` with `A` `[r, in]`, `B` `[out, r]` and the scaling
/// `s = lora_alpha / r` (or `lora_alpha / √r` with [`LoraConfig::use_rslora`]); the merged weight is
/// `W + s·B·A`. `A` starts Kaiming-uniform as PEFT's (`U(−1/√in, 1/√in)`, PyTorch's `nn.Linear` init with
/// `a = √5`), `B` at zero, so a fresh adapter leaves the model's outputs unchanged.
///
/// ```
/// use tch_rpo::lora::LoraConfig;
/// let mut config = LoraConfig::new(16, 32.0);
/// assert_eq!(config.scaling(), 2.0);
/// config.use_rslora = true;
/// assert_eq!(config.scaling(), 8.0);
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// The rank `r` (≥ 1, and at most `min(in, out)` of every targeted layer).
    pub r: i64,
    /// `lora_alpha` (finite, > 0).
    pub lora_alpha: f64,
    /// The dropout probability on the adapter's input, in `[0, 1)`; applied only while training (see
    /// [`crate::lora::LoraAdapters::set_training`]) and only where autograd records (not under `no_grad`).
    pub lora_dropout: f64,
    /// rsLoRA: scale by `lora_alpha / √r` instead of `lora_alpha / r`.
    pub use_rslora: bool,
    /// The layers to adapt, each a layer's short name (the last part of its module path, e.g. `q_proj`)
    /// or its whole module path (`model.layers.0.self_attn.q_proj`); `None` = the model's defaults
    /// ([`crate::lora::LoraModel::default_lora_targets`]; for Gemma the seven projections).
    pub target_modules: Option<Vec<String>>,
}

impl LoraConfig {
    /// Rank `r` and `lora_alpha`; no dropout, scaling `alpha / r`, the model's default targets.
    pub fn new(r: i64, lora_alpha: f64) -> Self {
        Self {
            r,
            lora_alpha,
            lora_dropout: 0.0,
            use_rslora: false,
            target_modules: None,
        }
    }

    /// The scaling `s`: `lora_alpha / r`, or `lora_alpha / √r` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        match self.use_rslora {
            true => self.lora_alpha / (self.r as f64).sqrt(),
            false => self.lora_alpha / self.r as f64,
        }
    }

    /// The `lora_alpha` that gives this scaling under plain `alpha / r` scaling (llama.cpp's and
    /// PEFT's default): `lora_alpha`, or `lora_alpha · √r` with rsLoRA.
    pub fn plain_alpha(&self) -> f64 {
        match self.use_rslora {
            true => self.lora_alpha * (self.r as f64).sqrt(),
            false => self.lora_alpha,
        }
    }

    /// Checks the settings that need no model (the rank against each layer is checked when attaching).
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`] for `r < 1` (`r`), a `lora_alpha` that is not finite and > 0
    /// (`lora_alpha`), a `lora_dropout` outside `[0, 1)` or NaN (`lora_dropout`); [`InputError::Config`]
    /// for an empty `target_modules` list or an empty name in it.
    pub fn validate(&self) -> Result<()> {
        if self.r < 1 {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "r",
                value: (self.r as f64).into(),
                requirement: "the LoRA rank must be >= 1",
            }));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "lora_alpha",
                value: self.lora_alpha.into(),
                requirement: "must be finite and > 0",
            }));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "lora_dropout",
                value: self.lora_dropout.into(),
                requirement: "must be in [0, 1)",
            }));
        }
        if let Some(targets) = &self.target_modules {
            if targets.is_empty() || targets.iter().any(|t| t.trim().is_empty()) {
                return Err(Error::Input(InputError::Config {
                    name: "target_modules",
                    requirement: format!(
                        "must name at least one layer and no empty name (None = the model's defaults), got \
                         {targets:?}"
                    ),
                }));
            }
        }
        Ok(())
    }
}
