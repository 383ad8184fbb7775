//! [`GemmaPolicy`]: the shared [`DecoderPolicy`] over a [`Gemma`], and its writers.

use std::path::Path;

use tch::Kind;

use super::export::{save_gguf, save_pretrained, TokenizerSource};
use super::model::Gemma;
use crate::error::Result;
use crate::gguf::GgmlType;
use crate::models::decoder::DecoderPolicy;
use crate::train::var_store_parameters;

/// A Gemma model and its variables as the trainer's [`PolicyModel`](crate::train::PolicyModel): [`DecoderPolicy`] (logits and
/// fused paths, gradient checkpointing, `try_clone`), plus the writers below.
pub type GemmaPolicy = DecoderPolicy<Gemma>;

impl DecoderPolicy<Gemma> {
    /// Saves the policy's model as a Hugging Face folder: [`save_pretrained`] with its configuration and
    /// the variables of its store.
    ///
    /// # Errors
    /// Those of [`save_pretrained`].
    pub fn save_pretrained(&self, dir: &Path, kind: Kind, tokenizer: TokenizerSource<'_>) -> Result<()> {
        save_pretrained(
            dir,
            self.model().config(),
            &var_store_parameters(self.var_store()),
            kind,
            tokenizer,
        )
    }

    /// Saves the policy's model as a GGUF file: [`save_gguf`] with its configuration and the variables of
    /// its store. Returns the file's size in bytes.
    ///
    /// # Errors
    /// Those of [`save_gguf`].
    pub fn save_gguf(&self, path: &Path, ty: GgmlType, tokenizer: TokenizerSource<'_>) -> Result<u64> {
        save_gguf(
            path,
            self.model().config(),
            &var_store_parameters(self.var_store()),
            ty,
            tokenizer,
        )
    }
}
