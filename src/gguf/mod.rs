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
//! but asking for such a tensor returns [`Error::Gguf`] naming the type and the tensor. The arithmetic
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

mod dequant;
mod types;
mod value;
mod write;

pub use types::{GgmlType, GgufValueType};
pub use value::GgufValue;
pub use write::{quantize, GgufWriter, GGUF_WRITE_VERSION, WRITABLE_TYPES};

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

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
    /// [`Error::Io`] if the file cannot be opened; [`Error::Gguf`] for a bad magic, an unsupported version
    /// (1, or a big-endian file), a truncated header, an unknown metadata value type or ggml tensor type
    /// id, counts or lengths that cannot fit in the file, a non-UTF-8 key, a duplicate key or tensor name,
    /// more than four dimensions, a row length that is not a multiple of the type's block size, an
    /// alignment that is not a power of two, or a tensor whose offset is misaligned or whose data runs past
    /// the end of the file.
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
        Error::Gguf {
            path: self.path.display().to_string(),
            reason: reason.into(),
        }
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
    /// [`Error::Gguf`] if the key is missing or its value is not a non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let value = self.required(key)?;
        value
            .as_u64()
            .ok_or_else(|| self.wrong_type(key, value, "a non-negative integer"))
    }

    /// A metadata integer of any width that fits in `i64`.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key is missing or its value is not such an integer.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        let value = self.required(key)?;
        value
            .as_i64()
            .ok_or_else(|| self.wrong_type(key, value, "an integer"))
    }

    /// A metadata number (float or integer) as `f64`.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key is missing or its value is not a number.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let value = self.required(key)?;
        value
            .as_f64()
            .ok_or_else(|| self.wrong_type(key, value, "a number"))
    }

    /// A metadata `bool`.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key is missing or its value is not a bool.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let value = self.required(key)?;
        value
            .as_bool()
            .ok_or_else(|| self.wrong_type(key, value, "a bool"))
    }

    /// A metadata string.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key is missing or its value is not a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let value = self.required(key)?;
        value
            .as_str()
            .ok_or_else(|| self.wrong_type(key, value, "a string"))
    }

    /// A metadata array's elements.
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key is missing or its value is not an array.
    pub fn get_array(&self, key: &str) -> Result<&[GgufValue]> {
        let value = self.required(key)?;
        value
            .as_array()
            .ok_or_else(|| self.wrong_type(key, value, "an array"))
    }

    /// A metadata array of strings (e.g. `tokenizer.ggml.tokens`).
    ///
    /// # Errors
    /// [`Error::Gguf`] if the key is missing or its value is not an array of strings.
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
    /// [`Error::Gguf`] if the key is missing or its value is not an array of numbers.
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
    /// [`Error::Gguf`] if the key is missing or its value is not an array of integers that fit in `i64`.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        let value = self.required(key)?;
        value
            .as_array()
            .and_then(|values| values.iter().map(GgufValue::as_i64).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.wrong_type(key, value, "an array of integers"))
    }

    /// The info of the tensor named `name`.
    ///
    /// # Errors
    /// [`Error::Gguf`] if there is no such tensor; the message lists up to five tensor names that share the
    /// longest prefix with `name`.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        match self.by_name.get(name) {
            Some(&index) => Ok(&self.tensors[index]),
            None => {
                let common = |other: &str| {
                    name.bytes()
                        .zip(other.bytes())
                        .take_while(|(a, b)| a == b)
                        .count()
                };
                let mut candidates: Vec<&str> = self.tensors.iter().map(|t| t.name.as_str()).collect();
                candidates.sort_by_key(|other| std::cmp::Reverse(common(other)));
                candidates.truncate(5);
                let listed = candidates
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                Err(self.error(format!(
                    "no tensor named `{name}` (the file has {} tensors{}{listed})",
                    self.tensors.len(),
                    if candidates.is_empty() { "" } else { ", e.g. " }
                )))
            }
        }
    }

    /// The raw bytes of a tensor's data, as stored (quantized blocks for a quantized type).
    ///
    /// # Errors
    /// [`Error::Gguf`] if there is no such tensor or the file is now shorter than its header says;
    /// [`Error::OutOfMemory`] if the [`TensorInfo::n_bytes`] bytes cannot be allocated; [`Error::Io`] if
    /// reading fails otherwise.
    pub fn tensor_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let info = self.tensor_info(name)?;
        let mut bytes = try_vec::<u8>(info.n_bytes, || {
            format!("the data of GGUF tensor `{}`", info.name)
        })?;
        let mut file = self.open_data(info)?;
        // `read_to_end` fills the reserved capacity without zeroing it first.
        (&mut file)
            .take(info.n_bytes)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        if bytes.len() as u64 != info.n_bytes {
            return Err(self.truncated_data(info));
        }
        Ok(bytes)
    }

    /// A tensor dequantized to `f32`, flattened in PyTorch (row-major) order.
    ///
    /// # Errors
    /// As [`GgufFile::tensor`] (except the kind and device checks), and [`Error::OutOfMemory`] if the
    /// `4 ·` [`TensorInfo::n_elements`] bytes of the result cannot be allocated.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.tensor_info(name)?;
        self.check_dequantizable(info)?;
        let mut out = try_vec::<f32>(info.n_elements, || {
            format!("GGUF tensor `{}` dequantized to f32", info.name)
        })?;
        self.for_each_chunk(info, |values| {
            out.extend_from_slice(values);
            Ok(())
        })?;
        Ok(out)
    }

    /// A tensor dequantized into a tch tensor of `kind` on `device`, with shape [`TensorInfo::shape`]
    /// (PyTorch order).
    ///
    /// The data is read and dequantized to f32 in chunks of 4 Mi values, each chunk converted to `kind` and
    /// copied into the output on `device`; peak host memory is the output (when on the CPU) plus about
    /// 40 MiB. Values are exactly ggml's dequantized f32 values, then rounded once to `kind` (by libtorch,
    /// round-to-nearest-even for `BFloat16` / `Half`).
    ///
    /// # Errors
    /// [`Error::DType`] if `kind` is not `Float`, `Double`, `Half` or `BFloat16`; [`Error::Gguf`] if there is
    /// no such tensor, its type cannot be dequantized (`unsupported tensor type Q2_K (id 10) for tensor
    /// …`), or the file is now shorter than its header says; [`Error::Io`] if reading fails otherwise;
    /// [`Error::OutOfMemory`] if a chunk buffer cannot be allocated; [`Error::Torch`] if libtorch fails,
    /// e.g. cannot allocate the output (on the CPU: `DefaultCPUAllocator: can't allocate memory`).
    pub fn tensor(&self, name: &str, kind: Kind, device: Device) -> Result<Tensor> {
        if !matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
            return Err(Error::DType {
                arg: "kind",
                expected: "Float, Double, Half or BFloat16",
                got: kind,
            });
        }
        let info = self.tensor_info(name)?;
        self.check_dequantizable(info)?;
        let n = info.n_elements as usize;
        if n <= CHUNK_ELEMENTS {
            // One chunk: build it directly, no separate output allocation.
            let mut result = None;
            self.for_each_chunk(info, |values| {
                result = Some(Tensor::f_from_slice(values)?);
                Ok(())
            })?;
            let flat = match result {
                Some(t) => t,
                None => Tensor::f_empty([0], (Kind::Float, Device::Cpu))?,
            };
            return Ok(flat
                .f_to_device(device)?
                .f_to_kind(kind)?
                .f_reshape(&info.shape)?);
        }
        let out = Tensor::f_empty([n as i64], (kind, device))?;
        let mut start = 0i64;
        self.for_each_chunk(info, |values| {
            let chunk = Tensor::f_from_slice(values)?;
            let mut target = out.f_narrow(0, start, values.len() as i64)?;
            target.f_copy_(&chunk)?;
            start += values.len() as i64;
            Ok(())
        })?;
        Ok(out.f_reshape(&info.shape)?)
    }

    fn check_dequantizable(&self, info: &TensorInfo) -> Result<()> {
        if info.ggml_type.is_dequantizable() {
            Ok(())
        } else {
            Err(self.error(format!(
                "unsupported tensor type {} (id {}) for tensor `{}`; supported: F32, F16, BF16, F64, Q4_0, \
                 Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K",
                info.ggml_type,
                info.ggml_type.id(),
                info.name
            )))
        }
    }

    fn open_data(&self, info: &TensorInfo) -> Result<File> {
        let mut file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        file.seek(SeekFrom::Start(self.data_offset + info.offset))
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(file)
    }

    fn truncated_data(&self, info: &TensorInfo) -> Error {
        self.error(format!(
            "truncated tensor data: `{}` needs {} bytes from offset {}, but the file ended early \
             (was it modified after opening?)",
            info.name,
            info.n_bytes,
            self.data_offset + info.offset
        ))
    }

    fn read_data(&self, file: &mut File, info: &TensorInfo, buf: &mut [u8]) -> Result<()> {
        file.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.truncated_data(info)
            } else {
                Error::io(&self.path, e)
            }
        })
    }

    /// Reads `info`'s data in chunks and hands each chunk's dequantized values, in order, to `sink`.
    fn for_each_chunk(&self, info: &TensorInfo, mut sink: impl FnMut(&[f32]) -> Result<()>) -> Result<()> {
        let ty = info.ggml_type;
        let block_size = ty.block_size() as usize;
        let block_bytes = ty.block_bytes() as usize;
        let total = info.n_elements as usize;
        let chunk_blocks = (CHUNK_ELEMENTS / block_size).max(1);
        let mut file = self.open_data(info)?;
        let chunk = chunk_blocks.min(total / block_size);
        let scratch = || format!("a dequantization chunk of GGUF tensor `{}`", info.name);
        let mut raw = try_vec::<u8>((chunk * block_bytes) as u64, scratch)?;
        raw.resize(chunk * block_bytes, 0);
        let mut values = try_vec::<f32>((chunk * block_size) as u64, scratch)?;
        values.resize(chunk * block_size, 0.0);
        let mut done = 0usize;
        while done < total {
            let blocks = chunk_blocks.min((total - done) / block_size);
            let raw = &mut raw[..blocks * block_bytes];
            let values = &mut values[..blocks * block_size];
            self.read_data(&mut file, info, raw)?;
            if !dequant::dequantize_blocks(ty, raw, values) {
                return Err(self.error(format!("unsupported tensor type {ty} for tensor `{}`", info.name)));
            }
            sink(values)?;
            done += values.len();
        }
        Ok(())
    }
}

/// Dequantizes raw ggml blocks of `ty` (e.g. from [`GgufFile::tensor_bytes`]) into `f32`.
///
/// `bytes` must hold whole blocks: its length a multiple of [`GgmlType::block_bytes`]; the result has
/// `bytes.len() / block_bytes · block_size` values.
///
/// # Errors
/// [`Error::Gguf`] (with path `<memory>`) if `ty` cannot be dequantized or `bytes` is not whole blocks;
/// [`Error::OutOfMemory`] if the result cannot be allocated.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>> {
    let error = |reason: String| Error::Gguf {
        path: "<memory>".into(),
        reason,
    };
    if !ty.is_dequantizable() {
        return Err(error(format!("unsupported tensor type {ty} (id {})", ty.id())));
    }
    let block_bytes = ty.block_bytes() as usize;
    if bytes.len() % block_bytes != 0 {
        return Err(error(format!(
            "{} bytes are not whole {ty} blocks of {block_bytes} bytes",
            bytes.len()
        )));
    }
    let n = bytes.len() / block_bytes * ty.block_size() as usize;
    let mut out = try_vec::<f32>(n as u64, || format!("{n} dequantized {ty} values"))?;
    out.resize(n, 0.0);
    dequant::dequantize_blocks(ty, bytes, &mut out);
    Ok(out)
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

/// Buffered header reading with a position, bounds checks against the file size, and typed errors.
struct HeaderReader<'a> {
    inner: BufReader<File>,
    pos: u64,
    len: u64,
    path: &'a Path,
}

impl HeaderReader<'_> {
    fn error(&self, reason: String) -> Error {
        Error::Gguf {
            path: self.path.display().to_string(),
            reason,
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn truncated(&self, needed: u64, what: &str) -> Error {
        self.error(format!(
            "truncated header: {what} needs {needed} bytes at offset {}, but the file has {} bytes",
            self.pos, self.len
        ))
    }

    /// Fails unless `count` items of at least `min_bytes` each can fit in the rest of the file.
    fn check_count(&self, count: u64, min_bytes: u64, what: &str) -> Result<()> {
        match count.checked_mul(min_bytes) {
            Some(bytes) if bytes <= self.remaining() => Ok(()),
            _ => Err(self.error(format!(
                "truncated or corrupt header: {count} {what} at offset {} cannot fit in the remaining {} bytes of the file",
                self.pos,
                self.remaining()
            ))),
        }
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let needed = buf.len() as u64;
        if needed > self.remaining() {
            return Err(self.truncated(needed, what));
        }
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.truncated(needed, what)
            } else {
                Error::io(self.path, e)
            }
        })?;
        self.pos += needed;
        Ok(())
    }

    fn bytes_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes_array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes_array(what)?))
    }

    fn string_bytes(&mut self, what: &str) -> Result<Vec<u8>> {
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(self.error(format!(
                "truncated or corrupt header: {what} claims {len} bytes at offset {}, but only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let mut buf = try_vec::<u8>(len, || format!("{what} in the header of {}", self.path.display()))?;
        buf.resize(len as usize, 0);
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    /// A key or tensor name: must be UTF-8.
    fn string(&mut self, what: &str) -> Result<String> {
        let bytes = self.string_bytes(what)?;
        String::from_utf8(bytes).map_err(|e| self.error(format!("{what} is not valid UTF-8: {e}")))
    }

    fn value(&mut self, tag: u32, key: &str, depth: u32) -> Result<GgufValue> {
        let ty = GgufValueType::from_id(tag)
            .ok_or_else(|| self.error(format!("metadata `{key}` has unknown value type {tag}")))?;
        let what = format!("the value of metadata `{key}`");
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(self.bytes_array::<1>(&what)?[0]),
            GgufValueType::I8 => GgufValue::I8(self.bytes_array::<1>(&what)?[0] as i8),
            GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::Bool => match self.bytes_array::<1>(&what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                other => return Err(self.error(format!("metadata `{key}` is a bool with byte {other}"))),
            },
            GgufValueType::String => {
                GgufValue::String(String::from_utf8_lossy(&self.string_bytes(&what)?).into_owned())
            }
            GgufValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.error(format!(
                        "metadata `{key}` nests arrays deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let elem_tag = self.u32(&format!("the element type of metadata `{key}`"))?;
                let elem = GgufValueType::from_id(elem_tag).ok_or_else(|| {
                    self.error(format!(
                        "metadata `{key}` is an array of unknown value type {elem_tag}"
                    ))
                })?;
                let count = self.u64(&format!("the length of metadata `{key}`"))?;
                self.check_count(
                    count,
                    elem.min_bytes(),
                    &format!("elements of metadata array `{key}`"),
                )?;
                let mut values = try_vec::<GgufValue>(count, || {
                    format!(
                        "metadata array `{key}` ({count} values) in {}",
                        self.path.display()
                    )
                })?;
                for _ in 0..count {
                    values.push(self.value(elem_tag, key, depth + 1)?);
                }
                GgufValue::Array { elem, values }
            }
        })
    }
}
