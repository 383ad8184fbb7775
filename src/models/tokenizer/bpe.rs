//! The byte-level BPE tokenizer of a GGUF file (`tokenizer.ggml.model` = "gpt2": Llama 3.x, Qwen2 / 2.5 / 3,
//! SmolLM2, GPT-2), built on the `tokenizers` crate the way the family's Hugging Face `tokenizer.json`
//! defines it, so that it gives the ids `transformers` gives:
//! - **model**: BPE over the file's tokens (`tokenizer.ggml.tokens`, id = position) and merges
//!   (`tokenizer.ggml.merges`, `"left right"`, rank = position), no unknown token (every byte is a token);
//!   with Llama 3's pre-tokenizer, a word that is a token itself is taken whole (`ignore_merges`);
//! - **pre-tokenizer**: the one `tokenizer.ggml.pre` names ([`BpePreTokenizer`]), then GPT-2's byte-level
//!   mapping (each UTF-8 byte → one printable character, `' '` → `Ġ`, `'\n'` → `Ċ`);
//! - **added tokens**, matched whole in the raw text before anything else: control tokens (type 3,
//!   `<|begin_of_text|>`, `<|im_start|>`, …; special: [`BpeTokenizer::decode_text`] can skip them) and
//!   user-defined ones (type 4, e.g. Qwen3's `<think>`; not special);
//! - **decoding**: byte-level characters back to bytes, then UTF-8 (U+FFFD for invalid sequences); no
//!   clean-up of spaces before punctuation, so `decode(encode(s)) == s`.
//!
//! The special ids come from `tokenizer.ggml.{bos,eos,eot,padding,unknown}_token_id`, and
//! `tokenizer.ggml.add_bos_token` (default: llama.cpp's, true for Llama 3 only) says whether a BOS token starts
//! each sequence. The chat template is `tokenizer.chat_template`, if the file has one.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::AddedToken;

use super::pre::BpePreTokenizer;
use super::vocab::{flag, special_id, tokenizer_error, tokens_and_types, TYPE_CONTROL, TYPE_USER_DEFINED};
use crate::chat::JinjaTemplate;
use crate::error::{DataError, Error, Result};
use crate::gguf::GgufFile;

/// A byte-level BPE tokenizer read from a GGUF file (see the [module docs](self)). With the `train`
/// feature it implements the data pipeline's `data::Tokenizer` (no BOS / EOS in `encode`; conversations
/// rendered with the file's chat template).
#[derive(Clone)]
pub struct BpeTokenizer {
    inner: tokenizers::Tokenizer,
    tokens: Vec<String>,
    types: Vec<i64>,
    pre: BpePreTokenizer,
    bos_id: Option<i64>,
    eos_id: Option<i64>,
    eot_id: Option<i64>,
    pad_id: Option<i64>,
    add_bos: bool,
    chat_template: Option<JinjaTemplate>,
}

impl std::fmt::Debug for BpeTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpeTokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("pre", &self.pre)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("eot_id", &self.eot_id)
            .field("pad_id", &self.pad_id)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl BpeTokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata and its `tokenizer.chat_template`.
    /// Takes a fraction of a second for Llama 3's 128,256 tokens and 280,147 merges.
    ///
    /// # Errors
    /// - [`GgufError::Invalid`](crate::GgufError::Invalid) for a missing or mistyped key (`model`, `pre`,
    ///   `tokens`, `token_type`, `merges`, a special id, `add_bos_token`, `chat_template`);
    /// - [`DataError::UnsupportedTokenizer`] naming `tokenizer.ggml.model` when it is not `"gpt2"`, or
    ///   `tokenizer.ggml.pre` when it is not one of [`BpePreTokenizer::SUPPORTED`];
    /// - [`DataError::Tokenizer`] for token types of another length than the tokens, a token listed twice, a
    ///   merge that is not two tokens separated by one space or whose parts or result are not tokens, or a
    ///   special id outside the vocabulary;
    /// - [`DataError::ChatTemplate`] for a chat template that does not compile.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let unsupported = |key: &'static str, found: &str, supported: &'static str| {
            Error::Data(DataError::UnsupportedTokenizer {
                source_name: file.path().display().to_string(),
                key,
                found: found.to_string(),
                supported,
            })
        };
        let model = file.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(unsupported(
                "tokenizer.ggml.model",
                model,
                "\"gpt2\" (byte-level BPE; SentencePiece \"llama\" is GgufTokenizer)",
            ));
        }
        let pre_name = file.get_str("tokenizer.ggml.pre")?;
        let pre = BpePreTokenizer::from_gguf_name(pre_name)
            .ok_or_else(|| unsupported("tokenizer.ggml.pre", pre_name, BpePreTokenizer::SUPPORTED))?;
        let (tokens, types) = tokens_and_types(file)?;
        let mut vocab = Vocab::with_capacity(tokens.len());
        for (id, token) in tokens.iter().enumerate() {
            if let Some(first) = vocab.insert(token.clone(), id as u32) {
                return Err(tokenizer_error(
                    file,
                    format!("token {token:?} is listed twice, at ids {first} and {id}"),
                ));
            }
        }
        let merges = file
            .get_str_array("tokenizer.ggml.merges")?
            .iter()
            .enumerate()
            .map(|(rank, merge)| match merge.split(' ').collect::<Vec<_>>()[..] {
                [left, right] if !left.is_empty() && !right.is_empty() => {
                    Ok((left.to_string(), right.to_string()))
                }
                _ => Err(tokenizer_error(
                    file,
                    format!("merge {rank} ({merge:?}) is not two tokens separated by one space"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre.ignore_merges())
            .build()
            .map_err(|e| tokenizer_error(file, format!("the merges do not fit the tokens: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_normalizer(pre.normalizer())
            .with_pre_tokenizer(Some(pre.pre_tokenizer()?))
            .with_decoder(Some(ByteLevelDecoder::default()));
        let added = |kind: i64, special: bool| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(&types)
                .filter(|(_, t)| **t == kind)
                .map(|(token, _)| AddedToken::from(token.clone(), special).normalized(false))
                .collect()
        };
        inner.add_special_tokens(&added(TYPE_CONTROL, true));
        inner.add_tokens(&added(TYPE_USER_DEFINED, false));
        let special = |key: &str| -> Result<Option<i64>> {
            Ok(special_id(file, key, tokens.len())?.map(|id| id as i64))
        };
        let (bos_id, eos_id, eot_id, pad_id, unk_id) = (
            special("bos_token_id")?,
            special("eos_token_id")?,
            special("eot_token_id")?,
            special("padding_token_id")?,
            special("unknown_token_id")?,
        );
        let add_bos = flag(file, "add_bos_token", pre.default_add_bos())?;
        let index = |id: Option<i64>| id.map(|id| id as usize);
        let chat_template = super::vocab::chat_template(
            file,
            &tokens,
            [index(bos_id), index(eos_id), index(unk_id), index(pad_id)],
        )?;
        Ok(Self {
            inner,
            tokens,
            types,
            pre,
            bos_id,
            eos_id,
            eot_id,
            pad_id,
            add_bos,
            chat_template,
        })
    }

    /// The `tokenizers` pipeline as a `tokenizer.json` document (no post-processor).
    pub(crate) fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| Error::Data(DataError::Tokenizer(format!("serializing the tokenizer: {e}"))))
    }

    /// The vocabulary size `V` (every id is in `[0, V)`).
    pub fn vocab_size(&self) -> i64 {
        self.tokens.len() as i64
    }

    /// The pre-tokenizer (`tokenizer.ggml.pre`).
    pub fn pre_tokenizer(&self) -> BpePreTokenizer {
        self.pre
    }

    /// The BOS id to put before each sequence: `tokenizer.ggml.bos_token_id` when a BOS token is added
    /// ([`BpeTokenizer::add_bos`]), else `None`.
    pub fn bos_id(&self) -> Option<i64> {
        self.bos_id.filter(|_| self.add_bos)
    }

    /// `tokenizer.ggml.bos_token_id`, whether or not a BOS token is added.
    pub fn bos_token_id(&self) -> Option<i64> {
        self.bos_id
    }

    /// The end-of-sequence id (`tokenizer.ggml.eos_token_id`), if any.
    pub fn eos_id(&self) -> Option<i64> {
        self.eos_id
    }

    /// The end-of-turn id (`tokenizer.ggml.eot_token_id`, e.g. Llama 3's `<|eot_id|>`), if any.
    pub fn eot_id(&self) -> Option<i64> {
        self.eot_id
    }

    /// The padding id: `tokenizer.ggml.padding_token_id`, else the EOS id, else 0 (padding is masked out,
    /// so any id in the vocabulary serves).
    pub fn pad_id(&self) -> i64 {
        self.pad_id.or(self.eos_id).unwrap_or(0)
    }

    /// Whether a BOS token starts each sequence (`tokenizer.ggml.add_bos_token`, else
    /// [`BpePreTokenizer::default_add_bos`]).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The token string of `id` (byte-level spelling, e.g. `"Ġthe"`), if `id` is in the vocabulary.
    pub fn token(&self, id: i64) -> Option<&str> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.tokens.get(i))
            .map(String::as_str)
    }

    /// The id of a token string as the vocabulary spells it (e.g. `"<|eot_id|>"`, `"Ġthe"`).
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    /// The GGUF token type of `id` (1 normal, 3 control, 4 user-defined, 5 unused, …).
    pub fn token_type(&self, id: i64) -> Option<i64> {
        usize::try_from(id).ok().and_then(|i| self.types.get(i)).copied()
    }

    /// The chat template of the file (`tokenizer.chat_template`), if it has one.
    pub fn chat_template(&self) -> Option<&JinjaTemplate> {
        self.chat_template.as_ref()
    }

    /// Replaces the chat template (e.g. with one from a `tokenizer_config.json`, or none).
    pub fn set_chat_template(&mut self, template: Option<JinjaTemplate>) {
        self.chat_template = template;
    }

    /// Token ids of `text` (no BOS / EOS added; added tokens written in the text are recognized).
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] if the `tokenizers` pipeline fails.
    pub fn encode_text(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Data(DataError::Tokenizer(format!("encoding {text:?}: {e}"))))?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    /// The text of `ids`; control tokens (`<|eot_id|>`, `<|im_end|>`, …) dropped when `skip_special`. Ids
    /// outside the vocabulary are skipped.
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] if the `tokenizers` pipeline fails.
    pub fn decode_text(&self, ids: &[i64], skip_special: bool) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .filter(|&&id| (0..self.vocab_size()).contains(&id))
            .map(|&id| id as u32)
            .collect();
        self.inner
            .decode(&ids, skip_special)
            .map_err(|e| Error::Data(DataError::Tokenizer(format!("decoding: {e}"))))
    }

    /// Renders `messages` (`(role, content)` pairs) with the file's chat template (see
    /// [`JinjaTemplate::render`]).
    ///
    /// # Errors
    /// [`DataError::ChatTemplate`] if the file has no chat template or rendering fails.
    pub fn apply_chat_template<'m>(
        &self,
        messages: impl IntoIterator<Item = (&'m str, &'m str)>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.template()?.render(messages, add_generation_prompt)
    }

    fn template(&self) -> Result<&JinjaTemplate> {
        self.chat_template.as_ref().ok_or_else(|| {
            Error::Data(DataError::ChatTemplate {
                origin: format!("{} tokenizer", self.pre.gguf_name()),
                message: "the GGUF file has no tokenizer.chat_template (set one with set_chat_template)"
                    .into(),
            })
        })
    }
}

/// The data pipeline's tokenizer (feature `train`): the inherent methods of the same names.
#[cfg(feature = "train")]
impl crate::data::Tokenizer for BpeTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<i64>> {
        self.encode_text(text)
    }
    /// [`BpeTokenizer::decode_text`] with control tokens skipped.
    fn decode(&self, ids: &[i64]) -> Result<String> {
        self.decode_text(ids, true)
    }
    fn vocab_size(&self) -> i64 {
        BpeTokenizer::vocab_size(self)
    }
    fn pad_id(&self) -> i64 {
        BpeTokenizer::pad_id(self)
    }
    fn bos_id(&self) -> Option<i64> {
        BpeTokenizer::bos_id(self)
    }
    fn eos_id(&self) -> Option<i64> {
        BpeTokenizer::eos_id(self)
    }
    /// The file's chat template ([`BpeTokenizer::apply_chat_template`]); a file without one is an error,
    /// not a fallback to another template.
    fn apply_chat_template(
        &self,
        messages: &[crate::data::Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        BpeTokenizer::apply_chat_template(
            self,
            messages.iter().map(|m| (m.role.as_str(), m.content.as_str())),
            add_generation_prompt,
        )
    }
}
