//! `Gemma::load` over each `WeightSource`: in-memory parameters load exactly and independently, and every
//! bad source is a typed error (no model is returned). The Hugging Face folder's errors (missing, unexpected,
//! mis-shaped tensors, shards) are in `tests/gemma_forward.rs`, the GGUF file's (every header field
//! mutated, non-finite weights) in `tests/gguf_mutations.rs` and `tests/gemma3_gguf.rs`.

use std::path::Path;
use std::sync::Mutex;

use tch::{nn, Device, Kind, Tensor};
use tch_rpo::gguf::GgufFile;
use tch_rpo::models::gemma::{Gemma, GemmaConfig, LoadOptions, WeightSource};
use tch_rpo::{Error, ShapeMismatch};
use tch_rpo::{GgufError, InputError, WeightsError};

/// libtorch's random generator is global: seeded inits must not interleave.
static RNG: Mutex<()> = Mutex::new(());

/// A seeded random model and its parameters (sorted by name).
fn seeded() -> (nn::VarStore, Gemma, Vec<(String, Tensor)>) {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gemma::random(&vs.root(), &GemmaConfig::small_gemma2(32)).unwrap();
    let mut parameters: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    parameters.sort_by(|a, b| a.0.cmp(&b.0));
    (vs, model, parameters)
}

fn inputs() -> (Tensor, Tensor) {
    let ids = Tensor::from_slice(&[2i64, 5, 6, 7, 3, 4]).view([2, 3]);
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0]).view([2, 3]);
    (ids, mask)
}

fn load_parameters(config: &GemmaConfig, parameters: &[(String, Tensor)]) -> tch_rpo::Result<Gemma> {
    let source = WeightSource::Parameters { config, parameters };
    Gemma::load(source, &LoadOptions::default()).map(|(_vs, model)| model)
}

fn load_error(config: &GemmaConfig, parameters: &[(String, Tensor)]) -> Error {
    match load_parameters(config, parameters) {
        Ok(_) => panic!("loading the parameters succeeded"),
        Err(e) => e,
    }
}

/// A model loaded from another's parameters gives the same logits, bit for bit, and holds copies: changing
/// the original afterwards leaves it unchanged.
#[test]
fn parameters_load_exactly_and_independently() {
    let (_vs, original, parameters) = seeded();
    let (ids, mask) = inputs();
    let loaded = load_parameters(original.config(), &parameters).unwrap();
    let before = tch::no_grad(|| original.forward(&ids, &mask)).unwrap();
    let copy = tch::no_grad(|| loaded.forward(&ids, &mask)).unwrap();
    assert_eq!((&before - &copy).abs().max().double_value(&[]), 0.0);
    tch::no_grad(|| {
        for (_, tensor) in &parameters {
            let _ = tensor.shallow_clone().fill_(0.5);
        }
    });
    let after = tch::no_grad(|| loaded.forward(&ids, &mask)).unwrap();
    assert_eq!((&copy - &after).abs().max().double_value(&[]), 0.0);
    // bf16 on request.
    let source = WeightSource::Parameters {
        config: original.config(),
        parameters: &parameters,
    };
    let (vs, _) = Gemma::load(source, &LoadOptions::new(Device::Cpu, Kind::BFloat16)).unwrap();
    assert!(vs.variables().values().all(|t| t.kind() == Kind::BFloat16));
}

#[test]
fn bad_parameter_sets_are_typed_errors() {
    let (_vs, model, parameters) = seeded();
    let config = model.config();
    let victim = "model.layers.1.mlp.up_proj.weight";

    let missing: Vec<_> = parameters
        .iter()
        .filter(|(n, _)| n != victim)
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    match load_error(config, &missing) {
        Error::Weights(WeightsError::Parameters { origin, mismatch, .. }) => {
            assert_eq!(mismatch.missing, vec![victim.to_string()]);
            assert_eq!(origin, "the given parameters");
        }
        other => panic!("expected Parameters, got {other:?}"),
    }

    let mut unexpected: Vec<_> = parameters
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    unexpected.push((
        "model.layers.9.mlp.up_proj.weight".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    ));
    assert!(
        matches!(load_error(config, &unexpected), Error::Weights(WeightsError::Parameters { ref mismatch, .. }) if mismatch.unexpected == ["model.layers.9.mlp.up_proj.weight"])
    );

    let reshaped: Vec<_> = parameters
        .iter()
        .map(|(n, t)| {
            let t = if n == victim {
                t.narrow(0, 0, 1)
            } else {
                t.shallow_clone()
            };
            (n.clone(), t)
        })
        .collect();
    match load_error(config, &reshaped) {
        Error::Weights(WeightsError::Parameters { mismatch, .. }) => {
            assert_eq!(mismatch.mismatched.len(), 1, "{mismatch}");
            let ShapeMismatch { name, expected, got } = &mismatch.mismatched[0];
            assert_eq!(name, victim);
            assert_eq!(got[0], 1);
            assert_eq!(expected[1], got[1]);
            assert_ne!(expected, got);
        }
        other => panic!("expected Parameters, got {other:?}"),
    }

    let mut twice: Vec<_> = parameters
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    twice.push((
        victim.into(),
        parameters.iter().find(|(n, _)| n == victim).unwrap().1.copy(),
    ));
    let error = load_error(config, &twice);
    assert!(
        matches!(&error, Error::Weights(WeightsError::Parameters { mismatch, .. }) if mismatch.duplicated == [victim]),
        "{error}"
    );
    assert!(error.to_string().contains("given twice"), "{error}");

    // A configuration that does not validate is refused before anything is built.
    let mut invalid = config.clone();
    invalid.num_key_value_heads = Some(3);
    assert!(matches!(
        load_error(&invalid, &parameters),
        Error::Input(InputError::Config { .. })
    ));
}

#[test]
fn non_float_kind_is_refused() {
    let (_vs, model, parameters) = seeded();
    let source = WeightSource::Parameters {
        config: model.config(),
        parameters: &parameters,
    };
    match Gemma::load(source, &LoadOptions::new(Device::Cpu, Kind::Int64)) {
        Err(Error::Input(InputError::DType { arg, got, .. })) => {
            assert_eq!(arg, "options.kind");
            assert_eq!(got, Kind::Int64);
        }
        other => panic!("expected DType, got {:?}", other.map(|_| ())),
    }
}

/// A folder without config.json is an I/O error naming the file; a GGUF of another architecture is
/// `UnsupportedArchitecture`.
#[test]
fn bad_folder_and_bad_gguf_are_typed_errors() {
    let dir = std::env::temp_dir().join(format!("tch_rpo_gemma_load_empty_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    match Gemma::load(WeightSource::HfDir(&dir), &LoadOptions::default()) {
        Err(error @ Error::Io { .. }) => assert!(error.to_string().contains("config.json"), "{error}"),
        other => panic!("expected Io, got {:?}", other.map(|_| ())),
    }
    std::fs::remove_dir_all(&dir).unwrap();

    let quants = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/quants.gguf");
    let file = GgufFile::open(&quants).unwrap();
    match Gemma::load(WeightSource::Gguf(&file), &LoadOptions::default()) {
        Err(Error::Weights(WeightsError::UnsupportedArchitecture { .. }))
        | Err(Error::Gguf(GgufError::Invalid { .. })) => {}
        other => panic!("expected UnsupportedArchitecture, got {:?}", other.map(|_| ())),
    }
}
