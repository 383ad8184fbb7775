//! Learning-rate schedules: linear warmup, then cosine (or linear, or constant) decay.

use crate::error::{Error, InputError, Result};

/// The shape of the decay after warmup (in checkpoints: `"cosine"`, `"linear"`, `"constant"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// `0.5·(1 + cos(π·progress))`: to 0 at the last step (the paper's schedule; Hugging Face's
    /// `get_cosine_schedule_with_warmup`).
    #[default]
    Cosine,
    /// `1 − progress`.
    Linear,
    /// `1`.
    Constant,
}

/// Linear warmup from 0 to `peak_lr` over `warmup_steps`, then [`Decay`] to 0 at `total_steps`.
///
/// The multiplier at optimizer step `s` (0-based: the first update uses `s = 0`) is, as in Hugging Face
/// Transformers, `s / warmup_steps` while `s < warmup_steps` (so the very first update has lr 0 when there
/// is warmup), then `decay(progress)` with `progress = (s − warmup) / max(1, total − warmup)`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate (after warmup). The paper: 5e-7.
    pub peak_lr: f64,
    /// Warmup steps.
    pub warmup_steps: u64,
    /// Total optimizer steps of the run.
    pub total_steps: u64,
    /// Decay after warmup.
    pub decay: Decay,
}

impl LrSchedule {
    /// Warmup for `ceil(warmup_ratio · total_steps)` steps (Hugging Face's rounding), then `decay`.
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`] for a non-finite or negative lr, a ratio outside `[0, 1]`, or zero steps.
    pub fn with_warmup_ratio(
        peak_lr: f64,
        total_steps: u64,
        warmup_ratio: f64,
        decay: Decay,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&warmup_ratio) {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "warmup_ratio",
                value: warmup_ratio.into(),
                requirement: "must be in [0, 1]",
            }));
        }
        let schedule = Self {
            peak_lr,
            warmup_steps: (warmup_ratio * total_steps as f64).ceil() as u64,
            total_steps,
            decay,
        };
        schedule.check()?;
        Ok(schedule)
    }

    /// The paper's schedule: cosine with warmup ratio 0.1.
    ///
    /// # Errors
    /// As [`LrSchedule::with_warmup_ratio`].
    pub fn paper(peak_lr: f64, total_steps: u64) -> Result<Self> {
        Self::with_warmup_ratio(peak_lr, total_steps, 0.1, Decay::Cosine)
    }

    /// Checks the fields.
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`] for a non-finite or negative lr or zero total steps.
    pub fn check(&self) -> Result<()> {
        if !(self.peak_lr.is_finite() && self.peak_lr >= 0.0) {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "peak_lr",
                value: self.peak_lr.into(),
                requirement: "must be finite and >= 0",
            }));
        }
        if self.total_steps == 0 {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "total_steps",
                value: self.total_steps.into(),
                requirement: "must be > 0",
            }));
        }
        Ok(())
    }

    /// The learning rate of 0-based optimizer step `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let factor = match self.decay {
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Decay::Linear => 1.0 - progress,
            Decay::Constant => 1.0,
        };
        self.peak_lr * factor.max(0.0)
    }
}
