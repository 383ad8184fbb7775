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
/// | [`Error::MissingTensor`] | a model's weights file lacks a parameter its configuration implies |
/// | [`Error::TensorShape`] | a weight in a file has another shape than its configuration implies |
/// | [`Error::UnexpectedTensor`] | a weights file holds a tensor that is no parameter of the model |
/// | [`Error::UnsupportedArchitecture`] | a model configuration or file names an architecture not implemented |
/// | [`Error::TokenOutOfRange`] | input token ids fall outside the model's vocabulary |
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
    /// A model's weights lack a parameter that its configuration implies.
    #[error("tensor `{name}` is missing from {file}")]
    MissingTensor {
        /// The parameter name (as the file would name it).
        name: String,
        /// The file (or shard index) where it was looked for.
        file: String,
    },
    /// A weight tensor in a file has another shape than the one the configuration implies.
    #[error("tensor `{name}` in {file} has shape {got:?}, but the config implies {expected:?}")]
    TensorShape {
        /// The tensor name.
        name: String,
        /// The file holding it.
        file: String,
        /// The shape implied by the configuration.
        expected: Vec<i64>,
        /// The shape in the file.
        got: Vec<i64>,
    },
    /// A weights file holds a tensor that is no parameter of the model being loaded.
    #[error("tensor `{name}` in {file} is not a parameter of this {model_type} model (wrong architecture or config?)")]
    UnexpectedTensor {
        /// The tensor name.
        name: String,
        /// The file holding it.
        file: String,
        /// The configuration's model type.
        model_type: String,
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
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
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
