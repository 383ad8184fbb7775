//! The SentencePiece tokenizer of a GGUF file (`tokenizer.ggml.model` = "llama"), built from its metadata
//! (`tokenizer.ggml.*`), in one of two styles ([`SpmStyle`]) chosen by `general.architecture`:
//!
//! **Gemma** (`general.architecture` starting with `gemma`, or absent): exactly the tokenizer `transformers`
//! builds from the same file (`AutoTokenizer.from_pretrained(dir, gguf_file=…)`, checked by
//! `tests/gemma3_gguf.rs`). The file holds tokens, scores and token types, but no merges. As transformers
//! does for Gemma:
//! - **vocabulary**: the file's tokens; tokens made only of two or more spaces are respelled with `▁`
//!   (`"  "` → `"▁▁"`), the way the model's own SentencePiece vocabulary spells them;
//! - **merges** recovered from the vocabulary: every split of a token into two tokens is a merge; a merge
//!   ranks by the position of its result in the file (earlier = applied first; Gemma's scores do not
//!   follow the merge order), ties (two splits of one token) longer left part first;
//! - **added tokens** matched whole in the raw text before anything else, leftmost-longest: the control
//!   tokens (type 3: `<bos>`, `<start_of_turn>`, `<unused5>`, …; "special") and the user-defined ones
//!   (type 4, e.g. newline runs `"\n\n"`) that are in the respelled vocabulary;
//! - **encoding** of the text between added tokens: every space becomes `▁` (no prefix space is added),
//!   each character becomes its token, or its UTF-8 bytes as `<0xXX>` byte tokens when it is not in the
//!   vocabulary (byte fallback; `<unk>` when even those are missing), then the lowest-ranked adjacent pair
//!   is merged (leftmost first among equals) until no pair can merge;
//! - **decoding**: `▁` → space, runs of byte tokens → their UTF-8 text (U+FFFD per byte when invalid),
//!   control tokens dropped or kept;
//! - **chat template**: `data::Tokenizer`'s built-in Gemma turns.
//!
//! **Llama** (any other architecture: Llama 2, Mistral 7B, TinyLlama, …): exactly llama.cpp's SPM
//! tokenizer (written from llama.cpp's `src/llama-vocab.cpp`; checked against llama.cpp and sentencepiece by
//! `tests/spm_tokenizer.rs`):
//! - **vocabulary** and **scores**: `tokenizer.ggml.tokens` as spelled, `tokenizer.ggml.scores`;
//! - **special tokens** (control, user-defined and unknown types) cut out of the raw text first, longest
//!   first;
//! - **encoding**: a space is put before the text and after each special token when
//!   `tokenizer.ggml.add_space_prefix` is set (llama.cpp's default when absent: true), spaces become `▁`,
//!   then the adjacent pair forming the token of highest score is merged (leftmost among equals) until no
//!   pair forms a token; pieces that are not tokens fall back to `<0xXX>` byte tokens;
//! - **special ids**: `tokenizer.ggml.{bos,eos,unknown}_token_id` with llama.cpp's defaults 1, 2 and 0,
//!   `add_bos_token` (default true); padding: `padding_token_id`, else EOS;
//! - **decoding** as llama.cpp's `token_to_piece`: normal tokens with `▁` → space, byte tokens → bytes
//!   (then UTF-8, U+FFFD per byte of an invalid run), user-defined tokens as spelled, control and unknown
//!   tokens dropped when skipping special tokens (else as spelled), unused ones dropped; and, like
//!   sentencepiece's `decode` and transformers' Llama tokenizer, with `add_space_prefix` the first piece
//!   loses one leading space (the one encoding added), so `decode(encode(s)) == s` for text without
//!   special tokens. (llama.cpp's `detokenize` does the same except after a skipped BOS, where it keeps
//!   it.) Decoding a continuation alone therefore drops its leading space;
//! - **chat template**: the file's `tokenizer.chat_template` (feature `chat-template`), rendered like
//!   `BpeTokenizer`'s.

use std::collections::HashMap;

use super::spm::{partition, Fragment, SpmVocab};
use super::vocab::{
    tokenizer_error, GgufVocab, TYPE_BYTE, TYPE_CONTROL, TYPE_NORMAL, TYPE_UNKNOWN, TYPE_USER_DEFINED,
};
#[cfg(feature = "chat-template")]
use crate::chat::JinjaTemplate;
#[cfg(feature = "train")]
use crate::data::{ChatTemplate, Tokenizer};
use crate::error::Result;
use crate::gguf::GgufFile;

/// Which tokenizer a SentencePiece GGUF file gets (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpmStyle {
    /// Gemma's, as transformers builds it: merges ranked by token position, no space prefix, the Gemma
    /// chat turns. For `general.architecture` starting with `gemma`, or absent.
    Gemma,
    /// llama.cpp's SPM tokenizer: merges ranked by score, `add_space_prefix`, the file's chat template.
    /// For every other architecture (`llama`: Llama 2, Mistral 7B, TinyLlama, …).
    Llama,
}

impl SpmStyle {
    /// The style of `file`, from `general.architecture`.
    ///
    /// # Errors
    /// [`GgufError::Invalid`](crate::GgufError::Invalid) when `general.architecture` is not a string.
    pub fn of(file: &GgufFile) -> Result<Self> {
        Ok(match file.get("general.architecture") {
            None => SpmStyle::Gemma,
            Some(_) if file.get_str("general.architecture")?.starts_with("gemma") => SpmStyle::Gemma,
            Some(_) => SpmStyle::Llama,
        })
    }
}

/// A SentencePiece tokenizer read from a GGUF file, in the [`SpmStyle`] of its architecture:
/// [`GgufTokenizer::encode_text`], [`GgufTokenizer::decode_text`] and the special ids. With the `train`
/// feature it implements the data pipeline's `data::Tokenizer` (no BOS / EOS in `encode`; Gemma's chat
/// turns, or the file's chat template).
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    style: SpmStyle,
    /// Token strings (respelled for Gemma), by id.
    tokens: Vec<String>,
    /// Token types, by id.
    types: Vec<i64>,
    /// Token string → id.
    vocab: HashMap<String, u32>,
    /// Gemma: (left id, right id) → (rank, merged id).
    merges: HashMap<(u32, u32), (u64, u32)>,
    /// Gemma: added tokens by first character, longest first.
    added: HashMap<char, Vec<(String, u32)>>,
    /// Llama: token scores, by id.
    scores: Vec<f32>,
    /// Llama: special tokens (control, user-defined, unknown), longest first.
    specials: Vec<(String, u32)>,
    /// Llama: whether a space starts the text and follows each special token.
    add_space_prefix: bool,
    /// The `<0xXX>` token of each byte.
    byte_ids: Vec<Option<u32>>,
    unk_id: Option<u32>,
    bos_id: Option<i64>,
    eos_id: Option<i64>,
    pad_id: i64,
    add_bos: bool,
    #[cfg(feature = "chat-template")]
    chat_template: Option<JinjaTemplate>,
}

impl GgufTokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata (`tokens`, `token_type`, the
    /// special ids, `add_bos_token`; for the [`SpmStyle::Llama`] style also `scores`, `add_space_prefix`
    /// and `tokenizer.chat_template`). Takes about a second for Gemma's 262,144 tokens.
    ///
    /// # Errors
    /// [`GgufError::Invalid`](crate::GgufError::Invalid) for a missing or mistyped key (Llama style:
    /// `tokenizer.ggml.scores` included); [`DataError::Tokenizer`](crate::DataError::Tokenizer) for a
    /// tokenizer model other than "llama" (SentencePiece), token types or (Llama style) scores of another
    /// length than the tokens, a special id outside the vocabulary, or (Llama style) a token listed twice;
    /// [`DataError::ChatTemplate`](crate::DataError::ChatTemplate) for a chat template that does not
    /// compile.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let v = GgufVocab::read(file, "is supported")?;
        match SpmStyle::of(file)? {
            SpmStyle::Gemma => Ok(Self::gemma(v)),
            SpmStyle::Llama => Self::llama(file, v),
        }
    }

    fn gemma(v: GgufVocab) -> Self {
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
        Self {
            style: SpmStyle::Gemma,
            vocab,
            merges,
            added,
            scores: Vec::new(),
            specials: Vec::new(),
            add_space_prefix: false,
            byte_ids,
            unk_id: v.unk.map(|u| u as u32),
            bos_id: v.bos.map(|i| i as i64),
            eos_id: v.eos.map(|i| i as i64),
            pad_id: v.pad.unwrap_or(0) as i64,
            add_bos: v.add_bos,
            tokens: v.tokens,
            types: v.types,
            #[cfg(feature = "chat-template")]
            chat_template: None,
        }
    }

    fn llama(file: &GgufFile, v: GgufVocab) -> Result<Self> {
        let n = v.raw.len();
        let scores = file.get_f32_array("tokenizer.ggml.scores")?;
        if scores.len() != n {
            return Err(tokenizer_error(
                file,
                format!("tokenizer.ggml.scores has {} scores for {n} tokens", scores.len()),
            ));
        }
        let mut vocab = HashMap::with_capacity(n);
        for (id, token) in v.raw.iter().enumerate() {
            if let Some(first) = vocab.insert(token.clone(), id as u32) {
                return Err(tokenizer_error(
                    file,
                    format!("tokenizer.ggml.tokens lists {token:?} twice, at ids {first} and {id}"),
                ));
            }
        }
        let mut specials: Vec<(String, u32)> = v
            .raw
            .iter()
            .zip(&v.types)
            .enumerate()
            .filter(|(_, (t, &ty))| {
                !t.is_empty() && matches!(ty, TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN)
            })
            .map(|(id, (t, _))| (t.clone(), id as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let byte_ids = (0..=255u8)
            .map(|b| {
                let single = (b < 0x80)
                    .then(|| vocab.get((b as char).to_string().as_str()))
                    .flatten();
                vocab.get(&format!("<0x{b:02X}>")).or(single).copied()
            })
            .collect();
        // llama.cpp's defaults for a "llama" vocabulary, when inside it.
        let default = |id: usize| (id < n).then_some(id);
        let (bos, eos, unk) = (v.bos.or(default(1)), v.eos.or(default(2)), v.unk.or(default(0)));
        let add_space_prefix = super::vocab::flag(file, "add_space_prefix", true)?;
        #[cfg(feature = "chat-template")]
        let chat_template = super::vocab::chat_template(file, &v.raw, [bos, eos, unk, v.pad])?;
        Ok(Self {
            style: SpmStyle::Llama,
            vocab,
            merges: HashMap::new(),
            added: HashMap::new(),
            scores,
            specials,
            add_space_prefix,
            byte_ids,
            unk_id: unk.map(|u| u as u32),
            bos_id: bos.map(|i| i as i64),
            eos_id: eos.map(|i| i as i64),
            pad_id: v.pad.or(eos).unwrap_or(0) as i64,
            add_bos: v.add_bos,
            tokens: v.raw,
            types: v.types,
            #[cfg(feature = "chat-template")]
            chat_template,
        })
    }

    /// The style of this tokenizer (from the file's architecture).
    pub fn style(&self) -> SpmStyle {
        self.style
    }

    /// Whether a space is put before the text and after each special token (`tokenizer.ggml.add_space_prefix`
    /// for the Llama style, default true; always false for Gemma).
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// The chat template of the file (`tokenizer.chat_template`; Llama style only), if it has one. (Not
    /// named `chat_template`, which is `data::Tokenizer`'s.)
    #[cfg(feature = "chat-template")]
    pub fn file_chat_template(&self) -> Option<&JinjaTemplate> {
        self.chat_template.as_ref()
    }

    /// The vocabulary size `V` (every id is in `[0, V)`).
    pub fn vocab_size(&self) -> i64 {
        self.tokens.len() as i64
    }

    /// The padding id: `tokenizer.ggml.padding_token_id`, else (Llama style) the EOS id, else 0.
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
        match self.style {
            SpmStyle::Gemma => self.encode_gemma(text),
            SpmStyle::Llama => self.encode_llama(text),
        }
    }

    /// llama.cpp's SPM tokenization (see [`spm`](super::spm)).
    fn encode_llama(&self, text: &str) -> Vec<i64> {
        let spm = SpmVocab {
            vocab: &self.vocab,
            scores: &self.scores,
            byte_ids: &self.byte_ids,
            unk: self.unk_id,
        };
        let mut ids = Vec::new();
        let mut after_special = true;
        for fragment in partition(text, &self.specials) {
            match fragment {
                Fragment::Text(t) => {
                    let prefix = if self.add_space_prefix && after_special {
                        " "
                    } else {
                        ""
                    };
                    spm.tokenize(&format!("{prefix}{t}").replace(' ', "\u{2581}"), &mut ids);
                    after_special = false;
                }
                Fragment::Token(id) => {
                    ids.push(i64::from(id));
                    after_special = true;
                }
            }
        }
        ids
    }

    /// Gemma: added tokens first, then [`GgufTokenizer::encode_segment`] between them.
    fn encode_gemma(&self, text: &str) -> Vec<i64> {
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
    /// run), control tokens (`<bos>`, `<end_of_turn>`, …; Llama style: unknown ones too) dropped when
    /// `skip_special`. Llama style: user-defined tokens as spelled, unused ones dropped, and with
    /// [`GgufTokenizer::add_space_prefix`] the first piece loses one leading space (see the
    /// [module docs](self)). Ids outside the vocabulary are skipped.
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
        let mut strip_space = self.add_space_prefix;
        for &id in ids {
            let Some(i) = usize::try_from(id).ok().filter(|&i| i < self.tokens.len()) else {
                continue;
            };
            let token = &self.tokens[i];
            let (ty, llama) = (self.types[i], self.style == SpmStyle::Llama);
            if skip_special && (ty == TYPE_CONTROL || (llama && ty == TYPE_UNKNOWN)) {
                continue;
            }
            let byte = if llama {
                (ty == TYPE_BYTE)
                    .then(|| token.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok()))
                    .flatten()
            } else {
                (token.len() == 6 && token.starts_with("<0x") && token.ends_with('>'))
                    .then(|| u8::from_str_radix(&token[3..5], 16).ok())
                    .flatten()
            };
            let piece = match byte {
                Some(b) => {
                    bytes.push(b);
                    strip_space = false;
                    continue;
                }
                None if !llama || ty == TYPE_NORMAL => token.replace('\u{2581}', " "),
                None if matches!(ty, TYPE_CONTROL | TYPE_UNKNOWN | TYPE_USER_DEFINED) => token.clone(),
                None => continue,
            };
            flush(&mut bytes, &mut out);
            let piece = match piece.strip_prefix(' ') {
                Some(rest) if strip_space => rest,
                _ => piece.as_str(),
            };
            strip_space = false;
            out.push_str(piece);
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
    /// [`ChatTemplate::Gemma`] for the Gemma style; the default (unused: see
    /// [`Tokenizer::apply_chat_template`]) for the Llama style.
    fn chat_template(&self) -> ChatTemplate {
        match self.style {
            SpmStyle::Gemma => ChatTemplate::Gemma,
            SpmStyle::Llama => ChatTemplate::default(),
        }
    }
    /// Gemma style: [`ChatTemplate::Gemma`]. Llama style: the file's `tokenizer.chat_template` (an error
    /// when it has none, or without the `chat-template` feature).
    fn apply_chat_template(
        &self,
        messages: &[crate::data::Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        if self.style == SpmStyle::Gemma {
            return Ok(ChatTemplate::Gemma.apply(messages, add_generation_prompt));
        }
        #[cfg(feature = "chat-template")]
        if let Some(template) = &self.chat_template {
            return template.render(
                messages.iter().map(|m| (m.role.as_str(), m.content.as_str())),
                add_generation_prompt,
            );
        }
        Err(crate::error::Error::Data(crate::error::DataError::ChatTemplate {
            origin: "GGUF SentencePiece tokenizer".into(),
            message: if cfg!(feature = "chat-template") {
                "the GGUF file has no tokenizer.chat_template".into()
            } else {
                "rendering tokenizer.chat_template needs the crate feature `chat-template`".into()
            },
        }))
    }
}
