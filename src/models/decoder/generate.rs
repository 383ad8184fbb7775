//! Text generation with any [`CausalLm`] model (Gemma, Llama, …): greedy or sampled (temperature, top-k, top-p, seeded), a batch
//! of prompts at once with left padding, a [`KvCache`] so that each new token costs one position, stopping
//! at a stop token or after `max_new_tokens`.
//!
//! ```no_run
//! # use tch_rpo::models::gemma::{generate, Gemma, GenerationConfig, LoadOptions, Sampling, WeightSource};
//! # fn main() -> tch_rpo::Result<()> {
//! # let file = tch_rpo::gguf::GgufFile::open("model.gguf")?;
//! # let (_vs, model) = Gemma::load(WeightSource::Gguf(&file), &LoadOptions::default())?;
//! let prompts = vec![vec![2, 818, 5279, 529, 7001, 563], vec![2, 9259]];
//! let greedy = GenerationConfig::greedy(32, vec![1, 106], 0);
//! let out = generate(&model, &prompts, &greedy)?;
//! let sampled = GenerationConfig {
//!     sampling: Sampling::sample(0.8, Some(40), Some(0.95), 7)?,
//!     ..greedy
//! };
//! let again = generate(&model, &prompts, &sampled)?;
//! # Ok(())
//! # }
//! ```

use tch::{Device, Kind, Tensor};

use super::model::KvCache;
use super::CausalLm;
use crate::error::{Error, InputError, ParamValue, Result};

/// How the next token is chosen from the logits of the last position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (`argmax` of the logits).
    Greedy,
    /// A random token: the logits are divided by `temperature` (in f64, after subtracting each row's
    /// maximum, so that any finite temperature `> 0` gives finite probabilities: a temperature far below
    /// the logits' differences keeps only the most likely tokens), then only the `top_k` most likely tokens
    /// are kept (when set; a `top_k` of at least the vocabulary size, `usize::MAX` included, keeps every
    /// token), then only the smallest set of most likely tokens whose probability reaches
    /// `top_p` (when set; the most likely token is always kept), as `transformers`' warpers do, and a
    /// token is drawn from the renormalized probabilities. Draws use a SplitMix64 generator per row, seeded
    /// from `seed` and the row's index, so a run is reproducible and independent of libtorch's generator.
    Sample {
        /// Softmax temperature, `> 0`.
        temperature: f64,
        /// Keep only the `k ≥ 1` most likely tokens (no limit when `k ≥ V`).
        top_k: Option<usize>,
        /// Nucleus mass in `(0, 1]`.
        top_p: Option<f64>,
        /// Seed of the draws.
        seed: u64,
    },
}

impl Sampling {
    /// [`Sampling::Sample`], checked.
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`] for a temperature that is not finite and `> 0`, `top_k = 0`, or
    /// `top_p` outside `(0, 1]`.
    pub fn sample(temperature: f64, top_k: Option<usize>, top_p: Option<f64>, seed: u64) -> Result<Self> {
        let sampling = Sampling::Sample {
            temperature,
            top_k,
            top_p,
            seed,
        };
        sampling.validate()?;
        Ok(sampling)
    }

    /// Checks the parameters (see [`Sampling::sample`]).
    ///
    /// # Errors
    /// As [`Sampling::sample`].
    pub fn validate(&self) -> Result<()> {
        if let Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } = *self
        {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(Error::Input(InputError::InvalidParameter {
                    name: "temperature",
                    value: temperature.into(),
                    requirement: "finite and > 0",
                }));
            }
            if top_k == Some(0) {
                return Err(Error::Input(InputError::InvalidParameter {
                    name: "top_k",
                    value: ParamValue::Count(0),
                    requirement: ">= 1",
                }));
            }
            if let Some(p) = top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
                return Err(Error::Input(InputError::InvalidParameter {
                    name: "top_p",
                    value: p.into(),
                    requirement: "in (0, 1]",
                }));
            }
        }
        Ok(())
    }
}

/// What [`generate`] does.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// The most tokens generated per prompt (stop tokens not counted).
    pub max_new_tokens: usize,
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// A row stops when it produces one of these (e.g. Gemma's `<eos>` 1 and `<end_of_turn>` 106); the
    /// stop token is not part of the output.
    pub stop_ids: Vec<i64>,
    /// The id fed for padding (left of shorter prompts, and after a row stopped); it is masked out.
    pub pad_id: i64,
    /// Use a [`KvCache`] (default). Without it every step reruns the whole sequence (for checking).
    pub use_cache: bool,
    /// Keep the raw logits `[N, V]` (f32, before temperature and filtering) of every step in
    /// [`Generation::step_logits`].
    pub keep_logits: bool,
    /// Allow the longest prompt plus `max_new_tokens` to exceed the model's
    /// [`Decoder::max_position_embeddings`](super::Decoder::max_position_embeddings), the positions
    /// it was trained on (RoPE extrapolates, but the outputs there are untested). Default `false`:
    /// [`generate`] refuses such a request.
    pub allow_beyond_max_positions: bool,
}

impl GenerationConfig {
    /// Greedy decoding with a cache, not keeping logits.
    pub fn greedy(max_new_tokens: usize, stop_ids: Vec<i64>, pad_id: i64) -> Self {
        Self {
            max_new_tokens,
            sampling: Sampling::Greedy,
            stop_ids,
            pad_id,
            use_cache: true,
            keep_logits: false,
            allow_beyond_max_positions: false,
        }
    }
}

/// What [`generate`] returns.
#[derive(Debug)]
pub struct Generation {
    /// The new tokens of each prompt (stop token excluded), in prompt order.
    pub tokens: Vec<Vec<i64>>,
    /// Whether each row ended with a stop token (else it reached `max_new_tokens`).
    pub stopped: Vec<bool>,
    /// With [`GenerationConfig::keep_logits`]: the raw logits `[N, V]` (f32, CPU) of each step, rows in
    /// prompt order (a stopped row's later rows are computed from padding and meaningless).
    pub step_logits: Vec<Tensor>,
}

/// SplitMix64: a small deterministic generator (the draws do not depend on a crate's RNG version).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The tempered logits `[N, V]` (f64): `(logits − max) / temperature` per row, so the most likely token
/// has 0 and every value is finite or −∞ whatever the temperature (`> 0`), with the tokens that `top_k` /
/// `top_p` exclude set to −∞.
fn filtered_logits(
    logits: &Tensor,
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
) -> Result<Tensor> {
    let vocab = logits.size()[1];
    let logits = logits.f_to_kind(Kind::Double)?;
    let (max, _) = logits.f_max_dim(-1, true)?;
    let mut logits = logits.f_sub(&max)?.f_div_scalar(temperature)?;
    // A k of at least V (any usize, however large) keeps every token.
    if let Some(k) = top_k.and_then(|k| i64::try_from(k).ok()).filter(|&k| k < vocab) {
        let (values, _) = logits.f_topk(k, -1, true, true)?;
        let kth = values.f_narrow(1, k - 1, 1)?;
        logits = logits.f_masked_fill(&logits.f_lt_tensor(&kth)?, f64::NEG_INFINITY)?;
    }
    if let Some(p) = top_p.filter(|&p| p < 1.0) {
        let (sorted, order) = logits.f_sort(-1, true)?;
        let probs = sorted.f_softmax(-1, Kind::Double)?;
        // Drop a token when the more likely ones already reach p (the first is always kept).
        let before = probs.f_cumsum(-1, Kind::Double)?.f_sub(&probs)?;
        let drop_sorted = before.f_ge(p)?;
        let drop = drop_sorted.f_zeros_like()?.f_scatter(1, &order, &drop_sorted)?;
        logits = logits.f_masked_fill(&drop, f64::NEG_INFINITY)?;
    }
    Ok(logits)
}

/// The next token of every row from the last position's logits `[N, V]` (f32).
fn choose(logits: &Tensor, sampling: &Sampling, rngs: &mut [SplitMix64]) -> Result<Vec<i64>> {
    match *sampling {
        Sampling::Greedy => Ok(Vec::<i64>::try_from(
            logits.f_argmax(-1, false)?.f_to_device(Device::Cpu)?,
        )?),
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } => {
            let probs = filtered_logits(logits, temperature, top_k, top_p)?
                .f_softmax(-1, Kind::Double)?
                .f_to_device(Device::Cpu)?;
            let vocab = probs.size()[1] as usize;
            let flat = Vec::<f64>::try_from(probs.f_flatten(0, -1)?)?;
            let mut next = Vec::with_capacity(rngs.len());
            for (row, rng) in flat.chunks(vocab).zip(rngs.iter_mut()) {
                let total: f64 = row.iter().sum();
                let target = rng.next_f64() * total;
                let mut acc = 0.0;
                // The last token with nonzero probability, in case rounding leaves `target` past the sum.
                let mut chosen = row.iter().rposition(|&p| p > 0.0).unwrap_or(0);
                for (id, &p) in row.iter().enumerate() {
                    acc += p;
                    if p > 0.0 && acc > target {
                        chosen = id;
                        break;
                    }
                }
                next.push(chosen as i64);
            }
            Ok(next)
        }
    }
}

/// Left-pads `rows` with `pad` to `[N, width]`.
fn left_padded(rows: &[Vec<i64>], pad: i64, width: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(rows.len() * width);
    for row in rows {
        out.resize(out.len() + width - row.len(), pad);
        out.extend_from_slice(row);
    }
    out
}

/// Generates up to `config.max_new_tokens` tokens after each prompt, under `no_grad`, on the model's
/// device.
///
/// `prompts`: token ids per prompt (each non-empty, ids in `[0, V)`; BOS included if the model wants
/// one). They are batched with left padding (`config.pad_id`, masked out; RoPE positions count real
/// tokens only), so every row's next token comes from the last column. With the cache (default) the
/// prompts are fed once and then one token per row per step; without it every step reruns the whole
/// sequence, which gives the same tokens (and logits up to rounding). A row stops at a token of
/// `config.stop_ids`; generation ends when every row stopped or after `max_new_tokens` steps.
///
/// # Errors
/// [`InputError::Shape`] for an empty prompt; [`InputError::InvalidParameter`] for bad sampling parameters;
/// [`InputError::Config`] (`max_new_tokens`) when the longest prompt plus `max_new_tokens` exceeds the model's
/// `max_position_embeddings` and [`GenerationConfig::allow_beyond_max_positions`] is not set; those of
/// [`Decoder::forward_hidden_at`](super::Decoder::forward_hidden_at) (e.g. [`InputError::TokenOutOfRange`] for a prompt id or `pad_id` outside the
/// vocabulary).
pub fn generate(
    model: &impl CausalLm,
    prompts: &[Vec<i64>],
    config: &GenerationConfig,
) -> Result<Generation> {
    config.sampling.validate()?;
    let lm = model;
    let model = lm.decoder();
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::Input(InputError::Shape {
            arg: "prompts",
            expected: format!("a non-empty prompt at index {i}"),
            got: vec![0],
        }));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let max_positions = model.max_position_embeddings();
    let needed = (longest as u128) + (config.max_new_tokens as u128);
    if !config.allow_beyond_max_positions && !prompts.is_empty() && needed > max_positions.max(0) as u128 {
        return Err(Error::Input(InputError::Config {
            name: "max_new_tokens",
            requirement: format!(
                "the longest prompt ({longest} tokens) + max_new_tokens ({}) = {needed} positions exceeds the \
                 model's max_position_embeddings ({max_positions}); shorten them, or set \
                 allow_beyond_max_positions to generate past the trained positions",
                config.max_new_tokens
            ),
        }));
    }
    let rows = prompts.len();
    let mut generation = Generation {
        tokens: vec![Vec::new(); rows],
        stopped: vec![false; rows],
        step_logits: Vec::new(),
    };
    if rows == 0 || config.max_new_tokens == 0 {
        return Ok(generation);
    }
    let device = model.device();
    let n = rows as i64;
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let masks: Vec<Vec<i64>> = prompts.iter().map(|p| vec![1; p.len()]).collect();
    let to_device = |values: &[i64], cols: i64| -> Result<Tensor> {
        Ok(Tensor::from_slice(values)
            .f_view([n, cols])?
            .f_to_device(device)?)
    };
    let mut ids = to_device(&left_padded(prompts, config.pad_id, width), width as i64)?;
    let mut mask = to_device(&left_padded(&masks, 0, width), width as i64)?;
    let seed = match config.sampling {
        Sampling::Sample { seed, .. } => seed,
        Sampling::Greedy => 0,
    };
    let mut rngs: Vec<SplitMix64> = (0..rows as u64)
        .map(|r| SplitMix64(seed ^ r.wrapping_mul(0xD1B5_4A32_D192_ED03)))
        .collect();
    // Position of each real token = real tokens before it; padding gets 0 (it is masked out).
    let positions_of = |mask: &Tensor| -> Result<Tensor> {
        Ok(mask.f_cumsum(1, Kind::Int64)?.f_sub_scalar(1)?.f_clamp_min(0)?)
    };
    tch::no_grad(|| -> Result<()> {
        let mut cache = config.use_cache.then(|| KvCache::new(lm));
        let mut hidden = model.forward_hidden_at(&ids, &mask, &positions_of(&mask)?, cache.as_mut())?;
        for step in 0..config.max_new_tokens {
            let last = hidden.f_narrow(1, hidden.size()[1] - 1, 1)?.f_squeeze_dim(1)?;
            let logits = model.logits(&last)?.f_to_kind(Kind::Float)?;
            if config.keep_logits {
                generation.step_logits.push(logits.f_to_device(Device::Cpu)?);
            }
            let next = choose(&logits, &config.sampling, &mut rngs)?;
            let mut fed = vec![config.pad_id; rows];
            let mut fed_mask = vec![0i64; rows];
            for r in 0..rows {
                if generation.stopped[r] {
                    continue;
                }
                if config.stop_ids.contains(&next[r]) {
                    generation.stopped[r] = true;
                } else {
                    generation.tokens[r].push(next[r]);
                    fed[r] = next[r];
                    fed_mask[r] = 1;
                }
            }
            if step + 1 == config.max_new_tokens || generation.stopped.iter().all(|s| *s) {
                break;
            }
            let fed = to_device(&fed, 1)?;
            mask = Tensor::f_cat(&[&mask, &to_device(&fed_mask, 1)?], 1)?;
            let positions = positions_of(&mask)?;
            hidden = match cache.as_mut() {
                Some(cache) => {
                    let last_position = positions.f_narrow(1, positions.size()[1] - 1, 1)?;
                    model.forward_hidden_at(&fed, &mask, &last_position, Some(cache))?
                }
                None => {
                    ids = Tensor::f_cat(&[&ids, &fed], 1)?;
                    model.forward_hidden_at(&ids, &mask, &positions, None)?
                }
            };
        }
        Ok(())
    })?;
    Ok(generation)
}

/// Greedy decoding (with a [`KvCache`]): [`generate`] with [`Sampling::Greedy`] and the single stop token
/// `eos_id`, on the model's device. Returns the generated ids per prompt (the eos not included).
///
/// `device` must be the model's device (kept for compatibility; the inputs are put there).
///
/// # Errors
/// [`InputError::DeviceMismatch`] when `device` is not the model's; those of [`generate`].
pub fn greedy_decode(
    model: &impl CausalLm,
    prompts: &[Vec<i64>],
    max_new_tokens: usize,
    eos_id: i64,
    pad_id: i64,
    device: Device,
) -> Result<Vec<Vec<i64>>> {
    let model_device = model.decoder().device();
    if device != model_device {
        return Err(Error::Input(InputError::DeviceMismatch {
            arg: "device",
            other: "model",
            expected: model_device,
            got: device,
        }));
    }
    let config = GenerationConfig::greedy(max_new_tokens, vec![eos_id], pad_id);
    Ok(generate(model, prompts, &config)?.tokens)
}
