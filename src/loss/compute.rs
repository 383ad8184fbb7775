//! The one entry point of every loss: [`compute_loss`], from every input level.

use crate::error::Result;
use crate::fused::{self, Grouping, LinearHead, WeightGrad};
use crate::logprobs::{sequence_logprobs, split_rows, LogProbOptions, SequenceLogProbs};
use crate::loss::objective::rows_reference_error;
use crate::loss::{LossBatch, Objective, PolicyInput, Reference, RowLayout, Sequences};
use crate::validate;
use tch::Tensor;

/// Runs `objective` on `batch` at its input level (see the [module docs](crate::loss)).
///
/// # Arguments
/// - `objective`: any [`Objective`] — [`crate::DpoConfig`], [`crate::SftConfig`], [`crate::RpoConfig`], or
///   your own.
/// - `batch`: the policy at one input level (`[2B]` rows, chosen first, for a preference objective; `[B]`
///   target rows for SFT), the [`Reference`], the optional [`crate::GlobalBatch`] and the options.
///
/// # Returns
/// The objective's output. On the log-prob and logits levels every tensor is differentiable as autograd makes
/// it; on the hidden-state level only the loss is (w.r.t. the hidden states, the head weight and bias), every
/// other tensor is detached.
///
/// # Errors
/// The objective's [`Objective::validate`] and [`Objective::check_inputs`];
/// [`InputError::InvalidParameter`](crate::InputError::InvalidParameter) for the options or a non-positive global total;
/// [`InputError::Config`](crate::InputError::Config) for a reference at the log-prob level given as logits or hidden states (no labels
/// to score it) or any reference to an SFT objective; [`InputError::Shape`](crate::InputError::Shape) for an odd row count of a
/// preference objective, reference inputs whose shapes disagree with the policy's, a reference head with
/// another vocabulary; [`InputError::BatchMismatch`](crate::InputError::BatchMismatch), [`InputError::EmptyBatch`](crate::InputError::EmptyBatch), [`InputError::DType`](crate::InputError::DType),
/// [`InputError::DeviceMismatch`](crate::InputError::DeviceMismatch) for inputs; everything [`crate::sequence_logprobs`] and
/// [`crate::fused_sequence_logprobs`] return; with `validate_inputs`, [`InputError::NonFinite`](crate::InputError::NonFinite) for NaN /
/// ±inf policy or reference log-probs.
pub fn compute_loss<O: Objective>(objective: &O, batch: &LossBatch<'_>) -> Result<O::Output> {
    compute_loss_with(objective, batch, WeightGrad::Surrogate)
}

/// [`compute_loss`] with the head weight's gradient put where `weight_grad` says (hidden-state level only;
/// the trainer's training passes use [`WeightGrad::IntoGrad`]).
pub(crate) fn compute_loss_with<O: Objective>(
    objective: &O,
    batch: &LossBatch<'_>,
    weight_grad: WeightGrad,
) -> Result<O::Output> {
    let layout = objective.layout();
    if layout == RowLayout::Rows && !matches!(batch.reference, Reference::Free) {
        return Err(rows_reference_error(&batch.reference));
    }
    match &batch.policy {
        PolicyInput::LogProbs(policy) => {
            objective.validate()?;
            batch.options.validate()?;
            check_policy(objective.layout(), policy, batch.options.validate_inputs)?;
            let reference = batch.reference.log_probs(policy.len(), &policy.sum)?;
            evaluate_checked(objective, batch, policy, reference.as_ref())
        }
        PolicyInput::Logits { logits, labels } => {
            objective.validate()?;
            let policy = sequence_logprobs(logits, labels, &batch.options)?;
            let shape = logits.size();
            let reference =
                batch
                    .reference
                    .resolve(labels, shape[2], Some(&shape), &batch.options, &policy.sum)?;
            check_policy(objective.layout(), &policy, batch.options.validate_inputs)?;
            evaluate_checked(objective, batch, &policy, reference.as_ref())
        }
        PolicyInput::Hidden { hidden, head, labels } => {
            fused_level(objective, batch, hidden, head, labels, weight_grad)
        }
    }
}

/// The argument names of the policy's sums and counts in errors.
fn names(layout: RowLayout) -> (&'static str, &'static str) {
    match layout {
        RowLayout::Pairs => ("policy.sum", "policy.count"),
        RowLayout::Rows => ("chosen.sum", "chosen.count"),
    }
}

/// Checks the policy's per-sequence log-probs: shapes, dtypes, devices, an even row count for pairs; with
/// `validating` finiteness (syncs the device).
fn check_policy(layout: RowLayout, policy: &SequenceLogProbs, validating: bool) -> Result<()> {
    let (sum_arg, count_arg) = names(layout);
    validate::float_tensor(sum_arg, &policy.sum)?;
    let rows = validate::per_pair(sum_arg, &policy.sum, sum_arg, None)?;
    validate::per_pair(count_arg, &policy.count, sum_arg, Some(rows))?;
    validate::same_device(count_arg, &policy.count, sum_arg, &policy.sum)?;
    if validating {
        validate::all_finite(sum_arg, &policy.sum, "among the policy log-probs")?;
    }
    if layout == RowLayout::Pairs {
        let _ = split_rows(sum_arg, &policy.sum)?;
    }
    Ok(())
}

/// With `validate_inputs` checks the reference and the objective's inputs, then evaluates the objective once
/// on checked policy log-probs.
fn evaluate_checked<O: Objective>(
    objective: &O,
    batch: &LossBatch<'_>,
    policy: &SequenceLogProbs,
    reference: Option<&Tensor>,
) -> Result<O::Output> {
    let validating = batch.options.validate_inputs;
    let sequences = Sequences {
        policy,
        reference,
        global: batch.global,
    };
    if validating {
        check_reference(reference)?;
        objective.check_inputs(&sequences)?;
    }
    objective.evaluate(&sequences)
}

/// With validation: NaN / ±inf reference log-probs are refused.
fn check_reference(reference: Option<&Tensor>) -> Result<()> {
    match reference {
        Some(sums) => validate::all_finite("reference log-probs", sums, "among the reference log-probs"),
        None => Ok(()),
    }
}

/// The hidden-state level: the fused engine with the objective's pure function per chunk.
fn fused_level<O: Objective>(
    objective: &O,
    batch: &LossBatch<'_>,
    hidden: &Tensor,
    head: &LinearHead,
    labels: &Tensor,
    weight_grad: WeightGrad,
) -> Result<O::Output> {
    let layout = objective.layout();
    if layout == RowLayout::Pairs {
        let _ = split_rows("labels", labels)?;
    }
    objective.validate()?;
    let options: &LogProbOptions = &batch.options;
    options.validate()?;
    validate::rank("weight", &head.weight, 2, "[V, H] linear-head weight")?;
    let reference = batch
        .reference
        .resolve(labels, head.vocab(), None, options, labels)?;
    let reference = reference.as_ref();
    if options.validate_inputs {
        check_reference(reference)?;
    }
    let global = batch.global;
    let grouping = match layout {
        RowLayout::Pairs => Grouping::Pairs,
        RowLayout::Rows => Grouping::Rows,
    };
    let check = |policy: &SequenceLogProbs| -> Result<()> {
        match options.validate_inputs {
            true => objective.check_inputs(&Sequences {
                policy,
                reference,
                global,
            }),
            false => Ok(()),
        }
    };
    let fused = fused::grouped_loss(
        hidden,
        head,
        labels,
        options,
        grouping,
        weight_grad,
        check,
        |policy| {
            let out = objective.evaluate(&Sequences {
                policy,
                reference,
                global,
            })?;
            Ok((O::loss(&out).shallow_clone(), out))
        },
    )?;
    O::with_fused_loss(fused.value, fused.loss)
}

#[cfg(all(test, feature = "autograd"))]
mod tests {
    use super::{compute_loss_with, WeightGrad};
    use crate::{LinearHead, LogProbOptions, LossBatch, Reference, RpoConfig};
    use tch::{Device, Kind, Tensor};

    /// A bf16 head weight with a bf16 `.grad` takes [`WeightGrad::IntoGrad`] (its gradient is there as soon
    /// as the loss is computed, not through a surrogate's f32 `[V, H]` accumulator and product): it once
    /// fell back to the surrogate because the `.grad` was not in the compute dtype (f32). The gradients
    /// equal the surrogate path's within bf16 rounding.
    #[test]
    fn bf16_head_gradient_goes_into_its_grad() {
        tch::manual_seed(5);
        let (rows, t, h, v) = (4, 6, 8, 40);
        let hidden = Tensor::randn([rows, t, h], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let weight = (Tensor::randn([v, h], (Kind::Float, Device::Cpu)) * 0.3).to_kind(Kind::BFloat16);
        let labels = Tensor::randint(v, [rows, t], (Kind::Int64, Device::Cpu));
        let reference = Tensor::zeros([rows], (Kind::Float, Device::Cpu)) - 20.0;
        let run = |mode: WeightGrad| -> (Tensor, Tensor, bool) {
            let w = weight.detach().set_requires_grad(true);
            let x = hidden.detach().set_requires_grad(true);
            crate::autograd::ensure_grad(&w).unwrap();
            let batch = LossBatch::hidden(&x, LinearHead::new(&w), &labels)
                .with_reference(Reference::LogProbs(&reference))
                .with_options(LogProbOptions::causal());
            let out = compute_loss_with(&RpoConfig::default(), &batch, mode).unwrap();
            let early = w.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0;
            out.loss.backward();
            (
                w.grad().to_kind(Kind::Double),
                x.grad().to_kind(Kind::Double),
                early,
            )
        };
        let (w_into, x_into, early_into) = run(WeightGrad::IntoGrad);
        let (w_sur, x_sur, early_sur) = run(WeightGrad::Surrogate);
        assert!(
            early_into,
            "IntoGrad: the bf16 .grad holds the gradient once the loss is computed"
        );
        assert!(!early_sur, "Surrogate: nothing before backward");
        assert!(
            x_into.equal(&x_sur),
            "the hidden states' gradient does not depend on the weight's route"
        );
        // IntoGrad rounds each chunk's product into bf16 (one chunk here); the surrogate accumulates in f32
        // and autograd rounds the sum to bf16 once: each element within one bf16 rounding of the other
        // (2⁻⁸ relative, plus the f32 accumulation's rows·2⁻²⁴ of the terms, far below it).
        let diff = (&w_into - &w_sur).abs();
        let bound = w_sur.abs() * (2.0 / 256.0) + 1e-30;
        assert!(
            diff.le_tensor(&bound).all().int64_value(&[]) == 1,
            "max diff {}",
            diff.max().double_value(&[])
        );
    }
}
