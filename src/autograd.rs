//! Autograd helpers that tch lacks, shared by the models, the fused losses and the trainer:
//!
//! - [`backward_from`]: backpropagate a known gradient `dL/d out` from `out` into whatever produced it (a
//!   deferred or split backward pass);
//! - [`leaf_grad`]: a leaf's `.grad` when a gradient may be added to it in place, as autograd would;
//! - (feature `autograd`, implied by `train`) `release_grad` and `ensure_grad`: setting and releasing a
//!   tensor's `.grad`, which tch does not expose — what PyTorch's `param.grad = None` and a first
//!   accumulation into an undefined `.grad` do. They call into `csrc/grad.cpp`, which build.rs compiles
//!   against libtorch's headers with that feature.
//!
//! Every function returns [`Result`]; libtorch failures are [`Error::Torch`](crate::Error::Torch).

use crate::error::Result;
use tch::{Kind, Tensor};

/// Backpropagates `grad`, the loss's gradient w.r.t. `out` (same shape as `out`), from `out` into whatever
/// produced it: the backward pass of `Σ(out ⊙ grad)` (`grad` detached), whose gradient w.r.t. `out` is
/// exactly `grad`. Gradients accumulate into the leaves' `.grad` as with any backward pass.
///
/// Nothing happens if `grad` is undefined (no gradient reached `out`) or if `out` does not require grad (it
/// depends on no trainable tensor, e.g. a frozen embedding's rows or a block of frozen layers under a
/// detached input: there is nothing to propagate into, and libtorch would refuse the backward).
///
/// # Errors
/// [`Error::Torch`](crate::Error::Torch) if the product, the sum or the backward pass fails (e.g. `grad`'s
/// shape does not broadcast to `out`'s).
pub fn backward_from(out: &Tensor, grad: &Tensor) -> Result<()> {
    if !grad.defined() || !out.requires_grad() {
        return Ok(());
    }
    out.f_mul(&grad.f_detach()?)?.f_sum(out.kind())?.f_backward()?;
    Ok(())
}

/// The `.grad` of `weight` (a handle sharing its storage) when a gradient may be added to it in place, as
/// autograd's accumulation would: `weight` is a leaf that requires grad and its `.grad` exists, in `kind`,
/// with the weight's shape and device, without a graph of its own. `None` otherwise.
///
/// # Errors
/// [`Error::Torch`](crate::Error::Torch) if libtorch fails to read the gradient or its dtype.
pub fn leaf_grad(weight: &Tensor, kind: Kind) -> Result<Option<Tensor>> {
    if !weight.requires_grad() || !weight.is_leaf() {
        return Ok(None);
    }
    let grad = weight.f_grad()?;
    let usable = grad.defined()
        && grad.f_kind()? == kind
        && grad.size() == weight.size()
        && grad.device() == weight.device()
        && !grad.requires_grad();
    Ok(usable.then_some(grad))
}

/// Whether autograd records operations at this point (not inside `no_grad`): a one-element probe.
pub(crate) fn grad_enabled() -> Result<bool> {
    let probe = Tensor::f_zeros([1], (Kind::Float, tch::Device::Cpu))?.set_requires_grad(true);
    Ok(probe.f_mul_scalar(1.0)?.requires_grad())
}

#[cfg(feature = "autograd")]
pub use shim::{ensure_grad, release_grad};

/// The `.grad` setters over `csrc/grad.cpp` (feature `autograd`).
#[cfg(feature = "autograd")]
mod shim {
    use crate::error::{Error, Result};
    use std::os::raw::c_char;
    use tch::{TchError, Tensor};
    use torch_sys::C_tensor;

    extern "C" {
        fn tch_rpo_grad_set(tensor: *mut C_tensor, grad: *const C_tensor) -> *mut c_char;
        fn tch_rpo_grad_free_error(message: *mut c_char);
    }

    /// Sets `tensor.grad` to `grad` (a handle to the same tensor), or releases it when `grad` is `None`.
    fn set(tensor: &Tensor, grad: Option<&Tensor>, what: &str) -> Result<()> {
        let grad = grad.map_or(std::ptr::null(), |g| g.as_ptr());
        // SAFETY: `as_ptr` gives tch's live `at::Tensor*` for the duration of the call (or null for no
        // gradient); the shim catches every C++ exception and returns null or a message that only
        // `tch_rpo_grad_free_error` frees.
        let message = unsafe { tch_rpo_grad_set(tensor.as_ptr() as *mut C_tensor, grad) };
        if message.is_null() {
            return Ok(());
        }
        // SAFETY: a NUL-terminated message returned by the shim, freed exactly once below.
        let text = unsafe { std::ffi::CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: as above.
        unsafe { tch_rpo_grad_free_error(message) };
        Err(Error::Torch(TchError::Torch(format!("{what}: {text}"))))
    }

    /// Drops `tensor`'s reference to its `.grad`, which becomes undefined; its memory is freed once no other
    /// handle holds it. The next backward pass that reaches `tensor` allocates a new gradient (autograd's
    /// accumulation into an undefined `.grad`). Nothing happens when `.grad` is undefined already.
    ///
    /// # Errors
    /// [`Error::Torch`] with libtorch's message if it fails.
    pub fn release_grad(tensor: &Tensor) -> Result<()> {
        set(tensor, None, "releasing a gradient")
    }

    /// Gives a leaf that requires grad a zero `.grad` of its own shape, dtype and device when it has none —
    /// the tensor its first gradient accumulation would allocate — so that a gradient can be added to it in
    /// place. Nothing happens for other tensors or when `.grad` is defined.
    ///
    /// # Errors
    /// [`Error::Torch`] if the allocation or libtorch fails.
    pub fn ensure_grad(tensor: &Tensor) -> Result<()> {
        if tensor.requires_grad() && tensor.is_leaf() && !tensor.f_grad()?.defined() {
            let zeros = tch::no_grad(|| tensor.f_zeros_like())?;
            set(tensor, Some(&zeros), "setting a zero gradient")?;
        }
        Ok(())
    }
}
