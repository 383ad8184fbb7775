//! Data-parallel LoRA training on Gloo: 2 ranks (this test binary re-executed with
//! `TCH_RPO_LORA_DIST_WORKER` set, launcher variables set by hand) train the same adapters as one process
//! at the same global batch, the reference being each rank's model with its adapters off.
#![cfg(all(feature = "dist", feature = "train", feature = "lora", feature = "gemma"))]

mod lora_support;
mod rank_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lora_support::{gemma3_config, random_policy, seeded};
use rank_support::{run_to_end, worker_command};
use serde_json::Value;
use tch::Tensor;
use tch_rpo::data::{
    encode_records, CollateConfig, Collator, EncodedPair, PreferenceRecord, Text, Tokenizer,
};
use tch_rpo::dist::{DistOptions, ProcessGroup};
use tch_rpo::lora::{LoraConfig, LoraPolicy};
use tch_rpo::models::gemma::GemmaPolicy;
use tch_rpo::models::tokenizer::CharTokenizer;
use tch_rpo::train::{
    AdamWConfig, PolicyModel, ReferenceSource, RpoTrainer, RpoTrainerConfig, StepMetrics, Warmup,
};
use tch_rpo::RpoConfig;

const WORKER: &str = "TCH_RPO_LORA_DIST_WORKER";
const DIR: &str = "TCH_RPO_LORA_DIST_DIR";
const TOTAL: u64 = 4;

fn tokenizer() -> CharTokenizer {
    CharTokenizer::new("abcdefghijklmnopqrstuvwxyz0123456789 ?").unwrap()
}

/// 10 pairs: with global micro-batches of 4 (2 per rank), epochs end with a batch of 2.
fn pairs() -> Vec<EncodedPair> {
    let records: Vec<PreferenceRecord> = (0..10)
        .map(|i| {
            let prompt = format!("q{} {}?", i % 7, "ab".repeat(1 + i % 3));
            let chosen = format!("yes {}", "y".repeat(1 + i % 4));
            let rejected = format!("no {}", "n".repeat(2 + i % 3));
            PreferenceRecord::new(Text::Plain(prompt), Text::Plain(chosen), Text::Plain(rejected)).unwrap()
        })
        .collect();
    encode_records(&tokenizer(), &records).unwrap()
}

fn collator() -> Collator {
    Collator::new(CollateConfig::new(tokenizer().pad_id())).unwrap()
}

/// AdamW's ε is 1e-6 here: Adam divides each update by `√v̂ + ε`, so a gradient entry that is zero up to
/// rounding (the adapters' `A` get such entries while `B` is still tiny) would turn a rounding difference
/// between 1 and 2 processes into a step of up to `lr` with the default 1e-8; with 1e-6 a difference `δ` in
/// a gradient moves an update by at most about `lr·δ/ε`.
fn config() -> RpoTrainerConfig {
    let paper = RpoTrainerConfig::paper(RpoConfig::paper(0.1, 0.5), TOTAL);
    RpoTrainerConfig {
        optimizer: AdamWConfig {
            eps: 1e-6,
            ..paper.optimizer
        },
        learning_rate: 1e-2,
        warmup: Warmup::Ratio(0.0),
        seed: 17,
        batch_pairs: 4,
        grad_accum_steps: 2,
        progress: false,
        ..paper
    }
}

/// LoRA on the same base on every rank (seed 21); the adapters' initial `A` differs per rank
/// (`adapter_seed`): the trainer's broadcast makes them rank 0's.
fn trainer(adapter_seed: i64, group: Option<ProcessGroup>) -> RpoTrainer<LoraPolicy<GemmaPolicy>> {
    let base = random_policy(&gemma3_config(64), 21);
    let policy = seeded(adapter_seed, || LoraPolicy::new(base, &LoraConfig::new(4, 8.0))).unwrap();
    let mut builder = RpoTrainer::builder(policy)
        .config(config())
        .reference(ReferenceSource::AdaptersOff);
    if let Some(group) = group {
        builder = builder.process_group(group);
    }
    builder.build().unwrap()
}

fn history_json(history: &[StepMetrics]) -> Value {
    Value::Array(history.iter().map(StepMetrics::to_json).collect())
}

/// The child side: runs when this binary is re-executed with `TCH_RPO_LORA_DIST_WORKER` set.
#[test]
fn lora_dist_worker_entry() {
    if std::env::var(WORKER).is_err() {
        return;
    }
    tch::set_num_threads(1);
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    let group =
        ProcessGroup::from_env(&DistOptions::default().with_timeout(Duration::from_secs(60))).unwrap();
    let rank = group.rank();
    let mut t = trainer(5 + rank as i64, Some(group));
    let history = t.fit(&pairs(), &collator()).unwrap();
    std::fs::write(
        dir.join(format!("rank{rank}.json")),
        history_json(&history).to_string(),
    )
    .unwrap();
    let adapters = t.model().named_parameters();
    Tensor::write_safetensors(&adapters, dir.join(format!("rank{rank}.safetensors"))).unwrap();
    println!("WORKER_DONE rank={rank}");
}

fn run_ranks(dir: &Path) {
    let mut children = rank_support::spawn_ranks(2, || {
        let mut c = worker_command("lora_dist_worker_entry");
        c.env(WORKER, "1").env(DIR, dir).env("OMP_NUM_THREADS", "1");
        c
    });
    run_to_end(&mut children, Duration::from_secs(240), "lora_dist");
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// As `tests/dist_train.rs`: every step's loss and gradient norm within 1e-6 relative of one process's
/// (sums over two ranks in another order), the ranks' adapters identical, and within 1e-5 of one
/// process's.
#[test]
fn two_ranks_train_the_same_adapters_as_one_process() {
    tch::set_num_threads(1);
    let mut single = trainer(5, None);
    let single_history = single.fit(&pairs(), &collator()).unwrap();
    let single_adapters = single.model().named_parameters();

    let dir = std::env::temp_dir().join(format!("tch-rpo-lora-dp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    run_ranks(&dir);
    let dist = read_json(&dir.join("rank0.json"));
    let steps = dist.as_array().unwrap();
    assert_eq!(steps.len(), single_history.len());
    for (d, s) in steps.iter().zip(&single_history) {
        let (loss, norm) = (d["loss"].as_f64().unwrap(), d["grad_norm"].as_f64().unwrap());
        let (s_loss, s_norm) = (s.loss(), s.grad_norm.unwrap());
        assert!(
            (loss - s_loss).abs() <= 1e-6 * s_loss.abs().max(1e-3) && (norm - s_norm).abs() <= 1e-6 * s_norm,
            "step {}: loss {loss} vs {s_loss}, grad norm {norm} vs {s_norm}",
            d["step"]
        );
    }
    let read = |name: &str| {
        let mut w = Tensor::read_safetensors(dir.join(name)).unwrap();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        w
    };
    let (w0, w1) = (read("rank0.safetensors"), read("rank1.safetensors"));
    let mut single_sorted: Vec<(String, Tensor)> = single_adapters;
    single_sorted.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(w0.len(), single_sorted.len());
    for (((name, a), (_, b)), (_, c)) in w0.iter().zip(&w1).zip(&single_sorted) {
        assert!(a.equal(b), "{name}: ranks differ");
        let diff = (a - c).abs().max().double_value(&[]);
        assert!(diff <= 1e-5, "{name}: differs from one process's by {diff:e}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
