//! Setting and releasing a tensor's `.grad`, which tch does not expose: calls into `csrc/grad.cpp`,
//! compiled by build.rs with the `train` feature. What PyTorch's `param.grad = g` and `param.grad = None` do.

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
pub(crate) fn release_grad(tensor: &Tensor) -> Result<()> {
    set(tensor, None, "releasing a gradient")
}

/// Gives a leaf that requires grad a zero `.grad` of its own shape, dtype and device when it has none —
/// the tensor its first gradient accumulation would allocate — so that a gradient can be added to it in
/// place. Nothing happens for other tensors or when `.grad` is defined.
///
/// # Errors
/// [`Error::Torch`] if the allocation or libtorch fails.
pub(crate) fn ensure_grad(tensor: &Tensor) -> Result<()> {
    if tensor.requires_grad() && tensor.is_leaf() && !tensor.f_grad()?.defined() {
        let zeros = tch::no_grad(|| tensor.f_zeros_like())?;
        set(tensor, Some(&zeros), "setting a zero gradient")?;
    }
    Ok(())
}
