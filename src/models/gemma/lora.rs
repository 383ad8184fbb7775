//! Gemma's LoRA support (feature `lora`): [`LoraModel`] for [`Gemma`] (and, with `train`, for
//! [`super::GemmaPolicy`]), and the llama.cpp adapter export of a [`crate::lora::LoraPolicy`] over a Gemma policy.
//!
//! The adaptable layers are the seven projections of every decoder layer, by their Hugging Face module
//! paths: `model.layers.{i}.self_attn.{q,k,v,o}_proj` and `model.layers.{i}.mlp.{gate,up,down}_proj` —
//! all seven are the default targets ([`GEMMA_LORA_TARGETS`]); the embedding (the tied head) is never
//! adapted.

use super::layers::Layer;
use super::model::Gemma;
use crate::error::{Error, InputError, Result};
use crate::lora::{AdaptableLinear, LoraAdapter, LoraModel};
use crate::models::linear::Linear;

/// Gemma's default LoRA targets: the seven projections of every decoder layer.
pub const GEMMA_LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The linear layers of a decoder layer with their paths inside the layer, in [`GEMMA_LORA_TARGETS`] order.
fn linears(layer: &Layer) -> [(&'static str, &Linear); 7] {
    let (a, m) = (&layer.attention, &layer.mlp);
    [
        ("self_attn.q_proj", &a.q_proj),
        ("self_attn.k_proj", &a.k_proj),
        ("self_attn.v_proj", &a.v_proj),
        ("self_attn.o_proj", &a.o_proj),
        ("mlp.gate_proj", &m.gate_proj),
        ("mlp.up_proj", &m.up_proj),
        ("mlp.down_proj", &m.down_proj),
    ]
}

/// The linear layer of `layer` at `suffix` (`self_attn.q_proj`, …), mutably.
fn linear_mut<'a>(layer: &'a mut Layer, suffix: &str) -> Option<&'a mut Linear> {
    let (a, m) = (&mut layer.attention, &mut layer.mlp);
    Some(match suffix {
        "self_attn.q_proj" => &mut a.q_proj,
        "self_attn.k_proj" => &mut a.k_proj,
        "self_attn.v_proj" => &mut a.v_proj,
        "self_attn.o_proj" => &mut a.o_proj,
        "mlp.gate_proj" => &mut m.gate_proj,
        "mlp.up_proj" => &mut m.up_proj,
        "mlp.down_proj" => &mut m.down_proj,
        _ => return None,
    })
}

impl LoraModel for Gemma {
    /// The seven projections of every layer, layer by layer.
    fn adaptable_linears(&self) -> Vec<AdaptableLinear> {
        let mut all = Vec::with_capacity(7 * self.layers().len());
        for (i, layer) in self.layers().iter().enumerate() {
            for (suffix, linear) in linears(layer) {
                all.push(AdaptableLinear {
                    path: format!("model.layers.{i}.{suffix}"),
                    weight: linear.weight.shallow_clone(),
                });
            }
        }
        all
    }

    /// [`GEMMA_LORA_TARGETS`].
    fn default_lora_targets(&self) -> Vec<String> {
        GEMMA_LORA_TARGETS.iter().map(|t| t.to_string()).collect()
    }

    /// # Errors
    /// [`InputError::Config`] for a path that names no projection of this model.
    fn set_lora_adapter(&mut self, path: &str, adapter: Option<LoraAdapter>) -> Result<()> {
        let layers = self.layers().len();
        let found = path
            .strip_prefix("model.layers.")
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(i, suffix)| Some((i.parse::<usize>().ok()?, suffix)))
            .and_then(|(i, suffix)| linear_mut(self.layers_mut().get_mut(i)?, suffix));
        let Some(linear) = found else {
            return Err(Error::Input(InputError::Config {
                name: "path",
                requirement: format!(
                    "`{path}` names no linear layer of this Gemma ({layers} layers; paths are \
                     model.layers.{{i}}.self_attn.{{q,k,v,o}}_proj and model.layers.{{i}}.mlp.{{gate,up,down}}_proj)"
                ),
            }));
        };
        linear.lora = adapter;
        Ok(())
    }
}

#[cfg(feature = "train")]
mod policy {
    use std::path::Path;

    use super::super::config::GemmaArch;
    use super::super::policy::GemmaPolicy;
    use super::super::weights_gguf::gguf_tensor_name;
    use crate::error::Result;
    use crate::gguf::GgmlType;
    use crate::lora::{AdaptableLinear, LoraAdapter, LoraModel, LoraPolicy};

    /// llama.cpp's architecture name of a Gemma generation (`general.architecture`).
    fn llama_cpp_architecture(arch: GemmaArch) -> &'static str {
        match arch {
            GemmaArch::Gemma => "gemma",
            GemmaArch::Gemma2 => "gemma2",
            GemmaArch::Gemma3 => "gemma3",
        }
    }

    impl LoraModel for GemmaPolicy {
        /// Those of its [`super::Gemma`].
        fn adaptable_linears(&self) -> Vec<AdaptableLinear> {
            self.model().adaptable_linears()
        }

        fn default_lora_targets(&self) -> Vec<String> {
            self.model().default_lora_targets()
        }

        fn set_lora_adapter(&mut self, path: &str, adapter: Option<LoraAdapter>) -> Result<()> {
            self.model_mut().set_lora_adapter(path, adapter)
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
