//! Options of the fused path.

use crate::error::{Error, Result};
use crate::logprobs::LogProbOptions;

/// Default memory budget of the fused working set, in bytes (512 MiB). The two-pass schedule holds two f32
/// `[rows, V]` buffers, so `rows = 512 MiB / (8·V)` — 2,097 rows at V = 32,000, 256 at V = 262,144 (the GEMMs
/// need a few hundred rows to run efficiently on CPU; 64 MiB was 1.3× slower at V = 128,256). The one-pass
/// schedule of the built-in losses needs one buffer for a whole pair's scored tokens: 512 tokens per pair at
/// V = 262,144 (Gemma 3) fit. Raise it on GPUs for larger matmuls and longer pairs.
pub const DEFAULT_FUSED_CHUNK_BYTES: usize = 512 << 20;

/// Options of the fused path: the [`LogProbOptions`] (ignore index, causal shift, input validation, token
/// statistics — the same meaning as on the logits path) plus the fused working-set budget.
///
/// `logprobs.chunk_bytes` is used only where the fused functions score a [`crate::Reference::Logits`]
/// reference on the logits path; the fused passes use [`FusedOptions::chunk_bytes`].
#[derive(Debug, Clone, PartialEq)]
pub struct FusedOptions {
    /// How labels are read and checked (and whether token statistics are computed).
    pub logprobs: LogProbOptions,
    /// Memory budget of one fused chunk in bytes: rows per chunk of the two-pass schedule =
    /// `max(1, chunk_bytes / (2 · V · 4))`; the one-pass schedule of the built-in losses packs whole pairs
    /// (SFT: rows) into `chunk_bytes / (k · V · 4)` tokens, `k = 1` (f32/f64 inputs without soft-cap or token
    /// statistics) or 2, and falls back to two passes when one pair does not fit. Default
    /// [`DEFAULT_FUSED_CHUNK_BYTES`].
    pub chunk_bytes: usize,
}

impl Default for FusedOptions {
    fn default() -> Self {
        Self {
            logprobs: LogProbOptions::default(),
            chunk_bytes: DEFAULT_FUSED_CHUNK_BYTES,
        }
    }
}

impl From<LogProbOptions> for FusedOptions {
    /// These log-prob options with the default fused budget.
    fn from(logprobs: LogProbOptions) -> Self {
        Self {
            logprobs,
            ..Self::default()
        }
    }
}

impl FusedOptions {
    /// Options for causal-LM hidden states: [`LogProbOptions::causal`], default budget.
    pub fn causal() -> Self {
        LogProbOptions::causal().into()
    }
    /// Sets [`FusedOptions::chunk_bytes`].
    pub fn with_chunk_bytes(mut self, chunk_bytes: usize) -> Self {
        self.chunk_bytes = chunk_bytes;
        self
    }
    /// Replaces [`FusedOptions::logprobs`].
    pub fn with_logprobs(mut self, logprobs: LogProbOptions) -> Self {
        self.logprobs = logprobs;
        self
    }

    /// Checks the options.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for `chunk_bytes == 0` (either budget).
    pub fn validate(&self) -> Result<()> {
        self.logprobs.validate()?;
        if self.chunk_bytes == 0 {
            return Err(Error::InvalidParameter {
                name: "chunk_bytes",
                value: 0.0,
                requirement: "must be > 0",
            });
        }
        Ok(())
    }
}
