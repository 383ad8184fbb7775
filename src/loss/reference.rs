//! The reference policy of the pair losses, one type for every level.

use crate::error::{Error, InputError, Result};
use crate::fused::{self, engine, LinearHead};
use crate::logprobs::{sequence_logprobs, LogProbOptions};
use crate::validate;
use tch::Tensor;

/// The reference policy `π_ref` of a preference batch, for every loss level.
///
/// Layout: like the policy, a reference describes a concatenated batch of `2B` rows — the `B` chosen
/// sequences followed by the `B` rejected ones (the layout of one forward pass over both; see
/// `docs/losses.md` for why this layout was chosen).
///
/// | variant | accepted by |
/// |---|---|
/// | [`Reference::LogProbs`] | every loss |
/// | [`Reference::Logits`] | the logits and fused levels (they hold the labels to score it) |
/// | [`Reference::Hidden`] | the logits and fused levels |
/// | [`Reference::Free`] | every loss |
///
/// The log-prob level ([`crate::LossBatch::log_probs`]) has no labels: it refuses `Logits` and `Hidden` with
/// [`InputError::Config`](crate::InputError::Config); score them first ([`crate::sequence_logprobs`], [`crate::fused_sequence_logprobs`]) and
/// pass `LogProbs`. SFT objectives take no reference (`Free` only). The reference is resolved once per call.
#[derive(Debug, Clone, Copy)]
pub enum Reference<'a> {
    /// Summed reference log-probs `[2B]` (chosen rows first), any float dtype, on the policy's device:
    /// computed by a frozen model under `no_grad` or precomputed once and cached. Used as given (detached).
    LogProbs(&'a Tensor),
    /// The reference model's logits `[2B, T, V]` for the same rows (same shape as the policy's logits on the
    /// logits level; same `V` as the policy head on the fused level). Scored under `no_grad` with the batch's
    /// labels and [`LogProbOptions`].
    Logits(&'a Tensor),
    /// The reference model's final hidden states `[2B, T, H_ref]` and its LM head (`[V, H_ref]`, the
    /// policy's `V`; bias, scale and soft-cap included). Scored with the fused pass under `no_grad`.
    Hidden {
        /// `[2B, T, H_ref]` hidden states.
        hidden: &'a Tensor,
        /// The reference LM head.
        head: &'a LinearHead,
    },
    /// Reference-free: `log π_ref ≡ 0`, the log-ratios are the policy log-probs themselves.
    Free,
}

impl Reference<'_> {
    /// The variant's name for error messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Reference::LogProbs(_) => "Reference::LogProbs",
            Reference::Logits(_) => "Reference::Logits",
            Reference::Hidden { .. } => "Reference::Hidden",
            Reference::Free => "Reference::Free",
        }
    }

    /// The `[2B]` reference sums of a log-prob-level batch of `rows` rows, or `None` for [`Reference::Free`].
    pub(crate) fn log_probs(&self, rows: i64, policy: &Tensor) -> Result<Option<Tensor>> {
        match *self {
            Reference::LogProbs(sums) => Ok(Some(check_sums(sums, rows, policy)?)),
            Reference::Free => Ok(None),
            Reference::Logits(_) | Reference::Hidden { .. } => Err(Error::Input(InputError::Config {
                name: "reference",
                requirement: format!(
                    "{} needs labels to be scored: use a logits or hidden-state LossBatch, or score it with \
                     sequence_logprobs / fused_sequence_logprobs and pass Reference::LogProbs",
                    self.name()
                ),
            })),
        }
    }

    /// The `[2B]` reference sums (detached) of a batch with `labels [2B, T]`, scoring `Logits` / `Hidden`
    /// under `no_grad`. `policy_vocab` is the policy's `V`, `policy_shape` the policy logits' shape (logits
    /// level only). Validation of the result follows `options.validate_inputs`.
    pub(crate) fn resolve(
        &self,
        labels: &Tensor,
        policy_vocab: i64,
        policy_logits_shape: Option<&[i64]>,
        options: &LogProbOptions,
        policy: &Tensor,
    ) -> Result<Option<Tensor>> {
        let rows = labels.size().first().copied().unwrap_or(0);
        match *self {
            Reference::LogProbs(_) | Reference::Free => self.log_probs(rows, policy),
            Reference::Logits(logits) => {
                let size = logits.size();
                let vocab_ok = size.len() == 3 && size[2] == policy_vocab;
                let shape_ok = match policy_logits_shape {
                    Some(shape) => size == shape,
                    None => vocab_ok && size[..2] == labels.size()[..],
                };
                if !shape_ok {
                    return Err(Error::Input(InputError::Shape {
                        arg: "reference logits",
                        expected: match policy_logits_shape {
                            Some(shape) => format!("the policy logits' shape {shape:?}"),
                            None => format!(
                                "[2B, T, V] = [{rows}, {}, {policy_vocab}] (labels rows and steps, the policy's V)",
                                labels.size().get(1).copied().unwrap_or(0)
                            ),
                        },
                        got: size,
                    }));
                }
                validate::same_device("reference logits", logits, "labels", labels)?;
                let sums = tch::no_grad(|| sequence_logprobs(logits, labels, options))?.sum;
                Ok(Some(sums.f_detach()?))
            }
            Reference::Hidden { hidden, head } => {
                if head.vocab() != policy_vocab {
                    return Err(Error::Input(InputError::Shape {
                        arg: "reference.weight",
                        expected: format!(
                            "[V, H_ref] with the policy's vocabulary V = {policy_vocab}: log-probs over different \
                             vocabularies are not comparable"
                        ),
                        got: head.weight.size(),
                    }));
                }
                let sums = fused::score(hidden, head, labels, options, engine::REF_NAMES)?.sum;
                Ok(Some(sums))
            }
        }
    }
}

/// Checks precomputed reference sums `[rows]` against the policy's sums and detaches them.
fn check_sums(sums: &Tensor, rows: i64, policy: &Tensor) -> Result<Tensor> {
    validate::float_tensor("reference log-probs", sums)?;
    validate::per_pair("reference log-probs", sums, "policy rows", Some(rows))?;
    validate::same_device("reference log-probs", sums, "policy", policy)?;
    Ok(sums.f_detach()?)
}
