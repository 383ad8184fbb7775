//! llama.cpp LoRA adapter files: [`LoraAdapters::save_gguf_adapter`].

use std::path::Path;

use super::adapters::LoraAdapters;
use crate::error::{Error, GgufError, Result};
use crate::gguf::{GgmlType, GgufValue, GgufWriter};
use crate::validate::finite_weight;
use tch::Tensor;

impl LoraAdapters {
    /// Writes the adapters as a llama.cpp LoRA adapter GGUF (what `convert_lora_to_gguf.py` writes and
    /// `llama-cli -m base.gguf --lora FILE` loads): metadata `general.architecture` = `architecture` (it must
    /// equal the base file's), `general.type` = `adapter`, `adapter.type` = `lora`, `adapter.lora.alpha`
    /// (f32) = [`crate::lora::LoraConfig::plain_alpha`] (llama.cpp scales by `alpha / r`; for rsLoRA this is
    /// `lora_alpha · √r`, the same scaling); per adapted layer the tensors `<gguf weight name>.lora_a` (PyTorch
    /// shape `[r, in]`, GGUF dimensions `[in, r]`) and `.lora_b` (`[out, r]`, GGUF `[r, out]`), where
    /// `tensor_name` maps a layer's Hugging Face weight name (`<path>.weight`) to the base GGUF's tensor name
    /// (for Gemma 3: [`crate::models::gemma::gguf_tensor_name`]). Tensors as `ty`: F32, F16 or BF16.
    /// Atomic ([`GgufWriter::write`]). Returns the file's size in bytes.
    ///
    /// # Errors
    /// [`GgufError::Invalid`] for another `ty` or a layer `tensor_name` does not map;
    /// [`crate::WeightsError::NonFinite`] for an adapter holding NaN or ±inf; those of [`GgufWriter::write`].
    pub fn save_gguf_adapter(
        &self,
        path: &Path,
        architecture: &str,
        tensor_name: impl Fn(&str) -> Option<String>,
        ty: GgmlType,
    ) -> Result<u64> {
        self.save_gguf_adapter_with(path, architecture, tensor_name, |_, b| Ok(b), ty)
    }

    /// [`LoraAdapters::save_gguf_adapter`] for a base file whose matrices are stored with their rows
    /// reordered: `lora_b_rows(weight name, lora_b)` gives the `[out, r]` `lora_B` in the file's row order
    /// (`W + s·B·A` with its rows permuted is `W' + s·(P·B)·A`, so only `B`'s rows move). Llama-family files
    /// of architecture `llama` permute the q / k projections' rows per head
    /// ([`crate::models::llama::save_gguf_adapter`]).
    ///
    /// # Errors
    /// Those of [`LoraAdapters::save_gguf_adapter`], and `lora_b_rows`'s.
    pub fn save_gguf_adapter_with(
        &self,
        path: &Path,
        architecture: &str,
        tensor_name: impl Fn(&str) -> Option<String>,
        lora_b_rows: impl Fn(&str, Tensor) -> Result<Tensor>,
        ty: GgmlType,
    ) -> Result<u64> {
        crate::atomic::check_file_target(path, "path")?;
        let invalid = |reason: String| {
            Error::Gguf(GgufError::Invalid {
                path: path.display().to_string(),
                reason,
            })
        };
        if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            return Err(invalid(format!(
                "cannot write LoRA tensors as {ty}; choose F32, F16 or BF16"
            )));
        }
        let mut writer = GgufWriter::new();
        writer.add_metadata("general.architecture", GgufValue::String(architecture.into()))?;
        writer.add_metadata("general.type", GgufValue::String("adapter".into()))?;
        writer.add_metadata("adapter.type", GgufValue::String("lora".into()))?;
        writer.add_metadata(
            "adapter.lora.alpha",
            GgufValue::F32(self.config().plain_alpha() as f32),
        )?;
        for path_name in self.paths() {
            let weight_name = format!("{path_name}.weight");
            let base = tensor_name(&weight_name).ok_or_else(|| {
                invalid(format!(
                    "the adapted layer `{weight_name}` has no tensor name in the base GGUF"
                ))
            })?;
            let adapter = self.adapter(path_name).ok_or_else(|| Error::Internal {
                what: format!("listed adapter `{path_name}` not found"),
            })?;
            let (a, b) = (adapter.lora_a(), adapter.lora_b());
            finite_weight(&a, &format!("{weight_name} lora_A"), "the adapters to save")?;
            finite_weight(&b, &format!("{weight_name} lora_B"), "the adapters to save")?;
            writer.add_tensor(format!("{base}.lora_a"), &a.f_detach()?, ty)?;
            let b = lora_b_rows(&weight_name, b.f_detach()?)?;
            writer.add_tensor(format!("{base}.lora_b"), &b, ty)?;
        }
        writer.write(path)
    }
}
