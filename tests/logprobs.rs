//! Log-prob gathering against the plain-Rust reference: values, masks, counts, chunking, dtypes, strides
//! and gradients (including the bf16/f16 surrogate used when the logits require grad).
//!
//! Tolerances are bounds derived from the arithmetic (`common::tolerance`, which gives each derivation),
//! evaluated per position on the logits the library holds:
//! - a log-prob in working precision `u` (f32 for f32 / bf16 / f16 logits, which are upcast per chunk; f64
//!   for f64): [`tolerance::logprob_error`], about `u·(V + |log p| + |lse| + …)`; the f64 reference adds
//!   the same bound at `u = 2^-53`;
//! - a per-sequence sum: the positions' bounds plus `γ(T−1)·Σ|log p|`; a mean: that over `n` plus `u·|mean|`;
//! - against the unrounded logits (bf16 / f16): `2·max|z − round(z)|` more (logsumexp is 1-Lipschitz in the
//!   max-norm, and so is the gathered logit);
//! - two library paths (chunk sizes, `log_softmax`, no-grad vs autograd kernels): twice the bound;
//! - gradients: [`tolerance::logprob_grad_errors`] (the surrogate's roundings to bf16 / f16 included);
//! - token statistics: [`tolerance::mean_logit_error`], [`tolerance::entropy_error`].

mod common;

use approx::assert_relative_eq;
use common::tolerance::{self, assert_within, unit_roundoff, U_F32, U_F64};
use common::*;
use proptest::prelude::*;
use tch::{Kind, Tensor};
use tch_rpo::{sequence_logprobs, token_logprobs, LogProbOptions, DEFAULT_CHUNK_BYTES};

/// One random log-prob problem.
#[derive(Debug, Clone)]
struct Case {
    b: usize,
    t: usize,
    v: usize,
    shift: bool,
    ignore_index: i64,
    chunk_bytes: usize,
    scale: f64,
    p_ignore: f64,
    seed: u64,
}

impl Case {
    fn dims(&self) -> (usize, usize, usize) {
        (self.b, self.t, self.v)
    }
    fn options(&self) -> LogProbOptions {
        LogProbOptions::default()
            .with_shift(self.shift)
            .with_ignore_index(self.ignore_index)
            .with_chunk_bytes(self.chunk_bytes)
    }
    fn data(&self) -> (Vec<f64>, Vec<i64>) {
        let mut rng = DataRng::new(self.seed);
        let logits = rng.normals(self.b * self.t * self.v, self.scale);
        let labels = random_labels(&mut rng, self.dims(), self.ignore_index, self.p_ignore, 0.2);
        (logits, labels)
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (1usize..=8, 1usize..=64, 2usize..=512, any::<bool>(), any::<u64>())
        .prop_flat_map(|(b, t, v, shift, seed)| {
            let t = if shift { t.max(2) } else { t };
            let ignore = prop_oneof![
                Just(-100i64),
                Just(-1i64),
                0..(v as i64),
                (v as i64)..(v as i64 + 10)
            ];
            // Small chunk sizes force many chunks (down to one row of V per chunk); large ones whole batches.
            let chunk = prop_oneof![
                Just(1usize),
                (1usize..=8).prop_map(move |rows| rows * v * 4),
                (1usize..=3).prop_map(move |seqs| seqs * t * v * 4 + 3),
                Just(DEFAULT_CHUNK_BYTES),
            ];
            let scale = prop_oneof![Just(0.5f64), Just(3.0), Just(10.0)];
            let p_ignore = prop_oneof![Just(0.0f64), Just(0.3), Just(0.9)];
            (Just((b, t, v, shift, seed)), ignore, chunk, scale, p_ignore)
        })
        .prop_map(
            |((b, t, v, shift, seed), ignore_index, chunk_bytes, scale, p_ignore)| Case {
                b,
                t,
                v,
                shift,
                ignore_index,
                chunk_bytes,
                scale,
                p_ignore,
                seed,
            },
        )
}

fn shape(c: &Case) -> [i64; 3] {
    [c.b as i64, c.t as i64, c.v as i64]
}

/// The working dtype of `kind` logits: f64 for f64, f32 otherwise (bf16 / f16 chunks are upcast).
fn work_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// Per-position bounds `[B, T']` of the library's log-probs (unit roundoff `u`) against the f64 reference
/// (its own bound at `2^-53` added), on the logits `held`.
fn logprob_bounds(c: &Case, held: &[f64], labels: &[i64], u: f64) -> Vec<f64> {
    let at = |u| tolerance::token_logprob_errors(held, labels, c.dims(), c.ignore_index, c.shift, u);
    at(u).iter().zip(at(U_F64)).map(|(a, b)| a + b).collect()
}

/// Bounds of the per-sequence sums of `logps` (`[B, T']`) carrying the errors `bounds`, at unit roundoff `u`
/// (the f64 reference's summation added).
fn sum_bounds(logps: &[f64], bounds: &[f64], steps: usize, u: f64) -> Vec<f64> {
    let zero = vec![0.0; bounds.len()];
    tolerance::row_sum_errors(logps, bounds, steps, u)
        .iter()
        .zip(tolerance::row_sum_errors(logps, &zero, steps, U_F64))
        .map(|(a, b)| a + b)
        .collect()
}

/// Compares the library's token and sequence log-probs for `kind` logits with the reference.
fn check_values(c: &Case, kind: Kind) {
    let (logits, labels) = c.data();
    let held = rounded(&logits, kind);
    let z = tensor(&held, &shape(c), kind);
    let y = int_tensor(&labels, &[c.b as i64, c.t as i64]);
    let out = token_logprobs(&z, &y, &c.options()).expect("token_logprobs");
    let want = token_logprobs_ref(&held, &labels, c);

    assert_eq!(out.logps.kind(), work_kind(kind));
    assert_eq!(out.logps.size(), [c.b as i64, want.steps as i64]);
    let mask: Vec<bool> = int_values(&out.mask).iter().map(|&m| m != 0).collect();
    assert_eq!(mask, want.mask, "mask");

    let u = unit_roundoff(work_kind(kind));
    let bounds = logprob_bounds(c, &held, &labels, u);
    assert_within(&values(&out.logps), &want.logps, &bounds, "token logps");

    let seq = sequence_logprobs(&z, &y, &c.options()).expect("sequence_logprobs");
    assert_eq!(int_values(&seq.count), want.counts(), "counts");
    let sum_bounds = sum_bounds(&want.logps, &bounds, want.steps, u);
    assert_within(&values(&seq.sum), &want.sums(), &sum_bounds, "sums");

    // Per-sequence mean, on rows that have a token (rows without one are an error, tested in errors.rs):
    // the sum's bound over n, plus the division's rounding (and the reference's).
    if want.counts().iter().all(|&n| n > 0) {
        let mean = seq.mean(true).expect("mean");
        let means = want.means();
        let mean_bounds: Vec<f64> = sum_bounds
            .iter()
            .zip(want.counts())
            .zip(&means)
            .map(|((e, n), m)| e / n as f64 + (u + U_F64) * m.abs())
            .collect();
        assert_within(&values(&mean), &means, &mean_bounds, "means");
    }

    if kind == Kind::BFloat16 || kind == Kind::Half {
        // Against the unrounded logits: the documented looser bound.
        let exact = token_logprobs_ref(&logits, &labels, c);
        let max_round = logits
            .iter()
            .zip(&held)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let loose: Vec<f64> = bounds
            .iter()
            .zip(&exact.mask)
            .map(|(e, &scored)| if scored { e + 2.0 * max_round } else { 0.0 })
            .collect();
        assert_within(&values(&out.logps), &exact.logps, &loose, "vs unrounded");
    }
}

fn token_logprobs_ref(logits: &[f64], labels: &[i64], c: &Case) -> RefTokens<f64> {
    common::token_logprobs(logits, labels, c.dims(), c.ignore_index, c.shift)
}

proptest! {
    #![proptest_config(common::proptest_config(48))]

    #[test]
    fn f32_matches_reference(c in case_strategy()) {
        check_values(&c, Kind::Float);
    }

    #[test]
    fn f64_matches_reference(c in case_strategy()) {
        check_values(&c, Kind::Double);
    }
}

proptest! {
    #![proptest_config(common::proptest_config(24))]

    #[test]
    fn bf16_matches_reference(c in case_strategy()) {
        check_values(&c, Kind::BFloat16);
    }

    #[test]
    fn f16_matches_reference(c in case_strategy()) {
        check_values(&c, Kind::Half);
    }

    /// Autograd gradient of `Σ w·log p` w.r.t. f64 logits equals `w·(onehot − softmax)`.
    #[test]
    fn f64_gradient_matches_analytic(c in case_strategy(), wseed in any::<u64>()) {
        check_gradient(&c, Kind::Double, wseed);
    }

    /// Same in f32.
    #[test]
    fn f32_gradient_matches_analytic(c in case_strategy(), wseed in any::<u64>()) {
        check_gradient(&c, Kind::Float, wseed);
    }

    /// The bf16 surrogate: its value is the f32-accurate log-prob and its gradient is
    /// `w·(onehot − softmax)` (held in bf16).
    #[test]
    fn bf16_surrogate_value_and_gradient(c in case_strategy(), wseed in any::<u64>()) {
        check_gradient(&c, Kind::BFloat16, wseed);
    }

    /// f16 takes the same surrogate path.
    #[test]
    fn f16_surrogate_value_and_gradient(c in case_strategy(), wseed in any::<u64>()) {
        check_gradient(&c, Kind::Half, wseed);
    }

    /// Chunked gathering equals `log_softmax` + `gather` for several chunk sizes (f32), and every chunk size
    /// passes through the same comparison.
    #[test]
    fn chunking_equals_log_softmax_gather(c in case_strategy()) {
        check_chunking(&c);
    }
}

/// The comparison of [`chunking_equals_log_softmax_gather`] for one case: two f32 implementations of the
/// log-prob, each within [`tolerance::logprob_error`] of the exact value, so within twice that of each other.
fn check_chunking(c: &Case) {
    let (logits, labels) = c.data();
    let held = rounded(&logits, Kind::Float);
    let z = tensor(&held, &shape(c), Kind::Float);
    let y = int_tensor(&labels, &[c.b as i64, c.t as i64]);
    let steps = if c.shift { c.t - 1 } else { c.t } as i64;
    let (zs, ys) = if c.shift {
        (z.narrow(1, 0, steps), y.narrow(1, 1, steps))
    } else {
        (z.shallow_clone(), y.shallow_clone())
    };
    let valid = ys.ne(c.ignore_index);
    let safe = ys.masked_fill(&valid.logical_not(), 0);
    let plain = zs
        .log_softmax(-1, Kind::Float)
        .gather(-1, &safe.unsqueeze(-1), false)
        .squeeze_dim(-1)
        .masked_fill(&valid.logical_not(), 0.0);
    let plain = values(&plain);
    let bounds: Vec<f64> =
        tolerance::token_logprob_errors(&held, &labels, c.dims(), c.ignore_index, c.shift, U_F32)
            .iter()
            .map(|e| 2.0 * e)
            .collect();
    let options = c.options().with_chunk_bytes(DEFAULT_CHUNK_BYTES);
    let default = values(&token_logprobs(&z, &y, &options).unwrap().logps);
    let v = c.v;
    for chunk_bytes in [
        1,
        4 * v,
        4 * v * 3 + 1,
        4 * v * c.t,
        4 * v * c.t * 2 + 5,
        DEFAULT_CHUNK_BYTES,
    ] {
        let opts = c.options().with_chunk_bytes(chunk_bytes);
        let got = values(&token_logprobs(&z, &y, &opts).unwrap().logps);
        assert_within(
            &got,
            &plain,
            &bounds,
            &format!("chunk_bytes {chunk_bytes} vs log_softmax"),
        );
        assert_within(
            &got,
            &default,
            &bounds,
            &format!("chunk_bytes {chunk_bytes} vs default"),
        );
    }
}

fn check_gradient(c: &Case, kind: Kind, wseed: u64) {
    let (logits, labels) = c.data();
    let held = rounded(&logits, kind);
    let z = tensor(&held, &shape(c), kind).set_requires_grad(true);
    let y = int_tensor(&labels, &[c.b as i64, c.t as i64]);
    let out = token_logprobs(&z, &y, &c.options()).expect("token_logprobs");
    let steps = if c.shift { c.t - 1 } else { c.t };
    let mut rng = DataRng::new(wseed);
    // The upstream weights as the library holds them (in the log-probs' dtype).
    let w = rounded(
        &(0..c.b * steps).map(|_| rng.range(-1.5, 1.5)).collect::<Vec<_>>(),
        work_kind(kind),
    );

    // Value (the surrogate must not change it).
    let want = token_logprobs_ref(&held, &labels, c);
    let u = unit_roundoff(work_kind(kind));
    let bounds = logprob_bounds(c, &held, &labels, u);
    assert_within(&values(&out.logps), &want.logps, &bounds, "value under autograd");

    let weights = tensor(&w, &[c.b as i64, steps as i64], out.logps.kind());
    let objective = (&out.logps * weights).sum(out.logps.kind());
    let grad = Tensor::run_backward(&[&objective], &[&z], false, false)
        .pop()
        .unwrap();
    assert_eq!(grad.kind(), kind, "gradient dtype");
    let want_grad = token_logprobs_grad(&held, &labels, c.dims(), c.ignore_index, c.shift, &w);
    let grad_bounds = |u: f64, store: Kind| {
        tolerance::token_logprob_grad_errors(
            &held,
            &labels,
            c.dims(),
            c.ignore_index,
            c.shift,
            &w,
            (u, store),
        )
    };
    let bounds: Vec<f64> = grad_bounds(u, kind)
        .iter()
        .zip(grad_bounds(U_F64, Kind::Double))
        .map(|(a, b)| a + b)
        .collect();
    assert_within(&values(&grad), &want_grad, &bounds, "gradient");
}

/// Regression cases that failed a correct implementation under the former fixed tolerances.
mod regressions {
    use super::*;

    /// `chunking_equals_log_softmax_gather` with the former bound `1e-6·max(1, |logsumexp|)`: at position 49
    /// the chunked log-prob is −19.910547 and `log_softmax` gives −19.910545, one f32 ulp (1.9e-6) apart,
    /// against a bound of 1.36e-6 (the logsumexp of the row is 1.36 while the log-prob is −19.9).
    #[test]
    fn chunking_one_ulp_at_a_large_logprob() {
        check_chunking(&Case {
            b: 1,
            t: 64,
            v: 3,
            shift: false,
            ignore_index: -100,
            chunk_bytes: 1,
            scale: 10.0,
            p_ignore: 0.0,
            seed: 8,
        });
    }

    /// `bf16_surrogate_value_and_gradient` with the former absolute 1e-2: element 934 of the gradient is
    /// 1.328125 against 1.33840 (1.3 bf16 ulps: `w` and the sum of the two branches each round to bf16).
    #[test]
    fn bf16_gradient_rounds_twice() {
        let c = Case {
            b: 8,
            t: 64,
            v: 2,
            shift: false,
            ignore_index: -100,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            scale: 3.0,
            p_ignore: 0.0,
            seed: 146,
        };
        check_gradient(&c, Kind::BFloat16, 1022);
    }
}

/// Logits that are a non-contiguous view (transposed storage, sliced vocabulary) give the same result as
/// a contiguous copy, and match the reference.
#[test]
fn non_contiguous_logits() {
    let (b, t, v) = (3usize, 7usize, 40usize);
    let mut rng = DataRng::new(11);
    let logits = rng.normals(b * t * v, 2.0);
    let labels = random_labels(&mut rng, (b, t, v), -100, 0.2, 0.0);
    let held = rounded(&logits, Kind::Float);
    // Storage [T, B, V+5], transposed to [B, T, V+5] and narrowed to V.
    let base = Tensor::randn(
        [t as i64, b as i64, v as i64 + 5],
        (Kind::Float, tch::Device::Cpu),
    );
    let mut view = base.transpose(0, 1).narrow(2, 0, v as i64);
    tch::no_grad(|| view.copy_(&tensor(&logits, &[b as i64, t as i64, v as i64], Kind::Float)));
    assert!(!view.is_contiguous());
    let y = int_tensor(&labels, &[b as i64, t as i64]);
    for chunk in [1, 4 * v * 2, DEFAULT_CHUNK_BYTES] {
        for shift in [false, true] {
            let opts = LogProbOptions::default()
                .with_chunk_bytes(chunk)
                .with_shift(shift);
            let got = token_logprobs(&view, &y, &opts).unwrap();
            let want = common::token_logprobs(&held, &labels, (b, t, v), -100, shift);
            let bounds = tolerance::token_logprob_errors(&held, &labels, (b, t, v), -100, shift, U_F32);
            assert_within(&values(&got.logps), &want.logps, &bounds, "non-contiguous");
        }
    }
}

/// A worked example small enough to check by hand: uniform logits give `−ln V` per scored token.
#[test]
fn uniform_logits_give_minus_ln_v() {
    let (b, t, v) = (2i64, 5i64, 8i64);
    let z = Tensor::zeros([b, t, v], (Kind::Float, tch::Device::Cpu));
    let y = int_tensor(&[1, 2, -100, 3, 4, -100, -100, -100, 7, 0], &[b, t]);
    let seq = sequence_logprobs(&z, &y, &LogProbOptions::default()).unwrap();
    assert_eq!(int_values(&seq.count), vec![4, 2]);
    let sums = values(&seq.sum);
    assert_relative_eq!(sums[0], -4.0 * (8f64).ln(), max_relative = 1e-6);
    assert_relative_eq!(sums[1], -2.0 * (8f64).ln(), max_relative = 1e-6);
    // With the causal shift, row 0 scores labels 2, 3, 4 (position 0 is dropped).
    let seq = sequence_logprobs(&z, &y, &LogProbOptions::causal()).unwrap();
    assert_eq!(int_values(&seq.count), vec![3, 2]);
}

/// A row whose labels are all ignored has sum 0, count 0, and a zero gradient.
#[test]
fn fully_ignored_row() {
    let z = Tensor::randn([2, 4, 6], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
    let y = int_tensor(&[-100, -100, -100, -100, 1, 2, 3, 4], &[2, 4]);
    let seq = sequence_logprobs(&z, &y, &LogProbOptions::default()).unwrap();
    assert_eq!(values(&seq.sum)[0], 0.0);
    assert_eq!(int_values(&seq.count), vec![0, 4]);
    seq.sum.sum(Kind::Double).backward();
    let g = values(&z.grad().narrow(0, 0, 1));
    assert!(g.iter().all(|&x| x == 0.0));
}

proptest! {
    #![proptest_config(common::proptest_config(32))]
    /// Logits without autograd take the scratch-buffer kernel; logits that require grad take the autograd
    /// kernels (views for f32/f64, the surrogate for bf16/f16). Both must give the same values.
    #[test]
    fn no_grad_and_autograd_kernels_agree(c in case_strategy(), kind_ix in 0usize..4) {
        let kind = [Kind::Float, Kind::Double, Kind::BFloat16, Kind::Half][kind_ix];
        let (logits, labels) = c.data();
        let z = tensor(&rounded(&logits, kind), &shape(&c), kind);
        let y = int_tensor(&labels, &[c.b as i64, c.t as i64]);
        let plain = token_logprobs(&z, &y, &c.options()).expect("no-grad kernel");
        let z_grad = z.detach().set_requires_grad(true);
        let tracked = token_logprobs(&z_grad, &y, &c.options()).expect("autograd kernel");
        prop_assert!(tracked.logps.requires_grad());
        prop_assert!(!plain.logps.requires_grad());
        // Two implementations, each within the log-prob bound of the exact value.
        let held = rounded(&logits, kind);
        let u = unit_roundoff(work_kind(kind));
        let bounds: Vec<f64> = tolerance::token_logprob_errors(&held, &labels, c.dims(), c.ignore_index, c.shift, u)
            .iter()
            .map(|e| 2.0 * e)
            .collect();
        assert_within(&values(&plain.logps), &values(&tracked.logps.detach()), &bounds, "no-grad vs autograd");
    }
}

/// Token statistics (`LogProbOptions::token_stats`) against the reference: per token and per sequence, for
/// f64 / f32 / bf16 logits, with and without autograd, contiguous or not. Ignored positions hold 0.
fn check_stats(c: &Case, kind: Kind, requires_grad: bool, strided: bool) {
    let (logits, labels) = c.data();
    let held = rounded(&logits, kind);
    let z = if strided {
        // Storage [T, B, V], transposed: the same values through a non-contiguous view.
        tensor(&held, &shape(c), kind)
            .transpose(0, 1)
            .contiguous()
            .transpose(0, 1)
    } else {
        tensor(&held, &shape(c), kind)
    };
    let z = z.set_requires_grad(requires_grad);
    let y = int_tensor(&labels, &[c.b as i64, c.t as i64]);
    let options = c.options().with_token_stats(true);
    let out = token_logprobs(&z, &y, &options).expect("token_logprobs");
    let stats = out.stats.as_ref().expect("stats requested");
    let (mean, entropy, correct) = common::token_stats(&held, &labels, c.dims(), c.ignore_index, c.shift);
    // Per-position bounds of the library (working precision) plus the f64 reference's own.
    let u = unit_roundoff(work_kind(kind));
    let steps = if c.shift { c.t - 1 } else { c.t };
    let per_position = |f: fn(&[f64], f64) -> f64| -> Vec<f64> {
        let mut out = vec![0.0; c.b * steps];
        for bi in 0..c.b {
            for ti in 0..steps {
                if labels[bi * c.t + ti + usize::from(c.shift)] == c.ignore_index {
                    continue;
                }
                let off = (bi * c.t + ti) * c.v;
                let row = &held[off..off + c.v];
                out[bi * steps + ti] = f(row, u) + f(row, U_F64);
            }
        }
        out
    };
    let mean_bounds = per_position(tolerance::mean_logit_error);
    let entropy_bounds = per_position(tolerance::entropy_error);
    assert!(!stats.mean_logit.requires_grad());
    assert_within(&values(&stats.mean_logit), &mean, &mean_bounds, "mean logit");
    assert_within(&values(&stats.entropy), &entropy, &entropy_bounds, "entropy");
    assert_eq!(values(&stats.correct), correct, "arg-max accuracy");

    let seq = out.sequence().expect("sequence");
    let seq_stats = seq.stats.expect("sequence stats");
    let row_sums = |v: &[f64]| -> Vec<f64> { v.chunks(steps).map(|r| r.iter().sum()).collect() };
    assert_within(
        &values(&seq_stats.mean_logit),
        &row_sums(&mean),
        &sum_bounds(&mean, &mean_bounds, steps, u),
        "row mean-logit sums",
    );
    assert_within(
        &values(&seq_stats.entropy),
        &row_sums(&entropy),
        &sum_bounds(&entropy, &entropy_bounds, steps, u),
        "row entropy sums",
    );
    assert_close(
        &values(&seq_stats.correct),
        &row_sums(&correct),
        0.0,
        0.0,
        "row correct counts",
    );
    // Without the option there are none, and the log-probs are the same either way.
    let plain = token_logprobs(&z, &y, &c.options()).expect("token_logprobs");
    assert!(plain.stats.is_none());
    assert_eq!(values(&plain.logps), values(&out.logps));
}

proptest! {
    #![proptest_config(common::proptest_config(24))]

    #[test]
    fn token_stats_match_reference(c in case_strategy(), kind_ix in 0usize..3, requires_grad in any::<bool>(), strided in any::<bool>()) {
        check_stats(&c, [Kind::Double, Kind::Float, Kind::BFloat16][kind_ix], requires_grad, strided);
    }
}
