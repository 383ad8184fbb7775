//! [`GemmaPolicy`]: a [`Gemma`] model and its variables as the trainer's [`PolicyModel`].

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use super::export::{save_gguf, save_pretrained, TokenizerSource};
use super::load::{LoadOptions, WeightSource};
use super::model::Gemma;
use crate::error::Result;
use crate::fused::LinearHead;
use crate::gguf::GgmlType;
use crate::train::{
    var_store_parameters, CheckpointedForward, DeferredBackward, HiddenOutput, LossPath, ModelOutput,
    PolicyModel,
};

/// A Gemma model and the [`nn::VarStore`] holding its variables, as the crate's [`PolicyModel`]:
/// [`PolicyModel::forward`] returns the logits `[N, T, V]` ([`Gemma::forward`]) and
/// [`PolicyModel::forward_hidden`] the final hidden states `[N, T, H]` with the tied head weight `[V, H]`
/// and the final-logit soft-cap, for the fused loss path. With
/// [`GemmaPolicy::set_gradient_checkpointing`], [`PolicyModel::forward_checkpointed`] trains with
/// per-layer activation checkpointing ([`Gemma::forward_hidden_checkpointed`]).
pub struct GemmaPolicy {
    vs: nn::VarStore,
    model: Gemma,
    gradient_checkpointing: bool,
}

impl std::fmt::Debug for GemmaPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GemmaPolicy")
            .field("arch", &self.model.arch())
            .field("device", &self.vs.device())
            .field("gradient_checkpointing", &self.gradient_checkpointing)
            .finish()
    }
}

impl GemmaPolicy {
    /// Wraps a model and the store holding its variables (as returned by [`Gemma::load`], or the store
    /// whose root was given to [`Gemma::random`]). An independent copy of a trained policy:
    /// [`GemmaPolicy::try_clone`].
    pub fn new(vs: nn::VarStore, model: Gemma) -> Self {
        Self {
            vs,
            model,
            gradient_checkpointing: false,
        }
    }

    /// An independent copy of this policy placed as `options` says: [`Gemma::load`] with
    /// [`WeightSource::Parameters`] of its configuration and [`PolicyModel::named_parameters`], and the
    /// same gradient-checkpointing setting. Training one leaves the other unchanged (e.g. DPO trained from a
    /// copy of the SFT model while RPO trains the SFT model itself).
    ///
    /// # Errors
    /// Those of [`Gemma::load`].
    pub fn try_clone(&self, options: &LoadOptions) -> Result<Self> {
        let parameters = self.named_parameters();
        let source = WeightSource::Parameters {
            config: self.model.config(),
            parameters: &parameters,
        };
        let (vs, model) = Gemma::load(source, options)?;
        Ok(Self {
            vs,
            model,
            gradient_checkpointing: self.gradient_checkpointing,
        })
    }

    /// The number of trainable parameters (elements of the store's trainable variables).
    pub fn parameter_count(&self) -> i64 {
        let variables = self.vs.trainable_variables();
        variables.iter().map(|t| t.numel() as i64).sum()
    }

    /// Turns per-layer activation (gradient) checkpointing on or off (default off). On, the trainer's
    /// training passes go through [`PolicyModel::forward_checkpointed`]: the layers' activations are
    /// recomputed during the backward pass instead of kept (one layer's for one block of rows at a time,
    /// plus each layer's `[N, T, H]` input), for one more forward pass of the layers per step. The loss
    /// and gradients are the same as without it, within f32 rounding (`tests/gemma_checkpointing.rs`).
    /// Evaluation and reference scoring are unaffected.
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.gradient_checkpointing = on;
    }

    /// Whether activation checkpointing is on ([`GemmaPolicy::set_gradient_checkpointing`]).
    pub fn gradient_checkpointing(&self) -> bool {
        self.gradient_checkpointing
    }

    /// The model.
    pub fn model(&self) -> &Gemma {
        &self.model
    }

    /// The model, mutably (attaching adapters).
    #[cfg(feature = "lora")]
    pub(super) fn model_mut(&mut self) -> &mut Gemma {
        &mut self.model
    }

    /// The variable store.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The store and the model.
    pub fn into_parts(self) -> (nn::VarStore, Gemma) {
        (self.vs, self.model)
    }

    /// The hidden-state output of `hidden` `[N, T, H]`: the one place that builds a [`HiddenOutput`].
    fn hidden_output(&self, hidden: Tensor) -> HiddenOutput {
        HiddenOutput::new(
            hidden,
            LinearHead::new(&self.model.head_weight())
                .with_final_logit_softcap(self.model.final_logit_softcap()),
        )
    }
}

impl GemmaPolicy {
    /// Saves the policy's model as a Hugging Face folder: [`save_pretrained`] with its configuration and
    /// the variables of its store.
    ///
    /// # Errors
    /// Those of [`save_pretrained`].
    pub fn save_pretrained(&self, dir: &Path, kind: Kind, tokenizer: TokenizerSource<'_>) -> Result<()> {
        save_pretrained(
            dir,
            self.model().config(),
            &var_store_parameters(self.var_store()),
            kind,
            tokenizer,
        )
    }

    /// Saves the policy's model as a GGUF file: [`save_gguf`] with its configuration and the variables of
    /// its store. Returns the file's size in bytes.
    ///
    /// # Errors
    /// Those of [`save_gguf`].
    pub fn save_gguf(&self, path: &Path, ty: GgmlType, tokenizer: TokenizerSource<'_>) -> Result<u64> {
        save_gguf(
            path,
            self.model().config(),
            &var_store_parameters(self.var_store()),
            ty,
            tokenizer,
        )
    }
}

impl PolicyModel for GemmaPolicy {
    /// Logits `[N, T, V]`; see [`Gemma::forward`] for inputs and errors.
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.model.forward(input_ids, attention_mask)
    }

    /// Always `Some`: hidden states `[N, T, H]` ([`Gemma::forward_hidden`]), the tied head weight
    /// ([`Gemma::head_weight`]) and the final-logit soft-cap ([`Gemma::final_logit_softcap`]).
    fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Option<HiddenOutput>> {
        let hidden = self.model.forward_hidden(input_ids, attention_mask)?;
        Ok(Some(self.hidden_output(hidden)))
    }

    /// With [`GemmaPolicy::set_gradient_checkpointing`] on: [`Gemma::forward_hidden_checkpointed`], then
    /// the hidden-state output ([`LossPath::Hidden`], [`LossPath::Auto`]) or the logits of the head on
    /// those states ([`LossPath::Logits`]); the deferred backward is [`super::LayerCheckpoints::backward`].
    /// Off: `None`.
    fn forward_checkpointed(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        path: LossPath,
    ) -> Result<Option<CheckpointedForward<'_>>> {
        if !self.gradient_checkpointing {
            return Ok(None);
        }
        let (hidden, checkpoints) = self
            .model
            .forward_hidden_checkpointed(input_ids, attention_mask)?;
        let output = match path {
            LossPath::Logits => ModelOutput::Logits(self.model.logits(&hidden)?),
            LossPath::Hidden | LossPath::Auto => ModelOutput::Hidden(self.hidden_output(hidden)),
        };
        Ok(Some(CheckpointedForward {
            output,
            backward: DeferredBackward::new(move || checkpoints.backward()),
        }))
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        var_store_parameters(&self.vs)
    }

    fn device(&self) -> Device {
        self.vs.device()
    }
}
