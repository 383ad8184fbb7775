//! The trainer (feature `train`, on by default): the [`PolicyModel`] trait models implement, the
//! [`Trainer`] trait, and [`RpoTrainer`] — generic over the model it trains and gives back, configured by
//! [`RpoTrainerConfig`] ([`config`]) or [`RpoTrainer::builder`] ([`builder`]) with TRL's setting names —
//! with its own [`AdamW`] ([`optim`]), learning-rate schedule ([`schedule`]), reference log-probs
//! ([`reference`](mod@reference), [`score_reference`]), the metrics schema and logs ([`metrics`]) and
//! crash-safe checkpoints ([`checkpoint`]), FLOP counts and utilization ([`flops`]); one process or, with feature `dist`, one rank of a
//! data-parallel job over a c10d process group ([`collective`], docs/distributed.md). [`stages`]: training
//! stages with evaluation rows chained on one data set (SFT → DPO / RPO), and the metrics CSV. Design notes:
//! `docs/design.md`, section "Trainer".
//!
//! The trainer's parts, one job each: `trainer.rs` (the object, its accessors, evaluation), `step/` (the
//! step: micro-batch losses, accumulation by the metrics schema, update; `step/loss.rs` holds every call
//! into the loss API), `run.rs` (the run loop: sampling, reference preparation, logging, save cadence),
//! `state.rs` (the checkpointed state, serde-derived), [`collective`] (one process or a process group).
//!
//! The quick start below is `examples/train_quickstart.rs` (`cargo run --release --example
//! train_quickstart`), a tiny model and the whole training glue; it runs as a doctest too.
//!
#![doc = concat!("```\n", include_str!("../../examples/train_quickstart.rs"), "\n```")]

pub mod builder;
pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod flops;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod precision;
pub mod reference;
mod run;
pub mod schedule;
pub mod stages;
mod state;
mod step;
pub mod trainer;

pub use builder::RpoTrainerBuilder;
pub use collective::Collective;
pub use config::{RpoTrainerConfig, Warmup};
pub use flops::{forward_flops, training_flops, BatchShape, PassFlops};
pub use metrics::{Average, JsonlLogger, Metric, Progress, StepMetrics, METRICS};
pub use model::{
    var_store_parameters, CheckpointedForward, DeferredBackward, HiddenOutput, LossPath, ModelOutput,
    PolicyModel,
};
pub use optim::{default_decay_rule, AdamW, AdamWConfig, DecayRule, ParamState};
pub use precision::{cpu_has_native_bf16, Precision};
pub use reference::{score_reference, ReferenceCache, ReferenceSource, ScoringOptions};
pub use schedule::{Decay, LrSchedule};
pub use stages::{
    metrics_csv, write_metrics_csv, ConsoleHooks, EvalRow, StageHooks, StageSummary, Stages, TrainedSteps,
    METRICS_CSV_HEADER,
};
pub use trainer::{RpoTrainer, Trainer};
