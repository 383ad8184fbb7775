//! The building blocks of a decoder layer: RMSNorm (Gemma's `(1 + w)` or Llama's `w` scale), attention
//! (its core is [`crate::models::attention::attend`]), the gated MLP (GeGLU or SwiGLU), and the layer that combines them
//! (crate-internal; [`Decoder`](super::Decoder) is the public model).

use tch::{nn, Tensor};

use super::spec::{Activation, NormStyle};
use crate::error::{Error, Result};
use crate::models::attention::attend;
pub(crate) use crate::models::attention::soft_cap;
use crate::models::linear::Linear;

/// A new parameter `path/name` of shape `dims`: libtorch's failure to allocate it (a configuration whose
/// sizes exceed the memory) is [`Error::OutOfMemory`] naming it, where tch's `var` would panic.
pub(crate) fn parameter(path: &nn::Path, name: &str, dims: &[i64], init: nn::Init) -> Result<Tensor> {
    path.f_var(name, dims, init).map_err(|e| {
        let elements = dims
            .iter()
            .map(|&d| d.max(0) as u64)
            .fold(1u64, u64::saturating_mul);
        let bytes = elements.saturating_mul(path.kind().elt_size_in_bytes() as u64);
        let reason = e.to_string();
        let first_line = reason.lines().next().unwrap_or_default();
        let what = format!("parameter `{}` {dims:?} ({first_line})", path.path(name));
        Error::OutOfMemory { what, bytes }
    })
}

/// RMSNorm over the last dimension: `x̂ = x · rsqrt(mean(x²) + eps)` computed in f32, then scaled as
/// [`NormStyle`] says (Gemma: `x̂ · (1 + w)` in f32, cast back; Llama: `w · x̂`, `x̂` cast back first).
pub(crate) struct RmsNorm {
    pub(crate) weight: Tensor,
    pub(crate) eps: f64,
    pub(crate) style: NormStyle,
}

impl RmsNorm {
    /// A norm of `size` whose weight starts at `init`.
    pub(crate) fn new(path: nn::Path, size: i64, eps: f64, style: NormStyle, init: nn::Init) -> Result<Self> {
        Ok(Self {
            weight: parameter(&path, "weight", &[size], init)?,
            eps,
            style,
        })
    }

    pub(crate) fn shallow_clone(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            ..*self
        }
    }

    /// `RMSNorm(xs)` as the struct's docs say. With the `autograd` feature it is one autograd node
    /// (`csrc/rms_norm.cpp`: the same forward ops, a backward that saves only `xs`, the weight and the
    /// `[..., 1]` reciprocal RMS), else the composite form ([`RmsNorm::forward_composite`]).
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "autograd")]
        {
            let one_plus = matches!(self.style, NormStyle::OnePlusWeight);
            crate::autograd::rms_norm(xs, &self.weight, self.eps, one_plus)
        }
        #[cfg(not(feature = "autograd"))]
        self.forward_composite(xs)
    }

    /// The composite form of [`RmsNorm::forward`] (libtorch's autograd records every op).
    #[cfg(not(feature = "autograd"))]
    fn forward_composite(&self, xs: &Tensor) -> Result<Tensor> {
        let x = xs.f_to_kind(tch::Kind::Float)?;
        let mean_square = x.f_square()?.f_mean_dim(-1, true, tch::Kind::Float)?;
        let normed = x.f_mul(&mean_square.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        match self.style {
            NormStyle::OnePlusWeight => {
                let scale = self.weight.f_to_kind(tch::Kind::Float)?.f_add_scalar(1.0)?;
                Ok(normed.f_mul(&scale)?.f_to_kind(xs.kind())?)
            }
            NormStyle::Weight => Ok(self.weight.f_mul(&normed.f_to_kind(xs.kind())?)?),
        }
    }
}

/// `cat(-x2, x1)` over the last dimension.
pub(crate) fn rotate_half(xs: &Tensor) -> Result<Tensor> {
    let half = xs.size().last().copied().unwrap_or(0) / 2;
    let x1 = xs.f_narrow(-1, 0, half)?;
    let x2 = xs.f_narrow(-1, half, half)?;
    Ok(Tensor::f_cat(&[x2.f_neg()?, x1], -1)?)
}

/// The cached keys and values of one attention layer, `[N, kv_heads, S, head_dim]` each (RoPE applied,
/// before the grouped-query repetition).
#[derive(Debug, Default)]
pub(crate) struct LayerCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
}

impl LayerCache {
    /// Appends the new `keys` / `values` `[N, kv_heads, T, head_dim]`; returns all of them (cached + new)
    /// for this step, and keeps at most the last `keep` slots when given (a sliding layer).
    fn append(&mut self, keys: Tensor, values: Tensor, keep: Option<i64>) -> Result<(Tensor, Tensor)> {
        let join = |old: &Option<Tensor>, new: Tensor| -> Result<Tensor> {
            match old {
                Some(old) => Ok(Tensor::f_cat(&[old, &new], 2)?),
                None => Ok(new),
            }
        };
        let (keys, values) = (join(&self.keys, keys)?, join(&self.values, values)?);
        let slots = keys.size()[2];
        let kept = keep.map_or(slots, |k| k.clamp(0, slots));
        self.keys = Some(keys.f_narrow(2, slots - kept, kept)?);
        self.values = Some(values.f_narrow(2, slots - kept, kept)?);
        Ok((keys, values))
    }

    /// The number of cached slots.
    pub(crate) fn len(&self) -> i64 {
        self.keys.as_ref().map_or(0, |k| k.size()[2])
    }
}

pub(crate) struct Attention {
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) o_proj: Linear,
    pub(crate) heads: i64,
    pub(crate) kv_heads: i64,
    pub(crate) head_dim: i64,
    pub(crate) scale: f64,
    pub(crate) logit_cap: Option<f64>,
    pub(crate) window: Option<i64>,
    /// Gemma 3 / Qwen3: per-head RMSNorm of the queries and keys (before RoPE).
    pub(crate) q_norm: Option<RmsNorm>,
    /// See `q_norm`.
    pub(crate) k_norm: Option<RmsNorm>,
}

impl Attention {
    pub(crate) fn shallow_clone(&self) -> Self {
        Self {
            q_proj: self.q_proj.shallow_clone(),
            k_proj: self.k_proj.shallow_clone(),
            v_proj: self.v_proj.shallow_clone(),
            o_proj: self.o_proj.shallow_clone(),
            q_norm: self.q_norm.as_ref().map(RmsNorm::shallow_clone),
            k_norm: self.k_norm.as_ref().map(RmsNorm::shallow_clone),
            ..*self
        }
    }

    /// `xs` [N, T, H]; `cos`, `sin` broadcastable to [N, heads, T, head_dim] in the activation dtype;
    /// `blocked` [N, 1, T, S] bool over all S key slots (true = the query may not see the key). With a
    /// cache, the new keys and values are appended to it and attention runs over the cached ones plus
    /// the new ones, which are the last columns of `blocked`.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        blocked: &Tensor,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (n, t) = (xs.size()[0], xs.size()[1]);
        let split = |w: &Linear, heads: i64| -> Result<Tensor> {
            Ok(w.forward(xs)?
                .f_view([n, t, heads, self.head_dim])?
                .f_transpose(1, 2)?)
        };
        let q = split(&self.q_proj, self.heads)?;
        let k = split(&self.k_proj, self.kv_heads)?;
        let v = split(&self.v_proj, self.kv_heads)?;
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) => (qn.forward(&q)?, kn.forward(&k)?),
            _ => (q, k),
        };
        let rope = |x: &Tensor| -> Result<Tensor> { Ok(x.f_mul(cos)?.f_add(&rotate_half(x)?.f_mul(sin)?)?) };
        let (q, k) = (rope(&q)?, rope(&k)?);
        let (k, v) = match cache {
            // A sliding layer's later queries see at most `window - 1` earlier slots: keep only those.
            Some(cache) => cache.append(k, v, self.window.map(|w| w - 1))?,
            None => (k, v),
        };
        let keys = k.size()[2];
        let slots = blocked.size()[3];
        let blocked = blocked.f_narrow(3, slots - keys, keys)?;
        let out = attend(&q, &k, &v, &blocked, self.scale, self.logit_cap)?
            .f_transpose(1, 2)?
            .f_reshape([n, t, self.heads * self.head_dim])?;
        self.o_proj.forward(&out)
    }
}

pub(crate) struct Mlp {
    pub(crate) gate_proj: Linear,
    pub(crate) up_proj: Linear,
    pub(crate) down_proj: Linear,
    pub(crate) activation: Activation,
}

impl Mlp {
    pub(crate) fn shallow_clone(&self) -> Self {
        Self {
            gate_proj: self.gate_proj.shallow_clone(),
            up_proj: self.up_proj.shallow_clone(),
            down_proj: self.down_proj.shallow_clone(),
            activation: self.activation,
        }
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?;
        let gate = match self.activation {
            Activation::GeluTanh => gate.f_gelu("tanh")?,
            Activation::Gelu => gate.f_gelu("none")?,
            Activation::Silu => gate.f_silu()?,
        };
        self.down_proj.forward(&gate.f_mul(&self.up_proj.forward(xs)?)?)
    }
}

pub(crate) struct Layer {
    pub(crate) input_layernorm: RmsNorm,
    pub(crate) post_attention_layernorm: RmsNorm,
    /// Gemma 2 / 3 only.
    pub(crate) pre_feedforward_layernorm: Option<RmsNorm>,
    /// Gemma 2 / 3 only.
    pub(crate) post_feedforward_layernorm: Option<RmsNorm>,
    pub(crate) attention: Attention,
    pub(crate) mlp: Mlp,
}

impl Layer {
    /// The seven projections: q, k, v, o, gate, up, down.
    pub(crate) fn linears(&self) -> [&Linear; 7] {
        let (a, m) = (&self.attention, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }

    /// Whether any projection's weight is kept in its GGUF blocks.
    pub(crate) fn keeps_quantized(&self) -> bool {
        self.linears().iter().any(|l| l.kept.is_some())
    }

    pub(crate) fn shallow_clone(&self) -> Self {
        Self {
            input_layernorm: self.input_layernorm.shallow_clone(),
            post_attention_layernorm: self.post_attention_layernorm.shallow_clone(),
            pre_feedforward_layernorm: self
                .pre_feedforward_layernorm
                .as_ref()
                .map(RmsNorm::shallow_clone),
            post_feedforward_layernorm: self
                .post_feedforward_layernorm
                .as_ref()
                .map(RmsNorm::shallow_clone),
            attention: self.attention.shallow_clone(),
            mlp: self.mlp.shallow_clone(),
        }
    }

    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        blocked: &Tensor,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let attn = self
            .attention
            .forward(&self.input_layernorm.forward(xs)?, cos, sin, blocked, cache)?;
        match (&self.pre_feedforward_layernorm, &self.post_feedforward_layernorm) {
            (Some(pre_ff), Some(post_ff)) => {
                let hidden = xs.f_add(&self.post_attention_layernorm.forward(&attn)?)?;
                let ff = post_ff.forward(&self.mlp.forward(&pre_ff.forward(&hidden)?)?)?;
                Ok(hidden.f_add(&ff)?)
            }
            _ => {
                let hidden = xs.f_add(&attn)?;
                let ff = self
                    .mlp
                    .forward(&self.post_attention_layernorm.forward(&hidden)?)?;
                Ok(hidden.f_add(&ff)?)
            }
        }
    }
}
