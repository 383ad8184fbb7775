//! The Hugging Face folder: `config.json`, `generation_config.json`, `model.safetensors`, tokenizer files.

use std::path::Path;

use serde_json::{json, Value};
use tch::{Kind, Tensor};

use super::tokenizer::hf_tokenizer_files;
use super::{ordered_parameters, TokenizerSource};
use crate::error::Result;
use crate::models::decoder::export::{check_finite, dtype_name, write_hf_folder, SAVED};
use crate::models::gemma::config::{Activation, GemmaArch, GemmaConfig, TokenIds};

/// The `config.json` of `config` for a folder saved in `kind`: every field `transformers` reads for the
/// architecture, written out explicitly (none left to transformers' defaults), so that transformers and
/// [`GemmaConfig::from_file`] read back the same model:
///
/// - `architectures` (`GemmaForCausalLM`, `Gemma2ForCausalLM` or `Gemma3ForCausalLM`), `model_type`
///   (`gemma`, `gemma2`, `gemma3_text`), the sizes, `head_dim`, `num_key_value_heads`,
///   `hidden_activation`, `rms_norm_eps`, `max_position_embeddings`, `initializer_range`, the special
///   token ids, `tie_word_embeddings`, `attention_bias`, `dtype`;
/// - `rope_parameters` in transformers ≥ 5's form: `{"rope_type": "default", "rope_theta": θ}`, for
///   Gemma 3 one such entry per layer type (`full_attention`, `sliding_attention`);
/// - Gemma 2 / 3: `query_pre_attn_scalar`, `sliding_window`, `layer_types` (one entry per layer), both
///   soft-caps (`null` when off); Gemma 3 also `use_bidirectional_attention: false`.
///
/// # Errors
/// Those of [`GemmaConfig::validate`]; [`InputError::DType`](crate::InputError::DType) for a `kind` other than Float, BFloat16, Half.
pub fn hf_config_json(config: &GemmaConfig, kind: Kind) -> Result<Value> {
    config.validate()?;
    let arch = config.arch()?;
    let (global, local) = config.rope_bases()?;
    let rope = |theta: f64| json!({"rope_type": "default", "rope_theta": theta});
    let activation = match config.activation()? {
        Activation::GeluTanh => "gelu_pytorch_tanh",
        Activation::Gelu => "gelu",
        Activation::Silu => "silu",
    };
    let eos = match &config.eos_token_id {
        None => Value::Null,
        Some(TokenIds::One(id)) => json!(id),
        Some(TokenIds::Many(ids)) => json!(ids),
    };
    let (architecture, model_type) = match arch {
        GemmaArch::Gemma => ("GemmaForCausalLM", "gemma"),
        GemmaArch::Gemma2 => ("Gemma2ForCausalLM", "gemma2"),
        GemmaArch::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text"),
    };
    let mut out = json!({
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.kv_heads(),
        "head_dim": config.head_size(),
        "hidden_activation": activation,
        "rms_norm_eps": config.rms_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos,
        "tie_word_embeddings": true,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "use_cache": true,
        "dtype": dtype_name(kind)?,
    });
    let map = out.as_object_mut().expect("an object");
    if arch == GemmaArch::Gemma {
        // Gemma 1's config class reads `hidden_act`.
        map.insert("hidden_act".into(), json!(activation));
        map.insert("rope_parameters".into(), rope(global));
        return Ok(out);
    }
    let layer_types: Vec<&str> = config
        .layer_windows()?
        .iter()
        .map(|w| match w {
            Some(_) => "sliding_attention",
            None => "full_attention",
        })
        .collect();
    // transformers declares it an int (and checks): write whole numbers as integers.
    let scalar = config.query_pre_attn_scalar.map(|s| {
        if s.fract() == 0.0 && s.abs() < 1e15 {
            json!(s as i64)
        } else {
            json!(s)
        }
    });
    map.insert("query_pre_attn_scalar".into(), json!(scalar));
    map.insert("sliding_window".into(), json!(config.sliding_window));
    map.insert("layer_types".into(), json!(layer_types));
    map.insert(
        "final_logit_softcapping".into(),
        json!(config.final_logit_softcapping),
    );
    map.insert(
        "attn_logit_softcapping".into(),
        json!(config.attn_logit_softcapping),
    );
    if arch == GemmaArch::Gemma2 {
        map.insert("rope_parameters".into(), rope(global));
    } else {
        map.insert(
            "rope_parameters".into(),
            json!({"full_attention": rope(global), "sliding_attention": rope(local)}),
        );
        map.insert("use_bidirectional_attention".into(), json!(false));
    }
    Ok(out)
}

/// The `generation_config.json` of `config`: its BOS, EOS and padding ids (those that are set).
pub fn generation_config_json(config: &GemmaConfig) -> Value {
    crate::models::decoder::export::generation_config_json(
        config.bos_token_id,
        config.eos_token_id.as_ref(),
        config.pad_token_id,
    )
}

/// Saves a Gemma model as a Hugging Face folder that `transformers` (`AutoModelForCausalLM` /
/// `AutoTokenizer.from_pretrained(dir)`) and [`Gemma::load`](crate::models::gemma::Gemma::load) (`WeightSource::HfDir`)
/// load:
///
/// - `config.json` ([`hf_config_json`]) and `generation_config.json` ([`generation_config_json`]);
/// - `model.safetensors`: every parameter under its Hugging Face name, converted to `kind` (Float,
///   BFloat16 or Half) on the CPU; RMSNorm weights as the model holds them (`w` in `x·(1 + w)`); no
///   `lm_head.weight` (tied);
/// - the tokenizer from `tokenizer` ([`TokenizerSource`]): generated from a GGUF's metadata
///   ([`hf_tokenizer_files`]), or copied from a folder (which may be `dir` itself).
///
/// The folder is written atomically ([`crate::atomic::write_dir`]): into a temporary folder beside `dir`,
/// every file fsynced, then moved to `dir` in one step. A folder already at `dir` that holds only plain
/// files (an earlier export) is replaced as a whole — files this export does not write are not kept; one
/// holding a subfolder or a symbolic link is refused rather than deleted. A failed or killed save leaves
/// the earlier folder as it was (or no folder), never a partial one. The parent of `dir` must exist.
///
/// # Errors
/// [`InputError::InvalidPath`](crate::InputError::InvalidPath) if `dir` is empty, its parent does not exist, it is a file or a link, or it holds
/// a subfolder or a link; [`CheckpointError::Invalid`](crate::CheckpointError::Invalid) if `dir` holds a sharded checkpoint
/// (`model.safetensors.index.json`); [`WeightsError::Parameters`](crate::WeightsError::Parameters) when `parameters` do not match `config`
/// (missing, unexpected, reshaped or given twice);
/// [`WeightsError::NonFinite`](crate::WeightsError::NonFinite) for a parameter holding NaN or ±inf (nothing is written); those of
/// [`hf_config_json`] and [`hf_tokenizer_files`]; [`Error::Io`](crate::Error::Io) for a file that cannot be written or copied;
/// [`Error::Torch`](crate::Error::Torch) if libtorch fails (e.g. writing the safetensors file). Nothing is written when the
/// arguments are refused.
pub fn save_pretrained(
    dir: &Path,
    config: &GemmaConfig,
    parameters: &[(String, Tensor)],
    kind: Kind,
    tokenizer: TokenizerSource<'_>,
) -> Result<()> {
    let config_json = hf_config_json(config, kind)?;
    let ordered = ordered_parameters(config, parameters, SAVED)?;
    check_finite(&ordered)?;
    write_hf_folder(
        dir,
        &config_json,
        &generation_config_json(config),
        &ordered,
        kind,
        tokenizer,
        &hf_tokenizer_files,
    )
}
