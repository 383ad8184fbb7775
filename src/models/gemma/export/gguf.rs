//! The GGUF file of a Gemma 3 model, laid out as llama.cpp's converter writes one.

use std::path::Path;

use tch::{Kind, Tensor};

use super::{ordered_parameters, TokenizerSource};
use crate::error::{DataError, Error, InputError, Result, WeightsError};
use crate::gguf::{GgmlType, GgufValue, GgufWriter};
use crate::models::decoder::export::{check_export_type, check_finite, u32_value, GgufExport, SAVED};
use crate::models::gemma::config::{Activation, GemmaArch, GemmaConfig};
use crate::models::gemma::weights_gguf::gguf_tensor_name;

fn config_error(name: &'static str, requirement: String) -> Error {
    Error::Input(InputError::Config { name, requirement })
}

/// Checks that the GGUF readers (llama.cpp, transformers, [`GemmaConfig::from_gguf`]) will rebuild the
/// same model from the `gemma3.*` keys: what the file cannot say must be what they assume.
fn check_representable(config: &GemmaConfig) -> Result<()> {
    config.validate()?;
    if config.arch()? != GemmaArch::Gemma3 {
        return Err(Error::Weights(WeightsError::UnsupportedArchitecture {
            found: config.model_type.clone(),
            supported: "gemma3_text (GGUF export)",
        }));
    }
    let (_, local) = config.rope_bases()?;
    if local != 1e4 {
        return Err(config_error(
            "rope_local_base_freq",
            format!("{local}: a gemma3 GGUF has no key for the sliding layers' RoPE θ; readers assume 10000"),
        ));
    }
    if config.query_pre_attn_scalar != Some(256.0) {
        return Err(config_error(
            "query_pre_attn_scalar",
            format!(
                "{:?}: a gemma3 GGUF has no key for it; readers assume 256",
                config.query_pre_attn_scalar
            ),
        ));
    }
    if config.activation()? != Activation::GeluTanh {
        return Err(config_error(
            "hidden_activation",
            "a gemma3 GGUF implies gelu with the tanh approximation".into(),
        ));
    }
    for (name, cap) in [
        ("final_logit_softcapping", config.final_logit_softcapping),
        ("attn_logit_softcapping", config.attn_logit_softcapping),
    ] {
        if let Some(cap) = cap {
            return Err(config_error(
                name,
                format!("{cap}: transformers' gemma3 GGUF loader reads no soft-cap; Gemma 3 has none"),
            ));
        }
    }
    let window = config.sliding_window.unwrap_or(0);
    let default_pattern: Vec<Option<i64>> = (0..config.num_hidden_layers)
        .map(|i| ((i + 1) % 6 != 0).then_some(window))
        .collect();
    if config.layer_windows()? != default_pattern {
        return Err(config_error(
            "layer_types",
            "a gemma3 GGUF implies every 6th layer global (5, 11, …) and the rest sliding".into(),
        ));
    }
    Ok(())
}

/// Saves a Gemma 3 model as a GGUF v3 file that llama.cpp-compatible runtimes, `transformers`
/// (`from_pretrained(dir, gguf_file=name)`) and [`Gemma::load`](crate::models::gemma::Gemma::load) (`WeightSource::Gguf`)
/// load.
///
/// - Metadata: `general.architecture` = `gemma3`, `general.type`, `general.file_type` (llama.cpp's code of
///   `ty`), `general.quantization_version` = 2; the `general.name` / `basename` / `size_label` / `license`
///   / `tags` and every `tokenizer.*` key of a [`TokenizerSource::Gguf`] file, copied; the hyper-parameters
///   `gemma3.{context_length, embedding_length, block_count, feed_forward_length, vocab_size,
///   attention.head_count, attention.head_count_kv, attention.key_length, attention.value_length,
///   attention.layer_norm_rms_epsilon, attention.sliding_window, rope.freq_base}`.
/// - Tensors: llama.cpp's names (`token_embd.weight`, `blk.N.attn_q.weight`, …, `output_norm.weight`; no
///   output head, it is tied), dimensions fastest-first; matrices as `ty` (F32, F16, BF16 or Q8_0; a
///   matrix whose rows are not a multiple of 32 values is written as F16 in a Q8_0 file, as llama.cpp's
///   converter does), 1-D tensors (the norms) as F32; every RMSNorm weight stored as `1 + w` (computed in
///   f32), the GGUF convention for Gemma.
///
/// Returns the file's size in bytes. The file is written atomically (see [`GgufWriter::write`](crate::gguf::GgufWriter::write) and
/// [`crate::atomic`]): under `path` there is only ever a complete GGUF, the earlier one or the new one.
///
/// # Errors
/// [`InputError::InvalidPath`](crate::InputError::InvalidPath) (checked first, before any conversion) if `path` is empty, its folder does not
/// exist or it is a directory; [`WeightsError::UnsupportedArchitecture`](crate::WeightsError::UnsupportedArchitecture) for a Gemma 1 / 2 configuration; [`InputError::Config`](crate::InputError::Config) for a Gemma 3
/// configuration a GGUF cannot express (sliding-layer RoPE θ ≠ 10⁴, `query_pre_attn_scalar` ≠ 256, a
/// soft-cap, another activation or layer pattern, a size beyond `u32`) or a tokenizer whose token count
/// differs from `vocab_size`; [`GgufError::Invalid`](crate::GgufError::Invalid) for a `ty` other than F32, F16, BF16, Q8_0 or a value that
/// cannot be encoded; [`DataError::Tokenizer`](crate::DataError::Tokenizer) for [`TokenizerSource::HfDir`] (converting `tokenizer.json`
/// to GGUF metadata is not implemented); [`WeightsError::Parameters`](crate::WeightsError::Parameters) when `parameters` do not match `config`
/// (missing, unexpected, reshaped or given twice); [`WeightsError::NonFinite`](crate::WeightsError::NonFinite) naming the
/// first parameter that holds NaN or ±inf, whatever `ty` (nothing is written); [`Error::Io`],
/// [`Error::Torch`].
pub fn save_gguf(
    path: &Path,
    config: &GemmaConfig,
    parameters: &[(String, Tensor)],
    ty: GgmlType,
    tokenizer: TokenizerSource<'_>,
) -> Result<u64> {
    crate::atomic::check_file_target(path, "path")?;
    check_export_type(path, ty)?;
    // The configuration first: a parameter list of another architecture is then named as such.
    check_representable(config)?;
    let ordered = ordered_parameters(config, parameters, SAVED)?;
    check_finite(&ordered)?;
    let mut w = metadata(config, ty, tokenizer)?;

    // Norm weights are materialized as 1 + w (small); matrices are read and encoded while writing.
    tch::no_grad(|| -> Result<()> {
        for (name, tensor) in &ordered {
            let gguf = gguf_tensor_name(name).ok_or_else(|| Error::Internal {
                what: format!("checked Gemma 3 parameter `{name}` has no GGUF name"),
            })?;
            if gguf.ends_with("norm.weight") {
                w.tensor(&gguf, &tensor.f_to_kind(Kind::Float)?.f_add_scalar(1.0)?)?;
            } else {
                w.tensor(&gguf, tensor)?;
            }
        }
        Ok(())
    })?;
    w.write(path)
}

/// A [`GgufWriter`] holding the metadata [`save_gguf`] writes for `config` with matrices of type `ty` and
/// the tokenizer of `tokenizer` (the `general.*`, `gemma3.*` and `tokenizer.*` keys), and no tensor yet: for
/// a program that adds the tensors itself, one at a time (e.g. weights too large to hold as f32 at once), by
/// their llama.cpp names ([`gguf_tensor_name`](crate::models::gemma::gguf_tensor_name)), norms as `1 + w`.
///
/// # Errors
/// Those of [`save_gguf`] about the configuration and the tokenizer.
pub fn gguf_metadata(
    config: &GemmaConfig,
    ty: GgmlType,
    tokenizer: TokenizerSource<'_>,
) -> Result<GgufWriter> {
    Ok(metadata(config, ty, tokenizer)?.into_writer())
}

/// The checks of the configuration and the tokenizer, and the metadata of a Gemma 3 GGUF.
fn metadata(config: &GemmaConfig, ty: GgmlType, tokenizer: TokenizerSource<'_>) -> Result<GgufExport> {
    check_representable(config)?;
    let source = match tokenizer {
        TokenizerSource::None => None,
        TokenizerSource::Gguf(file) => Some(file),
        TokenizerSource::HfDir(dir) => {
            return Err(Error::Data(DataError::Tokenizer(format!(
            "{}: a GGUF export takes its tokenizer from a GGUF file's metadata; converting a Hugging Face \
                 tokenizer folder is not implemented",
            dir.display()
        ))))
        }
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

    let mut w = GgufExport::new("gemma3", ty, source)?;
    let (global, _) = config.rope_bases()?;
    let hparams: [(&str, GgufValue); 12] = [
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
        ("vocab_size", u32_value("vocab_size", config.vocab_size)?),
        (
            "attention.head_count",
            u32_value("num_attention_heads", config.num_attention_heads)?,
        ),
        (
            "attention.head_count_kv",
            u32_value("num_key_value_heads", config.kv_heads())?,
        ),
        ("attention.key_length", u32_value("head_dim", config.head_size())?),
        (
            "attention.value_length",
            u32_value("head_dim", config.head_size())?,
        ),
        (
            "attention.layer_norm_rms_epsilon",
            GgufValue::F32(config.rms_norm_eps as f32),
        ),
        (
            "attention.sliding_window",
            u32_value("sliding_window", config.sliding_window.unwrap_or(0))?,
        ),
        ("rope.freq_base", GgufValue::F32(global as f32)),
    ];
    w.hparams(hparams.into())?;
    if let Some(file) = source {
        w.copy_tokenizer(file)?;
    }
    Ok(w)
}
