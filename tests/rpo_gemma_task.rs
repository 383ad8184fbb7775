//! The `rpo_gemma` example's data and the library pieces its task uses: the shipped word-reversal files
//! match what the example's generator writes (`--write-data`) and are well formed (checked here
//! independently of the generator), the character tokenizer ([`CharTokenizer`]) round-trips, and batched
//! greedy decoding equals decoding one prompt at a time.
mod example_support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tch_rpo::data::{OnMalformed, PreferenceDataset, Text, Tokenizer};
use tch_rpo::models::gemma::{greedy_decode, Gemma, LoadOptions, WeightSource};
use tch_rpo::models::tokenizer::CharTokenizer;
use tch_rpo::DataError;
use tch_rpo::Error;

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/rpo_gemma/data")
        .join(file)
}

/// (prompt, chosen, rejected) of a plain-text JSON Lines file.
fn triples(path: &Path) -> Vec<(String, String, String)> {
    let plain = |t: &Text| match t {
        Text::Plain(s) => s.clone(),
        Text::Conversation(_) => panic!("conversational record in {}", path.display()),
    };
    PreferenceDataset::from_jsonl(path, OnMalformed::Error)
        .expect("read records")
        .records
        .iter()
        .map(|r| (plain(&r.prompt), plain(&r.chosen), plain(&r.rejected)))
        .collect()
}

#[test]
fn shipped_files_match_the_generator() {
    let dir = example_support::temp_dir("rpo_gemma_write_data");
    let out = dir.display().to_string();
    example_support::run_example_ok(&["--write-data", &out]);
    for name in ["train.jsonl", "heldout.jsonl"] {
        let written = std::fs::read(dir.join(name)).expect("written file");
        let shipped = std::fs::read(data(name)).expect("shipped file");
        assert!(
            written == shipped,
            "{name} differs from the generator's output: regenerate with \
             `cargo run --release --example rpo_gemma -- --write-data examples/rpo_gemma/data`"
        );
    }
    // Deterministic: a second run writes the same bytes.
    let again = example_support::temp_dir("rpo_gemma_write_data_again");
    example_support::run_example_ok(&["--write-data", &again.display().to_string()]);
    assert_eq!(
        std::fs::read(dir.join("train.jsonl")).unwrap(),
        std::fs::read(again.join("train.jsonl")).unwrap()
    );
    // The exact line format: {"prompt","chosen","rejected"} objects, one per line.
    let first = std::fs::read_to_string(data("train.jsonl"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let value: serde_json::Value = serde_json::from_str(&first).unwrap();
    let keys: HashSet<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, HashSet::from(["prompt", "chosen", "rejected"]));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&again);
}

#[test]
fn shipped_pairs_are_well_formed() {
    let (train, heldout) = (triples(&data("train.jsonl")), triples(&data("heldout.jsonl")));
    assert_eq!((train.len(), heldout.len()), (512, 128));
    let prompts: HashSet<&str> = train.iter().chain(&heldout).map(|r| r.0.as_str()).collect();
    assert_eq!(
        prompts.len(),
        train.len() + heldout.len(),
        "prompts repeat or leak into the held-out set"
    );
    for (prompt, chosen, rejected) in train.iter().chain(&heldout) {
        let word = prompt.strip_suffix('>').expect("prompt ends with '>'");
        assert!((3..=5).contains(&word.len()), "{prompt}");
        assert!(word.bytes().all(|b| (b'a'..=b'h').contains(&b)), "{prompt}");
        // Reference: reverse by index.
        let bytes = word.as_bytes();
        let expected: String = (0..bytes.len())
            .map(|i| bytes[bytes.len() - 1 - i] as char)
            .collect();
        assert_eq!(chosen, &expected);
        assert_ne!(chosen, rejected);
        // Plausible: no more than one letter shorter, never longer.
        assert!(
            rejected.len() + 1 >= chosen.len() && rejected.len() <= chosen.len(),
            "{prompt} {chosen} {rejected}"
        );
    }
}

#[test]
fn char_tokenizer_round_trip_and_errors() {
    let tok = CharTokenizer::new("abcdefghijklmnopqrstuvwxyz0123456789+-=>*/ ").unwrap();
    assert_eq!(tok.vocab_size(), 3 + 43);
    assert_eq!((tok.pad_id(), tok.eos_id(), tok.bos_id()), (0, Some(1), Some(2)));
    // a = 3, b = 4, …, z = 28, 0 = 29, …, 9 = 38, + 39, - 40, = 41, > 42.
    assert_eq!(tok.encode("ab>").unwrap(), vec![3, 4, 42]);
    assert_eq!(tok.decode(&[2, 4, 3, 1, 0, 999, -5]).unwrap(), "ba");
    for (prompt, ..) in triples(&data("train.jsonl")).iter().take(32) {
        let ids = tok.encode(prompt).unwrap();
        assert!(ids.iter().all(|id| (3..tok.vocab_size()).contains(id)));
        assert_eq!(tok.decode(&ids).unwrap(), *prompt);
    }
    match tok.encode("aA") {
        Err(Error::Data(DataError::Tokenizer(message))) => assert!(message.contains("'A'"), "{message}"),
        other => panic!("expected a tokenizer error, got {other:?}"),
    }
    assert!(matches!(
        CharTokenizer::new(""),
        Err(Error::Data(DataError::Tokenizer(_)))
    ));
    assert!(matches!(
        CharTokenizer::new("abca"),
        Err(Error::Data(DataError::Tokenizer(_)))
    ));
}

fn fixture_model() -> (tch::nn::VarStore, Gemma) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma2_tiny");
    Gemma::load(
        WeightSource::HfDir(&dir),
        &LoadOptions::new(Device::Cpu, Kind::Float),
    )
    .unwrap()
}

/// Reference greedy decoding: one prompt at a time, no padding, the full forward pass each step.
fn naive_greedy(model: &Gemma, prompt: &[i64], max_new: usize, eos: i64) -> Vec<i64> {
    let mut ids = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..max_new {
        let input = Tensor::from_slice(&ids).view([1, ids.len() as i64]);
        let logits = tch::no_grad(|| model.forward(&input, &input.ones_like())).unwrap();
        let last = logits.get(0).get(ids.len() as i64 - 1);
        let next = last.argmax(0, false).int64_value(&[]);
        if next == eos {
            break;
        }
        out.push(next);
        ids.push(next);
    }
    out
}

#[test]
fn batched_greedy_decoding_matches_one_at_a_time() {
    let (_vs, model) = fixture_model();
    // Prompts of different lengths (so the batch is padded); the fixture's window of 4 is exceeded.
    let prompts: Vec<Vec<i64>> = vec![
        vec![2, 17, 5],
        vec![2, 40, 41, 42, 43, 44, 45],
        vec![2, 99],
        vec![2, 3, 4, 5, 6],
    ];
    for eos in [1, 70] {
        let batched = greedy_decode(&model, &prompts, 6, eos, 0, Device::Cpu).unwrap();
        assert!(batched.iter().any(|answer| !answer.is_empty()));
        for (prompt, got) in prompts.iter().zip(&batched) {
            assert_eq!(got, &naive_greedy(&model, prompt, 6, eos), "prompt {prompt:?}");
        }
    }
    assert!(greedy_decode(&model, &[vec![]], 3, 1, 0, Device::Cpu).is_err());
    assert!(greedy_decode(&model, &[], 3, 1, 0, Device::Cpu)
        .unwrap()
        .is_empty());
}
