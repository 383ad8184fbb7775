//! [`Gemma`]: the decoder (embedding, layers, final norm, tied head) on a [`tch::nn::VarStore`].

use tch::{nn, Kind, Tensor};

use super::config::{GemmaArch, GemmaConfig};
use super::layers::{linear, soft_cap, Attention, Layer, Mlp, RmsNorm};
use crate::error::{Error, Result};

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
    pub(crate) fn build(path: &nn::Path, config: &GemmaConfig, random: bool) -> Result<Self> {
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
            return Err(Error::Shape {
                arg: "input_ids",
                expected: "non-empty [N, T]".into(),
                got: size,
            });
        }
        if input_ids.kind() != Kind::Int64 {
            return Err(Error::DType {
                arg: "input_ids",
                expected: "Int64",
                got: input_ids.kind(),
            });
        }
        if attention_mask.size() != size {
            return Err(Error::Shape {
                arg: "attention_mask",
                expected: format!("{size:?} like input_ids"),
                got: attention_mask.size(),
            });
        }
        let (lo, hi) = (
            input_ids.f_min()?.f_int64_value(&[])?,
            input_ids.f_max()?.f_int64_value(&[])?,
        );
        if lo < 0 || hi >= self.config.vocab_size {
            return Err(Error::TokenOutOfRange {
                arg: "input_ids",
                min: lo,
                max: hi,
                vocab: self.config.vocab_size,
            });
        }
        Ok((size[0], size[1]))
    }

    /// The final normed hidden states `[N, T, H]` (before the head), in the activation dtype.
    ///
    /// `input_ids` `[N, T]` i64 in `[0, V)`; `attention_mask` `[N, T]` (any dtype; nonzero = token, 0 =
    /// padding; padding on the right). Errors: [`Error::Shape`] / [`Error::DType`] for wrong shapes / dtype,
    /// [`Error::TokenOutOfRange`] for ids outside `[0, V)` (checking the range syncs the device),
    /// [`Error::Torch`].
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
