//! `tch_rpo::autograd::embedding`, the token embedding as one autograd node: its rows equal
//! `Tensor::embedding`'s bit for bit; its weight gradient equals an f64 plain-Rust sum of the incoming rows
//! per token within the rounding of the summation (with and without a `.grad` already there, which it adds
//! into in place: same storage), for f32, bf16 and f64 weights, leaf or not; bad inputs are typed errors.

mod common;

use proptest::prelude::*;
use tch::{Device, Kind, Tensor};
use tch_rpo::autograd::embedding;
use tch_rpo::{Error, InputError};

const CPU: Device = Device::Cpu;

fn values(t: &Tensor) -> Vec<f64> {
    Vec::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

/// Unit roundoff of a float dtype.
fn unit(kind: Kind) -> f64 {
    match kind {
        Kind::Float => 2f64.powi(-24),
        Kind::BFloat16 => 2f64.powi(-8),
        _ => 2f64.powi(-53),
    }
}

/// One case: `ids [n, t]` into a `[v, h]` weight of `kind` (a leaf, or the leaf times 3), the gradient
/// reaching the rows `gy [n, t, h]` (random from `seed`), and an optional `.grad` present before the
/// backward.
#[derive(Clone, Copy)]
struct Case {
    v: i64,
    h: i64,
    n: i64,
    kind: Kind,
    prefill: bool,
    leaf: bool,
    seed: i64,
}

fn check(case: Case, ids: &[i64]) {
    let Case {
        v,
        h,
        n,
        kind,
        prefill,
        leaf,
        seed,
    } = case;
    tch::manual_seed(seed);
    let base = Tensor::randn([v, h], (Kind::Float, CPU))
        .to_kind(kind)
        .set_requires_grad(true);
    let ids_t = Tensor::from_slice(ids).reshape([n, -1]);
    let gy = Tensor::randn([ids.len() as i64, h], (Kind::Float, CPU)).to_kind(kind);
    let before: Option<Tensor> = prefill.then(|| {
        // A first backward leaves `.grad` = c, as a tied head's gradient would be there first.
        let c = Tensor::randn([v, h], (Kind::Float, CPU)).to_kind(kind);
        (&base * &c).sum(kind).backward();
        c
    });
    let ptr_before = prefill.then(|| base.grad().data_ptr());
    // Leaf: the weight itself; otherwise the weight times 3 (the gradient then reaches the leaf through the
    // product, via autograd's accumulation).
    let weight = if leaf { base.shallow_clone() } else { &base * 3.0 };
    let rows = embedding(&weight, &ids_t).unwrap();
    // Forward: the rows, bit for bit.
    let expected_rows = Tensor::embedding(&weight.detach(), &ids_t, -1, false, false);
    assert!(rows.equal(&expected_rows), "rows differ");
    assert_eq!(rows.size(), vec![n, ids.len() as i64 / n, h]);
    (&rows * gy.reshape([n, -1, h])).sum(kind).backward();
    let grad = base.grad();
    if let Some(ptr) = ptr_before {
        assert_eq!(
            grad.data_ptr(),
            ptr,
            "the existing .grad was replaced, not added into"
        );
    }
    // Reference in f64: row w of the weight's gradient = Σ gy[p] over positions p holding w (times 3 when
    // not a leaf), plus the prefilled gradient.
    let (gyv, got) = (values(&gy), values(&grad));
    let pre = before.as_ref().map(values);
    let u = unit(kind);
    let (hu, vu) = (h as usize, v as usize);
    for w in 0..vu {
        let holding: Vec<usize> = (0..ids.len()).filter(|&p| ids[p] as usize == w).collect();
        for j in 0..hu {
            let terms: Vec<f64> = holding.iter().map(|&p| gyv[p * hu + j]).collect();
            let sum: f64 = terms.iter().sum();
            let abs: f64 = terms.iter().map(|t| t.abs()).sum();
            let p0 = pre.as_ref().map_or(0.0, |p| p[w * hu + j]);
            let scale = if leaf { 1.0 } else { 3.0 };
            let reference = p0 + scale * sum;
            // k = number of roundings of the sum (terms and the prefill), each ≤ u of a partial sum, and one
            // of the product by 3 per term; γ_k bound on |p0| + scale · Σ|terms|.
            let k = (terms.len() + 2) as f64;
            let bound = (k * u / (1.0 - k * u)) * (p0.abs() + scale * abs) * 1.0001 + f64::MIN_POSITIVE;
            let g = got[w * hu + j];
            assert!(
                (g - reference).abs() <= bound,
                "{kind:?} prefill={prefill} leaf={leaf}: grad[{w}, {j}] = {g}, reference {reference}, bound {bound}"
            );
        }
    }
}

#[test]
fn gradient_is_the_row_sum_per_token_with_and_without_a_grad_there() {
    let ids = [3i64, 0, 3, 5, 1, 3, 0, 7];
    for kind in [Kind::Float, Kind::BFloat16, Kind::Double] {
        for prefill in [false, true] {
            for leaf in [true, false] {
                let case = Case {
                    v: 9,
                    h: 5,
                    n: 2,
                    kind,
                    prefill,
                    leaf,
                    seed: 7,
                };
                check(case, &ids);
            }
        }
    }
}

#[test]
fn a_tied_head_gradient_stays_and_the_embedding_rows_add_to_it() {
    // The same weight as embedding and head: the loss's gradient equals libtorch's own autograd through
    // `Tensor::embedding` (f64, where both sums are exact up to a few ulps).
    tch::manual_seed(3);
    let (v, h) = (11, 4);
    let ids = Tensor::from_slice(&[1i64, 4, 4, 9, 0, 1]).reshape([2, 3]);
    let target = Tensor::randn([2, 3, v], (Kind::Double, CPU));
    let run = |ours: bool| -> Tensor {
        let w = Tensor::randn([v, h], (Kind::Double, CPU));
        let w = w.set_requires_grad(true);
        let rows = match ours {
            true => embedding(&w, &ids).unwrap(),
            false => Tensor::embedding(&w, &ids, -1, false, false),
        };
        let logits = rows.matmul(&w.tr());
        (logits * &target).sum(Kind::Double).backward();
        w.grad()
    };
    tch::manual_seed(5);
    let ours = run(true);
    tch::manual_seed(5);
    let theirs = run(false);
    let (a, b) = (values(&ours), values(&theirs));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-12 * (1.0 + y.abs()), "{x} vs {y}");
    }
}

#[test]
fn a_frozen_weight_gets_no_gradient_and_no_grad_mode_saves_nothing() {
    let w = Tensor::randn([5, 3], (Kind::Float, CPU));
    let ids = Tensor::from_slice(&[0i64, 4]);
    let rows = embedding(&w, &ids).unwrap();
    assert!(!rows.requires_grad());
    let w = w.set_requires_grad(true);
    let rows = tch::no_grad(|| embedding(&w, &ids).unwrap());
    assert!(!rows.requires_grad());
}

#[test]
fn bad_inputs_are_typed_errors() {
    let w = Tensor::randn([5, 3], (Kind::Float, CPU));
    let out_of_range = |ids: &[i64]| embedding(&w, &Tensor::from_slice(ids));
    for ids in [&[0i64, 5][..], &[-1, 2][..]] {
        match out_of_range(ids) {
            Err(Error::Input(InputError::TokenOutOfRange {
                arg: "ids", vocab: 5, ..
            })) => {}
            other => panic!("{ids:?}: {other:?}"),
        }
    }
    match embedding(&w, &Tensor::from_slice(&[0.0f32])) {
        Err(Error::Input(InputError::DType { arg: "ids", .. })) => {}
        other => panic!("{other:?}"),
    }
    match embedding(&Tensor::from_slice(&[1i64, 2]), &Tensor::from_slice(&[0i64])) {
        Err(Error::Input(InputError::DType { arg: "weight", .. })) => {}
        other => panic!("{other:?}"),
    }
    match embedding(
        &Tensor::randn([5], (Kind::Float, CPU)),
        &Tensor::from_slice(&[0i64]),
    ) {
        Err(Error::Input(InputError::Shape { arg: "weight", .. })) => {}
        other => panic!("{other:?}"),
    }
    // No ids: an empty result.
    let empty = embedding(&w, &Tensor::zeros([0], (Kind::Int64, CPU))).unwrap();
    assert_eq!(empty.size(), vec![0, 3]);
}

proptest! {
    #![proptest_config(common::proptest_config(24))]

    #[test]
    fn gradient_matches_the_f64_row_sums(
        v in 1i64..40,
        h in 1i64..12,
        n in 1i64..4,
        t in 1i64..9,
        kind in prop_oneof![Just(Kind::Float), Just(Kind::BFloat16), Just(Kind::Double)],
        prefill in any::<bool>(),
        leaf in any::<bool>(),
        seed in 0i64..1000,
        raw in proptest::collection::vec(0u32..1000, 32),
    ) {
        let ids: Vec<i64> = (0..(n * t) as usize).map(|i| i64::from(raw[i % 32]) % v).collect();
        check(Case { v, h, n, kind, prefill, leaf, seed }, &ids);
    }
}

#[test]
fn rows_are_added_into_the_existing_grad_one_at_a_time() {
    // Observable only through rounding: with `.grad` = 1 and two rows of 2⁻²⁴ for the same token, adding
    // them in turn into `.grad` gives (1 + 2⁻²⁴) + 2⁻²⁴ = 1 (each a tie, rounded to even), while a dense
    // gradient added afterwards (autograd's embedding backward) gives 1 + (2⁻²⁴ + 2⁻²⁴) = 1 + 2⁻²³.
    let w = Tensor::zeros([3, 2], (Kind::Float, CPU)).set_requires_grad(true);
    w.sum(Kind::Float).backward(); // .grad = 1
    let ids = Tensor::from_slice(&[2i64, 2]);
    let tiny = 2f64.powi(-24);
    let gy = Tensor::full([2, 2], tiny, (Kind::Float, CPU));
    (embedding(&w, &ids).unwrap() * &gy).sum(Kind::Float).backward();
    assert_eq!(values(&w.grad()), vec![1.0; 6]);
    // The same through libtorch's embedding: the dense path.
    let w2 = Tensor::zeros([3, 2], (Kind::Float, CPU)).set_requires_grad(true);
    w2.sum(Kind::Float).backward();
    (Tensor::embedding(&w2, &ids, -1, false, false) * &gy)
        .sum(Kind::Float)
        .backward();
    assert_eq!(values(&w2.grad())[4], 1.0 + 2f64.powi(-23));
}
