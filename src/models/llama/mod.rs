//! The Llama family on the shared [`decoder`](crate::models::decoder) (feature `llama`, on by default):
//! Llama 1 / 2 / 3.x and SmolLM2 (`LlamaForCausalLM`), Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`), Qwen3
//! (`Qwen3ForCausalLM`) and Mistral (`MistralForCausalLM`), checked against Hugging Face `transformers`
//! (`tests/llama_forward.rs`, fixtures from `scripts/make_llama_fixtures.py`).
//!
//! What the family's switches are, following transformers' `modeling_llama.py`, `modeling_qwen2.py`,
//! `modeling_qwen3.py`, `modeling_mistral.py`:
//! - RMSNorm `w · x̂`, with `x̂ = x · rsqrt(mean(x²) + eps)` computed in f32 and cast to the input dtype
//!   before the multiplication (Gemma: `(1 + w)` in f32);
//! - SwiGLU MLP `down(silu(gate(x)) · up(x))`; the embedding is not scaled;
//! - grouped-query attention, scale `head_dim^-½`, `head_dim` from the config or `hidden / heads` (Qwen3:
//!   128 by default); rotate-half RoPE with θ from the config and `rope_scaling` type `llama3` (factor,
//!   low / high frequency factors, original context; see [`RopeScaling::Llama3`]); other RoPE types are
//!   refused naming them;
//! - Qwen2: biases on q / k / v; Llama: `attention_bias` (q / k / v / o) and `mlp_bias`; Qwen3:
//!   `attention_bias` and a per-head RMSNorm (`w`) on queries and keys before RoPE;
//! - Mistral: sliding-window attention (`q − k < sliding_window`) on every layer when `sliding_window` is
//!   set; Qwen2 / Qwen3 honour `use_sliding_window` / `max_window_layers` / `layer_types`;
//! - the head tied to the embedding or `lm_head.weight` (`tie_word_embeddings`).
//!
//! [`Llama::load`] builds the model from a [`WeightSource`]: a Hugging Face folder (`config.json` and
//! safetensors, single or sharded), a llama.cpp GGUF file (`llama` / `qwen2` / `qwen3`; llama.cpp's names,
//! q / k rows of `llama` files un-permuted), or parameters in memory; [`export`] writes it back as a
//! Hugging Face folder or a GGUF file. Everything else is shared with
//! Gemma: decoding ([`generate()`](crate::models::decoder::generate())), per-layer checkpointing
//! ([`Llama::forward_hidden_checkpointed`]), and with `train` the trainer adapter `LlamaPolicy`.
//!
//! ```no_run
//! use tch_rpo::models::decoder::{generate, GenerationConfig, LoadOptions, WeightSource};
//! use tch_rpo::models::llama::Llama;
//!
//! # fn main() -> tch_rpo::Result<()> {
//! let dir = std::path::Path::new("Qwen2.5-0.5B-Instruct");
//! let (_vs, model) = Llama::load(WeightSource::HfDir(dir), &LoadOptions::default())?;
//! let out = generate(&model, &[vec![9707, 11, 1879]], &GenerationConfig::greedy(16, vec![151645], 151643))?;
//! println!("{:?}", out.tokens[0]);
//! # Ok(())
//! # }
//! ```
//!
//! [`RopeScaling::Llama3`]: crate::models::decoder::RopeScaling::Llama3
//! [`WeightSource`]: crate::models::decoder::WeightSource

pub mod config;
pub mod export;
#[cfg(feature = "lora")]
mod lora;
pub mod model;
#[cfg(feature = "train")]
pub mod policy;
mod weights_gguf;

pub use config::{LlamaArch, LlamaConfig, SUPPORTED_MODEL_TYPES};
#[cfg(feature = "lora")]
pub use lora::save_gguf_adapter;
pub use model::Llama;
#[cfg(feature = "train")]
pub use policy::LlamaPolicy;
pub use weights_gguf::{
    check_gguf_tensors, gguf_tensor_name, permute_rows, unpermute_rows, SUPPORTED_GGUF_ARCHITECTURES,
};
