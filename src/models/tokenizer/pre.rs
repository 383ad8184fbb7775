//! The pre-tokenizers of byte-level BPE vocabularies, by their GGUF names (`tokenizer.ggml.pre`), as the
//! Hugging Face `tokenizer.json` of each family defines them (and llama.cpp's `llama-vocab.cpp` mirrors).

use tokenizers::normalizers::{unicode::NFC, NormalizerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use crate::error::{DataError, Error, Result};

/// Llama 3's split regex (its `tokenizer.json`): contractions (any case), letters with at most one leading
/// non-letter, **1–3 digits**, punctuation runs with trailing newlines, newline runs, spaces.
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split regex (its `tokenizer.json`): Llama 3's with **single digits**.
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer of a byte-level BPE vocabulary: how text is cut into words before BPE merges run inside
/// each word (then every word's UTF-8 bytes become GPT-2's byte-level characters, `' '` → `Ġ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BpePreTokenizer {
    /// Llama 3.x (`llama-bpe`; also `llama3`, `llama-v3`): [`LLAMA3_REGEX`], and a word that is itself a
    /// token is taken whole before merging (`ignore_merges`). BOS by default.
    Llama3,
    /// Qwen2 / Qwen2.5 / Qwen3 (`qwen2`; also `deepseek-r1-qwen`): NFC normalization, then [`QWEN2_REGEX`].
    Qwen2,
    /// SmolLM / SmolLM2 (`smollm`): every digit on its own (`Digits(individual_digits=True)`), then GPT-2's
    /// regex.
    SmolLm,
    /// GPT-2 (`gpt-2`): GPT-2's regex (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`).
    Gpt2,
}

impl BpePreTokenizer {
    /// The `tokenizer.ggml.pre` names this crate implements, in words.
    pub const SUPPORTED: &'static str =
        "\"llama-bpe\" (also \"llama3\", \"llama-v3\"), \"qwen2\" (also \"deepseek-r1-qwen\"), \"smollm\", \"gpt-2\"";

    /// The pre-tokenizer named `name` in a GGUF file's `tokenizer.ggml.pre`, if implemented.
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        match name {
            "llama-bpe" | "llama3" | "llama-v3" => Some(Self::Llama3),
            "qwen2" | "deepseek-r1-qwen" => Some(Self::Qwen2),
            "smollm" => Some(Self::SmolLm),
            "gpt-2" => Some(Self::Gpt2),
            _ => None,
        }
    }

    /// The name llama.cpp's converter writes for it (`tokenizer.ggml.pre`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Llama3 => "llama-bpe",
            Self::Qwen2 => "qwen2",
            Self::SmolLm => "smollm",
            Self::Gpt2 => "gpt-2",
        }
    }

    /// Whether a word that is a token of its own is taken whole, without running the merges (Llama 3).
    pub fn ignore_merges(self) -> bool {
        self == Self::Llama3
    }

    /// Whether a BOS token starts each sequence when the file does not say (`tokenizer.ggml.add_bos_token`
    /// absent): llama.cpp's defaults, true for Llama 3 only.
    pub fn default_add_bos(self) -> bool {
        self == Self::Llama3
    }

    /// The normalizer run before pre-tokenization (Qwen2's NFC), if any.
    pub(crate) fn normalizer(self) -> Option<NormalizerWrapper> {
        (self == Self::Qwen2).then(|| NFC.into())
    }

    /// The `tokenizers` pre-tokenizer of the family's `tokenizer.json`.
    pub(crate) fn pre_tokenizer(self) -> Result<PreTokenizerWrapper> {
        let split = |regex: &str| -> Result<PreTokenizerWrapper> {
            let split = Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| {
                Error::Data(DataError::Tokenizer(format!(
                    "the {} pre-tokenizer regex does not compile: {e}",
                    self.gguf_name()
                )))
            })?;
            Ok(split.into())
        };
        Ok(match self {
            Self::Llama3 => Sequence::new(vec![
                split(LLAMA3_REGEX)?,
                ByteLevel::new(false, true, false).into(),
            ])
            .into(),
            Self::Qwen2 => Sequence::new(vec![
                split(QWEN2_REGEX)?,
                ByteLevel::new(false, false, false).into(),
            ])
            .into(),
            Self::SmolLm => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            Self::Gpt2 => ByteLevel::new(false, true, true).into(),
        })
    }
}
