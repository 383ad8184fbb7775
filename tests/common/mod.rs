//! Plain-Rust reference implementations of every formula the crate computes, plus small test helpers.
//!
//! Written from the formulas in `rpo-method.md` and the module docs of `src/loss/*.rs`, independently
//! of the tch code: per-row loops over slices, numerically stable scalar functions, generic over
//! [`num_traits::Float`] where that is natural. Nothing here calls into `tch_rpo`; the tch helpers at the
//! bottom only move data in and out of tensors.
#![allow(dead_code)]

use num_traits::Float;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};
use tch::{Device, Kind, Tensor};

pub mod tolerance;

// ---------------------------------------------------------------------------------------------------------
// Property-test configuration
// ---------------------------------------------------------------------------------------------------------

/// Environment variable that multiplies every property test's case count (default 1):
/// `TCH_RPO_PROPTEST_SCALE=50 cargo test --release` runs each block with 50× its cases. (Proptest's own
/// `PROPTEST_CASES` would give every block the same count, and `ProptestConfig::with_cases` ignores it.)
pub const PROPTEST_SCALE_VAR: &str = "TCH_RPO_PROPTEST_SCALE";

/// The configuration of a property-test block that runs `cases` cases (times [`PROPTEST_SCALE_VAR`]).
///
/// Failing seeds are kept in `tests/<test file>.proptest-regressions` (committed; replayed first by every
/// test of that file). These are integration tests, so proptest's default `SourceParallel` persistence finds
/// no `lib.rs`, warns on every run and falls back to the same file: `WithSource` names it directly.
pub fn proptest_config(cases: u32) -> ProptestConfig {
    let scale = match std::env::var(PROPTEST_SCALE_VAR) {
        Ok(s) => s
            .parse::<u32>()
            .unwrap_or_else(|_| panic!("{PROPTEST_SCALE_VAR}={s:?} is not a positive integer")),
        Err(_) => 1,
    };
    ProptestConfig {
        cases: cases * scale.max(1),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Scalar functions
// ---------------------------------------------------------------------------------------------------------

fn c<F: Float>(x: f64) -> F {
    F::from(x).expect("constant representable")
}

/// `softplus(x) = log(1 + e^x)`, stable for large |x|.
pub fn softplus<F: Float>(x: F) -> F {
    x.max(F::zero()) + (-x.abs()).exp().ln_1p()
}

/// `log σ(x) = −softplus(−x)`.
pub fn log_sigmoid<F: Float>(x: F) -> F {
    -softplus(-x)
}

/// `σ(x) = 1 / (1 + e^{−x})`.
pub fn sigmoid<F: Float>(x: F) -> F {
    if x >= F::zero() {
        F::one() / (F::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (F::one() + e)
    }
}

/// `log Σ_v e^{z_v}` with the max subtracted.
pub fn logsumexp<F: Float>(row: &[F]) -> F {
    let m = row.iter().copied().fold(F::neg_infinity(), F::max);
    let s = row.iter().fold(F::zero(), |acc, &z| acc + (z - m).exp());
    m + s.ln()
}

/// `softmax(z)_v`.
pub fn softmax<F: Float>(row: &[F]) -> Vec<F> {
    let lse = logsumexp(row);
    row.iter().map(|&z| (z - lse).exp()).collect()
}

// ---------------------------------------------------------------------------------------------------------
// Log-probs
// ---------------------------------------------------------------------------------------------------------

/// Reference per-token log-probs.
#[derive(Debug, Clone)]
pub struct RefTokens<F> {
    /// `[B, T']` row-major log-probs, 0 at ignored positions.
    pub logps: Vec<F>,
    /// `[B, T']` scored positions.
    pub mask: Vec<bool>,
    /// Batch size `B`.
    pub batch: usize,
    /// Positions per row `T'` (`T − 1` with shift).
    pub steps: usize,
}

/// `log p(y_{b,t}) = z_{b,t,y} − logsumexp_v z_{b,t,v}` for row-major logits `[B, T, V]` and labels `[B, T]`.
/// With `shift` the logits at `t` score the label at `t + 1` (`T − 1` positions). Labels equal to
/// `ignore_index` give 0 and mask `false`.
pub fn token_logprobs<F: Float>(
    logits: &[F],
    labels: &[i64],
    (b, t, v): (usize, usize, usize),
    ignore_index: i64,
    shift: bool,
) -> RefTokens<F> {
    assert_eq!(logits.len(), b * t * v);
    assert_eq!(labels.len(), b * t);
    let steps = if shift { t - 1 } else { t };
    let mut logps = vec![F::zero(); b * steps];
    let mut mask = vec![false; b * steps];
    for bi in 0..b {
        for ti in 0..steps {
            let label = labels[bi * t + ti + usize::from(shift)];
            if label == ignore_index {
                continue;
            }
            let row = &logits[(bi * t + ti) * v..(bi * t + ti + 1) * v];
            logps[bi * steps + ti] = row[label as usize] - logsumexp(row);
            mask[bi * steps + ti] = true;
        }
    }
    RefTokens {
        logps,
        mask,
        batch: b,
        steps,
    }
}

impl<F: Float> RefTokens<F> {
    /// Per-sequence sum of the scored log-probs.
    pub fn sums(&self) -> Vec<F> {
        (0..self.batch)
            .map(|bi| {
                self.logps[bi * self.steps..(bi + 1) * self.steps]
                    .iter()
                    .fold(F::zero(), |a, &x| a + x)
            })
            .collect()
    }
    /// Per-sequence number of scored positions.
    pub fn counts(&self) -> Vec<i64> {
        (0..self.batch)
            .map(|bi| {
                self.mask[bi * self.steps..(bi + 1) * self.steps]
                    .iter()
                    .filter(|&&m| m)
                    .count() as i64
            })
            .collect()
    }
    /// Per-sequence mean log-prob (`NaN` for a row without a scored token).
    pub fn means(&self) -> Vec<F> {
        self.sums()
            .iter()
            .zip(self.counts())
            .map(|(&s, n)| s / F::from(n).unwrap())
            .collect()
    }
}

/// Reference token statistics `[B, T']` (0 at ignored positions): mean logit `(1/V)·Σ_v z_v`, entropy
/// `−Σ_v p_v·log p_v`, and `1` where the arg-max logit (first on ties) is the label.
pub fn token_stats(
    logits: &[f64],
    labels: &[i64],
    (b, t, v): (usize, usize, usize),
    ignore_index: i64,
    shift: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let steps = if shift { t - 1 } else { t };
    let (mut mean, mut entropy, mut correct) =
        (vec![0.0; b * steps], vec![0.0; b * steps], vec![0.0; b * steps]);
    for bi in 0..b {
        for ti in 0..steps {
            let label = labels[bi * t + ti + usize::from(shift)];
            if label == ignore_index {
                continue;
            }
            let row = &logits[(bi * t + ti) * v..(bi * t + ti + 1) * v];
            let i = bi * steps + ti;
            mean[i] = row.iter().sum::<f64>() / v as f64;
            let lse = logsumexp(row);
            entropy[i] = -row.iter().map(|&z| (z - lse).exp() * (z - lse)).sum::<f64>();
            let mut best = 0;
            for (k, &z) in row.iter().enumerate() {
                if z > row[best] {
                    best = k;
                }
            }
            correct[i] = f64::from(u8::from(best as i64 == label));
        }
    }
    (mean, entropy, correct)
}

/// Analytic gradient of `Σ_{b,t'} w_{b,t'}·log p_{b,t'}` w.r.t. the logits `[B, T, V]`:
/// `w·(1[v = y] − softmax(z)_v)` at scored positions, 0 elsewhere (and at the last position with shift).
pub fn token_logprobs_grad(
    logits: &[f64],
    labels: &[i64],
    (b, t, v): (usize, usize, usize),
    ignore_index: i64,
    shift: bool,
    upstream: &[f64],
) -> Vec<f64> {
    let steps = if shift { t - 1 } else { t };
    assert_eq!(upstream.len(), b * steps);
    let mut grad = vec![0.0; b * t * v];
    for bi in 0..b {
        for ti in 0..steps {
            let label = labels[bi * t + ti + usize::from(shift)];
            if label == ignore_index {
                continue;
            }
            let w = upstream[bi * steps + ti];
            let off = (bi * t + ti) * v;
            let p = softmax(&logits[off..off + v]);
            for vi in 0..v {
                let onehot = if vi as i64 == label { 1.0 } else { 0.0 };
                grad[off + vi] = w * (onehot - p[vi]);
            }
        }
    }
    grad
}

// ---------------------------------------------------------------------------------------------------------
// DPO family
// ---------------------------------------------------------------------------------------------------------

/// Hyper-parameters of the reference DPO losses.
#[derive(Debug, Clone, Copy)]
pub struct DpoParams {
    pub beta: f64,
    pub label_smoothing: f64,
    pub ipo_length_normalized: bool,
    pub discopop_tau: f64,
    pub bco_delta: f64,
}

impl DpoParams {
    pub fn new(beta: f64) -> Self {
        Self {
            beta,
            label_smoothing: 0.0,
            ipo_length_normalized: true,
            discopop_tau: 0.05,
            bco_delta: 0.0,
        }
    }
}

/// The 13 variant names, as TRL spells its `loss_type`s (`cdpo` is the crate's name for a smoothed sigmoid).
pub const VARIANTS: [&str; 13] = [
    "sigmoid",
    "cdpo",
    "sigmoid_norm",
    "hinge",
    "ipo",
    "robust",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "apo_zero",
    "apo_down",
    "discopop",
];

/// Whether a variant reads the label smoothing ε (the others must get ε = 0).
pub fn uses_label_smoothing(variant: &str) -> bool {
    matches!(variant, "cdpo" | "robust" | "exo_pair")
}

/// Per-pair loss of one variant. `lc`, `lr`: log-ratios `log π_θ − log π_ref` of chosen / rejected (sums
/// over tokens), `nc`, `nr`: their token counts (length normalisation of `ipo` and `sigmoid_norm`).
/// `sigmoid` ignores ε (TRL 1.16); `exo_pair` needs ε > 0.
pub fn dpo_pair<F: Float>(variant: &str, p: &DpoParams, lc: F, lr: F, nc: i64, nr: i64) -> F {
    let beta: F = c(p.beta);
    let eps: F = c(p.label_smoothing);
    let one = F::one();
    let half: F = c(0.5);
    let delta = lc - lr;
    let z = beta * delta;
    match variant {
        "sigmoid" => -log_sigmoid(z),
        "cdpo" => -(one - eps) * log_sigmoid(z) - eps * log_sigmoid(-z),
        "sigmoid_norm" => {
            let m = lc / F::from(nc).unwrap() - lr / F::from(nr).unwrap();
            -log_sigmoid(beta * m)
        }
        "hinge" => (one - z).max(F::zero()),
        "ipo" => {
            let m = if p.ipo_length_normalized {
                lc / F::from(nc).unwrap() - lr / F::from(nr).unwrap()
            } else {
                delta
            };
            let d = m - one / (c::<F>(2.0) * beta);
            d * d
        }
        "robust" => (-(one - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (one - c::<F>(2.0) * eps),
        "exo_pair" => {
            assert!(p.label_smoothing > 0.0, "exo_pair needs ε > 0");
            sigmoid(z) * (log_sigmoid(z) - (one - eps).ln()) + sigmoid(-z) * (log_sigmoid(-z) - eps.ln())
        }
        "nca_pair" => {
            -log_sigmoid(beta * lc) - half * log_sigmoid(-beta * lc) - half * log_sigmoid(-beta * lr)
        }
        "bco_pair" => {
            let d: F = c(p.bco_delta);
            -log_sigmoid(beta * lc - d) - log_sigmoid(-(beta * lr - d))
        }
        "sppo_hard" => {
            let h = one / (c::<F>(2.0) * beta);
            (lc - h) * (lc - h) + (lr + h) * (lr + h)
        }
        "apo_zero" => one - sigmoid(beta * lc) + sigmoid(beta * lr),
        "apo_down" => sigmoid(beta * lc) + one - sigmoid(z),
        "discopop" => {
            let tau = c::<F>(p.discopop_tau);
            let m = sigmoid(z / tau);
            // m·e^{−z} = exp(log σ(z/τ) − z): no 0·∞ when e^{−z} overflows.
            (one - m) * (-log_sigmoid(z)) + (log_sigmoid(z / tau) - z).exp()
        }
        other => panic!("unknown variant {other}"),
    }
}

/// Per-sequence inputs of the reference losses (one entry per pair).
#[derive(Debug, Clone)]
pub struct Pairs {
    pub chosen: Vec<f64>,
    pub rejected: Vec<f64>,
    pub chosen_count: Vec<i64>,
    pub rejected_count: Vec<i64>,
    /// `Some((ref_chosen, ref_rejected))`, or `None` for reference-free.
    pub reference: Option<(Vec<f64>, Vec<f64>)>,
}

impl Pairs {
    pub fn len(&self) -> usize {
        self.chosen.len()
    }
    /// `(ℓ_c, ℓ_r)` per pair.
    pub fn log_ratios(&self) -> (Vec<f64>, Vec<f64>) {
        match &self.reference {
            None => (self.chosen.clone(), self.rejected.clone()),
            Some((rc, rr)) => (
                self.chosen.iter().zip(rc).map(|(a, b)| a - b).collect(),
                self.rejected.iter().zip(rr).map(|(a, b)| a - b).collect(),
            ),
        }
    }
    /// The pairs with chosen and rejected swapped.
    pub fn swapped(&self) -> Pairs {
        Pairs {
            chosen: self.rejected.clone(),
            rejected: self.chosen.clone(),
            chosen_count: self.rejected_count.clone(),
            rejected_count: self.chosen_count.clone(),
            reference: self.reference.clone().map(|(c, r)| (r, c)),
        }
    }
}

/// Weighted per-pair DPO loss `Σ_k w_k·loss_k`.
pub fn dpo_per_pair(p: &DpoParams, losses: &[(&str, f64)], pairs: &Pairs) -> Vec<f64> {
    let (lc, lr) = pairs.log_ratios();
    (0..pairs.len())
        .map(|i| {
            losses
                .iter()
                .map(|&(name, w)| {
                    w * dpo_pair(
                        name,
                        p,
                        lc[i],
                        lr[i],
                        pairs.chosen_count[i],
                        pairs.rejected_count[i],
                    )
                })
                .sum()
        })
        .collect()
}

/// Mean over pairs, or `Σ / global_pairs`.
pub fn reduce(per_pair: &[f64], global_pairs: Option<f64>) -> f64 {
    let s: f64 = per_pair.iter().sum();
    s / global_pairs.unwrap_or(per_pair.len() as f64)
}

/// The reduced DPO loss.
pub fn dpo_loss(p: &DpoParams, losses: &[(&str, f64)], pairs: &Pairs, global_pairs: Option<f64>) -> f64 {
    reduce(&dpo_per_pair(p, losses, pairs), global_pairs)
}

// ---------------------------------------------------------------------------------------------------------
// SFT and RPO
// ---------------------------------------------------------------------------------------------------------

/// SFT normalizations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Norm {
    SequenceSum,
    SequenceMean,
    TokenMean,
}

pub const NORMS: [Norm; 3] = [Norm::SequenceSum, Norm::SequenceMean, Norm::TokenMean];

/// Global totals `(pairs P, chosen tokens N)` of an accumulated step.
pub type Global = (f64, f64);

/// SFT loss on the chosen sums `s_i` and counts `n_i`:
/// sequence sum `−Σ s_i / B` (or `/P`), sequence mean `−Σ (s_i/n_i) / B` (or `/P`),
/// token mean `−Σ s_i / Σ n_i` (or `/N`).
pub fn sft_loss(norm: Norm, sums: &[f64], counts: &[i64], global: Option<Global>) -> f64 {
    let b = sums.len() as f64;
    let total: f64 = sums.iter().sum();
    match norm {
        Norm::SequenceSum => -total / global.map_or(b, |g| g.0),
        Norm::SequenceMean => {
            let means: f64 = sums.iter().zip(counts).map(|(s, &n)| s / n as f64).sum();
            -means / global.map_or(b, |g| g.0)
        }
        Norm::TokenMean => {
            let tokens: i64 = counts.iter().sum();
            -total / global.map_or(tokens as f64, |g| g.1)
        }
    }
}

/// Analytic gradient of [`sft_loss`] w.r.t. each chosen sum.
pub fn sft_grad(norm: Norm, counts: &[i64], global: Option<Global>) -> Vec<f64> {
    let b = counts.len() as f64;
    match norm {
        Norm::SequenceSum => vec![-1.0 / global.map_or(b, |g| g.0); counts.len()],
        Norm::SequenceMean => counts
            .iter()
            .map(|&n| -1.0 / (n as f64 * global.map_or(b, |g| g.0)))
            .collect(),
        Norm::TokenMean => {
            let tokens: i64 = counts.iter().sum();
            vec![-1.0 / global.map_or(tokens as f64, |g| g.1); counts.len()]
        }
    }
}

/// RPO = DPO + c·SFT.
pub fn rpo_loss(
    p: &DpoParams,
    losses: &[(&str, f64)],
    coefficient: f64,
    norm: Norm,
    pairs: &Pairs,
    global: Option<Global>,
) -> f64 {
    dpo_loss(p, losses, pairs, global.map(|g| g.0))
        + coefficient * sft_loss(norm, &pairs.chosen, &pairs.chosen_count, global)
}

/// Analytic gradient of cDPO (sigmoid DPO with label smoothing ε; ε = 0 is plain sigmoid), reduced by the mean (or `/P`), w.r.t.
/// `(chosen sums, rejected sums)`: `∂/∂s_c = β·[−(1−ε)·σ(−z) + ε·σ(z)] / B`, `∂/∂s_r = −∂/∂s_c`.
pub fn sigmoid_dpo_grad(p: &DpoParams, pairs: &Pairs, global_pairs: Option<f64>) -> (Vec<f64>, Vec<f64>) {
    let (lc, lr) = pairs.log_ratios();
    let n = global_pairs.unwrap_or(pairs.len() as f64);
    let eps = p.label_smoothing;
    let gc: Vec<f64> = lc
        .iter()
        .zip(&lr)
        .map(|(a, b)| {
            let z = p.beta * (a - b);
            p.beta * (-(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z)) / n
        })
        .collect();
    let gr = gc.iter().map(|g| -g).collect();
    (gc, gr)
}

/// Central finite-difference gradient of `f` at `x` with step `h`.
pub fn fd_grad(f: impl Fn(&[f64]) -> f64, x: &[f64], h: f64) -> Vec<f64> {
    let mut y = x.to_vec();
    (0..x.len())
        .map(|i| {
            y[i] = x[i] + h;
            let up = f(&y);
            y[i] = x[i] - h;
            let down = f(&y);
            y[i] = x[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------------------

/// `(rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/chosen, logps/rejected)`,
/// each the mean over pairs.
pub fn metrics(beta: f64, pairs: &Pairs) -> [(&'static str, f64); 6] {
    let (lc, lr) = pairs.log_ratios();
    let n = pairs.len() as f64;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n;
    let rc: Vec<f64> = lc.iter().map(|x| beta * x).collect();
    let rr: Vec<f64> = lr.iter().map(|x| beta * x).collect();
    let margins: Vec<f64> = rc.iter().zip(&rr).map(|(a, b)| a - b).collect();
    let acc = rc.iter().zip(&rr).filter(|(a, b)| a > b).count() as f64 / n;
    [
        ("rewards/chosen", mean(&rc)),
        ("rewards/rejected", mean(&rr)),
        ("rewards/margins", mean(&margins)),
        ("rewards/accuracies", acc),
        ("logps/chosen", mean(&pairs.chosen)),
        ("logps/rejected", mean(&pairs.rejected)),
    ]
}

// ---------------------------------------------------------------------------------------------------------
// Test data and tensor plumbing
// ---------------------------------------------------------------------------------------------------------

/// SplitMix64: a tiny deterministic generator for test data.
#[derive(Debug, Clone)]
pub struct DataRng(u64);

impl DataRng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Uniform integer in `[lo, hi)`.
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo) as u64) as i64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| scale * self.normal()).collect()
    }
}

/// Random labels `[B, T]`: ids in `[0, V)`, a fraction `p_ignore` of positions set to `ignore_index`, and
/// each row with probability `p_empty_row` entirely ignored.
pub fn random_labels(
    rng: &mut DataRng,
    (b, t, v): (usize, usize, usize),
    ignore_index: i64,
    p_ignore: f64,
    p_empty_row: f64,
) -> Vec<i64> {
    let mut labels = vec![0; b * t];
    for bi in 0..b {
        let empty = rng.uniform() < p_empty_row;
        for ti in 0..t {
            labels[bi * t + ti] = if empty || rng.uniform() < p_ignore {
                ignore_index
            } else {
                rng.int(0, v as i64)
            };
        }
    }
    labels
}

/// A CPU tensor of `kind` with the given shape, filled from f64 data.
pub fn tensor(data: &[f64], shape: &[i64], kind: Kind) -> Tensor {
    Tensor::from_slice(data).reshape(shape).to_kind(kind)
}

/// A CPU i64 tensor with the given shape.
pub fn int_tensor(data: &[i64], shape: &[i64]) -> Tensor {
    Tensor::from_slice(data).reshape(shape)
}

/// All values of `t`, flattened, as f64.
pub fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_device(Device::Cpu).to_kind(Kind::Double).reshape([-1])).expect("to vec")
}

/// All values of an integer tensor, flattened.
pub fn int_values(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(&t.to_device(Device::Cpu).to_kind(Kind::Int64).reshape([-1])).expect("to vec")
}

/// The f64 values a tensor of `kind` actually holds after rounding `data` to it.
pub fn rounded(data: &[f64], kind: Kind) -> Vec<f64> {
    values(&Tensor::from_slice(data).to_kind(kind))
}

/// Asserts `|a − b| ≤ abs + rel·|b|` element-wise, with a message naming the first failing index.
#[track_caller]
pub fn assert_close(got: &[f64], want: &[f64], abs: f64, rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= abs + rel * w.abs() || (g.is_nan() && w.is_nan());
        assert!(
            ok,
            "{what}[{i}]: got {g}, want {w} (|diff| {:e}, abs {abs:e}, rel {rel:e})",
            (g - w).abs()
        );
    }
}
