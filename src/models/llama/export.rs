//! Saving a (trained) Llama-family model (Llama 3.x / SmolLM2, Qwen2 / 2.5, Qwen3, Mistral) for other
//! tools: a Hugging Face folder for `transformers` ([`save_pretrained`]) and a GGUF file laid out as
//! llama.cpp's converter (`convert_hf_to_gguf.py`) writes one ([`save_gguf`]). Both are built on the
//! writers every family shares ([`decoder::export`](crate::models::decoder::export)).
//!
//! | | Hugging Face folder | GGUF file |
//! |---|---|---|
//! | architectures | `LlamaForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `MistralForCausalLM` | `general.architecture` `llama` (Llama, SmolLM2, Mistral without a window), `qwen2`, `qwen3` |
//! | weights | `model.safetensors`, f32 / bf16 / f16, Hugging Face names | F32 / F16 / BF16 / Q8_0 matrices, 1-D tensors (norms, biases, RoPE factors) F32; llama.cpp's names; q / k rows of `llama` files permuted per head ([`permute_rows`]) |
//! | configuration | `config.json` (every switch written out), `generation_config.json` | `A.*` hyper-parameters; Llama 3 RoPE scaling as `rope_freqs.weight` |
//! | tokenizer | copied from a folder, or made from a GGUF's byte-level BPE ([`gguf_bpe_to_hf`]) | the `tokenizer.*` metadata of a GGUF (e.g. a byte-level BPE: `tokenizer.ggml.model` = `gpt2`, `pre`, tokens, types, merges, special ids, chat template), copied, or converted from a folder's byte-level BPE `tokenizer.json` ([`hf_bpe_to_gguf`]) |
//!
//! Both refuse parameters holding NaN or ±inf before writing anything. Checked by
//! `tests/export_llama.rs` (transformers loads the folder, our loader and gguf-py read the GGUF).

use std::path::Path;

use serde_json::{json, Value};
use tch::{Kind, Tensor};

use super::config::{LlamaArch, LlamaConfig};
use super::weights_gguf::{gguf_tensor_name, permute_rows};
use crate::error::{Error, InputError, Result};
use crate::gguf::{GgmlType, GgufValue};
use crate::models::decoder::export::{
    check_export_type, check_finite, dtype_name, generation_config_json as generation_json, gguf_bpe_to_hf,
    hf_bpe_to_gguf, u32_value, write_hf_folder, GgufExport, TokenizerSource, SAVED,
};
use crate::models::decoder::{RopeScaling, TokenIds};

fn config_error(name: &'static str, requirement: String) -> Error {
    Error::Input(InputError::Config { name, requirement })
}

/// The parameters in file order, checked against `config` (every parameter once with its shape, nothing
/// else). Errors: [`WeightsError::Parameters`](crate::WeightsError::Parameters).
fn ordered_parameters<'p>(
    config: &LlamaConfig,
    parameters: &'p [(String, Tensor)],
) -> Result<Vec<(&'p str, &'p Tensor)>> {
    crate::models::decoder::load::ordered_parameters(
        &config.parameter_shapes()?,
        &format!("the {} config", config.model_type),
        parameters,
        SAVED,
    )
}

/// The `config.json` of `config` for a folder saved in `kind`, every switch written out so that
/// `transformers` and [`LlamaConfig::from_file`] read back the same model: `architectures`
/// (`LlamaForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `MistralForCausalLM`), `model_type`, the
/// sizes, `num_key_value_heads`, `head_dim`, `hidden_act`, `rms_norm_eps`, `max_position_embeddings`,
/// `initializer_range`, the special token ids, `tie_word_embeddings`, `dtype`, `rope_parameters`
/// (`{"rope_type": "default" | "llama3", "rope_theta": θ, …}`); Llama / Qwen3 `attention_bias`, Llama
/// `mlp_bias`; Mistral `sliding_window` (`null` when off); Qwen2 / Qwen3 `use_sliding_window`,
/// `sliding_window`, `max_window_layers` and `layer_types` (one entry per layer).
///
/// # Errors
/// Those of [`LlamaConfig::validate`]; [`InputError::Config`] naming `rope_freqs.weight` for a
/// configuration read from a GGUF file with llama.cpp's RoPE frequency factors (a `config.json` has no
/// field for them); [`InputError::DType`] for a `kind` other than Float,
/// BFloat16, Half.
pub fn hf_config_json(config: &LlamaConfig, kind: Kind) -> Result<Value> {
    config.validate()?;
    if config.rope_freq_factors.is_some() {
        return Err(config_error(
            "rope_freqs.weight",
            "llama.cpp's RoPE frequency factors (from a GGUF file) have no config.json field; export this model as GGUF".into(),
        ));
    }
    let arch = config.arch()?;
    let (theta, scaling) = config.rope()?;
    let rope = match scaling {
        RopeScaling::Default => json!({"rope_type": "default", "rope_theta": theta}),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => json!({
            "rope_type": "llama3", "rope_theta": theta, "factor": factor,
            "low_freq_factor": low_freq_factor, "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings as i64,
        }),
    };
    let eos = match &config.eos_token_id {
        None => Value::Null,
        Some(TokenIds::One(id)) => json!(id),
        Some(TokenIds::Many(ids)) => json!(ids),
    };
    let architecture = match arch {
        LlamaArch::Llama => "LlamaForCausalLM",
        LlamaArch::Qwen2 => "Qwen2ForCausalLM",
        LlamaArch::Qwen3 => "Qwen3ForCausalLM",
        LlamaArch::Mistral => "MistralForCausalLM",
    };
    let mut out = json!({
        "architectures": [architecture],
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.kv_heads(),
        "head_dim": config.head_size(),
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos,
        "tie_word_embeddings": config.tie_word_embeddings,
        "rope_parameters": rope,
        "attention_dropout": 0.0,
        "use_cache": true,
        "dtype": dtype_name(kind)?,
    });
    let map = out.as_object_mut().expect("an object");
    let windows = config.layer_windows()?;
    match arch {
        LlamaArch::Llama => {
            map.insert("attention_bias".into(), json!(config.attention_bias));
            map.insert("mlp_bias".into(), json!(config.mlp_bias));
        }
        LlamaArch::Mistral => {
            map.insert("sliding_window".into(), json!(windows.first().copied().flatten()));
        }
        LlamaArch::Qwen2 | LlamaArch::Qwen3 => {
            if arch == LlamaArch::Qwen3 {
                map.insert("attention_bias".into(), json!(config.attention_bias));
            }
            let window = windows.iter().flatten().next().copied();
            let layer_types: Vec<&str> = windows
                .iter()
                .map(|w| match w {
                    Some(_) => "sliding_attention",
                    None => "full_attention",
                })
                .collect();
            map.insert("use_sliding_window".into(), json!(window.is_some()));
            map.insert("sliding_window".into(), json!(window));
            map.insert(
                "max_window_layers".into(),
                json!(config.max_window_layers.unwrap_or(config.num_hidden_layers)),
            );
            map.insert("layer_types".into(), json!(layer_types));
        }
    }
    Ok(out)
}

/// The `generation_config.json` of `config`: its BOS, EOS and padding ids (those that are set).
pub fn generation_config_json(config: &LlamaConfig) -> Value {
    generation_json(
        config.bos_token_id,
        config.eos_token_id.as_ref(),
        config.pad_token_id,
    )
}

/// Saves a Llama-family model as a Hugging Face folder that `transformers` (`AutoModelForCausalLM`) and
/// [`Llama::load`](super::Llama::load) (`WeightSource::HfDir`) load: `config.json`
/// ([`hf_config_json`]), `generation_config.json`, `model.safetensors` (every parameter under its Hugging
/// Face name, in `kind`, on the CPU; `lm_head.weight` only when untied) and the tokenizer: the tokenizer
/// files of a [`TokenizerSource::HfDir`] folder, copied, or the `tokenizer.json` and
/// `tokenizer_config.json` made from a [`TokenizerSource::Gguf`] file's byte-level BPE ([`gguf_bpe_to_hf`]). Written atomically, as Gemma's
/// [`save_pretrained`](crate::models::gemma::export::save_pretrained) (same folder rules).
///
/// # Errors
/// Those of [`hf_config_json`]; [`WeightsError::Parameters`](crate::WeightsError::Parameters) when
/// `parameters` do not match `config`; [`WeightsError::NonFinite`](crate::WeightsError::NonFinite);
/// those of [`gguf_bpe_to_hf`] for a [`TokenizerSource::Gguf`] (e.g.
/// [`DataError::UnsupportedTokenizer`](crate::DataError::UnsupportedTokenizer) for a tokenizer that is not a
/// `gpt2` byte-level BPE); [`DataError::Tokenizer`](crate::DataError::Tokenizer) for a tokenizer folder
/// without tokenizer files;
/// [`InputError::InvalidPath`],
/// [`CheckpointError::Invalid`](crate::CheckpointError::Invalid), [`Error::Io`], [`Error::Torch`] as
/// Gemma's. Nothing is written when the arguments are refused.
pub fn save_pretrained(
    dir: &Path,
    config: &LlamaConfig,
    parameters: &[(String, Tensor)],
    kind: Kind,
    tokenizer: TokenizerSource<'_>,
) -> Result<()> {
    let config_json = hf_config_json(config, kind)?;
    let ordered = ordered_parameters(config, parameters)?;
    check_finite(&ordered)?;
    write_hf_folder(
        dir,
        &config_json,
        &generation_config_json(config),
        &ordered,
        kind,
        tokenizer,
        &gguf_bpe_to_hf,
    )
}

/// The GGUF `general.architecture` of `config`: `llama` (Llama, SmolLM2, and Mistral, as llama.cpp's
/// converter writes it), `qwen2`, `qwen3`. Errors: those of [`LlamaConfig::arch`].
pub fn gguf_architecture(config: &LlamaConfig) -> Result<&'static str> {
    Ok(match config.arch()? {
        LlamaArch::Llama | LlamaArch::Mistral => "llama",
        LlamaArch::Qwen2 => "qwen2",
        LlamaArch::Qwen3 => "qwen3",
    })
}

/// llama.cpp's RoPE frequency divisors of `config` (`rope_freqs.weight`, `[head_dim / 2]`): the
/// configuration's own (read from a GGUF), else for a `llama3` RoPE scaling the converter's
/// (`LlamaModel.generate_extra_tensors`): with `λ_i = 2π / θ^(-2i/d)`, 1 where `λ_i < original /
/// high_freq_factor`, `factor` where `λ_i > original / low_freq_factor`, `1 / ((1 − s) / factor + s)` with
/// `s = (original / λ_i − low) / (high − low)` between; computed in f64, stored f32. `None` without
/// scaling. Errors: those of [`LlamaConfig::rope`].
pub fn rope_freq_factors(config: &LlamaConfig) -> Result<Option<Vec<f32>>> {
    if let Some(factors) = &config.rope_freq_factors {
        return Ok(Some(factors.clone()));
    }
    let (theta, scaling) = config.rope()?;
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: original,
    } = scaling
    else {
        return Ok(None);
    };
    let dim = config.head_size();
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    Ok(Some(
        (0..dim / 2)
            .map(|i| {
                let freq = 1.0 / theta.powf((2 * i) as f64 / dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let f = if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (original / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                };
                f as f32
            })
            .collect(),
    ))
}

/// Checks that llama.cpp's loader (and [`LlamaConfig::from_gguf`]) will rebuild the same model from the
/// keys a GGUF has: no sliding window shorter than the context (the `llama` / `qwen2` / `qwen3` GGUF
/// architectures have none), no MLP biases or Llama o-only bias layouts llama.cpp does not read.
fn check_representable(config: &LlamaConfig) -> Result<()> {
    config.validate()?;
    if let Some(window) = config
        .layer_windows()?
        .into_iter()
        .flatten()
        .find(|&w| w < config.max_position_embeddings)
    {
        return Err(config_error(
            "sliding_window",
            format!(
                "{window} (< max_position_embeddings {}): llama.cpp's {} GGUF architecture has no sliding window",
                config.max_position_embeddings,
                gguf_architecture(config)?
            ),
        ));
    }
    Ok(())
}

/// Saves a Llama-family model as a GGUF v3 file laid out as llama.cpp's `convert_hf_to_gguf.py` writes
/// one, which llama.cpp-compatible runtimes, `transformers` (`gguf_file=`) and
/// [`Llama::load`](super::Llama::load) (`WeightSource::Gguf`) load.
///
/// - Metadata: `general.architecture` ([`gguf_architecture`]), `general.type`, `general.file_type`,
///   `general.quantization_version` = 2, the `general.name` / `basename` / `size_label` / `license` /
///   `tags` of a [`TokenizerSource::Gguf`] file and all its `tokenizer.*` keys (copied), or the `tokenizer.*`
///   keys converted from a [`TokenizerSource::HfDir`] folder's byte-level BPE ([`hf_bpe_to_gguf`], with
///   `vocab_size` tokens, as llama.cpp's converter writes them); `A.{vocab_size,
///   context_length, embedding_length, block_count, feed_forward_length, rope.dimension_count,
///   attention.head_count, attention.head_count_kv, attention.key_length, attention.value_length,
///   attention.layer_norm_rms_epsilon, rope.freq_base}`.
/// - Tensors: `rope_freqs.weight` first when the model has RoPE frequency factors
///   ([`rope_freq_factors`]); then every parameter under llama.cpp's name
///   ([`gguf_tensor_name`]), dimensions fastest-first, matrices as `ty` (a matrix
///   whose rows are not a multiple of 32 values is F16 in a Q8_0 file), 1-D tensors (norms, biases, q / k
///   norms) F32; for `llama` files the q / k projection rows (and biases) permuted per head
///   ([`permute_rows`], keys with the key / value head count), as the converter does.
///
/// Returns the file's size in bytes; written atomically (see [`crate::atomic`]).
///
/// # Errors
/// [`InputError::InvalidPath`] for `path`;
/// [`GgufError::Invalid`](crate::GgufError::Invalid) for a `ty` other than F32, F16, BF16, Q8_0;
/// [`InputError::Config`] naming `sliding_window` for a window shorter than the context, `vocab_size`
/// when the tokenizer's token count differs, a size beyond `u32`, and those of
/// [`LlamaConfig::validate`]; those of [`hf_bpe_to_gguf`] for [`TokenizerSource::HfDir`] (a missing
/// `tokenizer.json`, a model other than a byte-level BPE, an unknown pre-tokenizer);
/// [`WeightsError::Parameters`](crate::WeightsError::Parameters);
/// [`WeightsError::NonFinite`](crate::WeightsError::NonFinite) (nothing is written); [`Error::Io`],
/// [`Error::Torch`].
pub fn save_gguf(
    path: &Path,
    config: &LlamaConfig,
    parameters: &[(String, Tensor)],
    ty: GgmlType,
    tokenizer: TokenizerSource<'_>,
) -> Result<u64> {
    crate::atomic::check_file_target(path, "path")?;
    check_export_type(path, ty)?;
    check_representable(config)?;
    let ordered = ordered_parameters(config, parameters)?;
    check_finite(&ordered)?;
    let (source, converted) = match tokenizer {
        TokenizerSource::None => (None, None),
        TokenizerSource::Gguf(file) => (Some(file), None),
        TokenizerSource::HfDir(dir) => (None, Some(hf_bpe_to_gguf(dir, config.vocab_size)?)),
    };
    if let Some(file) = source {
        let tokens = file.get_array("tokenizer.ggml.tokens")?.len() as i64;
        if tokens != config.vocab_size {
            return Err(config_error(
                "vocab_size",
                format!(
                    "{}, but the tokenizer of {} has {tokens} tokens",
                    config.vocab_size,
                    file.path().display()
                ),
            ));
        }
    }
    let arch = gguf_architecture(config)?;
    let (theta, _) = config.rope()?;
    let head_dim = u32_value("head_dim", config.head_size())?;
    let mut w = GgufExport::new(arch, ty, source)?;
    w.hparams(vec![
        ("vocab_size", u32_value("vocab_size", config.vocab_size)?),
        (
            "context_length",
            u32_value("max_position_embeddings", config.max_position_embeddings)?,
        ),
        ("embedding_length", u32_value("hidden_size", config.hidden_size)?),
        (
            "block_count",
            u32_value("num_hidden_layers", config.num_hidden_layers)?,
        ),
        (
            "feed_forward_length",
            u32_value("intermediate_size", config.intermediate_size)?,
        ),
        ("rope.dimension_count", head_dim.clone()),
        (
            "attention.head_count",
            u32_value("num_attention_heads", config.num_attention_heads)?,
        ),
        (
            "attention.head_count_kv",
            u32_value("num_key_value_heads", config.kv_heads())?,
        ),
        ("attention.key_length", head_dim.clone()),
        ("attention.value_length", head_dim),
        (
            "attention.layer_norm_rms_epsilon",
            GgufValue::F32(config.rms_norm_eps as f32),
        ),
        ("rope.freq_base", GgufValue::F32(theta as f32)),
    ])?;
    if let Some(file) = source {
        w.copy_tokenizer(file)?;
    }
    if let Some(entries) = converted {
        w.add_tokenizer(entries)?;
    }
    let permuted = arch == "llama";
    let (heads, kv_heads) = (config.num_attention_heads, config.kv_heads());
    tch::no_grad(|| -> Result<()> {
        if let Some(factors) = rope_freq_factors(config)? {
            w.tensor("rope_freqs.weight", &Tensor::from_slice(&factors))?;
        }
        for (name, tensor) in &ordered {
            let gguf = gguf_tensor_name(name).ok_or_else(|| Error::Internal {
                what: format!(
                    "checked {} parameter `{name}` has no GGUF name",
                    config.model_type
                ),
            })?;
            let q = name.contains(".self_attn.q_proj.");
            let k = name.contains(".self_attn.k_proj.");
            match (permuted, q, k) {
                (true, true, _) => w.tensor(&gguf, &permute_rows(tensor, heads)?)?,
                (true, _, true) => w.tensor(&gguf, &permute_rows(tensor, kv_heads)?)?,
                _ => w.tensor(&gguf, tensor)?,
            }
        }
        Ok(())
    })?;
    w.write(path)
}
