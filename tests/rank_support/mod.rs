//! Helpers for tests that run several ranks as child processes: stream their output, wait with a bound.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Streams each child's stdout lines into a channel as (rank, line).
pub fn stream(children: &mut [Child]) -> mpsc::Receiver<(usize, String)> {
    let (tx, rx) = mpsc::channel();
    for (r, c) in children.iter_mut().enumerate() {
        let out = c.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if tx.send((r, line)).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Waits for every child, killing all of them past `limit`; returns the exit codes.
pub fn wait_all(children: &mut [Child], limit: Duration) -> Vec<Option<i32>> {
    let start = Instant::now();
    let mut codes = vec![None; children.len()];
    let mut done = vec![false; children.len()];
    while done.iter().any(|d| !d) {
        for (i, c) in children.iter_mut().enumerate() {
            if !done[i] {
                if let Some(status) = c.try_wait().unwrap() {
                    codes[i] = status.code();
                    done[i] = true;
                }
            }
        }
        if start.elapsed() > limit {
            for c in children.iter_mut() {
                let _ = c.kill();
            }
            panic!("ranks still running after {limit:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    codes
}
