//! The errors of files and what they hold: records and tokenizers ([`DataError`]), trainer checkpoints
//! ([`CheckpointError`]), GGUF files ([`GgufError`]), model parameter sets and weights ([`WeightsError`]).

use super::{readable, ParameterMismatch};

/// A preference record or a tokenizer cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A preference record is malformed. `file` and `line` (1-based) locate it.
    #[error("{file}:{line}: {message}")]
    Record {
        /// The file (or source name) the record came from.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A tokenizer could not be loaded or failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A model file names a tokenizer (or a part of one) that is not implemented, e.g. a GGUF
    /// `tokenizer.ggml.pre` pre-tokenizer.
    #[error("{source_name}: {key} is {found:?}, which is not supported; supported are {supported}")]
    UnsupportedTokenizer {
        /// The file (or other source) that names it.
        source_name: String,
        /// The setting that names it, e.g. `tokenizer.ggml.pre`.
        key: &'static str,
        /// The value that was found.
        found: String,
        /// The supported values, in words.
        supported: &'static str,
    },
    /// A chat template cannot be used: it does not compile, rendering failed (an undefined operation, a
    /// `raise_exception(…)` of the template itself), or there is none.
    #[error("chat template ({origin}): {message}")]
    ChatTemplate {
        /// Where the template came from, e.g. `tokenizer.chat_template of model.gguf`.
        origin: String,
        /// What went wrong.
        message: String,
    },
}

/// A trainer checkpoint (or a file read as one: a safetensors file, a shard index, a config.json) cannot
/// be used. Parameters that do not match the model are [`WeightsError::Parameters`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A checkpoint cannot be used: missing or truncated file, checksum mismatch, unknown format, or
    /// tensors that do not match the model.
    #[error("checkpoint {path}: {reason}")]
    Invalid {
        /// The checkpoint directory or file.
        path: String,
        /// What is wrong, in words.
        reason: String,
    },
}

/// A GGUF file cannot be read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// A GGUF file cannot be read or used: bad magic, unsupported version, truncated header or tensor data,
    /// a misaligned or out-of-range tensor offset, an unknown or unsupported tensor type, a missing tensor
    /// or metadata key, or a metadata value of the wrong type.
    #[error("GGUF {path}: {reason}")]
    Invalid {
        /// The GGUF file (or `<memory>` for in-memory dequantization).
        path: String,
        /// What is wrong, in words.
        reason: String,
    },
}

/// A model's parameter set or weights do not fit: parameters missing, unexpected or reshaped, a weight
/// stored in a type the model does not accept, a non-finite weight, an unsupported architecture.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightsError {
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
        /// What does not match (boxed: it holds four lists, and `Error` stays small).
        mismatch: Box<ParameterMismatch>,
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
    NonFinite {
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
    /// A configuration or file names a model architecture that is not implemented.
    #[error("unsupported architecture {found:?}: supported are {supported}")]
    UnsupportedArchitecture {
        /// The architecture that was found (e.g. `model_type` of a config.json).
        found: String,
        /// The supported ones, in words.
        supported: &'static str,
    },
}
