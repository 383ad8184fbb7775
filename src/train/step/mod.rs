//! The step of [`RpoTrainer`]: the step's totals, each micro-batch's reference log-probs, forward pass,
//! loss and backward pass, the accumulation of their metrics, the sums over data-parallel ranks, and the
//! update (gradient norm, clipping, AdamW) or the skip.

pub(crate) mod accumulate;
pub(crate) mod loss;

use std::time::Instant;

use tch::Tensor;

use crate::autograd::ensure_grad;
use crate::data::CollatedBatch;
use crate::error::{Error, InputError, Result};
use crate::loss::rpo::RpoOutput;
use crate::loss::GlobalBatch;
use crate::timing::{self, timed, Phase};
use crate::train::metrics::StepMetrics;
use crate::train::model::{model_output, training_output, DeferredBackward, PolicyModel};
use crate::train::reference::{adapters_off_logprobs, batch_logprobs, ReferenceSource, ScoringOptions};
use crate::train::run::initial_policy_not_scored;
use crate::train::trainer::{RpoTrainer, Trainer};
use accumulate::{Accumulated, StepTotals};
use loss::{micro_batch_loss, LossSettings};

/// What the gradient phase of a step left: the accumulated metrics, and why the update must be skipped.
struct Gradients {
    accumulated: Accumulated,
    skip_reason: Option<String>,
}

impl<M: PolicyModel> RpoTrainer<M> {
    /// Forward pass and loss of one micro-batch (reference first, so its activations are freed).
    /// `LossPath::Logits` gathers log-probs from the model's logits; `LossPath::Hidden` runs the fused
    /// linear-head loss on the final hidden states and the head (weight, bias, logit scale, soft-cap),
    /// never forming the `[2B, T, V]` logits; `LossPath::Auto` the latter when the model offers hidden
    /// states. With `train`, the policy's forward pass is [`PolicyModel::forward_checkpointed`] where the
    /// model checkpoints, and the returned [`DeferredBackward`] must run after `loss.backward()`.
    fn micro_batch(
        &self,
        batch: &CollatedBatch,
        global: GlobalBatch,
        train: bool,
    ) -> Result<(RpoOutput, Option<DeferredBackward<'_>>)> {
        let device = self.model.device();
        let reference = timed(Phase::Reference, || -> Result<Option<Tensor>> {
            Ok(match &self.reference {
                ReferenceSource::Model(model) => Some(
                    batch_logprobs(model.as_ref(), batch, &ScoringOptions::of_config(&self.config))?
                        .f_to_device(device)?,
                ),
                ReferenceSource::AdaptersOff => Some(
                    adapters_off_logprobs(&self.model, batch, &ScoringOptions::of_config(&self.config))?
                        .f_to_device(device)?,
                ),
                ReferenceSource::Cached(cache) => Some(cache.lookup(&batch.indices, device)?),
                ReferenceSource::InitialPolicy => return Err(initial_policy_not_scored()),
                ReferenceSource::Free => None,
            })
        })?;
        let CollatedBatch {
            input_ids,
            attention_mask,
            labels,
            ..
        } = timed(Phase::Data, || batch.to_device(device))?;
        let path = self.config.loss_path;
        let (output, deferred) = timed(Phase::BodyForward, || -> Result<_> {
            Ok(match train {
                true => training_output(&self.model, &input_ids, &attention_mask, path)?,
                false => (
                    model_output(&self.model, &input_ids, &attention_mask, path)?,
                    None,
                ),
            })
        })?;
        let settings = LossSettings {
            rpo: &self.config.rpo,
            logprobs: self.config.logprobs,
        };
        let out = timed(Phase::Head, || {
            micro_batch_loss(
                settings,
                &output,
                &labels,
                reference.as_ref(),
                Some(global),
                train,
            )
        })?;
        Ok((out, deferred))
    }

    /// The step's totals: the sums of the micro-batches' counts over the ranks (one all-reduce with a
    /// process group; a rank may hold no micro-batch).
    fn step_totals(&self, batches: &[&CollatedBatch]) -> Result<StepTotals> {
        let mut counts = StepTotals::counts(batches);
        self.collective.sum_f64(&mut counts)?;
        StepTotals::from_counts(counts)
    }

    /// The metrics of `batches` as one batch, without gradients or weight change.
    pub(crate) fn evaluate_batches(
        &mut self,
        batches: &[&CollatedBatch],
        start: Instant,
    ) -> Result<StepMetrics> {
        let totals = StepTotals::from_counts(StepTotals::counts(batches))?;
        let mut acc = Accumulated::default();
        tch::no_grad(|| -> Result<()> {
            for batch in batches {
                let (out, _) = self.micro_batch(batch, totals.global, false)?;
                acc.add(&out, batch, &totals)?;
            }
            Ok(())
        })?;
        let mut metrics = acc.into_metrics(self.step);
        metrics.pairs = totals.pairs;
        metrics.tokens = totals.tokens;
        metrics.tokens_per_second = totals.tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
        metrics.skipped_steps = self.skipped_steps;
        Ok(metrics)
    }

    /// The gradient phase of a step: for each micro-batch, forward, loss with the step's totals, host
    /// read-back of the loss and metrics, and backward — stopping at the first non-finite loss.
    fn accumulate_gradients(
        &mut self,
        micro_batches: &[CollatedBatch],
        totals: StepTotals,
    ) -> Result<Gradients> {
        let mut accumulated = Accumulated::default();
        for batch in micro_batches {
            let (out, deferred) = match self.micro_batch(batch, totals.global, true) {
                Ok(out) => out,
                Err(e @ Error::Input(InputError::NonFinite { .. })) => {
                    accumulated.set_non_finite();
                    return Ok(Gradients {
                        accumulated,
                        skip_reason: Some(format!("non-finite values in the forward pass: {e}")),
                    });
                }
                Err(e) => return Err(e),
            };
            let loss = timed(Phase::HostSync, || accumulated.add(&out, batch, &totals))?;
            if !loss.is_finite() {
                return Ok(Gradients {
                    accumulated,
                    skip_reason: Some(format!("non-finite loss {loss}")),
                });
            }
            timed(Phase::LossBackward, || out.loss.f_backward())?;
            if let Some(deferred) = deferred {
                timed(Phase::BodyBackward, || deferred.run())?;
            }
        }
        Ok(Gradients {
            accumulated,
            skip_reason: None,
        })
    }

    /// With a process group: the joint skip decision, the metric sums over ranks and the bucketed gradient
    /// all-reduce ([`crate::train::collective`], steps 3 and 4). In one process: `gradients` unchanged.
    fn reduce_gradients(&mut self, gradients: Gradients) -> Result<Gradients> {
        let (rank, world) = (self.collective.rank(), self.collective.world_size());
        if world == 1 {
            return Ok(gradients);
        }
        let handles: Vec<Tensor> = self
            .optimizer
            .params()
            .iter()
            .flat_map(|p| p.handles().map(Tensor::shallow_clone))
            .collect();
        let (metrics_at, defined_at) = (world, world + Accumulated::VALUES);
        let mut values = vec![0.0; defined_at + handles.len()];
        if gradients.skip_reason.is_some() {
            values[rank] = 1.0;
        }
        values[metrics_at..defined_at].copy_from_slice(&gradients.accumulated.to_values());
        for (i, handle) in handles.iter().enumerate() {
            if handle.f_grad()?.defined() {
                values[defined_at + i] = 1.0;
            }
        }
        self.collective.sum_f64(&mut values)?;
        let mut sums = [0.0; Accumulated::VALUES];
        sums.copy_from_slice(&values[metrics_at..defined_at]);
        let accumulated = Accumulated::from_values(&sums);
        let skipped: Vec<usize> = (0..world).filter(|&r| values[r] > 0.0).collect();
        if !skipped.is_empty() {
            let reason = match gradients.skip_reason {
                Some(own) => format!("rank {rank}: {own}"),
                None => format!("non-finite values on rank(s) {skipped:?}"),
            };
            return Ok(Gradients {
                accumulated,
                skip_reason: Some(reason),
            });
        }
        // A gradient defined on some rank but not here (this rank's shards did not reach the parameter,
        // or it had no shard at all) takes part as zeros; one defined nowhere stays undefined, as in one
        // process.
        for (i, handle) in handles.iter().enumerate() {
            if values[defined_at + i] > 0.0 {
                ensure_grad(handle)?;
            }
        }
        let mut grads: Vec<Tensor> = Vec::new();
        for handle in &handles {
            let grad = handle.f_grad()?;
            if grad.defined() && !grads.iter().any(|g| g.data_ptr() == grad.data_ptr()) {
                grads.push(grad);
            }
        }
        if !grads.is_empty() {
            self.collective.sum_tensors_(&mut grads)?;
        }
        Ok(Gradients {
            accumulated,
            skip_reason: None,
        })
    }

    /// The update phase of a step: gradient norm, clipping and the AdamW update, or nothing when the step
    /// must be skipped. Returns the gradient norm (when computed) and the skip reason.
    fn apply_update(
        &mut self,
        lr: f64,
        skip_reason: Option<String>,
    ) -> Result<(Option<f64>, Option<String>)> {
        if skip_reason.is_some() {
            return Ok((None, skip_reason));
        }
        let norm = self.optimizer.grad_norm()?;
        if !norm.is_finite() {
            return Ok((Some(norm), Some(format!("non-finite gradient norm {norm}"))));
        }
        if let Some(max_norm) = self.config.max_grad_norm {
            let coefficient = max_norm / (norm + 1e-6);
            if coefficient < 1.0 {
                self.optimizer.scale_grads(coefficient)?;
            }
        }
        self.optimizer.step(lr)?;
        Ok((Some(norm), None))
    }
}

impl<M: PolicyModel> Trainer for RpoTrainer<M> {
    fn train_step(&mut self, micro_batches: &[CollatedBatch]) -> Result<StepMetrics> {
        let start = Instant::now();
        // A window fit_steps opened before collating stays open (its data time counts).
        if self.config.phase_timing && !timing::is_open() {
            timing::begin();
        }
        let refs: Vec<&CollatedBatch> = micro_batches.iter().collect();
        let totals = self.step_totals(&refs)?;
        let lr = self.schedule.lr_at(self.step);
        timed(Phase::Optimizer, || self.optimizer.zero_grad())?;
        let gradients = match self.accumulate_gradients(micro_batches, totals) {
            Ok(gradients) => gradients,
            Err(e) => {
                // The step's own error is the one to report; clearing the gradients is best effort here.
                let _ = self.optimizer.zero_grad();
                return Err(e);
            }
        };
        let gradients = self.reduce_gradients(gradients)?;
        let (grad_norm, skip_reason) = timed(Phase::Optimizer, || -> Result<_> {
            let update = self.apply_update(lr, gradients.skip_reason)?;
            self.optimizer.zero_grad()?;
            Ok(update)
        })?;
        if skip_reason.is_some() {
            self.skipped_steps += 1;
        }
        self.step += 1;
        let mut metrics = gradients.accumulated.into_metrics(self.step);
        metrics.grad_norm = grad_norm;
        metrics.lr = Some(lr);
        metrics.pairs = totals.pairs;
        metrics.tokens = totals.tokens;
        let seconds = start.elapsed().as_secs_f64().max(1e-9);
        metrics.tokens_per_second = totals.tokens as f64 / seconds;
        metrics.skipped = skip_reason.is_some();
        metrics.skip_reason = skip_reason;
        metrics.skipped_steps = self.skipped_steps;
        metrics.flops = self.step_flops(micro_batches);
        metrics.flops_per_second = metrics.flops.map(|flops| flops / seconds);
        metrics.phases = if self.config.phase_timing {
            timing::end()
        } else {
            None
        };
        metrics.mfu = metrics
            .flops_per_second
            .zip(self.config.peak_flops)
            .map(|(achieved, peak)| achieved / peak);
        Ok(metrics)
    }

    fn eval_step(&mut self, batch: &CollatedBatch) -> Result<StepMetrics> {
        self.evaluate_batches(&[batch], Instant::now())
    }
}
