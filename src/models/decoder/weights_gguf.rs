//! Reading llama.cpp GGUF files into a decoder's variables, for every family: the tensor check
//! ([`check_gguf`]) and the copy ([`load_gguf`]); each family supplies its naming and its per-tensor fix-up
//! (Gemma's `1 + w` norms, Llama's permuted q / k rows).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tch::{nn, Device, Kind, Tensor};

use super::load::LoadOptions;
use super::spec::config_error;
use crate::error::{Error, GgufError, ParameterMismatch, Result};
use crate::gguf::{BlockMatrix, GgmlType, GgufFile, MATRIX_TYPES, VECTOR_TYPES};
use crate::models::kept::KeptWeights;
use crate::validate::finite_weight;

/// Checks every tensor of a GGUF file against the parameters `expected` (Hugging Face name → shape),
/// reading no tensor data and allocating nothing of the model's size: the file's blocks (`blk.N.…`) are
/// exactly `layers` (`block_count_key` names the metadata key in the error); every expected parameter is
/// there under its GGUF name (`gguf_name`) with exactly its shape and an allowed type ([`VECTOR_TYPES`]
/// for 1-D tensors, [`MATRIX_TYPES`] for matrices); the file holds no other tensor except those `ignored`
/// accepts. Returns the Hugging Face name of every GGUF tensor name.
///
/// Errors: [`GgufError::Invalid`] if the blocks do not match `layers`;
/// [`WeightsError::Parameters`](crate::WeightsError::Parameters) (origin the file, `expected_by`) listing
/// the missing, unexpected and reshaped tensors; [`WeightsError::TensorType`](crate::WeightsError::TensorType);
/// [`InputError::Config`](crate::InputError::Config) for a parameter without a GGUF name.
pub(crate) fn check_gguf(
    file: &GgufFile,
    expected: &BTreeMap<String, Vec<i64>>,
    layers: i64,
    block_count_key: &str,
    expected_by: &str,
    gguf_name: &dyn Fn(&str) -> Option<String>,
    ignored: &dyn Fn(&str) -> bool,
) -> Result<HashMap<String, String>> {
    let path = file.path().display().to_string();
    // The block count first: the parameter list has an entry per layer, so a corrupt block count must not
    // be trusted before it is compared with the file.
    let blocks_seen: BTreeSet<i64> = file
        .tensors()
        .iter()
        .filter_map(|t| {
            t.name
                .strip_prefix("blk.")?
                .split_once('.')?
                .0
                .parse::<i64>()
                .ok()
        })
        .collect();
    let blocks = blocks_seen.len() as i64;
    let last = blocks_seen.last().map_or(0, |l| l.saturating_add(1));
    if blocks != layers || last != blocks {
        return Err(Error::Gguf(GgufError::Invalid {
            path,
            reason: format!(
                "{block_count_key} is {layers}, but the file's tensors belong to {blocks} blocks numbered up to {}",
                last - 1
            ),
        }));
    }
    let mut by_gguf = HashMap::with_capacity(expected.len());
    let mut gguf_shapes = BTreeMap::new();
    for (name, shape) in expected {
        let gguf = gguf_name(name)
            .ok_or_else(|| config_error("parameters", format!("{name} has no GGUF counterpart")))?;
        gguf_shapes.insert(gguf.clone(), shape.clone());
        by_gguf.insert(gguf, name.clone());
    }
    let given = file
        .tensors()
        .iter()
        .filter(|t| !ignored(&t.name))
        .map(|t| (t.name.as_str(), t.shape.clone()));
    ParameterMismatch::compare(&gguf_shapes, given).into_result(&path, expected_by)?;
    for (gguf, name) in &by_gguf {
        let shape = expected.get(name).map(Vec::as_slice).unwrap_or_default();
        let types: &[GgmlType] = if shape.len() == 1 {
            &VECTOR_TYPES
        } else {
            &MATRIX_TYPES
        };
        file.expect_tensor(gguf, shape, types)?;
    }
    Ok(by_gguf)
}

/// Copies the checked tensors `by_gguf` (GGUF name → Hugging Face name, from [`check_gguf`]) of `file`
/// into the variables of `vs`, under `no_grad`: each tensor is dequantized to f32, passed through
/// `fix(gguf_name, tensor)` (the family's layout change), converted to its variable's dtype and device, and
/// checked once for NaN / ±inf. The tensors in `kept` ([`read_kept`]) are skipped: the model holds them.
///
/// Errors: [`WeightsError::NonFinite`](crate::WeightsError::NonFinite) naming the first tensor that holds
/// NaN or ±inf once converted (nothing after it is copied); [`GgufError::Invalid`] for unreadable data;
/// [`Error::Internal`] if a parameter is not in `vs` (a bug); those of `fix`.
pub(crate) fn load_gguf(
    vs: &nn::VarStore,
    file: &GgufFile,
    by_gguf: &HashMap<String, String>,
    fix: &dyn Fn(&str, Tensor) -> Result<Tensor>,
    kept: Option<&KeptWeights>,
) -> Result<()> {
    let variables = vs.variables();
    let path = file.path().display().to_string();
    for (gguf, name) in by_gguf {
        if kept.is_some_and(|k| k.contains(name)) {
            continue;
        }
        let Some(variable) = variables.get(name) else {
            return Err(Error::Internal {
                what: format!("checked parameter `{name}` is not in the model's variable store"),
            });
        };
        let value = fix(gguf, file.tensor(gguf, Kind::Float, variable.device())?)?;
        let value = value.f_to_kind(variable.kind())?;
        finite_weight(&value, gguf, &path)?;
        let mut variable = variable.shallow_clone();
        tch::no_grad(|| variable.f_copy_(&value))?;
    }
    Ok(())
}

/// Rows dequantized at a time when a kept matrix is checked for NaN / ±inf (about 4 Mi values).
const CHECK_ELEMENTS: i64 = 1 << 22;

/// Reads every matrix (2-D parameter of `expected`) of the checked `by_gguf` tensors of `file` in its
/// blocks ([`BlockMatrix::read`]), for [`WeightFormat::KeepQuantized`](super::load::WeightFormat): rows
/// reordered as the family's `fix` reorders them (`fix` applied to the row indices `[rows, 1]`: on a
/// matrix it must only move rows, as Llama's q / k un-permutation does), and checked once for NaN / ±inf
/// after dequantization to `options.kind` (a few rows at a time).
///
/// Errors: [`WeightsError::TensorType`](crate::WeightsError::TensorType) naming a matrix whose type is not
/// kept ([`crate::gguf::KEEP_TYPES`]); [`WeightsError::NonFinite`](crate::WeightsError::NonFinite);
/// [`InputError::Config`](crate::InputError::Config) if `fix` changes a matrix other than by moving its
/// rows; those of [`GgufFile::tensor_bytes`].
pub(crate) fn read_kept(
    file: &GgufFile,
    by_gguf: &HashMap<String, String>,
    expected: &BTreeMap<String, Vec<i64>>,
    fix: &dyn Fn(&str, Tensor) -> Result<Tensor>,
    options: &LoadOptions,
) -> Result<KeptWeights> {
    let path = file.path().display().to_string();
    let mut by_name = HashMap::new();
    let mut names: Vec<(&String, &String)> = by_gguf.iter().collect();
    names.sort();
    for (gguf, name) in names {
        if expected.get(name).map_or(0, Vec::len) != 2 {
            continue;
        }
        let mut blocks = BlockMatrix::read(file, gguf)?;
        let [rows, _] = blocks.shape();
        let identity = Tensor::f_arange(rows, (Kind::Int64, Device::Cpu))?.f_unsqueeze(1)?;
        let order = fix(gguf, identity.shallow_clone())?;
        if order.size() != [rows, 1] || order.kind() != Kind::Int64 {
            return Err(config_error(
                "gguf_fix",
                format!("changes matrix `{gguf}` other than by moving rows; it cannot be kept in its blocks"),
            ));
        }
        if !order.f_equal(&identity)? {
            let order: Vec<i64> = Vec::try_from(&order.f_reshape([-1])?)?;
            blocks = blocks.permute_rows(&order)?;
        }
        let step = (CHECK_ELEMENTS / blocks.shape()[1].max(1)).max(1);
        let mut start = 0;
        while start < rows {
            let len = step.min(rows - start);
            let values = blocks.dequantize_rows(start, len, options.kind, Device::Cpu)?;
            finite_weight(&values, gguf, &path)?;
            start += len;
        }
        by_name.insert(name.clone(), blocks);
    }
    Ok(KeptWeights {
        by_name,
        kind: options.kind,
        device: options.device,
    })
}

/// The metadata of one architecture (`<arch>.<key>`) and the tokenizer (`tokenizer.ggml.<key>`) of a GGUF
/// file, read as a family's configuration needs them.
pub(crate) struct GgufMetadata<'a> {
    pub(crate) file: &'a GgufFile,
    /// `general.architecture` (the key prefix).
    pub(crate) arch: &'a str,
}

impl GgufMetadata<'_> {
    /// `<arch>.<key>` as an i64. Errors: those of [`GgufFile::get_u64`]; [`config_error`] beyond i64.
    pub(crate) fn int(&self, key: &str) -> Result<i64> {
        let arch = self.arch;
        let v = self.file.get_u64(&format!("{arch}.{key}"))?;
        i64::try_from(v)
            .map_err(|_| config_error("gguf metadata", format!("{arch}.{key} = {v} is too large")))
    }

    /// `<arch>.<key>` as an f64, when present.
    pub(crate) fn optional_f64(&self, key: &str) -> Result<Option<f64>> {
        let key = format!("{}.{key}", self.arch);
        match self.file.get(&key) {
            Some(_) => Ok(Some(self.file.get_f64(&key)?)),
            None => Ok(None),
        }
    }

    /// `tokenizer.ggml.<key>` as an i64 token id, when present.
    pub(crate) fn token_id(&self, key: &str) -> Result<Option<i64>> {
        let key = format!("tokenizer.ggml.{key}");
        match self.file.get(&key) {
            Some(_) => Ok(Some(self.file.get_i64(&key)?)),
            None => Ok(None),
        }
    }

    /// The vocabulary size: the length of `tokenizer.ggml.tokens`, else the rows of `token_embd.weight`.
    pub(crate) fn vocab_size(&self) -> Result<i64> {
        Ok(match self.file.get("tokenizer.ggml.tokens") {
            Some(_) => self.file.get_array("tokenizer.ggml.tokens")?.len() as i64,
            None => self
                .file
                .tensor_info("token_embd.weight")?
                .shape
                .first()
                .copied()
                .unwrap_or(0),
        })
    }
}
