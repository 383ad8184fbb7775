//! `HfTokenizer` (feature `hf-tokenizers`) on a small word-level `tokenizer.json` written here.
#![cfg(feature = "hf-tokenizers")]

use tch_rpo::data::{
    encode_record, ChatTemplate, HfTokenizer, HfTokenizerConfig, PreferenceRecord, Text, Tokenizer,
};

const TOKENIZER_JSON: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<pad>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "<bos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 2, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"<pad>": 0, "<bos>": 1, "<eos>": 2, "hello": 3, "world": 4, "yes": 5, "no": 6, "[UNK]": 7}, "unk_token": "[UNK]"}
}"#;

#[test]
fn loads_tokenizer_json_and_encodes_records() {
    let dir = std::env::temp_dir().join(format!("tch-rpo-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, TOKENIZER_JSON).unwrap();
    let config = HfTokenizerConfig {
        chat_template: ChatTemplate::ChatMl,
        ..HfTokenizerConfig::gemma()
    };
    let tokenizer = HfTokenizer::from_file(&path, &config).unwrap();
    assert_eq!(tokenizer.vocab_size(), 8);
    assert_eq!(
        (tokenizer.pad_id(), tokenizer.bos_id(), tokenizer.eos_id()),
        (0, Some(1), Some(2))
    );
    assert_eq!(tokenizer.encode("hello world zzz").unwrap(), vec![3, 4, 7]);
    let record = PreferenceRecord::new(
        Text::Plain("hello world".into()),
        Text::Plain("yes".into()),
        Text::Plain("no no".into()),
    )
    .unwrap();
    let pair = encode_record(&tokenizer, &record).unwrap();
    assert_eq!(
        (pair.prompt, pair.chosen, pair.rejected),
        (vec![1, 3, 4], vec![5, 2], vec![6, 6, 2])
    );

    let missing = HfTokenizerConfig {
        pad: "<nope>".into(),
        ..HfTokenizerConfig::gemma()
    };
    assert!(HfTokenizer::from_file(&path, &missing)
        .unwrap_err()
        .to_string()
        .contains("<nope>"));
    assert!(HfTokenizer::from_file(dir.join("absent.json"), &config).is_err());
    let _ = std::fs::remove_dir_all(dir);
}
