//! A Gemma decoder (Gemma 1, 2 and 3 text architectures) in tch, checked against Hugging Face
//! `transformers` (`tests/gemma_forward.rs`, fixtures from `scripts/make_gemma_fixture.py`; Gemma 3 270M
//! from its GGUF in `tests/gemma3_gguf.rs`, fixture from `scripts/make_gemma3_reference.py`).
//!
//! What it implements, following `transformers`' `modeling_gemma.py` / `modeling_gemma2.py` /
//! `modeling_gemma3.py`:
//! - RMSNorm computed in f32 as `x · rsqrt(mean(x²) + eps) · (1 + w)`, cast back to the activation dtype;
//! - token embedding × `sqrt(hidden_size)`, the factor rounded to the activation dtype;
//! - GeGLU MLP `down(gelu_tanh(gate(x)) · up(x))`;
//! - multi-query / grouped-query attention with `head_dim` from the config, rotate-half RoPE with θ from the
//!   config (cos / sin computed in f32, then cast to the activation dtype), softmax in f32;
//! - the LM head tied to the embedding;
//! - Gemma 2: four norms per layer, attention scale `query_pre_attn_scalar^-½`, attention-logit and
//!   final-logit soft-capping `tanh(z / c) · c`, and sliding-window attention on the layers that
//!   `layer_types` marks (by default every even layer: 0, 2, …);
//! - Gemma 3: Gemma 2's layer, plus a per-head RMSNorm (`(1 + w)`) on queries and keys before RoPE; sliding
//!   layers use their own RoPE base (`rope_local_base_freq`, default 10⁴) and global layers the config's
//!   θ (default 10⁶); by default every 6th layer (5, 11, …) is global; no soft-capping unless configured.
//!
//! [`Gemma::from_gguf`] builds the model from a llama.cpp GGUF file (`gemma3` architecture): config from
//! the `gemma3.*` metadata, tensors dequantized by [`tch_rpo::gguf`] and renamed to the Hugging Face names;
//! the GGUF stores every RMSNorm weight as `1 + w`, so 1 is subtracted when loading (as transformers does).
//!
//! Attention is causal and combined with a padding mask (`attention_mask`, 1 = token, 0 = padding); position
//! ids are `0..T` for every row, which is right for **right** padding.
//!
//! Parameters live in a [`tch::nn::VarStore`] under the Hugging Face names (`model.embed_tokens.weight`,
//! `model.layers.{i}.self_attn.q_proj.weight`, …), so [`load_checkpoint`] copies a checkpoint's tensors by
//! name and [`save_checkpoint`] writes a directory that `transformers` can load.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, TchError, Tensor};

/// Errors of the Gemma model: configuration, checkpoint files, inputs, and libtorch itself.
#[derive(Debug, thiserror::Error)]
pub enum GemmaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file (config.json, the shard index) could not be parsed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// `model_type` names an architecture this module does not implement.
    #[error(
        "unsupported model_type {0:?}: this Gemma implementation supports \"gemma\", \"gemma2\" and \"gemma3_text\""
    )]
    UnknownArchitecture(String),
    /// The configuration is inconsistent or uses a feature that is not implemented.
    #[error("invalid Gemma config: {0}")]
    Config(String),
    /// The checkpoint directory has no weights file.
    #[error("no model.safetensors or model.safetensors.index.json in {0}")]
    NoWeights(PathBuf),
    /// A parameter the model needs is not in the checkpoint.
    #[error("tensor `{name}` is missing from {file}")]
    MissingTensor {
        /// The parameter name (Hugging Face naming).
        name: String,
        /// The file where it was looked for (the single weights file, or the shard index / the shard).
        file: PathBuf,
    },
    /// A checkpoint tensor's shape differs from the one the config implies.
    #[error("tensor `{name}` in {file} has shape {got:?}, but the config implies {expected:?}")]
    ShapeMismatch {
        /// The parameter name.
        name: String,
        /// The file holding it.
        file: PathBuf,
        /// The shape implied by config.json.
        expected: Vec<i64>,
        /// The shape in the file.
        got: Vec<i64>,
    },
    /// The checkpoint holds a tensor that this architecture does not have.
    #[error("tensor `{name}` in {file} is not a parameter of this {model_type} model (wrong architecture or config?)")]
    UnexpectedTensor {
        /// The tensor name.
        name: String,
        /// The file holding it.
        file: PathBuf,
        /// The config's model_type.
        model_type: String,
    },
    /// A GGUF file could not be read (or lacks a key / tensor), see [`tch_rpo::gguf`].
    #[error(transparent)]
    Gguf(tch_rpo::Error),
    /// A safetensors file could not be read.
    #[error("{path}: cannot read safetensors: {source}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: TchError,
    },
    /// A forward input has the wrong shape, dtype or values.
    #[error("`{arg}`: {message}")]
    Input {
        /// The argument's name.
        arg: &'static str,
        /// What is wrong.
        message: String,
    },
    /// libtorch reported an error.
    #[error(transparent)]
    Torch(#[from] TchError),
}

/// The result type of this module.
pub type Result<T> = std::result::Result<T, GemmaError>;

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
    fn has_gemma2_layer(self) -> bool {
        matches!(self, GemmaArch::Gemma2 | GemmaArch::Gemma3)
    }
}

/// The MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// GELU, tanh approximation (`gelu_pytorch_tanh`, `gelu_new`; Gemma 1's legacy `gelu` means this too).
    GeluTanh,
    /// Exact (erf) GELU (`gelu` in a Gemma 2 config).
    Gelu,
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

/// A Gemma / Gemma 2 configuration, read from a Hugging Face `config.json` (unknown fields are ignored).
///
/// Absent Gemma 2 fields take `transformers`' defaults (query_pre_attn_scalar 256, sliding_window 4096,
/// final / attention soft-caps 30 / 50); an explicit `null` soft-cap switches soft-capping off. RoPE θ comes
/// from `rope_parameters.rope_theta` (transformers ≥ 5) or `rope_theta` (older files), default 10000.
/// Call [`GemmaConfig::validate`] (done by [`Gemma::new`]) to check it.
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
    /// Parses a config.json text. Errors: [`GemmaError::Json`] (with `origin` as the path).
    ///
    /// For Gemma 3 an absent soft-cap means none (transformers' Gemma 3 default), not Gemma 2's 30 / 50.
    pub fn from_json_str(text: &str, origin: &Path) -> Result<Self> {
        let json = |source| GemmaError::Json {
            path: origin.to_path_buf(),
            source,
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
    /// Errors: [`GemmaError::Io`], [`GemmaError::Json`], and those of `validate`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| GemmaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
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

    /// The architecture named by `model_type`. Errors: [`GemmaError::UnknownArchitecture`].
    pub fn arch(&self) -> Result<GemmaArch> {
        match self.model_type.as_str() {
            "gemma" => Ok(GemmaArch::Gemma),
            "gemma2" => Ok(GemmaArch::Gemma2),
            "gemma3_text" | "gemma3" => Ok(GemmaArch::Gemma3),
            other => Err(GemmaError::UnknownArchitecture(other.to_string())),
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

    /// RoPE base θ (of the global layers for Gemma 3). Errors: [`GemmaError::Config`] for a RoPE type
    /// other than "default".
    pub fn rope_base(&self) -> Result<f64> {
        Ok(self.rope_bases()?.0)
    }

    /// RoPE bases θ `(global layers, sliding layers)`. Gemma 1 / 2: the same θ (default 10⁴) for both.
    /// Gemma 3 (transformers' rules): global `rope_parameters.full_attention.rope_theta`, else
    /// `rope_theta`, else 10⁶; sliding `rope_parameters.sliding_attention.rope_theta`, else
    /// `rope_local_base_freq`, else 10⁴. Errors: [`GemmaError::Config`] for a RoPE type other than
    /// "default" (e.g. the linear scaling of the larger Gemma 3 models).
    pub fn rope_bases(&self) -> Result<(f64, f64)> {
        fn theta_of(params: &serde_json::Value) -> Result<Option<f64>> {
            if let Some(kind) = params.get("rope_type").and_then(|v| v.as_str()) {
                if kind != "default" {
                    return Err(GemmaError::Config(format!(
                        "rope_type {kind:?} is not implemented (only \"default\")"
                    )));
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

    /// The MLP activation. Errors: [`GemmaError::Config`] for an unimplemented one.
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
            (other, _) => Err(GemmaError::Config(format!(
                "hidden activation {other:?} is not implemented"
            ))),
        }
    }

    /// The sliding window of each layer (`None`: full attention). Gemma 1: none. Default `layer_types`:
    /// Gemma 2 sliding on even layers (0, 2, …), Gemma 3 global on every 6th layer (5, 11, …).
    /// Errors: [`GemmaError::Config`] for a bad `layer_types` list or window.
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
            return Err(GemmaError::Config(format!(
                "layer_types has {} entries but num_hidden_layers is {layers}",
                types.len()
            )));
        }
        types
            .iter()
            .map(|t| match t.as_str() {
                "full_attention" => Ok(None),
                "sliding_attention" => match self.sliding_window {
                    Some(w) if w > 0 => Ok(Some(w)),
                    w => Err(GemmaError::Config(format!(
                        "sliding_window {w:?} must be a positive integer"
                    ))),
                },
                other => Err(GemmaError::Config(format!(
                    "layer type {other:?} is not implemented"
                ))),
            })
            .collect()
    }

    /// Checks the configuration. Errors: [`GemmaError::UnknownArchitecture`] for a `model_type` other than
    /// "gemma" / "gemma2"; [`GemmaError::Config`] for non-positive sizes, heads not divisible by key/value
    /// heads, an untied head, biases, an unknown activation / RoPE type / layer type, or Gemma 2 scalars
    /// that are not positive.
    pub fn validate(&self) -> Result<()> {
        let arch = self.arch()?;
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_size()),
        ];
        for (name, value) in sizes {
            if value <= 0 {
                return Err(GemmaError::Config(format!("{name} = {value} must be positive")));
            }
        }
        if self.num_attention_heads % self.kv_heads() != 0 {
            return Err(GemmaError::Config(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            )));
        }
        if self.head_size() % 2 != 0 {
            return Err(GemmaError::Config(format!(
                "head_dim {} must be even for RoPE",
                self.head_size()
            )));
        }
        if !self.tie_word_embeddings {
            return Err(GemmaError::Config(
                "tie_word_embeddings = false is not supported (Gemma ties)".into(),
            ));
        }
        if self.attention_bias {
            return Err(GemmaError::Config(
                "attention_bias = true is not supported (Gemma has none)".into(),
            ));
        }
        if !is_positive(self.rms_norm_eps) {
            return Err(GemmaError::Config(format!(
                "rms_norm_eps {} must be positive",
                self.rms_norm_eps
            )));
        }
        let (global, local) = self.rope_bases()?;
        for theta in [global, local] {
            if !is_positive(theta) {
                return Err(GemmaError::Config(format!("rope_theta {theta} must be positive")));
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
                        return Err(GemmaError::Config(format!("{name} = {v} must be positive")));
                    }
                }
            }
        }
        Ok(())
    }

    /// The attention scale: Gemma 1 `head_dim^-½`, Gemma 2 / 3 `query_pre_attn_scalar^-½`.
    fn attention_scale(&self, arch: GemmaArch) -> f64 {
        match (arch, self.query_pre_attn_scalar) {
            (GemmaArch::Gemma2 | GemmaArch::Gemma3, Some(s)) => s.powf(-0.5),
            _ => (self.head_size() as f64).powf(-0.5),
        }
    }

    /// The expected shape of every parameter, by Hugging Face name.
    pub fn parameter_shapes(&self) -> Result<BTreeMap<String, Vec<i64>>> {
        let arch = self.arch()?;
        let (h, hd) = (self.hidden_size, self.head_size());
        let mut shapes = BTreeMap::new();
        shapes.insert("model.embed_tokens.weight".to_string(), vec![self.vocab_size, h]);
        shapes.insert("model.norm.weight".to_string(), vec![h]);
        let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
        if arch.has_gemma2_layer() {
            norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
        }
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            for norm in &norms {
                shapes.insert(format!("{p}.{norm}.weight"), vec![h]);
            }
            if arch == GemmaArch::Gemma3 {
                shapes.insert(format!("{p}.self_attn.q_norm.weight"), vec![hd]);
                shapes.insert(format!("{p}.self_attn.k_norm.weight"), vec![hd]);
            }
            shapes.insert(
                format!("{p}.self_attn.q_proj.weight"),
                vec![self.num_attention_heads * hd, h],
            );
            shapes.insert(
                format!("{p}.self_attn.k_proj.weight"),
                vec![self.kv_heads() * hd, h],
            );
            shapes.insert(
                format!("{p}.self_attn.v_proj.weight"),
                vec![self.kv_heads() * hd, h],
            );
            shapes.insert(
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, self.num_attention_heads * hd],
            );
            shapes.insert(
                format!("{p}.mlp.gate_proj.weight"),
                vec![self.intermediate_size, h],
            );
            shapes.insert(format!("{p}.mlp.up_proj.weight"), vec![self.intermediate_size, h]);
            shapes.insert(
                format!("{p}.mlp.down_proj.weight"),
                vec![h, self.intermediate_size],
            );
        }
        Ok(shapes)
    }
}

/// RMSNorm with Gemma's `(1 + w)` scale, computed in f32.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(path: nn::Path, size: i64, eps: f64) -> Self {
        Self {
            weight: path.var("weight", &[size], nn::Init::Const(0.0)),
            eps,
        }
    }

    fn shallow_clone(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            eps: self.eps,
        }
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let x = xs.f_to_kind(Kind::Float)?;
        let mean_square = x.f_square()?.f_mean_dim(-1, true, Kind::Float)?;
        let normed = x.f_mul(&mean_square.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        let scale = self.weight.f_to_kind(Kind::Float)?.f_add_scalar(1.0)?;
        Ok(normed.f_mul(&scale)?.f_to_kind(xs.kind())?)
    }
}

fn linear(xs: &Tensor, weight: &Tensor) -> Result<Tensor> {
    Ok(xs.f_linear::<&Tensor>(weight, None)?)
}

fn soft_cap(xs: &Tensor, cap: Option<f64>) -> Result<Tensor> {
    match cap {
        Some(c) => Ok(xs.f_div_scalar(c)?.f_tanh()?.f_mul_scalar(c)?),
        None => Ok(xs.shallow_clone()),
    }
}

/// `cat(-x2, x1)` over the last dimension.
fn rotate_half(xs: &Tensor) -> Result<Tensor> {
    let half = xs.size().last().copied().unwrap_or(0) / 2;
    let x1 = xs.f_narrow(-1, 0, half)?;
    let x2 = xs.f_narrow(-1, half, half)?;
    Ok(Tensor::f_cat(&[x2.f_neg()?, x1], -1)?)
}

struct Attention {
    q_proj: Tensor,
    k_proj: Tensor,
    v_proj: Tensor,
    o_proj: Tensor,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    scale: f64,
    logit_cap: Option<f64>,
    window: Option<i64>,
    /// Gemma 3: per-head RMSNorm of the queries and keys (before RoPE).
    q_norm: Option<RmsNorm>,
    /// See `q_norm`.
    k_norm: Option<RmsNorm>,
}

impl Attention {
    fn shallow_clone(&self) -> Self {
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

    /// `xs` [N, T, H]; `cos`, `sin` [T, head_dim] in the activation dtype; `blocked` [N, 1, T, T] bool
    /// (true = the query may not see the key).
    fn forward(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor, blocked: &Tensor) -> Result<Tensor> {
        let (n, t) = (xs.size()[0], xs.size()[1]);
        let split = |w: &Tensor, heads: i64| -> Result<Tensor> {
            Ok(linear(xs, w)?
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
        let repeat = |x: Tensor| -> Result<Tensor> {
            let groups = self.heads / self.kv_heads;
            if groups == 1 {
                return Ok(x);
            }
            Ok(x.f_unsqueeze(2)?
                .f_expand([n, self.kv_heads, groups, t, self.head_dim], false)?
                .f_reshape([n, self.heads, t, self.head_dim])?)
        };
        let (k, v) = (repeat(k)?, repeat(v)?);
        let scores = q.f_matmul(&k.f_transpose(2, 3)?)?.f_mul_scalar(self.scale)?;
        let scores = soft_cap(&scores, self.logit_cap)?;
        // Softmax in f32, masked with the most negative finite f32 (a fully masked row stays finite).
        let probs = scores
            .f_to_kind(Kind::Float)?
            .f_masked_fill(blocked, f32::MIN as f64)?
            .f_softmax(-1, Kind::Float)?
            .f_to_kind(xs.kind())?;
        let out = probs
            .f_matmul(&v)?
            .f_transpose(1, 2)?
            .f_reshape([n, t, self.heads * self.head_dim])?;
        linear(&out, &self.o_proj)
    }
}

struct Mlp {
    gate_proj: Tensor,
    up_proj: Tensor,
    down_proj: Tensor,
    activation: Activation,
}

impl Mlp {
    fn shallow_clone(&self) -> Self {
        Self {
            gate_proj: self.gate_proj.shallow_clone(),
            up_proj: self.up_proj.shallow_clone(),
            down_proj: self.down_proj.shallow_clone(),
            activation: self.activation,
        }
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let approximate = match self.activation {
            Activation::GeluTanh => "tanh",
            Activation::Gelu => "none",
        };
        let gate = linear(xs, &self.gate_proj)?.f_gelu(approximate)?;
        linear(&gate.f_mul(&linear(xs, &self.up_proj)?)?, &self.down_proj)
    }
}

struct Layer {
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    /// Gemma 2 only.
    pre_feedforward_layernorm: Option<RmsNorm>,
    /// Gemma 2 only.
    post_feedforward_layernorm: Option<RmsNorm>,
    attention: Attention,
    mlp: Mlp,
}

impl Layer {
    fn shallow_clone(&self) -> Self {
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

    fn forward(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor, blocked: &Tensor) -> Result<Tensor> {
        let attn = self
            .attention
            .forward(&self.input_layernorm.forward(xs)?, cos, sin, blocked)?;
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

/// A Gemma / Gemma 2 causal language model with a tied LM head.
///
/// The parameters are variables of the [`nn::VarStore`] whose path was given to [`Gemma::new`]; the
/// activation dtype is the embedding's dtype (f32 or bf16: convert with `VarStore::set_kind`).
pub struct Gemma {
    config: GemmaConfig,
    arch: GemmaArch,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// RoPE θ of the (global, sliding) layers; equal for Gemma 1 / 2.
    rope_thetas: (f64, f64),
    /// Whether any layer uses a sliding window (then a second mask is built).
    any_sliding: bool,
}

impl Gemma {
    /// Creates the model's variables under `path` (pass `vs.root()`: names are then exactly the Hugging Face
    /// ones, e.g. `model.layers.0.self_attn.q_proj.weight`), randomly initialized as `transformers` does:
    /// linear and embedding weights ~ N(0, initializer_range²), norm weights 0. Seed with
    /// `tch::manual_seed` first for a reproducible init (libtorch's generator is global: other threads
    /// drawing random numbers at the same time change the init). Errors: those of [`GemmaConfig::validate`].
    pub fn new(path: &nn::Path, config: &GemmaConfig) -> Result<Self> {
        Self::build(path, config, true)
    }

    /// Like [`Gemma::new`] but with all parameters zero and the random generator untouched, for loading.
    fn build(path: &nn::Path, config: &GemmaConfig, random: bool) -> Result<Self> {
        config.validate()?;
        let arch = config.arch()?;
        let activation = config.activation()?;
        let windows = config.layer_windows()?;
        let (h, hd, eps) = (config.hidden_size, config.head_size(), config.rms_norm_eps);
        let init = match random {
            true => nn::Init::Randn {
                mean: 0.0,
                stdev: config.initializer_range,
            },
            false => nn::Init::Const(0.0),
        };
        let model = path / "model";
        let embed_tokens = (&model / "embed_tokens").var("weight", &[config.vocab_size, h], init);
        let mut layers = Vec::with_capacity(windows.len());
        for (i, window) in windows.iter().enumerate() {
            let lp = &model / "layers" / i;
            let ap = &lp / "self_attn";
            let mp = &lp / "mlp";
            let attention = Attention {
                q_proj: (&ap / "q_proj").var("weight", &[config.num_attention_heads * hd, h], init),
                k_proj: (&ap / "k_proj").var("weight", &[config.kv_heads() * hd, h], init),
                v_proj: (&ap / "v_proj").var("weight", &[config.kv_heads() * hd, h], init),
                o_proj: (&ap / "o_proj").var("weight", &[h, config.num_attention_heads * hd], init),
                heads: config.num_attention_heads,
                kv_heads: config.kv_heads(),
                head_dim: hd,
                scale: config.attention_scale(arch),
                logit_cap: if arch.has_gemma2_layer() {
                    config.attn_logit_softcapping
                } else {
                    None
                },
                window: *window,
                q_norm: (arch == GemmaArch::Gemma3).then(|| RmsNorm::new(&ap / "q_norm", hd, eps)),
                k_norm: (arch == GemmaArch::Gemma3).then(|| RmsNorm::new(&ap / "k_norm", hd, eps)),
            };
            let mlp = Mlp {
                gate_proj: (&mp / "gate_proj").var("weight", &[config.intermediate_size, h], init),
                up_proj: (&mp / "up_proj").var("weight", &[config.intermediate_size, h], init),
                down_proj: (&mp / "down_proj").var("weight", &[h, config.intermediate_size], init),
                activation,
            };
            let gemma2 = arch.has_gemma2_layer();
            layers.push(Layer {
                input_layernorm: RmsNorm::new(&lp / "input_layernorm", h, eps),
                post_attention_layernorm: RmsNorm::new(&lp / "post_attention_layernorm", h, eps),
                pre_feedforward_layernorm: gemma2
                    .then(|| RmsNorm::new(&lp / "pre_feedforward_layernorm", h, eps)),
                post_feedforward_layernorm: gemma2
                    .then(|| RmsNorm::new(&lp / "post_feedforward_layernorm", h, eps)),
                attention,
                mlp,
            });
        }
        let norm = RmsNorm::new(&model / "norm", h, eps);
        Ok(Self {
            config: config.clone(),
            arch,
            embed_tokens,
            layers,
            norm,
            rope_thetas: config.rope_bases()?,
            any_sliding: windows.iter().any(Option::is_some),
        })
    }

    /// Reads `dir/config.json`, creates a [`nn::VarStore`] on `device`, builds the model, converts it to
    /// `kind`, and loads the weights with [`load_checkpoint`]. Errors: those of [`GemmaConfig::from_file`],
    /// [`Gemma::new`] and [`load_checkpoint`].
    pub fn from_pretrained(dir: &Path, device: Device, kind: Kind) -> Result<(nn::VarStore, Self)> {
        let config = GemmaConfig::from_file(&dir.join("config.json"))?;
        let mut vs = nn::VarStore::new(device);
        let model = Self::build(&vs.root(), &config, false)?;
        vs.set_kind(kind);
        load_checkpoint(&vs, dir, &config)?;
        Ok((vs, model))
    }

    /// A second handle on the same model: every parameter tensor is a shallow clone sharing storage (and
    /// in-place updates) with this one, e.g. to decode with a model that a trainer owns and updates.
    pub fn shallow_clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            arch: self.arch,
            embed_tokens: self.embed_tokens.shallow_clone(),
            layers: self.layers.iter().map(Layer::shallow_clone).collect(),
            norm: self.norm.shallow_clone(),
            rope_thetas: self.rope_thetas,
            any_sliding: self.any_sliding,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GemmaConfig {
        &self.config
    }

    /// The architecture.
    pub fn arch(&self) -> GemmaArch {
        self.arch
    }

    /// The final-logit soft-cap (Gemma 2), applied by [`Gemma::forward`] after the head. A fused loss that
    /// works from [`Gemma::forward_hidden`] and [`Gemma::head_weight`] must apply it too (or the model must
    /// have none) to compute the same log-probs.
    pub fn final_logit_softcap(&self) -> Option<f64> {
        match self.arch {
            GemmaArch::Gemma2 | GemmaArch::Gemma3 => self.config.final_logit_softcapping,
            GemmaArch::Gemma => None,
        }
    }

    /// The LM head weight `[V, H]`: the embedding matrix itself (tied; a shallow handle that shares storage
    /// and gradient).
    pub fn head_weight(&self) -> Tensor {
        self.embed_tokens.shallow_clone()
    }

    fn check_inputs(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<(i64, i64)> {
        let size = input_ids.size();
        if size.len() != 2 || size[0] == 0 || size[1] == 0 {
            return Err(GemmaError::Input {
                arg: "input_ids",
                message: format!("shape {size:?}, expected non-empty [N, T]"),
            });
        }
        if input_ids.kind() != Kind::Int64 {
            return Err(GemmaError::Input {
                arg: "input_ids",
                message: format!("dtype {:?}, expected Int64", input_ids.kind()),
            });
        }
        if attention_mask.size() != size {
            return Err(GemmaError::Input {
                arg: "attention_mask",
                message: format!(
                    "shape {:?}, expected {size:?} like input_ids",
                    attention_mask.size()
                ),
            });
        }
        let (lo, hi) = (
            input_ids.f_min()?.f_int64_value(&[])?,
            input_ids.f_max()?.f_int64_value(&[])?,
        );
        if lo < 0 || hi >= self.config.vocab_size {
            return Err(GemmaError::Input {
                arg: "input_ids",
                message: format!(
                    "ids span [{lo}, {hi}], outside the vocabulary [0, {})",
                    self.config.vocab_size
                ),
            });
        }
        Ok((size[0], size[1]))
    }

    /// The final normed hidden states `[N, T, H]` (before the head), in the activation dtype.
    ///
    /// `input_ids` `[N, T]` i64 in `[0, V)`; `attention_mask` `[N, T]` (any dtype; nonzero = token, 0 =
    /// padding; padding on the right). Errors: [`GemmaError::Input`] for wrong shapes / dtype / ids out of
    /// range (checking the range syncs the device), [`GemmaError::Torch`].
    pub fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (_, t) = self.check_inputs(input_ids, attention_mask)?;
        let device = input_ids.device();
        let kind = self.embed_tokens.kind();
        let scale = Tensor::from((self.config.hidden_size as f64).sqrt() as f32)
            .f_to_kind(kind)?
            .f_to_device(device)?;
        let mut xs = Tensor::f_embedding(&self.embed_tokens, input_ids, -1, false, false)?.f_mul(&scale)?;

        // RoPE tables [T, head_dim], computed in f32 as transformers does, then cast: one for the global
        // layers, one for the sliding layers (the same θ except in Gemma 3).
        let hd = self.config.head_size();
        let rope_table = |theta: f64| -> Result<(Tensor, Tensor)> {
            let exponents =
                Tensor::f_arange_start_step(0, hd, 2, (Kind::Float, device))?.f_div_scalar(hd as f64)?;
            let inv_freq = Tensor::f_pow_scalar(theta, &exponents)?.f_reciprocal()?;
            let positions = Tensor::f_arange(t, (Kind::Float, device))?;
            let freqs = positions.f_unsqueeze(1)?.f_mul(&inv_freq.f_unsqueeze(0)?)?;
            let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
            Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
        };
        let global_rope = rope_table(self.rope_thetas.0)?;
        let local_rope = if self.rope_thetas.1 == self.rope_thetas.0 {
            (global_rope.0.shallow_clone(), global_rope.1.shallow_clone())
        } else {
            rope_table(self.rope_thetas.1)?
        };

        // Masks [N, 1, T, T]: true where a query (row) may NOT see a key (column).
        let query = Tensor::f_arange(t, (Kind::Int64, device))?.f_unsqueeze(1)?;
        let key = Tensor::f_arange(t, (Kind::Int64, device))?.f_unsqueeze(0)?;
        let causal = key.f_le_tensor(&query)?;
        let keep = attention_mask.f_ne(0)?.f_unsqueeze(1)?.f_unsqueeze(1)?;
        let full_blocked = causal
            .f_unsqueeze(0)?
            .f_unsqueeze(0)?
            .f_logical_and(&keep)?
            .f_logical_not()?;
        let sliding_blocked = match (self.any_sliding, self.config.sliding_window) {
            (true, Some(window)) => {
                let near = query.f_sub(&key)?.f_lt(window)?;
                Some(
                    causal
                        .f_logical_and(&near)?
                        .f_unsqueeze(0)?
                        .f_unsqueeze(0)?
                        .f_logical_and(&keep)?
                        .f_logical_not()?,
                )
            }
            _ => None,
        };
        for layer in &self.layers {
            let (blocked, (cos, sin)) = match (layer.attention.window, &sliding_blocked) {
                (Some(_), Some(mask)) => (mask, &local_rope),
                _ => (&full_blocked, &global_rope),
            };
            xs = layer.forward(&xs, cos, sin, blocked)?;
        }
        self.norm.forward(&xs)
    }

    /// Logits `[N, T, V]` in the activation dtype: the head (tied embedding) applied to
    /// [`Gemma::forward_hidden`], then Gemma 2's final soft-cap. Same inputs and errors as `forward_hidden`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, attention_mask)?;
        soft_cap(&linear(&hidden, &self.embed_tokens)?, self.final_logit_softcap())
    }
}

fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(GemmaError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        });
    }
    Tensor::read_safetensors(path).map_err(|source| GemmaError::Safetensors {
        path: path.to_path_buf(),
        source,
    })
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// Tensors in checkpoints that are not parameters of the model but harmless: the (tied) LM head and RoPE
/// buffers saved by old versions of transformers.
fn is_ignorable(name: &str) -> bool {
    name == "lm_head.weight" || name.ends_with("rotary_emb.inv_freq")
}

/// Copies a Hugging Face checkpoint's weights from `dir` into the model variables of `vs` (created by
/// [`Gemma::new`] with `config`), under `no_grad`, converting each tensor to its variable's dtype and device.
///
/// Reads `dir/model.safetensors.index.json` (sharded: its `weight_map` names each tensor's file) when
/// present, else `dir/model.safetensors`. One file is in memory at a time. `lm_head.weight` (tied) and old
/// `rotary_emb.inv_freq` buffers are skipped. Returns the number of tensors copied.
///
/// Errors: [`GemmaError::NoWeights`] when neither file exists; [`GemmaError::Io`] / [`GemmaError::Json`] /
/// [`GemmaError::Safetensors`] for unreadable files; [`GemmaError::MissingTensor`] naming the tensor and the
/// file it was expected in; [`GemmaError::ShapeMismatch`] naming the tensor, file and both shapes;
/// [`GemmaError::UnexpectedTensor`] for a tensor that is no parameter of this config (e.g. a layer beyond
/// `num_hidden_layers`, or Gemma 2 norms in a Gemma 1 config).
pub fn load_checkpoint(vs: &nn::VarStore, dir: &Path, config: &GemmaConfig) -> Result<usize> {
    let expected = config.parameter_shapes()?;
    let variables = vs.variables();
    let single = dir.join("model.safetensors");
    let index_path = dir.join("model.safetensors.index.json");
    // (file, tensor names expected there), and where a missing name is reported.
    let mut plan: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(|source| GemmaError::Io {
            path: index_path.clone(),
            source,
        })?;
        let index: ShardIndex = serde_json::from_str(&text).map_err(|source| GemmaError::Json {
            path: index_path.clone(),
            source,
        })?;
        for name in expected.keys() {
            match index.weight_map.get(name) {
                Some(file) => plan.entry(dir.join(file)).or_default().push(name.clone()),
                None => {
                    return Err(GemmaError::MissingTensor {
                        name: name.clone(),
                        file: index_path,
                    })
                }
            }
        }
        for file in index.weight_map.values() {
            plan.entry(dir.join(file)).or_default();
        }
    } else if single.is_file() {
        plan.insert(single, expected.keys().cloned().collect());
    } else {
        return Err(GemmaError::NoWeights(dir.to_path_buf()));
    }

    let mut copied = 0;
    let mut seen = HashSet::new();
    for (file, wanted) in &plan {
        let tensors: HashMap<String, Tensor> = read_safetensors(file)?.into_iter().collect();
        for (name, tensor) in &tensors {
            if is_ignorable(name) || seen.contains(name) {
                continue;
            }
            let (Some(shape), Some(variable)) = (expected.get(name), variables.get(name)) else {
                return Err(GemmaError::UnexpectedTensor {
                    name: name.clone(),
                    file: file.clone(),
                    model_type: config.model_type.clone(),
                });
            };
            if &tensor.size() != shape {
                return Err(GemmaError::ShapeMismatch {
                    name: name.clone(),
                    file: file.clone(),
                    expected: shape.clone(),
                    got: tensor.size(),
                });
            }
            let mut variable = variable.shallow_clone();
            let value = tensor
                .f_to_kind(variable.kind())?
                .f_to_device(variable.device())?;
            tch::no_grad(|| variable.f_copy_(&value))?;
            seen.insert(name.clone());
            copied += 1;
        }
        if let Some(name) = wanted.iter().find(|name| !tensors.contains_key(*name)) {
            return Err(GemmaError::MissingTensor {
                name: name.clone(),
                file: file.clone(),
            });
        }
    }
    Ok(copied)
}

/// Writes `dir/config.json` and `dir/model.safetensors` (the variables of `vs`, in their current dtype) so
/// that [`Gemma::from_pretrained`] and `transformers` can load the directory. Creates `dir` if needed.
/// Errors: [`GemmaError::Io`], [`GemmaError::Torch`].
pub fn save_checkpoint(vs: &nn::VarStore, config: &GemmaConfig, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| GemmaError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(config).map_err(|source| GemmaError::Json {
        path: config_path.clone(),
        source,
    })?;
    std::fs::write(&config_path, text).map_err(|source| GemmaError::Io {
        path: config_path,
        source,
    })?;
    vs.save(dir.join("model.safetensors"))?;
    Ok(())
}

/// The `tokenizer.json` of a checkpoint directory. Errors: [`GemmaError::Io`] when it does not exist.
pub fn tokenizer_path(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("tokenizer.json");
    if path.is_file() {
        Ok(path)
    } else {
        Err(GemmaError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
        })
    }
}

/// Greedy decoding without a KV cache (each step reruns the forward pass: fine for short answers).
///
/// `prompts`: token ids per prompt (non-empty, each id in `[0, V)`), batched with right padding with
/// `pad_id`. Each row gets up to `max_new_tokens` argmax tokens; a row stops after emitting `eos_id` (the
/// eos is not returned). Runs under `no_grad` on `device`. Returns the generated ids per prompt.
/// Errors: [`GemmaError::Input`] for an empty prompt; those of [`Gemma::forward`].
pub fn greedy_decode(
    model: &Gemma,
    prompts: &[Vec<i64>],
    max_new_tokens: usize,
    eos_id: i64,
    pad_id: i64,
    device: Device,
) -> Result<Vec<Vec<i64>>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(GemmaError::Input {
            arg: "prompts",
            message: format!("prompt {i} is empty"),
        });
    }
    let rows = prompts.len();
    let mut lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let width = lengths.iter().max().copied().unwrap_or(0) + max_new_tokens;
    let mut ids = vec![pad_id; rows * width];
    let mut mask = vec![0i64; rows * width];
    for (r, prompt) in prompts.iter().enumerate() {
        ids[r * width..r * width + prompt.len()].copy_from_slice(prompt);
        mask[r * width..r * width + prompt.len()].fill(1);
    }
    let mut generated = vec![Vec::new(); rows];
    let mut done = vec![false; rows];
    tch::no_grad(|| -> Result<()> {
        for _ in 0..max_new_tokens {
            if done.iter().all(|d| *d) {
                break;
            }
            let t = lengths.iter().max().copied().unwrap_or(0);
            let input = Tensor::from_slice(&ids)
                .f_view([rows as i64, width as i64])?
                .f_narrow(1, 0, t as i64)?;
            let attention = Tensor::from_slice(&mask)
                .f_view([rows as i64, width as i64])?
                .f_narrow(1, 0, t as i64)?;
            let logits = model.forward(&input.f_to_device(device)?, &attention.f_to_device(device)?)?;
            let last: Vec<i64> = lengths.iter().map(|l| *l as i64 - 1).collect();
            let index = Tensor::from_slice(&last)
                .f_to_device(device)?
                .f_view([rows as i64, 1, 1])?
                .f_expand([rows as i64, 1, logits.size()[2]], false)?;
            let next = logits
                .f_gather(1, &index, false)?
                .f_squeeze_dim(1)?
                .f_argmax(-1, false)?;
            let next = Vec::<i64>::try_from(next.f_to_device(Device::Cpu)?)?;
            for r in 0..rows {
                if done[r] {
                    continue;
                }
                if next[r] == eos_id {
                    done[r] = true;
                    continue;
                }
                generated[r].push(next[r]);
                ids[r * width + lengths[r]] = next[r];
                mask[r * width + lengths[r]] = 1;
                lengths[r] += 1;
            }
        }
        Ok(())
    })?;
    Ok(generated)
}

/// The GGUF name of a Hugging Face parameter name of a Gemma 3 model (llama.cpp's naming), or `None` for a
/// name that has no GGUF counterpart.
pub fn gguf_tensor_name(hf_name: &str) -> Option<String> {
    match hf_name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, param) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let gguf = match param {
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "self_attn.q_norm.weight" => "attn_q_norm",
        "self_attn.k_norm.weight" => "attn_k_norm",
        "input_layernorm.weight" => "attn_norm",
        "post_attention_layernorm.weight" => "post_attention_norm",
        "pre_feedforward_layernorm.weight" => "ffn_norm",
        "post_feedforward_layernorm.weight" => "post_ffw_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.weight"))
}

fn gguf_error(error: tch_rpo::Error) -> GemmaError {
    match error {
        tch_rpo::Error::Torch(e) => GemmaError::Torch(e),
        other => GemmaError::Gguf(other),
    }
}

impl GemmaConfig {
    /// The configuration of a Gemma 3 GGUF file (`general.architecture` = "gemma3"), from its metadata,
    /// filled as `transformers` fills it when it loads a GGUF:
    ///
    /// | field | from |
    /// |---|---|
    /// | hidden / intermediate size, layers, heads, kv heads, head_dim | `gemma3.embedding_length`, `.feed_forward_length`, `.block_count`, `.attention.head_count`, `.attention.head_count_kv`, `.attention.key_length` |
    /// | rms_norm_eps, sliding_window, max positions | `gemma3.attention.layer_norm_rms_epsilon`, `.attention.sliding_window`, `.context_length` |
    /// | θ of the global layers | `gemma3.rope.freq_base` (default 10⁶) |
    /// | vocab_size | the length of `tokenizer.ggml.tokens` (else the embedding's rows) |
    /// | soft-caps | `gemma3.final_logit_softcapping` / `.attn_logit_softcapping` if present, else none |
    /// | pad / bos / eos | `tokenizer.ggml.padding_token_id` / `bos_token_id` / `eos_token_id` |
    /// | not in the file | θ of the sliding layers 10⁴, query_pre_attn_scalar 256, gelu tanh, every 6th layer global, tied head |
    ///
    /// Errors: [`GemmaError::Gguf`] for a missing key or a key of the wrong type;
    /// [`GemmaError::UnknownArchitecture`] for an architecture other than gemma3; those of
    /// [`GemmaConfig::validate`].
    pub fn from_gguf(file: &tch_rpo::gguf::GgufFile) -> Result<Self> {
        let arch = file.get_str("general.architecture").map_err(gguf_error)?;
        if arch != "gemma3" {
            return Err(GemmaError::UnknownArchitecture(format!(
                "{arch} (GGUF general.architecture; only gemma3 GGUF files are supported)"
            )));
        }
        let int = |key: &str| -> Result<i64> {
            let v = file.get_u64(&format!("gemma3.{key}")).map_err(gguf_error)?;
            i64::try_from(v).map_err(|_| GemmaError::Config(format!("gemma3.{key} = {v} is too large")))
        };
        let optional_f64 = |key: &str| -> Result<Option<f64>> {
            let key = format!("gemma3.{key}");
            match file.get(&key) {
                Some(_) => Ok(Some(file.get_f64(&key).map_err(gguf_error)?)),
                None => Ok(None),
            }
        };
        let token_id = |key: &str| -> Result<Option<i64>> {
            let key = format!("tokenizer.ggml.{key}");
            match file.get(&key) {
                Some(_) => Ok(Some(file.get_i64(&key).map_err(gguf_error)?)),
                None => Ok(None),
            }
        };
        let vocab_size = match file.get("tokenizer.ggml.tokens") {
            Some(_) => file.get_array("tokenizer.ggml.tokens").map_err(gguf_error)?.len() as i64,
            None => file
                .tensor_info("token_embd.weight")
                .map_err(gguf_error)?
                .shape
                .first()
                .copied()
                .unwrap_or(0),
        };
        let heads = int("attention.head_count")?;
        let head_dim = match file.get("gemma3.attention.key_length") {
            Some(_) => int("attention.key_length")?,
            None => int("embedding_length")? / heads.max(1),
        };
        let config = Self {
            model_type: "gemma3_text".into(),
            vocab_size,
            hidden_size: int("embedding_length")?,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: Some(int("attention.head_count_kv")?),
            head_dim: Some(head_dim),
            hidden_activation: Some("gelu_pytorch_tanh".into()),
            hidden_act: None,
            rms_norm_eps: optional_f64("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
            rope_theta: optional_f64("rope.freq_base")?,
            rope_parameters: None,
            rope_local_base_freq: Some(10000.0),
            max_position_embeddings: int("context_length")?,
            tie_word_embeddings: !file.has_tensor("output.weight"),
            attention_bias: false,
            initializer_range: 0.02,
            query_pre_attn_scalar: Some(256.0),
            sliding_window: Some(int("attention.sliding_window")?),
            final_logit_softcapping: optional_f64("final_logit_softcapping")?,
            attn_logit_softcapping: optional_f64("attn_logit_softcapping")?,
            layer_types: None,
            pad_token_id: token_id("padding_token_id")?,
            bos_token_id: token_id("bos_token_id")?,
            eos_token_id: token_id("eos_token_id")?.map(TokenIds::One),
        };
        config.validate()?;
        Ok(config)
    }
}

/// Copies the tensors of a Gemma 3 GGUF file into the variables of `vs` (built by [`Gemma::new`] with
/// `config`), under `no_grad`: each tensor is dequantized to f32 ([`tch_rpo::gguf::GgufFile::tensor`]),
/// 1 is subtracted from every RMSNorm weight (GGUF stores `1 + w`), then it is converted to its variable's
/// dtype and device. Returns the number of tensors copied.
///
/// Errors: [`GemmaError::MissingTensor`] for a parameter the file lacks; [`GemmaError::ShapeMismatch`];
/// [`GemmaError::UnexpectedTensor`] for a file tensor that is no parameter of this config (e.g. an untied
/// `output.weight`); [`GemmaError::Gguf`] for unreadable data or an unsupported tensor type.
pub fn load_gguf(vs: &nn::VarStore, file: &tch_rpo::gguf::GgufFile, config: &GemmaConfig) -> Result<usize> {
    let expected = config.parameter_shapes()?;
    let variables = vs.variables();
    let path = file.path().to_path_buf();
    let mut by_gguf = HashMap::new();
    for name in expected.keys() {
        let gguf = gguf_tensor_name(name)
            .ok_or_else(|| GemmaError::Config(format!("parameter {name} has no GGUF counterpart")))?;
        by_gguf.insert(gguf, name.clone());
    }
    for info in file.tensors() {
        if !by_gguf.contains_key(&info.name) {
            return Err(GemmaError::UnexpectedTensor {
                name: info.name.clone(),
                file: path.clone(),
                model_type: config.model_type.clone(),
            });
        }
    }
    let mut copied = 0;
    for (gguf, name) in &by_gguf {
        if !file.has_tensor(gguf) {
            return Err(GemmaError::MissingTensor {
                name: gguf.clone(),
                file: path.clone(),
            });
        }
        let (Some(shape), Some(variable)) = (expected.get(name), variables.get(name)) else {
            return Err(GemmaError::Config(format!(
                "parameter {name} is not in the model"
            )));
        };
        let info = file.tensor_info(gguf).map_err(gguf_error)?;
        if &info.shape != shape {
            return Err(GemmaError::ShapeMismatch {
                name: gguf.clone(),
                file: path.clone(),
                expected: shape.clone(),
                got: info.shape.clone(),
            });
        }
        let mut value = file
            .tensor(gguf, Kind::Float, variable.device())
            .map_err(gguf_error)?;
        if gguf.ends_with("norm.weight") {
            value = value.f_sub_scalar(1.0)?;
        }
        let value = value.f_to_kind(variable.kind())?;
        let mut variable = variable.shallow_clone();
        tch::no_grad(|| variable.f_copy_(&value))?;
        copied += 1;
    }
    Ok(copied)
}

impl Gemma {
    /// Opens a Gemma 3 GGUF file, reads its config ([`GemmaConfig::from_gguf`]), creates a
    /// [`nn::VarStore`] on `device` with the model in `kind` (f32 or bf16) and loads the weights
    /// ([`load_gguf`]). Returns the store, the model and the opened file (for its tokenizer).
    /// Errors: those of the three.
    pub fn from_gguf(
        path: &Path,
        device: Device,
        kind: Kind,
    ) -> Result<(nn::VarStore, Self, tch_rpo::gguf::GgufFile)> {
        let file = tch_rpo::gguf::GgufFile::open(path).map_err(gguf_error)?;
        let config = GemmaConfig::from_gguf(&file)?;
        let mut vs = nn::VarStore::new(device);
        let model = Self::build(&vs.root(), &config, false)?;
        vs.set_kind(kind);
        load_gguf(&vs, &file, &config)?;
        Ok((vs, model, file))
    }
}
