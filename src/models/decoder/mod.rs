//! The decoder every model family shares (Gemma 1 / 2 / 3, Llama, Qwen2, Qwen3, Mistral): one
//! [`Decoder`] whose differences are switches set by the family's configuration, and everything built
//! on it once for all families — [`generate()`] (KV cache, greedy or sampled), per-layer activation
//! checkpointing ([`Decoder::forward_hidden_checkpointed`]), the loading plumbing ([`WeightSource`],
//! [`LoadOptions`], Hugging Face folders), and with the `train` feature the trainer adapter
//! [`DecoderPolicy`] and [`greedy_accuracy`].
//!
//! The switches (see `docs/models.md` for which family sets which):
//!
//! | switch | values |
//! |---|---|
//! | RMSNorm weight | [`NormStyle::OnePlusWeight`] (Gemma, f32) or [`NormStyle::Weight`] (`w · x̂`, x̂ cast to the input dtype first) |
//! | MLP gate | [`Activation::GeluTanh`], [`Activation::Gelu`], [`Activation::Silu`] |
//! | embedding | × `sqrt(H)` in the activation dtype (Gemma) or not |
//! | projections | optional biases: q / k / v (Qwen2), o, MLP (Llama's `attention_bias`, `mlp_bias`) |
//! | q / k norm | per-head RMSNorm before RoPE (Gemma 3 `(1 + w)`, Qwen3 `w`) or none |
//! | RoPE | θ, [`RopeScaling`] (`default`, `llama3`); Gemma 3's sliding layers have their own θ |
//! | attention | scale (`head_dim^-½` or Gemma 2's `query_pre_attn_scalar^-½`), soft-cap, sliding window per layer |
//! | head | tied to the embedding or `lm_head.weight`; Gemma 2's final soft-cap |
//!
//! Layout: `spec` (the switches), `layers` (norm, attention and its core, MLP, layer), [`mod@model`]
//! (the decoder and [`KvCache`]), `flops` (the FLOP count of a pass), [`checkpointing`], [`mod@generate`], [`load`] (sources and options),
//! `weights_hf` (reading Hugging Face folders), [`export`] (the folder and GGUF writers every family uses), `policy` and `accuracy` (feature `train`), [`mod@lora`]
//! (feature `lora`: every family's adaptable projections).

#[cfg(feature = "train")]
pub mod accuracy;
pub mod checkpointing;
pub mod export;
mod flops;
pub mod generate;
pub(crate) mod layers;
pub mod load;
#[cfg(feature = "lora")]
pub mod lora;
pub mod model;
#[cfg(feature = "train")]
pub mod policy;
pub(crate) mod spec;
pub(crate) mod weights_gguf;
pub(crate) mod weights_hf;

use tch::nn;

#[cfg(feature = "train")]
pub use accuracy::greedy_accuracy;
pub use checkpointing::LayerCheckpoints;
pub use generate::{generate, greedy_decode, Generation, GenerationConfig, Sampling};
pub use load::{LoadOptions, WeightFormat, WeightSource};
pub use model::{Decoder, KvCache};
#[cfg(feature = "train")]
pub use policy::DecoderPolicy;
pub use spec::{Activation, NormStyle, RopeScaling, TokenIds};
pub use weights_hf::{tokenizer_path, NO_WEIGHTS};

use crate::error::Result;

/// A causal language model of one family built on the shared [`Decoder`] ([`Gemma`](crate::models::gemma::Gemma),
/// [`Llama`](crate::models::llama::Llama)): what [`generate()`], [`KvCache`] and [`DecoderPolicy`] take.
pub trait CausalLm: Sized + Send {
    /// The family's configuration.
    type Config: Clone + std::fmt::Debug;

    /// The decoder.
    fn decoder(&self) -> &Decoder;

    /// The decoder, mutably (attaching LoRA adapters to its projections).
    fn decoder_mut(&mut self) -> &mut Decoder;

    /// The configuration the model was built from.
    fn model_config(&self) -> &Self::Config;

    /// The architecture in words (e.g. "Gemma2", "Qwen3"), for messages.
    fn architecture(&self) -> String;

    /// The family's loader: builds the model `source` describes in a new [`nn::VarStore`] with `options`
    /// (see e.g. [`Gemma::load`](crate::models::gemma::Gemma::load)).
    ///
    /// # Errors
    /// Those of the family's loader.
    fn load_model(
        source: WeightSource<'_, Self::Config>,
        options: &LoadOptions,
    ) -> Result<(nn::VarStore, Self)>;
}
