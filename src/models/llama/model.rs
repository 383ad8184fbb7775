//! [`Llama`]: the shared [`Decoder`] built from a [`LlamaConfig`], and its loader [`Llama::load`].

use tch::{nn, Tensor};

use super::config::{LlamaArch, LlamaConfig};
use crate::error::Result;
use crate::models::decoder::load::{load_model, LoadPlan};
use crate::models::decoder::{CausalLm, Decoder, KvCache, LayerCheckpoints, LoadOptions, WeightSource};
use crate::models::kept::DecoderInit;

/// A Llama-family causal language model (Llama 3.x, SmolLM2, Qwen2 / 2.5, Qwen3, Mistral): the shared
/// [`Decoder`] with the family's switches ([`LlamaConfig::arch`]; see the [module docs](super)).
///
/// Built by [`Llama::load`] (existing weights) or [`Llama::random`] (a fresh random init). The
/// parameters are variables of an [`nn::VarStore`] under their Hugging Face names; the activation dtype
/// is the embedding's dtype (f32, bf16, f16).
pub struct Llama {
    config: LlamaConfig,
    arch: LlamaArch,
    decoder: Decoder,
}

impl WeightSource<'_, LlamaConfig> {
    /// The configuration the source describes, validated.
    ///
    /// # Errors
    /// [`WeightSource::HfDir`]: those of [`LlamaConfig::from_file`] (e.g. [`Error::Io`](crate::Error::Io)
    /// for a missing `config.json`); [`WeightSource::Gguf`]: those of [`LlamaConfig::from_gguf`]; all:
    /// those of [`LlamaConfig::validate`].
    pub fn config(&self) -> Result<LlamaConfig> {
        let config = match self {
            WeightSource::HfDir(dir) => LlamaConfig::from_file(&dir.join("config.json"))?,
            WeightSource::Gguf(file) => LlamaConfig::from_gguf(file)?,
            WeightSource::Parameters { config, .. } => (*config).clone(),
        };
        config.validate()?;
        Ok(config)
    }
}

impl Llama {
    /// Creates the model's variables under `path` (pass `vs.root()`), randomly initialized as
    /// `transformers` does: linear and embedding weights ~ N(0, initializer_range²), biases 0, norm
    /// weights 1. Seed with `tch::manual_seed` first for a reproducible init. Errors: those of
    /// [`LlamaConfig::validate`].
    pub fn random(path: &nn::Path, config: &LlamaConfig) -> Result<Self> {
        Self::build(path, config, DecoderInit::Random)
    }

    fn build(path: &nn::Path, config: &LlamaConfig, init: DecoderInit<'_>) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config: config.clone(),
            arch: config.arch()?,
            decoder: Decoder::build(path, &config.decoder_spec()?, init)?,
        })
    }

    /// Builds the model `source` describes in a new [`nn::VarStore`] on `options.device`, with its
    /// parameters in `options.kind`, and copies the source's weights into it (under `no_grad`). Returns the
    /// store (the parameters, under their Hugging Face names) and the model.
    ///
    /// Checks, by source (all before anything is returned; on error nothing is): every source:
    /// [`WeightSource::config`]; every parameter of the configuration present once, with its shape
    /// (`lm_head.weight` when untied, the biases the architecture has), and no other tensor (a tied
    /// model's `lm_head.weight` is skipped). [`WeightSource::HfDir`]: single or sharded safetensors, as for
    /// Gemma. [`WeightSource::Gguf`]: [`check_gguf_tensors`](super::check_gguf_tensors) before the model is
    /// allocated; every tensor finite once converted.
    ///
    /// # Errors
    /// [`InputError::DType`](crate::InputError::DType) for a `kind` that is not a floating-point dtype;
    /// those of [`WeightSource::config`];
    /// [`WeightsError::Parameters`](crate::WeightsError::Parameters) naming the file (or "the given
    /// parameters") and listing the parameters missing, unexpected, of another shape or given twice;
    /// [`CheckpointError::Invalid`](crate::CheckpointError::Invalid) for a folder without weights
    /// ([`NO_WEIGHTS`](crate::models::decoder::NO_WEIGHTS)) or unreadable files;
    /// [`Error::Io`](crate::Error::Io) for a missing shard; those of
    /// [`check_gguf_tensors`](super::check_gguf_tensors);
    /// [`WeightsError::NonFinite`](crate::WeightsError::NonFinite);
    /// [`Error::OutOfMemory`](crate::Error::OutOfMemory); [`Error::Torch`](crate::Error::Torch).
    pub fn load(
        source: WeightSource<'_, LlamaConfig>,
        options: &LoadOptions,
    ) -> Result<(nn::VarStore, Self)> {
        options.check()?;
        let config = source.config()?;
        let plan = LoadPlan {
            expected: config.parameter_shapes()?,
            expected_by: format!("the {} config", config.model_type),
            build: &|root, kept| Self::build(root, &config, DecoderInit::loading(kept)),
            check_gguf: &|file| super::weights_gguf::check_gguf_tensors(file, &config),
            gguf_fix: &|gguf, value| super::weights_gguf::gguf_fix(gguf, value, &config),
        };
        load_model(source, options, &plan)
    }

    /// A second handle on the same model (parameters shared, shallow clones).
    pub fn shallow_clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            arch: self.arch,
            decoder: self.decoder.shallow_clone(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The architecture.
    pub fn arch(&self) -> LlamaArch {
        self.arch
    }

    /// The shared decoder.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The LM head weight `[V, H]`: [`Decoder::head_weight`].
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

    /// Logits `[..., V]` of hidden states `[..., H]`: [`Decoder::logits`].
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

impl CausalLm for Llama {
    type Config = LlamaConfig;

    fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    fn decoder_mut(&mut self) -> &mut Decoder {
        &mut self.decoder
    }

    fn model_config(&self) -> &LlamaConfig {
        &self.config
    }

    fn architecture(&self) -> String {
        format!("{:?}", self.arch)
    }

    fn load_model(
        source: WeightSource<'_, LlamaConfig>,
        options: &LoadOptions,
    ) -> Result<(nn::VarStore, Self)> {
        Llama::load(source, options)
    }
}
