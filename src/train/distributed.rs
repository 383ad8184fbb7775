//! Data-parallel training: what [`RpoTrainer`] does differently when it holds a process group
//! ([`RpoTrainer::set_process_group`], [`crate::train::RpoTrainerBuilder::process_group`]; feature `dist`).
//!
//! The configured batch is the global one: [`crate::train::RpoTrainerConfig::batch_pairs`] pairs per
//! global micro-batch, `grad_accum_steps` micro-batches per step, whatever the world size `W`. Every rank
//! draws the same global micro-batches as one process (same seed, same epoch order) and takes its block of
//! each ([`crate::dist::shard_range`]); so a `W`-rank run computes what one process computes at the same
//! configuration, and its checkpoints resume under any world size. Per step, in this order on every rank:
//!
//! 1. one all-reduce (sum) of the step's counts (pairs, tokens, chosen and rejected response tokens): the
//!    [`crate::loss::GlobalBatch`] normalizers of the whole step, before any forward pass, so each rank's
//!    loss is its share of the global loss and the gradients sum to one process's;
//! 2. the rank's forward and backward passes over its shards (no communication);
//! 3. one all-reduce (sum) of the per-rank skip flags (non-finite loss), the metric sums (weighted with
//!    the global counts, so their sum is the one-process metric) and which gradients are defined;
//! 4. unless a rank skipped, the gradients all-reduced (sum) in flattened buckets
//!    ([`crate::dist::all_reduce_buckets_`], [`DEFAULT_BUCKET_BYTES`]); every rank then holds the same
//!    gradients, so the gradient norm, clipping, the non-finite-norm skip and the AdamW update are the same
//!    on every rank without more communication.
//!
//! Rank 0 alone writes checkpoints and the JSON Lines log and draws progress; after each save an
//! all-reduce of rank 0's outcome is the barrier the others wait at. Every rank resumes from the same
//! checkpoint directory. A [`ReferenceSource::InitialPolicy`] reference is scored shard by shard and
//! gathered (`ReferenceCache::compute_distributed`).

use std::cell::Cell;
use std::time::Duration;

use crate::data::{CollatedBatch, Collator, EncodedPair};
use crate::error::Result;
use crate::train::accumulate::StepTotals;
use crate::train::reference::ReferenceCache;
use crate::train::trainer::{Gradients, RpoTrainer};

#[cfg(feature = "dist")]
use crate::dist::{
    all_reduce_buckets_, broadcast_buckets_, shard_range, ProcessGroup, ReduceOp, DEFAULT_BUCKET_BYTES,
};
#[cfg(feature = "dist")]
use crate::error::Error;
#[cfg(feature = "dist")]
use crate::logprobs::LogProbOptions;
#[cfg(feature = "dist")]
use crate::train::accumulate::Accumulated;
#[cfg(feature = "dist")]
use crate::train::model::{LossPath, PolicyModel};
#[cfg(feature = "dist")]
use std::time::Instant;
#[cfg(feature = "dist")]
use tch::Tensor;

/// The data-parallel side of a trainer: its process group (none: one process) and the time spent in its
/// collectives.
#[derive(Debug, Default)]
pub(super) struct Parallel {
    #[cfg(feature = "dist")]
    pub(super) group: Option<ProcessGroup>,
    pub(super) communication: Cell<Duration>,
}

impl Parallel {
    /// Whether this process is rank 0 (or the only process).
    pub(super) fn is_main(&self) -> bool {
        #[cfg(feature = "dist")]
        if let Some(group) = &self.group {
            return group.rank() == 0;
        }
        true
    }

    /// This rank's block of a global micro-batch's pair indices (all of them in one process).
    pub(super) fn shard(&self, indices: Vec<usize>) -> Result<Vec<usize>> {
        #[cfg(feature = "dist")]
        if let Some(group) = &self.group {
            let range = shard_range(indices.len(), group.rank(), group.world_size())?;
            return Ok(indices[range].to_vec());
        }
        Ok(indices)
    }

    /// Runs `collective`, adding its wall-clock time to the communication total.
    #[cfg(feature = "dist")]
    fn timed<T>(&self, collective: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let out = collective();
        self.communication.set(self.communication.get() + start.elapsed());
        out
    }
}

/// The names and values of the settings every rank must share, as exact f64 values.
#[cfg(feature = "dist")]
fn shared_settings(trainer: &RpoTrainer, dataset_len: usize) -> [(&'static str, f64); 9] {
    let c = &trainer.config;
    [
        ("dataset length", dataset_len as f64),
        ("batch_pairs", c.batch_pairs as f64),
        ("grad_accum_steps", c.grad_accum_steps as f64),
        ("seed (high 32 bits)", (c.seed >> 32) as f64),
        ("seed (low 32 bits)", (c.seed & 0xFFFF_FFFF) as f64),
        ("max_steps", c.max_steps as f64),
        ("shuffle", f64::from(u8::from(c.shuffle))),
        ("current step", trainer.step as f64),
        ("trained parameter count", trainer.optimizer.params().len() as f64),
    ]
}

impl RpoTrainer {
    /// Whether this process writes the run's files: rank 0 of the process group, or the only process.
    pub fn is_main_process(&self) -> bool {
        self.parallel.is_main()
    }

    /// Wall-clock time this trainer has spent in process-group collectives (zero without a group): the
    /// step counts, metric sums and gradient all-reduces, the reference gathering and checkpoint barriers.
    pub fn communication_time(&self) -> Duration {
        self.parallel.communication.get()
    }

    /// The step's totals: this process's micro-batches, or with a process group the sums over all ranks
    /// (one all-reduce; a rank may hold no micro-batch).
    pub(super) fn step_totals(&self, batches: &[&CollatedBatch]) -> Result<StepTotals> {
        #[cfg(feature = "dist")]
        if let Some(group) = &self.parallel.group {
            let mut counts = [0.0; 4];
            for b in batches {
                counts[0] += b.pairs() as f64;
                counts[1] += b.tokens as f64;
                counts[2] += b.chosen_tokens as f64;
                counts[3] += b.rejected_tokens as f64;
            }
            self.parallel
                .timed(|| group.all_reduce_f64(&mut counts, ReduceOp::Sum))?;
            if counts[0] == 0.0 {
                return Err(Error::EmptyBatch {
                    arg: "micro_batches",
                    shape: vec![0],
                });
            }
            return Ok(StepTotals::from_counts(
                counts[0] as usize,
                counts[1] as i64,
                counts[2] as i64,
                counts[3] as i64,
            ));
        }
        StepTotals::of(batches)
    }

    /// With a process group: the joint skip decision, the metric sums over ranks and the bucketed gradient
    /// all-reduce (module docs, steps 3 and 4). Without one: `gradients` unchanged.
    pub(super) fn reduce_gradients(&mut self, gradients: Gradients) -> Result<Gradients> {
        #[cfg(feature = "dist")]
        if let Some(group) = &self.parallel.group {
            let (rank, world) = (group.rank(), group.world_size());
            let handles: Vec<Tensor> = self
                .optimizer
                .params()
                .iter()
                .flat_map(|p| p.handles().map(Tensor::shallow_clone))
                .collect();
            let (metrics_at, defined_at) = (world, world + Accumulated::VALUES);
            let mut values = vec![0.0; defined_at + handles.len()];
            if gradients.skip_reason.is_some() {
                values[rank] = 1.0;
            }
            values[metrics_at..defined_at].copy_from_slice(&gradients.accumulated.to_values());
            for (i, handle) in handles.iter().enumerate() {
                if handle.f_grad()?.defined() {
                    values[defined_at + i] = 1.0;
                }
            }
            self.parallel
                .timed(|| group.all_reduce_f64(&mut values, ReduceOp::Sum))?;
            let mut sums = [0.0; Accumulated::VALUES];
            sums.copy_from_slice(&values[metrics_at..defined_at]);
            let accumulated = Accumulated::from_values(&sums);
            let skipped: Vec<usize> = (0..world).filter(|&r| values[r] > 0.0).collect();
            if !skipped.is_empty() {
                let reason = match gradients.skip_reason {
                    Some(own) => format!("rank {rank}: {own}"),
                    None => format!("non-finite values on rank(s) {skipped:?}"),
                };
                return Ok(Gradients {
                    accumulated,
                    skip_reason: Some(reason),
                });
            }
            // A gradient defined on some rank but not here (this rank's shards did not reach the
            // parameter, or it had no shard at all) takes part as zeros; one defined nowhere stays
            // undefined, as in one process.
            for (i, handle) in handles.iter().enumerate() {
                if values[defined_at + i] > 0.0 {
                    crate::autograd::ensure_grad(handle)?;
                }
            }
            let mut grads: Vec<Tensor> = Vec::new();
            for handle in &handles {
                let grad = handle.f_grad()?;
                if grad.defined() && !grads.iter().any(|g| g.data_ptr() == grad.data_ptr()) {
                    grads.push(grad);
                }
            }
            if !grads.is_empty() {
                self.parallel
                    .timed(|| all_reduce_buckets_(group, &mut grads, DEFAULT_BUCKET_BYTES, ReduceOp::Sum))?;
            }
            return Ok(Gradients {
                accumulated,
                skip_reason: None,
            });
        }
        Ok(gradients)
    }

    /// After a checkpoint save attempt (`saved`, rank 0's; other ranks pass `Ok(true)` without saving):
    /// with a process group, every rank waits for rank 0's outcome (one all-reduce), and the other ranks
    /// fail with [`crate::Error::Dist`] if rank 0's save failed.
    pub(super) fn finish_save(&self, saved: Result<bool>) -> Result<bool> {
        #[cfg(feature = "dist")]
        if let Some(group) = &self.parallel.group {
            let mut failed = [f64::from(u8::from(group.rank() == 0 && saved.is_err()))];
            self.parallel
                .timed(|| group.all_reduce_f64(&mut failed, ReduceOp::Max))?;
            if group.rank() != 0 && failed[0] > 0.0 {
                return Err(Error::Dist {
                    op: "checkpoint",
                    rank: group.rank(),
                    world_size: group.world_size(),
                    message: "rank 0 failed to write the checkpoint (its own error says why)".into(),
                });
            }
        }
        saved
    }

    /// With a process group: checks that every rank trains the same run (dataset length, batch settings,
    /// seed, schedule length, current step, parameter count), with one max and one min all-reduce.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the settings that differ and this rank's value.
    pub(super) fn check_peers(&self, dataset_len: usize) -> Result<()> {
        #[cfg(feature = "dist")]
        if let Some(group) = &self.parallel.group {
            let settings = shared_settings(self, dataset_len);
            let mut max: Vec<f64> = settings.iter().map(|(_, v)| *v).collect();
            let mut min = max.clone();
            self.parallel.timed(|| {
                group.all_reduce_f64(&mut max, ReduceOp::Max)?;
                group.all_reduce_f64(&mut min, ReduceOp::Min)
            })?;
            let differing: Vec<String> = settings
                .iter()
                .zip(max.iter().zip(&min))
                .filter(|(_, (hi, lo))| hi != lo)
                .map(|((name, own), (hi, lo))| format!("{name} (here {own}, over the ranks {lo}..={hi})"))
                .collect();
            if !differing.is_empty() {
                return Err(Error::Config {
                    name: "data-parallel settings",
                    requirement: format!(
                        "every rank must train the same run; rank {} of {} differs in: {}",
                        group.rank(),
                        group.world_size(),
                        differing.join(", ")
                    ),
                });
            }
        }
        let _ = dataset_len;
        Ok(())
    }

    /// The initial policy's reference log-probs over `pairs`: scored here, or with a process group, each
    /// rank its block and gathered (`ReferenceCache::compute_distributed`).
    pub(super) fn score_initial_policy(
        &self,
        pairs: &[EncodedPair],
        collator: &Collator,
    ) -> Result<ReferenceCache> {
        #[cfg(feature = "dist")]
        if let Some(group) = &self.parallel.group {
            return self.parallel.timed(|| {
                ReferenceCache::compute_distributed(
                    group,
                    self.model.as_ref(),
                    pairs,
                    collator,
                    self.config.batch_pairs,
                    &self.config.logprobs,
                    self.config.loss_path,
                )
            });
        }
        ReferenceCache::compute(
            self.model.as_ref(),
            pairs,
            collator,
            self.config.batch_pairs,
            &self.config.logprobs,
            self.config.loss_path,
        )
    }
}

#[cfg(feature = "dist")]
impl RpoTrainer {
    /// This trainer with `group` ([`RpoTrainer::set_process_group`]).
    ///
    /// # Errors
    /// As [`RpoTrainer::set_process_group`].
    pub fn with_process_group(mut self, group: ProcessGroup) -> Result<Self> {
        self.set_process_group(group)?;
        Ok(self)
    }

    /// Makes this trainer one rank of a data-parallel job over `group` (module `train::distributed`'s
    /// semantics, docs/distributed.md): the configured batch is the global batch, of which this rank takes
    /// its block; gradients are all-reduced each step; rank 0 writes checkpoints and logs. The model's
    /// trained parameters (and AdamW's f32 master copies) are broadcast from rank 0 at once, so every rank
    /// starts from rank 0's weights. Call it on every rank, before training or resuming; the reference
    /// must be the same on every rank (a frozen model loaded alike, or the same cache).
    ///
    /// # Errors
    /// [`Error::Config`] when `batch_pairs` is not a multiple of the world size, or a group is already
    /// set; [`Error::DeviceMismatch`] when the model is not on the group's device (the CPU for Gloo, the
    /// rank's CUDA device for NCCL); as [`broadcast_buckets_`].
    pub fn set_process_group(&mut self, group: ProcessGroup) -> Result<()> {
        if self.parallel.group.is_some() {
            return Err(Error::Config {
                name: "process_group",
                requirement: "this trainer already has a process group; take_process_group() it first".into(),
            });
        }
        let world = group.world_size();
        if self.config.batch_pairs % world != 0 {
            return Err(Error::Config {
                name: "batch_pairs",
                requirement: format!(
                    "is the global micro-batch, split evenly over the ranks: {} pairs do not split over a \
                     world size of {world}",
                    self.config.batch_pairs
                ),
            });
        }
        if self.model.device() != group.device() {
            return Err(Error::DeviceMismatch {
                arg: "model",
                other: "process group",
                expected: group.device(),
                got: self.model.device(),
            });
        }
        let mut weights: Vec<Tensor> = Vec::new();
        for p in self.optimizer.params() {
            weights.push(p.param.f_detach()?);
            if let Some(master) = &p.master {
                weights.push(master.f_detach()?);
            }
        }
        if !weights.is_empty() {
            let start = Instant::now();
            tch::no_grad(|| broadcast_buckets_(&group, &mut weights, DEFAULT_BUCKET_BYTES, 0))?;
            self.parallel
                .communication
                .set(self.parallel.communication.get() + start.elapsed());
        }
        self.parallel.group = Some(group);
        Ok(())
    }

    /// The process group, if this trainer has one.
    pub fn process_group(&self) -> Option<&ProcessGroup> {
        self.parallel.group.as_ref()
    }

    /// Takes the process group back (e.g. for the next trainer of a pipeline); the trainer is a
    /// one-process trainer afterwards.
    pub fn take_process_group(&mut self) -> Option<ProcessGroup> {
        self.parallel.group.take()
    }
}

#[cfg(feature = "dist")]
impl ReferenceCache {
    /// [`ReferenceCache::compute`] split over the ranks of `group`: each rank scores its block of `pairs`
    /// ([`shard_range`]), and one all-reduce (sum) of a zero-filled `[2N]` f64 buffer in which each rank
    /// wrote its block gathers the cache on every rank. Every rank passes the same pairs, and the same
    /// model weights.
    ///
    /// # Errors
    /// As [`ReferenceCache::compute`] on this rank; [`Error::Dist`] when another rank failed to score its
    /// block; as [`ProcessGroup::all_reduce_f64`].
    pub fn compute_distributed(
        group: &ProcessGroup,
        model: &dyn PolicyModel,
        pairs: &[EncodedPair],
        collator: &Collator,
        batch_pairs: usize,
        options: &LogProbOptions,
        path: LossPath,
    ) -> Result<Self> {
        let n = pairs.len();
        let range = shard_range(n, group.rank(), group.world_size())?;
        // [chosen; N], [rejected; N], failed-rank count.
        let mut values = vec![0.0; 2 * n + 1];
        let local = if range.is_empty() {
            Ok(None)
        } else {
            Self::compute(model, &pairs[range.clone()], collator, batch_pairs, options, path).map(Some)
        };
        match &local {
            Ok(Some(cache)) => {
                for (k, i) in range.enumerate() {
                    let (chosen, rejected) = cache.get(k).unwrap_or((f64::NAN, f64::NAN));
                    values[i] = chosen;
                    values[n + i] = rejected;
                }
            }
            Ok(None) => {}
            Err(_) => values[2 * n] = 1.0,
        }
        group.all_reduce_f64(&mut values, ReduceOp::Sum)?;
        local?;
        if values[2 * n] > 0.0 {
            return Err(Error::Dist {
                op: "reference",
                rank: group.rank(),
                world_size: group.world_size(),
                message: format!(
                    "{} other rank(s) failed to score their block of the reference log-probs",
                    values[2 * n]
                ),
            });
        }
        values.truncate(2 * n);
        let rejected = values.split_off(n);
        Self::from_values(values, rejected)
    }
}
