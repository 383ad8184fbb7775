//! The `rpo_gemma` example's task (word reversal), its shipped data files, the character vocabulary, and
//! greedy decoding / the gold metric.
#[path = "../examples/rpo_gemma/gemma.rs"]
mod gemma;
#[path = "../examples/rpo_gemma/task.rs"]
mod task;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use gemma::{greedy_decode, Gemma};
use task::{is_correct, CharVocab, Record};
use tch::{Device, Kind, Tensor};

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/rpo_gemma/data")
        .join(file)
}

#[test]
fn checker_on_hand_written_cases() {
    assert!(is_correct("abc>", "cba"));
    assert!(is_correct("hgfed>", "defgh"));
    assert!(is_correct("aba>", "aba"));
    assert!(!is_correct("abc>", "abc"));
    assert!(!is_correct("abc>", "cb"));
    assert!(!is_correct("abc>", "cbaa"));
    assert!(!is_correct("abc>", " cba"));
    assert!(!is_correct("abc", "cba")); // no '>'
    assert!(!is_correct("abz>", "zba")); // 'z' is not in the alphabet
    assert!(!is_correct(">", ""));
}

#[test]
fn generator_is_deterministic_and_pairs_are_well_formed() {
    let (train, heldout) = task::generate_split(task::DATA_SEED, task::TRAIN_SIZE, task::HELDOUT_SIZE);
    assert_eq!(train.len(), task::TRAIN_SIZE);
    assert_eq!(heldout.len(), task::HELDOUT_SIZE);
    assert_eq!(
        task::generate_split(task::DATA_SEED, task::TRAIN_SIZE, task::HELDOUT_SIZE).0,
        train
    );
    assert_ne!(task::generate(task::DATA_SEED + 1, 16), train[..16].to_vec());
    let prompts: HashSet<&str> = train.iter().chain(&heldout).map(|r| r.prompt.as_str()).collect();
    assert_eq!(
        prompts.len(),
        train.len() + heldout.len(),
        "prompts repeat or leak into the held-out set"
    );
    for r in train.iter().chain(&heldout) {
        let word = r.prompt.strip_suffix('>').unwrap();
        assert!((task::MIN_LEN..=task::MAX_LEN).contains(&word.len()), "{r:?}");
        // Reference written independently of the checker: reverse by index.
        let bytes = word.as_bytes();
        let expected: String = (0..bytes.len())
            .map(|i| bytes[bytes.len() - 1 - i] as char)
            .collect();
        assert_eq!(r.chosen, expected);
        assert!(is_correct(&r.prompt, &r.chosen));
        assert!(!is_correct(&r.prompt, &r.rejected), "{r:?}");
        assert_ne!(r.chosen, r.rejected);
        // Plausible: same letters up to one edit, and no more than one letter shorter.
        assert!(
            r.rejected.len() + 1 >= r.chosen.len() && r.rejected.len() <= r.chosen.len(),
            "{r:?}"
        );
    }
}

#[test]
fn shipped_files_match_the_generator() {
    let (train, heldout) = task::generate_split(task::DATA_SEED, task::TRAIN_SIZE, task::HELDOUT_SIZE);
    assert_eq!(
        task::read_jsonl(&data("train.jsonl")).unwrap(),
        train,
        "regenerate: see task.rs"
    );
    assert_eq!(
        task::read_jsonl(&data("heldout.jsonl")).unwrap(),
        heldout,
        "regenerate: see task.rs"
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
}

#[test]
fn jsonl_round_trip_and_errors() {
    let dir = std::env::temp_dir().join(format!("tch_rpo_task_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("x.jsonl");
    let records = vec![Record {
        prompt: "ab>".into(),
        chosen: "ba".into(),
        rejected: "ab".into(),
    }];
    task::write_jsonl(&path, &records).unwrap();
    assert_eq!(task::read_jsonl(&path).unwrap(), records);
    std::fs::write(
        &path,
        "{\"prompt\":\"ab>\",\"chosen\":\"ba\",\"rejected\":\"ab\"}\n{\"prompt\":1}\n",
    )
    .unwrap();
    let err = task::read_jsonl(&path).unwrap_err();
    assert!(err.contains("x.jsonl:2"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn char_vocab_round_trip() {
    let vocab = CharVocab::new();
    // a = 3, b = 4, …, z = 28, 0 = 29, …, 9 = 38, + 39, - 40, = 41, > 42.
    assert_eq!(
        vocab.encode_prompt("ab>").unwrap(),
        vec![CharVocab::BOS, 3, 4, 42]
    );
    assert_eq!(vocab.encode_answer("ba").unwrap(), vec![4, 3, CharVocab::EOS]);
    assert_eq!(vocab.decode(&[4, 3, CharVocab::EOS, 5]), "ba");
    assert!(vocab.encode("A").is_err());
    let (train, _) = task::generate_split(task::DATA_SEED, 32, 0);
    for r in &train {
        let ids = vocab.encode(&r.prompt).unwrap();
        assert!(ids.iter().all(|id| (3..vocab.len()).contains(id)));
        assert_eq!(vocab.decode(&ids), r.prompt);
    }
}

fn fixture_model() -> (tch::nn::VarStore, Gemma) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma2_tiny");
    Gemma::from_pretrained(&dir, Device::Cpu, Kind::Float).unwrap()
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
    // Prompts of different lengths (so the batch is right-padded); the fixture's window of 4 is exceeded.
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

#[test]
fn gold_accuracy_counts_correct_greedy_answers() {
    let (_vs, model) = fixture_model();
    let vocab = CharVocab::new();
    let (_, heldout) = task::generate_split(task::DATA_SEED, task::TRAIN_SIZE, 10);
    let prompts: Vec<String> = heldout.iter().map(|r| r.prompt.clone()).collect();
    let accuracy = task::gold_accuracy(&model, &vocab, &prompts, 7, 4, Device::Cpu).unwrap();
    let mut correct = 0;
    for prompt in &prompts {
        let answer = naive_greedy(&model, &vocab.encode_prompt(prompt).unwrap(), 7, CharVocab::EOS);
        correct += usize::from(is_correct(prompt, &vocab.decode(&answer)));
    }
    assert_eq!(accuracy, correct as f64 / prompts.len() as f64);
}
