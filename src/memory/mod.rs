//! The process's resident memory, for reports of what each phase of a run costs: [`MemoryUsage::read`]
//! (current and peak RSS from `/proc/self/status`, Linux), [`MemoryReport`] (one line per phase, with the
//! peak of that phase) and [`limit_heap_fragmentation`] (glibc's mmap threshold, so that freed tensors go
//! back to the system), and with feature `autograd` [`BlockCache`] (libtorch's CPU allocator replaced by a
//! cache of large blocks, so that a step's tensors stop costing fresh pages).

#[cfg(feature = "autograd")]
mod block_cache;

#[cfg(feature = "autograd")]
pub use block_cache::{BlockCache, BlockCacheConfig, BlockCacheStats};

use std::cell::Cell;
use std::time::Instant;

use crate::error::{Error, Result};

/// The resident memory of this process, from `/proc/self/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Current resident set size (`VmRSS`), in bytes.
    pub rss_bytes: u64,
    /// Peak resident set size (`VmHWM`, the kernel's high-water mark), in bytes.
    pub peak_bytes: u64,
}

impl MemoryUsage {
    /// Reads `VmRSS` and `VmHWM` (kB) from `/proc/self/status`.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read (not Linux) or lacks either field.
    pub fn read() -> Result<Self> {
        const STATUS: &str = "/proc/self/status";
        let status = std::fs::read_to_string(STATUS).map_err(|e| Error::io(STATUS, e))?;
        let field = |name: &str| -> Result<u64> {
            let kb = status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok());
            let missing = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no {name} field"));
            kb.map(|kb| kb * 1024).ok_or_else(|| Error::io(STATUS, missing()))
        };
        Ok(Self {
            rss_bytes: field("VmRSS:")?,
            peak_bytes: field("VmHWM:")?,
        })
    }
}

/// Prints (to stderr) one line per phase of a run when enabled: the seconds since the previous report,
/// the current RSS, the peak since the previous report and the process peak, in GB (10⁹ bytes). The
/// per-phase peak comes from resetting the kernel's high-water mark after each report (writing `5` to
/// `/proc/self/clear_refs`, Linux ≥ 4.0); where that fails, it is the process peak. The reset also hides
/// earlier peaks from tools that read `VmHWM` at exit (`/usr/bin/time`): take the process peak from the
/// report. Disabled, it does nothing.
#[derive(Debug)]
pub struct MemoryReport {
    enabled: bool,
    process_peak_bytes: Cell<u64>,
    since: Cell<Instant>,
}

impl MemoryReport {
    /// A report, printing when `enabled`; the first phase starts now (its peak reset).
    pub fn new(enabled: bool) -> Self {
        let report = Self {
            enabled,
            process_peak_bytes: Cell::new(0),
            since: Cell::new(Instant::now()),
        };
        report.reset_peak();
        report
    }

    /// Whether it prints.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn reset_peak(&self) {
        if self.enabled {
            // Best effort: without the reset the phase peak is the process peak (documented above).
            let _ = std::fs::write("/proc/self/clear_refs", "5");
        }
        self.since.set(Instant::now());
    }

    /// Reports the phase `name` that just ended and starts the next one. Where `/proc/self/status` cannot
    /// be read, the line says so.
    pub fn phase(&self, name: &str) {
        if !self.enabled {
            return;
        }
        let gb = |bytes: u64| bytes as f64 / 1e9;
        let seconds = self.since.get().elapsed().as_secs_f64();
        match MemoryUsage::read() {
            Ok(usage) => {
                let process_peak = self.process_peak_bytes.get().max(usage.peak_bytes);
                self.process_peak_bytes.set(process_peak);
                eprintln!(
                    "memory: {name:<28} {seconds:>7.1} s  RSS {:>6.2} GB  phase peak {:>6.2} GB  process peak {:>6.2} GB",
                    gb(usage.rss_bytes),
                    gb(usage.peak_bytes),
                    gb(process_peak)
                );
            }
            Err(_) => eprintln!("memory: {name}: /proc/self/status unavailable"),
        }
        self.reset_peak();
    }
}

/// Sets glibc's mmap threshold to 1 MiB, unless the environment sets `MALLOC_MMAP_THRESHOLD_` (glibc reads
/// that itself); elsewhere than Linux with glibc it does nothing. Returns whether it set the threshold.
///
/// Why: glibc serves allocations below its (adaptive, up to 32 MB) mmap threshold from heaps that it rarely
/// returns to the system; with libtorch's many short-lived tensors of a few MB, the heap fragments and the
/// process holds gigabytes it no longer uses (measured on Gemma 3 270M: RSS 9.4 GB after a step whose live
/// set is ≈ 4.4 GB; docs/benchmarks.md). A fixed 1 MiB threshold maps every larger tensor on its own and
/// unmaps it when freed. Call it first thing in `main`, before any other thread exists. (With
/// [`BlockCache`] installed as well, libtorch's blocks of 1 MiB and more bypass glibc: the cache maps them
/// and reuses them without new page faults.)
pub fn limit_heap_fragmentation() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: mallopt only sets a parameter of glibc's allocator; the caller calls this before any
            // other thread exists (documented above).
            return unsafe { mallopt(M_MMAP_THRESHOLD, 1 << 20) } == 1;
        }
    }
    false
}
