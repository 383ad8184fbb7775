//! A c10d process group (Gloo or NCCL) and its collectives.

use std::cell::Cell;
use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use super::env::LaunchEnv;
use super::{ffi, store};
use crate::error::{DistError, DistStorePeer, Error, InputError, Result};

/// The communication backend of a [`ProcessGroup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: tensors on the CPU. It binds to the interface named by `GLOO_SOCKET_IFNAME` if set, to the
    /// loopback when `MASTER_ADDR` is a loopback address, else to the address this host's name resolves to.
    Gloo,
    /// NCCL: tensors on CUDA device `LOCAL_RANK`. Only in builds that found NCCL's and the CUDA runtime's
    /// headers ([`nccl_compiled`]).
    Nccl,
}

/// How a collective combines the ranks' tensors, element by element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Σ over ranks.
    Sum,
    /// Maximum over ranks.
    Max,
    /// Minimum over ranks.
    Min,
}

/// Settings of a [`ProcessGroup`].
#[derive(Debug, Clone, PartialEq)]
pub struct DistOptions {
    /// The backend (default [`Backend::Gloo`]).
    pub backend: Backend,
    /// The bound on every wait: connecting to the store and the peers, and each collective (default 300 s).
    pub timeout: Duration,
    /// After a collective fails, how long a rank waits for the others to report the same failure through
    /// the store before naming the ones that did not (default 5 s, capped at `timeout`).
    pub failure_window: Duration,
}

impl Default for DistOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Gloo,
            timeout: Duration::from_secs(300),
            failure_window: Duration::from_secs(5),
        }
    }
}

impl DistOptions {
    /// These options with `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// These options with `backend`.
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }
}

/// Whether this build compiled the NCCL process group (NCCL's and the CUDA runtime's headers were found).
pub fn nccl_compiled() -> bool {
    // SAFETY: no arguments, no state.
    unsafe { ffi::tch_rpo_dist_nccl_compiled() != 0 }
}

/// A c10d process group: `world_size` processes, each with its `rank`, running collectives in the same
/// order.
///
/// Every collective blocks until it is done on this rank and is bounded by [`DistOptions::timeout`].
/// When one fails (a peer died, a peer hung, the store vanished), the error names the ranks that did not
/// report the same failure within [`DistOptions::failure_window`], and the group is unusable afterwards:
/// later calls return [`DistError::Failed`](crate::DistError::Failed) at once instead of hanging on a half-finished protocol.
///
/// The group is `Send` but not `Sync`: one thread issues its collectives.
pub struct ProcessGroup {
    raw: *mut c_void,
    env: LaunchEnv,
    options: DistOptions,
    device: Device,
    seq: Cell<u64>,
    failed: Cell<Option<u64>>,
}

// SAFETY: the C++ group (store + c10d backend) may be used from any thread, one at a time; `Cell` keeps
// `ProcessGroup` from being `Sync`.
unsafe impl Send for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.env.rank)
            .field("world_size", &self.env.world_size)
            .field("backend", &self.options.backend)
            .field("device", &self.device)
            .finish()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from tch_rpo_dist_new and is freed once.
        unsafe { ffi::tch_rpo_dist_free(self.raw, self.failed.get().is_some() as c_int) }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl ProcessGroup {
    /// The process group of the launcher environment ([`LaunchEnv::from_env`]).
    ///
    /// # Errors
    /// As [`LaunchEnv::from_env`] and [`ProcessGroup::new`].
    pub fn from_env(options: &DistOptions) -> Result<Self> {
        Self::new(&LaunchEnv::from_env()?, options)
    }

    /// The process group of the launcher environment when this process was started by a launcher
    /// (`WORLD_SIZE` is set, as torchrun sets it), `None` otherwise: how a program that runs alone or under
    /// `torchrun` decides whether it is one rank of a data-parallel job.
    ///
    /// # Errors
    /// As [`ProcessGroup::from_env`] when `WORLD_SIZE` is set.
    pub fn from_env_if_launched(options: &DistOptions) -> Result<Option<Self>> {
        if std::env::var_os("WORLD_SIZE").is_none() {
            return Ok(None);
        }
        Self::from_env(options).map(Some)
    }

    /// Connects this process to its job: rank 0 hosts c10d's TCPStore on `MASTER_ADDR:MASTER_PORT` (or,
    /// under torchrun's agent store, connects to it like every other rank), all ranks meet there, and the
    /// Gloo or NCCL backend connects the ranks to each other. Blocks until all `world_size` ranks are there.
    ///
    /// A client of the store (every rank but 0, and rank 0 too under torchrun's agent store) first meets
    /// it in Rust, every connect, write and read bounded by what is left of [`DistOptions::timeout`], and
    /// checks that the peer speaks c10d's store protocol; libtorch's store client then runs under a
    /// watchdog that closes its connection if the store stops answering for the timeout, and its later
    /// receives and sends on the store's connection are bounded by the timeout (see docs/distributed.md).
    ///
    /// # Errors
    /// - [`DistError::Env`](crate::DistError::Env) at once, before any network operation, when `env` is impossible
    ///   ([`LaunchEnv::validate`]: `world_size` 0, `rank` ≥ `world_size`, …), or for [`Backend::Nccl`]
    ///   without `LOCAL_RANK`.
    /// - [`DistError::Store`](crate::DistError::Store) when this rank is a client of the store and the peer at
    ///   `MASTER_ADDR:MASTER_PORT` was not reached, never answered, answered in another protocol, closed
    ///   the connection, or stopped answering, within the timeout.
    /// - [`DistError::Failed`](crate::DistError::Failed) when NCCL is asked for but not compiled or no CUDA device `LOCAL_RANK` exists,
    ///   or the store cannot be hosted (e.g. the port is taken).
    /// - [`DistError::Timeout`](crate::DistError::Timeout) when the peers are not all there within the timeout (the store's host
    ///   rank 0 is named when this rank is a client of it).
    /// - [`DistError::PeerLost`](crate::DistError::PeerLost) when a peer's connection is refused or closed while connecting.
    pub fn new(env: &LaunchEnv, options: &DistOptions) -> Result<Self> {
        env.validate()?;
        let fail = |message: String| {
            Error::Dist(DistError::Failed {
                op: "connect",
                rank: env.rank,
                world_size: env.world_size,
                message,
            })
        };
        let device = match options.backend {
            Backend::Gloo => Device::Cpu,
            Backend::Nccl => {
                let local = env.local_rank.ok_or_else(|| {
                    Error::Dist(DistError::Env {
                        var: "LOCAL_RANK",
                        value: None,
                        requirement: "the NCCL backend needs it to pick this rank's CUDA device".into(),
                    })
                })?;
                if !nccl_compiled() {
                    return Err(fail(
                        "this build has no NCCL process group: NCCL's and the CUDA runtime's headers were not \
                         found when tch-rpo was compiled (see docs/distributed.md)"
                            .into(),
                    ));
                }
                let devices = tch::Cuda::device_count() as usize;
                if local >= devices {
                    return Err(fail(format!(
                        "LOCAL_RANK = {local} but this process sees {devices} CUDA device(s)"
                    )));
                }
                Device::Cuda(local)
            }
        };
        let host = CString::new(env.master_addr.clone()).map_err(|_| {
            Error::Dist(DistError::Env {
                var: "MASTER_ADDR",
                value: Some(env.master_addr.clone()),
                requirement: "must not contain a NUL byte".into(),
            })
        })?;
        let device_index = match device {
            Device::Cuda(i) => i as c_int,
            _ => -1,
        };
        let store_client = env.rank != 0 || env.agent_store;
        if store_client {
            store::probe(env, options.timeout)?;
        }
        let mut raw: *mut c_void = std::ptr::null_mut();
        let mut kind: c_int = 0;
        // SAFETY: valid C string and out-pointers; the shim catches every C++ exception.
        let message = unsafe {
            ffi::take_message(ffi::tch_rpo_dist_new(
                host.as_ptr(),
                env.master_port as c_int,
                env.rank as c_int,
                env.world_size as c_int,
                env.agent_store as c_int,
                device_index,
                millis(options.timeout),
                &mut raw,
                &mut kind,
            ))
        };
        if let Some(message) = message {
            let peer = match kind {
                ffi::KIND_STORE_STALLED => Some(DistStorePeer::StoppedAnswering),
                ffi::KIND_STORE_CLOSED => Some(DistStorePeer::Closed),
                _ => None,
            };
            if let Some(peer) = peer {
                return Err(Error::Dist(DistError::Store {
                    rank: env.rank,
                    world_size: env.world_size,
                    addr: store::store_address(env),
                    timeout_ms: millis(options.timeout) as u64,
                    peer,
                    detail: format!("libtorch's store client: {message}"),
                }));
            }
            // A client of rank 0's store that cannot reach it: rank 0 is the one missing.
            let unresponsive = if env.rank != 0 && !env.agent_store && message.contains("connect") {
                vec![0]
            } else {
                Vec::new()
            };
            return Err(Self::error(env, options, "connect", kind, unresponsive, message));
        }
        Ok(Self {
            raw,
            env: env.clone(),
            options: options.clone(),
            device,
            seq: Cell::new(0),
            failed: Cell::new(None),
        })
    }

    fn error(
        env: &LaunchEnv,
        options: &DistOptions,
        op: &'static str,
        kind: c_int,
        unresponsive: Vec<usize>,
        message: String,
    ) -> Error {
        let (rank, world_size) = (env.rank, env.world_size);
        match kind {
            ffi::KIND_TIMEOUT => Error::Dist(DistError::Timeout {
                op,
                rank,
                world_size,
                timeout_ms: millis(options.timeout) as u64,
                unresponsive,
                message,
            }),
            ffi::KIND_PEER => Error::Dist(DistError::PeerLost {
                op,
                rank,
                world_size,
                unresponsive,
                message,
            }),
            _ => Error::Dist(DistError::Failed {
                op,
                rank,
                world_size,
                message,
            }),
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.env.rank
    }

    /// Number of processes.
    pub fn world_size(&self) -> usize {
        self.env.world_size
    }

    /// The launcher environment this group was made from.
    pub fn launch_env(&self) -> &LaunchEnv {
        &self.env
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.options.backend
    }

    /// The device collectives take their tensors on: the CPU for Gloo, CUDA device `LOCAL_RANK` for NCCL.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The options in force.
    pub fn options(&self) -> &DistOptions {
        &self.options
    }

    /// Runs collective `op` through `call` (given the kind out-pointer), numbering it; on failure asks the
    /// store which ranks did not fail alike and poisons the group.
    fn collective(&self, op: &'static str, call: impl FnOnce(*mut c_int) -> *mut c_char) -> Result<()> {
        if let Some(seq) = self.failed.get() {
            return Err(Error::Dist(DistError::Failed {
                op,
                rank: self.env.rank,
                world_size: self.env.world_size,
                message: format!(
                    "the process group is unusable after collective #{seq} failed; make a new one"
                ),
            }));
        }
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        let mut kind: c_int = 0;
        // SAFETY: the shim catches every C++ exception; the message is freed by take_message.
        let Some(message) = (unsafe { ffi::take_message(call(&mut kind)) }) else {
            return Ok(());
        };
        self.failed.set(Some(seq));
        let unresponsive = if kind == ffi::KIND_OTHER {
            Vec::new()
        } else {
            self.unresponsive(seq)
        };
        Err(Self::error(
            &self.env,
            &self.options,
            op,
            kind,
            unresponsive,
            message,
        ))
    }

    /// The ranks that did not report the failure of collective `seq` within the failure window (empty
    /// when the store cannot tell).
    fn unresponsive(&self, seq: u64) -> Vec<usize> {
        let window = self.options.failure_window.min(self.options.timeout);
        let mut missing = vec![0 as c_int; self.env.world_size];
        let (mut n, mut kind) = (0 as c_int, 0 as c_int);
        // SAFETY: `missing` holds world_size entries, as the shim requires.
        let message = unsafe {
            ffi::take_message(ffi::tch_rpo_dist_unresponsive(
                self.raw,
                seq as i64,
                millis(window),
                missing.as_mut_ptr(),
                &mut n,
                &mut kind,
            ))
        };
        if message.is_some() {
            return Vec::new();
        }
        missing[..n as usize].iter().map(|&r| r as usize).collect()
    }

    fn check_tensor(&self, tensor: &Tensor) -> Result<()> {
        if !tensor.defined() {
            return Err(Error::Input(InputError::Config {
                name: "tensor",
                requirement: "a collective needs a defined tensor, got an undefined one".into(),
            }));
        }
        if tensor.device() != self.device {
            return Err(Error::Input(InputError::DeviceMismatch {
                arg: "tensor",
                other: "process group",
                expected: self.device,
                got: tensor.device(),
            }));
        }
        if !tensor.is_contiguous() {
            return Err(Error::Input(InputError::Shape {
                arg: "tensor",
                expected: format!("a contiguous tensor (strides {:?})", tensor.stride()),
                got: tensor.size(),
            }));
        }
        if tensor.requires_grad() {
            return Err(Error::Input(InputError::Config {
                name: "tensor",
                requirement: "collectives write in place, outside autograd: pass gradients or detached \
                              tensors, got one that requires grad"
                    .into(),
            }));
        }
        Ok(())
    }

    /// In place: every rank's `tensor` becomes `op` over all ranks' `tensor`s (same shape and dtype on
    /// every rank, on [`ProcessGroup::device`], contiguous, not requiring grad).
    ///
    /// # Errors
    /// [`InputError::DeviceMismatch`](crate::InputError::DeviceMismatch), [`InputError::Shape`](crate::InputError::Shape) (not contiguous), [`InputError::Config`](crate::InputError::Config) (undefined or
    /// requires grad); [`DistError::Timeout`](crate::DistError::Timeout), [`DistError::PeerLost`](crate::DistError::PeerLost), [`DistError::Failed`](crate::DistError::Failed) from the group.
    pub fn all_reduce_(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<()> {
        self.check_tensor(tensor)?;
        let code = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        };
        let ptr = tensor.as_ptr() as *mut _;
        // SAFETY: `ptr` is a live at::Tensor* owned by `tensor`.
        self.collective("all_reduce", |kind| unsafe {
            ffi::tch_rpo_dist_all_reduce(self.raw, ptr, code, kind)
        })
    }

    /// In place: Σ over ranks (see [`ProcessGroup::all_reduce_`]).
    ///
    /// # Errors
    /// As [`ProcessGroup::all_reduce_`].
    pub fn all_reduce_sum_(&self, tensor: &mut Tensor) -> Result<()> {
        self.all_reduce_(tensor, ReduceOp::Sum)
    }

    /// In place: every rank's `tensor` becomes rank `root`'s.
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`](crate::InputError::InvalidParameter) when `root ≥ world_size`; otherwise as [`ProcessGroup::all_reduce_`].
    pub fn broadcast_(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        if root >= self.env.world_size {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "root",
                value: root.into(),
                requirement: "must be a rank of the group (below world_size)",
            }));
        }
        self.check_tensor(tensor)?;
        let ptr = tensor.as_ptr() as *mut _;
        // SAFETY: `ptr` is a live at::Tensor* owned by `tensor`.
        self.collective("broadcast", |kind| unsafe {
            ffi::tch_rpo_dist_broadcast(self.raw, ptr, root as c_int, kind)
        })
    }

    /// Returns once every rank has called it.
    ///
    /// # Errors
    /// [`DistError::Timeout`](crate::DistError::Timeout), [`DistError::PeerLost`](crate::DistError::PeerLost), [`DistError::Failed`](crate::DistError::Failed).
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: no tensor arguments.
        self.collective("barrier", |kind| unsafe {
            ffi::tch_rpo_dist_barrier(self.raw, kind)
        })
    }

    /// In place on host scalars: `values[i]` becomes `op` over ranks of `values[i]`, computed in f64 (one
    /// collective for the whole slice; every rank passes the same length).
    ///
    /// # Errors
    /// As [`ProcessGroup::all_reduce_`].
    pub fn all_reduce_f64(&self, values: &mut [f64], op: ReduceOp) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut t = Tensor::f_from_slice(values)?.f_to_device(self.device)?;
        self.all_reduce_(&mut t, op)?;
        let host = t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
        let out = Vec::<f64>::try_from(&host)?;
        values.copy_from_slice(&out);
        Ok(())
    }
}
