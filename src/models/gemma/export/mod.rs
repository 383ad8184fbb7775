//! Saving a (trained) Gemma model for other tools: a Hugging Face folder for `transformers`
//! ([`save_pretrained`]) and a GGUF file for llama.cpp-compatible runtimes and `transformers`' GGUF loader
//! ([`save_gguf`]).
//!
//! Both take the model's configuration and its parameters by Hugging Face name (e.g. the variables of the
//! store the model was loaded into: `vs.variables().into_iter().collect::<Vec<_>>()`); every parameter the
//! configuration implies must be there once, with its shape. With the `train` feature,
//! `GemmaPolicy::save_pretrained` and `GemmaPolicy::save_gguf` do this for a trainer's policy.
//!
//! | | Hugging Face folder | GGUF file |
//! |---|---|---|
//! | architectures | Gemma 1, 2, 3 | Gemma 3 (`general.architecture` = `gemma3`) |
//! | weights | `model.safetensors`, f32 / bf16 / f16, RMSNorm weights `w` | F32 / F16 / BF16 / Q8_0 matrices, 1-D tensors (norms) F32, RMSNorm weights `1 + w` |
//! | configuration | `config.json` (every field transformers reads), `generation_config.json` | `gemma3.*` hyper-parameters |
//! | tokenizer | `tokenizer.json` + `tokenizer_config.json` built from a GGUF's tokenizer metadata, or copied from a folder | the `tokenizer.*` metadata of a GGUF |
//!
//! Both refuse parameters holding NaN or ±inf ([`WeightsError::NonFinite`](crate::WeightsError::NonFinite), whatever the format or dtype)
//! before writing anything.
//!
//! Checked by `tests/export_gemma.rs`: the saved folder and files load back here and in `transformers`
//! (logits compared), the tokenizer gives the same ids, and the GGUF reads back in the `gguf` Python package.
//!
//! ```no_run
//! use tch::{Device, Kind};
//! use tch_rpo::gguf::{GgmlType, GgufFile};
//! use tch_rpo::models::gemma::export::{save_gguf, save_pretrained, TokenizerSource};
//! use tch_rpo::models::gemma::{Gemma, LoadOptions, WeightSource};
//!
//! # fn main() -> tch_rpo::Result<()> {
//! let file = GgufFile::open("gemma-3-270m.gguf")?;
//! let (vs, model) = Gemma::load(WeightSource::Gguf(&file), &LoadOptions::new(Device::Cpu, Kind::Float))?;
//! // … train it (e.g. as a `GemmaPolicy` with tch_rpo::train::RpoTrainer) …
//! let parameters: Vec<_> = vs.variables().into_iter().collect();
//! let config = model.config();
//! save_pretrained("trained-hf".as_ref(), config, &parameters, Kind::Float, TokenizerSource::Gguf(&file))?;
//! save_gguf("trained-q8_0.gguf".as_ref(), config, &parameters, GgmlType::Q8_0, TokenizerSource::Gguf(&file))?;
//! # Ok(())
//! # }
//! ```

mod gguf;
mod hf;
mod tokenizer;

pub use gguf::{gguf_metadata, save_gguf};
pub use hf::{generation_config_json, hf_config_json, save_pretrained};
pub use tokenizer::hf_tokenizer_files;

use tch::Tensor;

use super::config::GemmaConfig;
use crate::error::Result;
pub use crate::models::decoder::export::{TokenizerSource, HF_TOKENIZER_FILES};

/// The parameters in file order (embedding, layers 0, 1, … each in a fixed order, final norm), checked
/// against `config`: every parameter once with its shape, nothing else. `what` names the parameters in
/// the errors (the `origin` of [`WeightsError::Parameters`](crate::WeightsError::Parameters), …). Used by the writers and by
/// [`WeightSource::Parameters`](super::WeightSource::Parameters).
pub(in crate::models::gemma) fn ordered_parameters<'p>(
    config: &GemmaConfig,
    parameters: &'p [(String, Tensor)],
    what: &str,
) -> Result<Vec<(&'p str, &'p Tensor)>> {
    let expected_by = format!("the {} config", config.model_type);
    crate::models::decoder::load::ordered_parameters(
        &config.parameter_shapes()?,
        &expected_by,
        parameters,
        what,
    )
}
