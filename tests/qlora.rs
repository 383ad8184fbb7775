//! A frozen base kept in its GGUF blocks (`WeightFormat::KeepQuantized`, QLoRA): the blocks dequantize to
//! exactly what a dense load holds, the kept model computes the dense model's logits bit for bit, LoRA
//! training on it moves the adapters only, and the bad inputs are typed errors.
//!
//! The fixture is made at test time: a seeded random Gemma 3 (hidden 256, so that k-quant rows fit) written
//! as Q8_0 by the crate's own writer, then rewritten with some matrices as Q4_K, Q6_K and Q5_0 blocks
//! (random packed values with small finite scales), and the embedding (tied head) left Q8_0.

mod lora_support;

use std::path::{Path, PathBuf};

use lora_support::{gemma3_config, random_policy, seeded};
use tch::{Device, Kind, Tensor};
use tch_rpo::data::{
    encode_records, CollateConfig, Collator, EncodedPair, PreferenceRecord, Text, Tokenizer,
};
use tch_rpo::gguf::{BlockMatrix, GgmlType, GgufFile, GgufWriter, KEEP_TYPES};
use tch_rpo::lora::{LoraConfig, LoraPolicy};
use tch_rpo::models::gemma::export::TokenizerSource;
use tch_rpo::models::gemma::{Gemma, GemmaConfig, GemmaPolicy, LoadOptions, WeightFormat, WeightSource};
use tch_rpo::models::tokenizer::CharTokenizer;
use tch_rpo::train::{PolicyModel, ReferenceSource, RpoTrainer, RpoTrainerConfig, Warmup};
use tch_rpo::{Error, InputError, RpoConfig, WeightsError};

/// Gemma 3 as a GGUF can express it, with rows of 256 values (k-quant super-blocks).
fn config() -> GemmaConfig {
    let mut config = gemma3_config(128);
    config.hidden_size = 256;
    config.intermediate_size = 512;
    config.num_attention_heads = 2;
    config.num_key_value_heads = Some(1);
    config.head_dim = Some(128);
    config.query_pre_attn_scalar = Some(256.0);
    config.rope_local_base_freq = Some(10_000.0);
    config.num_hidden_layers = 2;
    config.layer_types = None;
    config.initializer_range = 0.05;
    config
}

/// The matrices rewritten in another type, and the byte offsets of their f16 scales with the scale's bits
/// (1.0e-4 for Q4_K's `d` and `dmin`, 2⁻¹⁶ for Q6_K's `d`, 2⁻⁸ for Q5_0's `d`: values of order 0.1).
const REWRITTEN: [(&str, GgmlType); 4] = [
    ("blk.0.attn_q.weight", GgmlType::Q4_K),
    ("blk.0.ffn_down.weight", GgmlType::Q6_K),
    ("blk.1.attn_k.weight", GgmlType::Q5_0),
    ("blk.1.ffn_gate.weight", GgmlType::Q4_K),
];

fn scale_fields(ty: GgmlType) -> &'static [(usize, u16)] {
    match ty {
        GgmlType::Q4_K => &[(0, 0x068e), (2, 0x068e)],
        GgmlType::Q6_K => &[(208, 0x0100)],
        GgmlType::Q5_0 => &[(0, 0x1c00)],
        _ => &[],
    }
}

/// `blocks` blocks of `ty`: seeded pseudo-random packed values, the scale fields fixed.
fn random_blocks(ty: GgmlType, blocks: usize, seed: u64) -> Vec<u8> {
    let block_bytes = ty.block_bytes() as usize;
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut bytes: Vec<u8> = (0..blocks * block_bytes)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect();
    for block in bytes.chunks_exact_mut(block_bytes) {
        for &(at, bits) in scale_fields(ty) {
            block[at..at + 2].copy_from_slice(&bits.to_le_bytes());
        }
    }
    bytes
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tch-rpo-qlora-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Rewrites the GGUF `from` into `to` with `retype(name)` giving a tensor's new type and bytes.
fn rewrite(from: &Path, to: &Path, retype: impl Fn(&str, u64) -> Option<(GgmlType, Vec<u8>)>) {
    let file = GgufFile::open(from).unwrap();
    let mut writer = GgufWriter::new();
    for (key, value) in file.metadata() {
        if key != "general.alignment" {
            writer.add_metadata(key.clone(), value.clone()).unwrap();
        }
    }
    for info in file.tensors() {
        let (ty, bytes) = retype(&info.name, info.n_elements)
            .unwrap_or_else(|| (info.ggml_type, file.tensor_bytes(&info.name).unwrap()));
        writer.add_raw_tensor(&info.name, &info.shape, ty, bytes).unwrap();
    }
    writer.write(to).unwrap();
}

/// The fixture: Q8_0 from the writer, [`REWRITTEN`] in k-quants and Q5_0.
fn fixture(dir: &TempDir) -> PathBuf {
    let q8 = dir.path("q8.gguf");
    random_policy(&config(), 40)
        .save_gguf(&q8, GgmlType::Q8_0, TokenizerSource::None)
        .unwrap();
    let mixed = dir.path("mixed.gguf");
    rewrite(&q8, &mixed, |name, elements| {
        let (i, &(_, ty)) = REWRITTEN.iter().enumerate().find(|(_, (n, _))| *n == name)?;
        Some((
            ty,
            random_blocks(ty, (elements / ty.block_size()) as usize, i as u64 + 1),
        ))
    });
    mixed
}

fn load(file: &GgufFile, weights: WeightFormat, kind: Kind) -> GemmaPolicy {
    let options = LoadOptions {
        weights,
        ..LoadOptions::new(Device::Cpu, kind)
    };
    let (vs, model) = Gemma::load(WeightSource::Gguf(file), &options).unwrap();
    GemmaPolicy::new(vs, model)
}

fn inputs() -> (Tensor, Tensor) {
    let ids = seeded(41, || {
        Tensor::randint_low(3, 128, [2, 9], (Kind::Int64, Device::Cpu))
    });
    let mask = Tensor::ones([2, 9], (Kind::Int64, Device::Cpu));
    let _ = mask.narrow(1, 6, 3).get(1).fill_(0);
    (ids, mask)
}

#[test]
fn blocks_dequantize_to_the_files_values_bit_for_bit() {
    let dir = TempDir::new("blocks");
    let file = GgufFile::open(fixture(&dir)).unwrap();
    let mut types = Vec::new();
    for info in file.tensors().iter().filter(|t| t.shape.len() == 2) {
        let blocks = BlockMatrix::read(&file, &info.name).unwrap();
        assert_eq!(blocks.shape(), [info.shape[0], info.shape[1]]);
        assert_eq!(blocks.byte_len() as u64, info.n_bytes, "{}", info.name);
        types.push(blocks.ggml_type());
        for kind in [Kind::Float, Kind::BFloat16] {
            let dense = file.tensor(&info.name, kind, Device::Cpu).unwrap();
            let kept = blocks.dequantize(kind, Device::Cpu).unwrap();
            assert!(kept.equal(&dense), "{} {kind:?}", info.name);
            let rows = blocks.dequantize_rows(1, 3, kind, Device::Cpu).unwrap();
            assert!(rows.equal(&dense.narrow(0, 1, 3)), "{} rows", info.name);
            let ids = Tensor::from_slice(&[5i64, 0, 5, 2, 7, 1]).view([2, 3]);
            let gathered = blocks.gather_rows(&ids, kind).unwrap();
            let expected = dense.index_select(0, &ids.view([-1])).view([2, 3, info.shape[1]]);
            assert!(gathered.equal(&expected), "{} gathered", info.name);
        }
    }
    for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q5_0] {
        assert!(types.contains(&ty), "the fixture holds no {ty} matrix");
    }
}

#[test]
fn a_kept_base_computes_the_dense_base_s_logits() {
    let dir = TempDir::new("logits");
    let file = GgufFile::open(fixture(&dir)).unwrap();
    let (ids, mask) = inputs();
    for kind in [Kind::Float, Kind::BFloat16] {
        let dense = load(&file, WeightFormat::Dense, kind);
        let kept = load(&file, WeightFormat::KeepQuantized, kind);
        assert!(kept.model().decoder().keeps_quantized());
        assert!(!dense.model().decoder().keeps_quantized());
        // Only the norms are variables.
        let names: Vec<String> = kept.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert!(names.iter().all(|n| n.contains("norm")), "{names:?}");
        let logits = |p: &GemmaPolicy| tch::no_grad(|| p.forward(&ids, &mask).unwrap());
        assert!(logits(&kept).equal(&logits(&dense)), "{kind:?}");
        let head = kept.model().head_weight().unwrap();
        assert!(head.equal(&dense.model().head_weight().unwrap()));
        assert!(!head.requires_grad());
    }
}

const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789 ?";

fn pairs(n: usize) -> Vec<EncodedPair> {
    let tokenizer = CharTokenizer::new(ALPHABET).unwrap();
    let records: Vec<PreferenceRecord> = (0..n)
        .map(|i| {
            let prompt = format!("q{} {}?", i % 7, "ab".repeat(1 + i % 3));
            let chosen = format!("yes {}", "y".repeat(1 + i % 4));
            let rejected = format!("no {}", "n".repeat(2 + i % 3));
            PreferenceRecord::new(Text::Plain(prompt), Text::Plain(chosen), Text::Plain(rejected)).unwrap()
        })
        .collect();
    encode_records(&tokenizer, &records).unwrap()
}

fn train(policy: GemmaPolicy, steps: u64) -> (LoraPolicy<GemmaPolicy>, Vec<f64>) {
    let policy = seeded(3, || LoraPolicy::new(policy, &LoraConfig::new(4, 8.0))).unwrap();
    let config = RpoTrainerConfig {
        learning_rate: 1e-2,
        warmup: Warmup::Ratio(0.0),
        seed: 7,
        batch_pairs: 3,
        progress: false,
        ..RpoTrainerConfig::paper(RpoConfig::paper(0.1, 0.5), steps)
    };
    let mut trainer = RpoTrainer::new(policy, ReferenceSource::AdaptersOff, config).unwrap();
    let pad = CharTokenizer::new(ALPHABET).unwrap().pad_id();
    let history = trainer
        .fit(&pairs(6), &Collator::new(CollateConfig::new(pad)).unwrap())
        .unwrap();
    (trainer.into_model(), history.iter().map(|m| m.loss()).collect())
}

#[test]
fn lora_on_a_kept_base_trains_the_adapters_only_as_on_the_dense_base() {
    let dir = TempDir::new("train");
    let file = GgufFile::open(fixture(&dir)).unwrap();
    let (ids, mask) = inputs();
    let kept = load(&file, WeightFormat::KeepQuantized, Kind::Float);
    let before = tch::no_grad(|| kept.forward(&ids, &mask).unwrap());
    let norms_before: Vec<Tensor> = kept.named_parameters().iter().map(|(_, p)| p.copy()).collect();
    let (trained, losses) = train(kept, 2);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    // The adapters moved; the base did not (its norms, and its outputs with the adapters off).
    assert!(trained
        .adapters()
        .named_parameters()
        .iter()
        .any(|(n, p)| n.ends_with("lora_B.weight") && p.abs().sum(Kind::Float).double_value(&[]) > 0.0));
    for (before, (name, after)) in norms_before.iter().zip(trained.base().named_parameters()) {
        assert!(before.equal(&after), "{name} changed");
    }
    trained.set_adapters_enabled(false).unwrap();
    let after = tch::no_grad(|| trained.forward(&ids, &mask).unwrap());
    assert!(after.equal(&before));
    // The same run on the dense base (recomputing its layers too) has the same losses: the kept base holds
    // the same values and runs the same ops.
    let mut dense = load(&file, WeightFormat::Dense, Kind::Float);
    dense.set_gradient_checkpointing(true);
    let (_, dense_losses) = train(dense, 2);
    assert_eq!(losses, dense_losses);
    // The base fingerprint covers the kept blocks: one matrix changed (the norms equal) changes it.
    let other = dir.path("other.gguf");
    rewrite(file.path(), &other, |name, elements| {
        (name == "blk.0.attn_q.weight").then(|| {
            (
                GgmlType::Q4_K,
                random_blocks(GgmlType::Q4_K, (elements / 256) as usize, 99),
            )
        })
    });
    let other = GgufFile::open(&other).unwrap();
    let fingerprint = |file: &GgufFile| {
        let base = load(file, WeightFormat::KeepQuantized, Kind::Float);
        let policy = seeded(3, || LoraPolicy::new(base, &LoraConfig::new(4, 8.0))).unwrap();
        policy.fingerprint().to_string()
    };
    assert_eq!(fingerprint(&file), trained.fingerprint());
    assert_ne!(fingerprint(&other), trained.fingerprint());
}

#[test]
fn keep_refuses_other_sources_and_types_it_cannot_keep() {
    let dir = TempDir::new("errors");
    let keep = LoadOptions {
        weights: WeightFormat::KeepQuantized,
        ..LoadOptions::default()
    };
    // Parameters in memory have no blocks to keep.
    let config = config();
    let parameters = random_policy(&config, 42).named_parameters();
    let source = WeightSource::Parameters {
        config: &config,
        parameters: &parameters,
    };
    let error = Gemma::load(source, &keep).map(drop).unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Input(InputError::Config {
                name: "options.weights",
                ..
            })
        ),
        "{error:?}"
    );
    // An F64 matrix loads dense, but is not kept.
    let q8 = fixture(&dir);
    let f64_file = dir.path("f64.gguf");
    rewrite(&q8, &f64_file, |name, _| {
        (name == "blk.1.attn_v.weight").then(|| {
            let file = GgufFile::open(&q8).unwrap();
            let values = file.tensor_f32(name).unwrap();
            (
                GgmlType::F64,
                values.iter().flat_map(|&v| f64::from(v).to_le_bytes()).collect(),
            )
        })
    });
    let file = GgufFile::open(&f64_file).unwrap();
    load(&file, WeightFormat::Dense, Kind::Float);
    let error = Gemma::load(WeightSource::Gguf(&file), &keep)
        .map(drop)
        .unwrap_err();
    match &error {
        Error::Weights(WeightsError::TensorType {
            name, got, expected, ..
        }) => {
            assert_eq!(name, "blk.1.attn_v.weight");
            assert_eq!(got, "F64");
            assert!(
                expected.contains("Q4_K") && expected.contains("Q8_0"),
                "{expected}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!KEEP_TYPES.contains(&GgmlType::F64));
    // BlockMatrix checks its arguments.
    let file = GgufFile::open(&q8).unwrap();
    let blocks = BlockMatrix::read(&file, "token_embd.weight").unwrap();
    assert!(matches!(
        blocks.dequantize_rows(120, 9, Kind::Float, Device::Cpu),
        Err(Error::Input(InputError::Shape { .. }))
    ));
    assert!(matches!(
        blocks.dequantize(Kind::Int64, Device::Cpu),
        Err(Error::Input(InputError::DType { .. }))
    ));
    assert!(matches!(
        blocks.gather_rows(&Tensor::from_slice(&[128i64]), Kind::Float),
        Err(Error::Input(InputError::TokenOutOfRange { .. }))
    ));
    assert!(matches!(
        blocks.permute_rows(&[0, 0]),
        Err(Error::Input(InputError::Shape { .. }))
    ));
    assert!(matches!(
        BlockMatrix::read(&file, "output_norm.weight"),
        Err(Error::Input(InputError::Shape { .. }))
    ));
}

/// A kept tied head of 20,000 × 256 weights (two vocabulary blocks of 16,384 and 3,616 rows) in the fused
/// pass, and in the logits path, equals the dense head's. Logits: each is the same length-H dot product; were a kernel to reorder
/// it, `|Δz| ≤ H·u·(|h|·|W|ᵀ)` (u = 2⁻²⁴), so the log-probs differ by at most twice the largest such bound.
/// The gradient reaching the hidden states `g·W` sums the blocks' products in another association:
/// `|Δ| ≤ V·u·Σ_v |g_v|·|W_v|`, and for the loss Σ log p, `Σ_v |g_v| ≤ 2` per token, so
/// `|Δ| ≤ 2·V·u·max|W|` (plus the logit bound carried through, of the same order).
#[test]
fn a_kept_head_in_vocabulary_blocks_equals_the_dense_fused_head() {
    use tch_rpo::fused::{fused_loss, fused_sequence_logprobs};
    use tch_rpo::LogProbOptions;
    let dir = TempDir::new("head");
    let mut config = config();
    config.vocab_size = 20_000;
    config.num_hidden_layers = 1;
    let path = dir.path("head.gguf");
    random_policy(&config, 44)
        .save_gguf(&path, GgmlType::Q8_0, TokenizerSource::None)
        .unwrap();
    let file = GgufFile::open(&path).unwrap();
    let dense = load(&file, WeightFormat::Dense, Kind::Float);
    let kept = load(&file, WeightFormat::KeepQuantized, Kind::Float);
    let ids = seeded(45, || {
        Tensor::randint_low(3, 20_000, [2, 12], (Kind::Int64, Device::Cpu))
    });
    let mask = Tensor::ones([2, 12], (Kind::Int64, Device::Cpu));
    let labels = ids.shallow_clone();
    let options = LogProbOptions::default();
    let u = f64::powi(2.0, -24);
    let out = |p: &GemmaPolicy| tch::no_grad(|| p.forward_hidden(&ids, &mask).unwrap().unwrap());
    let (d, k) = (out(&dense), out(&kept));
    assert!(d.hidden.equal(&k.hidden));
    let w = d.head.weight.detach();
    let h = d.hidden.detach();
    let logit_bound = 256.0 * u * h.abs().view([-1, 256]).mm(&w.abs().tr()).max().double_value(&[]);
    let grad_bound = 2.0 * 20_000.0 * u * w.abs().max().double_value(&[]) + 2.0 * logit_bound;
    // The logits path (`Decoder::logits`) applies the kept head a vocabulary block at a time too.
    let logits = |p: &GemmaPolicy| tch::no_grad(|| p.model().logits(&h).unwrap());
    let (zd, zk) = (logits(&dense), logits(&kept));
    assert_eq!(zk.size(), vec![2, 12, 20_000]);
    let diff = (&zd - &zk).abs().max().double_value(&[]);
    assert!(diff <= logit_bound, "logits differ by {diff} > {logit_bound}");
    let logps = |head| fused_sequence_logprobs(&h, head, &labels, &options).unwrap().sum;
    let diff = (logps(&d.head) - logps(&k.head)).abs().max().double_value(&[]);
    assert!(
        diff <= 2.0 * logit_bound,
        "log-probs differ by {diff} > {}",
        2.0 * logit_bound
    );
    let grad = |head| {
        let leaf = h.copy().set_requires_grad(true);
        let loss = fused_loss(&leaf, head, &labels, &options, |lp| {
            Ok((lp.sum.sum(Kind::Float), ()))
        })
        .unwrap();
        loss.loss.backward();
        leaf.grad()
    };
    let diff = (grad(&d.head) - grad(&k.head)).abs().max().double_value(&[]);
    assert!(
        diff <= grad_bound,
        "hidden gradients differ by {diff} > {grad_bound}"
    );
}

/// On CUDA (feature `cuda-tests`, a machine with a CUDA device): the blocks stay in host memory and each
/// use dequantizes onto the device; the kept model computes the dense CUDA model's logits bit for bit, and a
/// LoRA step on it trains.
#[cfg(feature = "cuda-tests")]
#[test]
fn a_kept_base_on_cuda_computes_the_dense_logits_and_trains() {
    assert!(
        tch::Cuda::is_available(),
        "the cuda-tests feature needs a CUDA device"
    );
    let dir = TempDir::new("cuda");
    let file = GgufFile::open(fixture(&dir)).unwrap();
    let (ids, mask) = inputs();
    let (ids, mask) = (ids.to_device(Device::Cuda(0)), mask.to_device(Device::Cuda(0)));
    let on_cuda = |weights| {
        let options = LoadOptions {
            weights,
            ..LoadOptions::new(Device::Cuda(0), Kind::Float)
        };
        let (vs, model) = Gemma::load(WeightSource::Gguf(&file), &options).unwrap();
        GemmaPolicy::new(vs, model)
    };
    let (dense, kept) = (on_cuda(WeightFormat::Dense), on_cuda(WeightFormat::KeepQuantized));
    let logits = |p: &GemmaPolicy| tch::no_grad(|| p.forward(&ids, &mask).unwrap());
    assert!(logits(&kept).equal(&logits(&dense)));
    let (trained, losses) = train(kept, 1);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(trained
        .adapters()
        .named_parameters()
        .iter()
        .all(|(_, p)| p.device() == Device::Cuda(0)));
}
