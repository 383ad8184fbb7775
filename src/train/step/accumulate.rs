//! The bookkeeping of one optimizer step: the totals of its micro-batches and the sums of their metrics,
//! combined as the metrics schema ([`METRICS`]) says, so that they describe one batch of all the step's
//! pairs.

use crate::data::CollatedBatch;
use crate::error::{Error, InputError, Result};
use crate::loss::rpo::RpoOutput;
use crate::loss::GlobalBatch;
use crate::train::metrics::{Average, StepMetrics, METRICS};
use tch::{Device, Kind, Tensor};

/// The totals of one optimizer step's micro-batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepTotals {
    /// The loss normalizers of the whole step.
    pub(crate) global: GlobalBatch,
    /// Pairs in the step.
    pub(crate) pairs: usize,
    /// Non-padding tokens in the step.
    pub(crate) tokens: i64,
    /// Scored chosen-response tokens in the step.
    pub(crate) chosen_tokens: i64,
    /// Scored rejected-response tokens in the step.
    pub(crate) rejected_tokens: i64,
}

impl StepTotals {
    /// The counts of `batches` (pairs, tokens, chosen and rejected response tokens), to be summed over
    /// the ranks of a data-parallel step before [`StepTotals::from_counts`].
    pub(crate) fn counts(batches: &[&CollatedBatch]) -> [f64; 4] {
        let mut counts = [0.0; 4];
        for b in batches {
            counts[0] += b.pairs() as f64;
            counts[1] += b.tokens as f64;
            counts[2] += b.chosen_tokens as f64;
            counts[3] += b.rejected_tokens as f64;
        }
        counts
    }

    /// The totals of a step with these (summed) [`StepTotals::counts`].
    ///
    /// # Errors
    /// [`InputError::EmptyBatch`](crate::InputError::EmptyBatch) for a step without pairs.
    pub(crate) fn from_counts(counts: [f64; 4]) -> Result<Self> {
        let [pairs, tokens, chosen_tokens, rejected_tokens] = counts;
        if pairs == 0.0 {
            return Err(Error::Input(InputError::EmptyBatch {
                arg: "micro_batches",
                shape: vec![0],
            }));
        }
        let (pairs, tokens) = (pairs as usize, tokens as i64);
        let (chosen_tokens, rejected_tokens) = (chosen_tokens as i64, rejected_tokens as i64);
        let global = GlobalBatch {
            pairs: pairs as f64,
            chosen_tokens: chosen_tokens.max(1) as f64,
        };
        Ok(Self {
            global,
            pairs,
            tokens,
            chosen_tokens,
            rejected_tokens,
        })
    }

    /// The weight of `batch`'s value of a metric averaged over `average` in the step's value.
    fn weight(&self, average: Average, batch: &CollatedBatch) -> f64 {
        let share = |part: i64, whole: i64| part as f64 / whole.max(1) as f64;
        let (c, r) = (batch.chosen_tokens, batch.rejected_tokens);
        let (tc, tr) = (self.chosen_tokens, self.rejected_tokens);
        match average {
            Average::Step => 1.0,
            Average::Pairs => batch.pairs() as f64 / self.pairs as f64,
            Average::ChosenTokens => share(c, tc),
            Average::RejectedTokens => share(r, tr),
            Average::ScoredTokens => share(c + r, tc + tr),
        }
    }
}

/// Sums of micro-batch metrics, in [`METRICS`] order, weighted by [`StepTotals::weight`]; the token
/// statistics only when computed.
#[derive(Debug, Default)]
pub(crate) struct Accumulated {
    sums: [f64; METRICS.len()],
    token_statistics: bool,
}

/// The position of `loss` in [`METRICS`].
const LOSS: usize = 0;

impl Accumulated {
    /// Number of values in [`Accumulated::to_values`].
    pub(crate) const VALUES: usize = METRICS.len() + 1;

    /// Adds one micro-batch's output, read back to the host in one transfer (a device sync on CUDA);
    /// returns the micro-batch's loss.
    ///
    /// # Errors
    /// [`Error::Internal`] (a bug) if the loss output lacks a metric that is not a token statistic.
    pub(crate) fn add(&mut self, out: &RpoOutput, batch: &CollatedBatch, totals: &StepTotals) -> Result<f64> {
        let tensors: Vec<Option<&Tensor>> = METRICS.iter().map(|m| out.metric(m.name)).collect();
        let with_token = METRICS
            .iter()
            .zip(&tensors)
            .all(|(m, t)| t.is_some() || !m.average.is_token_statistic());
        // The schema positions this micro-batch contributes to, with their tensors: every metric, the token
        // statistics only when all of them were computed.
        let mut read = Vec::with_capacity(METRICS.len());
        for (position, (m, t)) in METRICS.iter().zip(&tensors).enumerate() {
            match t {
                Some(t) if with_token || !m.average.is_token_statistic() => read.push((position, *t)),
                Some(_) => {}
                None if m.average.is_token_statistic() => {}
                None => {
                    return Err(Error::Internal {
                        what: format!("the loss output has no metric `{}` of the schema", m.name),
                    })
                }
            }
        }
        let present = read
            .iter()
            .map(|(_, t)| t.f_detach()?.f_to_kind(Kind::Double))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let values = Vec::<f64>::try_from(&Tensor::f_stack(&present, 0)?.f_to_device(Device::Cpu)?)?;
        // `loss` comes first in the schema and is never a token statistic.
        let loss = values[LOSS];
        for ((position, _), value) in read.iter().zip(values) {
            let m = &METRICS[*position];
            self.sums[*position] += match m.average {
                // A loss is summed as it is (already normalized by the step's totals).
                Average::Step => value,
                average => value * totals.weight(average, batch),
            };
        }
        self.token_statistics |= with_token;
        Ok(loss)
    }

    /// Marks the loss as non-finite (a forward pass that failed with non-finite values).
    pub(crate) fn set_non_finite(&mut self) {
        self.sums[LOSS] = f64::NAN;
    }

    /// The sums as a flat list ([`METRICS`] order, then 1 when token statistics are present): summed over
    /// data-parallel ranks, whose weights use the global totals, they give the sums of one process over
    /// the whole step ([`Accumulated::from_values`]).
    pub(crate) fn to_values(&self) -> [f64; Self::VALUES] {
        let mut values = [0.0; Self::VALUES];
        values[..METRICS.len()].copy_from_slice(&self.sums);
        values[METRICS.len()] = f64::from(u8::from(self.token_statistics));
        values
    }

    /// The inverse of [`Accumulated::to_values`] (token statistics present when the flag is positive).
    pub(crate) fn from_values(values: &[f64; Self::VALUES]) -> Self {
        let mut sums = [0.0; METRICS.len()];
        sums.copy_from_slice(&values[..METRICS.len()]);
        Self {
            sums,
            token_statistics: values[METRICS.len()] > 0.0,
        }
    }

    /// The step's metrics (bookkeeping fields left for the caller).
    pub(crate) fn into_metrics(self, step: u64) -> StepMetrics {
        let mut values = [None; METRICS.len()];
        for ((slot, sum), m) in values.iter_mut().zip(self.sums).zip(&METRICS) {
            if self.token_statistics || !m.average.is_token_statistic() {
                *slot = Some(sum);
            }
        }
        StepMetrics::with_values(step, values)
    }
}
