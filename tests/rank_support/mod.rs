//! Helpers for tests that run several ranks as child processes of the test binary: spawn them with the
//! launcher's variables, stream their output, wait with a bound.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A free TCP port on the loopback interface (for `MASTER_PORT`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// This test binary running only its test `entry` (the worker), stdout piped, stderr inherited.
pub fn worker_command(entry: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", entry, "--nocapture", "--test-threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    c
}

/// Spawns `world` ranks of `command()` with the launcher variables set by hand (`RANK`, `WORLD_SIZE`,
/// `LOCAL_RANK`, `MASTER_ADDR` = 127.0.0.1, `MASTER_PORT` = a free port; no torchrun agent store).
pub fn spawn_ranks(world: usize, command: impl Fn() -> Command) -> Vec<Child> {
    let port = free_port();
    (0..world)
        .map(|r| {
            command()
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env_remove("TORCHELASTIC_USE_AGENT_STORE")
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Waits for every rank (killing all past `limit`), asserts each exited 0 and returns their stdout lines
/// as (rank, line); `what` names the run in the failure message.
pub fn run_to_end(children: &mut [Child], limit: Duration, what: &str) -> Vec<(usize, String)> {
    let rx = stream(children);
    let codes = wait_all(children, limit);
    // the reader threads end with the children's stdout
    std::thread::sleep(Duration::from_millis(50));
    let lines: Vec<(usize, String)> = rx.try_iter().collect();
    assert_eq!(codes, vec![Some(0); children.len()], "{what}: {lines:?}");
    lines
}

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
