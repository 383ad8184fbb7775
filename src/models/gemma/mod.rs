//! A Gemma decoder (Gemma 1, 2 and 3 text architectures) in tch, checked against Hugging Face
//! `transformers` (`tests/gemma_forward.rs`, fixtures from `scripts/make_gemma_fixture.py`; Gemma 3 270M
//! from its GGUF in `tests/gemma3_gguf.rs`, fixture from `scripts/make_gemma3_reference.py`).
//!
//! What it implements, following `transformers`' `modeling_gemma.py` / `modeling_gemma2.py` /
//! `modeling_gemma3.py`:
//! - RMSNorm computed in f32 as `x · rsqrt(mean(x²) + eps) · (1 + w)`, cast back to the activation dtype;
//! - token embedding × `sqrt(hidden_size)`, the factor rounded to the activation dtype;
//! - GeGLU MLP `down(gelu_tanh(gate(x)) · up(x))`;
//! - multi-query / grouped-query attention with `head_dim` from the config, rotate-half RoPE with θ from the
//!   config (cos / sin computed in f32, then cast to the activation dtype), softmax in f32;
//! - the LM head tied to the embedding;
//! - Gemma 2: four norms per layer, attention scale `query_pre_attn_scalar^-½`, attention-logit and
//!   final-logit soft-capping `tanh(z / c) · c`, and sliding-window attention on the layers that
//!   `layer_types` marks (by default every even layer: 0, 2, …);
//! - Gemma 3: Gemma 2's layer, plus a per-head RMSNorm (`(1 + w)`) on queries and keys before RoPE; sliding
//!   layers use their own RoPE base (`rope_local_base_freq`, default 10⁴) and global layers the config's
//!   θ (default 10⁶); by default every 6th layer (5, 11, …) is global; no soft-capping unless configured.
//!
//! [`Gemma::load`] builds the model from a [`WeightSource`]: a Hugging Face folder (`config.json` and
//! safetensors, single or sharded), a llama.cpp GGUF file (`gemma3` architecture: config from the
//! `gemma3.*` metadata, tensors dequantized by [`crate::gguf`] and renamed to the Hugging Face names; the
//! GGUF stores every RMSNorm weight as `1 + w`, so 1 is subtracted when loading, as transformers does), or
//! parameters in memory; [`LoadOptions`] give the device and dtype. [`Gemma::random`] is a fresh random
//! init instead.
//!
//! Attention is causal and combined with a padding mask (`attention_mask`, 1 = token, 0 = padding).
//! [`Gemma::forward`] / [`Gemma::forward_hidden`] use position ids `0..T` in every row, which is right for
//! **right** padding (training batches); [`Gemma::forward_hidden_at`] takes explicit position ids and a
//! [`KvCache`], which [`generate()`] uses for left-padded batches.
//!
//! With the `train` feature, `GemmaPolicy` wraps a model and its variable store as the trainer's
//! `PolicyModel` (logits and hidden-state / fused paths); it is the only part of this module that needs
//! the trainer. [`generate()`] decodes
//! greedily or by sampling (temperature, top-k, top-p, seed) with a KV cache, [`greedy_decode`] is its
//! greedy shorthand.
//!
//! Gemma is the shared [`crate::models::decoder`] with Gemma's switches: the layers, the decoder,
//! checkpointing, decoding, the trainer adapter and the Hugging Face reading live there and are
//! re-exported here under their old paths ([`mod@generate`], [`checkpointing`], `accuracy`, [`KvCache`],
//! …). Layout of what is Gemma's own: [`config`] (the configuration and its switches), [`model`]
//! ([`Gemma`]), [`load`] (the loader), `weights_gguf` (reading `gemma3` GGUF files; internal), `policy`
//! (`GemmaPolicy` and its writers, feature `train`), [`export`] (writing a model as a Hugging Face folder
//! or a GGUF file), [`mod@lora`] (feature `lora`: the LoRA targets and the llama.cpp adapter export).
//!
//! [`Gemma::forward_hidden_checkpointed`] ([`checkpointing`]) is per-layer activation checkpointing, exact
//! (the same gradients, within f32 rounding when it recomputes a layer in several blocks of rows);
//! `GemmaPolicy::set_gradient_checkpointing` turns it on for training.
//!
//! Parameters live in a [`tch::nn::VarStore`] under the Hugging Face names (`model.embed_tokens.weight`,
//! `model.layers.{i}.self_attn.q_proj.weight`, …), so [`Gemma::load`] copies a folder's tensors by name
//! and [`export::save_pretrained`] writes a folder that `transformers` loads.

pub mod config;
pub mod export;
pub mod load;
#[cfg(feature = "lora")]
pub mod lora;
pub mod model;
#[cfg(feature = "train")]
pub mod policy;
mod weights_gguf;

pub use config::{Activation, GemmaArch, GemmaConfig, TokenIds, SUPPORTED_MODEL_TYPES};
#[cfg(feature = "train")]
pub use load::load_tokenizer;
pub use load::{LoadOptions, WeightFormat, WeightSource};
#[cfg(feature = "lora")]
pub use lora::GEMMA_LORA_TARGETS;
pub use model::Gemma;
#[cfg(feature = "train")]
pub use policy::GemmaPolicy;
pub use weights_gguf::{check_gguf_tensors, gguf_tensor_name};
// The shared pieces, under the paths they had when they were Gemma's (modules and items).
#[cfg(feature = "train")]
pub use crate::models::decoder::{accuracy, greedy_accuracy};
pub use crate::models::decoder::{
    checkpointing, generate, greedy_decode, tokenizer_path, Generation, GenerationConfig, KvCache,
    LayerCheckpoints, Sampling, NO_WEIGHTS,
};
