//! The attainable matrix-multiply throughput of this machine at a decoder training step's shapes: the
//! peak FLOP/s against which the trainer's model FLOP utilization is read (`RpoTrainerBuilder::peak_flops`,
//! `rpo_gemma --peak-gflops`).
//!
//! For each dtype (f32, bf16) it times libtorch's `a.matmul(b)` (`[m, k] × [k, n]`, `2·m·n·k` FLOPs) at the
//! shapes of the step — the decoder's projections and MLP over all tokens, one chunk of the LM head and
//! the head's weight gradient — and prints the median of `--reps` timings (after one warm-up run) per
//! shape, and the best shape's throughput. Defaults: Gemma 3 270M (hidden 640, MLP 2,048, 4 query heads
//! and 1 key / value head of 256, vocabulary 262,144) on 2,020 tokens with head chunks of 256 tokens.
//!
//! ```text
//! cargo run --release --example matmul_peak -- --threads 2
//! cargo run --release --example matmul_peak -- --device cuda --kinds bf16
//! ```
//!
//! Timings need a quiet machine: run nothing else meanwhile.

use std::time::Instant;

use clap::Parser;
use tch::{Device, Kind, Tensor};

/// Matmul throughput at a training step's shapes.
#[derive(Parser, Debug)]
struct Args {
    /// libtorch CPU threads (default: libtorch's).
    #[arg(long)]
    threads: Option<i32>,
    /// `cpu`, or `cuda` (device 0; the CPU when no GPU is available).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Dtypes to time, comma-separated: f32, bf16, f16.
    #[arg(long, default_value = "f32,bf16", value_delimiter = ',')]
    kinds: Vec<String>,
    /// Tokens of the step (rows of the decoder's products).
    #[arg(long, default_value_t = 2020)]
    tokens: i64,
    /// Hidden size.
    #[arg(long, default_value_t = 640)]
    hidden: i64,
    /// MLP size.
    #[arg(long, default_value_t = 2048)]
    intermediate: i64,
    /// Query heads.
    #[arg(long, default_value_t = 4)]
    heads: i64,
    /// Key / value heads.
    #[arg(long, default_value_t = 1)]
    kv_heads: i64,
    /// Head size.
    #[arg(long, default_value_t = 256)]
    head_dim: i64,
    /// Vocabulary size (rows of the LM head).
    #[arg(long, default_value_t = 262_144)]
    vocab: i64,
    /// Tokens per LM-head chunk (the fused path's chunk).
    #[arg(long, default_value_t = 256)]
    head_chunk: i64,
    /// Timed repetitions per shape (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

/// One product `[m, k] × [k, n]` of the step.
struct Shape {
    name: &'static str,
    m: i64,
    k: i64,
    n: i64,
}

fn shapes(a: &Args) -> Vec<Shape> {
    let (t, h, i) = (a.tokens, a.hidden, a.intermediate);
    let (q, kv) = (a.heads * a.head_dim, a.kv_heads * a.head_dim);
    vec![
        Shape {
            name: "q_proj",
            m: t,
            k: h,
            n: q,
        },
        Shape {
            name: "k/v_proj",
            m: t,
            k: h,
            n: kv,
        },
        Shape {
            name: "o_proj",
            m: t,
            k: q,
            n: h,
        },
        Shape {
            name: "gate/up_proj",
            m: t,
            k: h,
            n: i,
        },
        Shape {
            name: "down_proj",
            m: t,
            k: i,
            n: h,
        },
        Shape {
            name: "head chunk",
            m: a.head_chunk,
            k: h,
            n: a.vocab,
        },
        Shape {
            name: "head weight grad",
            m: a.vocab,
            k: a.head_chunk,
            n: h,
        },
    ]
}

fn name_of(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        _ => "f32",
    }
}

fn kind_of(name: &str) -> Result<Kind, String> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" => Ok(Kind::Float),
        "bf16" => Ok(Kind::BFloat16),
        "f16" => Ok(Kind::Half),
        other => Err(format!("unknown dtype {other:?}: expected f32, bf16 or f16")),
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The median seconds of `reps` products (after one warm-up).
fn time_matmul(shape: &Shape, kind: Kind, device: Device, reps: usize) -> Result<f64, tch::TchError> {
    let a = Tensor::f_randn([shape.m, shape.k], (kind, device))?;
    let b = Tensor::f_randn([shape.k, shape.n], (kind, device))?;
    let _ = a.f_matmul(&b)?;
    sync(device);
    let mut seconds = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        let _ = a.f_matmul(&b)?;
        sync(device);
        seconds.push(start.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    Ok(seconds[seconds.len() / 2])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::cuda_if_available(),
        other => return Err(format!("unknown device {other:?}: expected cpu or cuda").into()),
    };
    let kinds = args
        .kinds
        .iter()
        .map(|k| kind_of(k))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "device {device:?}, {} threads, median of {} runs",
        tch::get_num_threads(),
        args.reps.max(1)
    );
    println!(
        "{:<6} {:<18} {:>8} {:>8} {:>8} {:>12} {:>10}",
        "dtype", "product", "m", "k", "n", "ms", "GFLOP/s"
    );
    for kind in kinds {
        let mut best = 0.0f64;
        for shape in shapes(&args) {
            let seconds = time_matmul(&shape, kind, device, args.reps)?;
            let flops = 2.0 * (shape.m * shape.n * shape.k) as f64;
            let gflops = flops / seconds.max(1e-12) / 1e9;
            best = best.max(gflops);
            println!(
                "{:<6} {:<18} {:>8} {:>8} {:>8} {:>12.3} {:>10.1}",
                name_of(kind),
                shape.name,
                shape.m,
                shape.k,
                shape.n,
                seconds * 1e3,
                gflops
            );
        }
        println!(
            "{}: best {best:.1} GFLOP/s (use e.g. rpo_gemma --peak-gflops {best:.0})",
            name_of(kind)
        );
    }
    Ok(())
}
