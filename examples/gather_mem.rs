//! Log-prob gathering in its own process, so peak memory can be read from outside:
//!
//! ```text
//! /usr/bin/time -v cargo run --release --example gather_mem -- --impl chunked --batch 8 --seq 512 --vocab 32000
//! ```
//!
//! `--impl none` allocates the inputs only (the baseline to subtract); `chunked` is
//! [`tch_rpo::sequence_logprobs`]; `naive` is `log_softmax` + `gather`. `--backward` also runs backward
//! (logits require grad). `--dtype f32|bf16`. Prints one JSON line: impl, shape, dtype, ms, the result's sum.
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use tch_rpo::{sequence_logprobs, LogProbOptions};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let imp = arg(&args, "--impl", "chunked");
    let b: i64 = arg(&args, "--batch", "8").parse()?;
    let t: i64 = arg(&args, "--seq", "512").parse()?;
    let v: i64 = arg(&args, "--vocab", "32000").parse()?;
    let dtype = arg(&args, "--dtype", "f32");
    let backward = args.iter().any(|a| a == "--backward");
    let kind = match dtype.as_str() {
        "f32" => Kind::Float,
        "bf16" => Kind::BFloat16,
        other => return Err(format!("--dtype must be f32 or bf16, got {other}").into()),
    };
    tch::manual_seed(0);
    let logits = Tensor::f_randn([b, t, v], (kind, Device::Cpu))?.set_requires_grad(backward);
    let labels = Tensor::f_randint(v, [b, t], (Kind::Int64, Device::Cpu))?;
    let _ = labels.f_narrow(1, 0, t / 2)?.f_fill_(-100)?;
    // Page in the kernels of both implementations on a tiny input, so the `none` baseline's RSS includes
    // libtorch's code and the difference to it is data.
    {
        let z = Tensor::f_randn([1, 4, 8], (kind, Device::Cpu))?.set_requires_grad(backward);
        let y = Tensor::f_randint(8, [1, 4], (Kind::Int64, Device::Cpu))?;
        let a = sequence_logprobs(&z, &y, &LogProbOptions::causal())?
            .sum
            .f_sum(Kind::Float)?;
        let n = z
            .f_log_softmax(-1, Kind::Float)?
            .f_gather(-1, &y.f_unsqueeze(-1)?, false)?
            .f_sum(Kind::Float)?;
        if backward {
            a.f_add(&n)?.backward();
        }
    }
    let start = Instant::now();
    let total = match imp.as_str() {
        "none" => Tensor::from(0.0f32),
        "chunked" => sequence_logprobs(&logits, &labels, &LogProbOptions::causal())?
            .sum
            .f_sum(Kind::Float)?,
        "naive" => {
            let (z, y) = (logits.f_narrow(1, 0, t - 1)?, labels.f_narrow(1, 1, t - 1)?);
            let mask = y.f_ne(-100)?;
            let safe = y.f_masked_fill(&mask.f_logical_not()?, 0)?;
            let lp = z
                .f_log_softmax(-1, Kind::Float)?
                .f_gather(-1, &safe.f_unsqueeze(-1)?, false)?;
            lp.f_squeeze_dim(-1)?
                .f_masked_fill(&mask.f_logical_not()?, 0.0)?
                .f_sum(Kind::Float)?
        }
        other => return Err(format!("--impl must be none, chunked or naive, got {other}").into()),
    };
    if backward && imp != "none" {
        total.f_neg()?.backward();
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "{{\"impl\":\"{imp}\",\"batch\":{b},\"seq\":{t},\"vocab\":{v},\"dtype\":\"{dtype}\",\"backward\":{backward},\"ms\":{ms:.1},\"sum\":{}}}",
        total.f_double_value(&[])?
    );
    Ok(())
}
