//! Step metrics with the names TRL users know, a JSON Lines log, and a terminal progress line.

pub use crate::loss::metrics::{Average, Metric, METRICS};

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The position of `name` in [`METRICS`].
pub(crate) fn metric_index(name: &str) -> Option<usize> {
    METRICS.iter().position(|m| m.name == name)
}

/// The metrics of one training or evaluation step: the values of [`METRICS`] (read by name with
/// [`StepMetrics::get`]) and the step's bookkeeping.
///
/// JSON names (as written by [`StepMetrics::to_json`]): `step`, `epoch`, the [`METRICS`] names (the token
/// statistics only when computed, [`crate::LogProbOptions::token_stats`]), `grad_norm`, `lr`, `pairs`,
/// `tokens`, `tokens_per_second`, `skipped`, `skip_reason`, `skipped_steps`, `flops`, `flops_per_second`,
/// `mfu` (`null` when not known), and `phases` (an object of seconds by [`crate::timing::Phase`] name plus
/// `other` and `total`) only when phase timing is on. Non-finite numbers are written as `null`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepMetrics {
    /// Optimizer steps taken so far, this one included (for evaluation: the step evaluated after).
    pub step: u64,
    /// The data epoch the step's last micro-batch came from (0-based), when known.
    pub epoch: Option<u64>,
    /// The values of [`METRICS`], in its order (`None`: not computed).
    values: [Option<f64>; METRICS.len()],
    /// Total gradient norm before clipping (`None` for evaluation, or when the loss was non-finite).
    pub grad_norm: Option<f64>,
    /// Learning rate of the step (`None` for evaluation).
    pub lr: Option<f64>,
    /// Pairs in the step.
    pub pairs: usize,
    /// Non-padding tokens in the step (chosen and rejected rows).
    pub tokens: i64,
    /// `tokens` / wall-clock seconds of the step.
    pub tokens_per_second: f64,
    /// Whether the optimizer step was skipped (non-finite loss or gradient).
    pub skipped: bool,
    /// Why it was skipped.
    pub skip_reason: Option<String>,
    /// Skipped steps so far in the run, this one included.
    pub skipped_steps: u64,
    /// Floating-point operations of the step in this process (the policy's forward and backward passes and
    /// the reference model's forward passes; [`crate::train::flops`]), when the models count them
    /// ([`crate::train::PolicyModel::pass_flops`]). `None` for evaluation.
    pub flops: Option<f64>,
    /// `flops` / wall-clock seconds of the step.
    pub flops_per_second: Option<f64>,
    /// Model FLOP utilization: `flops_per_second` / [`crate::train::RpoTrainerConfig::peak_flops`], when
    /// both are known.
    pub mfu: Option<f64>,
    /// Seconds per phase of the step ([`crate::timing`]) when
    /// [`crate::train::RpoTrainerConfig::phase_timing`] is set; `None` otherwise and for evaluation.
    pub phases: Option<crate::timing::PhaseTimes>,
}

fn number(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

impl StepMetrics {
    /// Metrics of step `step` with these [`METRICS`] values (in its order); the bookkeeping fields empty.
    pub(crate) fn with_values(step: u64, values: [Option<f64>; METRICS.len()]) -> Self {
        Self {
            step,
            values,
            ..Self::default()
        }
    }

    /// The value of the metric `name` ([`METRICS`], e.g. `"rewards/chosen"`); `None` for a token
    /// statistic that was not computed or a name not in the schema.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values[metric_index(name)?]
    }

    /// The loss of the step (`loss`: NaN when the step's forward pass failed with non-finite values).
    pub fn loss(&self) -> f64 {
        self.values[0].unwrap_or(f64::NAN)
    }

    /// `(name, value)` of every computed metric, in [`METRICS`] order.
    pub fn values(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        METRICS
            .iter()
            .zip(&self.values)
            .filter_map(|(m, v)| v.map(|v| (m.name, v)))
    }

    /// The metrics as one JSON object (names in the [type docs](StepMetrics)).
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("step".into(), self.step.into());
        map.insert("epoch".into(), self.epoch.map_or(Value::Null, Value::from));
        for (name, value) in self.values() {
            map.insert(name.into(), number(value));
        }
        map.insert("grad_norm".into(), self.grad_norm.map_or(Value::Null, number));
        map.insert("lr".into(), self.lr.map_or(Value::Null, number));
        map.insert("pairs".into(), self.pairs.into());
        map.insert("tokens".into(), self.tokens.into());
        map.insert("tokens_per_second".into(), number(self.tokens_per_second));
        map.insert("skipped".into(), self.skipped.into());
        map.insert(
            "skip_reason".into(),
            self.skip_reason.clone().map_or(Value::Null, Value::from),
        );
        map.insert("skipped_steps".into(), self.skipped_steps.into());
        let optional = |value: Option<f64>| value.map_or(Value::Null, number);
        map.insert("flops".into(), optional(self.flops));
        map.insert("flops_per_second".into(), optional(self.flops_per_second));
        map.insert("mfu".into(), optional(self.mfu));
        if let Some(phases) = &self.phases {
            let seconds: Map<String, Value> = phases
                .entries()
                .into_iter()
                .map(|(name, value)| (name.to_string(), number(value)))
                .collect();
            map.insert("phases".into(), Value::Object(seconds));
        }
        Value::Object(map)
    }
}

/// Appends one JSON object per line to a file (flushed after each line).
#[derive(Debug)]
pub struct JsonlLogger {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonlLogger {
    /// Opens `path` for appending (created if absent, with its parent directories).
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be opened.
    pub fn append(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Opens `path` to continue a run resumed from its checkpoint at optimizer step `step`: the lines at
    /// the end of the file whose `step` is after `step` — logged by the interrupted process after its last
    /// checkpoint, and about to be logged again — are removed first, as is a last line that is not JSON
    /// (torn by the crash). Only that tail is touched: earlier lines, other runs' lines before it and
    /// lines without a numeric `step` stay. The file is rewritten (temporary file, rename) only if a line
    /// is removed.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read, rewritten or opened.
    pub fn continue_run(path: &Path, step: u64) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let mut keep = lines.len();
                while keep > 0 {
                    let after = match serde_json::from_str::<Value>(lines[keep - 1]) {
                        Ok(value) => value
                            .get("step")
                            .and_then(Value::as_u64)
                            .is_some_and(|s| s > step),
                        Err(_) => keep == lines.len(),
                    };
                    if !after {
                        break;
                    }
                    keep -= 1;
                }
                if keep < lines.len() {
                    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
                    tmp_name.push(".tmp");
                    let tmp = path.with_file_name(tmp_name);
                    let body: String = lines[..keep].iter().map(|l| format!("{l}\n")).collect();
                    std::fs::write(&tmp, body).map_err(|e| Error::io(&tmp, e))?;
                    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(path, e)),
        }
        Self::append(path)
    }

    /// Writes `value` as one line.
    ///
    /// # Errors
    /// [`Error::Io`] if writing fails.
    pub fn log(&mut self, value: &Value) -> Result<()> {
        writeln!(self.file, "{value}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// A one-line progress display with ETA on stderr, drawn only when stderr is a terminal.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    start: Instant,
    first_step: u64,
    total: u64,
}

impl Progress {
    /// A progress line for steps `first_step..total`; `enabled` is and-ed with "stderr is a terminal".
    pub fn new(enabled: bool, first_step: u64, total: u64) -> Self {
        Self {
            enabled: enabled && std::io::stderr().is_terminal(),
            start: Instant::now(),
            first_step,
            total,
        }
    }

    /// Redraws the line after `metrics`.
    pub fn update(&self, metrics: &StepMetrics) {
        if !self.enabled {
            return;
        }
        let done = metrics.step.saturating_sub(self.first_step).max(1);
        let elapsed = self.start.elapsed().as_secs_f64();
        let eta = elapsed / done as f64 * self.total.saturating_sub(metrics.step) as f64;
        let width = 24;
        let filled = (width as f64 * metrics.step as f64 / self.total.max(1) as f64).round() as usize;
        let bar: String = "#".repeat(filled.min(width)) + &"-".repeat(width - filled.min(width));
        let mut line = format!(
            "\r[{bar}] {}/{} loss {:.4} acc {:.2} lr {:.2e} {:.0} tok/s eta {}",
            metrics.step,
            self.total,
            metrics.loss(),
            metrics.get("rewards/accuracies").unwrap_or(f64::NAN),
            metrics.lr.unwrap_or(0.0),
            metrics.tokens_per_second,
            format_duration(eta)
        );
        if let Some(flops_per_second) = metrics.flops_per_second {
            line.push_str(&format!(" {:.1} GFLOP/s", flops_per_second / 1e9));
        }
        if let Some(mfu) = metrics.mfu {
            line.push_str(&format!(" MFU {:.1}%", 100.0 * mfu));
        }
        if metrics.skipped_steps > 0 {
            line.push_str(&format!(" skipped {}", metrics.skipped_steps));
        }
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{line}\x1b[K");
        let _ = err.flush();
    }

    /// Ends the line.
    pub fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}

fn format_duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "?".to_string();
    }
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
