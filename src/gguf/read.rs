//! Reading tensor data: bytes on demand, dequantized into tch tensors in chunks.

use super::{dequant, try_vec, GgmlType, GgufFile, TensorInfo, CHUNK_ELEMENTS};
use crate::error::{Error, GgufError, InputError, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use tch::{Device, Kind, Tensor};

impl GgufFile {
    /// The info of the tensor named `name`.
    ///
    /// # Errors
    /// [`GgufError::Invalid`] if there is no such tensor; the message lists up to five tensor names that share the
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
    /// [`GgufError::Invalid`] if there is no such tensor or the file is now shorter than its header says;
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
    /// [`InputError::DType`] if `kind` is not `Float`, `Double`, `Half` or `BFloat16`; [`GgufError::Invalid`] if there is
    /// no such tensor, its type cannot be dequantized (`unsupported tensor type Q2_K (id 10) for tensor
    /// …`), or the file is now shorter than its header says; [`Error::Io`] if reading fails otherwise;
    /// [`Error::OutOfMemory`] if a chunk buffer cannot be allocated; [`Error::Torch`] if libtorch fails,
    /// e.g. cannot allocate the output (on the CPU: `DefaultCPUAllocator: can't allocate memory`).
    pub fn tensor(&self, name: &str, kind: Kind, device: Device) -> Result<Tensor> {
        if !matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
            return Err(Error::Input(InputError::DType {
                arg: "kind",
                expected: "Float, Double, Half or BFloat16",
                got: kind,
            }));
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
/// [`GgufError::Invalid`](crate::GgufError::Invalid) (with path `<memory>`) if `ty` cannot be dequantized or `bytes` is not whole blocks;
/// [`Error::OutOfMemory`] if the result cannot be allocated.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>> {
    let error = |reason: String| {
        Error::Gguf(GgufError::Invalid {
            path: "<memory>".into(),
            reason,
        })
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
