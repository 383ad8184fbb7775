//! The llama.cpp LoRA adapter export of the Llama family (feature `lora`): llama.cpp's tensor names, and for
//! files of architecture `llama` the q / k projections' `lora_B` rows permuted per head as the base file's
//! rows are ([`permute_rows`]).

use std::path::Path;

use super::config::LlamaConfig;
use super::export::gguf_architecture;
use super::weights_gguf::{gguf_tensor_name, permute_rows};
use crate::error::Result;
use crate::gguf::GgmlType;
use crate::lora::LoraAdapters;

/// Writes `adapters` (attached to a model of `config`) as a llama.cpp LoRA adapter GGUF for that model's
/// GGUF file ([`crate::lora::LoraAdapters::save_gguf_adapter_with`]): `general.architecture` =
/// [`gguf_architecture`], the tensor names of [`gguf_tensor_name`], and for `llama` files (Llama, SmolLM2,
/// Mistral) each q / k projection's `lora_B` with its rows permuted per head (`num_attention_heads` for q,
/// the key / value head count for k), as llama.cpp's converter permutes the base weight's rows, so that
/// `llama-cli -m base.gguf --lora FILE` applies `W + s·B·A` in the file's row order. Returns the file's size.
///
/// # Errors
/// Those of [`LlamaConfig::arch`] and [`crate::lora::LoraAdapters::save_gguf_adapter_with`].
pub fn save_gguf_adapter(
    adapters: &LoraAdapters,
    config: &LlamaConfig,
    path: &Path,
    ty: GgmlType,
) -> Result<u64> {
    let arch = gguf_architecture(config)?;
    let (heads, kv_heads) = (config.num_attention_heads, config.kv_heads());
    let rows = |name: &str, b: tch::Tensor| -> Result<tch::Tensor> {
        match arch == "llama" {
            true if name.ends_with(".self_attn.q_proj.weight") => permute_rows(&b, heads),
            true if name.ends_with(".self_attn.k_proj.weight") => permute_rows(&b, kv_heads),
            _ => Ok(b),
        }
    };
    adapters.save_gguf_adapter_with(path, arch, gguf_tensor_name, rows, ty)
}

#[cfg(feature = "train")]
impl crate::lora::LoraPolicy<super::LlamaPolicy> {
    /// Writes the adapters as a llama.cpp LoRA adapter GGUF for the base model's GGUF
    /// ([`save_gguf_adapter`]). Returns the file's size in bytes.
    ///
    /// # Errors
    /// Those of [`save_gguf_adapter`].
    pub fn save_gguf_adapter(&self, path: &Path, ty: GgmlType) -> Result<u64> {
        save_gguf_adapter(self.adapters(), self.base().model().config(), path, ty)
    }
}
