//! The bookkeeping of one optimizer step: the totals of its micro-batches and the sums of their results,
//! combined so that they describe one batch of all the step's pairs.

use crate::data::CollatedBatch;
use crate::error::{Error, Result};
use crate::loss::rpo::RpoOutput;
use crate::loss::GlobalBatch;
use crate::train::metrics::StepMetrics;
use tch::{Device, Kind, Tensor};

/// The totals of one optimizer step's micro-batches.
#[derive(Debug, Clone, Copy)]
pub(super) struct StepTotals {
    /// The loss normalizers of the whole step.
    pub(super) global: GlobalBatch,
    /// Pairs in the step.
    pub(super) pairs: usize,
    /// Non-padding tokens in the step.
    pub(super) tokens: i64,
    /// Scored chosen-response tokens in the step.
    pub(super) chosen_tokens: i64,
    /// Scored rejected-response tokens in the step.
    pub(super) rejected_tokens: i64,
}

impl StepTotals {
    pub(super) fn of(batches: &[&CollatedBatch]) -> Result<Self> {
        let pairs: usize = batches.iter().map(|b| b.pairs()).sum();
        if pairs == 0 {
            return Err(Error::EmptyBatch {
                arg: "micro_batches",
                shape: vec![0],
            });
        }
        let chosen_tokens: i64 = batches.iter().map(|b| b.chosen_tokens).sum();
        let rejected_tokens: i64 = batches.iter().map(|b| b.rejected_tokens).sum();
        let tokens: i64 = batches.iter().map(|b| b.tokens).sum();
        Ok(Self::from_counts(pairs, tokens, chosen_tokens, rejected_tokens))
    }

    /// The totals of a step of `pairs` pairs (at least one) with these token counts.
    pub(super) fn from_counts(pairs: usize, tokens: i64, chosen_tokens: i64, rejected_tokens: i64) -> Self {
        let global = GlobalBatch {
            pairs: pairs as f64,
            chosen_tokens: chosen_tokens.max(1) as f64,
        };
        Self {
            global,
            pairs,
            tokens,
            chosen_tokens,
            rejected_tokens,
        }
    }
}

/// Sums of micro-batch results, weighted so the totals describe one batch of all the step's pairs: losses
/// summed (each is already normalized by the step's totals), pair means weighted by pairs, token statistics
/// by scored tokens.
#[derive(Debug, Default)]
pub(super) struct Accumulated {
    pub(super) loss: f64,
    loss_dpo: f64,
    nll: f64,
    means: [f64; 6],
    token: Option<[f64; 4]>,
}

impl Accumulated {
    /// Adds one micro-batch's output, read back to the host in one transfer (a device sync on CUDA);
    /// returns the micro-batch's loss.
    pub(super) fn add(&mut self, out: &RpoOutput, batch: &CollatedBatch, totals: &StepTotals) -> Result<f64> {
        let m = &out.dpo.metrics;
        let mut scalars = vec![
            &out.loss,
            &out.dpo.loss,
            &out.sft.loss,
            &m.rewards_chosen,
            &m.rewards_rejected,
            &m.rewards_margins,
            &m.rewards_accuracies,
            &m.logps_chosen,
            &m.logps_rejected,
        ];
        let token = [
            &m.logits_chosen,
            &m.logits_rejected,
            &m.entropy,
            &m.mean_token_accuracy,
        ];
        let with_token = token.iter().all(|t| t.is_some());
        if with_token {
            scalars.extend(token.iter().filter_map(|t| t.as_ref()));
        }
        let stacked = scalars
            .iter()
            .map(|t| t.f_detach()?.f_to_kind(Kind::Double))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let values = Vec::<f64>::try_from(&Tensor::f_stack(&stacked, 0)?.f_to_device(Device::Cpu)?)?;
        self.loss += values[0];
        self.loss_dpo += values[1];
        self.nll += values[2];
        let weight = batch.pairs() as f64 / totals.pairs as f64;
        for (slot, value) in self.means.iter_mut().zip(&values[3..9]) {
            *slot += value * weight;
        }
        if with_token {
            let share = |part: i64, whole: i64| part as f64 / whole.max(1) as f64;
            let (c, r) = (batch.chosen_tokens, batch.rejected_tokens);
            let weights = [
                share(c, totals.chosen_tokens),
                share(r, totals.rejected_tokens),
                share(c + r, totals.chosen_tokens + totals.rejected_tokens),
                share(c + r, totals.chosen_tokens + totals.rejected_tokens),
            ];
            let sums = self.token.get_or_insert([0.0; 4]);
            for ((slot, value), w) in sums.iter_mut().zip(&values[9..13]).zip(weights) {
                *slot += value * w;
            }
        }
        Ok(values[0])
    }

    /// Number of values in [`Accumulated::to_values`].
    #[cfg(feature = "dist")]
    pub(super) const VALUES: usize = 14;

    /// The sums as a flat list (loss, DPO loss, NLL, the 6 pair means, the 4 token statistics, and 1 when
    /// token statistics are present): summed over data-parallel ranks, whose weights use the global totals,
    /// they give the sums of one process over the whole step ([`Accumulated::from_values`]).
    #[cfg(feature = "dist")]
    pub(super) fn to_values(&self) -> [f64; Self::VALUES] {
        let mut values = [0.0; Self::VALUES];
        values[0] = self.loss;
        values[1] = self.loss_dpo;
        values[2] = self.nll;
        values[3..9].copy_from_slice(&self.means);
        if let Some(token) = self.token {
            values[9..13].copy_from_slice(&token);
            values[13] = 1.0;
        }
        values
    }

    /// The inverse of [`Accumulated::to_values`] (token statistics present when the flag is positive).
    #[cfg(feature = "dist")]
    pub(super) fn from_values(values: &[f64; Self::VALUES]) -> Self {
        let mut means = [0.0; 6];
        means.copy_from_slice(&values[3..9]);
        let mut token = [0.0; 4];
        token.copy_from_slice(&values[9..13]);
        Self {
            loss: values[0],
            loss_dpo: values[1],
            nll: values[2],
            means,
            token: (values[13] > 0.0).then_some(token),
        }
    }

    pub(super) fn into_metrics(self, step: u64) -> StepMetrics {
        let [rewards_chosen, rewards_rejected, rewards_margins, rewards_accuracies, logps_chosen, logps_rejected] =
            self.means;
        let token = |i: usize| self.token.map(|t| t[i]);
        StepMetrics {
            step,
            loss: self.loss,
            loss_dpo: self.loss_dpo,
            nll: self.nll,
            rewards_chosen,
            rewards_rejected,
            rewards_accuracies,
            rewards_margins,
            logps_chosen,
            logps_rejected,
            logits_chosen: token(0),
            logits_rejected: token(1),
            entropy: token(2),
            mean_token_accuracy: token(3),
            ..StepMetrics::default()
        }
    }
}
