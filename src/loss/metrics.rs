//! Detached metrics with the names TRL users know.
//!
//! | name | value (mean over the pairs of the batch) |
//! |---|---|
//! | `rewards/chosen` | `β·ℓ_c` |
//! | `rewards/rejected` | `β·ℓ_r` |
//! | `rewards/margins` | `β·(ℓ_c − ℓ_r)` |
//! | `rewards/accuracies` | fraction of pairs with `β·ℓ_c > β·ℓ_r` |
//! | `logps/chosen` | summed policy log-prob of the chosen response |
//! | `logps/rejected` | summed policy log-prob of the rejected response |
//!
//! The values stay on the device as 0-dim tensors (no sync) until [`PreferenceMetrics::values`] reads them.

use crate::error::Result;
use crate::loss::dpo::LogRatios;
use crate::loss::PreferenceBatch;
use tch::{Kind, Tensor};

/// Detached 0-dim tensors, one per metric (see the [module docs](self)).
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
}

impl PreferenceMetrics {
    pub(crate) fn new(beta: f64, batch: &PreferenceBatch<'_>, ratios: &LogRatios) -> Result<Self> {
        let mean = |t: &Tensor| -> Result<Tensor> { Ok(t.f_detach()?.f_mean(None::<Kind>)?) };
        let chosen = ratios.chosen.f_detach()?.f_mul_scalar(beta)?;
        let rejected = ratios.rejected.f_detach()?.f_mul_scalar(beta)?;
        let kind = chosen.f_kind()?;
        Ok(Self {
            rewards_margins: mean(&chosen.f_sub(&rejected)?)?,
            rewards_accuracies: mean(&chosen.f_gt_tensor(&rejected)?.f_to_kind(kind)?)?,
            rewards_chosen: mean(&chosen)?,
            rewards_rejected: mean(&rejected)?,
            logps_chosen: mean(&batch.chosen.sum)?,
            logps_rejected: mean(&batch.rejected.sum)?,
        })
    }

    /// `(name, value)` pairs in a fixed order, read back to the host (syncs the device).
    pub fn values(&self) -> Result<Vec<(&'static str, f64)>> {
        let fields = [
            ("rewards/chosen", &self.rewards_chosen),
            ("rewards/rejected", &self.rewards_rejected),
            ("rewards/margins", &self.rewards_margins),
            ("rewards/accuracies", &self.rewards_accuracies),
            ("logps/chosen", &self.logps_chosen),
            ("logps/rejected", &self.logps_rejected),
        ];
        fields
            .into_iter()
            .map(|(name, t)| Ok((name, t.f_double_value(&[])?)))
            .collect()
    }
}
