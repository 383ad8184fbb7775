//! Gemma on libtorch's fused attention kernel (the default) never lets a NaN through: padding queries that
//! see no key (a short right-padded row in a sliding-window layer, left-padded prompts in generation) stay
//! finite in the forward pass, and the training gradients — plain and checkpointed — are finite. The
//! kernel's agreement with the explicit path is `tests/attention.rs`; the models' agreement with
//! transformers is `tests/gemma_forward.rs` and `tests/gemma3_gguf.rs` (unchanged, now on the fused kernel).

use tch::{nn, Device, Kind, Tensor};
use tch_rpo::models::attention::{attention_kernel, AttentionKernel};
use tch_rpo::models::gemma::{generate, Gemma, GemmaConfig, GenerationConfig};

/// Gemma 3 (no soft-cap: the fused kernel runs), 3 layers with a window of 2 on the sliding ones, GQA
/// (4 query heads, 1 key / value head), random weights large enough that the layers matter.
fn model() -> (nn::VarStore, Gemma) {
    let mut config = GemmaConfig::small_gemma2(32);
    config.model_type = "gemma3_text".into();
    config.final_logit_softcapping = None;
    config.attn_logit_softcapping = None;
    config.num_hidden_layers = 3;
    config.sliding_window = Some(2);
    config.initializer_range = 0.2;
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gemma::random(&vs.root(), &config).unwrap();
    (vs, model)
}

/// Rows of 7 positions: full, 4 tokens, 1 token (right padding): the padding queries of the short rows are
/// more than a window past their last token, so in the sliding layers they see no key.
fn batch() -> (Tensor, Tensor) {
    let ids = Tensor::from_slice(&[
        3i64, 5, 7, 9, 11, 13, 15, 4, 6, 8, 10, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0,
    ])
    .view([3, 7]);
    let mask =
        Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]).view([3, 7]);
    (ids, mask)
}

fn all_finite(t: &Tensor) -> bool {
    t.isfinite().all().int64_value(&[]) == 1
}

/// Σ of the logits at real positions (what a loss would read), and every parameter gradient finite.
fn assert_finite_training(checkpointed: bool) {
    assert_eq!(attention_kernel(), AttentionKernel::Fused);
    let (vs, model) = model();
    let (ids, mask) = batch();
    let loss = if checkpointed {
        let (hidden, checkpoints) = model.forward_hidden_checkpointed(&ids, &mask).unwrap();
        assert!(all_finite(&hidden), "hidden states (padding included) not finite");
        let logits = model.logits(&hidden).unwrap();
        let loss = (logits * mask.unsqueeze(-1).to_kind(Kind::Float)).sum(Kind::Float);
        loss.backward();
        checkpoints.backward().unwrap();
        loss
    } else {
        let hidden = model.forward_hidden(&ids, &mask).unwrap();
        assert!(all_finite(&hidden), "hidden states (padding included) not finite");
        let logits = model.logits(&hidden).unwrap();
        let loss = (logits * mask.unsqueeze(-1).to_kind(Kind::Float)).sum(Kind::Float);
        loss.backward();
        loss
    };
    assert!(loss.double_value(&[]).is_finite());
    for (name, p) in vs.variables() {
        let grad = p.grad();
        assert!(grad.defined(), "{name}: no gradient");
        assert!(
            all_finite(&grad),
            "{name}: gradient not finite (checkpointed {checkpointed})"
        );
    }
}

#[test]
fn training_gradients_are_finite() {
    assert_finite_training(false);
}

#[test]
fn checkpointed_training_gradients_are_finite() {
    assert_finite_training(true);
}

/// Left-padded prompts of different lengths (the first queries of the short prompts see no key), with
/// and without the cache: every step's logits are finite.
#[test]
fn left_padded_generation_is_finite() {
    let (_vs, model) = model();
    let prompts = vec![vec![2i64, 5, 7, 9, 11, 13], vec![2, 4], vec![2]];
    for use_cache in [true, false] {
        let config = GenerationConfig {
            keep_logits: true,
            use_cache,
            ..GenerationConfig::greedy(4, vec![], 0)
        };
        let out = tch::no_grad(|| generate(&model, &prompts, &config)).unwrap();
        assert_eq!(out.step_logits.len(), 4);
        for logits in &out.step_logits {
            assert!(all_finite(logits), "cache {use_cache}: non-finite logits");
        }
    }
}
