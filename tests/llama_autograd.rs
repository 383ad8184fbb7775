//! One RPO step of a Llama-family model equals transformers' autograd on the same loss: the tiny
//! `llama_tiny` (untied head, llama3 RoPE) and `qwen2_tiny` (tied head, q / k / v biases) fixtures, a
//! right-padded batch of 2 preference pairs, `RpoConfig::paper(0.1, 0.5)` without a reference model, the
//! loss and every parameter gradient through the policy's logits and fused paths against
//! `scripts/llama_rpo_grads.py` (run with `.venv/bin/python` at test time).
//!
//! Bound: the forward passes are bitwise equal (tests/llama_forward.rs); the backward passes run the same
//! libtorch kernels except where the graphs differ (the mask applied by `masked_fill` instead of an
//! added −∞ matrix; the fused path's analytic `softmax − onehot` per chunk; the crate's log-prob
//! reductions), each a sum of ≤ T·V = 12·128 f32 terms in another order: γ(1536) ≈ 9e-5 relative to the sum
//! of magnitudes, which for these gradients (no cancellation beyond a factor ~10) is ≤ 1e-5 of each
//! gradient's largest entry in practice; the test checks the 1e-5 relative bound per parameter and
//! prints the worst ratio.

mod export_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use export_support::{python, TempDir};
use tch::{Device, Kind, Tensor};
use tch_rpo::models::decoder::{LoadOptions, WeightSource};
use tch_rpo::models::llama::{Llama, LlamaPolicy};
use tch_rpo::train::{LossPath, ModelOutput, PolicyModel};
use tch_rpo::{compute_loss, LossBatch, RpoConfig};

const BETA: f64 = 0.1;
const ETA: f64 = 0.5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Two pairs (chosen rows first) over a shared prompt per pair, right-padded to 10 positions; labels are
/// the response tokens, -100 on the prompt and padding.
fn batch() -> (Tensor, Tensor, Tensor) {
    let rows: [(&[i64], usize); 4] = [
        (&[2, 17, 40, 9, 88, 31, 77], 3),
        (&[2, 60, 61, 5, 99, 14, 120, 45, 3, 66], 4),
        (&[2, 17, 40, 9, 12, 100], 3),
        (&[2, 60, 61, 5, 71, 8], 4),
    ];
    let width = 10;
    let (mut ids, mut mask, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for (tokens, prompt) in rows {
        for t in 0..width {
            let token = tokens.get(t).copied();
            ids.push(token.unwrap_or(0));
            mask.push(i64::from(token.is_some()));
            labels.push(match token {
                Some(id) if t >= prompt => id,
                _ => -100,
            });
        }
    }
    let shape = [4, width as i64];
    (
        Tensor::from_slice(&ids).view(shape),
        Tensor::from_slice(&mask).view(shape),
        Tensor::from_slice(&labels).view(shape),
    )
}

fn reference(
    dir: &TempDir,
    name: &str,
    ids: &Tensor,
    mask: &Tensor,
    labels: &Tensor,
) -> HashMap<String, Tensor> {
    let batch_path = dir.path(&format!("{name}-batch.safetensors"));
    let out = dir.path(&format!("{name}-grads.safetensors"));
    Tensor::write_safetensors(
        &[("input_ids", ids), ("attention_mask", mask), ("labels", labels)],
        &batch_path,
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llama_rpo_grads.py");
    let status = std::process::Command::new(python())
        .arg(script)
        .arg(fixture(name))
        .arg(&batch_path)
        .arg(&out)
        .arg(BETA.to_string())
        .arg(ETA.to_string())
        .status()
        .expect("running .venv/bin/python");
    assert!(status.success(), "llama_rpo_grads.py failed for {name}");
    Tensor::read_safetensors(&out).unwrap().into_iter().collect()
}

#[test]
fn rpo_step_gradients_equal_transformers_autograd() {
    let dir = TempDir::new("llama-autograd");
    let (ids, mask, labels) = batch();
    let rpo = RpoConfig::paper(BETA, ETA);
    // `LossBatch` scores `labels[t]` with the logits at `t`: shift the unshifted collator labels by one
    // (the logits at t predict token t + 1), as the trainer does.
    let ignore = Tensor::full([4, 1], -100, (Kind::Int64, Device::Cpu));
    let targets = Tensor::cat(&[labels.narrow(1, 1, labels.size()[1] - 1), ignore], 1);
    for name in ["llama_tiny", "qwen2_tiny"] {
        let want = reference(&dir, name, &ids, &mask, &labels);
        let want_loss = want["loss"].double_value(&[0]);
        for path in [LossPath::Logits, LossPath::Hidden] {
            let (vs, model) = Llama::load(
                WeightSource::HfDir(&fixture(name)),
                &LoadOptions::new(Device::Cpu, Kind::Float),
            )
            .unwrap();
            let policy = LlamaPolicy::new(vs, model);
            let output = match path {
                LossPath::Logits => ModelOutput::Logits(policy.forward(&ids, &mask).unwrap()),
                _ => ModelOutput::Hidden(policy.forward_hidden(&ids, &mask).unwrap().unwrap()),
            };
            let loss = match &output {
                ModelOutput::Logits(logits) => compute_loss(&rpo, &LossBatch::logits(logits, &targets)),
                ModelOutput::Hidden(h) => {
                    compute_loss(&rpo, &LossBatch::hidden(&h.hidden, h.head.clone(), &targets))
                }
            }
            .unwrap()
            .loss;
            loss.backward();
            let got_loss = loss.double_value(&[]);
            assert!(
                (got_loss - want_loss).abs() <= 1e-6 * (1.0 + want_loss.abs()),
                "{name} {path:?}: loss {got_loss} vs transformers {want_loss}"
            );
            let mut worst: f64 = 0.0;
            let parameters = policy.named_parameters();
            assert_eq!(parameters.len() + 1, want.len(), "{name}: parameter count");
            for (param, value) in parameters {
                let grad = value.grad();
                let reference = &want[&param];
                let scale = reference.abs().max().double_value(&[]);
                assert!(scale > 0.0, "{name} {param}: zero gradient, nothing tested");
                let diff = (&grad - reference).abs().max().double_value(&[]);
                worst = worst.max(diff / scale);
                assert!(
                    diff <= 1e-5 * scale,
                    "{name} {path:?} {param}: max |Δgrad| {diff:e} vs max |grad| {scale:e}"
                );
            }
            eprintln!("{name} {path:?}: loss {got_loss:.6} (transformers {want_loss:.6}), worst |Δgrad|/max|grad| {worst:.2e}");
        }
    }
}
