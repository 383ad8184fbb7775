//! Float tolerances derived from the arithmetic, so that no random case can fail a correct implementation.
//!
//! Model (Higham, *Accuracy and Stability of Numerical Algorithms*, §2–3): every basic operation in a
//! format with unit roundoff `u` (half the relative spacing, `2^-p` for `p` significant bits) returns
//! `x·(1 + δ)` with `|δ| ≤ u`, plus at most [`underflow`] absolutely where the result is subnormal;
//! `exp` and `log` are within [`TRANSCENDENTAL_ULPS`] ulps, i.e. `2·ULPS·u` relative (`exp`) or
//! `2·ULPS·u·|result|` absolute (`log`); a sum of `n` terms in any order (libtorch's vectorized and cascade orders are
//! unspecified) is within `γ(n−1)·Σ|terms|`, `γ(k) = k·u / (1 − k·u)`. Bounds below add the first-order
//! terms of every rounding an implementation of the formula can make, then [`SECOND_ORDER`] for the
//! products of two or more `δ`s: with first-order relative terms summing to `ε`, `Π(1 + δ_i) − 1 ≤ e^ε − 1
//! ≤ ε·(1 + ε)` for `ε ≤ 1/8`; here `ε` is at most ~0.02 (five bf16 roundings; f32 sums of ≤ 1000 terms
//! give `γ` ≤ 6e-5), so `1 + 1/16` covers it.
//!
//! Inputs are held exactly: the tests round their data to the tensor's dtype first and evaluate the f64
//! reference on the rounded values, so only the library's arithmetic separates the two.

use tch::Kind;

/// Unit roundoff `2^-p` of f64 (53 significant bits).
pub const U_F64: f64 = 1.0 / 9_007_199_254_740_992.0; // 2^-53
/// Unit roundoff of f32 (24 significant bits).
pub const U_F32: f64 = 1.0 / 16_777_216.0; // 2^-24
/// Unit roundoff of f16 (11 significant bits).
pub const U_F16: f64 = 1.0 / 2048.0; // 2^-11
/// Unit roundoff of bf16 (8 significant bits).
pub const U_BF16: f64 = 1.0 / 256.0; // 2^-8

/// Accuracy of `exp` and `log` in ulps: 2 covers CUDA's `expf` (2 ulps, CUDA C Programming Guide, appendix
/// "Mathematical Functions"), and a fortiori Sleef's `u10` functions and glibc's (1 ulp) that libtorch uses
/// on the CPU.
pub const TRANSCENDENTAL_ULPS: f64 = 2.0;

/// Relative error of one `exp` (or absolute error of one `log`, per unit of its result) at unit roundoff `u`.
pub fn transcendental(u: f64) -> f64 {
    2.0 * TRANSCENDENTAL_ULPS * u
}

/// Factor for the second-order terms of a first-order bound (see the module docs).
pub const SECOND_ORDER: f64 = 1.0 + 1.0 / 16.0;

/// Unit roundoff of a floating-point `kind`.
pub fn unit_roundoff(kind: Kind) -> f64 {
    match kind {
        Kind::Double => U_F64,
        Kind::Float => U_F32,
        Kind::Half => U_F16,
        Kind::BFloat16 => U_BF16,
        other => panic!("no unit roundoff for {other:?}"),
    }
}

/// Absolute error of one rounding to `kind` in the subnormal range: half the smallest subnormal.
pub fn underflow(kind: Kind) -> f64 {
    match kind {
        Kind::Double => 0.0, // 2^-1075: below every other term
        Kind::Float => 2f64.powi(-150),
        Kind::Half => 2f64.powi(-25),
        Kind::BFloat16 => 2f64.powi(-134),
        other => panic!("no subnormals for {other:?}"),
    }
}

/// `γ(n) = n·u / (1 − n·u)`: the relative error of `n` accumulated roundings.
pub fn gamma(n: usize, u: f64) -> f64 {
    let nu = n as f64 * u;
    assert!(nu < 0.5, "γ({n}) undefined at u = {u:e}");
    nu / (1.0 - nu)
}

/// Error bound of a sum of `terms` in any order whose terms each carry an error of at most
/// `term_errors[i]`: `Σ term_errors + γ(n−1)·Σ|terms|`.
pub fn sum_error(terms: &[f64], term_errors: &[f64], u: f64) -> f64 {
    let abs: f64 = terms.iter().map(|x| x.abs()).sum();
    let carried: f64 = term_errors.iter().sum();
    SECOND_ORDER * (carried + gamma(terms.len().saturating_sub(1), u) * abs)
}

/// Per-row sums of `[rows, steps]` values with their errors: the bound of each row's sum.
pub fn row_sum_errors(values: &[f64], errors: &[f64], steps: usize, u: f64) -> Vec<f64> {
    values
        .chunks(steps)
        .zip(errors.chunks(steps))
        .map(|(v, e)| sum_error(v, e, u))
        .collect()
}

/// Exact (f64) logsumexp of a row, its max, and `E_p[m − z]` (`p = softmax(row)`).
fn lse_parts(row: &[f64]) -> (f64, f64, f64) {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = row.iter().map(|z| (z - m).exp()).sum();
    let lse = m + s.ln();
    let spread: f64 = row.iter().map(|z| (z - lse).exp() * (m - z)).sum();
    (lse, m, spread)
}

/// Error bound of `logsumexp(row)` computed as `m + log Σ_v exp(z_v − m)` (`m` the row max; libtorch's
/// `logsumexp`, `log_softmax` and the crate's kernels) with unit roundoff `u`, on a row held exactly:
/// - `z_v − m` rounds by `u·|z_v − m|`, `exp` adds `t` relative ([`transcendental`]), so each term of
///   `S = Σ exp(z_v − m)` is off by `(u·|z_v − m| + t)` relative and `S` by `u·E_p[m − z] + t` (`p = softmax`:
///   the terms' weights in S);
/// - the sum of V positive terms adds `γ(V−1)` relative to `S`; a relative error of `S` is an absolute
///   error of `log S`; `log` adds `t·log S`; the final `+ m` rounds by `u·|lse|`.
pub fn lse_error(row: &[f64], u: f64) -> f64 {
    let (lse, m, spread) = lse_parts(row);
    let t = transcendental(u);
    SECOND_ORDER * (u * spread + t + gamma(row.len() - 1, u) + t * (lse - m) + u * lse.abs())
}

/// Error bound of one log-prob `z_y − logsumexp(z)` (the crate's kernels) or `(z_y − m) − log S`
/// (`log_softmax` + gather): [`lse_error`] plus the rounding of `z_y − m` and of the final subtraction,
/// `u·(|z_y − m| + |log p|)` (an implementation makes one of the two; both are counted).
pub fn logprob_error(row: &[f64], label: usize, u: f64) -> f64 {
    let (lse, m, _) = lse_parts(row);
    lse_error(row, u) + SECOND_ORDER * u * ((row[label] - m).abs() + (row[label] - lse).abs())
}

/// [`logprob_error`] for every position of row-major logits `[B, T, V]` and labels `[B, T]`, laid out like
/// `common::token_logprobs` (`[B, T']`, 0 at ignored positions, whose value 0 is exact).
pub fn token_logprob_errors(
    logits: &[f64],
    labels: &[i64],
    (b, t, v): (usize, usize, usize),
    ignore_index: i64,
    shift: bool,
    u: f64,
) -> Vec<f64> {
    let steps = if shift { t - 1 } else { t };
    let mut out = vec![0.0; b * steps];
    for bi in 0..b {
        for ti in 0..steps {
            let label = labels[bi * t + ti + usize::from(shift)];
            if label == ignore_index {
                continue;
            }
            let row = &logits[(bi * t + ti) * v..(bi * t + ti + 1) * v];
            out[bi * steps + ti] = logprob_error(row, label as usize, u);
        }
    }
    out
}

/// Error bound of the mean logit `(1/V)·Σ_v z_v`, computed either directly (sum: `γ(V−1)·Σ|z_v|`, divide:
/// `u·|mean|`) or as `mean(z − m) + m` (subtract: `u·|z_v − m|` each, sum: `γ(V−1)·Σ|z_v − m|`, divide:
/// `u·|mean − m|`, add: `u·|mean|`); the bound counts both.
pub fn mean_logit_error(row: &[f64], u: f64) -> f64 {
    let v = row.len() as f64;
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = row.iter().sum::<f64>() / v;
    let abs: f64 = row.iter().map(|z| z.abs()).sum::<f64>() / v;
    let shifted: f64 = row.iter().map(|z| (z - m).abs()).sum::<f64>() / v;
    let g = gamma(row.len() - 1, u);
    SECOND_ORDER * (g * abs + (u + g) * shifted + u * (mean - m).abs() + 2.0 * u * mean.abs())
}

/// Error bound of the entropy `H = lse − Σ_v p_v·z_v` (`p = softmax`), computed as `lse − Σ p̃_v·z_v` with
/// `p̃ = exp(z − lse~)`, or as `log S − Σ w_v·u_v / S` with `u = z − m`, `w = e^u`. With `c ∈ {0, m}` the
/// shift of either form and `a_v = |z_v| + |z_v − m|` ≥ `|z_v − c|`:
/// - `lse` (or `log S`) is off by [`lse_error`];
/// - each weight `p̃_v` (or `w_v / S`) is off relatively by `[lse_error] + u·|z_v − lse| + t` (the
///   exponent's rounding and `exp`, [`transcendental`]), plus `γ(V−1) + u` for the division by a summed `S`;
/// - the products `p_v·(z_v − c)` (and `z_v − c` itself) round by `2u`, their sum adds `γ(V−1)`, both
///   relative to `Σ p_v·a_v`; the final subtraction rounds by `u·|H|`.
pub fn entropy_error(row: &[f64], u: f64) -> f64 {
    let (lse, m, _) = lse_parts(row);
    let d_lse = lse_error(row, u);
    let g = gamma(row.len() - 1, u);
    let mut weighted = 0.0; // Σ p_v·a_v·(relative error of the weight + product and sum roundings)
    let mut entropy = 0.0;
    for &z in row {
        let p = (z - lse).exp();
        let a = z.abs() + (z - m).abs();
        let weight_rel = d_lse + u * (z - lse).abs() + transcendental(u) + g + u;
        weighted += p * a * (weight_rel + 2.0 * u + g);
        entropy -= p * (z - lse);
    }
    SECOND_ORDER * (d_lse + weighted + u * entropy.abs())
}

/// Error bound of each element of the gradient of `w·log p_y` w.r.t. one row of logits `z`,
/// `w·(1[v = y] − p_v)`, computed as libtorch's autograd does for the crate's kernels, in working precision
/// `u_work` (f32 / f64) with the gradient stored in `store` (the logits' dtype):
/// - `p̃_v = exp(z_v − lse~)`: relative error `[lse_error] + u_work·|z_v − lse| + t` ([`transcendental`]);
/// - `p̃_v` rounded to `store` (the bf16 / f16 surrogate keeps it there), `w` rounded to `store` on its way
///   into both branches, their product rounded to `store`: `3·u_store` relative to `|w|·p_v`;
/// - at the label, the rounded `w` (`u_store·|w|`) and the sum of the two branches (`u_store·|g_y|`);
/// - each of those ≤ 5 roundings to `store` may be subnormal: [`underflow`] each.
///
/// For f32 / f64 logits (`store` the working dtype) this over-counts the two roundings the surrogate makes
/// and a plain `exp(z − lse)·w` does not: at most `2u` relative more.
pub fn logprob_grad_errors(row: &[f64], label: usize, w: f64, u_work: f64, store: Kind) -> Vec<f64> {
    let (lse, _, _) = lse_parts(row);
    let d_lse = lse_error(row, u_work);
    let u_store = unit_roundoff(store);
    row.iter()
        .enumerate()
        .map(|(v, &z)| {
            let p = (z - lse).exp();
            let p_rel = d_lse + u_work * (z - lse).abs() + transcendental(u_work);
            let mut err = w.abs() * p * (p_rel + 3.0 * u_store);
            if v == label {
                let g = w * (1.0 - p);
                err += u_store * w.abs() + u_store * g.abs();
            }
            SECOND_ORDER * err + 5.0 * underflow(store)
        })
        .collect()
}

/// [`logprob_grad_errors`] for row-major logits `[B, T, V]`, labels `[B, T]` and upstream weights
/// `[B, T']`, laid out like `common::token_logprobs_grad` (`[B, T, V]`, exact 0 where nothing is scored);
/// `(u_work, store)` as in [`logprob_grad_errors`].
pub fn token_logprob_grad_errors(
    logits: &[f64],
    labels: &[i64],
    (b, t, v): (usize, usize, usize),
    ignore_index: i64,
    shift: bool,
    upstream: &[f64],
    (u_work, store): (f64, Kind),
) -> Vec<f64> {
    let steps = if shift { t - 1 } else { t };
    let mut out = vec![0.0; b * t * v];
    for bi in 0..b {
        for ti in 0..steps {
            let label = labels[bi * t + ti + usize::from(shift)];
            if label == ignore_index {
                continue;
            }
            let off = (bi * t + ti) * v;
            let errs = logprob_grad_errors(
                &logits[off..off + v],
                label as usize,
                upstream[bi * steps + ti],
                u_work,
                store,
            );
            out[off..off + v].copy_from_slice(&errs);
        }
    }
    out
}

/// Asserts `|got − want| ≤ bound` element-wise (NaN matching NaN), naming the first failing index and how
/// many units of the bound it is off.
#[track_caller]
pub fn assert_within(got: &[f64], want: &[f64], bounds: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert_eq!(bounds.len(), want.len(), "{what}: bounds length");
    for (i, ((g, w), b)) in got.iter().zip(want).zip(bounds).enumerate() {
        let diff = (g - w).abs();
        assert!(
            diff <= *b || (g.is_nan() && w.is_nan()),
            "{what}[{i}]: got {g}, want {w} (|diff| {diff:e} > bound {b:e}, {:.2}×)",
            diff / b
        );
    }
}
