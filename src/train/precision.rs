//! Training precision: f32, or bf16 mixed precision (bf16 weights and activations for the forward and
//! backward passes, f32 master weights and moments in [`crate::train::AdamW`]), chosen by the CPU where
//! asked ([`Precision::Auto`]).
//!
//! # What runs in which dtype under [`Precision::Bf16`]
//! | part | dtype |
//! |------|-------|
//! | parameters, activations, the decoder's matmuls and attention, gradients | bf16 |
//! | RMSNorm statistics (mean square, reciprocal square root) and rotary tables | f32, rounded to bf16 after |
//! | attention softmax (explicit path: `softmax(…, Float)`; SDPA: its kernels accumulate in f32) | f32 |
//! | the LM head's product (`hidden · Wᵀ`) | bf16 |
//! | log-softmax statistics, per-token log-probs and their per-row sums (both loss paths; the fused path's bf16 row kernels read the bf16 logits) | f32 (sums f64) |
//! | the head weight's gradient (fused path): its bf16 `.grad`, each chunk's product accumulated in f32 and rounded once | bf16 |
//! | the loss, the metrics | f32 |
//! | AdamW's moments and master weights ([`crate::train::ParamState::master`]) | f32 |
//!
//! With [`crate::train::RpoTrainerConfig::precision`] set, [`crate::train::RpoTrainer::new`] rounds the
//! model's parameters (and a reference model's, [`crate::train::ReferenceSource::Model`]) to the dtype
//! the precision resolves to; the optimizer's f32 master copies are the parameters' f32 values from before
//! the rounding, so no information is lost from an f32 model.

use crate::error::{Error, InputError, Result};
use tch::{Device, Kind, Tensor};

/// The precision a trainer runs its passes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// [`Precision::Bf16`] on a CPU whose instruction set multiplies bf16 natively (AVX-512 BF16 or
    /// AMX-BF16, [`cpu_has_native_bf16`]), [`Precision::F32`] otherwise — and on CUDA devices (name
    /// [`Precision::Bf16`] there explicitly).
    Auto,
    /// Everything in f32 (the exact reference behaviour: every peer-equality test runs it).
    #[default]
    F32,
    /// bf16 mixed precision (the [module docs](self)).
    Bf16,
}

impl Precision {
    /// The parameter and activation dtype this precision means on `device`: `Float` or `BFloat16`.
    pub fn resolve(self, device: Device) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::Auto => match device == Device::Cpu && cpu_has_native_bf16() {
                true => Kind::BFloat16,
                false => Kind::Float,
            },
        }
    }

    /// The name used on command lines and in logs: `auto`, `f32`, `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    /// `auto`, `f32` or `bf16`.
    ///
    /// # Errors
    /// [`InputError::Config`] (`precision`) for any other name.
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "auto" => Ok(Precision::Auto),
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::Input(InputError::Config {
                name: "precision",
                requirement: format!("must be auto, f32 or bf16, got {other:?}"),
            })),
        }
    }
}

/// Whether this CPU multiplies bf16 natively: AVX-512 BF16 (`vdpbf16ps`, detected by the standard
/// library's runtime detection) or AMX-BF16 (CPUID leaf 7 EDX bit 22, with the operating system's tile
/// state enabled in XCR0 bits 17–18). libtorch's oneDNN kernels use either for bf16 matmuls. Always
/// `false` off x86-64.
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512bf16") || amx_bf16()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AMX-BF16 in CPUID and its tile state enabled by the operating system (XCR0's XTILECFG and XTILEDATA
/// bits).
#[cfg(target_arch = "x86_64")]
fn amx_bf16() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    if !std::is_x86_feature_detected!("xsave") {
        return false;
    }
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only when the maximum leaf covers it.
    #[allow(unused_unsafe)]
    let (max_leaf, leaf7_edx) = unsafe {
        let max_leaf = __cpuid(0).eax;
        (max_leaf, if max_leaf >= 7 { __cpuid_count(7, 0).edx } else { 0 })
    };
    if max_leaf < 7 || leaf7_edx & (1 << 22) == 0 {
        return false;
    }
    // SAFETY: XGETBV is available (the `xsave` feature, checked above, implies OSXSAVE's XGETBV).
    let xcr0 = unsafe { xgetbv0() };
    xcr0 & (0b11 << 17) == 0b11 << 17
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    std::arch::x86_64::_xgetbv(0)
}

/// Rounds every tensor of `params` to `kind` in place (`set_data` under `no_grad`, so every handle of a
/// parameter — the model's, the optimizer's — sees the new tensor). Handles that are the same view of one
/// storage (a tied head) get one converted tensor, so they stay tied. Tensors already of `kind` are left
/// alone.
///
/// # Errors
/// [`Error::Torch`] if an op fails.
pub(crate) fn round_parameters(params: &[(String, Tensor)], kind: Kind) -> Result<()> {
    // (data pointer, shape, strides) of each converted view and its new tensor.
    type View = (usize, Vec<i64>, Vec<i64>);
    let mut converted: Vec<(View, Tensor)> = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (_, param) in params {
            if param.f_kind()? == kind {
                continue;
            }
            let view = (param.data_ptr() as usize, param.size(), param.stride());
            let new = match converted.iter().find(|(v, _)| *v == view) {
                Some((_, new)) => new.shallow_clone(),
                None => {
                    let new = param.f_detach()?.f_to_kind(kind)?;
                    converted.push((view, new.shallow_clone()));
                    new
                }
            };
            let mut handle = param.shallow_clone();
            handle.f_set_data(&new)?;
        }
        Ok(())
    })
}
