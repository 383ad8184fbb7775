//! A tiny causal LM implementing `PolicyModel`, and a small preference set, shared by the trainer tests.
#![allow(dead_code)]

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use tch_rpo::data::{encode_records, ByteTokenizer, EncodedPair, PreferenceRecord, Text};
use tch_rpo::train::{var_store_parameters, HiddenOutput, PolicyModel};
use tch_rpo::LinearHead;

/// Byte id that, when present in a batch, makes the gradient (not the loss) NaN.
pub const POISON: i64 = b'~' as i64;

/// Embedding → causal running mean → tanh(proj(h) + ctx(mean)) · norm → LM head. Positions only see
/// earlier positions, so right padding does not change the logits of real tokens.
pub struct TinyLm {
    pub vs: nn::VarStore,
    embed: nn::Embedding,
    proj: nn::Linear,
    ctx: nn::Linear,
    norm: Tensor,
    head: Tensor,
    poison: Tensor,
    head_bias: Option<Tensor>,
    logit_scale: f64,
    head_listed_twice: bool,
}

impl TinyLm {
    /// Built with `tch::manual_seed(seed)` so two calls give identical weights. libtorch's generator is
    /// global and tests run in parallel threads, so seeding and drawing happen under one lock.
    pub fn new(seed: i64, hidden: i64) -> Self {
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let vocab = ByteTokenizer::VOCAB;
        let embed = nn::embedding(&root / "embed", vocab, hidden, Default::default());
        let proj = nn::linear(&root / "proj", hidden, hidden, Default::default());
        let ctx = nn::linear(
            &root / "ctx",
            hidden,
            hidden,
            nn::LinearConfig {
                bias: false,
                ..Default::default()
            },
        );
        let norm = (&root / "norm").ones("weight", &[hidden]);
        let head = (&root / "lm_head").randn("weight", &[vocab, hidden], 0.0, 0.3);
        let poison = (&root / "poison").zeros("gate", &[1]);
        Self {
            vs,
            embed,
            proj,
            ctx,
            norm,
            head,
            poison,
            head_bias: None,
            logit_scale: 1.0,
            head_listed_twice: false,
        }
    }

    /// Adds a trained `[V]` LM-head bias (deterministic values, no RNG) and a logit scale: logits become
    /// `scale · (h·Wᵀ + b)`.
    pub fn with_head_bias(mut self, logit_scale: f64) -> Self {
        let vocab = ByteTokenizer::VOCAB;
        let values = Tensor::arange(vocab, (Kind::Float, Device::Cpu))
            .f_mul_scalar(0.37)
            .unwrap()
            .sin()
            * 2.0;
        self.head_bias = Some((&self.vs.root() / "lm_head").var_copy("bias", &values));
        self.logit_scale = logit_scale;
        self
    }

    /// Lists the LM-head weight a second time, as `tied.weight` (as a state dict lists a tied head).
    pub fn listing_head_twice(mut self) -> Self {
        self.head_listed_twice = true;
        self
    }

    fn hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> tch_rpo::Result<Tensor> {
        let h = self.embed.forward(input_ids);
        let mask = attention_mask.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?;
        let counts = mask.f_cumsum(1, Kind::Float)?.f_clamp_min(1.0)?;
        let mean = h.f_mul(&mask)?.f_cumsum(1, Kind::Float)?.f_div(&counts)?;
        let mut x = self
            .proj
            .forward(&h)
            .f_add(&self.ctx.forward(&mean))?
            .f_tanh()?
            .f_mul(&self.norm)?;
        let poisoned = input_ids.f_eq(POISON)?.f_any()?.f_int64_value(&[])? != 0;
        if poisoned {
            // value 0, gradient 0 · (1 / (2·sqrt(0))) = NaN
            x = x.f_add(&self.poison.f_sqrt()?.f_mul_scalar(0.0)?)?;
        }
        Ok(x)
    }

    pub fn params(&self) -> Vec<(String, Tensor)> {
        var_store_parameters(&self.vs)
    }

    /// Copies of all parameters (for before/after comparisons).
    pub fn snapshot(&self) -> Vec<(String, Tensor)> {
        self.params()
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect()
    }
}

impl PolicyModel for TinyLm {
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> tch_rpo::Result<Tensor> {
        let mut logits = self
            .hidden(input_ids, attention_mask)?
            .f_matmul(&self.head.f_tr()?)?;
        if let Some(bias) = &self.head_bias {
            logits = logits.f_add(bias)?;
        }
        Ok(logits.f_mul_scalar(self.logit_scale)?)
    }
    fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> tch_rpo::Result<Option<HiddenOutput>> {
        let mut head = LinearHead::new(&self.head).with_logit_scale(self.logit_scale);
        if let Some(bias) = &self.head_bias {
            head = head.with_bias(bias);
        }
        Ok(Some(HiddenOutput::new(
            self.hidden(input_ids, attention_mask)?,
            head,
        )))
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut params = self.params();
        if self.head_listed_twice {
            params.push(("tied.weight".to_string(), self.head.shallow_clone()));
        }
        params
    }
    fn device(&self) -> Device {
        self.vs.device()
    }
}

/// `n` pairs: a short question, a chosen answer of one style, a rejected one of another.
pub fn preference_records(n: usize) -> Vec<PreferenceRecord> {
    (0..n)
        .map(|i| {
            let prompt = format!("q{}{}?", i % 7, "ab".repeat(i % 3));
            let chosen = format!("yes {}", "y".repeat(1 + i % 4));
            let rejected = format!("no {}", "n".repeat(2 + i % 3));
            PreferenceRecord::new(Text::Plain(prompt), Text::Plain(chosen), Text::Plain(rejected)).unwrap()
        })
        .collect()
}

pub fn preference_pairs(n: usize) -> Vec<EncodedPair> {
    encode_records(&ByteTokenizer::new(), &preference_records(n)).unwrap()
}

/// Largest absolute difference between two parameter lists (same names, same order).
pub fn max_param_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}
