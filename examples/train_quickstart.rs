//! Train a model with RPO from JSON Lines preference pairs: the trainer's quick start (README). The
//! records are inline here; from a file: `PreferenceDataset::from_jsonl("prefs.jsonl", OnMalformed::Error)?`.

// ---- the model's own code: any causal LM implementing `PolicyModel` (here a bigram LM) ----
use tch::nn::{self, Module};
use tch::{Device, Tensor};
use tch_rpo::train::{var_store_parameters, PolicyModel};

struct Bigram {
    vs: nn::VarStore,
    embed: nn::Embedding,
    head: nn::Linear,
}

impl Bigram {
    fn new(seed: i64) -> Self {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let embed = nn::embedding(vs.root() / "embed", ByteTokenizer::VOCAB, 32, Default::default());
        let head = nn::linear(
            vs.root() / "lm_head",
            32,
            ByteTokenizer::VOCAB,
            Default::default(),
        );
        Self { vs, embed, head }
    }
}

impl PolicyModel for Bigram {
    fn forward(&self, input_ids: &Tensor, _attention_mask: &Tensor) -> tch_rpo::Result<Tensor> {
        Ok(self.head.forward(&self.embed.forward(input_ids))) // [N, T, V] logits
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        var_store_parameters(&self.vs)
    }
    fn device(&self) -> Device {
        self.vs.device()
    }
}

// ---- the training glue ----
use tch_rpo::data::{encode_records, ByteTokenizer, CollateConfig, Collator, OnMalformed, PreferenceDataset};
use tch_rpo::train::RpoTrainer;

const PREFERENCES: &str = r#"{"prompt": "2+2=", "chosen": "4", "rejected": "5"}
{"prompt": "Capital of France? ", "chosen": "Paris", "rejected": "Rome"}
{"prompt": "Opposite of hot: ", "chosen": "cold", "rejected": "warm"}
{"prompt": "Color of the sky: ", "chosen": "blue", "rejected": "green"}"#;

fn main() -> tch_rpo::Result<()> {
    let dataset = PreferenceDataset::from_reader(PREFERENCES.as_bytes(), "inline", OnMalformed::Error)?;
    let tokenizer = ByteTokenizer::new();
    let pairs = encode_records(&tokenizer, &dataset.records)?;
    let collator = Collator::new(CollateConfig::new(ByteTokenizer::PAD))?;
    let run = std::env::temp_dir().join("tch-rpo-quickstart");

    let mut trainer = RpoTrainer::builder(Bigram::new(0))
        .ref_model(Bigram::new(0)) // the frozen reference: the same initial weights
        .loss("sigmoid")
        .beta(0.1)
        .rpo_alpha(1.0) // TRL's rpo_alpha: + 1.0 × token-mean NLL of the chosen responses
        .learning_rate(1e-2)
        .max_steps(20)
        .batch_size(2)
        .checkpoint_dir(run.join("checkpoints"))
        .save_steps(10)
        .save_total_limit(1)
        .log_path(run.join("metrics.jsonl"))
        .resume(true) // continue from the newest checkpoint, if any
        .build()?;
    for m in trainer.fit(&pairs, &collator)? {
        println!("step {}: loss {:.4}", m.step, m.loss());
    }
    let metrics = trainer.evaluate(&pairs, &collator, 4)?;
    let accuracy = metrics.get("rewards/accuracies").unwrap_or(f64::NAN);
    println!("reward accuracy {accuracy:.2}");
    Ok(())
}
