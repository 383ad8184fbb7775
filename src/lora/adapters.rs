//! [`LoraAdapters`]: a set of adapters attached to a model, created from a [`LoraConfig`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tch::{Kind, Tensor};

use super::adapter::{LoraAdapter, LoraSwitch};
use super::config::LoraConfig;
use super::model::{AdaptableLinear, LoraModel};
use crate::error::{Error, InputError, LoraError, ParameterMismatch, Result};

/// The prefix of PEFT's parameter names: `base_model.model.<path>.lora_A.weight`.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The PEFT names of the `A` and `B` parameters of the layer at `path`.
pub fn peft_names(path: &str) -> (String, String) {
    (
        format!("{PEFT_PREFIX}{path}.lora_A.weight"),
        format!("{PEFT_PREFIX}{path}.lora_B.weight"),
    )
}

/// One adapted layer: its path and the adapter (a handle on the one the model holds).
#[derive(Debug)]
struct AdaptedLayer {
    path: String,
    adapter: LoraAdapter,
}

/// LoRA adapters attached to a model's linear layers ([`LoraAdapters::attach`]), with one switch for all
/// of them (on / off, training / eval) and their parameters under PEFT's names.
#[derive(Debug)]
pub struct LoraAdapters {
    config: LoraConfig,
    switch: Arc<LoraSwitch>,
    layers: Vec<AdaptedLayer>,
}

/// The names listed in an [`LoraError::UnknownTarget`]: the distinct short names, in order.
fn short_names(linears: &[AdaptableLinear]) -> String {
    let mut seen = BTreeSet::new();
    let names: Vec<&str> = linears
        .iter()
        .map(AdaptableLinear::short_name)
        .filter(|n| seen.insert(*n))
        .collect();
    names.join(", ")
}

impl LoraAdapters {
    /// Creates an adapter for every layer of `model` that a target names (by short name or path) and
    /// attaches it: `A` `[r, in]` drawn from `U(−1/√in, 1/√in)` (libtorch's global generator: seed with
    /// `tch::manual_seed`), `B` `[out, r]` zeros, both in the layer weight's dtype and on its device,
    /// requiring grad. The model's outputs are unchanged until `B` moves. Adapters start enabled and in
    /// training mode. An adapter already attached to a targeted layer is replaced (the set it belonged to
    /// no longer reaches that layer).
    ///
    /// # Errors
    /// Those of [`LoraConfig::validate`]; [`LoraError::UnknownTarget`] for a target that names no layer
    /// (listing the model's layer names); [`LoraError::Rank`] when `r > min(in, out)` of a targeted layer;
    /// [`InputError::Config`] when a targeted layer's weight is not a floating-point matrix; those of
    /// [`LoraModel::set_lora_adapter`]; [`Error::Torch`]. Nothing is attached on error.
    pub fn attach<M: LoraModel + ?Sized>(model: &mut M, config: &LoraConfig) -> Result<Self> {
        config.validate()?;
        let linears = model.adaptable_linears();
        let targets = config
            .target_modules
            .clone()
            .unwrap_or_else(|| model.default_lora_targets());
        let matches = |t: &str, l: &AdaptableLinear| l.short_name() == t || l.path == t;
        for target in &targets {
            if !linears.iter().any(|l| matches(target, l)) {
                return Err(Error::Lora(LoraError::UnknownTarget {
                    target: target.clone(),
                    available: short_names(&linears),
                }));
            }
        }
        let chosen: Vec<&AdaptableLinear> = linears
            .iter()
            .filter(|l| targets.iter().any(|t| matches(t, l)))
            .collect();
        let switch = LoraSwitch::new();
        let mut layers = Vec::with_capacity(chosen.len());
        for linear in chosen {
            layers.push(AdaptedLayer {
                path: linear.path.clone(),
                adapter: new_adapter(linear, config, &switch)?,
            });
        }
        for (i, layer) in layers.iter().enumerate() {
            if let Err(e) = model.set_lora_adapter(&layer.path, Some(layer.adapter.shallow_clone())) {
                for done in &layers[..i] {
                    let _ = model.set_lora_adapter(&done.path, None);
                }
                return Err(e);
            }
        }
        Ok(Self {
            config: config.clone(),
            switch,
            layers,
        })
    }

    /// Detaches every adapter from `model` (the one they were attached to).
    ///
    /// # Errors
    /// Those of [`LoraModel::set_lora_adapter`].
    pub fn detach<M: LoraModel + ?Sized>(self, model: &mut M) -> Result<()> {
        for layer in &self.layers {
            model.set_lora_adapter(&layer.path, None)?;
        }
        Ok(())
    }

    /// The configuration they were made with.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The adapted layers' module paths, in the model's order.
    pub fn paths(&self) -> Vec<&str> {
        self.layers.iter().map(|l| l.path.as_str()).collect()
    }

    /// The adapter of the layer at `path`, if it has one.
    pub fn adapter(&self, path: &str) -> Option<&LoraAdapter> {
        self.layers.iter().find(|l| l.path == path).map(|l| &l.adapter)
    }

    /// Whether the adapters are applied (default on).
    pub fn enabled(&self) -> bool {
        self.switch.enabled()
    }

    /// Switches every adapter on or off at once (off: the model computes its base outputs; nothing is
    /// detached). Returns the previous state.
    pub fn set_enabled(&self, on: bool) -> bool {
        self.switch.set_enabled(on)
    }

    /// Whether dropout is applied (training mode, default on; dropout also needs autograd recording).
    pub fn training(&self) -> bool {
        self.switch.training()
    }

    /// Training mode (dropout applied where autograd records) or evaluation mode (never dropout).
    pub fn set_training(&self, on: bool) {
        self.switch.set_training(on);
    }

    /// The adapters' parameters under PEFT's names (`base_model.model.<path>.lora_A.weight` `[r, in]`,
    /// `….lora_B.weight` `[out, r]`), in the layers' order, `A` before `B`: the parameters themselves
    /// (shallow handles).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut named = Vec::with_capacity(2 * self.layers.len());
        for layer in &self.layers {
            let (a, b) = peft_names(&layer.path);
            named.push((a, layer.adapter.lora_a()));
            named.push((b, layer.adapter.lora_b()));
        }
        named
    }

    /// Copies `values` (PEFT names, as [`LoraAdapters::named_parameters`] lists them) into the adapters,
    /// converted to each parameter's dtype and device, without gradient. All or nothing: everything is
    /// checked first. `origin` names where the values came from in errors.
    ///
    /// # Errors
    /// [`crate::WeightsError::Parameters`] listing every missing, unexpected or reshaped tensor;
    /// [`Error::Torch`].
    pub fn load_parameters(&self, values: Vec<(String, Tensor)>, origin: &str) -> Result<()> {
        let params = self.named_parameters();
        let expected: BTreeMap<String, Vec<i64>> =
            params.iter().map(|(n, p)| (n.clone(), p.size())).collect();
        ParameterMismatch::compare(&expected, values.iter().map(|(n, t)| (n.as_str(), t.size())))
            .into_result(origin, "these LoRA adapters")?;
        let mut given: HashMap<String, Tensor> = values.into_iter().collect();
        let mut staged = Vec::with_capacity(params.len());
        for (name, param) in &params {
            let value = given.remove(name).ok_or_else(|| Error::Internal {
                what: format!("checked adapter parameter `{name}` vanished"),
            })?;
            staged.push(value.f_to_device(param.device())?.f_to_kind(param.f_kind()?)?);
        }
        tch::no_grad(|| -> Result<()> {
            for ((_, param), value) in params.iter().zip(&staged) {
                param.shallow_clone().f_copy_(value)?;
            }
            Ok(())
        })
    }

    /// `base` (a model's named parameters, e.g. `PolicyModel::named_parameters` of the base) with each
    /// adapted layer's weight `<path>.weight` replaced by the merged `W + s·B·A`, computed in f32 and
    /// rounded to the weight's dtype (new tensors without gradient; `base` is not modified). The other
    /// parameters are the same handles. Feed the result to a writer (`save_pretrained`, `save_gguf`).
    ///
    /// # Errors
    /// [`InputError::Config`] when `base` lacks an adapted layer's weight or holds it with another shape;
    /// [`Error::Torch`].
    pub fn merged_parameters(&self, base: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let by_weight: HashMap<String, &LoraAdapter> = self
            .layers
            .iter()
            .map(|l| (format!("{}.weight", l.path), &l.adapter))
            .collect();
        let mut merged_count = 0;
        let mut out = Vec::with_capacity(base.len());
        for (name, weight) in base {
            let Some(adapter) = by_weight.get(name) else {
                out.push((name.clone(), weight.shallow_clone()));
                continue;
            };
            let delta = adapter.delta_weight()?;
            if delta.size() != weight.size() {
                return Err(Error::Input(InputError::Config {
                    name: "base",
                    requirement: format!(
                        "`{name}` is {:?} in the base parameters, but its adapter gives {:?}",
                        weight.size(),
                        delta.size()
                    ),
                }));
            }
            let merged = tch::no_grad(|| -> Result<Tensor> {
                Ok(weight
                    .f_to_kind(Kind::Float)?
                    .f_add(&delta.f_to_device(weight.device())?)?
                    .f_to_kind(weight.f_kind()?)?)
            })?;
            out.push((name.clone(), merged));
            merged_count += 1;
        }
        if merged_count != by_weight.len() {
            let present: BTreeSet<&str> = base.iter().map(|(n, _)| n.as_str()).collect();
            let missing: Vec<&String> = by_weight
                .keys()
                .filter(|n| !present.contains(n.as_str()))
                .collect();
            return Err(Error::Input(InputError::Config {
                name: "base",
                requirement: format!("lacks the adapted weights {missing:?}"),
            }));
        }
        Ok(out)
    }
}

/// A fresh adapter for `linear`: `A` Kaiming-uniform (PEFT's), `B` zeros.
fn new_adapter(
    linear: &AdaptableLinear,
    config: &LoraConfig,
    switch: &Arc<LoraSwitch>,
) -> Result<LoraAdapter> {
    let kind = linear.weight.f_kind()?;
    let (out, input) = linear.features();
    let float = matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16);
    if !float || out < 1 || input < 1 {
        return Err(Error::Input(InputError::Config {
            name: "target_modules",
            requirement: format!(
                "`{}` must have a floating-point weight matrix [out, in], got {:?} {kind:?}",
                linear.path,
                linear.weight.size()
            ),
        }));
    }
    let max = out.min(input);
    if config.r > max {
        return Err(Error::Lora(LoraError::Rank {
            layer: linear.path.clone(),
            rank: config.r,
            in_features: input,
            out_features: out,
            max,
        }));
    }
    let options = (kind, linear.weight.device());
    let bound = 1.0 / (input as f64).sqrt();
    let a = tch::no_grad(|| -> Result<Tensor> {
        let mut a = Tensor::f_empty([config.r, input], options)?;
        let _ = a.f_uniform_(-bound, bound)?;
        Ok(a)
    })?
    .set_requires_grad(true);
    let b = Tensor::f_zeros([out, config.r], options)?.set_requires_grad(true);
    Ok(LoraAdapter {
        a,
        b,
        scaling: config.scaling(),
        dropout: config.lora_dropout,
        switch: Arc::clone(switch),
    })
}
