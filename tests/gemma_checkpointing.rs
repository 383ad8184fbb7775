//! Per-layer activation checkpointing of the Gemma model is exact: the same loss and the same parameter
//! gradients as without it, on the logits and the fused (hidden-state) paths, with gradient accumulation
//! over micro-batches, and the same training trajectory through the trainer.
//!
//! What "the same" means here: every layer is recomputed from its stored input with the same ops, and
//! the gradient that reaches each layer's output is passed on unchanged (the backward of `Σ(out ⊙ g)`),
//! so every gradient contribution is the same f32 value. Only the order in which contributions are
//! added into one `.grad` may differ: the tied embedding / head weight receives the head's contribution
//! during `loss.backward()` and the embedding's at the end of the checkpointed backward, while one
//! un-checkpointed backward adds the two first and then into `.grad`. With several micro-batches that is
//! `(g + a) + b` against `g + (a + b)` in f32, so the test allows a relative difference of 1e-6 of the
//! gradient's largest entry (f32 rounding of a few additions is ≤ ~1.2e-7 relative each) and counts the
//! parameters that came out bitwise identical.

mod train_support;

use tch::{nn, Device, Kind, Tensor};
use tch_rpo::data::{
    encode_records, ByteTokenizer, CollateConfig, CollatedBatch, Collator, EncodedPair, PreferenceRecord,
    Text, Tokenizer,
};
use tch_rpo::models::gemma::{Gemma, GemmaConfig, GemmaPolicy, LoadOptions, WeightSource};
use tch_rpo::train::{
    LossPath, ModelOutput, PolicyModel, ReferenceSource, RpoTrainer, RpoTrainerConfig, Trainer, Warmup,
};
use tch_rpo::{compute_loss, LossBatch, RpoConfig};
use train_support::preference_pairs;

/// Small Gemma 2 (3 layers: sliding, full, sliding; soft-caps) and Gemma 3 (q/k norms, two RoPE bases)
/// configurations over the byte tokenizer's vocabulary.
fn configs() -> Vec<GemmaConfig> {
    let mut gemma2 = GemmaConfig::small_gemma2(ByteTokenizer::new().vocab_size());
    gemma2.num_hidden_layers = 3;
    gemma2.sliding_window = Some(4);
    let mut gemma3 = gemma2.clone();
    gemma3.model_type = "gemma3_text".into();
    gemma3.final_logit_softcapping = None;
    gemma3.attn_logit_softcapping = None;
    gemma3.rope_local_base_freq = Some(100.0);
    vec![gemma2, gemma3]
}

/// Two policies with the same random weights (initializer range 0.2 so that the layers matter), the
/// second with gradient checkpointing.
fn policies(config: &GemmaConfig, seed: i64) -> (GemmaPolicy, GemmaPolicy) {
    let mut config = config.clone();
    config.initializer_range = 0.2;
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gemma::random(&vs.root(), &config).unwrap();
    let plain = GemmaPolicy::new(vs, model);
    // Norm weights start at 0; give them values so that their gradients are exercised.
    tch::no_grad(|| {
        for (name, p) in plain.named_parameters() {
            if name.contains("norm") {
                p.shallow_clone()
                    .copy_(&(Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * 0.3));
            }
        }
    });
    let parameters = plain.named_parameters();
    let source = WeightSource::Parameters {
        config: &config,
        parameters: &parameters,
    };
    let (vs, model) = Gemma::load(source, &LoadOptions::new(Device::Cpu, Kind::Float)).unwrap();
    let mut checkpointed = GemmaPolicy::new(vs, model);
    checkpointed.set_gradient_checkpointing(true);
    assert!(checkpointed.gradient_checkpointing() && !plain.gradient_checkpointing());
    (plain, checkpointed)
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

/// The loss of one micro-batch from a model output (reference-free RPO).
fn loss_of(output: &ModelOutput, batch: &CollatedBatch) -> Tensor {
    let rpo = RpoConfig::paper(0.1, 0.5);
    match output {
        ModelOutput::Logits(logits) => {
            compute_loss(&rpo, &LossBatch::logits(logits, &batch.labels))
                .unwrap()
                .loss
        }
        ModelOutput::Hidden(states) => {
            let input = LossBatch::hidden(&states.hidden, states.head.clone(), &batch.labels);
            compute_loss(&rpo, &input).unwrap().loss
        }
    }
}

/// Accumulates the gradients of all micro-batches into `policy`'s parameters (the trainer's sequence:
/// `forward_checkpointed` when it checkpoints, else the plain forward; `loss.backward()`; the deferred
/// backward) and returns the losses and the gradients.
fn accumulate(
    policy: &GemmaPolicy,
    batches: &[CollatedBatch],
    path: LossPath,
) -> (Vec<f64>, Vec<(String, Tensor)>) {
    let mut losses = Vec::new();
    for batch in batches {
        let (ids, mask) = (&batch.input_ids, &batch.attention_mask);
        let checkpointed = policy.forward_checkpointed(ids, mask, path).unwrap();
        assert_eq!(checkpointed.is_some(), policy.gradient_checkpointing());
        match checkpointed {
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

/// Asserts that every gradient of `checkpointed` is within 1e-6 of the largest entry of its twin in `plain`
/// (same names, same order; none all zero) and returns how many are bitwise equal.
fn assert_grads_close(label: &str, plain: &[(String, Tensor)], checkpointed: &[(String, Tensor)]) -> usize {
    assert_eq!(plain.len(), checkpointed.len());
    let mut bitwise = 0;
    for ((name, a), (name_b, b)) in plain.iter().zip(checkpointed) {
        assert_eq!(name, name_b);
        let scale = a.abs().max().double_value(&[]);
        assert!(scale > 0.0, "{name}: zero gradient, nothing tested");
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(
            diff <= 1e-6 * scale,
            "{label} {name}: max |Δgrad| {diff:e} vs max |grad| {scale:e}"
        );
        bitwise += usize::from(diff == 0.0);
    }
    bitwise
}

#[test]
fn checkpointed_gradients_equal_plain_gradients() {
    let pairs = preference_pairs(6);
    let batches = micro_batches(&pairs);
    for (c, config) in configs().iter().enumerate() {
        for path in [LossPath::Logits, LossPath::Hidden] {
            let (plain, checkpointed) = policies(config, 40 + c as i64);
            let (plain_losses, plain_grads) = accumulate(&plain, &batches, path);
            let (ck_losses, ck_grads) = accumulate(&checkpointed, &batches, path);
            assert_eq!(plain_losses, ck_losses, "{} {path:?}: losses", config.model_type);
            let label = format!("{} {path:?}", config.model_type);
            let bitwise = assert_grads_close(&label, &plain_grads, &ck_grads);
            eprintln!(
                "{} {path:?}: {bitwise} of {} gradients bitwise equal",
                config.model_type,
                plain_grads.len()
            );
            // All but (at most) the tied embedding are bitwise equal.
            assert!(
                bitwise + 1 >= plain_grads.len(),
                "{} {path:?}: only {bitwise} of {} gradients bitwise equal",
                config.model_type,
                plain_grads.len()
            );
        }
    }
}

/// Rows of more than 256 positions: the checkpointed backward recomputes each layer one batch row at a time
/// (blocks of `max(1, 512 / T)` rows), and every layer's parameter gradient is then the sum of the rows'
/// contributions added in another order than one whole-batch backward adds them: equal within f32
/// rounding (1e-6 of the largest entry), the input gradients and the loss unchanged.
#[test]
fn checkpointed_gradients_with_row_blocks_equal_plain_gradients() {
    let records: Vec<PreferenceRecord> = (0..6)
        .map(|i| {
            let prompt = format!("q{i} {}", "context ".repeat(30 + 3 * i));
            let chosen = format!("yes {}", "y".repeat(20 + i));
            let rejected = format!("no {}", "n".repeat(25 + 2 * i));
            PreferenceRecord::new(Text::Plain(prompt), Text::Plain(chosen), Text::Plain(rejected)).unwrap()
        })
        .collect();
    let pairs = encode_records(&ByteTokenizer::new(), &records).unwrap();
    let batches = micro_batches(&pairs);
    assert!(
        batches.iter().all(|b| b.input_ids.size()[1] > 256),
        "rows must exceed 256 positions"
    );
    for (c, config) in configs().iter().enumerate() {
        let (plain, checkpointed) = policies(config, 60 + c as i64);
        let (plain_losses, plain_grads) = accumulate(&plain, &batches, LossPath::Hidden);
        let (ck_losses, ck_grads) = accumulate(&checkpointed, &batches, LossPath::Hidden);
        assert_eq!(plain_losses, ck_losses, "{}: losses", config.model_type);
        assert_grads_close(&config.model_type, &plain_grads, &ck_grads);
    }
}

#[test]
fn checkpointed_training_follows_the_same_trajectory() {
    let pairs = preference_pairs(6);
    let batches = micro_batches(&pairs);
    let config = &configs()[0];
    for path in [LossPath::Logits, LossPath::Hidden, LossPath::Auto] {
        let (plain, checkpointed) = policies(config, 50);
        let trainer_config = || RpoTrainerConfig {
            learning_rate: 1e-3,
            warmup: Warmup::Ratio(0.0),
            loss_path: path,
            grad_accum_steps: 2,
            batch_pairs: 3,
            progress: false,
            ..RpoTrainerConfig::paper(RpoConfig::paper(0.1, 0.5), 3)
        };
        let mut a = RpoTrainer::new(plain, ReferenceSource::Free, trainer_config()).unwrap();
        let mut b = RpoTrainer::new(checkpointed, ReferenceSource::Free, trainer_config()).unwrap();
        for step in 0..3 {
            let (ma, mb) = (a.train_step(&batches).unwrap(), b.train_step(&batches).unwrap());
            assert!(!ma.skipped && !mb.skipped);
            let (na, nb) = (ma.grad_norm.unwrap(), mb.grad_norm.unwrap());
            assert!(
                (ma.loss() - mb.loss()).abs() <= 1e-6 * ma.loss().abs().max(1.0)
                    && (na - nb).abs() <= 1e-6 * na,
                "{path:?} step {step}: loss {} vs {}, grad norm {na} vs {nb}",
                ma.loss(),
                mb.loss()
            );
        }
        for ((name, pa), (_, pb)) in a
            .model()
            .named_parameters()
            .iter()
            .zip(&b.model().named_parameters())
        {
            let diff = (pa - pb).abs().max().double_value(&[]);
            assert!(
                diff <= 1e-6,
                "{path:?} {name}: parameters differ by {diff:e} after 3 steps"
            );
        }
    }
}

/// The checkpointed forward keeps no graph through the layers: `loss.backward()` alone reaches only the
/// head (the tied embedding) and the final norm; the layers get their gradients from the deferred
/// backward.
#[test]
fn checkpointed_forward_cuts_the_graph_at_the_last_layer() {
    let pairs = preference_pairs(6);
    let batches = micro_batches(&pairs);
    let (_, checkpointed) = policies(&configs()[0], 60);
    let batch = &batches[0];
    let out = checkpointed
        .forward_checkpointed(&batch.input_ids, &batch.attention_mask, LossPath::Hidden)
        .unwrap()
        .unwrap();
    loss_of(&out.output, batch).backward();
    let defined = |policy: &GemmaPolicy| -> Vec<String> {
        let mut names: Vec<String> = policy
            .named_parameters()
            .into_iter()
            .filter(|(_, p)| p.grad().defined())
            .map(|(n, _)| n)
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        defined(&checkpointed),
        ["model.embed_tokens.weight", "model.norm.weight"]
    );
    out.backward.run().unwrap();
    assert_eq!(
        defined(&checkpointed).len(),
        checkpointed.named_parameters().len()
    );
}

/// Gradient checkpointing with frozen parameters (a frozen embedding, as LoRA and many recipes use; frozen
/// layers; random subsets) gives the gradients the plain pass gives: the frozen parameters get none on both
/// sides, the others agree within the f32 rounding bound of `assert_grads_close`. Before the fix the
/// checkpointed backward failed with libtorch's "element 0 of tensors does not require grad" at the frozen
/// embedding.
#[test]
fn checkpointed_gradients_with_frozen_parameters_equal_plain_gradients() {
    let pairs = preference_pairs(6);
    let batches = micro_batches(&pairs);
    // A small deterministic generator for the random subsets (independent of libtorch's).
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut coin = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state & 1 == 1
    };
    for (c, config) in configs().iter().enumerate() {
        let names: Vec<String> = policies(config, 0)
            .0
            .named_parameters()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let subset = |keep: &dyn Fn(&str) -> bool| -> Vec<String> {
            names.iter().filter(|n| keep(n)).cloned().collect()
        };
        let mut subsets: Vec<Vec<String>> = vec![
            subset(&|n| n == "model.embed_tokens.weight"),
            subset(&|n| n.starts_with("model.layers.0.")),
            subset(&|n| n.contains("norm")),
            // Everything but the last layer and the final norm.
            subset(&|n| !n.starts_with("model.layers.2.") && n != "model.norm.weight"),
        ];
        for _ in 0..3 {
            subsets.push(names.iter().filter(|_| coin()).cloned().collect());
        }
        for path in [LossPath::Logits, LossPath::Hidden] {
            for (s, frozen) in subsets.iter().enumerate() {
                let (plain, checkpointed) = policies(config, 70 + c as i64);
                for policy in [&plain, &checkpointed] {
                    for (name, p) in policy.named_parameters() {
                        if frozen.contains(&name) {
                            let _ = p.set_requires_grad(false);
                        }
                    }
                }
                let label = format!("{} {path:?} frozen subset {s}", config.model_type);
                let (plain_losses, plain_grads) = accumulate_trainable(&plain, &batches, path, frozen);
                let (ck_losses, ck_grads) = accumulate_trainable(&checkpointed, &batches, path, frozen);
                assert_eq!(plain_losses, ck_losses, "{label}: losses");
                assert_eq!(plain_grads.len(), names.len() - frozen.len(), "{label}");
                assert_grads_close(&label, &plain_grads, &ck_grads);
            }
        }
    }
}

/// As [`accumulate`] for a policy with the `frozen` parameters frozen: asserts that exactly these got no
/// gradient and returns the gradients of the others.
fn accumulate_trainable(
    policy: &GemmaPolicy,
    batches: &[CollatedBatch],
    path: LossPath,
    frozen: &[String],
) -> (Vec<f64>, Vec<(String, Tensor)>) {
    let mut losses = Vec::new();
    for batch in batches {
        let (ids, mask) = (&batch.input_ids, &batch.attention_mask);
        let loss = match policy.forward_checkpointed(ids, mask, path).unwrap() {
            Some(checkpointed) => {
                let loss = loss_of(&checkpointed.output, batch);
                loss.backward();
                checkpointed.backward.run().unwrap();
                loss
            }
            None => {
                let output = match path {
                    LossPath::Logits => ModelOutput::Logits(policy.forward(ids, mask).unwrap()),
                    _ => ModelOutput::Hidden(policy.forward_hidden(ids, mask).unwrap().unwrap()),
                };
                let loss = loss_of(&output, batch);
                loss.backward();
                loss
            }
        };
        losses.push(loss.double_value(&[]));
    }
    let mut grads = Vec::new();
    for (name, p) in policy.named_parameters() {
        let grad = p.grad();
        if frozen.contains(&name) {
            assert!(!grad.defined(), "frozen {name} got a gradient");
        } else {
            assert!(grad.defined(), "{name} got no gradient");
            grads.push((name, grad.copy()));
        }
    }
    (losses, grads)
}
