//! The launcher environment: what `torchrun` (or any launcher following PyTorch's `env://` convention)
//! sets for each process.

use crate::error::{DistError, Error, Result};

/// One process's place in a job, read from the launcher's variables.
///
/// | variable | meaning | required |
/// |---|---|---|
/// | `RANK` | this process's rank, `0 ≤ RANK < WORLD_SIZE` | yes |
/// | `WORLD_SIZE` | number of processes, `≥ 1` | yes |
/// | `LOCAL_RANK` | rank on this node, `< WORLD_SIZE`: picks the CUDA device for NCCL | for NCCL |
/// | `MASTER_ADDR` | host of the rendezvous store (c10d's TCPStore) | yes |
/// | `MASTER_PORT` | its port, `1..=65535` | yes |
/// | `TORCHELASTIC_USE_AGENT_STORE` | `True`: torchrun's agent hosts the store, rank 0 connects as a client | no (`False`) |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// `RANK`.
    pub rank: usize,
    /// `WORLD_SIZE`.
    pub world_size: usize,
    /// `LOCAL_RANK`, if set.
    pub local_rank: Option<usize>,
    /// `MASTER_ADDR`.
    pub master_addr: String,
    /// `MASTER_PORT`.
    pub master_port: u16,
    /// `TORCHELASTIC_USE_AGENT_STORE` is `True`: the store is hosted by torchrun's agent, not by rank 0.
    pub agent_store: bool,
}

fn bad(var: &'static str, value: Option<&str>, requirement: impl Into<String>) -> Error {
    Error::Dist(DistError::Env {
        var,
        value: value.map(str::to_owned),
        requirement: requirement.into(),
    })
}

fn required(lookup: &impl Fn(&str) -> Option<String>, var: &'static str) -> Result<String> {
    lookup(var).ok_or_else(|| {
        bad(
            var,
            None,
            "the launcher (e.g. torchrun) sets it; set it by hand otherwise",
        )
    })
}

fn parse_usize(var: &'static str, value: &str) -> Result<usize> {
    value
        .trim()
        .parse::<usize>()
        .map_err(|_| bad(var, Some(value), "must be a non-negative integer"))
}

impl LaunchEnv {
    /// Reads the variables of this process's environment (see [`LaunchEnv::from_lookup`]).
    ///
    /// # Errors
    /// As [`LaunchEnv::from_lookup`]; a value that is not UTF-8 is reported as malformed.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| {
            std::env::var_os(name).map(|v| {
                v.into_string()
                    .unwrap_or_else(|v| v.to_string_lossy().into_owned())
            })
        })
    }

    /// Reads the variables through `lookup` (a variable's value, `None` when unset), which lets a caller
    /// (or a test) supply them without touching the process environment.
    ///
    /// # Errors
    /// [`DistError::Env`](crate::DistError::Env) naming the variable and its value when a required one is missing, a number does
    /// not parse, `WORLD_SIZE` is 0, `RANK` or `LOCAL_RANK` is not below `WORLD_SIZE`, `MASTER_ADDR` is
    /// empty, `MASTER_PORT` is not in `1..=65535`, or `TORCHELASTIC_USE_AGENT_STORE` is not
    /// `True`/`False`/`1`/`0`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let world_raw = required(&lookup, "WORLD_SIZE")?;
        let world_size = parse_usize("WORLD_SIZE", &world_raw)?;
        if world_size == 0 || world_size > i32::MAX as usize {
            return Err(bad(
                "WORLD_SIZE",
                Some(&world_raw),
                "must be at least 1 (and fit in i32)",
            ));
        }
        let rank_raw = required(&lookup, "RANK")?;
        let rank = parse_usize("RANK", &rank_raw)?;
        if rank >= world_size {
            return Err(bad(
                "RANK",
                Some(&rank_raw),
                format!("must be below WORLD_SIZE = {world_size}"),
            ));
        }
        let local_rank = match lookup("LOCAL_RANK") {
            None => None,
            Some(raw) => {
                let local = parse_usize("LOCAL_RANK", &raw)?;
                if local >= world_size {
                    return Err(bad(
                        "LOCAL_RANK",
                        Some(&raw),
                        format!("must be below WORLD_SIZE = {world_size}"),
                    ));
                }
                Some(local)
            }
        };
        let master_addr = required(&lookup, "MASTER_ADDR")?;
        if master_addr.trim().is_empty() {
            return Err(bad("MASTER_ADDR", Some(&master_addr), "must name a host"));
        }
        let port_raw = required(&lookup, "MASTER_PORT")?;
        let master_port = match port_raw.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(bad(
                    "MASTER_PORT",
                    Some(&port_raw),
                    "must be a port number in 1..=65535",
                ))
            }
        };
        let agent_store = match lookup("TORCHELASTIC_USE_AGENT_STORE").as_deref() {
            None | Some("False") | Some("false") | Some("0") => false,
            Some("True") | Some("true") | Some("1") => true,
            Some(other) => {
                return Err(bad(
                    "TORCHELASTIC_USE_AGENT_STORE",
                    Some(other),
                    "must be True or False (torchrun sets True when its agent hosts the store)",
                ))
            }
        };
        Ok(Self {
            rank,
            world_size,
            local_rank,
            master_addr: master_addr.trim().to_owned(),
            master_port,
            agent_store,
        })
    }

    /// Checks a `LaunchEnv` however it was made (by hand, or edited after [`LaunchEnv::from_lookup`]):
    /// [`crate::dist::ProcessGroup::new`] calls it before any network operation, so an impossible job is
    /// refused at once instead of waiting out the timeout (a rank past the end) or reaching gloo's own
    /// assertion (`WORLD_SIZE` 0).
    ///
    /// # Errors
    /// [`DistError::Env`](crate::DistError::Env) naming the variable the field stands for and the value seen when `world_size` is
    /// 0 or above `i32::MAX`, `rank` or `local_rank` is not below `world_size`, `master_addr` is empty
    /// (or holds a NUL byte), or `master_port` is 0.
    pub fn validate(&self) -> Result<()> {
        let world = self.world_size.to_string();
        if self.world_size == 0 || self.world_size > i32::MAX as usize {
            return Err(bad(
                "WORLD_SIZE",
                Some(&world),
                "must be at least 1 (and fit in i32)",
            ));
        }
        if self.rank >= self.world_size {
            return Err(bad(
                "RANK",
                Some(&self.rank.to_string()),
                format!("must be below WORLD_SIZE = {world}"),
            ));
        }
        if let Some(local) = self.local_rank.filter(|&local| local >= self.world_size) {
            return Err(bad(
                "LOCAL_RANK",
                Some(&local.to_string()),
                format!("must be below WORLD_SIZE = {world}"),
            ));
        }
        if self.master_addr.trim().is_empty() {
            return Err(bad("MASTER_ADDR", Some(&self.master_addr), "must name a host"));
        }
        if self.master_addr.contains('\0') {
            return Err(bad(
                "MASTER_ADDR",
                Some(&self.master_addr),
                "must not contain a NUL byte",
            ));
        }
        if self.master_port == 0 {
            return Err(bad(
                "MASTER_PORT",
                Some("0"),
                "must be a port number in 1..=65535",
            ));
        }
        Ok(())
    }

    /// A one-process job (rank 0 of 1) whose store rank 0 hosts on `master_addr:master_port`.
    pub fn single(master_addr: &str, master_port: u16) -> Self {
        Self {
            rank: 0,
            world_size: 1,
            local_rank: Some(0),
            master_addr: master_addr.to_owned(),
            master_port,
            agent_store: false,
        }
    }
}
