//! A store client's first contact with the rendezvous store, made in Rust and bounded by the timeout.
//!
//! libtorch's `TCPStore` client connects, sends c10d's `VALIDATE` query and then a `PING` whose nonce the
//! store echoes. Its receive has no timeout: a process that accepts the connection and never answers
//! keeps it waiting forever, and a process speaking another protocol is reported as a failed ping
//! ("Expected: 19719, Got: 1347703880", the latter being the bytes `HTTP`). [`probe`] first does the same
//! exchange itself, with every connect, write and read bounded by what is left of the timeout, and tells
//! what the peer did ([`DistStorePeer`]); only a peer that answered like a store is handed to libtorch
//! (whose own later receives the shim bounds, see `csrc/dist.cpp`).
//!
//! The wire format, from c10d's `TCPStore.cpp` / `TCPStoreBackend.hpp` (little-endian, as c10d writes
//! its host-order values on the hosts it supports): a query is one `QueryType` byte followed by its
//! arguments; `VALIDATE` (0) takes the `u32` magic number `0x3C85F7CE` and gets no answer, `PING` (13)
//! takes a `u32` nonce and gets the same `u32` back.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::env::LaunchEnv;
use crate::error::{DistError, DistStorePeer, Error, Result};

/// c10d's `QueryType::VALIDATE`.
const QUERY_VALIDATE: u8 = 0;
/// c10d's `QueryType::PING`.
const QUERY_PING: u8 = 13;
/// c10d's `validationMagicNumber`, the argument of `VALIDATE`.
const VALIDATION_MAGIC: u32 = 0x3C85_F7CE;
/// The pause between connection attempts while the store's host is not up yet (or closed on us).
const RETRY_DELAY: Duration = Duration::from_millis(100);
/// How long to wait for more bytes of another protocol's answer, to quote them in the error.
const QUOTE_WAIT: Duration = Duration::from_millis(100);
/// How many bytes of another protocol's answer to quote.
const QUOTE_BYTES: usize = 48;

/// The outcome of one connection's validate-and-ping exchange.
enum Exchange {
    /// The peer echoed the nonce: a c10d store.
    Store,
    /// The peer closed or reset the connection before a full answer.
    Closed(String),
    /// The peer answered bytes that are not the nonce.
    Other(Vec<u8>),
    /// The deadline passed with `n` bytes of the answer received (all matching the nonce).
    Silent(usize),
}

/// `host:port`, with brackets around an IPv6 literal.
pub(crate) fn store_address(env: &LaunchEnv) -> String {
    if env.master_addr.contains(':') && !env.master_addr.starts_with('[') {
        format!("[{}]:{}", env.master_addr, env.master_port)
    } else {
        format!("{}:{}", env.master_addr, env.master_port)
    }
}

fn nonce() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::process::id().rotate_left(16) ^ nanos
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    // Socket timeouts of zero mean "no timeout": never set one.
    (left >= Duration::from_millis(1)).then_some(left)
}

fn is_timeout(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Connects to `addrs` (the first that accepts), each attempt bounded by what is left before `deadline`.
fn connect(addrs: &[SocketAddr], deadline: Instant) -> std::result::Result<TcpStream, String> {
    let mut last = String::from("the address resolved to nothing");
    for addr in addrs {
        let Some(left) = remaining(deadline) else {
            break;
        };
        match TcpStream::connect_timeout(addr, left) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// Sends `VALIDATE` and `PING` on `stream` and reads the echo, all before `deadline`.
fn exchange(mut stream: TcpStream, deadline: Instant) -> Exchange {
    let nonce = nonce().to_le_bytes();
    let mut query = vec![QUERY_VALIDATE];
    query.extend_from_slice(&VALIDATION_MAGIC.to_le_bytes());
    query.push(QUERY_PING);
    query.extend_from_slice(&nonce);
    let Some(left) = remaining(deadline) else {
        return Exchange::Silent(0);
    };
    let _ = stream.set_nodelay(true);
    if stream.set_write_timeout(Some(left)).is_err() {
        return Exchange::Closed("the connection could not be configured".into());
    }
    if let Err(e) = stream.write_all(&query) {
        return if is_timeout(e.kind()) {
            Exchange::Silent(0)
        } else {
            Exchange::Closed(format!("sending the validation query: {e}"))
        };
    }
    let mut answer = [0u8; 4];
    let mut got = 0;
    while got < answer.len() {
        let Some(left) = remaining(deadline) else {
            return Exchange::Silent(got);
        };
        if stream.set_read_timeout(Some(left)).is_err() {
            return Exchange::Closed("the connection could not be configured".into());
        }
        match stream.read(&mut answer[got..]) {
            Ok(0) => {
                return Exchange::Closed(format!(
                    "the connection was closed after {got} of the 4 bytes of the ping's answer"
                ))
            }
            Ok(n) => {
                got += n;
                if answer[..got] != nonce[..got] {
                    return Exchange::Other(quote(stream, &answer[..got]));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(e.kind()) => return Exchange::Silent(got),
            Err(e) => return Exchange::Closed(format!("reading the ping's answer: {e}")),
        }
    }
    Exchange::Store
}

/// `first` and what else the peer sends within [`QUOTE_WAIT`], up to [`QUOTE_BYTES`] bytes.
fn quote(mut stream: TcpStream, first: &[u8]) -> Vec<u8> {
    let mut bytes = first.to_vec();
    let mut rest = [0u8; QUOTE_BYTES];
    let wait_until = Instant::now() + QUOTE_WAIT;
    while bytes.len() < QUOTE_BYTES {
        let Some(left) = remaining(wait_until) else {
            break;
        };
        if stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut rest[..QUOTE_BYTES - bytes.len()]) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&rest[..n]),
        }
    }
    bytes
}

/// Meets the store at `MASTER_ADDR:MASTER_PORT` as a client and checks that it speaks c10d's store protocol,
/// within `timeout` in all. Connections that are refused (the store's host is not up yet) or closed
/// without an answer are retried until the timeout, as libtorch's client does.
///
/// # Errors
/// [`DistError::Store`](crate::DistError::Store) naming the address and what the peer did: [`DistStorePeer::Unreachable`] (no
/// connection accepted), [`DistStorePeer::NeverAnswered`] (accepted, then silent until the timeout),
/// [`DistStorePeer::OtherProtocol`] (bytes that are not the ping's echo; returned at once, quoting them),
/// [`DistStorePeer::Closed`] (every connection closed without an answer), [`DistStorePeer::StoppedAnswering`]
/// (part of the echo, then silence).
pub(crate) fn probe(env: &LaunchEnv, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let addr = store_address(env);
    let fail = |peer: DistStorePeer, detail: String| {
        Error::Dist(DistError::Store {
            rank: env.rank,
            world_size: env.world_size,
            addr: addr.clone(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            peer,
            detail,
        })
    };
    let (mut last_error, mut closed, mut attempts) = (String::new(), None, 0u32);
    while remaining(deadline).is_some() {
        attempts += 1;
        let addrs: Vec<SocketAddr> = match (env.master_addr.as_str(), env.master_port).to_socket_addrs() {
            Ok(addrs) => addrs.collect(),
            Err(e) => {
                last_error = format!("resolving {}: {e}", env.master_addr);
                Vec::new()
            }
        };
        if !addrs.is_empty() {
            match connect(&addrs, deadline) {
                Err(e) => last_error = e,
                Ok(stream) => match exchange(stream, deadline) {
                    Exchange::Store => return Ok(()),
                    Exchange::Closed(detail) => closed = Some(detail),
                    Exchange::Other(bytes) => {
                        return Err(fail(
                            DistStorePeer::OtherProtocol,
                            format!("its first bytes: \"{}\"", bytes.escape_ascii()),
                        ))
                    }
                    Exchange::Silent(0) => {
                        return Err(fail(
                            DistStorePeer::NeverAnswered,
                            "no byte came back to the validation and ping queries".into(),
                        ))
                    }
                    Exchange::Silent(n) => {
                        return Err(fail(
                            DistStorePeer::StoppedAnswering,
                            format!("{n} of the 4 bytes of the ping's answer came, then nothing"),
                        ))
                    }
                },
            }
        }
        if let Some(left) = remaining(deadline) {
            std::thread::sleep(left.min(RETRY_DELAY));
        }
    }
    Err(match closed {
        Some(detail) => fail(DistStorePeer::Closed, format!("{detail} ({attempts} attempts)")),
        None => fail(
            DistStorePeer::Unreachable,
            format!("{last_error} ({attempts} attempts)"),
        ),
    })
}
