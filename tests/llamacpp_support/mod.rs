//! Helpers of tests/llamacpp.rs: a real llama.cpp (node-llama-cpp 3.21.1's prebuilt CPU build, installed by
//! `scripts/setup.sh` and linked as `.node-llama-cpp`) run through `scripts/llamacpp_check.mjs`, and the
//! comparisons of its tokenization and greedy generation with a model of this crate. Generic over the model:
//! a tokenizer is a [`Tokenizer`], a model a function from `(input_ids [1, T], mask [1, T])` to logits
//! `[1, T, V]`, so that every family is one more call.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::{Kind, Tensor};
use tch_rpo::data::Tokenizer;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Node.js `scripts/setup.sh` chose (linked as `.node-llama-cpp/node`: the machine's when it is version 20 or
/// newer, else the pinned one from PyPI in the virtual environment); `node` on the PATH when
/// `TCH_RPO_NODE_LLAMA_CPP` points the script at another install.
fn node() -> PathBuf {
    let linked = root().join(".node-llama-cpp/node");
    if std::env::var_os("TCH_RPO_NODE_LLAMA_CPP").is_some() && !linked.exists() {
        PathBuf::from("node")
    } else {
        linked
    }
}

/// Checks that node and the node-llama-cpp install exist; panics saying what to run otherwise.
fn check_install() {
    let entry = root().join(".node-llama-cpp/node_modules/node-llama-cpp/dist/index.js");
    let override_set = std::env::var_os("TCH_RPO_NODE_LLAMA_CPP").is_some();
    assert!(
        override_set || entry.is_file(),
        "{} not found: run `bash scripts/setup.sh` (it installs node-llama-cpp 3.21.1, a prebuilt CPU llama.cpp, \
         and links it as .node-llama-cpp, with the Node.js it uses)",
        entry.display()
    );
    let node = std::process::Command::new(node()).arg("--version").output();
    assert!(
        matches!(&node, Ok(out) if out.status.success()),
        "`{} --version` failed ({node:?}): run `bash scripts/setup.sh`",
        self::node().display()
    );
}

/// Runs `scripts/llamacpp_check.mjs` on `request` (written to `dir/name.json`); returns its JSON output,
/// panicking with llama.cpp's stderr when it fails.
pub fn run(dir: &Path, name: &str, request: &Value) -> Value {
    check_install();
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string(request).unwrap()).unwrap();
    let out = std::process::Command::new(node())
        .arg(root().join("scripts/llamacpp_check.mjs"))
        .arg(&path)
        .output()
        .expect("running node scripts/llamacpp_check.mjs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "llama.cpp (node scripts/llamacpp_check.mjs {}) failed ({}):\n{stderr}",
        path.display(),
        out.status
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("llamacpp_check.mjs printed no JSON ({e}); stderr:\n{stderr}"))
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .expect("id array")
        .iter()
        .map(|v| v.as_i64().expect("id"))
        .collect()
}

/// llama.cpp's tokenizer of `model` (loaded vocabulary-only) on `normalize(text)` against `ours` on `text`,
/// for each of `texts`: the same ids (llama_tokenize without BOS/EOS, special tokens written in the text
/// parsed, as [`Tokenizer::encode`] does), and the same BOS id when one is prepended. `normalize` is the
/// identity but where llama.cpp lacks a normalization step of the tokenizer (see tests/llamacpp.rs).
/// Panics listing every difference. Returns the number of texts compared.
pub fn assert_tokenizes_as_llama_cpp(
    dir: &Path,
    label: &str,
    model: &Path,
    ours: &dyn Tokenizer,
    texts: &[String],
    normalize: &dyn Fn(&str) -> String,
) -> usize {
    let theirs: Vec<String> = texts.iter().map(|t| normalize(t)).collect();
    let out = run(
        dir,
        &format!("tokenize-{label}"),
        &json!({"model": model, "vocab_only": true, "tokenize": theirs}),
    );
    let add_bos = out["add_bos"].as_bool().expect("add_bos");
    let bos = out["bos"].as_i64();
    assert_eq!(
        ours.bos_id(),
        bos.filter(|_| add_bos),
        "{label}: our BOS (Some(id) when prepended) vs llama.cpp's bos {bos:?} with add_bos {add_bos}"
    );
    let got = out["tokenize"].as_array().expect("tokenize");
    assert_eq!(got.len(), texts.len());
    let mut failures = Vec::new();
    for (text, theirs) in texts.iter().zip(got) {
        let theirs = ids(&theirs["special"]);
        let mine = ours.encode(text).expect("encode");
        if mine != theirs {
            failures.push(format!("{text:?}: ours {mine:?}, llama.cpp {theirs:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{label}: {} of {} texts tokenize differently from llama.cpp:\n{}",
        failures.len(),
        texts.len(),
        failures.join("\n")
    );
    texts.len()
}

/// One greedy step of llama.cpp: the argmax token and the `top_k` most likely tokens, best first, with
/// log-probs whose differences are llama.cpp's logit differences.
#[derive(Debug, Clone)]
pub struct Step {
    pub token: i64,
    pub top: Vec<(i64, f64)>,
}

/// llama.cpp's greedy generation of `n` tokens after each prompt (ids as given, no BOS added) with `model`
/// and optionally one LoRA adapter GGUF at `scale`.
pub fn generate(
    dir: &Path,
    label: &str,
    model: &Path,
    lora: Option<(&Path, f64)>,
    prompts: &[Vec<i64>],
    n: usize,
) -> Vec<Vec<Step>> {
    let generate: Vec<Value> = prompts
        .iter()
        .map(|p| json!({"prompt": p, "n": n, "top_k": 8}))
        .collect();
    let mut request = json!({"model": model, "generate": generate});
    if let Some((path, scale)) = lora {
        request["lora"] = json!({"path": path, "scale": scale});
    }
    let out = run(dir, &format!("generate-{label}"), &request);
    out["generate"]
        .as_array()
        .expect("generate")
        .iter()
        .map(|g| {
            let tokens = ids(&g["tokens"]);
            let top = g["top"].as_array().expect("top");
            tokens
                .iter()
                .zip(top)
                .map(|(&token, top)| Step {
                    token,
                    top: top
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|pair| (pair[0].as_i64().unwrap(), pair[1].as_f64().unwrap()))
                        .collect(),
                })
                .collect()
        })
        .collect()
}

/// How our model's logits compare with llama.cpp's along llama.cpp's greedy tokens.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Steps compared.
    pub steps: usize,
    /// Largest |ours − llama.cpp's| of `logit(t) − logit(top)` over llama.cpp's top-k tokens `t` of every
    /// step (`top`: llama.cpp's argmax). Differences of logits: no normalization enters.
    pub max_gap_diff: f64,
    /// Steps where our argmax `a` differs from llama.cpp's token `b`: `(step, our logit(a) − logit(b), a is
    /// among llama.cpp's top-k)`.
    pub divergences: Vec<(usize, f64, bool)>,
}

/// Our model (`forward`: `(ids [1, T], mask [1, T]) → logits [1, T, V]`) teacher-forced on `prompt` followed
/// by llama.cpp's generated tokens, compared step by step with llama.cpp's `steps`.
pub fn compare(forward: &dyn Fn(&Tensor, &Tensor) -> Tensor, prompt: &[i64], steps: &[Step]) -> Comparison {
    let mut ids = prompt.to_vec();
    ids.extend(steps.iter().take(steps.len() - 1).map(|s| s.token));
    let input = Tensor::from_slice(&ids).view([1, -1]);
    let logits = tch::no_grad(|| forward(&input, &input.ones_like()));
    let logits = logits
        .get(0)
        .narrow(0, prompt.len() as i64 - 1, steps.len() as i64)
        .to_kind(Kind::Double);
    let mut max_gap_diff = 0f64;
    let mut divergences = Vec::new();
    for (s, step) in steps.iter().enumerate() {
        let row = logits.get(s as i64);
        let (top, top_theirs) = step.top[0];
        assert_eq!(top, step.token, "llama.cpp's token is its first candidate");
        let top_mine = row.double_value(&[top]);
        for &(token, theirs) in &step.top {
            let mine = row.double_value(&[token]) - top_mine;
            max_gap_diff = max_gap_diff.max((mine - (theirs - top_theirs)).abs());
        }
        let argmax = row.argmax(0, false).int64_value(&[]);
        if argmax != step.token {
            let gap = row.double_value(&[argmax]) - top_mine;
            divergences.push((s, gap, step.top.iter().any(|&(t, _)| t == argmax)));
        }
    }
    Comparison {
        steps: steps.len(),
        max_gap_diff,
        divergences,
    }
}

/// Asserts `comparison` within `tolerance`, a bound on the difference of each logit gap `logit(t) −
/// logit(top)`. Where the greedy choices differ (our `a`, llama.cpp's `b`), `a` must be among llama.cpp's
/// top-k: then our gap `logit(a) − logit(b)` ≥ 0 and llama.cpp's ≤ 0 differ by at most `tolerance`, so the
/// bound on the gaps already makes such a divergence a near-tie of at most `tolerance`.
pub fn assert_within(label: &str, comparison: &Comparison, tolerance: f64) {
    eprintln!("{label}: {comparison:?} (tolerance {tolerance:e})");
    assert!(
        comparison.max_gap_diff <= tolerance,
        "{label}: max |Δ(logit(t) − logit(top))| {:e} over llama.cpp's top tokens > {tolerance:e} ({comparison:?})",
        comparison.max_gap_diff
    );
    for &(step, gap, in_top) in &comparison.divergences {
        assert!(
            in_top,
            "{label}: at step {step} our argmax (ahead by {gap:e}) is not among llama.cpp's top tokens ({comparison:?})"
        );
    }
}

/// The path of a file in `dir`.
pub fn path_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
