//! [`DistError`]: process groups (feature `dist`).

/// A process group (c10d over Gloo / NCCL) or its launcher environment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// A variable of the launcher environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
    /// `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`) is missing or malformed.
    #[error("launcher environment: {var} {}: {requirement}", match value { Some(v) => format!("= {v:?}"), None => "is not set".to_string() })]
    Env {
        /// The variable's name.
        var: &'static str,
        /// Its value, `None` when unset.
        value: Option<String>,
        /// What it must be.
        requirement: String,
    },
    /// A process-group operation (`op`) on `rank` waited longer than the group's timeout.
    #[error(
        "rank {rank} of {world_size}: `{op}` timed out after {timeout_ms} ms{}: {message}",
        unresponsive_note(unresponsive)
    )]
    Timeout {
        /// The operation (`connect`, `all_reduce`, `broadcast`, `barrier`).
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// The group's size.
        world_size: usize,
        /// The timeout in force, in milliseconds.
        timeout_ms: u64,
        /// Ranks that did not report the same failure within the group's failure window (dead, hung, or
        /// blocked elsewhere); empty when unknown.
        unresponsive: Vec<usize>,
        /// libtorch's message.
        message: String,
    },
    /// A peer's connection closed, reset or was refused during `op` on `rank`: the peer (or the store's
    /// host) died.
    #[error(
        "rank {rank} of {world_size}: `{op}` lost a peer{}: {message}",
        unresponsive_note(unresponsive)
    )]
    PeerLost {
        /// The operation (`connect`, `all_reduce`, `broadcast`, `barrier`).
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// The group's size.
        world_size: usize,
        /// Ranks that did not report the same failure within the group's failure window; empty when unknown.
        unresponsive: Vec<usize>,
        /// libtorch's message.
        message: String,
    },
    /// This rank, a client of the rendezvous store (c10d's TCPStore) at `addr`, could not meet there within
    /// the timeout: `peer` says what the process at `addr` did, `detail` adds what was seen.
    #[error(
        "rank {rank} of {world_size}: the rendezvous store at {addr} {peer} (timeout {timeout_ms} ms){}",
        detail_note(detail)
    )]
    Store {
        /// This process's rank.
        rank: usize,
        /// The group's size.
        world_size: usize,
        /// `MASTER_ADDR:MASTER_PORT`.
        addr: String,
        /// The timeout in force, in milliseconds.
        timeout_ms: u64,
        /// What the peer at `addr` did.
        peer: DistStorePeer,
        /// What was seen: the first bytes of another protocol, the last connection error, or libtorch's
        /// message; may be empty.
        detail: String,
    },
    /// Any other failure of a process group.
    #[error("rank {rank} of {world_size}: `{op}` failed: {message}")]
    Failed {
        /// The operation (`connect`, `all_reduce`, `broadcast`, `barrier`).
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// The group's size.
        world_size: usize,
        /// What went wrong.
        message: String,
    },
}

/// What the process at the rendezvous store's address did, in [`DistError::Store`].
///
/// `Display` says it in words, e.g. "accepted the connection but never answered".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DistStorePeer {
    /// No process accepted a connection within the timeout (refused, unreachable, or the connection
    /// attempt itself timed out): the store's host is not up, or the address is wrong.
    Unreachable,
    /// A process accepted the connection but sent nothing within the timeout.
    NeverAnswered,
    /// A process answered, but not in c10d's store protocol (e.g. an HTTP server on that port).
    OtherProtocol,
    /// A process accepted the connection and closed it (or reset it) without a full answer.
    Closed,
    /// The peer answered in the store protocol (or began to), then sent nothing more within the timeout.
    StoppedAnswering,
}

impl std::fmt::Display for DistStorePeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DistStorePeer::Unreachable => "could not be reached: no process accepted a connection",
            DistStorePeer::NeverAnswered => "accepted the connection but never answered",
            DistStorePeer::OtherProtocol => {
                "answered in another protocol, not c10d's TCPStore (is MASTER_PORT another service's port?)"
            }
            DistStorePeer::Closed => "closed the connection without answering",
            DistStorePeer::StoppedAnswering => "answered, then stopped answering",
        })
    }
}

fn detail_note(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

fn unresponsive_note(ranks: &[usize]) -> String {
    match ranks {
        [] => String::new(),
        [r] => format!(" (rank {r} did not respond)"),
        _ => format!(" (ranks {ranks:?} did not respond)"),
    }
}
