//! Data parallelism on libtorch's own distributed engine, c10d (feature `dist`, default).
//!
//! - [`LaunchEnv`]: a process's place in a job, from the variables `torchrun` sets (`RANK`,
//!   `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`).
//! - [`ProcessGroup`]: c10d's TCPStore rendezvous and a Gloo (CPU) or NCCL (CUDA) backend, with
//!   in-place collectives ([`ProcessGroup::all_reduce_`], [`ProcessGroup::broadcast_`],
//!   [`ProcessGroup::barrier`], [`ProcessGroup::all_reduce_f64`]), each bounded by a timeout; a failure
//!   names the ranks that did not respond ([`DistError::Timeout`](crate::DistError::Timeout), [`DistError::PeerLost`](crate::DistError::PeerLost)).
//!   The rendezvous is bounded too: a store client checks the peer at `MASTER_ADDR:MASTER_PORT` and says
//!   what it did ([`DistError::Store`](crate::DistError::Store), [`crate::DistStorePeer`]); an impossible [`LaunchEnv`]
//!   is refused before any network operation ([`LaunchEnv::validate`]).
//! - [`plan_buckets`], [`flatten`], [`unflatten_into`], [`all_reduce_buckets_`]: gradient lists reduced
//!   in a few flattened buckets.
//! - [`DistributedSampler`], [`shard_range`] (with feature `train`): each rank's disjoint shard of the
//!   global batches of one process's [`crate::data::sampler::BatchSampler`].
//!
//! The collectives run through a small C++ shim (`csrc/dist.cpp`) over libtorch's c10d classes, compiled
//! by build.rs; gloo's headers come from Debian's `libgloo-dev` (installed by `scripts/setup.sh`). NCCL's
//! process group is compiled when NCCL's and the CUDA runtime's headers are found ([`nccl_compiled`]).
//! See docs/distributed.md for launching.
//!
//! ```no_run
//! use tch::{Kind, Tensor};
//! use tch_rpo::dist::{DistOptions, ProcessGroup};
//!
//! # fn main() -> tch_rpo::Result<()> {
//! // Under `torchrun --no-python --nproc-per-node 2 <binary>`:
//! let group = ProcessGroup::from_env(&DistOptions::default())?;
//! let mut t = Tensor::full([4], group.rank() as f64 + 1.0, (Kind::Float, group.device()));
//! group.all_reduce_sum_(&mut t)?; // 1 + 2 = 3 everywhere
//! # Ok(())
//! # }
//! ```

mod bucket;
mod env;
mod ffi;
mod group;
#[cfg(feature = "train")]
mod sampler;
mod store;

pub use bucket::{
    all_reduce_buckets_, broadcast_buckets_, flatten, plan_buckets, unflatten_into, DEFAULT_BUCKET_BYTES,
};
pub use env::LaunchEnv;
pub use group::{nccl_compiled, Backend, DistOptions, ProcessGroup, ReduceOp};
#[cfg(feature = "train")]
pub use sampler::{shard_range, DistributedSampler};
