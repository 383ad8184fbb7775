//! A seeded, resumable order over the pairs of a dataset.

use crate::error::{Error, InputError, Result};

/// Where a [`BatchSampler`] stands: the epoch and the position in that epoch's order. Saved in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SamplerPosition {
    /// 0-based epoch.
    pub epoch: u64,
    /// Number of pairs of this epoch already handed out.
    pub cursor: usize,
}

/// Hands out micro-batches of pair indices, epoch after epoch.
///
/// Each epoch's order is a Fisher–Yates shuffle driven by SplitMix64 seeded with `seed` and the epoch
/// number (or the identity order without shuffling), so the order is a function of `(seed, epoch)` alone
/// and a [`SamplerPosition`] restores the sampler exactly. A micro-batch never spans two epochs: the last
/// one of an epoch may be smaller.
#[derive(Debug, Clone)]
pub struct BatchSampler {
    len: usize,
    batch_pairs: usize,
    seed: u64,
    shuffle: bool,
    position: SamplerPosition,
    order: Vec<usize>,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl BatchSampler {
    /// A sampler over `len` pairs, `batch_pairs` per micro-batch, starting at epoch 0.
    ///
    /// # Errors
    /// [`InputError::Config`] if `len` or `batch_pairs` is zero.
    pub fn new(len: usize, batch_pairs: usize, seed: u64, shuffle: bool) -> Result<Self> {
        if len == 0 || batch_pairs == 0 {
            return Err(Error::Input(InputError::Config {
                name: "batch_pairs",
                requirement: format!(
                    "need a non-empty dataset and batch_pairs > 0, got {len} and {batch_pairs}"
                ),
            }));
        }
        let mut sampler = Self {
            len,
            batch_pairs,
            seed,
            shuffle,
            position: SamplerPosition::default(),
            order: Vec::new(),
        };
        sampler.order = sampler.epoch_order(0);
        Ok(sampler)
    }

    /// The order of `epoch` (a permutation of `0..len`).
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        if self.shuffle {
            let mut state = self.seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03);
            for i in (1..order.len()).rev() {
                let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
        }
        order
    }

    /// The current position.
    pub fn position(&self) -> SamplerPosition {
        self.position
    }

    /// Moves to `position` (e.g. from a checkpoint).
    ///
    /// # Errors
    /// [`InputError::Config`] if the cursor is beyond the dataset.
    pub fn set_position(&mut self, position: SamplerPosition) -> Result<()> {
        if position.cursor > self.len {
            return Err(Error::Input(InputError::Config {
                name: "sampler position",
                requirement: format!(
                    "cursor {} is beyond the {} pairs of the dataset",
                    position.cursor, self.len
                ),
            }));
        }
        self.order = self.epoch_order(position.epoch);
        self.position = position;
        Ok(())
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the dataset is empty (never: [`BatchSampler::new`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Micro-batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.len.div_ceil(self.batch_pairs)
    }

    /// The next micro-batch of pair indices (never empty).
    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.position.cursor >= self.len {
            self.position = SamplerPosition {
                epoch: self.position.epoch + 1,
                cursor: 0,
            };
            self.order = self.epoch_order(self.position.epoch);
        }
        let start = self.position.cursor;
        let end = start.saturating_add(self.batch_pairs).min(self.len);
        self.position.cursor = end;
        self.order[start..end].to_vec()
    }
}
