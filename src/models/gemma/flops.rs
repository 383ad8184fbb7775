//! The FLOPs of a [`Gemma`](super::Gemma) forward pass ([`GemmaConfig::body_forward_flops`],
//! [`GemmaConfig::head_flops_per_position`]), counted as `crate::train::flops` says: `2·m·n·k` per matrix
//! product, elementwise work and the embedding gather not counted.

use super::config::GemmaConfig;

impl GemmaConfig {
    /// FLOPs of one forward pass of the decoder body (every layer; not the head) over `rows` sequences of
    /// `positions` positions each, attending over the same `positions` key slots (training and scoring,
    /// no cache). Per row of `T = positions` and per layer, with hidden size `H`, MLP size `I`, `A` query
    /// heads and `K` key / value heads of size `D`:
    /// - projections `2·T·H·(A·D + 2·K·D)` (q, k, v) and `2·T·A·D·H` (o);
    /// - attention `2·A·T·T·D` (`q·kᵀ`) and `2·A·T·T·D` (`p·v`): every query against every key slot, as
    ///   the masked kernels compute it (causal and sliding-window masks do not shrink the products);
    /// - MLP `3 · 2·T·H·I` (gate, up, down).
    pub fn body_forward_flops(&self, rows: usize, positions: usize) -> f64 {
        let (t, h, i) = (
            positions as f64,
            self.hidden_size as f64,
            self.intermediate_size as f64,
        );
        let (a, k, d) = (
            self.num_attention_heads as f64,
            self.kv_heads() as f64,
            self.head_size() as f64,
        );
        let projections = 2.0 * t * h * (a * d + 2.0 * k * d) + 2.0 * t * a * d * h;
        let attention = 2.0 * (2.0 * a * t * t * d);
        let mlp = 3.0 * 2.0 * t * h * i;
        rows as f64 * self.num_hidden_layers as f64 * (projections + attention + mlp)
    }

    /// FLOPs of the LM head (tied `[V, H]` embedding) for one position: `2·H·V`.
    pub fn head_flops_per_position(&self) -> f64 {
        2.0 * self.hidden_size as f64 * self.vocab_size as f64
    }
}
