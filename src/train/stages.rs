//! Training stages with evaluations, chained on one data set: [`Stages::train`] runs one stage (an
//! [`RpoTrainer`] to the end of its schedule, evaluating at the start and a given number of times per
//! epoch) and collects its evaluation rows ([`EvalRow`]: TRL's `logps/*` and `rewards/*` metrics plus an
//! optional task accuracy); the trained model comes back, so SFT → DPO / RPO chain without copying
//! parameters, and one [`Collective`] (one process, or a process group) passes from stage to stage.
//! [`StageHooks`] observes a stage (and supplies the task accuracy); [`ConsoleHooks`] prints a table, the
//! timings and a [`MemoryReport`]. The rows go to a CSV file with [`write_metrics_csv`].
//!
//! `examples/rpo_gemma` is this module's user: SFT, reference scoring ([`Stages::score_reference`]), then
//! DPO and RPO from the same start.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use super::collective::Collective;
use super::config::RpoTrainerConfig;
use super::metrics::StepMetrics;
use super::model::PolicyModel;
use super::reference::{score_reference, ReferenceCache, ReferenceSource, ScoringOptions};
use super::trainer::RpoTrainer;
use crate::data::{Collator, EncodedPair};
use crate::error::{Error, InputError, Result};
use crate::memory::MemoryReport;

/// The exact header of the CSV file [`write_metrics_csv`] writes (one column per [`EvalRow`] field).
pub const METRICS_CSV_HEADER: &str =
    "method,epoch,step,chosen_logp,rejected_logp,reward_accuracy,reward_margin,gold_accuracy";

/// One evaluation of a stage's model on the training pairs ([`RpoTrainer::evaluate`]), with the task
/// accuracy of [`StageHooks::gold_accuracy`].
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRow {
    /// The stage's name (e.g. `sft`, `dpo`, `rpo`).
    pub method: String,
    /// `step / steps_per_epoch`.
    pub epoch: f64,
    /// Optimizer steps taken before the evaluation.
    pub step: u64,
    /// Mean summed log-prob of the chosen responses (`logps/chosen`; NaN when not computed).
    pub chosen_logp: f64,
    /// Mean summed log-prob of the rejected responses (`logps/rejected`).
    pub rejected_logp: f64,
    /// Fraction of pairs with a positive reward margin (`rewards/accuracies`).
    pub reward_accuracy: f64,
    /// Mean reward margin (`rewards/margins`).
    pub reward_margin: f64,
    /// The task accuracy (`None`: not measured).
    pub gold_accuracy: Option<f64>,
}

impl EvalRow {
    /// The row of `metrics` (by name, NaN for a metric not computed) for stage `method` at `step`.
    pub fn from_metrics(
        method: &str,
        step: u64,
        steps_per_epoch: u64,
        metrics: &StepMetrics,
        gold_accuracy: Option<f64>,
    ) -> Self {
        let metric = |name: &str| metrics.get(name).unwrap_or(f64::NAN);
        Self {
            method: method.to_string(),
            epoch: step as f64 / steps_per_epoch as f64,
            step,
            chosen_logp: metric("logps/chosen"),
            rejected_logp: metric("logps/rejected"),
            reward_accuracy: metric("rewards/accuracies"),
            reward_margin: metric("rewards/margins"),
            gold_accuracy,
        }
    }

    /// The header of the table [`EvalRow::table_line`] prints rows of.
    pub fn table_header() -> String {
        format!(
            "{:<6} {:>6} {:>5} {:>11} {:>13} {:>9} {:>9} {:>6}",
            "method", "epoch", "step", "chosen_logp", "rejected_logp", "rew_acc", "margin", "gold"
        )
    }

    /// The row as a line of a fixed-width table (rounded; the gold accuracy `n/a` when not measured).
    pub fn table_line(&self) -> String {
        let gold = self
            .gold_accuracy
            .map_or_else(|| "n/a".to_string(), |g| format!("{g:.3}"));
        format!(
            "{:<6} {:>6.2} {:>5} {:>11.4} {:>13.4} {:>9.3} {:>9.4} {:>6}",
            self.method,
            self.epoch,
            self.step,
            self.chosen_logp,
            self.rejected_logp,
            self.reward_accuracy,
            self.reward_margin,
            gold
        )
    }
}

/// `rows` as CSV text: [`METRICS_CSV_HEADER`], then one line per row with every number in Rust's shortest
/// round-trip form (`f64`'s `Display`), the gold accuracy empty when not measured.
pub fn metrics_csv(rows: &[EvalRow]) -> String {
    let mut text = format!("{METRICS_CSV_HEADER}\n");
    for r in rows {
        let gold = r.gold_accuracy.map_or_else(String::new, |g| g.to_string());
        let (m, e, s, c, j) = (&r.method, r.epoch, r.step, r.chosen_logp, r.rejected_logp);
        let (a, g) = (r.reward_accuracy, r.reward_margin);
        // Writing into a String cannot fail.
        let _ = writeln!(text, "{m},{e},{s},{c},{j},{a},{g},{gold}");
    }
    text
}

/// Writes [`metrics_csv`] of `rows` to the file `path`, atomically ([`crate::atomic::write_file`]).
///
/// # Errors
/// Those of [`crate::atomic::write_file`] (argument `path`).
pub fn write_metrics_csv(path: &Path, rows: &[EvalRow]) -> Result<()> {
    let text = metrics_csv(rows);
    crate::atomic::write_file(path, "path", |file| {
        file.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
    })
}

/// One run of training steps of a stage, between two evaluations ([`StageHooks::trained`]).
#[derive(Debug)]
pub struct TrainedSteps<'a> {
    /// The stage's name.
    pub method: &'a str,
    /// The trainer's step after the run.
    pub step: u64,
    /// The metrics of the steps ([`RpoTrainer::fit_steps`]).
    pub history: &'a [StepMetrics],
    /// Wall-clock seconds of the run.
    pub seconds: f64,
    /// Whether this process is the main one (rank 0, or the only process).
    pub main: bool,
}

/// The end of a stage ([`StageHooks::finished`]; main process only). Its `Display` is one line:
/// `"{method}: {steps} steps in {s} s ({steps/s} steps/s) on {ranks} rank(s), {s} s in collectives"`.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSummary {
    /// The stage's name.
    pub method: String,
    /// Optimizer steps taken in the stage.
    pub steps: u64,
    /// Seconds spent training (evaluations excluded).
    pub train_seconds: f64,
    /// Processes of the job.
    pub world_size: usize,
    /// Seconds spent in collectives ([`RpoTrainer::communication_time`]).
    pub communication_seconds: f64,
}

impl std::fmt::Display for StageSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} steps in {:.2} s ({:.2} steps/s) on {} rank(s), {:.2} s in collectives",
            self.method,
            self.steps,
            self.train_seconds,
            self.steps as f64 / self.train_seconds.max(1e-9),
            self.world_size,
            self.communication_seconds
        )
    }
}

/// What a stage reports to, and asks of, its caller. Every method has a default that does nothing (the
/// gold accuracy: `None`).
pub trait StageHooks<M> {
    /// The task accuracy of `model` for an evaluation row (main process only).
    ///
    /// # Errors
    /// The implementation's; it ends the stage.
    fn gold_accuracy(&mut self, _model: &M) -> Result<Option<f64>> {
        Ok(None)
    }
    /// An evaluation row was made (main process only).
    ///
    /// # Errors
    /// The implementation's; it ends the stage.
    fn evaluated(&mut self, _row: &EvalRow) -> Result<()> {
        Ok(())
    }
    /// A run of training steps ended (every process).
    ///
    /// # Errors
    /// The implementation's; it ends the stage.
    fn trained(&mut self, _steps: &TrainedSteps<'_>) -> Result<()> {
        Ok(())
    }
    /// The stage ended (main process only).
    ///
    /// # Errors
    /// The implementation's; it ends the stage.
    fn finished(&mut self, _summary: &StageSummary) -> Result<()> {
        Ok(())
    }
}

/// [`StageHooks`] that print: each row's [`EvalRow::table_line`] to stdout; to stderr, the time per step
/// when a run of steps took at least one second per step, a warning for a skipped step, the
/// [`StageSummary`], and a [`MemoryReport`] phase after each run of steps (`"{method} train to step {n}"`)
/// and each evaluation (`"{method} evaluate at step {n}"`). The gold accuracy comes from the function
/// given to [`ConsoleHooks::with_gold`] (default none).
pub struct ConsoleHooks<'a, M> {
    memory: &'a MemoryReport,
    gold: GoldFn<'a, M>,
}

/// The gold-accuracy function of [`ConsoleHooks`].
type GoldFn<'a, M> = Box<dyn FnMut(&M) -> Result<Option<f64>> + 'a>;

impl<'a, M> ConsoleHooks<'a, M> {
    /// Console hooks reporting memory phases to `memory` (a disabled report prints nothing).
    pub fn new(memory: &'a MemoryReport) -> Self {
        Self {
            memory,
            gold: Box::new(|_| Ok(None)),
        }
    }

    /// The same hooks with `gold` as [`StageHooks::gold_accuracy`].
    pub fn with_gold(self, gold: impl FnMut(&M) -> Result<Option<f64>> + 'a) -> Self {
        Self {
            gold: Box::new(gold),
            ..self
        }
    }
}

impl<M> StageHooks<M> for ConsoleHooks<'_, M> {
    fn gold_accuracy(&mut self, model: &M) -> Result<Option<f64>> {
        (self.gold)(model)
    }

    fn evaluated(&mut self, row: &EvalRow) -> Result<()> {
        let phase = format!("{} evaluate at step {}", row.method, row.step);
        self.memory.phase(&phase);
        println!("{}", row.table_line());
        Ok(())
    }

    fn trained(&mut self, run: &TrainedSteps<'_>) -> Result<()> {
        self.memory
            .phase(&format!("{} train to step {}", run.method, run.step));
        let steps = run.history.len();
        // Time per step, for models where it matters (a real model on CPU), not small ones.
        if run.main && steps > 0 && run.seconds >= steps as f64 {
            eprintln!("{}: {:.1} s/step", run.method, run.seconds / steps as f64);
        }
        if let (Some(skipped), true) = (run.history.iter().find(|m| m.skipped), run.main) {
            let reason = skipped.skip_reason.as_deref().unwrap_or("?");
            eprintln!("warning: {} step {} skipped: {reason}", run.method, skipped.step);
        }
        Ok(())
    }

    fn finished(&mut self, summary: &StageSummary) -> Result<()> {
        eprintln!("{summary}");
        Ok(())
    }
}

/// A chain of training stages on one data set: the pairs, their collator, the evaluation cadence, the
/// [`Collective`] each stage's trainer uses in turn, and the rows of every stage so far.
pub struct Stages<'a> {
    pairs: &'a [EncodedPair],
    collator: &'a Collator,
    steps_per_epoch: u64,
    evals_per_epoch: u64,
    eval_batch: usize,
    collective: Collective,
    rows: Vec<EvalRow>,
}

impl<'a> Stages<'a> {
    /// Stages training on `pairs` (collated by `collator`) over `collective`, with `steps_per_epoch`
    /// optimizer steps per epoch (for the rows' epoch), evaluated `evals_per_epoch` times per epoch (every
    /// `max(1, steps_per_epoch / evals_per_epoch)` steps, and at the end) in batches of `eval_batch` pairs.
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`] when `steps_per_epoch`, `evals_per_epoch` or `eval_batch` is 0.
    pub fn new(
        pairs: &'a [EncodedPair],
        collator: &'a Collator,
        collective: Collective,
        steps_per_epoch: u64,
        evals_per_epoch: usize,
        eval_batch: usize,
    ) -> Result<Self> {
        for (name, value) in [
            ("steps_per_epoch", steps_per_epoch),
            ("evals_per_epoch", evals_per_epoch as u64),
            ("eval_batch", eval_batch as u64),
        ] {
            if value == 0 {
                return Err(Error::Input(InputError::InvalidParameter {
                    name,
                    value: value.into(),
                    requirement: "must be >= 1",
                }));
            }
        }
        Ok(Self {
            pairs,
            collator,
            steps_per_epoch,
            evals_per_epoch: evals_per_epoch as u64,
            eval_batch,
            collective,
            rows: Vec::new(),
        })
    }

    /// The collective the stages train over.
    pub fn collective(&self) -> &Collective {
        &self.collective
    }

    /// Whether this process is the main one (evaluates, and reports through the hooks' main-only methods).
    pub fn is_main(&self) -> bool {
        self.collective().is_main()
    }

    /// The evaluation rows of every stage so far, in order (main process only: empty elsewhere).
    pub fn rows(&self) -> &[EvalRow] {
        &self.rows
    }

    /// The reference log-probs of `model` on the pairs ([`score_reference`] over the stages' collective).
    ///
    /// # Errors
    /// Those of [`score_reference`].
    pub fn score_reference(
        &self,
        model: &dyn PolicyModel,
        options: &ScoringOptions,
    ) -> Result<ReferenceCache> {
        score_reference(model, self.pairs, self.collator, options, self.collective())
    }

    /// Trains `model` as stage `method`: an [`RpoTrainer`] with `reference` and `config` over the stages'
    /// collective, to the end of its schedule in runs of the evaluation interval, evaluating (main process
    /// only) before the first step and after each run; returns the trained model. The rows are appended to
    /// [`Stages::rows`] and given to `hooks`.
    ///
    /// # Errors
    /// Those of [`RpoTrainer::new`], [`RpoTrainer::set_collective`], [`RpoTrainer::fit_steps`],
    /// [`RpoTrainer::evaluate`] and the hooks'.
    pub fn train<M: PolicyModel>(
        &mut self,
        method: &str,
        model: M,
        reference: ReferenceSource,
        config: RpoTrainerConfig,
        hooks: &mut dyn StageHooks<M>,
    ) -> Result<M> {
        let mut trainer = RpoTrainer::new(model, reference, config)?;
        let collective = std::mem::replace(&mut self.collective, Collective::single());
        if let Err(error) = trainer.set_collective(collective) {
            self.collective = trainer.take_collective();
            return Err(error);
        }
        let result = self.run(method, &mut trainer, hooks);
        self.collective = trainer.take_collective();
        result.map(|()| trainer.into_model())
    }

    fn run<M: PolicyModel>(
        &mut self,
        method: &str,
        trainer: &mut RpoTrainer<M>,
        hooks: &mut dyn StageHooks<M>,
    ) -> Result<()> {
        let total = trainer.schedule().total_steps;
        let every = (self.steps_per_epoch / self.evals_per_epoch).max(1);
        let main = trainer.is_main_process();
        if main {
            self.evaluate(method, trainer, hooks)?;
        }
        let (first_step, mut train_seconds) = (trainer.step(), 0.0);
        while trainer.step() < total {
            let steps = every.min(total - trainer.step());
            let started = Instant::now();
            let history = trainer.fit_steps(self.pairs, self.collator, Some(steps))?;
            let seconds = started.elapsed().as_secs_f64();
            train_seconds += seconds;
            let step = trainer.step();
            let history = &history;
            hooks.trained(&TrainedSteps {
                method,
                step,
                history,
                seconds,
                main,
            })?;
            if main {
                self.evaluate(method, trainer, hooks)?;
            }
        }
        if main {
            hooks.finished(&StageSummary {
                method: method.to_string(),
                steps: trainer.step() - first_step,
                train_seconds,
                world_size: trainer.collective().world_size(),
                communication_seconds: trainer.communication_time().as_secs_f64(),
            })?;
        }
        Ok(())
    }

    fn evaluate<M: PolicyModel>(
        &mut self,
        method: &str,
        trainer: &mut RpoTrainer<M>,
        hooks: &mut dyn StageHooks<M>,
    ) -> Result<()> {
        let metrics = trainer.evaluate(self.pairs, self.collator, self.eval_batch)?;
        let gold = hooks.gold_accuracy(trainer.model())?;
        let row = EvalRow::from_metrics(method, trainer.step(), self.steps_per_epoch, &metrics, gold);
        hooks.evaluated(&row)?;
        self.rows.push(row);
        Ok(())
    }
}
