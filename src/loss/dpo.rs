//! The DPO family on per-sequence log-probabilities.
//!
//! Notation (all per pair `i`, sums over response tokens):
//! `ℓ_c = log π_θ(y_w) − log π_ref(y_w)`, `ℓ_r = log π_θ(y_l) − log π_ref(y_l)` (reference-free:
//! `ℓ = log π_θ`), `Δ = ℓ_c − ℓ_r`, `ε` = label smoothing, `σ` the logistic function.
//!
//! | [`DpoLoss`] | per-pair loss |
//! |---|---|
//! | `Sigmoid` (DPO, cDPO with ε > 0) | `−(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)` |
//! | `Hinge` | `relu(1 − βΔ)` |
//! | `Ipo` | `(ℓ_c/|y_w| − ℓ_r/|y_l| − 1/(2β))²`; un-normalised `(Δ − 1/(2β))²` with `ipo_length_normalized = false` |
//! | `Robust` | `[−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)] / (1 − 2ε)` |
//! | `ExoPair` | `σ(βΔ)·[log σ(βΔ) − log(1−ε)] + σ(−βΔ)·[log σ(−βΔ) − log ε]`, ε = 1e-3 when 0 |
//! | `NcaPair` | `−log σ(βℓ_c) − ½·log σ(−βℓ_c) − ½·log σ(−βℓ_r)` |
//! | `BcoPair` | `−log σ(βℓ_c − δ) − log σ(−(βℓ_r − δ))` |
//! | `SppoHard` | `(ℓ_c − 1/(2β))² + (ℓ_r + 1/(2β))²` |
//! | `ApoZero` | `1 − σ(βℓ_c) + σ(βℓ_r)` |
//! | `ApoDown` | `σ(βℓ_c) + 1 − σ(βΔ)` |
//! | `DiscoPop` | `z = βΔ, m = σ(z/τ)`: `(1−m)·(−log σ(z)) + m·e^{−z}` |
//!
//! Several variants can be combined with weights ([`DpoConfig::losses`]): the per-pair loss is
//! `Σ_k w_k · loss_k`. The reduced loss is the mean over pairs, or `Σ_i loss_i / N` with an explicit
//! global pair count `N` ([`crate::GlobalBatch`]) for gradient accumulation.

use crate::error::{Error, Result};
use crate::logprobs::SequenceLogProbs;
use crate::loss::metrics::PreferenceMetrics;
use crate::loss::{GlobalBatch, PreferenceBatch, Reference};
use crate::validate;
use tch::{Kind, Tensor};

/// One member of the DPO family (formulas in the [module docs](self)). Names follow TRL's `loss_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DpoLoss {
    /// `sigmoid`: DPO; conservative DPO (cDPO) with label smoothing ε > 0.
    Sigmoid,
    /// `hinge`: SLiC-style hinge on the margin.
    Hinge,
    /// `ipo`: squared distance of the (length-normalised) margin from `1/(2β)`.
    Ipo,
    /// `robust`: robust DPO, unbiased under label noise ε.
    Robust,
    /// `exo_pair`: EXO's reverse-KL form for pairs.
    ExoPair,
    /// `nca_pair`: NCA for pairs.
    NcaPair,
    /// `bco_pair`: BCO for pairs with reward shift δ.
    BcoPair,
    /// `sppo_hard`: SPPO with hard labels.
    SppoHard,
    /// `apo_zero`: APO anchored at zero (raise chosen, lower rejected).
    ApoZero,
    /// `apo_down`: APO that lowers both, rejected more.
    ApoDown,
    /// `discopop`: the discovered log-ratio-modulated loss.
    DiscoPop,
}

impl DpoLoss {
    /// All variants, in declaration order.
    pub const ALL: [DpoLoss; 11] = [
        DpoLoss::Sigmoid,
        DpoLoss::Hinge,
        DpoLoss::Ipo,
        DpoLoss::Robust,
        DpoLoss::ExoPair,
        DpoLoss::NcaPair,
        DpoLoss::BcoPair,
        DpoLoss::SppoHard,
        DpoLoss::ApoZero,
        DpoLoss::ApoDown,
        DpoLoss::DiscoPop,
    ];

    /// TRL's name for the variant (`"sigmoid"`, `"ipo"`, …).
    pub fn name(self) -> &'static str {
        match self {
            DpoLoss::Sigmoid => "sigmoid",
            DpoLoss::Hinge => "hinge",
            DpoLoss::Ipo => "ipo",
            DpoLoss::Robust => "robust",
            DpoLoss::ExoPair => "exo_pair",
            DpoLoss::NcaPair => "nca_pair",
            DpoLoss::BcoPair => "bco_pair",
            DpoLoss::SppoHard => "sppo_hard",
            DpoLoss::ApoZero => "apo_zero",
            DpoLoss::ApoDown => "apo_down",
            DpoLoss::DiscoPop => "discopop",
        }
    }
}

/// ε used by `exo_pair` when label smoothing is 0 (as in TRL).
pub const EXO_DEFAULT_EPSILON: f64 = 1e-3;

/// Configuration of [`dpo_loss`].
#[derive(Debug, Clone, PartialEq)]
pub struct DpoConfig {
    /// β > 0: inverse temperature of the implicit reward `β·ℓ`. Default 0.1.
    pub beta: f64,
    /// Label smoothing ε ∈ [0, 0.5) (sigmoid = cDPO, robust, exo_pair). Default 0.
    pub label_smoothing: f64,
    /// Weighted variants; the per-pair loss is `Σ w_k · loss_k`. Default `[(Sigmoid, 1.0)]`.
    pub losses: Vec<(DpoLoss, f64)>,
    /// IPO divides each log-ratio by its response length (TRL, the IPO paper). `false` uses the summed
    /// log-ratios (OpenRLHF). Default `true`.
    pub ipo_length_normalized: bool,
    /// DiscoPOP temperature τ > 0. Default 0.05.
    pub discopop_tau: f64,
    /// BCO reward shift δ (a running mean of rewards in the BCO paper; 0 in TRL). Default 0.
    pub bco_delta: f64,
    /// Check inputs that need a device sync (token counts for IPO's length normalisation). Default `true`.
    pub validate: bool,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            label_smoothing: 0.0,
            losses: vec![(DpoLoss::Sigmoid, 1.0)],
            ipo_length_normalized: true,
            discopop_tau: 0.05,
            bco_delta: 0.0,
            validate: true,
        }
    }
}

impl DpoConfig {
    /// One variant with weight 1 and the given β; other fields default.
    pub fn new(loss: DpoLoss, beta: f64) -> Self {
        Self {
            beta,
            losses: vec![(loss, 1.0)],
            ..Self::default()
        }
    }
    /// Sets the label smoothing ε.
    pub fn with_label_smoothing(mut self, label_smoothing: f64) -> Self {
        self.label_smoothing = label_smoothing;
        self
    }
    /// Replaces the weighted list of variants.
    pub fn with_losses(mut self, losses: Vec<(DpoLoss, f64)>) -> Self {
        self.losses = losses;
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for β ≤ 0 or non-finite, ε outside `[0, 0.5)`, τ ≤ 0, a non-finite δ,
    /// an empty loss list, or a non-finite weight.
    pub fn validate(&self) -> Result<()> {
        validate::positive_finite("beta", self.beta)?;
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(Error::InvalidParameter {
                name: "label_smoothing",
                value: self.label_smoothing,
                requirement: "must lie in [0, 0.5)",
            });
        }
        validate::positive_finite("discopop_tau", self.discopop_tau)?;
        validate::finite("bco_delta", self.bco_delta)?;
        if self.losses.is_empty() {
            return Err(Error::InvalidParameter {
                name: "losses",
                value: 0.0,
                requirement: "at least one (variant, weight) pair is needed",
            });
        }
        for &(_, w) in &self.losses {
            validate::finite("losses[].weight", w)?;
        }
        Ok(())
    }
}

/// Result of [`dpo_loss`].
#[derive(Debug)]
pub struct DpoOutput {
    /// Scalar loss (differentiable): mean of `per_pair`, or `Σ per_pair / N` with a [`GlobalBatch`].
    pub loss: Tensor,
    /// `[B]` per-pair loss (weighted sum over the configured variants), differentiable.
    pub per_pair: Tensor,
    /// Detached metrics (rewards, margins, accuracies, log-probs).
    pub metrics: PreferenceMetrics,
}

/// The DPO-family loss of a batch of preference pairs.
///
/// # Arguments
/// - `config`: β, variants and their weights, label smoothing.
/// - `batch`: policy log-probs of chosen and rejected responses (`[B]` sums with `[B]` token counts), the
///   reference ([`Reference::LogProbs`] `[B]` sums, or [`Reference::Free`]), and an optional global pair count.
///
/// All per-pair tensors must be `[B]`, on one device. Computation happens in the dtype of the policy sums
/// (reference sums are converted to it).
///
/// # Errors
/// [`Error::InvalidParameter`] (see [`DpoConfig::validate`]; a non-positive global pair count);
/// [`Error::BatchMismatch`], [`Error::Shape`], [`Error::EmptyBatch`], [`Error::DType`],
/// [`Error::DeviceMismatch`] for inputs; with `validate` and length-normalised IPO,
/// [`Error::NoValidTokens`] for a response with no token.
pub fn dpo_loss(config: &DpoConfig, batch: &PreferenceBatch<'_>) -> Result<DpoOutput> {
    config.validate()?;
    let ratios = LogRatios::new(batch, config.validate)?;
    let per_pair = per_pair_loss(config, batch, &ratios)?;
    let loss = reduce_pairs(&per_pair, batch.global)?;
    let metrics = PreferenceMetrics::new(config.beta, batch, &ratios)?;
    Ok(DpoOutput {
        loss,
        per_pair,
        metrics,
    })
}

/// `Σ per_pair / N` (global pair count) or the mean.
pub(crate) fn reduce_pairs(per_pair: &Tensor, global: Option<GlobalBatch>) -> Result<Tensor> {
    match global {
        None => Ok(per_pair.f_mean(None::<Kind>)?),
        Some(g) => {
            validate::positive_finite("global.pairs", g.pairs)?;
            Ok(per_pair.f_sum(None::<Kind>)?.f_div_scalar(g.pairs)?)
        }
    }
}

/// The log-ratios `ℓ_c`, `ℓ_r` of a validated batch.
pub(crate) struct LogRatios {
    pub chosen: Tensor,
    pub rejected: Tensor,
}

impl LogRatios {
    pub(crate) fn new(batch: &PreferenceBatch<'_>, validate: bool) -> Result<Self> {
        let kind = check_sequences("chosen.sum", "chosen.count", batch.chosen, None)?;
        let b = batch.chosen.len();
        check_sequences("rejected.sum", "rejected.count", batch.rejected, Some(b))?;
        validate::same_device(
            "rejected.sum",
            &batch.rejected.sum,
            "chosen.sum",
            &batch.chosen.sum,
        )?;
        match batch.reference {
            Reference::Free => Ok(Self {
                chosen: batch.chosen.sum.shallow_clone(),
                rejected: batch.rejected.sum.f_to_kind(kind)?,
            }),
            Reference::LogProbs { chosen, rejected } => {
                for (arg, t) in [("reference.chosen", chosen), ("reference.rejected", rejected)] {
                    validate::float_tensor(arg, t)?;
                    validate::per_pair(arg, t, "chosen.sum", Some(b))?;
                    validate::same_device(arg, t, "chosen.sum", &batch.chosen.sum)?;
                    if validate {
                        validate::all_finite(arg, t, "among the reference log-probs")?;
                    }
                }
                Ok(Self {
                    chosen: batch.chosen.sum.f_sub(&chosen.f_to_kind(kind)?)?,
                    rejected: batch
                        .rejected
                        .sum
                        .f_to_kind(kind)?
                        .f_sub(&rejected.f_to_kind(kind)?)?,
                })
            }
        }
    }
}

/// Validates a [`SequenceLogProbs`] argument (`[B]` float sums, `[B]` counts); returns the sums' dtype.
pub(crate) fn check_sequences(
    sum_arg: &'static str,
    count_arg: &'static str,
    s: &SequenceLogProbs,
    expected: Option<i64>,
) -> Result<Kind> {
    let kind = validate::float_tensor(sum_arg, &s.sum)?;
    let b = validate::per_pair(sum_arg, &s.sum, "chosen.sum", expected)?;
    validate::per_pair(count_arg, &s.count, sum_arg, Some(b))?;
    validate::same_device(count_arg, &s.count, sum_arg, &s.sum)?;
    Ok(kind)
}

fn per_pair_loss(config: &DpoConfig, batch: &PreferenceBatch<'_>, r: &LogRatios) -> Result<Tensor> {
    let beta = config.beta;
    let eps = config.label_smoothing;
    let margin = r.chosen.f_sub(&r.rejected)?;
    let z = margin.f_mul_scalar(beta)?;
    let mut total: Option<Tensor> = None;
    for &(variant, weight) in &config.losses {
        let loss = match variant {
            DpoLoss::Sigmoid => {
                let a = z.f_log_sigmoid()?.f_mul_scalar(-(1.0 - eps))?;
                if eps > 0.0 {
                    a.f_sub(&z.f_neg()?.f_log_sigmoid()?.f_mul_scalar(eps)?)?
                } else {
                    a
                }
            }
            DpoLoss::Hinge => z.f_rsub_scalar(1.0)?.f_relu()?,
            DpoLoss::Ipo => {
                let m = if config.ipo_length_normalized {
                    if config.validate {
                        validate::nonzero_counts(
                            "chosen.count",
                            &batch.chosen.count,
                            "length-normalised IPO",
                        )?;
                        validate::nonzero_counts(
                            "rejected.count",
                            &batch.rejected.count,
                            "length-normalised IPO",
                        )?;
                    }
                    let kind = r.chosen.f_kind()?;
                    let c = r.chosen.f_div(&batch.chosen.count.f_to_kind(kind)?)?;
                    let rj = r.rejected.f_div(&batch.rejected.count.f_to_kind(kind)?)?;
                    c.f_sub(&rj)?
                } else {
                    margin.shallow_clone()
                };
                m.f_sub_scalar(1.0 / (2.0 * beta))?.f_square()?
            }
            DpoLoss::Robust => {
                let a = z.f_log_sigmoid()?.f_mul_scalar(-(1.0 - eps))?;
                let b = z.f_neg()?.f_log_sigmoid()?.f_mul_scalar(eps)?;
                a.f_add(&b)?.f_div_scalar(1.0 - 2.0 * eps)?
            }
            DpoLoss::ExoPair => {
                let e = if eps == 0.0 { EXO_DEFAULT_EPSILON } else { eps };
                let pos = z
                    .f_sigmoid()?
                    .f_mul(&z.f_log_sigmoid()?.f_sub_scalar((1.0 - e).ln())?)?;
                let nz = z.f_neg()?;
                let neg = nz
                    .f_sigmoid()?
                    .f_mul(&nz.f_log_sigmoid()?.f_sub_scalar(e.ln())?)?;
                pos.f_add(&neg)?
            }
            DpoLoss::NcaPair => {
                let c = r.chosen.f_mul_scalar(beta)?;
                let rj = r.rejected.f_mul_scalar(beta)?;
                let a = c.f_log_sigmoid()?.f_neg()?;
                let b = c.f_neg()?.f_log_sigmoid()?.f_mul_scalar(0.5)?;
                let d = rj.f_neg()?.f_log_sigmoid()?.f_mul_scalar(0.5)?;
                a.f_sub(&b)?.f_sub(&d)?
            }
            DpoLoss::BcoPair => {
                let c = r.chosen.f_mul_scalar(beta)?.f_sub_scalar(config.bco_delta)?;
                let rj = r.rejected.f_mul_scalar(beta)?.f_sub_scalar(config.bco_delta)?;
                c.f_log_sigmoid()?.f_neg()?.f_sub(&rj.f_neg()?.f_log_sigmoid()?)?
            }
            DpoLoss::SppoHard => {
                let half = 1.0 / (2.0 * beta);
                let a = r.chosen.f_sub_scalar(half)?.f_square()?;
                let b = r.rejected.f_add_scalar(half)?.f_square()?;
                a.f_add(&b)?
            }
            DpoLoss::ApoZero => {
                let a = r.chosen.f_mul_scalar(beta)?.f_sigmoid()?.f_rsub_scalar(1.0)?;
                a.f_add(&r.rejected.f_mul_scalar(beta)?.f_sigmoid()?)?
            }
            DpoLoss::ApoDown => {
                let a = r.chosen.f_mul_scalar(beta)?.f_sigmoid()?;
                a.f_add(&z.f_sigmoid()?.f_rsub_scalar(1.0)?)?
            }
            DpoLoss::DiscoPop => {
                let scaled = z.f_div_scalar(config.discopop_tau)?;
                let m = scaled.f_sigmoid()?;
                let logistic = z.f_log_sigmoid()?.f_neg()?;
                // m·e^{−z} as exp(log σ(z/τ) − z): the naive product is 0·∞ = NaN once e^{−z} overflows.
                let modulated_exp = scaled.f_log_sigmoid()?.f_sub(&z)?.f_exp()?;
                logistic.f_mul(&m.f_rsub_scalar(1.0)?)?.f_add(&modulated_exp)?
            }
        };
        let loss = if weight == 1.0 {
            loss
        } else {
            loss.f_mul_scalar(weight)?
        };
        total = Some(match total {
            None => loss,
            Some(t) => t.f_add(&loss)?,
        });
    }
    total.ok_or(Error::InvalidParameter {
        name: "losses",
        value: 0.0,
        requirement: "at least one (variant, weight) pair is needed",
    })
}
