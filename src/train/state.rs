//! Saving and restoring the whole state of an [`RpoTrainer`] (weights, optimizer, step, schedule, data
//! position) through [`checkpoint`].

use crate::data::SamplerPosition;
use crate::error::{Error, Result};
use crate::train::checkpoint::{self, CheckpointData};
use crate::train::reference::{ReferenceCache, ReferenceSource};
use crate::train::schedule::Decay;
use crate::train::trainer::{DataState, RpoTrainer};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

impl RpoTrainer {
    fn data_state_json(&self) -> Value {
        match &self.data {
            Some(d) => json!({
                "epoch": d.position.epoch,
                "cursor": d.position.cursor,
                "dataset_len": d.dataset_len,
                "batch_pairs": d.batch_pairs,
                "grad_accum_steps": d.grad_accum_steps,
                "shuffle": d.shuffle,
            }),
            None => Value::Null,
        }
    }

    fn schedule_json(&self) -> Value {
        let s = &self.schedule;
        json!({
            "peak_lr": s.peak_lr,
            "warmup_steps": s.warmup_steps,
            "total_steps": s.total_steps,
            "decay": match s.decay { Decay::Cosine => "cosine", Decay::Linear => "linear", Decay::Constant => "constant" },
        })
    }

    /// Saves a checkpoint under `dir` (layout and atomicity in [`checkpoint`]); returns its path.
    /// [`RpoTrainer::fit`] calls it with the configured directory; this is for saving elsewhere by hand
    /// (no retention limit is applied).
    ///
    /// # Errors
    /// As [`checkpoint::save`].
    pub fn save_checkpoint(&self, dir: &Path) -> Result<PathBuf> {
        let state = json!({
            "step": self.step,
            "adam_step": self.optimizer.step_count(),
            "skipped_steps": self.skipped_steps,
            "seed": self.config.seed,
            "schedule": self.schedule_json(),
            "data": self.data_state_json(),
            "objective": self.config.rpo.describe(),
        });
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
    /// [`Error::Checkpoint`] for a missing / truncated / corrupted checkpoint, parameters or state that do
    /// not match this model, or a checkpoint written with a different seed or schedule.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        let loaded = checkpoint::load(path)?;
        let source = path.display().to_string();
        let bad = |reason: String| Error::Checkpoint {
            path: source.clone(),
            reason,
        };
        let state = &loaded.state;
        let int = |key: &str| -> Result<u64> {
            state_integer(state, key).map_err(|r| bad(format!("trainer state {r}")))
        };
        let (step, adam_step, skipped, seed) = (
            int("step")?,
            int("adam_step")?,
            int("skipped_steps")?,
            int("seed")?,
        );
        if seed != self.config.seed {
            return Err(bad(format!(
                "written with seed {seed}, this trainer has seed {}",
                self.config.seed
            )));
        }
        if state.get("schedule") != Some(&self.schedule_json()) {
            return Err(bad(format!(
                "written with schedule {}, this trainer has {}",
                state.get("schedule").unwrap_or(&Value::Null),
                self.schedule_json()
            )));
        }
        let data = match state.get("data") {
            None | Some(Value::Null) => None,
            Some(d) => {
                let field = |key: &str| state_integer(d, key).map_err(|r| bad(format!("data state {r}")));
                Some(DataState {
                    position: SamplerPosition {
                        epoch: field("epoch")?,
                        cursor: field("cursor")? as usize,
                    },
                    dataset_len: field("dataset_len")? as usize,
                    batch_pairs: field("batch_pairs")? as usize,
                    grad_accum_steps: field("grad_accum_steps")? as usize,
                    shuffle: d
                        .get("shuffle")
                        .and_then(Value::as_bool)
                        .ok_or_else(|| bad("data state lacks `shuffle`".to_string()))?,
                })
            }
        };
        // Model weights: every parameter present with its shape, nothing extra; staged in the parameter's
        // dtype and on its device.
        let mut saved: HashMap<String, Tensor> = loaded.model.into_iter().collect();
        let params = self.model.named_parameters();
        let mut staged = Vec::with_capacity(params.len());
        for (name, param) in &params {
            let tensor = saved
                .remove(name)
                .ok_or_else(|| bad(format!("model parameter `{name}` is missing")))?;
            if tensor.size() != param.size() {
                return Err(bad(format!(
                    "model parameter `{name}` has shape {:?}, the model needs {:?}",
                    tensor.size(),
                    param.size()
                )));
            }
            staged.push(tensor.f_to_device(param.device())?.f_to_kind(param.f_kind()?)?);
        }
        if let Some(extra) = saved.keys().next() {
            return Err(bad(format!("model parameter `{extra}` is not in this model")));
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
        self.optimizer.commit_state(adam_step, optimizer)?;
        if let Some(cache) = reference {
            self.reference = ReferenceSource::Cached(cache);
        }
        self.step = step;
        self.skipped_steps = skipped;
        self.data = data;
        self.sampler = None;
        self.resumed_at = Some(step);
        Ok(())
    }
}

/// The non-negative integer `object[key]` of a saved state, or what is wrong with it: absent ("lacks
/// `step`"), or present but not an integer in `[0, 2⁶⁴)` ("has `step` = 1e30, …"), so that a damaged value
/// is not reported as a missing one.
fn state_integer(object: &Value, key: &str) -> std::result::Result<u64, String> {
    match object.get(key) {
        None | Some(Value::Null) => Err(format!("lacks `{key}`")),
        Some(value) => value
            .as_u64()
            .ok_or_else(|| format!("has `{key}` = {value}, which is not an integer in [0, 2^64)")),
    }
}
