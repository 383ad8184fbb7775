//! The Hugging Face folder every family writes: `config.json`, `generation_config.json`,
//! `model.safetensors`, tokenizer files.

use std::path::Path;

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::{TokenizerSource, HF_TOKENIZER_FILES};
use crate::atomic::ExistingDir;
use crate::error::{CheckpointError, DataError, Error, Result};
use crate::gguf::GgufFile;
use crate::models::decoder::TokenIds;

pub(crate) fn checkpoint_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint(CheckpointError::Invalid {
        path: path.display().to_string(),
        reason: reason.into(),
    })
}

/// A `generation_config.json`: the BOS, EOS and padding ids that are set.
pub(crate) fn generation_config_json(bos: Option<i64>, eos: Option<&TokenIds>, pad: Option<i64>) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(id) = bos {
        out.insert("bos_token_id".into(), json!(id));
    }
    match eos {
        Some(TokenIds::One(id)) => {
            out.insert("eos_token_id".into(), json!(id));
        }
        Some(TokenIds::Many(ids)) => {
            out.insert("eos_token_id".into(), json!(ids));
        }
        None => {}
    }
    if let Some(id) = pad {
        out.insert("pad_token_id".into(), json!(id));
    }
    Value::Object(out)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| checkpoint_error(path, format!("cannot serialize: {e}")))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Writes a Hugging Face folder atomically ([`crate::atomic::write_dir`]): `config.json`,
/// `generation_config.json`, `model.safetensors` (the `ordered` parameters, already checked by the
/// caller, converted to `kind` on the CPU) and the tokenizer of `tokenizer`: for
/// [`TokenizerSource::Gguf`], the files `gguf_tokenizer` makes from the file's metadata
/// (`tokenizer.json`, `tokenizer_config.json`); for [`TokenizerSource::HfDir`], the
/// [`HF_TOKENIZER_FILES`] found there, copied.
///
/// Errors: [`InputError::InvalidPath`](crate::InputError::InvalidPath) for `dir` (see
/// [`crate::atomic::check_dir_target`]); [`CheckpointError::Invalid`] for a folder holding a sharded
/// checkpoint; [`DataError::Tokenizer`] for a tokenizer folder holding none of the files; those of
/// `gguf_tokenizer`; [`Error::Io`]; [`Error::Torch`]. Nothing is written when the arguments are refused.
pub(crate) fn write_hf_folder(
    dir: &Path,
    config_json: &Value,
    generation_json: &Value,
    ordered: &[(&str, &Tensor)],
    kind: Kind,
    tokenizer: TokenizerSource<'_>,
    gguf_tokenizer: &dyn Fn(&GgufFile) -> Result<(Value, Value)>,
) -> Result<()> {
    crate::atomic::check_dir_target(dir, "dir", ExistingDir::ReplaceFiles)?;
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        return Err(checkpoint_error(
            dir,
            "holds a sharded checkpoint (model.safetensors.index.json); save into an empty folder",
        ));
    }
    let tokenizer_files = match tokenizer {
        TokenizerSource::Gguf(file) => Some(gguf_tokenizer(file)?),
        _ => None,
    };
    let copies: Vec<&str> = match tokenizer {
        TokenizerSource::HfDir(source) => {
            let found: Vec<&str> = HF_TOKENIZER_FILES
                .into_iter()
                .filter(|name| source.join(name).is_file())
                .collect();
            if found.is_empty() {
                return Err(Error::Data(DataError::Tokenizer(format!(
                    "{} holds none of the tokenizer files {HF_TOKENIZER_FILES:?}",
                    source.display()
                ))));
            }
            found
        }
        _ => Vec::new(),
    };
    crate::atomic::write_dir(dir, "dir", ExistingDir::ReplaceFiles, |tmp| {
        write_json(&tmp.join("config.json"), config_json)?;
        write_json(&tmp.join("generation_config.json"), generation_json)?;
        let tensors = tch::no_grad(|| -> Result<Vec<(String, Tensor)>> {
            ordered
                .iter()
                .map(|(name, t)| {
                    let t = t
                        .f_detach()?
                        .f_to_device(Device::Cpu)?
                        .f_to_kind(kind)?
                        .f_contiguous()?;
                    Ok((name.to_string(), t))
                })
                .collect()
        })?;
        Tensor::write_safetensors(&tensors, tmp.join("model.safetensors"))?;
        drop(tensors);
        if let Some((tokenizer_json, tokenizer_config)) = &tokenizer_files {
            let path = tmp.join("tokenizer.json");
            let text = serde_json::to_string(tokenizer_json)
                .map_err(|e| checkpoint_error(&path, format!("cannot serialize: {e}")))?;
            std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
            write_json(&tmp.join("tokenizer_config.json"), tokenizer_config)?;
        }
        if let TokenizerSource::HfDir(source) = tokenizer {
            for name in &copies {
                let from = source.join(name);
                std::fs::copy(&from, tmp.join(name)).map_err(|e| Error::io(&from, e))?;
            }
        }
        Ok(())
    })
}
