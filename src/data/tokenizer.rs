//! Tokenizers: a small trait (encode and decode), a byte-level implementation that needs no files, and (feature
//! `hf-tokenizers`) one backed by a Hugging Face `tokenizer.json`.
//!
//! [`encode_record`] turns a [`PreferenceRecord`] into token ids the way TRL does: the prompt and each
//! response are tokenized separately (so the prompt/response boundary is exact), the BOS token (if any)
//! starts the prompt — once: not again when the prompt's text already starts with it, as a chat template that
//! writes `bos_token` makes it — and the EOS token (if any) ends each response. Conversations are first rendered to
//! text with the tokenizer's [`ChatTemplate`]: the prompt with the generation prompt appended, each
//! response as the text the full conversation adds after it.

use crate::data::record::{Message, PreferenceRecord, Text};
use crate::error::{DataError, Error, Result};

/// A chat template: how a list of messages becomes text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChatTemplate {
    /// ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n` per message; generation prompt
    /// `<|im_start|>assistant\n`.
    #[default]
    ChatMl,
    /// Gemma: `<start_of_turn>{user|model}\n{content}<end_of_turn>\n` (role `assistant` → `model`); a
    /// system message is prepended to the first user turn (as Gemma's template does); generation prompt
    /// `<start_of_turn>model\n`. The BOS token is not part of the text (the tokenizer side adds it).
    Gemma,
}

impl ChatTemplate {
    /// Renders `messages`; with `add_generation_prompt`, appends the assistant turn opener.
    pub fn apply(self, messages: &[Message], add_generation_prompt: bool) -> String {
        let mut out = String::new();
        match self {
            ChatTemplate::ChatMl => {
                for m in messages {
                    out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
                }
                if add_generation_prompt {
                    out.push_str("<|im_start|>assistant\n");
                }
            }
            ChatTemplate::Gemma => {
                let mut system: Option<&str> = None;
                for m in messages {
                    if m.role == "system" {
                        system = Some(&m.content);
                        continue;
                    }
                    let role = if m.role == "assistant" {
                        "model"
                    } else {
                        m.role.as_str()
                    };
                    let content = match system.take() {
                        Some(s) if role == "user" => format!("{s}\n\n{}", m.content),
                        _ => m.content.clone(),
                    };
                    out.push_str(&format!("<start_of_turn>{role}\n{content}<end_of_turn>\n"));
                }
                if add_generation_prompt {
                    out.push_str("<start_of_turn>model\n");
                }
            }
        }
        out
    }
}

/// What the data pipeline needs from a tokenizer. Implementations must be deterministic.
pub trait Tokenizer: Send + Sync {
    /// Token ids of `text`, without special tokens (no BOS / EOS added).
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] if encoding fails.
    fn encode(&self, text: &str) -> Result<Vec<i64>>;
    /// The text of `ids` (e.g. generated tokens), with special tokens (padding, BOS, EOS, control
    /// tokens) left out. Ids outside `[0, V)` are skipped. Inverse of [`Tokenizer::encode`] for text
    /// that encodes without special tokens.
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] if decoding fails.
    fn decode(&self, ids: &[i64]) -> Result<String>;
    /// The vocabulary size `V` (every id is in `[0, V)`).
    fn vocab_size(&self) -> i64;
    /// The id used to pad input ids (padding is masked out and never scored).
    fn pad_id(&self) -> i64;
    /// The beginning-of-sequence id put before each prompt, if the model uses one.
    fn bos_id(&self) -> Option<i64>;
    /// The end-of-sequence id put after each response, if any.
    fn eos_id(&self) -> Option<i64>;
    /// The chat template used for conversational records (default [`ChatTemplate::ChatMl`]).
    fn chat_template(&self) -> ChatTemplate {
        ChatTemplate::ChatMl
    }
    /// Renders chat messages to text with [`Tokenizer::chat_template`].
    ///
    /// # Errors
    /// Implementations with their own templating may fail; the default does not.
    fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        Ok(self.chat_template().apply(messages, add_generation_prompt))
    }
}

/// Byte-level tokenizer: ids `0..=255` are the UTF-8 bytes, then `PAD = 256`, `BOS = 257`, `EOS = 258`
/// (`V = 259`). Needs no files; for tests, examples and byte-level models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteTokenizer {
    /// The chat template for conversational records.
    pub template: ChatTemplate,
}

impl ByteTokenizer {
    /// Padding id.
    pub const PAD: i64 = 256;
    /// Beginning-of-sequence id.
    pub const BOS: i64 = 257;
    /// End-of-sequence id.
    pub const EOS: i64 = 258;
    /// Vocabulary size.
    pub const VOCAB: i64 = 259;

    /// A byte tokenizer with the ChatML template.
    pub fn new() -> Self {
        Self::default()
    }

    /// The text of `ids` (special ids and invalid UTF-8 are dropped / replaced); the same as
    /// [`Tokenizer::decode`] without the `Result`.
    pub fn decode(&self, ids: &[i64]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter(|&&id| (0..256).contains(&id))
            .map(|&id| id as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Tokenizer for ByteTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<i64>> {
        Ok(text.bytes().map(i64::from).collect())
    }
    fn decode(&self, ids: &[i64]) -> Result<String> {
        Ok(ByteTokenizer::decode(self, ids))
    }
    fn vocab_size(&self) -> i64 {
        Self::VOCAB
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
    fn chat_template(&self) -> ChatTemplate {
        self.template
    }
}

/// A tokenized preference pair, before truncation and padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    /// Prompt ids (BOS first, if the tokenizer has one).
    pub prompt: Vec<i64>,
    /// Chosen-response ids (EOS last, if the tokenizer has one). Not empty.
    pub chosen: Vec<i64>,
    /// Rejected-response ids (EOS last, if the tokenizer has one). Not empty.
    pub rejected: Vec<i64>,
}

/// Tokenizes one record (see the [module docs](self)).
///
/// # Errors
/// [`DataError::Tokenizer`] if encoding fails, a response encodes to no token, or the chat template does not
/// render the prompt as a prefix of the full conversation.
pub fn encode_record(tokenizer: &dyn Tokenizer, record: &PreferenceRecord) -> Result<EncodedPair> {
    let (prompt_text, chosen_text, rejected_text) = match (&record.prompt, &record.chosen, &record.rejected) {
        (Text::Plain(p), Text::Plain(c), Text::Plain(r)) => (p.clone(), c.clone(), r.clone()),
        (Text::Conversation(p), Text::Conversation(c), Text::Conversation(r)) => {
            let prompt = tokenizer.apply_chat_template(p, true)?;
            let response = |messages: &[Message]| -> Result<String> {
                let full: Vec<Message> = p.iter().chain(messages).cloned().collect();
                let text = tokenizer.apply_chat_template(&full, false)?;
                text.strip_prefix(&prompt).map(str::to_string).ok_or_else(|| {
                    Error::Data(DataError::Tokenizer(
                        "the chat template does not render the prompt (with generation prompt) as a prefix \
                         of the full conversation"
                            .to_string(),
                    ))
                })
            };
            (prompt.clone(), response(c)?, response(r)?)
        }
        _ => {
            return Err(Error::Data(DataError::Tokenizer(
                "prompt and responses must all be plain text or all be conversations".to_string(),
            )))
        }
    };
    let prompt_ids = tokenizer.encode(&prompt_text)?;
    // One BOS: a chat template that writes it (Llama 3's `{{ bos_token }}`) already put it there.
    let bos = tokenizer.bos_id().filter(|bos| prompt_ids.first() != Some(bos));
    let mut prompt: Vec<i64> = bos.into_iter().collect();
    prompt.extend(prompt_ids);
    let response = |text: &str, name: &str| -> Result<Vec<i64>> {
        let mut ids = tokenizer.encode(text)?;
        ids.extend(tokenizer.eos_id());
        if ids.is_empty() {
            return Err(Error::Data(DataError::Tokenizer(format!(
                "the {name} response encodes to no token"
            ))));
        }
        Ok(ids)
    };
    Ok(EncodedPair {
        chosen: response(&chosen_text, "chosen")?,
        rejected: response(&rejected_text, "rejected")?,
        prompt,
    })
}

/// Tokenizes every record; `pairs[i]` belongs to `records[i]`.
///
/// # Errors
/// As [`encode_record`].
pub fn encode_records(tokenizer: &dyn Tokenizer, records: &[PreferenceRecord]) -> Result<Vec<EncodedPair>> {
    records.iter().map(|r| encode_record(tokenizer, r)).collect()
}

#[cfg(feature = "hf-tokenizers")]
pub use hf::{HfTokenizer, HfTokenizerConfig};

#[cfg(feature = "hf-tokenizers")]
mod hf {
    use super::{ChatTemplate, Tokenizer};
    use crate::error::{DataError, Error, Result};
    use std::path::Path;

    /// Special tokens and template of an [`HfTokenizer`], given as token strings.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct HfTokenizerConfig {
        /// BOS token, e.g. `"<bos>"` (Gemma); `None` for none.
        pub bos: Option<String>,
        /// EOS token, e.g. `"<eos>"`; `None` for none.
        pub eos: Option<String>,
        /// Padding token, e.g. `"<pad>"`. Required.
        pub pad: String,
        /// The chat template for conversational records.
        pub chat_template: ChatTemplate,
    }

    impl HfTokenizerConfig {
        /// Gemma's special tokens (`<bos>`, `<eos>`, `<pad>`) and chat template.
        pub fn gemma() -> Self {
            Self {
                bos: Some("<bos>".into()),
                eos: Some("<eos>".into()),
                pad: "<pad>".into(),
                chat_template: ChatTemplate::Gemma,
            }
        }
    }

    /// A tokenizer loaded from a Hugging Face `tokenizer.json` (feature `hf-tokenizers`).
    pub struct HfTokenizer {
        inner: tokenizers::Tokenizer,
        bos: Option<i64>,
        eos: Option<i64>,
        pad: i64,
        template: ChatTemplate,
    }

    impl std::fmt::Debug for HfTokenizer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("HfTokenizer")
                .field("vocab_size", &self.vocab_size())
                .field("bos", &self.bos)
                .field("eos", &self.eos)
                .field("pad", &self.pad)
                .finish()
        }
    }

    impl HfTokenizer {
        /// Loads `tokenizer.json` and looks up the special tokens of `config`.
        ///
        /// # Errors
        /// [`DataError::Tokenizer`](crate::DataError::Tokenizer) if the file cannot be loaded or a special token is not in the vocabulary.
        pub fn from_file(path: impl AsRef<Path>, config: &HfTokenizerConfig) -> Result<Self> {
            let path = path.as_ref();
            let inner = tokenizers::Tokenizer::from_file(path)
                .map_err(|e| Error::Data(DataError::Tokenizer(format!("{}: {e}", path.display()))))?;
            let id = |token: &str| -> Result<i64> {
                inner.token_to_id(token).map(i64::from).ok_or_else(|| {
                    Error::Data(DataError::Tokenizer(format!(
                        "special token {token:?} is not in the vocabulary"
                    )))
                })
            };
            Ok(Self {
                bos: config.bos.as_deref().map(id).transpose()?,
                eos: config.eos.as_deref().map(id).transpose()?,
                pad: id(&config.pad)?,
                template: config.chat_template,
                inner,
            })
        }
    }

    impl Tokenizer for HfTokenizer {
        fn encode(&self, text: &str) -> Result<Vec<i64>> {
            let encoding = self
                .inner
                .encode(text, false)
                .map_err(|e| Error::Data(DataError::Tokenizer(e.to_string())))?;
            Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
        }
        fn decode(&self, ids: &[i64]) -> Result<String> {
            let vocab = self.vocab_size();
            let ids: Vec<u32> = ids
                .iter()
                .filter(|&&id| (0..vocab).contains(&id))
                .map(|&id| id as u32)
                .collect();
            self.inner
                .decode(&ids, true)
                .map_err(|e| Error::Data(DataError::Tokenizer(e.to_string())))
        }
        fn vocab_size(&self) -> i64 {
            self.inner.get_vocab_size(true) as i64
        }
        fn pad_id(&self) -> i64 {
            self.pad
        }
        fn bos_id(&self) -> Option<i64> {
            self.bos
        }
        fn eos_id(&self) -> Option<i64> {
            self.eos
        }
        fn chat_template(&self) -> ChatTemplate {
            self.template
        }
    }
}
