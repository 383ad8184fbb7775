//! Every setting of a training run in one place: [`RpoTrainerConfig`], with TRL's names and defaults
//! ([`crate::train::RpoTrainerBuilder`] sets them one call at a time).
//!
//! Each value is given once: the step count sets both the schedule and the end of [`crate::train::RpoTrainer::fit`],
//! the checkpoint directory is where [`crate::train::RpoTrainer::fit`] saves and where [`crate::train::RpoTrainer::resume_latest`]
//! looks.

use crate::error::{Error, InputError, Result};
use crate::logprobs::LogProbOptions;
use crate::loss::rpo::{RpoConfig, SftWeight};
use crate::loss::sft::SftNormalization;
use crate::train::model::LossPath;
use crate::train::optim::AdamWConfig;
use crate::train::precision::Precision;
use crate::train::schedule::{Decay, LrSchedule};
use std::path::PathBuf;

/// How long the learning-rate warmup lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    /// `ceil(ratio · max_steps)` steps (TRL's `warmup_ratio`), `ratio` in `[0, 1]`.
    Ratio(f64),
    /// A fixed number of steps (TRL's `warmup_steps`).
    Steps(u64),
}

/// Configuration of [`crate::train::RpoTrainer`]: the objective, the optimization, the data walk and the outputs.
///
/// [`Default`] is TRL's `DPOConfig` default where TRL has one: sigmoid DPO with β = 0.1 and no SFT term,
/// learning rate 1e-6 with linear decay and no warmup, AdamW (0.9, 0.999, 1e-8, no weight decay),
/// gradient clipping at 1.0, seed 42, 8 pairs per micro-batch, no accumulation, shuffled. `max_steps`
/// has no default (0, refused by [`RpoTrainerConfig::check`]); no checkpoints and no log unless a path is
/// given. [`RpoTrainerConfig::paper`] is the paper's setting.
#[derive(Debug, Clone)]
pub struct RpoTrainerConfig {
    /// The objective (DPO variant, β, SFT coefficient and normalization).
    pub rpo: RpoConfig,
    /// Logits or hidden-state path (policy and reference model alike). Default [`LossPath::Auto`]: the
    /// fused hidden-state path for models whose `forward_hidden` returns `Some`, the logits otherwise.
    pub loss_path: LossPath,
    /// How rows are scored, on both paths: the logits path's chunk budget and the fused hidden-state
    /// path's ([`LogProbOptions::fused_chunk_bytes`], policy and reference scoring). Default
    /// [`LogProbOptions::causal`].
    pub logprobs: LogProbOptions,
    /// Peak learning rate (TRL's `learning_rate`). Default 1e-6.
    pub learning_rate: f64,
    /// Decay after warmup (TRL's `lr_scheduler_type`). Default [`Decay::Linear`].
    pub lr_scheduler: Decay,
    /// Warmup. Default `Warmup::Ratio(0.0)`.
    pub warmup: Warmup,
    /// Optimizer steps of the run (TRL's `max_steps`): the schedule's length and where [`crate::train::RpoTrainer::fit`]
    /// stops. Must be set (> 0).
    pub max_steps: u64,
    /// AdamW hyper-parameters and weight-decay rule (TRL's `adam_beta1`, `adam_beta2`, `adam_epsilon`,
    /// `weight_decay`).
    pub optimizer: AdamWConfig,
    /// Clip the total gradient norm to this value (`None`: no clipping; the norm is still reported).
    /// Default `Some(1.0)`.
    pub max_grad_norm: Option<f64>,
    /// Seed of the data order (saved in checkpoints). Default 42.
    pub seed: u64,
    /// Pairs per micro-batch (TRL's `per_device_train_batch_size`). Default 8.
    pub batch_pairs: usize,
    /// Micro-batches per optimizer step (TRL's `gradient_accumulation_steps`), ≥ 1. Default 1.
    pub grad_accum_steps: usize,
    /// Shuffle the pairs each epoch (seeded by [`RpoTrainerConfig::seed`]). Default `true`.
    pub shuffle: bool,
    /// Where [`crate::train::RpoTrainer::fit`] saves checkpoints and [`crate::train::RpoTrainer::resume_latest`] looks (`None`: no
    /// checkpoints).
    pub checkpoint_dir: Option<PathBuf>,
    /// Save every this many steps (TRL's `save_steps`); the last step is always saved when there is a
    /// checkpoint directory. Default `None`: only the last step.
    pub save_steps: Option<u64>,
    /// Keep at most this many checkpoints, deleting the oldest (TRL's `save_total_limit`); the one
    /// `latest` points at is always kept. Default `None`: keep all.
    pub save_total_limit: Option<usize>,
    /// Append each step's metrics as a JSON line to this file (see [`crate::train::RpoTrainer::fit`] for what happens to
    /// lines of steps after a resumed checkpoint).
    pub log_path: Option<PathBuf>,
    /// Draw a progress line on stderr (only if it is a terminal). Default `true`.
    pub progress: bool,
    /// The peak FLOP/s of the device one process trains on (e.g. measured by `examples/matmul_peak.rs`),
    /// `> 0`: each step's model FLOP utilization [`crate::train::StepMetrics::mfu`] is its achieved FLOP/s
    /// over this. Default `None`: FLOP/s are reported (for models that count them) but no utilization.
    pub peak_flops: Option<f64>,
    /// The precision of the passes ([`Precision`]): `Some` rounds the policy's parameters (and a reference
    /// model's) to the dtype it resolves to when the trainer is built, keeping f32 master weights in the
    /// optimizer. Default `None`: the models train in the dtype they were loaded in.
    pub precision: Option<Precision>,
    /// Time each step's phases ([`crate::timing::PhaseTimes`], reported in
    /// [`crate::train::StepMetrics::phases`] and the JSON log). Default `false`.
    pub phase_timing: bool,
}

impl Default for RpoTrainerConfig {
    fn default() -> Self {
        Self {
            rpo: RpoConfig {
                sft_weight: SftWeight::Absolute(0.0),
                sft_normalization: SftNormalization::TokenMean,
                ..RpoConfig::trl(0.1, 0.0)
            },
            loss_path: LossPath::Auto,
            logprobs: LogProbOptions::causal(),
            learning_rate: 1e-6,
            lr_scheduler: Decay::Linear,
            warmup: Warmup::Ratio(0.0),
            max_steps: 0,
            optimizer: AdamWConfig::default(),
            max_grad_norm: Some(1.0),
            seed: 42,
            batch_pairs: 8,
            grad_accum_steps: 1,
            shuffle: true,
            checkpoint_dir: None,
            save_steps: None,
            save_total_limit: None,
            log_path: None,
            progress: true,
            peak_flops: None,
            precision: None,
            phase_timing: false,
        }
    }
}

impl RpoTrainerConfig {
    /// The paper's setting around `rpo`: lr 5e-7, cosine with warmup ratio 0.1 over `max_steps`, AdamW
    /// (β 0.9 / 0.999, ε 1e-8, no weight decay), gradient clipping at 1.0, seed 42; the data walk and
    /// outputs as in [`Default`].
    pub fn paper(rpo: RpoConfig, max_steps: u64) -> Self {
        Self {
            rpo,
            learning_rate: 5e-7,
            lr_scheduler: Decay::Cosine,
            warmup: Warmup::Ratio(0.1),
            max_steps,
            ..Self::default()
        }
    }

    /// The learning-rate schedule these settings describe.
    ///
    /// # Errors
    /// As [`LrSchedule::with_warmup_ratio`] / [`LrSchedule::check`] (a bad lr, ratio, or `max_steps == 0`).
    pub fn schedule(&self) -> Result<LrSchedule> {
        let schedule = match self.warmup {
            Warmup::Ratio(ratio) => {
                LrSchedule::with_warmup_ratio(self.learning_rate, self.max_steps, ratio, self.lr_scheduler)?
            }
            Warmup::Steps(warmup_steps) => LrSchedule {
                peak_lr: self.learning_rate,
                warmup_steps,
                total_steps: self.max_steps,
                decay: self.lr_scheduler,
            },
        };
        schedule.check()?;
        Ok(schedule)
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`] naming the setting by its [`crate::train::RpoTrainerBuilder`] name
    /// (TRL's): the objective's β, η, weights; `max_steps` equal to 0; `learning_rate` not finite and
    /// `>= 0`; the warmup; `max_grad_norm` or `peak_flops` not finite and > 0; `batch_size` (`batch_pairs`),
    /// `gradient_accumulation_steps` (`grad_accum_steps`), `save_steps` or
    /// `save_total_limit` equal to 0;
    /// AdamW's hyper-parameters. [`InputError::Config`] for `save_steps` or `save_total_limit` without a
    /// `checkpoint_dir`.
    pub fn check(&self) -> Result<()> {
        self.rpo.validate()?;
        self.logprobs.validate()?;
        if self.max_steps == 0 {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "max_steps",
                value: self.max_steps.into(),
                requirement: "must be >= 1 (set it: it has no default)",
            }));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "learning_rate",
                value: self.learning_rate.into(),
                requirement: "must be finite and >= 0",
            }));
        }
        self.schedule()?;
        self.optimizer.check()?;
        if let Some(norm) = self.max_grad_norm {
            crate::validate::positive_finite("max_grad_norm", norm)?;
        }
        if let Some(peak) = self.peak_flops {
            crate::validate::positive_finite("peak_flops", peak)?;
        }
        for (name, value) in [
            ("batch_size", self.batch_pairs as u64),
            ("gradient_accumulation_steps", self.grad_accum_steps as u64),
            ("save_steps", self.save_steps.unwrap_or(1)),
            ("save_total_limit", self.save_total_limit.unwrap_or(1) as u64),
        ] {
            if value == 0 {
                return Err(Error::Input(InputError::InvalidParameter {
                    name,
                    value: value.into(),
                    requirement: "must be >= 1",
                }));
            }
        }
        if self.checkpoint_dir.is_none() {
            for (name, set) in [
                ("save_steps", self.save_steps.is_some()),
                ("save_total_limit", self.save_total_limit.is_some()),
            ] {
                if set {
                    return Err(Error::Input(InputError::Config {
                        name,
                        requirement: "is set but checkpoint_dir is not: nothing would be saved".to_string(),
                    }));
                }
            }
        }
        Ok(())
    }
}
