//! PEFT adapter folders: [`LoraAdapters::save_peft`] and [`LoraAdapters::load_peft`].

use std::path::Path;

use serde_json::{json, Value};
use tch::{Device, Tensor};

use super::adapters::LoraAdapters;
use crate::atomic::ExistingDir;
use crate::error::{CheckpointError, Error, Result};
use crate::validate::finite_weight;

/// The adapter configuration file of a PEFT folder.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The adapter weights file of a PEFT folder.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint(CheckpointError::Invalid {
        path: path.display().to_string(),
        reason: reason.into(),
    })
}

impl LoraAdapters {
    /// PEFT's `adapter_config.json` for these adapters: `peft_type` LORA, `task_type` CAUSAL_LM, `r`,
    /// `lora_alpha`, `lora_dropout`, `use_rslora`, `target_modules` (the adapted layers' paths, which PEFT
    /// matches exactly), `bias` none, and `base_model_name_or_path` when given.
    pub fn peft_config_json(&self, base_model_name_or_path: Option<&str>) -> Value {
        let config = self.config();
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": config.r,
            "lora_alpha": config.lora_alpha,
            "lora_dropout": config.lora_dropout,
            "use_rslora": config.use_rslora,
            "target_modules": self.paths(),
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "base_model_name_or_path": base_model_name_or_path,
        })
    }

    /// Writes a PEFT adapter folder `dir` that `peft.PeftModel.from_pretrained(base, dir)` loads on the
    /// transformers model of the same base: [`ADAPTER_CONFIG_FILE`] ([`LoraAdapters::peft_config_json`])
    /// and [`ADAPTER_WEIGHTS_FILE`] (every `base_model.model.<path>.lora_A.weight` `[r, in]` /
    /// `lora_B.weight` `[out, r]`, in the adapters' dtype). Atomic ([`crate::atomic::write_dir`]; an
    /// earlier export at `dir` is replaced).
    ///
    /// # Errors
    /// [`crate::InputError::InvalidPath`] for a `dir` that cannot be written (checked first);
    /// [`crate::WeightsError::NonFinite`] for an adapter holding NaN or ±inf (nothing is written);
    /// [`Error::Io`], [`Error::Torch`].
    pub fn save_peft(&self, dir: &Path, base_model_name_or_path: Option<&str>) -> Result<()> {
        crate::atomic::check_dir_target(dir, "dir", ExistingDir::ReplaceFiles)?;
        let named = self.named_parameters();
        for (name, tensor) in &named {
            finite_weight(tensor, name, "the adapters to save")?;
        }
        let config = self.peft_config_json(base_model_name_or_path);
        crate::atomic::write_dir(dir, "dir", ExistingDir::ReplaceFiles, |tmp| {
            let path = tmp.join(ADAPTER_CONFIG_FILE);
            let text = serde_json::to_string_pretty(&config)
                .map_err(|e| invalid(&path, format!("cannot serialize: {e}")))?;
            std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
            let tensors = tch::no_grad(|| -> Result<Vec<(String, Tensor)>> {
                named
                    .iter()
                    .map(|(name, t)| {
                        Ok((
                            name.clone(),
                            t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?,
                        ))
                    })
                    .collect()
            })?;
            Tensor::write_safetensors(&tensors, tmp.join(ADAPTER_WEIGHTS_FILE))?;
            Ok(())
        })
    }

    /// Loads the weights of a PEFT adapter folder into these adapters (made with the same rank, scaling
    /// and targets): `adapter_config.json` must give the same `r`, the same scaling (`lora_alpha`,
    /// `use_rslora`), and `adapter_model.safetensors` exactly these adapters' tensors and shapes.
    ///
    /// # Errors
    /// [`CheckpointError::Invalid`] for a missing or unreadable config, or one with another `r` or
    /// scaling; [`crate::WeightsError::Parameters`] listing missing / unexpected / reshaped tensors;
    /// [`Error::Io`], [`Error::Torch`].
    pub fn load_peft(&self, dir: &Path) -> Result<()> {
        let path = dir.join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let saved: Value =
            serde_json::from_str(&text).map_err(|e| invalid(&path, format!("is not JSON: {e}")))?;
        let r = saved.get("r").and_then(Value::as_i64);
        let alpha = saved.get("lora_alpha").and_then(Value::as_f64);
        let rslora = saved.get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
        let config = self.config();
        let same_scaling = match (r, alpha) {
            (Some(r), Some(alpha)) => {
                let mut other = config.clone();
                (other.r, other.lora_alpha, other.use_rslora) = (r, alpha, rslora);
                r == config.r && other.scaling() == config.scaling()
            }
            _ => false,
        };
        if !same_scaling {
            return Err(invalid(
                &path,
                format!(
                    "holds r = {r:?}, lora_alpha = {alpha:?}, use_rslora = {rslora}; these adapters have r = {}, \
                     lora_alpha = {}, use_rslora = {}",
                    config.r, config.lora_alpha, config.use_rslora
                ),
            ));
        }
        let weights = dir.join(ADAPTER_WEIGHTS_FILE);
        let values = Tensor::read_safetensors(&weights)?;
        self.load_parameters(values, &weights.display().to_string())
    }
}
