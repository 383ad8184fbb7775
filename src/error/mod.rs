//! The crate's one error type.
//!
//! Every public function that can fail returns [`Result`] (accessors of values already checked, such as
//! `GgufFile::version`, and builders of plain settings return their value directly). Each variant names the
//! offending argument and what was seen, so a bad input is reported at the call that received it instead of
//! surfacing later as a NaN, a panic inside libtorch, or a device-side assert on CUDA.

use tch::{Device, Kind, TchError};

mod values;
pub use values::{ParamValue, ParameterMismatch, ShapeMismatch};

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
/// | [`Error::InvalidPath`] | an artifact's path is empty, its parent folder is missing, or what is there must not be replaced |
/// | [`Error::Checkpoint`] | a checkpoint is missing, truncated, corrupted, or does not fit the model |
/// | [`Error::Tokenizer`] | a tokenizer could not be loaded or failed to encode |
/// | [`Error::Gguf`] | a GGUF file is malformed, truncated, uses an unsupported tensor type, or lacks a tensor / key |
/// | [`Error::Config`] | a trainer / collation setting is inconsistent (e.g. max prompt length ≥ max length) |
/// | [`Error::OutOfMemory`] | a host buffer (e.g. a GGUF tensor's bytes) could not be allocated |
/// | [`Error::LibtorchLoad`] | a libtorch library could not be loaded at run time ([`crate::libtorch::init_cuda`]) |
/// | [`Error::Parameters`] | a set of named parameters (weights file, GGUF file, parameters given or saved, checkpoint) lacks, adds or reshapes parameters the model expects |
/// | [`Error::TensorType`] | a weight in a GGUF file is stored in a ggml type the model does not accept for it |
/// | [`Error::NonFiniteWeight`] | a weight being loaded or saved holds NaN or ±inf |
/// | [`Error::UnsupportedArchitecture`] | a model configuration or file names an architecture not implemented |
/// | [`Error::TokenOutOfRange`] | input token ids fall outside the model's vocabulary |
/// | [`Error::DistEnv`] | a launcher variable (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, …) is missing or malformed (feature `dist`) |
/// | [`Error::DistTimeout`] | a process-group operation waited longer than its timeout (feature `dist`) |
/// | [`Error::DistPeerLost`] | a peer's connection closed (it died) during a process-group operation (feature `dist`) |
/// | [`Error::DistStore`] | the rendezvous store at `MASTER_ADDR:MASTER_PORT` was not reached, or its peer did not speak c10d's store protocol in time ([`DistStorePeer`] says what it did) (feature `dist`) |
/// | [`Error::Dist`] | any other process-group failure (e.g. the store's port is taken, a group already failed) (feature `dist`) |
/// | [`Error::Internal`] | tch-rpo broke one of its own invariants (a bug; please report it) |
/// | [`Error::Torch`] | libtorch itself reported an error |
///
/// The enum is `#[non_exhaustive]`: a `match` on it needs a `_` arm, so new variants are not breaking changes.
///
/// `Display` of [`Error::Torch`] keeps libtorch's message and drops the C++ backtrace that libtorch appends
/// (often several kilobytes of `frame #N: …` lines); [`Error::torch_details`], `Debug` and
/// [`std::error::Error::source`] (the [`TchError`]) keep the whole text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
        /// The value that was seen: a number, a count, or a description (e.g. `[]` for an empty list).
        value: ParamValue,
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
    /// A path given to write an artifact (a GGUF file, an exported folder, a checkpoint) cannot be used,
    /// found before anything is written: it is empty, names no entry (`..`, `/`), its parent folder does
    /// not exist, or the entry there is of the wrong kind (a directory where a file goes, a file where a
    /// folder goes) or holds what replacing it would delete (a subfolder, a symbolic link).
    #[error("`{arg}` = `{path}` {reason}")]
    InvalidPath {
        /// The argument's name.
        arg: &'static str,
        /// The path as given.
        path: String,
        /// What is wrong with it, in words.
        reason: String,
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
    /// A weight tensor in a GGUF file is stored in a ggml type the model does not accept for it (e.g. a
    /// quantized norm weight, or a type this crate cannot dequantize).
    #[error("tensor `{name}` in {file} is stored as {got}, but the model accepts {expected} for it")]
    TensorType {
        /// The tensor name.
        name: String,
        /// The file holding it.
        file: String,
        /// The accepted types, in words (e.g. "F32").
        expected: String,
        /// The ggml type in the file (e.g. "Q8_0").
        got: String,
    },
    /// A weight tensor holds NaN or ±inf: a tensor of a file being loaded (checked once after
    /// dequantization and conversion to the model's dtype), or a parameter being saved (every export
    /// format refuses them).
    #[error(
        "tensor `{tensor}` in {file} holds {count} non-finite value(s) (NaN or ±inf), the first ({}) at flat \
         index {index}",
        readable(*.value)
    )]
    NonFiniteWeight {
        /// The tensor (or parameter) name.
        tensor: String,
        /// The file being loaded, or "the parameters to save".
        file: String,
        /// How many values are NaN or ±inf.
        count: i64,
        /// The flat index (row-major, PyTorch order) of the first of them.
        index: i64,
        /// That value: NaN, inf or -inf.
        value: f64,
    },
    /// A set of named parameters (a weights file or folder, a GGUF file, parameters given in memory or to
    /// save, a trainer checkpoint's model or optimizer state) does not match the parameters a model
    /// expects: some are missing, some are unexpected, some have another shape. Every mismatch found in
    /// `origin` is listed (the display shows the first few of each kind and how many more).
    #[error("{origin} does not match {expected_by}: {mismatch}")]
    Parameters {
        /// Where the parameters came from (a file, a folder, or e.g. "the parameters to save").
        origin: String,
        /// What defines the expected parameters (e.g. "the gemma3 config", "this trainer's model").
        expected_by: String,
        /// What does not match.
        mismatch: ParameterMismatch,
    },
    /// tch-rpo broke one of its own invariants: a bug in this crate, not a problem with the caller's input.
    #[error("internal error (a bug in tch-rpo, please report): {what}")]
    Internal {
        /// What invariant was broken, in words.
        what: String,
    },
    /// A configuration or file names a model architecture that is not implemented.
    #[error("unsupported architecture {found:?}: supported are {supported}")]
    UnsupportedArchitecture {
        /// The architecture that was found (e.g. `model_type` of a config.json).
        found: String,
        /// The supported ones, in words.
        supported: &'static str,
    },
    /// Token ids fall outside the model's vocabulary.
    #[error("`{arg}` holds ids in [{min}, {max}], outside the vocabulary [0, {vocab})")]
    TokenOutOfRange {
        /// The argument's name.
        arg: &'static str,
        /// The smallest id seen.
        min: i64,
        /// The largest id seen.
        max: i64,
        /// The vocabulary size.
        vocab: i64,
    },
    #[cfg(feature = "dist")]
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
    #[cfg(feature = "dist")]
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
    #[cfg(feature = "dist")]
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
    #[cfg(feature = "dist")]
    /// This rank, a client of the rendezvous store (c10d's TCPStore) at `addr`, could not meet there within
    /// the timeout: `peer` says what the process at `addr` did, `detail` adds what was seen.
    #[error(
        "rank {rank} of {world_size}: the rendezvous store at {addr} {peer} (timeout {timeout_ms} ms){}",
        detail_note(detail)
    )]
    DistStore {
        /// This process's rank.
        rank: usize,
        /// The group's size.
        world_size: usize,
        /// `MASTER_ADDR:MASTER_PORT`.
        addr: String,
        /// The timeout in force, in milliseconds.
        timeout_ms: u64,
        /// What the peer at `addr` did.
        peer: DistStorePeer,
        /// What was seen: the first bytes of another protocol, the last connection error, or libtorch's
        /// message; may be empty.
        detail: String,
    },
    #[cfg(feature = "dist")]
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
    /// libtorch reported an error. `Display` shows libtorch's message without its C++ backtrace: the lines
    /// before libtorch's `Exception raised from …` line; [`Error::torch_details`], `Debug` and the source
    /// error keep everything.
    #[error("libtorch: {}", torch_summary(.0))]
    Torch(#[from] TchError),
}

#[cfg(feature = "dist")]
/// What the process at the rendezvous store's address did, in [`Error::DistStore`].
///
/// `Display` says it in words, e.g. "accepted the connection but never answered".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DistStorePeer {
    /// No process accepted a connection within the timeout (refused, unreachable, or the connection
    /// attempt itself timed out): the store's host is not up, or the address is wrong.
    Unreachable,
    /// A process accepted the connection but sent nothing within the timeout.
    NeverAnswered,
    /// A process answered, but not in c10d's store protocol (e.g. an HTTP server on that port).
    OtherProtocol,
    /// A process accepted the connection and closed it (or reset it) without a full answer.
    Closed,
    /// The peer answered in the store protocol (or began to), then sent nothing more within the timeout.
    StoppedAnswering,
}

#[cfg(feature = "dist")]
impl std::fmt::Display for DistStorePeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DistStorePeer::Unreachable => "could not be reached: no process accepted a connection",
            DistStorePeer::NeverAnswered => "accepted the connection but never answered",
            DistStorePeer::OtherProtocol => {
                "answered in another protocol, not c10d's TCPStore (is MASTER_PORT another service's port?)"
            }
            DistStorePeer::Closed => "closed the connection without answering",
            DistStorePeer::StoppedAnswering => "answered, then stopped answering",
        })
    }
}

#[cfg(feature = "dist")]
fn detail_note(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

#[cfg(feature = "dist")]
fn unresponsive_note(ranks: &[usize]) -> String {
    match ranks {
        [] => String::new(),
        [r] => format!(" (rank {r} did not respond)"),
        _ => format!(" (ranks {ranks:?} did not respond)"),
    }
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
