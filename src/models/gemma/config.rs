//! [`GemmaConfig`]: a Gemma 1 / 2 / 3 text configuration as Hugging Face `config.json` writes it, its
//! defaults, validation and the shapes it implies.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{CheckpointError, Error, Result, WeightsError};
use crate::models::decoder::spec::{check_sizes, DecoderSizes, DecoderSpec, NormStyle, Rope};

pub(crate) use crate::models::decoder::spec::config_error;

/// The implemented architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmaArch {
    /// Gemma 1 (`model_type` "gemma").
    Gemma,
    /// Gemma 2 (`model_type` "gemma2").
    Gemma2,
    /// Gemma 3, text only (`model_type` "gemma3_text"; "gemma3" is accepted too).
    Gemma3,
}

impl GemmaArch {
    /// Gemma 2 and 3: four norms per layer, `query_pre_attn_scalar`, soft-caps as configured.
    pub(crate) fn has_gemma2_layer(self) -> bool {
        matches!(self, GemmaArch::Gemma2 | GemmaArch::Gemma3)
    }
}

pub use crate::models::decoder::Activation;

pub use crate::models::decoder::TokenIds;

/// `x > 0` (false for NaN).
fn is_positive(x: f64) -> bool {
    x > 0.0
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_position_embeddings() -> i64 {
    8192
}
fn default_true() -> bool {
    true
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_query_pre_attn_scalar() -> Option<f64> {
    Some(256.0)
}
fn default_sliding_window() -> Option<i64> {
    Some(4096)
}
fn default_final_logit_softcapping() -> Option<f64> {
    Some(30.0)
}
fn default_attn_logit_softcapping() -> Option<f64> {
    Some(50.0)
}

/// The `model_type`s [`GemmaConfig::arch`] accepts, in words.
pub const SUPPORTED_MODEL_TYPES: &str = "\"gemma\", \"gemma2\" and \"gemma3_text\" (or \"gemma3\")";

/// A Gemma / Gemma 2 / Gemma 3 configuration, read from a Hugging Face `config.json` (unknown fields are ignored).
///
/// Absent Gemma 2 fields take `transformers`' defaults (query_pre_attn_scalar 256, sliding_window 4096,
/// final / attention soft-caps 30 / 50); an explicit `null` soft-cap switches soft-capping off. RoPE θ comes
/// from `rope_parameters.rope_theta` (transformers ≥ 5) or `rope_theta` (older files), default 10000.
/// Call [`GemmaConfig::validate`] (done by [`Gemma::load`](super::Gemma::load) and [`Gemma::random`](super::Gemma::random)) to check it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GemmaConfig {
    /// "gemma", "gemma2" or "gemma3_text".
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
    /// Per-head size (default: `hidden_size / num_attention_heads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<i64>,
    /// The MLP activation name (Gemma 2 reads this one first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// The MLP activation name (Gemma 1 reads this one when `hidden_activation` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base θ (older config files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// RoPE parameters (transformers ≥ 5): `{"rope_type": "default", "rope_theta": θ}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// Gemma 3: RoPE base θ of the sliding-window layers (older config files; default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// Maximum positions (informational: RoPE has no table to overflow).
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: i64,
    /// Must be true: Gemma ties the LM head to the embedding.
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Must be false: Gemma has no biases.
    #[serde(default)]
    pub attention_bias: bool,
    /// Standard deviation of the random init (linear and embedding weights; norms start at zero).
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Gemma 2: the attention scale is `query_pre_attn_scalar^-½`.
    #[serde(default = "default_query_pre_attn_scalar")]
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 2: the window of the sliding-attention layers (a key is seen when `q − k < window`).
    #[serde(default = "default_sliding_window")]
    pub sliding_window: Option<i64>,
    /// Gemma 2: final-logit soft-cap `c` in `tanh(z / c) · c` (`null`: none).
    #[serde(default = "default_final_logit_softcapping")]
    pub final_logit_softcapping: Option<f64>,
    /// Gemma 2: attention-logit soft-cap (`null`: none).
    #[serde(default = "default_attn_logit_softcapping")]
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2: "sliding_attention" / "full_attention" per layer (default: sliding on even layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Padding token id (Gemma: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<i64>,
    /// Beginning-of-sequence token id (Gemma: 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<i64>,
    /// End-of-sequence token id(s) (Gemma: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
}

impl GemmaConfig {
    /// Parses a config.json text. Errors: [`CheckpointError::Invalid`] (with `origin` as the path).
    ///
    /// For Gemma 3 an absent soft-cap means none (transformers' Gemma 3 default), not Gemma 2's 30 / 50.
    pub fn from_json_str(text: &str, origin: &Path) -> Result<Self> {
        let json = |source: serde_json::Error| {
            Error::Checkpoint(CheckpointError::Invalid {
                path: origin.display().to_string(),
                reason: format!("invalid config JSON: {source}"),
            })
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(json)?;
        let mut config: Self = serde_json::from_value(value.clone()).map_err(json)?;
        if config.arch().ok() == Some(GemmaArch::Gemma3) {
            if value.get("final_logit_softcapping").is_none() {
                config.final_logit_softcapping = None;
            }
            if value.get("attn_logit_softcapping").is_none() {
                config.attn_logit_softcapping = None;
            }
        }
        Ok(config)
    }

    /// Reads and parses a config.json file, then [validates](Self::validate) it.
    /// Errors: [`Error::Io`], [`CheckpointError::Invalid`], and those of `validate`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::io(path, source))?;
        let config = Self::from_json_str(&text, path)?;
        config.validate()?;
        Ok(config)
    }

    /// A small Gemma 2 configuration for training from a seeded random init on CPU: H = 64, 2 layers
    /// (sliding, full), 4 query heads × 16, 1 key/value head, MLP 128, the given vocabulary size, window
    /// 16, Gemma 2's soft-caps (50 / 30) and θ = 10000.
    pub fn small_gemma2(vocab_size: i64) -> Self {
        Self {
            model_type: "gemma2".into(),
            vocab_size,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(1),
            head_dim: Some(16),
            hidden_activation: Some("gelu_pytorch_tanh".into()),
            hidden_act: None,
            rms_norm_eps: 1e-6,
            rope_theta: None,
            rope_parameters: Some(serde_json::json!({"rope_type": "default", "rope_theta": 10000.0})),
            rope_local_base_freq: None,
            max_position_embeddings: 256,
            tie_word_embeddings: true,
            attention_bias: false,
            initializer_range: 0.02,
            query_pre_attn_scalar: Some(16.0),
            sliding_window: Some(16),
            final_logit_softcapping: Some(30.0),
            attn_logit_softcapping: Some(50.0),
            layer_types: None,
            pad_token_id: Some(0),
            bos_token_id: Some(2),
            eos_token_id: Some(TokenIds::One(1)),
        }
    }

    /// The architecture named by `model_type`. Errors: [`WeightsError::UnsupportedArchitecture`].
    pub fn arch(&self) -> Result<GemmaArch> {
        match self.model_type.as_str() {
            "gemma" => Ok(GemmaArch::Gemma),
            "gemma2" => Ok(GemmaArch::Gemma2),
            "gemma3_text" | "gemma3" => Ok(GemmaArch::Gemma3),
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

    /// Per-head size (default: `hidden_size / num_attention_heads`).
    pub fn head_size(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// RoPE base θ (of the global layers for Gemma 3). Errors: [`InputError::Config`](crate::InputError::Config) for a RoPE type
    /// other than "default".
    pub fn rope_base(&self) -> Result<f64> {
        Ok(self.rope_bases()?.0)
    }

    /// RoPE bases θ `(global layers, sliding layers)`. Gemma 1 / 2: the same θ (default 10⁴) for both.
    /// Gemma 3 (transformers' rules): global `rope_parameters.full_attention.rope_theta`, else
    /// `rope_theta`, else 10⁶; sliding `rope_parameters.sliding_attention.rope_theta`, else
    /// `rope_local_base_freq`, else 10⁴. Errors: [`InputError::Config`](crate::InputError::Config) for a RoPE type other than
    /// "default" (e.g. the linear scaling of the larger Gemma 3 models).
    pub fn rope_bases(&self) -> Result<(f64, f64)> {
        fn theta_of(params: &serde_json::Value) -> Result<Option<f64>> {
            if let Some(kind) = params.get("rope_type").and_then(|v| v.as_str()) {
                if kind != "default" {
                    return Err(config_error(
                        "rope_parameters",
                        format!("rope_type {kind:?} is not implemented (only \"default\")"),
                    ));
                }
            }
            Ok(params.get("rope_theta").and_then(|v| v.as_f64()))
        }
        if self.arch()? == GemmaArch::Gemma3 {
            let (mut global, mut local) = (None, None);
            if let Some(params) = &self.rope_parameters {
                if let Some(p) = params.get("full_attention") {
                    global = theta_of(p)?;
                }
                if let Some(p) = params.get("sliding_attention") {
                    local = theta_of(p)?;
                }
            }
            return Ok((
                global.or(self.rope_theta).unwrap_or(1e6),
                local.or(self.rope_local_base_freq).unwrap_or(1e4),
            ));
        }
        if let Some(params) = &self.rope_parameters {
            if let Some(theta) = theta_of(params)? {
                return Ok((theta, theta));
            }
        }
        let theta = self.rope_theta.unwrap_or(10000.0);
        Ok((theta, theta))
    }

    /// The MLP activation. Errors: [`InputError::Config`](crate::InputError::Config) for an unimplemented one.
    pub fn activation(&self) -> Result<Activation> {
        let arch = self.arch()?;
        let name = self
            .hidden_activation
            .as_deref()
            .or(self.hidden_act.as_deref())
            .unwrap_or("gelu_pytorch_tanh");
        match (name, arch) {
            ("gelu_pytorch_tanh" | "gelu_new" | "gelu_tanh", _) => Ok(Activation::GeluTanh),
            // transformers maps Gemma 1's legacy "gelu" to the tanh approximation.
            ("gelu", GemmaArch::Gemma) => Ok(Activation::GeluTanh),
            ("gelu", GemmaArch::Gemma2 | GemmaArch::Gemma3) => Ok(Activation::Gelu),
            (other, _) => Err(config_error(
                "hidden_activation",
                format!("activation {other:?} is not implemented"),
            )),
        }
    }

    /// The sliding window of each layer (`None`: full attention). Gemma 1: none. Default `layer_types`:
    /// Gemma 2 sliding on even layers (0, 2, …), Gemma 3 global on every 6th layer (5, 11, …).
    /// Errors: [`InputError::Config`](crate::InputError::Config) for a bad `layer_types` list or window.
    pub fn layer_windows(&self) -> Result<Vec<Option<i64>>> {
        let layers = self.num_hidden_layers.max(0) as usize;
        if self.arch()? == GemmaArch::Gemma {
            return Ok(vec![None; layers]);
        }
        let types: Vec<String> = match &self.layer_types {
            Some(types) => types.clone(),
            None => (0..layers)
                .map(|i| {
                    let pattern = if self.arch().ok() == Some(GemmaArch::Gemma3) {
                        6
                    } else {
                        2
                    };
                    if (i + 1) % pattern != 0 {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                    .to_string()
                })
                .collect(),
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
                "sliding_attention" => match self.sliding_window {
                    Some(w) if w > 0 => Ok(Some(w)),
                    w => Err(config_error(
                        "sliding_window",
                        format!("{w:?} must be a positive integer"),
                    )),
                },
                other => Err(config_error(
                    "layer_types",
                    format!("layer type {other:?} is not implemented"),
                )),
            })
            .collect()
    }

    /// Checks the configuration. Errors: [`WeightsError::UnsupportedArchitecture`] for a `model_type` other than
    /// "gemma" / "gemma2" / "gemma3" / "gemma3_text"; [`InputError::Config`](crate::InputError::Config) for non-positive sizes, sizes whose
    /// parameter count exceeds 2^63, heads not divisible by key/value
    /// heads, an untied head, biases, an unknown activation / RoPE type / layer type, or Gemma 2 scalars
    /// that are not positive.
    pub fn validate(&self) -> Result<()> {
        let arch = self.arch()?;
        check_sizes(&DecoderSizes {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            kv_heads: self.kv_heads(),
            head_dim: self.head_size(),
            untied_head: false,
        })?;
        if !self.tie_word_embeddings {
            return Err(config_error(
                "tie_word_embeddings",
                "false is not supported (Gemma ties the head to the embedding)",
            ));
        }
        if self.attention_bias {
            return Err(config_error(
                "attention_bias",
                "true is not supported (Gemma has none)",
            ));
        }
        if !is_positive(self.rms_norm_eps) {
            return Err(config_error(
                "rms_norm_eps",
                format!("{} must be positive", self.rms_norm_eps),
            ));
        }
        let (global, local) = self.rope_bases()?;
        for theta in [global, local] {
            if !is_positive(theta) {
                return Err(config_error("rope_theta", format!("{theta} must be positive")));
            }
        }
        self.activation()?;
        self.layer_windows()?;
        if arch.has_gemma2_layer() {
            let scalars = [
                ("query_pre_attn_scalar", self.query_pre_attn_scalar),
                ("final_logit_softcapping", self.final_logit_softcapping),
                ("attn_logit_softcapping", self.attn_logit_softcapping),
            ];
            for (name, value) in scalars {
                if let Some(v) = value {
                    if !is_positive(v) {
                        return Err(config_error(name, format!("{v} must be positive")));
                    }
                }
            }
        }
        Ok(())
    }

    /// The attention scale: Gemma 1 `head_dim^-½`, Gemma 2 / 3 `query_pre_attn_scalar^-½`.
    pub(crate) fn attention_scale(&self, arch: GemmaArch) -> f64 {
        match (arch, self.query_pre_attn_scalar) {
            (GemmaArch::Gemma2 | GemmaArch::Gemma3, Some(s)) => s.powf(-0.5),
            _ => (self.head_size() as f64).powf(-0.5),
        }
    }

    /// The shared decoder's switches for this configuration (Gemma: `(1 + w)` norms, embedding × √H, tied
    /// head, no biases; Gemma 2 / 3 add the sandwich norms and soft-caps, Gemma 3 the q / k norms and its
    /// two RoPE bases). Errors: those of [`GemmaConfig::arch`], [`GemmaConfig::rope_bases`],
    /// [`GemmaConfig::activation`], [`GemmaConfig::layer_windows`].
    pub(crate) fn decoder_spec(&self) -> Result<DecoderSpec> {
        let arch = self.arch()?;
        let (global, local) = self.rope_bases()?;
        Ok(DecoderSpec {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            heads: self.num_attention_heads,
            kv_heads: self.kv_heads(),
            head_dim: self.head_size(),
            layer_windows: self.layer_windows()?,
            norm: NormStyle::OnePlusWeight,
            rms_norm_eps: self.rms_norm_eps,
            activation: self.activation()?,
            scale_embedding: true,
            attention_scale: self.attention_scale(arch),
            attn_logit_softcap: match arch.has_gemma2_layer() {
                true => self.attn_logit_softcapping,
                false => None,
            },
            final_logit_softcap: match arch.has_gemma2_layer() {
                true => self.final_logit_softcapping,
                false => None,
            },
            sandwich_norms: arch.has_gemma2_layer(),
            qk_norm: arch == GemmaArch::Gemma3,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            tied_head: true,
            global_rope: Rope::plain(global),
            local_rope: Rope::plain(local),
            max_position_embeddings: self.max_position_embeddings,
            initializer_range: self.initializer_range,
        })
    }

    /// The expected shape of every parameter, by Hugging Face name.
    pub fn parameter_shapes(&self) -> Result<BTreeMap<String, Vec<i64>>> {
        Ok(self.decoder_spec()?.parameter_shapes())
    }
}
