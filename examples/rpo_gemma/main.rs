//! `cargo run --release --example rpo_gemma`: train a Gemma-architecture model with RPO (work in progress:
//! for now this loads a model — a Hugging Face checkpoint directory or the small seeded random-init one —
//! and runs one forward pass; the SFT → DPO / RPO training flow is wired up separately).
mod gemma;
mod task;

use std::path::PathBuf;

use clap::Parser;
use tch::{nn, Device, Kind, Tensor};

/// Gemma + RPO example (model check for now).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A Hugging Face Gemma / Gemma 2 checkpoint directory (config.json + safetensors); default: the
    /// small random-init model.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Random seed for the init.
    #[arg(long, default_value_t = 0)]
    seed: i64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tch::manual_seed(args.seed);
    let vocab = task::CharVocab::new();
    let (_vs, model) = match &args.model_dir {
        Some(dir) => gemma::Gemma::from_pretrained(dir, Device::Cpu, Kind::Float)?,
        None => {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = gemma::Gemma::new(&vs.root(), &gemma::GemmaConfig::small_gemma2(vocab.len()))?;
            (vs, model)
        }
    };
    let records = task::generate(args.seed as u64, 4);
    let prompts: Vec<Vec<i64>> = records
        .iter()
        .map(|r| vocab.encode_prompt(&r.prompt))
        .collect::<Result<_, _>>()?;
    let width = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let mut ids = vec![0i64; prompts.len() * width];
    let mut mask = vec![0i64; prompts.len() * width];
    for (r, p) in prompts.iter().enumerate() {
        ids[r * width..r * width + p.len()].copy_from_slice(p);
        mask[r * width..r * width + p.len()].fill(1);
    }
    let shape = [prompts.len() as i64, width as i64];
    let logits = model.forward(
        &Tensor::from_slice(&ids).view(shape),
        &Tensor::from_slice(&mask).view(shape),
    )?;
    println!("{:?} model: logits {:?}", model.arch(), logits.size());
    Ok(())
}
