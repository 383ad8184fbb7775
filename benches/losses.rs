//! Criterion benches: chunked log-prob gathering vs `log_softmax` + `gather` (and the chunked pass with the
//! token statistics on), and each loss on per-sequence log-probs. Run: `cargo bench --bench losses` (numbers in docs/benchmarks.md).
//! Shapes fit a 2-core, 24 GiB CPU machine: B = 8, T = 512, V ∈ {32000, 128256}.
//! `TCH_RPO_BENCH_QUICK=1` runs only V = 32000 with fewer samples.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use tch_rpo::{
    compute_loss, fused_sequence_logprobs, sequence_logprobs, DpoConfig, DpoLoss, LinearHead, LogProbOptions,
    LossBatch, Reference, RpoConfig, SequenceLogProbs, SftConfig, SftNormalization,
};

fn naive_logprobs(logits: &Tensor, labels: &Tensor) -> Tensor {
    let mask = labels.ne(-100);
    let safe = labels.masked_fill(&mask.logical_not(), 0);
    let lp = logits
        .log_softmax(-1, Kind::Float)
        .gather(-1, &safe.unsqueeze(-1), false)
        .squeeze_dim(-1);
    lp.masked_fill(&mask.logical_not(), 0.0)
        .sum_dim_intlist(-1, false, Kind::Float)
}

fn inputs(b: i64, t: i64, v: i64) -> (Tensor, Tensor) {
    tch::manual_seed(0);
    let logits = Tensor::randn([b, t, v], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(v, [b, t], (Kind::Int64, Device::Cpu));
    let _ = labels.narrow(1, 0, t / 2).fill_(-100);
    (logits, labels)
}

fn gather(c: &mut Criterion) {
    let quick = std::env::var_os("TCH_RPO_BENCH_QUICK").is_some();
    let vocabs: &[i64] = if quick { &[32000] } else { &[32000, 128256] };
    let mut group = c.benchmark_group("logprobs_b8_t512");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(if quick { 5 } else { 20 }));
    for &v in vocabs {
        let (logits, labels) = inputs(8, 512, v);
        let opts = LogProbOptions::default().with_validate_inputs(false);
        group.bench_with_input(BenchmarkId::new("chunked", v), &v, |bch, _| {
            bch.iter(|| black_box(sequence_logprobs(&logits, &labels, &opts).expect("logprobs").sum))
        });
        let with_stats = opts.with_token_stats(true);
        group.bench_with_input(BenchmarkId::new("chunked_token_stats", v), &v, |bch, _| {
            bch.iter(|| {
                black_box(
                    sequence_logprobs(&logits, &labels, &with_stats)
                        .expect("logprobs")
                        .sum,
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("log_softmax_gather", v), &v, |bch, _| {
            bch.iter(|| black_box(naive_logprobs(&logits, &labels)))
        });
    }
    group.finish();
}

/// The fused forward pass (`fused_sequence_logprobs`) with and without the token statistics:
/// R = 8 rows × T = 256, H = 256.
fn fused(c: &mut Criterion) {
    let quick = std::env::var_os("TCH_RPO_BENCH_QUICK").is_some();
    let vocabs: &[i64] = if quick { &[32000] } else { &[32000, 128256] };
    let mut group = c.benchmark_group("fused_forward_r8_t256_h256");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(if quick { 5 } else { 20 }));
    tch::manual_seed(2);
    let hidden = Tensor::randn([8, 256, 256], (Kind::Float, Device::Cpu));
    for &v in vocabs {
        let weight = Tensor::randn([v, 256], (Kind::Float, Device::Cpu)) * 0.06;
        let labels = Tensor::randint(v, [8, 256], (Kind::Int64, Device::Cpu));
        let plain = LogProbOptions::default().with_validate_inputs(false);
        let with_stats = LogProbOptions::default()
            .with_validate_inputs(false)
            .with_token_stats(true);
        for (name, options) in [("fused", &plain), ("fused_token_stats", &with_stats)] {
            group.bench_with_input(BenchmarkId::new(name, v), &v, |bch, _| {
                bch.iter(|| {
                    black_box(
                        fused_sequence_logprobs(&hidden, &LinearHead::new(&weight), &labels, options)
                            .expect("fused")
                            .sum,
                    )
                })
            });
        }
    }
    group.finish();
}

fn losses(c: &mut Criterion) {
    let b = 64;
    tch::manual_seed(1);
    let seq = |shift: f64| {
        SequenceLogProbs::new(
            Tensor::randn([2 * b], (Kind::Float, Device::Cpu)) * 10.0 - 100.0 + shift,
            Tensor::randint_low(1, 300, [2 * b], (Kind::Int64, Device::Cpu)),
        )
        .expect("sequence log-probs")
    };
    // 2B rows: B chosen, then B rejected.
    let policy = seq(0.5);
    let (chosen, _) = policy.split_pairs().expect("split");
    let reference = Tensor::randn([2 * b], (Kind::Float, Device::Cpu)) - 100.0;
    let unchecked = LogProbOptions::default().with_validate_inputs(false);
    let batch = LossBatch::log_probs(&policy)
        .with_reference(Reference::LogProbs(&reference))
        .with_options(unchecked);
    let mut group = c.benchmark_group("loss_b64");
    group.sample_size(30).measurement_time(Duration::from_secs(2));
    for variant in DpoLoss::ALL {
        let eps = if variant.uses_label_smoothing() { 0.1 } else { 0.0 };
        let cfg = DpoConfig::new(variant, 0.1).with_label_smoothing(eps);
        group.bench_function(BenchmarkId::new("dpo", variant.name()), |bch| {
            bch.iter(|| black_box(compute_loss(&cfg, &batch).expect("dpo").loss))
        });
    }
    for norm in [
        SftNormalization::SequenceSum,
        SftNormalization::SequenceMean,
        SftNormalization::TokenMean,
    ] {
        group.bench_function(BenchmarkId::new("sft", norm.name()), |bch| {
            let config = SftConfig::new(norm);
            let targets = LossBatch::log_probs(&chosen).with_options(unchecked);
            bch.iter(|| black_box(compute_loss(&config, &targets).expect("sft").loss))
        });
    }
    let rpo = RpoConfig::default();
    group.bench_function("rpo_paper_default", |bch| {
        bch.iter(|| black_box(compute_loss(&rpo, &batch).expect("rpo").loss))
    });
    group.finish();
}

criterion_group!(benches, gather, fused, losses);
criterion_main!(benches);
