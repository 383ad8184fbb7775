//! The losses: the DPO family ([`dpo`]), SFT / NLL on the target responses ([`sft`]), RPO = DPO + coefficient ×
//! SFT ([`rpo`]), with the metrics users know ([`metrics`]) — one engine for every input level.
//!
//! Every objective ([`DpoConfig`](dpo::DpoConfig), [`SftConfig`](sft::SftConfig),
//! [`RpoConfig`](rpo::RpoConfig), or your own) implements [`Objective`]: a pure function of per-sequence
//! quantities ([`Sequences`]: the policy's summed log-probs and token counts, the reference log-probs, the
//! whole-step normalizers) to the loss and its metric tensors. One entry point runs any objective from any input
//! level:
//!
//! ```text
//! compute_loss(&objective, &LossBatch) -> Result<Objective::Output>
//! ```
//!
//! | level | [`LossBatch`] constructor | how the per-sequence quantities are formed |
//! |---|---|---|
//! | log-probs | [`LossBatch::log_probs`]`(&SequenceLogProbs)` | given (`[2B]` pairs, or `[B]` SFT rows) |
//! | logits | [`LossBatch::logits`]`(&[R, T, V] logits, &[R, T] labels)` | [`crate::sequence_logprobs`] (chunked) |
//! | hidden states | [`LossBatch::hidden`]`(&[R, T, H] hidden, LinearHead, &[R, T] labels)` | the fused engine ([`crate::fused`]): no `[R, T, V]` logits |
//!
//! The batch carries the [`Reference`], the optional whole-step [`GlobalBatch`] and the one
//! [`LogProbOptions`](crate::LogProbOptions) (with its one `validate_inputs` switch). A preference batch is `2B` rows, the `B`
//! chosen sequences first; an SFT batch is `B` target rows.
//!
//! What happens once per call ([`compute_loss`]): the objective's and options' validation, the reference's
//! resolution (scored under `no_grad` when given as logits or hidden states), and, with
//! [`LogProbOptions::validate_inputs`](crate::LogProbOptions::validate_inputs), the input checks that read values back. The objective's pure
//! function then runs once (log-prob and logits levels) or once per chunk of whole pairs (the fused one-pass
//! schedule), and nothing is read back until metrics are read ([`rpo::RpoOutput::metric_values`]).
//!
//! Module dependencies go one way: `loss → fused → logprobs` (the fused engine knows nothing of the losses).

mod batch;
mod compute;
pub mod dpo;
pub mod metrics;
mod objective;
mod reference;
pub mod rpo;
pub mod sft;

pub use batch::{GlobalBatch, LossBatch, PolicyInput};
pub use compute::compute_loss;
#[cfg(feature = "train")]
pub(crate) use compute::compute_loss_with;
pub use objective::{Objective, RowLayout, Sequences};
pub use reference::Reference;
