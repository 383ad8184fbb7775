//! The SentencePiece vocabulary of a GGUF file (`tokenizer.ggml.*`), read once for both of its users: the
//! in-process [`GgufTokenizer`](super::GgufTokenizer) and the `tokenizer.json` export
//! ([`hf_tokenizer_files`](crate::models::gemma::export::hf_tokenizer_files)). The rules it applies (the
//! respelling of space-only tokens, merges recovered from the vocabulary) are described in
//! [`super::gguf`].

use std::collections::HashMap;

use crate::error::{DataError, Error, Result};
use crate::gguf::GgufFile;

/// SentencePiece token types (llama.cpp's numbering).
pub(crate) const TYPE_NORMAL: i64 = 1;
pub(crate) const TYPE_UNKNOWN: i64 = 2;
pub(crate) const TYPE_CONTROL: i64 = 3;
pub(crate) const TYPE_USER_DEFINED: i64 = 4;
pub(crate) const TYPE_BYTE: i64 = 6;

pub(crate) fn tokenizer_error(file: &GgufFile, message: impl std::fmt::Display) -> Error {
    Error::Data(DataError::Tokenizer(format!(
        "{}: {message}",
        file.path().display()
    )))
}

/// `tokenizer.ggml.{key}`, a token id checked against the vocabulary size `len`; `None` when absent.
///
/// # Errors
/// [`GgufError::Invalid`](crate::GgufError::Invalid) for a mistyped value; [`DataError::Tokenizer`] for an id
/// outside `[0, len)`.
pub(crate) fn special_id(file: &GgufFile, key: &str, len: usize) -> Result<Option<usize>> {
    let key = format!("tokenizer.ggml.{key}");
    if file.get(&key).is_none() {
        return Ok(None);
    }
    let id = file.get_i64(&key)?;
    match usize::try_from(id) {
        Ok(id) if id < len => Ok(Some(id)),
        _ => Err(tokenizer_error(
            file,
            format!("{key} = {id} is outside the vocabulary of {len} tokens"),
        )),
    }
}

/// `tokenizer.ggml.{key}` as a boolean, `default` when absent.
///
/// # Errors
/// [`GgufError::Invalid`](crate::GgufError::Invalid) for a value that is not a boolean.
pub(crate) fn flag(file: &GgufFile, key: &str, default: bool) -> Result<bool> {
    let key = format!("tokenizer.ggml.{key}");
    match file.get(&key) {
        Some(_) => file.get_bool(&key),
        None => Ok(default),
    }
}

/// `tokenizer.ggml.tokens` and `tokenizer.ggml.token_type`, checked to be of one length.
///
/// # Errors
/// [`GgufError::Invalid`](crate::GgufError::Invalid) for a missing or mistyped key; [`DataError::Tokenizer`]
/// for token types of another length than the tokens.
pub(crate) fn tokens_and_types(file: &GgufFile) -> Result<(Vec<String>, Vec<i64>)> {
    let tokens: Vec<String> = file
        .get_str_array("tokenizer.ggml.tokens")?
        .iter()
        .map(|t| t.to_string())
        .collect();
    let types = file.get_i64_array("tokenizer.ggml.token_type")?;
    if types.len() != tokens.len() {
        return Err(tokenizer_error(
            file,
            format!("{} token types for {} tokens", types.len(), tokens.len()),
        ));
    }
    Ok((tokens, types))
}

/// A GGUF file's SentencePiece vocabulary and special tokens, checked.
pub(crate) struct GgufVocab {
    /// Token strings as the file spells them, by id.
    pub raw: Vec<String>,
    /// Token strings respelled (space-only tokens of two or more spaces → `▁` runs), by id.
    pub tokens: Vec<String>,
    /// Token types, by id (same length as the tokens).
    pub types: Vec<i64>,
    pub bos: Option<usize>,
    pub eos: Option<usize>,
    pub unk: Option<usize>,
    pub pad: Option<usize>,
    /// `tokenizer.ggml.add_bos_token` (default true).
    pub add_bos: bool,
    /// `tokenizer.ggml.add_eos_token` (default false; read by Gemma's tokenizer export).
    #[cfg_attr(not(feature = "gemma"), allow(dead_code))]
    pub add_eos: bool,
}

impl GgufVocab {
    /// Reads and checks the vocabulary. `what_for` ends the error for a tokenizer model other than
    /// `"llama"`: "only SentencePiece (\"llama\") {what_for}".
    ///
    /// # Errors
    /// [`GgufError::Invalid`](crate::GgufError::Invalid) for a missing or mistyped key; [`DataError::Tokenizer`](crate::DataError::Tokenizer) for another tokenizer model,
    /// token types of another length than the tokens, or a special id outside the vocabulary.
    pub fn read(file: &GgufFile, what_for: &str) -> Result<Self> {
        let model = file.get_str("tokenizer.ggml.model")?;
        if model != "llama" {
            return Err(tokenizer_error(
                file,
                format!("tokenizer.ggml.model is {model:?}; only SentencePiece (\"llama\") {what_for}"),
            ));
        }
        let (raw, types) = tokens_and_types(file)?;
        let special = |key: &str| special_id(file, key, raw.len());
        let flag = |key: &str, default: bool| flag(file, key, default);
        let (bos, eos, unk, pad) = (
            special("bos_token_id")?,
            special("eos_token_id")?,
            special("unknown_token_id")?,
            special("padding_token_id")?,
        );
        let (add_bos, add_eos) = (flag("add_bos_token", true)?, flag("add_eos_token", false)?);
        let tokens = raw
            .iter()
            .map(|t| {
                if t.contains(' ') && t.trim().is_empty() {
                    "\u{2581}".repeat(t.chars().count())
                } else {
                    t.clone()
                }
            })
            .collect();
        Ok(Self {
            raw,
            tokens,
            types,
            bos,
            eos,
            unk,
            pad,
            add_bos,
            add_eos,
        })
    }

    /// Respelled token → id; a repeated token keeps its last id (as a Python dict built in order does).
    pub fn vocab(&self) -> HashMap<&str, usize> {
        let mut vocab = HashMap::with_capacity(self.tokens.len());
        for (id, token) in self.tokens.iter().enumerate() {
            vocab.insert(token.as_str(), id);
        }
        vocab
    }

    /// The merges recovered from `vocab`: every split of a token into two tokens, as
    /// `(merged id, left, right)`, in merge order (position of the merged token in the file, then longer
    /// left part first).
    pub fn merges<'v>(vocab: &HashMap<&'v str, usize>) -> Vec<(usize, &'v str, &'v str)> {
        let mut merges: Vec<(usize, usize, &str, &str)> = Vec::new();
        for (&token, &id) in vocab {
            for (chars_left, (at, _)) in token.char_indices().skip(1).enumerate() {
                let (left, right) = token.split_at(at);
                if vocab.contains_key(left) && vocab.contains_key(right) {
                    merges.push((id, chars_left + 1, left, right));
                }
            }
        }
        merges.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        merges.into_iter().map(|(id, _, l, r)| (id, l, r)).collect()
    }

    /// Whether token `id` is matched whole before anything else: control tokens, and user-defined ones
    /// whose file spelling is in the respelled vocabulary. Returns `Some(special)` (true for control
    /// tokens) for those.
    pub fn added_kind(&self, vocab: &HashMap<&str, usize>, id: usize) -> Option<bool> {
        match self.types[id] {
            TYPE_CONTROL => Some(true),
            TYPE_USER_DEFINED if vocab.contains_key(self.raw[id].as_str()) => Some(false),
            _ => None,
        }
    }
}

/// The file's chat template (`tokenizer.chat_template`), or `None` when the key is absent, with the texts of
/// the special tokens `[bos, eos, unk, pad]` (ids into `tokens`) for its `bos_token` / `eos_token` / … variables.
///
/// Errors: [`GgufError::Invalid`](crate::GgufError::Invalid) for a template that is not a string; those of
/// [`JinjaTemplate::new`](crate::chat::JinjaTemplate::new) for one that does not compile.
#[cfg(feature = "chat-template")]
pub(crate) fn chat_template(
    file: &GgufFile,
    tokens: &[String],
    [bos, eos, unk, pad]: [Option<usize>; 4],
) -> Result<Option<crate::chat::JinjaTemplate>> {
    if file.get("tokenizer.chat_template").is_none() {
        return Ok(None);
    }
    let text = |id: Option<usize>| id.and_then(|id| tokens.get(id).cloned());
    let special = crate::chat::SpecialTokens {
        bos: text(bos),
        eos: text(eos),
        unk: text(unk),
        pad: text(pad),
    };
    Ok(Some(crate::chat::JinjaTemplate::new(
        file.get_str("tokenizer.chat_template")?,
        format!("tokenizer.chat_template of {}", file.path().display()),
        special,
    )?))
}
