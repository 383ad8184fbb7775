//! [`BlockMatrix`]: a GGUF weight matrix kept in memory in its file's (quantized) blocks and dequantized
//! on demand — whole, a range of rows, or the rows a set of token ids names.

use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::dequant::dequantize_blocks;
use super::{GgmlType, GgufFile, CHUNK_ELEMENTS};
use crate::error::{Error, InputError, Result, WeightsError};

/// The types a [`BlockMatrix`] keeps: the quantized types this crate dequantizes (Q4_0, Q4_1, Q5_0, Q5_1,
/// Q8_0, Q4_K, Q5_K, Q6_K) and the plain F32, F16, BF16 (F64 is not kept: it is larger than the f32 the
/// model would hold). Gemma 3 270M's Q4_K_M file holds Q4_K, Q5_0, Q6_K and Q8_0 matrices.
pub const KEEP_TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// A matrix `[rows, cols]` held as the raw ggml blocks of a GGUF tensor (row-major: each row is
/// `cols / block_size` whole blocks), in host memory, shared between clones (an `Arc`).
///
/// Dequantization is ggml's reference arithmetic ([`GgufFile::tensor`]'s, bit for bit): [`dequantize`],
/// [`dequantize_rows`] and [`gather_rows`] give exactly the values (and, after rounding once to the
/// requested kind, the bits) of the same rows of `file.tensor(name, Kind::Float, _)` converted to that kind.
///
/// [`dequantize`]: BlockMatrix::dequantize
/// [`dequantize_rows`]: BlockMatrix::dequantize_rows
/// [`gather_rows`]: BlockMatrix::gather_rows
#[derive(Debug, Clone)]
pub struct BlockMatrix {
    name: String,
    ty: GgmlType,
    rows: i64,
    cols: i64,
    row_bytes: usize,
    bytes: Arc<Vec<u8>>,
}

impl BlockMatrix {
    /// Reads the 2-D tensor `name` of `file` as it is stored.
    ///
    /// # Errors
    /// [`WeightsError::TensorType`] naming the tensor and its type when the type is not in [`KEEP_TYPES`];
    /// [`InputError::Shape`] when the tensor is not a matrix; those of [`GgufFile::tensor_bytes`].
    pub fn read(file: &GgufFile, name: &str) -> Result<Self> {
        let info = file.tensor_info(name)?;
        if !KEEP_TYPES.contains(&info.ggml_type) {
            return Err(Error::Weights(WeightsError::TensorType {
                name: name.to_string(),
                file: file.path().display().to_string(),
                expected: format!(
                    "a type kept in its blocks ({})",
                    KEEP_TYPES.map(GgmlType::name).join(", ")
                ),
                got: info.ggml_type.name().to_string(),
            }));
        }
        let [rows, cols] = info.shape[..] else {
            return Err(Error::Input(InputError::Shape {
                arg: "name",
                expected: format!("a matrix [rows, cols] (`{name}` kept in its blocks)"),
                got: info.shape.clone(),
            }));
        };
        let row_bytes = (cols as u64 / info.ggml_type.block_size() * info.ggml_type.block_bytes()) as usize;
        let bytes = file.tensor_bytes(name)?;
        Ok(Self {
            name: name.to_string(),
            ty: info.ggml_type,
            rows,
            cols,
            row_bytes,
            bytes: Arc::new(bytes),
        })
    }

    /// The GGUF tensor name it was read from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ggml type of the blocks.
    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [i64; 2] {
        [self.rows, self.cols]
    }

    /// The bytes held (the blocks).
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The blocks, row-major (for checksums and tests).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The same matrix with its rows reordered: row `i` of the result is row `order[i]` of this one (an
    /// exact permutation of whole rows, e.g. Llama's q / k rows).
    ///
    /// # Errors
    /// [`InputError::Shape`] unless `order` is a permutation of `0..rows`.
    pub fn permute_rows(&self, order: &[i64]) -> Result<Self> {
        let mut seen = vec![false; self.rows.max(0) as usize];
        let valid = order.len() == seen.len()
            && order.iter().all(|&r| {
                let fresh = (0..self.rows).contains(&r) && !seen[r as usize];
                if fresh {
                    seen[r as usize] = true;
                }
                fresh
            });
        if !valid {
            return Err(Error::Input(InputError::Shape {
                arg: "order",
                expected: format!("a permutation of 0..{}", self.rows),
                got: vec![order.len() as i64],
            }));
        }
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(self.bytes.len())
            .map_err(|_| Error::OutOfMemory {
                what: format!("the blocks of `{}`, reordered", self.name),
                bytes: self.bytes.len() as u64,
            })?;
        for &r in order {
            bytes.extend_from_slice(self.row(r as usize));
        }
        Ok(Self {
            bytes: Arc::new(bytes),
            ..self.clone()
        })
    }

    fn row(&self, r: usize) -> &[u8] {
        &self.bytes[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Dequantizes `rows` (indices, each in `0..rows`) into `[rows.len(), cols]` of `kind` on `device`, a
    /// chunk of about 4 Mi values at a time.
    fn dequantize_selected(&self, rows: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        check_kind(kind)?;
        let n = rows.len() as i64;
        let out = Tensor::f_empty([n, self.cols], (kind, device))?;
        let per_chunk = (CHUNK_ELEMENTS as i64 / self.cols.max(1)).max(1) as usize;
        let cols = self.cols as usize;
        let mut values = vec![0f32; per_chunk.min(rows.len()) * cols];
        let mut start = 0i64;
        for chunk in rows.chunks(per_chunk) {
            let buf = &mut values[..chunk.len() * cols];
            for (&r, y) in chunk.iter().zip(buf.chunks_exact_mut(cols)) {
                if !(0..self.rows).contains(&r) {
                    return Err(Error::Input(InputError::TokenOutOfRange {
                        arg: "rows",
                        min: r,
                        max: r,
                        vocab: self.rows,
                    }));
                }
                if !dequantize_blocks(self.ty, self.row(r as usize), y) {
                    return Err(Error::Internal {
                        what: format!("kept type {} cannot be dequantized", self.ty),
                    });
                }
            }
            let len = chunk.len() as i64;
            let chunk_values = Tensor::f_from_slice(buf)?.f_reshape([len, self.cols])?;
            out.f_narrow(0, start, len)?.f_copy_(&chunk_values)?;
            start += len;
        }
        Ok(out)
    }

    /// The whole matrix `[rows, cols]` dequantized to f32 and rounded once to `kind`, on `device`.
    ///
    /// # Errors
    /// [`InputError::DType`] for a `kind` other than `Float`, `Double`, `Half`, `BFloat16`;
    /// [`Error::Torch`] (e.g. the output cannot be allocated).
    pub fn dequantize(&self, kind: Kind, device: Device) -> Result<Tensor> {
        self.dequantize_rows(0, self.rows, kind, device)
    }

    /// Rows `start .. start + len` `[len, cols]`, dequantized as [`BlockMatrix::dequantize`] does (only those
    /// rows' blocks are read).
    ///
    /// # Errors
    /// Those of [`BlockMatrix::dequantize`]; [`InputError::Shape`] for a range outside `0..rows`.
    pub fn dequantize_rows(&self, start: i64, len: i64, kind: Kind, device: Device) -> Result<Tensor> {
        if start < 0 || len < 0 || start + len > self.rows {
            return Err(Error::Input(InputError::Shape {
                arg: "start, len",
                expected: format!("a range of rows inside 0..{}", self.rows),
                got: vec![start, len],
            }));
        }
        let rows: Vec<i64> = (start..start + len).collect();
        self.dequantize_selected(&rows, kind, device)
    }

    /// The row ranges `(start, len)` of blocks of about `block_elements` weights each (whole rows, at least
    /// one per block), in order.
    pub fn row_blocks(&self, block_elements: i64) -> Vec<(i64, i64)> {
        let step = (block_elements / self.cols.max(1)).max(1);
        (0..self.rows)
            .step_by(step as usize)
            .map(|start| (start, step.min(self.rows - start)))
            .collect()
    }

    /// `x·Wᵀ + b` `[n, rows]` for `x [n, cols]` (`W` this matrix, `b` an optional `[rows]` bias), computed
    /// a block of about `block_elements` weights at a time ([`BlockMatrix::row_blocks`]; only that block
    /// dequantized, to `x`'s dtype on its device), into `out` when given (a contiguous `[n, rows]` tensor of
    /// `x`'s dtype), else into a new tensor. Under autograd each block's dequantized weights are saved for
    /// the backward pass (so the whole matrix is, block by block); without it, one block lives at a time.
    ///
    /// # Errors
    /// Those of [`BlockMatrix::dequantize_rows`]; [`Error::Torch`] for shapes that do not fit.
    pub fn linear(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        out: Option<&Tensor>,
        block_elements: i64,
    ) -> Result<Tensor> {
        let z = match out {
            Some(z) => z.shallow_clone(),
            None => Tensor::f_empty([x.size()[0], self.rows], (x.kind(), x.device()))?,
        };
        for (start, len) in self.row_blocks(block_elements) {
            let w = self.dequantize_rows(start, len, x.kind(), x.device())?;
            let b = bias.map(|b| b.f_narrow(0, start, len)).transpose()?;
            z.f_narrow(1, start, len)?.f_copy_(&x.f_linear(&w, b.as_ref())?)?;
        }
        Ok(z)
    }

    /// The rows `ids` names (an embedding lookup): `ids` of any shape `[...]`, i64, each in `0..rows`, gives
    /// `[..., cols]` of `kind` on `ids`' device; only those rows' blocks are dequantized.
    ///
    /// # Errors
    /// Those of [`BlockMatrix::dequantize`]; [`InputError::DType`] for ids that are not i64;
    /// [`InputError::TokenOutOfRange`] for an id outside `0..rows`.
    pub fn gather_rows(&self, ids: &Tensor, kind: Kind) -> Result<Tensor> {
        if ids.kind() != Kind::Int64 {
            return Err(Error::Input(InputError::DType {
                arg: "ids",
                expected: "Int64",
                got: ids.kind(),
            }));
        }
        let flat: Vec<i64> = Vec::try_from(&ids.f_reshape([-1])?.f_to_device(Device::Cpu)?)?;
        let mut shape = ids.size();
        shape.push(self.cols);
        Ok(self
            .dequantize_selected(&flat, kind, ids.device())?
            .f_reshape(shape.as_slice())?)
    }
}

fn check_kind(kind: Kind) -> Result<()> {
    match kind {
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => Ok(()),
        got => Err(Error::Input(InputError::DType {
            arg: "kind",
            expected: "Float, Double, Half or BFloat16",
            got,
        })),
    }
}
