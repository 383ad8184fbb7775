//! A very short run of the `rpo_gemma` example (SFT → DPO / RPO on a few pairs), run through its command
//! line, and checks of what it writes: `metrics.csv` (exact header, rows of every method, finite numbers,
//! accuracies in [0, 1]), `chosen_logp.svg` (an SVG with a DPO and an RPO series) and the trainer's log.
mod example_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use example_support::{read_metrics, run_example, run_example_ok, temp_dir};

/// The flags of a tiny run: 32 pairs, 16 held-out prompts, 2 epochs of each stage in batches of 8,
/// 2 evaluations per epoch.
fn tiny(output: &Path) -> Vec<String> {
    [
        "--epochs",
        "2",
        "--sft-epochs",
        "2",
        "--train-limit",
        "32",
        "--heldout-limit",
        "16",
        "--evals-per-epoch",
        "2",
        "--batch-size",
        "8",
        "--output",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([output.display().to_string()])
    .collect()
}

fn run_tiny(output: &Path, extra: &[&str]) {
    let mut args = tiny(output);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_example_ok(&args);
}

#[test]
fn short_run_writes_sane_csv_and_svg() {
    let output = temp_dir("rpo_gemma_run");
    run_tiny(&output, &[]);

    let rows = read_metrics(&output);
    // 32 pairs / 8 per batch = 4 steps per epoch; 2 epochs, 2 evaluations per epoch, plus the start.
    let mut counts = BTreeMap::new();
    let mut last_step = BTreeMap::new();
    for row in &rows {
        assert!(["sft", "dpo", "rpo"].contains(&row.method.as_str()), "{row:?}");
        *counts.entry(row.method.clone()).or_insert(0) += 1;
        assert!(row.values.iter().all(|x| x.is_finite()), "{row:?}");
        let (epoch, step, chosen, rejected, acc, gold) = (
            row.values[0],
            row.values[1],
            row.values[2],
            row.values[3],
            row.values[4],
            row.values[6],
        );
        assert!((0.0..=2.0).contains(&epoch), "{row:?}");
        assert_eq!(step, epoch * 4.0, "{row:?}");
        assert!(
            chosen < 0.0 && rejected < 0.0,
            "log-probs of whole responses are negative: {row:?}"
        );
        assert!(
            (0.0..=1.0).contains(&acc) && (0.0..=1.0).contains(&gold),
            "{row:?}"
        );
        last_step.insert(row.method.clone(), step);
    }
    for method in ["sft", "dpo", "rpo"] {
        assert_eq!(counts.get(method), Some(&5), "{method} rows in {rows:?}");
        assert_eq!(last_step.get(method), Some(&8.0), "{method}");
    }
    assert_eq!(rows.len(), 15);
    // DPO and RPO both start from the SFT model: their epoch-0 rows equal the SFT model's last log-probs.
    let sft_end = &rows[4];
    for start in [&rows[5], &rows[10]] {
        assert_eq!(start.values[1], 0.0);
        assert!((start.values[2] - sft_end.values[2]).abs() < 1e-4);
        assert!((start.values[3] - sft_end.values[3]).abs() < 1e-4);
        assert_eq!(start.values[5], 0.0);
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
    let missing = output.join("does_not_exist.jsonl");
    let mut args = tiny(&output);
    args.extend(["--data".to_string(), missing.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_example(&args);
    assert!(!run.success, "a missing data file must fail the run");
    assert!(run.stderr.contains("does_not_exist.jsonl"), "{}", run.stderr);
    let _ = std::fs::remove_dir_all(&output);
}

/// The largest relative difference of chosen_logp / rejected_logp between two runs' metrics.csv (same
/// rows and methods asserted).
fn assert_logps_close(a_dir: &Path, b_dir: &Path, relative: f64) {
    let (a, b) = (read_metrics(a_dir), read_metrics(b_dir));
    assert_eq!(a.len(), b.len());
    for (p, f) in a.iter().zip(&b) {
        assert_eq!(p.method, f.method);
        // chosen_logp and rejected_logp.
        for col in [2, 3] {
            let (x, y) = (p.values[col], f.values[col]);
            assert!((x - y).abs() <= relative * (1.0 + x.abs()), "{p:?} vs {f:?}");
        }
    }
}

/// The same short run on the logits path (`--loss-path logits`) and through the fused linear-head loss
/// (the default for Gemma, and `--fused`): the default model is a Gemma 2 with a final-logit soft-cap,
/// which the fused pass applies. The metrics must match closely (same data, same seed; only f32 rounding
/// differs over a few steps); the default and `--fused` are the same path (identical metrics).
#[test]
fn fused_short_run_matches_the_logits_path() {
    let logits_dir: PathBuf = temp_dir("rpo_gemma_logits");
    run_tiny(&logits_dir, &["--loss-path", "logits"]);
    let default_dir = temp_dir("rpo_gemma_default");
    run_tiny(&default_dir, &[]);
    let fused_dir = temp_dir("rpo_gemma_fused");
    run_tiny(&fused_dir, &["--fused"]);
    assert_logps_close(&logits_dir, &default_dir, 1e-3);
    assert_logps_close(&default_dir, &fused_dir, 0.0);
    for dir in [logits_dir, default_dir, fused_dir] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `--gradient-checkpointing` changes memory, not results: the same metrics (checkpointing gives the
/// same gradients up to the order of two f32 additions into the tied embedding's gradient).
#[test]
fn gradient_checkpointing_run_matches_the_plain_run() {
    let plain_dir: PathBuf = temp_dir("rpo_gemma_nogc");
    run_tiny(&plain_dir, &[]);
    let gc_dir = temp_dir("rpo_gemma_gc");
    run_tiny(&gc_dir, &["--gradient-checkpointing"]);
    assert_logps_close(&plain_dir, &gc_dir, 1e-4);
    let _ = std::fs::remove_dir_all(&plain_dir);
    let _ = std::fs::remove_dir_all(&gc_dir);
}
