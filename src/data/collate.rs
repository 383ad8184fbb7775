//! Truncation, padding and labels: turns [`EncodedPair`]s into one concatenated batch.
//!
//! For `B` pairs the batch has `2B` rows, the `B` chosen sequences first, then the `B` rejected ones (row
//! `i` and row `B + i` are pair `i`), each row `prompt ++ response`, right-padded to the longest row.
//!
//! - `input_ids` `[2B, T]` i64: the tokens, [`CollateConfig::pad_id`] after the end.
//! - `attention_mask` `[2B, T]` i64: `1` on tokens, `0` on padding.
//! - `labels` `[2B, T]` i64: the input ids on response tokens, [`CollateConfig::ignore_index`] on prompt and
//!   padding positions. Labels are **not** shifted: score them with [`crate::LogProbOptions::causal`].
//!
//! # Truncation (TRL's rule, the paper's limits as defaults)
//! 1. A prompt longer than `max_prompt_length` (512) keeps its **last** `max_prompt_length` tokens.
//! 2. Each response keeps its **first** `max_length − prompt_len` tokens, so a row has at most `max_length`
//!    (1024) tokens. As `max_prompt_length < max_length`, every response keeps at least one token.

use crate::data::tokenizer::EncodedPair;
use crate::error::{Error, InputError, Result};
use crate::logprobs::DEFAULT_IGNORE_INDEX;
use tch::{Device, Kind, Tensor};

/// Limits and special ids of [`Collator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollateConfig {
    /// Maximum tokens per row (prompt + response). Default 1024 (the paper's).
    pub max_length: usize,
    /// Maximum prompt tokens; must be `< max_length`. Default 512 (the paper's).
    pub max_prompt_length: usize,
    /// Label of unscored positions. Default −100.
    pub ignore_index: i64,
    /// The id padding positions get in `input_ids`.
    pub pad_id: i64,
}

impl CollateConfig {
    /// The paper's limits (1024 / 512), ignore index −100, and the given padding id.
    pub fn new(pad_id: i64) -> Self {
        Self {
            max_length: 1024,
            max_prompt_length: 512,
            ignore_index: DEFAULT_IGNORE_INDEX,
            pad_id,
        }
    }
    /// Sets the limits.
    pub fn with_limits(mut self, max_length: usize, max_prompt_length: usize) -> Self {
        self.max_length = max_length;
        self.max_prompt_length = max_prompt_length;
        self
    }
}

/// One collated batch of `B` pairs (`2B` rows; layout in the [module docs](self)).
#[derive(Debug)]
pub struct CollatedBatch {
    /// `[2B, T]` i64 token ids, chosen rows first.
    pub input_ids: Tensor,
    /// `[2B, T]` i64, `1` on tokens, `0` on padding.
    pub attention_mask: Tensor,
    /// `[2B, T]` i64, input ids on response tokens, the ignore index elsewhere (not shifted).
    pub labels: Tensor,
    /// The dataset index of each pair (length `B`), e.g. for cached reference log-probs.
    pub indices: Vec<usize>,
    /// Number of scored chosen-response tokens under the causal shift (the labels at positions `1..T` of
    /// the chosen rows that are not ignored), for [`crate::GlobalBatch::chosen_tokens`].
    pub chosen_tokens: i64,
    /// Number of scored rejected-response tokens under the causal shift (as `chosen_tokens`, for the
    /// rejected rows).
    pub rejected_tokens: i64,
    /// Number of non-padding tokens over all `2B` rows.
    pub tokens: i64,
}

impl CollatedBatch {
    /// Number of pairs `B`.
    pub fn pairs(&self) -> usize {
        self.indices.len()
    }

    /// The same batch on `device`.
    ///
    /// # Errors
    /// [`Error::Torch`] if a copy fails.
    pub fn to_device(&self, device: Device) -> Result<Self> {
        Ok(Self {
            input_ids: self.input_ids.f_to_device(device)?,
            attention_mask: self.attention_mask.f_to_device(device)?,
            labels: self.labels.f_to_device(device)?,
            indices: self.indices.clone(),
            chosen_tokens: self.chosen_tokens,
            rejected_tokens: self.rejected_tokens,
            tokens: self.tokens,
        })
    }
}

/// Truncates, pads and labels pairs (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Collator {
    config: CollateConfig,
}

impl Collator {
    /// A collator with a checked configuration.
    ///
    /// # Errors
    /// [`InputError::Config`] if `max_prompt_length >= max_length` or `max_length == 0`.
    pub fn new(config: CollateConfig) -> Result<Self> {
        if config.max_length == 0 || config.max_prompt_length >= config.max_length {
            return Err(Error::Input(InputError::Config {
                name: "max_prompt_length",
                requirement: format!(
                    "need 0 <= max_prompt_length < max_length, got {} and {}",
                    config.max_prompt_length, config.max_length
                ),
            }));
        }
        Ok(Self { config })
    }

    /// The configuration.
    pub fn config(&self) -> &CollateConfig {
        &self.config
    }

    /// The pair after truncation: `(prompt, chosen, rejected)` slices of the input.
    pub fn truncate<'a>(&self, pair: &'a EncodedPair) -> (&'a [i64], &'a [i64], &'a [i64]) {
        let prompt_start = pair.prompt.len().saturating_sub(self.config.max_prompt_length);
        let prompt = &pair.prompt[prompt_start..];
        let budget = self.config.max_length - prompt.len();
        let keep = |r: &'a [i64]| &r[..r.len().min(budget)];
        (prompt, keep(&pair.chosen), keep(&pair.rejected))
    }

    /// Collates `pairs` (each with its dataset index) into one batch on `device`.
    ///
    /// # Errors
    /// [`InputError::EmptyBatch`] for no pairs; [`Error::Torch`] if a tensor cannot be made.
    pub fn collate(&self, pairs: &[(usize, &EncodedPair)], device: Device) -> Result<CollatedBatch> {
        if pairs.is_empty() {
            return Err(Error::Input(InputError::EmptyBatch {
                arg: "pairs",
                shape: vec![0],
            }));
        }
        let truncated: Vec<_> = pairs.iter().map(|(_, p)| self.truncate(p)).collect();
        let rows: Vec<(&[i64], &[i64])> = truncated
            .iter()
            .map(|(p, c, _)| (*p, *c))
            .chain(truncated.iter().map(|(p, _, r)| (*p, *r)))
            .collect();
        let width = rows.iter().map(|(p, r)| p.len() + r.len()).max().unwrap_or(0);
        let n = rows.len();
        let mut input_ids = vec![self.config.pad_id; n * width];
        let mut attention_mask = vec![0i64; n * width];
        let mut labels = vec![self.config.ignore_index; n * width];
        let (mut chosen_tokens, mut rejected_tokens, mut tokens) = (0i64, 0i64, 0i64);
        for (row, (prompt, response)) in rows.iter().enumerate() {
            let base = row * width;
            for (t, &id) in prompt.iter().chain(response.iter()).enumerate() {
                input_ids[base + t] = id;
                attention_mask[base + t] = 1;
                if t >= prompt.len() {
                    labels[base + t] = id;
                    if t >= 1 {
                        if row < pairs.len() {
                            chosen_tokens += 1;
                        } else {
                            rejected_tokens += 1;
                        }
                    }
                }
            }
            tokens += (prompt.len() + response.len()) as i64;
        }
        let shape = [n as i64, width as i64];
        let make = |v: &[i64]| -> Result<Tensor> {
            Ok(Tensor::from_slice(v)
                .f_view(shape)?
                .f_to_kind(Kind::Int64)?
                .f_to_device(device)?)
        };
        Ok(CollatedBatch {
            input_ids: make(&input_ids)?,
            attention_mask: make(&attention_mask)?,
            labels: make(&labels)?,
            indices: pairs.iter().map(|(i, _)| *i).collect(),
            chosen_tokens,
            rejected_tokens,
            tokens,
        })
    }
}
