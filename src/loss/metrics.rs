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

    /// The computed means with their names, in the order of [`PreferenceMetrics::values`].
    pub(crate) fn names_and_means(&self) -> Vec<(&'static str, &Tensor)> {
        let mut fields = vec![
            ("rewards/chosen", &self.rewards_chosen),
            ("rewards/rejected", &self.rewards_rejected),
            ("rewards/margins", &self.rewards_margins),
            ("rewards/accuracies", &self.rewards_accuracies),
            ("logps/chosen", &self.logps_chosen),
            ("logps/rejected", &self.logps_rejected),
        ];
        let optional = [
            ("logits/chosen", &self.logits_chosen),
            ("logits/rejected", &self.logits_rejected),
            ("entropy", &self.entropy),
            ("mean_token_accuracy", &self.mean_token_accuracy),
        ];
        fields.extend(
            optional
                .into_iter()
                .filter_map(|(n, t)| t.as_ref().map(|t| (n, t))),
        );
        fields
    }

    /// `(name, mean)` pairs in a fixed order (the six reward / log-prob metrics, then the token metrics
    /// that were computed), read back to the host (syncs the device).
    pub fn values(&self) -> Result<Vec<(&'static str, f64)>> {
        self.names_and_means()
            .into_iter()
            .map(|(name, t)| Ok((name, t.f_double_value(&[])?)))
            .collect()
    }
}
