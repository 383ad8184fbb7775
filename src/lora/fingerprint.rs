//! [`fingerprint`]: a checksum of a set of named tensors (names, dtypes, shapes and bytes), which ties
//! adapters to the base model they were trained on.

use tch::{Device, Kind, Tensor};

#[cfg(feature = "train")]
use super::LoraModel;
use crate::error::Result;

/// Elements hashed per block (bounds the host copy of a large tensor).
const BLOCK_ELEMENTS: i64 = 1 << 22;

/// FNV-1a 64 offset basis and prime.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// `fnv1a64:<16 hex digits>`: FNV-1a 64 over every tensor of `named`, sorted by name: the name, the dtype,
/// the shape and the tensor's bytes in row-major order (copied to the host a block of 4 Mi elements at a
/// time). Equal for the same names, dtypes, shapes and values; any change of a value's bits changes it
/// (up to hash collisions).
///
/// # Errors
/// [`crate::Error::Torch`] if a tensor cannot be read back.
pub fn fingerprint(named: &[(String, Tensor)]) -> Result<String> {
    Ok(format!("fnv1a64:{:016x}", hash_named(named)?))
}

/// [`fingerprint`] of `named`, continued over `(name, bytes)` of every frozen weight `model` holds outside
/// its parameters ([`LoraModel::visit_frozen_bytes`]); the same as [`fingerprint`] for a model with none.
#[cfg(feature = "train")]
pub(crate) fn fingerprint_with_frozen(named: &[(String, Tensor)], model: &dyn LoraModel) -> Result<String> {
    let mut hash = hash_named(named)?;
    model.visit_frozen_bytes(&mut |name, bytes| {
        hash = fnv(fnv(hash, name.as_bytes()), bytes);
    });
    Ok(format!("fnv1a64:{hash:016x}"))
}

fn hash_named(named: &[(String, Tensor)]) -> Result<u64> {
    let mut order: Vec<&(String, Tensor)> = named.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hash = FNV_OFFSET;
    for (name, tensor) in order {
        hash = fnv(hash, name.as_bytes());
        hash = fnv(
            hash,
            format!("{:?}{:?}", tensor.f_kind()?, tensor.size()).as_bytes(),
        );
        let flat = tch::no_grad(|| tensor.f_detach()?.f_reshape([-1]))?;
        let total = flat.numel() as i64;
        let mut start = 0;
        while start < total {
            let len = BLOCK_ELEMENTS.min(total - start);
            let bytes = flat
                .f_narrow(0, start, len)?
                .f_to_device(Device::Cpu)?
                .f_contiguous()?
                .f_view_dtype(Kind::Uint8)?;
            hash = fnv(hash, &Vec::<u8>::try_from(&bytes)?);
            start += len;
        }
    }
    Ok(hash)
}
