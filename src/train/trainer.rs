//! The trainer trait and [`RpoTrainer`], the concrete RPO / DPO trainer.

use crate::autograd::ensure_grad;
use crate::data::{BatchSampler, CollatedBatch, Collator, EncodedPair, SamplerPosition};
use crate::error::{Error, Result};
use crate::fused::WeightGrad;
use crate::loss::rpo::RpoOutput;
use crate::loss::{compute_loss, compute_loss_with, GlobalBatch, LossBatch, Reference};
use crate::train::accumulate::{Accumulated, StepTotals};
use crate::train::checkpoint;
use crate::train::config::RpoTrainerConfig;
use crate::train::distributed::Parallel;
use crate::train::metrics::{JsonlLogger, Progress, StepMetrics};
use crate::train::model::{model_output, training_output, DeferredBackward, ModelOutput, PolicyModel};
use crate::train::optim::AdamW;
use crate::train::reference::{model_logprobs, ReferenceSource};
use crate::train::schedule::LrSchedule;
use std::path::PathBuf;
use std::time::Instant;

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

/// Where [`RpoTrainer::fit`] stands in the data (saved in checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DataState {
    pub(super) position: SamplerPosition,
    pub(super) dataset_len: usize,
    pub(super) batch_pairs: usize,
    pub(super) grad_accum_steps: usize,
    pub(super) shuffle: bool,
}

/// The RPO trainer (DPO when the SFT coefficient is 0). See `docs/design.md`, "Trainer".
///
/// Every step ([`Trainer::train_step`]) has three phases: the step's totals ([`GlobalBatch`]); for each
/// micro-batch, the reference log-probs (frozen model under `no_grad`, cache, or none), one forward pass of
/// the policy over the `2B` concatenated chosen and rejected rows, the loss normalized by the step's
/// totals, backward, and the loss and metrics read back to the host; then the update: gradient norm,
/// clipping, and an AdamW update with the scheduled learning rate — unless the loss or the gradient norm
/// is non-finite, in which case the gradients are dropped and the step is counted as skipped.
///
/// Built with [`RpoTrainer::builder`] (TRL's setting names, [`crate::train::RpoTrainerBuilder`]) or
/// [`RpoTrainer::new`] with a [`RpoTrainerConfig`].
///
/// With a process group (feature `dist`: `RpoTrainerBuilder::process_group`, `RpoTrainer::set_process_group`)
/// it is one rank of a data-parallel job: `fit` trains on this rank's block of every global micro-batch, and
/// [`Trainer::train_step`] takes this rank's micro-batches (possibly none), sums the step's totals, metrics and
/// gradients over the ranks, and returns the metrics of the whole global step (docs/distributed.md).
pub struct RpoTrainer {
    pub(super) model: Box<dyn PolicyModel>,
    pub(super) reference: ReferenceSource,
    pub(super) config: RpoTrainerConfig,
    pub(super) schedule: LrSchedule,
    pub(super) optimizer: AdamW,
    pub(super) step: u64,
    pub(super) skipped_steps: u64,
    pub(super) data: Option<DataState>,
    pub(super) sampler: Option<BatchSampler>,
    /// The step of the checkpoint loaded last, until the next `fit` has opened its log.
    pub(super) resumed_at: Option<u64>,
    /// The process group of a data-parallel run (see `train/distributed.rs`).
    pub(super) parallel: Parallel,
}

impl std::fmt::Debug for RpoTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpoTrainer")
            .field("objective", &self.config.rpo.describe())
            .field("reference", &self.reference)
            .field("step", &self.step)
            .field("skipped_steps", &self.skipped_steps)
            .finish()
    }
}

/// What the gradient phase of a step left: the accumulated metrics, and why the update must be skipped.
pub(super) struct Gradients {
    pub(super) accumulated: Accumulated,
    pub(super) skip_reason: Option<String>,
}

impl RpoTrainer {
    /// A trainer for `model` (its parameters that require grad are trained) against `reference`.
    /// The trainer draws no random numbers from libtorch (and does not reseed its global generator, which
    /// other threads may be using): seed your model's initialization yourself.
    ///
    /// # Errors
    /// As [`RpoTrainerConfig::check`]; as [`AdamW::new`] (a model with nothing to train, partially
    /// overlapping parameters).
    pub fn new(
        model: Box<dyn PolicyModel>,
        reference: ReferenceSource,
        config: RpoTrainerConfig,
    ) -> Result<Self> {
        config.check()?;
        let schedule = config.schedule()?;
        let optimizer = AdamW::new(config.optimizer, &model.named_parameters())?;
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
            parallel: Parallel::default(),
        })
    }

    /// The policy model.
    pub fn model(&self) -> &dyn PolicyModel {
        self.model.as_ref()
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

    /// Gives the policy model back.
    pub fn into_model(self) -> Box<dyn PolicyModel> {
        self.model
    }

    /// Forward pass and loss of one micro-batch (reference first, so its activations are freed).
    /// `LossPath::Logits` gathers log-probs from the model's logits; `LossPath::Hidden` runs the fused
    /// linear-head loss ([`crate::compute_loss`] on a [`crate::LossBatch::hidden`] batch) on the final hidden states and the head (weight,
    /// bias, logit scale, soft-cap), never forming the `[2B, T, V]` logits; `LossPath::Auto` the latter
    /// when the model offers hidden states. With `train`, the policy's forward pass is
    /// [`PolicyModel::forward_checkpointed`] where the model checkpoints, and the returned
    /// [`DeferredBackward`] must run after `loss.backward()`.
    fn micro_batch_loss(
        &self,
        batch: &CollatedBatch,
        global: Option<GlobalBatch>,
        train: bool,
    ) -> Result<(RpoOutput, Option<DeferredBackward<'_>>)> {
        let device = self.model.device();
        let reference = match &self.reference {
            ReferenceSource::Model(model) => Some(
                model_logprobs(
                    model.as_ref(),
                    batch,
                    &self.config.logprobs,
                    self.config.loss_path,
                )?
                .f_to_device(device)?,
            ),
            ReferenceSource::Cached(cache) => Some(cache.lookup(&batch.indices, device)?),
            ReferenceSource::InitialPolicy => return Err(initial_policy_not_scored()),
            ReferenceSource::Free => None,
        };
        let reference = match &reference {
            Some(sums) => Reference::LogProbs(sums),
            None => Reference::Free,
        };
        let CollatedBatch {
            input_ids,
            attention_mask,
            labels,
            ..
        } = batch.to_device(device)?;
        let path = self.config.loss_path;
        let (output, deferred) = match train {
            true => training_output(self.model.as_ref(), &input_ids, &attention_mask, path)?,
            false => (
                model_output(self.model.as_ref(), &input_ids, &attention_mask, path)?,
                None,
            ),
        };
        let out = match output {
            ModelOutput::Logits(logits) => compute_loss(
                &self.config.rpo,
                &LossBatch::logits(&logits, &labels)
                    .with_reference(reference)
                    .with_options(self.config.logprobs)
                    .with_global(global),
            )?,
            ModelOutput::Hidden(states) => {
                let batch = LossBatch::hidden(&states.hidden, states.head.clone(), &labels)
                    .with_reference(reference)
                    .with_options(self.config.logprobs)
                    .with_global(global);
                // Training: the head weight's gradient goes straight into its `.grad` (this loss is
                // backpropagated once, unscaled, and a skipped step clears `.grad`).
                let weight_grad = match train {
                    true => {
                        ensure_grad(&states.head.weight)?;
                        WeightGrad::IntoGrad
                    }
                    false => WeightGrad::Surrogate,
                };
                compute_loss_with(&self.config.rpo, &batch, weight_grad)?
            }
        };
        Ok((out, deferred))
    }

    /// Evaluates `pairs` in batches of `batch_pairs` (no weight change); the metrics are those of one batch
    /// of all pairs (losses normalized by the totals, means over all pairs).
    ///
    /// With a [`ReferenceSource::Cached`] reference, `pairs` must be the pairs it was computed over (it is
    /// looked up by index); a [`ReferenceSource::InitialPolicy`] reference exists only once `fit` has
    /// scored the training pairs.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for `batch_pairs == 0`; [`Error::Config`] for a cache of another length
    /// or an initial-policy reference not scored yet; as [`Trainer::eval_step`].
    pub fn evaluate(
        &mut self,
        pairs: &[EncodedPair],
        collator: &Collator,
        batch_pairs: usize,
    ) -> Result<StepMetrics> {
        if batch_pairs == 0 {
            return Err(Error::InvalidParameter {
                name: "batch_pairs",
                value: 0.0,
                requirement: "must be >= 1",
            });
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

    fn evaluate_batches(&mut self, batches: &[&CollatedBatch], start: Instant) -> Result<StepMetrics> {
        let totals = StepTotals::of(batches)?;
        let mut acc = Accumulated::default();
        tch::no_grad(|| -> Result<()> {
            for batch in batches {
                let (out, _) = self.micro_batch_loss(batch, Some(totals.global), false)?;
                acc.add(&out, batch, &totals)?;
            }
            Ok(())
        })?;
        let mut metrics = acc.into_metrics(self.step);
        metrics.pairs = totals.pairs;
        metrics.tokens = totals.tokens;
        metrics.tokens_per_second = totals.tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
        metrics.skipped_steps = self.skipped_steps;
        Ok(metrics)
    }

    /// Makes the reference usable for `pairs`: scores them with the initial policy for
    /// [`ReferenceSource::InitialPolicy`] (only before the first step), and checks that a cache covers
    /// exactly `pairs.len()` pairs.
    fn prepare_reference(&mut self, pairs: &[EncodedPair], collator: &Collator, scoring: bool) -> Result<()> {
        match &self.reference {
            ReferenceSource::InitialPolicy if scoring && self.step == 0 => {
                let cache = self.score_initial_policy(pairs, collator)?;
                self.reference = ReferenceSource::Cached(cache);
                Ok(())
            }
            ReferenceSource::InitialPolicy => Err(initial_policy_not_scored()),
            ReferenceSource::Cached(cache) if cache.len() != pairs.len() => Err(Error::Config {
                name: "reference cache",
                requirement: format!(
                    "holds {} pairs but {} pairs were given: the cache is looked up by pair index, so it must \
                     have been computed over these pairs",
                    cache.len(),
                    pairs.len()
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Resumes from the newest checkpoint in [`RpoTrainerConfig::checkpoint_dir`] (its `latest` pointer),
    /// if any; returns its path (`None`: no checkpoint yet, a fresh run).
    ///
    /// # Errors
    /// [`Error::Config`] without a checkpoint directory; as [`checkpoint::latest`] and
    /// [`RpoTrainer::load_checkpoint`].
    pub fn resume_latest(&mut self) -> Result<Option<PathBuf>> {
        let dir = self.config.checkpoint_dir.clone().ok_or_else(|| Error::Config {
            name: "checkpoint_dir",
            requirement: "resuming needs a checkpoint directory in the configuration".to_string(),
        })?;
        match checkpoint::latest(&dir)? {
            Some(path) => {
                self.load_checkpoint(&path)?;
                Ok(Some(path))
            }
            None => Ok(None),
        }
    }

    fn prepare_sampler(&mut self, dataset_len: usize) -> Result<()> {
        // The micro-batches of a step are collated before it runs: more than one epoch's would hold (and
        // train on) pairs twice in one step, and a huge count would exhaust memory instead of failing.
        let per_epoch = dataset_len.div_ceil(self.config.batch_pairs.max(1));
        if self.config.grad_accum_steps > per_epoch.max(1) {
            return Err(Error::Config {
                name: "gradient_accumulation_steps",
                requirement: format!(
                    "{} micro-batches per optimizer step exceed the {per_epoch} micro-batches of one epoch \
                     ({dataset_len} pairs, batch_size {}): an optimizer step takes at most one epoch",
                    self.config.grad_accum_steps, self.config.batch_pairs
                ),
            });
        }
        let wanted = DataState {
            position: SamplerPosition::default(),
            dataset_len,
            batch_pairs: self.config.batch_pairs,
            grad_accum_steps: self.config.grad_accum_steps,
            shuffle: self.config.shuffle,
        };
        let position = match self.data {
            Some(d) => {
                if (d.dataset_len, d.batch_pairs, d.grad_accum_steps, d.shuffle)
                    != (
                        wanted.dataset_len,
                        wanted.batch_pairs,
                        wanted.grad_accum_steps,
                        wanted.shuffle,
                    )
                {
                    return Err(Error::Config {
                        name: "data settings",
                        requirement: format!(
                            "the run so far used {} pairs, {} pairs per micro-batch, {} micro-batches per step, \
                             shuffle {}; now {}, {}, {}, {}",
                            d.dataset_len,
                            d.batch_pairs,
                            d.grad_accum_steps,
                            d.shuffle,
                            wanted.dataset_len,
                            wanted.batch_pairs,
                            wanted.grad_accum_steps,
                            wanted.shuffle
                        ),
                    });
                }
                d.position
            }
            None => SamplerPosition::default(),
        };
        if self.sampler.is_none() {
            let mut sampler = BatchSampler::new(
                dataset_len,
                self.config.batch_pairs,
                self.config.seed,
                self.config.shuffle,
            )?;
            sampler.set_position(position)?;
            self.sampler = Some(sampler);
        }
        self.data = Some(DataState { position, ..wanted });
        Ok(())
    }

    /// Trains on `pairs` until [`RpoTrainerConfig::max_steps`], logging, drawing progress and checkpointing
    /// as configured. Continues from the current step and data position (e.g. after
    /// [`RpoTrainer::resume_latest`]). Returns the metrics of the steps taken.
    ///
    /// The JSON Lines log is appended to. In the first `fit` after a checkpoint was loaded it is opened
    /// with [`JsonlLogger::continue_run`]: the lines at its end of steps after the checkpoint, left by the
    /// interrupted process that logged past its last checkpoint, are removed, so every step appears once. Checkpoints go to [`RpoTrainerConfig::checkpoint_dir`] every
    /// `save_steps` steps and after the last step; with `save_total_limit`, older ones are then deleted.
    ///
    /// With [`ReferenceSource::InitialPolicy`], the first `fit` of a fresh run scores `pairs` with the
    /// initial weights first.
    ///
    /// # Errors
    /// [`Error::Config`] if the data setup differs from the one the run started with, a reference cache
    /// holds another number of pairs, or an initial-policy reference is needed after step 0 without a
    /// checkpoint that holds it; anything [`Trainer::train_step`], logging or checkpointing returns.
    pub fn fit(&mut self, pairs: &[EncodedPair], collator: &Collator) -> Result<Vec<StepMetrics>> {
        self.fit_steps(pairs, collator, None)
    }

    /// As [`RpoTrainer::fit`], but stops after at most `steps` more steps when given (e.g. to split a run
    /// into sessions, or to evaluate between parts).
    ///
    /// # Errors
    /// As [`RpoTrainer::fit`].
    pub fn fit_steps(
        &mut self,
        pairs: &[EncodedPair],
        collator: &Collator,
        steps: Option<u64>,
    ) -> Result<Vec<StepMetrics>> {
        self.prepare_sampler(pairs.len())?;
        self.check_peers(pairs.len())?;
        self.prepare_reference(pairs, collator, true)?;
        let total = self.schedule.total_steps;
        let main = self.is_main_process();
        let log_path = self.config.log_path.as_ref().filter(|_| main);
        let mut logger = match (log_path, self.resumed_at.take()) {
            (Some(path), Some(step)) => Some(JsonlLogger::continue_run(path, step)?),
            (Some(path), None) => Some(JsonlLogger::append(path)?),
            (None, _) => None,
        };
        let progress = Progress::new(self.config.progress && main, self.step, total);
        let mut history = Vec::new();
        let mut last_saved = None;
        while self.step < total && steps.map_or(true, |m| (history.len() as u64) < m) {
            let mut batches = Vec::with_capacity(self.config.grad_accum_steps);
            let mut epoch = 0;
            for _ in 0..self.config.grad_accum_steps {
                let sampler = self.sampler.as_mut().ok_or(Error::Config {
                    name: "sampler",
                    requirement: "not prepared".to_string(),
                })?;
                let indices = self.parallel.shard(sampler.next_batch())?;
                epoch = sampler.position().epoch;
                if indices.is_empty() {
                    continue; // this rank's block of a small last batch of an epoch
                }
                let chunk: Vec<(usize, &EncodedPair)> = indices.iter().map(|&i| (i, &pairs[i])).collect();
                batches.push(collator.collate(&chunk, tch::Device::Cpu)?);
            }
            let mut metrics = self.train_step(&batches)?;
            metrics.epoch = Some(epoch);
            if let (Some(d), Some(s)) = (self.data.as_mut(), self.sampler.as_ref()) {
                d.position = s.position();
            }
            if let Some(logger) = logger.as_mut() {
                logger.log(&metrics.to_json())?;
            }
            progress.update(&metrics);
            history.push(metrics);
            if let Some(every) = self.config.save_steps {
                if self.step % every == 0 && self.save_configured()? {
                    last_saved = Some(self.step);
                }
            }
        }
        progress.finish();
        if self.step == total && last_saved != Some(self.step) && !history.is_empty() {
            self.save_configured()?;
        }
        Ok(history)
    }

    /// Saves into the configured checkpoint directory (if any) and applies `save_total_limit`; whether it
    /// saved.
    fn save_configured(&self) -> Result<bool> {
        let Some(dir) = &self.config.checkpoint_dir else {
            return Ok(false);
        };
        // With a process group, rank 0 saves and the others wait for it.
        let saved = if self.is_main_process() {
            self.save_checkpoint(dir)
                .and_then(|_| match self.config.save_total_limit {
                    Some(limit) => checkpoint::prune(dir, limit).map(|_| true),
                    None => Ok(true),
                })
        } else {
            Ok(true)
        };
        self.finish_save(saved)
    }

    /// The gradient phase of a step: for each micro-batch, forward, loss with the step's totals, host
    /// read-back of the loss and metrics, and backward — stopping at the first non-finite loss.
    fn accumulate_gradients(
        &mut self,
        micro_batches: &[CollatedBatch],
        totals: StepTotals,
    ) -> Result<Gradients> {
        let mut accumulated = Accumulated::default();
        for batch in micro_batches {
            let (out, deferred) = match self.micro_batch_loss(batch, Some(totals.global), true) {
                Ok(out) => out,
                Err(e @ Error::NonFinite { .. }) => {
                    accumulated.loss = f64::NAN;
                    return Ok(Gradients {
                        accumulated,
                        skip_reason: Some(format!("non-finite values in the forward pass: {e}")),
                    });
                }
                Err(e) => return Err(e),
            };
            let loss = accumulated.add(&out, batch, &totals)?;
            if !loss.is_finite() {
                return Ok(Gradients {
                    accumulated,
                    skip_reason: Some(format!("non-finite loss {loss}")),
                });
            }
            out.loss.f_backward()?;
            if let Some(deferred) = deferred {
                deferred.run()?;
            }
        }
        Ok(Gradients {
            accumulated,
            skip_reason: None,
        })
    }

    /// The update phase of a step: gradient norm, clipping and the AdamW update, or nothing when the step
    /// must be skipped. Returns the gradient norm (when computed) and the skip reason.
    fn apply_update(
        &mut self,
        lr: f64,
        skip_reason: Option<String>,
    ) -> Result<(Option<f64>, Option<String>)> {
        if skip_reason.is_some() {
            return Ok((None, skip_reason));
        }
        let norm = self.optimizer.grad_norm()?;
        if !norm.is_finite() {
            return Ok((Some(norm), Some(format!("non-finite gradient norm {norm}"))));
        }
        if let Some(max_norm) = self.config.max_grad_norm {
            let coefficient = max_norm / (norm + 1e-6);
            if coefficient < 1.0 {
                self.optimizer.scale_grads(coefficient)?;
            }
        }
        self.optimizer.step(lr)?;
        Ok((Some(norm), None))
    }
}

/// The error for a [`ReferenceSource::InitialPolicy`] that has not been scored.
fn initial_policy_not_scored() -> Error {
    Error::Config {
        name: "reference",
        requirement: "ReferenceSource::InitialPolicy is scored by the first fit of a fresh run (or restored from a \
                      checkpoint that holds it); before that, or after step 0 without it, there are no reference \
                      log-probs"
            .to_string(),
    }
}

impl Trainer for RpoTrainer {
    fn train_step(&mut self, micro_batches: &[CollatedBatch]) -> Result<StepMetrics> {
        let start = Instant::now();
        let refs: Vec<&CollatedBatch> = micro_batches.iter().collect();
        let totals = self.step_totals(&refs)?;
        let lr = self.schedule.lr_at(self.step);
        self.optimizer.zero_grad()?;
        let gradients = match self.accumulate_gradients(micro_batches, totals) {
            Ok(gradients) => gradients,
            Err(e) => {
                // The step's own error is the one to report; clearing the gradients is best effort here.
                let _ = self.optimizer.zero_grad();
                return Err(e);
            }
        };
        let gradients = self.reduce_gradients(gradients)?;
        let (grad_norm, skip_reason) = self.apply_update(lr, gradients.skip_reason)?;
        if skip_reason.is_some() {
            self.skipped_steps += 1;
        }
        self.optimizer.zero_grad()?;
        self.step += 1;
        let mut metrics = gradients.accumulated.into_metrics(self.step);
        metrics.grad_norm = grad_norm;
        metrics.lr = Some(lr);
        metrics.pairs = totals.pairs;
        metrics.tokens = totals.tokens;
        metrics.tokens_per_second = totals.tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
        metrics.skipped = skip_reason.is_some();
        metrics.skip_reason = skip_reason;
        metrics.skipped_steps = self.skipped_steps;
        Ok(metrics)
    }

    fn eval_step(&mut self, batch: &CollatedBatch) -> Result<StepMetrics> {
        self.evaluate_batches(&[batch], Instant::now())
    }
}
