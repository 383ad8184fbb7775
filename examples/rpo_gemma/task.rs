//! The example's task: preference pairs whose correct answer a program can check.
//!
//! Reverse a short word: prompt `"<word>>"` (a word of 3–5 letters from `a`–`h`, then `>`), chosen = the
//! word reversed, rejected = a plausible wrong answer (two adjacent letters swapped, one letter replaced by
//! its neighbour in the alphabet, the word not reversed, or the last letter dropped). Records are generated
//! deterministically from a seed ([`generate_split`]), checked with [`is_correct`], and written as JSON Lines
//! `{"prompt","chosen","rejected"}` ([`write_jsonl`]).
//!
//! Why this task: the default model (`GemmaConfig::small_gemma2`: 2 layers, 64 wide, 73k parameters) learns
//! it from a few hundred pairs within the default run's budget. In a development probe (plain SFT on the
//! chosen answers, AdamW lr 3e-3, batches of 16, seed 0, release build on the 2-core CI-like machine) the
//! held-out greedy accuracy was 20% after 200 steps, 65% after 400 and 95% after 600, at about 8 ms per
//! step. Two-digit addition (`"12+35="`), tried first at the same size, stayed below 12% after 1,200
//! steps. The example's own run reports the numbers that count.
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
/// The letters words are made of.
pub const ALPHABET: &str = "abcdefgh";
/// Word lengths are drawn from `MIN_LEN..=MAX_LEN`.
pub const MIN_LEN: usize = 3;
/// See [`MIN_LEN`].
pub const MAX_LEN: usize = 5;

/// One preference pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The prompt, e.g. `"abcd>"`.
    pub prompt: String,
    /// The correct answer, e.g. `"dcba"`.
    pub chosen: String,
    /// A plausible wrong answer, e.g. `"dbca"`.
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
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The word of a prompt `"<word>>"`; `None` if the prompt is not of that form.
fn parse_prompt(prompt: &str) -> Option<&str> {
    let word = prompt.strip_suffix('>')?;
    (!word.is_empty() && word.chars().all(|c| ALPHABET.contains(c))).then_some(word)
}

fn reversed(word: &str) -> String {
    word.chars().rev().collect()
}

/// Whether `answer` is the correct answer to `prompt`: the prompt's word reversed, exactly. A prompt that
/// is not `"<word>>"` (letters of [`ALPHABET`]) has no correct answer (false).
pub fn is_correct(prompt: &str, answer: &str) -> bool {
    parse_prompt(prompt).is_some_and(|word| answer == reversed(word))
}

/// A plausible wrong answer for reversing `word`: two adjacent letters of the correct answer swapped,
/// one letter replaced by its neighbour in the alphabet, the word copied unreversed, or the last letter
/// dropped. Never the correct answer.
fn wrong_answer(word: &str, rng: &mut SplitMix64) -> String {
    let correct: Vec<char> = reversed(word).chars().collect();
    let letters: Vec<char> = ALPHABET.chars().collect();
    loop {
        let mut wrong = correct.clone();
        match rng.below(4) {
            0 => {
                let i = rng.below(wrong.len() - 1);
                wrong.swap(i, i + 1);
            }
            1 => {
                let i = rng.below(wrong.len());
                let pos = letters.iter().position(|c| *c == wrong[i]).unwrap_or(0);
                let step = if rng.below(2) == 0 { 1 } else { letters.len() - 1 };
                wrong[i] = letters[(pos + step) % letters.len()];
            }
            2 => wrong = word.chars().collect(),
            _ => {
                wrong.pop();
            }
        }
        if wrong != correct {
            return wrong.into_iter().collect();
        }
    }
}

/// `n_train` training pairs and `n_heldout` held-out pairs, all with distinct prompts (no prompt in both),
/// deterministic in `seed`.
pub fn generate_split(seed: u64, n_train: usize, n_heldout: usize) -> (Vec<Record>, Vec<Record>) {
    let all = generate(seed, n_train + n_heldout);
    let (train, heldout) = all.split_at(n_train.min(all.len()));
    (train.to_vec(), heldout.to_vec())
}

/// `n` pairs with distinct prompts, deterministic in `seed` (at most the number of distinct words).
pub fn generate(seed: u64, n: usize) -> Vec<Record> {
    let words: usize = (MIN_LEN..=MAX_LEN).map(|l| ALPHABET.len().pow(l as u32)).sum();
    let n = n.min(words);
    let letters: Vec<char> = ALPHABET.chars().collect();
    let mut rng = SplitMix64(seed);
    let mut seen = HashSet::new();
    let mut records = Vec::with_capacity(n);
    while records.len() < n {
        let len = MIN_LEN + rng.below(MAX_LEN - MIN_LEN + 1);
        let word: String = (0..len).map(|_| letters[rng.below(letters.len())]).collect();
        if !seen.insert(word.clone()) {
            continue;
        }
        let rejected = wrong_answer(&word, &mut rng);
        records.push(Record {
            prompt: format!("{word}>"),
            chosen: reversed(&word),
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
    pub const CHARS: &'static str = "abcdefghijklmnopqrstuvwxyz0123456789+-=>*/ ";

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
