//! Tokenizers for the models: [`GgufTokenizer`] (the SentencePiece vocabulary of a GGUF file: Gemma's,
//! or llama.cpp's SPM tokenizer for Llama 2 / Mistral / TinyLlama files, see [`SpmStyle`]),
//! [`BpeTokenizer`] (feature `bpe-tokenizer`: the byte-level BPE vocabulary of a Llama 3 / Qwen2 / SmolLM2 /
//! GPT-2 GGUF file, with its chat template) and, with the `train` feature, `CharTokenizer` (one token per
//! character, for small models trained from scratch). With `train`, each implements the data pipeline's
//! `data::Tokenizer` trait, `decode` included.

#[cfg(feature = "bpe-tokenizer")]
pub mod bpe;
#[cfg(feature = "train")]
pub mod chars;
pub mod gguf;
#[cfg(feature = "bpe-tokenizer")]
pub mod pre;
mod spm;
pub(crate) mod vocab;

#[cfg(feature = "bpe-tokenizer")]
pub use bpe::BpeTokenizer;
#[cfg(feature = "train")]
pub use chars::CharTokenizer;
pub use gguf::{GgufTokenizer, SpmStyle};
#[cfg(feature = "bpe-tokenizer")]
pub use pre::{BpePreTokenizer, LLAMA3_REGEX, QWEN2_REGEX};
