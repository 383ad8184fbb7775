//! Where the reference log-probs `log π_ref(y|x)` come from.

use crate::data::{CollatedBatch, Collator, EncodedPair};
use crate::error::{Error, Result};
use crate::fused::fused_sequence_logprobs;
use crate::logprobs::{sequence_logprobs, LogProbOptions};
use crate::train::model::{model_output, LossPath, ModelOutput, PolicyModel};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The reference side of the trainer: where the `[2B]` reference log-probs (chosen rows first, the layout
/// of [`crate::Reference::LogProbs`]) of each micro-batch come from. The trainer scores a reference model
/// itself, on the model's own device and the configured [`LossPath`], and hands the loss
/// `Reference::LogProbs` (or [`crate::Reference::Free`]).
pub enum ReferenceSource {
    /// A frozen reference model, run under `no_grad` on its own device for every batch (only the `[2B]`
    /// summed log-probs are moved to the policy's device).
    Model(Box<dyn PolicyModel>),
    /// Reference log-probs precomputed once over the training pairs ([`ReferenceCache::compute`]), looked
    /// up by the pairs' dataset indices: `fit` and `evaluate` refuse pairs of another count.
    Cached(ReferenceCache),
    /// The policy itself before its first step (TRL's `precompute_ref_log_probs=True` without a
    /// `ref_model`): the first `fit` scores the training pairs once with the initial weights (no second
    /// copy of the model) and continues with that [`ReferenceSource::Cached`]. Checkpoints hold the cache
    /// and loading one restores it.
    InitialPolicy,
    /// Reference-free (`log π_ref ≡ 0`).
    Free,
}

impl std::fmt::Debug for ReferenceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReferenceSource::Model(m) => write!(f, "ReferenceSource::Model(on {:?})", m.device()),
            ReferenceSource::Cached(c) => write!(f, "ReferenceSource::Cached({} pairs)", c.len()),
            ReferenceSource::InitialPolicy => write!(f, "ReferenceSource::InitialPolicy"),
            ReferenceSource::Free => write!(f, "ReferenceSource::Free"),
        }
    }
}

/// Summed reference log-probs of every pair of a dataset, keyed by the pair's index.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceCache {
    chosen: Vec<f64>,
    rejected: Vec<f64>,
}

impl ReferenceCache {
    /// Wraps precomputed values: `chosen[i]`, `rejected[i]` for pair `i`. Non-finite values are accepted;
    /// a step that meets one is skipped by the trainer.
    ///
    /// # Errors
    /// [`Error::Config`] if the lengths differ.
    pub fn from_values(chosen: Vec<f64>, rejected: Vec<f64>) -> Result<Self> {
        if chosen.len() != rejected.len() {
            return Err(Error::Config {
                name: "reference cache",
                requirement: format!(
                    "chosen and rejected need one value per pair, got {} and {}",
                    chosen.len(),
                    rejected.len()
                ),
            });
        }
        Ok(Self { chosen, rejected })
    }

    /// One pass of `model` under `no_grad` over all `pairs` (in order, `batch_pairs` at a time), scoring
    /// each row with `options` (use [`LogProbOptions::causal`] for a causal LM) on `path`: the logits, or the
    /// fused head pass on `forward_hidden` ([`LossPath::Auto`]: the latter when the model offers it) — use
    /// the path the policy will be trained on.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for `batch_pairs == 0`; whatever collation, the model and
    /// [`sequence_logprobs`] return.
    pub fn compute(
        model: &dyn PolicyModel,
        pairs: &[EncodedPair],
        collator: &Collator,
        batch_pairs: usize,
        options: &LogProbOptions,
        path: LossPath,
    ) -> Result<Self> {
        if batch_pairs == 0 {
            return Err(Error::InvalidParameter {
                name: "batch_pairs",
                value: 0.0,
                requirement: "must be >= 1",
            });
        }
        let mut chosen = Vec::with_capacity(pairs.len());
        let mut rejected = Vec::with_capacity(pairs.len());
        let indexed: Vec<(usize, &EncodedPair)> = pairs.iter().enumerate().collect();
        for chunk in indexed.chunks(batch_pairs) {
            let batch = collator.collate(chunk, model.device())?;
            let sums = model_logprobs(model, &batch, options, path)?.f_to_kind(Kind::Double)?;
            let b = chunk.len();
            let values: Vec<f64> = Vec::<f64>::try_from(&sums.f_to_device(Device::Cpu)?)?;
            chosen.extend_from_slice(&values[..b]);
            rejected.extend_from_slice(&values[b..]);
        }
        Ok(Self { chosen, rejected })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.chosen.len()
    }

    /// Whether it holds no pair.
    pub fn is_empty(&self) -> bool {
        self.chosen.is_empty()
    }

    /// `(chosen, rejected)` of pair `index`.
    pub fn get(&self, index: usize) -> Option<(f64, f64)> {
        Some((*self.chosen.get(index)?, *self.rejected.get(index)?))
    }

    /// The `[2B]` f32 tensor (chosen values of `indices`, then rejected) on `device`.
    ///
    /// # Errors
    /// [`Error::Config`] for an index beyond the cache.
    pub fn lookup(&self, indices: &[usize], device: Device) -> Result<Tensor> {
        let mut values = Vec::with_capacity(2 * indices.len());
        for part in [&self.chosen, &self.rejected] {
            for &i in indices {
                values.push(*part.get(i).ok_or_else(|| Error::Config {
                    name: "reference cache",
                    requirement: format!("pair index {i} is beyond the {} cached pairs", self.len()),
                })?);
            }
        }
        Ok(Tensor::from_slice(&values)
            .f_to_kind(Kind::Float)?
            .f_to_device(device)?)
    }

    /// Saves the cache as safetensors (`chosen`, `rejected`, f64 `[N]`), atomically
    /// ([`crate::atomic::write_file_at`]): `path` only ever holds a complete cache, the earlier or the new.
    ///
    /// # Errors
    /// [`Error::InvalidPath`] if `path` is empty, its folder does not exist or it is a directory;
    /// [`Error::Torch`] if writing fails; [`Error::Io`] if the file cannot be fsynced or renamed.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::atomic::write_file_at(path, "path", |tmp| {
            Tensor::write_safetensors(&self.to_tensors(), tmp)?;
            Ok(())
        })
    }

    /// The cache as named tensors (`chosen`, `rejected`, f64 `[N]`), as [`ReferenceCache::save`] writes it.
    pub(crate) fn to_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            ("chosen".to_string(), Tensor::from_slice(&self.chosen)),
            ("rejected".to_string(), Tensor::from_slice(&self.rejected)),
        ]
    }

    /// Loads a cache written by [`ReferenceCache::save`].
    ///
    /// # Errors
    /// [`Error::Torch`] if reading fails; [`Error::Config`] if a tensor is missing or lengths differ.
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_tensors(Tensor::read_safetensors(path)?, &path.display().to_string())
    }

    /// The inverse of [`ReferenceCache::to_tensors`]; `source` names where they came from in errors.
    pub(crate) fn from_tensors(tensors: Vec<(String, Tensor)>, source: &str) -> Result<Self> {
        let mut chosen = None;
        let mut rejected = None;
        for (name, tensor) in tensors {
            let values = Vec::<f64>::try_from(&tensor.f_to_kind(Kind::Double)?)?;
            match name.as_str() {
                "chosen" => chosen = Some(values),
                "rejected" => rejected = Some(values),
                _ => {}
            }
        }
        match (chosen, rejected) {
            (Some(c), Some(r)) => Self::from_values(c, r),
            _ => Err(Error::Config {
                name: "reference cache",
                requirement: format!("{source} must hold `chosen` and `rejected`"),
            }),
        }
    }
}

/// Summed log-probs `[2B]` of a batch under `model` (no grad), on the model's device.
pub(crate) fn model_logprobs(
    model: &dyn PolicyModel,
    batch: &CollatedBatch,
    options: &LogProbOptions,
    path: LossPath,
) -> Result<Tensor> {
    tch::no_grad(|| -> Result<Tensor> {
        let batch = batch.to_device(model.device())?;
        // The same path as the policy's, so that policy == reference gives exactly zero rewards.
        let sums = match model_output(model, &batch.input_ids, &batch.attention_mask, path)? {
            ModelOutput::Hidden(states) => {
                fused_sequence_logprobs(&states.hidden, &states.head, &batch.labels, options)?.sum
            }
            ModelOutput::Logits(logits) => sequence_logprobs(&logits, &batch.labels, options)?.sum,
        };
        Ok(sums.f_detach()?)
    })
}
