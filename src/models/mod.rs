//! Models (features `gemma` and `llama`, both on by default): [`decoder`] (the decoder every family
//! shares, with decoding, checkpointing and the trainer adapter), [`attention`] (the attention core the
//! decoder layers share: libtorch's fused kernel or the explicit path), `gemma` (Gemma 1 / 2 / 3 text
//! decoders with Hugging Face and GGUF loaders and writers), `llama` (Llama 3.x, Qwen2 / 2.5, Qwen3,
//! Mistral, SmolLM2 from Hugging Face folders and GGUF files), `auto` (any of them, the family picked from
//! the file) and [`tokenizer`] (tokenizers read from model files).
//!
//! The models stand alone: they need neither the trainer nor the data pipeline (`cargo build
//! --no-default-features --features gemma`, or `llama`). With the `train` feature as well,
//! `decoder::DecoderPolicy` (`gemma::GemmaPolicy`, `llama::LlamaPolicy`) adapts a model to the trainer and
//! the tokenizers implement `data::Tokenizer`; those are the only parts that use `train` / `data`.
//!
//! ```no_run
//! use tch::{Device, Kind};
//! use tch_rpo::gguf::GgufFile;
//! use tch_rpo::models::gemma::{greedy_decode, Gemma, LoadOptions, WeightSource};
//! use tch_rpo::models::tokenizer::GgufTokenizer;
//!
//! # fn main() -> tch_rpo::Result<()> {
//! let file = GgufFile::open("gemma-3-270m-it-Q8_0.gguf")?;
//! let (_vs, model) = Gemma::load(WeightSource::Gguf(&file), &LoadOptions::new(Device::Cpu, Kind::Float))?;
//! let tokenizer = GgufTokenizer::from_gguf(&file)?;
//! let mut prompt: Vec<i64> = tokenizer.bos_id().into_iter().collect();
//! prompt.extend(tokenizer.encode_text("The capital of France is"));
//! let (eos, pad) = (tokenizer.eos_id().unwrap_or(1), tokenizer.pad_id());
//! let answer = greedy_decode(&model, &[prompt], 8, eos, pad, Device::Cpu)?;
//! println!("{}", tokenizer.decode_text(&answer[0], true));
//! # Ok(())
//! # }
//! ```

pub mod attention;
#[cfg(all(feature = "gemma", feature = "llama"))]
pub mod auto;
pub mod decoder;
#[cfg(feature = "gemma")]
pub mod gemma;
pub(crate) mod kept;
mod linear;
#[cfg(feature = "llama")]
pub mod llama;
pub mod tokenizer;
