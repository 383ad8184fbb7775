//! The crate's one error type.
//!
//! Every public function returns [`Result`]. Each variant names the offending argument and what was seen,
//! so a bad input is reported at the call that received it instead of surfacing later as a NaN, a panic
//! inside libtorch, or a device-side assert on CUDA.

use tch::{Device, Kind, TchError};

/// Errors returned by `tch-rpo`.
///
/// | variant | raised when |
/// |---|---|
/// | [`Error::Shape`] | a tensor has the wrong rank or size, e.g. logits `[B, T, V]` vs labels `[B, T]` |
/// | [`Error::BatchMismatch`] | chosen / rejected / reference tensors disagree on the number of pairs |
/// | [`Error::DType`] | labels are not `i64`, logits are not floating point, … |
/// | [`Error::LabelOutOfRange`] | a label is `< 0` or `>= V` and is not the ignore index (validation on) |
/// | [`Error::DeviceMismatch`] | two inputs live on different devices |
/// | [`Error::EmptyBatch`] | a tensor has no pairs / rows |
/// | [`Error::NoValidTokens`] | a sequence has no valid token but the reduction divides by its token count (validation on) |
/// | [`Error::InvalidParameter`] | β ≤ 0, label smoothing outside `[0, 0.5)`, a non-positive normalizer, … |
/// | [`Error::NonFinite`] | logits (or log-probs) contain NaN / ±inf where they matter (validation on) |
/// | [`Error::Data`] | a preference record is malformed (bad JSON, missing field, empty response): file and line |
/// | [`Error::Io`] | reading or writing a file failed |
/// | [`Error::Checkpoint`] | a checkpoint is missing, truncated, corrupted, or does not fit the model |
/// | [`Error::Tokenizer`] | a tokenizer could not be loaded or failed to encode |
/// | [`Error::Gguf`] | a GGUF file is malformed, truncated, uses an unsupported tensor type, or lacks a tensor / key |
/// | [`Error::Config`] | a trainer / collation setting is inconsistent (e.g. max prompt length ≥ max length) |
/// | [`Error::DistEnv`] | a launcher variable (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, …) is missing or malformed |
/// | [`Error::DistTimeout`] | a process-group operation waited longer than its timeout |
/// | [`Error::DistPeerLost`] | a peer's connection closed (it died) during a process-group operation |
/// | [`Error::Dist`] | any other process-group failure (e.g. the store's port is taken, a group already failed) |
/// | [`Error::Torch`] | libtorch itself reported an error |
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor's shape is not what the function needs.
    #[error("`{arg}` has shape {got:?}, expected {expected}")]
    Shape {
        /// The argument's name.
        arg: &'static str,
        /// What was expected, in words (e.g. "[B, T] matching logits [B, T, V] = [2, 5, 7]").
        expected: String,
        /// The shape that was seen.
        got: Vec<i64>,
    },
    /// Two per-pair tensors disagree on the number of pairs.
    #[error("`{arg}` has {got} rows but `{other}` has {expected}: chosen, rejected and reference inputs must describe the same pairs")]
    BatchMismatch {
        /// The argument whose size disagrees.
        arg: &'static str,
        /// The argument it was compared with.
        other: &'static str,
        /// The size of `other`.
        expected: i64,
        /// The size of `arg`.
        got: i64,
    },
    /// A tensor has the wrong element type.
    #[error("`{arg}` has dtype {got:?}, expected {expected}")]
    DType {
        /// The argument's name.
        arg: &'static str,
        /// The accepted dtypes, in words.
        expected: &'static str,
        /// The dtype that was seen.
        got: Kind,
    },
    /// A label is outside `[0, vocab)` and is not the ignore index.
    #[error("`{arg}` holds label {value} (at flat position {position}), outside [0, {vocab}) and not the ignore index {ignore_index}")]
    LabelOutOfRange {
        /// The argument's name.
        arg: &'static str,
        /// The offending label value.
        value: i64,
        /// Its position in the flattened label tensor.
        position: i64,
        /// The vocabulary size `V`.
        vocab: i64,
        /// The ignore index in force.
        ignore_index: i64,
    },
    /// Two inputs live on different devices.
    #[error("`{arg}` is on {got:?} but `{other}` is on {expected:?}: move them to one device")]
    DeviceMismatch {
        /// The argument on the unexpected device.
        arg: &'static str,
        /// The argument it was compared with.
        other: &'static str,
        /// The device of `other`.
        expected: Device,
        /// The device of `arg`.
        got: Device,
    },
    /// A tensor has no rows (no pairs, no sequences, or no token positions).
    #[error("`{arg}` is empty (shape {shape:?}): a loss over an empty batch is undefined")]
    EmptyBatch {
        /// The argument's name.
        arg: &'static str,
        /// The shape that was seen.
        shape: Vec<i64>,
    },
    /// A sequence has no valid (non-ignored) token, but the reduction divides by its token count.
    #[error("`{arg}`: sequence {index} has no valid token, but {reduction} divides by its token count")]
    NoValidTokens {
        /// The argument's name.
        arg: &'static str,
        /// The row (sequence) index.
        index: i64,
        /// The reduction that needs at least one token.
        reduction: &'static str,
    },
    /// A scalar hyper-parameter is outside its domain.
    #[error("`{name}` = {value} is invalid: {requirement}")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// The value that was seen.
        value: f64,
        /// What it must satisfy.
        requirement: &'static str,
    },
    /// A tensor holds NaN or ±inf where the result depends on it.
    #[error("`{arg}` holds {count} non-finite value(s) (NaN or ±inf) {location}")]
    NonFinite {
        /// The argument's name.
        arg: &'static str,
        /// How many offending values (or rows) were found.
        count: i64,
        /// Where, in words (e.g. "in rows with a valid label").
        location: &'static str,
    },
    /// A preference record is malformed. `file` and `line` (1-based) locate it.
    #[error("{file}:{line}: {message}")]
    Data {
        /// The file (or source name) the record came from.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// An I/O operation on `path` failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint cannot be used: missing or truncated file, checksum mismatch, unknown format, or
    /// tensors that do not match the model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: String,
        /// What is wrong, in words.
        reason: String,
    },
    /// A GGUF file cannot be read or used: bad magic, unsupported version, truncated header or tensor data,
    /// a misaligned or out-of-range tensor offset, an unknown or unsupported tensor type, a missing tensor
    /// or metadata key, or a metadata value of the wrong type.
    #[error("GGUF {path}: {reason}")]
    Gguf {
        /// The GGUF file (or `<memory>` for in-memory dequantization).
        path: String,
        /// What is wrong, in words.
        reason: String,
    },
    /// A tokenizer could not be loaded or failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A configuration value is inconsistent with another one or unsupported.
    #[error("`{name}` is invalid: {requirement}")]
    Config {
        /// The setting's name.
        name: &'static str,
        /// What it must satisfy, with the values seen.
        requirement: String,
    },
    /// A variable of the launcher environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
    /// `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`) is missing or malformed.
    #[error("launcher environment: {var} {}: {requirement}", match value { Some(v) => format!("= {v:?}"), None => "is not set".to_string() })]
    DistEnv {
        /// The variable's name.
        var: &'static str,
        /// Its value, `None` when unset.
        value: Option<String>,
        /// What it must be.
        requirement: String,
    },
    /// A process-group operation (`op`) on `rank` waited longer than the group's timeout.
    #[error(
        "rank {rank} of {world_size}: `{op}` timed out after {timeout_ms} ms{}: {message}",
        unresponsive_note(unresponsive)
    )]
    DistTimeout {
        /// The operation (`connect`, `all_reduce`, `broadcast`, `barrier`).
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// The group's size.
        world_size: usize,
        /// The timeout in force, in milliseconds.
        timeout_ms: u64,
        /// Ranks that did not report the same failure within the group's failure window (dead, hung, or
        /// blocked elsewhere); empty when unknown.
        unresponsive: Vec<usize>,
        /// libtorch's message.
        message: String,
    },
    /// A peer's connection closed, reset or was refused during `op` on `rank`: the peer (or the store's
    /// host) died.
    #[error(
        "rank {rank} of {world_size}: `{op}` lost a peer{}: {message}",
        unresponsive_note(unresponsive)
    )]
    DistPeerLost {
        /// The operation (`connect`, `all_reduce`, `broadcast`, `barrier`).
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// The group's size.
        world_size: usize,
        /// Ranks that did not report the same failure within the group's failure window; empty when unknown.
        unresponsive: Vec<usize>,
        /// libtorch's message.
        message: String,
    },
    /// Any other failure of a process group.
    #[error("rank {rank} of {world_size}: `{op}` failed: {message}")]
    Dist {
        /// The operation (`connect`, `all_reduce`, `broadcast`, `barrier`).
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// The group's size.
        world_size: usize,
        /// What went wrong.
        message: String,
    },
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
}

fn unresponsive_note(ranks: &[usize]) -> String {
    match ranks {
        [] => String::new(),
        [r] => format!(" (rank {r} did not respond)"),
        _ => format!(" (ranks {ranks:?} did not respond)"),
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
