//! Checkpoints: an interrupted and resumed run equals an uninterrupted one; damaged checkpoints are refused;
//! an interrupted save leaves the last good checkpoint usable; metrics go to a JSON Lines log.
#![cfg(feature = "train")]

mod train_support;

use std::path::{Path, PathBuf};
use tch_rpo::data::{ByteTokenizer, CollateConfig, Collator};
use tch_rpo::train::{
    checkpoint, Decay, FitOptions, LrSchedule, ReferenceSource, RpoTrainer, RpoTrainerConfig, StepMetrics,
};
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

/// A fresh trainer; `init_seed` sets the policy's initial weights (the reference is always seed 21).
fn trainer(init_seed: i64) -> RpoTrainer {
    let config = RpoTrainerConfig {
        schedule: LrSchedule::with_warmup_ratio(5e-3, TOTAL, 0.25, Decay::Cosine).unwrap(),
        seed: 1234,
        ..RpoTrainerConfig::paper(RpoConfig::trl(0.1, 0.3), TOTAL).unwrap()
    };
    let reference = ReferenceSource::Model(Box::new(TinyLm::new(21, HIDDEN)));
    RpoTrainer::new(Box::new(TinyLm::new(init_seed, HIDDEN)), reference, config).unwrap()
}

fn options(checkpoint_dir: Option<&Path>, max_steps: Option<u64>) -> FitOptions {
    FitOptions {
        checkpoint_dir: checkpoint_dir.map(Path::to_path_buf),
        checkpoint_every: Some(3),
        progress: false,
        max_steps,
        // 10 pairs, 3 per micro-batch, 2 micro-batches per step: steps straddle epochs and batch sizes vary
        ..FitOptions::new(3, 2)
    }
}

fn losses(history: &[StepMetrics]) -> Vec<f64> {
    history.iter().map(|m| m.loss).collect()
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_run() {
    let pairs = preference_pairs(10);
    let mut straight = trainer(21);
    let full = straight.fit(&pairs, &collator(), &options(None, None)).unwrap();
    assert_eq!(full.len() as u64, TOTAL);

    let dir = temp_dir("resume");
    let mut first = trainer(21);
    let head = first
        .fit(&pairs, &collator(), &options(Some(&dir), Some(5)))
        .unwrap();
    assert_eq!(losses(&head), losses(&full[..5]));
    drop(first); // "crash" after step 5: steps 4 and 5 were never saved

    // a different initialization proves the weights come from the checkpoint
    let mut resumed = trainer(99);
    let path = resumed.resume_latest(&dir).unwrap().expect("a checkpoint");
    assert!(path.ends_with("step-00000003"), "{path:?}");
    assert_eq!(resumed.step(), 3);
    let tail = resumed
        .fit(&pairs, &collator(), &options(Some(&dir), None))
        .unwrap();
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

fn expect_checkpoint_error(result: tch_rpo::Result<()>, needle: &str) {
    match result {
        Err(Error::Checkpoint { reason, .. }) => assert!(reason.contains(needle), "{reason}"),
        other => panic!("expected a checkpoint error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn damaged_checkpoints_are_detected() {
    let pairs = preference_pairs(6);
    let dir = temp_dir("damaged");
    let mut t = trainer(21);
    let mut opts = options(None, Some(1));
    opts.batch_pairs = 6;
    opts.grad_accum_steps = 1;
    t.fit(&pairs, &collator(), &opts).unwrap();
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
    let mut restored = trainer(99);
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
    let mut other =
        RpoTrainer::new(Box::new(TinyLm::new(21, HIDDEN)), ReferenceSource::Free, config).unwrap();
    expect_checkpoint_error(other.load_checkpoint(&good), "seed");
    // a model of another shape is refused
    let mut wider = RpoTrainer::new(
        Box::new(TinyLm::new(21, HIDDEN + 1)),
        ReferenceSource::Free,
        t.config().clone(),
    )
    .unwrap();
    expect_checkpoint_error(wider.load_checkpoint(&good), "shape");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn interrupted_save_leaves_the_last_good_checkpoint() {
    let pairs = preference_pairs(6);
    let dir = temp_dir("crash");
    let mut t = trainer(21);
    let mut opts = options(Some(&dir), Some(3));
    opts.batch_pairs = 6;
    opts.grad_accum_steps = 1;
    t.fit(&pairs, &collator(), &opts).unwrap();
    // what a crash in the middle of saving step 4 leaves behind: a partial temporary directory
    let partial = dir.join(".tmp-step-00000004-1-1");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join(checkpoint::MODEL_FILE), b"half a fi").unwrap();
    let mut resumed = trainer(99);
    let path = resumed.resume_latest(&dir).unwrap().unwrap();
    assert!(path.ends_with("step-00000003"));
    assert_eq!(
        max_param_diff(&resumed.model().named_parameters(), &t.model().named_parameters()),
        0.0
    );
    // and no checkpoint at all is not an error
    assert!(trainer(21).resume_latest(&temp_dir("empty")).unwrap().is_none());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn metrics_are_appended_as_json_lines() {
    let pairs = preference_pairs(6);
    let dir = temp_dir("log");
    let log = dir.join("metrics.jsonl");
    let mut t = trainer(21);
    let mut opts = options(None, Some(3));
    opts.log_path = Some(log.clone());
    let history = t.fit(&pairs, &collator(), &opts).unwrap();
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
        assert!((line["loss"].as_f64().unwrap() - m.loss).abs() <= 1e-12 * m.loss.abs());
    }
    let _ = std::fs::remove_dir_all(dir);
}
