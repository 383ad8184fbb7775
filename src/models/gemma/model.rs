//! [`Gemma`]: the shared [`Decoder`] built from a [`GemmaConfig`].

use tch::{nn, Tensor};

use super::config::{GemmaArch, GemmaConfig};
use super::load::{LoadOptions, WeightSource};
use crate::error::Result;
use crate::models::decoder::{CausalLm, Decoder, KvCache, LayerCheckpoints};
use crate::models::kept::DecoderInit;

/// A Gemma 1 / 2 / 3 causal language model with a tied LM head: the shared [`Decoder`] with Gemma's
/// switches (`(1 + w)` RMSNorm in f32, embedding × √H, GeGLU, and Gemma 2 / 3's layers).
///
/// Built by [`Gemma::load`] (existing weights) or [`Gemma::random`] (a fresh random init). The parameters
/// are variables of an [`nn::VarStore`] under their Hugging Face names; the activation dtype is the
/// embedding's dtype (f32 or bf16: convert with `VarStore::set_kind`).
pub struct Gemma {
    config: GemmaConfig,
    arch: GemmaArch,
    decoder: Decoder,
}

impl Gemma {
    /// Creates the model's variables under `path` (pass `vs.root()`: names are then exactly the Hugging Face
    /// ones, e.g. `model.layers.0.self_attn.q_proj.weight`), randomly initialized as `transformers` does:
    /// linear and embedding weights ~ N(0, initializer_range²), norm weights 0. Seed with
    /// `tch::manual_seed` first for a reproducible init (libtorch's generator is global: other threads
    /// drawing random numbers at the same time change the init). Errors: those of [`GemmaConfig::validate`].
    pub fn random(path: &nn::Path, config: &GemmaConfig) -> Result<Self> {
        Self::build(path, config, DecoderInit::Random)
    }

    /// Like [`Gemma::random`] but with all parameters zero and the random generator untouched, for loading.
    pub(super) fn build(path: &nn::Path, config: &GemmaConfig, init: DecoderInit<'_>) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config: config.clone(),
            arch: config.arch()?,
            decoder: Decoder::build(path, &config.decoder_spec()?, init)?,
        })
    }

    /// A second handle on the same model: every parameter tensor is a shallow clone sharing storage (and
    /// in-place updates) with this one, e.g. to decode with a model that a trainer owns and updates.
    pub fn shallow_clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            arch: self.arch,
            decoder: self.decoder.shallow_clone(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GemmaConfig {
        &self.config
    }

    /// The architecture.
    pub fn arch(&self) -> GemmaArch {
        self.arch
    }

    /// The shared decoder (the forward passes below are its).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The final-logit soft-cap (Gemma 2 / 3): [`Decoder::final_logit_softcap`].
    pub fn final_logit_softcap(&self) -> Option<f64> {
        self.decoder.final_logit_softcap()
    }

    /// The LM head weight `[V, H]`: [`Decoder::head_weight`] (the embedding matrix, tied).
    ///
    /// # Errors
    /// Those of [`Decoder::head_weight`].
    pub fn head_weight(&self) -> Result<Tensor> {
        self.decoder.head_weight()
    }

    /// The final normed hidden states `[N, T, H]` for right-padded rows: [`Decoder::forward_hidden`].
    ///
    /// # Errors
    /// Those of [`Decoder::forward_hidden`].
    pub fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.decoder.forward_hidden(input_ids, attention_mask)
    }

    /// Hidden states of new positions with explicit position ids and a [`KvCache`]:
    /// [`Decoder::forward_hidden_at`].
    ///
    /// # Errors
    /// Those of [`Decoder::forward_hidden_at`].
    pub fn forward_hidden_at(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.decoder
            .forward_hidden_at(input_ids, attention_mask, position_ids, cache)
    }

    /// Hidden states with per-layer activation checkpointing: [`Decoder::forward_hidden_checkpointed`].
    ///
    /// # Errors
    /// Those of [`Decoder::forward_hidden`].
    pub fn forward_hidden_checkpointed(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<(Tensor, LayerCheckpoints<'_>)> {
        self.decoder
            .forward_hidden_checkpointed(input_ids, attention_mask)
    }

    /// Logits `[..., V]` of hidden states `[..., H]`: [`Decoder::logits`] (tied head, then Gemma 2 / 3's
    /// final soft-cap when configured).
    ///
    /// # Errors
    /// Those of [`Decoder::logits`].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.decoder.logits(hidden)
    }

    /// Logits `[N, T, V]` in the activation dtype: [`Decoder::forward`].
    ///
    /// # Errors
    /// Those of [`Decoder::forward_hidden`].
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.decoder.forward(input_ids, attention_mask)
    }
}

impl CausalLm for Gemma {
    type Config = GemmaConfig;

    fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    fn decoder_mut(&mut self) -> &mut Decoder {
        &mut self.decoder
    }

    fn model_config(&self) -> &GemmaConfig {
        &self.config
    }

    fn architecture(&self) -> String {
        format!("{:?}", self.arch)
    }

    fn load_model(
        source: WeightSource<'_, GemmaConfig>,
        options: &LoadOptions,
    ) -> Result<(nn::VarStore, Self)> {
        Gemma::load(source, options)
    }
}
