//! `data::word_reversal`: the shipped files are the generator's output written by `write_jsonl`, the
//! checker accepts exactly the reversed word (reference: reversal by index, here), prompts are distinct.
use std::collections::HashSet;
use std::path::Path;

use tch_rpo::data::word_reversal::{
    generate, is_correct, write_jsonl, ReversalPair, ALPHABET, DATA_SEED, HELDOUT_SIZE, MAX_LEN, MIN_LEN,
    TRAIN_SIZE,
};
use tch_rpo::data::{OnMalformed, PreferenceDataset};
use tch_rpo::{Error, InputError};

fn reverse_by_index(word: &str) -> String {
    let bytes = word.as_bytes();
    (0..bytes.len())
        .map(|i| bytes[bytes.len() - 1 - i] as char)
        .collect()
}

#[test]
fn shipped_files_are_the_generators_output() {
    let all = generate(DATA_SEED, TRAIN_SIZE + HELDOUT_SIZE);
    let (train, heldout) = all.split_at(TRAIN_SIZE);
    let dir = std::env::temp_dir().join(format!("tch_rpo_word_reversal_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rpo_gemma/data");
    for (name, pairs) in [("train.jsonl", train), ("heldout.jsonl", heldout)] {
        write_jsonl(&dir.join(name), pairs).unwrap();
        assert!(
            std::fs::read(dir.join(name)).unwrap() == std::fs::read(shipped.join(name)).unwrap(),
            "{name}"
        );
        let read = PreferenceDataset::from_jsonl(dir.join(name), OnMalformed::Error).unwrap();
        assert_eq!(read.len(), pairs.len());
    }
    let missing = dir.join("no_such_folder").join("x.jsonl");
    assert!(matches!(
        write_jsonl(&missing, train),
        Err(Error::Input(InputError::InvalidPath { .. }))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pairs_are_distinct_deterministic_and_checkable() {
    let pairs = generate(7, 300);
    assert_eq!(pairs, generate(7, 300));
    assert_ne!(pairs, generate(8, 300));
    let prompts: HashSet<&str> = pairs.iter().map(|p| p.prompt.as_str()).collect();
    assert_eq!(prompts.len(), pairs.len());
    for ReversalPair {
        prompt,
        chosen,
        rejected,
    } in &pairs
    {
        let word = prompt.strip_suffix('>').unwrap();
        assert!((MIN_LEN..=MAX_LEN).contains(&word.len()));
        assert!(word.chars().all(|c| ALPHABET.contains(c)));
        assert_eq!(chosen, &reverse_by_index(word));
        assert!(is_correct(prompt, chosen));
        assert!(!is_correct(prompt, rejected));
    }
    // Not of the form "<word>>" over the alphabet: no correct answer.
    for prompt in [">", "abc", "xyz>", "ab c>"] {
        assert!(
            !is_correct(prompt, &reverse_by_index(prompt.trim_end_matches('>'))),
            "{prompt}"
        );
    }
    // At most the number of distinct words: 8^3 + 8^4 + 8^5.
    assert_eq!(generate(1, usize::MAX / 2).len(), 512 + 4096 + 32768);
}
