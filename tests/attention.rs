//! The attention core (`tch_rpo::models::attention`): libtorch's fused kernel and the explicit path both
//! against a plain-Rust f64 attention, forward and gradients, in f32, over random shapes, grouped-query
//! heads, key caches, padding and sliding windows; no NaN for queries that see no key; the soft-cap falls
//! back to the explicit path; shape and dtype errors.
//!
//! # The tolerance (per element, derived from the arithmetic; `u` = f32's unit roundoff, `t` the error of
//! one `exp` ([`tolerance::transcendental`]), `γ(n)` as in `tests/common/tolerance.rs`)
//! For a query row `i` with visible keys `j` (S of them at most), scores `s_j = scale · q_i·k_j`, weights
//! `p_j = softmax(s)_j`, output `o_i = Σ_j p_j v_j`:
//! - a score carries `e_j = γ(D + 4) · scale · Σ_d |q_d k_jd|` (D products and D − 1 additions, the scale
//!   applied once or as `√scale` to both operands, `√scale` rounded);
//! - each weight carries a relative error `r = 2·max_j e_j + 2u·max_j |s_j − m| + 2t + 2S·(t + 2u) + γ(S) +
//!   4u` (`m` the row max): a score error moves `p_j` by at most twice the largest score error, `s_j − m`
//!   rounds, the exponential of each term, at most S online-softmax rescalings by `exp(m_old − m_new)` (the
//!   flash kernels), the sum of S terms and the final division;
//! - the output carries `(r + γ(S) + 2u) · Σ_j p_j |v_jd|` (the weighted sum of S terms and the rounding of
//!   the weights).
//!
//! Gradients of `L = Σ o ⊙ g` (`g` zero on rows that see no key, whose outputs nothing scores), with
//! `dP_ij = g_i·v_j`, `c_i = Σ_j p_ij dP_ij`, `dS_ij = p_ij (dP_ij − c_i)`:
//! `dq_i = scale Σ_j dS_ij k_j`, `dk_j = scale Σ_i dS_ij q_i`, `dv_j = Σ_i p_ij g_i` (sums over the query
//! heads sharing a key / value head for `dk`, `dv`). Bounds, first order:
//! - `a_ij = γ(D)·Σ_d |g_id v_jd|` (the product `dP_ij`);
//! - `C_i = Σ_j p_ij (r |dP_ij| + a_ij) + γ(S)·Σ_j p_ij |dP_ij| + Σ_d |g_id|·δo_id + γ(D)·Σ_d |g_id o_id|`
//!   (`c_i` as autograd's softmax backward sums it, or as the flash backward's `Σ_d g_id o_id` from the
//!   output with its error `δo`: both counted);
//! - `B_ij = p_ij·(r·(|dP_ij| + |c_i|) + a_ij + C_i + u·(|dP_ij| + |c_i|)) + u·|dS_ij|` (`dS_ij`);
//! - `δdq_id = scale·(Σ_j B_ij |k_jd| + γ(S + 2)·Σ_j |dS_ij k_jd|)`, `δdk_jd = scale·(Σ_i B_ij |q_id| +
//!   γ(T·G + 2)·Σ_i |dS_ij q_id|)`, `δdv_jd = Σ_i p_ij r |g_id| + γ(T·G + 1)·Σ_i p_ij |g_id|` (G query heads
//!   per key / value head);
//!
//! every bound times [`tolerance::SECOND_ORDER`]. Each path is held to the bound against the f64 reference,
//! and the two paths to twice it against each other.

mod common;

use common::tolerance::{gamma, transcendental, SECOND_ORDER, U_F32};
use common::DataRng;
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};
use tch_rpo::models::attention::{
    attend, attend_with, attention_kernel, set_attention_kernel, with_attention_kernel, AttentionKernel,
};
use tch_rpo::{Error, InputError};

const CPU: Device = Device::Cpu;

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    rows: usize,
    kv_heads: usize,
    groups: usize,
    /// New queries per row.
    t: usize,
    /// Cached key slots before them.
    past: usize,
    d: usize,
    window: Option<usize>,
    /// Probability that a key slot is a token (else padding).
    keep: f64,
    scale: f64,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        1usize..=2,
        1usize..=2,
        1usize..=3,
        1usize..=7,
        0usize..=3,
        prop::sample::select(vec![1usize, 2, 4, 8, 16]),
        prop::option::of(1usize..=6),
        prop::sample::select(vec![0.5, 0.8, 1.0]),
        0.05f64..1.0,
    )
        .prop_map(
            |(seed, rows, kv_heads, groups, t, past, d, window, keep, scale)| Case {
                seed,
                rows,
                kv_heads,
                groups,
                t,
                past,
                d,
                window,
                keep,
                scale,
            },
        )
}

/// The inputs of a case, as f32 values (exact in the tensors) and the blocked mask.
struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    /// `[rows][t][s]`: true = may not see.
    blocked: Vec<bool>,
}

impl Case {
    fn heads(&self) -> usize {
        self.kv_heads * self.groups
    }
    fn s(&self) -> usize {
        self.past + self.t
    }
    fn blocked(&self, blocked: &[bool], n: usize, i: usize, j: usize) -> bool {
        blocked[(n * self.t + i) * self.s() + j]
    }
    fn sees_something(&self, blocked: &[bool], n: usize, i: usize) -> bool {
        (0..self.s()).any(|j| !self.blocked(blocked, n, i, j))
    }

    fn inputs(&self) -> Inputs {
        let mut rng = DataRng::new(self.seed);
        let (h, kh, s, t, d) = (self.heads(), self.kv_heads, self.s(), self.t, self.d);
        let mut values = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.range(-2.0, 2.0) as f32).collect() };
        let q = values(self.rows * h * t * d);
        let k = values(self.rows * kh * s * d);
        let v = values(self.rows * kh * s * d);
        let mut g = values(self.rows * h * t * d);
        let mut blocked = Vec::with_capacity(self.rows * t * s);
        for _ in 0..self.rows {
            let token: Vec<bool> = (0..s).map(|_| rng.uniform() < self.keep).collect();
            for i in 0..t {
                let slot = self.past + i;
                for (j, &is_token) in token.iter().enumerate() {
                    let near = self.window.map_or(true, |w| slot - j.min(slot) < w);
                    blocked.push(!(j <= slot && is_token && near));
                }
            }
        }
        // Rows that see no key are never scored: no gradient reaches them.
        for n in 0..self.rows {
            for i in 0..t {
                let blind = !(0..s).any(|j| !blocked[(n * t + i) * s + j]);
                if blind {
                    for head in 0..h {
                        let at = ((n * h + head) * t + i) * d;
                        g[at..at + d].iter_mut().for_each(|x| *x = 0.0);
                    }
                }
            }
        }
        Inputs { q, k, v, g, blocked }
    }
}

/// The f64 reference and its error bounds, laid out like the tensors.
struct Reference {
    out: Vec<f64>,
    out_bound: Vec<f64>,
    dq: Vec<f64>,
    dq_bound: Vec<f64>,
    dk: Vec<f64>,
    dk_bound: Vec<f64>,
    dv: Vec<f64>,
    dv_bound: Vec<f64>,
    /// Per output element: whether its row sees a key (only those are compared).
    out_visible: Vec<bool>,
}

// Index loops over several arrays at once read like the formulas.
#[allow(clippy::needless_range_loop)]
fn reference(c: &Case, x: &Inputs) -> Reference {
    let (h, kh, s, t, d, groups) = (c.heads(), c.kv_heads, c.s(), c.t, c.d, c.groups);
    let u = U_F32;
    let te = transcendental(u);
    let q_at = |n: usize, hd: usize, i: usize, e: usize| x.q[((n * h + hd) * t + i) * d + e] as f64;
    let g_at = |n: usize, hd: usize, i: usize, e: usize| x.g[((n * h + hd) * t + i) * d + e] as f64;
    let kv_index = |n: usize, kvh: usize, j: usize, e: usize| ((n * kh + kvh) * s + j) * d + e;
    let k_at = |n: usize, kvh: usize, j: usize, e: usize| x.k[kv_index(n, kvh, j, e)] as f64;
    let v_at = |n: usize, kvh: usize, j: usize, e: usize| x.v[kv_index(n, kvh, j, e)] as f64;
    let q_len = c.rows * h * t * d;
    let kv_len = c.rows * kh * s * d;
    let mut r = Reference {
        out: vec![0.0; q_len],
        out_bound: vec![0.0; q_len],
        dq: vec![0.0; q_len],
        dq_bound: vec![0.0; q_len],
        dk: vec![0.0; kv_len],
        dk_bound: vec![0.0; kv_len],
        dv: vec![0.0; kv_len],
        dv_bound: vec![0.0; kv_len],
        out_visible: vec![false; q_len],
    };
    // Sums that the dk / dv bounds need: Σ |dS q|, Σ p |g| per key element.
    let mut dk_abs = vec![0.0; kv_len];
    let mut dv_abs = vec![0.0; kv_len];
    for n in 0..c.rows {
        for hd in 0..h {
            let kvh = hd / groups;
            for i in 0..t {
                if !c.sees_something(&x.blocked, n, i) {
                    continue;
                }
                let visible: Vec<usize> = (0..s).filter(|&j| !c.blocked(&x.blocked, n, i, j)).collect();
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        c.scale
                            * (0..d)
                                .map(|e| q_at(n, hd, i, e) * k_at(n, kvh, j, e))
                                .sum::<f64>()
                    })
                    .collect();
                let score_err: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        gamma(d + 4, u)
                            * c.scale
                            * (0..d)
                                .map(|e| (q_at(n, hd, i, e) * k_at(n, kvh, j, e)).abs())
                                .sum::<f64>()
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                let p: Vec<f64> = scores.iter().map(|s| (s - m).exp() / z).collect();
                let nv = visible.len();
                let max_e = score_err.iter().copied().fold(0.0, f64::max);
                let spread = scores.iter().map(|s| (s - m).abs()).fold(0.0, f64::max);
                let rel = 2.0 * max_e
                    + 2.0 * u * spread
                    + 2.0 * te
                    + 2.0 * s as f64 * (te + 2.0 * u)
                    + gamma(s, u)
                    + 4.0 * u;
                let base = ((n * h + hd) * t + i) * d;
                let mut out_err = vec![0.0; d];
                for e in 0..d {
                    let o: f64 = visible
                        .iter()
                        .zip(&p)
                        .map(|(&j, pj)| pj * v_at(n, kvh, j, e))
                        .sum();
                    let abs: f64 = visible
                        .iter()
                        .zip(&p)
                        .map(|(&j, pj)| pj * v_at(n, kvh, j, e).abs())
                        .sum();
                    r.out[base + e] = o;
                    out_err[e] = SECOND_ORDER * (rel + gamma(s, u) + 2.0 * u) * abs;
                    r.out_bound[base + e] = out_err[e];
                    r.out_visible[base + e] = true;
                }
                // Backward.
                let dp: Vec<f64> = visible
                    .iter()
                    .map(|&j| (0..d).map(|e| g_at(n, hd, i, e) * v_at(n, kvh, j, e)).sum())
                    .collect();
                let a: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        gamma(d, u)
                            * (0..d)
                                .map(|e| (g_at(n, hd, i, e) * v_at(n, kvh, j, e)).abs())
                                .sum::<f64>()
                    })
                    .collect();
                let ci: f64 = p.iter().zip(&dp).map(|(pj, dpj)| pj * dpj).sum();
                let big_c: f64 = (0..nv).map(|x| p[x] * (rel * dp[x].abs() + a[x])).sum::<f64>()
                    + gamma(s, u) * (0..nv).map(|x| p[x] * dp[x].abs()).sum::<f64>()
                    + (0..d).map(|e| g_at(n, hd, i, e).abs() * out_err[e]).sum::<f64>()
                    + gamma(d, u)
                        * (0..d)
                            .map(|e| (g_at(n, hd, i, e) * r.out[base + e]).abs())
                            .sum::<f64>();
                let ds: Vec<f64> = (0..nv).map(|x| p[x] * (dp[x] - ci)).collect();
                let bds: Vec<f64> = (0..nv)
                    .map(|x| {
                        p[x] * (rel * (dp[x].abs() + ci.abs()) + a[x] + big_c + u * (dp[x].abs() + ci.abs()))
                            + u * ds[x].abs()
                    })
                    .collect();
                for e in 0..d {
                    let dq: f64 = (0..nv).map(|x| ds[x] * k_at(n, kvh, visible[x], e)).sum();
                    let err: f64 = (0..nv)
                        .map(|x| bds[x] * k_at(n, kvh, visible[x], e).abs())
                        .sum::<f64>()
                        + gamma(s + 2, u)
                            * (0..nv)
                                .map(|x| (ds[x] * k_at(n, kvh, visible[x], e)).abs())
                                .sum::<f64>();
                    r.dq[base + e] = c.scale * dq;
                    r.dq_bound[base + e] = SECOND_ORDER * c.scale * err;
                }
                for (x, &j) in visible.iter().enumerate() {
                    for e in 0..d {
                        let at = kv_index(n, kvh, j, e);
                        let qe = q_at(n, hd, i, e);
                        let ge = g_at(n, hd, i, e);
                        r.dk[at] += c.scale * ds[x] * qe;
                        r.dk_bound[at] += SECOND_ORDER * c.scale * bds[x] * qe.abs();
                        dk_abs[at] += c.scale * (ds[x] * qe).abs();
                        r.dv[at] += p[x] * ge;
                        r.dv_bound[at] += SECOND_ORDER * p[x] * rel * ge.abs();
                        dv_abs[at] += p[x] * ge.abs();
                    }
                }
            }
        }
    }
    for at in 0..kv_len {
        r.dk_bound[at] += SECOND_ORDER * gamma(t * groups + 2, u) * dk_abs[at];
        r.dv_bound[at] += SECOND_ORDER * gamma(t * groups + 1, u) * dv_abs[at];
    }
    r
}

/// Output and gradients of one kernel, as f64 vectors.
struct Run {
    out: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

fn run(c: &Case, x: &Inputs, kernel: AttentionKernel) -> Run {
    let (h, kh, s, t, d) = (
        c.heads() as i64,
        c.kv_heads as i64,
        c.s() as i64,
        c.t as i64,
        c.d as i64,
    );
    let n = c.rows as i64;
    let leaf = |values: &[f32], dims: [i64; 4]| Tensor::from_slice(values).view(dims).set_requires_grad(true);
    let q = leaf(&x.q, [n, h, t, d]);
    let k = leaf(&x.k, [n, kh, s, d]);
    let v = leaf(&x.v, [n, kh, s, d]);
    let blocked = Tensor::from_slice(&x.blocked).view([n, 1, t, s]);
    let g = Tensor::from_slice(&x.g).view([n, h, t, d]);
    let out = attend_with(kernel, &q, &k, &v, &blocked, c.scale, None).unwrap();
    (&out * &g).sum(Kind::Float).backward();
    let flat = |x: &Tensor| Vec::<f64>::try_from(x.to_kind(Kind::Double).flatten(0, -1)).unwrap();
    Run {
        out: flat(&out),
        dq: flat(&q.grad()),
        dk: flat(&k.grad()),
        dv: flat(&v.grad()),
    }
}

fn within(
    what: &str,
    got: &[f64],
    want: &[f64],
    bound: &[f64],
    factor: f64,
    mask: Option<&[bool]>,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len());
    for i in 0..got.len() {
        if mask.is_some_and(|m| !m[i]) {
            continue;
        }
        let diff = (got[i] - want[i]).abs();
        prop_assert!(
            diff <= factor * bound[i],
            "{} [{}]: {} vs {} (|diff| {:e} > bound {:e})",
            what,
            i,
            got[i],
            want[i],
            diff,
            factor * bound[i]
        );
    }
    Ok(())
}

fn check_case(c: &Case) -> Result<(), TestCaseError> {
    let x = c.inputs();
    let want = reference(c, &x);
    let fused = run(c, &x, AttentionKernel::Fused);
    let explicit = run(c, &x, AttentionKernel::Explicit);
    // No NaN anywhere on the fused path, also in the rows that see no key.
    for (name, values) in [
        ("out", &fused.out),
        ("dq", &fused.dq),
        ("dk", &fused.dk),
        ("dv", &fused.dv),
    ] {
        prop_assert!(values.iter().all(|v| v.is_finite()), "fused {} not finite", name);
    }
    let visible = Some(&want.out_visible[..]);
    for (name, path) in [("fused", &fused), ("explicit", &explicit)] {
        within(
            &format!("{name} out"),
            &path.out,
            &want.out,
            &want.out_bound,
            1.0,
            visible,
        )?;
        within(
            &format!("{name} dq"),
            &path.dq,
            &want.dq,
            &want.dq_bound,
            1.0,
            None,
        )?;
        within(
            &format!("{name} dk"),
            &path.dk,
            &want.dk,
            &want.dk_bound,
            1.0,
            None,
        )?;
        within(
            &format!("{name} dv"),
            &path.dv,
            &want.dv,
            &want.dv_bound,
            1.0,
            None,
        )?;
    }
    within(
        "fused vs explicit out",
        &fused.out,
        &explicit.out,
        &want.out_bound,
        2.0,
        visible,
    )?;
    within(
        "fused vs explicit dq",
        &fused.dq,
        &explicit.dq,
        &want.dq_bound,
        2.0,
        None,
    )?;
    within(
        "fused vs explicit dk",
        &fused.dk,
        &explicit.dk,
        &want.dk_bound,
        2.0,
        None,
    )?;
    within(
        "fused vs explicit dv",
        &fused.dv,
        &explicit.dv,
        &want.dv_bound,
        2.0,
        None,
    )?;
    Ok(())
}

proptest! {
    #![proptest_config(common::proptest_config(64))]

    /// Both kernels equal the f64 attention within the derived f32 bound, forward and gradients, and
    /// each other within twice it; the fused kernel is finite everywhere.
    #[test]
    fn kernels_match_f64_attention(case in case_strategy()) {
        check_case(&case)?;
    }
}

/// Left padding with a cache: the first query of the padded row sees no key at all.
#[test]
fn blind_padding_queries_stay_finite() {
    let case = Case {
        seed: 3,
        rows: 2,
        kv_heads: 1,
        groups: 4,
        t: 5,
        past: 2,
        d: 8,
        window: Some(2),
        keep: 0.5,
        scale: 0.25,
    };
    let x = case.inputs();
    assert!((0..case.rows).any(|n| (0..case.t).any(|i| !case.sees_something(&x.blocked, n, i))));
    check_case(&case).unwrap();
}

/// With a soft-cap the fused kernel runs the explicit path: bitwise the same output.
#[test]
fn soft_cap_uses_the_explicit_path() {
    tch::manual_seed(5);
    let q = Tensor::randn([2, 4, 3, 8], (Kind::Float, CPU));
    let k = Tensor::randn([2, 2, 5, 8], (Kind::Float, CPU));
    let v = Tensor::randn([2, 2, 5, 8], (Kind::Float, CPU));
    let blocked = Tensor::rand([2, 1, 3, 5], (Kind::Float, CPU)).lt(0.3);
    let fused = attend_with(AttentionKernel::Fused, &q, &k, &v, &blocked, 0.3, Some(2.0)).unwrap();
    let explicit = attend_with(AttentionKernel::Explicit, &q, &k, &v, &blocked, 0.3, Some(2.0)).unwrap();
    assert!(fused.equal(&explicit));
    assert_eq!(fused.size(), vec![2, 4, 3, 8]);
}

/// The thread's kernel: default fused, set and restored by `with_attention_kernel`.
#[test]
fn thread_kernel_is_scoped() {
    assert_eq!(attention_kernel(), AttentionKernel::Fused);
    let inner = with_attention_kernel(AttentionKernel::Explicit, attention_kernel);
    assert_eq!(inner, AttentionKernel::Explicit);
    assert_eq!(attention_kernel(), AttentionKernel::Fused);
    assert_eq!(
        set_attention_kernel(AttentionKernel::Explicit),
        AttentionKernel::Fused
    );
    // `attend` follows the thread's kernel: explicit is bitwise the explicit path.
    tch::manual_seed(6);
    let q = Tensor::randn([1, 2, 3, 4], (Kind::Float, CPU));
    let k = Tensor::randn([1, 1, 3, 4], (Kind::Float, CPU));
    let v = Tensor::randn([1, 1, 3, 4], (Kind::Float, CPU));
    let blocked = Tensor::ones([3, 3], (Kind::Bool, CPU)).triu(1).view([1, 1, 3, 3]);
    let by_thread = attend(&q, &k, &v, &blocked, 0.5, None).unwrap();
    let explicit = attend_with(AttentionKernel::Explicit, &q, &k, &v, &blocked, 0.5, None).unwrap();
    assert!(by_thread.equal(&explicit));
    set_attention_kernel(AttentionKernel::Fused);
}

fn shape_error_arg(result: tch_rpo::Result<Tensor>) -> &'static str {
    match result {
        Err(Error::Input(InputError::Shape { arg, .. })) => arg,
        Err(Error::Input(InputError::DType { arg, .. })) => arg,
        other => panic!("expected a shape or dtype error, got {other:?}"),
    }
}

#[test]
fn bad_inputs_are_errors() {
    let f = |dims: &[i64]| Tensor::zeros(dims, (Kind::Float, CPU));
    let mask = |dims: &[i64]| Tensor::zeros(dims, (Kind::Bool, CPU));
    let (q, k, v, m) = (
        f(&[1, 4, 3, 8]),
        f(&[1, 2, 5, 8]),
        f(&[1, 2, 5, 8]),
        mask(&[1, 1, 3, 5]),
    );
    assert!(attend(&q, &k, &v, &m, 1.0, None).is_ok());
    assert_eq!(
        shape_error_arg(attend(&f(&[4, 3, 8]), &k, &v, &m, 1.0, None)),
        "q"
    );
    // kv heads not dividing the query heads, head size, batch.
    assert_eq!(
        shape_error_arg(attend(&q, &f(&[1, 3, 5, 8]), &f(&[1, 3, 5, 8]), &m, 1.0, None)),
        "k"
    );
    assert_eq!(
        shape_error_arg(attend(&q, &f(&[1, 2, 5, 4]), &f(&[1, 2, 5, 4]), &m, 1.0, None)),
        "k"
    );
    assert_eq!(
        shape_error_arg(attend(&q, &f(&[2, 2, 5, 8]), &f(&[2, 2, 5, 8]), &m, 1.0, None)),
        "k"
    );
    assert_eq!(
        shape_error_arg(attend(&q, &k, &f(&[1, 2, 6, 8]), &m, 1.0, None)),
        "v"
    );
    assert_eq!(
        shape_error_arg(attend(&q, &k, &v, &mask(&[1, 1, 3, 4]), 1.0, None)),
        "blocked"
    );
    assert_eq!(
        shape_error_arg(attend(&q, &k, &v, &mask(&[1, 4, 3, 5]), 1.0, None)),
        "blocked"
    );
    assert_eq!(
        shape_error_arg(attend(&q, &k, &v, &f(&[1, 1, 3, 5]), 1.0, None)),
        "blocked"
    );
}
