//! Training LoRA adapters with the trainer ([`LoraPolicy`]): only the adapters move (the base's bytes stay),
//! AdamW holds state for them alone, the reference with the adapters off is the base model's, the
//! logits / fused paths, gradient checkpointing and gradient accumulation give the same adapter gradients,
//! checkpoints resume bit for bit and refuse another base.

mod lora_support;

use std::path::{Path, PathBuf};

use lora_support::{fixture_policy, gemma3_config, random_policy, randomize_b, rng_lock, seeded, snapshot};
use tch::{Device, Tensor};
use tch_rpo::data::{
    encode_records, CollateConfig, CollatedBatch, Collator, EncodedPair, PreferenceRecord, Text, Tokenizer,
};
use tch_rpo::lora::{LoraConfig, LoraPolicy};
use tch_rpo::models::gemma::GemmaPolicy;
use tch_rpo::models::tokenizer::CharTokenizer;
use tch_rpo::train::{
    score_reference, Collective, LossPath, ModelOutput, PolicyModel, ReferenceSource, RpoTrainer,
    RpoTrainerConfig, ScoringOptions, StepMetrics, Trainer, Warmup,
};
use tch_rpo::{compute_loss, Error, InputError, LoraError, LossBatch, RpoConfig};

const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789 ?";

fn tokenizer() -> CharTokenizer {
    CharTokenizer::new(ALPHABET).unwrap()
}

/// `n` pairs over [`ALPHABET`] (ids below 128: every fixture's vocabulary holds them).
fn pairs(n: usize) -> Vec<EncodedPair> {
    let records: Vec<PreferenceRecord> = (0..n)
        .map(|i| {
            let prompt = format!("q{} {}?", i % 7, "ab".repeat(1 + i % 3));
            let chosen = format!("yes {}", "y".repeat(1 + i % 4));
            let rejected = format!("no {}", "n".repeat(2 + i % 3));
            PreferenceRecord::new(Text::Plain(prompt), Text::Plain(chosen), Text::Plain(rejected)).unwrap()
        })
        .collect();
    encode_records(&tokenizer(), &records).unwrap()
}

fn collator() -> Collator {
    Collator::new(CollateConfig::new(tokenizer().pad_id())).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tch-rpo-lora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(total: u64, checkpoint_dir: Option<&Path>) -> RpoTrainerConfig {
    RpoTrainerConfig {
        learning_rate: 1e-2,
        warmup: Warmup::Ratio(0.0),
        seed: 7,
        batch_pairs: 3,
        grad_accum_steps: 2,
        checkpoint_dir: checkpoint_dir.map(Path::to_path_buf),
        save_steps: checkpoint_dir.map(|_| 2),
        progress: false,
        ..RpoTrainerConfig::paper(RpoConfig::paper(0.1, 0.5), total)
    }
}

fn lora(policy: GemmaPolicy, seed: i64) -> LoraPolicy<GemmaPolicy> {
    seeded(seed, || LoraPolicy::new(policy, &LoraConfig::new(4, 8.0))).unwrap()
}

fn losses(history: &[StepMetrics]) -> Vec<f64> {
    history.iter().map(|m| m.loss()).collect()
}

#[test]
fn training_moves_the_adapters_only() {
    let data = pairs(10);
    for fixture in ["gemma_tiny", "gemma2_tiny"] {
        let policy = fixture_policy(fixture);
        let base_before = snapshot(&policy.named_parameters());
        let policy = lora(policy, 1);
        assert!(policy
            .base()
            .named_parameters()
            .iter()
            .all(|(_, p)| !p.requires_grad()));
        let adapters_before = snapshot(&policy.named_parameters());
        let mut trainer = RpoTrainer::new(policy, ReferenceSource::AdaptersOff, config(3, None)).unwrap();
        // AdamW state for the adapters alone.
        let optimized: Vec<&str> = trainer
            .optimizer()
            .params()
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        let adapter_names: Vec<String> = trainer
            .model()
            .named_parameters()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(optimized, adapter_names, "{fixture}");
        let history = trainer.fit(&data, &collator()).unwrap();
        assert_eq!(history.len(), 3);
        assert!(
            history.iter().all(|m| !m.skipped && m.loss().is_finite()),
            "{fixture}"
        );
        let policy = trainer.into_model();
        for ((name, before), (_, after)) in base_before.iter().zip(&policy.base().named_parameters()) {
            assert!(before.equal(after), "{fixture}: base parameter {name} changed");
        }
        for ((name, before), (_, after)) in adapters_before.iter().zip(&policy.named_parameters()) {
            assert!(!before.equal(after), "{fixture}: adapter {name} did not move");
        }
    }
}

#[test]
fn the_reference_with_adapters_off_is_the_base_model() {
    let data = pairs(6);
    let base = random_policy(&gemma3_config(64), 2);
    let scoring = ScoringOptions::of_config(&config(1, None));
    let cache = score_reference(&base, &data, &collator(), &scoring, &Collective::single()).unwrap();
    let policy = lora(base, 3);
    randomize_b(policy.adapters(), 4, 0.3);
    let mut off = RpoTrainer::new(policy, ReferenceSource::AdaptersOff, config(1, None)).unwrap();
    let with_off = off.evaluate(&data, &collator(), 3).unwrap();
    assert!(
        off.model().adapters().enabled(),
        "the adapters are on again after the reference pass"
    );
    let policy = off.into_model();
    let mut cached = RpoTrainer::new(policy, ReferenceSource::Cached(cache), config(1, None)).unwrap();
    let with_cache = cached.evaluate(&data, &collator(), 3).unwrap();
    let (a, b): (Vec<_>, Vec<_>) = (with_off.values().collect(), with_cache.values().collect());
    assert_eq!(
        a, b,
        "AdaptersOff and the base's cached log-probs give other metrics"
    );
    assert_ne!(
        with_off.get("rewards/margins"),
        Some(0.0),
        "the adapters changed nothing"
    );
    // A model without adapters cannot be the reference of itself this way.
    let plain = random_policy(&gemma3_config(64), 2);
    let error = RpoTrainer::new(plain, ReferenceSource::AdaptersOff, config(1, None)).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Input(InputError::Config {
                name: "reference",
                ..
            })
        ),
        "{error:?}"
    );
}

fn micro_batches(data: &[EncodedPair]) -> Vec<CollatedBatch> {
    [[0usize, 1, 2], [3, 4, 5]]
        .iter()
        .map(|ids| {
            let chunk: Vec<(usize, &EncodedPair)> = ids.iter().map(|&i| (i, &data[i])).collect();
            collator().collate(&chunk, Device::Cpu).unwrap()
        })
        .collect()
}

/// The adapters' gradients after the trainer's sequence over `batches` (`forward_checkpointed` when the
/// base checkpoints, else the plain pass; `loss.backward()`; the deferred backward), reference-free RPO.
fn adapter_gradients(
    policy: &LoraPolicy<GemmaPolicy>,
    batches: &[CollatedBatch],
    path: LossPath,
) -> Vec<Tensor> {
    let rpo = RpoConfig::paper(0.1, 0.5);
    let loss_of = |output: &ModelOutput, batch: &CollatedBatch| match output {
        ModelOutput::Logits(logits) => {
            compute_loss(&rpo, &LossBatch::logits(logits, &batch.labels))
                .unwrap()
                .loss
        }
        ModelOutput::Hidden(states) => {
            let input = LossBatch::hidden(&states.hidden, states.head.clone(), &batch.labels);
            compute_loss(&rpo, &input).unwrap().loss
        }
    };
    for batch in batches {
        let (ids, mask) = (&batch.input_ids, &batch.attention_mask);
        match policy.forward_checkpointed(ids, mask, path).unwrap() {
            Some(checkpointed) => {
                loss_of(&checkpointed.output, batch).backward();
                checkpointed.backward.run().unwrap();
            }
            None => {
                let output = match path {
                    LossPath::Logits => ModelOutput::Logits(policy.forward(ids, mask).unwrap()),
                    _ => ModelOutput::Hidden(policy.forward_hidden(ids, mask).unwrap().unwrap()),
                };
                loss_of(&output, batch).backward();
            }
        }
    }
    policy
        .named_parameters()
        .iter()
        .map(|(_, p)| p.grad().copy())
        .collect()
}

/// Logits path, fused (hidden-state) path, each with and without gradient checkpointing, over two
/// micro-batches: the same adapter gradients. Checkpointing recomputes the same ops (1e-6 of the largest
/// entry, as `tests/gemma_checkpointing.rs`); fused against logits within the crate's fused-vs-unfused f32
/// tolerance (Liger's: atol 1e-5, rtol 5e-4, `tests/fused.rs`).
#[test]
fn loss_paths_and_checkpointing_give_the_same_adapter_gradients() {
    let data = pairs(6);
    let batches = micro_batches(&data);
    let run = |path: LossPath, checkpointing: bool| {
        let mut policy = lora(random_policy(&gemma3_config(64), 5), 6);
        randomize_b(policy.adapters(), 7, 0.3);
        policy.base_mut().set_gradient_checkpointing(checkpointing);
        adapter_gradients(&policy, &batches, path)
    };
    let reference = run(LossPath::Logits, false);
    for (path, checkpointing) in [
        (LossPath::Logits, true),
        (LossPath::Hidden, false),
        (LossPath::Hidden, true),
    ] {
        let got = run(path, checkpointing);
        for (i, (want, got)) in reference.iter().zip(&got).enumerate() {
            let scale = want.abs().max().double_value(&[]);
            assert!(scale > 0.0, "adapter tensor {i}: zero gradient");
            let diff = (want - got).abs().max().double_value(&[]);
            let tol = match path {
                LossPath::Logits => 1e-6 * scale,
                _ => 1e-5 + 5e-4 * scale,
            };
            assert!(
                diff <= tol,
                "{path:?} checkpointing {checkpointing}: tensor {i} off by {diff:e} (max {scale:e})"
            );
        }
    }
}

/// Gradient accumulation: one step over two micro-batches of 3 pairs equals one step over the 6 pairs at
/// once (the trainer normalizes the accumulated loss as one batch): the same loss and gradient norm within
/// f32 rounding of a sum over two parts (1e-6 relative).
#[test]
fn accumulation_equals_one_batch() {
    let data = pairs(6);
    let micro = micro_batches(&data);
    let indexed: Vec<(usize, &EncodedPair)> = data.iter().enumerate().collect();
    let whole = vec![collator().collate(&indexed, Device::Cpu).unwrap()];
    let step = |batches: &[CollatedBatch], path: LossPath| {
        let policy = lora(random_policy(&gemma3_config(64), 8), 9);
        randomize_b(policy.adapters(), 10, 0.3);
        let mut c = config(1, None);
        c.loss_path = path;
        let mut trainer = RpoTrainer::new(policy, ReferenceSource::AdaptersOff, c).unwrap();
        trainer.train_step(batches).unwrap()
    };
    for path in [LossPath::Logits, LossPath::Hidden] {
        let (a, b) = (step(&micro, path), step(&whole, path));
        let (na, nb) = (a.grad_norm.unwrap(), b.grad_norm.unwrap());
        assert!(
            (a.loss() - b.loss()).abs() <= 1e-6 * a.loss().abs().max(1.0) && (na - nb).abs() <= 1e-6 * na,
            "{path:?}: loss {} vs {}, grad norm {na} vs {nb}",
            a.loss(),
            b.loss()
        );
    }
}

#[test]
fn resume_is_bit_identical_and_refuses_another_base() {
    let data = pairs(10);
    let total = 4;
    let base = || random_policy(&gemma3_config(64), 11);
    let mut straight = RpoTrainer::new(
        lora(base(), 12),
        ReferenceSource::AdaptersOff,
        config(total, None),
    )
    .unwrap();
    let full = straight.fit(&data, &collator()).unwrap();

    let dir = temp_dir("resume");
    let mut first = RpoTrainer::new(
        lora(base(), 12),
        ReferenceSource::AdaptersOff,
        config(total, Some(&dir)),
    )
    .unwrap();
    first.fit_steps(&data, &collator(), Some(3)).unwrap();
    drop(first); // "crash" after step 3: the last checkpoint is step 2
                 // Other adapter initial values (seed 99): the adapters come from the checkpoint.
    let mut resumed = RpoTrainer::new(
        lora(base(), 99),
        ReferenceSource::AdaptersOff,
        config(total, Some(&dir)),
    )
    .unwrap();
    let path = resumed.resume_latest().unwrap().expect("a checkpoint");
    assert_eq!(resumed.step(), 2, "{path:?}");
    let tail = resumed.fit(&data, &collator()).unwrap();
    assert_eq!(losses(&tail), losses(&full[2..]));
    for (a, b) in tail.iter().zip(&full[2..]) {
        assert_eq!((a.grad_norm, a.lr), (b.grad_norm, b.lr));
    }
    for ((name, a), (_, b)) in resumed
        .model()
        .named_parameters()
        .iter()
        .zip(&straight.model().named_parameters())
    {
        assert!(a.equal(b), "adapter {name} differs after resuming");
    }
    // The checkpoint holds the adapters only, and the base's fingerprint.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path.join("trainer_state.json")).unwrap()).unwrap();
    assert_eq!(
        state["base_fingerprint"].as_str(),
        Some(resumed.model().fingerprint())
    );
    let saved = Tensor::read_safetensors(path.join("model.safetensors")).unwrap();
    assert!(saved
        .iter()
        .all(|(n, _)| n.contains(".lora_A.") || n.contains(".lora_B.")));

    // Another base (other weights, same shapes): refused, naming both fingerprints.
    let mut other = RpoTrainer::new(
        lora(random_policy(&gemma3_config(64), 13), 12),
        ReferenceSource::AdaptersOff,
        config(total, None),
    )
    .unwrap();
    match other.load_checkpoint(&path).unwrap_err() {
        Error::Lora(LoraError::BaseMismatch { expected, found, .. }) => {
            assert_eq!(expected, resumed.model().fingerprint());
            assert_eq!(found, other.model().fingerprint());
            assert_ne!(expected, found);
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(other.step(), 0, "a refused checkpoint changed the trainer");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn dropout_with_gradient_checkpointing_is_refused() {
    let data = pairs(6);
    let batches = micro_batches(&data);
    let mut lora_config = LoraConfig::new(4, 8.0);
    lora_config.lora_dropout = 0.1;
    let base = random_policy(&gemma3_config(64), 14);
    let mut policy = seeded(15, || LoraPolicy::new(base, &lora_config)).unwrap();
    policy.base_mut().set_gradient_checkpointing(true);
    let error = policy
        .forward_checkpointed(&batches[0].input_ids, &batches[0].attention_mask, LossPath::Auto)
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Input(InputError::Config {
                name: "lora_dropout",
                ..
            })
        ),
        "{error:?}"
    );
    // Training with dropout and without checkpointing works.
    policy.base_mut().set_gradient_checkpointing(false);
    let mut trainer = RpoTrainer::new(policy, ReferenceSource::AdaptersOff, config(1, None)).unwrap();
    let metrics = {
        let _generator = rng_lock(); // dropout draws from the global generator
        trainer.train_step(&batches).unwrap()
    };
    assert!(!metrics.skipped && metrics.loss().is_finite());
}
