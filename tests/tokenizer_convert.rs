//! The Llama family's byte-level BPE tokenizer converted between a Hugging Face folder and GGUF metadata
//! (`decoder::export::{hf_bpe_to_gguf, gguf_bpe_to_hf}`, used by `llama::export::{save_gguf,
//! save_pretrained}`), on the four tokenizers of `scripts/make_bpe_fixture.py` (llama-bpe, qwen2, smollm,
//! gpt-2; ~1,200 tokens trained by the Python `tokenizers` package) and the few hundred strings of its
//! `expected.json` (spaces, newlines, digits, CJK, emoji, accents, code, special tokens):
//!
//! - folder → GGUF: our `BpeTokenizer` on the converted metadata gives transformers' ids; the metadata
//!   equals, key by key, what llama.cpp's converter writes for the folder (its `get_vocab_base` and gguf-py's
//!   `SpecialVocab`, in `scripts/bpe_convert_check.py reference`); a model saved by `save_gguf` from the
//!   folder loads in llama.cpp (node-llama-cpp, as tests/llamacpp.rs), which tokenizes as transformers;
//! - GGUF → folder: transformers' `AutoTokenizer` on the folder `save_pretrained` writes gives our ids, adds
//!   BOS as we do, and renders the chat template as we do on multi-turn conversations;
//! - refused inputs: an unknown Split regex, a model other than BPE, a SentencePiece-style BPE, a folder
//!   without tokenizer.json, a GGUF tokenizer that is not a byte-level BPE.
mod bpe_support;
mod export_support;
mod llamacpp_support;

use std::path::{Path, PathBuf};

use export_support::TempDir;
use serde_json::{json, Value};
use tch::{nn, Device, Kind, Tensor};
use tch_rpo::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use tch_rpo::models::decoder::export::{gguf_bpe_to_hf, hf_bpe_to_gguf, TokenizerSource};
use tch_rpo::models::llama::export::{save_gguf, save_pretrained};
use tch_rpo::models::llama::{Llama, LlamaConfig};
use tch_rpo::models::tokenizer::BpeTokenizer;
use tch_rpo::{DataError, Error};

const FAMILIES: [&str; 4] = ["llama-bpe", "qwen2", "smollm", "gpt-2"];

/// The multi-turn conversations whose chat-template renders are compared.
const CONVERSATIONS: [&[(&str, &str)]; 2] = [
    &[
        ("system", "You are terse."),
        ("user", "Hi there! 2+2?"),
        ("assistant", "4."),
        ("user", "And in 日本語? 🙂"),
    ],
    &[
        ("user", "Write `print(1)` in Python."),
        ("assistant", "print(1)\n"),
        ("user", "Now café\ttabs."),
    ],
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn texts(fx: &bpe_support::Fixture, family: &str) -> Vec<(String, Vec<i64>)> {
    fx.expected["families"][family]["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let ids = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_i64().unwrap())
                .collect();
            (c["text"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}

fn token_text(file: &GgufFile, key: &str) -> Value {
    match file.get(key) {
        Some(_) => {
            let id = file.get_i64(key).unwrap() as usize;
            json!(file.get_str_array("tokenizer.ggml.tokens").unwrap()[id])
        }
        None => Value::Null,
    }
}

/// A Hugging Face tokenizer folder for `family`: the fixture's tokenizer.json (for `llama-bpe` with Llama
/// 3's `TemplateProcessing` post-processor, for `gpt-2` with its merges spelled `"a b"`) and a
/// tokenizer_config.json with the special tokens, `add_bos_token` and the chat template of the fixture's GGUF.
fn hf_folder(fx: &bpe_support::Fixture, family: &str, dir: &Path) -> PathBuf {
    let folder = dir.join(format!("hf-{family}"));
    std::fs::create_dir_all(&folder).unwrap();
    let text = std::fs::read_to_string(fx.dir.join(family).join("tokenizer.json")).unwrap();
    let mut spec: Value = serde_json::from_str(&text).unwrap();
    let gguf = fx.gguf(family);
    let bos = token_text(&gguf, "tokenizer.ggml.bos_token_id");
    if family == "llama-bpe" {
        let id = gguf.get_i64("tokenizer.ggml.bos_token_id").unwrap();
        spec["post_processor"] = json!({"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos.as_str().unwrap(): {"id": bos, "ids": [id], "tokens": [bos]}}}]});
    }
    if family == "gpt-2" {
        let merges: Vec<Value> = spec["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| json!(format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap())))
            .collect();
        spec["model"]["merges"] = json!(merges);
    }
    std::fs::write(folder.join("tokenizer.json"), spec.to_string()).unwrap();
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": token_text(&gguf, "tokenizer.ggml.eos_token_id"),
        "pad_token": token_text(&gguf, "tokenizer.ggml.padding_token_id"),
        "clean_up_tokenization_spaces": false,
    });
    if gguf.get("tokenizer.ggml.add_bos_token").is_some() {
        config["add_bos_token"] = json!(gguf.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    }
    if gguf.get("tokenizer.chat_template").is_some() {
        config["chat_template"] = json!(gguf.get_str("tokenizer.chat_template").unwrap());
    }
    std::fs::write(folder.join("tokenizer_config.json"), config.to_string()).unwrap();
    folder
}

/// A second spelling of `family`'s folder, for the parts of gguf-py's `SpecialVocab` the first does not
/// reach: the EOS token written as an `AddedToken` object (`{"__type": "AddedToken", "content": …}`), no `pad_token` (its id from `config.json`'s
/// `pad_token_id`), the chat template in `chat_template.jinja`, `add_bos_token` absent.
fn respelled_folder(fx: &bpe_support::Fixture, family: &str, dir: &Path) -> PathBuf {
    let folder = hf_folder(fx, family, &dir.join("respelled"));
    let path = folder.join("tokenizer_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let map = config.as_object_mut().unwrap();
    let eos = map["eos_token"].clone();
    map.insert(
        "eos_token".into(),
        json!({"__type": "AddedToken", "content": eos, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}),
    );
    map.remove("pad_token");
    map.remove("add_bos_token");
    if let Some(Value::String(template)) = map.remove("chat_template") {
        std::fs::write(folder.join("chat_template.jinja"), template).unwrap();
    }
    std::fs::write(&path, config.to_string()).unwrap();
    let gguf = fx.gguf(family);
    let pad = gguf.get_i64("tokenizer.ggml.padding_token_id").unwrap();
    std::fs::write(
        folder.join("config.json"),
        json!({"model_type": "llama", "pad_token_id": pad, "eos_token_id": [pad, 0]}).to_string(),
    )
    .unwrap();
    folder
}

/// `entries` written as a tokenizer-only GGUF and opened.
fn tokenizer_gguf(entries: Vec<(String, GgufValue)>, path: &Path) -> GgufFile {
    let mut writer = GgufWriter::new();
    writer
        .add_metadata("general.architecture", GgufValue::String("llama".into()))
        .unwrap();
    for (key, value) in entries {
        writer.add_metadata(key, value).unwrap();
    }
    writer.write(path).unwrap();
    GgufFile::open(path).unwrap()
}

fn random_model(arch_fixture: &str, vocab_size: i64) -> (LlamaConfig, Vec<(String, Tensor)>) {
    let path = root().join(format!("tests/fixtures/{arch_fixture}_tiny/config.json"));
    let mut config = LlamaConfig::from_file(&path).unwrap();
    config.vocab_size = vocab_size;
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Llama::random(&vs.root(), &config).unwrap();
    let parameters = vs.variables().into_iter().collect();
    (config, parameters)
}

#[test]
fn a_folder_tokenizer_converts_to_the_gguf_metadata_of_llama_cpp() {
    let fx = bpe_support::fixture("convert-to-gguf");
    let dir = TempDir::new("convert-to-gguf");
    let mut folders: Vec<(&str, String, PathBuf)> = FAMILIES
        .iter()
        .map(|&family| (family, family.to_string(), hf_folder(fx, family, &dir.path(""))))
        .collect();
    for family in ["qwen2", "smollm"] {
        let folder = respelled_folder(fx, family, &dir.path(""));
        folders.push((family, format!("{family} (respelled)"), folder));
    }
    for (family, label, folder) in folders {
        let label = label.as_str();
        let source = fx.gguf(family);
        let vocab_size = source.get_array("tokenizer.ggml.tokens").unwrap().len() as i64;
        // Three ids past the tokenizer: the converter's [PAD{id}] fillers.
        let padded = vocab_size + 3;
        let entries = hf_bpe_to_gguf(&folder, padded).unwrap();
        let ours = tokenizer_gguf(entries, &dir.path(&format!("{label}-ours.gguf")));

        // llama.cpp's converter on the same folder.
        let reference_path = dir.path(&format!("{label}-reference.gguf"));
        bpe_support::run_script(
            "bpe_convert_check.py",
            &[
                "reference".as_ref(),
                folder.as_os_str(),
                family.as_ref(),
                padded.to_string().as_ref(),
                reference_path.as_os_str(),
            ],
        );
        let reference = GgufFile::open(&reference_path).unwrap();
        let keys = |file: &GgufFile| -> Vec<String> {
            file.metadata()
                .keys()
                .filter(|k| k.starts_with("tokenizer."))
                .cloned()
                .collect()
        };
        assert_eq!(keys(&ours), keys(&reference), "{label}: the tokenizer keys");
        for key in keys(&reference) {
            assert_eq!(ours.get(&key), reference.get(&key), "{label}: {key}");
        }
        let tokens = ours.get_str_array("tokenizer.ggml.tokens").unwrap();
        assert_eq!(tokens[padded as usize - 1], format!("[PAD{}]", padded - 1));
        // The fixture GGUF (written as the converter writes it) has the same tokens, types and merges.
        for key in ["tokenizer.ggml.merges", "tokenizer.ggml.pre"] {
            assert_eq!(ours.get(key), source.get(key), "{label}: {key}");
        }
        assert_eq!(
            &tokens[..vocab_size as usize],
            &source.get_str_array("tokenizer.ggml.tokens").unwrap()[..]
        );

        // Our tokenizer on the converted metadata gives transformers' ids.
        let tokenizer = BpeTokenizer::from_gguf(&ours).unwrap();
        let cases = texts(fx, family);
        for (text, ids) in &cases {
            assert_eq!(&tokenizer.encode_text(text).unwrap(), ids, "{family}: {text:?}");
        }
        assert!(cases.len() >= 300, "{family}: {} strings", cases.len());
        let expected = &fx.expected["families"][family];
        assert_eq!(tokenizer.bos_token_id(), expected["bos_id"].as_i64(), "{family}");
        assert_eq!(tokenizer.eos_id(), expected["eos_id"].as_i64(), "{family}");
        assert_eq!(
            tokenizer.add_bos(),
            expected["add_bos"].as_bool().unwrap_or(false),
            "{family}"
        );
        eprintln!(
            "{label}: {} strings, {} tokenizer keys equal",
            cases.len(),
            keys(&reference).len()
        );
    }
}

/// What llama.cpp is given for `text` (see tests/llamacpp.rs: llama.cpp's `qwen2` pre-tokenizer has no
/// NFC normalizer, so the fixture's only decomposed sequence is composed for it).
fn llama_cpp_input(family: &str, text: &str) -> String {
    if family == "qwen2" {
        text.replace("e\u{301}", "é")
    } else {
        text.to_string()
    }
}

#[test]
fn a_gguf_saved_from_a_folder_tokenizes_in_llama_cpp_as_transformers() {
    let fx = bpe_support::fixture("convert-llamacpp");
    let dir = TempDir::new("convert-llamacpp");
    for (family, arch) in [
        ("llama-bpe", "llama"),
        ("qwen2", "qwen2"),
        ("smollm", "llama"),
        ("gpt-2", "llama"),
    ] {
        let folder = hf_folder(fx, family, &dir.path(""));
        let vocab_size = fx.gguf(family).get_array("tokenizer.ggml.tokens").unwrap().len() as i64;
        let (config, parameters) = random_model(arch, vocab_size);
        let path = dir.path(&format!("{family}.gguf"));
        save_gguf(
            &path,
            &config,
            &parameters,
            GgmlType::F32,
            TokenizerSource::HfDir(&folder),
        )
        .unwrap();
        let file = GgufFile::open(&path).unwrap();
        let tokenizer = BpeTokenizer::from_gguf(&file).unwrap();
        let cases = texts(fx, family);
        for (text, ids) in &cases {
            assert_eq!(&tokenizer.encode_text(text).unwrap(), ids, "{family}: {text:?}");
        }
        let strings: Vec<String> = cases.iter().map(|(t, _)| t.clone()).collect();
        let n = llamacpp_support::assert_tokenizes_as_llama_cpp(
            &dir.path(""),
            family,
            &path,
            &tokenizer,
            &strings,
            &|t| llama_cpp_input(family, t),
        );
        assert!(n >= 300, "{family}: {n} strings");
        eprintln!("{family}: llama.cpp gives transformers' ids on {n} strings");
    }
}

#[test]
fn a_folder_saved_from_a_gguf_tokenizes_in_transformers_as_we_do() {
    let fx = bpe_support::fixture("convert-to-hf");
    let dir = TempDir::new("convert-to-hf");
    for family in FAMILIES {
        let source = fx.gguf(family);
        let ours = BpeTokenizer::from_gguf(&source).unwrap();
        let (config, parameters) = random_model("llama", ours.vocab_size());
        let folder = dir.path(&format!("hf-{family}"));
        save_pretrained(
            &folder,
            &config,
            &parameters,
            Kind::Float,
            TokenizerSource::Gguf(&source),
        )
        .unwrap();
        let cases = texts(fx, family);
        let strings: Vec<&str> = cases.iter().map(|(t, _)| t.as_str()).collect();
        let conversations: Vec<&[(&str, &str)]> = match ours.chat_template() {
            Some(_) => CONVERSATIONS.to_vec(),
            None => Vec::new(),
        };
        let request = dir.path(&format!("{family}-request.json"));
        std::fs::write(
            &request,
            json!({"texts": strings, "conversations": conversations}).to_string(),
        )
        .unwrap();
        let result_path = dir.path(&format!("{family}-result.json"));
        bpe_support::run_script(
            "bpe_convert_check.py",
            &[
                "hf".as_ref(),
                folder.as_os_str(),
                request.as_os_str(),
                result_path.as_os_str(),
            ],
        );
        let result: Value = serde_json::from_str(&std::fs::read_to_string(&result_path).unwrap()).unwrap();
        for (i, text) in strings.iter().enumerate() {
            let theirs: Vec<i64> = serde_json::from_value(result["ids"][i].clone()).unwrap();
            assert_eq!(ours.encode_text(text).unwrap(), theirs, "{family}: {text:?}");
            let with_special: Vec<i64> = serde_json::from_value(result["ids_special"][i].clone()).unwrap();
            let mut expected: Vec<i64> = ours.bos_id().into_iter().collect();
            expected.extend(&theirs);
            assert_eq!(with_special, expected, "{family}: {text:?} with special tokens");
        }
        assert!(strings.len() >= 300, "{family}: {} strings", strings.len());
        let mut renders = 0;
        for (c, conversation) in conversations.iter().enumerate() {
            for (g, generation) in [false, true].into_iter().enumerate() {
                let theirs = result["renders"][2 * c + g].as_str().unwrap();
                let mine = ours
                    .apply_chat_template(conversation.iter().copied(), generation)
                    .unwrap();
                assert_eq!(
                    mine, theirs,
                    "{family}: conversation {c}, generation prompt {generation}"
                );
                renders += 1;
            }
        }
        eprintln!(
            "{family} ({}): {} strings, {renders} chat renders equal",
            result["class"],
            strings.len()
        );
    }
}

#[test]
fn refused_tokenizers_name_what_is_wrong() {
    let fx = bpe_support::fixture("convert-errors");
    let dir = TempDir::new("convert-errors");
    let folder = hf_folder(fx, "qwen2", &dir.path(""));
    let original = std::fs::read_to_string(folder.join("tokenizer.json")).unwrap();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut spec: Value = serde_json::from_str(&original).unwrap();
        change(&mut spec);
        std::fs::write(folder.join("tokenizer.json"), spec.to_string()).unwrap();
        hf_bpe_to_gguf(&folder, 2000).unwrap_err()
    };
    let unsupported = |err: &Error, expected_key: &str, needle: &str| match err {
        Error::Data(DataError::UnsupportedTokenizer { key, found, .. }) => {
            assert_eq!(*key, expected_key, "{err}");
            assert!(found.contains(needle), "{err}");
        }
        other => panic!("{other:?}"),
    };
    // An unknown Split regex (Llama 3's with 1-4 digits).
    let err =
        with(&|s| s["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = json!("\\p{N}{1,4}|\\s+"));
    unsupported(&err, "pre_tokenizer Split pattern", "\\\\p{N}{1,4}");
    // A model other than BPE.
    let err = with(&|s| s["model"]["type"] = json!("Unigram"));
    unsupported(&err, "model.type", "Unigram");
    let err = with(&|s| s["model"]["type"] = json!("WordPiece"));
    unsupported(&err, "model.type", "WordPiece");
    // A SentencePiece-style BPE.
    let err = with(&|s| s["model"]["byte_fallback"] = json!(true));
    unsupported(&err, "model.byte_fallback", "true");
    // Another normalizer.
    let err = with(&|s| s["normalizer"] = json!({"type": "NFKC"}));
    unsupported(&err, "normalizer", "NFKC");
    // No tokenizer.json: save_gguf refuses before writing anything.
    let empty = dir.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (config, parameters) = random_model("llama", 1207);
    let path = dir.path("none.gguf");
    let err = save_gguf(
        &path,
        &config,
        &parameters,
        GgmlType::F32,
        TokenizerSource::HfDir(&empty),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Data(DataError::Tokenizer(m)) if m.contains("no tokenizer.json")),
        "{err:?}"
    );
    assert!(!path.exists());
    // A token id beyond the model's vocabulary.
    std::fs::write(folder.join("tokenizer.json"), &original).unwrap();
    let err = hf_bpe_to_gguf(&folder, 100).unwrap_err();
    assert!(
        matches!(&err, Error::Data(DataError::Tokenizer(m)) if m.contains("vocab_size 100")),
        "{err:?}"
    );
    // A GGUF tokenizer that is not a byte-level BPE, or an unknown pre-tokenizer, for a folder.
    let source = fx.gguf("qwen2");
    for (key, value, named) in [
        ("tokenizer.ggml.model", "llama", "tokenizer.ggml.model"),
        ("tokenizer.ggml.pre", "falcon", "tokenizer.ggml.pre"),
    ] {
        let changed = bpe_support::mutated(
            &source,
            &dir.path(&format!("{value}.gguf")),
            &[(key, Some(GgufValue::String(value.into())))],
        );
        let err = gguf_bpe_to_hf(&changed).unwrap_err();
        unsupported(&err, named, value);
        let out = dir.path(&format!("hf-{value}"));
        let (config, parameters) = random_model("llama", 1207);
        let err = save_pretrained(
            &out,
            &config,
            &parameters,
            Kind::Float,
            TokenizerSource::Gguf(&changed),
        )
        .unwrap_err();
        unsupported(&err, named, value);
        assert!(!out.exists());
    }
}
