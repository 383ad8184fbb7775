//! `LlamaPolicy` (the shared `DecoderPolicy` over a Llama-family model) as the trainer's `PolicyModel`:
//! the logits path and the fused (hidden-state) path give the same RPO loss and gradients, and per-layer
//! gradient checkpointing gives the same gradients as without it — for an untied Llama with `llama3`
//! RoPE scaling and a tied Qwen2 with q / k / v biases, random weights (initializer range 0.2, norm
//! weights randomized) over the byte tokenizer's vocabulary.
//!
//! Bounds:
//! - logits vs fused: both compute the per-token log-probs `z_y − logsumexp(z)` in f32 from the same
//!   hidden states and head (`z = h·Wᵀ`, same kernel shapes only up to chunking); a logsumexp over V = 259
//!   terms in another order differs by ≤ γ(258)·|terms| ≈ 1.5e-5 relative to the largest logit (≤ ~5
//!   here), so each token's log-prob by ≤ ~1e-4 absolute, and the RPO loss (a mean over 3 pairs of
//!   sigmoid(β·Δ) with β = 0.1 and an NLL mean) by less: 1e-5 · (1 + |loss|). Gradients: the fused path
//!   applies the analytic `softmax − onehot` per token instead of autograd's, each entry within the same
//!   f32 rounding, so 1e-4 of each gradient's largest entry.
//! - checkpointing: the same ops on the same inputs (see tests/gemma_checkpointing.rs): the same loss,
//!   gradients within 1e-6 of the largest entry (the order of adding the embedding's contributions).

mod train_support;

use tch::{nn, Device, Kind, Tensor};
use tch_rpo::data::{ByteTokenizer, CollateConfig, CollatedBatch, Collator, EncodedPair, Tokenizer};
use tch_rpo::models::decoder::{LoadOptions, WeightSource};
use tch_rpo::models::llama::{Llama, LlamaConfig, LlamaPolicy};
use tch_rpo::train::{LossPath, ModelOutput, PolicyModel};
use tch_rpo::{compute_loss, LossBatch, RpoConfig};
use train_support::preference_pairs;

fn configs() -> Vec<LlamaConfig> {
    let vocab = ByteTokenizer::new().vocab_size();
    let llama = serde_json::json!({
        "model_type": "llama", "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "tie_word_embeddings": false, "initializer_range": 0.2, "max_position_embeddings": 256,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    });
    let qwen2 = serde_json::json!({
        "model_type": "qwen2", "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
        "tie_word_embeddings": true, "initializer_range": 0.2, "max_position_embeddings": 256,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0}
    });
    [llama, qwen2]
        .iter()
        .map(|v| LlamaConfig::from_json_str(&v.to_string(), std::path::Path::new("config.json")).unwrap())
        .collect()
}

/// A seeded random policy with randomized norm weights and biases (so that their gradients matter), and
/// an exact copy of it.
fn policies(config: &LlamaConfig, seed: i64) -> (LlamaPolicy, LlamaPolicy) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Llama::random(&vs.root(), config).unwrap();
    let policy = LlamaPolicy::new(vs, model);
    tch::no_grad(|| {
        for (name, p) in policy.named_parameters() {
            if name.contains("norm") || name.ends_with(".bias") {
                let noise = Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * 0.3;
                let base = if name.contains("norm") { 1.0 } else { 0.0 };
                p.shallow_clone().copy_(&(noise + base));
            }
        }
    });
    let twin = policy.try_clone(&LoadOptions::default()).unwrap();
    (policy, twin)
}

fn micro_batches(pairs: &[EncodedPair]) -> Vec<CollatedBatch> {
    let collator = Collator::new(CollateConfig::new(ByteTokenizer::PAD)).unwrap();
    [[0usize, 1, 2], [3, 4, 5]]
        .iter()
        .map(|ids| {
            let chunk: Vec<(usize, &EncodedPair)> = ids.iter().map(|&i| (i, &pairs[i])).collect();
            collator.collate(&chunk, Device::Cpu).unwrap()
        })
        .collect()
}

fn loss_of(output: &ModelOutput, batch: &CollatedBatch) -> Tensor {
    let rpo = RpoConfig::paper(0.1, 0.5);
    let input = match output {
        ModelOutput::Logits(logits) => LossBatch::logits(logits, &batch.labels),
        ModelOutput::Hidden(states) => LossBatch::hidden(&states.hidden, states.head.clone(), &batch.labels),
    };
    compute_loss(&rpo, &input).unwrap().loss
}

/// The trainer's sequence over the micro-batches: losses and accumulated gradients.
fn accumulate(
    policy: &LlamaPolicy,
    batches: &[CollatedBatch],
    path: LossPath,
) -> (Vec<f64>, Vec<(String, Tensor)>) {
    let mut losses = Vec::new();
    for batch in batches {
        let (ids, mask) = (&batch.input_ids, &batch.attention_mask);
        match policy.forward_checkpointed(ids, mask, path).unwrap() {
            Some(checkpointed) => {
                let loss = loss_of(&checkpointed.output, batch);
                loss.backward();
                checkpointed.backward.run().unwrap();
                losses.push(loss.double_value(&[]));
            }
            None => {
                let output = match path {
                    LossPath::Logits => ModelOutput::Logits(policy.forward(ids, mask).unwrap()),
                    _ => ModelOutput::Hidden(policy.forward_hidden(ids, mask).unwrap().unwrap()),
                };
                let loss = loss_of(&output, batch);
                loss.backward();
                losses.push(loss.double_value(&[]));
            }
        }
    }
    let grads = policy
        .named_parameters()
        .into_iter()
        .map(|(name, p)| {
            let grad = p.grad();
            assert!(grad.defined(), "{name} got no gradient");
            (name, grad.copy())
        })
        .collect();
    (losses, grads)
}

fn assert_grads_close(label: &str, a: &[(String, Tensor)], b: &[(String, Tensor)], relative: f64) {
    assert_eq!(a.len(), b.len());
    let mut worst: f64 = 0.0;
    for ((name, x), (name_b, y)) in a.iter().zip(b) {
        assert_eq!(name, name_b);
        let scale = x.abs().max().double_value(&[]);
        assert!(scale > 0.0, "{label} {name}: zero gradient, nothing tested");
        let diff = (x - y).abs().max().double_value(&[]);
        worst = worst.max(diff / scale);
        assert!(
            diff <= relative * scale,
            "{label} {name}: max |Δgrad| {diff:e} vs max |grad| {scale:e}"
        );
    }
    eprintln!("{label}: worst |Δgrad| / max |grad| = {worst:.2e}");
}

#[test]
fn fused_and_logits_paths_give_the_same_loss_and_gradients() {
    let batches = micro_batches(&preference_pairs(6));
    for (c, config) in configs().iter().enumerate() {
        let (a, b) = policies(config, 70 + c as i64);
        let (logit_losses, logit_grads) = accumulate(&a, &batches, LossPath::Logits);
        let (fused_losses, fused_grads) = accumulate(&b, &batches, LossPath::Hidden);
        for (x, y) in logit_losses.iter().zip(&fused_losses) {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                "{}: loss {x} vs {y}",
                config.model_type
            );
        }
        let label = format!("{} logits vs fused", config.model_type);
        assert_grads_close(&label, &logit_grads, &fused_grads, 1e-4);
        // The untied head has its own gradient; the tied one shares the embedding's.
        let names: Vec<&str> = logit_grads.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.contains(&"lm_head.weight"), !config.tie_word_embeddings);
    }
}

#[test]
fn checkpointed_gradients_equal_plain_gradients() {
    let batches = micro_batches(&preference_pairs(6));
    for (c, config) in configs().iter().enumerate() {
        for path in [LossPath::Logits, LossPath::Hidden] {
            let (plain, mut checkpointed) = policies(config, 80 + c as i64);
            checkpointed.set_gradient_checkpointing(true);
            let (plain_losses, plain_grads) = accumulate(&plain, &batches, path);
            let (ck_losses, ck_grads) = accumulate(&checkpointed, &batches, path);
            assert_eq!(plain_losses, ck_losses, "{} {path:?}: losses", config.model_type);
            let label = format!("{} {path:?} checkpointed", config.model_type);
            assert_grads_close(&label, &plain_grads, &ck_grads, 1e-6);
        }
    }
}

#[test]
fn try_clone_is_an_independent_copy_from_parameters() {
    let config = &configs()[1];
    let (policy, twin) = policies(config, 90);
    let source = WeightSource::Parameters {
        config,
        parameters: &policy.named_parameters(),
    };
    let (_vs, again) = Llama::load(source, &LoadOptions::default()).unwrap();
    let ids = Tensor::from_slice(&[3i64, 70, 80, 90]).view([1, 4]);
    let mask = Tensor::ones([1, 4], (Kind::Int64, Device::Cpu));
    let a = tch::no_grad(|| policy.forward(&ids, &mask)).unwrap();
    let b = tch::no_grad(|| twin.forward(&ids, &mask)).unwrap();
    let c = tch::no_grad(|| again.forward(&ids, &mask)).unwrap();
    assert_eq!(f64::try_from((&a - &b).abs().max()).unwrap(), 0.0);
    assert_eq!(f64::try_from((&a - &c).abs().max()).unwrap(), 0.0);
    assert!(format!("{policy:?}").contains("Qwen2"));
}
