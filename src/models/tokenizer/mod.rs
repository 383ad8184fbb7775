//! Tokenizers for the models: [`GgufTokenizer`] (the SentencePiece vocabulary of a Gemma GGUF file) and,
//! with the `train` feature, `CharTokenizer` (one token per character, for small models trained from
//! scratch). With `train`, each implements the data pipeline's `data::Tokenizer` trait, `decode` included.

#[cfg(feature = "train")]
pub mod chars;
pub mod gguf;
pub(crate) mod vocab;

#[cfg(feature = "train")]
pub use chars::CharTokenizer;
pub use gguf::GgufTokenizer;
