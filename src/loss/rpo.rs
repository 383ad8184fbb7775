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
//! | [`RpoConfig::sft_only`]`(norm)` | weight 0 | `norm` | 1 (plain SFT, reference-free) |
//!
//! **Warning:** the same number means different things under different normalizations. η·β = 5e-5 on a
//! summed NLL of a 300-token response weighs like 0.015 on its token mean; OpenRLHF's 0.2 on a
//! sequence mean is a much stronger regularizer than the paper's main setting. Convert, don't copy.

use crate::error::Result;
use crate::logprobs::{sequence_logprobs, LogProbOptions, SequenceLogProbs};
use crate::loss::dpo::{dpo_loss, DpoConfig, DpoLoss, DpoOutput};
use crate::loss::sft::{sft_loss, SftNormalization, SftOutput};
use crate::loss::{GlobalBatch, PreferenceBatch, Reference};
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
    /// has weight 0 and the NLL coefficient is 1. Use it with [`Reference::Free`]: no reference is needed.
    pub fn sft_only(normalization: SftNormalization) -> Self {
        Self {
            dpo: DpoConfig::new(DpoLoss::Sigmoid, 1.0).with_losses(vec![(DpoLoss::Sigmoid, 0.0)]),
            sft_weight: SftWeight::Absolute(1.0),
            sft_normalization: normalization,
        }
    }
    /// Replaces the DPO part (keeps the SFT weight and normalization).
    pub fn with_dpo(mut self, dpo: DpoConfig) -> Self {
        self.dpo = dpo;
        self
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
        return Err(crate::Error::InvalidParameter {
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

/// The RPO loss on per-sequence log-probs: `dpo_loss + c · sft_loss` (see the [module docs](self)).
///
/// # Errors
/// Everything [`dpo_loss`] and [`sft_loss`] return; [`crate::Error::InvalidParameter`] for a negative η or
/// weight.
pub fn rpo_loss(config: &RpoConfig, batch: &PreferenceBatch<'_>) -> Result<RpoOutput> {
    let coefficient = config.coefficient()?;
    let dpo = dpo_loss(&config.dpo, batch)?;
    let sft = sft_loss(
        config.sft_normalization,
        batch.chosen,
        batch.global,
        config.dpo.validate,
    )?;
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

/// The reference side for [`rpo_loss_from_logits`].
#[derive(Debug)]
pub enum ReferenceLogits<'a> {
    /// The reference model's logits for the same `[2B, T]` rows, `[2B, T, V]` (computed under no_grad).
    Logits(&'a Tensor),
    /// Precomputed summed reference log-probs `[2B]` (chosen rows first), e.g. cached in a dataset pass.
    LogProbs(&'a Tensor),
    /// Reference-free.
    Free,
}

/// RPO straight from one concatenated forward pass: `policy_logits` `[2B, T, V]` and `labels` `[2B, T]`
/// hold the `B` chosen rows followed by the `B` rejected rows; prompt and padding positions carry
/// `options.ignore_index`. Log-probs are gathered with [`sequence_logprobs`] (chunked, f32-accurate).
///
/// # Errors
/// Everything [`sequence_logprobs`] and [`rpo_loss`] return; [`crate::Error::Shape`] for an odd row count or
/// reference logits / log-probs whose shape differs from the policy's.
pub fn rpo_loss_from_logits(
    config: &RpoConfig,
    policy_logits: &Tensor,
    labels: &Tensor,
    reference: ReferenceLogits<'_>,
    options: &LogProbOptions,
    global: Option<GlobalBatch>,
) -> Result<RpoOutput> {
    let policy = sequence_logprobs(policy_logits, labels, options)?;
    let (chosen, rejected) = policy.split_pairs()?;
    let reference_sums = match reference {
        ReferenceLogits::Logits(logits) => {
            if logits.size() != policy_logits.size() {
                return Err(crate::Error::Shape {
                    arg: "reference logits",
                    expected: format!("the policy logits' shape {:?}", policy_logits.size()),
                    got: logits.size(),
                });
            }
            Some(tch::no_grad(|| sequence_logprobs(logits, labels, options))?.sum)
        }
        ReferenceLogits::LogProbs(sums) => {
            validate::float_tensor("reference log-probs", sums)?;
            validate::per_pair("reference log-probs", sums, "policy rows", Some(policy.len()))?;
            Some(sums.f_detach()?)
        }
        ReferenceLogits::Free => None,
    };
    let b = chosen.len();
    let reference_pairs = reference_sums
        .map(|sums| -> Result<(Tensor, Tensor)> { Ok((sums.f_narrow(0, 0, b)?, sums.f_narrow(0, b, b)?)) })
        .transpose()?;
    let reference = match &reference_pairs {
        Some((chosen, rejected)) => Reference::LogProbs { chosen, rejected },
        None => Reference::Free,
    };
    let mut batch = PreferenceBatch::new(&chosen, &rejected, reference);
    batch.global = global;
    rpo_loss(config, &batch)
}

/// Convenience: the summed log-probs `[2B]` and counts of a concatenated batch, split into
/// `(chosen, rejected)`. Shapes and errors as [`sequence_logprobs`] and [`SequenceLogProbs::split_pairs`].
pub fn pair_logprobs(
    logits: &Tensor,
    labels: &Tensor,
    options: &LogProbOptions,
) -> Result<(SequenceLogProbs, SequenceLogProbs)> {
    sequence_logprobs(logits, labels, options)?.split_pairs()
}
