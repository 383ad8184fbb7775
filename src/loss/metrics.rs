//! Detached metrics with the names TRL users know.
//!
//! | name | value |
//! |---|---|
//! | `rewards/chosen` | mean `β·ℓ_c` |
//! | `rewards/rejected` | mean `β·ℓ_r` |
//! | `rewards/margins` | mean `β·(ℓ_c − ℓ_r)` |
//! | `rewards/accuracies` | fraction of pairs with `β·ℓ_c > β·ℓ_r` |
//! | `logps/chosen` | mean summed policy log-prob of the chosen responses |
//! | `logps/rejected` | mean summed policy log-prob of the rejected responses |
//! | `logits/chosen` | mean logit `(1/V)·Σ_v z_v` over the scored tokens of all chosen rows (token statistics on) |
//! | `logits/rejected` | the same over the rejected rows (token statistics on) |
//! | `entropy` | mean entropy of the predicted distribution over all scored tokens (token statistics on) |
//! | `mean_token_accuracy` | fraction of scored tokens whose arg-max logit is the label (token statistics on) |
//!
//! The last four need [`crate::LogProbOptions::token_stats`] (the policy's [`crate::SequenceLogProbs::stats`]);
//! they are pooled over tokens (TRL's `logits[mask].mean()`), not averaged per sequence. Besides the means,
//! [`PreferenceMetrics`] carries the per-pair values (`[B]` log-probs and rewards, as Liger-Kernel returns
//! them). Everything stays on the device (no sync) until [`PreferenceMetrics::values`] reads the means.

use crate::error::Result;
use crate::loss::objective::Pairs;
use tch::{Kind, Tensor};

/// What a metric is averaged over across the micro-batches (and data-parallel ranks) of a trainer step, so that
/// the step's value is the one of one batch holding all its pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Average {
    /// A loss: each micro-batch's value is already normalized by the step's totals
    /// ([`crate::GlobalBatch`]), so the values are summed.
    Step,
    /// A mean over pairs: each micro-batch's mean is weighted by its share of the step's pairs.
    Pairs,
    /// Pooled over the chosen responses' scored tokens: weighted by the share of those tokens.
    ChosenTokens,
    /// Pooled over the rejected responses' scored tokens: weighted by the share of those tokens.
    RejectedTokens,
    /// Pooled over all scored tokens (chosen and rejected): weighted by the share of those tokens.
    ScoredTokens,
}

impl Average {
    /// Whether the metric is a token statistic (computed only with [`crate::LogProbOptions::token_stats`]).
    pub fn is_token_statistic(self) -> bool {
        matches!(
            self,
            Average::ChosenTokens | Average::RejectedTokens | Average::ScoredTokens
        )
    }
}

/// One row of the metrics schema ([`METRICS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// The name (TRL's), in the JSON Lines log and for `StepMetrics::get`.
    pub name: &'static str,
    /// What it is averaged over across micro-batches and ranks.
    pub average: Average,
    /// What it is.
    pub description: &'static str,
}

/// The metrics schema: every metric of an RPO step, in this order, with TRL's names. It drives the loss
/// outputs' metrics ([`crate::RpoOutput::metric`], [`crate::RpoOutput::metric_values`],
/// [`PreferenceMetrics::values`]), and in the trainer the accumulation over micro-batches, the sums over
/// data-parallel ranks, `StepMetrics`, its JSON line and `StepMetrics::get`.
///
/// `logits/chosen` and `logits/rejected` are TRL's: the mean logit `(1/V)·Σ_v z_v` over the scored
/// tokens of the chosen (rejected) responses, not Liger-Kernel's `chosen_logits_mean`, which averages
/// over every position of the rows (prompt and padding included).
pub const METRICS: [Metric; 13] = [
    metric("loss", Average::Step, "the RPO loss of the step (DPO + c · SFT)"),
    metric("loss/dpo", Average::Step, "the DPO part"),
    metric(
        "nll",
        Average::Step,
        "the SFT part: NLL of the chosen responses under its normalization",
    ),
    metric(
        "rewards/chosen",
        Average::Pairs,
        "mean β·(log π(y_w) − log π_ref(y_w))",
    ),
    metric(
        "rewards/rejected",
        Average::Pairs,
        "mean β·(log π(y_l) − log π_ref(y_l))",
    ),
    metric("rewards/margins", Average::Pairs, "mean reward margin"),
    metric(
        "rewards/accuracies",
        Average::Pairs,
        "fraction of pairs whose chosen reward exceeds the rejected one",
    ),
    metric(
        "logps/chosen",
        Average::Pairs,
        "mean summed log-prob of the chosen responses",
    ),
    metric(
        "logps/rejected",
        Average::Pairs,
        "mean summed log-prob of the rejected responses",
    ),
    metric(
        "logits/chosen",
        Average::ChosenTokens,
        "mean logit over the chosen responses' scored tokens",
    ),
    metric(
        "logits/rejected",
        Average::RejectedTokens,
        "mean logit over the rejected responses' scored tokens",
    ),
    metric(
        "entropy",
        Average::ScoredTokens,
        "mean entropy of the predicted distribution over all scored tokens",
    ),
    metric(
        "mean_token_accuracy",
        Average::ScoredTokens,
        "fraction of scored tokens the arg-max predicts",
    ),
];

const fn metric(name: &'static str, average: Average, description: &'static str) -> Metric {
    Metric {
        name,
        average,
        description,
    }
}

/// Detached tensors: 0-dim means (see the [module docs](self)) and `[B]` per-pair values.
#[derive(Debug)]
pub struct PreferenceMetrics {
    /// `rewards/chosen`: mean `β·ℓ_c`.
    pub rewards_chosen: Tensor,
    /// `rewards/rejected`: mean `β·ℓ_r`.
    pub rewards_rejected: Tensor,
    /// `rewards/margins`: mean `β·(ℓ_c − ℓ_r)`.
    pub rewards_margins: Tensor,
    /// `rewards/accuracies`: fraction of pairs with `β·ℓ_c > β·ℓ_r`.
    pub rewards_accuracies: Tensor,
    /// `logps/chosen`: mean summed policy log-prob of chosen responses.
    pub logps_chosen: Tensor,
    /// `logps/rejected`: mean summed policy log-prob of rejected responses.
    pub logps_rejected: Tensor,
    /// `logits/chosen` (with token statistics): mean logit over the chosen rows' scored tokens.
    pub logits_chosen: Option<Tensor>,
    /// `logits/rejected` (with token statistics): mean logit over the rejected rows' scored tokens.
    pub logits_rejected: Option<Tensor>,
    /// `entropy` (with token statistics): mean entropy over all scored tokens.
    pub entropy: Option<Tensor>,
    /// `mean_token_accuracy` (with token statistics): fraction of scored tokens predicted by arg-max.
    pub mean_token_accuracy: Option<Tensor>,
    /// `[B]` summed policy log-prob of each chosen response.
    pub chosen_logps: Tensor,
    /// `[B]` summed policy log-prob of each rejected response.
    pub rejected_logps: Tensor,
    /// `[B]` implicit reward `β·ℓ_c` of each chosen response.
    pub chosen_rewards: Tensor,
    /// `[B]` implicit reward `β·ℓ_r` of each rejected response.
    pub rejected_rewards: Tensor,
}

impl PreferenceMetrics {
    pub(crate) fn new(beta: f64, pairs: &Pairs) -> Result<Self> {
        let mean = |t: &Tensor| -> Result<Tensor> { Ok(t.f_detach()?.f_mean(None::<Kind>)?) };
        let chosen = pairs.ratios.chosen.f_detach()?.f_mul_scalar(beta)?;
        let rejected = pairs.ratios.rejected.f_detach()?.f_mul_scalar(beta)?;
        let kind = chosen.f_kind()?;
        let (c, r) = (&pairs.chosen, &pairs.rejected);
        // Pooled over tokens: Σ (per-row sums) / Σ counts. A batch without scored tokens gives NaN (0/0).
        let pooled = |sums: &[&Tensor], counts: &[&Tensor]| -> Result<Tensor> {
            let mut num = sums[0].f_detach()?.f_sum(kind)?;
            let mut den = counts[0].f_sum(kind)?;
            for (s, n) in sums[1..].iter().zip(&counts[1..]) {
                num = num.f_add(&s.f_detach()?.f_sum(kind)?)?;
                den = den.f_add(&n.f_sum(kind)?)?;
            }
            Ok(num.f_div(&den)?)
        };
        let (logits_chosen, logits_rejected, entropy, mean_token_accuracy) = match (&c.stats, &r.stats) {
            (Some(sc), Some(sr)) => (
                Some(pooled(&[&sc.mean_logit], &[&c.count])?),
                Some(pooled(&[&sr.mean_logit], &[&r.count])?),
                Some(pooled(&[&sc.entropy, &sr.entropy], &[&c.count, &r.count])?),
                Some(pooled(&[&sc.correct, &sr.correct], &[&c.count, &r.count])?),
            ),
            _ => (None, None, None, None),
        };
        Ok(Self {
            rewards_margins: mean(&chosen.f_sub(&rejected)?)?,
            rewards_accuracies: mean(&chosen.f_gt_tensor(&rejected)?.f_to_kind(kind)?)?,
            rewards_chosen: mean(&chosen)?,
            rewards_rejected: mean(&rejected)?,
            logps_chosen: mean(&c.sum)?,
            logps_rejected: mean(&r.sum)?,
            logits_chosen,
            logits_rejected,
            entropy,
            mean_token_accuracy,
            chosen_logps: c.sum.f_detach()?,
            rejected_logps: r.sum.f_detach()?,
            chosen_rewards: chosen,
            rejected_rewards: rejected,
        })
    }

    /// The 0-dim mean of the metric `name` ([`METRICS`]); `None` for a token statistic that was not
    /// computed, or a name these metrics do not hold (`loss`, `loss/dpo`, `nll`: see
    /// [`crate::RpoOutput::metric`]).
    pub fn mean(&self, name: &str) -> Option<&Tensor> {
        match name {
            "rewards/chosen" => Some(&self.rewards_chosen),
            "rewards/rejected" => Some(&self.rewards_rejected),
            "rewards/margins" => Some(&self.rewards_margins),
            "rewards/accuracies" => Some(&self.rewards_accuracies),
            "logps/chosen" => Some(&self.logps_chosen),
            "logps/rejected" => Some(&self.logps_rejected),
            "logits/chosen" => self.logits_chosen.as_ref(),
            "logits/rejected" => self.logits_rejected.as_ref(),
            "entropy" => self.entropy.as_ref(),
            "mean_token_accuracy" => self.mean_token_accuracy.as_ref(),
            _ => None,
        }
    }

    /// `(name, mean)` of every metric these metrics hold, in [`METRICS`] order (the six reward / log-prob
    /// metrics, then the token statistics that were computed), read back to the host (syncs the device).
    pub fn values(&self) -> Result<Vec<(&'static str, f64)>> {
        read_values(|name| self.mean(name))
    }
}

/// `(name, value)` of each [`METRICS`] entry that `lookup` finds, in schema order, read back to the host.
pub(crate) fn read_values<'a>(
    lookup: impl Fn(&str) -> Option<&'a Tensor>,
) -> Result<Vec<(&'static str, f64)>> {
    METRICS
        .iter()
        .filter_map(|m| lookup(m.name).map(|t| (m.name, t)))
        .map(|(name, t)| Ok((name, t.f_double_value(&[])?)))
        .collect()
}
