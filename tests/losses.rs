//! DPO variants, SFT normalizations, RPO and metrics against the plain-Rust reference: values, gradients
//! (autograd vs analytic / central finite differences of the reference, f64), and invariants.
//!
//! Tolerances: f64 1e-9 relative (+1e-10 absolute); f32 inputs are rounded to f32 first and the reference is
//! evaluated on the rounded values, so only f32 arithmetic separates the two: 1e-5 relative + 1e-4 absolute.
//! Gradients vs central differences (h = 1e-5 on sums of magnitude ≤ 200): 1e-6 relative + 1e-7 absolute.

mod common;

use approx::assert_relative_eq;
use common::tolerance::{self, assert_within, U_F64};
use common::*;
use proptest::prelude::*;
use tch::{Kind, Tensor};
use tch_rpo::{
    compute_loss, count_tokens, sequence_logprobs, DpoConfig, DpoLoss, GlobalBatch, LogProbOptions,
    LossBatch, Reference, RpoConfig, SequenceLogProbs, SftConfig, SftNormalization, SftWeight, PAPER_ETA,
};

fn lib_norm(n: Norm) -> SftNormalization {
    match n {
        Norm::SequenceSum => SftNormalization::SequenceSum,
        Norm::SequenceMean => SftNormalization::SequenceMean,
        Norm::TokenMean => SftNormalization::TokenMean,
    }
}

/// The library variant with the given TRL name (`names_match_trl` checks `name()` itself).
fn lib_variant(name: &str) -> DpoLoss {
    *DpoLoss::ALL.iter().find(|l| l.name() == name).expect("variant")
}

/// A random loss configuration, held as reference parameters.
#[derive(Debug, Clone)]
struct Setup {
    params: DpoParams,
    losses: Vec<(&'static str, f64)>,
    reference_free: bool,
    /// `Some((extra pairs, extra tokens))` added on top of this batch's totals to form a global batch.
    global_extra: Option<(f64, f64)>,
}

impl Setup {
    fn config(&self) -> DpoConfig {
        DpoConfig {
            beta: self.params.beta,
            label_smoothing: self.params.label_smoothing,
            losses: self.losses.iter().map(|&(n, w)| (lib_variant(n), w)).collect(),
            ipo_length_normalized: self.params.ipo_length_normalized,
            discopop_tau: self.params.discopop_tau,
            bco_delta: self.params.bco_delta,
        }
    }
    fn global(&self, pairs: &Pairs) -> Option<Global> {
        self.global_extra.map(|(p, n)| {
            (
                pairs.len() as f64 + p,
                pairs.chosen_count.iter().sum::<i64>() as f64 + n,
            )
        })
    }
}

fn setup_strategy() -> impl Strategy<Value = Setup> {
    let beta = prop_oneof![Just(0.01), Just(0.05), Just(0.1), 0.01f64..1.0];
    let eps = prop_oneof![Just(0.0), Just(0.1), 0.0f64..0.45];
    let variants = prop::collection::vec(
        (0usize..VARIANTS.len(), prop_oneof![Just(1.0), -1.0f64..2.0]),
        1..=3,
    );
    let tau = prop_oneof![Just(0.05), 0.01f64..1.0];
    let delta = prop_oneof![Just(0.0), -0.5f64..0.5];
    let global = prop::option::of((0.0f64..10.0, 0.0f64..100.0));
    (
        beta,
        eps,
        variants,
        any::<bool>(),
        tau,
        delta,
        any::<bool>(),
        global,
    )
        .prop_map(|(beta, eps, variants, ipo_norm, tau, delta, free, global)| {
            let mut losses: Vec<(&'static str, f64)> =
                variants.into_iter().map(|(k, w)| (VARIANTS[k], w)).collect();
            // A valid configuration: cdpo / exo_pair need ε > 0, sigmoid refuses it, and ε > 0 needs a reader.
            let needs_eps = losses.iter().any(|(n, _)| matches!(*n, "cdpo" | "exo_pair"));
            if needs_eps {
                for l in &mut losses {
                    if l.0 == "sigmoid" {
                        l.0 = "sigmoid_norm";
                    }
                }
            }
            let reads_eps = losses.iter().any(|(n, _)| uses_label_smoothing(n));
            let has_sigmoid = losses.iter().any(|(n, _)| *n == "sigmoid");
            let label_smoothing = if needs_eps {
                eps.max(0.01)
            } else if reads_eps && !has_sigmoid {
                eps
            } else {
                0.0
            };
            Setup {
                params: DpoParams {
                    beta,
                    label_smoothing,
                    ipo_length_normalized: ipo_norm,
                    discopop_tau: tau,
                    bco_delta: delta,
                },
                losses,
                reference_free: free,
                global_extra: global,
            }
        })
}

/// Random per-sequence inputs: summed log-probs `−n·U(0.2, 3)` for `n ∈ [1, 64]` tokens, reference sums
/// within ±N(0, 5) of them (so the log-ratios are O(1–10)).
fn pairs_strategy(reference_free: bool) -> impl Strategy<Value = Pairs> {
    (1usize..=8, any::<u64>()).prop_map(move |(b, seed)| random_pairs(b, seed, reference_free))
}

fn random_pairs(b: usize, seed: u64, reference_free: bool) -> Pairs {
    let mut rng = DataRng::new(seed);
    let side = |rng: &mut DataRng| {
        let counts: Vec<i64> = (0..b).map(|_| rng.int(1, 65)).collect();
        let sums: Vec<f64> = counts
            .iter()
            .map(|&n| -(n as f64) * rng.range(0.2, 3.0))
            .collect();
        let refs: Vec<f64> = sums.iter().map(|s| s + 5.0 * rng.normal()).collect();
        (counts, sums, refs)
    };
    let (cc, cs, cr) = side(&mut rng);
    let (rc, rs, rr) = side(&mut rng);
    Pairs {
        chosen: cs,
        rejected: rs,
        chosen_count: cc,
        rejected_count: rc,
        reference: if reference_free { None } else { Some((cr, rr)) },
    }
}

/// The pairs rounded to `kind` (so the reference sees exactly what the library sees).
fn round_pairs(p: &Pairs, kind: Kind) -> Pairs {
    Pairs {
        chosen: rounded(&p.chosen, kind),
        rejected: rounded(&p.rejected, kind),
        chosen_count: p.chosen_count.clone(),
        rejected_count: p.rejected_count.clone(),
        reference: p
            .reference
            .as_ref()
            .map(|(c, r)| (rounded(c, kind), rounded(r, kind))),
    }
}

/// Library-side tensors of a [`Pairs`]: the `[2B]` layout, chosen rows first.
struct LibPairs {
    /// `[2B]` policy log-probs (the sums a leaf when built with `requires_grad`).
    policy: SequenceLogProbs,
    /// `[B]` chosen rows alone (for the SFT loss).
    chosen: SequenceLogProbs,
    /// `[2B]` reference sums.
    reference: Option<Tensor>,
    b: usize,
}

impl LibPairs {
    fn new(p: &Pairs, kind: Kind, requires_grad: bool) -> Self {
        let b = p.len();
        let cat = |c: &[f64], r: &[f64]| c.iter().chain(r).copied().collect::<Vec<f64>>();
        let counts: Vec<i64> = p.chosen_count.iter().chain(&p.rejected_count).copied().collect();
        let policy = SequenceLogProbs::new(
            tensor(&cat(&p.chosen, &p.rejected), &[2 * b as i64], kind).set_requires_grad(requires_grad),
            int_tensor(&counts, &[2 * b as i64]),
        )
        .expect("SequenceLogProbs::new");
        let chosen = SequenceLogProbs::new(
            tensor(&p.chosen, &[b as i64], kind),
            int_tensor(&p.chosen_count, &[b as i64]),
        )
        .expect("SequenceLogProbs::new");
        Self {
            policy,
            chosen,
            reference: p
                .reference
                .as_ref()
                .map(|(c, r)| tensor(&cat(c, r), &[2 * b as i64], kind)),
            b,
        }
    }
    fn batch(&self, global: Option<Global>) -> LossBatch<'_> {
        let reference = match &self.reference {
            Some(sums) => Reference::LogProbs(sums),
            None => Reference::Free,
        };
        let mut batch = LossBatch::log_probs(&self.policy).with_reference(reference);
        if let Some((pairs, chosen_tokens)) = global {
            batch = batch.with_global(GlobalBatch { pairs, chosen_tokens });
        }
        batch
    }
    /// `(d loss / d chosen sums, d loss / d rejected sums)` by autograd.
    fn grads(&self, loss: &Tensor) -> (Vec<f64>, Vec<f64>) {
        let g = values(&Tensor::run_backward(&[loss], &[&self.policy.sum], false, false)[0]);
        (g[..self.b].to_vec(), g[self.b..].to_vec())
    }
}

/// Pair `i` alone.
fn pairs_at(p: &Pairs, i: usize) -> Pairs {
    Pairs {
        chosen: vec![p.chosen[i]],
        rejected: vec![p.rejected[i]],
        chosen_count: vec![p.chosen_count[i]],
        rejected_count: vec![p.rejected_count[i]],
        reference: p.reference.as_ref().map(|(c, r)| (vec![c[i]], vec![r[i]])),
    }
}

fn tolerances(kind: Kind) -> (f64, f64) {
    if kind == Kind::Double {
        (1e-10, 1e-9)
    } else {
        (1e-4, 1e-5)
    }
}

fn check_dpo(setup: &Setup, pairs: &Pairs, kind: Kind) {
    let pairs = round_pairs(pairs, kind);
    let lib = LibPairs::new(&pairs, kind, false);
    let global = setup.global(&pairs);
    let out = compute_loss(&setup.config(), &lib.batch(global)).expect("dpo_loss");
    let (abs, rel) = tolerances(kind);
    let want_pp = dpo_per_pair(&setup.params, &setup.losses, &pairs);
    // Weights may be negative, so terms can cancel: the relative tolerance applies to the magnitude
    // Σ_k |w_k·loss_k| of the terms, not to their (possibly tiny) sum.
    let magnitude: Vec<f64> = (0..pairs.len())
        .map(|i| {
            let one = pairs_at(&pairs, i);
            let abs_losses: Vec<(&str, f64)> = setup.losses.iter().map(|&(n, w)| (n, w.abs())).collect();
            let terms: Vec<f64> = abs_losses
                .iter()
                .map(|&(n, w)| w * dpo_per_pair(&setup.params, &[(n, 1.0)], &one)[0].abs())
                .collect();
            terms.iter().sum()
        })
        .collect();
    let got_pp = values(&out.per_pair);
    for i in 0..pairs.len() {
        let tol = abs + rel * magnitude[i];
        assert!(
            (got_pp[i] - want_pp[i]).abs() <= tol,
            "per_pair[{i}]: got {}, want {} (tol {tol:e})",
            got_pp[i],
            want_pp[i]
        );
    }
    let want = reduce(&want_pp, global.map(|g| g.0));
    let tol = abs + rel * reduce(&magnitude, global.map(|g| g.0));
    let got = out.loss.double_value(&[]);
    assert!(
        (got - want).abs() <= tol,
        "loss: got {got}, want {want} (tol {tol:e})"
    );
    for (name, got) in out.metrics.values().unwrap() {
        let want = metrics(setup.params.beta, &pairs)
            .into_iter()
            .find(|m| m.0 == name)
            .unwrap()
            .1;
        assert_close(&[got], &[want], abs, rel, name);
    }
}

proptest! {
    #![proptest_config(common::proptest_config(64))]

    /// Every variant, weighted sums of variants, label smoothing, reference-free and global pair counts,
    /// in f64.
    #[test]
    fn dpo_f64_matches_reference(setup in setup_strategy(), seed in any::<u64>(), b in 1usize..=8) {
        check_dpo(&setup, &random_pairs(b, seed, setup.reference_free), Kind::Double);
    }

    /// Same in f32.
    #[test]
    fn dpo_f32_matches_reference(setup in setup_strategy(), seed in any::<u64>(), b in 1usize..=8) {
        check_dpo(&setup, &random_pairs(b, seed, setup.reference_free), Kind::Float);
    }

    /// Each SFT normalization, local and with a global batch; `per_sequence` reduces to `loss`.
    #[test]
    fn sft_matches_reference(pairs in pairs_strategy(true), global in prop::option::of((0.0f64..10.0, 0.0f64..100.0))) {
        let lib = LibPairs::new(&pairs, Kind::Double, false);
        let global = global.map(|(p, n)| (pairs.len() as f64 + p, pairs.chosen_count.iter().sum::<i64>() as f64 + n));
        for norm in NORMS {
            let batch = LossBatch::log_probs(&lib.chosen).with_global(global.map(|(pairs, chosen_tokens)| GlobalBatch { pairs, chosen_tokens }));
            let out = compute_loss(&SftConfig::new(lib_norm(norm)), &batch).unwrap();
            let want = common::sft_loss(norm, &pairs.chosen, &pairs.chosen_count, global);
            assert_relative_eq!(out.loss.double_value(&[]), want, max_relative = 1e-12);
            let per = values(&out.per_sequence);
            assert_relative_eq!(reduce(&per, global.map(|g| g.0)), want, max_relative = 1e-12);
        }
    }

    /// RPO = DPO + c·SFT for every normalization, both ways of giving c; `per_pair` reduces to `loss`.
    #[test]
    fn rpo_matches_reference(setup in setup_strategy(), seed in any::<u64>(), b in 1usize..=8, eta in 0.0f64..2.0, absolute in any::<bool>()) {
        let pairs = random_pairs(b, seed, setup.reference_free);
        let lib = LibPairs::new(&pairs, Kind::Double, false);
        let global = setup.global(&pairs);
        for norm in NORMS {
            let config = RpoConfig {
                dpo: setup.config(),
                sft_weight: if absolute { SftWeight::Absolute(eta) } else { SftWeight::EtaBeta { eta } },
                sft_normalization: lib_norm(norm),
            };
            let coefficient = if absolute { eta } else { eta * setup.params.beta };
            let out = compute_loss(&config, &lib.batch(global)).unwrap();
            assert_relative_eq!(out.coefficient, coefficient, max_relative = 1e-15);
            let want = common::rpo_loss(&setup.params, &setup.losses, coefficient, norm, &pairs, global);
            assert_close(&values(&out.loss), &[want], 1e-10, 1e-9, "rpo loss");
            assert_close(&[reduce(&values(&out.per_pair), global.map(|g| g.0))], &[want], 1e-10, 1e-9, "per_pair");
            let nll = common::sft_loss(norm, &pairs.chosen, &pairs.chosen_count, global);
            let metric = out.metric_values().unwrap();
            assert_eq!(metric[..3].iter().map(|m| m.0).collect::<Vec<_>>(), ["loss", "loss/dpo", "nll"]);
            assert_close(&[metric[2].1], &[nll], 1e-10, 1e-9, "nll metric");
        }
    }
}

proptest! {
    #![proptest_config(common::proptest_config(32))]

    /// Autograd gradient of the RPO loss (any variant mix, any normalization) w.r.t. the policy's chosen
    /// and rejected sums equals central differences of the reference (f64).
    #[test]
    fn rpo_gradient_wrt_sums(setup in setup_strategy(), seed in any::<u64>(), b in 1usize..=6, coef in 0.0f64..1.0, norm in 0usize..3) {
        let pairs = random_pairs(b, seed, setup.reference_free);
        let global = setup.global(&pairs);
        let norm = NORMS[norm];
        let lib = LibPairs::new(&pairs, Kind::Double, true);
        let config = RpoConfig { dpo: setup.config(), sft_weight: SftWeight::Absolute(coef), sft_normalization: lib_norm(norm) };
        let out = compute_loss(&config, &lib.batch(global)).unwrap();
        let (gc, gr) = lib.grads(&out.loss);
        let f = |x: &[f64]| {
            let mut p = pairs.clone();
            p.chosen = x[..b].to_vec();
            p.rejected = x[b..].to_vec();
            common::rpo_loss(&setup.params, &setup.losses, coef, norm, &p, global)
        };
        let x: Vec<f64> = pairs.chosen.iter().chain(&pairs.rejected).copied().collect();
        let want = fd_grad(f, &x, 1e-5);
        let mut got = gc;
        got.extend(gr);
        assert_close(&got, &want, 1e-7, 1e-6, "d loss / d sums");
    }

    /// Sigmoid DPO (cDPO with label smoothing) plus each SFT term: autograd equals the closed-form gradient.
    #[test]
    fn sigmoid_rpo_analytic_gradient(pairs in pairs_strategy(false), beta in 0.01f64..1.0, eps in 0.0f64..0.45, coef in 0.0f64..1.0, norm in 0usize..3) {
        let norm = NORMS[norm];
        let lib = LibPairs::new(&pairs, Kind::Double, true);
        let variant = if eps > 0.0 { DpoLoss::Cdpo } else { DpoLoss::Sigmoid };
        let config = RpoConfig {
            dpo: DpoConfig::new(variant, beta).with_label_smoothing(eps),
            sft_weight: SftWeight::Absolute(coef),
            sft_normalization: lib_norm(norm),
        };
        let out = compute_loss(&config, &lib.batch(None)).unwrap();
        let (got_c, got_r) = lib.grads(&out.loss);
        let mut params = DpoParams::new(beta);
        params.label_smoothing = eps;
        let (mut gc, gr) = sigmoid_dpo_grad(&params, &pairs, None);
        for (g, s) in gc.iter_mut().zip(sft_grad(norm, &pairs.chosen_count, None)) {
            *g += coef * s;
        }
        let bounds = sigmoid_gradient_bounds(&params, &pairs, coef, norm);
        assert_within(&got_c, &gc, &bounds, "d/d chosen");
        assert_within(&got_r, &gr, &bounds, "d/d rejected");
    }
}

/// Bound of each f64 element of the cDPO + c·SFT gradient w.r.t. the sums (`sigmoid_rpo_analytic_gradient`),
/// `g = β·[−(1−ε)·σ(−z) + ε·σ(z)] / B + c·sft'`, whose two terms may cancel (so no relative tolerance):
/// - the library's `z = β·((p_c − r_c) − (p_r − r_r))` (any grouping) is off by `β·γ(3)·(|p_c| + |r_c| + |p_r|
///   + |r_r|) + u·|z|`, moving `g` by `|dg/dz| = β·σ(z)·σ(−z)/B` times that;
/// - at a given `z`, each σ (or `1 − σ`, as a backward may form it) is off by ≤ 6u absolutely (an `exp` within
///   2 ulps, an add, a divide; σ ≤ 1), the two scalings, their sum, `·β` and `/B` by ≤ 5u relative: ≤ 11u·β/B
///   with both terms ≤ β/B; `c·sft'` (a divide and a multiply) and the final add: 3u·|c·sft'| + u·|g|.
fn sigmoid_gradient_bounds(p: &DpoParams, pairs: &Pairs, coef: f64, norm: Norm) -> Vec<f64> {
    let u = U_F64;
    let b = pairs.len() as f64;
    let (lc, lr) = pairs.log_ratios();
    let (rc, rr) = pairs.reference.clone().expect("with a reference");
    let sft = sft_grad(norm, &pairs.chosen_count, None);
    (0..pairs.len())
        .map(|i| {
            let z = p.beta * (lc[i] - lr[i]);
            let magnitude = pairs.chosen[i].abs() + rc[i].abs() + pairs.rejected[i].abs() + rr[i].abs();
            let dz = p.beta * tolerance::gamma(3, u) * magnitude + u * z.abs();
            let slope = p.beta * sigmoid(z) * sigmoid(-z) / b;
            let g = p.beta * (-(1.0 - p.label_smoothing) * sigmoid(-z) + p.label_smoothing * sigmoid(z)) / b
                + coef * sft[i];
            let eval = 11.0 * u * p.beta / b + 3.0 * u * (coef * sft[i]).abs() + u * g.abs();
            tolerance::SECOND_ORDER * (slope * dz + eval)
        })
        .collect()
}

// -------------------------------------------------------------------------------------------------------
// From logits: the whole pipeline against the reference composition, value and gradient.
// -------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct LogitsCase {
    pairs: usize,
    t: usize,
    v: usize,
    shift: bool,
    kind_ix: usize,
    reference_ix: usize,
    norm_ix: usize,
    coef: f64,
    chunk_rows: usize,
    seed: u64,
}

const KINDS: [Kind; 3] = [Kind::Double, Kind::Float, Kind::BFloat16];

fn logits_case() -> impl Strategy<Value = LogitsCase> {
    (
        1usize..=4,
        2usize..=24,
        2usize..=64,
        any::<bool>(),
        0usize..3,
        0usize..3,
        0usize..3,
        0.0f64..1.0,
        1usize..=8,
        any::<u64>(),
    )
        .prop_map(
            |(pairs, t, v, shift, kind_ix, reference_ix, norm_ix, coef, chunk_rows, seed)| LogitsCase {
                pairs,
                t,
                v,
                shift,
                kind_ix,
                reference_ix,
                norm_ix,
                coef,
                chunk_rows,
                seed,
            },
        )
}

proptest! {
    #![proptest_config(common::proptest_config(32))]

    /// `rpo_loss_from_logits` (f64 / f32 / bf16 logits; reference as logits, as cached log-probs, or none):
    /// the value equals the reference composition log-probs → sums → DPO + c·SFT, and the gradient w.r.t.
    /// the policy logits equals `Σ_rows ∂L/∂s_row · (onehot − softmax)` with `∂L/∂s` from central
    /// differences of the reference.
    #[test]
    fn rpo_from_logits_matches_reference(c in logits_case(), setup in setup_strategy()) {
        let kind = KINDS[c.kind_ix];
        let norm = NORMS[c.norm_ix];
        let rows = 2 * c.pairs;
        let dims = (rows, c.t, c.v);
        let mut rng = DataRng::new(c.seed);
        let policy = rounded(&rng.normals(rows * c.t * c.v, 2.0), kind);
        let reference = rounded(&rng.normals(rows * c.t * c.v, 2.0), kind);
        // Every row keeps at least one scored token (mean normalizations need one; errors.rs covers none).
        let mut labels = random_labels(&mut rng, dims, -100, 0.3, 0.0);
        for r in 0..rows {
            labels[r * c.t + c.t - 1] = rng.int(0, c.v as i64);
        }
        let shape = [rows as i64, c.t as i64, c.v as i64];
        let z = tensor(&policy, &shape, kind).set_requires_grad(true);
        let zr = tensor(&reference, &shape, kind);
        let y = int_tensor(&labels, &[rows as i64, c.t as i64]);
        let opts = LogProbOptions::default().with_shift(c.shift).with_chunk_bytes(c.chunk_rows * c.v * 4);

        let policy_ref = common::token_logprobs(&policy, &labels, dims, -100, c.shift);
        let reference_sums = common::token_logprobs(&reference, &labels, dims, -100, c.shift).sums();
        let cached = tensor(&reference_sums, &[rows as i64], Kind::Double);
        let reference_arg = match c.reference_ix {
            0 => Reference::Logits(&zr),
            1 => Reference::LogProbs(&cached),
            _ => Reference::Free,
        };
        let config = RpoConfig { dpo: setup.config(), sft_weight: SftWeight::Absolute(c.coef), sft_normalization: lib_norm(norm) };
        let batch = LossBatch::logits(&z, &y).with_reference(reference_arg).with_options(opts);
        let out = compute_loss(&config, &batch).unwrap();

        let (sums, counts) = (policy_ref.sums(), policy_ref.counts());
        let b = c.pairs;
        let make_pairs = |sums: &[f64]| Pairs {
            chosen: sums[..b].to_vec(),
            rejected: sums[b..].to_vec(),
            chosen_count: counts[..b].to_vec(),
            rejected_count: counts[b..].to_vec(),
            reference: (c.reference_ix < 2).then(|| (reference_sums[..b].to_vec(), reference_sums[b..].to_vec())),
        };
        let loss_of = |s: &[f64]| common::rpo_loss(&setup.params, &setup.losses, c.coef, norm, &make_pairs(s), None);
        let want = loss_of(&sums);
        // f32 / bf16 logits: log-probs carry ~1e-5·T error, amplified by the loss's slope (≤ ~2·200 for
        // sppo_hard at β = 0.01 with weight 2), hence a relative tolerance on top.
        let (abs, rel) = if kind == Kind::Double { (1e-9, 1e-9) } else { (1e-3, 1e-4) };
        assert_close(&values(&out.loss), &[want], abs, rel, "rpo loss from logits");

        let grad = Tensor::run_backward(&[&out.loss], &[&z], false, false).pop().unwrap();
        let d_sums = fd_grad(loss_of, &sums, 1e-5);
        let steps = if c.shift { c.t - 1 } else { c.t };
        let upstream: Vec<f64> = (0..rows * steps).map(|i| d_sums[i / steps]).collect();
        let want_grad = token_logprobs_grad(&policy, &labels, dims, -100, c.shift, &upstream);
        let scale = d_sums.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        let tol = match kind { Kind::Double => 1e-7 * (1.0 + scale), Kind::Float => 1e-4 * (1.0 + scale), _ => 1.5e-2 * (1.0 + scale) };
        assert_close(&values(&grad), &want_grad, tol, 1e-3, "d loss / d logits");
    }
}

// -------------------------------------------------------------------------------------------------------
// Invariants
// -------------------------------------------------------------------------------------------------------

#[test]
fn names_match_trl() {
    let names: Vec<&str> = DpoLoss::ALL.iter().map(|l| l.name()).collect();
    assert_eq!(names, VARIANTS);
}

/// Sigmoid DPO is exactly ln 2 per pair when the policy equals the reference (Δ = 0), for any β, on
/// per-sequence inputs and straight from logits with the same tensor as reference.
#[test]
fn sigmoid_dpo_is_ln2_when_policy_equals_reference() {
    for (seed, beta) in [(1u64, 0.01), (2, 0.1), (3, 0.7)] {
        let mut pairs = random_pairs(5, seed, true);
        pairs.reference = Some((pairs.chosen.clone(), pairs.rejected.clone()));
        for kind in [Kind::Double, Kind::Float] {
            let lib = LibPairs::new(&pairs, kind, false);
            let out = compute_loss(&DpoConfig::new(DpoLoss::Sigmoid, beta), &lib.batch(None)).unwrap();
            let ln2 = std::f64::consts::LN_2;
            assert_relative_eq!(out.loss.double_value(&[]), ln2, max_relative = 1e-7);
            assert!(values(&out.per_pair).iter().all(|&x| (x - ln2).abs() < 1e-7));
            let m = out.metrics.values().unwrap();
            assert_eq!(m[2], ("rewards/margins", 0.0));
            assert_eq!(
                m[3],
                ("rewards/accuracies", 0.0),
                "ties are not counted as accurate"
            );
        }
    }
    let z = Tensor::randn([4, 6, 11], (Kind::Float, tch::Device::Cpu));
    let y = Tensor::randint(11, [4, 6], (Kind::Int64, tch::Device::Cpu));
    let config = RpoConfig::paper(0.1, 0.0);
    let batch = LossBatch::logits(&z, &y)
        .with_reference(Reference::Logits(&z))
        .with_options(LogProbOptions::causal());
    let out = compute_loss(&config, &batch).unwrap();
    assert_relative_eq!(
        out.loss.double_value(&[]),
        std::f64::consts::LN_2,
        max_relative = 1e-7
    );
}

/// RPO with η = 0 (or weight 0) is DPO: same loss, per-pair loss and gradient, for every variant.
#[test]
fn rpo_with_zero_eta_equals_dpo() {
    let pairs = random_pairs(6, 42, false);
    for variant in DpoLoss::ALL {
        for weight in [SftWeight::EtaBeta { eta: 0.0 }, SftWeight::Absolute(0.0)] {
            let eps = if variant.uses_label_smoothing() { 0.1 } else { 0.0 };
            let dpo = DpoConfig::new(variant, 0.1).with_label_smoothing(eps);
            let config = RpoConfig {
                dpo: dpo.clone(),
                sft_weight: weight,
                sft_normalization: SftNormalization::SequenceSum,
            };
            let a = LibPairs::new(&pairs, Kind::Double, true);
            let b = LibPairs::new(&pairs, Kind::Double, true);
            let rpo = compute_loss(&config, &a.batch(None)).unwrap();
            let dpo = compute_loss(&dpo, &b.batch(None)).unwrap();
            assert_eq!(rpo.coefficient, 0.0);
            assert_eq!(values(&rpo.loss), values(&dpo.loss), "{variant:?}");
            assert_eq!(values(&rpo.per_pair), values(&dpo.per_pair), "{variant:?}");
            assert_eq!(a.grads(&rpo.loss), b.grads(&dpo.loss), "{variant:?}");
        }
    }
}

/// Swapping chosen and rejected negates the margins and the per-pair Δ, turns accuracy a into 1 − a
/// (no ties), and changes each sigmoid-DPO pair loss by exactly βΔ (`−log σ(−z) + log σ(z) = z`).
#[test]
fn swapping_chosen_and_rejected_flips_the_margin() {
    for seed in 0..8u64 {
        let pairs = random_pairs(7, seed, seed % 2 == 0);
        let swapped = pairs.swapped();
        let beta = 0.2;
        let (a, b) = (
            LibPairs::new(&pairs, Kind::Double, false),
            LibPairs::new(&swapped, Kind::Double, false),
        );
        let config = DpoConfig::new(DpoLoss::Sigmoid, beta);
        let (oa, ob) = (
            compute_loss(&config, &a.batch(None)).unwrap(),
            compute_loss(&config, &b.batch(None)).unwrap(),
        );
        let (ma, mb) = (oa.metrics.values().unwrap(), ob.metrics.values().unwrap());
        assert_relative_eq!(ma[2].1, -mb[2].1, max_relative = 1e-12);
        assert_relative_eq!(ma[3].1, 1.0 - mb[3].1, max_relative = 1e-12);
        assert_relative_eq!(ma[0].1, mb[1].1, max_relative = 1e-12);
        let (lc, lr) = pairs.log_ratios();
        let (pa, pb) = (values(&oa.per_pair), values(&ob.per_pair));
        for i in 0..pairs.len() {
            assert_relative_eq!(
                pb[i] - pa[i],
                beta * (lc[i] - lr[i]),
                epsilon = 1e-10,
                max_relative = 1e-10
            );
        }
    }
}

/// `rpo_loss_from_logits` is exactly `sequence_logprobs` → `split_pairs` → `rpo_loss`.
#[test]
fn rpo_from_logits_is_the_composition_of_its_parts() {
    let (rows, t, v) = (6i64, 9i64, 17i64);
    let mut rng = DataRng::new(5);
    let labels = random_labels(&mut rng, (rows as usize, t as usize, v as usize), -100, 0.3, 0.0);
    let y = int_tensor(&labels, &[rows, t]);
    let z = Tensor::randn([rows, t, v], (Kind::Float, tch::Device::Cpu));
    let zr = Tensor::randn([rows, t, v], (Kind::Float, tch::Device::Cpu));
    let opts = LogProbOptions::causal().with_chunk_bytes(3 * v as usize * 4);
    for config in [
        RpoConfig::paper_gemma_series(),
        RpoConfig::openrlhf(0.1, 0.2),
        RpoConfig::trl(0.1, 0.005),
    ] {
        let logits_batch = LossBatch::logits(&z, &y)
            .with_reference(Reference::Logits(&zr))
            .with_options(opts);
        let whole = compute_loss(&config, &logits_batch).unwrap();
        let policy = sequence_logprobs(&z, &y, &opts).unwrap();
        let reference = sequence_logprobs(&zr, &y, &opts).unwrap();
        let batch = LossBatch::log_probs(&policy).with_reference(Reference::LogProbs(&reference.sum));
        let parts = compute_loss(&config, &batch).unwrap();
        assert_eq!(values(&whole.loss), values(&parts.loss));
        assert_eq!(values(&whole.per_pair), values(&parts.per_pair));
        assert_eq!(whole.metric_values().unwrap(), parts.metric_values().unwrap());
    }
}

/// Gradient accumulation: splitting the pairs into micro-batches with the whole step's `GlobalBatch`
/// gives micro-losses that sum to the one-batch loss and gradients that sum to its gradient, for every
/// SFT normalization (and a non-sigmoid DPO mix).
#[test]
fn gradient_accumulation_with_global_batch() {
    let (pairs, t, v) = (5i64, 8i64, 13i64);
    let rows = 2 * pairs;
    let mut rng = DataRng::new(9);
    let mut labels = random_labels(&mut rng, (rows as usize, t as usize, v as usize), -100, 0.4, 0.0);
    for r in 0..rows as usize {
        labels[r * t as usize + t as usize - 1] = 3; // at least one token per row
    }
    let y = int_tensor(&labels, &[rows, t]);
    let data = rng.normals((rows * t * v) as usize, 2.0);
    let reference = Tensor::from_slice(&rng.normals((rows * t * v) as usize, 2.0)).reshape([rows, t, v]);
    let opts = LogProbOptions::causal();
    let splits: [&[i64]; 3] = [&[0, 1], &[1, 3], &[3, 5]];
    let mixes = [
        DpoConfig::new(DpoLoss::Sigmoid, 0.1),
        DpoConfig::new(DpoLoss::Ipo, 0.5).with_losses(vec![(DpoLoss::Ipo, 1.0), (DpoLoss::SppoHard, 0.3)]),
    ];
    for norm in [
        SftNormalization::SequenceSum,
        SftNormalization::SequenceMean,
        SftNormalization::TokenMean,
    ] {
        for dpo in &mixes {
            let config = RpoConfig {
                dpo: dpo.clone(),
                sft_weight: SftWeight::Absolute(0.7),
                sft_normalization: norm,
            };
            let z = Tensor::from_slice(&data)
                .reshape([rows, t, v])
                .set_requires_grad(true);
            let full_batch = LossBatch::logits(&z, &y)
                .with_reference(Reference::Logits(&reference))
                .with_options(opts);
            let full = compute_loss(&config, &full_batch).unwrap();
            let full_grad = Tensor::run_backward(&[&full.loss], &[&z], false, false)
                .pop()
                .unwrap();

            let micro_index = |s: &[i64]| {
                let idx: Vec<i64> = (s[0]..s[1]).chain(pairs + s[0]..pairs + s[1]).collect();
                Tensor::from_slice(&idx)
            };
            // Whole-step chosen-token count, summed over the micro-batches (as a trainer would).
            let mut chosen_tokens = 0.0;
            for s in splits {
                let idx = micro_index(s);
                let (c, _) = sequence_logprobs(&z.index_select(0, &idx), &y.index_select(0, &idx), &opts)
                    .unwrap()
                    .split_pairs()
                    .unwrap();
                chosen_tokens += count_tokens(&c).unwrap();
            }
            let global = GlobalBatch {
                pairs: pairs as f64,
                chosen_tokens,
            };
            let zl = Tensor::from_slice(&data)
                .reshape([rows, t, v])
                .set_requires_grad(true);
            let mut total = 0.0;
            for s in splits {
                let idx = micro_index(s);
                let zr = reference.index_select(0, &idx);
                let (zm, ym) = (zl.index_select(0, &idx), y.index_select(0, &idx));
                let batch = LossBatch::logits(&zm, &ym)
                    .with_reference(Reference::Logits(&zr))
                    .with_options(opts)
                    .with_global(global);
                let out = compute_loss(&config, &batch).unwrap();
                total += out.loss.double_value(&[]);
                out.loss.backward(); // accumulates into zl.grad
            }
            assert_relative_eq!(total, full.loss.double_value(&[]), max_relative = 1e-12);
            assert_close(
                &values(&zl.grad()),
                &values(&full_grad),
                1e-14,
                1e-10,
                &format!("{norm:?} grad"),
            );
        }
    }
}

/// Presets carry the documented coefficients.
#[test]
fn presets_have_documented_coefficients() {
    assert_eq!(PAPER_ETA, 0.005);
    let beta_series = RpoConfig::paper_beta_series();
    assert_eq!(beta_series.dpo.beta, 0.01);
    assert_eq!(beta_series.dpo.losses, vec![(DpoLoss::Sigmoid, 1.0)]);
    assert_eq!(beta_series.dpo.label_smoothing, 0.0);
    assert_eq!(beta_series.sft_normalization, SftNormalization::SequenceSum);
    assert_relative_eq!(beta_series.coefficient().unwrap(), 5e-5, max_relative = 1e-12);
    assert_eq!(RpoConfig::default(), beta_series);

    let gemma = RpoConfig::paper_gemma_series();
    assert_eq!(gemma.dpo.beta, 0.05);
    assert_eq!(gemma.sft_normalization, SftNormalization::SequenceSum);
    assert_relative_eq!(gemma.coefficient().unwrap(), 2.5e-4, max_relative = 1e-12);

    let openrlhf = RpoConfig::openrlhf(0.1, 0.2);
    assert_eq!(openrlhf.sft_normalization, SftNormalization::SequenceMean);
    assert_eq!(openrlhf.coefficient().unwrap(), 0.2, "no β factor");

    let trl = RpoConfig::trl(0.1, 0.005);
    assert_eq!(trl.sft_normalization, SftNormalization::TokenMean);
    assert_eq!(trl.coefficient().unwrap(), 0.005);

    let d = DpoConfig::default();
    assert_eq!(
        (d.beta, d.label_smoothing, d.discopop_tau, d.bco_delta),
        (0.1, 0.0, 0.05, 0.0)
    );
    assert!(d.ipo_length_normalized);
    assert!(LogProbOptions::default().validate_inputs);
    assert_eq!(d.losses, vec![(DpoLoss::Sigmoid, 1.0)]);

    let text = gemma.describe();
    assert!(
        text.contains("sigmoid") && text.contains("0.05") && text.contains("sequence_sum"),
        "{text}"
    );
}

/// The metric values of a hand-sized example, computed by hand.
#[test]
fn metrics_worked_example() {
    // β = 0.5; ℓ_c = (−1 + 3, −4 + 2) = (2, −2); ℓ_r = (−5 + 5, −1 + 2) = (0, 1).
    let pairs = Pairs {
        chosen: vec![-1.0, -4.0],
        rejected: vec![-5.0, -1.0],
        chosen_count: vec![1, 2],
        rejected_count: vec![3, 1],
        reference: Some((vec![-3.0, -2.0], vec![-5.0, -2.0])),
    };
    let lib = LibPairs::new(&pairs, Kind::Double, false);
    let out = compute_loss(&DpoConfig::new(DpoLoss::Sigmoid, 0.5), &lib.batch(None)).unwrap();
    let m = out.metrics.values().unwrap();
    let want = [
        ("rewards/chosen", 0.0),     // (1 − 1) / 2
        ("rewards/rejected", 0.25),  // (0 + 0.5) / 2
        ("rewards/margins", -0.25),  // (1 − 1.5) / 2
        ("rewards/accuracies", 0.5), // pair 0 only
        ("logps/chosen", -2.5),
        ("logps/rejected", -3.0),
    ];
    for ((n, g), (wn, w)) in m.iter().zip(want) {
        assert_eq!(*n, wn);
        assert_relative_eq!(*g, w, epsilon = 1e-15);
    }
    // Loss: mean of −log σ(0.5·2) and −log σ(0.5·(−3)).
    let want_loss = (softplus(-1.0f64) + softplus(1.5f64)) / 2.0;
    assert_relative_eq!(out.loss.double_value(&[]), want_loss, max_relative = 1e-14);
}

/// DiscoPOP at a large negative margin: `m·e^{−z}` is `0·∞` if formed naively once `e^{−z}` overflows
/// (z < −88.7 in f32, −709 in f64), but the loss is finite (≈ −z) and so is its gradient.
#[test]
fn discopop_is_finite_at_large_negative_margins() {
    for (kind, delta) in [
        (Kind::Float, -120.0),
        (Kind::Float, -2000.0),
        (Kind::Double, -2000.0),
    ] {
        let pairs = Pairs {
            chosen: vec![delta, -3.0],
            rejected: vec![0.0, -1.0],
            chosen_count: vec![4, 2],
            rejected_count: vec![4, 2],
            reference: None,
        };
        let params = DpoParams::new(1.0);
        let lib = LibPairs::new(&pairs, kind, true);
        let out = compute_loss(&DpoConfig::new(DpoLoss::DiscoPop, 1.0), &lib.batch(None)).unwrap();
        let want = dpo_per_pair(&params, &[("discopop", 1.0)], &pairs);
        assert_close(
            &values(&out.per_pair),
            &want,
            1e-4,
            1e-6,
            &format!("{kind:?} discopop"),
        );
        let (g, _) = lib.grads(&out.loss);
        assert!(g.iter().all(|x| x.is_finite()), "{kind:?} gradient {g:?}");
        // d/dz of the logistic part is −σ(−z) → −1; the mean over 2 pairs halves it.
        assert_relative_eq!(g[0], -0.5, max_relative = 1e-5);
    }
}

/// `DpoLoss` prints and parses TRL's `loss_type` names, and TRL's lists of types with weights port by name.
#[test]
fn trl_loss_type_strings() {
    for loss in DpoLoss::ALL {
        assert_eq!(loss.to_string(), loss.name());
        assert_eq!(loss.name().parse::<DpoLoss>().unwrap(), loss);
    }
    assert_eq!(
        DpoLoss::parse_weighted(&["sigmoid", "bco_pair"], Some(&[0.8, 0.2])).unwrap(),
        vec![(DpoLoss::Sigmoid, 0.8), (DpoLoss::BcoPair, 0.2)]
    );
    assert_eq!(
        DpoLoss::parse_weighted(&["ipo", "sigmoid_norm"], None).unwrap(),
        vec![(DpoLoss::Ipo, 1.0), (DpoLoss::SigmoidNorm, 1.0)]
    );
    // TRL's RPO recipe: loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.005] is `RpoConfig::trl`.
    let rpo = RpoConfig::from_trl(0.1, &["sigmoid", "sft"], Some(&[1.0, 0.005]), 0.0).unwrap();
    assert_eq!(rpo, RpoConfig::trl(0.1, 0.005));
    // ["sft"] alone: plain SFT that still logs rewards at β.
    let sft = RpoConfig::from_trl(0.3, &["sft"], None, 0.0).unwrap();
    assert_eq!(sft.dpo.beta, 0.3);
    assert_eq!(sft.dpo.losses, vec![(DpoLoss::Sigmoid, 0.0)]);
    assert_eq!(sft.coefficient().unwrap(), 1.0);
    assert_eq!(sft.sft_normalization, SftNormalization::TokenMean);
}

/// `RpoConfig::sft_only` trains on the NLL alone but logs rewards at a real β (TRL's `loss_type=["sft"]`),
/// not at β = 1.
#[test]
fn sft_only_keeps_beta_for_rewards() {
    let pairs = random_pairs(4, 17, false);
    let lib = LibPairs::new(&pairs, Kind::Double, false);
    for beta in [0.1, 0.05] {
        let config = RpoConfig::sft_only(SftNormalization::TokenMean).with_beta(beta);
        let out = compute_loss(&config, &lib.batch(None)).unwrap();
        let nll = common::sft_loss(Norm::TokenMean, &pairs.chosen, &pairs.chosen_count, None);
        assert_close(&values(&out.loss), &[nll], 1e-12, 1e-12, "sft_only loss");
        let want = metrics(beta, &pairs);
        let got = out.dpo.metrics.values().unwrap();
        assert_close(&[got[0].1], &[want[0].1], 1e-12, 1e-12, "rewards/chosen at β");
    }
    assert_eq!(RpoConfig::sft_only(SftNormalization::SequenceSum).dpo.beta, 0.1);
}

/// The per-pair outputs (as Liger-Kernel returns them): `[B]` policy log-probs and rewards `β·ℓ` of each
/// pair, against the reference; their means are the batch metrics.
#[test]
fn per_pair_outputs() {
    for (seed, free) in [(1u64, false), (2, true)] {
        let pairs = random_pairs(5, seed, free);
        let lib = LibPairs::new(&pairs, Kind::Double, true);
        let beta = 0.2;
        let out = compute_loss(&DpoConfig::new(DpoLoss::Sigmoid, beta), &lib.batch(None)).unwrap();
        let m = &out.metrics;
        let (lc, lr) = pairs.log_ratios();
        let scaled = |x: &[f64]| x.iter().map(|v| beta * v).collect::<Vec<f64>>();
        assert_close(&values(&m.chosen_logps), &pairs.chosen, 0.0, 0.0, "chosen_logps");
        assert_close(
            &values(&m.rejected_logps),
            &pairs.rejected,
            0.0,
            0.0,
            "rejected_logps",
        );
        assert_close(
            &values(&m.chosen_rewards),
            &scaled(&lc),
            1e-14,
            1e-14,
            "chosen_rewards",
        );
        assert_close(
            &values(&m.rejected_rewards),
            &scaled(&lr),
            1e-14,
            1e-14,
            "rejected_rewards",
        );
        assert!(!m.chosen_rewards.requires_grad() && !m.chosen_logps.requires_grad());
        assert!(
            m.logits_chosen.is_none() && m.entropy.is_none(),
            "token metrics are off by default"
        );
        assert_eq!(out.metrics.values().unwrap().len(), 6);
    }
}

/// TRL semantics: `sigmoid` ignores label smoothing — so a smoothed sigmoid is refused and `cdpo` is the
/// smoothed loss; with ε = 0 they are the same loss.
#[test]
fn cdpo_is_the_smoothed_sigmoid() {
    let pairs = random_pairs(6, 3, false);
    let lib = LibPairs::new(&pairs, Kind::Double, false);
    let plain = compute_loss(&DpoConfig::new(DpoLoss::Sigmoid, 0.1), &lib.batch(None)).unwrap();
    let mut params = DpoParams::new(0.1);
    assert_close(
        &values(&plain.per_pair),
        &dpo_per_pair(&params, &[("sigmoid", 1.0)], &pairs),
        1e-12,
        1e-12,
        "sigmoid",
    );
    params.label_smoothing = 0.2;
    let cdpo = DpoConfig::new(DpoLoss::Cdpo, 0.1).with_label_smoothing(0.2);
    let smoothed = compute_loss(&cdpo, &lib.batch(None)).unwrap();
    assert_close(
        &values(&smoothed.per_pair),
        &dpo_per_pair(&params, &[("cdpo", 1.0)], &pairs),
        1e-12,
        1e-12,
        "cdpo",
    );
    assert!(DpoConfig::new(DpoLoss::Sigmoid, 0.1)
        .with_label_smoothing(0.2)
        .validate()
        .is_err());
}
