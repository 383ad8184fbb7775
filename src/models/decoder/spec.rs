//! The switches that make one decoder a Gemma, a Llama, a Qwen or a Mistral: [`Activation`],
//! [`NormStyle`], [`RopeScaling`], and the crate-internal `DecoderSpec` a family's configuration turns
//! into (sizes, switches, the parameter names and shapes it implies).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use tch::{Device, Kind, Tensor};

use crate::error::{Error, InputError, Result};

/// An [`InputError::Config`](crate::InputError::Config) naming a configuration field.
pub(crate) fn config_error(name: &'static str, requirement: impl Into<String>) -> Error {
    Error::Input(InputError::Config {
        name,
        requirement: requirement.into(),
    })
}

/// The sizes every family's configuration checks the same way ([`check_sizes`]).
pub(crate) struct DecoderSizes {
    pub(crate) vocab_size: i64,
    pub(crate) hidden_size: i64,
    pub(crate) intermediate_size: i64,
    pub(crate) num_hidden_layers: i64,
    pub(crate) num_attention_heads: i64,
    pub(crate) kv_heads: i64,
    pub(crate) head_dim: i64,
    /// The model has an `lm_head.weight` of its own (counted in the parameter total).
    pub(crate) untied_head: bool,
}

/// Checks the sizes of a configuration: every size positive; the parameter count within 2^63 (checked
/// instead of overflowing into a negative shape); query heads a multiple of key / value heads; an even
/// head_dim (RoPE rotates pairs). Errors: [`InputError::Config`] naming the field.
pub(crate) fn check_sizes(sizes: &DecoderSizes) -> Result<()> {
    let named = [
        ("vocab_size", sizes.vocab_size),
        ("hidden_size", sizes.hidden_size),
        ("intermediate_size", sizes.intermediate_size),
        ("num_hidden_layers", sizes.num_hidden_layers),
        ("num_attention_heads", sizes.num_attention_heads),
        ("num_key_value_heads", sizes.kv_heads),
        ("head_dim", sizes.head_dim),
    ];
    for (name, value) in named {
        if value <= 0 {
            return Err(config_error(name, format!("{value} must be positive")));
        }
    }
    // Every parameter's element count (and the whole model's) must be a valid tensor size: products
    // of the sizes above, checked instead of overflowing into a negative shape.
    let (h, hd) = (sizes.hidden_size, sizes.head_dim);
    let per_layer = [
        sizes
            .num_attention_heads
            .checked_mul(hd)
            .and_then(|q| q.checked_mul(h)),
        sizes.kv_heads.checked_mul(hd).and_then(|kv| kv.checked_mul(h)),
        sizes.intermediate_size.checked_mul(h),
    ];
    let total = per_layer
        .iter()
        .try_fold(0i64, |acc, n| n.and_then(|n| acc.checked_add(n.checked_mul(3)?)))
        .and_then(|layer| layer.checked_mul(sizes.num_hidden_layers))
        .and_then(|layers| layers.checked_add(sizes.vocab_size.checked_mul(h)?))
        .and_then(|total| match sizes.untied_head {
            true => total.checked_add(sizes.vocab_size.checked_mul(h)?),
            false => Some(total),
        });
    if total.is_none() {
        return Err(config_error(
            "hidden_size",
            format!(
                "vocab_size {} × hidden_size {h}, heads {} × head_dim {hd}, intermediate_size {} and \
                 {} layers give more than 2^63 parameters",
                sizes.vocab_size, sizes.num_attention_heads, sizes.intermediate_size, sizes.num_hidden_layers
            ),
        ));
    }
    if sizes.num_attention_heads % sizes.kv_heads != 0 {
        return Err(config_error(
            "num_attention_heads",
            format!(
                "{} is not a multiple of num_key_value_heads {}",
                sizes.num_attention_heads, sizes.kv_heads
            ),
        ));
    }
    if sizes.head_dim % 2 != 0 {
        return Err(config_error(
            "head_dim",
            format!("{} must be even for RoPE", sizes.head_dim),
        ));
    }
    Ok(())
}

/// One or several token ids (`eos_token_id` may be a list in config.json).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(i64),
    /// Several ids.
    Many(Vec<i64>),
}

/// The MLP activation `act` in `down(act(gate(x)) · up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// GELU, tanh approximation (`gelu_pytorch_tanh`, `gelu_new`; Gemma 1's legacy `gelu` means this too).
    GeluTanh,
    /// Exact (erf) GELU (`gelu` in a Gemma 2 config).
    Gelu,
    /// SiLU `x · σ(x)` (`silu`: Llama, Qwen, Mistral; the MLP is then SwiGLU).
    Silu,
}

/// How an RMSNorm applies its weight `w` to `x̂ = x · rsqrt(mean(x²) + eps)` (`x̂` always computed in
/// f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormStyle {
    /// Gemma: `x̂ · (1 + w)` in f32, cast back to the input dtype (the weight starts at 0).
    OnePlusWeight,
    /// Llama / Qwen / Mistral: `w · x̂`, with `x̂` cast to the input dtype first (the weight starts at 1).
    Weight,
}

/// RoPE frequency scaling (`rope_parameters` / `rope_scaling` of a config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `rope_type` "default": `inv_freq_i = θ^(−2i/d)`, `i = 0 … d/2 − 1`.
    Default,
    /// `rope_type` "llama3" (transformers' `_compute_llama3_parameters`): with wavelengths `λ_i = 2π /
    /// inv_freq_i`, `λ_lo = original / low_freq_factor`, `λ_hi = original / high_freq_factor`: frequencies
    /// with `λ > λ_lo` are divided by `factor`, those with `λ < λ_hi` kept, and those between interpolated,
    /// `(1 − s) · f / factor + s · f` with `s = (original / λ − low) / (high − low)`.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// `low_freq_factor`.
        low_freq_factor: f64,
        /// `high_freq_factor`.
        high_freq_factor: f64,
        /// `original_max_position_embeddings`.
        original_max_position_embeddings: f64,
    },
}

/// A RoPE table's parameters: base θ, scaling, and llama.cpp's per-frequency divisors.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rope {
    pub(crate) theta: f64,
    pub(crate) scaling: RopeScaling,
    /// GGUF files (`rope_freqs.weight`, `[head_dim / 2]`): each inverse frequency is divided by its
    /// factor, as llama.cpp does (its form of Llama 3.1+ scaling).
    pub(crate) freq_factors: Option<Vec<f32>>,
}

impl Rope {
    /// Unscaled RoPE with base `theta`.
    pub(crate) fn plain(theta: f64) -> Self {
        Self {
            theta,
            scaling: RopeScaling::Default,
            freq_factors: None,
        }
    }

    /// The inverse frequencies `[head_dim / 2]` f32 on `device`, computed with the ops (and in the order)
    /// transformers uses, so the tables are the same floats.
    pub(crate) fn inv_freq(&self, head_dim: i64, device: Device) -> Result<Tensor> {
        let exponents = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Float, device))?
            .f_div_scalar(head_dim as f64)?;
        let inv_freq = Tensor::f_pow_scalar(self.theta, &exponents)?.f_reciprocal()?;
        if let Some(factors) = &self.freq_factors {
            return Ok(inv_freq.f_div(&Tensor::from_slice(factors).f_to_device(device)?)?);
        }
        let RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: original,
        } = self.scaling
        else {
            return Ok(inv_freq);
        };
        let low_freq_wavelen = original / low_freq_factor;
        let high_freq_wavelen = original / high_freq_factor;
        // Python's `scalar / tensor` is `tensor.reciprocal() * scalar`.
        let wavelen = inv_freq
            .f_reciprocal()?
            .f_mul_scalar(2.0 * std::f64::consts::PI)?;
        let divided = inv_freq.f_div_scalar(factor)?;
        let llama = divided.f_where_self(&wavelen.f_gt(low_freq_wavelen)?, &inv_freq)?;
        let smooth = wavelen
            .f_reciprocal()?
            .f_mul_scalar(original)?
            .f_sub_scalar(low_freq_factor)?
            .f_div_scalar(high_freq_factor - low_freq_factor)?;
        let smoothed = smooth
            .f_neg()?
            .f_add_scalar(1.0)?
            .f_mul(&llama)?
            .f_div_scalar(factor)?
            .f_add(&smooth.f_mul(&llama)?)?;
        let medium = wavelen
            .f_lt(high_freq_wavelen)?
            .f_logical_not()?
            .f_logical_and(&wavelen.f_gt(low_freq_wavelen)?.f_logical_not()?)?;
        Ok(smoothed.f_where_self(&medium, &llama)?)
    }
}

/// Everything the shared decoder needs to know about a model (crate-internal): a family's configuration
/// turns into one ([`GemmaConfig`](crate::models::gemma::GemmaConfig), `LlamaConfig`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DecoderSpec {
    pub(crate) vocab_size: i64,
    pub(crate) hidden_size: i64,
    pub(crate) intermediate_size: i64,
    pub(crate) heads: i64,
    pub(crate) kv_heads: i64,
    pub(crate) head_dim: i64,
    /// The sliding window of each layer (`None`: full attention); every `Some` holds the same window.
    pub(crate) layer_windows: Vec<Option<i64>>,
    pub(crate) norm: NormStyle,
    pub(crate) rms_norm_eps: f64,
    pub(crate) activation: Activation,
    /// Multiply the embedding by `sqrt(hidden_size)` rounded to the activation dtype (Gemma).
    pub(crate) scale_embedding: bool,
    pub(crate) attention_scale: f64,
    pub(crate) attn_logit_softcap: Option<f64>,
    pub(crate) final_logit_softcap: Option<f64>,
    /// Gemma 2 / 3: norms before and after the MLP too (four per layer).
    pub(crate) sandwich_norms: bool,
    /// Gemma 3 / Qwen3: per-head RMSNorm of queries and keys before RoPE.
    pub(crate) qk_norm: bool,
    /// Biases of the q / k / v projections (Qwen2; Llama's `attention_bias`).
    pub(crate) qkv_bias: bool,
    /// Bias of the output projection (Llama's `attention_bias`).
    pub(crate) o_bias: bool,
    /// Biases of the MLP projections (Llama's `mlp_bias`).
    pub(crate) mlp_bias: bool,
    /// The LM head is the embedding matrix (else `lm_head.weight`).
    pub(crate) tied_head: bool,
    /// RoPE of the full-attention layers.
    pub(crate) global_rope: Rope,
    /// RoPE of the sliding-window layers (Gemma 3 has its own; others: the same as `global_rope`).
    pub(crate) local_rope: Rope,
    pub(crate) max_position_embeddings: i64,
    pub(crate) initializer_range: f64,
}

impl DecoderSpec {
    /// The number of layers.
    pub(crate) fn layers(&self) -> usize {
        self.layer_windows.len()
    }

    /// The sliding window of the sliding layers, if any layer slides.
    pub(crate) fn sliding_window(&self) -> Option<i64> {
        self.layer_windows.iter().flatten().next().copied()
    }

    /// The expected shape of every parameter, by Hugging Face name.
    pub(crate) fn parameter_shapes(&self) -> BTreeMap<String, Vec<i64>> {
        let (h, hd, inner) = (self.hidden_size, self.head_dim, self.intermediate_size);
        let (q_rows, kv_rows) = (self.heads * hd, self.kv_heads * hd);
        let mut shapes = BTreeMap::new();
        shapes.insert("model.embed_tokens.weight".to_string(), vec![self.vocab_size, h]);
        shapes.insert("model.norm.weight".to_string(), vec![h]);
        if !self.tied_head {
            shapes.insert("lm_head.weight".to_string(), vec![self.vocab_size, h]);
        }
        let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
        if self.sandwich_norms {
            norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
        }
        for i in 0..self.layers() {
            let p = format!("model.layers.{i}");
            for norm in &norms {
                shapes.insert(format!("{p}.{norm}.weight"), vec![h]);
            }
            if self.qk_norm {
                shapes.insert(format!("{p}.self_attn.q_norm.weight"), vec![hd]);
                shapes.insert(format!("{p}.self_attn.k_norm.weight"), vec![hd]);
            }
            let projections = [
                ("self_attn.q_proj", [q_rows, h], self.qkv_bias),
                ("self_attn.k_proj", [kv_rows, h], self.qkv_bias),
                ("self_attn.v_proj", [kv_rows, h], self.qkv_bias),
                ("self_attn.o_proj", [h, q_rows], self.o_bias),
                ("mlp.gate_proj", [inner, h], self.mlp_bias),
                ("mlp.up_proj", [inner, h], self.mlp_bias),
                ("mlp.down_proj", [h, inner], self.mlp_bias),
            ];
            for (name, shape, bias) in projections {
                shapes.insert(format!("{p}.{name}.weight"), shape.to_vec());
                if bias {
                    shapes.insert(format!("{p}.{name}.bias"), vec![shape[0]]);
                }
            }
        }
        shapes
    }
}
