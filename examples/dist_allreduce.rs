//! All-reduce throughput of a gradient-sized f32 buffer through `tch_rpo::dist` (Gloo on CPU, or NCCL on
//! CUDA with `--cuda`), in buckets. Launch it with torchrun:
//!
//! ```text
//! torchrun --no-python --nproc-per-node 2 target/release/examples/dist_allreduce --elements 268000000
//! ```
//!
//! Rank 0 prints the mean seconds per whole-buffer all-reduce, the algorithm bandwidth (buffer bytes /
//! time) and the bus bandwidth (× 2(n−1)/n, the bytes each rank sends and receives in a ring).

use std::time::Instant;

use clap::Parser;
use tch::{Device, Kind, Tensor};
use tch_rpo::dist::{Backend, DistOptions, ProcessGroup};

#[derive(Parser)]
struct Args {
    /// f32 elements in the buffer (268M ≈ Gemma 3 270M's parameters, 1.07 GB).
    #[arg(long, default_value_t = 268_000_000)]
    elements: i64,
    /// Bucket size in MiB (each bucket is one all-reduce).
    #[arg(long, default_value_t = 25)]
    bucket_mib: i64,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// NCCL on CUDA device LOCAL_RANK instead of Gloo on the CPU.
    #[arg(long)]
    cuda: bool,
}

fn main() -> tch_rpo::Result<()> {
    let args = Args::parse();
    let backend = if args.cuda { Backend::Nccl } else { Backend::Gloo };
    let group = ProcessGroup::from_env(&DistOptions::default().with_backend(backend))?;
    let buffer = Tensor::f_ones([args.elements], (Kind::Float, group.device()))?;
    let per_bucket = (args.bucket_mib << 20) / 4;
    let sync = |d: Device| {
        if let Device::Cuda(i) = d {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let reduce_all = || -> tch_rpo::Result<()> {
        let mut offset = 0;
        while offset < args.elements {
            let n = per_bucket.min(args.elements - offset);
            let mut bucket = buffer.f_narrow(0, offset, n)?;
            group.all_reduce_sum_(&mut bucket)?;
            offset += n;
        }
        Ok(())
    };
    reduce_all()?;
    sync(group.device());
    group.barrier()?;
    let start = Instant::now();
    for _ in 0..args.iters {
        reduce_all()?;
    }
    sync(group.device());
    let seconds = start.elapsed().as_secs_f64() / args.iters as f64;
    let mut times = [seconds];
    group.all_reduce_f64(&mut times, tch_rpo::dist::ReduceOp::Max)?;
    if group.rank() == 0 {
        let n = group.world_size() as f64;
        let gb = args.elements as f64 * 4.0 / 1e9;
        println!(
            "world_size {} {:?} buffer {:.3} GB bucket {} MiB: {:.3} s per all-reduce (slowest rank), \
             algbw {:.2} GB/s, busbw {:.2} GB/s",
            group.world_size(),
            group.backend(),
            gb,
            args.bucket_mib,
            times[0],
            gb / times[0],
            gb / times[0] * 2.0 * (n - 1.0) / n
        );
    }
    Ok(())
}
