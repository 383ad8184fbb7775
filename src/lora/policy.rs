//! [`LoraPolicy`]: a trainer model whose trainable parameters are only its LoRA adapters.

use tch::{Device, Tensor};

use super::adapters::LoraAdapters;
use super::config::LoraConfig;
use super::fingerprint::fingerprint_with_frozen;
use super::model::LoraModel;
use crate::error::{Error, InputError, Result};
use crate::train::{CheckpointedForward, HiddenOutput, LossPath, PolicyModel};

/// A model with LoRA adapters as the trainer's [`PolicyModel`]: the base model's parameters are frozen
/// (`requires_grad = false`), and [`PolicyModel::named_parameters`] lists only the adapters (PEFT's
/// names), so the trainer's AdamW holds state for them alone and its checkpoints hold the adapters, their
/// optimizer state and the base's fingerprint ([`PolicyModel::base_fingerprint`]: resuming on another base
/// is a [`crate::LoraError::BaseMismatch`]).
///
/// The forward passes are the base model's (its linear layers apply the adapters), including its fused
/// hidden-state path and its gradient checkpointing. [`crate::train::ReferenceSource::AdaptersOff`] scores
/// the reference with the same model, adapters switched off ([`PolicyModel::set_adapters_enabled`]): no
/// second copy of the weights.
pub struct LoraPolicy<M> {
    base: M,
    adapters: LoraAdapters,
    fingerprint: String,
}

impl<M> std::fmt::Debug for LoraPolicy<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraPolicy")
            .field("adapters", &self.adapters.paths().len())
            .field("config", self.adapters.config())
            .field("base_fingerprint", &self.fingerprint)
            .finish()
    }
}

impl<M: PolicyModel + LoraModel> LoraPolicy<M> {
    /// Freezes every parameter of `base` (`requires_grad = false`), records the fingerprint of its
    /// parameters ([`super::fingerprint`]: a pass over their bytes), continued over the frozen weights it
    /// holds outside them ([`LoraModel::visit_frozen_bytes`]: a base kept in its GGUF blocks), and attaches
    /// adapters as `config` says
    /// ([`LoraAdapters::attach`]).
    ///
    /// # Errors
    /// Those of [`LoraAdapters::attach`]; [`Error::Torch`] if a parameter cannot be read.
    pub fn new(mut base: M, config: &LoraConfig) -> Result<Self> {
        config.validate()?;
        let parameters = base.named_parameters();
        for (_, parameter) in &parameters {
            let _ = parameter.set_requires_grad(false);
        }
        let fingerprint = fingerprint_with_frozen(&parameters, &base)?;
        drop(parameters);
        let adapters = LoraAdapters::attach(&mut base, config)?;
        Ok(Self {
            base,
            adapters,
            fingerprint,
        })
    }

    /// The base model's parameters with every adapted weight merged (`W + s·B·A`;
    /// [`LoraAdapters::merged_parameters`]), for a writer of the whole model.
    ///
    /// # Errors
    /// Those of [`LoraAdapters::merged_parameters`].
    pub fn merged_parameters(&self) -> Result<Vec<(String, Tensor)>> {
        self.adapters.merged_parameters(&self.base.named_parameters())
    }

    /// Merges the adapters into the base weights in place (`W ← W + s·B·A`, rounded to the weight's
    /// dtype), detaches them and makes every base parameter trainable again; returns the base model,
    /// which now computes what the adapted model computed (within the rounding of the merged weights).
    ///
    /// # Errors
    /// Those of [`LoraAdapters::merged_parameters`] and [`LoraAdapters::detach`].
    pub fn merge_and_unload(self) -> Result<M> {
        let Self {
            mut base, adapters, ..
        } = self;
        let parameters = base.named_parameters();
        let merged = adapters.merged_parameters(&parameters)?;
        tch::no_grad(|| -> Result<()> {
            for ((_, parameter), (_, value)) in parameters.iter().zip(&merged) {
                if parameter.data_ptr() != value.data_ptr() {
                    parameter.shallow_clone().f_copy_(value)?;
                }
            }
            Ok(())
        })?;
        adapters.detach(&mut base)?;
        for (_, parameter) in &parameters {
            let _ = parameter.set_requires_grad(true);
        }
        Ok(base)
    }
}

impl<M> LoraPolicy<M> {
    /// The adapters (switches, parameters, export).
    pub fn adapters(&self) -> &LoraAdapters {
        &self.adapters
    }

    /// The base model (with the adapters attached to its layers).
    pub fn base(&self) -> &M {
        &self.base
    }

    /// The base model, e.g. to turn its gradient checkpointing on. Re-enabling gradients on its
    /// parameters would make the trainer train them too.
    pub fn base_mut(&mut self) -> &mut M {
        &mut self.base
    }

    /// The fingerprint of the base parameters taken when the adapters were attached.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The base model (adapters still attached: detach with [`LoraAdapters::detach`]) and the adapters.
    pub fn into_parts(self) -> (M, LoraAdapters) {
        (self.base, self.adapters)
    }
}

impl<M: PolicyModel> PolicyModel for LoraPolicy<M> {
    /// The base model's logits, adapters applied (unless switched off).
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.base.forward(input_ids, attention_mask)
    }

    /// The base model's hidden-state output, adapters applied (unless switched off).
    fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Option<HiddenOutput>> {
        self.base.forward_hidden(input_ids, attention_mask)
    }

    /// The base model's checkpointed pass. Refused ([`InputError::Config`]) when it checkpoints while the
    /// adapters have dropout in training mode: the recomputation would draw other dropout masks than the
    /// first pass.
    fn forward_checkpointed(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        path: LossPath,
    ) -> Result<Option<CheckpointedForward<'_>>> {
        let checkpointed = self.base.forward_checkpointed(input_ids, attention_mask, path)?;
        if checkpointed.is_some() && self.adapters.config().lora_dropout > 0.0 && self.adapters.training() {
            return Err(Error::Input(InputError::Config {
                name: "lora_dropout",
                requirement: format!(
                    "must be 0 with gradient checkpointing or a base kept in its GGUF blocks, which recompute \
                     the layers (got {}): a recomputed layer would draw other dropout masks than its first pass",
                    self.adapters.config().lora_dropout
                ),
            }));
        }
        Ok(checkpointed)
    }

    /// The adapters only ([`LoraAdapters::named_parameters`]).
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.adapters.named_parameters()
    }

    fn device(&self) -> Device {
        self.base.device()
    }

    /// Switches the adapters on or off ([`LoraAdapters::set_enabled`]); returns the previous state.
    fn set_adapters_enabled(&self, enabled: bool) -> Result<bool> {
        Ok(self.adapters.set_enabled(enabled))
    }

    /// The fingerprint of the frozen base ([`LoraPolicy::fingerprint`]).
    fn base_fingerprint(&self) -> Option<String> {
        Some(self.fingerprint.clone())
    }
}
