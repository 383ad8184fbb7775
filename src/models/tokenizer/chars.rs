//! [`CharTokenizer`]: one token per character of a fixed alphabet, after Gemma-style special ids.

use crate::data::Tokenizer;
use crate::error::{DataError, Error, Result};

/// A character-level tokenizer: `<pad>` = 0, `<eos>` = 1, `<bos>` = 2 (Gemma's special ids), then one id
/// per character of the alphabet, in order (`3 + index`). For small models trained from scratch on
/// tasks with a known alphabet; `V = 3 + alphabet length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharTokenizer {
    chars: Vec<char>,
}

impl CharTokenizer {
    /// Padding id.
    pub const PAD: i64 = 0;
    /// End-of-sequence id.
    pub const EOS: i64 = 1;
    /// Beginning-of-sequence id.
    pub const BOS: i64 = 2;
    /// The first character id (ids below it are special).
    pub const FIRST_CHAR_ID: i64 = 3;

    /// A tokenizer over the characters of `alphabet`, in order.
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] for an empty alphabet or a character that appears twice.
    pub fn new(alphabet: &str) -> Result<Self> {
        let chars: Vec<char> = alphabet.chars().collect();
        if chars.is_empty() {
            return Err(Error::Data(DataError::Tokenizer(
                "the alphabet of a CharTokenizer is empty".into(),
            )));
        }
        for (i, c) in chars.iter().enumerate() {
            if chars[..i].contains(c) {
                return Err(Error::Data(DataError::Tokenizer(format!(
                    "character {c:?} appears twice in the alphabet {alphabet:?}"
                ))));
            }
        }
        Ok(Self { chars })
    }

    /// The id of `c`, if it is in the alphabet.
    pub fn char_id(&self, c: char) -> Option<i64> {
        self.chars
            .iter()
            .position(|&x| x == c)
            .map(|i| Self::FIRST_CHAR_ID + i as i64)
    }
}

impl Tokenizer for CharTokenizer {
    /// One id per character.
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] naming the first character that is not in the alphabet.
    fn encode(&self, text: &str) -> Result<Vec<i64>> {
        text.chars()
            .map(|c| {
                self.char_id(c).ok_or_else(|| {
                    let alphabet: String = self.chars.iter().collect();
                    Error::Data(DataError::Tokenizer(format!(
                        "character {c:?} is not in the alphabet {alphabet:?}"
                    )))
                })
            })
            .collect()
    }

    /// The characters of `ids`; special ids and ids outside the vocabulary are skipped.
    fn decode(&self, ids: &[i64]) -> Result<String> {
        Ok(ids
            .iter()
            .filter_map(|&id| {
                let index = usize::try_from(id.checked_sub(Self::FIRST_CHAR_ID)?).ok()?;
                self.chars.get(index).copied()
            })
            .collect())
    }

    fn vocab_size(&self) -> i64 {
        Self::FIRST_CHAR_ID + self.chars.len() as i64
    }

    fn pad_id(&self) -> i64 {
        Self::PAD
    }

    fn bos_id(&self) -> Option<i64> {
        Some(Self::BOS)
    }

    fn eos_id(&self) -> Option<i64> {
        Some(Self::EOS)
    }
}
