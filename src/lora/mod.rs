//! LoRA adapters (feature `lora`, on by default): low-rank updates `W + s·B·A` of a model's linear
//! layers, trained while the base weights stay frozen (Hu et al., 2021; PEFT's conventions).
//!
//! An adapted linear layer with weight `W` `[out, in]` computes
//!
//! ```text
//! y = x·Wᵀ + s · dropout(x)·Aᵀ·Bᵀ,   A: [r, in],  B: [out, r],  s = lora_alpha / r  (rsLoRA: lora_alpha / √r)
//! ```
//!
//! `A` starts Kaiming-uniform `U(−1/√in, 1/√in)` (PEFT's init, PyTorch's `nn.Linear` with `a = √5`) and
//! `B` at zero, so a fresh adapter leaves the outputs exactly unchanged. The pieces:
//!
//! - [`LoraConfig`]: rank, `lora_alpha`, dropout, rsLoRA, target layers (PEFT's names and checks);
//! - [`LoraModel`]: how a model lists its adaptable linear layers and holds an adapter per layer. The
//!   crate's Gemma implements it (every projection goes through one shared linear layer that applies
//!   the adapter; the seven projections `q_proj k_proj v_proj o_proj gate_proj up_proj down_proj` are its
//!   default targets, the embedding / head never); a downstream model implements it for its own layers;
//! - [`LoraAdapters`]: the adapters of one model, made by [`LoraAdapters::attach`]: one switch turns
//!   them all off and on ([`LoraAdapters::set_enabled`], nothing detached) and sets training / evaluation
//!   mode (dropout); their parameters under PEFT's names (`base_model.model.<path>.lora_A.weight`);
//!   merging into the base weights ([`LoraAdapters::merged_parameters`]); PEFT adapter folders
//!   ([`LoraAdapters::save_peft`], [`LoraAdapters::load_peft`]) and, with `gguf`, llama.cpp adapter GGUFs
//!   ([`LoraAdapters::save_gguf_adapter`]);
//! - with `train`: [`LoraPolicy`], the trainer's model whose only trainable parameters are the adapters,
//!   with the base's [`fingerprint()`] in its checkpoints; the reference is the same model with the
//!   adapters off ([`crate::train::ReferenceSource::AdaptersOff`]).
//!
//! ```no_run
//! use tch::{Device, Kind};
//! use tch_rpo::lora::{LoraConfig, LoraPolicy};
//! use tch_rpo::models::gemma::{Gemma, GemmaPolicy, LoadOptions, WeightSource};
//! use tch_rpo::train::{ReferenceSource, RpoTrainer, RpoTrainerConfig};
//!
//! # fn main() -> tch_rpo::Result<()> {
//! let dir = std::path::Path::new("gemma-3-270m");
//! let (vs, model) = Gemma::load(WeightSource::HfDir(dir), &LoadOptions::new(Device::Cpu, Kind::Float))?;
//! let policy = LoraPolicy::new(GemmaPolicy::new(vs, model), &LoraConfig::new(16, 32.0))?;
//! let trainer = RpoTrainer::new(policy, ReferenceSource::AdaptersOff, RpoTrainerConfig::default())?;
//! // ... trainer.fit(...), then trainer.model().adapters().save_peft(...)
//! # Ok(())
//! # }
//! ```

mod adapter;
mod adapters;
mod config;
mod fingerprint;
#[cfg(feature = "gguf")]
mod gguf;
mod model;
mod peft;
#[cfg(feature = "train")]
mod policy;

pub use adapter::LoraAdapter;
pub use adapters::{peft_names, LoraAdapters, PEFT_PREFIX};
pub use config::LoraConfig;
pub use fingerprint::fingerprint;
pub use model::{AdaptableLinear, LoraModel};
pub use peft::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
#[cfg(feature = "train")]
pub use policy::LoraPolicy;
