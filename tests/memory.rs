//! `memory`: the resident-memory reading (Linux) and a disabled report.
use tch_rpo::memory::{MemoryReport, MemoryUsage};

#[test]
#[cfg(target_os = "linux")]
fn reads_rss_and_peak() {
    let usage = MemoryUsage::read().unwrap();
    assert!(usage.rss_bytes > 0 && usage.rss_bytes % 1024 == 0, "{usage:?}");
    // Allocating and touching 64 MiB raises the peak to at least the RSS at that moment.
    let block = vec![1u8; 64 << 20];
    let during = MemoryUsage::read().unwrap();
    assert!(block.iter().map(|&b| b as u64).sum::<u64>() == 64 << 20);
    assert!(during.peak_bytes >= during.rss_bytes, "{during:?}");
    assert!(during.rss_bytes >= 64 << 20, "{during:?}");
}

#[test]
fn disabled_report_does_nothing() {
    let report = MemoryReport::new(false);
    assert!(!report.enabled());
    report.phase("nothing");
}
