//! LoRA on the shared decoder (feature `lora`): [`LoraModel`] for every family's model ([`CausalLm`]:
//! Gemma, Llama, Qwen2, Qwen3, Mistral) and, with `train`, for its [`DecoderPolicy`](super::DecoderPolicy).
//!
//! The adaptable layers are the seven projections of every decoder layer, by their Hugging Face module
//! paths: `model.layers.{i}.self_attn.{q,k,v,o}_proj` and `model.layers.{i}.mlp.{gate,up,down}_proj` —
//! all seven are the default targets ([`DECODER_LORA_TARGETS`]); the embedding and the LM head are never
//! adapted.

use super::layers::Layer;
use super::CausalLm;
use crate::error::{Error, InputError, Result};
use crate::lora::{AdaptableLinear, LoraAdapter, LoraModel};
use crate::models::linear::Linear;

/// The default LoRA targets of every decoder family: the seven projections of every layer.
pub const DECODER_LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The linear layers of a decoder layer with their paths inside the layer, in [`DECODER_LORA_TARGETS`]
/// order.
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

impl<M: CausalLm> LoraModel for M {
    /// The seven projections of every layer, layer by layer.
    fn adaptable_linears(&self) -> Vec<AdaptableLinear> {
        let layers = self.decoder().layers();
        let mut all = Vec::with_capacity(7 * layers.len());
        for (i, layer) in layers.iter().enumerate() {
            for (suffix, linear) in linears(layer) {
                all.push(AdaptableLinear {
                    path: format!("model.layers.{i}.{suffix}"),
                    weight: linear.weight.shallow_clone(),
                });
            }
        }
        all
    }

    /// [`DECODER_LORA_TARGETS`].
    fn default_lora_targets(&self) -> Vec<String> {
        DECODER_LORA_TARGETS.iter().map(|t| t.to_string()).collect()
    }

    /// # Errors
    /// [`InputError::Config`] for a path that names no projection of this model.
    fn set_lora_adapter(&mut self, path: &str, adapter: Option<LoraAdapter>) -> Result<()> {
        let architecture = self.architecture();
        let layers = self.decoder_mut().layers_mut();
        let count = layers.len();
        let found = path
            .strip_prefix("model.layers.")
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(i, suffix)| Some((i.parse::<usize>().ok()?, suffix)))
            .and_then(|(i, suffix)| linear_mut(layers.get_mut(i)?, suffix));
        let Some(linear) = found else {
            return Err(Error::Input(InputError::Config {
                name: "path",
                requirement: format!(
                    "`{path}` names no linear layer of this {architecture} model ({count} layers; paths are \
                     model.layers.{{i}}.self_attn.{{q,k,v,o}}_proj and model.layers.{{i}}.mlp.{{gate,up,down}}_proj)"
                ),
            }));
        };
        linear.lora = adapter;
        Ok(())
    }

    /// The matrices kept in their GGUF blocks: the embedding, the untied head, then every layer's
    /// projections, by GGUF name.
    fn visit_frozen_bytes(&self, visit: &mut dyn FnMut(&str, &[u8])) {
        for blocks in self.decoder().kept_blocks() {
            visit(blocks.name(), blocks.bytes());
        }
    }
}

#[cfg(feature = "train")]
impl<M: CausalLm> LoraModel for super::DecoderPolicy<M> {
    /// Those of its model.
    fn adaptable_linears(&self) -> Vec<AdaptableLinear> {
        self.model().adaptable_linears()
    }

    fn default_lora_targets(&self) -> Vec<String> {
        self.model().default_lora_targets()
    }

    fn set_lora_adapter(&mut self, path: &str, adapter: Option<LoraAdapter>) -> Result<()> {
        self.model_mut().set_lora_adapter(path, adapter)
    }

    fn visit_frozen_bytes(&self, visit: &mut dyn FnMut(&str, &[u8])) {
        self.model().visit_frozen_bytes(visit)
    }
}
