//! `--report-memory`: the process's resident memory at the end of each phase, from `/proc/self/status`
//! (Linux; elsewhere the report says it is unavailable).

use std::time::Instant;

/// Prints one line per phase: current RSS (`VmRSS`), the peak since the previous report and the process
/// peak. The per-phase peak comes from resetting the kernel's high-water mark (`VmHWM`) after each report
/// (writing `5` to `/proc/self/clear_refs`, Linux ≥ 4.0); where that fails, it is the process peak.
pub struct MemoryReport {
    enabled: bool,
    process_peak_kb: std::cell::Cell<u64>,
    since: std::cell::Cell<Instant>,
}

/// `(VmRSS, VmHWM)` in kB.
fn rss_and_peak_kb() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

impl MemoryReport {
    pub fn new(enabled: bool) -> Self {
        let report = Self {
            enabled,
            process_peak_kb: std::cell::Cell::new(0),
            since: std::cell::Cell::new(Instant::now()),
        };
        report.reset_peak();
        report
    }

    fn reset_peak(&self) {
        if self.enabled {
            let _ = std::fs::write("/proc/self/clear_refs", "5");
        }
        self.since.set(Instant::now());
    }

    /// Reports the phase that just ended.
    pub fn phase(&self, name: &str) {
        if !self.enabled {
            return;
        }
        let gb = |kb: u64| kb as f64 * 1024.0 / 1e9;
        let seconds = self.since.get().elapsed().as_secs_f64();
        match rss_and_peak_kb() {
            Some((rss, peak)) => {
                let process_peak = self.process_peak_kb.get().max(peak);
                self.process_peak_kb.set(process_peak);
                eprintln!(
                    "memory: {name:<28} {seconds:>7.1} s  RSS {:>6.2} GB  phase peak {:>6.2} GB  process peak {:>6.2} GB",
                    gb(rss),
                    gb(peak),
                    gb(process_peak)
                );
            }
            None => eprintln!("memory: {name}: /proc/self/status unavailable"),
        }
        self.reset_peak();
    }
}
