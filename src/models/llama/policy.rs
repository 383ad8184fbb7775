//! [`LlamaPolicy`]: the shared [`DecoderPolicy`] over a [`Llama`].

use super::model::Llama;
use crate::models::decoder::DecoderPolicy;

/// A Llama-family model and its variables as the trainer's
/// [`PolicyModel`](crate::train::PolicyModel): logits and fused (hidden-state) paths, per-layer gradient
/// checkpointing ([`DecoderPolicy::set_gradient_checkpointing`]), `try_clone`.
pub type LlamaPolicy = DecoderPolicy<Llama>;
