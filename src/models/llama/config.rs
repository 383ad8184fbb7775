//! [`LlamaConfig`]: a Llama / Qwen2 / Qwen3 / Mistral configuration as Hugging Face `config.json` writes
//! it, its per-family defaults, validation, and the decoder switches it implies.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CheckpointError, Error, Result, WeightsError};
use crate::models::decoder::spec::{check_sizes, config_error, DecoderSizes, DecoderSpec, NormStyle, Rope};
use crate::models::decoder::{Activation, RopeScaling, TokenIds};

/// The implemented architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlamaArch {
    /// Llama 1 / 2 / 3.x and SmolLM / SmolLM2 (`model_type` "llama", `LlamaForCausalLM`).
    Llama,
    /// Qwen2 / Qwen2.5 (`model_type` "qwen2"): biases on the q / k / v projections.
    Qwen2,
    /// Qwen3 dense (`model_type` "qwen3"): per-head q / k RMSNorm, head_dim 128 by default.
    Qwen3,
    /// Mistral (`model_type` "mistral"): sliding-window attention on every layer when `sliding_window` is set.
    Mistral,
}

/// The `model_type`s [`LlamaConfig::arch`] accepts, in words.
pub const SUPPORTED_MODEL_TYPES: &str = "\"llama\", \"qwen2\", \"qwen3\" and \"mistral\"";

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_position_embeddings() -> i64 {
    2048
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_hidden_act() -> String {
    "silu".into()
}

/// A Llama-family configuration, read from a Hugging Face `config.json` (unknown fields are ignored).
///
/// Absent fields take `transformers`' defaults for the family: no biases (Qwen2's q / k / v biases are
/// part of the architecture), untied head, Qwen3's head_dim 128 (others `hidden_size /
/// num_attention_heads`), no sliding window unless Mistral's `sliding_window` (or Qwen's
/// `use_sliding_window`) says so. RoPE: `rope_parameters` (transformers ≥ 5) or `rope_scaling` and
/// `rope_theta` (older files), θ default 10000; types "default" and "llama3". Call
/// [`LlamaConfig::validate`] (done by the loader and [`Llama::random`](super::Llama::random)) to check it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// "llama", "qwen2", "qwen3" or "mistral".
    pub model_type: String,
    /// Vocabulary size V.
    pub vocab_size: i64,
    /// Hidden size H.
    pub hidden_size: i64,
    /// MLP inner size.
    pub intermediate_size: i64,
    /// Number of decoder layers.
    pub num_hidden_layers: i64,
    /// Number of query heads.
    pub num_attention_heads: i64,
    /// Number of key / value heads (default: `num_attention_heads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<i64>,
    /// Per-head size (default: Qwen3 128, others `hidden_size / num_attention_heads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<i64>,
    /// The MLP activation; only "silu" is implemented.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base θ (older config files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// RoPE parameters (transformers ≥ 5): `{"rope_type": …, "rope_theta": θ, …}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    /// RoPE scaling (older config files): `{"rope_type" (or "type"): …, "factor": …, …}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// Maximum positions (generation refuses to go beyond unless told to).
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: i64,
    /// Whether the LM head is the embedding matrix (default false: `lm_head.weight`).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama / Qwen3: biases on q / k / v / o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Llama: biases on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Mistral: the window of every layer (a key is seen when `q − k < window`); Qwen: with
    /// `use_sliding_window`, the window of the layers from `max_window_layers` on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<i64>,
    /// Qwen2 / Qwen3: whether `sliding_window` is used (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Qwen2 / Qwen3: layers below this index use full attention (default 28).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<i64>,
    /// Qwen2 / Qwen3: "sliding_attention" / "full_attention" per layer (overrides the two above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Standard deviation of the random init (linear and embedding weights; norm weights start at 1).
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Padding token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<i64>,
    /// Beginning-of-sequence token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<i64>,
    /// End-of-sequence token id(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    /// GGUF files only (never in config.json): llama.cpp's RoPE frequency divisors (`rope_freqs.weight`,
    /// `[head_dim / 2]`, its form of Llama 3.1+ scaling): inverse frequency `i` is divided by factor `i`.
    #[serde(skip)]
    pub rope_freq_factors: Option<Vec<f32>>,
}

/// `x > 0` (false for NaN).
fn is_positive(x: f64) -> bool {
    x > 0.0
}

impl LlamaConfig {
    /// Parses a config.json text. Errors: [`CheckpointError::Invalid`] (with `origin` as the path).
    pub fn from_json_str(text: &str, origin: &Path) -> Result<Self> {
        serde_json::from_str(text).map_err(|source| {
            Error::Checkpoint(CheckpointError::Invalid {
                path: origin.display().to_string(),
                reason: format!("invalid config JSON: {source}"),
            })
        })
    }

    /// Reads and parses a config.json file, then [validates](Self::validate) it.
    /// Errors: [`Error::Io`], [`CheckpointError::Invalid`], and those of `validate`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::io(path, source))?;
        let config = Self::from_json_str(&text, path)?;
        config.validate()?;
        Ok(config)
    }

    /// The architecture named by `model_type`. Errors: [`WeightsError::UnsupportedArchitecture`] naming it.
    pub fn arch(&self) -> Result<LlamaArch> {
        match self.model_type.as_str() {
            "llama" => Ok(LlamaArch::Llama),
            "qwen2" => Ok(LlamaArch::Qwen2),
            "qwen3" => Ok(LlamaArch::Qwen3),
            "mistral" => Ok(LlamaArch::Mistral),
            other => Err(Error::Weights(WeightsError::UnsupportedArchitecture {
                found: other.to_string(),
                supported: SUPPORTED_MODEL_TYPES,
            })),
        }
    }

    /// Key / value heads (default: the number of query heads).
    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head size: `head_dim`, else 128 for Qwen3 and `hidden_size / num_attention_heads` otherwise.
    pub fn head_size(&self) -> i64 {
        match (self.head_dim, self.arch().ok()) {
            (Some(hd), _) => hd,
            (None, Some(LlamaArch::Qwen3)) => 128,
            (None, _) => self.hidden_size / self.num_attention_heads.max(1),
        }
    }

    /// RoPE base θ and scaling, from `rope_parameters` (transformers ≥ 5), else `rope_scaling` with
    /// `rope_theta` (older files); θ default 10000.
    ///
    /// Errors: [`InputError::Config`](crate::InputError::Config) naming the field for a `rope_type` other
    /// than "default" / "llama3" (named in the message), a `partial_rotary_factor` other than 1, or a
    /// llama3 scaling with a missing or non-positive `factor`, `low_freq_factor`, `high_freq_factor`,
    /// `original_max_position_embeddings`, or `high_freq_factor ≤ low_freq_factor`.
    pub fn rope(&self) -> Result<(f64, RopeScaling)> {
        let (field, params) = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) if p.is_object() => ("rope_parameters", Some(p)),
            (_, Some(p)) if p.is_object() => ("rope_scaling", Some(p)),
            _ => ("rope_parameters", None),
        };
        let number = |key: &str| params.and_then(|p| p.get(key)).and_then(Value::as_f64);
        let theta = number("rope_theta").or(self.rope_theta).unwrap_or(10000.0);
        let kind = params
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if let Some(partial) = number("partial_rotary_factor").filter(|&f| f != 1.0) {
            return Err(config_error(
                field,
                format!("partial_rotary_factor {partial} is not implemented (only 1)"),
            ));
        }
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "llama3" => {
                let required = |key: &'static str| -> Result<f64> {
                    number(key).filter(|v| is_positive(*v)).ok_or_else(|| {
                        config_error(field, format!("rope_type \"llama3\" needs a positive `{key}`"))
                    })
                };
                let scaling = RopeScaling::Llama3 {
                    factor: required("factor")?,
                    low_freq_factor: required("low_freq_factor")?,
                    high_freq_factor: required("high_freq_factor")?,
                    original_max_position_embeddings: required("original_max_position_embeddings")?,
                };
                if let RopeScaling::Llama3 {
                    low_freq_factor,
                    high_freq_factor,
                    ..
                } = scaling
                {
                    if high_freq_factor <= low_freq_factor {
                        return Err(config_error(
                            field,
                            format!(
                                "llama3 high_freq_factor {high_freq_factor} must exceed low_freq_factor \
                                 {low_freq_factor}"
                            ),
                        ));
                    }
                }
                scaling
            }
            other => {
                return Err(config_error(
                    field,
                    format!("rope_type {other:?} is not implemented (only \"default\" and \"llama3\")"),
                ))
            }
        };
        Ok((theta, scaling))
    }

    /// The sliding window of each layer (`None`: full attention). Llama: none. Mistral: every layer when
    /// `sliding_window` is set. Qwen2 / Qwen3 (transformers' rules): the window is `sliding_window` when
    /// `use_sliding_window`, else none; `layer_types` when given, else sliding from layer
    /// `max_window_layers` (default 28) on; a sliding layer without a window attends fully.
    ///
    /// Errors: [`InputError::Config`](crate::InputError::Config) for a non-positive window, a
    /// `layer_types` list of another length than `num_hidden_layers`, or an unknown layer type.
    pub fn layer_windows(&self) -> Result<Vec<Option<i64>>> {
        let layers = self.num_hidden_layers.max(0) as usize;
        let window = match self.arch()? {
            LlamaArch::Llama => return Ok(vec![None; layers]),
            LlamaArch::Mistral => self.sliding_window,
            LlamaArch::Qwen2 | LlamaArch::Qwen3 => self
                .sliding_window
                .filter(|_| self.use_sliding_window == Some(true)),
        };
        if let Some(w) = window.filter(|&w| w <= 0) {
            return Err(config_error(
                "sliding_window",
                format!("{w} must be a positive integer"),
            ));
        }
        if self.arch()? == LlamaArch::Mistral {
            return Ok(vec![window; layers]);
        }
        let Some(types) = &self.layer_types else {
            let first = self.max_window_layers.unwrap_or(28).max(0) as usize;
            return Ok((0..layers).map(|i| window.filter(|_| i >= first)).collect());
        };
        if types.len() != layers {
            return Err(config_error(
                "layer_types",
                format!("{} entries, but num_hidden_layers is {layers}", types.len()),
            ));
        }
        types
            .iter()
            .map(|t| match t.as_str() {
                "full_attention" => Ok(None),
                "sliding_attention" => Ok(window),
                other => Err(config_error(
                    "layer_types",
                    format!("layer type {other:?} is not implemented"),
                )),
            })
            .collect()
    }

    /// Checks the configuration. Errors: [`WeightsError::UnsupportedArchitecture`] naming a `model_type`
    /// other than those of [`SUPPORTED_MODEL_TYPES`]; [`InputError::Config`](crate::InputError::Config)
    /// naming the field for non-positive sizes, sizes whose parameter count exceeds 2^63, heads not
    /// divisible by key / value heads, an odd head_dim, an activation other than "silu", a non-positive
    /// `rms_norm_eps` or θ, `rope_freq_factors` that are not `head_dim / 2` finite positive numbers or come
    /// with a RoPE scaling type, and those of [`LlamaConfig::rope`] and [`LlamaConfig::layer_windows`].
    pub fn validate(&self) -> Result<()> {
        self.arch()?;
        check_sizes(&DecoderSizes {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            kv_heads: self.kv_heads(),
            head_dim: self.head_size(),
            untied_head: !self.tie_word_embeddings,
        })?;
        if self.hidden_act != "silu" {
            return Err(config_error(
                "hidden_act",
                format!(
                    "activation {:?} is not implemented (only \"silu\")",
                    self.hidden_act
                ),
            ));
        }
        if !is_positive(self.rms_norm_eps) {
            return Err(config_error(
                "rms_norm_eps",
                format!("{} must be positive", self.rms_norm_eps),
            ));
        }
        let (theta, scaling) = self.rope()?;
        if !is_positive(theta) {
            return Err(config_error("rope_theta", format!("{theta} must be positive")));
        }
        if let Some(factors) = &self.rope_freq_factors {
            let half = self.head_size() / 2;
            if factors.len() as i64 != half || factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
                return Err(config_error(
                    "rope_freqs.weight",
                    format!(
                        "{} factors must be {half} (head_dim / 2), finite and positive",
                        factors.len()
                    ),
                ));
            }
            if scaling != RopeScaling::Default {
                return Err(config_error(
                    "rope_freqs.weight",
                    "frequency factors and a rope_scaling type cannot be combined",
                ));
            }
        }
        self.layer_windows()?;
        Ok(())
    }

    /// The shared decoder's switches: `w`-style RMSNorm, SwiGLU, no embedding scale, attention scale
    /// `head_dim^-½`, no soft-caps; q / k / v biases for Qwen2 (and with `attention_bias`, o too, for
    /// Llama / Qwen3); MLP biases with Llama's `mlp_bias`; q / k norms for Qwen3; the head tied or not;
    /// one RoPE for every layer.
    pub(crate) fn decoder_spec(&self) -> Result<DecoderSpec> {
        let arch = self.arch()?;
        let (theta, scaling) = self.rope()?;
        let rope = Rope {
            scaling,
            freq_factors: self.rope_freq_factors.clone(),
            ..Rope::plain(theta)
        };
        let attention_bias = self.attention_bias && matches!(arch, LlamaArch::Llama | LlamaArch::Qwen3);
        Ok(DecoderSpec {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            heads: self.num_attention_heads,
            kv_heads: self.kv_heads(),
            head_dim: self.head_size(),
            layer_windows: self.layer_windows()?,
            norm: NormStyle::Weight,
            rms_norm_eps: self.rms_norm_eps,
            activation: Activation::Silu,
            scale_embedding: false,
            attention_scale: (self.head_size() as f64).powf(-0.5),
            attn_logit_softcap: None,
            final_logit_softcap: None,
            sandwich_norms: false,
            qk_norm: arch == LlamaArch::Qwen3,
            qkv_bias: arch == LlamaArch::Qwen2 || attention_bias,
            o_bias: attention_bias,
            mlp_bias: self.mlp_bias && arch == LlamaArch::Llama,
            tied_head: self.tie_word_embeddings,
            global_rope: rope.clone(),
            local_rope: rope,
            max_position_embeddings: self.max_position_embeddings,
            initializer_range: self.initializer_range,
        })
    }

    /// The expected shape of every parameter, by Hugging Face name (`lm_head.weight` when untied, the
    /// biases the architecture has). Errors: those of [`LlamaConfig::arch`] and [`LlamaConfig::rope`].
    pub fn parameter_shapes(&self) -> Result<BTreeMap<String, Vec<i64>>> {
        Ok(self.decoder_spec()?.parameter_shapes())
    }
}
