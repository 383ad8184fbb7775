//! [`greedy_accuracy`]: the fraction of prompts a model answers correctly by greedy decoding, for tasks
//! whose answers a program can check (feature `train`, for the [`Tokenizer`] trait).

use super::generate::{generate, GenerationConfig};
use super::CausalLm;
use crate::data::Tokenizer;
use crate::error::{Error, InputError, Result};

/// The fraction of `prompts` that `model` answers correctly: each prompt is encoded with `tokenizer`
/// (after its BOS id, when it has one), decoded greedily ([`generate`] with
/// [`GenerationConfig::greedy`]: at most `max_new_tokens` tokens, stopping at the tokenizer's EOS id) in
/// batches of `batch` prompts, and its decoded answer judged by `is_correct(prompt, answer)`. `None` for no
/// prompts.
///
/// # Errors
/// [`InputError::InvalidParameter`] for `batch == 0`; those of the tokenizer's `encode` / `decode` and of [`generate`].
pub fn greedy_accuracy(
    model: &impl CausalLm,
    tokenizer: &dyn Tokenizer,
    prompts: &[String],
    max_new_tokens: usize,
    batch: usize,
    is_correct: impl Fn(&str, &str) -> bool,
) -> Result<Option<f64>> {
    if batch == 0 {
        return Err(Error::Input(InputError::InvalidParameter {
            name: "batch",
            value: 0u64.into(),
            requirement: "must be >= 1",
        }));
    }
    if prompts.is_empty() {
        return Ok(None);
    }
    let stop = tokenizer.eos_id().into_iter().collect();
    let greedy = GenerationConfig::greedy(max_new_tokens, stop, tokenizer.pad_id());
    let mut correct = 0usize;
    for chunk in prompts.chunks(batch) {
        let ids = chunk
            .iter()
            .map(|p| {
                Ok(tokenizer
                    .bos_id()
                    .into_iter()
                    .chain(tokenizer.encode(p)?)
                    .collect())
            })
            .collect::<Result<Vec<Vec<i64>>>>()?;
        for (prompt, answer) in chunk.iter().zip(&generate(model, &ids, &greedy)?.tokens) {
            correct += usize::from(is_correct(prompt, &tokenizer.decode(answer)?));
        }
    }
    Ok(Some(correct as f64 / prompts.len() as f64))
}
