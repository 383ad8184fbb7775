//! [`Decoder`]: the decoder every family shares (embedding, layers, final norm, head) on a
//! [`tch::nn::VarStore`], and its [`KvCache`].

use tch::{nn, Kind, Tensor};

use super::layers::{parameter, soft_cap, Attention, Layer, LayerCache, Mlp, RmsNorm};
use super::spec::{DecoderSpec, NormStyle, Rope};
use super::CausalLm;
use crate::autograd::{backward_from, leaf_grad};
use crate::error::{Error, InputError, Result};
use crate::models::kept::{DecoderInit, KeptWeight};
use crate::models::linear::Linear;

/// A decoder-only causal language model: token embedding (scaled by `sqrt(H)` for Gemma), layers of
/// RMSNorm → grouped-query attention with RoPE → residual → RMSNorm → gated MLP → residual, a final
/// RMSNorm and the LM head (the embedding when tied, else `lm_head.weight`). What varies between families
/// is set by their configuration when it is built ([`Gemma`](crate::models::gemma::Gemma),
/// [`Llama`](crate::models::llama::Llama)); each family's model wraps one and hands it out through
/// [`CausalLm::decoder`].
///
/// The parameters are variables of an [`nn::VarStore`] under their Hugging Face names; the activation
/// dtype is the embedding's dtype (f32, bf16, f16: convert with `VarStore::set_kind`).
pub struct Decoder {
    spec: DecoderSpec,
    /// `[V, H]` (a stand-in when kept in its blocks: `embed_kept`).
    embed_tokens: Tensor,
    embed_kept: Option<KeptWeight>,
    /// The untied head `[V, H]` (`None`: tied to the embedding).
    lm_head: Option<Tensor>,
    head_kept: Option<KeptWeight>,
    layers: Vec<Layer>,
    norm: RmsNorm,
}

impl Decoder {
    /// The switches and sizes the decoder was built from.
    pub(crate) fn spec(&self) -> &DecoderSpec {
        &self.spec
    }

    /// Creates the variables of `spec` under `path` (pass `vs.root()`: names are then exactly the Hugging
    /// Face ones), in transformers' order: the embedding, then per layer q / k / v / o, the q / k norms, gate /
    /// up / down and the layer norms, then the final norm and the untied head. `random`: linear and
    /// embedding weights ~ N(0, initializer_range²), biases 0, norm weights 0 (`(1 + w)` style) or 1 (`w`
    /// style), as transformers initializes them; else every parameter 0 (for loading; the random generator
    /// is untouched), and with [`DecoderInit::Kept`] the kept matrices taken from the set, not created.
    pub(crate) fn build(path: &nn::Path, spec: &DecoderSpec, init: DecoderInit<'_>) -> Result<Self> {
        let random = matches!(init, DecoderInit::Random);
        let kept_set = match init {
            DecoderInit::Kept(set) => Some(set),
            _ => None,
        };
        let kept = |p: &nn::Path| kept_set.and_then(|set| set.get(&p.path("weight")));
        // A matrix: kept (a stand-in tensor and the blocks) or a new variable.
        let matrix = |p: &nn::Path, dims: [i64; 2], init: nn::Init| -> Result<(Tensor, Option<KeptWeight>)> {
            match kept(p) {
                Some(k) => Ok((k.placeholder()?, Some(k))),
                None => Ok((parameter(p, "weight", &dims, init)?, None)),
            }
        };
        let (h, hd, inner, eps) = (
            spec.hidden_size,
            spec.head_dim,
            spec.intermediate_size,
            spec.rms_norm_eps,
        );
        let init = match random {
            true => nn::Init::Randn {
                mean: 0.0,
                stdev: spec.initializer_range,
            },
            false => nn::Init::Const(0.0),
        };
        let norm_init = match (random, spec.norm) {
            (true, NormStyle::Weight) => nn::Init::Const(1.0),
            _ => nn::Init::Const(0.0),
        };
        let zeros = nn::Init::Const(0.0);
        let norm = |p: nn::Path, size: i64| RmsNorm::new(p, size, eps, spec.norm, norm_init);
        let linear = |p: nn::Path, dims: [i64; 2], bias: bool| -> Result<Linear> {
            let (weight, kept) = matrix(&p, dims, init)?;
            let mut layer = Linear::new(weight);
            layer.kept = kept;
            layer.bias = bias
                .then(|| parameter(&p, "bias", &dims[..1], zeros))
                .transpose()?;
            Ok(layer)
        };
        let model = path / "model";
        let (embed_tokens, embed_kept) = matrix(&(&model / "embed_tokens"), [spec.vocab_size, h], init)?;
        let mut layers = Vec::with_capacity(spec.layers());
        for (i, window) in spec.layer_windows.iter().enumerate() {
            let lp = &model / "layers" / i;
            let ap = &lp / "self_attn";
            let mp = &lp / "mlp";
            let (q_rows, kv_rows) = (spec.heads * hd, spec.kv_heads * hd);
            let attention = Attention {
                q_proj: linear(&ap / "q_proj", [q_rows, h], spec.qkv_bias)?,
                k_proj: linear(&ap / "k_proj", [kv_rows, h], spec.qkv_bias)?,
                v_proj: linear(&ap / "v_proj", [kv_rows, h], spec.qkv_bias)?,
                o_proj: linear(&ap / "o_proj", [h, q_rows], spec.o_bias)?,
                heads: spec.heads,
                kv_heads: spec.kv_heads,
                head_dim: hd,
                scale: spec.attention_scale,
                logit_cap: spec.attn_logit_softcap,
                window: *window,
                q_norm: spec.qk_norm.then(|| norm(&ap / "q_norm", hd)).transpose()?,
                k_norm: spec.qk_norm.then(|| norm(&ap / "k_norm", hd)).transpose()?,
            };
            let mlp = Mlp {
                gate_proj: linear(&mp / "gate_proj", [inner, h], spec.mlp_bias)?,
                up_proj: linear(&mp / "up_proj", [inner, h], spec.mlp_bias)?,
                down_proj: linear(&mp / "down_proj", [h, inner], spec.mlp_bias)?,
                activation: spec.activation,
            };
            let sandwich = spec.sandwich_norms;
            layers.push(Layer {
                input_layernorm: norm(&lp / "input_layernorm", h)?,
                post_attention_layernorm: norm(&lp / "post_attention_layernorm", h)?,
                pre_feedforward_layernorm: sandwich
                    .then(|| norm(&lp / "pre_feedforward_layernorm", h))
                    .transpose()?,
                post_feedforward_layernorm: sandwich
                    .then(|| norm(&lp / "post_feedforward_layernorm", h))
                    .transpose()?,
                attention,
                mlp,
            });
        }
        let norm = norm(&model / "norm", h)?;
        let (lm_head, head_kept) = match spec.tied_head {
            true => (None, None),
            false => {
                let (weight, kept) = matrix(&(path / "lm_head"), [spec.vocab_size, h], init)?;
                (Some(weight), kept)
            }
        };
        Ok(Self {
            spec: spec.clone(),
            embed_tokens,
            embed_kept,
            lm_head,
            head_kept,
            layers,
            norm,
        })
    }

    /// A second handle on the same model: every parameter tensor is a shallow clone sharing storage (and
    /// in-place updates) with this one, e.g. to decode with a model that a trainer owns and updates.
    pub fn shallow_clone(&self) -> Self {
        Self {
            spec: self.spec.clone(),
            embed_tokens: self.embed_tokens.shallow_clone(),
            embed_kept: self.embed_kept.as_ref().map(KeptWeight::shallow_clone),
            lm_head: self.lm_head.as_ref().map(Tensor::shallow_clone),
            head_kept: self.head_kept.as_ref().map(KeptWeight::shallow_clone),
            layers: self.layers.iter().map(Layer::shallow_clone).collect(),
            norm: self.norm.shallow_clone(),
        }
    }

    /// The device the model's weights are on.
    pub fn device(&self) -> tch::Device {
        self.embed_tokens.device()
    }

    /// The vocabulary size V.
    pub fn vocab_size(&self) -> i64 {
        self.spec.vocab_size
    }

    /// The hidden size H.
    pub fn hidden_size(&self) -> i64 {
        self.spec.hidden_size
    }

    /// The number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The positions the model was trained on (`max_position_embeddings`; [`generate`](super::generate())
    /// refuses to go beyond unless told to).
    pub fn max_position_embeddings(&self) -> i64 {
        self.spec.max_position_embeddings
    }

    /// The final-logit soft-cap (Gemma 2 / 3), applied by [`Decoder::logits`] after the head. A fused loss
    /// that works from [`Decoder::forward_hidden`] and [`Decoder::head_weight`] must apply it too (or the
    /// model must have none) to compute the same log-probs.
    pub fn final_logit_softcap(&self) -> Option<f64> {
        self.spec.final_logit_softcap
    }

    /// The LM head weight `[V, H]`: the embedding matrix itself when tied, else `lm_head.weight` (a shallow
    /// handle that shares storage and gradient). A head kept in its GGUF blocks
    /// ([`WeightFormat::KeepQuantized`](super::WeightFormat)) is dequantized whole into a new tensor
    /// without gradient.
    ///
    /// # Errors
    /// [`Error::Torch`] (e.g. a kept head that does not fit in memory dequantized).
    pub fn head_weight(&self) -> Result<Tensor> {
        match self.kept_head() {
            Some(kept) => kept.dense(),
            None => Ok(self
                .lm_head
                .as_ref()
                .unwrap_or(&self.embed_tokens)
                .shallow_clone()),
        }
    }

    /// The head kept in its blocks: the untied head's, else the embedding's when tied.
    pub(crate) fn kept_head(&self) -> Option<&KeptWeight> {
        match &self.lm_head {
            Some(_) => self.head_kept.as_ref(),
            None => self.embed_kept.as_ref(),
        }
    }

    /// The matrices kept in their GGUF blocks: the embedding, the untied head, then every layer's
    /// projections (q, k, v, o, gate, up, down).
    #[cfg(feature = "lora")]
    pub(crate) fn kept_blocks(&self) -> Vec<&crate::gguf::BlockMatrix> {
        let mut all: Vec<&KeptWeight> = self.embed_kept.iter().chain(&self.head_kept).collect();
        for layer in &self.layers {
            all.extend(layer.linears().into_iter().filter_map(|l| l.kept.as_ref()));
        }
        all.into_iter().map(|k| &k.blocks).collect()
    }

    /// Whether any weight matrix is kept in its GGUF blocks
    /// ([`WeightFormat::KeepQuantized`](super::WeightFormat)): the matrices are then frozen and a
    /// trained [`DecoderPolicy`](super::DecoderPolicy) recomputes its layers per layer.
    pub fn keeps_quantized(&self) -> bool {
        self.embed_kept.is_some()
            || self.head_kept.is_some()
            || self.layers.iter().any(Layer::keeps_quantized)
    }

    /// Checks `input_ids` `[N, T]` (non-empty, i64, ids in `[0, V)`) and `attention_mask` `[N, width]`.
    pub(crate) fn check_inputs(
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
        if lo < 0 || hi >= self.spec.vocab_size {
            return Err(Error::Input(InputError::TokenOutOfRange {
                arg: "input_ids",
                min: lo,
                max: hi,
                vocab: self.spec.vocab_size,
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
    /// Errors: those of [`Decoder::forward_hidden`]; [`InputError::Shape`] for `position_ids` of another shape
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

    /// The token embedding `[N, T, H]` of `input_ids` (the first layer's input): the embedding rows, times
    /// `sqrt(hidden_size)` rounded to the activation dtype when the family scales it (Gemma). With the
    /// `autograd` feature the rows come from [`crate::autograd::embedding`]'s node (its checks skipped: the
    /// forward's input checks made them), whose backward adds into an existing `.grad` (a tied head's) in
    /// place.
    pub(super) fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let rows = match &self.embed_kept {
            Some(kept) => kept.rows(input_ids)?,
            #[cfg(feature = "autograd")]
            // `check_inputs` has checked the ids' range.
            None => crate::autograd::embedding_unchecked(&self.embed_tokens, input_ids)?,
            #[cfg(not(feature = "autograd"))]
            None => Tensor::f_embedding(&self.embed_tokens, input_ids, -1, false, false)?,
        };
        match self.embed_scale(input_ids)? {
            Some(scale) => Ok(rows.f_mul(&scale)?),
            None => Ok(rows),
        }
    }

    /// `sqrt(hidden_size)` in the activation dtype, on `input_ids`' device, when the embedding is scaled.
    fn embed_scale(&self, input_ids: &Tensor) -> Result<Option<Tensor>> {
        if !self.spec.scale_embedding {
            return Ok(None);
        }
        Ok(Some(
            Tensor::from((self.spec.hidden_size as f64).sqrt() as f32)
                .f_to_kind(self.embed_tokens.kind())?
                .f_to_device(input_ids.device())?,
        ))
    }

    /// Backpropagates `grad = dL/d embed(input_ids)` (`[N, T, H]`) into the embedding matrix's `.grad`: row `v`
    /// gains `scale · Σ grad` (scale 1 when the embedding is not scaled) over the positions holding token `v`. When the matrix is a leaf whose `.grad`
    /// exists in its dtype, the rows are index-added into it in place (no dense `[V, H]` gradient, which
    /// autograd's embedding backward would allocate before adding it); otherwise through autograd.
    pub(super) fn embed_backward(&self, input_ids: &Tensor, grad: &Tensor) -> Result<()> {
        if !grad.defined() || self.embed_kept.is_some() {
            // A kept embedding is frozen: no gradient to carry.
            return Ok(());
        }
        let weight = &self.embed_tokens;
        let Some(mut target) = leaf_grad(weight, weight.f_kind()?)? else {
            return backward_from(&self.embed(input_ids)?, grad);
        };
        tch::no_grad(|| -> Result<()> {
            let h = weight.size()[1];
            let scaled = match self.embed_scale(input_ids)? {
                Some(scale) => grad.f_mul(&scale)?,
                None => grad.shallow_clone(),
            };
            let rows = scaled.f_reshape([-1, h])?.f_to_kind(target.f_kind()?)?;
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
        // the global layers, one for the sliding layers (the same RoPE except in Gemma 3).
        let hd = self.spec.head_dim;
        let positions = position_ids.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?;
        let rope_table = |rope: &Rope| -> Result<(Tensor, Tensor)> {
            let freqs = positions.f_mul(&rope.inv_freq(hd, device)?)?;
            let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?.f_unsqueeze(1)?;
            Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
        };
        let global_rope = rope_table(&self.spec.global_rope)?;
        let local_rope = if self.spec.local_rope == self.spec.global_rope {
            (global_rope.0.shallow_clone(), global_rope.1.shallow_clone())
        } else {
            rope_table(&self.spec.local_rope)?
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
        let sliding_blocked = match self.spec.sliding_window() {
            Some(window) => {
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
            None => None,
        };
        Ok(AttentionInputs {
            global_rope,
            local_rope,
            full_blocked,
            sliding_blocked,
        })
    }

    /// The decoder layers.
    pub(crate) fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The decoder layers, mutably (attaching adapters to their linear layers).
    #[cfg(feature = "lora")]
    pub(crate) fn layers_mut(&mut self) -> &mut [Layer] {
        &mut self.layers
    }

    /// The final norm.
    pub(super) fn final_norm(&self) -> &RmsNorm {
        &self.norm
    }

    /// Logits `[..., V]` of hidden states `[..., H]` (e.g. from [`Decoder::forward_hidden`]): the head
    /// ([`Decoder::head_weight`]), then Gemma 2 / 3's final soft-cap when configured. A head kept in its
    /// GGUF blocks is applied a vocabulary block of about 4 Mi weights at a time
    /// ([`BlockMatrix::linear`](crate::gguf::BlockMatrix::linear)), never dequantized whole (under autograd
    /// the blocks are saved for the backward pass). Errors: [`Error::Torch`] (e.g. a last dimension other
    /// than H).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let z = match self.kept_head() {
            Some(kept) => {
                let mut shape = hidden.size();
                let h = shape.last().copied().unwrap_or(0);
                let flat = hidden.f_reshape([-1, h])?;
                let z = kept
                    .blocks
                    .linear(&flat, None, None, crate::fused::VOCAB_BLOCK_ELEMENTS)?;
                if let Some(last) = shape.last_mut() {
                    *last = kept.blocks.shape()[0];
                }
                z.f_reshape(shape.as_slice())?
            }
            None => hidden.f_linear::<&Tensor>(&self.head_weight()?, None)?,
        };
        soft_cap(&z, self.final_logit_softcap())
    }

    /// Logits `[N, T, V]` in the activation dtype: [`Decoder::logits`] of [`Decoder::forward_hidden`]. Same
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

/// The keys and values of the positions a model has seen, per layer, so that generation feeds each new
/// token once ([`Decoder::forward_hidden_at`]). Global-attention layers keep every slot; sliding
/// layers keep their last `window − 1` slots (all a later query can see). Made for one model and one batch
/// (its rows and device).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: i64,
}

impl KvCache {
    /// An empty cache for `model`.
    pub fn new(model: &impl CausalLm) -> Self {
        Self {
            layers: model
                .decoder()
                .layers
                .iter()
                .map(|_| LayerCache::default())
                .collect(),
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
