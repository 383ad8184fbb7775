//! GGUF files in a real llama.cpp: node-llama-cpp 3.21.1's prebuilt CPU build (installed by
//! `scripts/setup.sh`), driven by `scripts/llamacpp_check.mjs` (tests/llamacpp_support).
//!
//! - Gemma 3 270M (the GGUF of `scripts/get_gemma3_gguf.sh`): llama.cpp's tokenizer gives our ids on a few
//!   hundred strings; its greedy generation agrees with ours, and so do its log-probs, on the original file
//!   and on our F32 and Q8_0 exports; a LoRA adapter GGUF of `save_gguf_adapter` applied by llama.cpp on our
//!   F32 export gives our adapted model's log-probs, as does our merged export.
//! - The Llama family's byte-level BPE tokenizers (`scripts/make_bpe_fixture.py`): llama.cpp's ids equal
//!   ours. (The fixture files hold a tokenizer and no weights; llama.cpp loads them vocabulary-only once
//!   the hyper-parameters it reads first are added.)
//! - Random Llama 3 (`llama`: permuted q / k rows), Qwen2 and Qwen3 models exported as F32 GGUF: llama.cpp
//!   tokenizes as we do and gives our log-probs, and a LoRA adapter GGUF of theirs (the `llama` file's q / k
//!   `lora_b` rows permuted the same way) applied by llama.cpp gives our adapted model's log-probs.
//!
//! Comparisons are teacher-forced on llama.cpp's greedy tokens: at each of 16 steps, the logit gaps
//! `logit(t) − logit(top)` of llama.cpp's 8 most likely tokens against ours, and where the two argmaxes
//! differ, whether ours is among llama.cpp's 8 (see [`llamacpp_support::assert_within`]). Without node, node-llama-cpp or the Gemma GGUF these tests
//! FAIL saying what to run.
mod bpe_support;
mod export_support;
mod llamacpp_support;
mod lora_support;

use export_support::{gemma3_gguf_path, TempDir};
use llamacpp_support::{assert_tokenizes_as_llama_cpp, assert_within, compare, generate, Comparison, Step};
use tch::Tensor;
use tch_rpo::data::Tokenizer;
use tch_rpo::gguf::{GgmlType, GgufFile, GgufValue};
use tch_rpo::lora::{LoraAdapters, LoraConfig, LoraPolicy};
use tch_rpo::models::gemma::export::{save_gguf, TokenizerSource};
use tch_rpo::models::gemma::{Gemma, GemmaPolicy, LoadOptions, WeightSource};
use tch_rpo::models::tokenizer::{BpeTokenizer, GgufTokenizer};
use tch_rpo::train::PolicyModel;

/// Tokens generated (and compared) per prompt.
const STEPS: usize = 16;

/// Standard deviation of the random LoRA `B` values (with PEFT's `A` init, r = 8, alpha = 16): enough to
/// move the log-probs by more than 10× the tolerance (checked).
const LORA_B_SCALE: f64 = 0.02;

/// Bound on |Δ(logit(t) − logit(top))| between llama.cpp and us on an F32 file: 32·u_f16 = 2^-6. Both compute in f32, but
/// llama.cpp's CPU GELU rounds its input to f16 and reads the result from an f16 table
/// (`ggml_table_gelu_f16`, in the shipped libggml-cpu): a relative error of up to two f16 roundings (u_f16 =
/// 2^-11) in every MLP activation of the 18 layers, against which f32's own roundings (2^-24) are
/// negligible. The factor 32 is not derived (a forward bound through 18 layers is not practical); observed
/// ≤ 0.0048 on a 2-core x86 CPU.
const F32_TOLERANCE: f64 = 1.0 / 64.0;

/// Bound on |Δ(logit(t) − logit(top))| between llama.cpp and us on a Q4_K / Q6_K / Q8_0 file, where llama.cpp also
/// quantizes the activations to 8 bits per block (Q8_K / Q8_0: a step of 1/127 of the block's largest
/// magnitude) before each matrix product, while we dequantize the weights and compute in f32. Empirical,
/// not derived: observed ≤ 0.72 over llama.cpp's 8 most likely tokens at 16 steps of the two prompts.
const QUANTIZED_TOLERANCE: f64 = 1.0;

/// The texts of the tokenizer comparisons: the few hundred strings of `scripts/make_bpe_fixture.py`
/// (spaces, newlines, digits, CJK, emoji, accents, code, contractions) and Gemma's turn markers.
fn texts() -> Vec<String> {
    let fx = bpe_support::fixture("llamacpp");
    let mut texts: Vec<String> = fx.expected["families"]["llama-bpe"]["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["text"].as_str().expect("text").to_string())
        .collect();
    texts.extend(export_support::TEXTS.iter().map(|t| t.to_string()));
    texts.extend(
        [
            "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
            "<bos>text after a written BOS<eos>",
            "<start_of_image> not an image <end_of_image>",
            "<start_of_turn><start_of_turn>",
            "no marker: <start_of_turn without its end",
        ]
        .map(String::from),
    );
    texts
}

/// The prompts of the generation comparisons, BOS first: plain text and a chat turn.
fn prompts(tokenizer: &dyn Tokenizer) -> Vec<Vec<i64>> {
    [
        "The capital of France is",
        "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n",
    ]
    .iter()
    .map(|text| {
        let mut ids: Vec<i64> = tokenizer.bos_id().into_iter().collect();
        ids.extend(tokenizer.encode(text).expect("encode"));
        ids
    })
    .collect()
}

/// llama.cpp's generations of `model` (optionally with a LoRA adapter) compared with `forward`.
fn run_and_compare(
    dir: &TempDir,
    label: &str,
    model: &std::path::Path,
    lora: Option<(&std::path::Path, f64)>,
    prompts: &[Vec<i64>],
    forward: &dyn Fn(&Tensor, &Tensor) -> Tensor,
) -> Vec<Comparison> {
    let steps = generate(dir.path("").as_path(), label, model, lora, prompts, STEPS);
    prompts
        .iter()
        .zip(&steps)
        .map(|(prompt, steps)| compare(forward, prompt, steps))
        .collect()
}

/// llama.cpp's generations with a LoRA adapter (`steps`, one per prompt) give our adapted model's log-probs
/// (`adapted`, with `adapters` on), and the adapter changes the model: with the adapters off ours is far
/// from llama.cpp's.
fn assert_adapter_applied(
    label: &str,
    prompts: &[Vec<i64>],
    steps: &[Vec<Step>],
    adapters: &LoraAdapters,
    adapted: &dyn Fn(&Tensor, &Tensor) -> Tensor,
) {
    for (i, (prompt, steps)) in prompts.iter().zip(steps).enumerate() {
        assert_within(
            &format!("{label}, prompt {i}"),
            &compare(adapted, prompt, steps),
            F32_TOLERANCE,
        );
        adapters.set_enabled(false);
        let off = compare(adapted, prompt, steps);
        adapters.set_enabled(true);
        eprintln!("{label}, prompt {i}: llama.cpp with the adapter vs our base: {off:?}");
        assert!(
            off.max_gap_diff > 10.0 * F32_TOLERANCE,
            "{label}, prompt {i}: llama.cpp with the adapter is within {:e} of our base without it: the \
             adapter had no effect",
            off.max_gap_diff
        );
    }
}

fn check_all(label: &str, comparisons: &[Comparison], tolerance: f64) {
    for (i, c) in comparisons.iter().enumerate() {
        assert_within(&format!("{label}, prompt {i}"), c, tolerance);
    }
}

#[test]
fn gemma3_tokenizes_as_llama_cpp() {
    let dir = TempDir::new("llamacpp-tok");
    let path = gemma3_gguf_path();
    let file = GgufFile::open(&path).expect("open GGUF");
    let tokenizer = GgufTokenizer::from_gguf(&file).expect("tokenizer");
    let texts = texts();
    let n = assert_tokenizes_as_llama_cpp(
        dir.path("").as_path(),
        "gemma3",
        &path,
        &tokenizer,
        &texts,
        &|t| t.to_string(),
    );
    assert!(n >= 300, "{n} texts");
}

/// Seconds since `start`, for the log.
fn secs(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// One test for the weights (they are loaded once, 1 GB in f32): the original file, our F32 and Q8_0
/// exports, a LoRA adapter GGUF on our F32 export and our merged export, each in llama.cpp against us.
#[test]
fn gemma3_generates_as_llama_cpp() {
    let start = std::time::Instant::now();
    let dir = TempDir::new("llamacpp-gen");
    let path = gemma3_gguf_path();
    let file = GgufFile::open(&path).expect("open GGUF");
    let tokenizer = GgufTokenizer::from_gguf(&file).expect("tokenizer");
    let prompts = prompts(&tokenizer);
    let (vs, model) = Gemma::load(WeightSource::Gguf(&file), &LoadOptions::default()).expect("load GGUF");
    let base = GemmaPolicy::new(vs, model);
    eprintln!("[{:.1}s] loaded", secs(start));

    // The original Q4_K_M / Q6_K file: llama.cpp quantizes the activations to 8 bits for these matrices.
    let original = {
        let forward = |ids: &Tensor, mask: &Tensor| base.forward(ids, mask).expect("forward");
        run_and_compare(&dir, "original", &path, None, &prompts, &forward)
    };
    check_all("Q4_K_M original", &original, QUANTIZED_TOLERANCE);
    eprintln!("[{:.1}s] original", secs(start));

    // Our F32 export holds our model's f32 values exactly (the dequantized weights), so our model is the
    // reference as it stands; it is also llama.cpp's base for the adapter below.
    let f32_gguf = dir.path("export-F32.gguf");
    base.save_gguf(&f32_gguf, GgmlType::F32, TokenizerSource::Gguf(&file))
        .expect("F32 export");
    let comparisons = {
        let forward = |ids: &Tensor, mask: &Tensor| base.forward(ids, mask).expect("forward");
        run_and_compare(&dir, "export-F32", &f32_gguf, None, &prompts, &forward)
    };
    check_all("F32 export", &comparisons, F32_TOLERANCE);
    eprintln!("[{:.1}s] F32 export", secs(start));

    // Our Q8_0 export against our model reloaded from it (the same Q8_0 weights, dequantized).
    let q8_gguf = dir.path("export-Q8_0.gguf");
    base.save_gguf(&q8_gguf, GgmlType::Q8_0, TokenizerSource::Gguf(&file))
        .expect("Q8_0 export");
    {
        let exported = GgufFile::open(&q8_gguf).expect("open export");
        let (_vs, reloaded) =
            Gemma::load(WeightSource::Gguf(&exported), &LoadOptions::default()).expect("load export");
        let forward = |ids: &Tensor, mask: &Tensor| reloaded.forward(ids, mask).expect("forward");
        let comparisons = run_and_compare(&dir, "export-Q8_0", &q8_gguf, None, &prompts, &forward);
        check_all("Q8_0 export", &comparisons, QUANTIZED_TOLERANCE);
    }
    std::fs::remove_file(&q8_gguf).expect("remove");
    eprintln!("[{:.1}s] Q8_0 export", secs(start));

    // A LoRA adapter GGUF (random nonzero B) applied by llama.cpp on the F32 export.
    let policy =
        lora_support::seeded(40, || LoraPolicy::new(base, &LoraConfig::new(8, 16.0))).expect("adapters");
    lora_support::randomize_b(policy.adapters(), 41, LORA_B_SCALE);
    let adapter = dir.path("adapter.gguf");
    policy
        .save_gguf_adapter(&adapter, GgmlType::F32)
        .expect("adapter GGUF");
    let adapted = |ids: &Tensor, mask: &Tensor| policy.forward(ids, mask).expect("forward");
    let steps = generate(
        dir.path("").as_path(),
        "lora",
        &f32_gguf,
        Some((&adapter, 1.0)),
        &prompts,
        STEPS,
    );
    assert_adapter_applied("LoRA adapter GGUF", &prompts, &steps, policy.adapters(), &adapted);
    std::fs::remove_file(&f32_gguf).expect("remove");
    eprintln!("[{:.1}s] LoRA adapter", secs(start));

    // The merged model through the GGUF writer gives the same log-probs in llama.cpp.
    let merged_gguf = dir.path("merged-F32.gguf");
    {
        let merged = policy.merged_parameters().expect("merge");
        save_gguf(
            &merged_gguf,
            policy.base().model().config(),
            &merged,
            GgmlType::F32,
            TokenizerSource::Gguf(&file),
        )
        .expect("export merged");
    }
    let comparisons = run_and_compare(&dir, "merged", &merged_gguf, None, &prompts, &adapted);
    check_all("merged F32 export", &comparisons, F32_TOLERANCE);
    eprintln!("[{:.1}s] merged", secs(start));
}

/// Hyper-parameters llama.cpp reads before the vocabulary, even vocabulary-only (a tokenizer-only GGUF
/// fails with "key not found in model: <arch>.context_length" without them). Their values do not matter to
/// the tokenizer.
fn vocab_only_keys(arch: &str) -> Vec<(String, GgufValue)> {
    [
        ("context_length", GgufValue::U32(256)),
        ("embedding_length", GgufValue::U32(64)),
        ("block_count", GgufValue::U32(1)),
        ("feed_forward_length", GgufValue::U32(128)),
        ("attention.head_count", GgufValue::U32(4)),
        ("attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5)),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{arch}.{k}"), v))
    .collect()
}

/// What llama.cpp is given for `text`: Qwen2's tokenizer normalizes to NFC first (tokenizer.json's
/// `normalizer`; transformers and we apply it), which llama.cpp does not do (its `qwen2` pre-tokenizer has
/// no normalizer: `e` + U+0301 stays two code points, three byte tokens, where we give the one token of
/// `é`). So for `qwen2` the fixture's only decomposed sequence, `e` + U+0301, is composed before llama.cpp
/// sees it (and no other combining mark may be left).
fn llama_cpp_input(family: &str, text: &str) -> String {
    if family != "qwen2" {
        return text.to_string();
    }
    let composed = text.replace("e\u{301}", "é");
    assert!(
        !composed.chars().any(|c| ('\u{300}'..='\u{36f}').contains(&c)),
        "{text:?}: a combining mark other than e + U+0301; compose it here too"
    );
    composed
}

#[test]
fn bpe_tokenizers_tokenize_as_llama_cpp() {
    let fx = bpe_support::fixture("llamacpp");
    let dir = TempDir::new("llamacpp-bpe");
    for family in ["llama-bpe", "qwen2", "smollm", "gpt-2"] {
        let file = fx.gguf(family);
        let arch = file
            .get_str("general.architecture")
            .expect("architecture")
            .to_string();
        let keys = vocab_only_keys(&arch);
        let changes: Vec<(&str, Option<GgufValue>)> =
            keys.iter().map(|(k, v)| (k.as_str(), Some(v.clone()))).collect();
        let path = dir.path(&format!("{family}.gguf"));
        let loadable = bpe_support::mutated(&file, &path, &changes);
        let tokenizer = BpeTokenizer::from_gguf(&loadable).expect("tokenizer");
        let texts: Vec<String> = fx.expected["families"][family]["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| c["text"].as_str().expect("text").to_string())
            .collect();
        let n =
            assert_tokenizes_as_llama_cpp(dir.path("").as_path(), family, &path, &tokenizer, &texts, &|t| {
                llama_cpp_input(family, t)
            });
        assert!(n >= 300, "{family}: {n} texts");
    }
}

/// Standard deviation of the random weights of the Llama-family models below: large enough that their logits
/// spread over several units (checked: llama.cpp's top-8 logit gaps average more than 10× the bound), so that
/// a wrong layout (an unpermuted q / k, a missing bias or q / k norm) shows far above the bound.
const LLAMA_INIT: f64 = 0.2;

/// The Llama family exported by `llama::export::save_gguf` (F32, with a byte-level BPE tokenizer and the
/// family's switches: Llama 3's permuted q / k and llama3 RoPE scaling, Qwen2's q / k / v biases, Qwen3's
/// per-head q / k norms) loads in llama.cpp, which tokenizes as we do and whose greedy generation and
/// log-probs agree with ours within the F32 bound. (SiLU families: llama.cpp computes SiLU in f32, so the
/// bound, set by Gemma's f16 GELU table, is loose here; the observed differences are printed.) Mistral is
/// written as `llama` without its window (the export refuses a window shorter than the context).
#[test]
fn llama_family_exports_run_in_llama_cpp() {
    use tch_rpo::models::decoder::{LoadOptions as DecoderLoad, WeightSource as Source};
    use tch_rpo::models::llama::export::save_gguf as save_llama_gguf;
    use tch_rpo::models::llama::{Llama, LlamaConfig, LlamaPolicy};

    let fx = bpe_support::fixture("llamacpp");
    let dir = TempDir::new("llamacpp-llama");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (family, tokenizer_family) in [("llama", "llama-bpe"), ("qwen2", "qwen2"), ("qwen3", "qwen2")] {
        let source = fx.gguf(tokenizer_family);
        let fixture = root.join(format!("tests/fixtures/{family}_tiny/config.json"));
        let mut config = LlamaConfig::from_file(&fixture).expect("fixture config");
        config.vocab_size = source.get_array("tokenizer.ggml.tokens").expect("tokens").len() as i64;
        config.initializer_range = LLAMA_INIT;
        tch::manual_seed(11);
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let _random = Llama::random(&vs.root(), &config).expect("random model");
        let parameters: Vec<_> = vs.variables().into_iter().collect();
        let path = dir.path(&format!("{family}-F32.gguf"));
        save_llama_gguf(
            &path,
            &config,
            &parameters,
            GgmlType::F32,
            TokenizerSource::Gguf(&source),
        )
        .expect("export");

        let file = GgufFile::open(&path).expect("open export");
        let tokenizer = BpeTokenizer::from_gguf(&file).expect("tokenizer");
        let texts: Vec<String> = fx.expected["families"][tokenizer_family]["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| c["text"].as_str().expect("text").to_string())
            .collect();
        let n =
            assert_tokenizes_as_llama_cpp(dir.path("").as_path(), family, &path, &tokenizer, &texts, &|t| {
                llama_cpp_input(tokenizer_family, t)
            });
        assert!(n >= 300, "{family}: {n} texts");

        let (_vs, model) = Llama::load(Source::Gguf(&file), &DecoderLoad::default()).expect("load export");
        let prompts: Vec<Vec<i64>> = ["The capital of France is", "def add(a, b):\n    return"]
            .iter()
            .map(|text| {
                let mut ids: Vec<i64> = tokenizer.bos_id().into_iter().collect();
                ids.extend(tokenizer.encode(text).expect("encode"));
                ids
            })
            .collect();
        let forward = |ids: &Tensor, mask: &Tensor| model.forward(ids, mask).expect("forward");
        let steps = generate(dir.path("").as_path(), family, &path, None, &prompts, STEPS);
        for (i, (prompt, steps)) in prompts.iter().zip(&steps).enumerate() {
            let spread: f64 = steps
                .iter()
                .map(|s| s.top[0].1 - s.top.iter().map(|t| t.1).fold(f64::INFINITY, f64::min))
                .sum::<f64>()
                / steps.len() as f64;
            assert!(
                spread > 10.0 * F32_TOLERANCE,
                "{family}, prompt {i}: llama.cpp's top-8 logit spread averages {spread}, too flat to test"
            );
            assert_within(
                &format!("{family} F32 export, prompt {i}"),
                &compare(&forward, prompt, steps),
                F32_TOLERANCE,
            );
        }

        // A LoRA adapter GGUF (random nonzero B) on the F32 export: llama.cpp applies it as our adapted
        // model gives (for `llama` files the q / k `lora_b` rows are permuted per head like the base rows).
        let (vs, model) = Llama::load(Source::Gguf(&file), &DecoderLoad::default()).expect("load export");
        let policy = lora_support::seeded(42, || {
            LoraPolicy::new(LlamaPolicy::new(vs, model), &LoraConfig::new(8, 16.0))
        })
        .expect("adapters");
        lora_support::randomize_b(policy.adapters(), 43, LORA_B_SCALE);
        let adapter = dir.path(&format!("{family}-adapter.gguf"));
        policy
            .save_gguf_adapter(&adapter, GgmlType::F32)
            .expect("adapter GGUF");
        let adapted = |ids: &Tensor, mask: &Tensor| policy.forward(ids, mask).expect("forward");
        let label = format!("{family}-lora");
        let steps = generate(
            dir.path("").as_path(),
            &label,
            &path,
            Some((&adapter, 1.0)),
            &prompts,
            STEPS,
        );
        let label = format!("{family} LoRA adapter GGUF");
        assert_adapter_applied(&label, &prompts, &steps, policy.adapters(), &adapted);
    }
}
