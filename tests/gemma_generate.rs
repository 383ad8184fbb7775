//! Generation with `tch_rpo::models::gemma::generate`: the KV cache gives what recomputing the whole
//! sequence gives (Gemma 1, Gemma 2 with a sliding window of 4, a Gemma 3 with a window of 3 and its own
//! local RoPE base, all exceeded), a left-padded batch gives what each prompt alone gives, greedy equals a
//! plain argmax loop over `Gemma::forward`, and sampling is reproducible with a seed and only draws
//! tokens that top-k / top-p allow (checked against the raw logits in plain f64). Greedy output against
//! `transformers` on Gemma 3 270M is in `tests/gemma3_gguf.rs`.

use std::path::Path;
use std::sync::Mutex;

use tch::{nn, Device, Kind, Tensor};
use tch_rpo::models::gemma::{
    generate, greedy_decode, Gemma, GemmaConfig, Generation, GenerationConfig, KvCache, LoadOptions,
    Sampling, WeightSource,
};
use tch_rpo::Error;
use tch_rpo::InputError;

/// Held while a test initializes a model from libtorch's global generator.
static RNG: Mutex<()> = Mutex::new(());

fn fixture(name: &str) -> Gemma {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    Gemma::load(
        WeightSource::HfDir(&dir),
        &LoadOptions::new(Device::Cpu, Kind::Float),
    )
    .unwrap()
    .1
}

/// A random Gemma 3 (6 layers: 5 sliding with window 3, the 6th global; local θ 10⁴, global 10⁶).
fn small_gemma3() -> (nn::VarStore, Gemma) {
    let text = r#"{"model_type": "gemma3_text", "vocab_size": 60, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 6, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 16, "sliding_window": 3, "initializer_range": 0.5}"#;
    let config = GemmaConfig::from_json_str(text, Path::new("inline")).unwrap();
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gemma::random(&vs.root(), &config).unwrap();
    (vs, model)
}

fn prompts() -> Vec<Vec<i64>> {
    vec![
        vec![2, 17, 5],
        vec![2, 40, 41, 42, 43, 44, 45],
        vec![2, 59],
        vec![2, 3, 4, 5, 6],
    ]
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Greedy with the logits of every step.
fn greedy_with_logits(max_new: usize, use_cache: bool) -> GenerationConfig {
    GenerationConfig {
        use_cache,
        keep_logits: true,
        ..GenerationConfig::greedy(max_new, vec![], 0)
    }
}

/// Reference greedy decoding: one prompt at a time, no padding, the full `Gemma::forward` each step.
fn naive_greedy(model: &Gemma, prompt: &[i64], max_new: usize) -> (Vec<i64>, Vec<Tensor>) {
    let mut ids = prompt.to_vec();
    let (mut out, mut logits) = (Vec::new(), Vec::new());
    for _ in 0..max_new {
        let input = Tensor::from_slice(&ids).view([1, ids.len() as i64]);
        let all = tch::no_grad(|| model.forward(&input, &input.ones_like())).unwrap();
        let last = all.get(0).get(ids.len() as i64 - 1);
        let next = last.argmax(0, false).int64_value(&[]);
        logits.push(last);
        out.push(next);
        ids.push(next);
    }
    (out, logits)
}

fn check_cache_and_padding(model: &Gemma, max_new: usize) {
    let prompts = prompts();
    let cached = generate(model, &prompts, &greedy_with_logits(max_new, true)).unwrap();
    let recomputed = generate(model, &prompts, &greedy_with_logits(max_new, false)).unwrap();
    assert_eq!(cached.tokens, recomputed.tokens);
    assert_eq!(cached.step_logits.len(), max_new);
    for (a, b) in cached.step_logits.iter().zip(&recomputed.step_logits) {
        assert!(
            max_abs_diff(a, b) < 1e-4,
            "cache vs recomputation: {}",
            max_abs_diff(a, b)
        );
    }
    for (r, prompt) in prompts.iter().enumerate() {
        assert_eq!(cached.tokens[r].len(), max_new);
        // Alone (no padding) through generate, and through the plain forward loop.
        let alone = generate(
            model,
            std::slice::from_ref(prompt),
            &greedy_with_logits(max_new, true),
        )
        .unwrap();
        assert_eq!(alone.tokens[0], cached.tokens[r], "prompt {prompt:?}");
        let (naive, naive_logits) = naive_greedy(model, prompt, max_new);
        assert_eq!(naive, cached.tokens[r], "prompt {prompt:?}");
        for (step, naive_step) in naive_logits.iter().enumerate() {
            let batched = cached.step_logits[step].get(r as i64);
            let diff = max_abs_diff(&batched, naive_step);
            assert!(diff < 1e-4, "prompt {r}, step {step}: batched vs alone {diff}");
            assert!(max_abs_diff(&alone.step_logits[step].get(0), naive_step) < 1e-4);
        }
    }
}

#[test]
fn cache_and_left_padding_match_recomputation_gemma1() {
    check_cache_and_padding(&fixture("gemma_tiny"), 8);
}

#[test]
fn cache_and_left_padding_match_recomputation_gemma2_sliding_window() {
    // Window 4, prompts up to 7 tokens + 10 new: every sliding layer drops old keys.
    check_cache_and_padding(&fixture("gemma2_tiny"), 10);
}

#[test]
fn cache_and_left_padding_match_recomputation_gemma3_sliding_window() {
    let (_vs, model) = small_gemma3();
    check_cache_and_padding(&model, 10);
}

#[test]
fn sliding_layers_keep_only_their_window() {
    let (_vs, model) = small_gemma3();
    let ids = Tensor::from_slice(&[2i64, 5, 6, 7, 8, 9, 10]).view([1, 7]);
    let mask = ids.ones_like();
    let positions = Tensor::arange(7, (Kind::Int64, Device::Cpu)).view([1, 7]);
    let mut cache = KvCache::new(&model);
    assert!(cache.is_empty());
    let hidden = tch::no_grad(|| model.forward_hidden_at(&ids, &mask, &positions, Some(&mut cache))).unwrap();
    assert_eq!(cache.len(), 7);
    // Window 3: sliding layers keep 2 slots; layer 5 is global.
    assert_eq!(cache.layer_lengths(), vec![2, 2, 2, 2, 2, 7]);
    // The same hidden states as the plain forward pass.
    let plain = tch::no_grad(|| model.forward_hidden(&ids, &mask)).unwrap();
    assert!(max_abs_diff(&hidden, &plain) < 1e-5);
    // A mask that does not cover cached + new slots is an error naming it.
    let next = Tensor::from_slice(&[11i64]).view([1, 1]);
    let wrong =
        tch::no_grad(|| model.forward_hidden_at(&next, &mask, &positions.narrow(1, 0, 1), Some(&mut cache)));
    assert!(
        matches!(
            wrong,
            Err(Error::Input(InputError::Shape {
                arg: "attention_mask",
                ..
            }))
        ),
        "{wrong:?}"
    );
}

fn sample(
    model: &Gemma,
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
    seed: u64,
) -> Generation {
    let config = GenerationConfig {
        sampling: Sampling::sample(temperature, top_k, top_p, seed).unwrap(),
        keep_logits: true,
        ..GenerationConfig::greedy(12, vec![], 0)
    };
    generate(model, &prompts(), &config).unwrap()
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let model = fixture("gemma2_tiny");
    let a = sample(&model, 1.0, None, None, 7);
    let b = sample(&model, 1.0, None, None, 7);
    assert_eq!(a.tokens, b.tokens);
    let c = sample(&model, 1.0, None, None, 8);
    assert_ne!(a.tokens, c.tokens, "another seed draws other tokens");
    // Sampling differs from greedy here (soft-capped logits in [-3, 3] are far from one-hot).
    let greedy = generate(&model, &prompts(), &GenerationConfig::greedy(12, vec![], 0)).unwrap();
    assert_ne!(a.tokens, greedy.tokens);
    // top_k = 1 is greedy.
    assert_eq!(sample(&model, 1.0, Some(1), None, 3).tokens, greedy.tokens);
}

/// The raw logits of one row as f64.
fn row_of(step_logits: &Tensor, row: usize) -> Vec<f64> {
    Vec::<f64>::try_from(step_logits.get(row as i64).to_kind(Kind::Double)).unwrap()
}

#[test]
fn sampling_respects_top_k_and_top_p() {
    let model = fixture("gemma2_tiny");
    for seed in 0..4 {
        // top-k: every drawn token is among the k largest raw logits.
        let k = 5;
        let out = sample(&model, 1.0, Some(k), None, seed);
        for (r, tokens) in out.tokens.iter().enumerate() {
            for (step, &token) in tokens.iter().enumerate() {
                let logits = row_of(&out.step_logits[step], r);
                let larger = logits.iter().filter(|&&l| l > logits[token as usize]).count();
                assert!(
                    larger < k,
                    "row {r} step {step}: token {token} has {larger} larger logits"
                );
            }
        }
        // top-p (with temperature 0.7): the tokens more likely than the drawn one hold less than p.
        let (p, temperature) = (0.6, 0.7);
        let out = sample(&model, temperature, None, Some(p), seed);
        for (r, tokens) in out.tokens.iter().enumerate() {
            for (step, &token) in tokens.iter().enumerate() {
                let logits = row_of(&out.step_logits[step], r);
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = logits.iter().map(|l| ((l - max) / temperature).exp()).collect();
                let total: f64 = weights.iter().sum();
                let own = weights[token as usize];
                let before: f64 = weights.iter().filter(|&&w| w > own).sum::<f64>() / total;
                assert!(
                    before < p + 1e-6,
                    "row {r} step {step}: mass before token {token} is {before}"
                );
            }
        }
    }
}

#[test]
fn stop_tokens_and_limits() {
    let model = fixture("gemma2_tiny");
    let greedy = generate(&model, &prompts(), &GenerationConfig::greedy(6, vec![], 0)).unwrap();
    assert!(greedy.stopped.iter().all(|s| !s));
    // Stopping at row 0's third token: row 0 ends there (stop token excluded); the others stop at their
    // first occurrence of it or run to the limit.
    let stop = greedy.tokens[0][2];
    let stopped = generate(&model, &prompts(), &GenerationConfig::greedy(6, vec![stop], 0)).unwrap();
    for (r, tokens) in greedy.tokens.iter().enumerate() {
        let expected: Vec<i64> = tokens.iter().take_while(|&&t| t != stop).cloned().collect();
        assert_eq!(stopped.tokens[r], expected, "row {r}");
        assert_eq!(stopped.stopped[r], tokens.contains(&stop), "row {r}");
    }
    assert!(stopped.stopped[0] && stopped.tokens[0].len() <= 2);
    // greedy_decode is the same as generate's greedy.
    assert_eq!(
        greedy_decode(&model, &prompts(), 6, stop, 0, Device::Cpu).unwrap(),
        stopped.tokens
    );
    let none = generate(&model, &prompts(), &GenerationConfig::greedy(0, vec![], 0)).unwrap();
    assert!(none.tokens.iter().all(Vec::is_empty));
    assert!(generate(&model, &[], &GenerationConfig::greedy(3, vec![], 0))
        .unwrap()
        .tokens
        .is_empty());
}

#[test]
fn bad_generation_inputs_are_errors() {
    let model = fixture("gemma2_tiny");
    let config = GenerationConfig::greedy(3, vec![1], 0);
    let empty = generate(&model, &[vec![2, 3], vec![]], &config);
    assert!(
        matches!(empty, Err(Error::Input(InputError::Shape { arg: "prompts", .. }))),
        "{empty:?}"
    );
    let out_of_vocab = generate(&model, &[vec![2, 128]], &config);
    assert!(
        matches!(
            out_of_vocab,
            Err(Error::Input(InputError::TokenOutOfRange {
                max: 128,
                vocab: 128,
                ..
            }))
        ),
        "{out_of_vocab:?}"
    );
    let bad_pad = GenerationConfig {
        pad_id: -1,
        ..config.clone()
    };
    assert!(matches!(
        generate(&model, &[vec![2, 3], vec![2]], &bad_pad),
        Err(Error::Input(InputError::TokenOutOfRange { min: -1, .. }))
    ));
    for (temperature, top_k, top_p, name) in [
        (0.0, None, None, "temperature"),
        (f64::NAN, None, None, "temperature"),
        (1.0, Some(0), None, "top_k"),
        (1.0, None, Some(0.0), "top_p"),
        (1.0, None, Some(1.5), "top_p"),
    ] {
        match Sampling::sample(temperature, top_k, top_p, 0) {
            Err(Error::Input(InputError::InvalidParameter { name: got, .. })) => assert_eq!(got, name),
            other => panic!("expected InvalidParameter {name}, got {other:?}"),
        }
        let unchecked = GenerationConfig {
            sampling: Sampling::Sample {
                temperature,
                top_k,
                top_p,
                seed: 0,
            },
            ..config.clone()
        };
        assert!(matches!(
            generate(&model, &prompts(), &unchecked),
            Err(Error::Input(InputError::InvalidParameter { .. }))
        ));
    }
    let wrong_device = greedy_decode(&model, &prompts(), 3, 1, 0, Device::Cuda(0));
    assert!(
        matches!(wrong_device, Err(Error::Input(InputError::DeviceMismatch { .. }))),
        "{wrong_device:?}"
    );
}

/// A tiny but valid temperature (down to the smallest positive f64) samples the most likely token: the
/// tempered logits are computed in f64 after subtracting each row's maximum, so they cannot overflow into
/// a NaN softmax (before: `logits / 1e-40` overflowed f32, every probability was NaN and every drawn
/// token was 0).
#[test]
fn tiny_temperatures_sample_the_most_likely_token() {
    let model = fixture("gemma2_tiny");
    let greedy = generate(&model, &prompts(), &GenerationConfig::greedy(12, vec![], 0)).unwrap();
    assert!(
        greedy.tokens.iter().flatten().any(|&t| t != 0),
        "greedy must not be all 0"
    );
    for temperature in [1e-40, 1e-300, f64::MIN_POSITIVE, 5e-324] {
        let out = sample(&model, temperature, None, None, 5);
        assert_eq!(out.tokens, greedy.tokens, "temperature {temperature:e}");
    }
}

/// A `top_k` of at least the vocabulary size is no limit, whatever its size (before: a `usize` above
/// `i64::MAX` became a negative k and a raw libtorch error).
#[test]
fn top_k_at_or_above_the_vocabulary_is_no_limit() {
    let model = fixture("gemma2_tiny");
    let vocab = model.config().vocab_size as usize;
    let unlimited = sample(&model, 1.0, None, None, 9).tokens;
    for k in [
        vocab,
        vocab + 1,
        1_000_000,
        i64::MAX as usize,
        i64::MAX as usize + 1,
        usize::MAX,
    ] {
        assert_eq!(
            sample(&model, 1.0, Some(k), None, 9).tokens,
            unlimited,
            "top_k {k}"
        );
    }
    // One below the vocabulary still filters: every drawn token is among the V − 1 largest logits.
    let out = sample(&model, 1.0, Some(vocab - 1), None, 9);
    for (r, tokens) in out.tokens.iter().enumerate() {
        for (step, &token) in tokens.iter().enumerate() {
            let logits = row_of(&out.step_logits[step], r);
            let min = logits.iter().cloned().fold(f64::INFINITY, f64::min);
            assert!(logits[token as usize] > min || logits.iter().filter(|&&l| l == min).count() > 1);
        }
    }
}

/// The longest prompt plus `max_new_tokens` beyond the model's `max_position_embeddings` is refused
/// unless the caller opts in (before: accepted without a word).
#[test]
fn generation_beyond_the_trained_positions_needs_an_opt_in() {
    let model = fixture("gemma2_tiny");
    let limit = model.config().max_position_embeddings as usize;
    let longest = prompts().iter().map(Vec::len).max().unwrap();
    let fits = GenerationConfig::greedy(limit - longest, vec![], 0);
    assert!(
        generate(&model, &prompts(), &fits).is_ok(),
        "exactly max_position_embeddings fits"
    );
    let beyond = GenerationConfig::greedy(limit - longest + 1, vec![], 0);
    match generate(&model, &prompts(), &beyond) {
        Err(Error::Input(InputError::Config { name, requirement })) => {
            assert_eq!(name, "max_new_tokens");
            assert!(requirement.contains("max_position_embeddings"), "{requirement}");
        }
        other => panic!("expected Config(max_new_tokens), got {other:?}"),
    }
    let huge = GenerationConfig::greedy(usize::MAX, vec![], 0);
    assert!(matches!(
        generate(&model, &prompts(), &huge),
        Err(Error::Input(InputError::Config {
            name: "max_new_tokens",
            ..
        }))
    ));
    // Opting in generates past the limit.
    let opted = GenerationConfig {
        allow_beyond_max_positions: true,
        ..GenerationConfig::greedy(2, vec![], 0)
    };
    let long_prompt: Vec<i64> = (0..limit as i64).map(|i| 2 + i % 50).collect();
    let out = generate(&model, std::slice::from_ref(&long_prompt), &opted).unwrap();
    assert_eq!(out.tokens[0].len(), 2);
    let refused = GenerationConfig::greedy(2, vec![], 0);
    assert!(generate(&model, &[long_prompt], &refused).is_err());
}
