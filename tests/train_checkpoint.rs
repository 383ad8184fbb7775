//! Checkpoints: an interrupted and resumed run equals an uninterrupted one; damaged checkpoints are refused;
//! an interrupted save leaves the last good checkpoint usable; metrics go to a JSON Lines log.
#![cfg(feature = "train")]

mod train_support;

use std::path::{Path, PathBuf};
use tch_rpo::data::{ByteTokenizer, CollateConfig, Collator};
use tch_rpo::train::PolicyModel;
use tch_rpo::train::{checkpoint, ReferenceSource, RpoTrainer, RpoTrainerConfig, StepMetrics, Warmup};
use tch_rpo::train::{Collective, ScoringOptions};
use tch_rpo::{CheckpointError, InputError, WeightsError};
use tch_rpo::{Error, RpoConfig};
use train_support::{max_param_diff, preference_pairs, TinyLm};

const HIDDEN: i64 = 12;
const TOTAL: u64 = 8;

fn collator() -> Collator {
    Collator::new(CollateConfig::new(ByteTokenizer::PAD)).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tch-rpo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The run's settings: 3 pairs per micro-batch, 2 micro-batches per step (with 10 pairs, steps straddle
/// epochs and batch sizes vary), a checkpoint every 3 steps into `checkpoint_dir`.
fn config(checkpoint_dir: Option<&Path>) -> RpoTrainerConfig {
    RpoTrainerConfig {
        learning_rate: 5e-3,
        warmup: Warmup::Ratio(0.25),
        seed: 1234,
        batch_pairs: 3,
        grad_accum_steps: 2,
        checkpoint_dir: checkpoint_dir.map(Path::to_path_buf),
        save_steps: checkpoint_dir.map(|_| 3),
        progress: false,
        ..RpoTrainerConfig::paper(RpoConfig::trl(0.1, 0.3), TOTAL)
    }
}

/// A fresh trainer with `config`; `init_seed` sets the policy's initial weights (the reference is always
/// seed 21).
fn trainer_with(init_seed: i64, config: RpoTrainerConfig) -> RpoTrainer<TinyLm> {
    let reference = ReferenceSource::Model(Box::new(TinyLm::new(21, HIDDEN)));
    RpoTrainer::new(TinyLm::new(init_seed, HIDDEN), reference, config).unwrap()
}

fn trainer(init_seed: i64) -> RpoTrainer<TinyLm> {
    trainer_with(init_seed, config(None))
}

fn losses(history: &[StepMetrics]) -> Vec<f64> {
    history.iter().map(|m| m.loss()).collect()
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_run() {
    let pairs = preference_pairs(10);
    let mut straight = trainer(21);
    let full = straight.fit(&pairs, &collator()).unwrap();
    assert_eq!(full.len() as u64, TOTAL);

    let dir = temp_dir("resume");
    let mut first = trainer_with(21, config(Some(&dir)));
    let head = first.fit_steps(&pairs, &collator(), Some(5)).unwrap();
    assert_eq!(losses(&head), losses(&full[..5]));
    drop(first); // "crash" after step 5: steps 4 and 5 were never saved

    // a different initialization proves the weights come from the checkpoint
    let mut resumed = trainer_with(99, config(Some(&dir)));
    let path = resumed.resume_latest().unwrap().expect("a checkpoint");
    assert!(path.ends_with("step-00000003"), "{path:?}");
    assert_eq!(resumed.step(), 3);
    let tail = resumed.fit(&pairs, &collator()).unwrap();
    assert_eq!(tail.len(), 5);
    assert_eq!(
        losses(&tail),
        losses(&full[3..]),
        "the loss trajectory must continue exactly"
    );
    for (a, b) in tail.iter().zip(&full[3..]) {
        assert_eq!(
            (a.step, a.lr, a.grad_norm, a.epoch),
            (b.step, b.lr, b.grad_norm, b.epoch)
        );
    }
    assert_eq!(
        max_param_diff(
            &resumed.model().named_parameters(),
            &straight.model().named_parameters()
        ),
        0.0
    );
    // the finished run saved its last step too
    assert!(checkpoint::latest(&dir)
        .unwrap()
        .unwrap()
        .ends_with("step-00000008"));
    let _ = std::fs::remove_dir_all(dir);
}

/// A [`WeightsError::Parameters`](tch_rpo::WeightsError::Parameters) from a trainer checkpoint whose display contains `needle`.
fn expect_parameters_error(result: tch_rpo::Result<()>, needle: &str) -> tch_rpo::ParameterMismatch {
    match result {
        Err(error @ Error::Weights(WeightsError::Parameters { .. })) => {
            assert!(error.to_string().contains(needle), "{error}");
            let Error::Weights(WeightsError::Parameters { mismatch, .. }) = error else {
                unreachable!()
            };
            *mismatch
        }
        other => panic!("expected a parameter-set error mentioning {needle:?}, got {other:?}"),
    }
}

fn expect_checkpoint_error(result: tch_rpo::Result<()>, needle: &str) {
    match result {
        Err(Error::Checkpoint(CheckpointError::Invalid { reason, .. })) => {
            assert!(reason.contains(needle), "{reason}")
        }
        other => panic!("expected a checkpoint error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn damaged_checkpoints_are_detected() {
    let pairs = preference_pairs(6);
    let dir = temp_dir("damaged");
    let one_batch = RpoTrainerConfig {
        batch_pairs: 6,
        grad_accum_steps: 1,
        ..config(None)
    };
    let mut t = trainer_with(21, one_batch.clone());
    t.fit_steps(&pairs, &collator(), Some(1)).unwrap();
    let save = || t.save_checkpoint(&dir).unwrap();

    let truncated = save();
    let model_file = truncated.join(checkpoint::MODEL_FILE);
    let len = std::fs::metadata(&model_file).unwrap().len();
    let bytes = std::fs::read(&model_file).unwrap();
    std::fs::write(&model_file, &bytes[..(len / 2) as usize]).unwrap();
    expect_checkpoint_error(trainer(21).load_checkpoint(&truncated), "truncated");

    let corrupted = save();
    let opt_file = corrupted.join(checkpoint::OPTIMIZER_FILE);
    let mut bytes = std::fs::read(&opt_file).unwrap();
    let middle = bytes.len() - 5;
    bytes[middle] ^= 0x40;
    std::fs::write(&opt_file, &bytes).unwrap();
    expect_checkpoint_error(trainer(21).load_checkpoint(&corrupted), "corrupted");

    let no_manifest = save();
    std::fs::remove_file(no_manifest.join(checkpoint::MANIFEST_FILE)).unwrap();
    expect_checkpoint_error(trainer(21).load_checkpoint(&no_manifest), "incomplete");

    let bad_manifest = save();
    let manifest = bad_manifest.join(checkpoint::MANIFEST_FILE);
    let text = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &text[..text.len() / 2]).unwrap();
    expect_checkpoint_error(trainer(21).load_checkpoint(&bad_manifest), "not valid JSON");

    let good = save();
    let mut restored = trainer_with(99, one_batch.clone());
    restored.load_checkpoint(&good).unwrap();
    assert_eq!(restored.step(), 1);
    assert_eq!(
        max_param_diff(
            &restored.model().named_parameters(),
            &t.model().named_parameters()
        ),
        0.0
    );

    // a checkpoint of another run (different seed) is refused rather than silently mixed in
    let config = RpoTrainerConfig {
        seed: 5,
        ..t.config().clone()
    };
    let mut other = RpoTrainer::new(TinyLm::new(21, HIDDEN), ReferenceSource::Free, config).unwrap();
    expect_checkpoint_error(other.load_checkpoint(&good), "seed");
    // a model of another shape is refused
    let mut wider = RpoTrainer::new(
        TinyLm::new(21, HIDDEN + 1),
        ReferenceSource::Free,
        t.config().clone(),
    )
    .unwrap();
    let mismatch = expect_parameters_error(wider.load_checkpoint(&good), "shape");
    assert!(!mismatch.mismatched.is_empty(), "{mismatch}");
    assert!(mismatch.missing.is_empty() && mismatch.unexpected.is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn interrupted_save_leaves_the_last_good_checkpoint() {
    let pairs = preference_pairs(6);
    let dir = temp_dir("crash");
    let run = RpoTrainerConfig {
        batch_pairs: 6,
        grad_accum_steps: 1,
        ..config(Some(&dir))
    };
    let mut t = trainer_with(21, run.clone());
    t.fit_steps(&pairs, &collator(), Some(3)).unwrap();
    // what a crash in the middle of saving step 4 leaves behind: a partial temporary directory, and a
    // temporary pointer file
    let partial = dir.join(".tmp-step-00000004-1-1");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join(checkpoint::MODEL_FILE), b"half a fi").unwrap();
    std::fs::write(dir.join(".tmp-latest-1-1"), b"step-0000").unwrap();
    let mut resumed = trainer_with(99, run.clone());
    let path = resumed.resume_latest().unwrap().unwrap();
    assert!(path.ends_with("step-00000003"));
    assert_eq!(
        max_param_diff(&resumed.model().named_parameters(), &t.model().named_parameters()),
        0.0
    );
    // the next save removes what the interrupted one left
    resumed.fit_steps(&pairs, &collator(), Some(3)).unwrap();
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // and no checkpoint at all is not an error
    let empty = config(Some(&temp_dir("empty")));
    assert!(trainer_with(21, empty).resume_latest().unwrap().is_none());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn metrics_are_appended_as_json_lines() {
    let pairs = preference_pairs(6);
    let dir = temp_dir("log");
    let log = dir.join("metrics.jsonl");
    let mut t = trainer_with(
        21,
        RpoTrainerConfig {
            log_path: Some(log.clone()),
            ..config(None)
        },
    );
    let history = t.fit_steps(&pairs, &collator(), Some(3)).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    for (line, m) in lines.iter().zip(&history) {
        for key in [
            "loss",
            "nll",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/accuracies",
            "rewards/margins",
            "logps/chosen",
            "logps/rejected",
            "grad_norm",
            "lr",
            "tokens_per_second",
        ] {
            assert!(line[key].is_number(), "{key} in {line}");
        }
        assert_eq!(line["step"].as_u64(), Some(m.step));
        assert_eq!(line["skipped_steps"].as_u64(), Some(0));
        // token statistics are off by default, and then not logged
        assert!(
            line.get("entropy").is_none() && line.get("logits/chosen").is_none(),
            "{line}"
        );
        assert!((line["loss"].as_f64().unwrap() - m.loss()).abs() <= 1e-12 * m.loss().abs());
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn metric_steps(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// A run that logged steps 4 and 5 after its last checkpoint (3) and crashed: the resumed run logs them
/// again, and the log must hold every step once, the resumed values.
#[test]
fn resumed_run_logs_every_step_once() {
    let pairs = preference_pairs(10);
    let dir = temp_dir("log-resume");
    let log = dir.join("metrics.jsonl");
    let run = RpoTrainerConfig {
        log_path: Some(log.clone()),
        ..config(Some(&dir.join("checkpoints")))
    };
    trainer_with(21, run.clone())
        .fit_steps(&pairs, &collator(), Some(5))
        .unwrap();
    // a line torn by the crash
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("{\"step\": 6, \"lo");
    std::fs::write(&log, text).unwrap();
    let mut resumed = trainer_with(99, run);
    assert_eq!(
        resumed
            .resume_latest()
            .unwrap()
            .map(|p| p.ends_with("step-00000003")),
        Some(true)
    );
    let tail = resumed.fit(&pairs, &collator()).unwrap();
    assert_eq!(metric_steps(&log), (1..=TOTAL).collect::<Vec<_>>());
    let last: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(last["loss"].as_f64(), Some(tail.last().unwrap().loss()));
    let _ = std::fs::remove_dir_all(dir);
}

/// A checkpoint whose weights are fine but whose optimizer state is not: loading fails and changes
/// nothing (weights, Adam moments, step).
#[test]
fn failed_load_leaves_the_trainer_unchanged() {
    let pairs = preference_pairs(6);
    let dir = temp_dir("half-load");
    let mut donor = trainer(21);
    donor.fit_steps(&pairs, &collator(), Some(2)).unwrap();
    let good = donor.save_checkpoint(&dir).unwrap();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(good.join(checkpoint::STATE_FILE)).unwrap()).unwrap();
    let mut optimizer = donor.optimizer().state_tensors();
    let dropped = optimizer.pop().unwrap().0;
    let broken = checkpoint::save(
        &dir.join("broken"),
        &checkpoint::CheckpointData {
            step: 2,
            model: donor.model().named_parameters(),
            optimizer,
            reference: Vec::new(),
            state,
        },
    )
    .unwrap();

    let mut target = trainer(99);
    let before = TinyLm::new(99, HIDDEN).snapshot();
    let mismatch = expect_parameters_error(target.load_checkpoint(&broken), &dropped);
    assert_eq!(mismatch.missing, vec![dropped.clone()]);
    assert_eq!(max_param_diff(&target.model().named_parameters(), &before), 0.0);
    assert_eq!((target.step(), target.optimizer().step_count()), (0, 0));
    for p in target.optimizer().params() {
        assert_eq!(p.m.abs().max().double_value(&[]), 0.0, "{}", p.name);
    }
    // the complete checkpoint loads
    target.load_checkpoint(&good).unwrap();
    assert_eq!(
        max_param_diff(
            &target.model().named_parameters(),
            &donor.model().named_parameters()
        ),
        0.0
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `latest` may only name a checkpoint inside the checkpoint directory, even when the place outside
/// holds a valid checkpoint.
#[test]
fn latest_pointer_outside_the_directory_is_refused() {
    let pairs = preference_pairs(6);
    let root = temp_dir("escape");
    let dir = root.join("checkpoints");
    let mut t = trainer_with(21, config(Some(&dir)));
    t.fit_steps(&pairs, &collator(), Some(3)).unwrap();
    let saved = checkpoint::latest(&dir).unwrap().unwrap();
    std::fs::rename(&saved, root.join("outside")).unwrap();
    for pointer in ["../outside", "/etc", ".", "a/../../outside", ""] {
        std::fs::write(dir.join(checkpoint::LATEST_FILE), pointer).unwrap();
        match checkpoint::latest(&dir) {
            Err(Error::Checkpoint(CheckpointError::Invalid { reason, .. })) => {
                assert!(reason.contains("inside"), "{pointer}: {reason}")
            }
            other => panic!("{pointer:?}: expected a refusal, got {other:?}"),
        }
    }
    std::fs::write(dir.join(checkpoint::LATEST_FILE), "../outside").unwrap();
    assert!(trainer_with(21, config(Some(&dir))).resume_latest().is_err());
    let _ = std::fs::remove_dir_all(root);
}

/// `save_total_limit` keeps the newest checkpoints (the one `latest` names among them).
#[test]
fn save_total_limit_keeps_the_newest_checkpoints() {
    let pairs = preference_pairs(10);
    let dir = temp_dir("retention");
    let run = RpoTrainerConfig {
        save_steps: Some(2),
        save_total_limit: Some(2),
        ..config(Some(&dir))
    };
    let mut t = trainer_with(21, run.clone());
    t.fit_steps(&pairs, &collator(), Some(5)).unwrap();
    let names = |dir: &Path| -> Vec<String> {
        checkpoint::list(dir)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names(&dir), ["step-00000002", "step-00000004"]);
    t.fit(&pairs, &collator()).unwrap();
    assert_eq!(names(&dir), ["step-00000006", "step-00000008"]);
    assert!(checkpoint::latest(&dir)
        .unwrap()
        .unwrap()
        .ends_with("step-00000008"));
    // the one `latest` names is kept even when it is not the newest
    std::fs::write(dir.join(checkpoint::LATEST_FILE), "step-00000006").unwrap();
    t.save_checkpoint(&dir).unwrap(); // step-00000008-1; latest now names it
    std::fs::write(dir.join(checkpoint::LATEST_FILE), "step-00000006").unwrap();
    checkpoint::prune(&dir, 1).unwrap();
    assert_eq!(names(&dir), ["step-00000006"]);
    assert!(checkpoint::prune(&dir, 0).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// The builder sets each value once: the step count is the schedule's length and where `fit` stops; the
/// checkpoint directory is where `fit` saves and where `resume(true)` looks.
#[test]
fn builder_resumes_from_its_checkpoint_directory() {
    let pairs = preference_pairs(10);
    let dir = temp_dir("builder");
    let build = |resume: bool| {
        RpoTrainer::builder(TinyLm::new(21, HIDDEN))
            .ref_model(TinyLm::new(21, HIDDEN))
            .objective(RpoConfig::trl(0.1, 0.3))
            .learning_rate(5e-3)
            .warmup_ratio(0.25)
            .lr_scheduler_type(tch_rpo::train::Decay::Cosine)
            .max_steps(TOTAL)
            .seed(1234)
            .batch_size(3)
            .gradient_accumulation_steps(2)
            .checkpoint_dir(&dir)
            .save_steps(3)
            .progress(false)
            .resume(resume)
            .build()
            .unwrap()
    };
    let mut first = build(true); // nothing to resume from yet: a fresh run
    assert_eq!(first.step(), 0);
    assert_eq!(first.schedule().total_steps, TOTAL);
    assert_eq!(first.schedule(), &config(None).schedule().unwrap());
    let head = first.fit_steps(&pairs, &collator(), Some(4)).unwrap();
    let mut second = build(true);
    assert_eq!(second.step(), 3);
    let tail = second.fit(&pairs, &collator()).unwrap();
    assert_eq!(tail.len() as u64, TOTAL - 3);
    assert_eq!(tail[0].loss(), head[3].loss());
    // the same run through the plain configuration
    let full = trainer(21).fit(&pairs, &collator()).unwrap();
    assert_eq!(losses(&tail), losses(&full[3..]));
    let _ = std::fs::remove_dir_all(dir);
}

/// `ReferenceSource::InitialPolicy` (TRL's `precompute_ref_log_probs` without a `ref_model`): the same run
/// as a cache computed by hand from a copy of the initial model, interrupted and resumed from a checkpoint
/// that carries the cache.
#[test]
fn initial_policy_reference_is_precomputed_and_checkpointed() {
    let pairs = preference_pairs(10);
    let cache = tch_rpo::train::score_reference(
        &TinyLm::new(21, HIDDEN),
        &pairs,
        &collator(),
        // as the trainer scores them: `batch_pairs` at a time, on its default path
        &ScoringOptions::new(3),
        &Collective::single(),
    )
    .unwrap();
    let by_hand = RpoTrainer::new(
        TinyLm::new(21, HIDDEN),
        ReferenceSource::Cached(cache),
        config(None),
    )
    .unwrap()
    .fit(&pairs, &collator())
    .unwrap();

    let dir = temp_dir("initial-policy");
    let fresh = |seed| {
        RpoTrainer::new(
            TinyLm::new(seed, HIDDEN),
            ReferenceSource::InitialPolicy,
            config(Some(&dir)),
        )
        .unwrap()
    };
    let mut first = fresh(21);
    // no reference log-probs before the first fit scores the training pairs
    assert!(matches!(
        first.evaluate(&pairs, &collator(), 4),
        Err(Error::Input(InputError::Config {
            name: "reference",
            ..
        }))
    ));
    let head = first.fit_steps(&pairs, &collator(), Some(5)).unwrap();
    assert_eq!(losses(&head), losses(&by_hand[..5]));
    // the cache is now fixed to the training pairs
    assert!(matches!(
        first.evaluate(&pairs[..4], &collator(), 4),
        Err(Error::Input(InputError::Config {
            name: "reference cache",
            ..
        }))
    ));
    drop(first);
    let latest = checkpoint::latest(&dir).unwrap().unwrap();
    assert!(latest.join(checkpoint::REFERENCE_FILE).is_file());

    let mut resumed = fresh(99);
    resumed.resume_latest().unwrap();
    let tail = resumed.fit(&pairs, &collator()).unwrap();
    assert_eq!(losses(&tail), losses(&by_hand[3..]));

    // a checkpoint without the cache cannot supply it after step 0
    let other = temp_dir("initial-policy-missing");
    let mut with_model = trainer_with(21, config(Some(&other)));
    with_model.fit_steps(&pairs, &collator(), Some(3)).unwrap();
    let mut missing = RpoTrainer::new(
        TinyLm::new(99, HIDDEN),
        ReferenceSource::InitialPolicy,
        config(Some(&other)),
    )
    .unwrap();
    missing.resume_latest().unwrap();
    assert!(matches!(
        missing.fit(&pairs, &collator()),
        Err(Error::Input(InputError::Config {
            name: "reference",
            ..
        }))
    ));
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(other);
}
