//! One model type for every supported architecture (features `gemma` and `llama`): [`AutoConfig`] and
//! [`AutoModel`] pick the family from the file — a GGUF file's `general.architecture`, a Hugging Face
//! folder's `config.json` `model_type` — so that a program (e.g. the `rpo_gemma` example) loads, trains
//! ([`AutoPolicy`], feature `train`) and saves any of them through one path.
//!
//! | family | `model_type` (config.json) | `general.architecture` (GGUF) | model |
//! |---|---|---|---|
//! | Gemma 1 / 2 / 3 | `gemma`, `gemma2`, `gemma3_text` | `gemma3` | [`Gemma`] |
//! | Llama 3.x / SmolLM2, Qwen2 / 2.5, Qwen3, Mistral | `llama`, `qwen2`, `qwen3`, `mistral` | `llama`, `qwen2`, `qwen3` | [`Llama`] |

use std::path::Path;

use tch::nn;

use crate::error::{CheckpointError, Error, Result};
use crate::gguf::GgufFile;
use crate::models::decoder::{CausalLm, Decoder, LoadOptions, WeightSource};
use crate::models::gemma::{Gemma, GemmaConfig};
use crate::models::llama::{Llama, LlamaConfig};

/// The configuration of any supported architecture.
#[derive(Debug, Clone)]
pub enum AutoConfig {
    /// Gemma 1 / 2 / 3.
    Gemma(GemmaConfig),
    /// The Llama family (Llama, SmolLM2, Qwen2, Qwen3, Mistral).
    Llama(LlamaConfig),
}

/// Whether a `model_type` / GGUF architecture belongs to the Llama family.
fn is_llama_family(name: &str) -> bool {
    matches!(name, "llama" | "qwen2" | "qwen3" | "mistral")
}

impl AutoConfig {
    /// The configuration of a Hugging Face folder: `config.json`'s `model_type` picks the family
    /// (`llama`, `qwen2`, `qwen3`, `mistral`: [`LlamaConfig`]; anything else is read as a
    /// [`GemmaConfig`], whose errors name the supported Gemma types).
    ///
    /// # Errors
    /// [`Error::Io`] for a missing `config.json`; [`CheckpointError::Invalid`] for invalid JSON; those of
    /// [`LlamaConfig::from_file`] / [`GemmaConfig::from_file`].
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::Checkpoint(CheckpointError::Invalid {
                path: path.display().to_string(),
                reason: format!("invalid config JSON: {e}"),
            })
        })?;
        let model_type = value.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        if is_llama_family(model_type) {
            Ok(Self::Llama(LlamaConfig::from_file(&path)?))
        } else {
            Ok(Self::Gemma(GemmaConfig::from_file(&path)?))
        }
    }

    /// The configuration of a GGUF file: `general.architecture` `llama`, `qwen2`, `qwen3` →
    /// [`LlamaConfig::from_gguf`], anything else → [`GemmaConfig::from_gguf`] (whose error names the
    /// architecture when it is not Gemma's).
    ///
    /// # Errors
    /// [`GgufError::Invalid`](crate::GgufError::Invalid) without `general.architecture`; those of the
    /// family's reader.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        if is_llama_family(file.get_str("general.architecture")?) {
            Ok(Self::Llama(LlamaConfig::from_gguf(file)?))
        } else {
            Ok(Self::Gemma(GemmaConfig::from_gguf(file)?))
        }
    }
}

impl WeightSource<'_, AutoConfig> {
    /// The configuration the source describes (see [`AutoConfig::from_hf_dir`],
    /// [`AutoConfig::from_gguf`]). Errors: theirs.
    pub fn config(&self) -> Result<AutoConfig> {
        match self {
            WeightSource::HfDir(dir) => AutoConfig::from_hf_dir(dir),
            WeightSource::Gguf(file) => AutoConfig::from_gguf(file),
            WeightSource::Parameters { config, .. } => Ok((*config).clone()),
        }
    }
}

/// The model of one family inside an [`AutoModel`].
pub enum FamilyModel {
    /// Gemma 1 / 2 / 3.
    Gemma(Gemma),
    /// The Llama family.
    Llama(Llama),
}

/// A model of any supported architecture ([`Gemma`] or [`Llama`], both the shared [`Decoder`]) with its
/// [`AutoConfig`].
pub struct AutoModel {
    config: AutoConfig,
    model: FamilyModel,
}

impl From<Gemma> for AutoModel {
    fn from(model: Gemma) -> Self {
        Self {
            config: AutoConfig::Gemma(model.config().clone()),
            model: FamilyModel::Gemma(model),
        }
    }
}

impl From<Llama> for AutoModel {
    fn from(model: Llama) -> Self {
        Self {
            config: AutoConfig::Llama(model.config().clone()),
            model: FamilyModel::Llama(model),
        }
    }
}

impl AutoModel {
    /// Loads the model `source` describes with the family's loader ([`Gemma::load`], [`Llama::load`]),
    /// the family picked as [`WeightSource::config`] says.
    ///
    /// # Errors
    /// Those of [`WeightSource::config`] and of the family's loader.
    pub fn load(source: WeightSource<'_, AutoConfig>, options: &LoadOptions) -> Result<(nn::VarStore, Self)> {
        let config = source.config()?;
        match (&config, source) {
            (AutoConfig::Gemma(c), WeightSource::Parameters { parameters, .. }) => {
                let source = WeightSource::Parameters {
                    config: c,
                    parameters,
                };
                Gemma::load(source, options).map(|(vs, m)| (vs, m.into()))
            }
            (AutoConfig::Llama(c), WeightSource::Parameters { parameters, .. }) => {
                let source = WeightSource::Parameters {
                    config: c,
                    parameters,
                };
                Llama::load(source, options).map(|(vs, m)| (vs, m.into()))
            }
            (AutoConfig::Gemma(_), WeightSource::HfDir(dir)) => {
                Gemma::load(WeightSource::HfDir(dir), options).map(|(vs, m)| (vs, m.into()))
            }
            (AutoConfig::Llama(_), WeightSource::HfDir(dir)) => {
                Llama::load(WeightSource::HfDir(dir), options).map(|(vs, m)| (vs, m.into()))
            }
            (AutoConfig::Gemma(_), WeightSource::Gguf(file)) => {
                Gemma::load(WeightSource::Gguf(file), options).map(|(vs, m)| (vs, m.into()))
            }
            (AutoConfig::Llama(_), WeightSource::Gguf(file)) => {
                Llama::load(WeightSource::Gguf(file), options).map(|(vs, m)| (vs, m.into()))
            }
        }
    }

    /// The family's model.
    pub fn family(&self) -> &FamilyModel {
        &self.model
    }

    /// The configuration.
    pub fn config(&self) -> &AutoConfig {
        &self.config
    }
}

impl CausalLm for AutoModel {
    type Config = AutoConfig;

    fn decoder(&self) -> &Decoder {
        match &self.model {
            FamilyModel::Gemma(m) => m.decoder(),
            FamilyModel::Llama(m) => m.decoder(),
        }
    }

    fn decoder_mut(&mut self) -> &mut Decoder {
        match &mut self.model {
            FamilyModel::Gemma(m) => CausalLm::decoder_mut(m),
            FamilyModel::Llama(m) => CausalLm::decoder_mut(m),
        }
    }

    fn model_config(&self) -> &AutoConfig {
        &self.config
    }

    fn architecture(&self) -> String {
        match &self.model {
            FamilyModel::Gemma(m) => m.architecture(),
            FamilyModel::Llama(m) => m.architecture(),
        }
    }

    fn load_model(
        source: WeightSource<'_, AutoConfig>,
        options: &LoadOptions,
    ) -> Result<(nn::VarStore, Self)> {
        Self::load(source, options)
    }
}

#[cfg(feature = "train")]
mod policy;
#[cfg(feature = "train")]
pub use policy::{load_tokenizer, AutoPolicy};
