//! [`GemmaPolicy`]: a [`Gemma`] model and its variables as the trainer's [`PolicyModel`].

use tch::{nn, Device, Kind, Tensor};

use super::config::GemmaConfig;
use super::model::Gemma;
use crate::error::{Error, Result};
use crate::train::{var_store_parameters, HiddenOutput, PolicyModel};

/// A Gemma model and the [`nn::VarStore`] holding its variables, as the crate's [`PolicyModel`]:
/// [`PolicyModel::forward`] returns the logits `[N, T, V]` ([`Gemma::forward`]) and
/// [`PolicyModel::forward_hidden`] the final hidden states `[N, T, H]` with the tied head weight `[V, H]`
/// and the final-logit soft-cap, for the fused loss path.
pub struct GemmaPolicy {
    vs: nn::VarStore,
    model: Gemma,
}

impl std::fmt::Debug for GemmaPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GemmaPolicy")
            .field("arch", &self.model.arch())
            .field("device", &self.vs.device())
            .finish()
    }
}

impl GemmaPolicy {
    /// Wraps a model and the store holding its variables (as returned by [`Gemma::from_pretrained`] or
    /// [`Gemma::from_gguf`], or the store whose root was given to [`Gemma::new`]).
    pub fn new(vs: nn::VarStore, model: Gemma) -> Self {
        Self { vs, model }
    }

    /// A new model with `config`, in its own store on `device` in `kind`, holding copies of `parameters`
    /// (matched by name, e.g. [`PolicyModel::named_parameters`] of a trained policy): a deep copy, so that
    /// training one does not change the other.
    ///
    /// # Errors
    /// Those of [`Gemma::new`]; [`Error::MissingTensor`] when a parameter of the model is not in
    /// `parameters`; [`Error::UnexpectedTensor`] for a name that is no parameter of the model;
    /// [`Error::TensorShape`] for a shape that differs from the model's.
    pub fn from_parameters(
        config: &GemmaConfig,
        device: Device,
        kind: Kind,
        parameters: &[(String, Tensor)],
    ) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let model = Gemma::build(&vs.root(), config, false)?;
        vs.set_kind(kind);
        let variables = vs.variables();
        let given: std::collections::HashSet<&str> = parameters.iter().map(|(n, _)| n.as_str()).collect();
        if let Some(missing) = variables.keys().find(|name| !given.contains(name.as_str())) {
            return Err(Error::MissingTensor {
                name: missing.clone(),
                file: "the given parameters".into(),
            });
        }
        tch::no_grad(|| -> Result<()> {
            for (name, value) in parameters {
                let Some(variable) = variables.get(name) else {
                    return Err(Error::UnexpectedTensor {
                        name: name.clone(),
                        file: "the given parameters".into(),
                        model_type: config.model_type.clone(),
                    });
                };
                if variable.size() != value.size() {
                    return Err(Error::TensorShape {
                        name: name.clone(),
                        file: "the given parameters".into(),
                        expected: variable.size(),
                        got: value.size(),
                    });
                }
                variable.shallow_clone().f_copy_(value)?;
            }
            Ok(())
        })?;
        Ok(Self { vs, model })
    }

    /// The model.
    pub fn model(&self) -> &Gemma {
        &self.model
    }

    /// The variable store.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The store and the model.
    pub fn into_parts(self) -> (nn::VarStore, Gemma) {
        (self.vs, self.model)
    }

    /// The hidden-state output of `hidden` `[N, T, H]`: the one place that builds a [`HiddenOutput`].
    fn hidden_output(&self, hidden: Tensor) -> HiddenOutput {
        HiddenOutput {
            hidden,
            lm_head_weight: self.model.head_weight(),
            final_logit_softcap: self.model.final_logit_softcap(),
        }
    }
}

impl PolicyModel for GemmaPolicy {
    /// Logits `[N, T, V]`; see [`Gemma::forward`] for inputs and errors.
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.model.forward(input_ids, attention_mask)
    }

    /// Always `Some`: hidden states `[N, T, H]` ([`Gemma::forward_hidden`]), the tied head weight
    /// ([`Gemma::head_weight`]) and the final-logit soft-cap ([`Gemma::final_logit_softcap`]).
    fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Option<HiddenOutput>> {
        let hidden = self.model.forward_hidden(input_ids, attention_mask)?;
        Ok(Some(self.hidden_output(hidden)))
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        var_store_parameters(&self.vs)
    }

    fn device(&self) -> Device {
        self.vs.device()
    }
}
