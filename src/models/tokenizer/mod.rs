//! Tokenizers for the models: [`GgufTokenizer`] (the SentencePiece vocabulary of a Gemma GGUF file) and
//! [`CharTokenizer`] (one token per character, for small models trained from scratch). Each implements
//! the crate's [`Tokenizer`](crate::data::Tokenizer) trait, `decode` included.

pub mod chars;
pub mod gguf;
pub(crate) mod vocab;

pub use chars::CharTokenizer;
pub use gguf::GgufTokenizer;
