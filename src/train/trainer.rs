//! The trainer trait and [`RpoTrainer`], the concrete RPO / DPO trainer: its parts, its accessors and
//! evaluation. The step is in `train/step`, the run loop in `train/run.rs`, the saved state in
//! `train/state.rs`, the data-parallel side in [`crate::train::collective`].

use crate::data::{BatchSampler, CollatedBatch, Collator, EncodedPair};
use crate::error::{Error, InputError, Result};
use crate::train::collective::Collective;
use crate::train::config::RpoTrainerConfig;
use crate::train::metrics::StepMetrics;
use crate::train::model::PolicyModel;
use crate::train::optim::AdamW;
use crate::train::precision::round_parameters;
use crate::train::reference::ReferenceSource;
use crate::train::run::DataState;
use crate::train::schedule::LrSchedule;
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

/// A preference trainer: one optimizer step on a batch, or an evaluation without weight change.
pub trait Trainer {
    /// One optimizer step over `micro_batches` (gradient accumulation over all of them; one element for
    /// none), normalized as one batch holding all their pairs. Returns the step's metrics; a step with a
    /// non-finite loss or gradient is skipped (weights and optimizer state untouched) and reported so.
    ///
    /// # Errors
    /// Any error of the model or the loss other than a non-finite value.
    fn train_step(&mut self, micro_batches: &[CollatedBatch]) -> Result<StepMetrics>;

    /// The metrics of `batch` under the current weights, which it does not change (no gradient).
    ///
    /// # Errors
    /// Any error of the model or the loss.
    fn eval_step(&mut self, batch: &CollatedBatch) -> Result<StepMetrics>;
}

/// The RPO trainer (DPO when the SFT coefficient is 0) of a policy model `M`, which it owns and gives
/// back ([`RpoTrainer::model`], [`RpoTrainer::model_mut`], [`RpoTrainer::into_model`]): stages chain
/// without copying parameters (train SFT, take the model, build the DPO trainer on it). See
/// `docs/design.md`, "Trainer".
///
/// Every step ([`Trainer::train_step`]) has three phases: the step's totals ([`crate::GlobalBatch`]); for
/// each micro-batch, the reference log-probs (frozen model under `no_grad`, cache, or none), one forward
/// pass of the policy over the `2B` concatenated chosen and rejected rows, the loss normalized by the
/// step's totals, backward, and the loss and metrics read back to the host; then the update: gradient
/// norm, clipping, and an AdamW update with the scheduled learning rate — unless the loss or the gradient
/// norm is non-finite, in which case the gradients are dropped and the step is counted as skipped.
///
/// Built with [`RpoTrainer::builder`] (TRL's setting names, [`crate::train::RpoTrainerBuilder`]) or
/// [`RpoTrainer::new`] with a [`RpoTrainerConfig`].
///
/// With a process group (feature `dist`: `RpoTrainerBuilder::process_group`, `RpoTrainer::set_process_group`)
/// it is one rank of a data-parallel job ([`Collective`]): `fit` trains on this rank's block of every
/// global micro-batch, and [`Trainer::train_step`] takes this rank's micro-batches (possibly none), sums
/// the step's totals, metrics and gradients over the ranks, and returns the metrics of the whole global
/// step (docs/distributed.md).
pub struct RpoTrainer<M: PolicyModel> {
    pub(crate) model: M,
    pub(crate) reference: ReferenceSource,
    pub(crate) config: RpoTrainerConfig,
    pub(crate) schedule: LrSchedule,
    pub(crate) optimizer: AdamW,
    pub(crate) step: u64,
    pub(crate) skipped_steps: u64,
    pub(crate) data: Option<DataState>,
    pub(crate) sampler: Option<BatchSampler>,
    /// The step of the checkpoint loaded last, until the next `fit` has opened its log.
    pub(crate) resumed_at: Option<u64>,
    /// One process or one rank of a data-parallel job.
    pub(crate) collective: Collective,
}

impl<M: PolicyModel> std::fmt::Debug for RpoTrainer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpoTrainer")
            .field("objective", &self.config.rpo.describe())
            .field("reference", &self.reference)
            .field("step", &self.step)
            .field("skipped_steps", &self.skipped_steps)
            .field("world_size", &self.collective.world_size())
            .finish()
    }
}

impl<M: PolicyModel> RpoTrainer<M> {
    /// A trainer for `model` (its parameters that require grad are trained) against `reference`.
    /// The trainer draws no random numbers from libtorch (and does not reseed its global generator, which
    /// other threads may be using): seed your model's initialization yourself.
    ///
    /// # Errors
    /// As [`RpoTrainerConfig::check`]; as [`AdamW::new`] (a model with nothing to train, partially
    /// overlapping parameters); [`crate::InputError::Config`] for [`ReferenceSource::AdaptersOff`] with a
    /// model without adapters ([`PolicyModel::set_adapters_enabled`]).
    pub fn new(model: M, reference: ReferenceSource, config: RpoTrainerConfig) -> Result<Self> {
        config.check()?;
        if let ReferenceSource::AdaptersOff = reference {
            // Refuses a model without adapters now rather than at the first step.
            let enabled = model.set_adapters_enabled(true)?;
            model.set_adapters_enabled(enabled)?;
        }
        let schedule = config.schedule()?;
        let originals = match config.precision {
            Some(precision) => set_precision(&model, &reference, precision.resolve(model.device()))?,
            None => Vec::new(),
        };
        let mut optimizer = AdamW::new(config.optimizer, &model.named_parameters())?;
        optimizer.adopt_masters(&originals)?;
        Ok(Self {
            model,
            reference,
            config,
            schedule,
            optimizer,
            step: 0,
            skipped_steps: 0,
            data: None,
            sampler: None,
            resumed_at: None,
            collective: Collective::single(),
        })
    }

    /// The policy model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The policy model, mutably (e.g. to switch gradient checkpointing between steps). Its parameter
    /// set must stay as it is: the optimizer holds the parameters it was built with.
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// Gives the policy model back, trained: the next stage's trainer can be built on it.
    pub fn into_model(self) -> M {
        self.model
    }

    /// The reference.
    pub fn reference(&self) -> &ReferenceSource {
        &self.reference
    }

    /// The optimizer (parameters, groups, state).
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// The configuration.
    pub fn config(&self) -> &RpoTrainerConfig {
        &self.config
    }

    /// The learning-rate schedule (from the configuration).
    pub fn schedule(&self) -> &LrSchedule {
        &self.schedule
    }

    /// Optimizer steps taken (skipped ones included).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Steps skipped for a non-finite loss or gradient.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped_steps
    }

    /// The learning rate the next step will use.
    pub fn current_lr(&self) -> f64 {
        self.schedule.lr_at(self.step)
    }

    /// One process, or this rank of a data-parallel job (e.g. for [`crate::train::score_reference`]).
    pub fn collective(&self) -> &Collective {
        &self.collective
    }

    /// Whether this process writes the run's files: rank 0 of the process group, or the only process.
    pub fn is_main_process(&self) -> bool {
        self.collective.is_main()
    }

    /// Wall-clock time this trainer has spent in process-group collectives (zero without a group): the
    /// step counts, metric sums and gradient all-reduces, the reference gathering and checkpoint barriers.
    pub fn communication_time(&self) -> Duration {
        self.collective.communication_time()
    }

    /// Evaluates `pairs` in batches of `batch_pairs` (no weight change); the metrics are those of one batch
    /// of all pairs (losses normalized by the totals, means over all pairs).
    ///
    /// With a [`ReferenceSource::Cached`] reference, `pairs` must be the pairs it was computed over (it is
    /// looked up by index); a [`ReferenceSource::InitialPolicy`] reference exists only once `fit` has
    /// scored the training pairs.
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`] for `batch_pairs == 0`; [`InputError::Config`] for a cache of another length
    /// or an initial-policy reference not scored yet; as [`Trainer::eval_step`].
    pub fn evaluate(
        &mut self,
        pairs: &[EncodedPair],
        collator: &Collator,
        batch_pairs: usize,
    ) -> Result<StepMetrics> {
        if batch_pairs == 0 {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "batch_pairs",
                value: batch_pairs.into(),
                requirement: "must be >= 1",
            }));
        }
        self.prepare_reference(pairs, collator, false)?;
        let start = Instant::now();
        let indexed: Vec<(usize, &EncodedPair)> = pairs.iter().enumerate().collect();
        let batches = indexed
            .chunks(batch_pairs)
            .map(|chunk| collator.collate(chunk, tch::Device::Cpu))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&CollatedBatch> = batches.iter().collect();
        self.evaluate_batches(&refs, start)
    }
}

impl<M: PolicyModel> RpoTrainer<M> {
    /// Makes this trainer train as `collective` says: one process, or one rank of a data-parallel job
    /// ([`Collective`]'s semantics, docs/distributed.md): the configured batch is the global batch, of
    /// which this rank takes its block; gradients are all-reduced each step; rank 0 writes checkpoints
    /// and logs. With a process group, the model's trained parameters (and AdamW's f32 master copies) are
    /// broadcast from rank 0 at once, so every rank starts from rank 0's weights. Call it on every rank,
    /// before training or resuming; the reference must be the same on every rank (a frozen model loaded
    /// alike, or the same cache).
    ///
    /// # Errors
    /// [`InputError::Config`] when `batch_pairs` is not a multiple of the world size, or this trainer already
    /// has a process group; [`InputError::DeviceMismatch`] when the model is not on the group's device (the
    /// CPU for Gloo, the rank's CUDA device for NCCL); as the broadcast.
    pub fn set_collective(&mut self, collective: Collective) -> Result<()> {
        if self.collective.is_distributed() {
            return Err(Error::Input(InputError::Config {
                name: "process_group",
                requirement: "this trainer already has a process group; take_process_group() it first".into(),
            }));
        }
        let world = collective.world_size();
        if self.config.batch_pairs % world != 0 {
            return Err(Error::Input(InputError::Config {
                name: "batch_pairs",
                requirement: format!(
                    "is the global micro-batch, split evenly over the ranks: {} pairs do not split over a \
                     world size of {world}",
                    self.config.batch_pairs
                ),
            }));
        }
        if let Some(device) = collective.device().filter(|&d| d != self.model.device()) {
            return Err(Error::Input(InputError::DeviceMismatch {
                arg: "model",
                other: "process group",
                expected: device,
                got: self.model.device(),
            }));
        }
        let mut weights: Vec<tch::Tensor> = Vec::new();
        for p in self.optimizer.params() {
            weights.push(p.param.f_detach()?);
            if let Some(master) = &p.master {
                weights.push(master.f_detach()?);
            }
        }
        collective.add_communication(self.collective.communication_time());
        if !weights.is_empty() {
            collective.broadcast_from_main_(&mut weights)?;
        }
        self.collective = collective;
        Ok(())
    }

    /// Takes the collective back (e.g. for the next stage's trainer, [`RpoTrainer::set_collective`]); the
    /// trainer is a one-process trainer afterwards.
    pub fn take_collective(&mut self) -> Collective {
        std::mem::take(&mut self.collective)
    }
}

#[cfg(feature = "dist")]
impl<M: PolicyModel> RpoTrainer<M> {
    /// This trainer with `group` ([`RpoTrainer::set_process_group`]).
    ///
    /// # Errors
    /// As [`RpoTrainer::set_process_group`].
    pub fn with_process_group(mut self, group: crate::dist::ProcessGroup) -> Result<Self> {
        self.set_process_group(group)?;
        Ok(self)
    }

    /// Makes this trainer one rank of a data-parallel job over `group`:
    /// [`RpoTrainer::set_collective`] with [`Collective::group`].
    ///
    /// # Errors
    /// As [`RpoTrainer::set_collective`].
    pub fn set_process_group(&mut self, group: crate::dist::ProcessGroup) -> Result<()> {
        self.set_collective(Collective::group(group))
    }

    /// The process group, if this trainer has one.
    pub fn process_group(&self) -> Option<&crate::dist::ProcessGroup> {
        self.collective.process_group()
    }

    /// Takes the process group back (e.g. for the next trainer of a pipeline); the trainer is a
    /// one-process trainer afterwards.
    pub fn take_process_group(&mut self) -> Option<crate::dist::ProcessGroup> {
        self.collective.take_group()
    }
}

/// Rounds the policy's parameters (and a reference model's) to `kind`
/// ([`crate::train::RpoTrainerConfig::precision`]); returns the trained f32 parameters' values from
/// before (detached handles of the old storage) for the optimizer's master copies.
///
/// # Errors
/// [`InputError::Config`](crate::InputError::Config) (`precision`) for a model with frozen weights outside
/// its parameters ([`PolicyModel::base_fingerprint`], e.g. a LoRA base) whose parameters are not already
/// of `kind`: those weights cannot be rounded from here (load the base in `kind` instead); [`Error::Torch`]
/// if an op fails.
fn set_precision<M: PolicyModel>(
    model: &M,
    reference: &ReferenceSource,
    kind: Kind,
) -> Result<Vec<(String, Tensor)>> {
    let params = model.named_parameters();
    let mut originals = Vec::new();
    for (name, param) in &params {
        let param_kind = param.f_kind()?;
        if param_kind == kind {
            continue;
        }
        if model.base_fingerprint().is_some() {
            return Err(Error::Input(InputError::Config {
                name: "precision",
                requirement: format!(
                    "resolves to {kind:?}, but `{name}` is {param_kind:?} and the model has frozen weights \
                     outside its parameters (a LoRA base) that the trainer cannot round: load the model in \
                     {kind:?} instead"
                ),
            }));
        }
        if param_kind == Kind::Float && param.requires_grad() {
            originals.push((name.clone(), param.f_detach()?));
        }
    }
    round_parameters(&params, kind)?;
    if let ReferenceSource::Model(reference) = reference {
        if reference.base_fingerprint().is_none() {
            round_parameters(&reference.named_parameters(), kind)?;
        }
    }
    Ok(originals)
}
