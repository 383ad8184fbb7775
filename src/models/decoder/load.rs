//! What every family's loader shares: [`WeightSource`] (a Hugging Face folder, a GGUF file, or parameters
//! in memory), [`LoadOptions`] (device and dtype), and the checks and copies behind them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use super::weights_gguf::{load_gguf, read_kept};
use crate::error::{Error, InputError, ParameterMismatch, Result};
use crate::gguf::GgufFile;
use crate::models::kept::KeptWeights;

/// Where a model's configuration and weights come from; `C` is the family's configuration
/// ([`GemmaConfig`](crate::models::gemma::GemmaConfig), [`LlamaConfig`](crate::models::llama::LlamaConfig)).
#[derive(Debug)]
pub enum WeightSource<'a, C> {
    /// A Hugging Face model folder: `config.json` and the weights in `model.safetensors`, or sharded as
    /// named by `model.safetensors.index.json` (one shard in memory at a time). A tied model's
    /// `lm_head.weight` and old `rotary_emb.inv_freq` buffers are skipped.
    HfDir(&'a Path),
    /// An opened llama.cpp GGUF file: the configuration from its metadata, tensors checked, dequantized to
    /// f32 and renamed to the Hugging Face names. Keep the file for its tokenizer
    /// ([`GgufTokenizer::from_gguf`](crate::models::tokenizer::GgufTokenizer::from_gguf)).
    Gguf(&'a GgufFile),
    /// Parameters in memory by Hugging Face name (e.g. the named parameters of a trained model), for the
    /// model `config` describes. The new model holds copies (training one does not change the other).
    Parameters {
        /// The configuration the parameters belong to.
        config: &'a C,
        /// `(name, tensor)` pairs: every parameter of `config` exactly once, with its shape; any dtype and
        /// device (converted on copy).
        parameters: &'a [(String, Tensor)],
    },
}

// By hand: the derives would require `C: Copy`, but only `&C` is held.
impl<C> Clone for WeightSource<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for WeightSource<'_, C> {}

/// How a loader holds a model's weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Every parameter a variable of the store, in [`LoadOptions::kind`] (the default).
    #[default]
    Dense,
    /// A GGUF source's matrices — the embedding (and tied head), every layer's projections, an untied
    /// head — stay in the file's blocks in host memory ([`crate::gguf::BlockMatrix`], any type of
    /// [`crate::gguf::KEEP_TYPES`]), frozen and outside the store, dequantized to [`LoadOptions::kind`] on
    /// [`LoadOptions::device`] when used: a projection whole for its product, the embedding only at the
    /// looked-up rows, the tied head whole by [`Decoder::logits`](super::Decoder::logits) /
    /// [`Decoder::head_weight`](super::Decoder::head_weight). The norms (and biases) are variables. The
    /// values are those a [`WeightFormat::Dense`] load holds, bit for bit. Meant for LoRA on a frozen base
    /// (QLoRA): a trained [`DecoderPolicy`](super::DecoderPolicy) runs its layers under per-layer
    /// recomputation, so one layer's matrices are dequantized at a time. Only for
    /// [`WeightSource::Gguf`].
    KeepQuantized,
}

/// How a loader places the model: on `device`, with every parameter in `kind`, its matrices held as
/// `weights` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// The device of the new [`nn::VarStore`] (default CPU).
    pub device: Device,
    /// The parameters' dtype (the activation dtype): `Float` (default), `BFloat16`, `Half` or `Double`.
    pub kind: Kind,
    /// How the weight matrices are held (default [`WeightFormat::Dense`]).
    pub weights: WeightFormat,
}

impl LoadOptions {
    /// Options for `device` and `kind`, dense weights.
    pub fn new(device: Device, kind: Kind) -> Self {
        Self {
            device,
            kind,
            weights: WeightFormat::Dense,
        }
    }

    /// Checks `kind`. Errors: [`InputError::DType`] for a dtype that is not floating-point.
    pub(crate) fn check(&self) -> Result<()> {
        if !matches!(
            self.kind,
            Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
        ) {
            return Err(Error::Input(InputError::DType {
                arg: "options.kind",
                expected: "Float, BFloat16, Half or Double",
                got: self.kind,
            }));
        }
        Ok(())
    }
}

impl Default for LoadOptions {
    /// CPU, f32.
    fn default() -> Self {
        Self::new(Device::Cpu, Kind::Float)
    }
}

/// Where [`WeightSource::Parameters`]' errors say a tensor was expected.
pub(crate) const GIVEN: &str = "the given parameters";

/// The parameters in file order (embedding, layers 0, 1, … each in a fixed order, then the rest by name),
/// checked against `expected` (name → shape): every parameter once with its shape, nothing else. `what`
/// names the parameters in the errors (the `origin` of
/// [`WeightsError::Parameters`](crate::WeightsError::Parameters)), `expected_by` the configuration.
pub(crate) fn ordered_parameters<'p>(
    expected: &BTreeMap<String, Vec<i64>>,
    expected_by: &str,
    parameters: &'p [(String, Tensor)],
    what: &str,
) -> Result<Vec<(&'p str, &'p Tensor)>> {
    let shapes = parameters
        .iter()
        .map(|(name, tensor)| (name.as_str(), tensor.size()));
    ParameterMismatch::compare(expected, shapes).into_result(what, expected_by)?;
    let given: HashMap<&str, &Tensor> = parameters
        .iter()
        .map(|(name, tensor)| (name.as_str(), tensor))
        .collect();
    let mut ordered = Vec::with_capacity(expected.len());
    for name in expected.keys() {
        if let Some((&name, &tensor)) = given.get_key_value(name.as_str()) {
            ordered.push((name, tensor));
        }
    }
    ordered.sort_by_key(|(name, _)| file_order(name));
    Ok(ordered)
}

/// Sort key: the embedding first, then each layer in numeric order, then the rest (final norm, head).
fn file_order(name: &str) -> (u8, usize, &str) {
    if name == "model.embed_tokens.weight" {
        return (0, 0, name);
    }
    if let Some(rest) = name.strip_prefix("model.layers.") {
        if let Some((layer, param)) = rest.split_once('.') {
            if let Ok(layer) = layer.parse() {
                return (1, layer, param);
            }
        }
    }
    (2, 0, name)
}

/// Copies checked `(name, value)` pairs into the variables of `vs` of the same name, under `no_grad`.
pub(crate) fn copy_parameters(vs: &nn::VarStore, parameters: &[(&str, &Tensor)]) -> Result<()> {
    let variables = vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, value) in parameters {
            let Some(variable) = variables.get(*name) else {
                return Err(Error::Internal {
                    what: format!("checked parameter `{name}` is not in the model's variable store"),
                });
            };
            variable.shallow_clone().f_copy_(value)?;
        }
        Ok(())
    })
}

/// What a family's loader tells [`load_model`]: the parameters it expects, how to build the model, and
/// how to check and read a GGUF file.
pub(crate) struct LoadPlan<'a, M> {
    /// Every parameter's shape by Hugging Face name.
    pub(crate) expected: BTreeMap<String, Vec<i64>>,
    /// How errors name the configuration ("the llama config").
    pub(crate) expected_by: String,
    /// Builds the model's variables (all zero) under a store's root; the matrices in `kept` are taken from
    /// it instead of becoming variables.
    pub(crate) build: &'a dyn Fn(&nn::Path, Option<&KeptWeights>) -> Result<M>,
    /// Checks a GGUF file's tensors before anything is allocated; returns the Hugging Face name of every
    /// GGUF tensor name ([`super::weights_gguf::check_gguf`]).
    pub(crate) check_gguf: &'a dyn Fn(&GgufFile) -> Result<HashMap<String, String>>,
    /// The family's change of a GGUF tensor (by GGUF name) into its Hugging Face layout
    /// ([`super::weights_gguf::load_gguf`]); on a matrix it must only reorder rows.
    pub(crate) gguf_fix: &'a dyn Fn(&str, Tensor) -> Result<Tensor>,
}

/// The loading every family shares: the checks that need no model (a GGUF file's tensors, the given
/// parameters), with [`WeightFormat::KeepQuantized`] the kept matrices read, then a new [`nn::VarStore`]
/// on `options.device` holding the model built by `plan.build`, converted to `options.kind`, then the
/// source's weights copied in (under `no_grad`). All or nothing: on error the store is dropped.
///
/// Errors (besides the sources'): [`InputError::Config`] for [`WeightFormat::KeepQuantized`] with a
/// source other than a GGUF file.
pub(crate) fn load_model<C, M>(
    source: WeightSource<'_, C>,
    options: &LoadOptions,
    plan: &LoadPlan<'_, M>,
) -> Result<(nn::VarStore, M)> {
    let mut checked = Vec::new();
    let mut by_gguf = HashMap::new();
    match source {
        WeightSource::Gguf(file) => by_gguf = (plan.check_gguf)(file)?,
        WeightSource::Parameters { parameters, .. } => {
            checked = ordered_parameters(&plan.expected, &plan.expected_by, parameters, GIVEN)?;
        }
        WeightSource::HfDir(_) => {}
    }
    let kept = match (options.weights, source) {
        (WeightFormat::Dense, _) => None,
        (WeightFormat::KeepQuantized, WeightSource::Gguf(file)) => {
            Some(read_kept(file, &by_gguf, &plan.expected, plan.gguf_fix, options)?)
        }
        (WeightFormat::KeepQuantized, _) => {
            return Err(Error::Input(InputError::Config {
                name: "options.weights",
                requirement: "WeightFormat::KeepQuantized keeps a GGUF file's blocks: it needs \
                              WeightSource::Gguf (a Hugging Face folder or parameters in memory load dense)"
                    .into(),
            }))
        }
    };
    let mut vs = nn::VarStore::new(options.device);
    let model = (plan.build)(&vs.root(), kept.as_ref())?;
    vs.set_kind(options.kind);
    match source {
        WeightSource::HfDir(dir) => {
            super::weights_hf::load_hf_weights(&vs, dir, &plan.expected, &plan.expected_by)?
        }
        WeightSource::Gguf(file) => load_gguf(&vs, file, &by_gguf, plan.gguf_fix, kept.as_ref())?,
        WeightSource::Parameters { .. } => copy_parameters(&vs, &checked)?,
    }
    Ok((vs, model))
}
