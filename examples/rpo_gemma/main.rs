//! `cargo run --release --example rpo_gemma`: train a Gemma-architecture model with SFT, then DPO and RPO
//! from the same start, and show what RPO is for (the chosen responses' log-prob under DPO vs RPO).
//!
//! A thin program over the library: the models (`tch_rpo::models`), the stages with their evaluations and
//! metrics CSV (`tch_rpo::train::stages`), the word-reversal task (`tch_rpo::data::word_reversal`) and the
//! memory report (`tch_rpo::memory`) come from it; this example is the flags (here), the flow (`run.rs`)
//! and the plot (`plot.rs`). Documentation and results: `docs/rpo_gemma.md`; tested by running it
//! (`tests/rpo_gemma_*.rs`).
mod plot;
mod run;

use std::path::PathBuf;

use clap::builder::ArgPredicate::IsPresent;
use clap::{Parser, ValueEnum};
use tch::{Device, Kind};
use tch_rpo::gguf::GgmlType;
use tch_rpo::memory::{BlockCache, BlockCacheConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

/// `--loss-path`: how the policy's log-probs are computed (the trainer's `LossPath`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LossPathArg {
    /// The fused linear-head loss on the hidden states (Gemma offers them): never forms the logits.
    Auto,
    /// The `[2B, T, V]` logits, then a chunked log-softmax.
    Logits,
    /// The fused linear-head loss (an error for a model without hidden states).
    Fused,
}

/// `--attention`: the attention kernel of every layer (`tch_rpo::models::attention::AttentionKernel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AttentionArg {
    /// libtorch's `scaled_dot_product_attention` (the explicit path for Gemma 2's soft-capped attention).
    Fused,
    /// Scores, f32 softmax and matmul written out (for comparison).
    Explicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PrecisionArg {
    Auto,
    F32,
    Bf16,
}

/// How the frozen LoRA base is held (--base-dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BaseDtypeArg {
    /// The --gguf file's (quantized) blocks, dequantized per layer when used.
    Keep,
    /// Dequantized to bf16 once at load.
    Bf16,
    /// Dequantized to f32 once at load.
    F32,
}

/// SFT a Gemma model, then train DPO and RPO from it and compare them (chosen log-prob, reward accuracy,
/// reward margin, gold accuracy on a checkable task).
///
/// With no arguments: a small seeded Gemma 2 model on the shipped word-reversal task (reverse a word of
/// 3-5 letters), on CPU, in about 30 s (2 cores). Writes OUTPUT/metrics.csv, OUTPUT/chosen_logp.svg and
/// OUTPUT/train_log.jsonl (the trainer's per-step JSON Lines log).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A Hugging Face model folder of any supported architecture (Gemma 1 / 2 / 3, Llama 3.x, SmolLM2,
    /// Qwen2 / 2.5, Qwen3, Mistral; from config.json's model_type): config.json, model.safetensors or a
    /// sharded model.safetensors.index.json, tokenizer.json (needs `--features hf-tokenizers`). Default: the
    /// small seeded random-init Gemma 2 model with a character vocabulary.
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// A GGUF file of any supported architecture (general.architecture gemma3, llama, qwen2, qwen3; e.g.
    /// Gemma 3 270M: `scripts/get_gemma3_gguf.sh` installs it and prints its path): model, config and
    /// tokenizer (SentencePiece or byte-level BPE) from the file. Implies --sft-epochs 0 (the loaded model is the
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
    /// Parameter and activation precision: `f32`, `bf16` (mixed precision: bf16 weights and activations,
    /// f32 norms, softmax statistics, log-prob sums and optimizer master weights), or `auto` (bf16 on a CPU
    /// with AVX-512 BF16 or AMX-BF16, f32 otherwise). Default `auto` with --gguf or --model-dir, `f32` for
    /// the built-in small model. `--dtype` is an alias.
    #[arg(
        long,
        alias = "dtype",
        value_enum,
        default_value = "f32",
        default_value_ifs([("gguf", IsPresent, "auto"), ("model_dir", IsPresent, "auto")])
    )]
    precision: PrecisionArg,
    /// Epochs of DPO and of RPO.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    /// Epochs of the SFT stage that makes the reference policy (0: use the model as loaded). Default 8;
    /// 0 with --gguf.
    #[arg(long, default_value_t = 8, default_value_if("gguf", IsPresent, "0"))]
    sft_epochs: usize,
    /// β of DPO and RPO (the paper's gemma series).
    #[arg(long, default_value_t = 0.05)]
    beta: f64,
    /// η of RPO: its SFT term is η·β · (summed NLL of the chosen response); see docs/rpo_gemma.md for why
    /// not the paper's 0.005 at this scale.
    #[arg(long, default_value_t = 1.0)]
    eta: f64,
    /// Peak learning rate of DPO and RPO (cosine, warmup ratio 0.1, AdamW). Default 1e-3; 1e-5 with
    /// --gguf (a pretrained model: 1e-3 wrecks it in one step).
    #[arg(long, default_value_t = 1e-3, default_value_if("gguf", IsPresent, "1e-5"))]
    lr: f64,
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
    /// How log-probs are computed in training, evaluation and the reference pass: `auto` (default: the
    /// fused linear-head loss on Gemma's hidden states), `logits` (full logits) or `fused`.
    #[arg(long, value_enum, default_value_t = LossPathArg::Auto)]
    loss_path: LossPathArg,
    /// Alias of `--loss-path fused`.
    #[arg(long, conflicts_with = "loss_path")]
    fused: bool,
    /// The attention kernel: `fused` (default: libtorch's scaled_dot_product_attention) or `explicit`.
    #[arg(long, value_enum, default_value_t = AttentionArg::Fused)]
    attention: AttentionArg,
    /// The device's peak matmul throughput in GFLOP/s (e.g. the best f32 figure of `cargo run --release
    /// --example matmul_peak`): the progress line and train_log.jsonl then report each step's model FLOP
    /// utilization (`mfu`) besides its FLOP/s.
    #[arg(long, value_name = "GFLOPS")]
    peak_gflops: Option<f64>,
    /// Time each step's phases (data, reference, body forward / backward, attention, head, host syncs,
    /// optimizer) and write them to train_log.jsonl (`phases`).
    #[arg(long)]
    phase_timing: bool,
    /// Per-layer activation (gradient) checkpointing of the policy in DPO / RPO (and SFT): recompute each
    /// layer's activations in the backward pass instead of keeping them. Same results, less memory.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Print the resident memory (current and peak since the previous report, from /proc/self/status) at
    /// the end of every phase: load, reference log-probs, each evaluation, each run of training steps, save.
    /// The per-phase peak resets the kernel's high-water mark, which also hides earlier peaks from
    /// `/usr/bin/time`'s maximum RSS: take the process peak from the report.
    #[arg(long)]
    report_memory: bool,
    /// The most free large CPU blocks (≥ 1 MiB) kept mapped for reuse, in MiB
    /// (`tch_rpo::memory::BlockCache`): a step's tensors then cost no fresh pages. Default: no limit (the
    /// blocks one step frees serve the next). 0: libtorch's own allocator.
    #[arg(long, value_name = "MIB")]
    block_cache_mib: Option<usize>,
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
    #[arg(long, default_value_t = 64, default_value_if("gguf", IsPresent, "4"))]
    eval_batch: usize,
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
    /// Save the policy of the last stage (RPO) as a Hugging Face folder that transformers loads (config,
    /// weights in the --precision's dtype, tokenizer built from the --gguf metadata or copied from --model-dir).
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
    /// Save the policy of the last stage as a GGUF file (a Gemma 3 or Llama-family model from --gguf,
    /// whose tokenizer it copies).
    #[arg(long, value_name = "FILE", requires = "gguf")]
    save_gguf: Option<PathBuf>,
    /// Tensor type of the matrices in --save-gguf: f32, f16, bf16 or q8_0 (norms stay F32).
    #[arg(long, default_value = "q8_0", value_parser = gguf_type)]
    gguf_type: GgmlType,
    /// LoRA: train rank-R adapters in the DPO / RPO stages instead of every weight (the base frozen, the
    /// reference = the model with the adapters off). SFT, if any, still trains every weight. --save /
    /// --save-gguf then write the merged model (W + s·B·A).
    #[arg(long, value_name = "R")]
    lora_r: Option<i64>,
    /// LoRA alpha (scaling alpha / r). Default: 2·r.
    #[arg(long, value_name = "ALPHA", requires = "lora_r")]
    lora_alpha: Option<f64>,
    /// Dropout on the adapters' input, in [0, 1) (not with --gradient-checkpointing).
    #[arg(long, value_name = "P", default_value_t = 0.0, requires = "lora_r")]
    lora_dropout: f64,
    /// The layers to adapt, comma separated (short names like q_proj or full module paths). Default:
    /// Gemma's seven projections q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.
    #[arg(long, value_name = "NAMES", value_delimiter = ',', requires = "lora_r")]
    lora_targets: Vec<String>,
    /// rsLoRA scaling alpha / sqrt(r).
    #[arg(long, requires = "lora_r")]
    lora_rslora: bool,
    /// Save the RPO stage's adapters as a PEFT adapter folder (adapter_config.json,
    /// adapter_model.safetensors) for `peft.PeftModel.from_pretrained`.
    #[arg(long, value_name = "DIR", requires = "lora_r")]
    save_adapter: Option<PathBuf>,
    /// Save the RPO stage's adapters as a llama.cpp LoRA adapter GGUF (F32) for the --gguf base
    /// (`llama-cli -m BASE.gguf --lora FILE`).
    #[arg(long, value_name = "FILE", requires = "lora_r")]
    save_gguf_adapter: Option<PathBuf>,
    /// How the frozen base of --lora-r is held: keep (the --gguf file's quantized blocks in memory,
    /// dequantized layer by layer when used, activations in --dtype; needs --gguf, no SFT stage and no
    /// --save / --save-gguf), or dequantized once to bf16 or f32. Default: --dtype.
    #[arg(long, value_enum, value_name = "KIND")]
    base_dtype: Option<BaseDtypeArg>,
}

fn gguf_type(name: &str) -> Result<GgmlType, String> {
    match name.parse::<GgmlType>() {
        Ok(ty) if tch_rpo::gguf::WRITABLE_TYPES.contains(&ty) => Ok(ty),
        _ => Err(format!("{name:?}: expected f32, f16, bf16 or q8_0")),
    }
}

impl Args {
    fn device(&self) -> Device {
        match self.device {
            DeviceArg::Cpu => Device::Cpu,
            // Under torchrun, each process of a node takes the GPU of its LOCAL_RANK.
            DeviceArg::Cuda => Device::Cuda(
                std::env::var("LOCAL_RANK")
                    .ok()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0),
            ),
        }
    }
    fn loss_path(&self) -> tch_rpo::train::LossPath {
        use tch_rpo::train::LossPath;
        match (self.fused, self.loss_path) {
            (true, _) | (false, LossPathArg::Fused) => LossPath::Hidden,
            (false, LossPathArg::Logits) => LossPath::Logits,
            (false, LossPathArg::Auto) => LossPath::Auto,
        }
    }
    /// The LoRA settings of --lora-r and its companions (`None`: full training).
    fn lora(&self) -> Option<tch_rpo::lora::LoraConfig> {
        let r = self.lora_r?;
        let mut config = tch_rpo::lora::LoraConfig::new(r, self.lora_alpha.unwrap_or(2.0 * r as f64));
        config.lora_dropout = self.lora_dropout;
        config.use_rslora = self.lora_rslora;
        config.target_modules = (!self.lora_targets.is_empty()).then(|| self.lora_targets.clone());
        Some(config)
    }
    /// How the model is loaded: --device, and --base-dtype (bf16 / f32 set the dtype, keep keeps the
    /// GGUF blocks) or --dtype.
    fn load_options(&self) -> tch_rpo::models::gemma::LoadOptions {
        use tch_rpo::models::gemma::{LoadOptions, WeightFormat};
        let mut options = LoadOptions::new(self.device(), self.kind());
        match self.base_dtype {
            Some(BaseDtypeArg::Keep) => options.weights = WeightFormat::KeepQuantized,
            Some(BaseDtypeArg::Bf16) => options.kind = Kind::BFloat16,
            Some(BaseDtypeArg::F32) => options.kind = Kind::Float,
            None => {}
        }
        options
    }
    /// Checks --base-dtype against the flags it needs.
    fn check_base_dtype(&self) -> Result<(), String> {
        let Some(base) = self.base_dtype else {
            return Ok(());
        };
        if self.lora_r.is_none() {
            return Err(format!(
                "--base-dtype {base:?} sets how the frozen LoRA base is held: it needs --lora-r"
            )
            .to_lowercase());
        }
        if base == BaseDtypeArg::Keep {
            if self.gguf.is_none() {
                return Err("--base-dtype keep keeps a GGUF file's quantized blocks: it needs --gguf".into());
            }
            if self.save.is_some() || self.save_gguf.is_some() {
                return Err(
                    "--save / --save-gguf write the merged model, which needs a dense base: use \
                            --base-dtype f32 or bf16 (with keep, save the adapters: --save-adapter, \
                            --save-gguf-adapter)"
                        .into(),
                );
            }
            if self.sft_epochs > 0 {
                return Err(format!(
                    "--base-dtype keep freezes every weight matrix, so it cannot run the SFT stage \
                     (--sft-epochs {}): pass --sft-epochs 0",
                    self.sft_epochs
                ));
            }
        }
        Ok(())
    }
    fn kind(&self) -> Kind {
        use tch_rpo::train::Precision;
        match self.precision {
            PrecisionArg::Auto => Precision::Auto,
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Bf16 => Precision::Bf16,
        }
        .resolve(self.device())
    }
}

fn main_flow(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = &args.write_data {
        return run::write_data(dir);
    }
    let pretrained = args.gguf.is_some() || args.model_dir.is_some();
    if let Some(threads) = args.threads.or((!pretrained).then_some(1)) {
        tch::set_num_threads(threads);
    }
    use tch_rpo::models::attention::{set_attention_kernel, AttentionKernel};
    set_attention_kernel(match args.attention {
        AttentionArg::Fused => AttentionKernel::Fused,
        AttentionArg::Explicit => AttentionKernel::Explicit,
    });
    run::run(args)
}

fn main() {
    // glibc's mmap threshold at 1 MiB, so that freed tensors go back to the system (see its docs).
    tch_rpo::memory::limit_heap_fragmentation();
    let mut args = Args::parse();
    if args.quick {
        args.epochs = 1;
        args.sft_epochs = args.sft_epochs.min(1);
        args.train_limit.get_or_insert(64);
        args.heldout_limit.get_or_insert(32);
    }
    if args.block_cache_mib != Some(0) {
        let config = BlockCacheConfig {
            max_cached_bytes: args
                .block_cache_mib
                .map_or(usize::MAX, |mib| mib.saturating_mul(1 << 20)),
            ..BlockCacheConfig::default()
        };
        if let Err(error) = BlockCache::install(config) {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    }
    if let Err(error) = main_flow(&args) {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
