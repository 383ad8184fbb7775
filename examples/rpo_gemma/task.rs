//! The example's task: preference pairs whose correct answer a program can check.
//!
//! Reverse a short word: prompt `"<word>>"` (a word of 3–5 letters from `a`–`h`, then `>`), chosen = the
//! word reversed, rejected = a plausible wrong answer (two adjacent letters swapped, one letter replaced by
//! its neighbour in the alphabet, the word not reversed, or the last letter dropped). Records are generated
//! deterministically from a seed ([`generate`]) and checked with [`is_correct`].
//!
//! Why this task: the default model (`GemmaConfig::small_gemma2`: 2 layers, 64 wide, 73k parameters) learns
//! it from a few hundred pairs within the default run's budget. In a development probe (plain SFT on the
//! chosen answers, AdamW lr 3e-3, batches of 16, seed 0, release build on the 2-core CI-like machine) the
//! held-out greedy accuracy was 20% after 200 steps, 65% after 400 and 95% after 600, at about 8 ms per
//! step. Two-digit addition (`"12+35="`), tried first at the same size, stayed below 12% after 1,200
//! steps. The example's own run reports the numbers that count.
//!
//! The shipped files `examples/rpo_gemma/data/{train,heldout}.jsonl` are the first [`TRAIN_SIZE`] and the
//! next [`HELDOUT_SIZE`] records of `generate(DATA_SEED, …)`; regenerate them with
//! `cargo run --release --example rpo_gemma -- --write-data examples/rpo_gemma/data`
//! (`tests/rpo_gemma_task.rs` checks that the shipped files match).
//!
//! Tokenization for the small model is character level ([`tokenizer`]: the library's `CharTokenizer`
//! with Gemma's special ids `<pad>` 0, `<eos>` 1, `<bos>` 2).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use tch_rpo::models::tokenizer::CharTokenizer;

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
/// The small model's characters (ids `3..`): kept as they were when the shipped results were made.
pub const CHARS: &str = "abcdefghijklmnopqrstuvwxyz0123456789+-=>*/ ";

/// One preference pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// The prompt, e.g. `"abcd>"`.
    pub prompt: String,
    /// The correct answer, e.g. `"dcba"`.
    pub chosen: String,
    /// A plausible wrong answer, e.g. `"dbca"`.
    pub rejected: String,
}

/// The small model's character tokenizer.
pub fn tokenizer() -> tch_rpo::Result<CharTokenizer> {
    CharTokenizer::new(CHARS)
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

/// `--write-data DIR`: writes the shipped `train.jsonl` and `heldout.jsonl` (JSON Lines, one
/// `{"prompt","chosen","rejected"}` object per line) into `dir`.
pub fn write_data(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let all = generate(DATA_SEED, TRAIN_SIZE + HELDOUT_SIZE);
    let (train, heldout) = all.split_at(TRAIN_SIZE);
    std::fs::create_dir_all(dir)?;
    for (name, records) in [("train.jsonl", train), ("heldout.jsonl", heldout)] {
        let path = dir.join(name);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for record in records {
            serde_json::to_writer(&mut file, record)?;
            file.write_all(b"\n")?;
        }
        file.flush()?;
    }
    println!(
        "wrote {} + {} records to {}",
        train.len(),
        heldout.len(),
        dir.display()
    );
    Ok(())
}
