//! `cargo run --release --example rpo_gemma`: train a Gemma-architecture model with RPO.
//!
//! Work in progress: for now this loads a model (a Hugging Face checkpoint directory, or the small seeded
//! random-init one) and runs one forward pass; `--write-data DIR` regenerates the shipped data set and
//! `--measure` times a forward + backward pass. The SFT → DPO / RPO training flow is wired up separately.
mod gemma;
mod task;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use tch::{nn, Device, Kind, Tensor};

/// Gemma + RPO example (model and data check for now).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A Hugging Face Gemma / Gemma 2 checkpoint directory (config.json + model.safetensors or a sharded
    /// model.safetensors.index.json); default: the small seeded random-init Gemma 2 model.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Random seed for the init.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Write train.jsonl and heldout.jsonl (the shipped data set, from the task generator) into DIR and exit.
    #[arg(long, value_name = "DIR")]
    write_data: Option<PathBuf>,
    /// Time forward + backward of the model on a batch of 16 rows × 24 tokens (median of 20 runs) and exit.
    #[arg(long)]
    measure: bool,
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = &args.write_data {
        let (train, heldout) = task::generate_split(task::DATA_SEED, task::TRAIN_SIZE, task::HELDOUT_SIZE);
        std::fs::create_dir_all(dir)?;
        task::write_jsonl(&dir.join("train.jsonl"), &train)?;
        task::write_jsonl(&dir.join("heldout.jsonl"), &heldout)?;
        println!(
            "wrote {} + {} records to {}",
            train.len(),
            heldout.len(),
            dir.display()
        );
        return Ok(());
    }
    tch::manual_seed(args.seed);
    let vocab = task::CharVocab::new();
    let (vs, model) = match &args.model_dir {
        Some(dir) => gemma::Gemma::from_pretrained(dir, Device::Cpu, Kind::Float)?,
        None => {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = gemma::Gemma::new(&vs.root(), &gemma::GemmaConfig::small_gemma2(vocab.len()))?;
            (vs, model)
        }
    };
    let params: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    if args.measure {
        let (rows, tokens) = (16, 24);
        let ids = Tensor::f_randint(
            model.config().vocab_size,
            [rows, tokens],
            (Kind::Int64, Device::Cpu),
        )?;
        let mask = ids.f_ones_like()?;
        let mut times = Vec::new();
        for run in 0..25 {
            let start = Instant::now();
            let loss = model.forward(&ids, &mask)?.f_mean(Kind::Float)?;
            loss.f_backward()?;
            if run >= 5 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            vs.trainable_variables().iter_mut().for_each(|v| v.zero_grad());
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{:?}, {params} parameters, {} threads: forward + backward on [{rows}, {tokens}]: median {:.1} ms, min {:.1} ms",
            model.arch(),
            tch::get_num_threads(),
            times[times.len() / 2],
            times[0]
        );
        return Ok(());
    }
    let records = task::generate(args.seed as u64, 4);
    let prompts = records
        .iter()
        .map(|r| vocab.encode_prompt(&r.prompt))
        .collect::<Result<Vec<_>, _>>()?;
    let width = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let mut ids = vec![task::CharVocab::PAD; prompts.len() * width];
    let mut mask = vec![0i64; prompts.len() * width];
    for (r, p) in prompts.iter().enumerate() {
        ids[r * width..r * width + p.len()].copy_from_slice(p);
        mask[r * width..r * width + p.len()].fill(1);
    }
    let shape = [prompts.len() as i64, width as i64];
    let logits = model.forward(
        &Tensor::f_from_slice(&ids)?.f_view(shape)?,
        &Tensor::f_from_slice(&mask)?.f_view(shape)?,
    )?;
    println!(
        "{:?} model, {params} parameters: logits {:?}",
        model.arch(),
        logits.size()
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(error) = run(&args) {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
