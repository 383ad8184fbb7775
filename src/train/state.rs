//! Saving and restoring the whole state of an [`RpoTrainer`] (weights, optimizer, step, schedule, data
//! position) through [`checkpoint`]. `trainer_state.json` is [`TrainerState`] written by serde (the
//! fields and names of 0.2, so that 0.2 checkpoints resume).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{CheckpointError, Error, LoraError, ParameterMismatch, Result};
use crate::train::checkpoint::{self, CheckpointData};
use crate::train::model::PolicyModel;
use crate::train::reference::{ReferenceCache, ReferenceSource};
use crate::train::run::DataState;
use crate::train::schedule::LrSchedule;
use crate::train::trainer::RpoTrainer;

/// The trainer's counters and settings in a checkpoint (`trainer_state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TrainerState {
    /// Optimizer steps taken (skipped ones included).
    pub(crate) step: u64,
    /// AdamW updates applied (steps not skipped).
    pub(crate) adam_step: u64,
    /// Steps skipped for a non-finite loss or gradient.
    pub(crate) skipped_steps: u64,
    /// The data order's seed (must match on resume).
    pub(crate) seed: u64,
    /// The learning-rate schedule (must match on resume).
    pub(crate) schedule: LrSchedule,
    /// The data position and settings (`null` before the first `fit`).
    pub(crate) data: Option<DataState>,
    /// The objective in words (informative; not checked).
    #[serde(default)]
    pub(crate) objective: String,
    /// The fingerprint of the frozen base the trained parameters sit on
    /// ([`PolicyModel::base_fingerprint`]; absent for a model without one). Must match on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) base_fingerprint: Option<String>,
}

impl<M: PolicyModel> RpoTrainer<M> {
    /// Saves a checkpoint under `dir` (layout and atomicity in [`checkpoint`]); returns its path.
    /// [`RpoTrainer::fit`] calls it with the configured directory; this is for saving elsewhere by hand
    /// (no retention limit is applied).
    ///
    /// # Errors
    /// As [`checkpoint::save`].
    pub fn save_checkpoint(&self, dir: &Path) -> Result<PathBuf> {
        let state = TrainerState {
            step: self.step,
            adam_step: self.optimizer.step_count(),
            skipped_steps: self.skipped_steps,
            seed: self.config.seed,
            schedule: self.schedule,
            data: self.data,
            objective: self.config.rpo.describe(),
            base_fingerprint: self.model.base_fingerprint(),
        };
        let state = serde_json::to_value(&state).map_err(|e| {
            Error::Checkpoint(CheckpointError::Invalid {
                path: dir.display().to_string(),
                reason: format!("cannot serialize the trainer state: {e}"),
            })
        })?;
        checkpoint::save(
            dir,
            &CheckpointData {
                step: self.step,
                model: self.model.named_parameters(),
                optimizer: self.optimizer.state_tensors(),
                reference: match &self.reference {
                    ReferenceSource::Cached(cache) => cache.to_tensors(),
                    _ => Vec::new(),
                },
                state,
            },
        )
    }

    /// Restores weights, optimizer state, step, schedule position and data position — and, for
    /// [`ReferenceSource::InitialPolicy`], the cached reference log-probs — from the checkpoint at `path`,
    /// so training continues exactly where it stopped. All or nothing: the files are verified, and
    /// every value is checked and converted to its parameter's dtype and device, before anything is
    /// written; on error the trainer is unchanged.
    ///
    /// # Errors
    /// [`CheckpointError::Invalid`] for a missing / truncated / corrupted checkpoint or one written with a
    /// different seed or schedule; [`LoraError::BaseMismatch`] for a checkpoint of a model trained on another
    /// frozen base ([`PolicyModel::base_fingerprint`]); [`WeightsError::Parameters`](crate::WeightsError::Parameters) for model parameters or optimizer state that do
    /// not match this model (every missing, extra and reshaped one listed).
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        let loaded = checkpoint::load(path)?;
        let source = path.display().to_string();
        let bad = |reason: String| {
            Error::Checkpoint(CheckpointError::Invalid {
                path: source.clone(),
                reason,
            })
        };
        let state = TrainerState::deserialize(&loaded.state)
            .map_err(|e| bad(format!("trainer state {}", state_error(&loaded.state, &e))))?;
        if state.seed != self.config.seed {
            return Err(bad(format!(
                "written with seed {}, this trainer has seed {}",
                state.seed, self.config.seed
            )));
        }
        if state.schedule != self.schedule {
            return Err(bad(format!(
                "written with schedule {:?}, this trainer has {:?}",
                state.schedule, self.schedule
            )));
        }
        let base = self.model.base_fingerprint();
        if state.base_fingerprint != base {
            return Err(Error::Lora(LoraError::BaseMismatch {
                origin: format!("checkpoint {source}"),
                expected: state.base_fingerprint.unwrap_or_else(|| "none".into()),
                found: base.unwrap_or_else(|| "none".into()),
            }));
        }
        // Model weights: every parameter present with its shape, nothing extra; staged in the parameter's
        // dtype and on its device.
        let params = self.model.named_parameters();
        let expected: BTreeMap<String, Vec<i64>> = params
            .iter()
            .map(|(name, param)| (name.clone(), param.size()))
            .collect();
        let given = loaded
            .model
            .iter()
            .map(|(name, tensor)| (name.as_str(), tensor.size()));
        ParameterMismatch::compare(&expected, given).into_result(
            &format!("the model parameters of checkpoint {source}"),
            "this trainer's model",
        )?;
        let mut saved: HashMap<String, Tensor> = loaded.model.into_iter().collect();
        let mut staged = Vec::with_capacity(params.len());
        for (name, param) in &params {
            let tensor = saved.remove(name).ok_or_else(|| Error::Internal {
                what: format!("checked model parameter `{name}` vanished from the checkpoint"),
            })?;
            staged.push(tensor.f_to_device(param.device())?.f_to_kind(param.f_kind()?)?);
        }
        let optimizer = self.optimizer.stage_state(loaded.optimizer, &source)?;
        // The initial policy's cached log-probs come back from the checkpoint (other references are the
        // caller's input).
        let reference = match (&self.reference, loaded.reference.is_empty()) {
            (ReferenceSource::InitialPolicy, false) => {
                Some(ReferenceCache::from_tensors(loaded.reference, &source)?)
            }
            _ => None,
        };
        // Everything checked: commit.
        tch::no_grad(|| -> Result<()> {
            for ((_, param), tensor) in params.iter().zip(&staged) {
                param.shallow_clone().f_copy_(tensor)?;
            }
            Ok(())
        })?;
        self.optimizer.commit_state(state.adam_step, optimizer)?;
        if let Some(cache) = reference {
            self.reference = ReferenceSource::Cached(cache);
        }
        self.step = state.step;
        self.skipped_steps = state.skipped_steps;
        self.data = state.data;
        self.sampler = None;
        self.resumed_at = Some(state.step);
        Ok(())
    }
}

/// What is wrong with a saved state that does not deserialize, naming the field where serde does not: a
/// counter absent ("lacks `step`") or present but not an integer in `[0, 2⁶⁴)` ("has `step` = 1e30, …"),
/// so that a damaged value is not reported as a missing one; otherwise serde's message.
fn state_error(state: &serde_json::Value, error: &serde_json::Error) -> String {
    for key in ["step", "adam_step", "skipped_steps", "seed"] {
        match state.get(key) {
            None | Some(serde_json::Value::Null) => return format!("lacks `{key}`"),
            Some(value) if value.as_u64().is_none() => {
                return format!("has `{key}` = {value}, which is not an integer in [0, 2^64)")
            }
            Some(_) => {}
        }
    }
    error.to_string()
}
