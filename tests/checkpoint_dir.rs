//! The checkpoint folder as a user may leave it: a `checkpoint_dir` that is a file, a `latest` pointer at a
//! file or at nothing, symbolic links leading out of the folder, damaged integers in the trainer state.
//! Each is a typed [`CheckpointError::Invalid`](tch_rpo::CheckpointError::Invalid) that says what is actually wrong.
#![cfg(all(feature = "train", unix))]

mod train_support;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use tch_rpo::data::{ByteTokenizer, CollateConfig, Collator};
use tch_rpo::train::{checkpoint, ReferenceSource, RpoTrainer, RpoTrainerConfig};
use tch_rpo::CheckpointError;
use tch_rpo::{Error, RpoConfig};
use train_support::{preference_pairs, TinyLm};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tch-rpo-ckdir-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn trainer(dir: &Path) -> RpoTrainer<TinyLm> {
    let config = RpoTrainerConfig {
        batch_pairs: 2,
        checkpoint_dir: Some(dir.to_path_buf()),
        progress: false,
        ..RpoTrainerConfig::paper(RpoConfig::paper(0.1, 0.5), 2)
    };
    RpoTrainer::new(TinyLm::new(5, 12), ReferenceSource::Free, config).unwrap()
}

/// A trained run with a complete checkpoint under `dir`; returns its path.
fn saved_run(dir: &Path) -> PathBuf {
    let collator = Collator::new(CollateConfig::new(ByteTokenizer::PAD)).unwrap();
    trainer(dir).fit(&preference_pairs(4), &collator).unwrap();
    checkpoint::latest(dir).unwrap().expect("a checkpoint")
}

fn checkpoint_reason(result: tch_rpo::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(Error::Checkpoint(CheckpointError::Invalid { reason, .. })) => reason,
        other => panic!("expected CheckpointError::Invalid, got {other:?}"),
    }
}

/// Before: `Io: File exists (os error 17)` when saving, `Not a directory` when resuming.
#[test]
fn checkpoint_dir_that_is_a_file() {
    let root = temp_dir("file");
    let file = root.join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let collator = Collator::new(CollateConfig::new(ByteTokenizer::PAD)).unwrap();
    let reason = checkpoint_reason(trainer(&file).fit(&preference_pairs(4), &collator));
    assert!(
        reason.contains("checkpoint_dir") && reason.contains("is a file"),
        "{reason}"
    );
    let reason = checkpoint_reason(trainer(&file).resume_latest());
    assert!(reason.contains("is a file"), "{reason}");
    assert_eq!(fs::read(&file).unwrap(), b"x", "the file is left alone");
}

/// Before: a pointer at an existing file was reported as "does not exist".
#[test]
fn latest_pointing_at_a_file_or_at_nothing() {
    let dir = temp_dir("pointer");
    saved_run(&dir);
    fs::write(dir.join("step-99999999"), b"not a checkpoint").unwrap();
    fs::write(dir.join("latest"), b"step-99999999").unwrap();
    let reason = checkpoint_reason(checkpoint::latest(&dir));
    assert!(reason.contains("is a file"), "{reason}");
    fs::write(dir.join("latest"), b"step-00000077").unwrap();
    let reason = checkpoint_reason(checkpoint::latest(&dir));
    assert!(reason.contains("does not exist"), "{reason}");
    // load/verify of a path that is a file, or missing, say so too.
    let reason = checkpoint_reason(checkpoint::load(&dir.join("step-99999999")));
    assert!(reason.contains("is a file"), "{reason}");
    let reason = checkpoint_reason(checkpoint::load(&dir.join("missing")));
    assert!(reason.contains("does not exist"), "{reason}");
}

/// Before: a symbolic link inside a checkpoint (a file, or the checkpoint folder `latest` names) leading
/// outside the checkpoint directory was followed.
#[test]
fn symbolic_links_out_of_the_checkpoint_are_refused() {
    let dir = temp_dir("links");
    let outside = temp_dir("links-outside");
    let saved = saved_run(&dir);
    // A file of the checkpoint replaced by a link to an identical copy outside: same bytes, same checksum,
    // so only the confinement can refuse it.
    let model = saved.join(checkpoint::MODEL_FILE);
    let copy = outside.join("model.safetensors");
    fs::copy(&model, &copy).unwrap();
    fs::remove_file(&model).unwrap();
    symlink(&copy, &model).unwrap();
    let reason = checkpoint_reason(checkpoint::load(&saved));
    assert!(reason.contains("outside"), "{reason}");
    // A link inside the checkpoint to its own file is resolved and accepted.
    fs::remove_file(&model).unwrap();
    fs::copy(&copy, saved.join("weights.bin")).unwrap();
    symlink("weights.bin", &model).unwrap();
    checkpoint::load(&saved).unwrap();
    // A checkpoint folder that is a link to a copy outside the checkpoint directory.
    let moved = outside.join("step-moved");
    fs::rename(&saved, &moved).unwrap();
    symlink(&moved, &saved).unwrap();
    let reason = checkpoint_reason(checkpoint::latest(&dir));
    assert!(reason.contains("outside"), "{reason}");
    assert!(
        checkpoint::list(&dir).unwrap().is_empty(),
        "a link out is not listed"
    );
}

/// Before: `step` = 1e30 in `trainer_state.json` was reported as "trainer state lacks `step`".
#[test]
fn damaged_integers_in_the_state_are_named_as_such() {
    let dir = temp_dir("state");
    let saved = saved_run(&dir);
    let state_path = saved.join(checkpoint::STATE_FILE);
    let state: serde_json::Value = serde_json::from_slice(&fs::read(&state_path).unwrap()).unwrap();
    for (value, missing) in [
        (serde_json::json!(1e30), false),
        (serde_json::json!(-3), false),
        (serde_json::Value::Null, true),
    ] {
        let mut damaged = state.clone();
        damaged["step"] = value.clone();
        // Re-seal the manifest so that only the value is wrong.
        let bytes = serde_json::to_vec_pretty(&damaged).unwrap();
        fs::write(&state_path, &bytes).unwrap();
        reseal(&saved);
        let reason = checkpoint_reason(trainer(&dir).load_checkpoint(&saved));
        if missing {
            assert!(reason.contains("lacks `step`"), "{reason}");
        } else {
            assert!(
                reason.contains("`step` =") && !reason.contains("lacks"),
                "{value}: {reason}"
            );
        }
    }
}

/// Rewrites the manifest's sizes and checksums for the files now in `path`.
fn reseal(path: &Path) {
    let manifest_path = path.join(checkpoint::MANIFEST_FILE);
    let mut manifest: serde_json::Value = serde_json::from_slice(&fs::read(&manifest_path).unwrap()).unwrap();
    for entry in manifest["files"].as_array_mut().unwrap() {
        let name = entry["name"].as_str().unwrap().to_string();
        let (bytes, hash) = checkpoint::file_checksum(&path.join(&name)).unwrap();
        entry["bytes"] = bytes.into();
        entry["fnv1a64"] = format!("{hash:016x}").into();
    }
    fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

/// `trainer_state.json` keeps 0.2's fields and names (serde-derived since 0.3), so 0.2 checkpoints resume: a
/// state written by hand in 0.2's form loads.
#[test]
fn trainer_state_keeps_the_0_2_format() {
    let dir = temp_dir("format");
    let saved = saved_run(&dir);
    let state_path = saved.join(checkpoint::STATE_FILE);
    let state: serde_json::Value = serde_json::from_slice(&fs::read(&state_path).unwrap()).unwrap();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&state),
        [
            "adam_step",
            "data",
            "objective",
            "schedule",
            "seed",
            "skipped_steps",
            "step"
        ]
    );
    assert_eq!(
        keys(&state["data"]),
        [
            "batch_pairs",
            "cursor",
            "dataset_len",
            "epoch",
            "grad_accum_steps",
            "shuffle"
        ]
    );
    assert_eq!(
        keys(&state["schedule"]),
        ["decay", "peak_lr", "total_steps", "warmup_steps"]
    );
    assert_eq!(state["schedule"]["decay"], "cosine");
    // 0.2's writer, by hand (json!), with the values of this run: loads into a fresh trainer.
    let s = &state;
    let by_hand = serde_json::json!({
        "step": s["step"].as_u64().unwrap(),
        "adam_step": s["adam_step"].as_u64().unwrap(),
        "skipped_steps": s["skipped_steps"].as_u64().unwrap(),
        "seed": s["seed"].as_u64().unwrap(),
        "schedule": {
            "peak_lr": s["schedule"]["peak_lr"].as_f64().unwrap(),
            "warmup_steps": s["schedule"]["warmup_steps"].as_u64().unwrap(),
            "total_steps": s["schedule"]["total_steps"].as_u64().unwrap(),
            "decay": "cosine",
        },
        "data": {
            "epoch": s["data"]["epoch"].as_u64().unwrap(),
            "cursor": s["data"]["cursor"].as_u64().unwrap(),
            "dataset_len": 4,
            "batch_pairs": 2,
            "grad_accum_steps": 1,
            "shuffle": true,
        },
        "objective": "written by 0.2",
    });
    fs::write(&state_path, serde_json::to_vec_pretty(&by_hand).unwrap()).unwrap();
    reseal(&saved);
    let mut resumed = trainer(&dir);
    resumed.load_checkpoint(&saved).unwrap();
    assert_eq!(resumed.step(), 2);
}
