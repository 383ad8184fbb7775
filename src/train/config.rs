//! Every setting of a training run in one place ([`RpoTrainerConfig`], TRL's names and defaults), and
//! [`RpoTrainerBuilder`], which sets them one call at a time.
//!
//! Each value is given once: the step count sets both the schedule and the end of [`RpoTrainer::fit`],
//! the checkpoint directory is where [`RpoTrainer::fit`] saves and where [`RpoTrainer::resume_latest`]
//! looks.

use crate::error::{Error, Result};
use crate::logprobs::LogProbOptions;
use crate::loss::dpo::DpoLoss;
use crate::loss::rpo::{RpoConfig, SftWeight};
use crate::loss::sft::SftNormalization;
use crate::train::model::{LossPath, PolicyModel};
use crate::train::optim::AdamWConfig;
use crate::train::reference::ReferenceSource;
use crate::train::schedule::{Decay, LrSchedule};
use crate::train::trainer::RpoTrainer;
use std::path::PathBuf;

/// How long the learning-rate warmup lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    /// `ceil(ratio · max_steps)` steps (TRL's `warmup_ratio`), `ratio` in `[0, 1]`.
    Ratio(f64),
    /// A fixed number of steps (TRL's `warmup_steps`).
    Steps(u64),
}

/// Configuration of [`RpoTrainer`]: the objective, the optimization, the data walk and the outputs.
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
    /// Logits or hidden-state path (policy and reference model alike).
    pub loss_path: LossPath,
    /// How rows are scored. Default [`LogProbOptions::causal`].
    pub logprobs: LogProbOptions,
    /// Peak learning rate (TRL's `learning_rate`). Default 1e-6.
    pub learning_rate: f64,
    /// Decay after warmup (TRL's `lr_scheduler_type`). Default [`Decay::Linear`].
    pub lr_scheduler: Decay,
    /// Warmup. Default `Warmup::Ratio(0.0)`.
    pub warmup: Warmup,
    /// Optimizer steps of the run (TRL's `max_steps`): the schedule's length and where [`RpoTrainer::fit`]
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
    /// Where [`RpoTrainer::fit`] saves checkpoints and [`RpoTrainer::resume_latest`] looks (`None`: no
    /// checkpoints).
    pub checkpoint_dir: Option<PathBuf>,
    /// Save every this many steps (TRL's `save_steps`); the last step is always saved when there is a
    /// checkpoint directory. Default `None`: only the last step.
    pub save_steps: Option<u64>,
    /// Keep at most this many checkpoints, deleting the oldest (TRL's `save_total_limit`); the one
    /// `latest` points at is always kept. Default `None`: keep all.
    pub save_total_limit: Option<usize>,
    /// Append each step's metrics as a JSON line to this file (see [`RpoTrainer::fit`] for what happens to
    /// lines of steps after a resumed checkpoint).
    pub log_path: Option<PathBuf>,
    /// Draw a progress line on stderr (only if it is a terminal). Default `true`.
    pub progress: bool,
}

impl Default for RpoTrainerConfig {
    fn default() -> Self {
        Self {
            rpo: RpoConfig {
                sft_weight: SftWeight::Absolute(0.0),
                sft_normalization: SftNormalization::TokenMean,
                ..RpoConfig::trl(0.1, 0.0)
            },
            loss_path: LossPath::Logits,
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
    /// [`Error::InvalidParameter`] naming the setting: the objective's β, η, weights; the schedule;
    /// `max_grad_norm` not finite and > 0; `batch_pairs`, `grad_accum_steps`, `save_steps` or
    /// `save_total_limit` equal to 0; AdamW's hyper-parameters. [`Error::Config`] for `save_steps` or
    /// `save_total_limit` without a `checkpoint_dir`.
    pub fn check(&self) -> Result<()> {
        self.rpo.validate()?;
        self.logprobs.validate()?;
        self.schedule()?;
        self.optimizer.check()?;
        if let Some(norm) = self.max_grad_norm {
            crate::validate::positive_finite("max_grad_norm", norm)?;
        }
        for (name, value) in [
            ("batch_pairs", self.batch_pairs as u64),
            ("grad_accum_steps", self.grad_accum_steps as u64),
            ("save_steps", self.save_steps.unwrap_or(1)),
            ("save_total_limit", self.save_total_limit.unwrap_or(1) as u64),
        ] {
            if value == 0 {
                return Err(Error::InvalidParameter {
                    name,
                    value: 0.0,
                    requirement: "must be >= 1",
                });
            }
        }
        if self.checkpoint_dir.is_none() {
            for (name, set) in [
                ("save_steps", self.save_steps.is_some()),
                ("save_total_limit", self.save_total_limit.is_some()),
            ] {
                if set {
                    return Err(Error::Config {
                        name,
                        requirement: "is set but checkpoint_dir is not: nothing would be saved".to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Builds an [`RpoTrainer`] one setting at a time, with TRL's names; see [`RpoTrainer::builder`].
///
/// Setters that cannot fail at once (a loss name) keep their error for [`RpoTrainerBuilder::build`].
pub struct RpoTrainerBuilder {
    model: Box<dyn PolicyModel>,
    reference: Option<ReferenceSource>,
    config: RpoTrainerConfig,
    resume: bool,
    error: Option<Error>,
}

impl std::fmt::Debug for RpoTrainerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpoTrainerBuilder")
            .field("reference", &self.reference)
            .field("config", &self.config)
            .field("resume", &self.resume)
            .finish()
    }
}

impl RpoTrainerBuilder {
    pub(crate) fn new(model: Box<dyn PolicyModel>) -> Self {
        Self {
            model,
            reference: None,
            config: RpoTrainerConfig::default(),
            resume: false,
            error: None,
        }
    }

    /// Replaces every setting at once (the setters below then change single fields of it).
    pub fn config(mut self, config: RpoTrainerConfig) -> Self {
        self.config = config;
        self
    }

    /// The reference: a frozen model, a [`crate::train::ReferenceCache`], or none. Required.
    pub fn reference(mut self, reference: ReferenceSource) -> Self {
        self.reference = Some(reference);
        self
    }

    /// A frozen reference model (TRL's `ref_model`), run under `no_grad` on every batch.
    pub fn ref_model(self, model: impl PolicyModel + 'static) -> Self {
        self.reference(ReferenceSource::Model(Box::new(model)))
    }

    /// The whole objective (replaces loss, β, label smoothing and the SFT term).
    pub fn objective(mut self, rpo: RpoConfig) -> Self {
        self.config.rpo = rpo;
        self
    }

    /// The DPO loss by TRL's `loss_type` name (`"sigmoid"`, `"ipo"`, …; [`DpoLoss`]'s `FromStr`), weight 1,
    /// keeping β, label smoothing and the SFT term. An unknown name is reported by
    /// [`RpoTrainerBuilder::build`].
    pub fn loss(mut self, loss_type: &str) -> Self {
        match loss_type.parse::<DpoLoss>() {
            Ok(loss) => self.config.rpo.dpo.losses = vec![(loss, 1.0)],
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// TRL's list form, `loss_type=[…]` with `loss_weights=[…]` (`None`: all 1): the DPO variants and
    /// `"sft"` (the token-mean SFT term) with their weights, replacing the loss and the SFT term
    /// ([`RpoConfig::from_trl`]), keeping β. Errors are reported by [`RpoTrainerBuilder::build`].
    pub fn loss_types(mut self, loss_type: &[&str], loss_weights: Option<&[f64]>) -> Self {
        match RpoConfig::from_trl(self.config.rpo.dpo.beta, loss_type, loss_weights) {
            Ok(rpo) => {
                let label_smoothing = self.config.rpo.dpo.label_smoothing;
                self.config.rpo = rpo;
                self.config.rpo.dpo.label_smoothing = label_smoothing;
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// β, the DPO inverse temperature (TRL's `beta`).
    pub fn beta(mut self, beta: f64) -> Self {
        self.config.rpo.dpo.beta = beta;
        self
    }

    /// Label smoothing ε (TRL's `label_smoothing`).
    pub fn label_smoothing(mut self, label_smoothing: f64) -> Self {
        self.config.rpo.dpo.label_smoothing = label_smoothing;
        self
    }

    /// TRL's `rpo_alpha`: adds `alpha` × the token-mean NLL of the chosen responses over the whole step
    /// (TRL's SFT term). For the paper's η·β × summed NLL use [`RpoTrainerBuilder::objective`] with
    /// [`RpoConfig::paper`].
    pub fn rpo_alpha(mut self, alpha: f64) -> Self {
        self.config.rpo.sft_weight = SftWeight::Absolute(alpha);
        self.config.rpo.sft_normalization = SftNormalization::TokenMean;
        self
    }

    /// Peak learning rate (TRL's `learning_rate`).
    pub fn learning_rate(mut self, learning_rate: f64) -> Self {
        self.config.learning_rate = learning_rate;
        self
    }

    /// Optimizer steps of the run (TRL's `max_steps`). Required.
    pub fn max_steps(mut self, max_steps: u64) -> Self {
        self.config.max_steps = max_steps;
        self
    }

    /// Warmup as a fraction of `max_steps` (TRL's `warmup_ratio`).
    pub fn warmup_ratio(mut self, ratio: f64) -> Self {
        self.config.warmup = Warmup::Ratio(ratio);
        self
    }

    /// Warmup in steps (TRL's `warmup_steps`).
    pub fn warmup_steps(mut self, steps: u64) -> Self {
        self.config.warmup = Warmup::Steps(steps);
        self
    }

    /// Decay after warmup (TRL's `lr_scheduler_type`: cosine, linear, constant).
    pub fn lr_scheduler_type(mut self, decay: Decay) -> Self {
        self.config.lr_scheduler = decay;
        self
    }

    /// Decoupled weight decay λ of the decay group (TRL's `weight_decay`).
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.config.optimizer.weight_decay = weight_decay;
        self
    }

    /// Gradient clipping (TRL's `max_grad_norm`; `None`: none).
    pub fn max_grad_norm(mut self, max_grad_norm: Option<f64>) -> Self {
        self.config.max_grad_norm = max_grad_norm;
        self
    }

    /// Seed of the data order (TRL's `seed`).
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// Pairs per micro-batch (TRL's `per_device_train_batch_size`).
    pub fn batch_size(mut self, pairs: usize) -> Self {
        self.config.batch_pairs = pairs;
        self
    }

    /// Micro-batches per optimizer step (TRL's `gradient_accumulation_steps`).
    pub fn gradient_accumulation_steps(mut self, steps: usize) -> Self {
        self.config.grad_accum_steps = steps;
        self
    }

    /// Shuffle the pairs each epoch.
    pub fn shuffle(mut self, shuffle: bool) -> Self {
        self.config.shuffle = shuffle;
        self
    }

    /// Logits or fused hidden-state path.
    pub fn loss_path(mut self, loss_path: LossPath) -> Self {
        self.config.loss_path = loss_path;
        self
    }

    /// How rows are scored (ignore index, shift, chunking, validation, token statistics).
    pub fn logprobs(mut self, options: LogProbOptions) -> Self {
        self.config.logprobs = options;
        self
    }

    /// The checkpoint directory (TRL's `output_dir`): [`RpoTrainer::fit`] saves there, resuming reads
    /// from there.
    pub fn checkpoint_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.checkpoint_dir = Some(dir.into());
        self
    }

    /// Save every this many steps (TRL's `save_steps`).
    pub fn save_steps(mut self, steps: u64) -> Self {
        self.config.save_steps = Some(steps);
        self
    }

    /// Keep at most this many checkpoints (TRL's `save_total_limit`).
    pub fn save_total_limit(mut self, limit: usize) -> Self {
        self.config.save_total_limit = Some(limit);
        self
    }

    /// Append each step's metrics to this JSON Lines file.
    pub fn log_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.log_path = Some(path.into());
        self
    }

    /// Draw the progress line (when stderr is a terminal).
    pub fn progress(mut self, progress: bool) -> Self {
        self.config.progress = progress;
        self
    }

    /// Resume from the newest checkpoint in the checkpoint directory, if there is one, when building
    /// (TRL's `resume_from_checkpoint=True`). A fresh run when there is none.
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// The trainer, resumed if asked.
    ///
    /// # Errors
    /// The first setter error (an unknown loss name); [`Error::Config`] if no reference was given, or
    /// `resume(true)` without a checkpoint directory; as [`RpoTrainer::new`] and
    /// [`RpoTrainer::resume_latest`].
    pub fn build(self) -> Result<RpoTrainer> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let reference = self.reference.ok_or_else(|| Error::Config {
            name: "reference",
            requirement: "give one: ref_model(model), reference(ReferenceSource::Cached(cache)) or \
                          reference(ReferenceSource::Free)"
                .to_string(),
        })?;
        if self.resume && self.config.checkpoint_dir.is_none() {
            return Err(Error::Config {
                name: "resume",
                requirement: "resume(true) needs a checkpoint_dir".to_string(),
            });
        }
        let mut trainer = RpoTrainer::new(self.model, reference, self.config)?;
        if self.resume {
            trainer.resume_latest()?;
        }
        Ok(trainer)
    }
}
