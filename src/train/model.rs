//! The one trait a model implements to be trained by [`crate::train::RpoTrainer`], and what its optional
//! hidden-state pass returns.

use crate::autograd::backward_from;
use crate::error::{Error, InputError, Result};
use crate::fused::LinearHead;
use crate::train::flops::PassFlops;
use tch::{nn::VarStore, Device, Tensor};

/// How the policy's (and a reference model's) log-probs are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LossPath {
    /// [`LossPath::Hidden`] when the model's [`PolicyModel::forward_hidden`] returns `Some`, else
    /// [`LossPath::Logits`] (decided per forward pass, so a policy and a reference of different kinds
    /// each take their own path).
    #[default]
    Auto,
    /// From the `[2B, T, V]` logits of [`PolicyModel::forward`] (chunked log-softmax).
    Logits,
    /// From [`PolicyModel::forward_hidden`] (final hidden states and LM head) through the fused
    /// linear-head loss ([`crate::fused`]): the `[2B, T, V]` logits are never formed, prompt and padding
    /// tokens never reach the head. Same loss and gradients as [`LossPath::Logits`] within f32 rounding.
    Hidden,
}

/// The final hidden states and the LM head, for a fused linear-head loss that never materializes the
/// `[N, T, V]` logits. The logits it stands for are `softcap(s · (hidden · weightᵀ + bias))`, the
/// [`LinearHead`]'s (weight, bias, logit scale `s`, soft-cap).
///
/// ```
/// # use tch::{Device, Kind, Tensor};
/// # use tch_rpo::{train::HiddenOutput, LinearHead};
/// let hidden = Tensor::zeros([2, 5, 8], (Kind::Float, Device::Cpu));
/// let weight = Tensor::zeros([11, 8], (Kind::Float, Device::Cpu));
/// let bias = Tensor::zeros([11], (Kind::Float, Device::Cpu));
/// let out = HiddenOutput::new(hidden, LinearHead::new(&weight).with_bias(&bias).with_final_logit_softcap(Some(30.0)));
/// assert!(out.head.bias.is_some() && out.head.logit_scale == 1.0);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct HiddenOutput {
    /// `[N, T, H]` final hidden states (after the last norm), differentiable.
    pub hidden: Tensor,
    /// The LM head; its weight and bias are the parameters themselves (shallow clones, not copies), so that
    /// gradients reach them (a head tied to the embedding included).
    pub head: LinearHead,
}

impl HiddenOutput {
    /// Hidden states `[N, T, H]` and the LM head.
    pub fn new(hidden: Tensor, head: LinearHead) -> Self {
        Self { hidden, head }
    }
}

/// What a model's forward pass hands the loss: the logits, or the hidden states and the head.
#[derive(Debug)]
pub enum ModelOutput {
    /// `[N, T, V]` logits ([`PolicyModel::forward`]).
    Logits(Tensor),
    /// Final hidden states and the LM head ([`PolicyModel::forward_hidden`]).
    Hidden(HiddenOutput),
}

/// The rest of a backward pass that a model runs itself ([`CheckpointedForward`]): called once, after
/// `loss.backward()`, it carries the gradient that reached the checkpointed output on to the model's
/// parameters.
pub struct DeferredBackward<'a>(Box<dyn FnOnce() -> Result<()> + 'a>);

impl<'a> DeferredBackward<'a> {
    /// Wraps the model's continuation of the backward pass.
    pub fn new(rest: impl FnOnce() -> Result<()> + 'a) -> Self {
        Self(Box::new(rest))
    }

    /// Runs it (once: it is consumed).
    ///
    /// # Errors
    /// Whatever the model's continuation returns.
    pub fn run(self) -> Result<()> {
        (self.0)()
    }
}

impl std::fmt::Debug for DeferredBackward<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeferredBackward")
    }
}

/// A training forward pass with gradient checkpointing ([`PolicyModel::forward_checkpointed`]): the
/// output (whose autograd graph reaches back only to a checkpoint, e.g. the last layer's output) and the
/// rest of the backward pass, which the trainer runs right after `loss.backward()`.
#[derive(Debug)]
pub struct CheckpointedForward<'a> {
    /// The logits or the hidden states and head, differentiable down to the model's checkpoint.
    pub output: ModelOutput,
    /// Carries the gradient from the checkpoint to the parameters; run it after `loss.backward()`.
    pub backward: DeferredBackward<'a>,
}

/// The model's output for `path`: the logits ([`LossPath::Logits`]), the hidden states and head
/// ([`LossPath::Hidden`], [`InputError::Config`](crate::InputError::Config) if the model has none), or whichever [`LossPath::Auto`]
/// picks.
pub(crate) fn model_output(
    model: &dyn PolicyModel,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    path: LossPath,
) -> Result<ModelOutput> {
    match path {
        LossPath::Logits => Ok(ModelOutput::Logits(model.forward(input_ids, attention_mask)?)),
        LossPath::Hidden => Ok(ModelOutput::Hidden(required_hidden(
            model,
            input_ids,
            attention_mask,
        )?)),
        LossPath::Auto => match model.forward_hidden(input_ids, attention_mask)? {
            Some(states) => Ok(ModelOutput::Hidden(states)),
            None => Ok(ModelOutput::Logits(model.forward(input_ids, attention_mask)?)),
        },
    }
}

/// The training forward pass of the policy: [`PolicyModel::forward_checkpointed`] when the model
/// checkpoints (its output checked against `path`), else [`model_output`] — for hidden states split by
/// [`split_at_hidden`], for logits with no deferred backward.
pub(crate) fn training_output<'a>(
    model: &'a dyn PolicyModel,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    path: LossPath,
) -> Result<(ModelOutput, Option<DeferredBackward<'a>>)> {
    let Some(checkpointed) = model.forward_checkpointed(input_ids, attention_mask, path)? else {
        return match model_output(model, input_ids, attention_mask, path)? {
            ModelOutput::Hidden(states) if states.hidden.requires_grad() => {
                let (states, deferred) = split_at_hidden(states)?;
                Ok((ModelOutput::Hidden(states), Some(deferred)))
            }
            output => Ok((output, None)),
        };
    };
    match (&checkpointed.output, path) {
        (ModelOutput::Logits(_), LossPath::Hidden) | (ModelOutput::Hidden(_), LossPath::Logits) => {
            Err(Error::Input(InputError::Config {
                name: "forward_checkpointed",
                requirement: format!("must return the output of {path:?} that it was asked for"),
            }))
        }
        _ => Ok((checkpointed.output, Some(checkpointed.backward))),
    }
}

/// Splits the backward pass of a hidden-state output at the hidden states: the returned output's
/// `hidden` is a detached leaf, so `loss.backward()` stops there (and the head's dense `[V, H]` gradient
/// goes into `.grad` at once instead of waiting, summed with a tied embedding's, for the whole model's
/// backward); the deferred backward then carries the leaf's gradient through the model
/// ([`backward_from`]). The same gradients; a tied embedding's two contributions are added into `.grad`
/// one after the other.
fn split_at_hidden<'a>(mut states: HiddenOutput) -> Result<(HiddenOutput, DeferredBackward<'a>)> {
    let graph = states.hidden.shallow_clone();
    let leaf = graph.f_detach()?.set_requires_grad(true);
    states.hidden = leaf.shallow_clone();
    let deferred = DeferredBackward::new(move || backward_from(&graph, &leaf.f_grad()?));
    Ok((states, deferred))
}

/// [`PolicyModel::forward_hidden`] for the fused path, which needs it: `None` becomes [`InputError::Config`](crate::InputError::Config).
pub(crate) fn required_hidden(
    model: &dyn PolicyModel,
    input_ids: &Tensor,
    attention_mask: &Tensor,
) -> Result<HiddenOutput> {
    model
        .forward_hidden(input_ids, attention_mask)?
        .ok_or(Error::Input(InputError::Config {
            name: "loss_path",
            requirement:
                "LossPath::Hidden needs a model (policy and reference) whose forward_hidden returns Some"
                    .to_string(),
        }))
}

/// A causal language model the trainer can train or use as a reference.
///
/// Minimal by design: a forward pass and access to the parameters. Object safe (`Box<dyn PolicyModel>`)
/// and `Send`; every method is fallible or infallible by nature, never panicking.
///
/// ```
/// use tch::{nn, nn::Module, Device, Tensor};
/// use tch_rpo::train::{var_store_parameters, PolicyModel};
///
/// struct Bigram { vs: nn::VarStore, emb: nn::Embedding, head: nn::Linear }
///
/// impl PolicyModel for Bigram {
///     fn forward(&self, input_ids: &Tensor, _attention_mask: &Tensor) -> tch_rpo::Result<Tensor> {
///         Ok(self.head.forward(&self.emb.forward(input_ids)))
///     }
///     fn named_parameters(&self) -> Vec<(String, Tensor)> {
///         var_store_parameters(&self.vs)
///     }
///     fn device(&self) -> Device {
///         self.vs.device()
///     }
/// }
/// ```
pub trait PolicyModel: Send {
    /// Logits `[N, T, V]` (any float dtype) for `input_ids` `[N, T]` i64 and `attention_mask` `[N, T]` i64
    /// (`1` on tokens, `0` on right padding). Logits at position `t` predict token `t + 1`.
    ///
    /// # Errors
    /// Whatever the model's ops return (use tch's `f_` ops and `?`).
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor>;

    /// The final hidden states and the LM head (weight, and bias, logit scale and soft-cap where the
    /// model's [`PolicyModel::forward`] applies them), for the fused loss path ([`LossPath::Hidden`]);
    /// `Ok(None)` (the default) if the model does not offer them. The head must describe exactly the
    /// logits `forward` returns, or the two paths train different models.
    ///
    /// # Errors
    /// Whatever the model's ops return.
    fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Option<HiddenOutput>> {
        let _ = (input_ids, attention_mask);
        Ok(None)
    }

    /// Gradient checkpointing (optional; the default returns `Ok(None)`: no checkpointing). The trainer
    /// calls it for every training forward pass (never under `no_grad`: evaluation and reference scoring
    /// use [`PolicyModel::forward`] / [`PolicyModel::forward_hidden`]); `None` makes it fall back to those.
    ///
    /// A model that checkpoints runs its forward pass keeping only what it needs to recompute its
    /// activations (e.g. each layer's input), and returns the output for `path` — logits for
    /// [`LossPath::Logits`], hidden states and head for [`LossPath::Hidden`], either for
    /// [`LossPath::Auto`] — built on a detached checkpoint (a leaf that requires grad), and a
    /// [`DeferredBackward`]. The trainer computes the loss, calls `loss.backward()` (which fills the
    /// checkpoint's gradient and the head's), then runs the deferred backward, which must leave in every
    /// parameter's `.grad` what one `backward` through an un-checkpointed forward would have left.
    ///
    /// # Errors
    /// Whatever the model's ops return.
    fn forward_checkpointed(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        path: LossPath,
    ) -> Result<Option<CheckpointedForward<'_>>> {
        let _ = (input_ids, attention_mask, path);
        Ok(None)
    }

    /// The FLOPs of this model's passes over a padded batch of `rows × positions` token ids
    /// ([`PassFlops`]; the counting convention is [`crate::train::flops`]'s), from which the trainer reports
    /// each step's FLOP/s and model FLOP utilization. `None` (the default): not known, and the trainer
    /// reports neither (nor does it for a step whose reference model returns `None`).
    fn pass_flops(&self, rows: usize, positions: usize) -> Option<PassFlops> {
        let _ = (rows, positions);
        None
    }

    /// Every parameter with a unique, stable name (shallow clones sharing storage with the model). Those
    /// with `requires_grad` are trained; all are saved in and restored from checkpoints. For a `VarStore`
    /// model this is [`var_store_parameters`].
    fn named_parameters(&self) -> Vec<(String, Tensor)>;

    /// The device the model's parameters live on (inputs are moved there).
    fn device(&self) -> Device;

    /// Switches the model's adapters (e.g. LoRA, [`crate::lora::LoraPolicy`] with feature `lora`) on or
    /// off without detaching them; returns the previous state. [`ReferenceSource::AdaptersOff`] calls it
    /// around each reference pass. The default: the model has no adapters, an [`InputError::Config`].
    ///
    /// [`ReferenceSource::AdaptersOff`]: crate::train::ReferenceSource::AdaptersOff
    ///
    /// # Errors
    /// [`InputError::Config`] for a model without adapters (the default).
    fn set_adapters_enabled(&self, enabled: bool) -> Result<bool> {
        let _ = enabled;
        Err(Error::Input(InputError::Config {
            name: "reference",
            requirement: "ReferenceSource::AdaptersOff needs a model with adapters to switch off (e.g. a \
                          LoraPolicy); this model has none"
                .to_string(),
        }))
    }

    /// A fingerprint of the frozen weights the trainable parameters were trained on top of (e.g. a LoRA
    /// base model), or `None` (the default: every weight is in [`PolicyModel::named_parameters`]).
    /// Checkpoints record it, and resuming a checkpoint with another fingerprint is refused.
    fn base_fingerprint(&self) -> Option<String> {
        None
    }
}

/// The variables of a `VarStore`, sorted by name (a helper for [`PolicyModel::named_parameters`]).
pub fn var_store_parameters(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// A boxed model is a model (so `Box<dyn PolicyModel>` can be handed wherever a model is taken).
impl<M: PolicyModel + ?Sized> PolicyModel for Box<M> {
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        (**self).forward(input_ids, attention_mask)
    }
    fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Option<HiddenOutput>> {
        (**self).forward_hidden(input_ids, attention_mask)
    }
    fn forward_checkpointed(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        path: LossPath,
    ) -> Result<Option<CheckpointedForward<'_>>> {
        (**self).forward_checkpointed(input_ids, attention_mask, path)
    }
    fn pass_flops(&self, rows: usize, positions: usize) -> Option<PassFlops> {
        (**self).pass_flops(rows, positions)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        (**self).named_parameters()
    }
    fn device(&self) -> Device {
        (**self).device()
    }
    fn set_adapters_enabled(&self, enabled: bool) -> Result<bool> {
        (**self).set_adapters_enabled(enabled)
    }
    fn base_fingerprint(&self) -> Option<String> {
        (**self).base_fingerprint()
    }
}
