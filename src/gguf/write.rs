//! Writing GGUF v3 files: metadata of every value type, tensors as F32, F16, BF16 or Q8_0.
//!
//! [`GgufWriter`] collects metadata and tensors, then [`GgufWriter::write`] lays the file out as
//! [`GgufFile::open`](super::GgufFile::open) and ggml read it: the header (magic, version 3, counts), the
//! metadata in insertion order, the tensor infos (dimensions fastest-varying first), zero padding to the
//! alignment, then each tensor's data at an aligned offset, each padded to the alignment. Tensors are
//! converted chunk by chunk while writing, so writing needs the file's bytes of one chunk, not a second
//! copy of the model.
//!
//! [`quantize`] is the element encoding on its own (F32, F16, BF16, Q8_0; its docs give each rule).
//!
//! A finite value whose encoding is not finite (|x| ≥ 65520 as F16, beyond the BF16 range) and a non-finite
//! value in a Q8_0 block are errors, not silent infinities.
//!
//! ```no_run
//! use tch::{Device, Kind, Tensor};
//! use tch_rpo::gguf::{GgmlType, GgufValue, GgufWriter};
//!
//! # fn main() -> tch_rpo::Result<()> {
//! let mut writer = GgufWriter::new();
//! writer.add_metadata("general.architecture", GgufValue::String("demo".into()))?;
//! let weight = Tensor::randn([64, 128], (Kind::Float, Device::Cpu)); // PyTorch order [rows, row length]
//! writer.add_tensor("w.weight", &weight, GgmlType::Q8_0)?; // stored as ne = [128, 64]
//! writer.write("demo.gguf")?;
//! # Ok(())
//! # }
//! ```

use super::{GgmlType, GgufValue, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::error::{Error, GgufError, InputError, Result};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The GGUF version [`GgufWriter`] writes.
pub const GGUF_WRITE_VERSION: u32 = 3;
/// Values converted per chunk while writing a tensor (a multiple of every block size written).
const WRITE_CHUNK: usize = 1 << 20;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: usize = 4;

/// The tensor types [`GgufWriter::add_tensor`] and [`quantize`] can produce.
pub const WRITABLE_TYPES: [GgmlType; 4] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0];

fn gguf_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Gguf(GgufError::Invalid {
        path: path.display().to_string(),
        reason: reason.into(),
    })
}

fn memory_error(reason: impl Into<String>) -> Error {
    Error::Gguf(GgufError::Invalid {
        path: "<writer>".into(),
        reason: reason.into(),
    })
}

/// IEEE single → half precision, round to nearest with ties to even. Overflow gives ±inf, NaN a quiet NaN
/// keeping the sign and the top payload bits.
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x7f_ffff;
    if exponent == 0xff {
        let nan = if mantissa != 0 {
            0x0200 | (mantissa >> 13) as u16
        } else {
            0
        };
        return sign | 0x7c00 | nan;
    }
    // The half-precision biased exponent.
    let e = exponent - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    let round = |value: u32, shift: u32| -> u32 {
        let kept = value >> shift;
        let rest = value & ((1 << shift) - 1);
        let half = 1 << (shift - 1);
        if rest > half || (rest == half && kept & 1 == 1) {
            kept + 1
        } else {
            kept
        }
    };
    if e <= 0 {
        // A half subnormal: value = m · 2^-24 with m = full >> (14 − e).
        let shift = (14 - e) as u32;
        if shift > 24 {
            return sign;
        }
        return sign | round(mantissa | 0x80_0000, shift) as u16;
    }
    // Normal: a carry out of the mantissa moves into the exponent (up to inf), as it should.
    sign | round(((e as u32) << 23) | mantissa, 13) as u16
}

/// IEEE single → bfloat16 exactly as ggml's `ggml_compute_fp32_to_bf16`.
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return ((bits >> 16) | 64) as u16;
    }
    ((bits as u64 + (0x7fff + ((bits as u64 >> 16) & 1))) >> 16) as u16
}

/// Encodes `values` as ggml type `ty`, the inverse of [`dequantize`](super::dequantize):
/// - F32: the value's bytes;
/// - F16: round to nearest, ties to even (subnormals kept, NaN stays a quiet NaN);
/// - BF16: ggml's conversion `(bits + 0x7fff + ((bits >> 16) & 1)) >> 16`, NaN forced quiet;
/// - Q8_0: ggml's `quantize_row_q8_0_ref`: blocks of 32 values, `d = amax / 127` stored as f16,
///   `q = round(x · (1 / d))` (half away from zero) as `i8`; a block of zeros has `d = 0`, `q = 0`.
///
/// # Errors
/// [`GgufError::Invalid`](crate::GgufError::Invalid) (path `<writer>`) if `ty` is not F32, F16, BF16 or Q8_0, if `values.len()` is not a
/// multiple of the block size (32 for Q8_0), if a finite value does not fit the type (F16 beyond ±65504
/// after rounding, BF16 beyond its range), or if a Q8_0 block holds NaN or ±inf; the message gives the
/// index of the first offending value.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() / ty.block_size() as usize * ty.block_bytes() as usize);
    encode_into(ty, values, 0, &mut out).map_err(memory_error)?;
    Ok(out)
}

/// Appends the encoding of `values` to `out`; `base` is the index of `values[0]` in the whole tensor (for
/// messages). Errors are plain reasons for the caller to wrap.
fn encode_into(
    ty: GgmlType,
    values: &[f32],
    base: usize,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let overflow = |i: usize, x: f32| {
        format!(
            "value {x} at index {} does not fit {ty} (it would become infinite)",
            base + i
        )
    };
    match ty {
        GgmlType::F32 => values
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        GgmlType::F16 => {
            for (i, &x) in values.iter().enumerate() {
                let h = f32_to_f16(x);
                if x.is_finite() && h & 0x7fff == 0x7c00 {
                    return Err(overflow(i, x));
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (i, &x) in values.iter().enumerate() {
                let h = f32_to_bf16(x);
                if x.is_finite() && h & 0x7fff == 0x7f80 {
                    return Err(overflow(i, x));
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
        GgmlType::Q8_0 => {
            if values.len() % 32 != 0 {
                return Err(format!("{} values are not whole Q8_0 blocks of 32", values.len()));
            }
            for (b, block) in values.chunks_exact(32).enumerate() {
                if let Some(j) = block.iter().position(|x| !x.is_finite()) {
                    return Err(format!(
                        "value {} at index {} cannot be quantized to Q8_0 (not finite)",
                        block[j],
                        base + b * 32 + j
                    ));
                }
                let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
                out.extend(block.iter().map(|&x| (x * id).round() as i8 as u8));
            }
        }
        other => {
            return Err(format!(
                "cannot write tensor type {other}; writable: F32, F16, BF16, Q8_0"
            ))
        }
    }
    Ok(())
}

/// Where a pending tensor's data comes from.
enum Source {
    /// A tch tensor (any floating kind, any device), read and encoded when the file is written.
    Tensor(Tensor),
    /// Bytes already in the tensor's ggml type.
    Bytes(Vec<u8>),
}

struct PendingTensor {
    name: String,
    /// PyTorch order (slowest first).
    shape: Vec<i64>,
    ggml_type: GgmlType,
    n_elements: u64,
    n_bytes: u64,
    source: Source,
}

/// Builds a GGUF v3 file: metadata, then tensors, then [`GgufWriter::write`].
///
/// Metadata is written in the order it was added; tensors too, each at the next offset that is a multiple
/// of the alignment (`general.alignment` if added, else 32). Tensors are given in PyTorch order and
/// written with GGUF's reversed dimension list (see the [`gguf`](super) module docs).
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    keys: HashSet<String>,
    tensors: Vec<PendingTensor>,
    names: HashSet<String>,
    alignment: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .finish()
    }
}

/// Checks that every element of an array has the declared type (recursively for nested arrays).
fn check_value(key: &str, value: &GgufValue) -> Result<()> {
    if let GgufValue::Array { elem, values } = value {
        for (i, v) in values.iter().enumerate() {
            if v.value_type() != *elem {
                return Err(memory_error(format!(
                    "metadata `{key}`: element {i} is {} but the array is declared as {elem}",
                    v.value_type()
                )));
            }
            check_value(key, v)?;
        }
    }
    Ok(())
}

impl GgufWriter {
    /// An empty writer (alignment 32).
    pub fn new() -> Self {
        Self {
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            alignment: DEFAULT_ALIGNMENT,
        }
    }

    /// The alignment the file will use.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Number of metadata entries added.
    pub fn metadata_len(&self) -> usize {
        self.metadata.len()
    }

    /// Number of tensors added.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// Adds one metadata entry. `general.alignment` also sets the file's alignment.
    ///
    /// # Errors
    /// [`GgufError::Invalid`](crate::GgufError::Invalid) (path `<writer>`) for an empty or duplicate key, an array element whose type differs
    /// from the array's declared element type, or a `general.alignment` that is not a `u32` power of two
    /// (what ggml accepts) or is added after a tensor.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: GgufValue) -> Result<()> {
        let key = key.into();
        if key.is_empty() {
            return Err(memory_error("a metadata key must not be empty"));
        }
        if self.keys.contains(&key) {
            return Err(memory_error(format!("duplicate metadata key `{key}`")));
        }
        check_value(&key, &value)?;
        if key == "general.alignment" {
            match value {
                GgufValue::U32(a) if a.is_power_of_two() => {
                    if !self.tensors.is_empty() {
                        return Err(memory_error(
                            "`general.alignment` must be added before the first tensor",
                        ));
                    }
                    self.alignment = u64::from(a);
                }
                ref other => {
                    return Err(memory_error(format!(
                        "`general.alignment` is {other:?}, expected a u32 power of two"
                    )))
                }
            }
        }
        self.keys.insert(key.clone());
        self.metadata.push((key, value));
        Ok(())
    }

    fn check_tensor(&self, name: &str, shape: &[i64], ty: GgmlType) -> Result<(u64, u64)> {
        let fail = |reason: String| memory_error(format!("tensor `{name}`: {reason}"));
        if name.is_empty() {
            return Err(memory_error("a tensor name must not be empty"));
        }
        if self.names.contains(name) {
            return Err(memory_error(format!("duplicate tensor name `{name}`")));
        }
        if shape.is_empty() || shape.len() > MAX_DIMS {
            return Err(fail(format!(
                "shape {shape:?} has {} dimensions; GGUF tensors have 1 to {MAX_DIMS}",
                shape.len()
            )));
        }
        if let Some(d) = shape.iter().find(|&&d| d < 1) {
            return Err(fail(format!(
                "shape {shape:?} has dimension {d}; each must be ≥ 1"
            )));
        }
        let row = *shape.last().unwrap_or(&1) as u64;
        if row % ty.block_size() != 0 {
            return Err(fail(format!(
                "rows of {row} values (the last dimension of {shape:?}) are not a multiple of the {ty} \
                 block size {}",
                ty.block_size()
            )));
        }
        let n_elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| fail(format!("shape {shape:?} is too large")))?;
        let n_bytes = n_elements / ty.block_size() * ty.block_bytes();
        Ok((n_elements, n_bytes))
    }

    /// Adds a tensor to be stored as `ty` (F32, F16, BF16 or Q8_0). `tensor` is in PyTorch order (shape
    /// `[…, row length]`), of any floating kind, on any device; its values are read when
    /// [`GgufWriter::write`] runs (it shares `tensor`'s storage until then), converted to f32 and encoded
    /// by [`quantize`]'s rules.
    ///
    /// # Errors
    /// [`InputError::DType`](crate::InputError::DType) if `tensor` is not `Float`, `Double`, `Half` or `BFloat16`; [`GgufError::Invalid`](crate::GgufError::Invalid) (path
    /// `<writer>`) for a type that cannot be written, an empty or duplicate name, 0 or more than 4
    /// dimensions, a dimension < 1, or a last dimension that is not a multiple of the type's block size
    /// (32 for Q8_0).
    pub fn add_tensor(&mut self, name: impl Into<String>, tensor: &Tensor, ty: GgmlType) -> Result<()> {
        let name = name.into();
        if !WRITABLE_TYPES.contains(&ty) {
            return Err(memory_error(format!(
                "tensor `{name}`: cannot write tensor type {ty}; writable: F32, F16, BF16, Q8_0"
            )));
        }
        let kind = tensor.f_kind()?;
        if !matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
            return Err(Error::Input(InputError::DType {
                arg: "tensor",
                expected: "Float, Double, Half or BFloat16",
                got: kind,
            }));
        }
        let shape = tensor.size();
        let (n_elements, n_bytes) = self.check_tensor(&name, &shape, ty)?;
        self.names.insert(name.clone());
        self.tensors.push(PendingTensor {
            name,
            shape,
            ggml_type: ty,
            n_elements,
            n_bytes,
            source: Source::Tensor(tensor.f_detach()?),
        });
        Ok(())
    }

    /// Adds a tensor whose data is already encoded as `ty` (any ggml type, e.g. bytes copied from another
    /// file with [`GgufFile::tensor_bytes`](super::GgufFile::tensor_bytes)); `shape` is in PyTorch order.
    ///
    /// # Errors
    /// [`GgufError::Invalid`](crate::GgufError::Invalid) (path `<writer>`) for an empty or duplicate name, a bad shape (as
    /// [`GgufWriter::add_tensor`]), or `bytes` of another length than the shape needs.
    pub fn add_raw_tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[i64],
        ty: GgmlType,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let name = name.into();
        let (n_elements, n_bytes) = self.check_tensor(&name, shape, ty)?;
        if bytes.len() as u64 != n_bytes {
            return Err(memory_error(format!(
                "tensor `{name}`: {} bytes given, but {ty} {shape:?} needs {n_bytes}",
                bytes.len()
            )));
        }
        self.names.insert(name.clone());
        self.tensors.push(PendingTensor {
            name,
            shape: shape.to_vec(),
            ggml_type: ty,
            n_elements,
            n_bytes,
            source: Source::Bytes(bytes),
        });
        Ok(())
    }

    /// Writes the file to `path` atomically ([`crate::atomic::write_file_at`]: a temporary file beside it,
    /// fsynced, renamed into place; a failed or killed write leaves no truncated GGUF under `path` and no
    /// temporary after a failure). Returns the file's size in bytes.
    ///
    /// # Errors
    /// [`InputError::InvalidPath`](crate::InputError::InvalidPath) before anything is written if `path` is empty, its folder does not exist or
    /// it is a directory; [`Error::Io`] if the file cannot be created, written, fsynced or renamed;
    /// [`GgufError::Invalid`](crate::GgufError::Invalid) naming the tensor and index if a value cannot be encoded (see [`quantize`]) or a
    /// tensor's element count changed since it was added; [`Error::Torch`] if reading a tensor fails.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<u64> {
        let path = path.as_ref();
        crate::atomic::write_file_at(path, "path", |tmp| self.write_to(tmp, path))
    }

    fn write_to(&self, file_path: &Path, shown: &Path) -> Result<u64> {
        let file = File::create(file_path).map_err(|e| Error::io(file_path, e))?;
        let mut out = Counted {
            inner: BufWriter::with_capacity(1 << 20, file),
            written: 0,
            path: file_path,
        };
        out.put(&GGUF_MAGIC)?;
        out.put(&GGUF_WRITE_VERSION.to_le_bytes())?;
        out.put(&(self.tensors.len() as u64).to_le_bytes())?;
        out.put(&(self.metadata.len() as u64).to_le_bytes())?;
        for (key, value) in &self.metadata {
            out.string(key)?;
            out.put(&value.value_type().id().to_le_bytes())?;
            out.value(value)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            out.string(&t.name)?;
            out.put(&(t.shape.len() as u32).to_le_bytes())?;
            for &d in t.shape.iter().rev() {
                out.put(&(d as u64).to_le_bytes())?;
            }
            out.put(&t.ggml_type.id().to_le_bytes())?;
            out.put(&offset.to_le_bytes())?;
            offset += t.n_bytes.div_ceil(self.alignment) * self.alignment;
        }
        out.pad(self.alignment)?;
        let mut buffer = Vec::new();
        for t in &self.tensors {
            let start = out.written;
            match &t.source {
                Source::Bytes(bytes) => out.put(bytes)?,
                Source::Tensor(tensor) => self.write_tensor(&mut out, t, tensor, &mut buffer, shown)?,
            }
            debug_assert_eq!(out.written - start, t.n_bytes);
            out.pad(self.alignment)?;
        }
        out.inner.flush().map_err(|e| Error::io(file_path, e))?;
        Ok(out.written)
    }

    fn write_tensor(
        &self,
        out: &mut Counted<'_>,
        t: &PendingTensor,
        tensor: &Tensor,
        buffer: &mut Vec<u8>,
        shown: &Path,
    ) -> Result<()> {
        let numel = tensor.size().iter().product::<i64>() as u64;
        if numel != t.n_elements {
            return Err(gguf_error(
                shown,
                format!(
                    "tensor `{}` has {numel} elements now but {} when it was added",
                    t.name, t.n_elements
                ),
            ));
        }
        let flat = tensor.f_reshape([-1])?;
        let mut values = vec![0f32; WRITE_CHUNK.min(numel as usize)];
        let mut start = 0usize;
        while (start as u64) < numel {
            let len = WRITE_CHUNK.min(numel as usize - start);
            let chunk = flat
                .f_narrow(0, start as i64, len as i64)?
                .f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_contiguous()?;
            chunk.f_copy_data(&mut values[..len], len)?;
            buffer.clear();
            encode_into(t.ggml_type, &values[..len], start, buffer)
                .map_err(|reason| gguf_error(shown, format!("tensor `{}`: {reason}", t.name)))?;
            out.put(buffer)?;
            start += len;
        }
        Ok(())
    }
}

/// A buffered writer that counts bytes and reports I/O errors with the path.
struct Counted<'a> {
    inner: BufWriter<File>,
    written: u64,
    path: &'a Path,
}

impl Counted<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner.write_all(bytes).map_err(|e| Error::io(self.path, e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self, alignment: u64) -> Result<()> {
        let padding = self.written.div_ceil(alignment) * alignment - self.written;
        self.put(&vec![0u8; padding as usize])
    }

    fn string(&mut self, s: &str) -> Result<()> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s.as_bytes())
    }

    /// A value without its type tag.
    fn value(&mut self, value: &GgufValue) -> Result<()> {
        match value {
            GgufValue::U8(v) => self.put(&v.to_le_bytes()),
            GgufValue::I8(v) => self.put(&v.to_le_bytes()),
            GgufValue::U16(v) => self.put(&v.to_le_bytes()),
            GgufValue::I16(v) => self.put(&v.to_le_bytes()),
            GgufValue::U32(v) => self.put(&v.to_le_bytes()),
            GgufValue::I32(v) => self.put(&v.to_le_bytes()),
            GgufValue::U64(v) => self.put(&v.to_le_bytes()),
            GgufValue::I64(v) => self.put(&v.to_le_bytes()),
            GgufValue::F32(v) => self.put(&v.to_le_bytes()),
            GgufValue::F64(v) => self.put(&v.to_le_bytes()),
            GgufValue::Bool(v) => self.put(&[u8::from(*v)]),
            GgufValue::String(s) => self.string(s),
            GgufValue::Array { elem, values } => {
                self.put(&elem.id().to_le_bytes())?;
                self.put(&(values.len() as u64).to_le_bytes())?;
                // Nested arrays: each element writes its own element tag and length.
                for v in values {
                    self.value(v)?;
                }
                Ok(())
            }
        }
    }
}
