//! The one-pass chunk of bf16 logits on CPU, over `csrc/bf16_head.cpp` (feature `autograd`): the softmax
//! statistics and the logits' gradient in f32 (row sums in f64), the gradient written over the bf16 logits,
//! so a chunk holds `2·V` bytes per token instead of the upcast path's f32 copy, log-sum-exp temporary and
//! bf16 gradient.
//!
//! With `x_j = f32(z_j)·s` (`z` the chunk's bf16 logits, `s` the head's logit scale), per row with target `t`
//! and loss coefficient `c`:
//!
//! ```text
//! lse = m + log Σ_j exp(x_j − m)   (m = max_j x_j),      logp = x_t − lse,
//! g_j = bf16( (c·[j = t] − c·exp(x_j − lse)) · s )
//! ```
//!
//! the arithmetic of the upcast path ([`super::engine::chunk_grad`] on an f32 copy) except the exp (the
//! kernel's own polynomial, within 4 f32 ulps (2⁻²² relative)) and the sum (f64 here, f32 there).

use crate::error::{Error, Result};
use std::os::raw::c_char;
use tch::{Device, Kind, TchError, Tensor};

extern "C" {
    fn tch_rpo_bf16_rows_stats(
        z: *const u16,
        n: i64,
        v: i64,
        scale: f32,
        targets: *const i64,
        lse: *mut f32,
        logp: *mut f32,
    ) -> *mut c_char;
    fn tch_rpo_bf16_rows_grad(
        z: *mut u16,
        n: i64,
        v: i64,
        scale: f32,
        targets: *const i64,
        lse: *const f32,
        coef: *const f32,
    ) -> *mut c_char;
}

/// Whether the kernels apply: bf16 logits on the CPU reduced in f32.
pub(crate) fn applies(kind: Kind, compute: Kind, device: Device) -> bool {
    kind == Kind::BFloat16 && compute == Kind::Float && device == Device::Cpu
}

/// Checks that `t` is a contiguous CPU tensor of `kind` with `numel` elements.
fn check(what: &str, t: &Tensor, kind: Kind, numel: i64) -> Result<()> {
    let ok =
        t.f_kind()? == kind && t.device() == Device::Cpu && t.is_contiguous() && t.numel() as i64 == numel;
    if ok {
        Ok(())
    } else {
        Err(Error::Torch(TchError::Torch(format!(
            "bf16 head kernel: {what} must be a contiguous CPU {kind:?} tensor of {numel} elements, got {:?} {:?} \
             of shape {:?}",
            t.f_kind()?,
            t.device(),
            t.size()
        ))))
    }
}

/// The `[n]` i64 targets and the `[n, V]` shape of `z`, checked.
fn rows(z: &Tensor, targets: &Tensor) -> Result<(i64, i64)> {
    let size = z.size();
    let (n, v) = match size[..] {
        [n, v] if v > 0 => (n, v),
        _ => {
            return Err(Error::Torch(TchError::Torch(format!(
                "bf16 head kernel: logits must be [n, V] with V > 0, got {size:?}"
            ))))
        }
    };
    check("logits", z, Kind::BFloat16, n * v)?;
    check("targets", targets, Kind::Int64, n)?;
    Ok((n, v))
}

/// `(lse, logp)`, each `[n]` f32, of the `[n, V]` bf16 logits `z` scaled by `scale`, for the `[n]` i64
/// `targets`.
pub(crate) fn stats(z: &Tensor, scale: f64, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, v) = rows(z, targets)?;
    let lse = Tensor::f_empty([n], (Kind::Float, Device::Cpu))?;
    let logp = Tensor::f_empty([n], (Kind::Float, Device::Cpu))?;
    // SAFETY: `rows` and the allocations above give contiguous CPU buffers of the stated kinds and sizes,
    // alive for the call; the kernel checks every target against `v` before reading.
    let message = unsafe {
        tch_rpo_bf16_rows_stats(
            z.data_ptr() as *const u16,
            n,
            v,
            scale as f32,
            targets.data_ptr() as *const i64,
            lse.data_ptr() as *mut f32,
            logp.data_ptr() as *mut f32,
        )
    };
    crate::autograd::shim_status(message, "bf16 head kernel")?;
    Ok((lse, logp))
}

/// Overwrites the `[n, V]` bf16 logits `z` with their gradient given the `[n]` f32 `lse` (from [`stats`])
/// and loss coefficients `coef`, and returns `z`.
pub(crate) fn grad_in_place(
    z: Tensor,
    scale: f64,
    targets: &Tensor,
    lse: &Tensor,
    coef: &Tensor,
) -> Result<Tensor> {
    let (n, v) = rows(&z, targets)?;
    check("lse", lse, Kind::Float, n)?;
    check("coef", coef, Kind::Float, n)?;
    // SAFETY: as in `stats`; `z` is written in place, its only reader being this call.
    let message = unsafe {
        tch_rpo_bf16_rows_grad(
            z.data_ptr() as *mut u16,
            n,
            v,
            scale as f32,
            targets.data_ptr() as *const i64,
            lse.data_ptr() as *const f32,
            coef.data_ptr() as *const f32,
        )
    };
    crate::autograd::shim_status(message, "bf16 head kernel")?;
    Ok(z)
}

#[cfg(test)]
mod tests {
    use super::{grad_in_place, stats};
    use tch::{Device, Kind, Tensor};

    /// f64 references from the bf16 values themselves (exact in f64): `x = z·s`, the log-softmax and the
    /// gradient before its final rounding.
    fn reference(z: &[f64], v: usize, s: f64, t: &[i64], c: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut lse, mut logp, mut g) = (vec![], vec![], vec![]);
        for (r, row) in z.chunks(v).enumerate() {
            let x: Vec<f64> = row.iter().map(|z| z * s).collect();
            let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l = m + x.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            lse.push(l);
            logp.push(x[t[r] as usize] - l);
            for (j, xj) in x.iter().enumerate() {
                let onehot = if j as i64 == t[r] { c[r] } else { 0.0 };
                g.push((onehot - c[r] * (xj - l).exp()) * s);
            }
        }
        (lse, logp, g)
    }

    /// Random rows with ties, a wide logit range (down to where exp underflows) and V not a multiple of
    /// the kernel's 16 lanes; scales 1 and 0.7.
    #[test]
    fn stats_and_gradient_match_f64_within_their_rounding() {
        tch::manual_seed(11);
        for (n, v, s) in [(5i64, 1003i64, 1.0f64), (3, 16, 0.7), (4, 7, 1.0), (2, 4099, 0.7)] {
            let spread = Tensor::randn([n, v], (Kind::Float, Device::Cpu)) * 12.0;
            let z = spread.to_kind(Kind::BFloat16);
            // A far-below-max logit (exp underflows in f32) and a repeated maximum.
            let _ = z.get(0).get(0).fill_(-120.0);
            let _ = z.get(1).get(1).fill_(40.0);
            let _ = z.get(1).get(2).fill_(40.0);
            let targets = Tensor::randint(v, [n], (Kind::Int64, Device::Cpu));
            let _ = targets.get(0).fill_(0);
            let coef = Tensor::randn([n], (Kind::Float, Device::Cpu));
            let zf: Vec<f64> = Vec::try_from(z.to_kind(Kind::Double).reshape([-1])).unwrap();
            let t: Vec<i64> = Vec::try_from(&targets).unwrap();
            let c: Vec<f64> = Vec::try_from(coef.to_kind(Kind::Double)).unwrap();
            let (lse_ref, logp_ref, g_ref) = reference(&zf, v as usize, s, &t, &c);

            let (lse, logp) = stats(&z, s, &targets).unwrap();
            let lse: Vec<f64> = Vec::try_from(lse.to_kind(Kind::Double)).unwrap();
            let logp: Vec<f64> = Vec::try_from(logp.to_kind(Kind::Double)).unwrap();
            // x_j is f32(z_j·s) (one rounding, relative 2⁻²⁴ of |x| ≤ max|x|); x_j − m rounds again, exp
            // adds < 2⁻²² relative, the f64 sum nothing measurable, and the result rounds to f32 once: bound
            // 4·2⁻²⁴·max|x| + 2⁻²² + 2⁻²⁴·|value|.
            let max_x = zf.iter().map(|z| (z * s).abs()).fold(0.0, f64::max);
            let u = 2f64.powi(-24);
            for r in 0..n as usize {
                let bound = 4.0 * u * max_x + 4.0 * u;
                assert!(
                    (lse[r] - lse_ref[r]).abs() <= bound + u * lse_ref[r].abs(),
                    "lse[{r}]"
                );
                assert!(
                    (logp[r] - logp_ref[r]).abs() <= bound + u * logp_ref[r].abs(),
                    "logp[{r}]"
                );
            }

            let lse_t = Tensor::from_slice(&lse).to_kind(Kind::Float);
            let g = grad_in_place(z.shallow_clone(), s, &targets, &lse_t, &coef).unwrap();
            assert_eq!(
                g.data_ptr(),
                z.data_ptr(),
                "the gradient is written over the logits"
            );
            let g: Vec<f64> = Vec::try_from(g.to_kind(Kind::Double).reshape([-1])).unwrap();
            // p_j = exp(x_j − lse) with x_j − lse carrying the rounding of x_j (u·max|x|), of the
            // subtraction (u·(max|x| + |lse|)) and the lse's own error, all absolute, hence a relative
            // error e_p of their sum + the exp's 2⁻²²; the products round (≤ 3u) and bf16
            // rounds last (2⁻⁸ relative, 8 significant bits): |g − g_ref| ≤ (e_p + 3u)·|c·p·s| + 2⁻⁸·|g_ref| + at the target
            // the cancellation of c − c·p, whose terms are ≤ |c|·s.
            for (i, (a, b)) in g.iter().zip(&g_ref).enumerate() {
                let (r, j) = (i / v as usize, (i % v as usize) as i64);
                let lse_bound = 4.0 * u * max_x + 4.0 * u + u * lse_ref[r].abs();
                let e_p = 2.0 * u * max_x + u * lse_ref[r].abs() + lse_bound + 4.0 * u;
                let term = (c[r] * s).abs();
                let p_term = (b - if j == t[r] { c[r] * s } else { 0.0 }).abs();
                // Below f32's smallest normal the kernel's exp is 0 and bf16 is subnormal: absolute 2⁻¹²⁶.
                let tiny = 2f64.powi(-126) * (term + 1.0);
                let mut tol = (e_p + 3.0 * u) * p_term + 2f64.powi(-8) * b.abs() + tiny;
                if j == t[r] {
                    tol += 3.0 * u * term;
                }
                assert!((a - b).abs() <= tol, "g[{r}, {j}]: {a} vs {b} (tol {tol})");
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let z = Tensor::zeros([2, 5], (Kind::BFloat16, Device::Cpu));
        let out_of_range = Tensor::from_slice(&[0i64, 5]);
        let err = stats(&z, 1.0, &out_of_range).unwrap_err().to_string();
        assert!(err.contains("outside [0, V)"), "{err}");
        let err = stats(&z.to_kind(Kind::Float), 1.0, &Tensor::from_slice(&[0i64, 1]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("logits") && err.contains("BFloat16"), "{err}");
        let err = stats(&z, 1.0, &Tensor::from_slice(&[0i64]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("targets"), "{err}");
        let lse = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let coef = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let err = grad_in_place(z, 1.0, &Tensor::from_slice(&[0i64, 1]), &lse, &coef)
            .unwrap_err()
            .to_string();
        assert!(err.contains("coef"), "{err}");
    }
}
