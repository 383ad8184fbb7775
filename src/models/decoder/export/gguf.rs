//! The llama.cpp GGUF file every family writes ([`GgufExport`]): the `general.*` keys, the family's
//! hyper-parameters, the tokenizer metadata, and the tensors (matrices in the chosen type, 1-D tensors
//! F32), laid out as llama.cpp's converter writes them.

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, GgufError, InputError, Result};
use crate::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};

/// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`) of a file whose matrices are `ty` (one of the types
/// [`check_export_type`] accepts).
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F16 => 1,
        GgmlType::Q8_0 => 7,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

/// Refuses a matrix type other than F32, F16, BF16, Q8_0: [`GgufError::Invalid`] naming `path` and `ty`.
pub(crate) fn check_export_type(path: &Path, ty: GgmlType) -> Result<()> {
    if matches!(
        ty,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
    ) {
        return Ok(());
    }
    Err(Error::Gguf(GgufError::Invalid {
        path: path.display().to_string(),
        reason: format!("cannot export matrices as {ty}; choose F32, F16, BF16 or Q8_0"),
    }))
}

/// A configuration value as a GGUF `u32`: [`InputError::Config`] naming the field when it does not fit.
pub(crate) fn u32_value(name: &'static str, value: i64) -> Result<GgufValue> {
    u32::try_from(value).map(GgufValue::U32).map_err(|_| {
        Error::Input(InputError::Config {
            name,
            requirement: format!("{value} does not fit the GGUF u32 field"),
        })
    })
}

/// A GGUF file being assembled: metadata first, then tensors, then [`GgufExport::write`].
pub(crate) struct GgufExport {
    writer: GgufWriter,
    arch: String,
    ty: GgmlType,
}

impl GgufExport {
    /// Starts a file of architecture `arch` whose matrices are `ty`: `general.architecture`,
    /// `general.type` = "model", the `general.{name, basename, size_label, license, tags}` of `source`
    /// (copied), `general.file_type`, `general.quantization_version` = 2.
    pub(crate) fn new(arch: &str, ty: GgmlType, source: Option<&GgufFile>) -> Result<Self> {
        let mut writer = GgufWriter::new();
        writer.add_metadata("general.architecture", GgufValue::String(arch.into()))?;
        writer.add_metadata("general.type", GgufValue::String("model".into()))?;
        if let Some(file) = source {
            for key in ["name", "basename", "size_label", "license", "tags"] {
                if let Some(value) = file.get(&format!("general.{key}")) {
                    writer.add_metadata(format!("general.{key}"), value.clone())?;
                }
            }
        }
        writer.add_metadata("general.file_type", GgufValue::U32(file_type(ty)))?;
        writer.add_metadata("general.quantization_version", GgufValue::U32(2))?;
        Ok(Self {
            writer,
            arch: arch.into(),
            ty,
        })
    }

    /// Adds the hyper-parameters as `<arch>.<key>`.
    pub(crate) fn hparams(&mut self, hparams: Vec<(&str, GgufValue)>) -> Result<()> {
        for (key, value) in hparams {
            self.writer.add_metadata(format!("{}.{key}", self.arch), value)?;
        }
        Ok(())
    }

    /// Copies every `tokenizer.*` key of `file`.
    pub(crate) fn copy_tokenizer(&mut self, file: &GgufFile) -> Result<()> {
        for (key, value) in file.metadata() {
            if key.starts_with("tokenizer.") {
                self.writer.add_metadata(key.clone(), value.clone())?;
            }
        }
        Ok(())
    }

    /// Adds converted tokenizer metadata (e.g. [`hf_bpe_to_gguf`](super::hf_bpe_to_gguf)'s keys).
    #[cfg(feature = "llama")]
    pub(crate) fn add_tokenizer(&mut self, entries: Vec<(String, GgufValue)>) -> Result<()> {
        for (key, value) in entries {
            self.writer.add_metadata(key, value)?;
        }
        Ok(())
    }

    /// Adds a tensor as llama.cpp's converter stores it: 1-D tensors (norms, biases, RoPE factors) as F32;
    /// matrices as the file's type, except that a matrix whose rows are not a multiple of 32 values is
    /// written as F16 in a Q8_0 file.
    pub(crate) fn tensor(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        if tensor.dim() <= 1 {
            let stored = tensor.f_to_kind(Kind::Float)?;
            return self.writer.add_tensor(name, &stored, GgmlType::F32);
        }
        let row = tensor.size().last().copied().unwrap_or(0);
        let matrix_type = if self.ty == GgmlType::Q8_0 && row % 32 != 0 {
            GgmlType::F16
        } else {
            self.ty
        };
        self.writer.add_tensor(name, tensor, matrix_type)
    }

    /// The writer, for a caller that adds the tensors itself (Gemma's export).
    #[cfg(feature = "gemma")]
    pub(crate) fn into_writer(self) -> GgufWriter {
        self.writer
    }

    /// Writes the file atomically ([`GgufWriter::write`]); returns its size in bytes.
    pub(crate) fn write(self, path: &Path) -> Result<u64> {
        self.writer.write(path)
    }
}
