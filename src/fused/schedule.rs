//! The gradient schedules of the fused engine: which gradients are wanted, the two-pass schedule, the
//! one-pass schedule of losses separable over groups ([`super::one_pass`]), and the surrogate that hands the
//! analytic gradients to autograd.

use super::engine::{self, Needs, Prepared, NAMES};
use super::one_pass::{self, Grouping};
use super::{check_finite, FusedLoss, LinearHead};
use crate::autograd::grad_enabled;
use crate::error::{Error, InputError, Result};
use crate::logprobs::{LogProbOptions, SequenceLogProbs, TokenStats};
use tch::Tensor;

/// [`super::fused_loss`]: the two-pass schedule for any loss.
pub(super) fn two_pass_loss<T>(
    hidden: &Tensor,
    head: &LinearHead,
    labels: &Tensor,
    options: &LogProbOptions,
    loss_fn: impl FnOnce(&SequenceLogProbs) -> Result<(Tensor, T)>,
) -> Result<FusedLoss<T>> {
    let (needs, any_grad) = gradient_needs(hidden, head)?;
    let prep = prepare_for(hidden, head, labels, options, any_grad && needs.hidden)?;
    two_pass(&prep, head, options, needs, any_grad, None, |_| Ok(()), loss_fn)
}

/// Where the gradient w.r.t. the head weight goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WeightGrad {
    /// Through the returned loss, like every other gradient (the public functions).
    Surrogate,
    /// Straight into the weight's `.grad` while the loss is computed, when the weight is a leaf whose `.grad`
    /// is defined in the weight's own dtype (else as `Surrogate`). For a caller that runs `loss.backward()`
    /// exactly once, unscaled, and clears `.grad` when it does not (the trainer): the same gradients without
    /// the separate `[V, H]` accumulator and autograd's `[V, H]` product of it.
    #[cfg_attr(not(feature = "train"), allow(dead_code))]
    IntoGrad,
}

/// The head weight's `.grad`, when [`WeightGrad::IntoGrad`] may add to it directly: a `.grad` in the weight's
/// own dtype (a bf16 weight's bf16 `.grad` takes each chunk's product through `addmm_`, which accumulates in
/// f32 and rounds once per chunk).
fn weight_grad_target(weight: &Tensor, mode: WeightGrad) -> Result<Option<Tensor>> {
    match mode {
        WeightGrad::Surrogate => Ok(None),
        WeightGrad::IntoGrad => crate::autograd::leaf_grad(weight, weight.f_kind()?),
    }
}

/// Which gradients are wanted, and whether any is (grad mode on).
fn gradient_needs(hidden: &Tensor, head: &LinearHead) -> Result<(Needs, bool)> {
    let needs = Needs {
        hidden: hidden.requires_grad(),
        weight: head.weight.requires_grad(),
        bias: head.bias.as_ref().is_some_and(Tensor::requires_grad),
    };
    let any_grad = (needs.hidden || needs.weight || needs.bias) && grad_enabled()?;
    Ok((needs, any_grad))
}

/// The scored positions; the gather of scored hidden states keeps its graph only when `graph` (h's
/// gradient is wanted).
fn prepare_for(
    hidden: &Tensor,
    head: &LinearHead,
    labels: &Tensor,
    options: &LogProbOptions,
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
#[allow(clippy::too_many_arguments)]
fn two_pass<T>(
    prep: &Prepared,
    head: &LinearHead,
    options: &LogProbOptions,
    needs: Needs,
    any_grad: bool,
    weight_into: Option<Tensor>,
    check: impl FnOnce(&SequenceLogProbs) -> Result<()>,
    loss_fn: impl FnOnce(&SequenceLogProbs) -> Result<(Tensor, T)>,
) -> Result<FusedLoss<T>> {
    let engine::Pass1 { sums, lse, stats } = engine::forward(prep, head, options)?;
    check_finite(&sums, options, "hidden")?;
    let logps = SequenceLogProbs {
        sum: sums.shallow_clone(),
        count: prep.counts.shallow_clone(),
        stats: None,
    }
    .with_stats_of(&stats)?;
    check(&logps)?;
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
                head,
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
    differentiable(prep, head, needs, loss, grads.as_ref(), logps, value)
}

/// `loss.detach() + S − S.detach()` with the surrogate `S` of `grads` (zero gradients for what `needs` asks
/// when `None`: the loss does not depend on the log-probs, the result is still differentiable).
fn differentiable<T>(
    prep: &Prepared,
    head: &LinearHead,
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

/// [`super::fused_loss`] for a loss that is separable over `grouping`'s groups (the built-in losses): the
/// one-pass schedule ([`one_pass`]) when every group fits the chunk budget and a gradient is wanted, else the
/// two passes. Same value and gradients either way (up to rounding order).
///
/// `loss_fn` is the pure per-chunk function (called per chunk by the one-pass schedule, on the sums so far);
/// `check` runs once, on the final log-probs, before the loss of the two-pass schedule and after the one
/// pass (the caller's input validation: it must not depend on which schedule ran).
#[allow(clippy::too_many_arguments)]
pub(crate) fn grouped_loss<T>(
    hidden: &Tensor,
    head: &LinearHead,
    labels: &Tensor,
    options: &LogProbOptions,
    grouping: Grouping,
    weight_grad: WeightGrad,
    check: impl FnOnce(&SequenceLogProbs) -> Result<()>,
    loss_fn: impl Fn(&SequenceLogProbs) -> Result<(Tensor, T)>,
) -> Result<FusedLoss<T>> {
    let (needs, any_grad) = gradient_needs(hidden, head)?;
    let prep = prepare_for(hidden, head, labels, options, any_grad && needs.hidden)?;
    if !any_grad {
        return two_pass(&prep, head, options, needs, any_grad, None, check, &loss_fn);
    }
    let weight_into = weight_grad_target(&head.weight, weight_grad)?;
    let coef_of = |sums: &Tensor| -> Result<Option<Tensor>> {
        Ok(loss_and_coef(sums, &prep.counts, &None, &loss_fn)?.2)
    };
    let pass = one_pass::run(
        &prep,
        head,
        options,
        grouping,
        needs,
        weight_into.as_ref().map(Tensor::shallow_clone),
        coef_of,
    )?;
    let Some(pass) = pass else {
        return two_pass(
            &prep,
            head,
            options,
            needs,
            any_grad,
            weight_into,
            check,
            &loss_fn,
        );
    };
    check_finite(&pass.sums, options, "hidden")?;
    let logps = SequenceLogProbs {
        sum: pass.sums.shallow_clone(),
        count: prep.counts.shallow_clone(),
        stats: None,
    }
    .with_stats_of(&pass.stats)?;
    check(&logps)?;
    let (loss, value) = tch::no_grad(|| loss_fn(&logps))?;
    check_scalar(&loss)?;
    let needs = needs.through_loss(weight_into.is_some());
    differentiable(&prep, head, needs, loss, pass.grads.as_ref(), logps, value)
}

fn check_scalar(loss: &Tensor) -> Result<()> {
    if !loss.size().is_empty() {
        return Err(Error::Input(InputError::Shape {
            arg: "loss_fn result",
            expected: "a scalar (0-dim) loss".into(),
            got: loss.size(),
        }));
    }
    Ok(())
}

/// `S = Σ h⊙g_h + Σ W⊙g_W + Σ b⊙g_b` over the terms that were computed.
fn surrogate(prep: &Prepared, head: &LinearHead, grads: &engine::Grads) -> Result<Tensor> {
    let mut terms = Vec::new();
    if let Some(g) = &grads.hidden {
        terms.push(engine::inner(&prep.h_valid, g, prep.compute)?);
    }
    if let Some(g) = &grads.weight {
        terms.push(engine::inner(&head.weight, g, prep.compute)?);
    }
    if let (Some(g), Some(b)) = (&grads.bias, &head.bias) {
        terms.push(engine::inner(b, g, prep.compute)?);
    }
    sum_terms(terms, prep)
}

fn zero_surrogate(prep: &Prepared, head: &LinearHead, needs: Needs) -> Result<Tensor> {
    let mut terms = Vec::new();
    let zero = |x: &Tensor| -> Result<Tensor> { Ok(x.f_sum(prep.compute)?.f_mul_scalar(0.0)?) };
    if needs.hidden {
        terms.push(zero(&prep.h_valid)?);
    }
    if needs.weight {
        terms.push(zero(&head.weight)?);
    }
    if let (true, Some(b)) = (needs.bias, &head.bias) {
        terms.push(zero(b)?);
    }
    sum_terms(terms, prep)
}

fn sum_terms(terms: Vec<Tensor>, prep: &Prepared) -> Result<Tensor> {
    let mut terms = terms.into_iter();
    let Some(mut total) = terms.next() else {
        return Ok(Tensor::f_zeros([], (prep.compute, prep.h_valid.device()))?);
    };
    for t in terms {
        total = total.f_add(&t)?;
    }
    Ok(total)
}
