//! [`DecoderPolicy`]: a model of any family ([`CausalLm`]) and its variables as the trainer's
//! [`PolicyModel`].

use tch::{nn, Device, Tensor};

use super::load::{LoadOptions, WeightSource};
use super::CausalLm;
use crate::error::Result;
use crate::fused::LinearHead;
use crate::train::{
    var_store_parameters, CheckpointedForward, DeferredBackward, HiddenOutput, LossPath, ModelOutput,
    PassFlops, PolicyModel,
};

/// A model and the [`nn::VarStore`] holding its variables, as the crate's [`PolicyModel`]:
/// [`PolicyModel::forward`] returns the logits `[N, T, V]` ([`Decoder::forward`](super::Decoder::forward))
/// and [`PolicyModel::forward_hidden`] the final hidden states `[N, T, H]` with the head weight `[V, H]`
/// (tied embedding or `lm_head.weight`) and the final-logit soft-cap, for the fused loss path. With
/// [`DecoderPolicy::set_gradient_checkpointing`], [`PolicyModel::forward_checkpointed`] trains with
/// per-layer activation checkpointing
/// ([`Decoder::forward_hidden_checkpointed`](super::Decoder::forward_hidden_checkpointed)).
///
/// Named per family: [`GemmaPolicy`](crate::models::gemma::GemmaPolicy),
/// [`LlamaPolicy`](crate::models::llama::LlamaPolicy).
pub struct DecoderPolicy<M> {
    vs: nn::VarStore,
    model: M,
    gradient_checkpointing: bool,
}

impl<M: CausalLm> std::fmt::Debug for DecoderPolicy<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderPolicy")
            .field("arch", &format_args!("{}", self.model.architecture()))
            .field("device", &self.vs.device())
            .field("gradient_checkpointing", &self.gradient_checkpointing)
            .finish()
    }
}

impl<M: CausalLm> DecoderPolicy<M> {
    /// Wraps a model and the store holding its variables (as returned by the family's loader, or the store
    /// whose root was given to its `random`). An independent copy of a trained policy:
    /// [`DecoderPolicy::try_clone`].
    pub fn new(vs: nn::VarStore, model: M) -> Self {
        Self {
            vs,
            model,
            gradient_checkpointing: false,
        }
    }

    /// An independent copy of this policy placed as `options` says: the family's loader
    /// ([`CausalLm::load_model`]) with [`WeightSource::Parameters`] of its configuration and
    /// [`PolicyModel::named_parameters`], and the same gradient-checkpointing setting. Training one leaves
    /// the other unchanged (e.g. DPO trained from a copy of the SFT model while RPO trains the SFT model
    /// itself).
    ///
    /// # Errors
    /// Those of the family's loader.
    pub fn try_clone(&self, options: &LoadOptions) -> Result<Self> {
        let parameters = self.named_parameters();
        let source = WeightSource::Parameters {
            config: self.model.model_config(),
            parameters: &parameters,
        };
        let (vs, model) = M::load_model(source, options)?;
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

    /// Whether activation checkpointing is on ([`DecoderPolicy::set_gradient_checkpointing`]).
    pub fn gradient_checkpointing(&self) -> bool {
        self.gradient_checkpointing
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model, mutably (attaching adapters).
    #[cfg(feature = "lora")]
    pub(crate) fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// The variable store.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The store and the model.
    pub fn into_parts(self) -> (nn::VarStore, M) {
        (self.vs, self.model)
    }

    /// The hidden-state output of `hidden` `[N, T, H]`: the one place that builds a [`HiddenOutput`].
    fn hidden_output(&self, hidden: Tensor) -> Result<HiddenOutput> {
        let decoder = self.model.decoder();
        let head = match decoder.kept_head() {
            // Kept in its GGUF blocks: applied a vocabulary block at a time, never dequantized whole.
            Some(kept) => LinearHead::kept(&kept.placeholder()?, kept.blocks.clone()),
            None => LinearHead::new(&decoder.head_weight()?),
        };
        Ok(HiddenOutput::new(
            hidden,
            head.with_final_logit_softcap(decoder.final_logit_softcap()),
        ))
    }

    /// Whether training passes recompute the layers: checkpointing asked for, or weights kept in their GGUF
    /// blocks ([`Decoder::keeps_quantized`](super::Decoder::keeps_quantized), where autograd would
    /// otherwise keep every layer's dequantized matrices alive until the backward pass).
    fn recomputes_layers(&self) -> bool {
        self.gradient_checkpointing || self.model.decoder().keeps_quantized()
    }
}

impl<M: CausalLm> PolicyModel for DecoderPolicy<M> {
    /// Logits `[N, T, V]`; see [`Decoder::forward`](super::Decoder::forward) for inputs and errors.
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.model.decoder().forward(input_ids, attention_mask)
    }

    /// Always `Some`: hidden states `[N, T, H]` ([`Decoder::forward_hidden`](super::Decoder::forward_hidden)),
    /// the head weight ([`Decoder::head_weight`](super::Decoder::head_weight)) and the final-logit soft-cap.
    fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Option<HiddenOutput>> {
        let hidden = self.model.decoder().forward_hidden(input_ids, attention_mask)?;
        Ok(Some(self.hidden_output(hidden)?))
    }

    /// With [`DecoderPolicy::set_gradient_checkpointing`] on, or a model whose weights are kept in their
    /// GGUF blocks ([`Decoder::keeps_quantized`](super::Decoder::keeps_quantized)):
    /// [`Decoder::forward_hidden_checkpointed`](super::Decoder::forward_hidden_checkpointed), then the
    /// hidden-state output ([`LossPath::Hidden`], [`LossPath::Auto`]) or the logits of the head on those
    /// states ([`LossPath::Logits`]); the deferred backward is [`super::LayerCheckpoints::backward`]. Off:
    /// `None`.
    fn forward_checkpointed(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        path: LossPath,
    ) -> Result<Option<CheckpointedForward<'_>>> {
        if !self.recomputes_layers() {
            return Ok(None);
        }
        let decoder = self.model.decoder();
        let (hidden, checkpoints) = decoder.forward_hidden_checkpointed(input_ids, attention_mask)?;
        let output = match path {
            LossPath::Logits => ModelOutput::Logits(decoder.logits(&hidden)?),
            LossPath::Hidden | LossPath::Auto => ModelOutput::Hidden(self.hidden_output(hidden)?),
        };
        Ok(Some(CheckpointedForward {
            output,
            backward: DeferredBackward::new(move || checkpoints.backward()),
        }))
    }

    /// [`Decoder::body_forward_flops`](super::Decoder::body_forward_flops) and
    /// [`Decoder::head_flops_per_position`](super::Decoder::head_flops_per_position) of its decoder; one
    /// recomputation of the body with gradient checkpointing; hidden states offered.
    fn pass_flops(&self, rows: usize, positions: usize) -> Option<PassFlops> {
        let decoder = self.model.decoder();
        Some(PassFlops {
            body_forward: decoder.body_forward_flops(rows, positions),
            head_per_position: decoder.head_flops_per_position(),
            body_recomputes: u32::from(self.recomputes_layers()),
            offers_hidden: true,
        })
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        var_store_parameters(&self.vs)
    }

    fn device(&self) -> Device {
        self.vs.device()
    }
}
