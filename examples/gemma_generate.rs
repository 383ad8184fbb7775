//! `cargo run --release --example gemma_generate -- --gguf FILE --prompt "The capital of France is"`:
//! text generation with `tch_rpo::models::gemma` (greedy, or sampled with --temperature / --top-k /
//! --top-p / --seed), printing each continuation and the speed. `benches/generate_compare.sh` uses it
//! (with --json) to compare tokens/s against `transformers`' `generate`.
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use tch::{Device, Kind};
use tch_rpo::data::{ChatTemplate, Message, Tokenizer};
use tch_rpo::gguf::GgufFile;
use tch_rpo::models::gemma::{generate, Gemma, GenerationConfig, LoadOptions, Sampling, WeightSource};
use tch_rpo::models::tokenizer::GgufTokenizer;

/// Generate text with a Gemma 3 GGUF model.
#[derive(Parser, Debug)]
struct Args {
    /// A Gemma 3 GGUF file (`scripts/get_gemma3_gguf.sh` prints the path of Gemma 3 270M).
    #[arg(long, value_name = "FILE")]
    gguf: PathBuf,
    /// A prompt (repeat the flag for several; they are decoded as one left-padded batch).
    #[arg(long, required_unless_present = "prompts_file")]
    prompt: Vec<String>,
    /// A JSON file with a list of prompt strings (instead of --prompt).
    #[arg(long, value_name = "FILE")]
    prompts_file: Option<PathBuf>,
    /// Wrap each prompt in Gemma's chat template (a user turn, then the model turn opener).
    #[arg(long)]
    chat: bool,
    /// The most new tokens per prompt.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Do not stop at <eos> / <end_of_turn> (every prompt gets max_new_tokens tokens: for timing).
    #[arg(long)]
    ignore_eos: bool,
    /// Sample with this temperature (default: greedy).
    #[arg(long)]
    temperature: Option<f64>,
    /// With --temperature: keep the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// With --temperature: nucleus mass.
    #[arg(long)]
    top_p: Option<f64>,
    /// With --temperature: the seed of the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Decode the prompts one at a time instead of as one batch.
    #[arg(long)]
    one_by_one: bool,
    /// Recompute the whole sequence every step instead of using the KV cache.
    #[arg(long)]
    no_cache: bool,
    /// libtorch CPU threads (default: libtorch's).
    #[arg(long)]
    threads: Option<i32>,
    /// Print one JSON object (ids, tokens, seconds) instead of text.
    #[arg(long)]
    json: bool,
}

fn main_flow(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    let started = Instant::now();
    let file = GgufFile::open(&args.gguf)?;
    let (_vs, model) = Gemma::load(
        WeightSource::Gguf(&file),
        &LoadOptions::new(Device::Cpu, Kind::Float),
    )?;
    let tokenizer = GgufTokenizer::from_gguf(&file)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let texts: Vec<String> = match &args.prompts_file {
        Some(path) => serde_json::from_str(&std::fs::read_to_string(path)?)?,
        None => args.prompt.clone(),
    };
    let mut prompts = Vec::with_capacity(texts.len());
    for text in &texts {
        let text = match args.chat {
            true => ChatTemplate::Gemma.apply(&[Message::new("user", text)], true),
            false => text.clone(),
        };
        let mut ids: Vec<i64> = tokenizer.bos_id().into_iter().collect();
        ids.extend(tokenizer.encode(&text)?);
        prompts.push(ids);
    }
    let end_of_turn = tokenizer.token_id("<end_of_turn>");
    let stop_ids = match args.ignore_eos {
        true => Vec::new(),
        false => tokenizer.eos_id().into_iter().chain(end_of_turn).collect(),
    };
    let sampling = match args.temperature {
        Some(t) => Sampling::sample(t, args.top_k, args.top_p, args.seed)?,
        None => Sampling::Greedy,
    };
    let config = GenerationConfig {
        sampling,
        use_cache: !args.no_cache,
        ..GenerationConfig::greedy(args.max_new_tokens, stop_ids, tokenizer.pad_id())
    };
    let started = Instant::now();
    let tokens: Vec<Vec<i64>> = match args.one_by_one {
        true => {
            let mut all = Vec::new();
            for prompt in &prompts {
                all.extend(generate(&model, std::slice::from_ref(prompt), &config)?.tokens);
            }
            all
        }
        false => generate(&model, &prompts, &config)?.tokens,
    };
    let seconds = started.elapsed().as_secs_f64();
    let new_tokens: usize = tokens.iter().map(Vec::len).sum();
    if args.json {
        let report = serde_json::json!({
            "prompt_ids": prompts,
            "new_ids": tokens,
            "new_tokens": new_tokens,
            "seconds": seconds,
            "load_seconds": load_seconds,
            "threads": tch::get_num_threads(),
        });
        println!("{report}");
        return Ok(());
    }
    for (text, ids) in texts.iter().zip(&tokens) {
        println!("{text}\n\u{2192} {}\n", tokenizer.decode(ids)?);
    }
    eprintln!(
        "{new_tokens} new tokens in {seconds:.2} s ({:.1} tokens/s, {} threads; load {load_seconds:.1} s)",
        new_tokens as f64 / seconds,
        tch::get_num_threads()
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
