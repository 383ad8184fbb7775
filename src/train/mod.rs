//! The trainer (feature `train`, on by default): the [`PolicyModel`] trait models implement, the
//! [`Trainer`] trait, and [`RpoTrainer`] — configured by [`RpoTrainerConfig`] ([`config`]) or [`RpoTrainer::builder`]
//! ([`builder`]) with TRL's setting names — with its own [`AdamW`] ([`optim`]), learning-rate schedule
//! ([`schedule`]), reference log-probs ([`reference`](mod@reference)), metrics and logs ([`metrics`]) and
//! crash-safe checkpoints ([`checkpoint`]); with feature `dist`, data-parallel over a c10d process group
//! (docs/distributed.md). Design notes: `docs/design.md`, section "Trainer".
//!
//! The quick start below is `examples/train_quickstart.rs` (`cargo run --release --example
//! train_quickstart`), a tiny model and the whole training glue; it runs as a doctest too.
//!
#![doc = concat!("```\n", include_str!("../../examples/train_quickstart.rs"), "\n```")]

mod accumulate;
pub mod builder;
pub mod checkpoint;
pub mod config;
mod distributed;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod reference;
pub mod schedule;
mod state;
pub mod trainer;

pub use builder::RpoTrainerBuilder;
pub use config::{RpoTrainerConfig, Warmup};
pub use metrics::{JsonlLogger, Progress, StepMetrics};
pub use model::{
    var_store_parameters, CheckpointedForward, DeferredBackward, HiddenOutput, LossPath, ModelOutput,
    PolicyModel,
};
pub use optim::{default_decay_rule, AdamW, AdamWConfig, DecayRule, ParamState};
pub use reference::{ReferenceCache, ReferenceSource};
pub use schedule::{Decay, LrSchedule};
pub use trainer::{RpoTrainer, Trainer};
