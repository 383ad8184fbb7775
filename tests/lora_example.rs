//! The `rpo_gemma` example's LoRA flags: a tiny run with `--lora-r` trains adapters in the RPO stage
//! (reference = adapters off), writes the PEFT folder, the llama.cpp adapter GGUF and the merged model;
//! bad LoRA flags end the run with the crate's error.
mod example_support;

use example_support::{read_metrics, run_example, run_example_ok, temp_dir};
use tch_rpo::gguf::GgufFile;

fn tiny(output: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--epochs",
        "1",
        "--sft-epochs",
        "1",
        "--train-limit",
        "16",
        "--heldout-limit",
        "8",
        "--evals-per-epoch",
        "1",
        "--batch-size",
        "8",
        "--rpo-only",
        "--output",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(output.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn lora_run_writes_adapters_and_the_merged_model() {
    let output = temp_dir("rpo_gemma_lora");
    let (adapter, gguf, merged) = (
        output.join("adapter"),
        output.join("adapter.gguf"),
        output.join("merged"),
    );
    let paths = [&adapter, &gguf, &merged].map(|p| p.display().to_string());
    let args = tiny(
        &output,
        &[
            "--lora-r",
            "4",
            "--lora-alpha",
            "8",
            "--lora-targets",
            "q_proj,v_proj",
            "--lr",
            "1e-2",
            "--save-adapter",
            &paths[0],
            "--save-gguf-adapter",
            &paths[1],
            "--save",
            &paths[2],
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_example_ok(&args);
    assert!(
        run.stdout.contains("saved the LoRA adapters as a PEFT folder"),
        "{}",
        run.stdout
    );
    let rows = read_metrics(&output);
    assert!(rows.iter().any(|r| r.method == "sft") && rows.iter().any(|r| r.method == "rpo"));
    assert!(
        rows.iter().all(|r| r.values[..6].iter().all(|x| x.is_finite())),
        "{rows:?}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        (config["r"].as_i64(), config["lora_alpha"].as_f64()),
        (Some(4), Some(8.0))
    );
    // The default model: 2 layers, q_proj and v_proj adapted.
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 4);
    let file = GgufFile::open(&gguf).unwrap();
    assert_eq!(file.get_str("general.type").unwrap(), "adapter");
    assert_eq!(file.get_str("general.architecture").unwrap(), "gemma2");
    assert_eq!(file.tensors().len(), 8);
    assert!(merged.join("model.safetensors").is_file() && merged.join("config.json").is_file());
    let _ = std::fs::remove_dir_all(output);
}

#[test]
fn bad_lora_flags_are_errors() {
    let output = temp_dir("rpo_gemma_lora_bad");
    for (extra, needle) in [
        (vec!["--lora-r", "0"], "`r` = 0"),
        (vec!["--lora-r", "4", "--lora-alpha=-1"], "lora_alpha"),
        (vec!["--lora-r", "4", "--lora-dropout", "1"], "lora_dropout"),
        (
            vec!["--lora-r", "4", "--lora-targets", "q_proj,lm_head"],
            "lm_head",
        ),
        (vec!["--lora-alpha", "8"], "--lora-r"),
        (vec!["--base-dtype", "keep"], "it needs --lora-r"),
        (vec!["--base-dtype", "f32"], "it needs --lora-r"),
        (vec!["--lora-r", "4", "--base-dtype", "keep"], "it needs --gguf"),
    ] {
        let args = tiny(&output, &extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = run_example(&args);
        assert!(!run.success, "{extra:?} succeeded");
        assert!(run.stderr.contains(needle), "{extra:?}: {}", run.stderr);
    }
    let _ = std::fs::remove_dir_all(output);
}
