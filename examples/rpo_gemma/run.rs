//! The example's training flow: SFT → reference log-probs → DPO and RPO from the same start, with an
//! evaluation table, `metrics.csv`, the trainer's JSON Lines log and the `chosen_logp.svg` plot.
//!
//! Under `torchrun` (`WORLD_SIZE` set) each process is one rank of a data-parallel job (docs/distributed.md):
//! the trainers share its process group, `--batch-size` is the global batch, and rank 0 alone evaluates,
//! prints and writes the outputs.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tch::{nn, Device};
use tch_rpo::data::{
    encode_records, CollateConfig, Collator, EncodedPair, OnMalformed, PreferenceDataset, Text, Tokenizer,
};
use tch_rpo::dist::{Backend, DistOptions, ProcessGroup};
use tch_rpo::gguf::GgufFile;
use tch_rpo::models::gemma::export::TokenizerSource;
use tch_rpo::models::gemma::{
    generate, load_tokenizer, Gemma, GemmaConfig, GemmaPolicy, GenerationConfig, LoadOptions, WeightSource,
};
use tch_rpo::models::tokenizer::GgufTokenizer;
use tch_rpo::train::{
    score_reference, Collective, LossPath, PolicyModel, ReferenceSource, RpoTrainer, RpoTrainerConfig,
    ScoringOptions,
};
use tch_rpo::{RpoConfig, SftNormalization};

use crate::memory::MemoryReport;
use crate::{task, Args};

/// The exact header of `metrics.csv`.
const CSV_HEADER: &str =
    "method,epoch,step,chosen_logp,rejected_logp,reward_accuracy,reward_margin,gold_accuracy";

type BoxError = Box<dyn std::error::Error>;

/// One evaluation point: mean log-probs of the chosen / rejected responses, the fraction of pairs with a
/// positive reward margin, the mean margin, and the held-out greedy accuracy (`None` without the built-in
/// task).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub method: &'static str,
    pub epoch: f64,
    pub step: u64,
    pub chosen_logp: f64,
    pub rejected_logp: f64,
    pub reward_accuracy: f64,
    pub reward_margin: f64,
    pub gold_accuracy: Option<f64>,
}

/// The shipped data directory.
fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rpo_gemma/data")
}

/// The policy to train and its tokenizer: a GGUF file, a Hugging Face model folder, or the seeded small Gemma 2.
fn load(args: &Args) -> Result<(GemmaPolicy, Box<dyn Tokenizer>), BoxError> {
    let (device, kind) = (args.device(), args.kind());
    if let Some(path) = &args.gguf {
        let file = GgufFile::open(path)?;
        let (vs, model) = Gemma::load(WeightSource::Gguf(&file), &LoadOptions::new(device, kind))?;
        return Ok((
            GemmaPolicy::new(vs, model),
            Box::new(GgufTokenizer::from_gguf(&file)?),
        ));
    }
    if let Some(dir) = &args.model_dir {
        let tokenizer = load_tokenizer(dir)?;
        let (vs, model) = Gemma::load(WeightSource::HfDir(dir), &LoadOptions::new(device, kind))?;
        return Ok((GemmaPolicy::new(vs, model), tokenizer));
    }
    let tokenizer = task::tokenizer()?;
    tch::manual_seed(args.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let model = Gemma::random(&vs.root(), &GemmaConfig::small_gemma2(tokenizer.vocab_size()))?;
    vs.set_kind(kind);
    Ok((GemmaPolicy::new(vs, model), Box::new(tokenizer)))
}

/// Held-out prompts and the gold metric: the fraction answered correctly by greedy decoding.
struct Gold<'a> {
    prompts: Vec<String>,
    tokenizer: &'a dyn Tokenizer,
}

impl Gold<'_> {
    fn accuracy(&self, model: &Gemma) -> Result<Option<f64>, BoxError> {
        if self.prompts.is_empty() {
            return Ok(None);
        }
        let tok = self.tokenizer;
        let stop = tok.eos_id().into_iter().collect();
        let greedy = GenerationConfig::greedy(task::MAX_LEN + 1, stop, tok.pad_id());
        let mut correct = 0usize;
        for chunk in self.prompts.chunks(128) {
            let ids = chunk
                .iter()
                .map(|p| Ok(tok.bos_id().into_iter().chain(tok.encode(p)?).collect()))
                .collect::<tch_rpo::Result<Vec<Vec<i64>>>>()?;
            for (prompt, answer) in chunk.iter().zip(&generate(model, &ids, &greedy)?.tokens) {
                correct += usize::from(task::is_correct(prompt, &tok.decode(answer)?));
            }
        }
        Ok(Some(correct as f64 / self.prompts.len() as f64))
    }
}

/// One training stage (SFT, DPO or RPO) with its evaluations.
struct Stage<'a> {
    method: &'static str,
    pairs: &'a [EncodedPair],
    collator: &'a Collator,
    eval_batch: usize,
    steps_per_epoch: u64,
    evals_per_epoch: usize,
    memory: &'a MemoryReport,
}

impl Stage<'_> {
    /// Trains to the end of the schedule, evaluating at the start and `evals_per_epoch` times per epoch
    /// (on the main process only: the other ranks of a data-parallel job train and wait).
    fn run(&self, trainer: &mut RpoTrainer<GemmaPolicy>, gold: &Gold) -> Result<Vec<Row>, BoxError> {
        let total = trainer.schedule().total_steps;
        let every = (self.steps_per_epoch / self.evals_per_epoch.max(1) as u64).max(1);
        let main = trainer.is_main_process();
        let mut rows = Vec::new();
        if main {
            rows.push(self.evaluate(trainer, gold)?);
        }
        let (first_step, mut train_seconds) = (trainer.step(), 0.0);
        while trainer.step() < total {
            let steps = every.min(total - trainer.step());
            let started = Instant::now();
            let history = trainer.fit_steps(self.pairs, self.collator, Some(steps))?;
            let seconds = started.elapsed().as_secs_f64();
            train_seconds += seconds;
            self.memory
                .phase(&format!("{} train to step {}", self.method, trainer.step()));
            // Time per step, for models where it matters (a real model on CPU), not the small default one.
            if main && !history.is_empty() && seconds >= history.len() as f64 {
                eprintln!("{}: {:.1} s/step", self.method, seconds / history.len() as f64);
            }
            if let (Some(skipped), true) = (history.iter().find(|m| m.skipped), main) {
                let reason = skipped.skip_reason.as_deref().unwrap_or("?");
                eprintln!("warning: {} step {} skipped: {reason}", self.method, skipped.step);
            }
            if main {
                rows.push(self.evaluate(trainer, gold)?);
            }
        }
        if main {
            // Training time alone (evaluations excluded), for comparing 1 process with N ranks.
            let steps = trainer.step() - first_step;
            let ranks = trainer.collective().world_size();
            eprintln!(
                "{}: {steps} steps in {train_seconds:.2} s ({:.2} steps/s) on {ranks} rank(s), {:.2} s in \
                 collectives",
                self.method,
                steps as f64 / train_seconds.max(1e-9),
                trainer.communication_time().as_secs_f64()
            );
        }
        Ok(rows)
    }

    fn evaluate(&self, trainer: &mut RpoTrainer<GemmaPolicy>, gold: &Gold) -> Result<Row, BoxError> {
        let metrics = trainer.evaluate(self.pairs, self.collator, self.eval_batch)?;
        self.memory
            .phase(&format!("{} evaluate at step {}", self.method, trainer.step()));
        let metric = |name: &str| metrics.get(name).unwrap_or(f64::NAN);
        let row = Row {
            method: self.method,
            epoch: trainer.step() as f64 / self.steps_per_epoch as f64,
            step: trainer.step(),
            chosen_logp: metric("logps/chosen"),
            rejected_logp: metric("logps/rejected"),
            reward_accuracy: metric("rewards/accuracies"),
            reward_margin: metric("rewards/margins"),
            gold_accuracy: gold.accuracy(trainer.model().model())?,
        };
        let gold = row
            .gold_accuracy
            .map_or_else(|| "n/a".to_string(), |g| format!("{g:.3}"));
        println!(
            "{:<6} {:>6.2} {:>5} {:>11.4} {:>13.4} {:>9.3} {:>9.4} {:>6}",
            row.method,
            row.epoch,
            row.step,
            row.chosen_logp,
            row.rejected_logp,
            row.reward_accuracy,
            row.reward_margin,
            gold
        );
        Ok(row)
    }
}

fn write_csv(path: &Path, rows: &[Row]) -> Result<(), BoxError> {
    let mut text = format!("{CSV_HEADER}\n");
    for r in rows {
        let gold = r.gold_accuracy.map_or_else(String::new, |g| g.to_string());
        let (m, e, s, c, j) = (r.method, r.epoch, r.step, r.chosen_logp, r.rejected_logp);
        writeln!(
            text,
            "{m},{e},{s},{c},{j},{},{},{gold}",
            r.reward_accuracy, r.reward_margin
        )?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
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
    let mut collective =
        ProcessGroup::from_env_if_launched(&options)?.map_or_else(Collective::single, Collective::group);
    let main = collective.is_main();
    let output = &args.output;
    std::fs::create_dir_all(output).map_err(|e| format!("{}: {e}", output.display()))?;
    let [csv, svg, log] = ["metrics.csv", "chosen_logp.svg", "train_log.jsonl"].map(|f| output.join(f));
    if main && log.exists() {
        std::fs::remove_file(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    }

    // Data, model, tokenizer, held-out prompts.
    let default_data = data_dir().join(if args.gguf.is_some() {
        "gemma3_prefs.jsonl"
    } else {
        "train.jsonl"
    });
    let train_path = args.data.clone().unwrap_or(default_data);
    let mut records = PreferenceDataset::from_jsonl(&train_path, OnMalformed::Error)?.records;
    records.truncate(args.train_limit.unwrap_or(records.len()));
    if records.is_empty() {
        return Err(format!("{}: no preference records", train_path.display()).into());
    }
    let memory = MemoryReport::new(args.report_memory);
    let (mut sft_policy, tokenizer) = load(args)?;
    memory.phase("load");
    let pairs = encode_records(tokenizer.as_ref(), &records)?;
    let builtin_task = args.data.is_none() && args.gguf.is_none();
    let gold = Gold {
        prompts: match builtin_task {
            true => prompts_of(&data_dir().join("heldout.jsonl"), args.heldout_limit)?,
            false => Vec::new(),
        },
        tokenizer: tokenizer.as_ref(),
    };
    let collator = Collator::new(
        CollateConfig::new(tokenizer.pad_id()).with_limits(args.max_length, args.max_prompt_length),
    )?;

    let params: i64 = sft_policy
        .var_store()
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    let steps_per_epoch = (pairs.len().div_ceil(args.batch_size) as u64)
        .div_ceil(args.grad_accum as u64)
        .max(1);
    let total_steps = |epochs: usize| -> u64 {
        let steps = steps_per_epoch * epochs as u64;
        args.max_steps.map_or(steps, |m| m.clamp(1, steps.max(1)))
    };
    if main {
        println!(
            "{:?} model, {params} parameters, {:?} {:?}, {} threads; {} training pairs, {} held-out prompts; \
             {steps_per_epoch} steps per epoch{}",
            sft_policy.model().arch(),
            args.device(),
            args.kind(),
            tch::get_num_threads(),
            pairs.len(),
            gold.prompts.len(),
            collective
                .process_group()
                .map_or(String::new(), |g| format!("; rank 0 of {} ({:?})", g.world_size(), g.backend())),
        );
    }
    let loss_path: LossPath = args.loss_path();
    let trainer_config = |rpo: RpoConfig, lr: f64, epochs: usize| -> Result<RpoTrainerConfig, BoxError> {
        Ok(RpoTrainerConfig {
            learning_rate: lr,
            loss_path,
            seed: args.seed,
            batch_pairs: args.batch_size,
            grad_accum_steps: args.grad_accum,
            log_path: Some(log.clone()),
            progress: true,
            ..RpoTrainerConfig::paper(rpo, total_steps(epochs))
        })
    };
    let stage = |method: &'static str| Stage {
        method,
        pairs: &pairs,
        collator: &collator,
        eval_batch: args.eval_batch.max(1),
        steps_per_epoch,
        evals_per_epoch: args.evals_per_epoch,
        memory: &memory,
    };
    if main {
        println!(
            "{:<6} {:>6} {:>5} {:>11} {:>13} {:>9} {:>9} {:>6}",
            "method", "epoch", "step", "chosen_logp", "rejected_logp", "rew_acc", "margin", "gold"
        );
    }

    // 1. SFT on the chosen responses (reference-free; DPO weight 0): the reference policy. Without SFT the
    //    loaded model itself is the reference (no copy).
    let mut rows = Vec::new();
    sft_policy.set_gradient_checkpointing(args.gradient_checkpointing);
    let initial = if args.sft_epochs > 0 {
        let sft = RpoConfig::sft_only(SftNormalization::TokenMean);
        let config = trainer_config(sft, args.sft_lr, args.sft_epochs)?;
        let mut trainer = RpoTrainer::new(sft_policy, ReferenceSource::Free, config)?;
        trainer.set_collective(collective)?;
        rows.extend(stage("sft").run(&mut trainer, &gold)?);
        collective = trainer.take_collective();
        trainer.into_model()
    } else {
        sft_policy
    };

    // 2. Reference log-probs of the SFT model, once (each rank scores its block, then they are gathered).
    let scoring = ScoringOptions::new(args.eval_batch.max(1)).with_loss_path(loss_path);
    let cache = score_reference(&initial, &pairs, &collator, &scoring, &collective)?;
    memory.phase("reference log-probs");

    // 3. DPO and RPO from the same start, same data order and seed: each stage but the last trains a copy
    //    of the start, the last one the start itself.
    let methods = [
        ("dpo", RpoConfig::paper(args.beta, 0.0)),
        ("rpo", RpoConfig::paper(args.beta, args.eta)),
    ];
    let methods: Vec<_> = methods
        .into_iter()
        .filter(|(m, _)| !args.rpo_only || *m == "rpo")
        .collect();
    let count = methods.len();
    let mut start = Some(initial);
    let mut last = None;
    for (i, (method, rpo)) in methods.into_iter().enumerate() {
        let kept = start
            .take()
            .ok_or("internal: the start policy was already trained")?;
        let policy = match i + 1 == count {
            true => kept,
            false => {
                let (device, kind) = (args.device(), args.kind());
                let config = kept.model().config().clone();
                let parameters = kept.named_parameters();
                let source = WeightSource::Parameters {
                    config: &config,
                    parameters: &parameters,
                };
                let (vs, model) = Gemma::load(source, &LoadOptions::new(device, kind))?;
                let copy = GemmaPolicy::new(vs, model);
                start = Some(kept);
                copy
            }
        };
        let config = trainer_config(rpo, args.lr, args.epochs)?;
        let mut trainer = RpoTrainer::new(policy, ReferenceSource::Cached(cache.clone()), config)?;
        trainer
            .model_mut()
            .set_gradient_checkpointing(args.gradient_checkpointing);
        trainer.set_collective(collective)?;
        rows.extend(stage(method).run(&mut trainer, &gold)?);
        collective = trainer.take_collective();
        last = Some(trainer.into_model());
    }
    if !main {
        return Ok(());
    }
    if let (Some(policy), true) = (last, args.save.is_some() || args.save_gguf.is_some()) {
        save_trained(args, &policy)?;
        memory.phase("save");
    }

    write_csv(&csv, &rows)?;
    crate::plot::chosen_logp_svg(&svg, &rows)?;
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
fn save_trained(args: &Args, policy: &GemmaPolicy) -> Result<(), BoxError> {
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
        let bytes = policy.save_gguf(path, args.gguf_type, tokenizer)?;
        let ty = args.gguf_type;
        println!(
            "saved the trained policy as {ty} GGUF ({bytes} bytes): {}",
            path.display()
        );
    }
    Ok(())
}
