//! RPO (Regularized Preference Optimization): a DPO-family loss plus a weighted SFT term on the chosen
//! responses (Liu et al., NeurIPS 2024, eq. 4.8):
//!
//! ```text
//! L_RPO = η·β · E[−log π_θ(y_w | x)]  +  E[−log σ(β·(ℓ_c − ℓ_r))]
//! ```
//!
//! with `log π(y|x)` the **sum** over response tokens. Per pair, as in the official code,
//! `loss_i = dpo_i + c · nll_i`, then the mean over pairs. The DPO part may be any configured variant.
//!
//! # Presets
//!
//! | preset | DPO | SFT term | coefficient `c` |
//! |---|---|---|---|
//! | [`RpoConfig::default`] = [`RpoConfig::paper_beta_series`] | sigmoid, β = 0.01 | `SequenceSum` | η·β, η = 0.005 (= 5e-5) |
//! | [`RpoConfig::paper_gemma_series`] | sigmoid, β = 0.05 | `SequenceSum` | η·β, η = 0.005 (= 2.5e-4) |
//! | [`RpoConfig::paper`]`(β, η)` | sigmoid, β | `SequenceSum` | η·β |
//! | [`RpoConfig::openrlhf`]`(β, coef)` | sigmoid, β | `SequenceMean` | `coef` (OpenRLHF default 0.2, no β) |
//! | [`RpoConfig::trl`]`(β, w)` | sigmoid, β | `TokenMean` | `w` (TRL recipe 0.005) |
//! | [`RpoConfig::sft_only`]`(norm)` | weight 0, β = 0.1 (rewards still logged at β) | `norm` | 1 (plain SFT) |
//! | [`RpoConfig::from_trl`]`(β, loss_type, loss_weights, ε)` | the listed TRL losses and weights, label smoothing ε | `TokenMean` | the weight of `"sft"` |
//!
//! **Warning:** the same number means different things under different normalizations. η·β = 5e-5 on a
//! summed NLL of a 300-token response weighs like 0.015 on its token mean; OpenRLHF's 0.2 on a
//! sequence mean is a much stronger regularizer than the paper's main setting. Convert, don't copy.

use crate::error::{Error, InputError, Result};
use crate::loss::dpo::{dpo_from_pairs, trl_weights, DpoConfig, DpoLoss, DpoOutput};
use crate::loss::objective::Pairs;
use crate::loss::sft::{check_targets, sft_of, SftConfig, SftNormalization, SftOutput};
use crate::loss::{Objective, RowLayout, Sequences};
use crate::validate;
use tch::Tensor;

/// The paper's η (both experiment series).
pub const PAPER_ETA: f64 = 0.005;

/// How the SFT coefficient `c` is given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SftWeight {
    /// `c = η·β` (the paper's parameterization; β from the DPO config).
    EtaBeta {
        /// η ≥ 0.
        eta: f64,
    },
    /// `c` given directly (OpenRLHF's `nll_loss_coef`, TRL's loss weight, Liger's `alpha`).
    Absolute(f64),
}

/// Configuration of the RPO loss: a DPO config, the SFT coefficient and its normalization. An [`Objective`]
/// over preference pairs, run at any input level by [`crate::compute_loss`].
#[derive(Debug, Clone, PartialEq)]
pub struct RpoConfig {
    /// The DPO-family part (β, variants, label smoothing).
    pub dpo: DpoConfig,
    /// The SFT coefficient.
    pub sft_weight: SftWeight,
    /// How the chosen NLL is normalized.
    pub sft_normalization: SftNormalization,
}

impl Default for RpoConfig {
    /// The paper's main ("beta") series: sigmoid DPO, β = 0.01, plus η·β = 5e-5 times the summed chosen NLL.
    fn default() -> Self {
        Self::paper_beta_series()
    }
}

impl RpoConfig {
    /// The paper's objective with a given β and η: sigmoid DPO + η·β · summed chosen NLL (mean over pairs).
    pub fn paper(beta: f64, eta: f64) -> Self {
        Self {
            dpo: DpoConfig::new(DpoLoss::Sigmoid, beta),
            sft_weight: SftWeight::EtaBeta { eta },
            sft_normalization: SftNormalization::SequenceSum,
        }
    }
    /// The "beta" series (mistral-7b-sft-beta on UltraFeedback): β = 0.01, η = 0.005.
    pub fn paper_beta_series() -> Self {
        Self::paper(0.01, PAPER_ETA)
    }
    /// The "gemma" series (zephyr-7b-gemma-sft on argilla/dpo-mix-7k): β = 0.05, η = 0.005.
    pub fn paper_gemma_series() -> Self {
        Self::paper(0.05, PAPER_ETA)
    }
    /// OpenRLHF-style: sigmoid DPO + `nll_loss_coef` × per-sequence token-mean NLL (the paper's appendix
    /// script uses 0.2).
    pub fn openrlhf(beta: f64, nll_loss_coef: f64) -> Self {
        Self {
            dpo: DpoConfig::new(DpoLoss::Sigmoid, beta),
            sft_weight: SftWeight::Absolute(nll_loss_coef),
            sft_normalization: SftNormalization::SequenceMean,
        }
    }
    /// TRL-style (`loss_type=["sigmoid", "sft"]`): sigmoid DPO + `sft_weight` × global token-mean NLL.
    pub fn trl(beta: f64, sft_weight: f64) -> Self {
        Self {
            dpo: DpoConfig::new(DpoLoss::Sigmoid, beta),
            sft_weight: SftWeight::Absolute(sft_weight),
            sft_normalization: SftNormalization::TokenMean,
        }
    }
    /// Plain SFT on the chosen responses (e.g. to train the reference policy before DPO/RPO): the DPO term
    /// has weight 0 and the NLL coefficient is 1. β keeps [`DpoConfig::default`]'s 0.1 (change it with
    /// [`RpoConfig::with_beta`]): like TRL's `loss_type=["sft"]`, the rewards are still logged at β. Works
    /// with any reference; [`crate::Reference::Free`] needs none.
    pub fn sft_only(normalization: SftNormalization) -> Self {
        Self {
            dpo: DpoConfig::default().with_losses(vec![(DpoLoss::Sigmoid, 0.0)]),
            sft_weight: SftWeight::Absolute(1.0),
            sft_normalization: normalization,
        }
    }
    /// TRL's `DPOConfig(beta, loss_type=[…], loss_weights=[…], label_smoothing)` (weights default to 1):
    /// `"sft"` becomes the SFT term (token-mean NLL, coefficient = its weight), every other name a weighted
    /// DPO variant ([`DpoLoss`]'s names) with label smoothing ε = `label_smoothing` (pass 0 for TRL's
    /// default). A list with only `"sft"` is [`RpoConfig::sft_only`] at β with the given weight. So
    /// `["exo_pair", "sft"]` with ε = 1e-3 is one call.
    ///
    /// # Errors
    /// As [`DpoLoss::parse_weighted`]; [`InputError::Config`] for `"sft"` listed twice. ε itself is checked with
    /// the rest of the configuration by [`RpoConfig::validate`] (when the loss runs).
    pub fn from_trl(
        beta: f64,
        loss_type: &[&str],
        loss_weights: Option<&[f64]>,
        label_smoothing: f64,
    ) -> Result<Self> {
        let weights = trl_weights(loss_type.len(), loss_weights)?;
        let mut losses = Vec::new();
        let mut sft = None;
        for (name, w) in loss_type.iter().zip(weights) {
            if *name == "sft" {
                if sft.replace(w).is_some() {
                    return Err(Error::Input(InputError::Config {
                        name: "loss_type",
                        requirement: "`sft` is listed twice".into(),
                    }));
                }
            } else {
                losses.push((name.parse::<DpoLoss>()?, w));
            }
        }
        if losses.is_empty() {
            losses.push((DpoLoss::Sigmoid, 0.0));
        }
        Ok(Self {
            dpo: DpoConfig {
                beta,
                losses,
                label_smoothing,
                ..DpoConfig::default()
            },
            sft_weight: SftWeight::Absolute(sft.unwrap_or(0.0)),
            sft_normalization: SftNormalization::TokenMean,
        })
    }
    /// Sets the DPO part's β (and with [`SftWeight::EtaBeta`] the coefficient η·β).
    pub fn with_beta(mut self, beta: f64) -> Self {
        self.dpo.beta = beta;
        self
    }
    /// Replaces the DPO part (keeps the SFT weight and normalization).
    pub fn with_dpo(mut self, dpo: DpoConfig) -> Self {
        self.dpo = dpo;
        self
    }

    /// Checks the DPO part ([`DpoConfig::validate`]) and the SFT coefficient ([`RpoConfig::coefficient`]).
    ///
    /// # Errors
    /// As those two.
    pub fn validate(&self) -> Result<()> {
        self.dpo.validate()?;
        self.coefficient()?;
        Ok(())
    }

    /// The SFT configuration of the RPO term (its normalization).
    pub fn sft_config(&self) -> SftConfig {
        SftConfig::new(self.sft_normalization)
    }

    /// The SFT coefficient `c` (η·β or the absolute weight).
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`] if η or the weight is negative or non-finite.
    pub fn coefficient(&self) -> Result<f64> {
        match self.sft_weight {
            SftWeight::EtaBeta { eta } => {
                non_negative("eta", eta)?;
                Ok(eta * self.dpo.beta)
            }
            SftWeight::Absolute(c) => {
                non_negative("sft_weight", c)?;
                Ok(c)
            }
        }
    }

    /// The objective in words, e.g. `"sigmoid DPO (β=0.01) + 5e-5 · sequence_sum NLL(chosen)"`.
    pub fn describe(&self) -> String {
        let dpo = self
            .dpo
            .losses
            .iter()
            .map(|(l, w)| {
                if *w == 1.0 {
                    l.name().to_string()
                } else {
                    format!("{w}·{}", l.name())
                }
            })
            .collect::<Vec<_>>()
            .join(" + ");
        let c = match self.coefficient() {
            Ok(c) => format!("{c:e}"),
            Err(_) => "<invalid>".to_string(),
        };
        format!(
            "{dpo} DPO (β={}) + {c} · {} NLL(chosen)",
            self.dpo.beta,
            self.sft_normalization.name()
        )
    }
}

fn non_negative(name: &'static str, v: f64) -> Result<()> {
    validate::finite(name, v)?;
    if v < 0.0 {
        return Err(Error::Input(InputError::InvalidParameter {
            name,
            value: v.into(),
            requirement: "must be >= 0",
        }));
    }
    Ok(())
}

/// Result of the RPO loss ([`RpoConfig`] through [`crate::compute_loss`]).
#[derive(Debug)]
pub struct RpoOutput {
    /// Scalar total `dpo.loss + c · sft.loss` (differentiable).
    pub loss: Tensor,
    /// `[B]` per-pair `dpo_i + c · nll_i`; `loss` is its mean (or `Σ / P` with a [`crate::GlobalBatch`]).
    /// Detached on the hidden-state level, like the parts.
    pub per_pair: Tensor,
    /// The DPO part with its detached metrics.
    pub dpo: DpoOutput,
    /// The SFT part (its `loss` is the `nll` metric).
    pub sft: SftOutput,
    /// The SFT coefficient `c` that was applied.
    pub coefficient: f64,
}

impl RpoOutput {
    /// The 0-dim tensor of the metric `name` ([`crate::loss::metrics::METRICS`]): `loss`, `loss/dpo`
    /// (the DPO part), `nll` (the SFT part), or a [`crate::PreferenceMetrics`] mean; `None` for a token
    /// statistic that was not computed or an unknown name. No device sync.
    pub fn metric(&self, name: &str) -> Option<&Tensor> {
        match name {
            "loss" => Some(&self.loss),
            "loss/dpo" => Some(&self.dpo.loss),
            "nll" => Some(&self.sft.loss),
            _ => self.dpo.metrics.mean(name),
        }
    }

    /// `(name, value)` of every metric [`RpoOutput::metric`] finds, in
    /// [`crate::loss::metrics::METRICS`] order (`loss`, `loss/dpo`, `nll`, then the
    /// [`crate::PreferenceMetrics`] names), read back (syncs the device).
    pub fn metric_values(&self) -> Result<Vec<(&'static str, f64)>> {
        crate::loss::metrics::read_values(|name| self.metric(name))
    }
}

/// The RPO loss of `[2B]` policy log-probs (chosen rows first): `dpo + c · sft` on the chosen rows, per pair
/// (see the [module docs](self)).
///
/// # Errors
/// Everything the [`DpoConfig`] and [`SftConfig`] objectives return; [`InputError::InvalidParameter`](crate::InputError::InvalidParameter) for a
/// negative η or weight.
impl Objective for RpoConfig {
    type Output = RpoOutput;

    fn layout(&self) -> RowLayout {
        RowLayout::Pairs
    }

    fn validate(&self) -> Result<()> {
        RpoConfig::validate(self)
    }

    fn check_inputs(&self, sequences: &Sequences<'_>) -> Result<()> {
        self.dpo.check_inputs(sequences)?;
        let (chosen, _) = sequences.policy.split_pairs()?;
        check_targets(self.sft_normalization, &chosen, sequences.global)
    }

    fn evaluate(&self, sequences: &Sequences<'_>) -> Result<RpoOutput> {
        let coefficient = self.coefficient()?;
        let pairs = Pairs::new(sequences)?;
        let dpo = dpo_from_pairs(&self.dpo, &pairs, sequences)?;
        let sft = sft_of(self.sft_normalization, &pairs.chosen, sequences.global)?;
        let (loss, per_pair) = if coefficient == 0.0 {
            (dpo.loss.shallow_clone(), dpo.per_pair.shallow_clone())
        } else {
            (
                dpo.loss.f_add(&sft.loss.f_mul_scalar(coefficient)?)?,
                dpo.per_pair.f_add(&sft.per_sequence.f_mul_scalar(coefficient)?)?,
            )
        };
        Ok(RpoOutput {
            loss,
            per_pair,
            dpo,
            sft,
            coefficient,
        })
    }

    fn loss(output: &RpoOutput) -> &Tensor {
        &output.loss
    }

    fn with_fused_loss(output: RpoOutput, loss: Tensor) -> Result<RpoOutput> {
        let (dpo_loss, sft_loss) = (output.dpo.loss.f_detach()?, output.sft.loss.f_detach()?);
        Ok(RpoOutput {
            loss,
            per_pair: output.per_pair.f_detach()?,
            dpo: output.dpo.with_fused_loss(dpo_loss)?,
            sft: output.sft.with_fused_loss(sft_loss)?,
            coefficient: output.coefficient,
        })
    }
}
