//! The FLOPs of a [`Decoder`] forward pass ([`Decoder::body_forward_flops`],
//! [`Decoder::head_flops_per_position`]), for every family, counted as `crate::train::flops` says:
//! `2·m·n·k` per matrix product; biases, elementwise work and the embedding gather not counted.

use super::model::Decoder;

impl Decoder {
    /// FLOPs of one forward pass of the decoder body (every layer; not the head) over `rows` sequences of
    /// `positions` positions each, attending over the same `positions` key slots (training and scoring,
    /// no cache). Per row of `T = positions` and per layer, with hidden size `H`, MLP size `I`, `A` query
    /// heads and `K` key / value heads of size `D`:
    /// - projections `2·T·H·(A·D + 2·K·D)` (q, k, v) and `2·T·A·D·H` (o);
    /// - attention `2·A·T·T·D` (`q·kᵀ`) and `2·A·T·T·D` (`p·v`): every query against every key slot, as
    ///   the masked kernels compute it (causal and sliding-window masks do not shrink the products);
    /// - MLP `3 · 2·T·H·I` (gate, up, down).
    pub fn body_forward_flops(&self, rows: usize, positions: usize) -> f64 {
        let spec = self.spec();
        let (t, h, i) = (
            positions as f64,
            spec.hidden_size as f64,
            spec.intermediate_size as f64,
        );
        let (a, k, d) = (spec.heads as f64, spec.kv_heads as f64, spec.head_dim as f64);
        let projections = 2.0 * t * h * (a * d + 2.0 * k * d) + 2.0 * t * a * d * h;
        let attention = 2.0 * (2.0 * a * t * t * d);
        let mlp = 3.0 * 2.0 * t * h * i;
        rows as f64 * spec.layers() as f64 * (projections + attention + mlp)
    }

    /// FLOPs of the LM head (`[V, H]`, tied or not) for one position: `2·H·V`.
    pub fn head_flops_per_position(&self) -> f64 {
        2.0 * self.spec().hidden_size as f64 * self.spec().vocab_size as f64
    }
}
