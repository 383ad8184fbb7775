//! Gradient buckets: consecutive tensors of one dtype and device flattened into one 1-D buffer, so a list
//! of gradients travels in a few large collectives instead of one per tensor.

use std::ops::Range;

use tch::{Device, Kind, Tensor};

use super::group::{ProcessGroup, ReduceOp};
use crate::error::{Error, InputError, Result};

/// The default bucket size, 25 MiB (PyTorch DDP's default).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Splits `tensors` into buckets: ranges of consecutive indices whose tensors share dtype and device and
/// whose bytes sum to at most `bucket_bytes`, except that a single tensor larger than that forms a bucket
/// of its own. Every index is in exactly one bucket, in order; no bucket is empty.
///
/// # Errors
/// [`InputError::InvalidParameter`](crate::InputError::InvalidParameter) if `bucket_bytes` is 0; [`InputError::Config`](crate::InputError::Config) for an undefined tensor.
pub fn plan_buckets(tensors: &[Tensor], bucket_bytes: usize) -> Result<Vec<Range<usize>>> {
    if bucket_bytes == 0 {
        return Err(Error::Input(InputError::InvalidParameter {
            name: "bucket_bytes",
            value: bucket_bytes.into(),
            requirement: "must be positive",
        }));
    }
    let mut buckets = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    let mut key: Option<(Kind, Device)> = None;
    for (i, t) in tensors.iter().enumerate() {
        if !t.defined() {
            return Err(Error::Input(InputError::Config {
                name: "tensors",
                requirement: format!("tensor {i} is undefined"),
            }));
        }
        let k = (t.kind(), t.device());
        let size = t.numel() * t.kind().elt_size_in_bytes();
        if i > start && (key != Some(k) || bytes + size > bucket_bytes) {
            buckets.push(start..i);
            start = i;
            bytes = 0;
        }
        key = Some(k);
        bytes += size;
    }
    if start < tensors.len() {
        buckets.push(start..tensors.len());
    }
    Ok(buckets)
}

fn check_same(tensors: &[Tensor]) -> Result<(Kind, Device)> {
    let first = tensors.first().ok_or(Error::Input(InputError::EmptyBatch {
        arg: "tensors",
        shape: vec![0],
    }))?;
    for t in tensors {
        if t.kind() != first.kind() {
            return Err(Error::Input(InputError::DType {
                arg: "tensors",
                expected: "one dtype for all tensors of a bucket",
                got: t.kind(),
            }));
        }
        if t.device() != first.device() {
            return Err(Error::Input(InputError::DeviceMismatch {
                arg: "tensors",
                other: "tensors[0]",
                expected: first.device(),
                got: t.device(),
            }));
        }
    }
    Ok((first.kind(), first.device()))
}

/// Concatenates the tensors' elements (each in its own row-major order) into one new 1-D tensor.
///
/// # Errors
/// [`InputError::EmptyBatch`](crate::InputError::EmptyBatch) for an empty list, [`InputError::DType`](crate::InputError::DType) / [`InputError::DeviceMismatch`](crate::InputError::DeviceMismatch) when the tensors
/// do not share dtype and device.
pub fn flatten(tensors: &[Tensor]) -> Result<Tensor> {
    check_same(tensors)?;
    let views: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.f_reshape([-1]))
        .collect::<std::result::Result<_, _>>()?;
    Ok(Tensor::f_cat(&views, 0)?)
}

/// Copies consecutive pieces of the 1-D `flat` back into `tensors` (in place, each keeping its shape): the
/// inverse of [`flatten`].
///
/// # Errors
/// [`InputError::Shape`](crate::InputError::Shape) when `flat` is not 1-D with exactly as many elements as the tensors together;
/// [`InputError::DType`](crate::InputError::DType) / [`InputError::DeviceMismatch`](crate::InputError::DeviceMismatch) when it or they disagree in dtype or device.
pub fn unflatten_into(flat: &Tensor, tensors: &mut [Tensor]) -> Result<()> {
    let (kind, device) = check_same(tensors)?;
    let total: i64 = tensors.iter().map(|t| t.numel() as i64).sum();
    if flat.dim() != 1 || flat.size()[0] != total {
        return Err(Error::Input(InputError::Shape {
            arg: "flat",
            expected: format!("[{total}]: the tensors' elements together"),
            got: flat.size(),
        }));
    }
    if flat.kind() != kind {
        return Err(Error::Input(InputError::DType {
            arg: "flat",
            expected: "the tensors' dtype",
            got: flat.kind(),
        }));
    }
    if flat.device() != device {
        return Err(Error::Input(InputError::DeviceMismatch {
            arg: "flat",
            other: "tensors",
            expected: device,
            got: flat.device(),
        }));
    }
    let mut offset = 0i64;
    for t in tensors.iter_mut() {
        let n = t.numel() as i64;
        let piece = flat.f_narrow(0, offset, n)?.f_view(t.size().as_slice())?;
        t.f_copy_(&piece)?;
        offset += n;
    }
    Ok(())
}

/// In place on every tensor: `op` over ranks, bucket by bucket ([`plan_buckets`] with `bucket_bytes`):
/// each bucket is flattened, reduced in one collective and copied back. Every rank passes tensors of the
/// same shapes, dtypes and order.
///
/// # Errors
/// As [`plan_buckets`], [`flatten`] and [`ProcessGroup::all_reduce_`].
pub fn all_reduce_buckets_(
    group: &ProcessGroup,
    tensors: &mut [Tensor],
    bucket_bytes: usize,
    op: ReduceOp,
) -> Result<()> {
    for range in plan_buckets(tensors, bucket_bytes)? {
        let bucket = &mut tensors[range];
        let mut flat = flatten(bucket)?;
        group.all_reduce_(&mut flat, op)?;
        unflatten_into(&flat, bucket)?;
    }
    Ok(())
}

/// In place on every tensor: rank `root`'s values, bucket by bucket ([`plan_buckets`] with
/// `bucket_bytes`): each bucket is flattened, broadcast in one collective and copied back (e.g. a model's
/// parameters, detached, so every rank starts from the same weights). Every rank passes tensors of the
/// same shapes, dtypes and order.
///
/// # Errors
/// As [`plan_buckets`], [`flatten`] and [`ProcessGroup::broadcast_`].
pub fn broadcast_buckets_(
    group: &ProcessGroup,
    tensors: &mut [Tensor],
    bucket_bytes: usize,
    root: usize,
) -> Result<()> {
    for range in plan_buckets(tensors, bucket_bytes)? {
        let bucket = &mut tensors[range];
        let mut flat = flatten(bucket)?;
        group.broadcast_(&mut flat, root)?;
        unflatten_into(&flat, bucket)?;
    }
    Ok(())
}
