//! `BpeTokenizer` (a GGUF file's byte-level BPE vocabulary) against transformers, on four tokenizers trained
//! by `scripts/make_bpe_fixture.py` with the Llama 3, Qwen2, SmolLM and GPT-2 pre-tokenizers: the same ids on a
//! few hundred strings (spaces, newlines, digits, CJK, emoji, accents, code, contractions, added tokens), the
//! same decoded text, and a typed error for every bad tokenizer key.

mod bpe_support;

use bpe_support::{fixture, ids, mutated, strings};
use serde_json::Value;
use tch_rpo::data::Tokenizer;
use tch_rpo::gguf::{GgufValue, GgufValueType};
use tch_rpo::models::tokenizer::{BpePreTokenizer, BpeTokenizer, GgufTokenizer};
use tch_rpo::{DataError, Error};

const FAMILIES: [(&str, BpePreTokenizer); 4] = [
    ("llama-bpe", BpePreTokenizer::Llama3),
    ("qwen2", BpePreTokenizer::Qwen2),
    ("smollm", BpePreTokenizer::SmolLm),
    ("gpt-2", BpePreTokenizer::Gpt2),
];

fn opt_id(value: &Value) -> Option<i64> {
    value.as_i64()
}

#[test]
fn ids_and_decoding_equal_transformers() {
    let fx = fixture("bpe_tokenizer");
    for (family, pre) in FAMILIES {
        let expected = &fx.expected["families"][family];
        let tokenizer = BpeTokenizer::from_gguf(&fx.gguf(family)).unwrap();
        assert_eq!(tokenizer.pre_tokenizer(), pre);
        assert_eq!(BpePreTokenizer::from_gguf_name(pre.gguf_name()), Some(pre));
        assert_eq!(tokenizer.vocab_size(), expected["vocab_size"].as_i64().unwrap());
        assert_eq!(tokenizer.bos_token_id(), opt_id(&expected["bos_id"]));
        assert_eq!(tokenizer.eos_id(), opt_id(&expected["eos_id"]));
        assert_eq!(tokenizer.eot_id(), opt_id(&expected["eot_id"]));
        // add_bos_token from the file; absent (gpt-2) → llama.cpp's default for the pre-tokenizer.
        let add_bos = expected["add_bos"].as_bool().unwrap_or(pre.default_add_bos());
        assert_eq!(tokenizer.add_bos(), add_bos, "{family}");
        assert_eq!(tokenizer.bos_id(), tokenizer.bos_token_id().filter(|_| add_bos));
        let pad = opt_id(&expected["pad_id"]).or(tokenizer.eos_id()).unwrap();
        assert_eq!(tokenizer.pad_id(), pad);

        let cases = expected["cases"].as_array().unwrap();
        assert!(cases.len() >= 300, "{family}: {} strings", cases.len());
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want = ids(&case["ids"]);
            let got = tokenizer.encode_text(text).unwrap();
            assert_eq!(got, want, "{family}: ids of {text:?}");
            assert_eq!(Tokenizer::encode(&tokenizer, text).unwrap(), want);
            let decoded = tokenizer.decode_text(&want, false).unwrap();
            assert_eq!(
                decoded,
                case["decoded"].as_str().unwrap(),
                "{family}: decoding {text:?}"
            );
            let skipped = Tokenizer::decode(&tokenizer, &want).unwrap();
            assert_eq!(
                skipped,
                case["decoded_skip_special"].as_str().unwrap(),
                "{family}: {text:?}"
            );
            // Byte-level BPE is lossless; Qwen2 normalizes to NFC first (`e` + U+0301 → `é`).
            if pre != BpePreTokenizer::Qwen2 || !text.contains('\u{301}') {
                assert_eq!(decoded, text, "{family}: round trip of {text:?}");
            }
            for &id in &want {
                let token = tokenizer.token(id).unwrap();
                assert_eq!(tokenizer.token_id(token), Some(id));
            }
        }
    }
}

#[test]
fn digits_and_added_tokens_follow_each_family() {
    let fx = fixture("bpe_tokenizer");
    let llama = BpeTokenizer::from_gguf(&fx.gguf("llama-bpe")).unwrap();
    let qwen = BpeTokenizer::from_gguf(&fx.gguf("qwen2")).unwrap();
    // Llama 3 cuts digit runs into groups of at most three; Qwen2 and SmolLM into single digits.
    let pieces = |t: &BpeTokenizer, text: &str| -> Vec<String> {
        let ids = t.encode_text(text).unwrap();
        ids.iter()
            .map(|&id| t.decode_text(&[id], false).unwrap())
            .collect()
    };
    assert!(pieces(&llama, "1234567").iter().all(|p| p.len() <= 3));
    assert!(pieces(&qwen, "1234567").iter().all(|p| p.len() == 1));
    // Control tokens are matched whole and skipped by `decode`; user-defined ones are kept.
    let eot = llama.eot_id().unwrap();
    assert_eq!(llama.token(eot), Some("<|eot_id|>"));
    assert_eq!(llama.token_type(eot), Some(3));
    let ids = llama.encode_text("hi<|eot_id|>").unwrap();
    assert_eq!(ids.last(), Some(&eot));
    assert_eq!(Tokenizer::decode(&llama, &ids).unwrap(), "hi");
    let think = qwen.token_id("<think>").unwrap();
    assert_eq!(qwen.token_type(think), Some(4));
    let ids = qwen.encode_text("<think>x</think>").unwrap();
    assert_eq!(ids[0], think);
    assert_eq!(Tokenizer::decode(&qwen, &ids).unwrap(), "<think>x</think>");
    // Ids outside the vocabulary are skipped.
    assert_eq!(llama.decode_text(&[-1, llama.vocab_size()], false).unwrap(), "");
    assert_eq!(llama.token(-1), None);
}

fn data_error(result: tch_rpo::Result<BpeTokenizer>) -> DataError {
    match result.unwrap_err() {
        Error::Data(e) => e,
        other => panic!("expected a DataError, got {other:?}"),
    }
}

#[test]
fn every_bad_tokenizer_key_is_a_typed_error() {
    let fx = fixture("bpe_tokenizer");
    let file = fx.gguf("llama-bpe");
    let dir = fx.path("mutations");
    std::fs::create_dir_all(&dir).unwrap();
    let tokens: Vec<String> = file
        .get_str_array("tokenizer.ggml.tokens")
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let merges: Vec<String> = file
        .get_str_array("tokenizer.ggml.merges")
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let n = tokens.len();
    let mut case = 0;
    let mut load = |changes: &[(&str, Option<GgufValue>)]| {
        case += 1;
        let changed = mutated(&file, &dir.join(format!("case{case}.gguf")), changes);
        BpeTokenizer::from_gguf(&changed)
    };
    let s = |text: &str| Some(GgufValue::String(text.to_string()));

    // The model and the pre-tokenizer are named in the error.
    for (key, value) in [
        ("tokenizer.ggml.model", "llama"),
        ("tokenizer.ggml.pre", "tekken"),
    ] {
        match data_error(load(&[(key, s(value))])) {
            DataError::UnsupportedTokenizer { key: k, found, .. } => {
                assert_eq!((k, found.as_str()), (key, value))
            }
            other => panic!("{other:?}"),
        }
    }
    // Missing or mistyped keys are GGUF errors.
    for changes in [
        vec![("tokenizer.ggml.pre", None)],
        vec![("tokenizer.ggml.merges", None)],
        vec![("tokenizer.ggml.tokens", None)],
        vec![("tokenizer.ggml.add_bos_token", s("yes"))],
        vec![("tokenizer.ggml.bos_token_id", s("0"))],
        vec![("tokenizer.chat_template", Some(GgufValue::U32(1)))],
        vec![(
            "tokenizer.ggml.merges",
            Some(GgufValue::Array {
                elem: GgufValueType::U32,
                values: vec![GgufValue::U32(1)],
            }),
        )],
    ] {
        assert!(matches!(load(&changes), Err(Error::Gguf(_))), "{changes:?}");
    }
    // Malformed vocabularies and merges.
    let tokenizer_error = |result: tch_rpo::Result<BpeTokenizer>, needle: &str| match data_error(result) {
        DataError::Tokenizer(m) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("{other:?}"),
    };
    let mut duplicated = tokens.clone();
    duplicated[n - 1] = duplicated[0].clone();
    tokenizer_error(
        load(&[("tokenizer.ggml.tokens", Some(strings(&duplicated)))]),
        "listed twice",
    );
    tokenizer_error(
        load(&[("tokenizer.ggml.tokens", Some(strings(&tokens[..n - 1])))]),
        "token types for",
    );
    for bad in ["Ġ", "Ġ t h", " t", "Ġt "] {
        let mut changed = merges.clone();
        changed[3] = bad.to_string();
        tokenizer_error(
            load(&[("tokenizer.ggml.merges", Some(strings(&changed)))]),
            "merge 3",
        );
    }
    let mut unknown = merges.clone();
    unknown.push("Ġ zzzzzz".to_string());
    tokenizer_error(
        load(&[("tokenizer.ggml.merges", Some(strings(&unknown)))]),
        "do not fit",
    );
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
    ] {
        for id in [n as u32, u32::MAX] {
            tokenizer_error(load(&[(key, Some(GgufValue::U32(id)))]), "outside the vocabulary");
        }
    }
    // A template that does not compile.
    match data_error(load(&[("tokenizer.chat_template", s("{% for m in messages %}"))])) {
        DataError::ChatTemplate { origin, .. } => assert!(origin.contains("tokenizer.chat_template")),
        other => panic!("{other:?}"),
    }
    // Each tokenizer refuses the other's files.
    assert!(matches!(
        GgufTokenizer::from_gguf(&file),
        Err(Error::Data(DataError::Tokenizer(m))) if m.contains("\"gpt2\"")
    ));
}
