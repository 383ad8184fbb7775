//! The README's quick start: an RPO loss from a model's logits, backward, and the metrics.
//! Run: `cargo run --example quickstart`.
use tch::{Device, Kind, Tensor};
use tch_rpo::{compute_loss, LogProbOptions, LossBatch, Reference, RpoConfig};

fn main() -> tch_rpo::Result<()> {
    tch::manual_seed(0);
    let (pairs, seq, vocab) = (2, 16, 100);
    let device = Device::cuda_if_available();
    // One forward pass over 2B rows: B chosen sequences, then B rejected ones (stand-ins for model outputs).
    let policy_logits = Tensor::randn([2 * pairs, seq, vocab], (Kind::Float, device)).set_requires_grad(true);
    let reference_logits = Tensor::randn([2 * pairs, seq, vocab], (Kind::Float, device));
    // Labels are the input ids with prompt and padding positions set to -100.
    let labels = Tensor::randint(vocab, [2 * pairs, seq], (Kind::Int64, device));
    let _ = labels.narrow(1, 0, 4).fill_(-100); // a 4-token prompt

    let config = RpoConfig::paper_gemma_series(); // sigmoid DPO, β = 0.05, + η·β · summed chosen NLL
    let batch = LossBatch::logits(&policy_logits, &labels)
        .with_reference(Reference::Logits(&reference_logits))
        .with_options(LogProbOptions::causal()); // logits at t predict token t+1
    let out = compute_loss(&config, &batch)?;
    out.loss.backward();
    println!("{}", config.describe());
    for (name, value) in out.metric_values()? {
        println!("{name:>20}: {value:.5}");
    }
    Ok(())
}
