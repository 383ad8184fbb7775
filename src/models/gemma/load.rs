//! The one way to build a Gemma from existing weights: [`Gemma::load`] over a [`WeightSource`] (a Hugging
//! Face folder, a GGUF file, or parameters in memory) with [`LoadOptions`] (device and dtype).
//!
//! Every source is checked against the configuration it implies: every parameter once with its shape,
//! nothing else (one [`WeightsError::Parameters`](crate::WeightsError::Parameters) listing every missing, unexpected or reshaped one); a GGUF
//! file's tensors (names, shapes, types, data extents) before the model is allocated and each dequantized
//! tensor for NaN / ±inf. Loading is all or nothing: on any error the new store is dropped and nothing is
//! returned.

use tch::nn;

use super::config::GemmaConfig;
use super::model::Gemma;
use super::weights_gguf::{check_gguf_tensors, gguf_fix};
use crate::error::Result;
use crate::models::decoder::load::{load_model, LoadPlan};
pub use crate::models::decoder::{LoadOptions, WeightFormat, WeightSource};
use crate::models::kept::DecoderInit;

impl WeightSource<'_, GemmaConfig> {
    /// The configuration the source describes, validated.
    ///
    /// # Errors
    /// [`WeightSource::HfDir`]: those of [`GemmaConfig::from_file`] (e.g. [`Error::Io`](crate::Error::Io) for a missing
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
    /// [`InputError::DType`](crate::InputError::DType) for a `kind` that is not a floating-point dtype; those of [`WeightSource::config`];
    /// [`WeightsError::Parameters`](crate::WeightsError::Parameters) naming the file (or "the given parameters") and listing the parameters
    /// missing from it, unexpected in it, of another shape (both shapes) or given twice;
    /// [`CheckpointError::Invalid`](crate::CheckpointError::Invalid) for a folder with neither `model.safetensors` nor
    /// `model.safetensors.index.json` (reason [`NO_WEIGHTS`](super::NO_WEIGHTS)), an invalid shard index
    /// or an unreadable safetensors file; [`Error::Io`](crate::Error::Io) for a missing shard; those of
    /// [`check_gguf_tensors`]; [`WeightsError::NonFinite`](crate::WeightsError::NonFinite) naming the first GGUF tensor holding NaN or
    /// ±inf; [`GgufError::Invalid`](crate::GgufError::Invalid) for unreadable GGUF data; [`Error::OutOfMemory`](crate::Error::OutOfMemory) for a model too large to
    /// allocate; [`Error::Torch`](crate::Error::Torch).
    pub fn load(
        source: WeightSource<'_, GemmaConfig>,
        options: &LoadOptions,
    ) -> Result<(nn::VarStore, Self)> {
        options.check()?;
        let config = source.config()?;
        let plan = LoadPlan {
            expected: config.parameter_shapes()?,
            expected_by: format!("the {} config", config.model_type),
            build: &|root, kept| Self::build(root, &config, DecoderInit::loading(kept)),
            check_gguf: &|file| check_gguf_tensors(file, &config),
            gguf_fix: &gguf_fix,
        };
        load_model(source, options, &plan)
    }
}

/// The tokenizer of a Hugging Face Gemma model folder (feature `train`, whose [`crate::data::Tokenizer`] it returns): its `tokenizer.json` with Gemma's special
/// tokens (`<bos>`, `<eos>`, `<pad>`) and chat template (`HfTokenizerConfig::gemma`),
/// as a `tch_rpo::data::HfTokenizer` (feature `hf-tokenizers`).
///
/// Errors: [`Error::Io`](crate::Error::Io) when `dir/tokenizer.json` does not exist; [`DataError::Tokenizer`](crate::DataError::Tokenizer) when it cannot be
/// loaded or lacks a special token; [`InputError::Config`](crate::InputError::Config) (naming the feature) when the crate was built
/// without `hf-tokenizers`.
#[cfg(feature = "train")]
pub fn load_tokenizer(dir: &std::path::Path) -> Result<Box<dyn crate::data::Tokenizer>> {
    let path = crate::models::decoder::tokenizer_path(dir)?;
    #[cfg(feature = "hf-tokenizers")]
    {
        use crate::data::{HfTokenizer, HfTokenizerConfig};
        Ok(Box::new(HfTokenizer::from_file(
            &path,
            &HfTokenizerConfig::gemma(),
        )?))
    }
    #[cfg(not(feature = "hf-tokenizers"))]
    Err(crate::Error::Input(crate::InputError::Config {
        name: "hf-tokenizers",
        requirement: format!(
            "reading {} needs the crate feature `hf-tokenizers` (e.g. `cargo run --features hf-tokenizers`)",
            path.display()
        ),
    }))
}
