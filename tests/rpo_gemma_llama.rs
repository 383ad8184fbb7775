//! The `rpo_gemma` example on a Llama-family model (issue 21): a tiny random Qwen2 model (q / k / v biases,
//! GQA) with the byte-level BPE tokenizer and Qwen2.5 chat template of `scripts/make_bpe_fixture.py`, saved
//! as GGUF by `llama::export::save_gguf`; `rpo_gemma --gguf FILE` detects the architecture from the file,
//! renders the shipped conversational preference records with the file's template, trains two RPO steps,
//! and saves the trained policy back as GGUF, which loads again as a Qwen2 model.
mod bpe_support;
mod example_support;

use std::path::Path;

use example_support::{run_example, run_example_ok, temp_dir};
use tch::{nn, Device};
use tch_rpo::gguf::{GgmlType, GgufFile};
use tch_rpo::models::decoder::export::TokenizerSource;
use tch_rpo::models::decoder::{LoadOptions, WeightSource};
use tch_rpo::models::llama::export::save_gguf;
use tch_rpo::models::llama::{Llama, LlamaArch, LlamaConfig};

#[test]
fn rpo_gemma_trains_a_qwen2_gguf_for_two_steps() {
    let bpe = bpe_support::fixture("rpo-gemma-llama");
    let source = bpe.gguf("qwen2");
    let dir = temp_dir("rpo_gemma_llama");
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_tiny/config.json");
    let mut config = LlamaConfig::from_file(&fixture).unwrap();
    config.vocab_size = source.get_array("tokenizer.ggml.tokens").unwrap().len() as i64;
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Llama::random(&vs.root(), &config).unwrap();
    let parameters: Vec<_> = vs.variables().into_iter().collect();
    let model_path = dir.join("qwen2-bpe.gguf");
    save_gguf(
        &model_path,
        &config,
        &parameters,
        GgmlType::F32,
        TokenizerSource::Gguf(&source),
    )
    .unwrap();

    let output = dir.join("out");
    let saved = dir.join("trained.gguf");
    let run = run_example_ok(&[
        "--gguf",
        model_path.to_str().unwrap(),
        "--rpo-only",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--train-limit",
        "4",
        "--max-length",
        "48",
        "--max-prompt-length",
        "24",
        "--evals-per-epoch",
        "1",
        "--threads",
        "1",
        "--save-gguf",
        saved.to_str().unwrap(),
        "--gguf-type",
        "f32",
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(run.stdout.contains("Qwen2 model"), "{}", run.stdout);
    let log = std::fs::read_to_string(output.join("train_log.jsonl")).unwrap();
    let steps = log.lines().filter(|l| l.contains("\"step\"")).count();
    assert!(steps >= 2, "{log}");
    let file = GgufFile::open(&saved).unwrap();
    let (_vs, trained) = Llama::load(WeightSource::Gguf(&file), &LoadOptions::default()).unwrap();
    assert_eq!(trained.arch(), LlamaArch::Qwen2);
    assert_eq!(file.get_str("tokenizer.ggml.pre").unwrap(), "qwen2");

    // An architecture no family reads is named.
    let bad = run_example(&[
        "--gguf",
        bpe.path("gpt-2.gguf").to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(!bad.success);
    assert!(
        bad.stderr.contains("gpt2") || bad.stderr.contains("architecture"),
        "{}",
        bad.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}
