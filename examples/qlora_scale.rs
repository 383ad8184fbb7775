//! QLoRA at scale (issue 20): a Gemma 3 4B-shaped model (hidden 2560, 34 layers, intermediate 10240, 8 heads,
//! 4 KV heads, head dim 256, vocabulary 262144) with random weights, written as a Q8_0 GGUF by the crate's
//! own writer, trains one RPO LoRA step (r 16, α 32, the seven projections; 1 pair of 256 tokens per
//! sequence) with its base kept in its Q8_0 blocks (`WeightFormat::KeepQuantized`). Prints the time and
//! memory of each phase (`MemoryReport`).
//!
//! ```text
//! cargo run --release --example qlora_scale -- write output/gemma3-4b-shape-q8_0.gguf   # ≈ 4.1 GB
//! /usr/bin/time -v target/release/examples/qlora_scale step output/gemma3-4b-shape-q8_0.gguf
//! ```
//!
//! `write` holds the encoded file (≈ 4.1 GB) and one block of f32 rows at a time; `step` holds the blocks,
//! the norms, the adapters and their AdamW state, and one layer's dequantized matrices and activations.

use std::path::Path;
use std::time::Instant;

use tch::{Device, Kind, Tensor};
use tch_rpo::data::{CollateConfig, Collator, EncodedPair};
use tch_rpo::gguf::{quantize, GgmlType, GgufFile};
use tch_rpo::lora::{LoraConfig, LoraPolicy};
use tch_rpo::memory::MemoryReport;
use tch_rpo::models::gemma::export::{gguf_metadata, TokenizerSource};
use tch_rpo::models::gemma::{
    gguf_tensor_name, Gemma, GemmaConfig, GemmaPolicy, LoadOptions, WeightFormat, WeightSource,
};
use tch_rpo::train::{ReferenceSource, RpoTrainer, RpoTrainerConfig, Warmup};
use tch_rpo::RpoConfig;

type BoxError = Box<dyn std::error::Error>;

/// Gemma 3 4B's shape (text part), as a GGUF can express it.
fn config() -> GemmaConfig {
    let mut config = GemmaConfig::small_gemma2(262_144);
    config.model_type = "gemma3_text".into();
    config.hidden_size = 2560;
    config.intermediate_size = 10_240;
    config.num_hidden_layers = 34;
    config.num_attention_heads = 8;
    config.num_key_value_heads = Some(4);
    config.head_dim = Some(256);
    config.query_pre_attn_scalar = Some(256.0);
    config.rope_parameters = Some(serde_json::json!({"rope_type": "default", "rope_theta": 1_000_000.0}));
    config.rope_local_base_freq = Some(10_000.0);
    config.sliding_window = Some(1024);
    config.final_logit_softcapping = None;
    config.attn_logit_softcapping = None;
    config.max_position_embeddings = 131_072;
    config
}

/// Writes the model: matrices ~ N(0, 0.02²) quantized to Q8_0 a block of rows at a time, norms `1 + 0`.
fn write(path: &Path) -> Result<(), BoxError> {
    let config = config();
    let mut writer = gguf_metadata(&config, GgmlType::Q8_0, TokenizerSource::None)?;
    tch::manual_seed(0);
    for (name, shape) in config.parameter_shapes()? {
        let gguf = gguf_tensor_name(&name).ok_or("parameter without a GGUF name")?;
        if shape.len() == 1 {
            writer.add_tensor(
                gguf,
                &Tensor::ones(shape.as_slice(), (Kind::Float, Device::Cpu)),
                GgmlType::F32,
            )?;
            continue;
        }
        let (rows, cols) = (shape[0], shape[1]);
        let step = ((1 << 24) / cols).max(1);
        let mut bytes = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = step.min(rows - start);
            let values = Tensor::randn([n, cols], (Kind::Float, Device::Cpu)) * 0.02;
            bytes.extend(quantize(
                GgmlType::Q8_0,
                &Vec::<f32>::try_from(values.view([-1]))?,
            )?);
            start += n;
        }
        writer.add_raw_tensor(gguf, &shape, GgmlType::Q8_0, bytes)?;
    }
    let size = writer.write(path)?;
    println!("wrote {} ({:.2} GB)", path.display(), size as f64 / 1e9);
    Ok(())
}

/// One RPO LoRA step on the kept base, phase by phase.
fn step(path: &Path) -> Result<(), BoxError> {
    let memory = MemoryReport::new(true);
    let began = Instant::now();
    let file = GgufFile::open(path)?;
    let options = LoadOptions {
        weights: WeightFormat::KeepQuantized,
        ..LoadOptions::new(Device::Cpu, Kind::Float)
    };
    let (vs, model) = Gemma::load(WeightSource::Gguf(&file), &options)?;
    memory.phase("load (Q8_0 blocks kept)");
    let mut policy = GemmaPolicy::new(vs, model);
    policy.set_gradient_checkpointing(true);
    tch::manual_seed(1);
    let policy = LoraPolicy::new(policy, &LoraConfig::new(16, 32.0))?;
    memory.phase("adapters attached");
    let ids = |seed: i64, n: i64| -> Result<Vec<i64>, BoxError> {
        tch::manual_seed(seed);
        Ok(Vec::try_from(Tensor::randint_low(
            3,
            262_144,
            [n],
            (Kind::Int64, Device::Cpu),
        ))?)
    };
    let pair = EncodedPair {
        prompt: ids(2, 128)?,
        chosen: ids(3, 128)?,
        rejected: ids(4, 128)?,
    };
    let config = RpoTrainerConfig {
        learning_rate: 1e-4,
        warmup: Warmup::Ratio(0.0),
        batch_pairs: 1,
        progress: false,
        ..RpoTrainerConfig::paper(RpoConfig::paper(0.1, 1.0), 1)
    };
    let mut trainer = RpoTrainer::new(policy, ReferenceSource::AdaptersOff, config)?;
    memory.phase("trainer");
    let collator = Collator::new(CollateConfig::new(0).with_limits(256, 128))?;
    let history = trainer.fit(&[pair], &collator)?;
    memory.phase("one RPO step (1 pair x 256)");
    let loss = history.first().map(|m| m.loss()).unwrap_or(f64::NAN);
    println!("loss {loss:.6}, total {:.1} s", began.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> Result<(), BoxError> {
    tch_rpo::memory::limit_heap_fragmentation();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [command, path] if command == "write" => write(Path::new(path)),
        [command, path] if command == "step" => step(Path::new(path)),
        _ => Err("usage: qlora_scale write FILE.gguf | qlora_scale step FILE.gguf".into()),
    }
}
