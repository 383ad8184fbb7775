//! One forward + backward of the RPO loss (paper default, `RpoConfig::default()`) through the LM head, fused
//! or unfused, on seeded random inputs; prints one JSON line. Run each implementation in its own process
//! so its peak memory can be read with `/usr/bin/time -v`:
//!
//! ```text
//! cargo run --release --example fused_bench -- --impl fused|unfused --pairs 4 --seq 512 --hidden 1024 \
//!     --vocab 32000 [--dtype f32|bf16] [--reference model|precomputed|none] [--device cpu|cuda] [--seed 0] \
//!     [--chunk-bytes N]
//! ```
//!
//! Inputs: hidden states `[2·pairs, seq, hidden]` ~ N(0, 1) (leaf, requires grad), head weight
//! `[vocab, hidden]` ~ N(0, 1/hidden) (leaf, requires grad), labels uniform in `[0, vocab)` with the first
//! half of every row a prompt (ignored), causal shift. The reference is a second random model (hidden
//! states + head, no grad), precomputed random log-probs, or none. Timed: reference pass, loss, backward.
//! The unfused path materializes `[2B, T, V]` logits (`h·Wᵀ`) and calls `compute_loss` on a logits `LossBatch`; with a
//! reference model it computes the reference logits first under no_grad and keeps only their sums.

use std::time::Instant;
use tch::{Device, Kind, Tensor};
use tch_rpo::{
    compute_loss, sequence_logprobs, LinearHead, LogProbOptions, LossBatch, Reference, RpoConfig,
    DEFAULT_FUSED_CHUNK_BYTES,
};

struct Args {
    imp: String,
    pairs: i64,
    seq: i64,
    hidden: i64,
    vocab: i64,
    dtype: String,
    reference: String,
    device: String,
    seed: i64,
    chunk_bytes: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        imp: "fused".into(),
        pairs: 4,
        seq: 512,
        hidden: 1024,
        vocab: 32000,
        dtype: "f32".into(),
        reference: "model".into(),
        device: "cpu".into(),
        seed: 0,
        chunk_bytes: DEFAULT_FUSED_CHUNK_BYTES,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let key = argv[i].as_str();
        let val = argv.get(i + 1).ok_or(format!("{key} needs a value"))?.clone();
        let num = |v: &str| v.parse::<i64>().map_err(|e| format!("{key}: {e}"));
        match key {
            "--impl" => a.imp = val,
            "--pairs" => a.pairs = num(&val)?,
            "--seq" => a.seq = num(&val)?,
            "--hidden" => a.hidden = num(&val)?,
            "--vocab" => a.vocab = num(&val)?,
            "--dtype" => a.dtype = val,
            "--reference" => a.reference = val,
            "--device" => a.device = val,
            "--seed" => a.seed = num(&val)?,
            "--chunk-bytes" => a.chunk_bytes = num(&val)? as usize,
            _ => return Err(format!("unknown argument {key}")),
        }
        i += 2;
    }
    if !matches!(a.imp.as_str(), "fused" | "unfused") {
        return Err("--impl must be fused or unfused".into());
    }
    if !matches!(a.reference.as_str(), "model" | "precomputed" | "none") {
        return Err("--reference must be model, precomputed or none".into());
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let kind = match args.dtype.as_str() {
        "f32" => Kind::Float,
        "bf16" => Kind::BFloat16,
        other => return Err(format!("--dtype must be f32 or bf16, got {other}").into()),
    };
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => return Err(format!("--device must be cpu or cuda, got {other}").into()),
    };
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    tch::manual_seed(args.seed);
    let rows = 2 * args.pairs;
    let (t, h, v) = (args.seq, args.hidden, args.vocab);
    let randn = |shape: &[i64], std: f64| -> Result<Tensor, tch::TchError> {
        Tensor::f_randn(shape, (Kind::Float, device))?
            .f_mul_scalar(std)?
            .f_to_kind(kind)
    };
    let hidden = randn(&[rows, t, h], 1.0)?.set_requires_grad(true);
    let weight = randn(&[v, h], 1.0 / (h as f64).sqrt())?.set_requires_grad(true);
    let labels = Tensor::f_randint(v, [rows, t], (Kind::Int64, device))?;
    let _ = labels.f_narrow(1, 0, t / 2)?.f_fill_(-100)?;
    let (ref_hidden, ref_weight, ref_sums) = match args.reference.as_str() {
        "model" => (
            Some(randn(&[rows, t, h], 1.0)?),
            Some(randn(&[v, h], 1.0 / (h as f64).sqrt())?),
            None,
        ),
        "precomputed" => (
            None,
            None,
            Some(
                Tensor::f_randn([rows], (Kind::Float, device))?
                    .f_sub_scalar((t as f64 / 2.0) * (v as f64).ln())?,
            ),
        ),
        _ => (None, None, None),
    };
    let config = RpoConfig::default();
    // Warm up libtorch (thread pools, allocator) so the timing measures the loss, not lazy start-up.
    let _ = Tensor::f_randn([64, 64], (Kind::Float, device))?
        .f_matmul(&Tensor::f_randn([64, 64], (Kind::Float, device))?)?
        .f_logsumexp(-1, false)?;
    sync();
    let rss_before = proc_status_kb("VmRSS");

    let start = Instant::now();
    let loss = if args.imp == "fused" {
        let options = LogProbOptions::causal().with_fused_chunk_bytes(args.chunk_bytes);
        let ref_head = ref_weight.as_ref().map(LinearHead::new);
        let reference = match (&ref_hidden, &ref_head, &ref_sums) {
            (Some(rh), Some(head), _) => Reference::Hidden { hidden: rh, head },
            (_, _, Some(s)) => Reference::LogProbs(s),
            _ => Reference::Free,
        };
        let batch = LossBatch::hidden(&hidden, LinearHead::new(&weight), &labels)
            .with_reference(reference)
            .with_options(options);
        let out = compute_loss(&config, &batch)?;
        out.loss.f_backward()?;
        out.loss.f_double_value(&[])?
    } else {
        let options = LogProbOptions::causal();
        let model_sums = match (&ref_hidden, &ref_weight) {
            (Some(rh), Some(rw)) => Some(tch::no_grad(|| -> tch_rpo::Result<Tensor> {
                let logits = rh.f_matmul(&rw.f_tr()?)?;
                Ok(sequence_logprobs(&logits, &labels, &options)?.sum)
            })?),
            _ => None,
        };
        let reference = match (&model_sums, &ref_sums) {
            (Some(s), _) | (_, Some(s)) => Reference::LogProbs(s),
            _ => Reference::Free,
        };
        let logits = hidden.f_matmul(&weight.f_tr()?)?;
        let batch = LossBatch::logits(&logits, &labels)
            .with_reference(reference)
            .with_options(options);
        let out = compute_loss(&config, &batch)?;
        drop(logits);
        out.loss.f_backward()?;
        out.loss.f_double_value(&[])?
    };
    sync();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let rss_peak = proc_status_kb("VmHWM");
    let kb = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
    // Σ|x| as one fused reduction (no x-sized temporary that would inflate the peak RSS).
    let abs_sum = |t: &Tensor| -> Result<f64, tch::TchError> {
        let flat = t.f_reshape([-1])?;
        flat.f_norm_scalaropt_dim(1.0, [0i64].as_slice(), false)?
            .f_double_value(&[])
    };
    println!(
        "{{\"impl\":\"{}\",\"loss\":{loss:.9},\"ms\":{ms:.1},\"grad_weight_abs_sum\":{:.6},\"grad_hidden_abs_sum\":{:.6},\
         \"pairs\":{},\"seq\":{t},\"hidden\":{h},\"vocab\":{v},\"dtype\":\"{}\",\"reference\":\"{}\",\"device\":\"{}\",\
         \"chunk_bytes\":{},\"seed\":{},\"rss_before_kb\":{},\"rss_peak_kb\":{}}}",
        args.imp,
        abs_sum(&weight.grad())?,
        abs_sum(&hidden.grad())?,
        args.pairs,
        args.dtype,
        args.reference,
        args.device,
        if args.imp == "fused" { args.chunk_bytes } else { 0 },
        args.seed,
        kb(rss_before),
        kb(rss_peak),
    );
    Ok(())
}

/// A `kB` field of `/proc/self/status` (Linux), e.g. `VmRSS` (current) or `VmHWM` (peak resident set).
fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
