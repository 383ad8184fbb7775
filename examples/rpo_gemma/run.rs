//! The example's training flow: SFT → reference log-probs → DPO and RPO from the same start, with an
//! evaluation table, `metrics.csv`, the trainer's JSON Lines log and the `chosen_logp.svg` plot. The stages,
//! their evaluations and the CSV come from `tch_rpo::train::stages`; the memory report from
//! `tch_rpo::memory`; the gold accuracy from `tch_rpo::models::decoder::greedy_accuracy`; the model of any
//! supported architecture from `tch_rpo::models::auto`.
//!
//! Under `torchrun` (`WORLD_SIZE` set) each process is one rank of a data-parallel job (docs/distributed.md):
//! the trainers share its process group, `--batch-size` is the global batch, and rank 0 alone evaluates,
//! prints and writes the outputs.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tch::{nn, Device};
use tch_rpo::data::word_reversal::{self, HELDOUT_SIZE, TRAIN_SIZE};
use tch_rpo::data::{
    encode_records, CollateConfig, Collator, OnMalformed, PreferenceDataset, Text, Tokenizer,
};
use tch_rpo::dist::{Backend, DistOptions, ProcessGroup};
use tch_rpo::gguf::{GgmlType, GgufFile};
use tch_rpo::lora::LoraPolicy;
use tch_rpo::memory::{BlockCache, MemoryReport};
use tch_rpo::models::auto::{load_tokenizer, AutoModel, AutoPolicy};
use tch_rpo::models::decoder::export::TokenizerSource;
use tch_rpo::models::decoder::{greedy_accuracy, CausalLm, WeightSource};
use tch_rpo::models::gemma::{Gemma, GemmaConfig};
use tch_rpo::models::tokenizer::CharTokenizer;
use tch_rpo::train::{
    write_metrics_csv, Collective, ConsoleHooks, EvalRow, ReferenceSource, RpoTrainerConfig,
};
use tch_rpo::train::{ScoringOptions, Stages};
use tch_rpo::{RpoConfig, SftNormalization};

use crate::Args;

type BoxError = Box<dyn std::error::Error>;

/// The shipped data directory.
fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rpo_gemma/data")
}

/// The policy to train and its tokenizer: a GGUF file or a Hugging Face model folder of any supported
/// architecture (detected from the file), or the seeded small Gemma 2.
fn load(args: &Args) -> Result<(AutoPolicy, Box<dyn Tokenizer>), BoxError> {
    let options = args.load_options();
    if let Some(path) = &args.gguf {
        let file = GgufFile::open(path)?;
        let (vs, model) = AutoModel::load(WeightSource::Gguf(&file), &options)?;
        return Ok((
            AutoPolicy::new(vs, model),
            load_tokenizer(WeightSource::Gguf(&file))?,
        ));
    }
    if let Some(dir) = &args.model_dir {
        let tokenizer = load_tokenizer(WeightSource::HfDir(dir))?;
        let (vs, model) = AutoModel::load(WeightSource::HfDir(dir), &options)?;
        return Ok((AutoPolicy::new(vs, model), tokenizer));
    }
    let tokenizer = CharTokenizer::new(word_reversal::CHARS)?;
    tch::manual_seed(args.seed as i64);
    let mut vs = nn::VarStore::new(options.device);
    let model = Gemma::random(&vs.root(), &GemmaConfig::small_gemma2(tokenizer.vocab_size()))?;
    vs.set_kind(options.kind);
    Ok((AutoPolicy::new(vs, model.into()), Box::new(tokenizer)))
}

/// The prompts of a JSON Lines preference file (plain-text records).
fn prompts_of(path: &Path, limit: Option<usize>) -> Result<Vec<String>, BoxError> {
    let records = PreferenceDataset::from_jsonl(path, OnMalformed::Error)?.records;
    let prompts = records.into_iter().filter_map(|r| match r.prompt {
        Text::Plain(prompt) => Some(prompt),
        Text::Conversation(_) => None,
    });
    Ok(prompts.take(limit.unwrap_or(usize::MAX)).collect())
}

/// Runs the whole flow (see the module docs) and writes `metrics.csv`, `chosen_logp.svg` and
/// `train_log.jsonl` under `args.output`.
pub fn run(args: &Args) -> Result<(), BoxError> {
    let began = Instant::now();
    if args.batch_size == 0 || args.grad_accum == 0 || args.epochs == 0 || args.evals_per_epoch == 0 {
        return Err("--batch-size, --grad-accum, --epochs and --evals-per-epoch must be > 0".into());
    }
    if let Some(lora) = args.lora() {
        lora.validate()?;
    }
    args.check_base_dtype()?;
    if matches!(args.device(), Device::Cuda(_)) && !tch::Cuda::is_available() {
        return Err("--device cuda: no CUDA device is available to libtorch".into());
    }
    // Under torchrun: one rank of a data-parallel job (Gloo on the CPU, NCCL on CUDA). Rank 0 evaluates
    // while the others wait in their next collective, hence the long timeout.
    let backend = match args.device() {
        Device::Cuda(_) => Backend::Nccl,
        _ => Backend::Gloo,
    };
    let options = DistOptions::default()
        .with_backend(backend)
        .with_timeout(Duration::from_secs(1800));
    let collective =
        ProcessGroup::from_env_if_launched(&options)?.map_or_else(Collective::single, Collective::group);
    let main = collective.is_main();
    let output = &args.output;
    std::fs::create_dir_all(output).map_err(|e| format!("{}: {e}", output.display()))?;
    let [csv, svg, log] = ["metrics.csv", "chosen_logp.svg", "train_log.jsonl"].map(|f| output.join(f));
    if main && log.exists() {
        std::fs::remove_file(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    }

    // Data, model, tokenizer, held-out prompts.
    let default_data = if args.gguf.is_some() {
        "gemma3_prefs.jsonl"
    } else {
        "train.jsonl"
    };
    let train_path = args.data.clone().unwrap_or(data_dir().join(default_data));
    let mut records = PreferenceDataset::from_jsonl(&train_path, OnMalformed::Error)?.records;
    records.truncate(args.train_limit.unwrap_or(records.len()));
    if records.is_empty() {
        return Err(format!("{}: no preference records", train_path.display()).into());
    }
    let memory = MemoryReport::new(args.report_memory);
    let (mut sft_policy, tokenizer) = load(args)?;
    // The blocks freed while loading (file reads, conversions) fit no later tensor: unmap them.
    BlockCache::release();
    memory.phase("load");
    let pairs = encode_records(tokenizer.as_ref(), &records)?;
    let heldout = match args.data.is_none() && args.gguf.is_none() {
        true => prompts_of(&data_dir().join("heldout.jsonl"), args.heldout_limit)?,
        false => Vec::new(),
    };
    let collator = Collator::new(
        CollateConfig::new(tokenizer.pad_id()).with_limits(args.max_length, args.max_prompt_length),
    )?;
    let steps_per_epoch = (pairs.len().div_ceil(args.batch_size) as u64)
        .div_ceil(args.grad_accum as u64)
        .max(1);
    let total_steps = |epochs: usize| -> u64 {
        let steps = steps_per_epoch * epochs as u64;
        args.max_steps.map_or(steps, |m| m.clamp(1, steps.max(1)))
    };
    if main {
        println!(
            "{} model, {} parameters, {:?} {:?}, {} threads; {} training pairs, {} held-out prompts; \
             {steps_per_epoch} steps per epoch{}",
            sft_policy.model().architecture(),
            sft_policy.parameter_count(),
            args.device(),
            args.kind(),
            tch::get_num_threads(),
            pairs.len(),
            heldout.len(),
            collective.process_group().map_or(String::new(), |g| format!(
                "; rank 0 of {} ({:?})",
                g.world_size(),
                g.backend()
            )),
        );
        println!("{}", EvalRow::table_header());
    }
    let config = |rpo: RpoConfig, learning_rate: f64, epochs: usize| RpoTrainerConfig {
        learning_rate,
        loss_path: args.loss_path(),
        seed: args.seed,
        batch_pairs: args.batch_size,
        grad_accum_steps: args.grad_accum,
        log_path: Some(log.clone()),
        progress: true,
        peak_flops: args.peak_gflops.map(|gflops| gflops * 1e9),
        phase_timing: args.phase_timing,
        ..RpoTrainerConfig::paper(rpo, total_steps(epochs))
    };
    let eval_batch = args.eval_batch.max(1);
    let mut stages = Stages::new(
        &pairs,
        &collator,
        collective,
        steps_per_epoch,
        args.evals_per_epoch,
        eval_batch,
    )?;
    let gold = |policy: &AutoPolicy| {
        let tok = tokenizer.as_ref();
        greedy_accuracy(
            policy.model(),
            tok,
            &heldout,
            word_reversal::MAX_LEN + 1,
            128,
            word_reversal::is_correct,
        )
    };
    let mut hooks = ConsoleHooks::new(&memory).with_gold(&gold);

    // 1. SFT on the chosen responses (reference-free; DPO weight 0): the reference policy. Without SFT the
    //    loaded model itself is the reference (no copy).
    sft_policy.set_gradient_checkpointing(args.gradient_checkpointing);
    let start = match args.sft_epochs {
        0 => sft_policy,
        epochs => {
            let sft = config(
                RpoConfig::sft_only(SftNormalization::TokenMean),
                args.sft_lr,
                epochs,
            );
            stages.train("sft", sft_policy, ReferenceSource::Free, sft, &mut hooks)?
        }
    };

    // With LoRA (--lora-r): DPO and RPO train adapters on (a copy of) the start, whose weights stay
    // frozen; the reference is the start itself, the adapters switched off. --save / --save-gguf then
    // write the merged model.
    let (dpo, rpo) = (
        config(RpoConfig::paper(args.beta, 0.0), args.lr, args.epochs),
        config(RpoConfig::paper(args.beta, args.eta), args.lr, args.epochs),
    );
    let copy_options = args.load_options();
    let trained = if let Some(lora) = args.lora() {
        let mut lora_hooks =
            ConsoleHooks::new(&memory).with_gold(|policy: &LoraPolicy<AutoPolicy>| gold(policy.base()));
        if !args.rpo_only {
            // A base kept in its GGUF blocks has no dense parameters to copy: load it again.
            let base = match start.model().decoder().keeps_quantized() {
                true => load(args)?.0,
                false => start.try_clone(&copy_options)?,
            };
            let copy = LoraPolicy::new(base, &lora)?;
            stages.train("dpo", copy, ReferenceSource::AdaptersOff, dpo, &mut lora_hooks)?;
        }
        let policy = LoraPolicy::new(start, &lora)?;
        let trained = stages.train("rpo", policy, ReferenceSource::AdaptersOff, rpo, &mut lora_hooks)?;
        if main {
            save_adapters(args, &trained)?;
        }
        match trained.base().model().decoder().keeps_quantized() {
            // A base kept in its GGUF blocks takes no merged weights (--save / --save-gguf are refused with
            // it): the adapters stay attached.
            true => trained.into_parts().0,
            false => trained.merge_and_unload()?,
        }
    } else {
        // 2. Reference log-probs of the SFT model, once (each rank scores its block, then they are
        //    gathered).
        let scoring = ScoringOptions::new(eval_batch).with_loss_path(args.loss_path());
        let cache = stages.score_reference(&start, &scoring)?;
        memory.phase("reference log-probs");
        // 3. DPO and RPO from the same start, same data order and seed: DPO trains a copy of the start,
        //    RPO the start itself.
        if !args.rpo_only {
            let copy = start.try_clone(&copy_options)?;
            let reference = ReferenceSource::Cached(cache.clone());
            stages.train("dpo", copy, reference, dpo, &mut hooks)?;
        }
        stages.train("rpo", start, ReferenceSource::Cached(cache), rpo, &mut hooks)?
    };
    if !main {
        return Ok(());
    }
    if args.save.is_some() || args.save_gguf.is_some() {
        save_trained(args, &trained)?;
        memory.phase("save");
    }

    write_metrics_csv(&csv, stages.rows())?;
    crate::plot::chosen_logp_svg(&svg, stages.rows())?;
    std::io::stdout().flush()?;
    let seconds = began.elapsed().as_secs_f64();
    println!(
        "\nwrote {}, {} and {} in {seconds:.1} s",
        csv.display(),
        svg.display(),
        log.display()
    );
    Ok(())
}

/// `--save DIR` / `--save-gguf FILE`: the trained policy of the last stage, with its tokenizer.
fn save_trained(args: &Args, policy: &AutoPolicy) -> Result<(), BoxError> {
    let gguf = args.gguf.as_deref().map(GgufFile::open).transpose()?;
    let tokenizer = match (&gguf, &args.model_dir) {
        (Some(file), _) => TokenizerSource::Gguf(file),
        (None, Some(dir)) => TokenizerSource::HfDir(dir),
        (None, None) => TokenizerSource::None,
    };
    if let Some(dir) = &args.save {
        policy.save_pretrained(dir, args.kind(), tokenizer)?;
        println!(
            "saved the trained policy as a Hugging Face folder: {}",
            dir.display()
        );
    }
    if let Some(path) = &args.save_gguf {
        let (bytes, ty) = (policy.save_gguf(path, args.gguf_type, tokenizer)?, args.gguf_type);
        println!(
            "saved the trained policy as {ty} GGUF ({bytes} bytes): {}",
            path.display()
        );
    }
    Ok(())
}

/// `--save-adapter DIR` / `--save-gguf-adapter FILE`: the RPO stage's LoRA adapters, as a PEFT folder and
/// as a llama.cpp adapter GGUF.
fn save_adapters(args: &Args, policy: &LoraPolicy<AutoPolicy>) -> Result<(), BoxError> {
    if let Some(dir) = &args.save_adapter {
        policy.adapters().save_peft(dir, None)?;
        println!("saved the LoRA adapters as a PEFT folder: {}", dir.display());
    }
    if let Some(path) = &args.save_gguf_adapter {
        let bytes = policy.save_gguf_adapter(path, GgmlType::F32)?;
        println!(
            "saved the LoRA adapters as a llama.cpp adapter GGUF ({bytes} bytes): {}",
            path.display()
        );
    }
    Ok(())
}

/// `--write-data DIR`: the shipped `train.jsonl` and `heldout.jsonl` (the word-reversal task's generator).
pub fn write_data(dir: &Path) -> Result<(), BoxError> {
    let all = word_reversal::generate(word_reversal::DATA_SEED, TRAIN_SIZE + HELDOUT_SIZE);
    let (train, heldout) = all.split_at(TRAIN_SIZE);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    word_reversal::write_jsonl(&dir.join("train.jsonl"), train)?;
    word_reversal::write_jsonl(&dir.join("heldout.jsonl"), heldout)?;
    println!(
        "wrote {} + {} records to {}",
        train.len(),
        heldout.len(),
        dir.display()
    );
    Ok(())
}
