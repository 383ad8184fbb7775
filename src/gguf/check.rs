//! Checks of a GGUF file's tensors beyond parsing: the data layout ggml requires, and a tensor's name, type
//! and shape against what a model expects.

use super::{GgmlType, GgufFile, TensorInfo};
use crate::error::{Error, ParameterMismatch, Result, ShapeMismatch, WeightsError};

/// The types a weight matrix (2 or more dimensions) may be stored in for a model this crate loads: every
/// type [`GgufFile::tensor`] dequantizes (F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
/// Q6_K). llama.cpp's files store matrices in any of these (Gemma 3 270M Q4_K_M: Q4_K, Q5_0, Q6_K, Q8_0).
pub const MATRIX_TYPES: [GgmlType; 12] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F64,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The types a 1-D weight (a norm weight) may be stored in: F32 only. llama.cpp's converter and
/// `llama-quantize` store every 1-D tensor as F32 whatever the file's type, as does
/// [`save_gguf`](crate::models::gemma::export::save_gguf); any other type in that place means the type field
/// was changed and other bytes would be read as weights.
pub const VECTOR_TYPES: [GgmlType; 1] = [GgmlType::F32];

/// Checks that the tensors are laid out as ggml lays them out and requires when it reads a file
/// (`gguf_init_from_file`): in file order, each tensor's offset is the end of the previous one's data
/// rounded up to the alignment (the first at 0). So no two tensors overlap, none leaves a gap, and a type or
/// dimension changed in the header (which changes a tensor's byte size) moves every later tensor off its
/// place. Returns the reason for the first tensor out of place.
pub(super) fn check_layout(tensors: &[TensorInfo], alignment: u64) -> std::result::Result<(), String> {
    let mut expected = 0u64;
    for info in tensors {
        if info.offset != expected {
            return Err(format!(
                "tensor `{}` ({}, {:?}, {} bytes) has data offset {}, but ggml's layout puts it at {expected} \
                 (the end of the previous tensor's data, padded to the alignment {alignment}): a type, a \
                 dimension or an offset in the header is wrong",
                info.name,
                info.ggml_type,
                info.shape,
                info.n_bytes,
                info.offset
            ));
        }
        expected = info
            .n_bytes
            .div_ceil(alignment)
            .checked_mul(alignment)
            .and_then(|padded| expected.checked_add(padded))
            .ok_or_else(|| format!("tensor `{}` ends beyond 2^64 bytes", info.name))?;
    }
    Ok(())
}

impl GgufFile {
    /// The info of tensor `name`, checked against what a model expects: shape `shape` (PyTorch order,
    /// exactly) and a type among `types` (e.g. [`MATRIX_TYPES`] or [`VECTOR_TYPES`]). The data's extent
    /// (aligned, inside the file, back to back with the other tensors) was checked by [`GgufFile::open`].
    ///
    /// # Errors
    /// [`WeightsError::Parameters`] if the file has no such tensor or it has another shape;
    /// [`WeightsError::TensorType`] for a type not in `types`.
    pub fn expect_tensor(&self, name: &str, shape: &[i64], types: &[GgmlType]) -> Result<&TensorInfo> {
        let file = || self.path.display().to_string();
        let mismatch = match self.by_name.get(name) {
            None => ParameterMismatch {
                missing: vec![name.to_string()],
                ..ParameterMismatch::default()
            },
            Some(&index) if self.tensors[index].shape != shape => ParameterMismatch {
                mismatched: vec![ShapeMismatch {
                    name: name.to_string(),
                    expected: shape.to_vec(),
                    got: self.tensors[index].shape.clone(),
                }],
                ..ParameterMismatch::default()
            },
            Some(_) => ParameterMismatch::default(),
        };
        mismatch.into_result(&file(), "the expected tensors")?;
        let info = &self.tensors[self.by_name[name]];
        if !types.contains(&info.ggml_type) {
            let expected = types.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ");
            return Err(Error::Weights(WeightsError::TensorType {
                name: name.to_string(),
                file: file(),
                expected: if types.len() == 1 {
                    expected
                } else {
                    format!("one of {expected}")
                },
                got: info.ggml_type.name().to_string(),
            }));
        }
        Ok(info)
    }
}
