//! The trainer (feature `train`, on by default): the [`PolicyModel`] trait models implement, the
//! [`Trainer`] trait, and [`RpoTrainer`] with its own [`AdamW`] ([`optim`]), learning-rate schedule
//! ([`schedule`]), reference log-probs ([`reference`](mod@reference)), metrics and logs ([`metrics`]) and crash-safe
//! checkpoints ([`checkpoint`]). Design notes: `docs/design.md`, section "Trainer".
//!
//! ```no_run
//! use tch_rpo::data::{encode_records, ByteTokenizer, CollateConfig, Collator, OnMalformed, PreferenceDataset, Tokenizer};
//! use tch_rpo::train::{FitOptions, PolicyModel, ReferenceSource, RpoTrainer, RpoTrainerConfig};
//! use tch_rpo::RpoConfig;
//! # fn run(policy: Box<dyn PolicyModel>, reference: Box<dyn PolicyModel>) -> tch_rpo::Result<()> {
//! let tokenizer = ByteTokenizer::new();
//! let records = PreferenceDataset::from_jsonl("prefs.jsonl", OnMalformed::Error)?;
//! let pairs = encode_records(&tokenizer, &records.records)?;
//! let collator = Collator::new(CollateConfig::new(tokenizer.pad_id()))?;
//! let config = RpoTrainerConfig::paper(RpoConfig::paper_gemma_series(), 100)?;
//! let mut trainer = RpoTrainer::new(policy, ReferenceSource::Model(reference), config)?;
//! let mut options = FitOptions::new(4, 2);
//! options.checkpoint_dir = Some("run/checkpoints".into());
//! options.checkpoint_every = Some(20);
//! options.log_path = Some("run/metrics.jsonl".into());
//! trainer.resume_latest("run/checkpoints".as_ref())?; // no-op on a fresh run
//! trainer.fit(&pairs, &collator, &options)?;
//! # Ok(())
//! # }
//! ```

pub mod checkpoint;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod reference;
pub mod schedule;
pub mod trainer;

pub use metrics::{JsonlLogger, Progress, StepMetrics};
pub use model::{var_store_parameters, HiddenOutput, PolicyModel};
pub use optim::{default_decay_rule, AdamW, AdamWConfig, DecayRule, ParamState};
pub use reference::{ReferenceCache, ReferenceSource};
pub use schedule::{Decay, LrSchedule};
pub use trainer::{FitOptions, LossPath, RpoTrainer, RpoTrainerConfig, Trainer};
