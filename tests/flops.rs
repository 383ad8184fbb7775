//! The FLOP count of a training step and its report: Gemma's count by hand for a tiny configuration, the
//! step formulas ([`training_flops`], [`forward_flops`]), and the trainer's `flops`, `flops_per_second` and
//! `mfu` in its metrics and JSON Lines log (and `null` for a model that does not count its FLOPs).

mod train_support;

use tch::{nn, Device};
use tch_rpo::data::{ByteTokenizer, CollateConfig, Collator, EncodedPair, Tokenizer};
use tch_rpo::models::gemma::{Gemma, GemmaConfig, GemmaPolicy};
use tch_rpo::train::{
    forward_flops, training_flops, BatchShape, LossPath, PassFlops, PolicyModel, ReferenceSource, RpoTrainer,
    Trainer,
};
use tch_rpo::{Error, InputError};
use train_support::{preference_pairs, TinyLm};

/// H = 4, I = 6, 2 query heads and 1 key / value head of D = 2, 2 layers, V = 10.
fn tiny_config() -> GemmaConfig {
    let mut config = GemmaConfig::small_gemma2(10);
    config.hidden_size = 4;
    config.intermediate_size = 6;
    config.num_attention_heads = 2;
    config.num_key_value_heads = Some(1);
    config.head_dim = Some(2);
    config.num_hidden_layers = 2;
    config
}

#[test]
fn gemma_counts_by_hand() {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gemma::random(&vs.root(), &tiny_config()).unwrap();
    // Per row of T = 5 positions and per layer:
    //   q, k, v: 2·5·4·(2·2 + 2·1·2) = 40·8 = 320;  o: 2·5·(2·2)·4 = 160
    //   attention: q·kᵀ 2·2·5·5·2 = 200, p·v 200     → 400
    //   MLP: gate, up, down 3 · 2·5·4·6 = 720
    //   → 320 + 160 + 400 + 720 = 1,600; × 2 layers × 2 rows = 6,400.
    assert_eq!(model.decoder().body_forward_flops(2, 5), 6400.0);
    // One row of one position: projections 2·4·8 + 2·4·4 = 64 + 32, attention 2·2·2·1·1·2 = 16, MLP
    // 3·2·4·6 = 144 → 256 per layer, 512 for two.
    assert_eq!(model.decoder().body_forward_flops(1, 1), 512.0);
    assert_eq!(model.decoder().body_forward_flops(0, 5), 0.0);
    // The head: 2·H·V = 2·4·10.
    assert_eq!(model.decoder().head_flops_per_position(), 80.0);
}

#[test]
fn step_formulas_by_hand() {
    let pass = PassFlops {
        body_forward: 8160.0,
        head_per_position: 80.0,
        body_recomputes: 1,
        offers_hidden: true,
    };
    let shape = BatchShape {
        rows: 2,
        positions: 5,
        scored_tokens: 3,
    };
    // Fused head (Auto with hidden states, or Hidden): (3 + 1)·8,160 + 3·80·3 scored tokens.
    assert_eq!(training_flops(&pass, shape, LossPath::Auto), 32640.0 + 720.0);
    assert_eq!(training_flops(&pass, shape, LossPath::Hidden), 33360.0);
    // Logits: the head on all 2·5 positions: 32,640 + 3·80·10.
    assert_eq!(training_flops(&pass, shape, LossPath::Logits), 35040.0);
    // Without checkpointing: 3·8,160 + 720.
    let plain = PassFlops {
        body_recomputes: 0,
        ..pass
    };
    assert_eq!(training_flops(&plain, shape, LossPath::Hidden), 25200.0);
    // A forward pass (reference): 8,160 + 80·3 (fused) or + 80·10 (logits).
    assert_eq!(forward_flops(&pass, shape, LossPath::Hidden), 8400.0);
    assert_eq!(forward_flops(&pass, shape, LossPath::Logits), 8960.0);
    // A model without hidden states takes the logits path under Auto.
    let logits_only = PassFlops {
        offers_hidden: false,
        ..pass
    };
    assert_eq!(forward_flops(&logits_only, shape, LossPath::Auto), 8960.0);
}

fn gemma_policy(seed: i64, checkpointing: bool) -> GemmaPolicy {
    let mut config = GemmaConfig::small_gemma2(ByteTokenizer::new().vocab_size());
    config.num_hidden_layers = 2;
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gemma::random(&vs.root(), &config).unwrap();
    let mut policy = GemmaPolicy::new(vs, model);
    policy.set_gradient_checkpointing(checkpointing);
    policy
}

fn collator() -> Collator {
    Collator::new(CollateConfig::new(ByteTokenizer::PAD)).unwrap()
}

fn batch_of(pairs: &[EncodedPair]) -> tch_rpo::data::CollatedBatch {
    let chunk: Vec<(usize, &EncodedPair)> = pairs.iter().enumerate().collect();
    collator().collate(&chunk, Device::Cpu).unwrap()
}

/// The trainer's step FLOPs are the policy's training pass plus the reference model's forward pass, and
/// the log carries `flops`, `flops_per_second` and `mfu`.
#[test]
fn trainer_reports_flops_and_mfu() {
    let dir = std::env::temp_dir().join(format!("tch_rpo_flops_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = dir.join("train_log.jsonl");
    let pairs = preference_pairs(4);
    let peak = 1e12;
    let mut trainer = RpoTrainer::builder(gemma_policy(1, true))
        .ref_model(gemma_policy(1, false))
        .rpo_alpha(1.0)
        .max_steps(1)
        .batch_size(4)
        .shuffle(false)
        .progress(false)
        .log_path(&log)
        .peak_flops(peak)
        .build()
        .unwrap();
    let history = trainer.fit(&pairs, &collator()).unwrap();
    let metrics = &history[0];

    let batch = batch_of(&pairs);
    let size = batch.input_ids.size();
    let shape = BatchShape {
        rows: size[0] as usize,
        positions: size[1] as usize,
        scored_tokens: (batch.chosen_tokens + batch.rejected_tokens) as usize,
    };
    let policy = trainer.model().pass_flops(shape.rows, shape.positions).unwrap();
    assert_eq!(policy.body_recomputes, 1);
    let reference = gemma_policy(1, false)
        .pass_flops(shape.rows, shape.positions)
        .unwrap();
    let expected =
        training_flops(&policy, shape, LossPath::Auto) + forward_flops(&reference, shape, LossPath::Auto);
    assert_eq!(metrics.flops, Some(expected));
    let fps = metrics.flops_per_second.unwrap();
    assert!(fps > 0.0 && fps.is_finite());
    assert_eq!(metrics.mfu, Some(fps / peak));

    // The log line is exactly the metrics' JSON, and its numbers read back bit for bit (serde_json's
    // `float_roundtrip`: see `json_log_floats_read_back_exactly`).
    let text = std::fs::read_to_string(&log).unwrap();
    let first = text.lines().next().unwrap();
    assert_eq!(first, metrics.to_json().to_string());
    let json = metrics.to_json();
    assert_eq!(json["flops"].as_f64(), Some(expected));
    assert_eq!(json["flops_per_second"].as_f64(), Some(fps));
    assert_eq!(json["mfu"].as_f64(), Some(fps / peak));
    let line: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(line["flops"].as_f64(), Some(expected));
    assert_eq!(line["flops_per_second"].as_f64(), Some(fps));
    assert_eq!(line["mfu"].as_f64(), Some(fps / peak));
    // The keys that were there before are still there.
    for key in [
        "step",
        "loss",
        "tokens",
        "tokens_per_second",
        "grad_norm",
        "lr",
        "skipped_steps",
    ] {
        assert!(line.get(key).is_some(), "{key} missing from {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A model that does not count its FLOPs: no FLOP/s, no MFU (`null` in the log), even with a peak.
#[test]
fn models_without_a_count_report_none() {
    let pairs = preference_pairs(4);
    let mut trainer = RpoTrainer::builder(TinyLm::new(3, 8))
        .reference(ReferenceSource::Free)
        .max_steps(1)
        .batch_size(4)
        .progress(false)
        .peak_flops(1e12)
        .build()
        .unwrap();
    let metrics = trainer.train_step(&[batch_of(&pairs)]).unwrap();
    assert_eq!(
        (metrics.flops, metrics.flops_per_second, metrics.mfu),
        (None, None, None)
    );
    let json = metrics.to_json();
    for key in ["flops", "flops_per_second", "mfu"] {
        assert!(json[key].is_null(), "{key}: {}", json[key]);
    }
    // A Gemma policy against a reference model that does not count: unknown as well.
    let mut trainer = RpoTrainer::builder(gemma_policy(2, false))
        .ref_model(TinyLm::new(3, 8))
        .max_steps(1)
        .batch_size(4)
        .progress(false)
        .build()
        .unwrap();
    let metrics = trainer.train_step(&[batch_of(&pairs)]).unwrap();
    assert_eq!(metrics.flops, None);
}

#[test]
fn bad_peak_is_an_error() {
    for peak in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let result = RpoTrainer::builder(TinyLm::new(3, 8))
            .reference(ReferenceSource::Free)
            .max_steps(1)
            .peak_flops(peak)
            .build();
        match result {
            Err(Error::Input(InputError::InvalidParameter { name, .. })) => assert_eq!(name, "peak_flops"),
            other => panic!(
                "peak {peak}: expected an invalid-parameter error, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}

/// The FLOP/s value that once read back 1 ulp off from the JSON log (serde_json's default float parser):
/// with `float_roundtrip`, every f64 the log writes reads back bit for bit.
#[test]
fn json_log_floats_read_back_exactly() {
    let value = 33416618.059487686_f64;
    let text = serde_json::to_string(&serde_json::json!({ "flops_per_second": value })).unwrap();
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        back["flops_per_second"].as_f64().unwrap().to_bits(),
        value.to_bits()
    );
}
