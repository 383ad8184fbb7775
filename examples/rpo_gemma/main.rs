//! `cargo run --release --example rpo_gemma`: train a Gemma-architecture model with SFT, then DPO and RPO
//! from the same start, and show what RPO is for (the chosen responses' log-prob under DPO vs RPO).
//!
//! Every model piece comes from the library (`tch_rpo::models`); this example is the flow only: the flags
//! (here), the stages and metrics (`run.rs`), the word-reversal task (`task.rs`) and the plot (`plot.rs`).
//! Documentation and results: `docs/rpo_gemma.md`; tested by running it (`tests/rpo_gemma_*.rs`).
mod plot;
mod run;
mod task;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use tch::{nn, Device, Kind, Tensor};
use tch_rpo::data::Tokenizer;
use tch_rpo::models::gemma::{Gemma, GemmaConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DtypeArg {
    F32,
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GgufTypeArg {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
}

/// SFT a Gemma model, then train DPO and RPO from it and compare them (chosen log-prob, reward accuracy,
/// reward margin, gold accuracy on a checkable task).
///
/// With no arguments: a small seeded Gemma 2 model on the shipped word-reversal task (reverse a word of
/// 3-5 letters), on CPU, in about a minute. Writes OUTPUT/metrics.csv, OUTPUT/chosen_logp.svg and
/// OUTPUT/train_log.jsonl (the trainer's per-step JSON Lines log).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A Hugging Face Gemma / Gemma 2 / Gemma 3 checkpoint directory (config.json, model.safetensors or a
    /// sharded model.safetensors.index.json, tokenizer.json; needs `--features hf-tokenizers`). Default: the
    /// small seeded random-init Gemma 2 model with a character vocabulary.
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// A Gemma 3 GGUF file (e.g. Gemma 3 270M: `scripts/get_gemma3_gguf.sh` installs it and prints its
    /// path): model, config and tokenizer from the file. Implies --sft-epochs 0 (the loaded model is the
    /// reference) and, without --data, the shipped examples/rpo_gemma/data/gemma3_prefs.jsonl.
    #[arg(long, value_name = "FILE", conflicts_with = "model_dir")]
    gguf: Option<PathBuf>,
    /// A JSON Lines preference file ({"prompt","chosen","rejected"} per line, plain or conversational).
    /// Default: the shipped examples/rpo_gemma/data/train.jsonl. With --data the gold accuracy (a
    /// property of the built-in task) is not computed: "n/a" in the table, empty in the CSV.
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Parameter and activation dtype (bf16 keeps f32 master weights in the optimizer).
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
    /// Epochs of DPO and of RPO.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    /// Epochs of the SFT stage that makes the reference policy (0: use the model as loaded). Default 8;
    /// 0 with --gguf.
    #[arg(long)]
    sft_epochs: Option<usize>,
    /// β of DPO and RPO (the paper's gemma series).
    #[arg(long, default_value_t = 0.05)]
    beta: f64,
    /// η of RPO: its SFT term is η·β · (summed NLL of the chosen response); see docs/rpo_gemma.md for why
    /// not the paper's 0.005 at this scale.
    #[arg(long, default_value_t = 1.0)]
    eta: f64,
    /// Peak learning rate of DPO and RPO (cosine, warmup ratio 0.1, AdamW). Default 1e-3; 1e-5 with
    /// --gguf (a pretrained model: 1e-3 wrecks it in one step).
    #[arg(long)]
    lr: Option<f64>,
    /// Peak learning rate of the SFT stage.
    #[arg(long, default_value_t = 3e-3)]
    sft_lr: f64,
    /// Pairs per micro-batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Maximum tokens per row (prompt + response).
    #[arg(long, default_value_t = 32)]
    max_length: usize,
    /// Maximum prompt tokens (longer prompts keep their end).
    #[arg(long, default_value_t = 16)]
    max_prompt_length: usize,
    /// Train through the fused linear-head loss (LossPath::Hidden: hidden states + head weight, no logits).
    #[arg(long)]
    fused: bool,
    /// Seed of the init and of the data order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output directory.
    #[arg(long, value_name = "DIR", default_value = "output/rpo_gemma")]
    output: PathBuf,
    /// Evaluations per epoch (table rows / plot points).
    #[arg(long, default_value_t = 4)]
    evals_per_epoch: usize,
    /// libtorch CPU threads. Default: 1 for the built-in small model (its ops are too small to gain from
    /// threads, and busy-waiting threads slow it down a lot on a shared machine), libtorch's default
    /// otherwise.
    #[arg(long)]
    threads: Option<i32>,
    /// Train only RPO (skip the DPO run it is otherwise compared with).
    #[arg(long)]
    rpo_only: bool,
    /// Stop DPO / RPO after this many optimizer steps (the LR schedule is sized to it).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Pairs per forward pass for evaluation and the reference log-probs (default 64; 4 with --gguf).
    #[arg(long)]
    eval_batch: Option<usize>,
    /// Use only the first N training pairs.
    #[arg(long, value_name = "N")]
    train_limit: Option<usize>,
    /// Use only the first N held-out prompts of the built-in task.
    #[arg(long, value_name = "N")]
    heldout_limit: Option<usize>,
    /// A very short run (seconds): 64 training pairs, 32 held-out prompts, 1 epoch of each stage.
    #[arg(long)]
    quick: bool,
    /// Write train.jsonl and heldout.jsonl (the shipped data set, from the task generator) into DIR and exit.
    #[arg(long, value_name = "DIR")]
    write_data: Option<PathBuf>,
    /// Time forward + backward of the model on a batch of 16 rows × 24 tokens (median of 20 runs) and exit.
    #[arg(long)]
    measure: bool,
    /// Save the policy of the last stage (RPO) as a Hugging Face folder that transformers loads: config.json,
    /// generation_config.json, model.safetensors (in --dtype) and the tokenizer (built from the GGUF's
    /// metadata with --gguf, copied from --model-dir).
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
    /// Save the policy of the last stage as a GGUF file (Gemma 3 from --gguf: its tokenizer metadata is
    /// copied) for llama.cpp-compatible tools and transformers' `gguf_file=`.
    #[arg(long, value_name = "FILE", requires = "gguf")]
    save_gguf: Option<PathBuf>,
    /// Tensor type of the matrices in --save-gguf (norms stay F32).
    #[arg(long, value_enum, default_value_t = GgufTypeArg::Q8_0)]
    gguf_type: GgufTypeArg,
}

impl Args {
    fn device(&self) -> Device {
        match self.device {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda(0),
        }
    }
    fn kind(&self) -> Kind {
        match self.dtype {
            DtypeArg::F32 => Kind::Float,
            DtypeArg::Bf16 => Kind::BFloat16,
        }
    }
    fn gguf_type(&self) -> tch_rpo::gguf::GgmlType {
        use tch_rpo::gguf::GgmlType;
        match self.gguf_type {
            GgufTypeArg::F32 => GgmlType::F32,
            GgufTypeArg::F16 => GgmlType::F16,
            GgufTypeArg::Bf16 => GgmlType::BF16,
            GgufTypeArg::Q8_0 => GgmlType::Q8_0,
        }
    }
    fn pretrained(&self) -> bool {
        self.gguf.is_some() || self.model_dir.is_some()
    }
    fn epochs(&self) -> usize {
        if self.quick {
            1
        } else {
            self.epochs
        }
    }
    fn sft_epochs(&self) -> usize {
        let epochs = self.sft_epochs.unwrap_or(if self.gguf.is_some() { 0 } else { 8 });
        if self.quick {
            epochs.min(1)
        } else {
            epochs
        }
    }
    fn lr(&self) -> f64 {
        self.lr.unwrap_or(if self.gguf.is_some() { 1e-5 } else { 1e-3 })
    }
    fn eval_batch(&self) -> usize {
        self.eval_batch
            .unwrap_or(if self.gguf.is_some() { 4 } else { 64 })
            .max(1)
    }
    fn train_limit(&self) -> Option<usize> {
        self.train_limit.or(self.quick.then_some(64))
    }
    fn heldout_limit(&self) -> Option<usize> {
        self.heldout_limit.or(self.quick.then_some(32))
    }
}

/// `--measure`: forward + backward timing of the model.
fn measure(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    tch::manual_seed(args.seed as i64);
    let (vs, model) = match &args.model_dir {
        Some(dir) => Gemma::from_pretrained(dir, Device::Cpu, Kind::Float)?,
        None => {
            let vs = nn::VarStore::new(Device::Cpu);
            let vocab = task::tokenizer()?;
            let model = Gemma::new(&vs.root(), &GemmaConfig::small_gemma2(vocab.vocab_size()))?;
            (vs, model)
        }
    };
    let params: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
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
        model.forward(&ids, &mask)?.f_mean(Kind::Float)?.f_backward()?;
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
    Ok(())
}

fn main_flow(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = &args.write_data {
        return task::write_data(dir);
    }
    if let Some(threads) = args.threads.or((!args.pretrained()).then_some(1)) {
        tch::set_num_threads(threads);
    }
    if args.measure {
        return measure(args);
    }
    let summary = run::run(args)?;
    println!(
        "\nwrote {}, {} and {} in {:.1} s",
        summary.csv.display(),
        summary.svg.display(),
        summary.log.display(),
        summary.seconds
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(error) = main_flow(&args) {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
