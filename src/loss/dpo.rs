//! The DPO family on per-sequence log-probabilities.
//!
//! Notation (all per pair `i`, sums over response tokens):
//! `ℓ_c = log π_θ(y_w) − log π_ref(y_w)`, `ℓ_r = log π_θ(y_l) − log π_ref(y_l)` (reference-free:
//! `ℓ = log π_θ`), `Δ = ℓ_c − ℓ_r`, `ε` = label smoothing, `σ` the logistic function.
//!
//! | [`DpoLoss`] (TRL `loss_type`) | per-pair loss |
//! |---|---|
//! | `Sigmoid` (`sigmoid`, DPO) | `−log σ(βΔ)` (refuses ε > 0: TRL's `sigmoid` ignores label smoothing) |
//! | `Cdpo` (`cdpo`, not a TRL name) | `−(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)` (conservative DPO; ε = 0 is `sigmoid` exactly) |
//! | `SigmoidNorm` (`sigmoid_norm`) | `−log σ(β·(ℓ_c/n_c − ℓ_r/n_r))`, `n` the scored-token counts |
//! | `Hinge` (`hinge`) | `relu(1 − βΔ)` |
//! | `Ipo` (`ipo`) | `(ℓ_c/n_c − ℓ_r/n_r − 1/(2β))²`; un-normalised `(Δ − 1/(2β))²` with `ipo_length_normalized = false` |
//! | `Robust` (`robust`) | `[−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)] / (1 − 2ε)` |
//! | `ExoPair` (`exo_pair`) | `σ(βΔ)·[log σ(βΔ) − log(1−ε)] + σ(−βΔ)·[log σ(−βΔ) − log ε]`, ε > 0 required (as TRL) |
//! | `NcaPair` (`nca_pair`) | `−log σ(βℓ_c) − ½·log σ(−βℓ_c) − ½·log σ(−βℓ_r)` |
//! | `BcoPair` (`bco_pair`) | `−log σ(βℓ_c − δ) − log σ(−(βℓ_r − δ))` |
//! | `SppoHard` (`sppo_hard`) | `(ℓ_c − 1/(2β))² + (ℓ_r + 1/(2β))²` |
//! | `ApoZero` (`apo_zero`) | `1 − σ(βℓ_c) + σ(βℓ_r)` |
//! | `ApoDown` (`apo_down`) | `σ(βℓ_c) + 1 − σ(βΔ)` |
//! | `DiscoPop` (`discopop`) | `z = βΔ, m = σ(z/τ)`: `(1−m)·(−log σ(z)) + m·e^{−z}` |
//!
//! `n_c`, `n_r` are the scored-token counts of [`crate::SequenceLogProbs::count`] (TRL's `ipo` divides by its
//! completion-mask count; pass that count in [`crate::SequenceLogProbs::new`] to reproduce it exactly).
//!
//! Several variants can be combined with weights ([`DpoConfig::losses`], or TRL's `loss_type=[…]`,
//! `loss_weights=[…]` through [`DpoLoss::parse_weighted`]): the per-pair loss is `Σ_k w_k · loss_k`. The
//! reduced loss is the mean over pairs, or `Σ_i loss_i / N` with an explicit global pair count `N`
//! ([`crate::GlobalBatch`]) for gradient accumulation.

use crate::error::{Error, InputError, Result};
use crate::logprobs::split_rows;
use crate::loss::metrics::PreferenceMetrics;
use crate::loss::objective::{reduce_pairs, Accumulator, Pairs};
use crate::loss::{Objective, RowLayout, Sequences};
use crate::validate;
use std::fmt;
use std::str::FromStr;
use tch::Tensor;

/// One member of the DPO family (formulas in the [module docs](self)). Names follow TRL's `loss_type`
/// ([`fmt::Display`] writes them, [`FromStr`] reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DpoLoss {
    /// `sigmoid`: DPO.
    Sigmoid,
    /// `cdpo`: conservative DPO with label smoothing ε (what TRL's `sigmoid` computed before it stopped
    /// reading `label_smoothing`; not a TRL name). With ε = 0 it is [`DpoLoss::Sigmoid`], bit for bit.
    Cdpo,
    /// `sigmoid_norm`: DPO on length-normalized log-ratios (TRL 1.16).
    SigmoidNorm,
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
    pub const ALL: [DpoLoss; 13] = [
        DpoLoss::Sigmoid,
        DpoLoss::Cdpo,
        DpoLoss::SigmoidNorm,
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

    /// TRL's name for the variant (`"sigmoid"`, `"ipo"`, …; `"cdpo"` is ours).
    pub fn name(self) -> &'static str {
        match self {
            DpoLoss::Sigmoid => "sigmoid",
            DpoLoss::Cdpo => "cdpo",
            DpoLoss::SigmoidNorm => "sigmoid_norm",
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

    /// Whether the variant reads the label smoothing ε.
    pub fn uses_label_smoothing(self) -> bool {
        matches!(self, DpoLoss::Cdpo | DpoLoss::Robust | DpoLoss::ExoPair)
    }

    /// Whether the variant divides log-ratios by token counts.
    fn length_normalized(self, config: &DpoConfig) -> bool {
        match self {
            DpoLoss::SigmoidNorm => true,
            DpoLoss::Ipo => config.ipo_length_normalized,
            _ => false,
        }
    }

    /// A weighted list of variants from TRL's `loss_type=[…]` and `loss_weights=[…]` (weights default to 1,
    /// as in TRL).
    ///
    /// # Errors
    /// [`InputError::Config`] for an unknown name (or `"sft"`, which is not a DPO loss: use
    /// [`crate::RpoConfig::from_trl`]) or a weight list of another length; [`InputError::InvalidParameter`] for
    /// a non-finite weight.
    pub fn parse_weighted(loss_type: &[&str], loss_weights: Option<&[f64]>) -> Result<Vec<(DpoLoss, f64)>> {
        let weights = trl_weights(loss_type.len(), loss_weights)?;
        loss_type
            .iter()
            .zip(weights)
            .map(|(name, w)| Ok((name.parse::<DpoLoss>()?, w)))
            .collect()
    }
}

/// TRL's `loss_weights` for `n` loss types: all 1 when absent.
pub(crate) fn trl_weights(n: usize, loss_weights: Option<&[f64]>) -> Result<Vec<f64>> {
    if n == 0 {
        return Err(Error::Input(InputError::Config {
            name: "loss_type",
            requirement: "at least one loss type is needed".into(),
        }));
    }
    match loss_weights {
        None => Ok(vec![1.0; n]),
        Some(w) if w.len() == n => {
            for &x in w {
                validate::finite("loss_weights[]", x)?;
            }
            Ok(w.to_vec())
        }
        Some(w) => Err(Error::Input(InputError::Config {
            name: "loss_weights",
            requirement: format!("needs one weight per loss type: {n} types, {} weights", w.len()),
        })),
    }
}

impl fmt::Display for DpoLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DpoLoss {
    type Err = Error;

    /// Parses a TRL `loss_type` name (exact, lower case).
    fn from_str(s: &str) -> Result<Self> {
        if let Some(l) = DpoLoss::ALL.into_iter().find(|l| l.name() == s) {
            return Ok(l);
        }
        let requirement = match s {
            "sft" => {
                "`sft` is the NLL term, not a DPO loss: use RpoConfig::from_trl for TRL's loss_type lists \
                      that contain it"
                    .to_string()
            }
            "aot" | "aot_pair" | "aot_unpaired" => format!("TRL's `{s}` is not implemented"),
            _ => format!(
                "unknown DPO loss `{s}`; known: {}",
                DpoLoss::ALL.map(DpoLoss::name).join(", ")
            ),
        };
        Err(Error::Input(InputError::Config {
            name: "loss_type",
            requirement,
        }))
    }
}

/// The smallest β the quadratic losses (`ipo`, `sppo_hard`) accept: their target `1/(2β)` squared must stay
/// finite in f32 (below ≈ 2.7e-20 the loss is `inf`).
pub const MIN_QUADRATIC_BETA: f64 = 1e-19;

/// Configuration of the DPO-family loss: an [`Objective`] over preference pairs ([`RowLayout::Pairs`]), run
/// at any input level by [`crate::compute_loss`].
#[derive(Debug, Clone, PartialEq)]
pub struct DpoConfig {
    /// β > 0: inverse temperature of the implicit reward `β·ℓ`. Default 0.1.
    pub beta: f64,
    /// Label smoothing ε ∈ [0, 0.5), read by `cdpo`, `robust` and `exo_pair` (which needs ε > 0). Default 0.
    /// (Input validation is [`crate::LogProbOptions::validate_inputs`], in the batch.)
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
    /// [`InputError::InvalidParameter`] for β ≤ 0 or non-finite, ε outside `[0, 0.5)`, τ ≤ 0, a non-finite δ,
    /// an empty loss list, a non-finite weight, β below [`MIN_QUADRATIC_BETA`] with `ipo` / `sppo_hard`;
    /// [`InputError::Config`] where TRL's semantics differ from a naive reading: `sigmoid` with ε > 0 (TRL
    /// ignores ε; use `cdpo`), `exo_pair` with ε = 0 (TRL refuses it), ε > 0 with no variant that reads it.
    /// `cdpo` with ε = 0 is accepted (it is `sigmoid`).
    pub fn validate(&self) -> Result<()> {
        validate::positive_finite("beta", self.beta)?;
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "label_smoothing",
                value: self.label_smoothing.into(),
                requirement: "must lie in [0, 0.5)",
            }));
        }
        validate::positive_finite("discopop_tau", self.discopop_tau)?;
        validate::finite("bco_delta", self.bco_delta)?;
        if self.losses.is_empty() {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "losses",
                value: "[]".into(),
                requirement: "at least one (variant, weight) pair is needed",
            }));
        }
        let eps = self.label_smoothing;
        for &(variant, w) in &self.losses {
            validate::finite("losses[].weight", w)?;
            match variant {
                DpoLoss::Sigmoid if eps > 0.0 => {
                    return Err(Error::Input(InputError::Config {
                        name: "label_smoothing",
                        requirement: format!(
                            "{eps} with `sigmoid`: TRL's sigmoid ignores label_smoothing, a smoothed sigmoid \
                             is conservative DPO — use DpoLoss::Cdpo (`cdpo`) for it, or set label_smoothing = 0"
                        ),
                    }));
                }
                DpoLoss::ExoPair if eps == 0.0 => {
                    return Err(Error::Input(InputError::Config {
                        name: "label_smoothing",
                        requirement:
                            "`exo_pair` needs label_smoothing > 0 (its loss has log ε); TRL refuses 0 \
                                      too and suggests 1e-3"
                                .into(),
                    }));
                }
                DpoLoss::Ipo | DpoLoss::SppoHard if self.beta < MIN_QUADRATIC_BETA => {
                    return Err(Error::Input(InputError::InvalidParameter {
                        name: "beta",
                        value: self.beta.into(),
                        requirement: "must be >= 1e-19 for `ipo` / `sppo_hard`: their target 1/(2β) squared \
                                      overflows f32 below that",
                    }));
                }
                _ => {}
            }
        }
        if eps > 0.0 && !self.losses.iter().any(|(l, _)| l.uses_label_smoothing()) {
            return Err(Error::Input(InputError::Config {
                name: "label_smoothing",
                requirement: format!(
                    "{eps} but no configured loss reads it (only cdpo, robust and exo_pair do): it would be \
                     silently ignored"
                ),
            }));
        }
        Ok(())
    }
}

/// Result of the DPO-family loss ([`DpoConfig`] through [`crate::compute_loss`]).
#[derive(Debug)]
pub struct DpoOutput {
    /// Scalar loss (differentiable): mean of `per_pair`, or `Σ per_pair / N` with a [`crate::GlobalBatch`].
    pub loss: Tensor,
    /// `[B]` per-pair loss (weighted sum over the configured variants); differentiable, except on the
    /// hidden-state level (detached there).
    pub per_pair: Tensor,
    /// Detached metrics: batch means and the per-pair log-probs and rewards.
    pub metrics: PreferenceMetrics,
}

impl DpoOutput {
    /// This output with `loss` in place of its loss and `per_pair` detached.
    pub(crate) fn with_fused_loss(self, loss: Tensor) -> Result<Self> {
        Ok(Self {
            loss,
            per_pair: self.per_pair.f_detach()?,
            metrics: self.metrics,
        })
    }
}

/// The DPO-family loss of `[2B]` policy log-probs (chosen rows first) and the reference (computation in the
/// dtype of the policy sums; reference sums are converted to it).
///
/// # Errors
/// [`DpoConfig::validate`] ([`InputError::InvalidParameter`](crate::InputError::InvalidParameter) / [`InputError::Config`](crate::InputError::Config)); with `validate_inputs`
/// ([`Objective::check_inputs`]) [`InputError::NoValidTokens`](crate::InputError::NoValidTokens) for a response with no token under a
/// length-normalized variant; [`InputError::InvalidParameter`](crate::InputError::InvalidParameter) for a non-positive global pair count.
impl Objective for DpoConfig {
    type Output = DpoOutput;

    fn layout(&self) -> RowLayout {
        RowLayout::Pairs
    }

    fn validate(&self) -> Result<()> {
        DpoConfig::validate(self)
    }

    fn check_inputs(&self, sequences: &Sequences<'_>) -> Result<()> {
        if self.losses.iter().any(|(l, _)| l.length_normalized(self)) {
            let what = "a length-normalized DPO loss (sigmoid_norm, ipo)";
            let (chosen, rejected) = split_rows("policy.count", &sequences.policy.count)?;
            validate::nonzero_counts("policy.count (chosen rows)", &chosen, what)?;
            validate::nonzero_counts("policy.count (rejected rows)", &rejected, what)?;
        }
        Ok(())
    }

    fn evaluate(&self, sequences: &Sequences<'_>) -> Result<DpoOutput> {
        dpo_from_pairs(self, &Pairs::new(sequences)?, sequences)
    }

    fn loss(output: &DpoOutput) -> &Tensor {
        &output.loss
    }

    fn with_fused_loss(output: DpoOutput, loss: Tensor) -> Result<DpoOutput> {
        output.with_fused_loss(loss)
    }
}

/// The DPO loss on split pairs.
pub(crate) fn dpo_from_pairs(
    config: &DpoConfig,
    pairs: &Pairs,
    sequences: &Sequences<'_>,
) -> Result<DpoOutput> {
    let per_pair = per_pair_loss(config, pairs)?;
    let loss = reduce_pairs(&per_pair, sequences.global)?;
    let metrics = PreferenceMetrics::new(config.beta, pairs)?;
    Ok(DpoOutput {
        loss,
        per_pair,
        metrics,
    })
}

/// `(ℓ_c/n_c, ℓ_r/n_r)` (counts checked by [`Objective::check_inputs`]).
fn normalized_ratios(p: &Pairs) -> Result<(Tensor, Tensor)> {
    let kind = p.ratios.chosen.f_kind()?;
    Ok((
        p.ratios.chosen.f_div(&p.chosen.count.f_to_kind(kind)?)?,
        p.ratios.rejected.f_div(&p.rejected.count.f_to_kind(kind)?)?,
    ))
}

fn per_pair_loss(config: &DpoConfig, p: &Pairs) -> Result<Tensor> {
    let r = &p.ratios;
    let beta = config.beta;
    let eps = config.label_smoothing;
    let margin = r.chosen.f_sub(&r.rejected)?;
    let z = margin.f_mul_scalar(beta)?;
    let needs_norm = config.losses.iter().any(|(l, _)| l.length_normalized(config));
    let normalized_margin = if needs_norm {
        let (c, rj) = normalized_ratios(p)?;
        Some(c.f_sub(&rj)?)
    } else {
        None
    };
    let mut total = Accumulator::default();
    for &(variant, weight) in &config.losses {
        let loss = match variant {
            // cdpo at ε = 0 is sigmoid (the ε·log σ(−z) term would turn 0·(−inf) into NaN for large z).
            DpoLoss::Sigmoid => z.f_log_sigmoid()?.f_neg()?,
            DpoLoss::Cdpo if eps == 0.0 => z.f_log_sigmoid()?.f_neg()?,
            DpoLoss::Cdpo => {
                let a = z.f_log_sigmoid()?.f_mul_scalar(-(1.0 - eps))?;
                a.f_sub(&z.f_neg()?.f_log_sigmoid()?.f_mul_scalar(eps)?)?
            }
            DpoLoss::SigmoidNorm => match &normalized_margin {
                Some(m) => m.f_mul_scalar(beta)?.f_log_sigmoid()?.f_neg()?,
                None => unreachable_norm()?,
            },
            DpoLoss::Hinge => z.f_rsub_scalar(1.0)?.f_relu()?,
            DpoLoss::Ipo => {
                let m = match (&normalized_margin, config.ipo_length_normalized) {
                    (Some(m), true) => m.shallow_clone(),
                    (_, false) => margin.shallow_clone(),
                    (None, true) => unreachable_norm()?,
                };
                m.f_sub_scalar(1.0 / (2.0 * beta))?.f_square()?
            }
            DpoLoss::Robust => {
                let a = z.f_log_sigmoid()?.f_mul_scalar(-(1.0 - eps))?;
                let b = z.f_neg()?.f_log_sigmoid()?.f_mul_scalar(eps)?;
                a.f_add(&b)?.f_div_scalar(1.0 - 2.0 * eps)?
            }
            DpoLoss::ExoPair => {
                let pos = z
                    .f_sigmoid()?
                    .f_mul(&z.f_log_sigmoid()?.f_sub_scalar((1.0 - eps).ln())?)?;
                let nz = z.f_neg()?;
                let neg = nz
                    .f_sigmoid()?
                    .f_mul(&nz.f_log_sigmoid()?.f_sub_scalar(eps.ln())?)?;
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
        total.add(if weight == 1.0 {
            loss
        } else {
            loss.f_mul_scalar(weight)?
        })?;
    }
    total
        .into_inner()
        .ok_or(Error::Input(InputError::InvalidParameter {
            name: "losses",
            value: "[]".into(),
            requirement: "at least one (variant, weight) pair is needed",
        }))
}

/// The normalized margin is computed whenever a length-normalized variant is configured.
fn unreachable_norm() -> Result<Tensor> {
    Err(Error::Internal {
        what: "a length-normalized DPO variant without its normalized margin".into(),
    })
}
