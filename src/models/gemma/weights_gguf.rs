//! llama.cpp GGUF files (`gemma3` architecture): [`GemmaConfig::from_gguf`], [`check_gguf_tensors`], the
//! tensor naming [`gguf_tensor_name`], and reading the weights for [`Gemma::load`](super::Gemma::load)
//! with [`WeightSource::Gguf`](super::WeightSource::Gguf).

use std::collections::HashMap;

use tch::Tensor;

use super::config::{GemmaConfig, TokenIds};
use crate::error::{Error, Result, WeightsError};
use crate::gguf::GgufFile;
use crate::models::decoder::weights_gguf::{check_gguf, GgufMetadata};

/// The GGUF name of a Hugging Face parameter name of a Gemma 3 model (llama.cpp's naming), or `None` for a
/// name that has no GGUF counterpart.
pub fn gguf_tensor_name(hf_name: &str) -> Option<String> {
    match hf_name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, param) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let gguf = match param {
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "self_attn.q_norm.weight" => "attn_q_norm",
        "self_attn.k_norm.weight" => "attn_k_norm",
        "input_layernorm.weight" => "attn_norm",
        "post_attention_layernorm.weight" => "post_attention_norm",
        "pre_feedforward_layernorm.weight" => "ffn_norm",
        "post_feedforward_layernorm.weight" => "post_ffw_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.weight"))
}

impl GemmaConfig {
    /// The configuration of a Gemma 3 GGUF file (`general.architecture` = "gemma3"), from its metadata,
    /// filled as `transformers` fills it when it loads a GGUF:
    ///
    /// | field | from |
    /// |---|---|
    /// | hidden / intermediate size, layers, heads, kv heads, head_dim | `gemma3.embedding_length`, `.feed_forward_length`, `.block_count`, `.attention.head_count`, `.attention.head_count_kv`, `.attention.key_length` |
    /// | rms_norm_eps, sliding_window, max positions | `gemma3.attention.layer_norm_rms_epsilon`, `.attention.sliding_window`, `.context_length` |
    /// | θ of the global layers | `gemma3.rope.freq_base` (default 10⁶) |
    /// | vocab_size | the length of `tokenizer.ggml.tokens` (else the embedding's rows) |
    /// | soft-caps | `gemma3.final_logit_softcapping` / `.attn_logit_softcapping` if present, else none |
    /// | pad / bos / eos | `tokenizer.ggml.padding_token_id` / `bos_token_id` / `eos_token_id` |
    /// | not in the file | θ of the sliding layers 10⁴, query_pre_attn_scalar 256, gelu tanh, every 6th layer global, tied head |
    ///
    /// Errors: [`GgufError::Invalid`](crate::GgufError::Invalid) for a missing key or a key of the wrong type;
    /// [`WeightsError::UnsupportedArchitecture`] for an architecture other than gemma3; those of
    /// [`GemmaConfig::validate`].
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.get_str("general.architecture")?;
        if arch != "gemma3" {
            return Err(Error::Weights(WeightsError::UnsupportedArchitecture {
                found: arch.to_string(),
                supported: "gemma3 (GGUF general.architecture)",
            }));
        }
        let meta = GgufMetadata { file, arch: "gemma3" };
        let int = |key: &str| meta.int(key);
        let optional_f64 = |key: &str| meta.optional_f64(key);
        let token_id = |key: &str| meta.token_id(key);
        let vocab_size = meta.vocab_size()?;
        let heads = int("attention.head_count")?;
        let head_dim = match file.get("gemma3.attention.key_length") {
            Some(_) => int("attention.key_length")?,
            None => int("embedding_length")? / heads.max(1),
        };
        let config = Self {
            model_type: "gemma3_text".into(),
            vocab_size,
            hidden_size: int("embedding_length")?,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: Some(int("attention.head_count_kv")?),
            head_dim: Some(head_dim),
            hidden_activation: Some("gelu_pytorch_tanh".into()),
            hidden_act: None,
            rms_norm_eps: optional_f64("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
            rope_theta: optional_f64("rope.freq_base")?,
            rope_parameters: None,
            rope_local_base_freq: Some(10000.0),
            max_position_embeddings: int("context_length")?,
            tie_word_embeddings: !file.has_tensor("output.weight"),
            attention_bias: false,
            initializer_range: 0.02,
            query_pre_attn_scalar: Some(256.0),
            sliding_window: Some(int("attention.sliding_window")?),
            final_logit_softcapping: optional_f64("final_logit_softcapping")?,
            attn_logit_softcapping: optional_f64("attn_logit_softcapping")?,
            layer_types: None,
            pad_token_id: token_id("padding_token_id")?,
            bos_token_id: token_id("bos_token_id")?,
            eos_token_id: token_id("eos_token_id")?.map(TokenIds::One),
        };
        config.validate()?;
        Ok(config)
    }
}

/// Checks every tensor of a Gemma 3 GGUF file against `config`, reading no tensor data and allocating
/// nothing of the model's size: the file's blocks (`blk.N.…`) are exactly `config.num_hidden_layers`;
/// every parameter the config implies is there ([`gguf_tensor_name`]) with exactly its shape and an allowed
/// type ([`VECTOR_TYPES`](crate::gguf::VECTOR_TYPES), i.e. F32, for the 1-D norm weights; [`MATRIX_TYPES`](crate::gguf::MATRIX_TYPES) for matrices); the file
/// holds no other tensor. Returns the GGUF name of every parameter with its Hugging Face name.
///
/// The data's extent (inside the file, aligned, back to back as ggml lays tensors out) is checked by
/// [`GgufFile::open`]; together these refuse a file whose header was changed so that other bytes would be
/// read as weights, except an F16 ↔ BF16 swap of a matrix's type (same size, nothing tells them apart).
///
/// # Errors
/// [`GgufError::Invalid`](crate::GgufError::Invalid) if the file's blocks do not match `num_hidden_layers`; [`WeightsError::Parameters`](crate::WeightsError::Parameters) listing
/// the parameters of this config missing from the file, the file's tensors that are no parameter of it
/// (e.g. an untied `output.weight`) and those of another shape; [`WeightsError::TensorType`](crate::WeightsError::TensorType); [`InputError::Config`](crate::InputError::Config)
/// if the config is invalid.
pub fn check_gguf_tensors(file: &GgufFile, config: &GemmaConfig) -> Result<HashMap<String, String>> {
    check_gguf(
        file,
        &config.parameter_shapes()?,
        config.num_hidden_layers,
        "gemma3.block_count",
        &format!("the {} config", config.model_type),
        &gguf_tensor_name,
        &|_| false,
    )
}

/// Gemma 3's change of a GGUF tensor (dequantized to f32) into its Hugging Face value: 1 is subtracted
/// from every RMSNorm weight (GGUF stores `1 + w`); the matrices are unchanged.
pub(super) fn gguf_fix(gguf: &str, value: Tensor) -> Result<Tensor> {
    match gguf.ends_with("norm.weight") {
        true => Ok(value.f_sub_scalar(1.0)?),
        false => Ok(value),
    }
}
