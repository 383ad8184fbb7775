//! The tokenizer of a Gemma GGUF file, built from its metadata (`tokenizer.ggml.*`), behaving exactly like
//! the one `transformers` builds from the same file (`AutoTokenizer.from_pretrained(dir, gguf_file=…)`,
//! checked by `tests/gemma3_gguf.rs`).
//!
//! The file holds a SentencePiece-style BPE vocabulary (`tokenizer.ggml.model` = "llama"): tokens, scores
//! and token types, but no merges. What this implements, as transformers does for Gemma:
//! - **vocabulary**: the file's tokens; tokens made only of two or more spaces are respelled with `▁`
//!   (`"  "` → `"▁▁"`), the way the model's own SentencePiece vocabulary spells them;
//! - **merges** recovered from the vocabulary: every split of a token into two tokens is a merge; a merge
//!   ranks by the position of its result in the file (earlier = applied first; Gemma's scores do not
//!   follow the merge order), ties (two splits of one token) longer left part first;
//! - **added tokens** matched whole in the raw text before anything else, leftmost-longest: the control
//!   tokens (type 3: `<bos>`, `<start_of_turn>`, `<unused5>`, …; "special") and the user-defined ones
//!   (type 4, e.g. newline runs `"\n\n"`) that are in the respelled vocabulary;
//! - **encoding** of the text between added tokens: every space becomes `▁` (no prefix space is added:
//!   `add_space_prefix` is false), each character becomes its token, or its UTF-8 bytes as `<0xXX>` byte
//!   tokens when it is not in the vocabulary (byte fallback; `<unk>` when even those are missing), then the
//!   lowest-ranked adjacent pair is merged (leftmost first among equals) until no pair can merge;
//! - **decoding**: `▁` → space, runs of byte tokens → their UTF-8 text (U+FFFD per byte when invalid),
//!   control tokens dropped or kept.

use std::collections::HashMap;

use super::vocab::{GgufVocab, TYPE_CONTROL};
#[cfg(feature = "train")]
use crate::data::{ChatTemplate, Tokenizer};
use crate::error::Result;
use crate::gguf::GgufFile;

/// A Gemma tokenizer read from a GGUF file: [`GgufTokenizer::encode_text`], [`GgufTokenizer::decode_text`]
/// and the special ids. With the `train` feature it implements the data pipeline's `data::Tokenizer` (no
/// BOS / EOS in `encode`; the Gemma chat turn template).
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    /// Token strings (respelled), by id.
    tokens: Vec<String>,
    /// Token types, by id.
    types: Vec<i64>,
    /// Token string → id.
    vocab: HashMap<String, u32>,
    /// (left id, right id) → (rank, merged id).
    merges: HashMap<(u32, u32), (u64, u32)>,
    /// Added tokens by first character, longest first.
    added: HashMap<char, Vec<(String, u32)>>,
    /// The `<0xXX>` token of each byte.
    byte_ids: Vec<Option<u32>>,
    unk_id: Option<u32>,
    bos_id: Option<i64>,
    eos_id: Option<i64>,
    pad_id: i64,
    add_bos: bool,
}

impl GgufTokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata (`tokens`, `token_type`, the
    /// special ids, `add_bos_token`). Takes about a second for Gemma's 262,144 tokens.
    ///
    /// # Errors
    /// [`GgufError::Invalid`](crate::GgufError::Invalid) for a missing or mistyped key; [`DataError::Tokenizer`](crate::DataError::Tokenizer) for a
    /// tokenizer model other than "llama" (SentencePiece), token types of another length than the tokens,
    /// or a special id outside the vocabulary.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let v = GgufVocab::read(file, "is supported")?;
        let id_map: HashMap<&str, usize> = v.vocab();
        let vocab: HashMap<String, u32> = id_map
            .iter()
            .map(|(t, &id)| ((*t).to_string(), id as u32))
            .collect();
        let merges = GgufVocab::merges(&id_map)
            .into_iter()
            .enumerate()
            .map(|(rank, (id, left, right))| ((vocab[left], vocab[right]), (rank as u64, id as u32)))
            .collect();
        let mut added: HashMap<char, Vec<(String, u32)>> = HashMap::new();
        for (id, text) in v.raw.iter().enumerate() {
            if let (Some(_), Some(first)) = (v.added_kind(&id_map, id), text.chars().next()) {
                added.entry(first).or_default().push((text.clone(), id as u32));
            }
        }
        for list in added.values_mut() {
            list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        }
        let byte_ids = (0..=255u8)
            .map(|b| vocab.get(&format!("<0x{b:02X}>")).copied())
            .collect();
        drop(id_map);
        Ok(Self {
            vocab,
            merges,
            added,
            byte_ids,
            unk_id: v.unk.map(|u| u as u32),
            bos_id: v.bos.map(|i| i as i64),
            eos_id: v.eos.map(|i| i as i64),
            pad_id: v.pad.unwrap_or(0) as i64,
            add_bos: v.add_bos,
            tokens: v.tokens,
            types: v.types,
        })
    }

    /// The vocabulary size `V` (every id is in `[0, V)`).
    pub fn vocab_size(&self) -> i64 {
        self.tokens.len() as i64
    }

    /// The padding id (`tokenizer.ggml.padding_token_id`, else 0).
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// The BOS id to put before each prompt: `tokenizer.ggml.bos_token_id` when the file asks for a BOS
    /// token ([`GgufTokenizer::add_bos`]), else `None`.
    pub fn bos_id(&self) -> Option<i64> {
        self.bos_id.filter(|_| self.add_bos)
    }

    /// The end-of-sequence id (`tokenizer.ggml.eos_token_id`), if any.
    pub fn eos_id(&self) -> Option<i64> {
        self.eos_id
    }

    /// Whether the file asks for a BOS token before each sequence (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The token string of `id` (with `▁` for spaces), if `id` is in the vocabulary.
    pub fn token(&self, id: i64) -> Option<&str> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.tokens.get(i))
            .map(String::as_str)
    }

    /// The id of a token string (as spelled in the vocabulary, e.g. `"<start_of_turn>"`, `"▁the"`).
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.vocab.get(token).map(|&id| i64::from(id))
    }

    /// Token ids of `text` (no BOS / EOS added; special tokens written in the text are recognized).
    pub fn encode_text(&self, text: &str) -> Vec<i64> {
        let mut ids = Vec::new();
        let mut segment_start = 0;
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            let Some(first) = rest.chars().next() else { break };
            let hit = self
                .added
                .get(&first)
                .and_then(|list| list.iter().find(|(t, _)| rest.starts_with(t.as_str())));
            match hit {
                Some((t, id)) => {
                    self.encode_segment(&text[segment_start..pos], &mut ids);
                    ids.push(i64::from(*id));
                    pos += t.len();
                    segment_start = pos;
                }
                None => pos += first.len_utf8(),
            }
        }
        self.encode_segment(&text[segment_start..], &mut ids);
        ids
    }

    /// BPE of one stretch of text without added tokens.
    fn encode_segment(&self, text: &str, out: &mut Vec<i64>) {
        if text.is_empty() {
            return;
        }
        let normalized = text.replace(' ', "\u{2581}");
        let mut symbols: Vec<u32> = Vec::with_capacity(normalized.len());
        let mut buf = [0u8; 4];
        for c in normalized.chars() {
            if let Some(&id) = self.vocab.get(c.encode_utf8(&mut buf) as &str) {
                symbols.push(id);
                continue;
            }
            let bytes: Option<Vec<u32>> = c
                .encode_utf8(&mut buf)
                .bytes()
                .map(|b| self.byte_ids[b as usize])
                .collect();
            match (bytes, self.unk_id) {
                (Some(bytes), _) => symbols.extend(bytes),
                (None, Some(unk)) => {
                    // Consecutive unknowns fuse into one <unk> (fuse_unk).
                    if symbols.last() != Some(&unk) {
                        symbols.push(unk);
                    }
                }
                (None, None) => {}
            }
        }
        // Merge the lowest-ranked adjacent pair (leftmost among equals) until none can merge.
        let rank_at = |symbols: &[u32], i: usize| self.merges.get(&(symbols[i], symbols[i + 1])).copied();
        let mut ranks: Vec<Option<(u64, u32)>> = (0..symbols.len().saturating_sub(1))
            .map(|i| rank_at(&symbols, i))
            .collect();
        loop {
            let best = ranks
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.map(|(rank, id)| (rank, i, id)))
                .min();
            let Some((_, i, merged)) = best else { break };
            symbols[i] = merged;
            symbols.remove(i + 1);
            ranks.remove(i);
            if i + 1 < symbols.len() {
                ranks[i] = rank_at(&symbols, i);
            }
            if i > 0 {
                ranks[i - 1] = rank_at(&symbols, i - 1);
            }
        }
        out.extend(symbols.into_iter().map(i64::from));
    }

    /// The text of `ids`: `▁` → space, byte tokens → their UTF-8 text (U+FFFD for each byte of an invalid
    /// run), control tokens (`<bos>`, `<end_of_turn>`, …) dropped when `skip_special`. Ids outside the
    /// vocabulary are skipped.
    pub fn decode_text(&self, ids: &[i64], skip_special: bool) -> String {
        let mut out = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let flush = |bytes: &mut Vec<u8>, out: &mut String| {
            if bytes.is_empty() {
                return;
            }
            match std::str::from_utf8(bytes) {
                Ok(s) => out.push_str(s),
                Err(_) => (0..bytes.len()).for_each(|_| out.push('\u{FFFD}')),
            }
            bytes.clear();
        };
        for &id in ids {
            let Some(i) = usize::try_from(id).ok().filter(|&i| i < self.tokens.len()) else {
                continue;
            };
            if skip_special && self.types[i] == TYPE_CONTROL {
                continue;
            }
            let token = &self.tokens[i];
            let byte = (token.len() == 6 && token.starts_with("<0x") && token.ends_with('>'))
                .then(|| u8::from_str_radix(&token[3..5], 16).ok())
                .flatten();
            match byte {
                Some(b) => bytes.push(b),
                None => {
                    flush(&mut bytes, &mut out);
                    out.push_str(&token.replace('\u{2581}', " "));
                }
            }
        }
        flush(&mut bytes, &mut out);
        out
    }
}

/// The data pipeline's tokenizer (feature `train`): the inherent methods of the same names.
#[cfg(feature = "train")]
impl Tokenizer for GgufTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<i64>> {
        Ok(self.encode_text(text))
    }
    /// [`GgufTokenizer::decode_text`] with control tokens skipped.
    fn decode(&self, ids: &[i64]) -> Result<String> {
        Ok(self.decode_text(ids, true))
    }
    fn vocab_size(&self) -> i64 {
        GgufTokenizer::vocab_size(self)
    }
    fn pad_id(&self) -> i64 {
        GgufTokenizer::pad_id(self)
    }
    fn bos_id(&self) -> Option<i64> {
        GgufTokenizer::bos_id(self)
    }
    fn eos_id(&self) -> Option<i64> {
        GgufTokenizer::eos_id(self)
    }
    fn chat_template(&self) -> ChatTemplate {
        ChatTemplate::Gemma
    }
}
