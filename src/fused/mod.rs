//! Fused linear-head losses: RPO, DPO and SFT straight from the final hidden states and the LM-head
//! weight, without ever holding the `[2B, T, V]` logits or their gradient.
//!
//! The logits are `z = softcap(s · (h·Wᵀ + b))` with an optional logit scale `s` and an optional Gemma-2
//! final-logit soft-cap `softcap(u) = c·tanh(u / c)` ([`FusedOptions`]).
//!
//! # Algorithm
//! 1. Select the scored positions (labels ≠ ignore index, after the optional causal shift) of the flattened
//!    hidden states: prompt and padding tokens never reach the matmul.
//! 2. **Pass 1** (no grad): for chunks of scored tokens, logits in f32, logsumexp and the target logit →
//!    per-token log-prob, scatter-added into per-sequence sums `[2B]` (f32).
//! 3. The loss ([`rpo_loss`], [`dpo_loss`], [`sft_loss`])
//!    is evaluated on those small tensors with ordinary autograd; one backward to a leaf gives
//!    `dL/d(sum of sequence r)` — the coefficient `c` of every token of `r`.
//! 4. **Pass 2** (no grad): recompute each chunk's logits and apply `dL/dz = c · (onehot(y) − softmax(z))`
//!    (chained through soft-cap and scale): `grad_h = dZ·W`, `grad_W += dZᵀ·h` (f32), `grad_b += Σ dZ`.
//! 5. The returned loss is `L.detach() + S − S.detach()` with `S = Σ h⊙g_h + Σ W⊙g_W + Σ b⊙g_b`
//!    (g detached): its value is `L`, and `loss.backward()` delivers exactly the gradients into whatever
//!    produced `h`, `W` and `b` (a head tied to the embedding included), scaled by any upstream factor.
//!
//! Memory: the head weight, one f32 `[N, V]`-free working set of at most [`FusedOptions::chunk_bytes`], the
//! f32 weight-gradient accumulator and `[N, H]` hidden-state gradients — independent of `T·V`.
//! See `docs/fused.md` for the design and measured numbers.
//!
//! # Outputs
//! The same output structs as the unfused API. Only `loss` is differentiable (w.r.t. the hidden states,
//! weight and bias); the other tensors (`per_pair`, the DPO and SFT parts) are detached values.

mod engine;

use crate::error::{Error, Result};
use crate::logprobs::{LogProbOptions, SequenceLogProbs, DEFAULT_IGNORE_INDEX};
use crate::loss::dpo::{dpo_loss, DpoConfig, DpoOutput};
use crate::loss::rpo::{rpo_loss, RpoConfig, RpoOutput};
use crate::loss::sft::{sft_loss, SftNormalization, SftOutput};
use crate::loss::{GlobalBatch, PreferenceBatch, Reference};
use crate::validate;
use engine::{Needs, Prepared};
use tch::{Kind, Tensor};

/// Default memory budget of the fused working set, in bytes (256 MiB): two f32 `[rows, V]` buffers, so
/// `rows = 256 MiB / (8·V)` — 1,048 rows at V = 32,000, 261 at V = 128,256 (the GEMMs need a few hundred rows
/// to run efficiently on CPU; 64 MiB was 1.3× slower at V = 128,256). Raise it on GPUs for larger matmuls.
pub const DEFAULT_FUSED_CHUNK_BYTES: usize = 256 << 20;

/// Options of the fused path. `ignore_index`, `shift` and `validate` mean what they mean in
/// [`LogProbOptions`]; `chunk_bytes` is the budget of the whole per-chunk working set.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedOptions {
    /// Label value of positions to skip (prompt, padding). Default −100.
    pub ignore_index: i64,
    /// Causal shift: hidden state `t` predicts label `t + 1`. Default `false`.
    pub shift: bool,
    /// Memory budget of one chunk in bytes: rows per chunk = `max(1, chunk_bytes / (2 · V · 4))`.
    /// Default [`DEFAULT_FUSED_CHUNK_BYTES`].
    pub chunk_bytes: usize,
    /// Check label range and finiteness (syncs the device). Default `true`.
    pub validate: bool,
    /// Logit scale `s > 0`: logits are `s · (h·Wᵀ + b)` before the soft-cap (e.g. `1 / temperature`).
    /// Default 1.
    pub logit_scale: f64,
    /// Final-logit soft-cap `c > 0`: logits become `c · tanh(u / c)` (Gemma 2 uses 30). Default `None`.
    pub final_logit_softcap: Option<f64>,
}

impl Default for FusedOptions {
    fn default() -> Self {
        Self {
            ignore_index: DEFAULT_IGNORE_INDEX,
            shift: false,
            chunk_bytes: DEFAULT_FUSED_CHUNK_BYTES,
            validate: true,
            logit_scale: 1.0,
            final_logit_softcap: None,
        }
    }
}

impl From<&LogProbOptions> for FusedOptions {
    /// Copies `ignore_index`, `shift` and `validate`; the fused chunk budget and logit transforms default.
    fn from(o: &LogProbOptions) -> Self {
        Self {
            ignore_index: o.ignore_index,
            shift: o.shift,
            validate: o.validate,
            ..Self::default()
        }
    }
}

impl FusedOptions {
    /// Options for causal-LM hidden states: shifted labels, defaults otherwise.
    pub fn causal() -> Self {
        Self {
            shift: true,
            ..Self::default()
        }
    }
    /// Sets [`FusedOptions::ignore_index`].
    pub fn with_ignore_index(mut self, ignore_index: i64) -> Self {
        self.ignore_index = ignore_index;
        self
    }
    /// Sets [`FusedOptions::shift`].
    pub fn with_shift(mut self, shift: bool) -> Self {
        self.shift = shift;
        self
    }
    /// Sets [`FusedOptions::chunk_bytes`].
    pub fn with_chunk_bytes(mut self, chunk_bytes: usize) -> Self {
        self.chunk_bytes = chunk_bytes;
        self
    }
    /// Sets [`FusedOptions::validate`].
    pub fn with_validate(mut self, validate: bool) -> Self {
        self.validate = validate;
        self
    }
    /// Sets [`FusedOptions::logit_scale`].
    pub fn with_logit_scale(mut self, logit_scale: f64) -> Self {
        self.logit_scale = logit_scale;
        self
    }
    /// Sets [`FusedOptions::final_logit_softcap`].
    pub fn with_final_logit_softcap(mut self, cap: Option<f64>) -> Self {
        self.final_logit_softcap = cap;
        self
    }

    /// Checks the scalar options.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for `chunk_bytes == 0`, a scale or soft-cap that is not finite and > 0.
    pub fn check(&self) -> Result<()> {
        if self.chunk_bytes == 0 {
            return Err(Error::InvalidParameter {
                name: "chunk_bytes",
                value: 0.0,
                requirement: "must be > 0",
            });
        }
        validate::positive_finite("logit_scale", self.logit_scale)?;
        if let Some(cap) = self.final_logit_softcap {
            validate::positive_finite("final_logit_softcap", cap)?;
        }
        Ok(())
    }
}

/// A linear LM head: `weight [V, H]` and an optional `bias [V]`, both in the hidden states' dtype and on
/// their device. The weight may be tied to the input embedding; gradients reach it either way.
#[derive(Debug, Clone, Copy)]
pub struct LinearHead<'a> {
    /// `[V, H]` weight (the layout of `nn::Linear` and of an embedding table).
    pub weight: &'a Tensor,
    /// Optional `[V]` bias.
    pub bias: Option<&'a Tensor>,
}

impl<'a> LinearHead<'a> {
    /// A head without bias.
    pub fn new(weight: &'a Tensor) -> Self {
        Self { weight, bias: None }
    }
    /// Sets the bias.
    pub fn with_bias(mut self, bias: &'a Tensor) -> Self {
        self.bias = Some(bias);
        self
    }
}

/// Final hidden states of a preference batch.
#[derive(Debug, Clone, Copy)]
pub enum HiddenStates<'a> {
    /// `[2B, T, H]`: the `B` chosen rows followed by the `B` rejected rows (one concatenated forward).
    Concatenated(&'a Tensor),
    /// Two `[B, T, H]` tensors; concatenated internally (a copy of the hidden states, small next to the
    /// logits). Labels stay `[2B, T]`, chosen rows first.
    Split {
        /// `[B, T, H]` chosen rows.
        chosen: &'a Tensor,
        /// `[B, T, H]` rejected rows.
        rejected: &'a Tensor,
    },
}

impl HiddenStates<'_> {
    fn tensor(&self) -> Result<Tensor> {
        match *self {
            HiddenStates::Concatenated(t) => Ok(t.shallow_clone()),
            HiddenStates::Split { chosen, rejected } => {
                validate::rank("hidden.chosen", chosen, 3, "[B, T, H] hidden states")?;
                validate::rank("hidden.rejected", rejected, 3, "[B, T, H] hidden states")?;
                if chosen.size() != rejected.size() {
                    return Err(Error::Shape {
                        arg: "hidden.rejected",
                        expected: format!("the chosen hidden states' shape {:?}", chosen.size()),
                        got: rejected.size(),
                    });
                }
                validate::same_device("hidden.rejected", rejected, "hidden.chosen", chosen)?;
                Ok(Tensor::f_cat(&[chosen, rejected], 0)?)
            }
        }
    }
}

/// The reference policy for the fused pair losses.
#[derive(Debug, Clone, Copy)]
pub enum FusedReference<'a> {
    /// The reference model's final hidden states for the same rows and its head (any hidden size);
    /// evaluated with the fused pass 1 under no_grad.
    Model {
        /// Reference hidden states, `[2B, T, H_ref]` or split.
        hidden: HiddenStates<'a>,
        /// Reference head, `[V, H_ref]` (+ `[V]` bias).
        head: LinearHead<'a>,
    },
    /// Precomputed summed reference log-probs `[2B]`, chosen rows first (e.g. cached in a dataset pass).
    LogProbs(&'a Tensor),
    /// Reference-free (`log π_ref ≡ 0`).
    Free,
}

/// Result of [`fused_loss`].
#[derive(Debug)]
pub struct FusedLoss<T> {
    /// Scalar loss whose value is the closure's loss and whose gradient w.r.t. the hidden states, weight
    /// and bias is the exact gradient of that loss. Call `backward` on it.
    pub loss: Tensor,
    /// Detached per-row log-prob sums `[R]` (f32; f64 for f64 inputs) and scored-token counts `[R]`.
    pub logps: SequenceLogProbs,
    /// Whatever else the closure returned (its tensors hang off a leaf, not the model: treat as values).
    pub value: T,
}

/// Per-row summed log-probs `[R]` and counts of `labels` under the linear head, without gradient and
/// without materializing the `[R, T, V]` logits (pass 1 only). Use it for reference models or to
/// precompute reference log-probs.
///
/// # Arguments
/// `hidden [R, T, H]` (f32, f64, bf16, f16), `head` (`[V, H]`, `[V]`, same dtype and device), `labels
/// [R, T]` i64 with `options.ignore_index` at unscored positions.
///
/// # Errors
/// [`Error::Shape`] (ranks, `H` of hidden vs weight, labels vs hidden, bias), [`Error::DType`],
/// [`Error::DeviceMismatch`], [`Error::EmptyBatch`], [`Error::InvalidParameter`] (options); with
/// validation [`Error::LabelOutOfRange`] and [`Error::NonFinite`].
pub fn fused_sequence_logprobs(
    hidden: &Tensor,
    head: LinearHead<'_>,
    labels: &Tensor,
    options: &FusedOptions,
) -> Result<SequenceLogProbs> {
    let prep = tch::no_grad(|| engine::prepare(hidden, &head, labels, options, NAMES))?;
    let (sums, _) = engine::forward(&prep, &head, options)?;
    check_finite(&sums, options, "hidden")?;
    Ok(SequenceLogProbs {
        sum: sums,
        count: prep.counts,
    })
}

const NAMES: [&str; 3] = ["hidden", "weight", "bias"];
const REF_NAMES: [&str; 3] = ["reference.hidden", "reference.weight", "reference.bias"];

fn check_finite(sums: &Tensor, options: &FusedOptions, arg: &'static str) -> Result<()> {
    if options.validate {
        validate::all_finite(
            arg,
            sums,
            "in the log-probs of its scored positions (NaN/±inf logits)",
        )?;
    }
    Ok(())
}

/// Whether autograd records operations at this point (not inside `no_grad`).
fn grad_enabled() -> Result<bool> {
    let probe = Tensor::f_zeros([1], (Kind::Float, tch::Device::Cpu))?.set_requires_grad(true);
    Ok(probe.f_mul_scalar(1.0)?.requires_grad())
}

/// The generic fused loss: per-row log-probs of `labels` from `hidden` through `head`, any scalar loss of
/// them computed by `loss_fn`, and a differentiable result.
///
/// `loss_fn` receives [`SequenceLogProbs`] whose `sum [R]` is a leaf that requires grad (f32; f64 for f64
/// inputs) and `count [R]`, and returns the scalar loss plus any value to pass through. The returned
/// [`FusedLoss::loss`] has the closure's value and carries the exact gradient of it w.r.t. `hidden`,
/// `head.weight` and `head.bias` (each only if it requires grad and grad mode is on).
///
/// # Errors
/// Everything [`fused_sequence_logprobs`] returns, whatever `loss_fn` returns, and [`Error::Shape`] if the
/// loss is not a scalar.
pub fn fused_loss<T, F>(
    hidden: HiddenStates<'_>,
    head: LinearHead<'_>,
    labels: &Tensor,
    options: &FusedOptions,
    loss_fn: F,
) -> Result<FusedLoss<T>>
where
    F: FnOnce(&SequenceLogProbs) -> Result<(Tensor, T)>,
{
    let hidden = hidden.tensor()?;
    let needs = Needs {
        hidden: hidden.requires_grad(),
        weight: head.weight.requires_grad(),
        bias: head.bias.is_some_and(|b| b.requires_grad()),
    };
    let any_grad = (needs.hidden || needs.weight || needs.bias) && grad_enabled()?;
    // The gather of scored hidden states keeps its graph only when h's gradient is wanted.
    let prep = if any_grad && needs.hidden {
        engine::prepare(&hidden, &head, labels, options, NAMES)?
    } else {
        tch::no_grad(|| engine::prepare(&hidden, &head, labels, options, NAMES))?
    };
    let (sums, lse) = engine::forward(&prep, &head, options)?;
    check_finite(&sums, options, "hidden")?;
    let counts = prep.counts.shallow_clone();
    if !any_grad {
        let logps = SequenceLogProbs {
            sum: sums.shallow_clone(),
            count: counts.shallow_clone(),
        };
        let (loss, value) = loss_fn(&logps)?;
        check_scalar(&loss)?;
        return Ok(FusedLoss {
            loss: loss.f_detach()?,
            logps,
            value,
        });
    }

    let leaf = sums.f_detach()?.set_requires_grad(true);
    let (loss, value, coef_rows) = tch::with_grad(|| -> Result<_> {
        let (loss, value) = loss_fn(&SequenceLogProbs {
            sum: leaf.shallow_clone(),
            count: counts.shallow_clone(),
        })?;
        check_scalar(&loss)?;
        let coef_rows = if loss.requires_grad() {
            let g = Tensor::f_run_backward(&[&loss], &[&leaf], false, false)?;
            g.into_iter().next().filter(|g| g.defined())
        } else {
            None
        };
        Ok((loss, value, coef_rows))
    })?;
    let loss = loss.f_detach()?;
    let surrogate = match coef_rows {
        Some(coef_rows) => {
            let coef = coef_rows
                .f_to_kind(prep.compute)?
                .f_index_select(0, &prep.seq_ids)?;
            let grads = engine::backward(&prep, &head, options, &lse, &coef, needs)?;
            surrogate(&prep, &head, &grads)?
        }
        // The loss does not depend on the log-probs: zero gradients, still a differentiable result.
        None => zero_surrogate(&prep, &head, needs)?,
    };
    let loss = loss.f_add(
        &surrogate
            .f_sub(&surrogate.f_detach()?)?
            .f_to_kind(loss.f_kind()?)?,
    )?;
    Ok(FusedLoss {
        loss,
        logps: SequenceLogProbs {
            sum: sums,
            count: counts,
        },
        value,
    })
}

fn check_scalar(loss: &Tensor) -> Result<()> {
    if !loss.size().is_empty() {
        return Err(Error::Shape {
            arg: "loss_fn result",
            expected: "a scalar (0-dim) loss".into(),
            got: loss.size(),
        });
    }
    Ok(())
}

/// `S = Σ h⊙g_h + Σ W⊙g_W + Σ b⊙g_b` over the terms that were computed.
fn surrogate(prep: &Prepared, head: &LinearHead<'_>, grads: &engine::Grads) -> Result<Tensor> {
    let mut terms = Vec::new();
    if let Some(g) = &grads.hidden {
        terms.push(engine::inner(&prep.h_valid, g, prep.compute)?);
    }
    if let Some(g) = &grads.weight {
        terms.push(engine::inner(head.weight, g, prep.compute)?);
    }
    if let (Some(g), Some(b)) = (&grads.bias, head.bias) {
        terms.push(engine::inner(b, g, prep.compute)?);
    }
    sum_terms(terms, prep)
}

fn zero_surrogate(prep: &Prepared, head: &LinearHead<'_>, needs: Needs) -> Result<Tensor> {
    let mut terms = Vec::new();
    let zero = |x: &Tensor| -> Result<Tensor> { Ok(x.f_sum(prep.compute)?.f_mul_scalar(0.0)?) };
    if needs.hidden {
        terms.push(zero(&prep.h_valid)?);
    }
    if needs.weight {
        terms.push(zero(head.weight)?);
    }
    if let (true, Some(b)) = (needs.bias, head.bias) {
        terms.push(zero(b)?);
    }
    sum_terms(terms, prep)
}

fn sum_terms(terms: Vec<Tensor>, prep: &Prepared) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for t in terms {
        total = Some(match total {
            None => t,
            Some(acc) => acc.f_add(&t)?,
        });
    }
    match total {
        Some(t) => Ok(t),
        None => Ok(Tensor::f_zeros([], (prep.compute, prep.h_valid.device()))?),
    }
}

/// Reference sums `[2B]` (detached) for the pair losses.
fn reference_sums(
    reference: FusedReference<'_>,
    labels: &Tensor,
    options: &FusedOptions,
) -> Result<Option<Tensor>> {
    let rows = labels.size().first().copied().unwrap_or(0);
    match reference {
        FusedReference::Model { hidden, head } => {
            let hidden = hidden.tensor()?;
            tch::no_grad(|| -> Result<Option<Tensor>> {
                let prep = engine::prepare(&hidden, &head, labels, options, REF_NAMES)?;
                let (sums, _) = engine::forward(&prep, &head, options)?;
                check_finite(&sums, options, "reference.hidden")?;
                Ok(Some(sums))
            })
        }
        FusedReference::LogProbs(sums) => {
            validate::float_tensor("reference log-probs", sums)?;
            validate::per_pair("reference log-probs", sums, "labels rows", Some(rows))?;
            validate::same_device("reference log-probs", sums, "labels", labels)?;
            Ok(Some(sums.f_detach()?))
        }
        FusedReference::Free => Ok(None),
    }
}

fn even_rows(labels: &Tensor) -> Result<()> {
    let size = labels.size();
    match size.first() {
        Some(&r) if r > 0 && r % 2 == 0 => Ok(()),
        Some(0) => Err(Error::EmptyBatch {
            arg: "labels",
            shape: size,
        }),
        _ => Err(Error::Shape {
            arg: "labels",
            expected: "[2B, T]: B chosen rows followed by B rejected rows".into(),
            got: size,
        }),
    }
}

/// Runs `f` on the policy's chosen / rejected halves and the split reference.
fn with_pairs<T>(
    logps: &SequenceLogProbs,
    reference: Option<&Tensor>,
    global: Option<GlobalBatch>,
    f: impl FnOnce(&PreferenceBatch<'_>) -> Result<T>,
) -> Result<T> {
    let (chosen, rejected) = logps.split_pairs()?;
    let b = chosen.len();
    let split = match reference {
        Some(sums) => Some((sums.f_narrow(0, 0, b)?, sums.f_narrow(0, b, b)?)),
        None => None,
    };
    let reference = match &split {
        Some((c, r)) => Reference::LogProbs {
            chosen: c,
            rejected: r,
        },
        None => Reference::Free,
    };
    let mut batch = PreferenceBatch::new(&chosen, &rejected, reference);
    batch.global = global;
    f(&batch)
}

fn detach_dpo(out: DpoOutput) -> Result<DpoOutput> {
    Ok(DpoOutput {
        loss: out.loss.f_detach()?,
        per_pair: out.per_pair.f_detach()?,
        metrics: out.metrics,
    })
}

fn detach_sft(out: SftOutput) -> Result<SftOutput> {
    Ok(SftOutput {
        loss: out.loss.f_detach()?,
        per_sequence: out.per_sequence.f_detach()?,
    })
}

/// RPO ([`rpo_loss`]) from the final hidden states and the LM head, fused (see the [module docs](self)).
///
/// # Arguments
/// - `config`: any [`RpoConfig`] (every DPO variant, SFT normalization and coefficient).
/// - `hidden`: `[2B, T, H]` (chosen rows first) or split; `head`: `[V, H]` weight (+ `[V]` bias).
/// - `labels`: `[2B, T]` i64, `options.ignore_index` at prompt and padding positions.
/// - `reference`: a reference model's hidden states + head, precomputed `[2B]` sums, or none.
/// - `global`: whole-step totals for gradient accumulation.
///
/// # Returns
/// The same [`RpoOutput`] as [`rpo_loss`] on the unfused log-probs; `loss` is differentiable w.r.t.
/// `hidden`, `head.weight` and `head.bias`, every other tensor is detached.
///
/// # Errors
/// Everything [`fused_sequence_logprobs`] and [`rpo_loss`] return (e.g. [`Error::NoValidTokens`] for an
/// empty chosen response under `SequenceMean`), [`Error::Shape`] for an odd row count, reference inputs
/// whose shapes disagree with the policy's.
pub fn fused_rpo_loss(
    config: &RpoConfig,
    hidden: HiddenStates<'_>,
    head: LinearHead<'_>,
    labels: &Tensor,
    reference: FusedReference<'_>,
    options: &FusedOptions,
    global: Option<GlobalBatch>,
) -> Result<RpoOutput> {
    even_rows(labels)?;
    config.dpo.validate()?;
    config.coefficient()?;
    let reference = reference_sums(reference, labels, options)?;
    let fused = fused_loss(hidden, head, labels, options, |logps| {
        let out = with_pairs(logps, reference.as_ref(), global, |batch| rpo_loss(config, batch))?;
        Ok((out.loss.shallow_clone(), out))
    })?;
    let out = fused.value;
    Ok(RpoOutput {
        loss: fused.loss,
        per_pair: out.per_pair.f_detach()?,
        dpo: detach_dpo(out.dpo)?,
        sft: detach_sft(out.sft)?,
        coefficient: out.coefficient,
    })
}

/// A DPO-family loss ([`dpo_loss`]) from the final hidden states and the LM head, fused. Arguments,
/// outputs and errors as [`fused_rpo_loss`].
pub fn fused_dpo_loss(
    config: &DpoConfig,
    hidden: HiddenStates<'_>,
    head: LinearHead<'_>,
    labels: &Tensor,
    reference: FusedReference<'_>,
    options: &FusedOptions,
    global: Option<GlobalBatch>,
) -> Result<DpoOutput> {
    even_rows(labels)?;
    config.validate()?;
    let reference = reference_sums(reference, labels, options)?;
    let fused = fused_loss(hidden, head, labels, options, |logps| {
        let out = with_pairs(logps, reference.as_ref(), global, |batch| dpo_loss(config, batch))?;
        Ok((out.loss.shallow_clone(), out))
    })?;
    let out = detach_dpo(fused.value)?;
    Ok(DpoOutput {
        loss: fused.loss,
        ..out
    })
}

/// The SFT loss ([`sft_loss`]) of the chosen responses from their final hidden states `[B, T, H]` and the
/// LM head, fused; `labels [B, T]`. `options.validate` is passed to [`sft_loss`] as its `validate`.
///
/// # Errors
/// Everything [`fused_sequence_logprobs`] and [`sft_loss`] return.
pub fn fused_sft_loss(
    normalization: SftNormalization,
    hidden: &Tensor,
    head: LinearHead<'_>,
    labels: &Tensor,
    options: &FusedOptions,
    global: Option<GlobalBatch>,
) -> Result<SftOutput> {
    let fused = fused_loss(
        HiddenStates::Concatenated(hidden),
        head,
        labels,
        options,
        |logps| {
            let out = sft_loss(normalization, logps, global, options.validate)?;
            Ok((out.loss.shallow_clone(), out))
        },
    )?;
    let out = detach_sft(fused.value)?;
    Ok(SftOutput {
        loss: fused.loss,
        ..out
    })
}
