//! Saving Gemma models (`tch_rpo::models::gemma::export`): a Hugging Face folder and GGUF files (F32, F16,
//! BF16, Q8_0), read back by this crate, by the `gguf` Python package and by `transformers` (through
//! `.venv/bin/python scripts/check_export.py`), with logits compared; and the round trip of issue 10:
//! Gemma 3 270M from its GGUF → 2 RPO steps → saved both ways → transformers agrees with our logits of the
//! trained model.
//!
//! Needs the Gemma 3 270M GGUF (`bash scripts/get_gemma3_gguf.sh`, or `TCH_RPO_GEMMA3_GGUF=path`) and the
//! project's Python environment with transformers, gguf and safetensors (`bash scripts/setup.sh`). Without
//! them the tests FAIL (they do not skip), saying so.
#![cfg(feature = "gemma")]

mod export_support;

use export_support::*;
use serde_json::Value;
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tch_rpo::data::Tokenizer;
use tch_rpo::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use tch_rpo::models::gemma::export::{save_gguf, save_pretrained, TokenizerSource};
use tch_rpo::models::gemma::{gguf_tensor_name, Gemma, GemmaConfig, LoadOptions, WeightSource};
use tch_rpo::models::tokenizer::GgufTokenizer;
use tch_rpo::train::var_store_parameters;
use tch_rpo::train::{Collective, ScoringOptions};
use tch_rpo::{DataError, Error, InputError, WeightsError};

/// Largest |ours − theirs| that counts as "the same model" in f32: the two implementations run the same
/// weights with a different order of floating-point operations (measured on Gemma 3 270M: about 2e-5; on
/// the tiny model below: about 1e-6).
const SAME_WEIGHTS: f64 = 1e-4;

/// Tokens of the tiny model: the first 4096 of Gemma 3's vocabulary (specials, control tokens, newline and
/// space runs, byte tokens, common pieces).
const TINY_VOCAB: usize = 4096;

/// A GGUF holding only tokenizer metadata: Gemma 3's, with the token lists cut to the first `n` tokens.
fn small_tokenizer_gguf(source: &GgufFile, n: usize, path: &Path) -> GgufFile {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", GgufValue::String("gemma3".into()))
        .unwrap();
    for (key, value) in source.metadata() {
        if !key.starts_with("tokenizer.") {
            continue;
        }
        let value = match value {
            GgufValue::Array { elem, values } => GgufValue::Array {
                elem: *elem,
                values: values[..n].to_vec(),
            },
            other => other.clone(),
        };
        w.add_metadata(key.clone(), value).unwrap();
    }
    w.write(path).unwrap();
    GgufFile::open(path).unwrap()
}

/// Rows of pseudo-random token ids in [3, V) after BOS, of lengths 12, 9 and 7, right-padded with 0.
fn random_batch(vocab: i64) -> (Tensor, Tensor) {
    let mut state = 12345u64;
    let (rows, width) = ([12usize, 9, 7], 12usize);
    let mut ids = vec![0i64; rows.len() * width];
    let mut mask = vec![0i64; rows.len() * width];
    for (r, &len) in rows.iter().enumerate() {
        for t in 0..len {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ids[r * width + t] = if t == 0 {
                2
            } else {
                3 + (state >> 33) as i64 % (vocab - 3)
            };
            mask[r * width + t] = 1;
        }
    }
    let shape = [rows.len() as i64, width as i64];
    (
        Tensor::from_slice(&ids).reshape(shape),
        Tensor::from_slice(&mask).reshape(shape),
    )
}

/// A tiny random Gemma 3 over [`TINY_VOCAB`] tokens: H = 64, 6 layers (5 sliding with window 4, the 6th
/// global), 2 query heads × 256, 1 key/value head.
fn tiny_config() -> GemmaConfig {
    let text = r#"{
        "model_type": "gemma3_text", "vocab_size": 4096, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 6, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "max_position_embeddings": 512,
        "query_pre_attn_scalar": 256, "sliding_window": 4,
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1
    }"#;
    let config = GemmaConfig::from_json_str(text, Path::new("tiny")).unwrap();
    config.validate().unwrap();
    config
}

/// A seeded random model: matrices N(0, 0.05²), norm weights N(0, 0.3²) (not zero, so that the `1 + w`
/// convention of GGUF files is exercised).
fn tiny_model() -> (tch::nn::VarStore, Gemma) {
    let _guard = SEED_LOCK.lock().unwrap();
    tch::manual_seed(20261130);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let model = Gemma::random(&vs.root(), &tiny_config()).unwrap();
    tch::no_grad(|| {
        for (name, mut var) in var_store_parameters(&vs) {
            let std = if name.ends_with("norm.weight") { 0.3 } else { 0.05 };
            var.copy_(&(Tensor::randn(var.size(), (Kind::Float, Device::Cpu)) * std));
        }
    });
    (vs, model)
}

#[test]
fn tiny_gemma3_saved_as_folder_and_gguf_loads_back_here_and_in_transformers() {
    let start = std::time::Instant::now();
    let dir = TempDir::new("export-tiny");
    let full = GgufFile::open(gemma3_gguf_path()).unwrap();
    let gguf = small_tokenizer_gguf(&full, TINY_VOCAB, &dir.path("tokenizer.gguf"));
    let tokenizer = GgufTokenizer::from_gguf(&gguf).unwrap();
    let (vs, model) = tiny_model();
    let config = tiny_config();
    let params = var_store_parameters(&vs);
    let (ids, mask) = random_batch(config.vocab_size);
    let ours = tch::no_grad(|| model.forward(&ids, &mask)).unwrap();

    let hf = dir.path("hf");
    save_pretrained(&hf, &config, &params, Kind::Float, TokenizerSource::Gguf(&gguf)).unwrap();
    for name in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(hf.join(name).is_file(), "{name} not written");
    }
    // Our own loader reads the folder back to the same model.
    let (_vs2, back) = Gemma::load(
        WeightSource::HfDir(&hf),
        &LoadOptions::new(Device::Cpu, Kind::Float),
    )
    .unwrap();
    let again = tch::no_grad(|| back.forward(&ids, &mask)).unwrap();
    assert!(again.equal(&ours), "the saved folder loads back to another model");
    assert_eq!(
        back.config().layer_windows().unwrap(),
        config.layer_windows().unwrap()
    );
    assert_eq!(back.config().rope_bases().unwrap(), (1e6, 1e4));

    // GGUF files of each type: read back by our reader tensor by tensor, and by our loader.
    let mut files = Vec::new();
    for (ty, tolerance) in [
        // Max |Δlogit| to the unquantized model, measured 0 (F32), 2.2e-3 (F16), 2.1e-2 (BF16), 7.4e-2
        // (Q8_0) on logits up to 1.9 (seeded: the same every run); the bounds leave a margin.
        (GgmlType::F32, SAME_WEIGHTS),
        (GgmlType::F16, 1e-2),
        (GgmlType::BF16, 5e-2),
        (GgmlType::Q8_0, 0.15),
    ] {
        let path = dir.path(&format!("tiny-{}.gguf", ty.name().to_lowercase()));
        let len = save_gguf(&path, &config, &params, ty, TokenizerSource::Gguf(&gguf)).unwrap();
        assert_eq!(len, std::fs::metadata(&path).unwrap().len());
        let file = GgufFile::open(&path).unwrap();
        check_gguf_metadata(&file, &gguf, &config, ty);
        check_gguf_tensors(&file, &params, ty);
        let (_, from_file) = Gemma::load(WeightSource::Gguf(&file), &LoadOptions::default()).unwrap();
        let logits = tch::no_grad(|| from_file.forward(&ids, &mask)).unwrap();
        let diff = max_abs_diff(&logits, &ours, &mask);
        println!(
            "{ty}: our model from the GGUF vs the original: max |Δlogit| {diff:.3e} (max |logit| {:.3})",
            ours.abs().max().double_value(&[])
        );
        assert!(diff <= tolerance, "{ty}: max |Δlogit| {diff} > {tolerance}");
        files.push((path, logits));
    }

    println!("saved and read back: {:.1} s", start.elapsed().as_secs_f64());
    // The gguf Python package reads the metadata and tensor infos we wrote.
    let dump_path = dir.path("dump.json");
    run_check(&[
        "gguf-dump",
        files[3].0.to_str().unwrap(),
        dump_path.to_str().unwrap(),
        "--no-values",
    ]);
    let dump: Value = serde_json::from_str(&std::fs::read_to_string(&dump_path).unwrap()).unwrap();
    let q8 = GgufFile::open(&files[3].0).unwrap();
    check_dump_against(&dump, &q8);

    // transformers loads the folder and every GGUF; its logits match ours on the same weights.
    let check = dir.path("check");
    let mut args = vec!["--hf".to_string(), hf.display().to_string()];
    for (path, _) in &files {
        args.push("--gguf".into());
        args.push(path.display().to_string());
    }
    let start = std::time::Instant::now();
    let result = run_models(&dir, &ids, &mask, &args, Some(&TEXTS), &check);
    println!("transformers checks: {:.1} s", start.elapsed().as_secs_f64());
    let theirs = load_logits(&check, "hf");
    let diff = max_abs_diff(&theirs, &ours, &mask);
    println!("transformers, saved folder vs ours: max |Δlogit| {diff:.3e}");
    assert!(diff <= SAME_WEIGHTS, "folder: max |Δlogit| {diff}");
    assert_eq!(result["hf"]["class"], "Gemma3ForCausalLM");
    let hf_config = &result["hf"]["config"];
    assert_eq!(hf_config["sliding_window"], 4);
    assert_eq!(hf_config["layer_types"][5], "full_attention");
    assert_eq!(hf_config["layer_types"][4], "sliding_attention");
    for (path, our_logits) in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let theirs = load_logits(&check, name);
        let diff = max_abs_diff(&theirs, our_logits, &mask);
        println!("transformers, {name} vs our model from the same file: max |Δlogit| {diff:.3e}");
        assert!(diff <= SAME_WEIGHTS, "{name}: max |Δlogit| {diff}");
        let read = &result[name]["config"];
        assert_eq!(read["model_type"], "gemma3_text", "{name}");
        assert_eq!(read["hidden_size"], 64, "{name}");
        assert_eq!(read["head_dim"], 256, "{name}");
        assert_eq!(read["sliding_window"], 4, "{name}");
        assert_eq!(read["vocab_size"], TINY_VOCAB, "{name}");
    }
    // The folder's tokenizer (tokenizer.json built from the GGUF metadata) gives our tokenizer's ids.
    assert_eq!(result["hf"]["tokenizer_class"], "GemmaTokenizer");
    for (i, text) in TEXTS.iter().enumerate() {
        let mut want = vec![2i64];
        want.extend(tokenizer.encode(text).unwrap());
        let got: Vec<i64> = result["hf"]["ids"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(got, want, "{text:?}");
    }
}

/// The metadata a GGUF reader needs, as written.
fn check_gguf_metadata(file: &GgufFile, source: &GgufFile, config: &GemmaConfig, ty: GgmlType) {
    assert_eq!(file.version(), 3);
    assert_eq!(file.get_str("general.architecture").unwrap(), "gemma3");
    let file_type = match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q8_0 => 7,
        _ => 32,
    };
    assert_eq!(file.get_u64("general.file_type").unwrap(), file_type);
    let u = |key: &str| file.get_u64(&format!("gemma3.{key}")).unwrap() as i64;
    assert_eq!(u("embedding_length"), config.hidden_size);
    assert_eq!(u("block_count"), config.num_hidden_layers);
    assert_eq!(u("feed_forward_length"), config.intermediate_size);
    assert_eq!(u("attention.head_count"), config.num_attention_heads);
    assert_eq!(u("attention.head_count_kv"), config.kv_heads());
    assert_eq!(u("attention.key_length"), config.head_size());
    assert_eq!(u("attention.value_length"), config.head_size());
    assert_eq!(u("attention.sliding_window"), config.sliding_window.unwrap());
    assert_eq!(u("context_length"), config.max_position_embeddings);
    assert_eq!(file.get_f64("gemma3.rope.freq_base").unwrap(), 1e6);
    assert_eq!(
        file.get_f64("gemma3.attention.layer_norm_rms_epsilon").unwrap(),
        1e-6f32 as f64
    );
    // Every tokenizer key of the source, unchanged.
    let tokenizer_keys: Vec<&String> = source
        .metadata()
        .keys()
        .filter(|k| k.starts_with("tokenizer."))
        .collect();
    assert!(tokenizer_keys.len() >= 10);
    for key in tokenizer_keys {
        assert_eq!(file.get(key), source.get(key), "{key}");
    }
    assert_eq!(file.get("general.license"), source.get("general.license"));
    // And our config reader rebuilds the same configuration.
    let read = GemmaConfig::from_gguf(file).unwrap();
    assert_eq!(read.layer_windows().unwrap(), config.layer_windows().unwrap());
    assert_eq!(read.rope_bases().unwrap(), config.rope_bases().unwrap());
    assert_eq!(read.vocab_size, config.vocab_size);
    assert_eq!(read.head_size(), config.head_size());
    assert_eq!(read.query_pre_attn_scalar, Some(256.0));
}

/// Tensor names, types and values: norms `1 + w` in F32, matrices in `ty` (F32 and F16 / BF16 bit-exact
/// against libtorch's conversion, Q8_0 within the block error).
fn check_gguf_tensors(file: &GgufFile, params: &[(String, Tensor)], ty: GgmlType) {
    assert_eq!(file.tensors().len(), params.len());
    assert!(
        !file.has_tensor("output.weight"),
        "the head is tied: no output.weight"
    );
    for (name, value) in params {
        let gguf_name = gguf_tensor_name(name).unwrap();
        let info = file.tensor_info(&gguf_name).unwrap();
        assert_eq!(info.shape, value.size(), "{gguf_name}");
        let got = file.tensor(&gguf_name, Kind::Float, Device::Cpu).unwrap();
        if value.dim() == 1 {
            assert_eq!(info.ggml_type, GgmlType::F32, "{gguf_name}");
            assert!(name.ends_with("norm.weight"));
            assert!(got.equal(&(value + 1.0)), "{gguf_name}: not 1 + w");
            continue;
        }
        assert_eq!(info.ggml_type, ty, "{gguf_name}");
        match ty {
            GgmlType::F32 => assert!(got.equal(value), "{gguf_name}"),
            GgmlType::F16 => assert!(got.equal(&value.to_kind(Kind::Half).to_kind(Kind::Float))),
            GgmlType::BF16 => assert!(got.equal(&value.to_kind(Kind::BFloat16).to_kind(Kind::Float))),
            _ => {
                let x = f64_values(value);
                let y = f64_values(&got);
                for (b, (block, back)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                    let amax = block.iter().fold(0f64, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let bound = d / 2.0 + 127.0 * (d * 2f64.powi(-11)).max(2f64.powi(-25)) + 1e-12;
                    for (a, c) in block.iter().zip(back) {
                        assert!((a - c).abs() <= bound, "{gguf_name} block {b}: {a} → {c}");
                    }
                }
            }
        }
    }
}

/// gguf-py's view of the file equals ours: metadata keys and types, tensor names, dims, types, offsets.
fn check_dump_against(dump: &Value, file: &GgufFile) {
    let metadata = dump["metadata"].as_object().unwrap();
    assert_eq!(metadata.len(), file.metadata().len());
    for (key, value) in file.metadata() {
        let entry = &metadata[key.as_str()];
        assert_eq!(
            entry["types"][0].as_u64().unwrap(),
            value.value_type().id() as u64,
            "{key}"
        );
        match value {
            GgufValue::String(s) => assert_eq!(entry["value"], s.as_str(), "{key}"),
            GgufValue::Array { values, .. } if values.len() > 16 => {
                assert_eq!(
                    entry["value"]["len"].as_u64().unwrap(),
                    values.len() as u64,
                    "{key}"
                );
                if let Some(first) = values[0].as_str() {
                    assert_eq!(entry["value"]["head"][0], first, "{key}");
                }
            }
            other => {
                if let Some(n) = other.as_u64() {
                    assert_eq!(entry["value"].as_u64().unwrap(), n, "{key}");
                }
            }
        }
    }
    let tensors = dump["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), file.tensors().len());
    for info in file.tensors() {
        let t = &tensors[info.name.as_str()];
        let dims: Vec<i64> = t["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        let reversed: Vec<i64> = info.shape.iter().rev().copied().collect();
        assert_eq!(dims, reversed, "{}", info.name);
        assert_eq!(t["type"], info.ggml_type.name(), "{}", info.name);
        assert_eq!(t["offset"].as_u64().unwrap(), file.data_offset() + info.offset);
    }
}

/// `RpoTrainer::into_model()` gives the trained `GemmaPolicy` itself (no parameter copy), and the folder
/// its `save_pretrained` writes loads in transformers, which computes our logits of the trained model.
#[test]
fn into_model_gives_the_trained_gemma_whose_folder_transformers_loads() {
    use tch_rpo::data::{CollateConfig, Collator, EncodedPair};
    use tch_rpo::models::gemma::GemmaPolicy;
    use tch_rpo::train::{ReferenceSource, RpoTrainer};

    let dir = TempDir::new("export-into-model");
    let (vs, model) = tiny_model();
    let (ids, mask) = random_batch(tiny_config().vocab_size);
    let before = tch::no_grad(|| model.forward(&ids, &mask)).unwrap();
    let pair = |k: i64| EncodedPair {
        prompt: vec![2, 10 + k, 11 + k, 12 + k],
        chosen: vec![100 + k, 101 + k, 1],
        rejected: vec![200 + k, 1],
    };
    let pairs: Vec<EncodedPair> = (0..4).map(pair).collect();
    let collator = Collator::new(CollateConfig::new(0)).unwrap();
    let mut trainer = RpoTrainer::builder(GemmaPolicy::new(vs, model))
        .reference(ReferenceSource::InitialPolicy)
        .rpo_alpha(1.0)
        .learning_rate(1e-2)
        .batch_size(2)
        .max_steps(2)
        .progress(false)
        .build()
        .unwrap();
    assert_eq!(trainer.fit(&pairs, &collator).unwrap().len(), 2);
    let trained: GemmaPolicy = trainer.into_model();
    let ours = tch::no_grad(|| trained.model().forward(&ids, &mask)).unwrap();
    let moved = max_abs_diff(&ours, &before, &mask);
    assert!(moved > 1e-3, "training did not change the model ({moved})");

    let hf = dir.path("hf");
    trained
        .save_pretrained(&hf, Kind::Float, TokenizerSource::None)
        .unwrap();
    let check = dir.path("check");
    let args = vec!["--hf".to_string(), hf.display().to_string()];
    let result = run_models(&dir, &ids, &mask, &args, None, &check);
    assert_eq!(result["hf"]["class"], "Gemma3ForCausalLM");
    let diff = max_abs_diff(&load_logits(&check, "hf"), &ours, &mask);
    println!("transformers, folder of the trained policy vs ours: max |Δlogit| {diff:.3e}");
    assert!(diff <= SAME_WEIGHTS, "max |Δlogit| {diff}");
}

#[test]
fn gemma3_270m_trained_two_rpo_steps_round_trips_through_transformers() {
    round_trip::run();
}

mod round_trip {
    use super::*;
    use tch_rpo::data::{encode_records, CollateConfig, Collator, OnMalformed, PreferenceDataset};
    use tch_rpo::models::attention::{with_attention_kernel, AttentionKernel};
    use tch_rpo::models::gemma::GemmaPolicy;
    use tch_rpo::train::{
        Decay, LossPath, PolicyModel, ReferenceSource, RpoTrainer, RpoTrainerConfig, Warmup,
    };
    use tch_rpo::RpoConfig;

    /// How far a Q8_0 export may move the trained 270M model's next-token distributions: the mean and the
    /// largest KL divergence over the positions (llama.cpp's measure of a quantization), and the share of
    /// positions whose argmax is kept (measured: KL mean 7.2e-3, max 9.9e-2; argmax 0.935).
    const Q8_0_MEAN_KL: f64 = 0.05;
    const Q8_0_MAX_KL: f64 = 0.5;
    const Q8_0_ARGMAX: f64 = 0.85;

    pub fn run() {
        let path = gemma3_gguf_path();
        let file = GgufFile::open(&path).unwrap();
        let (vs, model) = Gemma::load(WeightSource::Gguf(&file), &LoadOptions::default()).unwrap();
        let config = model.config().clone();
        let tokenizer = GgufTokenizer::from_gguf(&file).unwrap();
        let (ids, mask) = batch(&tokenizer, &TEXTS[..2]);
        let before = tch::no_grad(|| model.forward(&ids, &mask)).unwrap();

        // Two RPO steps through the trainer: 4 pairs of the shipped Gemma 3 data, 2 pairs per step, short
        // rows, the example's lr for a GGUF model (1e-5), constant: enough to move the logits visibly.
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rpo_gemma/data/gemma3_prefs.jsonl");
        let mut records = PreferenceDataset::from_jsonl(&data, OnMalformed::Error)
            .unwrap()
            .records;
        records.truncate(4);
        let pairs = encode_records(&tokenizer, &records).unwrap();
        let collator = Collator::new(CollateConfig::new(tokenizer.pad_id()).with_limits(40, 24)).unwrap();
        let policy = GemmaPolicy::new(vs, model);
        let cache = tch_rpo::train::score_reference(
            &policy,
            &pairs,
            &collator,
            &ScoringOptions::new(4).with_loss_path(LossPath::Logits),
            &Collective::single(),
        )
        .unwrap();
        let trainer_config = RpoTrainerConfig {
            learning_rate: 1e-5,
            lr_scheduler: Decay::Constant,
            warmup: Warmup::Ratio(0.0),
            batch_pairs: 2,
            grad_accum_steps: 1,
            progress: false,
            ..RpoTrainerConfig::paper(RpoConfig::paper(0.05, 1.0), 2)
        };
        let mut trainer = RpoTrainer::new(policy, ReferenceSource::Cached(cache), trainer_config).unwrap();
        let steps = trainer.fit(&pairs, &collator).unwrap();
        assert_eq!(steps.len(), 2);
        let trained = trainer.into_model();
        // transformers runs eager attention (scores, softmax, matmul): our explicit kernel is that
        // arithmetic, and SAME_WEIGHTS is its bound (libtorch's fused kernel sums in another order: over the
        // 18 layers of the trained 270M model its logits differ from eager's by up to ~1.7e-4).
        let eager = AttentionKernel::Explicit;
        let ours = with_attention_kernel(eager, || tch::no_grad(|| trained.forward(&ids, &mask))).unwrap();
        let moved = max_abs_diff(&ours, &before, &mask);
        println!("2 RPO steps moved the logits by up to {moved:.3}");
        assert!(moved > 1e-2, "training did not change the model ({moved})");
        // Exported straight from the trained policy that `into_model` gave back.
        let dir = TempDir::new("export-270m");
        let hf = dir.path("hf");
        let q8 = dir.path("gemma3-270m-rpo-q8_0.gguf");
        trained
            .save_pretrained(&hf, Kind::Float, TokenizerSource::Gguf(&file))
            .unwrap();
        trained
            .save_gguf(&q8, GgmlType::Q8_0, TokenizerSource::Gguf(&file))
            .unwrap();
        drop(trained);
        check_gguf_metadata(&GgufFile::open(&q8).unwrap(), &file, &config, GgmlType::Q8_0);
        let q8_file = GgufFile::open(&q8).unwrap();
        let (_, from_q8) = Gemma::load(WeightSource::Gguf(&q8_file), &LoadOptions::default()).unwrap();
        let ours_q8 = with_attention_kernel(eager, || tch::no_grad(|| from_q8.forward(&ids, &mask))).unwrap();
        drop(from_q8);

        // transformers: the folder's logits match ours ≤ 1e-4; the Q8_0 file's match our model of the same
        // file ≤ 1e-4 and the trained model within the quantization's tolerance; the folder's tokenizer
        // gives the ids transformers gives from the original GGUF (the fixture), with BOS.
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma3_reference.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let cases = reference["tokenizer"].as_array().unwrap();
        let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
        let check = dir.path("check");
        let args = vec![
            "--hf".to_string(),
            hf.display().to_string(),
            "--gguf".into(),
            q8.display().to_string(),
        ];
        let result = run_models(&dir, &ids, &mask, &args, Some(&texts), &check);

        let theirs = load_logits(&check, "hf");
        let diff = max_abs_diff(&theirs, &ours, &mask);
        println!("transformers, saved folder vs our trained model: max |Δlogit| {diff:.3e}");
        assert!(
            diff <= SAME_WEIGHTS,
            "folder: max |Δlogit| {diff} > {SAME_WEIGHTS}"
        );

        let name = q8.file_name().unwrap().to_str().unwrap();
        let theirs = load_logits(&check, name);
        let same = max_abs_diff(&theirs, &ours_q8, &mask);
        let quantized = max_abs_diff(&theirs, &ours, &mask);
        let (mean_kl, max_kl) = kl_divergence(&ours, &theirs, &mask);
        let agree = argmax_agreement(&theirs, &ours, &mask);
        println!(
            "transformers, Q8_0 file vs our model of the same file: {same:.3e}; vs the trained model: max \
             |Δlogit| {quantized:.3} (max |logit| {:.1}), KL mean {mean_kl:.2e} max {max_kl:.2e}, argmax \
             agreement {agree:.3}",
            ours.abs().max().double_value(&[])
        );
        assert!(same <= SAME_WEIGHTS, "Q8_0: {same} > {SAME_WEIGHTS}");
        assert!(mean_kl <= Q8_0_MEAN_KL, "Q8_0 mean KL {mean_kl} > {Q8_0_MEAN_KL}");
        assert!(max_kl <= Q8_0_MAX_KL, "Q8_0 max KL {max_kl} > {Q8_0_MAX_KL}");
        assert!(
            agree >= Q8_0_ARGMAX,
            "Q8_0 argmax agreement {agree} < {Q8_0_ARGMAX}"
        );

        let hf_result = &result["hf"];
        assert_eq!(hf_result["tokenizer_class"], "GemmaTokenizer");
        for (i, case) in cases.iter().enumerate() {
            let mut want: Vec<i64> = vec![2];
            want.extend(
                case["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap()),
            );
            let got: Vec<i64> = hf_result["ids"][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            assert_eq!(got, want, "tokenizer ids of {:?}", case["text"]);
            // Our tokenizer agrees too (BOS + encode).
            let mut ours: Vec<i64> = vec![2];
            ours.extend(tokenizer.encode(case["text"].as_str().unwrap()).unwrap());
            assert_eq!(ours, want);
        }
    }
}

mod example_support;

/// `rpo_gemma --save DIR`: the trained policy of the last stage as a folder our loader (and so
/// transformers: same files as above) reads; its weights are trained, not the seeded init.
#[test]
fn rpo_gemma_save_writes_the_trained_policy() {
    let dir = TempDir::new("export-example");
    let (output, saved) = (dir.path("out"), dir.path("saved"));
    let args = [
        "--rpo-only",
        "--epochs",
        "1",
        "--sft-epochs",
        "1",
        "--train-limit",
        "16",
        "--heldout-limit",
        "4",
        "--evals-per-epoch",
        "1",
        "--batch-size",
        "8",
        "--output",
        output.to_str().unwrap(),
        "--save",
        saved.to_str().unwrap(),
    ];
    let run = example_support::run_example_ok(&args);
    assert!(run.stdout.contains("saved the trained policy"), "{}", run.stdout);
    let (vs, model) = Gemma::load(
        WeightSource::HfDir(&saved),
        &LoadOptions::new(Device::Cpu, Kind::Float),
    )
    .unwrap();
    assert_eq!(model.config().model_type, "gemma2");
    // The example's seeded init (seed 42), rebuilt from the saved config: the saved weights differ from it.
    let init = {
        let _guard = SEED_LOCK.lock().unwrap();
        tch::manual_seed(42);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let _ = Gemma::random(&vs.root(), model.config()).unwrap();
        var_store_parameters(&vs)
    };
    let trained = var_store_parameters(&vs);
    assert_eq!(init.len(), trained.len());
    let changed = init
        .iter()
        .zip(&trained)
        .filter(|((a, x), (b, y))| a == b && !x.equal(y))
        .count();
    assert!(
        changed > trained.len() / 2,
        "only {changed} of {} tensors changed",
        trained.len()
    );

    // --save-gguf needs --gguf (the tokenizer metadata and a Gemma 3 model come from it).
    let run = example_support::run_example(&["--save-gguf", dir.path("x.gguf").to_str().unwrap()]);
    assert!(!run.success && run.stderr.contains("--gguf"), "{}", run.stderr);
}

/// A GGUF with only tokenizer metadata, from a hand-written vocabulary.
fn tokenizer_file(
    path: &Path,
    model: &str,
    tokens: &[&str],
    types: &[i32],
    extra: &[(&str, GgufValue)],
) -> GgufFile {
    let mut w = GgufWriter::new();
    w.add_metadata("tokenizer.ggml.model", GgufValue::String(model.into()))
        .unwrap();
    w.add_metadata(
        "tokenizer.ggml.tokens",
        GgufValue::Array {
            elem: tch_rpo::gguf::GgufValueType::String,
            values: tokens.iter().map(|t| GgufValue::String((*t).into())).collect(),
        },
    )
    .unwrap();
    w.add_metadata(
        "tokenizer.ggml.token_type",
        GgufValue::Array {
            elem: tch_rpo::gguf::GgufValueType::I32,
            values: types.iter().map(|&t| GgufValue::I32(t)).collect(),
        },
    )
    .unwrap();
    for (key, value) in extra {
        w.add_metadata(*key, value.clone()).unwrap();
    }
    w.write(path).unwrap();
    GgufFile::open(path).unwrap()
}

#[test]
fn tokenizer_json_follows_the_rules_written_out_by_hand() {
    use tch_rpo::models::gemma::export::hf_tokenizer_files;
    let dir = TempDir::new("export-tok");
    // ids:        0        1        2        3       4    5    6     7     8      9     10    11
    let tokens = [
        "<pad>", "<eos>", "<bos>", "<unk>", "a", "b", "ab", "ba", "aba", "  ", "\n", "<0x41>",
    ];
    let types = [3, 3, 3, 2, 1, 1, 1, 1, 1, 4, 4, 6];
    let file = tokenizer_file(
        &dir.path("t.gguf"),
        "llama",
        &tokens,
        &types,
        &[
            ("tokenizer.ggml.bos_token_id", GgufValue::U32(2)),
            ("tokenizer.ggml.eos_token_id", GgufValue::U32(1)),
            ("tokenizer.ggml.unknown_token_id", GgufValue::U32(3)),
            ("tokenizer.ggml.padding_token_id", GgufValue::U32(0)),
            (
                "tokenizer.chat_template",
                GgufValue::String("{{ messages }}".into()),
            ),
        ],
    );
    let (json, config) = hf_tokenizer_files(&file).unwrap();
    let model = &json["model"];
    assert_eq!(model["type"], "BPE");
    assert_eq!(model["byte_fallback"], true);
    assert_eq!(model["unk_token"], "<unk>");
    // The space run is respelled with ▁; every token keeps its id.
    assert_eq!(model["vocab"]["▁▁"], 9);
    assert_eq!(model["vocab"]["aba"], 8);
    assert_eq!(model["vocab"].as_object().unwrap().len(), 12);
    // Merges: by the merged token's id, then longer left part first; "▁▁" has no split ("▁" is no token).
    let merges: Vec<(String, String)> = model["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m[0].as_str().unwrap().into(), m[1].as_str().unwrap().into()))
        .collect();
    let want: Vec<(String, String)> = [("a", "b"), ("b", "a"), ("ab", "a"), ("a", "ba")]
        .iter()
        .map(|(l, r)| (l.to_string(), r.to_string()))
        .collect();
    assert_eq!(merges, want);
    // Added tokens: the control ones special, "\n" (user-defined, in the vocabulary) plain; "  " is not (its
    // file spelling is not in the respelled vocabulary).
    let added: Vec<(i64, String, bool)> = json["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["normalized"], false);
            (
                t["id"].as_i64().unwrap(),
                t["content"].as_str().unwrap().to_string(),
                t["special"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        added,
        vec![
            (0, "<pad>".into(), true),
            (1, "<eos>".into(), true),
            (2, "<bos>".into(), true),
            (10, "\n".into(), false)
        ]
    );
    // BOS added (the default for a SentencePiece vocabulary), no EOS.
    let single = &json["post_processor"]["single"];
    assert_eq!(single[0]["SpecialToken"]["id"], "<bos>");
    assert_eq!(single[1]["Sequence"]["id"], "A");
    assert_eq!(single.as_array().unwrap().len(), 2);
    assert_eq!(json["post_processor"]["special_tokens"]["<bos>"]["ids"][0], 2);
    assert_eq!(json["normalizer"]["content"], "▁");
    assert_eq!(config["tokenizer_class"], "GemmaTokenizer");
    assert_eq!(config["bos_token"], "<bos>");
    assert_eq!(config["pad_token"], "<pad>");
    assert_eq!(config["add_bos_token"], true);
    assert_eq!(config["add_eos_token"], false);
    assert_eq!(config["chat_template"], "{{ messages }}");

    // Errors: another tokenizer model, types of another length, a special id outside the vocabulary.
    let bad = tokenizer_file(&dir.path("gpt2.gguf"), "gpt2", &tokens, &types, &[]);
    let e = hf_tokenizer_files(&bad).unwrap_err();
    assert!(
        matches!(&e, Error::Data(DataError::Tokenizer(m)) if m.contains("\"gpt2\"")),
        "{e}"
    );
    let bad = tokenizer_file(&dir.path("types.gguf"), "llama", &tokens, &types[..5], &[]);
    let e = hf_tokenizer_files(&bad).unwrap_err();
    assert!(
        matches!(&e, Error::Data(DataError::Tokenizer(m)) if m.contains("5 token types for 12 tokens")),
        "{e}"
    );
    let bad = tokenizer_file(
        &dir.path("ids.gguf"),
        "llama",
        &tokens,
        &types,
        &[("tokenizer.ggml.eos_token_id", GgufValue::U32(12))],
    );
    let e = hf_tokenizer_files(&bad).unwrap_err();
    assert!(
        matches!(&e, Error::Data(DataError::Tokenizer(m)) if m.contains("eos_token_id = 12")),
        "{e}"
    );
}

#[test]
fn export_errors_name_what_is_wrong() {
    let dir = TempDir::new("export-err");
    let (vs, model) = tiny_model();
    let config = tiny_config();
    let params = var_store_parameters(&vs);
    drop(model);
    let gguf = |config: &GemmaConfig, params: &[(String, Tensor)], ty, tokenizer| {
        save_gguf(&dir.path("e.gguf"), config, params, ty, tokenizer).unwrap_err()
    };
    // Gemma 2 has no GGUF export.
    let gemma2 = GemmaConfig::small_gemma2(64);
    let e = gguf(&gemma2, &params, GgmlType::F16, TokenizerSource::None);
    assert!(
        matches!(e, Error::Weights(WeightsError::UnsupportedArchitecture { .. })),
        "{e}"
    );
    // What a gemma3 GGUF cannot say.
    for (field, edit) in [
        ("query_pre_attn_scalar", r#""query_pre_attn_scalar": 128"#),
        ("final_logit_softcapping", r#""final_logit_softcapping": 30.0"#),
        (
            "rope_local_base_freq",
            r#""rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}}"#,
        ),
        (
            "layer_types",
            r#""layer_types": ["full_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention"]"#,
        ),
    ] {
        let mut value: Value = serde_json::to_value(&config).unwrap();
        let patch: Value = serde_json::from_str(&format!("{{{edit}}}")).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            value[k] = v.clone();
        }
        let edited = GemmaConfig::from_json_str(&value.to_string(), Path::new("edited")).unwrap();
        let e = gguf(&edited, &params, GgmlType::F16, TokenizerSource::None);
        assert!(
            matches!(&e, Error::Input(InputError::Config { name, .. }) if *name == field),
            "{field}: {e}"
        );
    }
    // Types the export does not write.
    let e = gguf(&config, &params, GgmlType::Q4_K, TokenizerSource::None);
    assert!(e.to_string().contains("cannot export matrices as Q4_K"), "{e}");
    // Parameters that do not fit the config: missing, extra, mis-shaped.
    let missing: Vec<(String, Tensor)> = params[1..]
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let e = gguf(&config, &missing, GgmlType::F32, TokenizerSource::None);
    assert!(
        matches!(&e, Error::Weights(WeightsError::Parameters { mismatch, .. }) if mismatch.missing == [params[0].0.clone()]),
        "{e}"
    );
    let mut extra: Vec<(String, Tensor)> = params
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    extra.push((
        "lm_head.weight".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    ));
    let e = save_pretrained(
        &dir.path("x"),
        &config,
        &extra,
        Kind::Float,
        TokenizerSource::None,
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::Weights(WeightsError::Parameters { mismatch, .. }) if mismatch.unexpected == ["lm_head.weight"]),
        "{e}"
    );
    let mut shaped: Vec<(String, Tensor)> = params
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    shaped[0].1 = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    let e = gguf(&config, &shaped, GgmlType::F32, TokenizerSource::None);
    assert!(
        matches!(&e, Error::Weights(WeightsError::Parameters { mismatch, .. })
            if mismatch.mismatched.len() == 1 && mismatch.mismatched[0].name == params[0].0),
        "{e}"
    );
    // A tokenizer of another size than the model's vocabulary; a folder as a GGUF's tokenizer.
    let full = GgufFile::open(gemma3_gguf_path()).unwrap();
    let e = gguf(&config, &params, GgmlType::F32, TokenizerSource::Gguf(&full));
    assert!(
        matches!(
            &e,
            Error::Input(InputError::Config {
                name: "vocab_size",
                ..
            })
        ),
        "{e}"
    );
    let e = gguf(
        &config,
        &params,
        GgmlType::F32,
        TokenizerSource::HfDir(&dir.path("x")),
    );
    assert!(matches!(e, Error::Data(DataError::Tokenizer(_))), "{e}");
    assert!(!dir.path("e.gguf").exists());
    // Folder: a dtype safetensors cannot hold for a model, a sharded checkpoint in the way, a tokenizer
    // folder without tokenizer files.
    let e = save_pretrained(
        &dir.path("x"),
        &config,
        &params,
        Kind::Int64,
        TokenizerSource::None,
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::Input(InputError::DType { arg: "kind", .. })),
        "{e}"
    );
    std::fs::create_dir_all(dir.path("sharded")).unwrap();
    std::fs::write(dir.path("sharded/model.safetensors.index.json"), "{}").unwrap();
    let e = save_pretrained(
        &dir.path("sharded"),
        &config,
        &params,
        Kind::Float,
        TokenizerSource::None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("sharded checkpoint"), "{e}");
    std::fs::create_dir_all(dir.path("empty")).unwrap();
    let e = save_pretrained(
        &dir.path("y"),
        &config,
        &params,
        Kind::Float,
        TokenizerSource::HfDir(&dir.path("empty")),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Data(DataError::Tokenizer(_))), "{e}");
    assert!(
        !dir.path("y").exists(),
        "nothing is written when the tokenizer source is unusable"
    );
}
