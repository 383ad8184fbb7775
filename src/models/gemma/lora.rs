//! Gemma's LoRA extras (feature `lora`): its default targets [`GEMMA_LORA_TARGETS`] (those of every decoder,
//! [`crate::models::decoder::lora`]) and the llama.cpp adapter export of a [`crate::lora::LoraPolicy`] over a
//! Gemma policy (llama.cpp's `gemma` / `gemma2` / `gemma3` tensor names).

/// Gemma's default LoRA targets: the seven projections of every decoder layer
/// ([`DECODER_LORA_TARGETS`](crate::models::decoder::lora::DECODER_LORA_TARGETS)).
pub const GEMMA_LORA_TARGETS: [&str; 7] = crate::models::decoder::lora::DECODER_LORA_TARGETS;

#[cfg(feature = "train")]
pub(crate) use policy::llama_cpp_architecture;

#[cfg(feature = "train")]
mod policy {
    use std::path::Path;

    use super::super::config::GemmaArch;
    use super::super::policy::GemmaPolicy;
    use super::super::weights_gguf::gguf_tensor_name;
    use crate::error::Result;
    use crate::gguf::GgmlType;
    use crate::lora::LoraPolicy;

    /// llama.cpp's architecture name of a Gemma generation (`general.architecture`).
    pub(crate) fn llama_cpp_architecture(arch: GemmaArch) -> &'static str {
        match arch {
            GemmaArch::Gemma => "gemma",
            GemmaArch::Gemma2 => "gemma2",
            GemmaArch::Gemma3 => "gemma3",
        }
    }

    impl LoraPolicy<GemmaPolicy> {
        /// Writes the adapters as a llama.cpp LoRA adapter GGUF for the base model's GGUF
        /// ([`crate::lora::LoraAdapters::save_gguf_adapter`] with llama.cpp's architecture name of the model,
        /// `gemma3` for Gemma 3, and Gemma's tensor names [`gguf_tensor_name`]): `llama-cli -m base.gguf
        /// --lora FILE` applies them. Returns the file's size in bytes.
        ///
        /// # Errors
        /// Those of [`crate::lora::LoraAdapters::save_gguf_adapter`].
        pub fn save_gguf_adapter(&self, path: &Path, ty: GgmlType) -> Result<u64> {
            let arch = llama_cpp_architecture(self.base().model().arch());
            self.adapters()
                .save_gguf_adapter(path, arch, gguf_tensor_name, ty)
        }
    }
}
