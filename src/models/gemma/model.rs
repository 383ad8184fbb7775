//! [`Gemma`]: the decoder (embedding, layers, final norm, tied head) on a [`tch::nn::VarStore`].

use tch::{nn, Kind, Tensor};

use super::config::{GemmaArch, GemmaConfig};
use super::layers::{parameter, soft_cap, Attention, Layer, LayerCache, Mlp, RmsNorm};
use crate::autograd::{backward_from, leaf_grad};
use crate::error::{Error, InputError, Result};
use crate::models::linear::Linear;

/// A Gemma / Gemma 2 causal language model with a tied LM head.
///
/// Built by [`Gemma::load`] (existing weights) or [`Gemma::random`] (a fresh random init). The parameters
/// are variables of an [`nn::VarStore`] under their Hugging Face names; the activation dtype is the embedding's dtype (f32 or bf16: convert with `VarStore::set_kind`).
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
    pub fn random(path: &nn::Path, config: &GemmaConfig) -> Result<Self> {
        Self::build(path, config, true)
    }

    /// Like [`Gemma::random`] but with all parameters zero and the random generator untouched, for loading.
    pub(super) fn build(path: &nn::Path, config: &GemmaConfig, random: bool) -> Result<Self> {
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
        let embed_tokens = parameter(
            &(&model / "embed_tokens"),
            "weight",
            &[config.vocab_size, h],
            init,
        )?;
        let mut layers = Vec::with_capacity(windows.len());
        for (i, window) in windows.iter().enumerate() {
            let lp = &model / "layers" / i;
            let ap = &lp / "self_attn";
            let mp = &lp / "mlp";
            let attention = Attention {
                q_proj: Linear::new(parameter(
                    &(&ap / "q_proj"),
                    "weight",
                    &[config.num_attention_heads * hd, h],
                    init,
                )?),
                k_proj: Linear::new(parameter(
                    &(&ap / "k_proj"),
                    "weight",
                    &[config.kv_heads() * hd, h],
                    init,
                )?),
                v_proj: Linear::new(parameter(
                    &(&ap / "v_proj"),
                    "weight",
                    &[config.kv_heads() * hd, h],
                    init,
                )?),
                o_proj: Linear::new(parameter(
                    &(&ap / "o_proj"),
                    "weight",
                    &[h, config.num_attention_heads * hd],
                    init,
                )?),
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
                q_norm: (arch == GemmaArch::Gemma3)
                    .then(|| RmsNorm::new(&ap / "q_norm", hd, eps))
                    .transpose()?,
                k_norm: (arch == GemmaArch::Gemma3)
                    .then(|| RmsNorm::new(&ap / "k_norm", hd, eps))
                    .transpose()?,
            };
            let mlp = Mlp {
                gate_proj: Linear::new(parameter(
                    &(&mp / "gate_proj"),
                    "weight",
                    &[config.intermediate_size, h],
                    init,
                )?),
                up_proj: Linear::new(parameter(
                    &(&mp / "up_proj"),
                    "weight",
                    &[config.intermediate_size, h],
                    init,
                )?),
                down_proj: Linear::new(parameter(
                    &(&mp / "down_proj"),
                    "weight",
                    &[h, config.intermediate_size],
                    init,
                )?),
                activation,
            };
            let gemma2 = arch.has_gemma2_layer();
            layers.push(Layer {
                input_layernorm: RmsNorm::new(&lp / "input_layernorm", h, eps)?,
                post_attention_layernorm: RmsNorm::new(&lp / "post_attention_layernorm", h, eps)?,
                pre_feedforward_layernorm: gemma2
                    .then(|| RmsNorm::new(&lp / "pre_feedforward_layernorm", h, eps))
                    .transpose()?,
                post_feedforward_layernorm: gemma2
                    .then(|| RmsNorm::new(&lp / "post_feedforward_layernorm", h, eps))
                    .transpose()?,
                attention,
                mlp,
            });
        }
        let norm = RmsNorm::new(&model / "norm", h, eps)?;
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

    /// Checks `input_ids` `[N, T]` (non-empty, i64, ids in `[0, V)`) and `attention_mask` `[N, width]`.
    pub(super) fn check_inputs(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        width: Option<i64>,
    ) -> Result<(i64, i64)> {
        let size = input_ids.size();
        if size.len() != 2 || size[0] == 0 || size[1] == 0 {
            return Err(Error::Input(InputError::Shape {
                arg: "input_ids",
                expected: "non-empty [N, T]".into(),
                got: size,
            }));
        }
        if input_ids.kind() != Kind::Int64 {
            return Err(Error::Input(InputError::DType {
                arg: "input_ids",
                expected: "Int64",
                got: input_ids.kind(),
            }));
        }
        let width = width.unwrap_or(size[1]);
        if attention_mask.size() != [size[0], width] {
            return Err(Error::Input(InputError::Shape {
                arg: "attention_mask",
                expected: format!(
                    "[{}, {width}] (rows of input_ids, cached + new positions)",
                    size[0]
                ),
                got: attention_mask.size(),
            }));
        }
        let (lo, hi) = (
            input_ids.f_min()?.f_int64_value(&[])?,
            input_ids.f_max()?.f_int64_value(&[])?,
        );
        if lo < 0 || hi >= self.config.vocab_size {
            return Err(Error::Input(InputError::TokenOutOfRange {
                arg: "input_ids",
                min: lo,
                max: hi,
                vocab: self.config.vocab_size,
            }));
        }
        Ok((size[0], size[1]))
    }

    /// The final normed hidden states `[N, T, H]` (before the head), in the activation dtype, for
    /// right-padded (or unpadded) rows: position ids `0..T` in every row.
    ///
    /// `input_ids` `[N, T]` i64 in `[0, V)`; `attention_mask` `[N, T]` (any dtype; nonzero = token, 0 =
    /// padding; padding on the right). Errors: [`InputError::Shape`] / [`InputError::DType`] for wrong shapes /
    /// dtype, [`InputError::TokenOutOfRange`] for ids outside `[0, V)` (checking the range syncs the device),
    /// [`Error::Torch`].
    pub fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let t = input_ids.size().get(1).copied().unwrap_or(0);
        let positions = Tensor::f_arange(t, (Kind::Int64, input_ids.device()))?.f_unsqueeze(0)?;
        self.forward_hidden_at(input_ids, attention_mask, &positions, None)
    }

    /// The final normed hidden states `[N, T, H]` of `T` new positions per row, with explicit position ids
    /// and optionally a [`KvCache`] of the earlier positions (used by [`generate`](super::generate())).
    ///
    /// Slots: the cache holds `P` = [`KvCache::len`] earlier slots per row (0 without a cache); the new
    /// tokens take slots `P..P + T`. A query in slot `q` sees the key in slot `k` when `k ≤ q`,
    /// `attention_mask[n, k] ≠ 0`, and, in a sliding-window layer, `q − k < window` — for contiguous
    /// (left or right) padding, slot differences equal position differences.
    ///
    /// - `input_ids` `[N, T]` i64 in `[0, V)`;
    /// - `attention_mask` `[N, P + T]` over the cached and the new slots (nonzero = token);
    /// - `position_ids` `[N, T]` or `[1, T]` i64: the RoPE position of each new token (for left padding:
    ///   the number of real tokens before it);
    /// - `cache`: appended to (keys and values of the new tokens; a sliding layer keeps only its last
    ///   `window − 1` slots).
    ///
    /// Errors: those of [`Gemma::forward_hidden`]; [`InputError::Shape`] for `position_ids` of another shape
    /// or a cache made for another model.
    pub fn forward_hidden_at(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let past = cache.as_ref().map_or(0, |c| c.len);
        let (n, t) = self.check_inputs(input_ids, attention_mask, Some(past + t_of(input_ids)))?;
        let pos_size = position_ids.size();
        if pos_size.len() != 2 || (pos_size[0] != n && pos_size[0] != 1) || pos_size[1] != t {
            return Err(Error::Input(InputError::Shape {
                arg: "position_ids",
                expected: format!("[{n}, {t}] or [1, {t}] like input_ids"),
                got: pos_size,
            }));
        }
        if let Some(cache) = cache.as_ref() {
            if cache.layers.len() != self.layers.len() {
                return Err(Error::Input(InputError::Shape {
                    arg: "cache",
                    expected: format!(
                        "a cache of {} layers (KvCache::new of this model)",
                        self.layers.len()
                    ),
                    got: vec![cache.layers.len() as i64],
                }));
            }
        }
        let attention = self.attention_inputs(attention_mask, position_ids, past, t, input_ids.device())?;
        let mut xs = self.embed(input_ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let (blocked, (cos, sin)) = attention.of(layer);
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            xs = layer.forward(&xs, cos, sin, blocked, layer_cache)?;
        }
        if let Some(cache) = cache {
            cache.len = past + t;
        }
        self.norm.forward(&xs)
    }

    /// The scaled token embedding `[N, T, H]` of `input_ids` (the first layer's input): the embedding rows
    /// times `sqrt(hidden_size)` rounded to the activation dtype.
    pub(super) fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        Ok(
            Tensor::f_embedding(&self.embed_tokens, input_ids, -1, false, false)?
                .f_mul(&self.embed_scale(input_ids)?)?,
        )
    }

    /// `sqrt(hidden_size)` in the activation dtype, on `input_ids`' device.
    fn embed_scale(&self, input_ids: &Tensor) -> Result<Tensor> {
        Ok(Tensor::from((self.config.hidden_size as f64).sqrt() as f32)
            .f_to_kind(self.embed_tokens.kind())?
            .f_to_device(input_ids.device())?)
    }

    /// Backpropagates `grad = dL/d embed(input_ids)` (`[N, T, H]`) into the embedding matrix's `.grad`: row `v`
    /// gains `scale · Σ grad` over the positions holding token `v`. When the matrix is a leaf whose `.grad`
    /// exists in its dtype, the rows are index-added into it in place (no dense `[V, H]` gradient, which
    /// autograd's embedding backward would allocate before adding it); otherwise through autograd.
    pub(super) fn embed_backward(&self, input_ids: &Tensor, grad: &Tensor) -> Result<()> {
        if !grad.defined() {
            return Ok(());
        }
        let weight = &self.embed_tokens;
        let Some(mut target) = leaf_grad(weight, weight.f_kind()?)? else {
            return backward_from(&self.embed(input_ids)?, grad);
        };
        tch::no_grad(|| -> Result<()> {
            let h = weight.size()[1];
            let rows = grad
                .f_mul(&self.embed_scale(input_ids)?)?
                .f_reshape([-1, h])?
                .f_to_kind(target.f_kind()?)?;
            let _ = target.f_index_add_(0, &input_ids.f_reshape([-1])?, &rows)?;
            Ok(())
        })
    }

    /// The RoPE tables and attention masks every layer takes, for `t` new positions after `past` cached
    /// slots, on `device`.
    pub(super) fn attention_inputs(
        &self,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        past: i64,
        t: i64,
        device: tch::Device,
    ) -> Result<AttentionInputs> {
        let kind = self.embed_tokens.kind();
        // RoPE tables [N or 1, 1, T, head_dim], computed in f32 as transformers does, then cast: one for
        // the global layers, one for the sliding layers (the same θ except in Gemma 3).
        let hd = self.config.head_size();
        let positions = position_ids.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?;
        let rope_table = |theta: f64| -> Result<(Tensor, Tensor)> {
            let exponents =
                Tensor::f_arange_start_step(0, hd, 2, (Kind::Float, device))?.f_div_scalar(hd as f64)?;
            let inv_freq = Tensor::f_pow_scalar(theta, &exponents)?.f_reciprocal()?;
            let freqs = positions.f_mul(&inv_freq)?;
            let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?.f_unsqueeze(1)?;
            Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
        };
        let global_rope = rope_table(self.rope_thetas.0)?;
        let local_rope = if self.rope_thetas.1 == self.rope_thetas.0 {
            (global_rope.0.shallow_clone(), global_rope.1.shallow_clone())
        } else {
            rope_table(self.rope_thetas.1)?
        };

        // Masks [N, 1, T, P + T]: true where a query (row) may NOT see a key (column).
        let query = Tensor::f_arange_start(past, past + t, (Kind::Int64, device))?.f_unsqueeze(1)?;
        let key = Tensor::f_arange(past + t, (Kind::Int64, device))?.f_unsqueeze(0)?;
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
        Ok(AttentionInputs {
            global_rope,
            local_rope,
            full_blocked,
            sliding_blocked,
        })
    }

    /// The decoder layers.
    pub(super) fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The decoder layers, mutably (attaching adapters to their linear layers).
    #[cfg(feature = "lora")]
    pub(super) fn layers_mut(&mut self) -> &mut [Layer] {
        &mut self.layers
    }

    /// The final norm.
    pub(super) fn final_norm(&self) -> &RmsNorm {
        &self.norm
    }

    /// Logits `[..., V]` of hidden states `[..., H]` (e.g. from [`Gemma::forward_hidden`]): the head (tied
    /// embedding), then Gemma 2 / 3's final soft-cap when configured. Errors: [`Error::Torch`] (e.g. a
    /// last dimension other than H).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        soft_cap(
            &hidden.f_linear::<&Tensor>(&self.embed_tokens, None)?,
            self.final_logit_softcap(),
        )
    }

    /// Logits `[N, T, V]` in the activation dtype: [`Gemma::logits`] of [`Gemma::forward_hidden`]. Same
    /// inputs and errors as `forward_hidden`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, attention_mask)?;
        self.logits(&hidden)
    }
}

/// `T` of `input_ids` `[N, T]` (0 for another rank; the check reports it).
fn t_of(input_ids: &Tensor) -> i64 {
    input_ids.size().get(1).copied().unwrap_or(0)
}

/// The per-layer inputs besides the hidden states: RoPE tables `(cos, sin)` of the global and the sliding
/// layers, and the blocked-key masks.
pub(super) struct AttentionInputs {
    global_rope: (Tensor, Tensor),
    local_rope: (Tensor, Tensor),
    full_blocked: Tensor,
    sliding_blocked: Option<Tensor>,
}

impl AttentionInputs {
    /// The inputs of batch rows `start .. start + len`: tables and masks with one row per batch row are
    /// narrowed, those shared by all rows (batch dimension 1) kept.
    pub(super) fn rows(&self, start: i64, len: i64) -> Result<Self> {
        let narrow = |t: &Tensor| -> Result<Tensor> {
            Ok(match t.size().first() {
                Some(&n) if n > 1 => t.f_narrow(0, start, len)?,
                _ => t.shallow_clone(),
            })
        };
        let pair = |(a, b): &(Tensor, Tensor)| -> Result<(Tensor, Tensor)> { Ok((narrow(a)?, narrow(b)?)) };
        Ok(Self {
            global_rope: pair(&self.global_rope)?,
            local_rope: pair(&self.local_rope)?,
            full_blocked: narrow(&self.full_blocked)?,
            sliding_blocked: self.sliding_blocked.as_ref().map(narrow).transpose()?,
        })
    }

    /// The mask and the RoPE tables of `layer`.
    pub(super) fn of(&self, layer: &Layer) -> (&Tensor, &(Tensor, Tensor)) {
        match (layer.attention.window, &self.sliding_blocked) {
            (Some(_), Some(mask)) => (mask, &self.local_rope),
            _ => (&self.full_blocked, &self.global_rope),
        }
    }
}

/// The keys and values of the positions a [`Gemma`] model has seen, per layer, so that generation feeds
/// each new token once ([`Gemma::forward_hidden_at`]). Global-attention layers keep every slot; sliding
/// layers keep their last `window − 1` slots (all a later query can see). Made for one model and one batch
/// (its rows and device).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: i64,
}

impl KvCache {
    /// An empty cache for `model`.
    pub fn new(model: &Gemma) -> Self {
        Self {
            layers: model.layers.iter().map(|_| LayerCache::default()).collect(),
            len: 0,
        }
    }

    /// The number of slots fed so far (cached or, in sliding layers, dropped).
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slots held by each layer (for inspection: sliding layers hold at most `window − 1`).
    pub fn layer_lengths(&self) -> Vec<i64> {
        self.layers.iter().map(LayerCache::len).collect()
    }
}
