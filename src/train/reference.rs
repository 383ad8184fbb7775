//! Where the reference log-probs `log π_ref(y|x)` come from.

use crate::data::{CollatedBatch, Collator, EncodedPair};
use crate::error::{Error, InputError, Result};
use crate::logprobs::LogProbOptions;
use crate::train::collective::Collective;
use crate::train::config::RpoTrainerConfig;
use crate::train::model::{model_output, LossPath, PolicyModel};
use crate::train::step::loss::sequence_sums;
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
    /// Reference log-probs precomputed once over the training pairs ([`score_reference`]), looked
    /// up by the pairs' dataset indices: `fit` and `evaluate` refuse pairs of another count.
    Cached(ReferenceCache),
    /// The policy itself before its first step (TRL's `precompute_ref_log_probs=True` without a
    /// `ref_model`): the first `fit` scores the training pairs once with the initial weights (no second
    /// copy of the model) and continues with that [`ReferenceSource::Cached`]. Checkpoints hold the cache
    /// and loading one restores it.
    InitialPolicy,
    /// The policy itself with its adapters switched off (TRL's `disable_adapter()` reference of a PEFT
    /// model): for every batch, the trainer turns the adapters off
    /// ([`PolicyModel::set_adapters_enabled`]), scores the batch under `no_grad` on the configured loss
    /// path, and turns them back on. No second copy of the weights; the base model's fused path applies,
    /// its gradient checkpointing does not (no gradient is taken). Needs a model with adapters, e.g.
    /// [`crate::lora::LoraPolicy`] (feature `lora`).
    AdaptersOff,
    /// Reference-free (`log π_ref ≡ 0`).
    Free,
}

impl std::fmt::Debug for ReferenceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReferenceSource::Model(m) => write!(f, "ReferenceSource::Model(on {:?})", m.device()),
            ReferenceSource::Cached(c) => write!(f, "ReferenceSource::Cached({} pairs)", c.len()),
            ReferenceSource::InitialPolicy => write!(f, "ReferenceSource::InitialPolicy"),
            ReferenceSource::AdaptersOff => write!(f, "ReferenceSource::AdaptersOff"),
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
    /// [`InputError::Config`] if the lengths differ.
    pub fn from_values(chosen: Vec<f64>, rejected: Vec<f64>) -> Result<Self> {
        if chosen.len() != rejected.len() {
            return Err(Error::Input(InputError::Config {
                name: "reference cache",
                requirement: format!(
                    "chosen and rejected need one value per pair, got {} and {}",
                    chosen.len(),
                    rejected.len()
                ),
            }));
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
    /// [`InputError::Config`] for an index beyond the cache.
    pub fn lookup(&self, indices: &[usize], device: Device) -> Result<Tensor> {
        let mut values = Vec::with_capacity(2 * indices.len());
        for part in [&self.chosen, &self.rejected] {
            for &i in indices {
                values.push(*part.get(i).ok_or_else(|| {
                    Error::Input(InputError::Config {
                        name: "reference cache",
                        requirement: format!("pair index {i} is beyond the {} cached pairs", self.len()),
                    })
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
    /// [`InputError::InvalidPath`] if `path` is empty, its folder does not exist or it is a directory;
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
    /// [`Error::Torch`] if reading fails; [`InputError::Config`] if a tensor is missing or lengths differ.
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
            _ => Err(Error::Input(InputError::Config {
                name: "reference cache",
                requirement: format!("{source} must hold `chosen` and `rejected`"),
            })),
        }
    }
}

/// How [`score_reference`] scores: pairs per forward pass, the log-prob options, the loss path and the
/// fused chunk budget. Use the trainer's ([`ScoringOptions::of_config`]) so that the reference is scored
/// as the policy is trained (then policy == reference gives exactly zero rewards).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoringOptions {
    /// Pairs per forward pass (≥ 1).
    pub batch_pairs: usize,
    /// How rows are scored.
    pub logprobs: LogProbOptions,
    /// The logits, or the fused head pass on `forward_hidden` ([`LossPath::Auto`]: the latter when the
    /// model offers it).
    pub loss_path: LossPath,
}

impl ScoringOptions {
    /// `batch_pairs` pairs per pass, [`LogProbOptions::causal`] (with its default fused budget),
    /// [`LossPath::Auto`].
    pub fn new(batch_pairs: usize) -> Self {
        Self {
            batch_pairs,
            logprobs: LogProbOptions::causal(),
            loss_path: LossPath::Auto,
        }
    }

    /// The trainer's: its `batch_pairs`, `logprobs` and `loss_path`.
    pub fn of_config(config: &RpoTrainerConfig) -> Self {
        Self {
            batch_pairs: config.batch_pairs,
            logprobs: config.logprobs,
            loss_path: config.loss_path,
        }
    }

    /// These options with `loss_path`.
    pub fn with_loss_path(mut self, loss_path: LossPath) -> Self {
        self.loss_path = loss_path;
        self
    }
}

/// The reference log-probs of every pair of `pairs` under `model`: one pass under `no_grad`, in order,
/// `options.batch_pairs` pairs at a time. With a process group (`collective`), each rank scores its block
/// of `pairs` and one all-reduce (sum) of a zero-filled `[2N + 1]` f64 buffer, in which each rank wrote
/// its block (and a failure flag), gathers the cache on every rank; every rank passes the same pairs and
/// the same model weights. The trainer scores [`ReferenceSource::InitialPolicy`] with it.
///
/// # Errors
/// [`InputError::InvalidParameter`] for `batch_pairs == 0`; whatever collation, the model and the log-prob
/// computation return on this rank; [`DistError::Failed`](crate::DistError::Failed) when another rank failed to score its block; as the
/// all-reduce.
pub fn score_reference(
    model: &dyn PolicyModel,
    pairs: &[EncodedPair],
    collator: &Collator,
    options: &ScoringOptions,
    collective: &Collective,
) -> Result<ReferenceCache> {
    if options.batch_pairs == 0 {
        return Err(Error::Input(InputError::InvalidParameter {
            name: "batch_pairs",
            value: options.batch_pairs.into(),
            requirement: "must be >= 1",
        }));
    }
    let n = pairs.len();
    let range = collective.shard_range(n)?;
    // [chosen; N], [rejected; N], failed-rank count.
    let mut values = vec![0.0; 2 * n + 1];
    let local = score_block(model, pairs, range.clone(), collator, options, &mut values);
    if local.is_err() {
        values[2 * n] = 1.0;
    }
    collective.sum_f64(&mut values)?;
    local?;
    if values[2 * n] > 0.0 {
        return Err(collective.peer_failure(
            "reference",
            format!(
                "{} other rank(s) failed to score their block of the reference log-probs",
                values[2 * n]
            ),
        ));
    }
    values.truncate(2 * n);
    let rejected = values.split_off(n);
    ReferenceCache::from_values(values, rejected)
}

/// Scores `pairs[range]` into `values` (chosen of pair `i` at `i`, rejected at `N + i`).
fn score_block(
    model: &dyn PolicyModel,
    pairs: &[EncodedPair],
    range: std::ops::Range<usize>,
    collator: &Collator,
    options: &ScoringOptions,
    values: &mut [f64],
) -> Result<()> {
    let n = pairs.len();
    let indexed: Vec<(usize, &EncodedPair)> = pairs[range.clone()].iter().enumerate().collect();
    for chunk in indexed.chunks(options.batch_pairs) {
        let batch = collator.collate(chunk, model.device())?;
        let sums = batch_logprobs(model, &batch, options)?.f_to_kind(Kind::Double)?;
        let b = chunk.len();
        let host: Vec<f64> = Vec::<f64>::try_from(&sums.f_to_device(Device::Cpu)?)?;
        for (k, &(i, _)) in chunk.iter().enumerate() {
            values[range.start + i] = host[k];
            values[n + range.start + i] = host[b + k];
        }
    }
    Ok(())
}

/// Summed log-probs `[2B]` of a batch under `model` (no grad), on the model's device, on the same path as
/// the policy's, so that policy == reference gives exactly zero rewards.
pub(crate) fn batch_logprobs(
    model: &dyn PolicyModel,
    batch: &CollatedBatch,
    options: &ScoringOptions,
) -> Result<Tensor> {
    tch::no_grad(|| -> Result<Tensor> {
        let batch = batch.to_device(model.device())?;
        let output = model_output(model, &batch.input_ids, &batch.attention_mask, options.loss_path)?;
        let sums = sequence_sums(&output, &batch.labels, &options.logprobs)?;
        Ok(sums.f_detach()?)
    })
}

/// Summed log-probs `[2B]` of a batch under `model` with its adapters switched off (no grad), for
/// [`ReferenceSource::AdaptersOff`]; the adapters' earlier state is restored, also when scoring fails.
pub(crate) fn adapters_off_logprobs(
    model: &dyn PolicyModel,
    batch: &CollatedBatch,
    options: &ScoringOptions,
) -> Result<Tensor> {
    let previous = model.set_adapters_enabled(false)?;
    let scored = batch_logprobs(model, batch, options);
    model.set_adapters_enabled(previous)?;
    scored
}
