//! The Llama family's byte-level BPE tokenizer converted between a Hugging Face folder and GGUF metadata,
//! both ways, for the writers:
//!
//! - [`hf_bpe_to_gguf`]: a folder's `tokenizer.json` (+ `tokenizer_config.json`, `chat_template.jinja`,
//!   `config.json`) → the `tokenizer.*` keys llama.cpp's `convert_hf_to_gguf.py` writes for a byte-level
//!   BPE (`_set_vocab_gpt2`: `get_vocab_base` and gguf-py's `SpecialVocab`), used by a GGUF export from a
//!   [`TokenizerSource::HfDir`](super::TokenizerSource::HfDir);
//! - [`gguf_bpe_to_hf`]: a GGUF `gpt2` tokenizer → `tokenizer.json` + `tokenizer_config.json` that
//!   transformers loads (`PreTrainedTokenizerFast`) and that tokenize as
//!   [`BpeTokenizer::from_gguf`](crate::models::tokenizer::BpeTokenizer::from_gguf), used by a folder
//!   export from a [`TokenizerSource::Gguf`](super::TokenizerSource::Gguf).
//!
//! Both need the crate feature `bpe-tokenizer` (on by default); without it they return
//! [`InputError::Config`](crate::InputError::Config) naming the feature.
// Without `bpe-tokenizer` only the refusing stubs below are used.
#![cfg_attr(not(feature = "bpe-tokenizer"), allow(dead_code, unused_imports))]

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{DataError, Error, Result};
use crate::gguf::{GgufFile, GgufValue, GgufValueType};

/// llama.cpp's token types, as the converter writes them.
const TYPE_NORMAL: i32 = 1;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;

/// The special token kinds of gguf-py's `SpecialVocab`, in its order, with their GGUF id keys.
const SPECIAL_KINDS: [(&str, &str); 7] = [
    ("bos", "bos_token_id"),
    ("eos", "eos_token_id"),
    ("unk", "unknown_token_id"),
    ("sep", "seperator_token_id"),
    ("pad", "padding_token_id"),
    ("cls", "cls_token_id"),
    ("mask", "mask_token_id"),
];

fn tokenizer_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Data(DataError::Tokenizer(format!("{}: {message}", path.display())))
}

fn unsupported(path: &Path, key: &'static str, found: String, supported: &'static str) -> Error {
    Error::Data(DataError::UnsupportedTokenizer {
        source_name: path.display().to_string(),
        key,
        found,
        supported,
    })
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| tokenizer_error(path, format!("not valid JSON: {e}")))
}

fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

fn string_array(values: impl IntoIterator<Item = String>) -> GgufValue {
    GgufValue::Array {
        elem: GgufValueType::String,
        values: values.into_iter().map(GgufValue::String).collect(),
    }
}

/// The `tokenizer.ggml.pre` name of a `tokenizer.json`'s normalizer and pre-tokenizer, for the four
/// pre-tokenizers [`BpePreTokenizer`](crate::models::tokenizer::BpePreTokenizer) implements, as the family's
/// `tokenizer.json` spells them (llama.cpp's converter hashes a tokenization instead; matching the
/// definition gives the same names for these families).
#[cfg(feature = "bpe-tokenizer")]
fn pre_tokenizer_name(path: &Path, spec: &Value) -> Result<&'static str> {
    use crate::models::tokenizer::{LLAMA3_REGEX, QWEN2_REGEX};
    const SUPPORTED: &str = "the Split regex of Llama 3 (llama-bpe) or Qwen2 (qwen2) followed by \
        ByteLevel(use_regex=false), Digits(individual_digits) + ByteLevel (smollm), ByteLevel (gpt-2)";
    let pre = &spec["pre_tokenizer"];
    let steps: Vec<&Value> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Some(_) => vec![pre],
        None => Vec::new(),
    };
    let kind = |v: &Value| v["type"].as_str().unwrap_or("").to_string();
    let byte_level = |v: &Value, use_regex: bool| {
        kind(v) == "ByteLevel"
            && v["add_prefix_space"].as_bool() != Some(true)
            && v["use_regex"].as_bool().unwrap_or(true) == use_regex
    };
    let normalizer = match &spec["normalizer"] {
        Value::Null => None,
        other => Some(kind(other)),
    };
    let name = match steps[..] {
        [split, level] if kind(split) == "Split" && byte_level(level, false) => {
            let regex = split["pattern"]["Regex"].as_str().unwrap_or("");
            let isolated = split["behavior"].as_str() == Some("Isolated") && split["invert"] != json!(true);
            match (regex, isolated) {
                (r, true) if r == LLAMA3_REGEX => Some("llama-bpe"),
                (r, true) if r == QWEN2_REGEX => Some("qwen2"),
                _ => {
                    let found = split["pattern"].to_string();
                    return Err(unsupported(path, "pre_tokenizer Split pattern", found, SUPPORTED));
                }
            }
        }
        [digits, level]
            if kind(digits) == "Digits"
                && digits["individual_digits"].as_bool() == Some(true)
                && byte_level(level, true) =>
        {
            Some("smollm")
        }
        [level] if byte_level(level, true) => Some("gpt-2"),
        _ => None,
    };
    let name = name.ok_or_else(|| unsupported(path, "pre_tokenizer", pre.to_string(), SUPPORTED))?;
    let expected_normalizer = (name == "qwen2").then(|| "NFC".to_string());
    if normalizer.is_some() && normalizer != expected_normalizer {
        return Err(unsupported(
            path,
            "normalizer",
            spec["normalizer"].to_string(),
            "none, or NFC with Qwen2's pre-tokenizer",
        ));
    }
    Ok(name)
}

/// The merges of a `tokenizer.json` BPE model as GGUF spells them (`"left right"`): strings as they are,
/// `["left", "right"]` pairs joined by a space with the spaces inside a part written `Ġ` (U+0120), as
/// gguf-py's `SpecialVocab` does.
fn gguf_merges(path: &Path, merges: &Value) -> Result<Vec<String>> {
    let Some(merges) = merges.as_array() else {
        return Err(tokenizer_error(path, "model.merges is not a list"));
    };
    merges
        .iter()
        .enumerate()
        .map(|(rank, merge)| match merge {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) => match &pair[..] {
                [Value::String(a), Value::String(b)] => {
                    let respell = |s: &str| s.replace(' ', "\u{120}");
                    Ok(format!("{} {}", respell(a), respell(b)))
                }
                _ => Err(tokenizer_error(
                    path,
                    format!("merge {rank} ({merge}) is not two strings"),
                )),
            },
            other => Err(tokenizer_error(
                path,
                format!("merge {rank} ({other}) is not a string or a pair"),
            )),
        })
        .collect()
}

/// Whether an added token looks special to llama.cpp's converter (`does_token_look_special`).
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<\u{ff5c}") && token.ends_with("\u{ff5c}>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// A special token of `tokenizer_config.json`: a string or `{"content": …}`.
fn config_token(config: &Value, key: &str) -> Option<String> {
    let value = config.get(key)?;
    value
        .as_str()
        .or_else(|| value.get("content").and_then(Value::as_str))
        .map(str::to_string)
        .filter(|s| !s.is_empty())
}

/// The `tokenizer.*` GGUF metadata of the byte-level BPE tokenizer of the Hugging Face folder `dir`, as
/// llama.cpp's `convert_hf_to_gguf.py` writes it (`_set_vocab_gpt2`) for a model of `vocab_size` tokens:
///
/// - `tokenizer.ggml.model` = `"gpt2"`; `tokenizer.ggml.pre` named from the `tokenizer.json` normalizer and
///   pre-tokenizer: Llama 3's Split regex ([`LLAMA3_REGEX`](crate::models::tokenizer::LLAMA3_REGEX)) +
///   ByteLevel → `llama-bpe`, NFC + Qwen2's ([`QWEN2_REGEX`](crate::models::tokenizer::QWEN2_REGEX)) →
///   `qwen2`, Digits(individual) + ByteLevel → `smollm`, ByteLevel → `gpt-2`;
/// - `tokenizer.ggml.tokens`: the vocabulary and added tokens by id, ids without a token (below
///   `vocab_size`) as `[PAD{id}]`; `tokenizer.ggml.token_type`: 1 normal, 3 control (an added token marked
///   special or that looks special: `<|…|>`, `<pad>`, …), 4 user-defined (other added tokens, `▁` written as
///   a space), 5 for the `[PAD…]` fillers;
/// - `tokenizer.ggml.merges` (both `tokenizer.json` spellings, see gguf-py's `SpecialVocab`);
/// - as `SpecialVocab` reads them: `add_bos_token` / `add_eos_token` / `add_sep_token` from a
///   `TemplateProcessing` post-processor, then from `tokenizer_config.json`'s `add_bos_token` / `add_eos_token`; the ids of its
///   `bos_token`, `eos_token`, `unk_token`, `sep_token`, `pad_token`, `cls_token`, `mask_token` (looked up
///   among the added tokens), else `config.json`'s `*_token_id`; `tokenizer.chat_template` from
///   `tokenizer_config.json`, else `chat_template.jinja` (only with a `tokenizer_config.json`, as the
///   converter).
///
/// Not converted: the converter's re-normalization of non-normalized added tokens (an encode / decode round
/// trip in transformers; the byte-level added tokens of these families come back unchanged), a
/// `RobertaProcessing` post-processor, a template's trailing special token other than EOS (the
/// converter's EOT / EOM fallback), named chat templates.
///
/// # Errors
/// [`DataError::Tokenizer`] naming `dir` when it holds no `tokenizer.json`; [`DataError::UnsupportedTokenizer`] naming
/// `model.type` for a model other than `BPE` (Unigram, WordPiece, …), `model.byte_fallback` for a
/// SentencePiece-style BPE, `pre_tokenizer Split pattern` for an unknown split regex, `pre_tokenizer` or
/// `normalizer` for another pipeline; [`DataError::Tokenizer`] for malformed JSON, merges or ids, a token id
/// not below `vocab_size`, or two tokens at one id;
/// [`InputError::Config`](crate::InputError::Config) naming `bpe-tokenizer` without that feature.
#[cfg(feature = "bpe-tokenizer")]
pub fn hf_bpe_to_gguf(dir: &Path, vocab_size: i64) -> Result<Vec<(String, GgufValue)>> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(tokenizer_error(
            dir,
            "holds no tokenizer.json (a GGUF export converts a byte-level BPE tokenizer.json)",
        ));
    }
    let spec = read_json(&path)?;
    let model = &spec["model"];
    let model_type = model["type"].as_str().unwrap_or("");
    if model_type != "BPE" {
        return Err(unsupported(
            &path,
            "model.type",
            model_type.to_string(),
            "\"BPE\" (byte-level; Unigram, WordPiece and WordLevel are not converted)",
        ));
    }
    if model["byte_fallback"].as_bool() == Some(true) {
        return Err(unsupported(
            &path,
            "model.byte_fallback",
            "true".into(),
            "false (a byte-level BPE; SentencePiece-style BPE is not converted)",
        ));
    }
    let pre = pre_tokenizer_name(&path, &spec)?;
    let (tokens, types) = tokens_and_types(&path, &spec, vocab_size)?;
    let merges = gguf_merges(&path, &model["merges"])?;
    let mut out = vec![
        (
            "tokenizer.ggml.model".to_string(),
            GgufValue::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), GgufValue::String(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), string_array(tokens)),
        (
            "tokenizer.ggml.token_type".to_string(),
            GgufValue::Array {
                elem: GgufValueType::I32,
                values: types.into_iter().map(GgufValue::I32).collect(),
            },
        ),
    ];
    if !merges.is_empty() {
        out.push(("tokenizer.ggml.merges".to_string(), string_array(merges)));
    }
    out.extend(special_vocab(dir, &spec)?);
    Ok(out)
}

/// Without the `bpe-tokenizer` feature: [`InputError::Config`](crate::InputError::Config) naming it.
#[cfg(not(feature = "bpe-tokenizer"))]
pub fn hf_bpe_to_gguf(dir: &Path, _vocab_size: i64) -> Result<Vec<(String, GgufValue)>> {
    Err(missing_feature(dir))
}

#[cfg(not(feature = "bpe-tokenizer"))]
fn missing_feature(source: &Path) -> Error {
    Error::Input(crate::InputError::Config {
        name: "bpe-tokenizer",
        requirement: format!(
            "converting the byte-level BPE tokenizer of {} needs the crate feature `bpe-tokenizer`",
            source.display()
        ),
    })
}

/// The tokens and token types by id (`get_vocab_base`).
fn tokens_and_types(path: &Path, spec: &Value, vocab_size: i64) -> Result<(Vec<String>, Vec<i32>)> {
    let size = usize::try_from(vocab_size)
        .map_err(|_| tokenizer_error(path, format!("vocab_size {vocab_size} is negative")))?;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; size];
    let id_of = |value: &Value, token: &str| -> Result<usize> {
        match value.as_u64().and_then(|id| usize::try_from(id).ok()) {
            Some(id) if id < size => Ok(id),
            _ => Err(tokenizer_error(
                path,
                format!("token {token:?} has id {value}, not below the model's vocab_size {vocab_size}"),
            )),
        }
    };
    let vocab = spec["model"]["vocab"]
        .as_object()
        .ok_or_else(|| tokenizer_error(path, "model.vocab is not an object"))?;
    for (token, id) in vocab {
        let id = id_of(id, token)?;
        if let Some((first, _)) = &tokens[id] {
            return Err(tokenizer_error(
                path,
                format!("tokens {first:?} and {token:?} share id {id}"),
            ));
        }
        tokens[id] = Some((token.clone(), TYPE_NORMAL));
    }
    for added in spec["added_tokens"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let content = added["content"]
            .as_str()
            .ok_or_else(|| tokenizer_error(path, format!("added token {added} has no content")))?;
        let id = id_of(&added["id"], content)?;
        let entry = if added["special"].as_bool() == Some(true) || looks_special(content) {
            (content.to_string(), TYPE_CONTROL)
        } else {
            (content.replace('\u{2581}', " "), TYPE_USER_DEFINED)
        };
        tokens[id] = Some(entry);
    }
    Ok(tokens
        .into_iter()
        .enumerate()
        .map(|(id, entry)| entry.unwrap_or_else(|| (format!("[PAD{id}]"), TYPE_UNUSED)))
        .unzip())
}

fn set_add(add: &mut Vec<(&'static str, bool)>, kind: &'static str, value: bool) {
    match add.iter_mut().find(|(k, _)| *k == kind) {
        Some(entry) => entry.1 = value,
        None => add.push((kind, value)),
    }
}

/// The `add_bos` / `add_eos` / `add_sep` flags of a `TemplateProcessing` post-processor, read as gguf-py's
/// `SpecialVocab` reads them: a leading special token of the single-sequence template that is the BOS (or
/// CLS) token adds BOS, a trailing one that is the EOS token adds EOS, a separator between `A` and `B` in
/// the pair template that is the SEP or EOS token adds SEP (and names the SEP token when none is).
/// Special tokens of `tokenizer_config.json` count only written as strings, as there.
fn template_flags(processor: &Value, config: Option<&mut Value>, add: &mut Vec<(&'static str, bool)>) {
    let single = processor["single"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let pair = processor["pair"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let special = |item: &Value| item["SpecialToken"]["id"].as_str().map(str::to_string);
    let known = |config: &Option<&mut Value>, key: &str| -> Option<String> {
        config.as_ref().and_then(|c| c[key].as_str().map(str::to_string))
    };
    let has_config = config.is_some();
    let (mut first, mut last) = (None, None);
    if single.len() > 1 {
        first = special(&single[0]);
        if let Some(token) = &first {
            let bos = if has_config {
                known(&config, "bos_token")
            } else {
                Some(token.clone())
            };
            let is_bos = Some(token) == bos.as_ref() || Some(token) == known(&config, "cls_token").as_ref();
            set_add(add, "bos", is_bos);
        }
        last = special(&single[single.len() - 1]);
        if let Some(token) = &last {
            let eos = if has_config {
                known(&config, "eos_token")
            } else {
                Some(token.clone())
            };
            set_add(add, "eos", Some(token) == eos.as_ref());
        }
    }
    if pair.is_empty() {
        return;
    }
    let start = usize::from(first.is_some() && special(&pair[0]) == first);
    let stop = pair.len() - usize::from(last.is_some() && special(&pair[pair.len() - 1]) == last);
    let inner = &pair[start.min(stop)..stop];
    let sequence = |item: &Value| item["Sequence"]["id"].as_str().map(str::to_string);
    let (Some(a), Some(b)) = (inner.first(), inner.last()) else {
        return;
    };
    if sequence(a).as_deref() != Some("A") || sequence(b).as_deref() != Some("B") || inner.len() < 3 {
        return;
    }
    let middle = &inner[1..inner.len() - 1];
    let sep = known(&config, "sep_token");
    let eos = if has_config {
        known(&config, "eos_token")
    } else {
        last.clone()
    };
    let separates =
        |item: &Value| special(item).is_some_and(|t| Some(&t) == sep.as_ref() || Some(&t) == eos.as_ref());
    let mut add_sep = separates(&middle[0]) && last.is_none();
    if middle.len() == 2 && separates(&middle[1]) {
        add_sep = true;
    }
    set_add(add, "sep", add_sep);
    if add_sep && sep.is_none() {
        if let (Some(config), Some(eos)) = (config, eos) {
            config["sep_token"] = json!(eos);
        }
    }
}

/// The special ids, `add_*_token` flags and chat template, as gguf-py's `SpecialVocab` reads them.
fn special_vocab(dir: &Path, spec: &Value) -> Result<Vec<(String, GgufValue)>> {
    let config_path = dir.join("tokenizer_config.json");
    let mut config = read_optional_json(&config_path)?;
    let mut add: Vec<(&'static str, bool)> = Vec::new();
    if let Some(config) = config.as_mut().filter(|c| c.is_object()) {
        // A missing BOS / EOS is taken from CLS / SEP.
        for (main, alternative) in [("bos_token", "cls_token"), ("eos_token", "sep_token")] {
            if config_token(config, main).is_none() {
                if let Some(value) = config.get(alternative).cloned().filter(|v| !v.is_null()) {
                    config[main] = value;
                }
            }
        }
    }
    let post = &spec["post_processor"];
    let processors: Vec<&Value> = match post["processors"].as_array() {
        Some(list) => list.iter().collect(),
        None if post.is_object() => vec![post],
        None => Vec::new(),
    };
    for processor in processors {
        if processor["type"].as_str() == Some("TemplateProcessing") {
            template_flags(processor, config.as_mut(), &mut add);
        }
    }
    let mut out: Vec<(String, GgufValue)> = Vec::new();
    let mut ids: Vec<(&str, i64)> = Vec::new();
    if let Some(config) = config.as_ref() {
        let jinja = dir.join("chat_template.jinja");
        let template = match config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => None,
            None if jinja.is_file() => {
                Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
            }
            None => None,
        };
        let added = spec["added_tokens"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (kind, _) in SPECIAL_KINDS {
            if let Some(flag) = config.get(format!("add_{kind}_token")).and_then(Value::as_bool) {
                set_add(&mut add, kind, flag);
            }
            let Some(content) = config_token(config, &format!("{kind}_token")) else {
                continue;
            };
            let id = added
                .iter()
                .find(|a| a["content"].as_str() == Some(content.as_str()))
                .and_then(|a| a["id"].as_i64());
            if let Some(id) = id {
                if !ids.iter().any(|(k, _)| *k == kind) {
                    ids.push((kind, id));
                }
            }
        }
        if let Some(template) = template {
            out.push(("tokenizer.chat_template".into(), GgufValue::String(template)));
        }
    }
    if let Some(model_config) = read_optional_json(&dir.join("config.json"))? {
        for (kind, _) in SPECIAL_KINDS {
            if let Some(id) = model_config
                .get(format!("{kind}_token_id"))
                .and_then(Value::as_i64)
            {
                if !ids.iter().any(|(k, _)| *k == kind) {
                    ids.push((kind, id));
                }
            }
        }
    }
    for (kind, id) in ids {
        let key = SPECIAL_KINDS
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, key)| *key)
            .unwrap_or(kind);
        let id = u32::try_from(id)
            .map_err(|_| tokenizer_error(dir, format!("the {kind} token id {id} is not a valid id")))?;
        out.push((format!("tokenizer.ggml.{key}"), GgufValue::U32(id)));
    }
    for (kind, flag) in add {
        if matches!(kind, "bos" | "eos" | "sep") {
            out.push((format!("tokenizer.ggml.add_{kind}_token"), GgufValue::Bool(flag)));
        }
    }
    Ok(out)
}

/// The `tokenizer.json` and `tokenizer_config.json` of the byte-level BPE (`gpt2`) tokenizer of a GGUF
/// file, which transformers (`AutoTokenizer`, `PreTrainedTokenizerFast`) and the `tokenizers` package load
/// and which tokenize as [`BpeTokenizer::from_gguf`](crate::models::tokenizer::BpeTokenizer::from_gguf)
/// (the `tokenizer.json` is its pipeline, serialized):
///
/// - `tokenizer.json`: the BPE model (tokens by id, merges by rank, `ignore_merges` for `llama-bpe`),
///   Qwen2's NFC normalizer, the pre-tokenizer of `tokenizer.ggml.pre` (Split regex + ByteLevel without
///   regex, or GPT-2's ByteLevel), the ByteLevel decoder, the control (special) and user-defined (not
///   special) tokens as added tokens, and a `TemplateProcessing` post-processor that puts the BOS token
///   first when a BOS is added (`tokenizer.ggml.add_bos_token`, else llama.cpp's default);
/// - `tokenizer_config.json`: `tokenizer_class` `PreTrainedTokenizerFast`, `bos_token`, `eos_token`,
///   `pad_token`, `unk_token` (those the file names; `null` otherwise), `add_bos_token`, `add_eos_token`
///   = false, `clean_up_tokenization_spaces` = false, `chat_template` (`tokenizer.chat_template`, when
///   present).
///
/// # Errors
/// Those of [`BpeTokenizer::from_gguf`](crate::models::tokenizer::BpeTokenizer::from_gguf) (e.g.
/// [`DataError::UnsupportedTokenizer`] for a `tokenizer.ggml.model` other than `gpt2` or an unknown
/// `tokenizer.ggml.pre`); [`DataError::Tokenizer`] if the pipeline cannot be serialized;
/// [`InputError::Config`](crate::InputError::Config) naming `bpe-tokenizer` without that feature.
#[cfg(feature = "bpe-tokenizer")]
pub fn gguf_bpe_to_hf(file: &GgufFile) -> Result<(Value, Value)> {
    let tokenizer = crate::models::tokenizer::BpeTokenizer::from_gguf(file)?;
    let mut spec: Value = serde_json::from_str(&tokenizer.to_json()?)
        .map_err(|e| Error::Data(DataError::Tokenizer(format!("serializing the tokenizer: {e}"))))?;
    let text = |id: Option<i64>| id.and_then(|id| tokenizer.token(id)).map(str::to_string);
    let bos = text(tokenizer.bos_token_id());
    let eos = text(tokenizer.eos_id());
    let special = |key: &str| -> Result<Option<i64>> {
        let len = tokenizer.vocab_size() as usize;
        Ok(crate::models::tokenizer::vocab::special_id(file, key, len)?.map(|id| id as i64))
    };
    let pad = text(special("padding_token_id")?);
    let unk = text(special("unknown_token_id")?);
    spec["post_processor"] = match (&bos, tokenizer.bos_id()) {
        (Some(bos), Some(id)) => json!({
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [id], "tokens": [bos]}},
        }),
        _ => Value::Null,
    };
    let mut config = Map::new();
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    config.insert("bos_token".into(), json!(bos));
    config.insert("eos_token".into(), json!(eos));
    config.insert("pad_token".into(), json!(pad));
    config.insert("unk_token".into(), json!(unk));
    config.insert("add_bos_token".into(), json!(tokenizer.add_bos()));
    config.insert("add_eos_token".into(), json!(false));
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    if file.get("tokenizer.chat_template").is_some() {
        config.insert(
            "chat_template".into(),
            json!(file.get_str("tokenizer.chat_template")?),
        );
    }
    Ok((spec, Value::Object(config)))
}

/// Without the `bpe-tokenizer` feature: [`InputError::Config`](crate::InputError::Config) naming it.
#[cfg(not(feature = "bpe-tokenizer"))]
pub fn gguf_bpe_to_hf(file: &GgufFile) -> Result<(Value, Value)> {
    Err(missing_feature(file.path()))
}
