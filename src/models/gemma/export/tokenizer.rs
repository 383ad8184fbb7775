//! Hugging Face tokenizer files (`tokenizer.json`, `tokenizer_config.json`) from the tokenizer metadata of a
//! Gemma GGUF file.
//!
//! The files describe the tokenizer `transformers` builds from the same GGUF (its `gemma_tokenizer` in
//! `integrations/gguf/gguf_tokenizer_mapping.py`, and [`GgufTokenizer`](crate::models::tokenizer::GgufTokenizer)
//! here), so the saved folder tokenizes exactly like the GGUF it came from:
//! - a BPE model with byte fallback over the file's tokens, tokens of two or more spaces respelled with `▁`;
//! - the merges recovered from the vocabulary: every split of a token into two tokens, ordered by the
//!   position of the merged token in the file, then longer left part first (transformers'
//!   `generate_merges` with the file positions as scores);
//! - control tokens (type 3) as special added tokens, user-defined ones (type 4) that are in the vocabulary
//!   as plain added tokens, neither normalized;
//! - normalizer `" "` → `▁`, pre-tokenizer split on `" "` merged with the previous piece, decoder `▁` → `" "`
//!   then byte fallback then fuse; BOS / EOS added as `tokenizer.ggml.add_bos_token` /
//!   `add_eos_token` say (default BOS yes, EOS no, as llama.cpp does for a SentencePiece vocabulary).

use serde_json::{json, Map, Value};

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::models::tokenizer::vocab::GgufVocab;

/// The tokenizer files of a Gemma GGUF: `(tokenizer.json, tokenizer_config.json)` as JSON values.
///
/// # Errors
/// [`GgufError::Invalid`](crate::GgufError::Invalid) for a missing or mistyped `tokenizer.ggml.*` key; [`DataError::Tokenizer`](crate::DataError::Tokenizer) for a tokenizer
/// model other than `"llama"` (SentencePiece), token types of another length than the tokens, or a special
/// token id outside the vocabulary.
pub fn hf_tokenizer_files(file: &GgufFile) -> Result<(Value, Value)> {
    let v = GgufVocab::read(file, "can be written as tokenizer.json")?;
    let (bos, eos, unk, pad, add_bos, add_eos) = (v.bos, v.eos, v.unk, v.pad, v.add_bos, v.add_eos);
    let vocab = v.vocab();
    let merges = GgufVocab::merges(&vocab);

    // Added tokens, by id; a token spelled twice is added once, with its vocabulary id.
    let mut added: Vec<(usize, &str, bool)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (index, text) in v.raw.iter().enumerate() {
        let Some(special) = v.added_kind(&vocab, index) else {
            continue;
        };
        if seen.insert(text.as_str()) {
            added.push((vocab.get(text.as_str()).copied().unwrap_or(index), text, special));
        }
    }
    added.sort_by_key(|a| a.0);

    let token = |id: Option<usize>| id.map(|i| v.raw[i].as_str());
    let vocab_json: Map<String, Value> = vocab
        .iter()
        .map(|(t, &id)| ((*t).to_string(), json!(id)))
        .collect();
    let merges_json: Vec<Value> = merges.iter().map(|m| json!([m.1, m.2])).collect();
    let added_json: Vec<Value> = added
        .iter()
        .map(|(id, content, special)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": special})
        })
        .collect();

    let bos_token = token(bos).filter(|_| add_bos);
    let eos_token = token(eos).filter(|_| add_eos);
    let post_processor = if bos_token.is_none() && eos_token.is_none() {
        Value::Null
    } else {
        let piece = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
        let sequence = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
        let template = |parts: &[(&str, u32)]| -> Vec<Value> {
            let mut out = Vec::new();
            for &(seq, type_id) in parts {
                if let Some(b) = bos_token {
                    out.push(piece(b, type_id));
                }
                out.push(sequence(seq, type_id));
                if let Some(e) = eos_token {
                    out.push(piece(e, type_id));
                }
            }
            out
        };
        let single = template(&[("A", 0)]);
        let pair = template(&[("A", 0), ("B", 1)]);
        let mut specials = Map::new();
        for (t, id) in [(bos_token, bos), (eos_token, eos)] {
            if let (Some(t), Some(id)) = (t, id) {
                specials.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
            }
        }
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
    };

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_json,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false},
        "post_processor": post_processor,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"}
        ]},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": token(unk),
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab_json,
            "merges": merges_json
        }
    });

    let mut config = Map::new();
    config.insert("backend".into(), json!("tokenizers"));
    config.insert("tokenizer_class".into(), json!("GemmaTokenizer"));
    for (name, id) in [
        ("bos_token", bos),
        ("eos_token", eos),
        ("unk_token", unk),
        ("pad_token", pad),
    ] {
        if let Some(t) = token(id) {
            config.insert(name.into(), json!(t));
        }
    }
    if vocab.contains_key("<mask>") {
        config.insert("mask_token".into(), json!("<mask>"));
    }
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(add_eos));
    if let Some(template) = file.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
        config.insert("chat_template".into(), json!(template));
    }
    Ok((tokenizer, Value::Object(config)))
}
