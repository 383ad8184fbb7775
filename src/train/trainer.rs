//! The trainer trait and [`RpoTrainer`], the concrete RPO / DPO trainer.

use crate::data::{BatchSampler, CollatedBatch, Collator, EncodedPair, SamplerPosition};
use crate::error::{Error, Result};
use crate::fused::{fused_rpo_loss, HiddenBatch};
use crate::logprobs::LogProbOptions;
use crate::loss::rpo::{rpo_loss_from_logits, LogitsBatch, RpoConfig, RpoOutput};
use crate::loss::{GlobalBatch, Reference};
use crate::train::checkpoint::{self, CheckpointData};
use crate::train::metrics::{JsonlLogger, Progress, StepMetrics};
use crate::train::model::{required_hidden, PolicyModel};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::reference::{model_logprobs, ReferenceSource};
use crate::train::schedule::{Decay, LrSchedule};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

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

/// How the policy's log-probs are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LossPath {
    /// From the `[2B, T, V]` logits of [`PolicyModel::forward`] (chunked log-softmax).
    #[default]
    Logits,
    /// From [`PolicyModel::forward_hidden`] (final hidden states and LM-head weight) through the fused
    /// linear-head loss ([`crate::fused`]): the `[2B, T, V]` logits are never formed, prompt and padding
    /// tokens never reach the head. Same loss and gradients as [`LossPath::Logits`] within f32 rounding.
    Hidden,
}

/// Configuration of [`RpoTrainer`].
#[derive(Debug, Clone)]
pub struct RpoTrainerConfig {
    /// The objective (DPO variant, β, SFT coefficient and normalization).
    pub rpo: RpoConfig,
    /// AdamW hyper-parameters and weight-decay rule.
    pub optimizer: AdamWConfig,
    /// Learning-rate schedule (peak lr, warmup, total steps).
    pub schedule: LrSchedule,
    /// Clip the total gradient norm to this value (`None`: no clipping; the norm is still reported).
    /// Default `Some(1.0)` (Hugging Face's default).
    pub max_grad_norm: Option<f64>,
    /// Logits or hidden-state path.
    pub loss_path: LossPath,
    /// Seed of the data order (saved in checkpoints).
    pub seed: u64,
    /// How rows are scored. Default [`LogProbOptions::causal`].
    pub logprobs: LogProbOptions,
}

impl RpoTrainerConfig {
    /// The paper's setting around `rpo`: lr 5e-7, cosine with warmup ratio 0.1 over `total_steps`, AdamW
    /// (β 0.9 / 0.999, ε 1e-8, no weight decay), gradient clipping at 1.0, seed 42.
    ///
    /// # Errors
    /// As [`LrSchedule::paper`].
    pub fn paper(rpo: RpoConfig, total_steps: u64) -> Result<Self> {
        Ok(Self {
            rpo,
            optimizer: AdamWConfig::default(),
            schedule: LrSchedule::paper(5e-7, total_steps)?,
            max_grad_norm: Some(1.0),
            loss_path: LossPath::Logits,
            seed: 42,
            logprobs: LogProbOptions::causal(),
        })
    }
}

/// How [`RpoTrainer::fit`] walks the data and where it writes.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Pairs per micro-batch.
    pub batch_pairs: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub grad_accum_steps: usize,
    /// Shuffle the pairs each epoch (seeded by [`RpoTrainerConfig::seed`]).
    pub shuffle: bool,
    /// Where checkpoints go (`None`: no checkpoints).
    pub checkpoint_dir: Option<PathBuf>,
    /// Save every this many steps (and after the last step).
    pub checkpoint_every: Option<u64>,
    /// Append each step's metrics as a JSON line to this file.
    pub log_path: Option<PathBuf>,
    /// Draw a progress line on stderr (only if it is a terminal).
    pub progress: bool,
    /// Stop after this many steps in this call, even if the schedule has more (e.g. to split a run).
    pub max_steps: Option<u64>,
}

impl FitOptions {
    /// `batch_pairs` per micro-batch, `grad_accum_steps` micro-batches per step, shuffled, progress on,
    /// no checkpoints, no log.
    pub fn new(batch_pairs: usize, grad_accum_steps: usize) -> Self {
        Self {
            batch_pairs,
            grad_accum_steps,
            shuffle: true,
            checkpoint_dir: None,
            checkpoint_every: None,
            log_path: None,
            progress: true,
            max_steps: None,
        }
    }
}

/// Where [`RpoTrainer::fit`] stands in the data (saved in checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DataState {
    position: SamplerPosition,
    dataset_len: usize,
    batch_pairs: usize,
    grad_accum_steps: usize,
    shuffle: bool,
}

/// Sums of micro-batch results, weighted so the totals describe one batch of all the step's pairs.
#[derive(Debug, Default)]
struct Accumulated {
    loss: f64,
    loss_dpo: f64,
    nll: f64,
    means: [f64; 6],
}

impl Accumulated {
    fn add(&mut self, out: &RpoOutput, pairs: usize, total_pairs: usize) -> Result<()> {
        self.loss += out.loss.f_double_value(&[])?;
        self.loss_dpo += out.dpo.loss.f_double_value(&[])?;
        self.nll += out.sft.loss.f_double_value(&[])?;
        let weight = pairs as f64 / total_pairs as f64;
        for (slot, (_, value)) in self.means.iter_mut().zip(out.dpo.metrics.values()?) {
            *slot += value * weight;
        }
        Ok(())
    }

    fn into_metrics(self, step: u64) -> StepMetrics {
        let [rewards_chosen, rewards_rejected, rewards_margins, rewards_accuracies, logps_chosen, logps_rejected] =
            self.means;
        StepMetrics {
            step,
            loss: self.loss,
            loss_dpo: self.loss_dpo,
            nll: self.nll,
            rewards_chosen,
            rewards_rejected,
            rewards_accuracies,
            rewards_margins,
            logps_chosen,
            logps_rejected,
            ..StepMetrics::default()
        }
    }
}

/// The RPO trainer (DPO when the SFT coefficient is 0). See `docs/design.md`, "Trainer".
///
/// Every step: the reference log-probs (frozen model under `no_grad`, cache, or none), then one forward
/// pass of the policy over the `2B` concatenated chosen and rejected rows of each micro-batch, the loss
/// with the step's [`GlobalBatch`] totals, backward; then the gradient norm, clipping, and an AdamW update
/// with the scheduled learning rate — unless the loss or the gradient norm is non-finite, in which case the
/// gradients are dropped and the step is counted as skipped.
pub struct RpoTrainer {
    model: Box<dyn PolicyModel>,
    reference: ReferenceSource,
    config: RpoTrainerConfig,
    optimizer: AdamW,
    step: u64,
    skipped_steps: u64,
    data: Option<DataState>,
    sampler: Option<BatchSampler>,
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

impl RpoTrainer {
    /// A trainer for `model` (its parameters that require grad are trained) against `reference`.
    /// The trainer draws no random numbers from libtorch (and does not reseed its global generator, which
    /// other threads may be using): seed your model's initialization yourself.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] / [`Error::Config`] for an invalid configuration (β, η, AdamW, schedule,
    /// clipping norm) or a model with nothing to train.
    pub fn new(
        model: Box<dyn PolicyModel>,
        reference: ReferenceSource,
        config: RpoTrainerConfig,
    ) -> Result<Self> {
        config.rpo.validate()?;
        config.schedule.check()?;
        if let Some(norm) = config.max_grad_norm {
            crate::validate::positive_finite("max_grad_norm", norm)?;
        }
        let optimizer = AdamW::new(config.optimizer, &model.named_parameters())?;
        Ok(Self {
            model,
            reference,
            config,
            optimizer,
            step: 0,
            skipped_steps: 0,
            data: None,
            sampler: None,
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
        self.config.schedule.lr_at(self.step)
    }

    /// Gives the policy model back.
    pub fn into_model(self) -> Box<dyn PolicyModel> {
        self.model
    }

    /// Forward pass and loss of one micro-batch (reference first, so its activations are freed).
    /// [`LossPath::Logits`] gathers log-probs from the model's logits; [`LossPath::Hidden`] runs the fused
    /// linear-head loss ([`crate::fused::fused_rpo_loss`]) on the final hidden states and the head weight,
    /// never forming the `[2B, T, V]` logits.
    fn micro_batch_loss(&self, batch: &CollatedBatch, global: Option<GlobalBatch>) -> Result<RpoOutput> {
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
            ReferenceSource::Free => None,
        };
        let CollatedBatch {
            input_ids,
            attention_mask,
            labels,
            ..
        } = batch.to_device(device)?;
        match self.config.loss_path {
            LossPath::Logits => {
                let logits = self.model.forward(&input_ids, &attention_mask)?;
                let reference = match &reference {
                    Some(sums) => Reference::LogProbs(sums),
                    None => Reference::Free,
                };
                rpo_loss_from_logits(
                    &self.config.rpo,
                    &LogitsBatch::new(&logits, &labels)
                        .with_reference(reference)
                        .with_options(self.config.logprobs.clone())
                        .with_global_opt(global),
                )
            }
            LossPath::Hidden => {
                let states = required_hidden(self.model.as_ref(), &input_ids, &attention_mask)?;
                let reference = match &reference {
                    Some(sums) => Reference::LogProbs(sums),
                    None => Reference::Free,
                };
                let batch = HiddenBatch::new(&states.hidden, states.head(), &labels)
                    .with_reference(reference)
                    .with_options(states.fused_options(&self.config.logprobs))
                    .with_global_opt(global);
                fused_rpo_loss(&self.config.rpo, &batch)
            }
        }
    }

    fn global_batch(batches: &[&CollatedBatch]) -> Result<(GlobalBatch, usize, i64)> {
        let pairs: usize = batches.iter().map(|b| b.pairs()).sum();
        if pairs == 0 {
            return Err(Error::EmptyBatch {
                arg: "micro_batches",
                shape: vec![0],
            });
        }
        let chosen_tokens: i64 = batches.iter().map(|b| b.chosen_tokens).sum();
        let tokens: i64 = batches.iter().map(|b| b.tokens).sum();
        let global = GlobalBatch {
            pairs: pairs as f64,
            chosen_tokens: chosen_tokens.max(1) as f64,
        };
        Ok((global, pairs, tokens))
    }

    /// Evaluates `pairs` in batches of `batch_pairs` (no weight change); the metrics are those of one batch
    /// of all pairs (losses normalized by the totals, means over all pairs).
    ///
    /// # Errors
    /// As [`Trainer::eval_step`].
    pub fn evaluate(
        &mut self,
        pairs: &[EncodedPair],
        collator: &Collator,
        batch_pairs: usize,
    ) -> Result<StepMetrics> {
        let start = Instant::now();
        let indexed: Vec<(usize, &EncodedPair)> = pairs.iter().enumerate().collect();
        let batches = indexed
            .chunks(batch_pairs.max(1))
            .map(|chunk| collator.collate(chunk, tch::Device::Cpu))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&CollatedBatch> = batches.iter().collect();
        self.evaluate_batches(&refs, start)
    }

    fn evaluate_batches(&mut self, batches: &[&CollatedBatch], start: Instant) -> Result<StepMetrics> {
        let (global, pairs, tokens) = Self::global_batch(batches)?;
        let mut acc = Accumulated::default();
        tch::no_grad(|| -> Result<()> {
            for batch in batches {
                let out = self.micro_batch_loss(batch, Some(global))?;
                acc.add(&out, batch.pairs(), pairs)?;
            }
            Ok(())
        })?;
        let mut metrics = acc.into_metrics(self.step);
        metrics.pairs = pairs;
        metrics.tokens = tokens;
        metrics.tokens_per_second = tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
        metrics.skipped_steps = self.skipped_steps;
        Ok(metrics)
    }

    fn data_state_json(&self) -> Value {
        match &self.data {
            Some(d) => json!({
                "epoch": d.position.epoch,
                "cursor": d.position.cursor,
                "dataset_len": d.dataset_len,
                "batch_pairs": d.batch_pairs,
                "grad_accum_steps": d.grad_accum_steps,
                "shuffle": d.shuffle,
            }),
            None => Value::Null,
        }
    }

    fn schedule_json(&self) -> Value {
        let s = &self.config.schedule;
        json!({
            "peak_lr": s.peak_lr,
            "warmup_steps": s.warmup_steps,
            "total_steps": s.total_steps,
            "decay": match s.decay { Decay::Cosine => "cosine", Decay::Linear => "linear", Decay::Constant => "constant" },
        })
    }

    /// Saves a checkpoint under `dir` (layout and atomicity in [`checkpoint`]); returns its path.
    ///
    /// # Errors
    /// As [`checkpoint::save`].
    pub fn save_checkpoint(&self, dir: &Path) -> Result<PathBuf> {
        let state = json!({
            "step": self.step,
            "adam_step": self.optimizer.step_count(),
            "skipped_steps": self.skipped_steps,
            "seed": self.config.seed,
            "schedule": self.schedule_json(),
            "data": self.data_state_json(),
            "objective": self.config.rpo.describe(),
        });
        checkpoint::save(
            dir,
            &CheckpointData {
                step: self.step,
                model: self.model.named_parameters(),
                optimizer: self.optimizer.state_tensors(),
                state,
            },
        )
    }

    /// Restores weights, optimizer state, step, schedule position and data position from the checkpoint at
    /// `path` (verified first), so training continues exactly where it stopped.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] for a missing / truncated / corrupted checkpoint, parameters or state that do
    /// not match this model, or a checkpoint written with a different seed or schedule.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        let loaded = checkpoint::load(path)?;
        let source = path.display().to_string();
        let bad = |reason: String| Error::Checkpoint {
            path: source.clone(),
            reason,
        };
        let state = &loaded.state;
        let int = |key: &str| -> Result<u64> {
            state
                .get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(format!("trainer state lacks `{key}`")))
        };
        let (step, adam_step, skipped, seed) = (
            int("step")?,
            int("adam_step")?,
            int("skipped_steps")?,
            int("seed")?,
        );
        if seed != self.config.seed {
            return Err(bad(format!(
                "written with seed {seed}, this trainer has seed {}",
                self.config.seed
            )));
        }
        if state.get("schedule") != Some(&self.schedule_json()) {
            return Err(bad(format!(
                "written with schedule {}, this trainer has {}",
                state.get("schedule").unwrap_or(&Value::Null),
                self.schedule_json()
            )));
        }
        let data = match state.get("data") {
            None | Some(Value::Null) => None,
            Some(d) => {
                let field = |key: &str| {
                    d.get(key)
                        .and_then(Value::as_u64)
                        .ok_or_else(|| bad(format!("data state lacks `{key}`")))
                };
                Some(DataState {
                    position: SamplerPosition {
                        epoch: field("epoch")?,
                        cursor: field("cursor")? as usize,
                    },
                    dataset_len: field("dataset_len")? as usize,
                    batch_pairs: field("batch_pairs")? as usize,
                    grad_accum_steps: field("grad_accum_steps")? as usize,
                    shuffle: d
                        .get("shuffle")
                        .and_then(Value::as_bool)
                        .ok_or_else(|| bad("data state lacks `shuffle`".to_string()))?,
                })
            }
        };
        // Model weights: every parameter must be present with its shape; nothing extra.
        let mut saved: std::collections::HashMap<String, Tensor> = loaded.model.into_iter().collect();
        let params = self.model.named_parameters();
        for (name, param) in &params {
            let tensor = saved
                .get(name)
                .ok_or_else(|| bad(format!("model parameter `{name}` is missing")))?;
            if tensor.size() != param.size() {
                return Err(bad(format!(
                    "model parameter `{name}` has shape {:?}, the model needs {:?}",
                    tensor.size(),
                    param.size()
                )));
            }
        }
        if let Some(extra) = saved.keys().find(|k| !params.iter().any(|(n, _)| n == *k)) {
            return Err(bad(format!("model parameter `{extra}` is not in this model")));
        }
        tch::no_grad(|| -> Result<()> {
            for (name, param) in &params {
                if let Some(tensor) = saved.remove(name) {
                    param.shallow_clone().f_copy_(&tensor)?;
                }
            }
            Ok(())
        })?;
        self.optimizer.load_state(adam_step, loaded.optimizer, &source)?;
        self.step = step;
        self.skipped_steps = skipped;
        self.data = data;
        self.sampler = None;
        Ok(())
    }

    /// Resumes from the newest checkpoint under `dir` (its `latest` pointer), if any; returns its path.
    ///
    /// # Errors
    /// As [`RpoTrainer::load_checkpoint`].
    pub fn resume_latest(&mut self, dir: &Path) -> Result<Option<PathBuf>> {
        match checkpoint::latest(dir)? {
            Some(path) => {
                self.load_checkpoint(&path)?;
                Ok(Some(path))
            }
            None => Ok(None),
        }
    }

    fn prepare_sampler(&mut self, dataset_len: usize, options: &FitOptions) -> Result<()> {
        let wanted = DataState {
            position: SamplerPosition::default(),
            dataset_len,
            batch_pairs: options.batch_pairs,
            grad_accum_steps: options.grad_accum_steps.max(1),
            shuffle: options.shuffle,
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
                        name: "fit options",
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
                options.batch_pairs,
                self.config.seed,
                options.shuffle,
            )?;
            sampler.set_position(position)?;
            self.sampler = Some(sampler);
        }
        self.data = Some(DataState { position, ..wanted });
        Ok(())
    }

    /// Trains on `pairs` until the schedule's last step (or [`FitOptions::max_steps`] more steps), logging,
    /// drawing progress and checkpointing as configured. Continues from the current step and data position
    /// (e.g. after [`RpoTrainer::resume_latest`]). Returns the metrics of the steps taken.
    ///
    /// # Errors
    /// [`Error::Config`] if the data setup differs from the one the run started with; anything
    /// [`Trainer::train_step`], logging or checkpointing returns.
    pub fn fit(
        &mut self,
        pairs: &[EncodedPair],
        collator: &Collator,
        options: &FitOptions,
    ) -> Result<Vec<StepMetrics>> {
        self.prepare_sampler(pairs.len(), options)?;
        let total = self.config.schedule.total_steps;
        let mut logger = options.log_path.as_deref().map(JsonlLogger::append).transpose()?;
        let progress = Progress::new(options.progress, self.step, total);
        let mut history = Vec::new();
        let mut last_saved = None;
        while self.step < total && options.max_steps.map_or(true, |m| (history.len() as u64) < m) {
            let mut batches = Vec::with_capacity(options.grad_accum_steps.max(1));
            let mut epoch = 0;
            for _ in 0..options.grad_accum_steps.max(1) {
                let sampler = self.sampler.as_mut().ok_or(Error::Config {
                    name: "sampler",
                    requirement: "not prepared".to_string(),
                })?;
                let indices = sampler.next_batch();
                epoch = sampler.position().epoch;
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
            if let (Some(dir), Some(every)) = (&options.checkpoint_dir, options.checkpoint_every) {
                if every > 0 && self.step % every == 0 {
                    self.save_checkpoint(dir)?;
                    last_saved = Some(self.step);
                }
            }
        }
        progress.finish();
        if let Some(dir) = &options.checkpoint_dir {
            if self.step == total && last_saved != Some(self.step) && !history.is_empty() {
                self.save_checkpoint(dir)?;
            }
        }
        Ok(history)
    }
}

impl Trainer for RpoTrainer {
    fn train_step(&mut self, micro_batches: &[CollatedBatch]) -> Result<StepMetrics> {
        let start = Instant::now();
        let refs: Vec<&CollatedBatch> = micro_batches.iter().collect();
        let (global, pairs, tokens) = Self::global_batch(&refs)?;
        let lr = self.config.schedule.lr_at(self.step);
        self.optimizer.zero_grad();
        let mut acc = Accumulated::default();
        let mut skip_reason: Option<String> = None;
        for batch in micro_batches {
            let out = match self.micro_batch_loss(batch, Some(global)) {
                Ok(out) => out,
                Err(e @ Error::NonFinite { .. }) => {
                    skip_reason = Some(format!("non-finite values in the forward pass: {e}"));
                    acc.loss = f64::NAN;
                    break;
                }
                Err(e) => {
                    self.optimizer.zero_grad();
                    return Err(e);
                }
            };
            acc.add(&out, batch.pairs(), pairs)?;
            let loss = out.loss.f_double_value(&[])?;
            if !loss.is_finite() {
                skip_reason = Some(format!("non-finite loss {loss}"));
                break;
            }
            out.loss.f_backward()?;
        }
        let mut grad_norm = None;
        if skip_reason.is_none() {
            let norm = self.optimizer.grad_norm()?;
            grad_norm = Some(norm);
            if !norm.is_finite() {
                skip_reason = Some(format!("non-finite gradient norm {norm}"));
            }
        }
        if skip_reason.is_none() {
            if let (Some(max_norm), Some(norm)) = (self.config.max_grad_norm, grad_norm) {
                let coefficient = max_norm / (norm + 1e-6);
                if coefficient < 1.0 {
                    self.optimizer.scale_grads(coefficient)?;
                }
            }
            self.optimizer.step(lr)?;
        } else {
            self.skipped_steps += 1;
        }
        self.optimizer.zero_grad();
        self.step += 1;
        let mut metrics = acc.into_metrics(self.step);
        metrics.grad_norm = grad_norm;
        metrics.lr = Some(lr);
        metrics.pairs = pairs;
        metrics.tokens = tokens;
        metrics.tokens_per_second = tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
        metrics.skipped = skip_reason.is_some();
        metrics.skip_reason = skip_reason;
        metrics.skipped_steps = self.skipped_steps;
        Ok(metrics)
    }

    fn eval_step(&mut self, batch: &CollatedBatch) -> Result<StepMetrics> {
        self.evaluate_batches(&[batch], Instant::now())
    }
}
