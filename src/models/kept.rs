//! Weight matrices kept in their GGUF blocks ([`LoadOptions::weights`](crate::models::decoder::load::LoadOptions)
//! = [`WeightFormat::KeepQuantized`](crate::models::decoder::load::WeightFormat)), crate-internal:
//! [`KeptWeight`] (one matrix and the dtype and device it is dequantized to) and [`KeptWeights`] (a
//! model's, by Hugging Face name, as the loader reads them before the model is built).
//!
//! A kept matrix is frozen (no gradient ever reaches it) and dequantized each time it is used, into a
//! temporary that lives as long as the op (or, under autograd, the graph) that uses it. The decoder's layers
//! therefore run under per-layer recomputation when trained
//! ([`DecoderPolicy`](crate::models::decoder::DecoderPolicy) turns it on by itself), so at most one layer's
//! dequantized matrices are alive at a time.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::gguf::BlockMatrix;

/// One matrix `[out, in]` kept in its blocks, dequantized to `kind` on `device` when used.
pub(crate) struct KeptWeight {
    pub(crate) blocks: BlockMatrix,
    pub(crate) kind: Kind,
    pub(crate) device: Device,
}

impl KeptWeight {
    /// The whole matrix, dequantized.
    pub(crate) fn dense(&self) -> Result<Tensor> {
        self.blocks.dequantize(self.kind, self.device)
    }

    /// The rows `ids` names (`[...]` → `[..., in]`), only those dequantized.
    pub(crate) fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        self.blocks.gather_rows(ids, self.kind)
    }

    /// A stand-in for the matrix where only its shape, dtype and device are read (a zero-stride view of
    /// one zero: it holds no weights and takes no memory).
    pub(crate) fn placeholder(&self) -> Result<Tensor> {
        let [rows, cols] = self.blocks.shape();
        Ok(Tensor::f_zeros([1, 1], (self.kind, self.device))?.f_expand([rows, cols], false)?)
    }

    /// Another handle on the same blocks.
    pub(crate) fn shallow_clone(&self) -> Self {
        Self {
            blocks: self.blocks.clone(),
            kind: self.kind,
            device: self.device,
        }
    }
}

/// The kept matrices of a model by Hugging Face name, and the dtype and device they are dequantized to.
pub(crate) struct KeptWeights {
    pub(crate) by_name: HashMap<String, BlockMatrix>,
    pub(crate) kind: Kind,
    pub(crate) device: Device,
}

impl KeptWeights {
    /// The kept matrix `name`, if it is one.
    pub(crate) fn get(&self, name: &str) -> Option<KeptWeight> {
        self.by_name.get(name).map(|blocks| KeptWeight {
            blocks: blocks.clone(),
            kind: self.kind,
            device: self.device,
        })
    }

    /// Whether `name` is kept.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
}

/// How `Decoder::build` fills the parameters it creates.
#[derive(Clone, Copy)]
pub(crate) enum DecoderInit<'a> {
    /// Linear and embedding weights ~ N(0, initializer_range²), biases 0, norms as transformers.
    Random,
    /// Every parameter 0 (for loading; the random generator is untouched).
    Zeros,
    /// As `Zeros`, but the matrices in the set are taken from it, kept in their GGUF blocks (no variable).
    Kept(&'a KeptWeights),
}

impl<'a> DecoderInit<'a> {
    /// `Kept` with a set, else `Zeros`: what a loader builds.
    pub(crate) fn loading(kept: Option<&'a KeptWeights>) -> Self {
        kept.map_or(DecoderInit::Zeros, DecoderInit::Kept)
    }
}
