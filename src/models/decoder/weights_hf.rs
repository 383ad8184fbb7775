//! Hugging Face model folders: reading the weights (single or sharded `model.safetensors`) for every
//! family's loader with [`WeightSource::HfDir`](super::WeightSource::HfDir), and [`tokenizer_path`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{nn, Tensor};

use crate::error::{CheckpointError, Error, ParameterMismatch, Result, ShapeMismatch};

fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        ));
    }
    Tensor::read_safetensors(path).map_err(|source| {
        Error::Checkpoint(CheckpointError::Invalid {
            path: path.display().to_string(),
            reason: format!("cannot read safetensors: {source}"),
        })
    })
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// Tensors in model folders that are not parameters of the model but harmless: the LM head of a tied
/// model and RoPE buffers saved by old versions of transformers.
fn is_ignorable(name: &str, expected: &BTreeMap<String, Vec<i64>>) -> bool {
    !expected.contains_key(name) && (name == "lm_head.weight" || name.ends_with("rotary_emb.inv_freq"))
}

/// The [`CheckpointError::Invalid`](crate::CheckpointError::Invalid) reason when a directory has no weights file.
pub const NO_WEIGHTS: &str = "no model.safetensors or model.safetensors.index.json";

/// Copies the weights of the Hugging Face folder `dir` into the model variables of `vs` (built for the
/// configuration `expected_by` names, whose parameters and shapes are `expected`), under `no_grad`,
/// converting each tensor to its variable's dtype and device.
///
/// Reads `dir/model.safetensors.index.json` (sharded: its `weight_map` names each tensor's file) when
/// present, else `dir/model.safetensors`. One file is in memory at a time. `lm_head.weight` when it is no
/// parameter (tied head) and old `rotary_emb.inv_freq` buffers are skipped.
///
/// Errors: [`CheckpointError::Invalid`](crate::CheckpointError::Invalid) with reason [`NO_WEIGHTS`] when neither file exists; [`Error::Io`] /
/// [`CheckpointError::Invalid`](crate::CheckpointError::Invalid) for unreadable files; [`WeightsError::Parameters`](crate::WeightsError::Parameters) for the shard index or a file,
/// listing the parameters missing from it (expected there), its tensors that are no parameter of this
/// config (e.g. a layer beyond `num_hidden_layers`, or Gemma 2 norms in a Gemma 1 config) and those of
/// another shape (with both shapes).
pub(crate) fn load_hf_weights(
    vs: &nn::VarStore,
    dir: &Path,
    expected: &BTreeMap<String, Vec<i64>>,
    expected_by: &str,
) -> Result<()> {
    let variables = vs.variables();
    let single = dir.join("model.safetensors");
    let index_path = dir.join("model.safetensors.index.json");
    // (file, tensor names expected there), and where a missing name is reported.
    let mut plan: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(|source| Error::io(&index_path, source))?;
        let index: ShardIndex = serde_json::from_str(&text).map_err(|source| {
            Error::Checkpoint(CheckpointError::Invalid {
                path: index_path.display().to_string(),
                reason: format!("invalid shard index JSON: {source}"),
            })
        })?;
        let mut unlisted = ParameterMismatch::default();
        for name in expected.keys() {
            match index.weight_map.get(name) {
                Some(file) => plan.entry(dir.join(file)).or_default().push(name.clone()),
                None => unlisted.missing.push(name.clone()),
            }
        }
        unlisted.into_result(&index_path.display().to_string(), expected_by)?;
        for file in index.weight_map.values() {
            plan.entry(dir.join(file)).or_default();
        }
    } else if single.is_file() {
        plan.insert(single, expected.keys().cloned().collect());
    } else {
        return Err(Error::Checkpoint(CheckpointError::Invalid {
            path: dir.display().to_string(),
            reason: NO_WEIGHTS.to_string(),
        }));
    }

    let mut seen = HashSet::new();
    for (file, wanted) in &plan {
        let tensors: HashMap<String, Tensor> = read_safetensors(file)?.into_iter().collect();
        // Every mismatch of this file is reported before anything of it is copied.
        let mut mismatch = ParameterMismatch::default();
        for (name, tensor) in &tensors {
            if is_ignorable(name, expected) || seen.contains(name) {
                continue;
            }
            match expected.get(name) {
                None => mismatch.unexpected.push(name.clone()),
                Some(shape) if &tensor.size() != shape => mismatch.mismatched.push(ShapeMismatch {
                    name: name.clone(),
                    expected: shape.clone(),
                    got: tensor.size(),
                }),
                Some(_) => {}
            }
        }
        mismatch.missing = wanted
            .iter()
            .filter(|name| !tensors.contains_key(*name))
            .cloned()
            .collect();
        mismatch.into_result(&file.display().to_string(), expected_by)?;
        for (name, tensor) in &tensors {
            if is_ignorable(name, expected) || seen.contains(name) {
                continue;
            }
            let Some(variable) = variables.get(name) else {
                return Err(Error::Internal {
                    what: format!("checked parameter `{name}` is not in the model's variable store"),
                });
            };
            let mut variable = variable.shallow_clone();
            let value = tensor
                .f_to_kind(variable.kind())?
                .f_to_device(variable.device())?;
            tch::no_grad(|| variable.f_copy_(&value))?;
            seen.insert(name.clone());
        }
    }
    Ok(())
}

/// The `tokenizer.json` of a Hugging Face model folder. Errors: [`Error::Io`] when it does not exist.
pub fn tokenizer_path(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("tokenizer.json");
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
        ))
    }
}
