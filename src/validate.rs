//! Input checks shared by the public functions. Each returns a typed [`Error`] naming the argument.

#[cfg(any(feature = "gemma", feature = "llama", feature = "lora"))]
use crate::error::WeightsError;
use crate::error::{Error, InputError, Result};
use tch::{Kind, Tensor};

/// Whether `kind` is a floating-point dtype this crate computes with.
pub(crate) fn is_float(kind: Kind) -> bool {
    matches!(kind, Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half)
}

/// The dtype results are computed and returned in: f64 stays f64, everything else becomes f32.
pub(crate) fn compute_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

pub(crate) fn float_tensor(arg: &'static str, t: &Tensor) -> Result<Kind> {
    let kind = t.f_kind()?;
    if !is_float(kind) {
        return Err(Error::Input(InputError::DType {
            arg,
            expected: "a floating-point dtype (f32, f64, bf16 or f16)",
            got: kind,
        }));
    }
    Ok(kind)
}

/// Errors with [`InputError::DType`](crate::InputError::DType) unless `t` holds i64 token ids.
pub(crate) fn int64_labels(arg: &'static str, t: &Tensor) -> Result<()> {
    let kind = t.f_kind()?;
    if kind != Kind::Int64 {
        return Err(Error::Input(InputError::DType {
            arg,
            expected: "i64 token ids",
            got: kind,
        }));
    }
    Ok(())
}

pub(crate) fn rank(arg: &'static str, t: &Tensor, dims: usize, expected: &str) -> Result<Vec<i64>> {
    let size = t.size();
    if size.len() != dims {
        return Err(Error::Input(InputError::Shape {
            arg,
            expected: expected.to_string(),
            got: size,
        }));
    }
    Ok(size)
}

pub(crate) fn same_device(arg: &'static str, t: &Tensor, other: &'static str, o: &Tensor) -> Result<()> {
    let (got, expected) = (t.device(), o.device());
    if got != expected {
        return Err(Error::Input(InputError::DeviceMismatch {
            arg,
            other,
            expected,
            got,
        }));
    }
    Ok(())
}

/// A one-dimensional per-pair tensor `[B]` with `B == expected` (when given).
pub(crate) fn per_pair(
    arg: &'static str,
    t: &Tensor,
    other: &'static str,
    expected: Option<i64>,
) -> Result<i64> {
    let size = rank(arg, t, 1, "a per-sequence vector [B]")?;
    let b = size[0];
    if let Some(expected) = expected {
        if b != expected {
            return Err(Error::Input(InputError::BatchMismatch {
                arg,
                other,
                expected,
                got: b,
            }));
        }
    } else if b == 0 {
        return Err(Error::Input(InputError::EmptyBatch { arg, shape: size }));
    }
    Ok(b)
}

pub(crate) fn positive_finite(name: &'static str, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::Input(InputError::InvalidParameter {
            name,
            value: value.into(),
            requirement: "must be finite and > 0",
        }));
    }
    Ok(())
}

pub(crate) fn finite(name: &'static str, value: f64) -> Result<()> {
    if !value.is_finite() {
        return Err(Error::Input(InputError::InvalidParameter {
            name,
            value: value.into(),
            requirement: "must be finite",
        }));
    }
    Ok(())
}

/// Errors with [`InputError::NonFinite`](crate::InputError::NonFinite) if `t` holds NaN or ±inf (syncs the device).
pub(crate) fn all_finite(arg: &'static str, t: &Tensor, location: &'static str) -> Result<()> {
    let bad = t
        .f_isfinite()?
        .f_logical_not()?
        .f_sum(Kind::Int64)?
        .f_int64_value(&[])?;
    if bad > 0 {
        return Err(Error::Input(InputError::NonFinite {
            arg,
            count: bad,
            location,
        }));
    }
    Ok(())
}

/// Errors with [`InputError::NoValidTokens`](crate::InputError::NoValidTokens) if any entry of the count vector `[B]` is zero (syncs the device).
pub(crate) fn nonzero_counts(arg: &'static str, counts: &Tensor, reduction: &'static str) -> Result<()> {
    let zero = counts.f_le(0)?;
    let any = zero.f_any()?.f_int64_value(&[])?;
    if any != 0 {
        let index = zero
            .f_to_kind(Kind::Int64)?
            .f_argmax(0, false)?
            .f_int64_value(&[])?;
        return Err(Error::Input(InputError::NoValidTokens {
            arg,
            index,
            reduction,
        }));
    }
    Ok(())
}

/// Errors with [`WeightsError::NonFinite`](crate::WeightsError::NonFinite) naming `tensor` and `file` if `weight` holds NaN or ±inf.
///
/// One `isfinite().all()` on `weight`'s device (a single host sync); only when it fails are the count,
/// the first offending flat index and its value computed. Integer tensors always pass.
#[cfg(any(feature = "gemma", feature = "llama", feature = "lora"))]
pub(crate) fn finite_weight(weight: &Tensor, tensor: &str, file: &str) -> Result<()> {
    tch::no_grad(|| {
        if weight.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0 {
            return Ok(());
        }
        let flat = weight.f_reshape([-1])?;
        let bad = flat.f_isfinite()?.f_logical_not()?;
        let count = bad.f_sum(Kind::Int64)?.f_int64_value(&[])?;
        // argmax returns the first maximal index: the first non-finite value.
        let index = bad
            .f_to_kind(Kind::Uint8)?
            .f_argmax(0, false)?
            .f_int64_value(&[])?;
        let value = flat.f_select(0, index)?.f_double_value(&[])?;
        Err(Error::Weights(WeightsError::NonFinite {
            tensor: tensor.to_string(),
            file: file.to_string(),
            count,
            index,
            value,
        }))
    })
}
