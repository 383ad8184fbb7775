//! The crate's error type, by domain.
//!
//! Every public function that can fail returns [`Result`] (accessors of values already checked, such as
//! `GgufFile::version`, and builders of plain settings return their value directly). Each variant names the
//! offending argument and what was seen, so a bad input is reported at the call that received it instead of
//! surfacing later as a NaN, a panic inside libtorch, or a device-side assert on CUDA.

use tch::TchError;

#[cfg(feature = "dist")]
mod dist;
mod domains;
mod input;
mod lora;
mod values;
#[cfg(feature = "dist")]
pub use dist::{DistError, DistStorePeer};
pub use domains::{CheckpointError, DataError, GgufError, WeightsError};
pub use input::InputError;
pub use lora::LoraError;
pub use values::{ParamValue, ParameterMismatch, ShapeMismatch};

/// Errors returned by `tch-rpo`, by domain: each domain's enum says what went wrong, and `Display` of
/// an [`Error`] is that of its domain's error (transparent).
///
/// | variant | raised when |
/// |---|---|
/// | [`Error::Input`] ([`InputError`]) | a tensor, argument or setting is not what the function needs (shape, dtype, device, value, path, …) |
/// | [`Error::Data`] ([`DataError`]) | a preference record is malformed (file and line), a tokenizer cannot be loaded or fails |
/// | [`Error::Checkpoint`] ([`CheckpointError`]) | a trainer checkpoint (or a weights file read like one) is missing, truncated, corrupted, or from another run |
/// | [`Error::Gguf`] ([`GgufError`]) | a GGUF file is malformed, truncated, or lacks a key |
/// | [`Error::Weights`] ([`WeightsError`]) | a parameter set does not match the model (missing / unexpected / reshaped), a weight's type or values are refused, an architecture is not implemented |
/// | [`Error::Lora`] ([`LoraError`]) | LoRA adapters name an unknown layer, have a rank the layer cannot take, or were made on another base model |
/// | `Error::Dist` (`DistError`, feature `dist` only) | a process group or its launcher environment failed |
/// | [`Error::Io`] | reading or writing a file failed |
/// | [`Error::OutOfMemory`] | a host buffer (e.g. a GGUF tensor's bytes) could not be allocated |
/// | [`Error::LibtorchLoad`] | a libtorch library could not be loaded at run time ([`crate::libtorch::init_cuda`]) |
/// | [`Error::Internal`] | tch-rpo broke one of its own invariants (a bug; please report it) |
/// | [`Error::Torch`] | libtorch itself reported an error |
///
/// The enums are `#[non_exhaustive]`: a `match` on them needs a `_` arm, so new variants are not breaking
/// changes. Each domain error converts into [`Error`] (`From`), so `?` lifts it.
///
/// `Display` of [`Error::Torch`] keeps libtorch's message and drops the C++ backtrace that libtorch appends
/// (often several kilobytes of `frame #N: …` lines); [`Error::torch_details`], `Debug` and
/// [`std::error::Error::source`] (the [`TchError`]) keep the whole text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor, argument or setting is not what the function needs.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A preference record or a tokenizer cannot be used.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A trainer checkpoint cannot be used.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A GGUF file cannot be read or used.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A parameter set or a weight does not fit the model.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// LoRA adapters cannot be attached, trained or loaded as asked.
    #[error(transparent)]
    Lora(#[from] LoraError),
    /// A process group failed (feature `dist`).
    #[cfg(feature = "dist")]
    #[error(transparent)]
    Dist(#[from] DistError),
    /// An I/O operation on `path` failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A host buffer could not be allocated (the allocator refused: a memory limit, or not enough memory).
    /// Reported instead of aborting the process, e.g. when a valid GGUF file holds a tensor larger than the
    /// memory available.
    #[error("cannot allocate {bytes} bytes for {what}: out of memory")]
    OutOfMemory {
        /// What the buffer was for, in words (e.g. "the data of GGUF tensor `token_embd.weight`").
        what: String,
        /// The size that was requested.
        bytes: u64,
    },
    /// A libtorch shared library could not be loaded at run time, or was loaded too late to take effect.
    #[error("cannot load {library}: {reason}")]
    LibtorchLoad {
        /// The library (a path, or a file name when no path was found).
        library: String,
        /// What went wrong (the dynamic loader's message, or why loading had no effect).
        reason: String,
    },
    /// tch-rpo broke one of its own invariants: a bug in this crate, not a problem with the caller's input.
    #[error("internal error (a bug in tch-rpo, please report): {what}")]
    Internal {
        /// What invariant was broken, in words.
        what: String,
    },
    /// libtorch reported an error. `Display` shows libtorch's message without its C++ backtrace: the lines
    /// before libtorch's `Exception raised from …` line; [`Error::torch_details`], `Debug` and the source
    /// error keep everything.
    #[error("libtorch: {}", torch_summary(.0))]
    Torch(#[from] TchError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// `value` as a reader wants it: Rust's shortest round-trip form (`0.1`, `1000`, `NaN`) for magnitudes in
/// `[1e-4, 1e16)` and zero, scientific notation (`1e-300`, `2.5e20`) outside, instead of hundreds of digits.
pub(crate) fn readable(value: f64) -> String {
    let magnitude = value.abs();
    if value == 0.0 || !value.is_finite() || (1e-4..1e16).contains(&magnitude) {
        format!("{value}")
    } else {
        format!("{value:e}")
    }
}

/// libtorch's message in `error` without the C++ backtrace: for [`TchError::Torch`], the lines before
/// libtorch's `Exception raised from …` line (which starts the backtrace), without trailing blank lines
/// (the first line if the message starts with the backtrace); other [`TchError`] variants as they display.
fn torch_summary(error: &TchError) -> String {
    match error {
        TchError::Torch(message) => {
            let mut lines: Vec<&str> = message
                .lines()
                .take_while(|line| !line.trim_start().starts_with("Exception raised from"))
                .collect();
            while lines.last().is_some_and(|line| line.trim().is_empty()) {
                lines.pop();
            }
            if lines.is_empty() {
                message.lines().next().unwrap_or("").to_string()
            } else {
                lines.join("\n")
            }
        }
        other => other.to_string(),
    }
}

impl Error {
    /// The whole text libtorch reported for an [`Error::Torch`], C++ backtrace included (for debugging;
    /// `Display` shows only the message). `None` for other variants.
    pub fn torch_details(&self) -> Option<String> {
        match self {
            Error::Torch(error) => Some(error.to_string()),
            _ => None,
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {

    /// Without the `dist` feature there is no `Error::Dist` (nor `DistError`): this `match` names every
    /// top-level variant and no `Dist` arm, and the crate itself is not bound by `#[non_exhaustive]`, so
    /// it compiles only when no `Dist` variant exists.
    #[cfg(not(feature = "dist"))]
    #[test]
    fn without_dist_there_is_no_dist_variant() {
        use super::Error;
        fn domain(error: &Error) -> &'static str {
            match error {
                Error::Input(_) => "input",
                Error::Data(_) => "data",
                Error::Checkpoint(_) => "checkpoint",
                Error::Gguf(_) => "gguf",
                Error::Weights(_) => "weights",
                Error::Lora(_) => "lora",
                Error::Io { .. } => "io",
                Error::OutOfMemory { .. } => "out of memory",
                Error::LibtorchLoad { .. } => "libtorch load",
                Error::Internal { .. } => "internal",
                Error::Torch(_) => "torch",
            }
        }
        let internal = Error::Internal { what: "x".into() };
        assert_eq!(domain(&internal), "internal");
    }
}
