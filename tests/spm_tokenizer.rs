//! The SentencePiece tokenizer of the Llama family's GGUF files (`GgufTokenizer` in the `SpmStyle::Llama`
//! style: Llama 2, Mistral 7B, TinyLlama) on the fixture of `scripts/make_spm_fixture.py` (a SentencePiece BPE
//! model trained there, written to a vocabulary-only GGUF the way llama.cpp's converter writes it):
//! - its ids equal a real llama.cpp's (node-llama-cpp 3.21.1, tests/llamacpp_support) on a few hundred
//!   strings, special tokens written in the text included, with the file's `add_space_prefix` (absent:
//!   llama.cpp's default, true) and with it set to false;
//! - they equal sentencepiece's own `encode` on the strings without special tokens, and decoding gives back
//!   sentencepiece's `decode` and the text;
//! - the chat template renders as transformers' `apply_chat_template`;
//! - Gemma files keep the Gemma style; bad metadata gives typed errors naming the key.
//!
//! Without the virtual environment (sentencepiece, gguf, transformers), node or node-llama-cpp these tests FAIL
//! saying what to run.
mod bpe_support;
mod llamacpp_support;

use std::path::PathBuf;
use std::sync::OnceLock;

use bpe_support::{ids, mutated, Fixture};
use serde_json::Value;
use tch_rpo::data::{Message, Tokenizer};
use tch_rpo::gguf::{GgufValue, GgufValueType};
use tch_rpo::models::tokenizer::{GgufTokenizer, SpmStyle};
use tch_rpo::{DataError, Error, GgufError};

/// `scripts/make_spm_fixture.py`'s folder (`spm.gguf`, `expected.json`), made once per process.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| bpe_support::make_fixture("make_spm_fixture.py", "spm-fixture"))
}

impl Fixture {
    fn tokenizer(&self) -> GgufTokenizer {
        GgufTokenizer::from_gguf(&self.gguf("spm")).expect("tokenizer")
    }

    fn cases(&self) -> &[Value] {
        self.expected["cases"].as_array().expect("cases")
    }

    fn texts(&self) -> Vec<String> {
        self.cases()
            .iter()
            .map(|c| c["text"].as_str().unwrap().to_string())
            .collect()
    }

    /// A folder for this test's files.
    fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

#[test]
fn tokenizes_as_llama_cpp() {
    let fx = fixture();
    let texts = fx.texts();
    let tokenizer = fx.tokenizer();
    assert_eq!(tokenizer.style(), SpmStyle::Llama);
    assert!(
        tokenizer.add_space_prefix(),
        "llama.cpp's default when the key is absent"
    );
    let dir = fx.scratch("llamacpp");
    let path = fx.dir.join("spm.gguf");
    let n = llamacpp_support::assert_tokenizes_as_llama_cpp(&dir, "spm", &path, &tokenizer, &texts, &|t| {
        t.to_string()
    });
    assert!(n >= 300, "{n} texts");

    // add_space_prefix = false, as a file may say.
    let no_prefix_path = dir.join("no-prefix.gguf");
    let no_prefix = mutated(
        &fx.gguf("spm"),
        &no_prefix_path,
        &[("tokenizer.ggml.add_space_prefix", Some(GgufValue::Bool(false)))],
    );
    let tokenizer = GgufTokenizer::from_gguf(&no_prefix).expect("tokenizer");
    assert!(!tokenizer.add_space_prefix());
    let n_no_prefix = llamacpp_support::assert_tokenizes_as_llama_cpp(
        &dir,
        "spm-no-prefix",
        &no_prefix_path,
        &tokenizer,
        &texts,
        &|t| t.to_string(),
    );

    // The normal tokens in reverse order (ids no longer follow the scores, as in Gemma's files): merges
    // must go by score, not by position.
    let file = fx.gguf("spm");
    let tokens = file.get_array("tokenizer.ggml.tokens").unwrap().to_vec();
    let scores = file.get_array("tokenizer.ggml.scores").unwrap().to_vec();
    let types = file.get_array("tokenizer.ggml.token_type").unwrap().to_vec();
    let normal: Vec<usize> = (0..types.len())
        .filter(|&i| types[i] == GgufValue::I32(1))
        .collect();
    assert!(normal.len() > 500, "{} normal tokens", normal.len());
    let mut order: Vec<usize> = (0..types.len()).collect();
    for (&at, &from) in normal.iter().zip(normal.iter().rev()) {
        order[at] = from;
    }
    let permuted = |values: &[GgufValue], elem| GgufValue::Array {
        elem,
        values: order.iter().map(|&i| values[i].clone()).collect(),
    };
    let reversed_path = dir.join("reversed.gguf");
    let reversed = mutated(
        &file,
        &reversed_path,
        &[
            (
                "tokenizer.ggml.tokens",
                Some(permuted(&tokens, GgufValueType::String)),
            ),
            (
                "tokenizer.ggml.scores",
                Some(permuted(&scores, GgufValueType::F32)),
            ),
            (
                "tokenizer.ggml.token_type",
                Some(permuted(&types, GgufValueType::I32)),
            ),
        ],
    );
    let tokenizer = GgufTokenizer::from_gguf(&reversed).expect("tokenizer");
    let n = llamacpp_support::assert_tokenizes_as_llama_cpp(
        &dir,
        "spm-reversed",
        &reversed_path,
        &tokenizer,
        &texts,
        &|t| t.to_string(),
    );
    assert_eq!((n_no_prefix, n), (texts.len(), texts.len()));
    eprintln!("llama.cpp: {n} texts with add_space_prefix true and false, and with the tokens reordered");
}

#[test]
fn tokenizes_and_decodes_as_sentencepiece() {
    let fx = fixture();
    let tokenizer = fx.tokenizer();
    assert_eq!(
        tokenizer.vocab_size(),
        fx.expected["vocab_size"].as_i64().unwrap()
    );
    let mut compared = 0;
    let mut failures = Vec::new();
    for case in fx.cases() {
        let text = case["text"].as_str().unwrap();
        let Some(theirs) = case.get("sentencepiece") else {
            continue;
        };
        compared += 1;
        let theirs = ids(theirs);
        let ours = tokenizer.encode_text(text);
        if ours != theirs {
            failures.push(format!("{text:?}: ours {ours:?}, sentencepiece {theirs:?}"));
            continue;
        }
        let decoded = tokenizer.decode_text(&ours, true);
        if decoded != case["decoded"].as_str().unwrap() || decoded != text {
            failures.push(format!(
                "{text:?}: decoded {decoded:?}, sentencepiece {}",
                case["decoded"]
            ));
        }
        // A BOS first changes nothing once skipped; kept, it is written out.
        let mut with_bos = vec![tokenizer.bos_id().unwrap()];
        with_bos.extend(&ours);
        assert_eq!(tokenizer.decode_text(&with_bos, true), text);
        assert_eq!(tokenizer.decode(&with_bos).unwrap(), text);
        if !text.is_empty() {
            assert_eq!(
                tokenizer.decode_text(&with_bos, false),
                // Kept, `<s>` comes first: the space after it is not the first piece's, so it stays.
                format!("<s> {}", tokenizer.decode_text(&ours, false)),
                "{text:?}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {compared} texts differ from sentencepiece:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(compared >= 300, "{compared} texts");
    eprintln!("sentencepiece: {compared} texts");
}

#[test]
fn special_ids_and_chat_template_come_from_the_file() {
    let fx = fixture();
    let tokenizer = fx.tokenizer();
    assert_eq!(tokenizer.bos_id(), Some(1));
    assert_eq!(tokenizer.eos_id(), Some(2));
    assert_eq!(Tokenizer::pad_id(&tokenizer), 2, "no padding id: EOS");
    assert_eq!(tokenizer.token(1), Some("<s>"));
    assert_eq!(tokenizer.token_id("[INST]"), Some(3));
    // Special tokens written in the text, and the space put after each.
    let inst = tokenizer.encode_text("[INST] Hi [/INST]");
    assert_eq!(inst[0], 3);
    assert_eq!(*inst.last().unwrap(), 4);
    assert!(tokenizer.file_chat_template().is_some());
    for chat in fx.expected["chat"].as_array().unwrap() {
        let messages: Vec<Message> = chat["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message {
                role: m[0].as_str().unwrap().to_string(),
                content: m[1].as_str().unwrap().to_string(),
            })
            .collect();
        assert_eq!(
            tokenizer.apply_chat_template(&messages, false).unwrap(),
            chat["text"].as_str().unwrap()
        );
    }
    // Through the model-independent loader too.
    let file = fx.gguf("spm");
    let boxed = tch_rpo::models::auto::load_tokenizer(tch_rpo::models::decoder::WeightSource::Gguf(&file))
        .expect("load_tokenizer");
    assert_eq!(
        boxed.encode("hello world").unwrap(),
        tokenizer.encode_text("hello world")
    );
}

#[test]
fn gemma_files_keep_the_gemma_style() {
    let fx = fixture();
    let dir = fx.scratch("gemma");
    for (name, arch) in [
        ("gemma3", Some("gemma3")),
        ("gemma", Some("gemma")),
        ("none", None),
    ] {
        let value = arch.map(|a| GgufValue::String(a.into()));
        let file = mutated(
            &fx.gguf("spm"),
            &dir.join(format!("{name}.gguf")),
            &[("general.architecture", value)],
        );
        let tokenizer = GgufTokenizer::from_gguf(&file).expect("tokenizer");
        assert_eq!(tokenizer.style(), SpmStyle::Gemma, "{name}");
        assert!(!tokenizer.add_space_prefix());
        assert!(tokenizer.file_chat_template().is_none());
        assert_eq!(
            Tokenizer::chat_template(&tokenizer),
            tch_rpo::data::ChatTemplate::Gemma
        );
    }
    assert_eq!(
        SpmStyle::of(&mutated(
            &fx.gguf("spm"),
            &dir.join("mistral.gguf"),
            &[("general.architecture", Some(GgufValue::String("mistral".into())))]
        ))
        .unwrap(),
        SpmStyle::Llama
    );
}

#[test]
fn bad_metadata_is_a_typed_error() {
    let fx = fixture();
    let file = fx.gguf("spm");
    let dir = fx.scratch("errors");
    let n = fx.expected["vocab_size"].as_u64().unwrap() as usize;
    let load = |name: &str, changes: &[(&str, Option<GgufValue>)]| {
        GgufTokenizer::from_gguf(&mutated(&file, &dir.join(format!("{name}.gguf")), changes)).unwrap_err()
    };
    let gguf_invalid = |e: Error, key: &str| match e {
        Error::Gguf(GgufError::Invalid { reason, .. }) => assert!(reason.contains(key), "{reason}"),
        other => panic!("{key}: expected GgufError::Invalid, got {other:?}"),
    };
    let tokenizer_error = |e: Error, words: &[&str]| match e {
        Error::Data(DataError::Tokenizer(m)) => {
            for w in words {
                assert!(m.contains(w), "{m:?} lacks {w:?}");
            }
        }
        other => panic!("expected DataError::Tokenizer, got {other:?}"),
    };
    let f32s = |v: Vec<f32>| GgufValue::Array {
        elem: GgufValueType::F32,
        values: v.into_iter().map(GgufValue::F32).collect(),
    };
    // Scores: missing, mistyped, of another length.
    gguf_invalid(
        load("no-scores", &[("tokenizer.ggml.scores", None)]),
        "tokenizer.ggml.scores",
    );
    gguf_invalid(
        load(
            "string-scores",
            &[("tokenizer.ggml.scores", Some(GgufValue::String("x".into())))],
        ),
        "tokenizer.ggml.scores",
    );
    tokenizer_error(
        load(
            "short-scores",
            &[("tokenizer.ggml.scores", Some(f32s(vec![0.0; n - 1])))],
        ),
        &[
            "tokenizer.ggml.scores",
            &format!("{} scores", n - 1),
            &format!("{n} tokens"),
        ],
    );
    // add_space_prefix that is not a boolean.
    gguf_invalid(
        load(
            "prefix",
            &[("tokenizer.ggml.add_space_prefix", Some(GgufValue::U32(1)))],
        ),
        "tokenizer.ggml.add_space_prefix",
    );
    // A token listed twice.
    let mut tokens: Vec<String> = file
        .get_str_array("tokenizer.ggml.tokens")
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    tokens[n - 1] = tokens[n - 2].clone();
    tokenizer_error(
        load(
            "twice",
            &[("tokenizer.ggml.tokens", Some(bpe_support::strings(&tokens)))],
        ),
        &["twice", &format!("{}", n - 1), &format!("{:?}", tokens[n - 2])],
    );
    // Token types of another length; a special id outside the vocabulary.
    tokenizer_error(
        load(
            "types",
            &[(
                "tokenizer.ggml.token_type",
                Some(GgufValue::Array {
                    elem: GgufValueType::I32,
                    values: vec![GgufValue::I32(1); n - 1],
                }),
            )],
        ),
        &[&format!("{} token types", n - 1)],
    );
    tokenizer_error(
        load(
            "bos",
            &[("tokenizer.ggml.bos_token_id", Some(GgufValue::U32(n as u32)))],
        ),
        &["tokenizer.ggml.bos_token_id", &format!("{n}")],
    );
    // A chat template that does not compile.
    match load(
        "template",
        &[(
            "tokenizer.chat_template",
            Some(GgufValue::String("{% for m in messages %}".into())),
        )],
    ) {
        Error::Data(DataError::ChatTemplate { origin, .. }) => {
            assert!(origin.contains("tokenizer.chat_template"))
        }
        other => panic!("{other:?}"),
    }
    // No chat template: rendering is an error, not another template.
    let plain = GgufTokenizer::from_gguf(&mutated(
        &file,
        &dir.join("plain.gguf"),
        &[("tokenizer.chat_template", None)],
    ))
    .unwrap();
    let message = Message {
        role: "user".into(),
        content: "hi".into(),
    };
    assert!(matches!(
        plain.apply_chat_template(&[message], true),
        Err(Error::Data(DataError::ChatTemplate { .. }))
    ));
}
