//! Data-parallel `RpoTrainer` on Gloo: 2 ranks (this test binary re-executed with
//! `TCH_RPO_DIST_TRAIN_WORKER` set, launcher variables set by hand) compute what one process computes at
//! the same global batch — every step's loss, metrics and gradient norm, and the final weights — with
//! gradient accumulation, uneven token counts, uneven and empty shards at epoch ends, and the
//! initial-policy reference gathered over the ranks; exact resume with 2 ranks; a killed rank fails the
//! other with a typed error instead of a hang; configuration errors.
#![cfg(all(feature = "dist", feature = "train"))]

mod example_support;
mod rank_support;
mod train_support;

use rank_support::{free_port, run_to_end, stream, wait_all, worker_command};

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use example_support::{read_metrics, run_example_ok};
use serde_json::Value;
use tch::Tensor;
use tch_rpo::data::{ByteTokenizer, CollateConfig, Collator};
use tch_rpo::dist::{DistOptions, LaunchEnv, ProcessGroup};
use tch_rpo::train::PolicyModel;
use tch_rpo::train::{ReferenceSource, RpoTrainer, RpoTrainerConfig, StepMetrics, Warmup};
use tch_rpo::{DistError, InputError};
use tch_rpo::{Error, LogProbOptions, RpoConfig};
use train_support::{max_param_diff, preference_pairs, TinyLm, POISON};

const HIDDEN: i64 = 12;
const TOTAL: u64 = 8;
/// 9 pairs in global micro-batches of 4: each epoch ends with a batch of 1 pair, so rank 1's block of it
/// is empty; steps straddle epochs.
const PAIRS: usize = 9;

const WORKER: &str = "TCH_RPO_DIST_TRAIN_WORKER";
const DIR: &str = "TCH_RPO_DIST_TRAIN_DIR";

fn collator() -> Collator {
    Collator::new(CollateConfig::new(ByteTokenizer::PAD)).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tch-rpo-dp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The run: global micro-batches of 4 pairs, 2 per step, sigmoid DPO + token-mean NLL (normalized by the
/// step's chosen tokens over all ranks), clipping that binds, token statistics, a checkpoint every 3
/// steps and a JSON Lines log when `dir` is given.
fn config(dir: Option<&Path>) -> RpoTrainerConfig {
    RpoTrainerConfig {
        learning_rate: 2e-2,
        warmup: Warmup::Ratio(0.25),
        seed: 77,
        batch_pairs: 4,
        grad_accum_steps: 2,
        max_grad_norm: Some(0.5),
        logprobs: LogProbOptions::causal().with_token_stats(true),
        checkpoint_dir: dir.map(|d| d.join("checkpoints")),
        save_steps: dir.map(|_| 3),
        log_path: dir.map(|d| d.join("metrics.jsonl")),
        progress: false,
        ..RpoTrainerConfig::paper(RpoConfig::trl(0.1, 0.5), TOTAL)
    }
}

/// A trainer whose reference is its own initial policy (scored by the first `fit`, gathered over the
/// ranks with a group, and checkpointed).
fn trainer(
    init_seed: i64,
    config: RpoTrainerConfig,
    group: Option<ProcessGroup>,
    resume: bool,
) -> tch_rpo::Result<RpoTrainer<TinyLm>> {
    let mut builder = RpoTrainer::builder(TinyLm::new(init_seed, HIDDEN))
        .config(config)
        .reference(ReferenceSource::InitialPolicy)
        .resume(resume);
    if let Some(group) = group {
        builder = builder.process_group(group);
    }
    builder.build()
}

/// Pairs of the joint-skip run (about 4 steps per epoch, so that some steps meet neither bad pair).
const SKIP_PAIRS: usize = 30;

/// The pairs of the joint-skip run: one pair carries the poison byte (its gradient is NaN), one that the
/// first epoch puts in another step than pair 2 (whose reference log-prob is NaN).
fn skip_pairs() -> Vec<tch_rpo::data::EncodedPair> {
    let c = config(None);
    let order = tch_rpo::data::BatchSampler::new(SKIP_PAIRS, c.batch_pairs, c.seed, c.shuffle)
        .unwrap()
        .epoch_order(0);
    let pairs_per_step = c.batch_pairs * c.grad_accum_steps;
    let step_of = |pair: usize| order.iter().position(|&p| p == pair).unwrap() / pairs_per_step;
    let poisoned = (0..SKIP_PAIRS).find(|&p| step_of(p) != step_of(2)).unwrap();
    let mut pairs = preference_pairs(SKIP_PAIRS);
    let last = pairs[poisoned].rejected.len() - 1;
    pairs[poisoned].rejected[last] = POISON;
    pairs
}

/// A trainer whose cached reference has a NaN for pair 2 (a non-finite loss wherever pair 2 is).
fn skip_trainer(group: Option<ProcessGroup>) -> RpoTrainer<TinyLm> {
    let mut chosen: Vec<f64> = (0..SKIP_PAIRS).map(|i| -40.0 - i as f64).collect();
    chosen[2] = f64::NAN;
    let rejected: Vec<f64> = (0..SKIP_PAIRS).map(|i| -41.0 - i as f64).collect();
    let cache = tch_rpo::train::ReferenceCache::from_values(chosen, rejected).unwrap();
    let mut builder = RpoTrainer::builder(TinyLm::new(21, HIDDEN))
        .config(config(None))
        .reference(ReferenceSource::Cached(cache));
    if let Some(group) = group {
        builder = builder.process_group(group);
    }
    builder.build().unwrap()
}

fn metrics_json(history: &[StepMetrics]) -> Value {
    Value::Array(history.iter().map(StepMetrics::to_json).collect())
}

fn numbers(step: &Value) -> Vec<(String, f64)> {
    let keys = [
        "loss",
        "loss/dpo",
        "nll",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
        "entropy",
        "mean_token_accuracy",
        "grad_norm",
        "lr",
        "pairs",
        "tokens",
    ];
    keys.iter()
        .map(|k| {
            let v = step.get(*k).and_then(Value::as_f64);
            (
                k.to_string(),
                v.unwrap_or_else(|| panic!("{k} missing in {step}")),
            )
        })
        .collect()
}

fn assert_close_history(dist: &Value, single: &Value, rel: f64) {
    let (a, b) = (dist.as_array().unwrap(), single.as_array().unwrap());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["step"], y["step"]);
        assert_eq!(x["epoch"], y["epoch"]);
        assert_eq!(x["skipped"], y["skipped"]);
        for ((name, u), (_, v)) in numbers(x).into_iter().zip(numbers(y)) {
            let tol = rel * u.abs().max(v.abs()).max(1e-3);
            assert!(
                (u - v).abs() <= tol,
                "step {}: {name} {u} vs one process {v}",
                x["step"]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Worker side
// ---------------------------------------------------------------------------------------------------------

fn group(timeout: Duration) -> ProcessGroup {
    let options = DistOptions {
        failure_window: Duration::from_secs(2),
        ..DistOptions::default().with_timeout(timeout)
    };
    ProcessGroup::from_env(&options).unwrap()
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Dist(DistError::Timeout { .. }) => "timeout",
        Error::Dist(DistError::PeerLost { .. }) => "peer",
        Error::Dist(DistError::Failed { .. }) => "dist",
        Error::Input(InputError::Config { .. }) => "config",
        _ => "other",
    }
}

/// The child side: runs when this binary is re-executed with `TCH_RPO_DIST_TRAIN_WORKER` set.
#[test]
fn dist_train_worker_entry() {
    let Ok(role) = std::env::var(WORKER) else { return };
    tch::set_num_threads(1);
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    let pairs = preference_pairs(PAIRS);
    let g = group(Duration::from_secs(if role == "killed" { 4 } else { 60 }));
    let rank = g.rank();
    let out = |history: &[StepMetrics], trainer: &RpoTrainer<TinyLm>, name: &str| {
        std::fs::write(
            dir.join(format!("{name}-rank{rank}.json")),
            metrics_json(history).to_string(),
        )
        .unwrap();
        let params = trainer.model().named_parameters();
        Tensor::write_safetensors(&params, dir.join(format!("{name}-rank{rank}.safetensors"))).unwrap();
    };
    match role.as_str() {
        // The whole run in one go (rank 1 starts from other weights: the broadcast makes them rank 0's).
        "full" => {
            let mut t = trainer(21 + rank as i64, config(Some(&dir)), Some(g), false).unwrap();
            let history = t.fit(&pairs, &collator()).unwrap();
            out(&history, &t, "full");
        }
        // 5 steps, then the process ends: steps 4 and 5 were never checkpointed.
        "head" => {
            let mut t = trainer(21, config(Some(&dir)), Some(g), false).unwrap();
            t.fit_steps(&pairs, &collator(), Some(5)).unwrap();
        }
        // Resumes from the checkpoint (other initial weights on purpose) and finishes the run.
        "tail" => {
            let mut t = trainer(99, config(Some(&dir)), Some(g), true).unwrap();
            println!("RESUMED step={}", t.step());
            let history = t.fit(&pairs, &collator()).unwrap();
            out(&history, &t, "tail");
        }
        // Steps one at a time, announcing each, until the parent kills rank 1.
        "killed" => {
            let config = RpoTrainerConfig {
                max_steps: 10_000,
                ..config(None)
            };
            let mut t = trainer(21, config, Some(g), false).unwrap();
            let start = Instant::now();
            loop {
                match t.fit_steps(&pairs, &collator(), Some(1)) {
                    Ok(_) => println!("STEP {}", t.step()),
                    Err(e) => {
                        println!(
                            "FAILED kind={} ms={} error={e}",
                            error_kind(&e),
                            start.elapsed().as_millis()
                        );
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // batch_pairs 3 over 2 ranks.
        "indivisible" => {
            let config = RpoTrainerConfig {
                batch_pairs: 3,
                ..config(None)
            };
            let err = trainer(21, config, Some(g), false).unwrap_err();
            println!("BUILD_ERROR kind={} error={err}", error_kind(&err));
        }
        // Rank 1 uses another seed: both ranks refuse to train.
        "mismatch" => {
            let config = RpoTrainerConfig {
                seed: 77 + rank as u64,
                ..config(None)
            };
            let mut t = trainer(21, config, Some(g), false).unwrap();
            let err = t.fit(&pairs, &collator()).unwrap_err();
            println!("FIT_ERROR kind={} error={err}", error_kind(&err));
        }
        // Non-finite values on one rank only: a NaN reference log-prob (non-finite loss) and a poisoned
        // pair (non-finite gradient); both ranks skip the same steps.
        "skip" => {
            let mut t = skip_trainer(Some(g));
            let history = t.fit(&skip_pairs(), &collator()).unwrap();
            out(&history, &t, "skip");
        }
        other => panic!("unknown worker role {other}"),
    }
    println!("WORKER_DONE rank={rank}");
}

// ---------------------------------------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------------------------------------

fn spawn_ranks(role: &str, dir: &Path) -> Vec<Child> {
    rank_support::spawn_ranks(2, || {
        let mut c = worker_command("dist_train_worker_entry");
        c.env(WORKER, role).env(DIR, dir).env("OMP_NUM_THREADS", "1");
        c
    })
}

/// Runs `role` on 2 ranks to completion; returns their stdout lines.
fn run_ranks(role: &str, dir: &Path) -> Vec<(usize, String)> {
    let mut children = spawn_ranks(role, dir);
    let lines = run_to_end(&mut children, Duration::from_secs(240), role);
    for r in 0..2 {
        let done = format!("WORKER_DONE rank={r}");
        assert!(lines.iter().any(|(_, l)| l.ends_with(&done)), "{role}: {lines:?}");
    }
    lines
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn read_weights(path: &Path) -> Vec<(String, Tensor)> {
    let mut w = Tensor::read_safetensors(path).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

fn sorted(mut w: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

fn logged_steps(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn two_ranks_equal_one_process_and_resume_exactly() {
    // One process, same settings (the global batch), no group.
    let pairs = preference_pairs(PAIRS);
    let single_dir = temp_dir("single");
    let mut single = trainer(21, config(Some(&single_dir)), None, false).unwrap();
    let single_history = metrics_json(&single.fit(&pairs, &collator()).unwrap());
    let single_weights = sorted(single.model().named_parameters());
    // The run is not trivial: clipping binds on some step, and weights moved.
    assert!(single_history
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["grad_norm"].as_f64().unwrap() > 0.5));

    // Two ranks in one go.
    let full = temp_dir("full");
    run_ranks("full", &full);
    let full_history = read_json(&full.join("full-rank0.json"));
    // Every rank reports the same reduced metrics (all but its own step time).
    let timeless = |mut history: Value| {
        for step in history.as_array_mut().unwrap() {
            step.as_object_mut().unwrap().remove("tokens_per_second");
        }
        history
    };
    assert_eq!(
        timeless(full_history.clone()),
        timeless(read_json(&full.join("full-rank1.json"))),
        "ranks logged different metrics"
    );
    assert_close_history(&full_history, &single_history, 1e-6);
    let w0 = read_weights(&full.join("full-rank0.safetensors"));
    let w1 = read_weights(&full.join("full-rank1.safetensors"));
    assert_eq!(max_param_diff(&w0, &w1), 0.0, "ranks hold different weights");
    let diff = max_param_diff(&w0, &single_weights);
    assert!(diff <= 1e-5, "final weights differ from one process's by {diff}");
    // Rank 0 alone logged: every step once.
    assert_eq!(
        logged_steps(&full.join("metrics.jsonl")),
        (1..=TOTAL).collect::<Vec<_>>()
    );

    // Two ranks: 5 steps, "crash", resume from step 3 with other initial weights, finish.
    let split = temp_dir("split");
    run_ranks("head", &split);
    let lines = run_ranks("tail", &split);
    assert!(
        lines.iter().any(|(_, l)| l.ends_with("RESUMED step=3")),
        "{lines:?}"
    );
    let tail = read_json(&split.join("tail-rank0.json"));
    let full_tail = Value::Array(full_history.as_array().unwrap()[3..].to_vec());
    for (a, b) in tail.as_array().unwrap().iter().zip(full_tail.as_array().unwrap()) {
        for key in [
            "step",
            "epoch",
            "loss",
            "grad_norm",
            "lr",
            "nll",
            "rewards/margins",
            "pairs",
            "tokens",
        ] {
            assert_eq!(a[key], b[key], "resumed step {}: {key}", a["step"]);
        }
    }
    assert_eq!(
        tail.as_array().unwrap().len(),
        full_tail.as_array().unwrap().len()
    );
    let resumed = read_weights(&split.join("tail-rank0.safetensors"));
    assert_eq!(max_param_diff(&resumed, &w0), 0.0, "resumed weights differ");
    assert_eq!(
        logged_steps(&split.join("metrics.jsonl")),
        (1..=TOTAL).collect::<Vec<_>>()
    );
    for d in [single_dir, full, split] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_killed_rank_fails_the_other_within_the_timeout() {
    let dir = temp_dir("killed");
    let mut children = spawn_ranks("killed", &dir);
    let rx = stream(&mut children);
    let start = Instant::now();
    let mut lines = Vec::new();
    let mut failed = None;
    let mut killed_at = None;
    while failed.is_none() && start.elapsed() < Duration::from_secs(120) {
        let Ok((r, line)) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        if r == 1 && line.ends_with("STEP 3") && killed_at.is_none() {
            children[1].kill().unwrap();
            killed_at = Some(Instant::now());
        }
        if let (0, Some(at)) = (r, line.find("FAILED kind=")) {
            failed = Some(line[at..].to_string());
        }
        lines.push((r, line));
    }
    let codes = wait_all(&mut children[..1], Duration::from_secs(30));
    let _ = children[1].wait();
    let failed = failed.unwrap_or_else(|| panic!("rank 0 never failed: {lines:?}"));
    let waited = killed_at.expect("rank 1 was killed").elapsed();
    assert_eq!(codes, vec![Some(0)], "{lines:?}");
    assert!(
        failed.starts_with("FAILED kind=peer") || failed.starts_with("FAILED kind=timeout"),
        "{failed}"
    );
    assert!(failed.contains("rank 0 of 2"), "{failed}");
    // the 4 s timeout and the 2 s failure window, with slack for a loaded machine
    assert!(waited < Duration::from_secs(4 + 2 + 6), "{waited:?}: {failed}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn indivisible_batch_and_mismatched_ranks_are_errors() {
    let dir = temp_dir("errors");
    let lines = run_ranks("indivisible", &dir);
    for r in 0..2 {
        let line = &lines
            .iter()
            .find(|(rr, l)| *rr == r && l.contains("BUILD_ERROR"))
            .unwrap()
            .1;
        assert!(line.contains("kind=config"), "{line}");
        assert!(
            line.contains("batch_pairs") && line.contains("world size of 2"),
            "{line}"
        );
    }
    let lines = run_ranks("mismatch", &dir);
    for r in 0..2 {
        let line = &lines
            .iter()
            .find(|(rr, l)| *rr == r && l.contains("FIT_ERROR"))
            .unwrap()
            .1;
        assert!(line.contains("kind=config"), "{line}");
        assert!(line.contains("seed (low 32 bits)"), "{line}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn single_group() -> ProcessGroup {
    ProcessGroup::new(
        &LaunchEnv::single("127.0.0.1", free_port()),
        &DistOptions::default(),
    )
    .unwrap()
}

/// A one-rank group changes nothing (bit for bit), and a second group is refused.
#[test]
fn one_rank_group_is_one_process() {
    let pairs = preference_pairs(PAIRS);
    let mut plain = trainer(21, config(None), None, false).unwrap();
    let plain_history = metrics_json(&plain.fit(&pairs, &collator()).unwrap());
    let mut grouped = trainer(21, config(None), Some(single_group()), false).unwrap();
    assert!(grouped.is_main_process());
    let grouped_history = metrics_json(&grouped.fit(&pairs, &collator()).unwrap());
    for (a, b) in plain_history
        .as_array()
        .unwrap()
        .iter()
        .zip(grouped_history.as_array().unwrap())
    {
        for ((name, u), (_, v)) in numbers(a).into_iter().zip(numbers(b)) {
            assert_eq!(u, v, "step {}: {name}", a["step"]);
        }
    }
    assert_eq!(
        max_param_diff(
            &plain.model().named_parameters(),
            &grouped.model().named_parameters()
        ),
        0.0
    );
    assert!(grouped.communication_time() > Duration::ZERO);
    let err = grouped.set_process_group(single_group()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Input(InputError::Config {
                name: "process_group",
                ..
            })
        ),
        "{err}"
    );
    assert!(grouped.take_process_group().is_some());
    assert!(grouped.process_group().is_none());
}

/// A step with a non-finite loss or gradient on one rank is skipped on every rank, and the run goes on as
/// one process's does (the same steps skipped, the same weights).
#[test]
fn non_finite_values_on_one_rank_skip_the_step_everywhere() {
    let mut single = skip_trainer(None);
    let single_history = metrics_json(&single.fit(&skip_pairs(), &collator()).unwrap());
    let skipped: Vec<u64> = single_history
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["skipped"].as_bool().unwrap())
        .map(|s| s["step"].as_u64().unwrap())
        .collect();
    let trained = TOTAL as usize - skipped.len();
    assert!(!skipped.is_empty() && trained > 0, "skipped steps {skipped:?}");
    let reasons: Vec<String> = single_history
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["skip_reason"].as_str().map(str::to_string))
        .collect();
    assert!(reasons.iter().any(|r| r.contains("forward pass")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("gradient norm")), "{reasons:?}");

    let dir = temp_dir("skip");
    run_ranks("skip", &dir);
    for rank in 0..2 {
        let history = read_json(&dir.join(format!("skip-rank{rank}.json")));
        let dist_skipped: Vec<u64> = history
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["skipped"].as_bool().unwrap())
            .map(|s| s["step"].as_u64().unwrap())
            .collect();
        assert_eq!(dist_skipped, skipped, "rank {rank}");
        for (a, b) in history
            .as_array()
            .unwrap()
            .iter()
            .zip(single_history.as_array().unwrap())
        {
            if !a["skipped"].as_bool().unwrap() {
                let (u, v) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
                assert!((u - v).abs() <= 1e-6 * v.abs(), "step {}: {u} vs {v}", a["step"]);
            }
        }
        let weights = read_weights(&dir.join(format!("skip-rank{rank}.safetensors")));
        let diff = max_param_diff(&weights, &sorted(single.model().named_parameters()));
        assert!(diff <= 1e-5, "rank {rank}: {diff}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `torchrun --no-python --nproc-per-node 2 rpo_gemma --quick` trains as one process does (same global
/// batch), and rank 0 alone writes the outputs.
#[test]
fn rpo_gemma_quick_under_torchrun_equals_one_process() {
    let single = temp_dir("example-single");
    let single_s = single.to_str().unwrap();
    run_example_ok(&["--quick", "--output", single_s]);
    let dist = temp_dir("example-dist");
    let torchrun = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    let output = Command::new(&torchrun)
        .args([
            "--no-python",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
        ])
        .arg(format!("--master-port={}", free_port()))
        .arg(example_support::example_binary())
        .args(["--quick", "--output"])
        .arg(&dist)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("rank 0 of 2 (Gloo)"), "{stdout}");
    // Rank 0 alone printed the table.
    assert_eq!(stdout.matches("method  epoch").count(), 1, "{stdout}");
    let (a, b) = (read_metrics(&single), read_metrics(&dist));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.method, y.method);
        for (u, v) in x.values.iter().zip(&y.values) {
            assert!(
                (u.is_nan() && v.is_nan()) || (u - v).abs() <= 1e-5 * u.abs().max(1.0),
                "{x:?} vs {y:?}"
            );
        }
    }
    // Every step logged once (by rank 0).
    let lines = |dir: &Path| {
        std::fs::read_to_string(dir.join("train_log.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(lines(&single), lines(&dist));
    let _ = std::fs::remove_dir_all(single);
    let _ = std::fs::remove_dir_all(dist);
}
