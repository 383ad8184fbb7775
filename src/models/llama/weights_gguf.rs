//! llama.cpp GGUF files of the Llama family (`general.architecture` "llama", "qwen2", "qwen3"):
//! [`LlamaConfig::from_gguf`], [`gguf_tensor_name`], [`check_gguf_tensors`], and reading the weights for
//! [`Llama::load`](super::Llama::load) with [`WeightSource::Gguf`](crate::models::decoder::WeightSource::Gguf).
//!
//! llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.modify_tensors`) permutes the rows of the
//! query and key projections of `llama` models, per head, from the Hugging Face rotate-half layout
//! `[heads, 2, head_dim / 2]` to the interleaved `[heads, head_dim / 2, 2]` (`LlamaModel.permute`, with
//! the key / value head count for keys); [`unpermute_rows`] undoes it. Qwen2 / Qwen3 are stored unpermuted.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use super::config::{LlamaArch, LlamaConfig};
use crate::error::{Error, Result, WeightsError};
use crate::gguf::GgufFile;
use crate::models::decoder::spec::config_error;
use crate::models::decoder::weights_gguf::{check_gguf, GgufMetadata};
use crate::models::decoder::TokenIds;

/// llama.cpp's RoPE frequency factors (read into [`LlamaConfig::rope_freq_factors`], not a parameter).
const ROPE_FREQS: &str = "rope_freqs.weight";

/// The GGUF architectures [`LlamaConfig::from_gguf`] accepts, in words.
pub const SUPPORTED_GGUF_ARCHITECTURES: &str = "llama, qwen2 and qwen3 (GGUF general.architecture)";

/// The GGUF name of a Hugging Face parameter name of a Llama-family model (llama.cpp's naming), or `None`
/// for a name without a GGUF counterpart.
pub fn gguf_tensor_name(hf_name: &str) -> Option<String> {
    match hf_name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, param) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = param.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let gguf = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{kind}"))
}

/// llama.cpp's q / k row permutation (`LlamaModel.permute` of its converter): `rows` `[heads · head_dim,
/// …]` viewed as `[heads, 2, head_dim / 2, …]` (the rotate-half layout) → `[heads, head_dim / 2, 2, …]`
/// (interleaved pairs). [`unpermute_rows`] is its inverse. Errors: [`Error::Torch`] if the rows are not a
/// multiple of `2 · heads`.
pub fn permute_rows(rows: &Tensor, heads: i64) -> Result<Tensor> {
    let size = rows.size();
    let n = size.first().copied().unwrap_or(0);
    let mut view = vec![heads, 2, n / heads.max(1) / 2];
    view.extend_from_slice(&size[1..]);
    Ok(rows
        .f_reshape(view.as_slice())?
        .f_transpose(1, 2)?
        .f_reshape(size.as_slice())?)
}

/// Undoes llama.cpp's q / k row permutation: `rows` `[heads · head_dim, …]` viewed as `[heads, head_dim /
/// 2, 2, …]` → `[heads, 2, head_dim / 2, …]` (the inverse of `LlamaModel.permute`). Errors:
/// [`Error::Torch`] if the rows are not a multiple of `2 · heads`.
pub fn unpermute_rows(rows: &Tensor, heads: i64) -> Result<Tensor> {
    let size = rows.size();
    let n = size.first().copied().unwrap_or(0);
    let mut view = vec![heads, n / heads.max(1) / 2, 2];
    view.extend_from_slice(&size[1..]);
    Ok(rows
        .f_reshape(view.as_slice())?
        .f_transpose(1, 2)?
        .f_reshape(size.as_slice())?)
}

impl LlamaConfig {
    /// The configuration of a Llama-family GGUF file, from its metadata (`A` = `general.architecture`):
    ///
    /// | field | from |
    /// |---|---|
    /// | model_type | `A`: "llama" (Llama, SmolLM, and Mistral as llama.cpp converts it), "qwen2", "qwen3" |
    /// | hidden / intermediate size, layers, heads, kv heads | `A.embedding_length`, `.feed_forward_length`, `.block_count`, `.attention.head_count`, `.attention.head_count_kv` (default: heads) |
    /// | head_dim | `A.attention.key_length`, else hidden / heads |
    /// | rms_norm_eps, θ, max positions | `A.attention.layer_norm_rms_epsilon`, `A.rope.freq_base` (default 10⁴), `A.context_length` |
    /// | vocab_size | the length of `tokenizer.ggml.tokens` (else the embedding's rows) |
    /// | tied head | no `output.weight` tensor |
    /// | RoPE frequency divisors | the `rope_freqs.weight` tensor, when present (Llama 3.1+ scaling as llama.cpp stores it) |
    /// | pad / bos / eos | `tokenizer.ggml.padding_token_id` / `bos_token_id` / `eos_token_id` |
    ///
    /// Errors: [`GgufError::Invalid`](crate::GgufError::Invalid) for a missing key or a key of the wrong
    /// type; [`WeightsError::UnsupportedArchitecture`] naming another architecture;
    /// [`InputError::Config`](crate::InputError::Config) naming `rope.scaling.type` for a scaled RoPE
    /// (other than through `rope_freqs.weight`); those of [`GgufFile::tensor`] for an unreadable
    /// `rope_freqs.weight`; those of [`LlamaConfig::validate`].
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.get_str("general.architecture")?.to_string();
        if !matches!(arch.as_str(), "llama" | "qwen2" | "qwen3") {
            return Err(Error::Weights(WeightsError::UnsupportedArchitecture {
                found: arch,
                supported: SUPPORTED_GGUF_ARCHITECTURES,
            }));
        }
        let rope_freq_factors = match file.has_tensor(ROPE_FREQS) {
            true => {
                let factors = file.tensor(ROPE_FREQS, Kind::Float, Device::Cpu)?;
                Some(Vec::<f32>::try_from(factors.f_flatten(0, -1)?)?)
            }
            false => None,
        };
        let scaling_key = format!("{arch}.rope.scaling.type");
        if let Some(kind) = file
            .get(&scaling_key)
            .map(|_| file.get_str(&scaling_key))
            .transpose()?
        {
            if kind != "none" {
                return Err(config_error(
                    "rope.scaling.type",
                    format!("{scaling_key} = {kind:?} is not implemented for GGUF files"),
                ));
            }
        }
        let meta = GgufMetadata { file, arch: &arch };
        let int = |key: &str| meta.int(key);
        let optional_int = |key: &str| -> Result<Option<i64>> {
            match file.get(&format!("{arch}.{key}")) {
                Some(_) => Ok(Some(int(key)?)),
                None => Ok(None),
            }
        };
        let optional_f64 = |key: &str| meta.optional_f64(key);
        let token_id = |key: &str| meta.token_id(key);
        let vocab_size = meta.vocab_size()?;
        let heads = int("attention.head_count")?;
        let hidden = int("embedding_length")?;
        let config = Self {
            model_type: arch.clone(),
            vocab_size,
            hidden_size: hidden,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: Some(optional_int("attention.head_count_kv")?.unwrap_or(heads)),
            head_dim: Some(optional_int("attention.key_length")?.unwrap_or(hidden / heads.max(1))),
            hidden_act: "silu".into(),
            rms_norm_eps: optional_f64("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
            rope_theta: Some(optional_f64("rope.freq_base")?.unwrap_or(10000.0)),
            rope_parameters: None,
            rope_scaling: None,
            max_position_embeddings: int("context_length")?,
            tie_word_embeddings: !file.has_tensor("output.weight"),
            attention_bias: arch == "llama" && file.has_tensor("blk.0.attn_output.bias"),
            mlp_bias: arch == "llama" && file.has_tensor("blk.0.ffn_up.bias"),
            sliding_window: None,
            use_sliding_window: None,
            max_window_layers: None,
            layer_types: None,
            initializer_range: 0.02,
            pad_token_id: token_id("padding_token_id")?,
            bos_token_id: token_id("bos_token_id")?,
            eos_token_id: token_id("eos_token_id")?.map(TokenIds::One),
            rope_freq_factors,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Checks every tensor of a Llama-family GGUF file against `config` (the shared check: blocks, names,
/// shapes, types; nothing else in the file), reading no tensor data. Returns the Hugging Face name of every
/// GGUF tensor name.
///
/// # Errors
/// [`GgufError::Invalid`](crate::GgufError::Invalid) if the blocks do not match `num_hidden_layers`;
/// [`WeightsError::Parameters`](crate::WeightsError::Parameters) listing the missing, unexpected and
/// reshaped tensors; [`WeightsError::TensorType`](crate::WeightsError::TensorType); those of
/// [`LlamaConfig::parameter_shapes`].
pub fn check_gguf_tensors(file: &GgufFile, config: &LlamaConfig) -> Result<HashMap<String, String>> {
    check_gguf(
        file,
        &config.parameter_shapes()?,
        config.num_hidden_layers,
        &format!("{}.block_count", config.model_type),
        &format!("the {} config", config.model_type),
        &gguf_tensor_name,
        &|name| name == ROPE_FREQS,
    )
}

/// The Llama family's change of a GGUF tensor into its Hugging Face layout: q / k rows un-permuted for the
/// `llama` architecture ([`unpermute_rows`]; a reordering of rows only), everything else unchanged.
pub(super) fn gguf_fix(gguf: &str, value: Tensor, config: &LlamaConfig) -> Result<Tensor> {
    let permuted = config.arch()? == LlamaArch::Llama;
    let (heads, kv_heads) = (config.num_attention_heads, config.kv_heads());
    let q = gguf.ends_with(".attn_q.weight") || gguf.ends_with(".attn_q.bias");
    let k = gguf.ends_with(".attn_k.weight") || gguf.ends_with(".attn_k.bias");
    match (permuted, q, k) {
        (true, true, _) => unpermute_rows(&value, heads),
        (true, _, true) => unpermute_rows(&value, kv_heads),
        _ => Ok(value),
    }
}
