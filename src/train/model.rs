//! The one trait a model implements to be trained by [`crate::train::RpoTrainer`].

use crate::error::{Error, Result};
use crate::fused::{FusedOptions, LinearHead};
use crate::logprobs::LogProbOptions;
use tch::{nn::VarStore, Device, Tensor};

/// The final hidden states and the LM-head weight, for a fused linear-head loss that never materializes
/// the `[N, T, V]` logits.
#[derive(Debug)]
pub struct HiddenOutput {
    /// `[N, T, H]` final hidden states (after the last norm), differentiable.
    pub hidden: Tensor,
    /// `[V, H]` LM-head weight (`logits = hidden · weightᵀ`), the parameter itself (not a copy), so that
    /// gradients reach it (a head tied to the embedding included).
    pub lm_head_weight: Tensor,
    /// Final-logit soft-cap `c` of models that compute `tanh(z / c) · c` (Gemma 2); `None` for a plain head.
    pub final_logit_softcap: Option<f64>,
}

impl HiddenOutput {
    /// The fused-path options for these log-prob options.
    pub(crate) fn fused_options(&self, options: &LogProbOptions) -> FusedOptions {
        FusedOptions::from(options.clone())
    }
    /// The LM head of this output (weight and final-logit soft-cap).
    pub(crate) fn head(&self) -> LinearHead<'_> {
        LinearHead::new(&self.lm_head_weight).with_final_logit_softcap(self.final_logit_softcap)
    }
}

/// [`PolicyModel::forward_hidden`] for the fused path, which needs it: `None` becomes [`Error::Config`].
pub(crate) fn required_hidden(
    model: &dyn PolicyModel,
    input_ids: &Tensor,
    attention_mask: &Tensor,
) -> Result<HiddenOutput> {
    model
        .forward_hidden(input_ids, attention_mask)?
        .ok_or(Error::Config {
            name: "loss_path",
            requirement:
                "LossPath::Hidden needs a model (policy and reference) whose forward_hidden returns Some"
                    .to_string(),
        })
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

    /// The final hidden states and the LM-head weight, for the fused loss path
    /// ([`crate::train::LossPath::Hidden`]); `Ok(None)` (the default) if the model does not offer them.
    ///
    /// # Errors
    /// Whatever the model's ops return.
    fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Option<HiddenOutput>> {
        let _ = (input_ids, attention_mask);
        Ok(None)
    }

    /// Every parameter with a unique, stable name (shallow clones sharing storage with the model). Those
    /// with `requires_grad` are trained; all are saved in and restored from checkpoints. For a `VarStore`
    /// model this is [`var_store_parameters`].
    fn named_parameters(&self) -> Vec<(String, Tensor)>;

    /// The device the model's parameters live on (inputs are moved there).
    fn device(&self) -> Device;
}

/// The variables of a `VarStore`, sorted by name (a helper for [`PolicyModel::named_parameters`]).
pub fn var_store_parameters(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}
