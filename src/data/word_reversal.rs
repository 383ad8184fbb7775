//! A synthetic preference task whose correct answer a program can check, for smoke tests of a training
//! pipeline and the `rpo_gemma` example's default run: reverse a short word.
//!
//! Prompt `"<word>>"` (a word of [`MIN_LEN`]–[`MAX_LEN`] letters from [`ALPHABET`], then `>`), chosen = the
//! word reversed, rejected = a plausible wrong answer (two adjacent letters swapped, one letter replaced
//! by its neighbour in the alphabet, the word not reversed, or the last letter dropped). Pairs are
//! generated deterministically from a seed ([`generate`]) and answers checked with [`is_correct`].
//!
//! Why this task: the `rpo_gemma` example's default model (`GemmaConfig::small_gemma2`: 2 layers, 64 wide,
//! 73k parameters) learns it from a few hundred pairs within the default run's budget. In a development
//! probe (plain SFT on the chosen answers, AdamW lr 3e-3, batches of 16, seed 0, release build on the
//! 2-core CI-like machine) the held-out greedy accuracy was 20% after 200 steps, 65% after 400 and 95%
//! after 600, at about 8 ms per step. Two-digit addition (`"12+35="`), tried first at the same size,
//! stayed below 12% after 1,200 steps. The example's own run reports the numbers that count.
//!
//! The shipped files `examples/rpo_gemma/data/{train,heldout}.jsonl` are the first [`TRAIN_SIZE`] and the
//! next [`HELDOUT_SIZE`] pairs of `generate(DATA_SEED, …)`, written by [`write_jsonl`]; regenerate them with
//! `cargo run --release --example rpo_gemma -- --write-data examples/rpo_gemma/data`
//! (`tests/rpo_gemma_task.rs` checks that the shipped files match). The example tokenizes at the
//! character level: `models::tokenizer::CharTokenizer` over [`CHARS`].

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

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
/// The example's character vocabulary (ids `3..` of its `CharTokenizer`), kept as it was when the shipped
/// results were made.
pub const CHARS: &str = "abcdefghijklmnopqrstuvwxyz0123456789+-=>*/ ";

/// One preference pair of plain texts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReversalPair {
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

/// `n` pairs with distinct prompts, deterministic in `seed` (at most the number of distinct words, 37,376).
pub fn generate(seed: u64, n: usize) -> Vec<ReversalPair> {
    let words: usize = (MIN_LEN..=MAX_LEN).map(|l| ALPHABET.len().pow(l as u32)).sum();
    let n = n.min(words);
    let letters: Vec<char> = ALPHABET.chars().collect();
    let mut rng = SplitMix64(seed);
    let mut seen = HashSet::new();
    let mut pairs = Vec::with_capacity(n);
    while pairs.len() < n {
        let len = MIN_LEN + rng.below(MAX_LEN - MIN_LEN + 1);
        let word: String = (0..len).map(|_| letters[rng.below(letters.len())]).collect();
        if !seen.insert(word.clone()) {
            continue;
        }
        let rejected = wrong_answer(&word, &mut rng);
        pairs.push(ReversalPair {
            prompt: format!("{word}>"),
            chosen: reversed(&word),
            rejected,
        });
    }
    pairs
}

/// Writes `pairs` to the file `path` as JSON Lines, one `{"prompt","chosen","rejected"}` object per line
/// (readable by [`super::PreferenceDataset::from_jsonl`]), atomically ([`crate::atomic::write_file`]).
///
/// # Errors
/// Those of [`crate::atomic::write_file`] (argument `path`); [`Error::Io`] when writing fails.
pub fn write_jsonl(path: &Path, pairs: &[ReversalPair]) -> Result<()> {
    crate::atomic::write_file(path, "path", |file| {
        let mut out = std::io::BufWriter::new(file);
        for pair in pairs {
            serde_json::to_writer(&mut out, pair).map_err(|e| Error::io(path, e.into()))?;
            out.write_all(b"\n").map_err(|e| Error::io(path, e))?;
        }
        out.flush().map_err(|e| Error::io(path, e))
    })
}
