//! [`InputError`]: a tensor, argument or setting given to a function is not what it needs.

use tch::{Device, Kind};

use super::ParamValue;

/// A tensor, argument or setting given to a function is not what it needs, found before any work is done.
/// Each variant names the argument (or setting) and what was seen.
///
/// | variant | raised when |
/// |---|---|
/// | [`InputError::Shape`] | a tensor has the wrong rank or size, e.g. logits `[B, T, V]` vs labels `[B, T]` |
/// | [`InputError::BatchMismatch`] | chosen / rejected / reference tensors disagree on the number of pairs |
/// | [`InputError::DType`] | labels are not `i64`, logits are not floating point, … |
/// | [`InputError::LabelOutOfRange`] | a label is `< 0` or `>= V` and is not the ignore index (validation on) |
/// | [`InputError::DeviceMismatch`] | two inputs live on different devices |
/// | [`InputError::EmptyBatch`] | a tensor has no pairs / rows |
/// | [`InputError::NoValidTokens`] | a sequence has no valid token but the reduction divides by its token count (validation on) |
/// | [`InputError::InvalidParameter`] | β ≤ 0, label smoothing outside `[0, 0.5)`, a zero step count, an empty list of losses, … |
/// | [`InputError::NonFinite`] | logits (or log-probs) contain NaN / ±inf where they matter (validation on) |
/// | [`InputError::TokenOutOfRange`] | input token ids fall outside the model's vocabulary |
/// | [`InputError::Config`] | a trainer / collation / model setting is inconsistent with another one or unsupported |
/// | [`InputError::InvalidPath`] | an artifact's path is empty, its parent folder is missing, or what is there must not be replaced |
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
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
    /// A configuration value is inconsistent with another one or unsupported.
    #[error("`{name}` is invalid: {requirement}")]
    Config {
        /// The setting's name.
        name: &'static str,
        /// What it must satisfy, with the values seen.
        requirement: String,
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
}
