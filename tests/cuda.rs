//! CUDA checks (run with `cargo test --features cuda-tests` on a machine with a CUDA device): log-probs
//! and RPO computed on the GPU match the CPU, values and gradients, and validation errors are raised
//! instead of device-side asserts.
#![cfg(feature = "cuda-tests")]

mod common;

use common::tolerance::{self, assert_within, U_F32, U_F64};
use common::*;
use tch::{Device, Kind, Tensor};
use tch_rpo::InputError;
use tch_rpo::{
    compute_loss, token_logprobs, DpoConfig, DpoLoss, Error, LogProbOptions, LossBatch, Reference, RpoConfig,
};

fn gpu() -> Device {
    assert!(
        tch::Cuda::is_available(),
        "the cuda-tests feature needs a CUDA device"
    );
    Device::Cuda(0)
}

#[test]
fn logprobs_on_cuda_match_cpu() {
    let gpu = gpu();
    let (b, t, v) = (4usize, 33usize, 1000usize);
    let mut rng = DataRng::new(1);
    let data = rng.normals(b * t * v, 3.0);
    let labels = random_labels(&mut rng, (b, t, v), -100, 0.3, 0.25);
    let y = int_tensor(&labels, &[b as i64, t as i64]);
    for kind in [Kind::Float, Kind::Double, Kind::BFloat16, Kind::Half] {
        let held = rounded(&data, kind);
        let z = tensor(&held, &[b as i64, t as i64, v as i64], kind);
        let want = token_logprobs_ref(&held, &labels, (b, t, v));
        let u = if kind == Kind::Double { U_F64 } else { U_F32 };
        let bound_at = |u| tolerance::token_logprob_errors(&held, &labels, (b, t, v), -100, true, u);
        let bounds: Vec<f64> = bound_at(u)
            .iter()
            .zip(bound_at(U_F64))
            .map(|(a, r)| a + r)
            .collect();
        for chunk in [1, 4 * v * 5, 64 << 20] {
            let opts = LogProbOptions::causal().with_chunk_bytes(chunk);
            let cpu = token_logprobs(&z, &y, &opts).unwrap();
            let cuda = token_logprobs(&z.to_device(gpu), &y.to_device(gpu), &opts).unwrap();
            assert_eq!(cuda.logps.device(), gpu);
            // Each device within the derived log-prob bound of the exact value (CUDA's `expf` is within
            // 2 ulps, which `tolerance::TRANSCENDENTAL_ULPS` covers): twice it between them.
            assert_within(
                &values(&cuda.logps),
                &values(&cpu.logps),
                &bounds.iter().map(|e| 2.0 * e).collect::<Vec<_>>(),
                &format!("{kind:?} cuda vs cpu"),
            );
            assert_within(
                &values(&cuda.logps),
                &want,
                &bounds,
                &format!("{kind:?} cuda vs reference"),
            );
        }
    }
}

fn token_logprobs_ref(logits: &[f64], labels: &[i64], dims: (usize, usize, usize)) -> Vec<f64> {
    common::token_logprobs(logits, labels, dims, -100, true).logps
}

#[test]
fn rpo_on_cuda_matches_cpu() {
    let gpu = gpu();
    let (pairs, t, v) = (3i64, 20i64, 300i64);
    let mut rng = DataRng::new(2);
    let data = rng.normals((2 * pairs * t * v) as usize, 2.0);
    let ref_data = rng.normals((2 * pairs * t * v) as usize, 2.0);
    let mut labels = random_labels(
        &mut rng,
        (2 * pairs as usize, t as usize, v as usize),
        -100,
        0.3,
        0.0,
    );
    for r in 0..(2 * pairs) as usize {
        labels[r * t as usize + t as usize - 1] = 7;
    }
    let shape = [2 * pairs, t, v];
    let y = int_tensor(&labels, &[2 * pairs, t]);
    let configs = [
        RpoConfig::paper_gemma_series(),
        RpoConfig::openrlhf(0.1, 0.2),
        RpoConfig::trl(0.1, 0.005).with_dpo(DpoConfig::new(DpoLoss::DiscoPop, 0.1)),
    ];
    for kind in [Kind::Float, Kind::BFloat16] {
        for config in &configs {
            let run = |device: Device| {
                let z = tensor(&data, &shape, kind)
                    .to_device(device)
                    .set_requires_grad(true);
                let zr = tensor(&ref_data, &shape, kind).to_device(device);
                let yd = y.to_device(device);
                let batch = LossBatch::logits(&z, &yd)
                    .with_reference(Reference::Logits(&zr))
                    .with_options(LogProbOptions::causal().with_chunk_bytes(4 * v as usize * 7));
                let out = compute_loss(config, &batch).unwrap();
                out.loss.backward();
                (out.metric_values().unwrap(), values(&z.grad()))
            };
            let (cpu_metrics, cpu_grad) = run(Device::Cpu);
            let (gpu_metrics, gpu_grad) = run(gpu);
            for ((n, a), (_, b)) in cpu_metrics.iter().zip(&gpu_metrics) {
                assert_close(
                    &[*b],
                    &[*a],
                    1e-4,
                    1e-4,
                    &format!("{kind:?} {:?} {n}", config.sft_normalization),
                );
            }
            let tol = if kind == Kind::Float { 1e-6 } else { 2e-3 };
            assert_close(
                &gpu_grad,
                &cpu_grad,
                tol,
                1e-2,
                &format!("{kind:?} {:?} grad", config.sft_normalization),
            );
        }
    }
}

#[test]
fn bad_label_on_cuda_is_an_error_not_a_device_assert() {
    let gpu = gpu();
    let z = Tensor::randn([2, 4, 7], (Kind::Float, gpu));
    let y = int_tensor(&[0, 1, 2, 3, 4, 5, 7, 6], &[2, 4]).to_device(gpu);
    match token_logprobs(&z, &y, &LogProbOptions::default()) {
        Err(Error::Input(InputError::LabelOutOfRange {
            value: 7,
            position: 6,
            ..
        })) => {}
        other => panic!("expected LabelOutOfRange, got {other:?}"),
    }
    // The device is still usable afterwards.
    let y = int_tensor(&[0, 1, 2, 3, 4, 5, 6, 6], &[2, 4]).to_device(gpu);
    assert!(token_logprobs(&z, &y, &LogProbOptions::default()).is_ok());
}
