//! Models that the trainer can train (feature `gemma`, on by default): [`gemma`] (Gemma 1 / 2 / 3 text
//! decoders with Hugging Face and GGUF loaders, the [`PolicyModel`](crate::train::PolicyModel) adapter and
//! decoding) and [`tokenizer`] (tokenizers read from model files).
//!
//! ```no_run
//! use tch::{Device, Kind};
//! use tch_rpo::data::Tokenizer;
//! use tch_rpo::models::gemma::{greedy_decode, Gemma, GemmaPolicy};
//! use tch_rpo::models::tokenizer::GgufTokenizer;
//!
//! # fn main() -> tch_rpo::Result<()> {
//! let (vs, model, file) = Gemma::from_gguf("gemma-3-270m-it-Q8_0.gguf".as_ref(), Device::Cpu, Kind::Float)?;
//! let tokenizer = GgufTokenizer::from_gguf(&file)?;
//! let mut prompt: Vec<i64> = tokenizer.bos_id().into_iter().collect();
//! prompt.extend(tokenizer.encode("The capital of France is")?);
//! let eos = tokenizer.eos_id().unwrap_or(1);
//! let answer = greedy_decode(&model, &[prompt], 8, eos, tokenizer.pad_id(), Device::Cpu)?;
//! println!("{}", tokenizer.decode(&answer[0])?);
//! let _policy = GemmaPolicy::new(vs, model); // ready for tch_rpo::train::RpoTrainer
//! # Ok(())
//! # }
//! ```

pub mod gemma;
pub mod tokenizer;
