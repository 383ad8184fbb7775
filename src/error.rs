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
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
