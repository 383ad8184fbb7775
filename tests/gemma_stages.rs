//! The Gemma pieces of a staged run: `GemmaPolicy::try_clone` is an independent, identical copy,
//! `parameter_count` counts the elements of the parameters, and `greedy_accuracy` equals judging each
//! prompt's one-at-a-time greedy answer (reference: `greedy_decode`, per prompt).
use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind};
use tch_rpo::data::Tokenizer;
use tch_rpo::models::gemma::{greedy_accuracy, greedy_decode, Gemma, GemmaPolicy, LoadOptions, WeightSource};
use tch_rpo::models::tokenizer::CharTokenizer;
use tch_rpo::train::PolicyModel;
use tch_rpo::{Error, InputError};

fn fixture_policy() -> GemmaPolicy {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma2_tiny");
    let (vs, model) = Gemma::load(WeightSource::HfDir(&dir), &LoadOptions::default()).unwrap();
    GemmaPolicy::new(vs, model)
}

#[test]
fn try_clone_is_an_independent_identical_copy() {
    let mut policy = fixture_policy();
    policy.set_gradient_checkpointing(true);
    let copy = policy
        .try_clone(&LoadOptions::new(Device::Cpu, Kind::Float))
        .unwrap();
    assert!(copy.gradient_checkpointing());
    let (a, b) = (policy.named_parameters(), copy.named_parameters());
    assert_eq!(a.len(), b.len());
    let numel: i64 = a.iter().map(|(_, t)| t.numel() as i64).sum();
    assert_eq!(policy.parameter_count(), numel);
    assert_eq!(copy.parameter_count(), numel);
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na}");
    }
    // Changing the copy leaves the original as it was.
    let (name, original) = &a[0];
    let before = original.copy();
    tch::no_grad(|| {
        let _ = b[0].1.shallow_clone().fill_(7.0);
    });
    assert!(policy.named_parameters()[0].1.equal(&before), "{name}");
    let bf16 = policy
        .try_clone(&LoadOptions::new(Device::Cpu, Kind::BFloat16))
        .unwrap();
    assert!(bf16
        .named_parameters()
        .iter()
        .all(|(_, t)| t.kind() == Kind::BFloat16));
}

#[test]
fn greedy_accuracy_equals_judging_one_prompt_at_a_time() {
    let policy = fixture_policy();
    let tok = CharTokenizer::new("abcdefghij>").unwrap();
    let prompts: Vec<String> = ["abc>", "j>", "hgfedcba>", "ba>", "cab>"]
        .map(String::from)
        .to_vec();
    let max_new = 4;
    let eos = tok.eos_id().unwrap();
    // Reference: each prompt alone, BOS first, decoded greedily.
    let answers: HashMap<String, String> = prompts
        .iter()
        .map(|p| {
            let ids: Vec<i64> = tok.bos_id().into_iter().chain(tok.encode(p).unwrap()).collect();
            let out = greedy_decode(policy.model(), &[ids], max_new, eos, tok.pad_id(), Device::Cpu).unwrap();
            (p.clone(), tok.decode(&out[0]).unwrap())
        })
        .collect();
    // Correct = the reference answer, for the prompts of an even length only (3 of 5: "abc>", "j>", "cab>").
    let judge = |p: &str, a: &str| p.len() % 2 == 0 && answers[p] == a;
    for batch in [1, 2, 5, 64] {
        let got = greedy_accuracy(policy.model(), &tok, &prompts, max_new, batch, judge).unwrap();
        assert_eq!(got, Some(3.0 / 5.0), "batch {batch}");
    }
    let none = greedy_accuracy(policy.model(), &tok, &[], max_new, 8, judge).unwrap();
    assert_eq!(none, None);
    match greedy_accuracy(policy.model(), &tok, &prompts, max_new, 0, judge) {
        Err(Error::Input(InputError::InvalidParameter { name, .. })) => assert_eq!(name, "batch"),
        other => panic!("expected an InvalidParameter error, got {other:?}"),
    }
}
