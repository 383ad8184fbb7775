//! # tch-rpo
//!
//! Preference-optimization losses for language models on libtorch (through [`tch`]): chunked log-prob
//! gathering, the DPO family, SFT with explicit normalization, and **RPO** — Regularized Preference
//! Optimization (Liu et al., NeurIPS 2024), DPO plus an SFT term that provably curbs reward
//! overoptimization:
//!
//! ```text
//! L_RPO(θ) = η·β · E[−log π_θ(y_w | x)]
//!          + E[−log σ(β·(log π_θ(y_w|x) − log π_ref(y_w|x)) − β·(log π_θ(y_l|x) − log π_ref(y_l|x)))]
//! ```
//!
//! where `log π(y|x)` sums the per-token log-probs of the response (prompt excluded).
//!
//! # Quick start
//!
//! ```no_run
//! use tch::{Device, Kind, Tensor};
//! use tch_rpo::{compute_loss, LogProbOptions, LossBatch, Reference, RpoConfig};
//!
//! # fn main() -> tch_rpo::Result<()> {
//! let (pairs, seq, vocab) = (2, 16, 100);
//! // One forward pass over 2B rows: B chosen sequences, then B rejected ones.
//! let policy_logits = Tensor::randn([2 * pairs, seq, vocab], (Kind::Float, Device::Cpu)).set_requires_grad(true);
//! let reference_logits = Tensor::randn([2 * pairs, seq, vocab], (Kind::Float, Device::Cpu));
//! // Labels = input ids, with prompt and padding positions set to -100.
//! let labels = Tensor::randint(vocab, [2 * pairs, seq], (Kind::Int64, Device::Cpu));
//! let _ = labels.narrow(1, 0, 4).fill_(-100); // a 4-token prompt
//!
//! let config = RpoConfig::paper_gemma_series(); // sigmoid DPO, β = 0.05, + η·β · summed chosen NLL
//! // (by TRL's names: RpoConfig::from_trl(0.05, &["sigmoid", "sft"], Some(&[1.0, 0.005]), 0.0)?)
//! let batch = LossBatch::logits(&policy_logits, &labels)
//!     .with_reference(Reference::Logits(&reference_logits))
//!     .with_options(LogProbOptions::causal()); // logits at t predict token t+1
//! let out = compute_loss(&config, &batch)?;
//! out.loss.backward();
//! for (name, value) in out.metric_values()? {
//!     println!("{name}: {value:.4}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! One call shape for every loss: `compute_loss(&objective, &LossBatch) -> Result<Output>`. The objective is a
//! [`DpoConfig`], [`SftConfig`], [`RpoConfig`] or your own [`Objective`]; the batch is one [`LossBatch`] at any
//! input level — per-sequence log-probs ([`LossBatch::log_probs`]), logits + labels ([`LossBatch::logits`]) or
//! hidden states + [`LinearHead`] + labels ([`LossBatch::hidden`], fused: the logits are never formed) — with
//! one [`Reference`] type, the `[2B]` layout (chosen rows first), the whole-step [`GlobalBatch`] and one
//! [`LogProbOptions`].
//!
//! # Modules
//! - [`logprobs`]: per-token / per-sequence log-probs from `[B, T, V]` logits, chunked and f32-accurate, with
//!   optional token statistics; [`LogProbOptions`], the one options type of every level.
//! - [`loss`]: the loss engine — [`LossBatch`], the [`Objective`] trait, [`compute_loss`], the [`Reference`].
//! - [`loss::dpo`]: TRL's `loss_type`s by name — sigmoid, sigmoid_norm, hinge, IPO, robust, exo_pair, nca_pair,
//!   bco_pair, sppo_hard, apo_zero, apo_down, discopop — plus cdpo, and weighted sums of them, with TRL's metric
//!   names and per-pair outputs.
//! - [`loss::sft`]: chosen-response NLL with the normalization named (sequence sum / sequence mean / token
//!   mean) and whole-step normalizers for gradient accumulation.
//! - [`loss::rpo`]: RPO = DPO + c · SFT, with the paper's presets and the OpenRLHF / TRL weightings.
//! - [`fused`]: the linear-head engine under the hidden-state level: log-probs and exact gradients from final
//!   hidden states and the LM head, chunked over scored tokens, never holding the `[2B, T, V]` logits (head
//!   bias, logit scale and Gemma-2 soft-cap in [`LinearHead`]); [`fused_loss`] for user-defined losses.
//! - [`train`] (feature `train`, default): the [`train::PolicyModel`] trait, the [`train::RpoTrainer`] with
//!   its own AdamW, schedule, gradient accumulation, skip-on-non-finite safety, metrics and checkpoints.
//!   [`train::stages`]: stages with evaluation rows, chained on one data set, and the metrics CSV.
//! - [`data`] (feature `train`, default): JSON Lines preference records, tokenizers, collation, and a
//!   checkable synthetic task ([`data::word_reversal`]).
//! - [`gguf`] (feature `gguf`, default): GGUF files (llama.cpp's format): metadata, tensor infos, and
//!   tensors dequantized (F32/F16/BF16, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, Q4_K/Q5_K/Q6_K) into tch tensors.
//! - [`models`] (features `gemma` and `llama`, default; need no `train`): one shared decoder
//!   ([`models::decoder`]: decoding, checkpointing, loading, and with `train` the trainer adapter) and its
//!   families — Gemma 1 / 2 / 3 ([`models::gemma`], with export) and Llama 3.x / SmolLM2 / Qwen2 / Qwen3 /
//!   Mistral ([`models::llama`]) — loaded from a Hugging Face folder, a GGUF file or parameters in memory,
//!   and the GGUF tokenizer ([`models::tokenizer`]).
//! - [`lora`] (feature `lora`, default): LoRA adapters on a model's linear layers (PEFT's init, scaling and
//!   names), switched off for the reference, merged into the base, exported as a PEFT folder or a
//!   llama.cpp adapter GGUF; with `train`, [`lora::LoraPolicy`] trains only the adapters.
//! - [`chat`] (feature `chat-template`, default): the Jinja chat template a model ships (GGUF, or
//!   `tokenizer_config.json`), rendered exactly as transformers' `apply_chat_template` renders it.
//! - [`autograd`]: autograd helpers shared by the models, the fused losses and the trainer
//!   ([`autograd::backward_from`], [`autograd::leaf_grad`]; with feature `autograd` the `.grad` setters).
//! - [`dist`] (feature `dist`, default): data parallelism on libtorch's c10d: process groups from the
//!   launcher environment (Gloo on CPU, NCCL on CUDA), bounded collectives, gradient buckets, a
//!   distributed sampler.
//! - [`libtorch`]: which libtorch the process loaded (real paths), and [`libtorch::init_cuda`] for a binary
//!   linked without `libtorch_cuda`.
//! - [`memory`]: the process's resident memory (current and peak RSS), a per-phase report, and glibc's
//!   mmap threshold for tensor-heavy programs.
//! - [`atomic`]: how every artifact (GGUF file, exported folder, checkpoint) is written: a temporary
//!   beside the target, fsynced, renamed into place; never a partial artifact under the final name.
//! - [`error`]: the one [`Error`] enum; every public function that can fail returns [`Result`].
//!
//! # Devices and host syncs
//! Everything runs on the device of its inputs. What reads values back to the host (a sync on CUDA):
//! - input validation (label range, finiteness, token counts), switched off with
//!   [`LogProbOptions::validate_inputs`] (the one switch, in every batch's options);
//! - the fused path's selection of scored tokens (`nonzero` / `masked_select` have data-dependent sizes): one
//!   read of the token count per scored batch, and one of the `[R]` per-row counts when the built-in fused
//!   losses plan their one-pass chunks;
//! - the token-mean SFT normalization without a [`GlobalBatch`] only when validating (its token count);
//! - reading metrics ([`PreferenceMetrics::values`], [`RpoOutput::metric_values`], [`count_tokens`]); the
//!   trainer reads its scalars once per micro-batch.
#![warn(missing_docs)]

pub mod atomic;
pub mod autograd;
#[cfg(feature = "chat-template")]
pub mod chat;
#[cfg(feature = "train")]
pub mod data;
#[cfg(feature = "dist")]
pub mod dist;
pub mod error;
pub mod fused;
#[cfg(feature = "gguf")]
pub mod gguf;
pub mod libtorch;
pub mod logprobs;
#[cfg(feature = "lora")]
pub mod lora;
pub mod loss;
pub mod memory;
#[cfg(any(feature = "gemma", feature = "llama"))]
pub mod models;
pub mod timing;
#[cfg(feature = "train")]
pub mod train;
mod validate;

pub use error::{
    CheckpointError, DataError, Error, GgufError, InputError, LoraError, ParamValue, ParameterMismatch,
    Result, ShapeMismatch, WeightsError,
};
#[cfg(feature = "dist")]
pub use error::{DistError, DistStorePeer};
pub use fused::{fused_loss, fused_sequence_logprobs, FusedLoss, LinearHead};
pub use logprobs::{
    sequence_logprobs, token_logprobs, LogProbOptions, SequenceLogProbs, TokenLogProbs, TokenStats,
    DEFAULT_CHUNK_BYTES, DEFAULT_FUSED_CHUNK_BYTES, DEFAULT_IGNORE_INDEX,
};
pub use loss::dpo::{DpoConfig, DpoLoss, DpoOutput, MIN_QUADRATIC_BETA};
pub use loss::metrics::PreferenceMetrics;
pub use loss::rpo::{RpoConfig, RpoOutput, SftWeight, PAPER_ETA};
pub use loss::sft::{count_tokens, SftConfig, SftNormalization, SftOutput};
pub use loss::{
    compute_loss, GlobalBatch, LossBatch, Objective, PolicyInput, Reference, RowLayout, Sequences,
};
