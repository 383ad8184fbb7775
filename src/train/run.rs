//! The run loop of [`RpoTrainer`]: the data walk (sampler, sharding over ranks), the reference it needs,
//! logging, progress and the checkpoint cadence.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::{BatchSampler, Collator, EncodedPair, SamplerPosition};
use crate::error::{Error, InputError, Result};
use crate::train::checkpoint;
use crate::train::metrics::{JsonlLogger, Progress, StepMetrics};
use crate::train::model::PolicyModel;
use crate::train::reference::{score_reference, ReferenceSource, ScoringOptions};
use crate::train::trainer::{RpoTrainer, Trainer};

/// Where [`RpoTrainer::fit`] stands in the data, and the data settings of the run (saved in checkpoints:
/// `data` of `trainer_state.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DataState {
    /// Epoch of the next micro-batch.
    pub(crate) epoch: u64,
    /// Position in the epoch's order.
    pub(crate) cursor: usize,
    /// Pairs in the data set.
    pub(crate) dataset_len: usize,
    /// Pairs per (global) micro-batch.
    pub(crate) batch_pairs: usize,
    /// Micro-batches per step.
    pub(crate) grad_accum_steps: usize,
    /// Whether each epoch is shuffled.
    pub(crate) shuffle: bool,
}

impl DataState {
    fn position(&self) -> SamplerPosition {
        SamplerPosition {
            epoch: self.epoch,
            cursor: self.cursor,
        }
    }

    fn settings(&self) -> (usize, usize, usize, bool) {
        (
            self.dataset_len,
            self.batch_pairs,
            self.grad_accum_steps,
            self.shuffle,
        )
    }
}

/// The error for a [`ReferenceSource::InitialPolicy`] that has not been scored.
pub(crate) fn initial_policy_not_scored() -> Error {
    Error::Input(InputError::Config {
        name: "reference",
        requirement: "ReferenceSource::InitialPolicy is scored by the first fit of a fresh run (or restored from a \
                      checkpoint that holds it); before that, or after step 0 without it, there are no reference \
                      log-probs"
            .to_string(),
    })
}

impl<M: PolicyModel> RpoTrainer<M> {
    /// Makes the reference usable for `pairs`: scores them with the initial policy for
    /// [`ReferenceSource::InitialPolicy`] (only before the first step, with `scoring`), and checks that a
    /// cache covers exactly `pairs.len()` pairs.
    pub(crate) fn prepare_reference(
        &mut self,
        pairs: &[EncodedPair],
        collator: &Collator,
        scoring: bool,
    ) -> Result<()> {
        match &self.reference {
            ReferenceSource::InitialPolicy if scoring && self.step == 0 => {
                let options = ScoringOptions::of_config(&self.config);
                let cache = score_reference(&self.model, pairs, collator, &options, &self.collective)?;
                self.reference = ReferenceSource::Cached(cache);
                Ok(())
            }
            ReferenceSource::InitialPolicy => Err(initial_policy_not_scored()),
            ReferenceSource::Cached(cache) if cache.len() != pairs.len() => Err(Error::Input(InputError::Config {
                name: "reference cache",
                requirement: format!(
                    "holds {} pairs but {} pairs were given: the cache is looked up by pair index, so it must \
                     have been computed over these pairs",
                    cache.len(),
                    pairs.len()
                ),
            })),
            _ => Ok(()),
        }
    }

    /// Resumes from the newest checkpoint in [`crate::train::RpoTrainerConfig::checkpoint_dir`] (its
    /// `latest` pointer), if any; returns its path (`None`: no checkpoint yet, a fresh run).
    ///
    /// # Errors
    /// [`InputError::Config`] without a checkpoint directory; as [`checkpoint::latest`] and
    /// [`RpoTrainer::load_checkpoint`].
    pub fn resume_latest(&mut self) -> Result<Option<PathBuf>> {
        let dir = self.config.checkpoint_dir.clone().ok_or_else(|| {
            Error::Input(InputError::Config {
                name: "checkpoint_dir",
                requirement: "resuming needs a checkpoint directory in the configuration".to_string(),
            })
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
            return Err(Error::Input(InputError::Config {
                name: "gradient_accumulation_steps",
                requirement: format!(
                    "{} micro-batches per optimizer step exceed the {per_epoch} micro-batches of one epoch \
                     ({dataset_len} pairs, batch_size {}): an optimizer step takes at most one epoch",
                    self.config.grad_accum_steps, self.config.batch_pairs
                ),
            }));
        }
        let wanted = DataState {
            epoch: 0,
            cursor: 0,
            dataset_len,
            batch_pairs: self.config.batch_pairs,
            grad_accum_steps: self.config.grad_accum_steps,
            shuffle: self.config.shuffle,
        };
        let position = match self.data {
            Some(d) if d.settings() != wanted.settings() => {
                let (a, b, c, e) = d.settings();
                let (w, x, y, z) = wanted.settings();
                return Err(Error::Input(InputError::Config {
                    name: "data settings",
                    requirement: format!(
                        "the run so far used {a} pairs, {b} pairs per micro-batch, {c} micro-batches per step, \
                         shuffle {e}; now {w}, {x}, {y}, {z}"
                    ),
                }));
            }
            Some(d) => d.position(),
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
        self.data = Some(DataState {
            epoch: position.epoch,
            cursor: position.cursor,
            ..wanted
        });
        Ok(())
    }

    /// With a process group: checks that every rank trains the same run (dataset length, batch settings,
    /// seed, schedule length, current step, parameter count), with one max and one min all-reduce.
    ///
    /// # Errors
    /// [`InputError::Config`](crate::InputError::Config) naming the settings that differ and this rank's value.
    fn check_peers(&self, dataset_len: usize) -> Result<()> {
        if self.collective.world_size() == 1 {
            return Ok(());
        }
        let c = &self.config;
        let settings = [
            ("dataset length", dataset_len as f64),
            ("batch_pairs", c.batch_pairs as f64),
            ("grad_accum_steps", c.grad_accum_steps as f64),
            ("seed (high 32 bits)", (c.seed >> 32) as f64),
            ("seed (low 32 bits)", (c.seed & 0xFFFF_FFFF) as f64),
            ("max_steps", c.max_steps as f64),
            ("shuffle", f64::from(u8::from(c.shuffle))),
            ("current step", self.step as f64),
            ("trained parameter count", self.optimizer.params().len() as f64),
        ];
        let mut max: Vec<f64> = settings.iter().map(|(_, v)| *v).collect();
        let mut min = max.clone();
        self.collective.max_f64(&mut max)?;
        self.collective.min_f64(&mut min)?;
        let differing: Vec<String> = settings
            .iter()
            .zip(max.iter().zip(&min))
            .filter(|(_, (hi, lo))| hi != lo)
            .map(|((name, own), (hi, lo))| format!("{name} (here {own}, over the ranks {lo}..={hi})"))
            .collect();
        if differing.is_empty() {
            return Ok(());
        }
        Err(Error::Input(InputError::Config {
            name: "data-parallel settings",
            requirement: format!(
                "every rank must train the same run; rank {} of {} differs in: {}",
                self.collective.rank(),
                self.collective.world_size(),
                differing.join(", ")
            ),
        }))
    }

    /// Trains on `pairs` until [`crate::train::RpoTrainerConfig::max_steps`], logging, drawing progress and
    /// checkpointing as configured. Continues from the current step and data position (e.g. after
    /// [`RpoTrainer::resume_latest`]). Returns the metrics of the steps taken.
    ///
    /// The JSON Lines log is appended to. In the first `fit` after a checkpoint was loaded it is opened
    /// with [`JsonlLogger::continue_run`]: the lines at its end of steps after the checkpoint, left by the
    /// interrupted process that logged past its last checkpoint, are removed, so every step appears once.
    /// Checkpoints go to [`crate::train::RpoTrainerConfig::checkpoint_dir`] every `save_steps` steps and
    /// after the last step; with `save_total_limit`, older ones are then deleted.
    ///
    /// With [`ReferenceSource::InitialPolicy`], the first `fit` of a fresh run scores `pairs` with the
    /// initial weights first.
    ///
    /// # Errors
    /// [`InputError::Config`] if the data setup differs from the one the run started with, a reference cache
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
            if self.config.phase_timing {
                crate::timing::begin(); // the step's window, collation included
            }
            let mut batches = Vec::with_capacity(self.config.grad_accum_steps);
            let mut epoch = 0;
            for _ in 0..self.config.grad_accum_steps {
                let sampler = self.sampler.as_mut().ok_or(Error::Internal {
                    what: "the trainer's sampler was not prepared before the run loop".to_string(),
                })?;
                let indices = self.collective.shard(sampler.next_batch())?;
                epoch = sampler.position().epoch;
                if indices.is_empty() {
                    continue; // this rank's block of a small last batch of an epoch
                }
                let chunk: Vec<(usize, &EncodedPair)> = indices.iter().map(|&i| (i, &pairs[i])).collect();
                let batch = crate::timing::timed(crate::timing::Phase::Data, || {
                    collator.collate(&chunk, tch::Device::Cpu)
                })?;
                batches.push(batch);
            }
            let mut metrics = self.train_step(&batches)?;
            metrics.epoch = Some(epoch);
            if let (Some(d), Some(s)) = (self.data.as_mut(), self.sampler.as_ref()) {
                let position = s.position();
                (d.epoch, d.cursor) = (position.epoch, position.cursor);
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
    /// saved. With a process group, rank 0 saves and the others wait for it (and fail if it failed).
    fn save_configured(&self) -> Result<bool> {
        let Some(dir) = &self.config.checkpoint_dir else {
            return Ok(false);
        };
        self.collective.on_main(
            "checkpoint",
            "rank 0 failed to write the checkpoint (its own error says why)",
            true,
            || {
                self.save_checkpoint(dir)?;
                if let Some(limit) = self.config.save_total_limit {
                    checkpoint::prune(dir, limit)?;
                }
                Ok(true)
            },
        )
    }
}
