//! Autograd helpers that tch lacks, shared by the models, the fused losses and the trainer:
//!
//! - [`backward_from`]: backpropagate a known gradient `dL/d out` from `out` into whatever produced it (a
//!   deferred or split backward pass);
//! - [`leaf_grad`]: a leaf's `.grad` when a gradient may be added to it in place, as autograd would;
//! - (feature `autograd`, implied by `train`) `release_grad` and `ensure_grad`: setting and releasing a
//!   tensor's `.grad`, which tch does not expose — what PyTorch's `param.grad = None` and a first
//!   accumulation into an undefined `.grad` do. They call into `csrc/grad.cpp`, which build.rs compiles
//!   against libtorch's headers with that feature;
//! - (feature `autograd`) `rms_norm`: RMSNorm as one autograd node with its own backward (tch cannot define
//!   one), `csrc/rms_norm.cpp`;
//! - (feature `autograd`) `embedding`: the token embedding as one autograd node whose backward adds into the
//!   weight's existing `.grad` in place, `csrc/embedding.cpp`.
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
pub(crate) use shim::embedding_unchecked;
#[cfg(feature = "autograd")]
pub(crate) use shim::status as shim_status;
#[cfg(feature = "autograd")]
pub use shim::{embedding, ensure_grad, release_grad, rms_norm};

/// The `.grad` setters over `csrc/grad.cpp` (feature `autograd`).
#[cfg(feature = "autograd")]
mod shim {
    use crate::error::{Error, InputError, Result};
    use crate::validate;
    use std::os::raw::{c_char, c_int};
    use tch::{TchError, Tensor};
    use torch_sys::C_tensor;

    extern "C" {
        fn tch_rpo_grad_set(tensor: *mut C_tensor, grad: *const C_tensor) -> *mut c_char;
        fn tch_rpo_rms_norm(
            x: *const C_tensor,
            weight: *const C_tensor,
            eps: f64,
            one_plus: c_int,
            out: *mut *mut C_tensor,
        ) -> *mut c_char;
        fn tch_rpo_embedding(
            weight: *const C_tensor,
            ids: *const C_tensor,
            out: *mut *mut C_tensor,
        ) -> *mut c_char;
        fn tch_rpo_grad_free_error(message: *mut c_char);
    }

    /// Sets `tensor.grad` to `grad` (a handle to the same tensor), or releases it when `grad` is `None`.
    fn set(tensor: &Tensor, grad: Option<&Tensor>, what: &str) -> Result<()> {
        let grad = grad.map_or(std::ptr::null(), |g| g.as_ptr());
        // SAFETY: `as_ptr` gives tch's live `at::Tensor*` for the duration of the call (or null for no
        // gradient); the shim catches every C++ exception and returns null or a message that only
        // `tch_rpo_grad_free_error` frees.
        let message = unsafe { tch_rpo_grad_set(tensor.as_ptr() as *mut C_tensor, grad) };
        status(message, what)
    }

    /// `Ok` for a null message from one of the crate's C++ shims, else `what: message` as [`Error::Torch`]
    /// (and frees the message).
    pub(crate) fn status(message: *mut c_char, what: &str) -> Result<()> {
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

    /// RMSNorm over the last dimension as one autograd node. With `x̂ = f32(x) · r`,
    /// `r = (mean(f32(x)²) + eps)^(−1/2)` (f32, over the last dimension):
    ///
    /// ```text
    /// one_plus (Gemma):   y = dtype(x̂ · (f32(w) + 1))
    /// otherwise (Llama):  y = w · dtype(x̂)
    /// ```
    ///
    /// for `x [..., H]` and `weight [H]` (dtype = `x`'s; f32, bf16, f16 or f64 — f64 inputs are computed in
    /// f32 as well, the composite form's rule). The forward runs the same libtorch ops as writing these
    /// formulas with tensors, so the values are the same; the difference is the autograd graph: the node
    /// saves only `x`, `weight` and `r` (`[..., 1]`), where the composite form keeps `f32(x)` and `x̂`
    /// (8 bytes per element more for bf16 inputs), and its backward recomputes `x̂`:
    /// `dx = r · (g − x̂ · mean(g · x̂))` with `g` the gradient reaching `x̂`, and `dw` summed in f32 over every
    /// dimension but the last, rounded to `weight`'s dtype once. Gradients are computed only for the inputs
    /// that require them; under `no_grad` nothing is saved.
    ///
    /// # Errors
    /// [`InputError::Shape`] (`weight`) unless `weight` is `[H]` with `H` = `x`'s last dimension (`x` of rank
    /// ≥ 1); [`InputError::DeviceMismatch`](crate::InputError::DeviceMismatch) when they are on different
    /// devices; [`InputError::DType`] (`x`, `weight`) for non-float tensors;
    /// [`InputError::InvalidParameter`] (`eps`) unless finite and ≥ 0; [`Error::Torch`] if libtorch fails.
    pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, one_plus: bool) -> Result<Tensor> {
        validate::float_tensor("x", x)?;
        validate::float_tensor("weight", weight)?;
        let h = x.size().last().copied();
        if h.is_none() || weight.size() != [h.unwrap_or(0)] {
            return Err(Error::Input(InputError::Shape {
                arg: "weight",
                expected: format!("[H] with H the last dimension of x {:?}", x.size()),
                got: weight.size(),
            }));
        }
        validate::same_device("weight", weight, "x", x)?;
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "eps",
                value: eps.into(),
                requirement: "must be finite and >= 0",
            }));
        }
        let mut out: *mut C_tensor = std::ptr::null_mut();
        // SAFETY: both pointers are tch's live `at::Tensor*` for the call; on success the shim stores a
        // `new at::Tensor` in `out`, which `Tensor::from_ptr` owns from here; on failure it leaves `out`
        // null and returns a message (freed by `status`).
        let message =
            unsafe { tch_rpo_rms_norm(x.as_ptr(), weight.as_ptr(), eps, c_int::from(one_plus), &mut out) };
        status(message, "rms_norm")?;
        // SAFETY: a non-null tensor the shim allocated for us (checked by the successful status).
        Ok(unsafe { Tensor::from_ptr(out) })
    }

    /// The rows of `weight` (`[V, H]`, float) at `ids` (any shape of i64 token ids in `[0, V)`):
    /// `out[..., :] = weight[ids[...], :]`, shape `ids.shape + [H]` — `Tensor::embedding`'s values, as one
    /// autograd node whose backward gives row `v` of the weight's gradient `Σ dL/d out[p]` over the
    /// positions `p` with `ids[p] = v`. When `weight` is a leaf whose `.grad` is already defined (dense, in the
    /// gradient's dtype, shape and device — e.g. a tied LM head's gradient, written before the embedding's
    /// arrives) those rows are index-added into that `.grad` in place and nothing is handed to autograd's
    /// accumulation; otherwise the dense `[V, H]` gradient goes to autograd as `Tensor::embedding`'s
    /// backward gives it. The in-place path saves the second `[V, H]` tensor (the dense gradient beside
    /// `.grad`) at the end of the backward pass; it skips `weight`'s gradient hooks, which are not run.
    ///
    /// # Errors
    /// [`InputError::Shape`] (`weight`) unless `weight` is 2-D; [`InputError::DType`] for a non-float
    /// `weight` or non-i64 `ids`; [`InputError::DeviceMismatch`](crate::InputError::DeviceMismatch) when
    /// they are on different devices; [`InputError::TokenOutOfRange`](crate::InputError::TokenOutOfRange)
    /// (`ids`) for an id outside `[0, V)`; [`Error::Torch`] if libtorch fails.
    pub fn embedding(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
        validate::float_tensor("weight", weight)?;
        if weight.dim() != 2 {
            return Err(Error::Input(InputError::Shape {
                arg: "weight",
                expected: "[V, H]".to_string(),
                got: weight.size(),
            }));
        }
        validate::int64_labels("ids", ids)?;
        validate::same_device("ids", ids, "weight", weight)?;
        let vocab = weight.size()[0];
        if ids.numel() > 0 {
            let (min, max) = (ids.f_min()?.f_int64_value(&[])?, ids.f_max()?.f_int64_value(&[])?);
            if min < 0 || max >= vocab {
                return Err(Error::Input(InputError::TokenOutOfRange {
                    arg: "ids",
                    min,
                    max,
                    vocab,
                }));
            }
        }
        embedding_unchecked(weight, ids)
    }

    /// [`embedding`] without its input checks (the range check reads the ids back: a device sync), for a
    /// caller that has checked them — the decoders, whose forward checks `input_ids` first. libtorch's own
    /// errors still come back as [`Error::Torch`].
    pub(crate) fn embedding_unchecked(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let mut out: *mut C_tensor = std::ptr::null_mut();
        // SAFETY: as in `rms_norm`: live `at::Tensor*` in, a `new at::Tensor` out on success.
        let message = unsafe { tch_rpo_embedding(weight.as_ptr(), ids.as_ptr(), &mut out) };
        status(message, "embedding")?;
        // SAFETY: a non-null tensor the shim allocated for us (checked by the successful status).
        Ok(unsafe { Tensor::from_ptr(out) })
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
