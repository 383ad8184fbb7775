//! Sharding one process's batch order over the ranks of a data-parallel job.

use std::ops::Range;

use crate::data::sampler::{BatchSampler, SamplerPosition};
use crate::error::{Error, InputError, Result};

/// The block of a global batch of `len` items that `rank` of `world_size` takes: contiguous, the first
/// `len % world_size` ranks one item more than the rest. The blocks of ranks `0..world_size` are disjoint
/// and, in rank order, cover `0..len`; a block is empty when `len < world_size` and `rank ≥ len`.
///
/// # Errors
/// [`InputError::Config`](crate::InputError::Config) when `world_size` is 0 or `rank ≥ world_size`.
pub fn shard_range(len: usize, rank: usize, world_size: usize) -> Result<Range<usize>> {
    if world_size == 0 || rank >= world_size {
        return Err(Error::Input(InputError::Config {
            name: "rank",
            requirement: format!("need 0 ≤ rank < world_size, got rank {rank} of world_size {world_size}"),
        }));
    }
    let (base, extra) = (len / world_size, len % world_size);
    let start = rank * base + rank.min(extra);
    let size = base + usize::from(rank < extra);
    Ok(start..start + size)
}

/// A [`BatchSampler`] over global batches, of which this rank gets its [`shard_range`].
///
/// The global batches are exactly those of `BatchSampler::new(len, global_batch_pairs, seed, shuffle)` in
/// one process (same seed, same epoch order); concatenating the ranks' shards in rank order gives each
/// global batch back, and no pair is in two shards. [`DistributedSampler::position`] is the global
/// sampler's position, the same on every rank, so a checkpoint written by one rank resumes all of them.
#[derive(Debug, Clone)]
pub struct DistributedSampler {
    global: BatchSampler,
    rank: usize,
    world_size: usize,
}

impl DistributedSampler {
    /// A sampler over `len` pairs, `global_batch_pairs` per global micro-batch, for `rank` of `world_size`.
    ///
    /// # Errors
    /// [`InputError::Config`](crate::InputError::Config) when `len` or `global_batch_pairs` is 0, or `rank ≥ world_size`.
    pub fn new(
        len: usize,
        global_batch_pairs: usize,
        seed: u64,
        shuffle: bool,
        rank: usize,
        world_size: usize,
    ) -> Result<Self> {
        shard_range(0, rank, world_size)?;
        Ok(Self {
            global: BatchSampler::new(len, global_batch_pairs, seed, shuffle)?,
            rank,
            world_size,
        })
    }

    /// This rank's shard of the next global micro-batch, and the global batch's size (the same on every
    /// rank, and what whole-step normalizers count). The shard is empty when the global batch has at most
    /// `rank` pairs (e.g. the last batch of an epoch).
    pub fn next_shard(&mut self) -> (Vec<usize>, usize) {
        let global = self.global.next_batch();
        let range = shard_range(global.len(), self.rank, self.world_size)
            .expect("rank < world_size was checked by new");
        (global[range].to_vec(), global.len())
    }

    /// The global sampler's position.
    pub fn position(&self) -> SamplerPosition {
        self.global.position()
    }

    /// Moves to `position` (e.g. from a checkpoint).
    ///
    /// # Errors
    /// As [`BatchSampler::set_position`].
    pub fn set_position(&mut self, position: SamplerPosition) -> Result<()> {
        self.global.set_position(position)
    }

    /// The one-process sampler whose batches are sharded.
    pub fn global(&self) -> &BatchSampler {
        &self.global
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }
}
