//! Per-token and per-sequence log-probabilities of target ids, gathered from logits in chunks.
//!
//! For logits `z ∈ ℝ^{B×T×V}` and labels `y ∈ ℤ^{B×T}` the per-token log-probability is
//!
//! ```text
//! log p(y_{b,t}) = z_{b,t,y_{b,t}} − logsumexp_v z_{b,t,v}
//! ```
//!
//! computed in chunks of rows of a flat `[B·T, V]` view of the logits (contiguous logits; strided logits are
//! chunked over whole sequences, or over time one sequence at a time), each chunk upcast to f32 (f64 stays f64),
//! so the result is f32-accurate for bf16/f16 logits and no full-size f32 copy or `log_softmax` of the logits is
//! allocated (see *Memory* for the one exception under autograd with bf16/f16 logits).
//! Positions whose label equals the ignore index get log-prob `0` and are excluded from the mask.
//!
//! # Token statistics
//! With [`LogProbOptions::token_stats`] the same chunks also give, per scored token, the mean logit over the
//! vocabulary, the entropy of the predicted distribution and whether the arg-max is the label ([`TokenStats`]);
//! they feed the `logits/chosen`, `logits/rejected`, `entropy` and `mean_token_accuracy` metrics
//! ([`crate::PreferenceMetrics`]). Off by default: they cost a second read of every chunk and a few
//! chunk-sized temporaries (measured in `docs/benchmarks.md`).
//!
//! With [`LogProbOptions::shift`] (the causal-LM convention) the logits at position `t` predict the label at
//! `t + 1`: the result has `T − 1` positions, `log p(y_{b,t+1} | z_{b,t})`.
//!
//! # Memory
//! Without autograd (logits that do not require grad, e.g. a reference model's): one f32 scratch buffer of at
//! most [`LogProbOptions::chunk_bytes`] bytes, reused by every chunk (so no chunk-sized allocation per chunk),
//! plus `[B, T]`-sized outputs.
//! Backward (when the logits require grad): f32/f64 logits save nothing larger than the logits themselves
//! (the chunks are views); bf16/f16 logits save one softmax tensor in the logits' own dtype — a second tensor of
//! the logits' size `[B, T, V]` — instead of the f32 copy (twice that size) that upcasting under autograd keeps.
//!
//! # Host syncs
//! With [`LogProbOptions::validate_inputs`] the label-range and finiteness checks read values back (a device
//! sync on CUDA). Without it nothing is read back.
//!
//! # Modules
//! - `options`: [`LogProbOptions`], the one options type of every loss level (label reading, validation, token
//!   statistics, and both chunk budgets: [`LogProbOptions::chunk_bytes`] for logits,
//!   [`LogProbOptions::fused_chunk_bytes`] for the fused linear-head path).
//! - `sequence`: the per-token / per-sequence result types ([`TokenLogProbs`], [`SequenceLogProbs`], [`TokenStats`]).
//! - `gather`: the chunked gathering itself ([`token_logprobs`], [`sequence_logprobs`]).

mod gather;
mod options;
mod sequence;

pub(crate) use gather::{check_label_range, stats_given_lse};
pub use gather::{sequence_logprobs, token_logprobs};
pub use options::{LogProbOptions, DEFAULT_CHUNK_BYTES, DEFAULT_FUSED_CHUNK_BYTES, DEFAULT_IGNORE_INDEX};
pub(crate) use sequence::split_rows;
pub use sequence::{SequenceLogProbs, TokenLogProbs, TokenStats};
