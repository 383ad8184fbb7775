//! [`LogProbOptions`]: how labels are read and checked, and the chunk budgets of the logits and fused paths.

use crate::error::{Error, InputError, Result};

/// The ignore index used by PyTorch, Hugging Face and TRL: positions with this label are not scored.
pub const DEFAULT_IGNORE_INDEX: i64 = -100;

/// Default upper bound of the f32 working chunk of the logits path, in bytes (8 MiB).
pub const DEFAULT_CHUNK_BYTES: usize = 8 << 20;

/// Default memory budget of the fused working set, in bytes (512 MiB). The two-pass schedule holds two f32
/// `[rows, V]` buffers, so `rows = 512 MiB / (8·V)` — 2,097 rows at V = 32,000, 256 at V = 262,144 (the GEMMs
/// need a few hundred rows to run efficiently on CPU; 64 MiB was 1.3× slower at V = 128,256). The one-pass
/// schedule of the built-in losses needs one buffer for a whole pair's scored tokens: 512 tokens per pair at
/// V = 262,144 (Gemma 3) fit. Raise it on GPUs for larger matmuls and longer pairs.
pub const DEFAULT_FUSED_CHUNK_BYTES: usize = 512 << 20;

/// How rows are scored, at every input level: the one options type of [`crate::token_logprobs`],
/// [`crate::sequence_logprobs`], [`crate::fused_sequence_logprobs`], [`crate::fused_loss`] and every loss
/// ([`crate::LossBatch::options`]). `Copy`: pass it by value, no clone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogProbOptions {
    /// Label value that marks positions to skip (prompt, padding). Default [`DEFAULT_IGNORE_INDEX`] (−100).
    pub ignore_index: i64,
    /// Causal shift: logits at `t` predict the label at `t + 1` (result has `T − 1` positions).
    /// Default `false` (labels are already aligned with the logits).
    pub shift: bool,
    /// Upper bound of one f32 working chunk of the logits path in bytes; the number of rows per chunk is
    /// `max(1, chunk_bytes / (V · 4))`. Also used where a fused loss scores a [`crate::Reference::Logits`]
    /// reference. Default [`DEFAULT_CHUNK_BYTES`].
    pub chunk_bytes: usize,
    /// Memory budget of one fused chunk in bytes (hidden-state level): rows per chunk of the two-pass
    /// schedule = `max(1, fused_chunk_bytes / (2 · V · 4))`; the one-pass schedule of the built-in losses packs
    /// whole pairs (SFT: rows) into `fused_chunk_bytes / (k · V · 4)` tokens, `k = 1` (f32/f64 inputs without
    /// soft-cap or token statistics) or 2, and falls back to two passes when one pair does not fit. Default
    /// [`DEFAULT_FUSED_CHUNK_BYTES`].
    pub fused_chunk_bytes: usize,
    /// Check inputs with checks that read values back from the device (a sync on CUDA): label range,
    /// finiteness of the log-probs (policy and reference), non-zero token counts where a loss divides by
    /// them. The one switch of every level and loss; off for speed once inputs are known to be good.
    /// Default `true`.
    pub validate_inputs: bool,
    /// Also compute the per-token statistics ([`crate::TokenStats`]: mean logit, entropy, arg-max accuracy)
    /// inside the chunked pass. Default `false` (they cost time; see the [module docs](super)).
    pub token_stats: bool,
}

impl Default for LogProbOptions {
    fn default() -> Self {
        Self {
            ignore_index: DEFAULT_IGNORE_INDEX,
            shift: false,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            fused_chunk_bytes: DEFAULT_FUSED_CHUNK_BYTES,
            validate_inputs: true,
            token_stats: false,
        }
    }
}

impl LogProbOptions {
    /// Options for causal-LM logits or hidden states: shifted labels, defaults otherwise.
    pub fn causal() -> Self {
        Self {
            shift: true,
            ..Self::default()
        }
    }
    /// Sets [`LogProbOptions::ignore_index`].
    pub fn with_ignore_index(mut self, ignore_index: i64) -> Self {
        self.ignore_index = ignore_index;
        self
    }
    /// Sets [`LogProbOptions::shift`].
    pub fn with_shift(mut self, shift: bool) -> Self {
        self.shift = shift;
        self
    }
    /// Sets [`LogProbOptions::chunk_bytes`].
    pub fn with_chunk_bytes(mut self, chunk_bytes: usize) -> Self {
        self.chunk_bytes = chunk_bytes;
        self
    }
    /// Sets [`LogProbOptions::fused_chunk_bytes`].
    pub fn with_fused_chunk_bytes(mut self, fused_chunk_bytes: usize) -> Self {
        self.fused_chunk_bytes = fused_chunk_bytes;
        self
    }
    /// Sets [`LogProbOptions::validate_inputs`].
    pub fn with_validate_inputs(mut self, validate_inputs: bool) -> Self {
        self.validate_inputs = validate_inputs;
        self
    }
    /// Sets [`LogProbOptions::token_stats`].
    pub fn with_token_stats(mut self, token_stats: bool) -> Self {
        self.token_stats = token_stats;
        self
    }

    /// Checks the options.
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`](crate::InputError::InvalidParameter) for `chunk_bytes == 0` or `fused_chunk_bytes == 0`.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("chunk_bytes", self.chunk_bytes),
            ("fused_chunk_bytes", self.fused_chunk_bytes),
        ] {
            if value == 0 {
                return Err(Error::Input(InputError::InvalidParameter {
                    name,
                    value: value.into(),
                    requirement: "must be > 0",
                }));
            }
        }
        Ok(())
    }
}
