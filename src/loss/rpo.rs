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
//! | [`RpoConfig::from_trl`]`(β, loss_type, loss_weights)` | the listed TRL losses and weights | `TokenMean` | the weight of `"sft"` |
//!
//! **Warning:** the same number means different things under different normalizations. η·β = 5e-5 on a
//! summed NLL of a 300-token response weighs like 0.015 on its token mean; OpenRLHF's 0.2 on a
//! sequence mean is a much stronger regularizer than the paper's main setting. Convert, don't copy.

use crate::error::{Error, Result};
use crate::logprobs::{sequence_logprobs, LogProbOptions};
use crate::loss::dpo::{dpo_from_pairs, trl_weights, DpoConfig, DpoLoss, DpoOutput};
use crate::loss::sft::{sft_unchecked, SftConfig, SftNormalization, SftOutput};
use crate::loss::{fused_from, GlobalBatch, Pairs, PreferenceBatch, Reference};
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

/// Configuration of [`rpo_loss`]: a DPO config, the SFT coefficient and its normalization.
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
    /// with any reference; [`Reference::Free`] needs none.
    pub fn sft_only(normalization: SftNormalization) -> Self {
        Self {
            dpo: DpoConfig::default().with_losses(vec![(DpoLoss::Sigmoid, 0.0)]),
            sft_weight: SftWeight::Absolute(1.0),
            sft_normalization: normalization,
        }
    }
    /// TRL's `loss_type=[…]`, `loss_weights=[…]` (weights default to 1) with β: `"sft"` becomes the SFT term
    /// (token-mean NLL, coefficient = its weight), every other name a weighted DPO variant ([`DpoLoss`]'s
    /// names). A list with only `"sft"` is [`RpoConfig::sft_only`] at β with the given weight.
    ///
    /// # Errors
    /// As [`DpoLoss::parse_weighted`]; [`Error::Config`] for `"sft"` listed twice.
    pub fn from_trl(beta: f64, loss_type: &[&str], loss_weights: Option<&[f64]>) -> Result<Self> {
        let weights = trl_weights(loss_type.len(), loss_weights)?;
        let mut losses = Vec::new();
        let mut sft = None;
        for (name, w) in loss_type.iter().zip(weights) {
            if *name == "sft" {
                if sft.replace(w).is_some() {
                    return Err(Error::Config {
                        name: "loss_type",
                        requirement: "`sft` is listed twice".into(),
                    });
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

    /// The SFT configuration of the RPO term (its normalization; inputs validated like the DPO part).
    pub fn sft_config(&self) -> SftConfig {
        SftConfig::new(self.sft_normalization).with_validate_inputs(self.dpo.validate_inputs)
    }

    /// The SFT coefficient `c` (η·β or the absolute weight).
    ///
    /// # Errors
    /// [`crate::Error::InvalidParameter`] if η or the weight is negative or non-finite.
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
        return Err(Error::InvalidParameter {
            name,
            value: v,
            requirement: "must be >= 0",
        });
    }
    Ok(())
}

/// Result of [`rpo_loss`].
#[derive(Debug)]
pub struct RpoOutput {
    /// Scalar total `dpo.loss + c · sft.loss` (differentiable).
    pub loss: Tensor,
    /// `[B]` per-pair `dpo_i + c · nll_i`; `loss` is its mean (or `Σ / P` with a [`GlobalBatch`]).
    pub per_pair: Tensor,
    /// The DPO part with its detached metrics.
    pub dpo: DpoOutput,
    /// The SFT part (its `loss` is the `nll` metric).
    pub sft: SftOutput,
    /// The SFT coefficient `c` that was applied.
    pub coefficient: f64,
}

impl RpoOutput {
    /// `loss`, `loss/dpo`, `nll`, then the [`crate::PreferenceMetrics`] names, read back (syncs the device).
    pub fn metric_values(&self) -> Result<Vec<(&'static str, f64)>> {
        let mut out = vec![
            ("loss", self.loss.f_double_value(&[])?),
            ("loss/dpo", self.dpo.loss.f_double_value(&[])?),
            ("nll", self.sft.loss.f_double_value(&[])?),
        ];
        out.extend(self.dpo.metrics.values()?);
        Ok(out)
    }
}

/// The RPO loss on per-sequence log-probs: `dpo_loss + c · sft_loss` on the chosen rows (see the
/// [module docs](self)). `batch` as in [`crate::dpo_loss`]: `[2B]` policy log-probs, chosen rows first.
///
/// # Errors
/// Everything [`crate::dpo_loss`] and [`crate::sft_loss`] return; [`Error::InvalidParameter`] for a
/// negative η or weight.
pub fn rpo_loss(config: &RpoConfig, batch: &PreferenceBatch<'_>) -> Result<RpoOutput> {
    config.validate()?;
    let coefficient = config.coefficient()?;
    let pairs = Pairs::new(batch, config.dpo.validate_inputs)?;
    let dpo = dpo_from_pairs(&config.dpo, &pairs, batch)?;
    let sft = sft_unchecked(&config.sft_config(), &pairs.chosen, batch.global)?;
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

/// The input of [`rpo_loss_from_logits`]: one concatenated forward pass.
#[derive(Debug, Clone)]
pub struct LogitsBatch<'a> {
    /// `[2B, T, V]` policy logits: the `B` chosen rows followed by the `B` rejected rows.
    pub logits: &'a Tensor,
    /// `[2B, T]` i64 labels (the input ids), `options.ignore_index` at prompt and padding positions.
    pub labels: &'a Tensor,
    /// The reference: log-probs `[2B]`, logits `[2B, T, V]`, hidden states + head, or none.
    pub reference: Reference<'a>,
    /// How labels are read and log-probs gathered. Default [`LogProbOptions::default`] (unshifted); use
    /// [`LogProbOptions::causal`] for causal-LM logits.
    pub options: LogProbOptions,
    /// Totals of the whole accumulated step; `None` normalizes within this batch.
    pub global: Option<GlobalBatch>,
}

impl<'a> LogitsBatch<'a> {
    /// A reference-free batch with default options; set the rest with the `with_` methods.
    pub fn new(logits: &'a Tensor, labels: &'a Tensor) -> Self {
        Self {
            logits,
            labels,
            reference: Reference::Free,
            options: LogProbOptions::default(),
            global: None,
        }
    }
    /// Sets the reference.
    pub fn with_reference(mut self, reference: Reference<'a>) -> Self {
        self.reference = reference;
        self
    }
    /// Sets the log-prob options.
    pub fn with_options(mut self, options: LogProbOptions) -> Self {
        self.options = options;
        self
    }
    /// Sets the totals of the whole accumulated step.
    pub fn with_global(mut self, global: GlobalBatch) -> Self {
        self.global = Some(global);
        self
    }
    /// Sets or clears the totals of the whole accumulated step.
    pub fn with_global_opt(mut self, global: Option<GlobalBatch>) -> Self {
        self.global = global;
        self
    }
}

/// RPO straight from one concatenated forward pass ([`LogitsBatch`]): log-probs are gathered with
/// [`sequence_logprobs`] (chunked, f32-accurate), the reference is scored under `no_grad` when it is given as
/// logits or hidden states, then [`rpo_loss`].
///
/// # Errors
/// Everything [`sequence_logprobs`] and [`rpo_loss`] return; [`Error::Shape`] for an odd row count or
/// reference logits / log-probs whose shape differs from the policy's, a reference head with another
/// vocabulary.
pub fn rpo_loss_from_logits(config: &RpoConfig, batch: &LogitsBatch<'_>) -> Result<RpoOutput> {
    config.validate()?;
    let policy = sequence_logprobs(batch.logits, batch.labels, &batch.options)?;
    let shape = batch.logits.size();
    let reference = batch.reference.resolve(
        batch.labels,
        shape[2],
        Some(&shape),
        &fused_from(&batch.options),
        &policy.sum,
    )?;
    let reference = match &reference {
        Some(sums) => Reference::LogProbs(sums),
        None => Reference::Free,
    };
    rpo_loss(
        config,
        &PreferenceBatch::new(&policy, reference).with_global_opt(batch.global),
    )
}
