//! The example's training flow: SFT → reference log-probs → DPO and RPO from the same start, with an
//! evaluation table, `metrics.csv`, the trainer's JSON Lines log and the `chosen_logp.svg` plot.
//!
//! Kept apart from `main.rs` (flags) so that `tests/rpo_gemma_run.rs` can run a very short version.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};
use tch_rpo::data::{
    encode_records, CollateConfig, Collator, EncodedPair, OnMalformed, PreferenceDataset, Tokenizer,
};
use tch_rpo::train::{
    var_store_parameters, HiddenOutput, LossPath, PolicyModel, ReferenceCache, ReferenceSource, RpoTrainer,
    RpoTrainerConfig, StepMetrics,
};
use tch_rpo::{LogProbOptions, RpoConfig, SftNormalization};

use crate::gemma::{greedy_decode, Gemma, GemmaConfig, GemmaError};
use crate::gguf_tokenizer::GgufTokenizer;
use crate::task::{self, CharVocab};

/// The exact header of `metrics.csv`.
pub const CSV_HEADER: &str =
    "method,epoch,step,chosen_logp,rejected_logp,reward_accuracy,reward_margin,gold_accuracy";

type BoxError = Box<dyn std::error::Error>;

/// Everything a run needs (the flags of `main.rs`, resolved).
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// A Hugging Face Gemma checkpoint directory (`None`: the small seeded random-init model).
    pub model_dir: Option<PathBuf>,
    /// A Gemma 3 GGUF file: model and tokenizer from it (takes precedence over `model_dir`).
    pub gguf: Option<PathBuf>,
    /// Train only RPO (no DPO comparison run).
    pub rpo_only: bool,
    /// Stop each of DPO / RPO after this many optimizer steps (the LR schedule is sized to it).
    pub max_steps: Option<u64>,
    /// Pairs per forward pass when evaluating and when computing the reference log-probs.
    pub eval_batch: usize,
    /// A JSON Lines preference file (`None`: the shipped word-reversal training set).
    pub data: Option<PathBuf>,
    /// Where the model and the batches live.
    pub device: Device,
    /// Parameter / activation dtype (f32 or bf16).
    pub kind: Kind,
    /// Epochs of DPO and of RPO.
    pub epochs: usize,
    /// Epochs of SFT that make the reference policy.
    pub sft_epochs: usize,
    /// β of DPO and RPO.
    pub beta: f64,
    /// η of RPO (its SFT coefficient is η·β on the summed NLL of the chosen response).
    pub eta: f64,
    /// Peak learning rate of DPO and RPO.
    pub lr: f64,
    /// Peak learning rate of the SFT stage.
    pub sft_lr: f64,
    /// Pairs per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Maximum tokens per row.
    pub max_length: usize,
    /// Maximum prompt tokens.
    pub max_prompt_length: usize,
    /// Use [`LossPath::Hidden`].
    pub fused: bool,
    /// Seed of the init and of the data order.
    pub seed: u64,
    /// Output directory.
    pub output: PathBuf,
    /// Evaluations per epoch (1: once per epoch).
    pub evals_per_epoch: usize,
    /// Use only the first this many training pairs (`None`: all).
    pub train_limit: Option<usize>,
    /// Use only the first this many held-out prompts (`None`: all).
    pub heldout_limit: Option<usize>,
    /// Hidden size and layers of the random-init model (`None`: `GemmaConfig::small_gemma2`'s).
    pub hidden_size: Option<i64>,
    /// See [`RunConfig::hidden_size`].
    pub layers: Option<i64>,
    /// libtorch's intra-op CPU threads (`None`: libtorch's default). The small model's ops are too small
    /// to gain from threads, and on a busy machine idle-spinning OpenMP threads slowed the default run
    /// about 30× (measured), so the default run uses 1.
    pub threads: Option<i32>,
    /// Print the table and progress.
    pub verbose: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            model_dir: None,
            gguf: None,
            rpo_only: false,
            max_steps: None,
            eval_batch: 64,
            data: None,
            device: Device::Cpu,
            kind: Kind::Float,
            epochs: 8,
            sft_epochs: 8,
            beta: 0.05,
            eta: 1.0,
            lr: 1e-3,
            sft_lr: 3e-3,
            batch_size: 16,
            grad_accum: 1,
            max_length: 32,
            max_prompt_length: 16,
            fused: false,
            seed: 42,
            output: PathBuf::from("output/rpo_gemma"),
            evals_per_epoch: 4,
            train_limit: None,
            heldout_limit: None,
            hidden_size: None,
            layers: None,
            threads: Some(1),
            verbose: true,
        }
    }
}

/// One evaluation point.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `sft`, `dpo` or `rpo`.
    pub method: &'static str,
    /// Epochs of this method's training done (fractional between epochs).
    pub epoch: f64,
    /// Optimizer steps of this method done.
    pub step: u64,
    /// Mean summed log-prob of the chosen responses (training pairs).
    pub chosen_logp: f64,
    /// Mean summed log-prob of the rejected responses.
    pub rejected_logp: f64,
    /// Fraction of pairs whose chosen reward exceeds the rejected one.
    pub reward_accuracy: f64,
    /// Mean reward margin.
    pub reward_margin: f64,
    /// Fraction of held-out prompts answered correctly by greedy decoding (`None`: no built-in task).
    pub gold_accuracy: Option<f64>,
}

/// What a run produced.
#[derive(Debug)]
pub struct RunSummary {
    /// Every evaluation point, in order (sft, then dpo, then rpo).
    pub rows: Vec<Row>,
    /// `OUTPUT/metrics.csv`.
    pub csv: PathBuf,
    /// `OUTPUT/chosen_logp.svg`.
    pub svg: PathBuf,
    /// `OUTPUT/train_log.jsonl`.
    pub log: PathBuf,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
}

/// The Gemma model as the crate's [`PolicyModel`]: the variables and the model built on them.
pub struct GemmaPolicy {
    vs: nn::VarStore,
    model: Gemma,
}

impl GemmaPolicy {
    /// Wraps a model and the store holding its variables.
    pub fn new(vs: nn::VarStore, model: Gemma) -> Self {
        Self { vs, model }
    }

    /// The model.
    pub fn model(&self) -> &Gemma {
        &self.model
    }

    /// The variable store.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
}

fn torch(error: GemmaError) -> tch_rpo::Error {
    match error {
        GemmaError::Torch(e) => tch_rpo::Error::Torch(e),
        other => tch_rpo::Error::Config {
            name: "gemma",
            requirement: other.to_string(),
        },
    }
}

impl PolicyModel for GemmaPolicy {
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> tch_rpo::Result<Tensor> {
        self.model.forward(input_ids, attention_mask).map_err(torch)
    }

    fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> tch_rpo::Result<Option<HiddenOutput>> {
        let hidden = self
            .model
            .forward_hidden(input_ids, attention_mask)
            .map_err(torch)?;
        Ok(Some(
            HiddenOutput::new(hidden, self.model.head_weight())
                .with_final_logit_softcap(self.model.final_logit_softcap()),
        ))
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        var_store_parameters(&self.vs)
    }

    fn device(&self) -> Device {
        self.vs.device()
    }
}

impl Tokenizer for CharVocab {
    fn encode(&self, text: &str) -> tch_rpo::Result<Vec<i64>> {
        CharVocab::encode(self, text).map_err(|e| tch_rpo::Error::Tokenizer(e.to_string()))
    }
    fn vocab_size(&self) -> i64 {
        self.len()
    }
    fn pad_id(&self) -> i64 {
        CharVocab::PAD
    }
    fn bos_id(&self) -> Option<i64> {
        Some(CharVocab::BOS)
    }
    fn eos_id(&self) -> Option<i64> {
        Some(CharVocab::EOS)
    }
}

/// A tokenizer that can also turn ids back into text (for the gold metric).
pub trait Codec: Tokenizer {
    /// The text of generated ids.
    fn decode(&self, ids: &[i64]) -> Result<String, BoxError>;
}

impl Codec for CharVocab {
    fn decode(&self, ids: &[i64]) -> Result<String, BoxError> {
        Ok(CharVocab::decode(self, ids))
    }
}

impl Codec for GgufTokenizer {
    fn decode(&self, ids: &[i64]) -> Result<String, BoxError> {
        Ok(GgufTokenizer::decode(self, ids, true))
    }
}

#[cfg(feature = "hf-tokenizers")]
struct HfCodec {
    tokenizer: tch_rpo::data::HfTokenizer,
    decoder: tokenizers::Tokenizer,
}

#[cfg(feature = "hf-tokenizers")]
impl Tokenizer for HfCodec {
    fn encode(&self, text: &str) -> tch_rpo::Result<Vec<i64>> {
        self.tokenizer.encode(text)
    }
    fn vocab_size(&self) -> i64 {
        self.tokenizer.vocab_size()
    }
    fn pad_id(&self) -> i64 {
        self.tokenizer.pad_id()
    }
    fn bos_id(&self) -> Option<i64> {
        self.tokenizer.bos_id()
    }
    fn eos_id(&self) -> Option<i64> {
        self.tokenizer.eos_id()
    }
    fn chat_template(&self) -> tch_rpo::data::ChatTemplate {
        self.tokenizer.chat_template()
    }
}

#[cfg(feature = "hf-tokenizers")]
impl Codec for HfCodec {
    fn decode(&self, ids: &[i64]) -> Result<String, BoxError> {
        let ids: Vec<u32> = ids.iter().filter_map(|&i| u32::try_from(i).ok()).collect();
        self.decoder.decode(&ids, true).map_err(|e| e.to_string().into())
    }
}

#[cfg(feature = "hf-tokenizers")]
fn hf_codec(dir: &Path) -> Result<Box<dyn Codec>, BoxError> {
    let path = crate::gemma::tokenizer_path(dir)?;
    let tokenizer = tch_rpo::data::HfTokenizer::from_file(&path, &tch_rpo::data::HfTokenizerConfig::gemma())?;
    let decoder = tokenizers::Tokenizer::from_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Box::new(HfCodec { tokenizer, decoder }))
}

#[cfg(not(feature = "hf-tokenizers"))]
fn hf_codec(dir: &Path) -> Result<Box<dyn Codec>, BoxError> {
    Err(format!(
        "--model-dir {} needs its tokenizer.json, which needs the `hf-tokenizers` feature: rebuild with \
         `cargo run --release --example rpo_gemma --features hf-tokenizers -- ...`",
        dir.display()
    )
    .into())
}

/// The shipped data directory.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rpo_gemma/data")
}

/// The policy to train: a GGUF file, a checkpoint, or the seeded small Gemma 2.
fn load_policy(config: &RunConfig, vocab_size: i64) -> Result<GemmaPolicy, BoxError> {
    if let Some(path) = &config.gguf {
        let (vs, model, _) = Gemma::from_gguf(path, config.device, config.kind)?;
        return Ok(GemmaPolicy::new(vs, model));
    }
    match &config.model_dir {
        Some(dir) => {
            let (vs, model) = Gemma::from_pretrained(dir, config.device, config.kind)?;
            Ok(GemmaPolicy::new(vs, model))
        }
        None => {
            let mut gemma_config = GemmaConfig::small_gemma2(vocab_size);
            if let Some(h) = config.hidden_size {
                let heads = gemma_config.num_attention_heads;
                gemma_config.hidden_size = h;
                gemma_config.intermediate_size = 2 * h;
                gemma_config.head_dim = Some(h / heads);
                gemma_config.query_pre_attn_scalar = Some((h / heads) as f64);
            }
            if let Some(layers) = config.layers {
                gemma_config.num_hidden_layers = layers;
            }
            tch::manual_seed(config.seed as i64);
            let mut vs = nn::VarStore::new(config.device);
            let model = Gemma::new(&vs.root(), &gemma_config)?;
            vs.set_kind(config.kind);
            Ok(GemmaPolicy::new(vs, model))
        }
    }
}

/// Held-out prompts and the gold metric.
struct Gold<'a> {
    prompts: Vec<String>,
    codec: &'a dyn Codec,
    max_new_tokens: usize,
    batch: usize,
    device: Device,
}

impl Gold<'_> {
    fn accuracy(&self, model: &Gemma) -> Result<Option<f64>, BoxError> {
        if self.prompts.is_empty() {
            return Ok(None);
        }
        let eos = self.codec.eos_id().ok_or("the tokenizer has no EOS token")?;
        let mut correct = 0usize;
        for chunk in self.prompts.chunks(self.batch.max(1)) {
            let ids = chunk
                .iter()
                .map(|p| -> Result<Vec<i64>, BoxError> {
                    let mut ids: Vec<i64> = self.codec.bos_id().into_iter().collect();
                    ids.extend(self.codec.encode(p)?);
                    Ok(ids)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let answers = greedy_decode(
                model,
                &ids,
                self.max_new_tokens,
                eos,
                self.codec.pad_id(),
                self.device,
            )?;
            for (prompt, answer) in chunk.iter().zip(&answers) {
                if task::is_correct(prompt, &self.codec.decode(answer)?) {
                    correct += 1;
                }
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
    verbose: bool,
}

impl Stage<'_> {
    /// Trains to the end of the schedule, evaluating at the start and `evals_per_epoch` times per epoch.
    fn run(&self, trainer: &mut RpoTrainer, model: &Gemma, gold: &Gold) -> Result<Vec<Row>, BoxError> {
        let total = trainer.schedule().total_steps;
        let every = (self.steps_per_epoch / self.evals_per_epoch.max(1) as u64).max(1);
        let mut rows = vec![self.evaluate(trainer, model, gold)?];
        while trainer.step() < total {
            let steps = every.min(total - trainer.step());
            let started = Instant::now();
            let history = trainer.fit_steps(self.pairs, self.collator, Some(steps))?;
            let seconds = started.elapsed().as_secs_f64();
            // Time per step, for models where it matters (a real model on CPU), not the small default one.
            if self.verbose && !history.is_empty() && seconds >= history.len() as f64 {
                eprintln!(
                    "{}: {} steps in {seconds:.1} s ({:.1} s/step)",
                    self.method,
                    history.len(),
                    seconds / history.len() as f64
                );
            }
            if let Some(skipped) = history.iter().find(|m| m.skipped) {
                eprintln!(
                    "warning: {} step {} skipped: {}",
                    self.method,
                    skipped.step,
                    skipped.skip_reason.as_deref().unwrap_or("?")
                );
            }
            rows.push(self.evaluate(trainer, model, gold)?);
        }
        Ok(rows)
    }

    fn evaluate(&self, trainer: &mut RpoTrainer, model: &Gemma, gold: &Gold) -> Result<Row, BoxError> {
        let metrics: StepMetrics = trainer.evaluate(self.pairs, self.collator, self.eval_batch)?;
        let row = Row {
            method: self.method,
            epoch: trainer.step() as f64 / self.steps_per_epoch as f64,
            step: trainer.step(),
            chosen_logp: metrics.logps_chosen,
            rejected_logp: metrics.logps_rejected,
            reward_accuracy: metrics.rewards_accuracies,
            reward_margin: metrics.rewards_margins,
            gold_accuracy: gold.accuracy(model)?,
        };

        if self.verbose {
            println!("{}", format_row(&row));
        }
        Ok(row)
    }
}

/// The table header printed above [`format_row`] lines.
pub fn table_header() -> String {
    format!(
        "{:<6} {:>6} {:>5} {:>11} {:>13} {:>9} {:>9} {:>6}",
        "method", "epoch", "step", "chosen_logp", "rejected_logp", "rew_acc", "margin", "gold"
    )
}

/// One printed table line.
pub fn format_row(row: &Row) -> String {
    let gold = row
        .gold_accuracy
        .map_or_else(|| "n/a".to_string(), |g| format!("{g:.3}"));
    format!(
        "{:<6} {:>6.2} {:>5} {:>11.4} {:>13.4} {:>9.3} {:>9.4} {:>6}",
        row.method,
        row.epoch,
        row.step,
        row.chosen_logp,
        row.rejected_logp,
        row.reward_accuracy,
        row.reward_margin,
        gold
    )
}

fn write_csv(path: &Path, rows: &[Row]) -> Result<(), BoxError> {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for r in rows {
        writeln!(
            text,
            "{},{},{},{},{},{},{},{}",
            r.method,
            r.epoch,
            r.step,
            r.chosen_logp,
            r.rejected_logp,
            r.reward_accuracy,
            r.reward_margin,
            r.gold_accuracy.map_or_else(String::new, |g| g.to_string())
        )?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

/// Runs the whole flow (see the module docs) and writes `metrics.csv`, `chosen_logp.svg` and
/// `train_log.jsonl` under `config.output`.
pub fn run(config: &RunConfig) -> Result<RunSummary, BoxError> {
    let start = Instant::now();
    if config.batch_size == 0 || config.grad_accum == 0 || config.epochs == 0 || config.evals_per_epoch == 0 {
        return Err("--batch-size, --grad-accum, --epochs and the evaluations per epoch must be > 0".into());
    }
    if let Device::Cuda(_) = config.device {
        if !tch::Cuda::is_available() {
            return Err("--device cuda: no CUDA device is available to libtorch".into());
        }
    }
    if let Some(threads) = config.threads {
        tch::set_num_threads(threads);
    }
    std::fs::create_dir_all(&config.output).map_err(|e| format!("{}: {e}", config.output.display()))?;
    let csv = config.output.join("metrics.csv");
    let svg = config.output.join("chosen_logp.svg");
    let log = config.output.join("train_log.jsonl");
    if log.exists() {
        std::fs::remove_file(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    }

    // Tokenizer, data, held-out prompts.
    let codec: Box<dyn Codec> = match (&config.gguf, &config.model_dir) {
        (Some(path), _) => {
            let file = tch_rpo::gguf::GgufFile::open(path)?;
            Box::new(GgufTokenizer::from_gguf(&file)?)
        }
        (None, Some(dir)) => hf_codec(dir)?,
        (None, None) => Box::new(CharVocab::new()),
    };
    let default_data = match config.gguf {
        Some(_) => data_dir().join("gemma3_prefs.jsonl"),
        None => data_dir().join("train.jsonl"),
    };
    let train_path = config.data.clone().unwrap_or(default_data);
    let mut records = PreferenceDataset::from_jsonl(&train_path, OnMalformed::Error)?.records;
    if let Some(n) = config.train_limit {
        records.truncate(n);
    }
    if records.is_empty() {
        return Err(format!("{}: no preference records", train_path.display()).into());
    }
    let pairs = encode_records(codec.as_ref(), &records)?;
    let heldout: Vec<String> = match (&config.data, &config.gguf) {
        (Some(_), _) | (_, Some(_)) => Vec::new(),
        (None, None) => {
            let mut prompts: Vec<String> = task::read_jsonl(&data_dir().join("heldout.jsonl"))?
                .into_iter()
                .map(|r| r.prompt)
                .collect();
            if let Some(n) = config.heldout_limit {
                prompts.truncate(n);
            }
            prompts
        }
    };
    let gold = Gold {
        prompts: heldout,
        codec: codec.as_ref(),
        max_new_tokens: task::MAX_LEN + 1,
        batch: 128,
        device: config.device,
    };
    let collator = Collator::new(
        CollateConfig::new(codec.pad_id()).with_limits(config.max_length, config.max_prompt_length),
    )?;

    let sft_policy = load_policy(config, codec.vocab_size())?;
    let params: i64 = sft_policy
        .vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    let batches_per_epoch = pairs.len().div_ceil(config.batch_size) as u64;
    let steps_per_epoch = batches_per_epoch.div_ceil(config.grad_accum as u64).max(1);
    let total_steps = |epochs: usize| -> u64 {
        let steps = steps_per_epoch * epochs as u64;
        config.max_steps.map_or(steps, |m| m.clamp(1, steps.max(1)))
    };
    if config.verbose {
        println!(
            "{:?} model, {params} parameters, {:?} {:?}, {} threads; {} training pairs, {} held-out prompts; \
             {} steps per epoch",
            sft_policy.model.arch(),
            config.device,
            config.kind,
            tch::get_num_threads(),
            pairs.len(),
            gold.prompts.len(),
            steps_per_epoch
        );
    }
    let loss_path = if config.fused {
        LossPath::Hidden
    } else {
        LossPath::Logits
    };
    let trainer_config = |rpo: RpoConfig, lr: f64, epochs: usize| -> Result<RpoTrainerConfig, BoxError> {
        Ok(RpoTrainerConfig {
            learning_rate: lr,
            loss_path,
            seed: config.seed,
            batch_pairs: config.batch_size,
            grad_accum_steps: config.grad_accum,
            log_path: Some(log.clone()),
            progress: config.verbose,
            ..RpoTrainerConfig::paper(rpo, total_steps(epochs))
        })
    };
    let stage = |method: &'static str| Stage {
        method,
        pairs: &pairs,
        collator: &collator,
        eval_batch: config.eval_batch.max(1),
        steps_per_epoch,
        evals_per_epoch: config.evals_per_epoch,
        verbose: config.verbose,
    };
    if config.verbose {
        println!("{}", table_header());
    }

    // 1. SFT on the chosen responses (reference-free; DPO weight 0): the reference policy.
    let mut rows = Vec::new();
    let gemma_config = sft_policy.model.config().clone();
    // Without SFT the loaded model itself is the reference (no copy).
    let sft_policy = if config.sft_epochs > 0 {
        let sft_model = sft_policy.model.shallow_clone();
        let mut trainer = RpoTrainer::new(
            Box::new(sft_policy),
            ReferenceSource::Free,
            trainer_config(
                RpoConfig::sft_only(SftNormalization::TokenMean),
                config.sft_lr,
                config.sft_epochs,
            )?,
        )?;
        rows.extend(stage("sft").run(&mut trainer, &sft_model, &gold)?);
        let params = trainer.into_model().named_parameters();
        policy_with(&gemma_config, config.device, config.kind, &params)?
    } else {
        sft_policy
    };

    // 2. Reference log-probs of the SFT model, once.
    let cache = ReferenceCache::compute(
        &sft_policy,
        &pairs,
        &collator,
        config.eval_batch.max(1),
        &LogProbOptions::causal(),
        loss_path,
    )?;

    // 3. DPO and RPO from the same start, same data order and seed.
    let methods = [
        ("dpo", RpoConfig::paper(config.beta, 0.0)),
        ("rpo", RpoConfig::paper(config.beta, config.eta)),
    ];
    for (method, rpo) in methods
        .into_iter()
        .filter(|(m, _)| !config.rpo_only || *m == "rpo")
    {
        let policy = policy_with(
            &gemma_config,
            config.device,
            config.kind,
            &sft_policy.named_parameters(),
        )?;
        let model = policy.model.shallow_clone();
        let mut trainer = RpoTrainer::new(
            Box::new(policy),
            ReferenceSource::Cached(cache.clone()),
            trainer_config(rpo, config.lr, config.epochs)?,
        )?;
        rows.extend(stage(method).run(&mut trainer, &model, &gold)?);
    }

    write_csv(&csv, &rows)?;
    crate::plot::chosen_logp_svg(&svg, &rows)?;
    std::io::stdout().flush()?;
    Ok(RunSummary {
        rows,
        csv,
        svg,
        log,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A new policy (its own store) with `config` and copies of `params` (matched by name), on `device` in
/// `kind`.
fn policy_with(
    config: &GemmaConfig,
    device: Device,
    kind: Kind,
    params: &[(String, Tensor)],
) -> Result<GemmaPolicy, BoxError> {
    let mut vs = nn::VarStore::new(device);
    let model = Gemma::new(&vs.root(), config)?;
    vs.set_kind(kind);
    let variables = vs.variables();
    if variables.len() != params.len() {
        return Err(format!(
            "{} parameters to copy into a model of {}",
            params.len(),
            variables.len()
        )
        .into());
    }
    tch::no_grad(|| -> Result<(), BoxError> {
        for (name, value) in params {
            let mut var = variables
                .get(name)
                .ok_or_else(|| format!("parameter {name} is not in the model"))?
                .shallow_clone();
            var.f_copy_(value)?;
        }
        Ok(())
    })?;
    Ok(GemmaPolicy::new(vs, model))
}
