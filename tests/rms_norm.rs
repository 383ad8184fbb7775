//! `tch_rpo::autograd::rms_norm`, RMSNorm as one autograd node: its forward equals the composite form
//! (the same libtorch ops written out here) bit for bit; its gradients equal an f64 plain-Rust evaluation
//! of the analytic derivative within the roundings of the f32 (and bf16) arithmetic; bad inputs are typed
//! errors.

mod common;

use proptest::prelude::*;
use tch::{Device, Kind, Tensor};
use tch_rpo::autograd::rms_norm;
use tch_rpo::{Error, InputError};

const CPU: Device = Device::Cpu;
/// f32's unit roundoff.
const U: f64 = 1.0 / 16_777_216.0;
/// bf16's unit roundoff (8 significant bits).
const U_BF16: f64 = 1.0 / 256.0;

/// The composite form, op by op: `x̂ = f32(x) · rsqrt(mean(f32(x)²) + eps)`, then `dtype(x̂ · (f32(w) + 1))`
/// or `w · dtype(x̂)`.
fn composite(x: &Tensor, w: &Tensor, eps: f64, one_plus: bool) -> Tensor {
    let xf = x.to_kind(Kind::Float);
    let r = (xf.square().mean_dim(-1, true, Kind::Float) + eps).rsqrt();
    let normed = &xf * r;
    match one_plus {
        true => (normed * (w.to_kind(Kind::Float) + 1.0)).to_kind(x.kind()),
        false => w * normed.to_kind(x.kind()),
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

/// What the f64 reference needs of one case.
struct Grads {
    dx: Vec<f64>,
    dw: Vec<f64>,
    /// Per element of x: `r · (|g_i| + |x̂_i| · mean_j |g_j · x̂_j|)`, the scale of dx_i's terms.
    dx_scale: Vec<f64>,
    /// Per element of w: `Σ |gy · x̂|` over the rows.
    dw_scale: Vec<f64>,
}

/// The analytic gradients in f64 from the inputs' values (`x`, `w`, `gy` as given, `rows × h`), with the
/// Llama form's `dtype(x̂)` and `gy·w` rounded as the inputs' dtype rounds them (`round`).
fn reference(
    x: &[f64],
    w: &[f64],
    gy: &[f64],
    h: usize,
    eps: f64,
    one_plus: bool,
    round: impl Fn(f64) -> f64,
) -> Grads {
    let mut g_all = Grads {
        dx: vec![],
        dw: vec![0.0; h],
        dx_scale: vec![],
        dw_scale: vec![0.0; h],
    };
    for (xr, gr) in x.chunks(h).zip(gy.chunks(h)) {
        let r = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / h as f64 + eps).sqrt();
        let normed: Vec<f64> = xr.iter().map(|v| v * r).collect();
        let g: Vec<f64> = (0..h)
            .map(|i| match one_plus {
                true => gr[i] * (w[i] + 1.0),
                false => round(gr[i] * w[i]),
            })
            .collect();
        let m = (0..h).map(|i| g[i] * normed[i]).sum::<f64>() / h as f64;
        let m_abs = (0..h).map(|i| (g[i] * normed[i]).abs()).sum::<f64>() / h as f64;
        for i in 0..h {
            g_all.dx.push(r * (g[i] - normed[i] * m));
            g_all.dx_scale.push(r * (g[i].abs() + normed[i].abs() * m_abs));
            let n = if one_plus { normed[i] } else { round(normed[i]) };
            g_all.dw[i] += gr[i] * n;
            g_all.dw_scale[i] += (gr[i] * n).abs();
        }
    }
    g_all
}

/// One case: `rows × h` inputs of `kind`, either form.
fn check(rows: i64, h: i64, kind: Kind, one_plus: bool, seed: i64) -> Result<(), TestCaseError> {
    tch::manual_seed(seed);
    let eps = 1e-6;
    let x = (Tensor::randn([rows, h], (Kind::Float, CPU)) * 3.0).to_kind(kind);
    let w = (Tensor::randn([h], (Kind::Float, CPU)) * 0.5).to_kind(kind);
    let gy = Tensor::randn([rows, h], (Kind::Float, CPU)).to_kind(kind);

    let (xl, wl) = (
        x.detach().set_requires_grad(true),
        w.detach().set_requires_grad(true),
    );
    let y = rms_norm(&xl, &wl, eps, one_plus).unwrap();
    let y_composite = tch::no_grad(|| composite(&x, &w, eps, one_plus));
    prop_assert!(y.equal(&y_composite), "forward differs from the composite form");
    prop_assert_eq!(y.kind(), kind);
    (&y * &gy).sum(Kind::Double).backward();
    let (dx, dw) = (values(&xl.grad()), values(&wl.grad()));

    let h = h as usize;
    let round = |v: f64| match kind {
        Kind::BFloat16 => values(&Tensor::from(v).to_kind(Kind::BFloat16))[0],
        _ => v,
    };
    let want = reference(&values(&x), &values(&w), &values(&gy), h, eps, one_plus, round);
    // dx: r, x̂, the products, the mean over h terms and the difference are f32 ops, each relative u of
    // its term (the mean h·u, any order), the whole ≤ (h + 10)·u of dx_scale; the result rounds to the
    // dtype (its u of |dx|); the Llama form's g = dtype(gy·w) is in the reference.
    let out_u = if kind == Kind::BFloat16 { U_BF16 } else { U };
    for (i, (a, b)) in dx.iter().zip(&want.dx).enumerate() {
        let tol = (h as f64 + 10.0) * U * want.dx_scale[i] + out_u * b.abs();
        prop_assert!((a - b).abs() <= tol, "dx[{}]: {} vs {} (tol {})", i, a, b, tol);
    }
    // dw: rows products and their f32 sum (rows·u) over the terms, x̂ itself (3u), rounded to the dtype once;
    // the Llama form's dtype(x̂) rounds the f32 x̂, which may land one bf16 ulp (≤ 2⁻⁷ relative) from the
    // rounding of the exact x̂ the reference takes.
    let llama_bf16 = kind == Kind::BFloat16 && !one_plus;
    for (i, (a, b)) in dw.iter().zip(&want.dw).enumerate() {
        let mut tol = (rows as f64 + 6.0) * U * want.dw_scale[i] + out_u * b.abs();
        if llama_bf16 {
            tol += 2.0 * U_BF16 * want.dw_scale[i];
        }
        prop_assert!((a - b).abs() <= tol, "dw[{}]: {} vs {} (tol {})", i, a, b, tol);
    }
    Ok(())
}

proptest! {
    #![proptest_config(common::proptest_config(48))]

    /// f32 and bf16, both forms, random shapes (including a last dimension of 1).
    #[test]
    fn forward_is_composite_and_gradients_are_analytic(
        rows in 1i64..12,
        h in 1i64..40,
        bf16 in any::<bool>(),
        one_plus in any::<bool>(),
        seed in 0i64..1_000_000,
    ) {
        let kind = if bf16 { Kind::BFloat16 } else { Kind::Float };
        check(rows, h, kind, one_plus, seed)?;
    }
}

#[test]
fn leading_dimensions_frozen_weight_and_no_grad() {
    tch::manual_seed(3);
    let x = Tensor::randn([2, 3, 4, 8], (Kind::Float, CPU)).set_requires_grad(true);
    let w = Tensor::randn([8], (Kind::Float, CPU));
    let y = rms_norm(&x, &w, 1e-6, true).unwrap();
    assert!(y.equal(&tch::no_grad(|| composite(&x, &w, 1e-6, true))));
    y.sum(Kind::Float).backward();
    assert_eq!(x.grad().size(), x.size());
    assert!(!w.grad().defined(), "a frozen weight gets no gradient");
    let y = tch::no_grad(|| rms_norm(&x, &w, 1e-6, false).unwrap());
    assert!(!y.requires_grad(), "under no_grad nothing is recorded");
}

#[test]
fn bad_inputs_are_typed_errors() {
    let x = Tensor::zeros([2, 4], (Kind::Float, CPU));
    let w = Tensor::zeros([4], (Kind::Float, CPU));
    match rms_norm(&x, &Tensor::zeros([3], (Kind::Float, CPU)), 1e-6, true) {
        Err(Error::Input(InputError::Shape { arg, got, .. })) => {
            assert_eq!((arg, got), ("weight", vec![3]));
        }
        other => panic!("{other:?}"),
    }
    match rms_norm(&Tensor::zeros([], (Kind::Float, CPU)), &w, 1e-6, true) {
        Err(Error::Input(InputError::Shape { arg: "weight", .. })) => {}
        other => panic!("{other:?}"),
    }
    match rms_norm(&x.to_kind(Kind::Int64), &w, 1e-6, true) {
        Err(Error::Input(InputError::DType { arg: "x", .. })) => {}
        other => panic!("{other:?}"),
    }
    match rms_norm(&x, &w.to_kind(Kind::Int64), 1e-6, true) {
        Err(Error::Input(InputError::DType { arg: "weight", .. })) => {}
        other => panic!("{other:?}"),
    }
    for eps in [f64::NAN, -1e-6, f64::INFINITY] {
        match rms_norm(&x, &w, eps, false) {
            Err(Error::Input(InputError::InvalidParameter { name: "eps", .. })) => {}
            other => panic!("eps {eps}: {other:?}"),
        }
    }
}
