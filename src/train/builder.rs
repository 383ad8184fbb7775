//! [`RpoTrainerBuilder`]: an [`RpoTrainer`] set up one TRL-named setting at a time.

use crate::error::{Error, InputError, Result};
use crate::logprobs::LogProbOptions;
use crate::loss::dpo::DpoLoss;
use crate::loss::rpo::{RpoConfig, SftWeight};
use crate::loss::sft::SftNormalization;
use crate::train::collective::Collective;
use crate::train::config::{RpoTrainerConfig, Warmup};
use crate::train::model::{LossPath, PolicyModel};
use crate::train::precision::Precision;
use crate::train::reference::ReferenceSource;
use crate::train::schedule::Decay;
use crate::train::trainer::RpoTrainer;
use std::path::PathBuf;

impl<M: PolicyModel> RpoTrainer<M> {
    /// A builder for a trainer of `model`, with TRL's setting names and defaults
    /// ([`RpoTrainerConfig`]'s [`Default`]):
    ///
    /// ```no_run
    /// # use tch_rpo::train::{PolicyModel, RpoTrainer};
    /// # fn run(policy: impl PolicyModel + 'static, reference: impl PolicyModel + 'static) -> tch_rpo::Result<()> {
    /// let trainer = RpoTrainer::builder(policy)
    ///     .ref_model(reference)
    ///     .loss("sigmoid")
    ///     .beta(0.1)
    ///     .rpo_alpha(1.0)
    ///     .learning_rate(5e-7)
    ///     .max_steps(1000)
    ///     .checkpoint_dir("run/checkpoints")
    ///     .save_steps(100)
    ///     .save_total_limit(2)
    ///     .resume(true)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(model: M) -> RpoTrainerBuilder<M> {
        RpoTrainerBuilder::new(model)
    }
}

/// Builds an [`RpoTrainer`] one setting at a time, with TRL's names; see [`RpoTrainer::builder`].
///
/// Setters that cannot fail at once (a loss name) keep their error for [`RpoTrainerBuilder::build`].
pub struct RpoTrainerBuilder<M: PolicyModel> {
    model: M,
    reference: Option<ReferenceSource>,
    config: RpoTrainerConfig,
    resume: bool,
    error: Option<Error>,
    collective: Collective,
}

impl<M: PolicyModel> std::fmt::Debug for RpoTrainerBuilder<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpoTrainerBuilder")
            .field("reference", &self.reference)
            .field("config", &self.config)
            .field("resume", &self.resume)
            .finish()
    }
}

impl<M: PolicyModel> RpoTrainerBuilder<M> {
    pub(crate) fn new(model: M) -> Self {
        Self {
            model,
            reference: None,
            config: RpoTrainerConfig::default(),
            resume: false,
            error: None,
            collective: Collective::single(),
        }
    }

    /// Replaces every setting at once (the setters below then change single fields of it).
    pub fn config(mut self, config: RpoTrainerConfig) -> Self {
        self.config = config;
        self
    }

    /// The reference: a frozen model, the initial policy scored once by the first `fit`
    /// ([`ReferenceSource::InitialPolicy`]), a [`crate::train::ReferenceCache`], the policy with its
    /// adapters off ([`ReferenceSource::AdaptersOff`]), or none. Required.
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
        let (beta, label_smoothing) = (self.config.rpo.dpo.beta, self.config.rpo.dpo.label_smoothing);
        match RpoConfig::from_trl(beta, loss_type, loss_weights, label_smoothing) {
            Ok(rpo) => self.config.rpo = rpo,
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

    /// Logits or fused hidden-state path (default [`LossPath::Auto`]: fused where the model offers hidden
    /// states).
    pub fn loss_path(mut self, loss_path: LossPath) -> Self {
        self.config.loss_path = loss_path;
        self
    }

    /// Memory budget in bytes of one chunk of the fused hidden-state path, > 0
    /// ([`LogProbOptions::fused_chunk_bytes`] of the trainer's `logprobs`; set after
    /// [`Self::logprobs`], which replaces the whole options).
    pub fn fused_chunk_bytes(mut self, bytes: usize) -> Self {
        self.config.logprobs.fused_chunk_bytes = bytes;
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

    /// The peak FLOP/s of one device, `> 0` ([`RpoTrainerConfig::peak_flops`]): each step then reports its
    /// model FLOP utilization. Checked by [`RpoTrainerBuilder::build`].
    pub fn peak_flops(mut self, flops_per_second: f64) -> Self {
        self.config.peak_flops = Some(flops_per_second);
        self
    }

    /// The precision of the passes ([`RpoTrainerConfig::precision`]): `Precision::Bf16` for bf16 mixed
    /// precision, `Precision::Auto` for bf16 where the CPU multiplies it natively.
    pub fn precision(mut self, precision: Precision) -> Self {
        self.config.precision = Some(precision);
        self
    }

    /// Time each step's phases ([`RpoTrainerConfig::phase_timing`]).
    pub fn phase_timing(mut self, enabled: bool) -> Self {
        self.config.phase_timing = enabled;
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

    /// Data-parallel training over `group` (feature `dist`): the configured batch is the global batch
    /// (`batch_size` pairs per global micro-batch, which must split evenly over the ranks), each rank
    /// trains on its block of it, and a run of `W` ranks computes what one process computes at the same
    /// settings. Every rank builds its trainer with the same settings; rank 0 writes checkpoints and the
    /// log. See [`RpoTrainer::set_process_group`] and docs/distributed.md.
    #[cfg(feature = "dist")]
    pub fn process_group(self, group: crate::dist::ProcessGroup) -> Self {
        self.collective(Collective::group(group))
    }

    /// One process or a rank of a data-parallel job ([`RpoTrainer::set_collective`]). Default: one
    /// process.
    pub fn collective(mut self, collective: Collective) -> Self {
        self.collective = collective;
        self
    }

    /// The trainer, resumed if asked.
    ///
    /// # Errors
    /// The first setter error (an unknown loss name); [`InputError::Config`] if no reference was given, or
    /// `resume(true)` without a checkpoint directory; as [`RpoTrainer::new`],
    /// [`RpoTrainer::set_collective`] and [`RpoTrainer::resume_latest`].
    pub fn build(self) -> Result<RpoTrainer<M>> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let reference = self.reference.ok_or_else(|| Error::Input(InputError::Config {
            name: "reference",
            requirement: "give one: ref_model(model), reference(ReferenceSource::Model(model)), \
                          reference(ReferenceSource::InitialPolicy), reference(ReferenceSource::Cached(cache)), \
                          reference(ReferenceSource::AdaptersOff) or reference(ReferenceSource::Free)"
                .to_string(),
        }))?;
        if self.resume && self.config.checkpoint_dir.is_none() {
            return Err(Error::Input(InputError::Config {
                name: "resume",
                requirement: "resume(true) needs a checkpoint_dir".to_string(),
            }));
        }
        let mut trainer = RpoTrainer::new(self.model, reference, self.config)?;
        if self.collective.is_distributed() {
            trainer.set_collective(self.collective)?;
        }
        if self.resume {
            trainer.resume_latest()?;
        }
        Ok(trainer)
    }
}
