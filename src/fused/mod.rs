//! Fused linear-head losses: RPO, DPO and SFT straight from the final hidden states and the LM-head
//! weight, without ever holding the `[2B, T, V]` logits or their gradient.
//!
//! The logits are `z = softcap(s · (h·Wᵀ + b))` with the head's optional bias `b`, logit scale `s` and Gemma-2
//! final-logit soft-cap `softcap(u) = c·tanh(u / c)` ([`LinearHead`]).
//!
//! # Algorithm
//! 1. Select the scored positions (labels ≠ ignore index, after the optional causal shift) of the flattened
//!    hidden states: prompt and padding tokens never reach the matmul.
//! 2. **Pass 1** (no grad): for chunks of scored tokens, logits in f32, logsumexp and the target logit →
//!    per-token log-prob, index-added into per-sequence sums `[2B]` accumulated in f64 (returned in f32);
//!    with [`crate::LogProbOptions::token_stats`] also the per-sequence token statistics.
//! 3. The loss ([`rpo_loss`], [`dpo_loss`], [`sft_loss`])
//!    is evaluated on those small tensors with ordinary autograd; one backward to a leaf gives
//!    `dL/d(sum of sequence r)` — the coefficient `c` of every token of `r`.
//! 4. **Pass 2** (no grad): recompute each chunk's logits and apply `dL/dz = c · (onehot(y) − softmax(z))`
//!    (chained through soft-cap and scale): `grad_h = dZ·W`, `grad_W += dZᵀ·h` (f32), `grad_b += Σ dZ`.
//! 5. The returned loss is `L.detach() + S − S.detach()` with `S = Σ h⊙g_h + Σ W⊙g_W + Σ b⊙g_b`
//!    (g detached): its value is `L`, and `loss.backward()` delivers exactly the gradients into whatever
//!    produced `h`, `W` and `b` (a head tied to the embedding included), scaled by any upstream factor.
//!
//! Memory: the head weight, one f32 working set of at most [`FusedOptions::chunk_bytes`] (never `[N, V]`), the
//! f32 weight-gradient accumulator and `[N, H]` hidden-state gradients — independent of `T·V`.
//! See `docs/fused.md` for the design and measured numbers.
//!
//! Host syncs: selecting the scored positions (`nonzero`, `masked_select`: data-dependent sizes) reads the
//! token count back once per scored batch (policy, and a `Hidden` reference); validation
//! ([`crate::LogProbOptions::validate_inputs`]) reads its checks back.
//!
//! # Outputs
//! The same output structs as the unfused API. Only `loss` is differentiable (w.r.t. the hidden states,
//! weight and bias); the other tensors (`per_pair`, the DPO and SFT parts) are detached values.

pub(crate) mod engine;
mod head;
mod one_pass;
mod options;

pub use head::LinearHead;
pub use options::{FusedOptions, DEFAULT_FUSED_CHUNK_BYTES};

use crate::error::{Error, Result};
use crate::logprobs::{SequenceLogProbs, TokenStats};
use crate::loss::dpo::{dpo_loss, DpoConfig, DpoOutput};
use crate::loss::rpo::{rpo_loss, RpoConfig, RpoOutput};
use crate::loss::sft::{sft_loss, SftConfig, SftOutput};
use crate::loss::{sft_reference_error, GlobalBatch, PreferenceBatch, Reference, SftBatch};
use crate::validate;
use engine::{Needs, Prepared, NAMES};
use one_pass::Grouping;
use tch::{Kind, Tensor};

/// The input of the fused losses: final hidden states of one concatenated forward pass, the LM head, labels,
/// the reference, options and the optional whole-step normalizer.
#[derive(Debug, Clone)]
pub struct HiddenBatch<'a> {
    /// `[2B, T, H]` final hidden states (after the last norm): the `B` chosen rows followed by the `B`
    /// rejected rows ([`fused_sft_loss`]: `[B, T, H]`, every row a target). f32, f64, bf16 or f16.
    pub hidden: &'a Tensor,
    /// The policy's LM head (weight, bias, logit scale, soft-cap).
    pub head: LinearHead<'a>,
    /// `[2B, T]` i64 labels, `options.logprobs.ignore_index` at prompt and padding positions.
    pub labels: &'a Tensor,
    /// The reference: log-probs `[2B]`, logits `[2B, T, V]`, hidden states + head (same `V`), or none.
    pub reference: Reference<'a>,
    /// Label reading, validation, token statistics and the fused chunk budget.
    pub options: FusedOptions,
    /// Totals of the whole accumulated step; `None` normalizes within this batch.
    pub global: Option<GlobalBatch>,
}

impl<'a> HiddenBatch<'a> {
    /// A reference-free batch with default options; set the rest with the `with_` methods.
    pub fn new(hidden: &'a Tensor, head: LinearHead<'a>, labels: &'a Tensor) -> Self {
        Self {
            hidden,
            head,
            labels,
            reference: Reference::Free,
            options: FusedOptions::default(),
            global: None,
        }
    }
    /// Sets the reference.
    pub fn with_reference(mut self, reference: Reference<'a>) -> Self {
        self.reference = reference;
        self
    }
    /// Sets the options.
    pub fn with_options(mut self, options: FusedOptions) -> Self {
        self.options = options;
        self
    }
    /// Sets the totals of the whole accumulated step.
    pub fn with_global(mut self, global: GlobalBatch) -> Self {
        self.global = Some(global);
        self
    }
    /// Sets or clears the totals of the whole accumulated step.
    pub fn with_global_opt(mut self, global: Option<GlobalBatch>) -> Self {
        self.global = global;
        self
    }
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
/// `hidden [R, T, H]` (f32, f64, bf16, f16), `head` (`[V, H]` weight, `[V]` bias, same dtype and device;
/// scale and soft-cap), `labels [R, T]` i64 with `options.logprobs.ignore_index` at unscored positions. With
/// `options.logprobs.token_stats` the result carries the per-row token statistics.
///
/// # Errors
/// [`Error::Shape`] (ranks, `H` of hidden vs weight, labels vs hidden, bias), [`Error::DType`],
/// [`Error::DeviceMismatch`], [`Error::EmptyBatch`], [`Error::InvalidParameter`] (options, head scale or
/// soft-cap); with validation [`Error::LabelOutOfRange`] and [`Error::NonFinite`].
pub fn fused_sequence_logprobs(
    hidden: &Tensor,
    head: LinearHead<'_>,
    labels: &Tensor,
    options: &FusedOptions,
) -> Result<SequenceLogProbs> {
    let prep = tch::no_grad(|| engine::prepare(hidden, &head, labels, options, NAMES))?;
    let pass = engine::forward(&prep, &head, options)?;
    check_finite(&pass.sums, options, "hidden")?;
    Ok(SequenceLogProbs {
        sum: pass.sums,
        count: prep.counts,
        stats: pass.stats,
    })
}

fn check_finite(sums: &Tensor, options: &FusedOptions, arg: &'static str) -> Result<()> {
    if options.logprobs.validate_inputs {
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
    hidden: &Tensor,
    head: LinearHead<'_>,
    labels: &Tensor,
    options: &FusedOptions,
    loss_fn: F,
) -> Result<FusedLoss<T>>
where
    F: FnOnce(&SequenceLogProbs) -> Result<(Tensor, T)>,
{
    let (needs, any_grad) = gradient_needs(hidden, &head)?;
    let prep = prepare_for(hidden, &head, labels, options, any_grad && needs.hidden)?;
    two_pass(&prep, head, options, needs, any_grad, None, loss_fn)
}

/// Where the gradient w.r.t. the head weight goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WeightGrad {
    /// Through the returned loss, like every other gradient (the public functions).
    Surrogate,
    /// Straight into the weight's `.grad` while the loss is computed, when the weight is a leaf whose `.grad`
    /// is defined in the compute dtype (else as `Surrogate`). For a caller that runs `loss.backward()`
    /// exactly once, unscaled, and clears `.grad` when it does not (the trainer): the same gradients without
    /// the separate `[V, H]` accumulator and autograd's `[V, H]` product of it.
    #[cfg_attr(not(feature = "train"), allow(dead_code))]
    IntoGrad,
}

/// The head weight's `.grad`, when [`WeightGrad::IntoGrad`] may add to it directly.
fn weight_grad_target(weight: &Tensor, compute: Kind, mode: WeightGrad) -> Result<Option<Tensor>> {
    match mode {
        WeightGrad::Surrogate => Ok(None),
        WeightGrad::IntoGrad => crate::autograd::leaf_grad(weight, compute),
    }
}

/// Which gradients are wanted, and whether any is (grad mode on).
fn gradient_needs(hidden: &Tensor, head: &LinearHead<'_>) -> Result<(Needs, bool)> {
    let needs = Needs {
        hidden: hidden.requires_grad(),
        weight: head.weight.requires_grad(),
        bias: head.bias.is_some_and(|b| b.requires_grad()),
    };
    let any_grad = (needs.hidden || needs.weight || needs.bias) && grad_enabled()?;
    Ok((needs, any_grad))
}

/// The scored positions; the gather of scored hidden states keeps its graph only when `graph` (h's
/// gradient is wanted).
fn prepare_for(
    hidden: &Tensor,
    head: &LinearHead<'_>,
    labels: &Tensor,
    options: &FusedOptions,
    graph: bool,
) -> Result<Prepared> {
    if graph {
        engine::prepare(hidden, head, labels, options, NAMES)
    } else {
        tch::no_grad(|| engine::prepare(hidden, head, labels, options, NAMES))
    }
}

/// `loss_fn` on the leaf `sums` (with `counts` and `stats`): the loss, its value, and `dL/dsums` when the
/// loss depends on the sums.
fn loss_and_coef<T>(
    sums: &Tensor,
    counts: &Tensor,
    stats: &Option<TokenStats>,
    loss_fn: impl FnOnce(&SequenceLogProbs) -> Result<(Tensor, T)>,
) -> Result<(Tensor, T, Option<Tensor>)> {
    let leaf = sums.f_detach()?.set_requires_grad(true);
    tch::with_grad(|| -> Result<_> {
        let (loss, value) = loss_fn(
            &SequenceLogProbs {
                sum: leaf.shallow_clone(),
                count: counts.shallow_clone(),
                stats: None,
            }
            .with_stats_of(stats)?,
        )?;
        check_scalar(&loss)?;
        let coef_rows = if loss.requires_grad() {
            let g = Tensor::f_run_backward(&[&loss], &[&leaf], false, false)?;
            g.into_iter().next().filter(|g| g.defined())
        } else {
            None
        };
        Ok((loss, value, coef_rows))
    })
}

/// The two-pass schedule on prepared positions (pass 1, the loss, pass 2 when a gradient is wanted).
fn two_pass<T>(
    prep: &Prepared,
    head: LinearHead<'_>,
    options: &FusedOptions,
    needs: Needs,
    any_grad: bool,
    weight_into: Option<Tensor>,
    loss_fn: impl FnOnce(&SequenceLogProbs) -> Result<(Tensor, T)>,
) -> Result<FusedLoss<T>> {
    let engine::Pass1 { sums, lse, stats } = engine::forward(prep, &head, options)?;
    check_finite(&sums, options, "hidden")?;
    let logps = SequenceLogProbs {
        sum: sums.shallow_clone(),
        count: prep.counts.shallow_clone(),
        stats: None,
    }
    .with_stats_of(&stats)?;
    if !any_grad {
        let (loss, value) = loss_fn(&logps)?;
        check_scalar(&loss)?;
        return Ok(FusedLoss {
            loss: loss.f_detach()?,
            logps,
            value,
        });
    }
    let (loss, value, coef_rows) = loss_and_coef(&sums, &prep.counts, &stats, loss_fn)?;
    let grads = match coef_rows {
        Some(coef_rows) => {
            let coef = coef_rows
                .f_to_kind(prep.compute)?
                .f_index_select(0, &prep.seq_ids)?;
            Some(engine::backward(
                prep,
                &head,
                options,
                &lse,
                &coef,
                needs,
                weight_into.as_ref().map(Tensor::shallow_clone),
            )?)
        }
        None => None,
    };
    let needs = needs.through_loss(weight_into.is_some());
    differentiable(prep, &head, needs, loss, grads.as_ref(), logps, value)
}

/// `loss.detach() + S − S.detach()` with the surrogate `S` of `grads` (zero gradients for what `needs` asks
/// when `None`: the loss does not depend on the log-probs, the result is still differentiable).
fn differentiable<T>(
    prep: &Prepared,
    head: &LinearHead<'_>,
    needs: Needs,
    loss: Tensor,
    grads: Option<&engine::Grads>,
    logps: SequenceLogProbs,
    value: T,
) -> Result<FusedLoss<T>> {
    let loss = loss.f_detach()?;
    let surrogate = match grads {
        Some(grads) => surrogate(prep, head, grads)?,
        None => zero_surrogate(prep, head, needs)?,
    };
    let loss = loss.f_add(
        &surrogate
            .f_sub(&surrogate.f_detach()?)?
            .f_to_kind(loss.f_kind()?)?,
    )?;
    Ok(FusedLoss { loss, logps, value })
}

/// [`fused_loss`] for a loss that is separable over `grouping`'s groups (the built-in losses): the one-pass
/// schedule ([`one_pass`]) when every group fits the chunk budget and a gradient is wanted, else the two
/// passes. Same value and gradients either way (up to rounding order).
fn fused_grouped_loss<T>(
    hidden: &Tensor,
    head: LinearHead<'_>,
    labels: &Tensor,
    options: &FusedOptions,
    grouping: Grouping,
    weight_grad: WeightGrad,
    loss_fn: impl Fn(&SequenceLogProbs) -> Result<(Tensor, T)>,
) -> Result<FusedLoss<T>> {
    let (needs, any_grad) = gradient_needs(hidden, &head)?;
    let prep = prepare_for(hidden, &head, labels, options, any_grad && needs.hidden)?;
    if !any_grad {
        return two_pass(&prep, head, options, needs, any_grad, None, &loss_fn);
    }
    let weight_into = weight_grad_target(head.weight, prep.compute, weight_grad)?;
    let coef_of = |sums: &Tensor| -> Result<Option<Tensor>> {
        Ok(loss_and_coef(sums, &prep.counts, &None, &loss_fn)?.2)
    };
    let pass = one_pass::run(
        &prep,
        &head,
        options,
        grouping,
        needs,
        weight_into.as_ref().map(Tensor::shallow_clone),
        coef_of,
    )?;
    let Some(pass) = pass else {
        return two_pass(&prep, head, options, needs, any_grad, weight_into, &loss_fn);
    };
    check_finite(&pass.sums, options, "hidden")?;
    let logps = SequenceLogProbs {
        sum: pass.sums.shallow_clone(),
        count: prep.counts.shallow_clone(),
        stats: None,
    }
    .with_stats_of(&pass.stats)?;
    let (loss, value) = tch::no_grad(|| loss_fn(&logps))?;
    check_scalar(&loss)?;
    let needs = needs.through_loss(weight_into.is_some());
    differentiable(&prep, &head, needs, loss, pass.grads.as_ref(), logps, value)
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
    let mut total = crate::loss::Accumulator::default();
    for t in terms {
        total.add(t)?;
    }
    match total.into_inner() {
        Some(t) => Ok(t),
        None => Ok(Tensor::f_zeros([], (prep.compute, prep.h_valid.device()))?),
    }
}

/// The detached `[2B]` reference sums of a fused batch (`Logits` / `Hidden` scored under no_grad).
fn reference_sums(batch: &HiddenBatch<'_>) -> Result<Option<Tensor>> {
    batch.options.validate()?;
    validate::rank("weight", batch.head.weight, 2, "[V, H] linear-head weight")?;
    batch.reference.resolve(
        batch.labels,
        batch.head.vocab(),
        None,
        &batch.options,
        batch.labels,
    )
}

fn even_rows(labels: &Tensor) -> Result<()> {
    crate::logprobs::split_rows("labels", labels).map(|_| ())
}

/// Runs `f` on the policy's `[2B]` log-probs with the resolved reference.
fn with_pairs<T>(
    logps: &SequenceLogProbs,
    reference: Option<&Tensor>,
    global: Option<GlobalBatch>,
    f: impl FnOnce(&PreferenceBatch<'_>) -> Result<T>,
) -> Result<T> {
    let reference = match reference {
        Some(sums) => Reference::LogProbs(sums),
        None => Reference::Free,
    };
    f(&PreferenceBatch::new(logps, reference).with_global_opt(global))
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
/// - `batch`: `[2B, T, H]` hidden states (chosen rows first), the head, `[2B, T]` labels, the reference,
///   options and the optional whole-step totals ([`HiddenBatch`]).
///
/// # Returns
/// The same [`RpoOutput`] as [`rpo_loss`] on the unfused log-probs; `loss` is differentiable w.r.t. the
/// hidden states, the head weight and bias, every other tensor is detached.
///
/// # Errors
/// Everything [`fused_sequence_logprobs`] and [`rpo_loss`] return (e.g. [`Error::NoValidTokens`] for an
/// empty chosen response under `SequenceMean`), [`Error::Shape`] for an odd row count, reference inputs
/// whose shapes disagree with the policy's, a reference head with another vocabulary size.
pub fn fused_rpo_loss(config: &RpoConfig, batch: &HiddenBatch<'_>) -> Result<RpoOutput> {
    rpo_with(config, batch, WeightGrad::Surrogate)
}

/// [`fused_rpo_loss`] with the head weight's gradient put where `weight_grad` says (the trainer's training
/// passes: [`WeightGrad::IntoGrad`]).
pub(crate) fn rpo_with(
    config: &RpoConfig,
    batch: &HiddenBatch<'_>,
    weight_grad: WeightGrad,
) -> Result<RpoOutput> {
    even_rows(batch.labels)?;
    config.validate()?;
    let fused = fused_pair_loss(batch, weight_grad, |b| {
        let out = rpo_loss(config, b)?;
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
pub fn fused_dpo_loss(config: &DpoConfig, batch: &HiddenBatch<'_>) -> Result<DpoOutput> {
    even_rows(batch.labels)?;
    config.validate()?;
    let fused = fused_pair_loss(batch, WeightGrad::Surrogate, |b| {
        let out = dpo_loss(config, b)?;
        Ok((out.loss.shallow_clone(), out))
    })?;
    let out = detach_dpo(fused.value)?;
    Ok(DpoOutput {
        loss: fused.loss,
        ..out
    })
}

/// A preference loss `loss_fn` of the policy's pairs (with the batch's resolved reference and totals),
/// fused and grouped by pairs. The caller has checked that the rows are even.
fn fused_pair_loss<T>(
    batch: &HiddenBatch<'_>,
    weight_grad: WeightGrad,
    loss_fn: impl Fn(&PreferenceBatch<'_>) -> Result<(Tensor, T)>,
) -> Result<FusedLoss<T>> {
    let reference = reference_sums(batch)?;
    fused_grouped_loss(
        batch.hidden,
        batch.head,
        batch.labels,
        &batch.options,
        Grouping::Pairs,
        weight_grad,
        |logps| with_pairs(logps, reference.as_ref(), batch.global, &loss_fn),
    )
}

/// The SFT loss ([`sft_loss`]) from final hidden states and the LM head, fused: every row of `batch` is a
/// target sequence (`hidden [B, T, H]`, `labels [B, T]`); the reference must be [`Reference::Free`].
///
/// # Errors
/// Everything [`fused_sequence_logprobs`] and [`sft_loss`] return; [`Error::Config`] for a reference.
pub fn fused_sft_loss(config: &SftConfig, batch: &HiddenBatch<'_>) -> Result<SftOutput> {
    if !matches!(batch.reference, Reference::Free) {
        return Err(sft_reference_error(&batch.reference));
    }
    config.validate()?;
    let fused = fused_grouped_loss(
        batch.hidden,
        batch.head,
        batch.labels,
        &batch.options,
        Grouping::Rows,
        WeightGrad::Surrogate,
        |logps| {
            let out = sft_loss(config, &SftBatch::new(logps).with_global_opt(batch.global))?;
            Ok((out.loss.shallow_clone(), out))
        },
    )?;
    let out = detach_sft(fused.value)?;
    Ok(SftOutput {
        loss: fused.loss,
        ..out
    })
}
