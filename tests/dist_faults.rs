//! Faults at the rendezvous: a client rank (rank 1 of 2) pointed at a port where something other than a
//! healthy c10d store answers, and impossible launch environments. Each case asserts the typed error and
//! that `ProcessGroup::new` returned within a bound derived from the configured timeout; every call runs
//! in a thread under a watchdog, so a regression fails the test instead of hanging it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use tch_rpo::dist::{DistOptions, LaunchEnv, ProcessGroup};
use tch_rpo::DistError;
use tch_rpo::{DistStorePeer, Error};

/// The configured timeout of every case.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Slack for a loaded 2-core machine on top of the bound a case derives from [`TIMEOUT`].
const SLACK: Duration = Duration::from_secs(3);
/// How long the watchdog waits before declaring `ProcessGroup::new` hung.
const HANG: Duration = Duration::from_secs(60);

/// What a fake peer does with each connection it accepts.
#[derive(Clone, Copy)]
enum Peer {
    /// Accepts and never writes.
    Silent,
    /// Reads the client's first query, answers an HTTP error.
    Http,
    /// Accepts and closes at once.
    Close,
    /// Reads the validation and ping queries, echoes the first 2 of the ping's 4 nonce bytes, then is silent.
    HalfEcho,
    /// Reads the validation and ping queries, echoes the whole nonce like a store, then is silent: the
    /// Rust probe passes and libtorch's own client meets the silence.
    EchoThenSilent,
}

/// The client's first bytes: `VALIDATE` (1 byte + u32 magic), then `PING` (1 byte + u32 nonce).
const FIRST_QUERIES: usize = 10;

fn serve(mut stream: TcpStream, peer: Peer, held: &mut Vec<TcpStream>) {
    let mut queries = [0u8; FIRST_QUERIES];
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    match peer {
        Peer::Silent => held.push(stream),
        Peer::Close => drop(stream),
        Peer::Http => {
            let _ = stream.read(&mut queries);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            held.push(stream);
        }
        Peer::HalfEcho | Peer::EchoThenSilent => {
            if stream.read_exact(&mut queries).is_ok() {
                let echo = match peer {
                    Peer::HalfEcho => &queries[6..8],
                    _ => &queries[6..10],
                };
                let _ = stream.write_all(echo);
            }
            held.push(stream);
        }
    }
}

/// A listener on 127.0.0.1 playing `peer` for every connection (kept open until the process ends); returns
/// its port and the count of connections accepted.
fn fake_peer(peer: Peer) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            serve(stream, peer, &mut held);
        }
    });
    (port, accepted)
}

fn client_env(port: u16) -> LaunchEnv {
    LaunchEnv {
        rank: 1,
        world_size: 2,
        local_rank: None,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        agent_store: false,
    }
}

/// `ProcessGroup::new(env)` with [`TIMEOUT`], in a thread: its error and how long it took. Panics (fails the
/// test) when it returns a group, or does not return within [`HANG`].
fn connect_error(env: LaunchEnv) -> (Error, Duration) {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let start = Instant::now();
        let result = ProcessGroup::new(&env, &DistOptions::default().with_timeout(TIMEOUT));
        let _ = tx.send((result.map(|_| ()), start.elapsed()));
    });
    match rx.recv_timeout(HANG) {
        Ok((Err(e), elapsed)) => (e, elapsed),
        Ok((Ok(()), _)) => panic!("ProcessGroup::new succeeded against a fake peer"),
        Err(_) => panic!("ProcessGroup::new did not return within {HANG:?} (timeout {TIMEOUT:?})"),
    }
}

fn assert_store_error(err: &Error, port: u16, expected: DistStorePeer, words: &str) {
    match err {
        Error::Dist(DistError::Store {
            rank: 1,
            world_size: 2,
            addr,
            timeout_ms: 2000,
            peer,
            ..
        }) => {
            assert_eq!(*peer, expected, "{err}");
            assert_eq!(addr, &format!("127.0.0.1:{port}"), "{err}");
        }
        other => panic!("expected DistStore {{ peer: {expected:?} }}, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
    assert!(shown.contains(words), "{shown}");
}

#[test]
fn a_silent_listener_is_never_answered_within_the_timeout() {
    let (port, accepted) = fake_peer(Peer::Silent);
    let (err, elapsed) = connect_error(client_env(port));
    assert_store_error(&err, port, DistStorePeer::NeverAnswered, "never answered");
    assert!(accepted.load(Ordering::SeqCst) >= 1);
    assert!(elapsed + Duration::from_millis(100) >= TIMEOUT, "{elapsed:?}");
    assert!(elapsed <= TIMEOUT + SLACK, "{elapsed:?}");
}

#[test]
fn a_listener_speaking_http_is_another_protocol_at_once() {
    let (port, _) = fake_peer(Peer::Http);
    let (err, elapsed) = connect_error(client_env(port));
    assert_store_error(&err, port, DistStorePeer::OtherProtocol, "another protocol");
    // The peer's own words are quoted.
    assert!(err.to_string().contains("HTTP/1.1 400"), "{err}");
    // A definite answer needs no waiting out the timeout.
    assert!(elapsed < TIMEOUT, "{elapsed:?}");
}

#[test]
fn a_listener_that_closes_is_reported_closed() {
    let (port, accepted) = fake_peer(Peer::Close);
    let (err, elapsed) = connect_error(client_env(port));
    assert_store_error(&err, port, DistStorePeer::Closed, "closed the connection");
    // Retried, as libtorch's client retries, until the timeout.
    assert!(accepted.load(Ordering::SeqCst) >= 2);
    assert!(elapsed <= TIMEOUT + SLACK, "{elapsed:?}");
}

#[test]
fn a_listener_that_answers_half_then_goes_silent_stopped_answering() {
    let (port, _) = fake_peer(Peer::HalfEcho);
    let (err, elapsed) = connect_error(client_env(port));
    assert_store_error(&err, port, DistStorePeer::StoppedAnswering, "stopped answering");
    assert!(err.to_string().contains("2 of the 4 bytes"), "{err}");
    assert!(elapsed <= TIMEOUT + SLACK, "{elapsed:?}");
}

#[test]
fn a_store_that_goes_silent_after_the_ping_is_cut_by_the_watchdog() {
    // The probe's validate-and-ping succeeds; libtorch's client then validates, pings (answered) and asks
    // the store to count it as a worker, which is never answered: the shim's watchdog must end the wait.
    let (port, accepted) = fake_peer(Peer::EchoThenSilent);
    let (err, elapsed) = connect_error(client_env(port));
    assert_store_error(&err, port, DistStorePeer::StoppedAnswering, "stopped answering");
    assert!(
        accepted.load(Ordering::SeqCst) >= 2,
        "libtorch's client connected too"
    );
    assert!(err.to_string().contains("watchdog"), "{err}");
    // The probe returns at once; libtorch's client is cut after the timeout and a 250 ms grace.
    assert!(elapsed <= TIMEOUT + SLACK, "{elapsed:?}");
}

#[test]
fn nobody_listening_is_unreachable_within_the_timeout() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (err, elapsed) = connect_error(client_env(port));
    assert_store_error(&err, port, DistStorePeer::Unreachable, "could not be reached");
    assert!(elapsed + Duration::from_millis(100) >= TIMEOUT, "{elapsed:?}");
    assert!(elapsed <= TIMEOUT + SLACK, "{elapsed:?}");
}

/// Refused before any network operation: the fake peer (silent, the worst case) sees no connection.
fn assert_refused_at_once(env: LaunchEnv, accepted: &AtomicUsize, var: &str, value: &str, words: &str) {
    let (err, elapsed) = connect_error(env);
    match &err {
        Error::Dist(DistError::Env {
            var: v,
            value: Some(seen),
            ..
        }) => {
            assert_eq!(*v, var, "{err}");
            assert_eq!(seen, value, "{err}");
        }
        other => panic!("expected DistEnv {{ var: {var} }}, got {other:?}"),
    }
    assert!(err.to_string().contains(words), "{err}");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection may be made");
}

#[test]
fn a_rank_not_below_world_size_is_refused_at_once() {
    let (port, accepted) = fake_peer(Peer::Silent);
    for rank in [2, 3, 100] {
        let env = LaunchEnv {
            rank,
            ..client_env(port)
        };
        let value = rank.to_string();
        assert_refused_at_once(env, &accepted, "RANK", &value, "must be below WORLD_SIZE = 2");
    }
}

#[test]
fn world_size_zero_is_refused_at_once() {
    let (port, accepted) = fake_peer(Peer::Silent);
    for rank in [0, 1] {
        let env = LaunchEnv {
            rank,
            world_size: 0,
            ..client_env(port)
        };
        assert_refused_at_once(env, &accepted, "WORLD_SIZE", "0", "must be at least 1");
    }
}

#[test]
fn a_local_rank_not_below_world_size_and_port_zero_are_refused_at_once() {
    let (port, accepted) = fake_peer(Peer::Silent);
    let env = LaunchEnv {
        local_rank: Some(2),
        ..client_env(port)
    };
    assert_refused_at_once(env, &accepted, "LOCAL_RANK", "2", "must be below WORLD_SIZE = 2");
    let env = LaunchEnv {
        master_port: 0,
        ..client_env(port)
    };
    assert_refused_at_once(env, &accepted, "MASTER_PORT", "0", "1..=65535");
}
