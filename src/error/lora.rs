//! The errors of LoRA adapters ([`LoraError`]): targets, ranks, and adapters met with another base model.

/// LoRA adapters cannot be attached, trained or loaded as asked. (Bad scalar settings — `lora_alpha`,
/// `lora_dropout`, a rank of 0 — are [`InputError::InvalidParameter`](super::InputError::InvalidParameter).)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoraError {
    /// A target name matches no adaptable linear layer of the model.
    #[error("LoRA target `{target}` names no adaptable linear layer of the model; its linear layers are: {available}")]
    UnknownTarget {
        /// The target as given.
        target: String,
        /// The model's adaptable layer names (the short names, e.g. `q_proj`, comma separated).
        available: String,
    },
    /// The rank is larger than a targeted layer allows (`r ≤ min(in, out)`).
    #[error(
        "LoRA rank r = {rank} is invalid for `{layer}` (weight [{out_features}, {in_features}]): it must be in \
         1..={max} = min(in, out)"
    )]
    Rank {
        /// The layer's module path.
        layer: String,
        /// The rank asked for.
        rank: i64,
        /// The layer's input features.
        in_features: i64,
        /// The layer's output features.
        out_features: i64,
        /// `min(in_features, out_features)`.
        max: i64,
    },
    /// Adapters (a trainer checkpoint, a saved adapter) made for one base model met another: a different
    /// fingerprint of the base weights.
    #[error(
        "{origin} was made on the base model with fingerprint {expected}, but this model's base has {found}"
    )]
    BaseMismatch {
        /// What holds the adapters (e.g. "checkpoint DIR").
        origin: String,
        /// The base fingerprint recorded with the adapters (`none` when none was).
        expected: String,
        /// The fingerprint of this model's base (`none` when it has no adapters).
        found: String,
    },
}
