//! A very short run of the `rpo_gemma` example's flow (SFT → DPO / RPO on a few pairs) and checks of what
//! it writes: `metrics.csv` (exact header, rows of every method, finite numbers, accuracies in [0, 1])
//! and `chosen_logp.svg` (an SVG with a DPO and an RPO series).
#[path = "../examples/rpo_gemma/gemma.rs"]
mod gemma;
#[path = "../examples/rpo_gemma/gguf_tokenizer.rs"]
mod gguf_tokenizer;
#[path = "../examples/rpo_gemma/plot.rs"]
mod plot;
#[path = "../examples/rpo_gemma/run.rs"]
mod run;
#[path = "../examples/rpo_gemma/task.rs"]
mod task;

use std::path::PathBuf;
use std::sync::Mutex;

/// libtorch's random generator is global: runs (which seed it, then initialize a model) must not overlap.
static RUN_LOCK: Mutex<()> = Mutex::new(());

fn run_locked(config: &run::RunConfig) -> Result<run::RunSummary, Box<dyn std::error::Error>> {
    let _guard = RUN_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    run::run(config)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tch_rpo_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn tiny(output: PathBuf) -> run::RunConfig {
    run::RunConfig {
        epochs: 2,
        sft_epochs: 2,
        train_limit: Some(32),
        heldout_limit: Some(16),
        evals_per_epoch: 2,
        batch_size: 8,
        output,
        verbose: false,
        ..run::RunConfig::default()
    }
}

#[test]
fn short_run_writes_sane_csv_and_svg() {
    let output = temp_dir("rpo_gemma_run");
    let summary = run_locked(&tiny(output.clone())).expect("run");

    let csv = std::fs::read_to_string(output.join("metrics.csv")).expect("metrics.csv");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("method,epoch,step,chosen_logp,rejected_logp,reward_accuracy,reward_margin,gold_accuracy")
    );
    // 32 pairs / 8 per batch = 4 steps per epoch; 2 epochs, 2 evaluations per epoch, plus the start.
    let mut counts = std::collections::BTreeMap::new();
    let mut last_step = std::collections::BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 8, "{line}");
        let method = fields[0];
        assert!(["sft", "dpo", "rpo"].contains(&method), "{line}");
        *counts.entry(method.to_string()).or_insert(0) += 1;
        let numbers: Vec<f64> = fields[1..]
            .iter()
            .map(|f| f.parse::<f64>().expect(line))
            .collect();
        assert!(numbers.iter().all(|x| x.is_finite()), "{line}");
        let (epoch, step, chosen, rejected, acc, gold) = (
            numbers[0], numbers[1], numbers[2], numbers[3], numbers[4], numbers[6],
        );
        assert!((0.0..=2.0).contains(&epoch), "{line}");
        assert_eq!(step, epoch * 4.0, "{line}");
        assert!(
            chosen < 0.0 && rejected < 0.0,
            "log-probs of whole responses are negative: {line}"
        );
        assert!(
            (0.0..=1.0).contains(&acc) && (0.0..=1.0).contains(&gold),
            "{line}"
        );
        last_step.insert(method.to_string(), step);
    }
    for method in ["sft", "dpo", "rpo"] {
        assert_eq!(counts.get(method), Some(&5), "{method} rows in\n{csv}");
        assert_eq!(last_step.get(method), Some(&8.0), "{method}");
    }
    assert_eq!(summary.rows.len(), 15);
    // DPO and RPO both start from the SFT model: their epoch-0 rows equal the SFT model's last log-probs.
    let sft_end = &summary.rows[4];
    for start in [&summary.rows[5], &summary.rows[10]] {
        assert_eq!(start.step, 0);
        assert!((start.chosen_logp - sft_end.chosen_logp).abs() < 1e-4);
        assert!((start.rejected_logp - sft_end.rejected_logp).abs() < 1e-4);
        assert_eq!(start.reward_margin, 0.0);
    }

    let svg = std::fs::read_to_string(output.join("chosen_logp.svg")).expect("chosen_logp.svg");
    assert!(svg.trim_start().starts_with("<svg"), "not an SVG");
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(">\nDPO\n<") || svg.contains(">DPO<"), "no DPO label");
    assert!(svg.contains(">\nRPO\n<") || svg.contains(">RPO<"), "no RPO label");
    assert!(
        svg.matches("<polyline").count() >= 2,
        "fewer than two line series"
    );

    let log = std::fs::read_to_string(output.join("train_log.jsonl")).expect("train_log.jsonl");
    assert_eq!(
        log.lines().count(),
        3 * 8,
        "one JSON line per optimizer step of the three stages"
    );
    let _ = std::fs::remove_dir_all(&output);
}

#[test]
fn missing_data_file_is_an_error() {
    let output = temp_dir("rpo_gemma_missing");
    let config = run::RunConfig {
        data: Some(output.join("does_not_exist.jsonl")),
        ..tiny(output.clone())
    };
    let error = run_locked(&config).expect_err("missing file").to_string();
    assert!(error.contains("does_not_exist.jsonl"), "{error}");
    let _ = std::fs::remove_dir_all(&output);
}

/// The same short run through the fused linear-head loss (`--fused`): the default model is a Gemma 2 with a
/// final-logit soft-cap, which the fused pass applies. Its metrics must match the logits path closely
/// (same data, same seed; only f32 rounding differs over a few steps).
#[test]
fn fused_short_run_matches_the_logits_path() {
    let read = |dir: &PathBuf| -> Vec<Vec<f64>> {
        std::fs::read_to_string(dir.join("metrics.csv"))
            .expect("metrics.csv")
            .lines()
            .skip(1)
            .map(|l| l.split(',').skip(1).map(|f| f.parse::<f64>().expect(l)).collect())
            .collect()
    };
    let plain_dir = temp_dir("rpo_gemma_plain");
    run_locked(&tiny(plain_dir.clone())).expect("logits run");
    let fused_dir = temp_dir("rpo_gemma_fused");
    run_locked(&run::RunConfig {
        fused: true,
        ..tiny(fused_dir.clone())
    })
    .expect("fused run");
    let (plain, fused) = (read(&plain_dir), read(&fused_dir));
    assert_eq!(plain.len(), fused.len());
    for (p, f) in plain.iter().zip(&fused) {
        // chosen_logp and rejected_logp (columns 2 and 3 after the method).
        for col in [2, 3] {
            assert!(
                (p[col] - f[col]).abs() <= 1e-3 * (1.0 + p[col].abs()),
                "{p:?} vs {f:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&plain_dir);
    let _ = std::fs::remove_dir_all(&fused_dir);
}
