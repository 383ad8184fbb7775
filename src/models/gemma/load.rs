//! The one way to build a Gemma from existing weights: [`Gemma::load`] over a [`WeightSource`] (a Hugging
//! Face folder, a GGUF file, or parameters in memory) with [`LoadOptions`] (device and dtype).
//!
//! Every source is checked against the configuration it implies: every parameter once with its shape,
//! nothing else (one [`WeightsError::Parameters`](crate::WeightsError::Parameters) listing every missing, unexpected or reshaped one); a GGUF
//! file's tensors (names, shapes, types, data extents) before the model is allocated and each dequantized
//! tensor for NaN / ±inf. Loading is all or nothing: on any error the new store is dropped and nothing is
//! returned.

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use super::config::GemmaConfig;
use super::export::ordered_parameters;
use super::model::Gemma;
use super::weights_gguf::{check_gguf_tensors, load_gguf_weights};
use super::weights_hf::load_hf_weights;
use crate::error::{Error, InputError, Result};
use crate::gguf::GgufFile;

/// Where a Gemma's configuration and weights come from.
#[derive(Debug, Clone, Copy)]
pub enum WeightSource<'a> {
    /// A Hugging Face model folder: `config.json` ([`GemmaConfig::from_file`]) and the weights in
    /// `model.safetensors`, or sharded as named by `model.safetensors.index.json` (one shard in memory at a
    /// time). `lm_head.weight` (tied) and old `rotary_emb.inv_freq` buffers are skipped.
    HfDir(&'a Path),
    /// An opened llama.cpp GGUF file (`gemma3` architecture): the configuration from its metadata
    /// ([`GemmaConfig::from_gguf`]), tensors checked by [`check_gguf_tensors`], dequantized to f32, RMSNorm
    /// weights stored as `1 + w` turned back into `w`. Keep the file for its tokenizer
    /// ([`GgufTokenizer::from_gguf`](crate::models::tokenizer::GgufTokenizer::from_gguf)).
    Gguf(&'a GgufFile),
    /// Parameters in memory by Hugging Face name (e.g. the named parameters of a trained model), for the
    /// model `config` describes. The new model holds copies (training one does not change the other).
    Parameters {
        /// The configuration the parameters belong to.
        config: &'a GemmaConfig,
        /// `(name, tensor)` pairs: every parameter of `config` exactly once, with its shape; any dtype and
        /// device (converted on copy).
        parameters: &'a [(String, Tensor)],
    },
}

impl WeightSource<'_> {
    /// The configuration the source describes, validated.
    ///
    /// # Errors
    /// [`WeightSource::HfDir`]: those of [`GemmaConfig::from_file`] (e.g. [`Error::Io`] for a missing
    /// `config.json`); [`WeightSource::Gguf`]: those of [`GemmaConfig::from_gguf`]; all: those of
    /// [`GemmaConfig::validate`].
    pub fn config(&self) -> Result<GemmaConfig> {
        let config = match self {
            WeightSource::HfDir(dir) => GemmaConfig::from_file(&dir.join("config.json"))?,
            WeightSource::Gguf(file) => GemmaConfig::from_gguf(file)?,
            WeightSource::Parameters { config, .. } => (*config).clone(),
        };
        config.validate()?;
        Ok(config)
    }
}

/// How [`Gemma::load`] places the model: on `device`, with every parameter in `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// The device of the new [`nn::VarStore`] (default CPU).
    pub device: Device,
    /// The parameters' dtype (the activation dtype): `Float` (default), `BFloat16`, `Half` or `Double`.
    pub kind: Kind,
}

impl LoadOptions {
    /// Options for `device` and `kind`.
    pub fn new(device: Device, kind: Kind) -> Self {
        Self { device, kind }
    }
}

impl Default for LoadOptions {
    /// CPU, f32.
    fn default() -> Self {
        Self::new(Device::Cpu, Kind::Float)
    }
}

impl Gemma {
    /// Builds the model `source` describes in a new [`nn::VarStore`] on `options.device`, with its
    /// parameters in `options.kind`, and copies the source's weights into it (under `no_grad`, converting
    /// each tensor to the parameter's dtype and device). Returns the store (the parameters, under their
    /// Hugging Face names) and the model.
    ///
    /// Checks, by source (all before anything is returned; on error nothing is):
    /// - every source: [`WeightSource::config`]; every parameter of the configuration present once, with
    ///   its shape, and no other tensor.
    /// - [`WeightSource::HfDir`]: with a shard index, every parameter listed in it and present in the
    ///   shard it names.
    /// - [`WeightSource::Gguf`]: [`check_gguf_tensors`] (blocks, names, shapes, types) before the model is
    ///   allocated (a corrupt size in the metadata allocates nothing); every tensor finite once converted.
    /// - [`WeightSource::Parameters`]: the parameter set is checked before the model is allocated.
    ///
    /// # Errors
    /// [`InputError::DType`] for a `kind` that is not a floating-point dtype; those of [`WeightSource::config`];
    /// [`WeightsError::Parameters`](crate::WeightsError::Parameters) naming the file (or "the given parameters") and listing the parameters
    /// missing from it, unexpected in it, of another shape (both shapes) or given twice;
    /// [`CheckpointError::Invalid`](crate::CheckpointError::Invalid) for a folder with neither `model.safetensors` nor
    /// `model.safetensors.index.json` (reason [`NO_WEIGHTS`](super::NO_WEIGHTS)), an invalid shard index
    /// or an unreadable safetensors file; [`Error::Io`] for a missing shard; those of
    /// [`check_gguf_tensors`]; [`WeightsError::NonFinite`](crate::WeightsError::NonFinite) naming the first GGUF tensor holding NaN or
    /// ±inf; [`GgufError::Invalid`](crate::GgufError::Invalid) for unreadable GGUF data; [`Error::OutOfMemory`] for a model too large to
    /// allocate; [`Error::Torch`].
    pub fn load(source: WeightSource<'_>, options: &LoadOptions) -> Result<(nn::VarStore, Self)> {
        if !matches!(
            options.kind,
            Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
        ) {
            return Err(Error::Input(InputError::DType {
                arg: "options.kind",
                expected: "Float, BFloat16, Half or Double",
                got: options.kind,
            }));
        }
        let config = source.config()?;
        // Checks that need no model come before the model is allocated.
        let mut checked = Vec::new();
        match source {
            WeightSource::Gguf(file) => {
                check_gguf_tensors(file, &config)?;
            }
            WeightSource::Parameters { parameters, .. } => {
                checked = ordered_parameters(&config, parameters, GIVEN)?;
            }
            WeightSource::HfDir(_) => {}
        }
        let mut vs = nn::VarStore::new(options.device);
        let model = Self::build(&vs.root(), &config, false)?;
        vs.set_kind(options.kind);
        match source {
            WeightSource::HfDir(dir) => load_hf_weights(&vs, dir, &config)?,
            WeightSource::Gguf(file) => load_gguf_weights(&vs, file, &config)?,
            WeightSource::Parameters { .. } => copy_parameters(&vs, &checked)?,
        }
        Ok((vs, model))
    }
}

/// Where [`WeightSource::Parameters`]' errors say a tensor was expected.
const GIVEN: &str = "the given parameters";

/// Copies checked `(name, value)` pairs into the variables of `vs` of the same name, under `no_grad`.
fn copy_parameters(vs: &nn::VarStore, parameters: &[(&str, &Tensor)]) -> Result<()> {
    let variables = vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, value) in parameters {
            let Some(variable) = variables.get(*name) else {
                return Err(Error::Internal {
                    what: format!("checked parameter `{name}` is not in the model's variable store"),
                });
            };
            variable.shallow_clone().f_copy_(value)?;
        }
        Ok(())
    })
}
