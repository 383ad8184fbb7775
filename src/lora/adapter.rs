//! [`LoraAdapter`]: the low-rank update of one linear layer, and the switches its set shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tch::{Kind, Tensor};

use crate::autograd::grad_enabled;
use crate::error::Result;

/// The switches every adapter of one [`crate::lora::LoraAdapters`] set reads: on / off, training / eval.
#[derive(Debug)]
pub(crate) struct LoraSwitch {
    enabled: AtomicBool,
    training: AtomicBool,
}

impl LoraSwitch {
    /// Enabled, training.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            enabled: AtomicBool::new(true),
            training: AtomicBool::new(true),
        })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// Sets on / off; returns the previous state.
    pub(crate) fn set_enabled(&self, on: bool) -> bool {
        self.enabled.swap(on, Ordering::SeqCst)
    }

    pub(crate) fn training(&self) -> bool {
        self.training.load(Ordering::SeqCst)
    }

    pub(crate) fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::SeqCst);
    }
}

/// The LoRA update of one linear layer: `A` `[r, in]`, `B` `[out, r]`, the scaling `s` and the dropout
/// probability `p`, plus the switches of the set it belongs to (made by
/// [`crate::lora::LoraAdapters::attach`]).
///
/// A model calls [`LoraAdapter::apply`] on the base layer's output in its linear layer's forward pass; the
/// crate's models do so in their shared linear layer, a downstream model in its own
/// ([`crate::lora::LoraModel`]).
#[derive(Debug)]
pub struct LoraAdapter {
    pub(crate) a: Tensor,
    pub(crate) b: Tensor,
    pub(crate) scaling: f64,
    pub(crate) dropout: f64,
    pub(crate) switch: Arc<LoraSwitch>,
}

impl LoraAdapter {
    /// Another handle on the same adapter (tensors shared, same switches).
    pub fn shallow_clone(&self) -> Self {
        Self {
            a: self.a.shallow_clone(),
            b: self.b.shallow_clone(),
            scaling: self.scaling,
            dropout: self.dropout,
            switch: Arc::clone(&self.switch),
        }
    }

    /// `base + s · dropout(xs)·Aᵀ·Bᵀ` for the base layer's input `xs` `[..., in]` and output `base`
    /// `[..., out]` (the same dtype as the adapter); `base` itself when the set is switched off. Dropout
    /// (probability `p`) applies while the set is training and autograd records; with `B = 0` the result
    /// equals `base` exactly (`base + 0`).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] for shapes or dtypes that do not fit.
    pub fn apply(&self, xs: &Tensor, base: Tensor) -> Result<Tensor> {
        if !self.switch.enabled() {
            return Ok(base);
        }
        let input = match self.dropout > 0.0 && self.switch.training() && grad_enabled()? {
            true => xs.f_dropout(self.dropout, true)?,
            false => xs.shallow_clone(),
        };
        let update = input
            .f_linear::<&Tensor>(&self.a, None)?
            .f_linear::<&Tensor>(&self.b, None)?
            .f_mul_scalar(self.scaling)?;
        Ok(base.f_add(&update)?)
    }

    /// `A` `[r, in]` (the parameter itself: a shallow handle).
    pub fn lora_a(&self) -> Tensor {
        self.a.shallow_clone()
    }

    /// `B` `[out, r]` (the parameter itself: a shallow handle).
    pub fn lora_b(&self) -> Tensor {
        self.b.shallow_clone()
    }

    /// The scaling `s`.
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// The dropout probability.
    pub fn dropout(&self) -> f64 {
        self.dropout
    }

    /// The weight update `s·B·A` `[out, in]` in f32, without gradient.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] if the product fails.
    pub fn delta_weight(&self) -> Result<Tensor> {
        tch::no_grad(|| {
            Ok(self
                .b
                .f_to_kind(Kind::Float)?
                .f_matmul(&self.a.f_to_kind(Kind::Float)?)?
                .f_mul_scalar(self.scaling)?)
        })
    }
}
