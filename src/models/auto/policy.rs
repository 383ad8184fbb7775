//! [`AutoPolicy`] (the trainer's model for any architecture), its writers, and [`load_tokenizer`] (the
//! tokenizer that goes with a model file).

use std::path::Path;

use tch::Kind;

use super::{AutoConfig, FamilyModel};
use crate::data::Tokenizer;
use crate::error::{DataError, Error, Result};
use crate::gguf::{GgmlType, GgufFile};
use crate::models::decoder::export::TokenizerSource;
use crate::models::decoder::{DecoderPolicy, WeightSource};
use crate::train::var_store_parameters;

/// A model of any supported architecture as the trainer's [`PolicyModel`](crate::train::PolicyModel).
pub type AutoPolicy = DecoderPolicy<super::AutoModel>;

impl DecoderPolicy<super::AutoModel> {
    /// Saves the policy's model as a Hugging Face folder with its family's writer
    /// ([`gemma::export::save_pretrained`](crate::models::gemma::export::save_pretrained),
    /// [`llama::export::save_pretrained`](crate::models::llama::export::save_pretrained)).
    ///
    /// # Errors
    /// Those of the family's writer.
    pub fn save_pretrained(&self, dir: &Path, kind: Kind, tokenizer: TokenizerSource<'_>) -> Result<()> {
        let parameters = var_store_parameters(self.var_store());
        match self.model().family() {
            FamilyModel::Gemma(m) => {
                crate::models::gemma::export::save_pretrained(dir, m.config(), &parameters, kind, tokenizer)
            }
            FamilyModel::Llama(m) => {
                crate::models::llama::export::save_pretrained(dir, m.config(), &parameters, kind, tokenizer)
            }
        }
    }

    /// Saves the policy's model as a GGUF file with its family's writer
    /// ([`gemma::export::save_gguf`](crate::models::gemma::export::save_gguf),
    /// [`llama::export::save_gguf`](crate::models::llama::export::save_gguf)). Returns the file's size.
    ///
    /// # Errors
    /// Those of the family's writer.
    pub fn save_gguf(&self, path: &Path, ty: GgmlType, tokenizer: TokenizerSource<'_>) -> Result<u64> {
        let parameters = var_store_parameters(self.var_store());
        match self.model().family() {
            FamilyModel::Gemma(m) => {
                crate::models::gemma::export::save_gguf(path, m.config(), &parameters, ty, tokenizer)
            }
            FamilyModel::Llama(m) => {
                crate::models::llama::export::save_gguf(path, m.config(), &parameters, ty, tokenizer)
            }
        }
    }
}

/// The tokenizer of a model source:
/// - a GGUF file: `tokenizer.ggml.model` `"llama"` (SentencePiece: Gemma's, or llama.cpp's for Llama 2 /
///   Mistral / TinyLlama files, by `general.architecture`) →
///   [`GgufTokenizer`](crate::models::tokenizer::GgufTokenizer); `"gpt2"` (byte-level BPE, the Llama
///   family) → [`BpeTokenizer`](crate::models::tokenizer::BpeTokenizer) (feature `bpe-tokenizer`) with the
///   file's chat template;
/// - a Hugging Face folder (feature `hf-tokenizers`): Gemma → [`gemma::load_tokenizer`](crate::models::gemma::load_tokenizer);
///   the Llama family → `tokenizer.json` with the BOS / EOS / padding tokens of `tokenizer_config.json`
///   (padding: EOS when it names none; no BOS when `add_bos_token` is not true) and the ChatML template
///   for conversational records.
///
/// # Errors
/// [`DataError::Tokenizer`] for another tokenizer model, a folder without `tokenizer.json` or
/// special tokens, or a source of parameters in memory; [`InputError::Config`](crate::InputError::Config)
/// naming the feature a source needs when it is off; those of the tokenizers' readers.
pub fn load_tokenizer(source: WeightSource<'_, AutoConfig>) -> Result<Box<dyn Tokenizer>> {
    match source {
        WeightSource::Gguf(file) => gguf_tokenizer(file),
        WeightSource::HfDir(dir) => match source.config()? {
            AutoConfig::Gemma(_) => crate::models::gemma::load_tokenizer(dir),
            AutoConfig::Llama(_) => llama_folder_tokenizer(dir),
        },
        WeightSource::Parameters { .. } => Err(Error::Data(DataError::Tokenizer(
            "parameters in memory carry no tokenizer".into(),
        ))),
    }
}

fn gguf_tokenizer(file: &GgufFile) -> Result<Box<dyn Tokenizer>> {
    match file.get_str("tokenizer.ggml.model")? {
        "llama" => Ok(Box::new(crate::models::tokenizer::GgufTokenizer::from_gguf(file)?)),
        #[cfg(feature = "bpe-tokenizer")]
        "gpt2" => Ok(Box::new(crate::models::tokenizer::BpeTokenizer::from_gguf(file)?)),
        #[cfg(not(feature = "bpe-tokenizer"))]
        "gpt2" => Err(Error::Input(crate::InputError::Config {
            name: "bpe-tokenizer",
            requirement: format!(
                "{}: a byte-level BPE (gpt2) tokenizer needs the crate feature `bpe-tokenizer`",
                file.path().display()
            ),
        })),
        other => Err(Error::Data(DataError::Tokenizer(format!(
            "{}: tokenizer.ggml.model {other:?} is not implemented (\"llama\" SentencePiece or \"gpt2\" byte-level BPE)",
            file.path().display()
        )))),
    }
}

#[cfg(feature = "hf-tokenizers")]
fn llama_folder_tokenizer(dir: &Path) -> Result<Box<dyn Tokenizer>> {
    use crate::data::{ChatTemplate, HfTokenizer, HfTokenizerConfig};
    let path = crate::models::decoder::tokenizer_path(dir)?;
    let config_path = dir.join("tokenizer_config.json");
    let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| Error::Data(DataError::Tokenizer(format!("{}: {e}", config_path.display()))))?,
        Err(_) => serde_json::Value::Null,
    };
    // A special token is a string or {"content": …}.
    let token = |key: &str| -> Option<String> {
        let value = config.get(key)?;
        value
            .as_str()
            .or_else(|| value.get("content").and_then(|c| c.as_str()))
            .map(str::to_string)
    };
    let eos = token("eos_token");
    let pad = token("pad_token").or_else(|| eos.clone()).ok_or_else(|| {
        Error::Data(DataError::Tokenizer(format!(
            "{}: names neither pad_token nor eos_token",
            config_path.display()
        )))
    })?;
    let add_bos = config.get("add_bos_token").and_then(|v| v.as_bool()) == Some(true);
    let tokenizer = HfTokenizer::from_file(
        &path,
        &HfTokenizerConfig {
            bos: token("bos_token").filter(|_| add_bos),
            eos,
            pad,
            chat_template: ChatTemplate::ChatMl,
        },
    )?;
    Ok(Box::new(tokenizer))
}

#[cfg(not(feature = "hf-tokenizers"))]
fn llama_folder_tokenizer(dir: &Path) -> Result<Box<dyn Tokenizer>> {
    Err(Error::Input(crate::InputError::Config {
        name: "hf-tokenizers",
        requirement: format!(
            "reading the tokenizer of {} needs the crate feature `hf-tokenizers` (e.g. `cargo run --features hf-tokenizers`)",
            dir.display()
        ),
    }))
}

#[cfg(feature = "lora")]
impl crate::lora::LoraPolicy<AutoPolicy> {
    /// Writes the adapters as a llama.cpp LoRA adapter GGUF for the base model's GGUF, as
    /// `LoraPolicy<GemmaPolicy>::save_gguf_adapter` (Gemma) or [`crate::models::llama::save_gguf_adapter`]
    /// (the Llama family: its tensor names, and the q / k `lora_B` rows permuted for `llama` files) do.
    /// Returns the file's size.
    ///
    /// # Errors
    /// Those of [`crate::lora::LoraAdapters::save_gguf_adapter`] and
    /// [`crate::models::llama::save_gguf_adapter`].
    pub fn save_gguf_adapter(&self, path: &Path, ty: GgmlType) -> Result<u64> {
        match self.base().model().family() {
            FamilyModel::Gemma(m) => {
                let arch = crate::models::gemma::lora::llama_cpp_architecture(m.arch());
                self.adapters()
                    .save_gguf_adapter(path, arch, crate::models::gemma::gguf_tensor_name, ty)
            }
            FamilyModel::Llama(m) => {
                crate::models::llama::save_gguf_adapter(self.adapters(), m.config(), path, ty)
            }
        }
    }
}
