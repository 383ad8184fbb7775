//! Runs the `rpo_gemma` example through its command line: the tests exercise the example as a user
//! does, not by including its source files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The example binary, built first with the test's own profile and target directory (a no-op when it
/// is up to date), so that a test never runs a stale binary.
pub fn example_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> → target/<profile>
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
        let target_dir = profile_dir.parent().expect("target directory");
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "--example", "rpo_gemma", "--target-dir"])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build --example rpo_gemma");
        assert!(status.success(), "cargo build --example rpo_gemma failed");
        let binary = profile_dir
            .join("examples")
            .join(format!("rpo_gemma{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.is_file(), "{} was not built", binary.display());
        binary
    })
}

/// What one run of the example printed.
pub struct ExampleRun {
    /// Exit status was success.
    pub success: bool,
    /// The exit status in words (a signal, e.g. from the out-of-memory killer, shows here).
    pub status: String,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the example with `args`.
pub fn run_example(args: &[&str]) -> ExampleRun {
    let output = Command::new(example_binary())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run the rpo_gemma example");
    ExampleRun {
        success: output.status.success(),
        status: output.status.to_string(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs the example with `args` and panics with its output unless it succeeds.
pub fn run_example_ok(args: &[&str]) -> ExampleRun {
    let run = run_example(args);
    assert!(
        run.success,
        "rpo_gemma {args:?} failed ({})\nstdout:\n{}\nstderr:\n{}",
        run.status, run.stdout, run.stderr
    );
    run
}

/// A fresh scratch directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tch_rpo_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// One `metrics.csv` row: the method and the seven numbers (`gold_accuracy` NaN when empty).
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRow {
    /// `sft`, `dpo` or `rpo`.
    pub method: String,
    /// epoch, step, chosen_logp, rejected_logp, reward_accuracy, reward_margin, gold_accuracy.
    pub values: Vec<f64>,
}

/// The header of `metrics.csv`.
pub const CSV_HEADER: &str =
    "method,epoch,step,chosen_logp,rejected_logp,reward_accuracy,reward_margin,gold_accuracy";

/// Reads `dir/metrics.csv`, checking its header.
pub fn read_metrics(dir: &Path) -> Vec<CsvRow> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(CSV_HEADER));
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 8, "{line}");
            CsvRow {
                method: fields[0].to_string(),
                values: fields[1..]
                    .iter()
                    .map(|f| {
                        if f.is_empty() {
                            f64::NAN
                        } else {
                            f.parse().expect(line)
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}
