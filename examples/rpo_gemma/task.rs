//! The example's task: preference pairs whose correct answer a program can check.
//!
//! Two-operand addition of small integers: prompt `"a+b="` with `a, b` in `[0, 50)`, chosen = the correct sum,
//! rejected = a plausible wrong sum (off by one, a forgotten / spurious carry = off by ten, or the two digits
//! swapped). Records are generated deterministically from a seed ([`generate_split`]), checked with
//! [`is_correct`], and written as JSON Lines `{"prompt","chosen","rejected"}` ([`write_jsonl`]).
//!
//! The shipped files `examples/rpo_gemma/data/{train,heldout}.jsonl` are
//! `generate_split(DATA_SEED, TRAIN_SIZE, HELDOUT_SIZE)`; regenerate them with
//! `cargo run --release --example rpo_gemma -- --write-data examples/rpo_gemma/data`
//! (the test `tests/rpo_gemma_task.rs` checks that the shipped files match the generator).
//!
//! Tokenization for the small model is character level ([`CharVocab`]), with Gemma's special ids
//! (`<pad>` 0, `<eos>` 1, `<bos>` 2). [`gold_accuracy`] greedy-decodes held-out prompts and checks answers.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::gemma::{greedy_decode, Gemma, GemmaError};

/// The seed of the shipped data files.
pub const DATA_SEED: u64 = 2024;
/// Pairs in the shipped `train.jsonl`.
pub const TRAIN_SIZE: usize = 512;
/// Prompts in the shipped `heldout.jsonl` (no prompt in common with the training file).
pub const HELDOUT_SIZE: usize = 128;
/// Operands are drawn from `[0, OPERAND_LIMIT)`.
pub const OPERAND_LIMIT: u64 = 50;

/// One preference pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The prompt, e.g. `"12+35="`.
    pub prompt: String,
    /// The correct answer, e.g. `"47"`.
    pub chosen: String,
    /// A plausible wrong answer, e.g. `"37"`.
    pub rejected: String,
}

/// SplitMix64: a tiny deterministic generator, so the data does not depend on a crate's RNG version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` (n ≤ 2^32: the modulo bias is negligible).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Parses `"a+b="` into `(a, b)`; `None` if the prompt is not of that form.
fn parse_prompt(prompt: &str) -> Option<(u64, u64)> {
    let body = prompt.strip_suffix('=')?;
    let (a, b) = body.split_once('+')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Whether `answer` is the correct answer to `prompt` (the decimal sum, no sign, no leading zeros, no
/// spaces). A prompt that is not `"a+b="` has no correct answer (false).
pub fn is_correct(prompt: &str, answer: &str) -> bool {
    parse_prompt(prompt).is_some_and(|(a, b)| answer == (a + b).to_string())
}

/// A plausible wrong answer for `a + b`: off by one, off by ten (carry mistake), or the digits swapped.
fn wrong_answer(a: u64, b: u64, rng: &mut SplitMix64) -> String {
    let sum = a + b;
    loop {
        let candidate: Option<u64> = match rng.below(5) {
            0 => Some(sum + 1),
            1 => sum.checked_sub(1),
            2 => Some(sum + 10),
            3 => sum.checked_sub(10),
            _ => {
                let digits = sum.to_string();
                (digits.len() == 2 && digits.as_bytes()[0] != digits.as_bytes()[1] && sum % 10 != 0)
                    .then(|| digits.chars().rev().collect::<String>().parse().ok())
                    .flatten()
            }
        };
        if let Some(wrong) = candidate.filter(|w| *w != sum) {
            return wrong.to_string();
        }
    }
}

/// `n_train` training pairs and `n_heldout` held-out pairs, all with distinct prompts (no prompt in both),
/// deterministic in `seed`. Panics never; if more prompts are asked for than exist (`OPERAND_LIMIT²`),
/// the sets are truncated.
pub fn generate_split(seed: u64, n_train: usize, n_heldout: usize) -> (Vec<Record>, Vec<Record>) {
    let all = generate(seed, n_train + n_heldout);
    let n_train = n_train.min(all.len());
    let (train, heldout) = all.split_at(n_train);
    (train.to_vec(), heldout.to_vec())
}

/// `n` pairs with distinct prompts, deterministic in `seed` (at most `OPERAND_LIMIT²` of them).
pub fn generate(seed: u64, n: usize) -> Vec<Record> {
    let n = n.min((OPERAND_LIMIT * OPERAND_LIMIT) as usize);
    let mut rng = SplitMix64(seed);
    let mut seen = HashSet::new();
    let mut records = Vec::with_capacity(n);
    while records.len() < n {
        let (a, b) = (rng.below(OPERAND_LIMIT), rng.below(OPERAND_LIMIT));
        if !seen.insert((a, b)) {
            continue;
        }
        let rejected = wrong_answer(a, b, &mut rng);
        records.push(Record {
            prompt: format!("{a}+{b}="),
            chosen: (a + b).to_string(),
            rejected,
        });
    }
    records
}

/// Writes records as JSON Lines (one `{"prompt","chosen","rejected"}` object per line).
pub fn write_jsonl(path: &Path, records: &[Record]) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for record in records {
        serde_json::to_writer(&mut file, record)?;
        file.write_all(b"\n")?;
    }
    file.flush()
}

/// Reads JSON Lines records (blank lines skipped). Errors name the file and the line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Record>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1)))
        .collect()
}

/// A character-level vocabulary with Gemma's special ids: `<pad>` 0, `<eos>` 1, `<bos>` 2, then the
/// characters of [`CharVocab::CHARS`].
#[derive(Debug, Clone)]
pub struct CharVocab;

impl CharVocab {
    /// Padding id.
    pub const PAD: i64 = 0;
    /// End-of-sequence id.
    pub const EOS: i64 = 1;
    /// Beginning-of-sequence id.
    pub const BOS: i64 = 2;
    /// The characters, with ids `3..3 + CHARS.len()`.
    pub const CHARS: &'static str = "0123456789+-=*/ ";

    /// The vocabulary.
    pub fn new() -> Self {
        Self
    }

    /// The vocabulary size (special ids included).
    pub fn len(&self) -> i64 {
        3 + Self::CHARS.len() as i64
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Ids of `text`, without special tokens. Errors on a character outside the vocabulary.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, GemmaError> {
        text.chars()
            .map(|c| {
                Self::CHARS
                    .find(c)
                    .map(|i| 3 + i as i64)
                    .ok_or_else(|| GemmaError::Input {
                        arg: "text",
                        message: format!("character {c:?} is not in the vocabulary {:?}", Self::CHARS),
                    })
            })
            .collect()
    }

    /// `<bos>` + the prompt's ids.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<i64>, GemmaError> {
        let mut ids = vec![Self::BOS];
        ids.extend(self.encode(prompt)?);
        Ok(ids)
    }

    /// The answer's ids + `<eos>`.
    pub fn encode_answer(&self, answer: &str) -> Result<Vec<i64>, GemmaError> {
        let mut ids = self.encode(answer)?;
        ids.push(Self::EOS);
        Ok(ids)
    }

    /// Text of `ids`, stopping at `<eos>`; special and unknown ids are skipped.
    pub fn decode(&self, ids: &[i64]) -> String {
        ids.iter()
            .take_while(|id| **id != Self::EOS)
            .filter_map(|id| Self::CHARS.chars().nth(usize::try_from(id - 3).ok()?))
            .collect()
    }
}

impl Default for CharVocab {
    fn default() -> Self {
        Self::new()
    }
}

/// The gold metric: the fraction of `prompts` whose greedy answer (at most `max_answer_tokens` tokens, up to
/// `<eos>`) is correct by [`is_correct`]. Batches of `batch_size` prompts, under `no_grad`.
/// Errors: those of [`CharVocab::encode_prompt`] and [`greedy_decode`].
pub fn gold_accuracy(
    model: &Gemma,
    vocab: &CharVocab,
    prompts: &[String],
    max_answer_tokens: usize,
    batch_size: usize,
    device: Device,
) -> Result<f64, GemmaError> {
    if prompts.is_empty() {
        return Ok(0.0);
    }
    let mut correct = 0usize;
    for chunk in prompts.chunks(batch_size.max(1)) {
        let ids = chunk
            .iter()
            .map(|p| vocab.encode_prompt(p))
            .collect::<Result<Vec<_>, _>>()?;
        let answers = greedy_decode(
            model,
            &ids,
            max_answer_tokens,
            CharVocab::EOS,
            CharVocab::PAD,
            device,
        )?;
        correct += chunk
            .iter()
            .zip(&answers)
            .filter(|(p, a)| is_correct(p, &vocab.decode(a)))
            .count();
    }
    Ok(correct as f64 / prompts.len() as f64)
}
