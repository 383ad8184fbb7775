//! The attention core every decoder layer calls: [`attend`] — `softmax(scale · q·kᵀ [soft-capped], masked) · v`
//! with grouped-query heads — on libtorch's `scaled_dot_product_attention` where the semantics allow, or on
//! the explicit path (scores `[N, heads, T, S]`, f32 softmax, matmul) where they do not (an attention-logit
//! soft-cap, Gemma 2) or where asked ([`AttentionKernel::Explicit`], for comparison).
//!
//! # Shapes
//! - `q` `[N, heads, T, D]`: the queries (RoPE applied; any query scaling is `scale`, e.g. Gemma 2 / 3's
//!   `query_pre_attn_scalar^-½`);
//! - `k`, `v` `[N, kv_heads, S, D]`: the keys and values, `heads` a multiple of `kv_heads` (query head `h`
//!   reads key / value head `h / (heads / kv_heads)`);
//! - `blocked` `[N or 1, 1, T, S]` bool: `true` where a query (row) may **not** see a key (column) — causal,
//!   padding and sliding window combined by the caller;
//! - result `[N, heads, T, D]` in `q`'s dtype.
//!
//! # The two paths
//! - **Explicit**: `s = scale · q·kᵀ`, soft-capped `c · tanh(s / c)` when `soft_cap` is set, cast to f32, the
//!   blocked entries set to the most negative finite f32, softmax in f32, cast back, times `v`. A query that
//!   sees no key at all gets the uniform average of every value (finite).
//! - **Fused** (libtorch's `scaled_dot_product_attention`, with its flash kernels on CPU and CUDA where they
//!   apply): the same formula without a soft-cap, the mask passed as libtorch's boolean `attn_mask`
//!   (`true` = may attend: the negation of `blocked`). libtorch gives NaN (or, by kernel, zeros) for a
//!   query that sees no key, so such a row is allowed every key instead: its output is a finite weighted
//!   average of the values. Such a query is a padding position (left padding in generation; a padding
//!   position more than a window past the last token of a sliding layer); no real query sees a padding key
//!   and no loss scores a padding position, so its output never reaches a loss or a gradient. Every other
//!   row is exactly the explicit path's formula, within f32 rounding (`tests/attention.rs` derives the
//!   bound, forward and gradients).
//!
//! Grouped-query heads: the explicit path repeats the key / value heads to `heads` (an `expand` and
//! `reshape`); the fused one passes them as they are with libtorch's `enable_gqa` on the CPU (its flash
//! kernel takes them) and repeats them on other devices (CUDA's masked kernel does not take them).
//!
//! # Choosing the kernel
//! [`attend`] uses the kernel of the calling thread ([`attention_kernel`], default
//! [`AttentionKernel::Fused`]); [`set_attention_kernel`] / [`with_attention_kernel`] change it, so that a
//! whole model (its training forward, backward recomputation under checkpointing, evaluation and generation,
//! which all run on the calling thread) runs one way or the other without a model setting.
//! [`attend_with`] takes the kernel explicitly.

use std::cell::Cell;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, InputError, Result};

/// Which implementation [`attend`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    /// libtorch's `scaled_dot_product_attention` when there is no attention-logit soft-cap; the explicit
    /// path when there is one (libtorch's kernel has no soft-cap).
    #[default]
    Fused,
    /// Always the explicit path (scores, f32 softmax, matmul).
    Explicit,
}

thread_local! {
    static KERNEL: Cell<AttentionKernel> = const { Cell::new(AttentionKernel::Fused) };
}

/// The kernel [`attend`] uses on this thread (default [`AttentionKernel::Fused`]).
pub fn attention_kernel() -> AttentionKernel {
    KERNEL.with(Cell::get)
}

/// Makes [`attend`] use `kernel` on this thread from now on; returns the previous kernel.
pub fn set_attention_kernel(kernel: AttentionKernel) -> AttentionKernel {
    KERNEL.with(|k| k.replace(kernel))
}

/// Runs `f` with [`attend`] using `kernel` on this thread, then restores the previous kernel (also when
/// `f` panics).
pub fn with_attention_kernel<R>(kernel: AttentionKernel, f: impl FnOnce() -> R) -> R {
    struct Restore(AttentionKernel);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_attention_kernel(self.0);
        }
    }
    let _restore = Restore(set_attention_kernel(kernel));
    f()
}

/// `c · tanh(x / c)` when `cap` is `Some(c)`, else `x` (a shallow clone).
pub(crate) fn soft_cap(xs: &Tensor, cap: Option<f64>) -> Result<Tensor> {
    match cap {
        Some(c) => Ok(xs.f_div_scalar(c)?.f_tanh()?.f_mul_scalar(c)?),
        None => Ok(xs.shallow_clone()),
    }
}

/// Attention with the calling thread's kernel ([`attention_kernel`]): [`attend_with`].
///
/// # Errors
/// As [`attend_with`].
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    blocked: &Tensor,
    scale: f64,
    soft_cap: Option<f64>,
) -> Result<Tensor> {
    crate::timing::timed(crate::timing::Phase::Attention, || {
        attend_with(attention_kernel(), q, k, v, blocked, scale, soft_cap)
    })
}

/// Attention per query head with `kernel`: `softmax(c · tanh(scale · q·kᵀ / c))` (`c` = `soft_cap`, no
/// tanh without one) over the keys that `blocked` leaves visible, times `v`; the fused kernel falls back to
/// the explicit path when `soft_cap` is set. Shapes and the two paths: the [module docs](self).
/// Differentiable in `q`, `k` and `v`.
///
/// # Errors
/// [`InputError::Shape`] when `q`, `k`, `v` are not 4-D with equal batch and head sizes, `k` and `v`
/// differ, `heads` is not a multiple of `kv_heads`, or `blocked` is not `[N or 1, 1, T, S]`;
/// [`InputError::DType`] for a `blocked` that is not bool; [`Error::Torch`] if an op fails.
pub fn attend_with(
    kernel: AttentionKernel,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    blocked: &Tensor,
    scale: f64,
    soft_cap: Option<f64>,
) -> Result<Tensor> {
    let (n, heads, kv_heads, keys, head_dim) = check(q, k, v, blocked)?;
    let repeat = |x: &Tensor| -> Result<Tensor> {
        let groups = heads / kv_heads;
        if groups == 1 {
            return Ok(x.shallow_clone());
        }
        Ok(x.f_unsqueeze(2)?
            .f_expand([n, kv_heads, groups, keys, head_dim], false)?
            .f_reshape([n, heads, keys, head_dim])?)
    };
    match (kernel, soft_cap) {
        // libtorch's CPU flash kernel takes the grouped heads as they are (`enable_gqa`); on CUDA its
        // masked (memory-efficient) kernel does not, so the heads are repeated there.
        (AttentionKernel::Fused, None) if q.device() == Device::Cpu => {
            fused(q, k, v, blocked, scale, heads != kv_heads)
        }
        (AttentionKernel::Fused, None) => fused(q, &repeat(k)?, &repeat(v)?, blocked, scale, false),
        _ => explicit(q, &repeat(k)?, &repeat(v)?, blocked, scale, soft_cap),
    }
}

/// The explicit path, heads already repeated.
fn explicit(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    blocked: &Tensor,
    scale: f64,
    cap: Option<f64>,
) -> Result<Tensor> {
    let scores = q.f_matmul(&k.f_transpose(2, 3)?)?.f_mul_scalar(scale)?;
    let scores = soft_cap(&scores, cap)?;
    // Softmax in f32, masked with the most negative finite f32 (a fully masked row stays finite).
    let probs = scores
        .f_to_kind(Kind::Float)?
        .f_masked_fill(blocked, f32::MIN as f64)?
        .f_softmax(-1, Kind::Float)?
        .f_to_kind(q.kind())?;
    Ok(probs.f_matmul(v)?)
}

/// libtorch's `scaled_dot_product_attention` (`gqa`: `k`, `v` have fewer heads than `q`); rows that see no
/// key may see every key (module docs).
fn fused(q: &Tensor, k: &Tensor, v: &Tensor, blocked: &Tensor, scale: f64, gqa: bool) -> Result<Tensor> {
    let allowed = blocked.f_logical_not()?;
    let sees_nothing = allowed.f_any_dim(-1, true)?.f_logical_not()?;
    let allowed = allowed.f_logical_or(&sees_nothing)?;
    Ok(Tensor::f_scaled_dot_product_attention(
        q,
        k,
        v,
        Some(&allowed),
        0.0,
        false,
        Some(scale),
        gqa,
    )?)
}

/// Checks the shapes; returns `(N, heads, kv_heads, S, D)`.
fn check(q: &Tensor, k: &Tensor, v: &Tensor, blocked: &Tensor) -> Result<(i64, i64, i64, i64, i64)> {
    let shape_error = |arg: &'static str, expected: String, got: Vec<i64>| {
        Error::Input(InputError::Shape { arg, expected, got })
    };
    let [n, heads, t, d] = q.size()[..] else {
        return Err(shape_error("q", "[N, heads, T, D]".into(), q.size()));
    };
    let k_size = k.size();
    let (kv_heads, keys) = match k_size[..] {
        [kn, kh, s, kd] if kn == n && kd == d && kh > 0 && heads % kh == 0 => (kh, s),
        _ => {
            return Err(shape_error(
                "k",
                format!("[{n}, kv_heads, S, {d}] with kv_heads dividing the {heads} query heads (q is [{n}, {heads}, {t}, {d}])"),
                k_size.clone(),
            ))
        }
    };
    if v.size() != k_size {
        return Err(shape_error("v", format!("{k_size:?} like k"), v.size()));
    }
    match blocked.size()[..] {
        [bn, 1, bt, bs] if (bn == n || bn == 1) && bt == t && bs == keys => {}
        _ => {
            return Err(shape_error(
                "blocked",
                format!("[{n} or 1, 1, {t}, {keys}] (queries × keys)"),
                blocked.size(),
            ))
        }
    }
    if blocked.kind() != Kind::Bool {
        return Err(Error::Input(InputError::DType {
            arg: "blocked",
            expected: "Bool",
            got: blocked.kind(),
        }));
    }
    Ok((n, heads, kv_heads, keys, d))
}
