//! [`Collective`]: who trains — one process, or (feature `dist`) one rank of a data-parallel job over a
//! c10d process group — and the few collectives the trainer needs. Every other part of the trainer
//! calls these without knowing which; in one process they are the identity.
//!
//! The configured batch is the global one: [`crate::train::RpoTrainerConfig::batch_pairs`] pairs per
//! global micro-batch, `grad_accum_steps` micro-batches per step, whatever the world size `W`. Every rank
//! draws the same global micro-batches as one process (same seed, same epoch order) and takes its block of
//! each (`dist::shard_range`); so a `W`-rank run computes what one process computes at the same
//! configuration, and its checkpoints resume under any world size. Per step, in this order on every rank:
//!
//! 1. one all-reduce (sum) of the step's counts (pairs, tokens, chosen and rejected response tokens): the
//!    [`crate::loss::GlobalBatch`] normalizers of the whole step, before any forward pass, so each rank's
//!    loss is its share of the global loss and the gradients sum to one process's;
//! 2. the rank's forward and backward passes over its shards (no communication);
//! 3. one all-reduce (sum) of the per-rank skip flags (non-finite loss), the metric sums (weighted with
//!    the global counts, so their sum is the one-process metric) and which gradients are defined;
//! 4. unless a rank skipped, the gradients all-reduced (sum) in flattened buckets
//!    (`dist::all_reduce_buckets_`, `dist::DEFAULT_BUCKET_BYTES`); every rank then holds the same
//!    gradients, so the gradient norm, clipping, the non-finite-norm skip and the AdamW update are the same
//!    on every rank without more communication.
//!
//! Rank 0 alone writes checkpoints and the JSON Lines log and draws progress; after each save an
//! all-reduce of rank 0's outcome is the barrier the others wait at. Every rank resumes from the same
//! checkpoint directory. Reference log-probs ([`crate::train::score_reference`]) are scored shard by shard
//! and gathered.

use std::cell::Cell;
use std::ops::Range;
use std::time::{Duration, Instant};

use tch::Tensor;

#[cfg(feature = "dist")]
use crate::error::DistError;
use crate::error::{Error, Result};

#[cfg(feature = "dist")]
use crate::dist::{
    all_reduce_buckets_, broadcast_buckets_, shard_range, ProcessGroup, ReduceOp, DEFAULT_BUCKET_BYTES,
};

/// One process, or one rank of a data-parallel job (feature `dist`), with the wall-clock time spent in
/// its collectives.
#[derive(Debug, Default)]
pub struct Collective {
    #[cfg(feature = "dist")]
    group: Option<ProcessGroup>,
    communication: Cell<Duration>,
}

impl Collective {
    /// One process: every collective is the identity.
    pub fn single() -> Self {
        Self::default()
    }

    /// One rank of a data-parallel job over `group`.
    #[cfg(feature = "dist")]
    pub fn group(group: ProcessGroup) -> Self {
        Self {
            group: Some(group),
            communication: Cell::default(),
        }
    }

    /// The process group (`None`: one process).
    #[cfg(feature = "dist")]
    pub fn process_group(&self) -> Option<&ProcessGroup> {
        self.group.as_ref()
    }

    /// Takes the process group out, leaving one process.
    #[cfg(feature = "dist")]
    pub(crate) fn take_group(&mut self) -> Option<ProcessGroup> {
        self.group.take()
    }

    /// Whether this is a rank of a process group (`false`: one process).
    pub fn is_distributed(&self) -> bool {
        #[cfg(feature = "dist")]
        if self.group.is_some() {
            return true;
        }
        false
    }

    /// The device the group communicates on (`None`: one process, any device).
    pub fn device(&self) -> Option<tch::Device> {
        #[cfg(feature = "dist")]
        if let Some(group) = &self.group {
            return Some(group.device());
        }
        None
    }

    /// This process's rank (0 in one process).
    pub fn rank(&self) -> usize {
        #[cfg(feature = "dist")]
        if let Some(group) = &self.group {
            return group.rank();
        }
        0
    }

    /// The number of processes (1 in one process).
    pub fn world_size(&self) -> usize {
        #[cfg(feature = "dist")]
        if let Some(group) = &self.group {
            return group.world_size();
        }
        1
    }

    /// Whether this process is rank 0 (or the only process): the one that writes the run's files.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// Wall-clock time spent in collectives (zero in one process).
    pub fn communication_time(&self) -> Duration {
        self.communication.get()
    }

    /// Adds `time` to the communication total (time spent before this collective took over).
    pub(crate) fn add_communication(&self, time: Duration) {
        self.communication.set(self.communication.get() + time);
    }

    /// Runs `collective`, adding its wall-clock time to the communication total.
    #[cfg_attr(not(feature = "dist"), allow(dead_code))]
    fn timed<T>(&self, collective: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let out = collective();
        self.communication.set(self.communication.get() + start.elapsed());
        out
    }

    /// This rank's block `[start, end)` of `n` items (all of them in one process).
    ///
    /// # Errors
    /// As `dist::shard_range`.
    pub(crate) fn shard_range(&self, n: usize) -> Result<Range<usize>> {
        #[cfg(feature = "dist")]
        if let Some(group) = &self.group {
            return shard_range(n, group.rank(), group.world_size());
        }
        Ok(0..n)
    }

    /// This rank's block of a global micro-batch's pair indices (all of them in one process).
    pub(crate) fn shard(&self, indices: Vec<usize>) -> Result<Vec<usize>> {
        let range = self.shard_range(indices.len())?;
        Ok(indices[range].to_vec())
    }

    /// Element-wise sum of `values` over the ranks, in place.
    pub(crate) fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
        self.reduce_f64(values, Reduce::Sum)
    }

    /// Element-wise maximum of `values` over the ranks, in place.
    pub(crate) fn max_f64(&self, values: &mut [f64]) -> Result<()> {
        self.reduce_f64(values, Reduce::Max)
    }

    /// Element-wise minimum of `values` over the ranks, in place.
    pub(crate) fn min_f64(&self, values: &mut [f64]) -> Result<()> {
        self.reduce_f64(values, Reduce::Min)
    }

    fn reduce_f64(&self, values: &mut [f64], op: Reduce) -> Result<()> {
        #[cfg(feature = "dist")]
        if let Some(group) = &self.group {
            let op = match op {
                Reduce::Sum => ReduceOp::Sum,
                Reduce::Max => ReduceOp::Max,
                Reduce::Min => ReduceOp::Min,
            };
            return self.timed(|| group.all_reduce_f64(values, op));
        }
        let _ = (values, op);
        Ok(())
    }

    /// Sums the tensors over the ranks, in place, in flattened buckets.
    pub(crate) fn sum_tensors_(&self, tensors: &mut [Tensor]) -> Result<()> {
        #[cfg(feature = "dist")]
        if let Some(group) = &self.group {
            return self.timed(|| all_reduce_buckets_(group, tensors, DEFAULT_BUCKET_BYTES, ReduceOp::Sum));
        }
        let _ = tensors;
        Ok(())
    }

    /// Overwrites the tensors with rank 0's, in place (under `no_grad`), in flattened buckets.
    pub(crate) fn broadcast_from_main_(&self, tensors: &mut [Tensor]) -> Result<()> {
        #[cfg(feature = "dist")]
        if let Some(group) = &self.group {
            return self
                .timed(|| tch::no_grad(|| broadcast_buckets_(group, tensors, DEFAULT_BUCKET_BYTES, 0)));
        }
        let _ = tensors;
        Ok(())
    }

    /// Runs `write` on rank 0 only, then (with a process group) makes every rank wait for its outcome
    /// (one all-reduce): the other ranks return `Ok(others)`, or, when rank 0 failed, an
    /// [`DistError::Failed`](crate::DistError::Failed) for `op` with `failure`.
    pub(crate) fn on_main<T>(
        &self,
        op: &'static str,
        failure: &'static str,
        others: T,
        write: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let outcome = if self.is_main() { write() } else { Ok(others) };
        if self.world_size() == 1 {
            return outcome;
        }
        let mut failed = [f64::from(u8::from(self.is_main() && outcome.is_err()))];
        self.max_f64(&mut failed)?;
        if !self.is_main() && failed[0] > 0.0 {
            return Err(self.peer_failure(op, failure.to_string()));
        }
        outcome
    }

    /// The error for a collective operation `op` that failed on another rank.
    #[cfg(feature = "dist")]
    pub(crate) fn peer_failure(&self, op: &'static str, message: String) -> Error {
        Error::Dist(DistError::Failed {
            op,
            rank: self.rank(),
            world_size: self.world_size(),
            message,
        })
    }

    /// Without `dist` there is no other rank: reaching this is a bug ([`Error::Internal`]).
    #[cfg(not(feature = "dist"))]
    pub(crate) fn peer_failure(&self, op: &'static str, message: String) -> Error {
        Error::Internal {
            what: format!(
                "collective `{op}` reported another rank's failure in a one-process run: {message}"
            ),
        }
    }
}

/// An element-wise reduction over the ranks.
#[derive(Debug, Clone, Copy)]
enum Reduce {
    Sum,
    Max,
    Min,
}
