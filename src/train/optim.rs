//! AdamW implemented on tensors, so that its whole state (moments, step count, master weights) can be
//! saved and restored exactly (tch's `nn::Optimizer` does not expose its state).
//!
//! For step `t = 1, 2, …`, learning rate `lr`, gradient `g` of parameter `w` (PyTorch's `AdamW`):
//!
//! ```text
//! m ← β1·m + (1 − β1)·g
//! v ← β2·v + (1 − β2)·g²
//! w ← w·(1 − lr·λ)                              (decoupled weight decay; only in the decay group)
//! w ← w − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + ε)
//! ```
//!
//! Moments are kept in f32 whatever the parameter dtype. For parameters that are not f32 or f64 (bf16,
//! f16) an f32 **master copy** is updated and rounded into the parameter after each step, so updates far
//! below bf16's resolution (the paper's lr 5e-7) still accumulate.
//!
//! # Weight-decay groups
//! [`default_decay_rule`]: decay only tensors with at least two dimensions whose name does not mention an
//! embedding (`embed`, `wte`, `wpe`) or a norm (`norm`, `ln`); so no decay on biases, norm scales and
//! embedding tables. Override with [`AdamWConfig::decay_rule`].

use crate::error::{Error, InputError, ParameterMismatch, Result};
use tch::{Kind, Tensor};

/// Decides from a parameter's name and shape whether it is weight-decayed.
pub type DecayRule = fn(&str, &[i64]) -> bool;

/// The default [`DecayRule`] (see the [module docs](self)).
pub fn default_decay_rule(name: &str, shape: &[i64]) -> bool {
    let lower = name.to_ascii_lowercase();
    let excluded = ["embed", "wte", "wpe", "norm"]
        .iter()
        .any(|pattern| lower.contains(pattern))
        || lower
            .split(['.', '/', '_'])
            .any(|part| part == "ln" || part.starts_with("ln"));
    shape.len() >= 2 && !excluded
}

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    /// β1. Default 0.9.
    pub beta1: f64,
    /// β2. Default 0.999.
    pub beta2: f64,
    /// ε. Default 1e-8.
    pub eps: f64,
    /// Decoupled weight decay λ for the decay group. Default 0 (Hugging Face's default, used by the paper).
    pub weight_decay: f64,
    /// Which parameters are decayed. Default [`default_decay_rule`].
    pub decay_rule: DecayRule,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decay_rule: default_decay_rule,
        }
    }
}

impl AdamWConfig {
    /// Checks the hyper-parameters.
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`] for β outside `[0, 1)`, ε ≤ 0 or a negative weight decay.
    pub fn check(&self) -> Result<()> {
        for (name, value) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&value) {
                return Err(Error::Input(InputError::InvalidParameter {
                    name,
                    value: value.into(),
                    requirement: "must be in [0, 1)",
                }));
            }
        }
        crate::validate::positive_finite("eps", self.eps)?;
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "weight_decay",
                value: self.weight_decay.into(),
                requirement: "must be finite and >= 0",
            }));
        }
        Ok(())
    }
}

/// One trained parameter and its optimizer state.
#[derive(Debug)]
pub struct ParamState {
    /// The parameter's name.
    pub name: String,
    /// The parameter (shares storage with the model).
    pub param: Tensor,
    /// Whether it is in the weight-decay group.
    pub decay: bool,
    /// First moment, f32, the parameter's shape.
    pub m: Tensor,
    /// Second moment, f32, the parameter's shape.
    pub v: Tensor,
    /// f32 master copy for low-precision parameters, else `None`.
    pub master: Option<Tensor>,
    /// Other names under which the model lists this same tensor (a tied head), with their tensors. They
    /// are not updated separately; their gradients are added to this parameter's.
    pub aliases: Vec<(String, Tensor)>,
}

impl ParamState {
    /// The gradient of this parameter: the sum of the distinct defined gradients of the parameter and its
    /// aliases (two handles of one autograd leaf share one gradient, counted once); `None` if none is
    /// defined.
    ///
    /// # Errors
    /// [`Error::Torch`] if an op fails.
    pub fn grad(&self) -> Result<Option<Tensor>> {
        let mut grads = self.distinct_grads()?.into_iter();
        let Some(first) = grads.next() else {
            return Ok(None);
        };
        let mut total = first;
        for g in grads {
            total = total.f_add(&g)?;
        }
        Ok(Some(total))
    }

    /// The parameter's tensor, then its aliases' (every handle whose `.grad` autograd may fill).
    pub fn handles(&self) -> impl Iterator<Item = &Tensor> {
        std::iter::once(&self.param).chain(self.aliases.iter().map(|(_, t)| t))
    }

    fn distinct_grads(&self) -> Result<Vec<Tensor>> {
        let mut grads: Vec<Tensor> = Vec::new();
        for t in self.handles() {
            let g = t.f_grad()?;
            if g.defined() && !grads.iter().any(|h| h.data_ptr() == g.data_ptr()) {
                grads.push(g);
            }
        }
        Ok(grads)
    }
}

/// The bytes a tensor's elements occupy, for storage-identity checks.
#[derive(Debug, Clone, PartialEq)]
struct Span {
    start: usize,
    end: usize,
    size: Vec<i64>,
    stride: Vec<i64>,
    kind: Kind,
}

impl Span {
    fn of(t: &Tensor) -> Result<Self> {
        let kind = t.f_kind()?;
        let size = t.size();
        let stride = t.stride();
        let start = t.data_ptr() as usize;
        let elt = kind.elt_size_in_bytes();
        let numel: i64 = size.iter().product();
        let extent = if numel == 0 {
            0
        } else {
            let last: i64 = size.iter().zip(&stride).map(|(n, s)| (n - 1) * s.abs()).sum();
            (last as usize + 1) * elt
        };
        Ok(Self {
            start,
            end: start + extent,
            size,
            stride,
            kind,
        })
    }

    fn same_view(&self, other: &Span) -> bool {
        self.start != 0 && self == other
    }

    fn overlaps(&self, other: &Span) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// AdamW over named parameters (formulas in the [module docs](self)).
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<ParamState>,
    step: u64,
}

impl AdamW {
    /// An optimizer for the parameters that require grad, in the given order, with zeroed moments.
    ///
    /// A tensor listed under several names (a head tied to the embedding, listed as both, as in a Hugging
    /// Face state dict) is one parameter: it is optimized once, under its first name, with the other names
    /// as [`ParamState::aliases`]. Identity is storage identity: the same data pointer, shape, strides and
    /// dtype. Its gradient is the sum of the distinct gradients of its aliases.
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`] from [`AdamWConfig::check`]; [`InputError::Config`] if no parameter requires
    /// grad, names repeat, or two trained tensors overlap in memory without being the same view;
    /// [`Error::Torch`] if state cannot be allocated.
    pub fn new(config: AdamWConfig, named_parameters: &[(String, Tensor)]) -> Result<Self> {
        config.check()?;
        let mut params: Vec<ParamState> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut spans: Vec<(Span, usize)> = Vec::new();
        for (name, param) in named_parameters {
            if !seen.insert(name.as_str()) {
                return Err(Error::Input(InputError::Config {
                    name: "named_parameters",
                    requirement: format!("parameter names must be unique; `{name}` repeats"),
                }));
            }
            if !param.requires_grad() {
                continue;
            }
            let span = Span::of(param)?;
            if let Some(&(_, index)) = spans.iter().find(|(s, _)| s.same_view(&span)) {
                params[index].aliases.push((name.clone(), param.shallow_clone()));
                continue;
            }
            if let Some(&(_, index)) = spans.iter().find(|(s, _)| s.overlaps(&span)) {
                return Err(Error::Input(InputError::Config {
                    name: "named_parameters",
                    requirement: format!(
                        "`{name}` overlaps the memory of `{}` without being the same tensor view: a partial \
                         alias cannot be updated once",
                        params[index].name
                    ),
                }));
            }
            let kind = param.f_kind()?;
            let zeros = || param.f_zeros_like()?.f_to_kind(Kind::Float);
            let master = match kind {
                Kind::Float | Kind::Double => None,
                _ => Some(tch::no_grad(|| param.f_detach()?.f_to_kind(Kind::Float))?),
            };
            spans.push((span, params.len()));
            params.push(ParamState {
                name: name.clone(),
                decay: (config.decay_rule)(name, &param.size()),
                m: zeros()?,
                v: zeros()?,
                param: param.shallow_clone(),
                master,
                aliases: Vec::new(),
            });
        }
        if params.is_empty() {
            return Err(Error::Input(InputError::Config {
                name: "named_parameters",
                requirement: "no parameter requires grad: nothing to train".to_string(),
            }));
        }
        Ok(Self {
            config,
            params,
            step: 0,
        })
    }

    /// Takes `originals` (name → the parameter's f32 values from before it was rounded to a low precision)
    /// as the master copies of the low-precision parameters of those names, so that rounding a model's
    /// parameters loses nothing from the optimizer's point of view. Names not trained here are ignored.
    ///
    /// # Errors
    /// [`Error::Torch`] if an op fails.
    pub(crate) fn adopt_masters(&mut self, originals: &[(String, Tensor)]) -> Result<()> {
        for p in &mut self.params {
            if p.master.is_none() {
                continue;
            }
            if let Some((_, original)) = originals.iter().find(|(name, _)| *name == p.name) {
                p.master = Some(tch::no_grad(|| original.f_detach()?.f_to_kind(Kind::Float))?);
            }
        }
        Ok(())
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Number of updates applied so far (`t` of the last update).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The parameters and their state.
    pub fn params(&self) -> &[ParamState] {
        &self.params
    }

    /// `(decayed, not decayed)` parameter names.
    pub fn groups(&self) -> (Vec<&str>, Vec<&str>) {
        let (decay, no_decay): (Vec<_>, Vec<_>) = self.params.iter().partition(|p| p.decay);
        (
            decay.iter().map(|p| p.name.as_str()).collect(),
            no_decay.iter().map(|p| p.name.as_str()).collect(),
        )
    }

    /// Releases every gradient, aliases included: `.grad` becomes undefined and its memory is freed (as
    /// PyTorch's `zero_grad(set_to_none=True)`, its default). The next backward pass allocates fresh
    /// gradients — only for the parameters it reaches — so between steps, and during the next forward
    /// pass, no gradient memory is held. A parameter without a gradient is skipped by [`AdamW::step`].
    ///
    /// # Errors
    /// [`Error::Torch`] if libtorch fails.
    pub fn zero_grad(&mut self) -> Result<()> {
        for p in &self.params {
            for tensor in p.handles() {
                crate::autograd::release_grad(tensor)?;
            }
        }
        Ok(())
    }

    /// The global L2 norm of all gradients, `sqrt(Σ_p ||g_p||²)`, computed in f32 (syncs the device).
    /// Parameters without a gradient count as zero.
    ///
    /// # Errors
    /// [`Error::Torch`] if an op fails.
    pub fn grad_norm(&self) -> Result<f64> {
        let mut norms = Vec::with_capacity(self.params.len());
        for p in &self.params {
            if let Some(grad) = p.grad()? {
                match grad.f_kind()? {
                    Kind::Float | Kind::Double => norms.push(grad.f_to_kind(Kind::Float)?.f_norm()?),
                    // Low precision: the norms of row blocks of at most UPDATE_BLOCK elements, each from
                    // an f32 copy of its block (no f32 copy of a whole gradient, e.g. a 262,144-row head).
                    _ => {
                        let rows = grad.size().first().copied().unwrap_or(1).max(1);
                        let flat = grad.f_reshape([rows, -1])?;
                        let block_rows = (UPDATE_BLOCK / flat.size()[1].max(1)).clamp(1, rows);
                        let mut start = 0;
                        while start < rows {
                            let len = block_rows.min(rows - start);
                            norms.push(flat.f_narrow(0, start, len)?.f_to_kind(Kind::Float)?.f_norm()?);
                            start += len;
                        }
                    }
                }
            }
        }
        if norms.is_empty() {
            return Ok(0.0);
        }
        Ok(Tensor::f_stack(&norms, 0)?.f_norm()?.f_double_value(&[])?)
    }

    /// Scales every gradient by `factor` (for clipping).
    ///
    /// # Errors
    /// [`Error::Torch`] if an op fails.
    pub fn scale_grads(&mut self, factor: f64) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for p in &self.params {
                for mut grad in p.distinct_grads()? {
                    let _ = grad.f_mul_scalar_(factor)?;
                }
            }
            Ok(())
        })
    }

    /// Applies one AdamW update with learning rate `lr` to the parameters that have a gradient.
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`] for a negative or non-finite lr; [`Error::Torch`] if an op fails.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "lr",
                value: lr.into(),
                requirement: "must be finite and >= 0",
            }));
        }
        self.step += 1;
        let t = self.step as i32;
        let c = self.config;
        let bias_correction1 = 1.0 - c.beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bias_correction1;
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                let Some(grad) = p.grad()? else {
                    continue;
                };
                let decay = if p.decay { 1.0 - lr * c.weight_decay } else { 1.0 };
                // Elementwise, so updating row blocks of at most UPDATE_BLOCK elements gives the same
                // values as one pass, with temporaries of one block instead of the whole parameter.
                let (rows, numel) = (
                    p.param.size().first().copied().unwrap_or(1),
                    p.param.numel() as i64,
                );
                let block_rows = match rows {
                    0 => 1,
                    r => (UPDATE_BLOCK / (numel / r).max(1)).clamp(1, r),
                };
                let mut start = 0;
                loop {
                    let len = block_rows.min(rows - start);
                    let part = |t: &Tensor| -> Result<Tensor> {
                        match t.dim() {
                            0 => Ok(t.shallow_clone()),
                            _ => Ok(t.f_narrow(0, start, len)?),
                        }
                    };
                    let slots = UpdateSlots {
                        param: part(&p.param)?,
                        m: part(&p.m)?,
                        v: part(&p.v)?,
                        master: p.master.as_ref().map(part).transpose()?,
                    };
                    slots.update(&part(&grad)?, &c, decay, step_size, bias_correction2_sqrt)?;
                    start += len;
                    if p.param.dim() == 0 || start >= rows {
                        break;
                    }
                }
            }
            Ok(())
        })
    }

    /// The state as named tensors: `m/<name>`, `v/<name>`, `master/<name>` (for checkpoints).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(3 * self.params.len());
        for p in &self.params {
            out.push((format!("m/{}", p.name), p.m.shallow_clone()));
            out.push((format!("v/{}", p.name), p.v.shallow_clone()));
            if let Some(master) = &p.master {
                out.push((format!("master/{}", p.name), master.shallow_clone()));
            }
        }
        out
    }

    /// Restores the state written by [`AdamW::state_tensors`] and the step count, all or nothing: every
    /// tensor is checked (present, expected shape, nothing extra) and converted before any slot is
    /// written, so on error the optimizer is unchanged.
    ///
    /// # Errors
    /// [`WeightsError::Parameters`](crate::WeightsError::Parameters) (naming `source`) listing the tensors missing, extra, or of the wrong shape;
    /// [`Error::Torch`] if a conversion fails.
    pub fn load_state(&mut self, step: u64, tensors: Vec<(String, Tensor)>, source: &str) -> Result<()> {
        let staged = self.stage_state(tensors, source)?;
        self.commit_state(step, staged)
    }

    /// The checking half of [`AdamW::load_state`]: the saved tensors in slot order, converted to each
    /// slot's dtype and device. Changes nothing.
    pub(crate) fn stage_state(&self, tensors: Vec<(String, Tensor)>, source: &str) -> Result<Vec<Tensor>> {
        let slots: Vec<(String, &Tensor)> = self
            .params
            .iter()
            .flat_map(|p| {
                let mut slots = vec![(format!("m/{}", p.name), &p.m), (format!("v/{}", p.name), &p.v)];
                if let Some(master) = &p.master {
                    slots.push((format!("master/{}", p.name), master));
                }
                slots
            })
            .collect();
        let expected: std::collections::BTreeMap<String, Vec<i64>> = slots
            .iter()
            .map(|(key, slot)| (key.clone(), slot.size()))
            .collect();
        let given = tensors.iter().map(|(key, tensor)| (key.as_str(), tensor.size()));
        ParameterMismatch::compare(&expected, given).into_result(
            &format!("the optimizer state of {source}"),
            "the trained parameters' AdamW slots (m/, v/, master/)",
        )?;
        let mut map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        let mut staged = Vec::with_capacity(slots.len());
        for (key, slot) in &slots {
            let saved = map.remove(key).ok_or_else(|| Error::Internal {
                what: format!("checked optimizer state `{key}` vanished"),
            })?;
            staged.push(saved.f_to_device(slot.device())?.f_to_kind(slot.f_kind()?)?);
        }
        Ok(staged)
    }

    /// The writing half of [`AdamW::load_state`]: copies tensors staged by [`AdamW::stage_state`].
    pub(crate) fn commit_state(&mut self, step: u64, staged: Vec<Tensor>) -> Result<()> {
        let mut staged = staged.into_iter();
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                let mut slots: Vec<&mut Tensor> = vec![&mut p.m, &mut p.v];
                if let Some(master) = &mut p.master {
                    slots.push(master);
                }
                for slot in slots {
                    let saved = staged.next().ok_or(Error::Internal {
                        what: "AdamW::commit_state got fewer staged tensors than slots".to_string(),
                    })?;
                    slot.f_copy_(&saved)?;
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// Elements per block of the AdamW update ([`AdamW::step`]): 4 Mi f32 (16 MB) per temporary, of which
/// the update keeps up to three alive at once.
const UPDATE_BLOCK: i64 = 1 << 22;

/// Views (one row block) of a parameter, its moments and its master copy.
struct UpdateSlots {
    param: Tensor,
    m: Tensor,
    v: Tensor,
    master: Option<Tensor>,
}

impl UpdateSlots {
    /// The AdamW update of these elements with gradient `grad`: moments, bias-corrected step, decoupled
    /// weight decay (`decay = 1 − lr·λ`, or 1), on the master copy when there is one.
    fn update(
        mut self,
        grad: &Tensor,
        c: &AdamWConfig,
        decay: f64,
        step_size: f64,
        bias_correction2_sqrt: f64,
    ) -> Result<()> {
        // PyTorch's single-tensor AdamW, in place: one temporary (the denominator) per block.
        let grad = grad.f_to_kind(Kind::Float)?;
        let _ = self.m.f_lerp_(&grad, 1.0 - c.beta1)?;
        let _ = self
            .v
            .f_mul_scalar_(c.beta2)?
            .f_addcmul_(&grad, &grad.f_mul_scalar(1.0 - c.beta2)?)?;
        let mut denom = self.v.f_sqrt()?;
        let _ = denom.f_div_scalar_(bias_correction2_sqrt)?.f_add_scalar_(c.eps)?;
        let target = match &mut self.master {
            Some(master) => master,
            None => &mut self.param,
        };
        if decay != 1.0 {
            let _ = target.f_mul_scalar_(decay)?;
        }
        if step_size != 0.0 {
            // target − step_size · m / denom, as target + m / (denom · (−1 / step_size)).
            let _ = denom.f_mul_scalar_(-1.0 / step_size)?;
            let _ = target.f_addcdiv_(&self.m, &denom)?;
        }
        if let Some(master) = &self.master {
            self.param.f_copy_(master)?;
        }
        Ok(())
    }
}
