//! GGUF files: header, metadata, tensor infos, and tensors dequantized into tch tensors (feature `gguf`).
//!
//! [GGUF](https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) is the single-file model format of
//! ggml / llama.cpp: a little-endian header (magic `GGUF`, version, tensor count, metadata key/value
//! pairs, tensor infos), padding to the file's alignment, then the tensor data. This module reads
//! versions 2 and 3, and writes version 3 ([`GgufWriter`]: F32, F16, BF16 and Q8_0 tensors).
//!
//! * [`GgufFile::open`] reads and checks the whole header with buffered I/O (typed metadata, every tensor's
//!   shape, type and byte range) but no tensor data; counts and lengths read from the header are checked
//!   against the file size before anything is allocated, so a corrupt file gives an error, not a huge
//!   allocation or a panic.
//! * The tensors' data must be laid out as ggml lays it out and requires: in file order, back to back, each
//!   at the end of the previous one's data padded to the alignment. A type or dimension changed in the
//!   header changes a tensor's byte size and so moves the next tensor off its place: the file is refused
//!   instead of other bytes being read as weights.
//! * [`GgufFile::expect_tensor`] checks one tensor's shape and type against what a model expects
//!   ([`MATRIX_TYPES`], [`VECTOR_TYPES`]); the Gemma loader checks every tensor so before building the model.
//! * Every host buffer is allocated fallibly (`try_reserve`): a valid file whose tensor does not fit in the
//!   memory available (or under a memory limit) gives [`Error::OutOfMemory`], not an aborted process.
//! * [`GgufFile::tensor`] reads one tensor's bytes on demand (`seek` + `read_exact`, in chunks of about
//!   16 MiB of output) and dequantizes them into a tch tensor of the requested floating kind on the requested
//!   device, in PyTorch dimension order.
//!
//! # Dimension order
//! GGUF lists a tensor's dimensions fastest-varying first (`ne[0]` is the row length); the data is laid out
//! exactly like a C-contiguous PyTorch tensor whose shape is the reversed list. [`TensorInfo::shape`] is
//! already reversed: a `[vocab, hidden]` embedding matrix stored as `ne = [hidden, vocab]` has
//! `shape == [vocab, hidden]`.
//!
//! # Types
//! Dequantized: F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K
//! ([`GgmlType::is_dequantizable`]). Files with other known ggml types open fine (their layout is checked)
//! but asking for such a tensor returns [`GgufError::Invalid`] naming the type and the tensor. The arithmetic
//! matches ggml's reference dequantization bit for bit (see `tests/gguf.rs`, which compares against the
//! `gguf` Python package).
//!
//! # Example
//! ```no_run
//! use tch::{Device, Kind};
//! use tch_rpo::gguf::GgufFile;
//!
//! # fn main() -> tch_rpo::Result<()> {
//! let file = GgufFile::open("gemma-3-270m-it-Q4_K_M.gguf")?;
//! println!("{} v{}", file.get_str("general.architecture")?, file.version());
//! let layers = file.get_u64("gemma3.block_count")?;
//! for info in file.tensors().iter().take(3) {
//!     println!("{} {:?} {}", info.name, info.shape, info.ggml_type);
//! }
//! let embedding = file.tensor("token_embd.weight", Kind::BFloat16, Device::Cpu)?; // [vocab, hidden]
//! # let _ = (layers, embedding);
//! # Ok(())
//! # }
//! ```

mod blocks;
mod check;
mod dequant;
mod header;
mod read;
mod types;
mod value;
mod write;

pub use blocks::{BlockMatrix, KEEP_TYPES};
pub use check::{MATRIX_TYPES, VECTOR_TYPES};
pub use read::dequantize;
pub use types::{GgmlType, GgufValueType};
pub use value::GgufValue;
pub use write::{quantize, GgufWriter, GGUF_WRITE_VERSION, WRITABLE_TYPES};

use crate::error::{Error, GgufError, Result};
use header::HeaderReader;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// The file magic, `"GGUF"`.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The alignment of the data section and of every tensor's offset when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Dequantization works in chunks of this many output values (16 MiB of f32), so reading a tensor needs
/// the output tensor plus about 16 MiB of scratch, not a second full-size copy.
const CHUNK_ELEMENTS: usize = 1 << 22;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays nested deeper than this are rejected (ggml itself writes none).
const MAX_ARRAY_DEPTH: u32 = 8;

/// One tensor's entry in the GGUF header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (e.g. `blk.0.attn_q.weight`).
    pub name: String,
    /// The shape in PyTorch order (slowest-varying first): the reverse of the GGUF dimension list.
    pub shape: Vec<i64>,
    /// The element type.
    pub ggml_type: GgmlType,
    /// Byte offset of the data from the start of the data section ([`GgufFile::data_offset`]).
    pub offset: u64,
    /// Number of elements (the product of `shape`).
    pub n_elements: u64,
    /// Number of bytes of data (`n_elements / block_size · block_bytes`).
    pub n_bytes: u64,
}

/// An open GGUF file: its header in memory, its tensor data left on disk until asked for.
///
/// Cheap to keep around; every tensor read opens the file anew, so a `&GgufFile` can be shared between
/// threads.
#[derive(Debug, Clone)]
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
}

impl GgufFile {
    /// Opens `path` and reads its header: magic, version (2 or 3), metadata, tensor infos.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be opened; [`GgufError::Invalid`] for a bad magic, an unsupported version
    /// (1, or a big-endian file), a truncated header, an unknown metadata value type or ggml tensor type
    /// id, counts or lengths that cannot fit in the file, a non-UTF-8 key, a duplicate key or tensor name,
    /// more than four dimensions, a row length that is not a multiple of the type's block size, an
    /// alignment that is not a power of two, a tensor whose offset is misaligned or whose data runs past
    /// the end of the file, or tensors not laid out back to back as ggml requires (in file order, each at
    /// the end of the previous one's data padded to the alignment, the first at offset 0; llama.cpp refuses
    /// such files too), which also rules out overlapping tensors.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let mut reader = HeaderReader {
            inner: BufReader::with_capacity(1 << 16, file),
            pos: 0,
            len: file_len,
            path: &path,
        };

        let magic = reader.bytes_array::<4>("the magic")?;
        if magic != GGUF_MAGIC {
            return Err(reader.error(format!(
                "not a GGUF file: magic is {magic:02x?} ({:?}), expected \"GGUF\"",
                String::from_utf8_lossy(&magic)
            )));
        }
        let version = reader.u32("the version")?;
        if !(version == 2 || version == 3) {
            let hint = if matches!(version.swap_bytes(), 2 | 3) {
                " (a big-endian GGUF file; only little-endian files are supported)"
            } else if version == 1 {
                " (GGUF v1 is obsolete; convert the file again with a current llama.cpp)"
            } else {
                ""
            };
            return Err(reader.error(format!(
                "unsupported GGUF version {version}{hint}: expected 2 or 3"
            )));
        }
        let n_tensors = reader.u64("the tensor count")?;
        let n_kv = reader.u64("the metadata count")?;
        // Smallest possible entries: a key/value pair is a string length + a type tag + 1 byte; a tensor
        // info is a name length + a dimension count + a type + an offset.
        reader.check_count(n_kv, 8 + 4 + 1, "metadata entries")?;
        reader.check_count(n_tensors, 8 + 4 + 4 + 8, "tensor infos")?;

        let mut metadata = BTreeMap::new();
        for index in 0..n_kv {
            let key = reader.string(&format!("the key of metadata entry {index}"))?;
            let tag = reader.u32(&format!("the type of metadata `{key}`"))?;
            let value = reader.value(tag, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(reader.error(format!("duplicate metadata key `{key}`")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(value) => match value.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(reader.error(format!(
                        "`general.alignment` is {value:?}, expected a power of two (an unsigned integer)"
                    )))
                }
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16) as usize);
        let mut by_name = HashMap::new();
        for index in 0..n_tensors {
            let name = reader.string(&format!("the name of tensor {index}"))?;
            let n_dims = reader.u32(&format!("the dimension count of tensor `{name}`"))?;
            if n_dims > MAX_DIMS {
                return Err(reader.error(format!(
                    "tensor `{name}` has {n_dims} dimensions; ggml tensors have at most {MAX_DIMS}"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(reader.u64(&format!("dimension {d} of tensor `{name}`"))?);
            }
            let type_id = reader.u32(&format!("the type of tensor `{name}`"))?;
            let offset = reader.u64(&format!("the data offset of tensor `{name}`"))?;
            let ggml_type = GgmlType::from_id(type_id)
                .ok_or_else(|| reader.error(format!("tensor `{name}` has unknown ggml type id {type_id}")))?;
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| reader.error(format!("tensor `{name}` has absurd dimensions {dims:?}")))?;
            let row = dims.first().copied().unwrap_or(1);
            if row % ggml_type.block_size() != 0 {
                return Err(reader.error(format!(
                    "tensor `{name}` ({ggml_type}) has rows of {row} values, not a multiple of the block size {}",
                    ggml_type.block_size()
                )));
            }
            let n_bytes = (n_elements / ggml_type.block_size())
                .checked_mul(ggml_type.block_bytes())
                .ok_or_else(|| reader.error(format!("tensor `{name}` has absurd dimensions {dims:?}")))?;
            if offset % alignment != 0 {
                return Err(reader.error(format!(
                    "tensor `{name}` has data offset {offset}, not a multiple of the alignment {alignment}"
                )));
            }
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(reader.error(format!("duplicate tensor name `{name}`")));
            }
            let shape = dims.iter().rev().map(|&d| d as i64).collect();
            tensors.push(TensorInfo {
                name,
                shape,
                ggml_type,
                offset,
                n_elements,
                n_bytes,
            });
        }

        let header_end = reader.pos;
        let data_offset = header_end.div_ceil(alignment) * alignment;
        for info in &tensors {
            let end = data_offset
                .checked_add(info.offset)
                .and_then(|start| start.checked_add(info.n_bytes));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(reader.error(format!(
                        "truncated file or bad offset: tensor `{}` ({}, {} bytes) spans bytes {}..{} of the \
                         file, which has {file_len} bytes",
                        info.name,
                        info.ggml_type,
                        info.n_bytes,
                        data_offset as u128 + info.offset as u128,
                        data_offset as u128 + info.offset as u128 + info.n_bytes as u128,
                    )))
                }
            }
        }

        check::check_layout(&tensors, alignment).map_err(|reason| reader.error(reason))?;

        Ok(GgufFile {
            path,
            version,
            metadata,
            tensors,
            by_name,
            alignment,
            data_offset,
            file_len,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of the data section and tensor offsets (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The absolute file offset of the data section (the end of the header, rounded up to the alignment).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The file's size in bytes when it was opened.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// One metadata value, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Whether a tensor named `name` exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Gguf(GgufError::Invalid {
            path: self.path.display().to_string(),
            reason: reason.into(),
        })
    }

    fn required(&self, key: &str) -> Result<&GgufValue> {
        self.metadata
            .get(key)
            .ok_or_else(|| self.error(format!("metadata key `{key}` is missing")))
    }

    fn wrong_type(&self, key: &str, value: &GgufValue, expected: &str) -> Error {
        let got = match value {
            GgufValue::Array { elem, values } => format!("an array of {} {elem}", values.len()),
            other => format!("{} {other:?}", other.value_type()),
        };
        self.error(format!("metadata key `{key}` is {got}, expected {expected}"))
    }

    /// A metadata integer ≥ 0 of any width.
    ///
    /// # Errors
    /// [`GgufError::Invalid`] if the key is missing or its value is not a non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let value = self.required(key)?;
        value
            .as_u64()
            .ok_or_else(|| self.wrong_type(key, value, "a non-negative integer"))
    }

    /// A metadata integer of any width that fits in `i64`.
    ///
    /// # Errors
    /// [`GgufError::Invalid`] if the key is missing or its value is not such an integer.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        let value = self.required(key)?;
        value
            .as_i64()
            .ok_or_else(|| self.wrong_type(key, value, "an integer"))
    }

    /// A metadata number (float or integer) as `f64`.
    ///
    /// # Errors
    /// [`GgufError::Invalid`] if the key is missing or its value is not a number.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let value = self.required(key)?;
        value
            .as_f64()
            .ok_or_else(|| self.wrong_type(key, value, "a number"))
    }

    /// A metadata `bool`.
    ///
    /// # Errors
    /// [`GgufError::Invalid`] if the key is missing or its value is not a bool.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let value = self.required(key)?;
        value
            .as_bool()
            .ok_or_else(|| self.wrong_type(key, value, "a bool"))
    }

    /// A metadata string.
    ///
    /// # Errors
    /// [`GgufError::Invalid`] if the key is missing or its value is not a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let value = self.required(key)?;
        value
            .as_str()
            .ok_or_else(|| self.wrong_type(key, value, "a string"))
    }

    /// A metadata array's elements.
    ///
    /// # Errors
    /// [`GgufError::Invalid`] if the key is missing or its value is not an array.
    pub fn get_array(&self, key: &str) -> Result<&[GgufValue]> {
        let value = self.required(key)?;
        value
            .as_array()
            .ok_or_else(|| self.wrong_type(key, value, "an array"))
    }

    /// A metadata array of strings (e.g. `tokenizer.ggml.tokens`).
    ///
    /// # Errors
    /// [`GgufError::Invalid`] if the key is missing or its value is not an array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let value = self.required(key)?;
        value
            .as_array()
            .and_then(|values| values.iter().map(GgufValue::as_str).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.wrong_type(key, value, "an array of strings"))
    }

    /// A metadata array of numbers as `f32` (e.g. `tokenizer.ggml.scores`); integers and f64 are converted
    /// with `as f32`.
    ///
    /// # Errors
    /// [`GgufError::Invalid`] if the key is missing or its value is not an array of numbers.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        let value = self.required(key)?;
        value
            .as_array()
            .and_then(|values| {
                values
                    .iter()
                    .map(|v| v.as_f64().map(|x| x as f32))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| self.wrong_type(key, value, "an array of numbers"))
    }

    /// A metadata array of integers as `i64` (e.g. `tokenizer.ggml.token_type`).
    ///
    /// # Errors
    /// [`GgufError::Invalid`] if the key is missing or its value is not an array of integers that fit in `i64`.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        let value = self.required(key)?;
        value
            .as_array()
            .and_then(|values| values.iter().map(GgufValue::as_i64).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.wrong_type(key, value, "an array of integers"))
    }
}

/// An empty vector with room for exactly `len` values, or [`Error::OutOfMemory`] (naming `what()`) when the
/// allocator refuses or `len` does not fit in `usize`: a memory limit gives an error, not an abort.
fn try_vec<T>(len: u64, what: impl FnOnce() -> String) -> Result<Vec<T>> {
    let oom = |what: String| Error::OutOfMemory {
        what,
        bytes: len.saturating_mul(std::mem::size_of::<T>() as u64),
    };
    let len = match usize::try_from(len) {
        Ok(len) => len,
        Err(_) => return Err(oom(what())),
    };
    let mut out = Vec::new();
    match out.try_reserve_exact(len) {
        Ok(()) => Ok(out),
        Err(_) => Err(oom(what())),
    }
}
