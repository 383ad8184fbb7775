//! The chunked passes of the fused path: input checks, valid-token selection, pass 1 (log-probs under
//! no_grad), pass 2 (analytic gradients), and the surrogate that injects them into autograd.

use super::head::LinearHead;
use crate::error::{Error, InputError, Result};
use crate::logprobs::LogProbOptions;
use crate::logprobs::{check_label_range, stats_given_lse, TokenStats};
use crate::validate;
use tch::{Kind, Tensor};

/// Argument names of the policy side in errors (hidden states, weight, bias).
pub(crate) const NAMES: [&str; 3] = ["hidden", "weight", "bias"];
/// Argument names of a [`crate::Reference::Hidden`] reference in errors.
pub(crate) const REF_NAMES: [&str; 3] = ["reference.hidden", "reference.weight", "reference.bias"];

/// The valid (scored) tokens of a batch, gathered once.
pub(crate) struct Prepared {
    /// `[N, H]` hidden states of the scored positions, in the hidden states' dtype. Carries autograd
    /// history to the caller's hidden states when they require grad (for the surrogate).
    pub h_valid: Tensor,
    /// `[N]` i64 target ids.
    pub targets: Tensor,
    /// `[N]` i64 row (sequence) of each scored token.
    pub seq_ids: Tensor,
    /// `[R]` i64 scored tokens per row.
    pub counts: Tensor,
    /// Number of rows `R`.
    pub rows: i64,
    /// Number of scored tokens `N`.
    pub tokens: i64,
    /// Vocabulary size `V`.
    pub vocab: i64,
    /// Dtype of the hidden states and head.
    pub kind: Kind,
    /// Dtype of the log-probs and gradient accumulators (f32; f64 for f64 inputs).
    pub compute: Kind,
}

/// Checks `hidden [R, T, H]`, `head` (`weight [V, H]`, `bias [V]`), `labels [R, T]` and the options, and
/// gathers the scored positions. `names` are the argument names used in errors (hidden, weight, bias).
pub(crate) fn prepare(
    hidden: &Tensor,
    head: &LinearHead,
    labels: &Tensor,
    options: &LogProbOptions,
    names: [&'static str; 3],
) -> Result<Prepared> {
    let [hidden_arg, weight_arg, bias_arg] = names;
    options.validate()?;
    head.validate()?;
    let kind = validate::float_tensor(hidden_arg, hidden)?;
    let size = validate::rank(hidden_arg, hidden, 3, "[R, T, H] hidden states")?;
    let (rows, steps_full, h) = (size[0], size[1], size[2]);
    let weight = &head.weight;
    let w_kind = validate::float_tensor(weight_arg, weight)?;
    let w_size = validate::rank(weight_arg, weight, 2, "[V, H] linear-head weight")?;
    validate::same_device(weight_arg, weight, hidden_arg, hidden)?;
    let vocab = w_size[0];
    if w_size[1] != h {
        return Err(Error::Input(InputError::Shape {
            arg: weight_arg,
            expected: format!("[V, H] with H = {h} matching the hidden states {size:?}"),
            got: w_size,
        }));
    }
    if w_kind != kind {
        return Err(Error::Input(InputError::DType {
            arg: weight_arg,
            expected: "the hidden states' dtype",
            got: w_kind,
        }));
    }
    if let Some(bias) = &head.bias {
        let b_kind = validate::float_tensor(bias_arg, bias)?;
        validate::same_device(bias_arg, bias, hidden_arg, hidden)?;
        if bias.size() != [vocab] {
            return Err(Error::Input(InputError::Shape {
                arg: bias_arg,
                expected: format!("[V] = [{vocab}] matching the head weight"),
                got: bias.size(),
            }));
        }
        if b_kind != kind {
            return Err(Error::Input(InputError::DType {
                arg: bias_arg,
                expected: "the hidden states' dtype",
                got: b_kind,
            }));
        }
    }
    validate::int64_labels("labels", labels)?;
    if labels.size() != [rows, steps_full] {
        return Err(Error::Input(InputError::Shape {
            arg: "labels",
            expected: format!("[R, T] = [{rows}, {steps_full}] matching the hidden states {size:?}"),
            got: labels.size(),
        }));
    }
    validate::same_device("labels", labels, hidden_arg, hidden)?;
    let shift = i64::from(options.shift);
    let steps = steps_full - shift;
    if rows == 0 || steps <= 0 || h == 0 {
        return Err(Error::Input(InputError::EmptyBatch {
            arg: hidden_arg,
            shape: size,
        }));
    }
    if vocab == 0 {
        return Err(Error::Input(InputError::EmptyBatch {
            arg: weight_arg,
            shape: w_size,
        }));
    }

    // Position t of the hidden states scores label t + shift.
    let shifted = labels.f_narrow(1, shift, steps)?;
    let ignore_index = options.ignore_index;
    let mask = shifted.f_ne(ignore_index)?;
    if options.validate_inputs {
        check_label_range(&shifted, &mask, vocab, ignore_index, steps_full, shift)?;
    }
    let counts = mask.f_sum_dim_intlist(-1, false, Kind::Int64)?;
    // [N, 2] (row, column), row-major like masked_select. `nonzero` (and `masked_select`) have a data-dependent
    // output size: on CUDA they read the count back — one host sync per call. Scoring every position instead
    // would avoid it at the cost of running the head on prompt and padding tokens.
    let positions = mask.f_nonzero()?;
    let seq_ids = positions.f_select(1, 0)?.f_contiguous()?;
    let cols = positions.f_select(1, 1)?;
    let flat_index = seq_ids.f_mul_scalar(steps_full)?.f_add(&cols)?;
    let targets = shifted.f_masked_select(&mask)?;
    let tokens = targets.size()[0];
    let h_valid = hidden
        .f_reshape([rows * steps_full, h])?
        .f_index_select(0, &flat_index)?;
    Ok(Prepared {
        h_valid,
        targets,
        seq_ids,
        counts,
        rows,
        tokens,
        vocab,
        kind,
        compute: validate::compute_kind(kind),
    })
}

/// Whether a chunk's logits stay bf16 and go through the row kernels ([`super::bf16`]): bf16 inputs on the
/// CPU, no soft-cap, no token statistics, no bias gradient.
#[cfg(feature = "autograd")]
pub(crate) fn bf16_rows(
    prep: &Prepared,
    head: &LinearHead,
    options: &LogProbOptions,
    bias_grad: bool,
) -> bool {
    head.final_logit_softcap.is_none()
        && !options.token_stats
        && !bias_grad
        && super::bf16::applies(prep.kind, prep.compute, prep.h_valid.device())
}

/// Rows per chunk: two `[rows, V]` buffers in the compute dtype fit the budget.
fn chunk_rows(options: &LogProbOptions, vocab: i64, compute: Kind) -> i64 {
    let per_row = 2 * vocab as usize * compute.elt_size_in_bytes();
    (options.fused_chunk_bytes / per_row).max(1) as i64
}

/// `[n, V]` logits of one chunk in the compute dtype: `softcap(scale · (h·Wᵀ + b))`.
pub(crate) fn chunk_logits(h: &Tensor, head: &LinearHead, compute: Kind) -> Result<Tensor> {
    let linear = head.linear(h, None)?;
    let mut z = if linear.f_kind()? == compute {
        linear
    } else {
        linear.f_to_kind(compute)?
    };
    if head.logit_scale != 1.0 {
        let _ = z.f_mul_scalar_(head.logit_scale)?;
    }
    if let Some(cap) = head.final_logit_softcap {
        let _ = z.f_div_scalar_(cap)?.f_tanh_()?.f_mul_scalar_(cap)?;
    }
    Ok(z)
}

/// What pass 1 returns.
pub(crate) struct Pass1 {
    /// `[R]` per-row sums of the scored tokens' log-probs, in the compute dtype (accumulated in f64).
    pub sums: Tensor,
    /// `[N]` logsumexp of each scored token's logits, in the compute dtype.
    pub lse: Tensor,
    /// `[R]` per-row sums of the token statistics when `options.token_stats`.
    pub stats: Option<TokenStats>,
}

/// Pass 1 (no grad): per-row sums of the scored tokens' log-probs, each token's logsumexp, and optionally the
/// per-row token statistics.
pub(crate) fn forward(prep: &Prepared, head: &LinearHead, options: &LogProbOptions) -> Result<Pass1> {
    tch::no_grad(|| {
        let mut sums = RowSums::new(prep, options.token_stats)?;
        let lse_all = Tensor::f_empty([prep.tokens], (prep.compute, prep.h_valid.device()))?;
        let h_valid = prep.h_valid.f_detach()?;
        let rows = chunk_rows(options, prep.vocab, prep.compute);
        let mut start = 0;
        while start < prep.tokens {
            let n = rows.min(prep.tokens - start);
            let hc = h_valid.f_narrow(0, start, n)?;
            let targets = prep.targets.f_narrow(0, start, n)?;
            let ids = prep.seq_ids.f_narrow(0, start, n)?;
            #[cfg(feature = "autograd")]
            if bf16_rows(prep, head, options, false) {
                let z = head.linear(&hc, None)?;
                let (lse, logp) = super::bf16::stats(&z, head.logit_scale, &targets.f_contiguous()?)?;
                sums.add(&ids, &logp, None)?;
                lse_all.f_narrow(0, start, n)?.f_copy_(&lse)?;
                start += n;
                continue;
            }
            let z = chunk_logits(&hc, head, prep.compute)?;
            let lse = z.f_logsumexp(-1, false)?;
            let target = z.f_gather(1, &targets.f_unsqueeze(1)?, false)?.f_squeeze_dim(1)?;
            let stats = match options.token_stats {
                true => Some(stats_given_lse(&z, &lse, &targets, prep.compute)?),
                false => None,
            };
            sums.add(&ids, &target.f_sub(&lse)?, stats.as_ref())?;
            lse_all.f_narrow(0, start, n)?.f_copy_(&lse)?;
            start += n;
        }
        let (sums, stats) = sums.finish(prep.compute)?;
        Ok(Pass1 {
            sums,
            lse: lse_all,
            stats,
        })
    })
}

/// Per-row sums of token log-probs (and token statistics), accumulated in f64 (`[R]` buffers): an f32
/// running sum over thousands of tokens of one row would lose digits the unfused path (a pairwise `sum`)
/// keeps.
pub(crate) struct RowSums {
    sums: Tensor,
    stats: Option<[Tensor; 3]>,
}

impl RowSums {
    /// Zeroed sums of `prep`'s rows, with the statistics when `token_stats`.
    pub(crate) fn new(prep: &Prepared, token_stats: bool) -> Result<Self> {
        let zeros = || Tensor::f_zeros([prep.rows], (Kind::Double, prep.h_valid.device()));
        Ok(Self {
            sums: zeros()?,
            stats: match token_stats {
                true => Some([zeros()?, zeros()?, zeros()?]),
                false => None,
            },
        })
    }

    /// Adds the tokens `logp [n]` of rows `ids [n]` (and their statistics `[n, 3]`).
    pub(crate) fn add(&mut self, ids: &Tensor, logp: &Tensor, stats: Option<&Tensor>) -> Result<()> {
        let _ = self.sums.f_index_add_(0, ids, &logp.f_to_kind(Kind::Double)?)?;
        if let (Some(sums), Some(chunk)) = (self.stats.as_mut(), stats) {
            let chunk = chunk.f_to_kind(Kind::Double)?;
            for (i, sum) in sums.iter_mut().enumerate() {
                let _ = sum.f_index_add_(0, ids, &chunk.f_select(1, i as i64)?)?;
            }
        }
        Ok(())
    }

    /// The sums so far in `kind`.
    pub(crate) fn current(&self, kind: Kind) -> Result<Tensor> {
        Ok(self.sums.f_to_kind(kind)?)
    }

    /// The sums and statistics in `kind`.
    pub(crate) fn finish(self, kind: Kind) -> Result<(Tensor, Option<TokenStats>)> {
        let stats = match self.stats {
            Some([mean_logit, entropy, correct]) => Some(TokenStats {
                mean_logit: mean_logit.f_to_kind(kind)?,
                entropy: entropy.f_to_kind(kind)?,
                correct: correct.f_to_kind(kind)?,
            }),
            None => None,
        };
        Ok((self.sums.f_to_kind(kind)?, stats))
    }
}

/// Which gradients pass 2 computes.
#[derive(Clone, Copy)]
pub(crate) struct Needs {
    pub hidden: bool,
    pub weight: bool,
    pub bias: bool,
}

impl Needs {
    /// The gradients the returned loss carries: all but the weight's when `weight_in_grad` (it went into
    /// the weight's `.grad`, [`super::WeightGrad::IntoGrad`]).
    pub(crate) fn through_loss(self, weight_in_grad: bool) -> Needs {
        Needs {
            weight: self.weight && !weight_in_grad,
            ..self
        }
    }
}

/// Gradients of the loss, in the compute dtype: `[N, H]` w.r.t. the scored hidden states, `[V, H]` w.r.t.
/// the weight, `[V]` w.r.t. the bias.
pub(crate) struct Grads {
    pub hidden: Option<Tensor>,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
}

/// Pass 2 (no grad): recomputes each chunk's logits and applies `dL/dz = c·(onehot(y) − softmax(z))`,
/// chained through the soft-cap and the scale, with `c` = `coef [N]` (dL/d(sum of the token's row)).
pub(crate) fn backward(
    prep: &Prepared,
    head: &LinearHead,
    options: &LogProbOptions,
    lse_all: &Tensor,
    coef: &Tensor,
    needs: Needs,
    weight_into: Option<Tensor>,
) -> Result<Grads> {
    tch::no_grad(|| {
        let mut acc = Accumulators::new(prep, options, needs, weight_into)?;
        let h_valid = prep.h_valid.f_detach()?;
        let rows = chunk_rows(options, prep.vocab, prep.compute);
        let mut start = 0;
        while start < prep.tokens {
            let n = rows.min(prep.tokens - start);
            let hc = h_valid.f_narrow(0, start, n)?;
            #[cfg(feature = "autograd")]
            if bf16_rows(prep, head, options, needs.bias) {
                let g = super::bf16::grad_in_place(
                    head.linear(&hc, None)?,
                    head.logit_scale,
                    &prep.targets.f_narrow(0, start, n)?.f_contiguous()?,
                    &lse_all.f_narrow(0, start, n)?.f_contiguous()?,
                    &coef
                        .f_narrow(0, start, n)?
                        .f_to_kind(Kind::Float)?
                        .f_contiguous()?,
                )?;
                acc.add_low(&g, &hc, head, Rows::Range(start))?;
                start += n;
                continue;
            }
            let z = chunk_logits(&hc, head, prep.compute)?;
            let g = chunk_grad(
                z,
                &lse_all.f_narrow(0, start, n)?.f_unsqueeze(1)?,
                &prep.targets.f_narrow(0, start, n)?.f_unsqueeze(1)?,
                &coef.f_narrow(0, start, n)?.f_unsqueeze(1)?,
                head,
            )?;
            acc.add(&g, &hc, head, Rows::Range(start))?;
            start += n;
        }
        Ok(acc.into_grads())
    })
}

/// `dL/dz [n, V]` of one chunk from its logits `z` (consumed; without a soft-cap the result reuses its
/// storage): `c · f · (onehot(y) − softmax(z))` times the logit scale, `f = 1 − (z / cap)²` the soft-cap's
/// derivative (1 without one). `lse_c`, `targets_c`, `coef_c` are `[n, 1]`.
pub(crate) fn chunk_grad(
    mut z: Tensor,
    lse_c: &Tensor,
    targets_c: &Tensor,
    coef_c: &Tensor,
    head: &LinearHead,
) -> Result<Tensor> {
    match head.final_logit_softcap {
        None => {
            let _ = z.f_sub_(lse_c)?.f_exp_()?;
            probs_grad(z, targets_c, coef_c, coef_c, head)
        }
        Some(cap) => {
            let z_target = z.f_gather(1, targets_c, false)?;
            let factor_target = z_target
                .f_div_scalar(cap)?
                .f_square()?
                .f_neg()?
                .f_add_scalar(1.0)?;
            let mut p = z.f_sub(lse_c)?.f_exp()?;
            let _ = z.f_div_scalar_(cap)?.f_square_()?.f_neg_()?.f_add_scalar_(1.0)?;
            let _ = p.f_mul_(&z)?;
            drop(z);
            probs_grad(p, targets_c, coef_c, &coef_c.f_mul(&factor_target)?, head)
        }
    }
}

/// `g = scale · (onehot_coef at y − coef · p)`, in place of `p` (`p` the softmax, times the soft-cap factor
/// when there is one).
pub(crate) fn probs_grad(
    mut p: Tensor,
    targets_c: &Tensor,
    coef_c: &Tensor,
    onehot_coef: &Tensor,
    head: &LinearHead,
) -> Result<Tensor> {
    let _ = p.f_mul_(&coef_c.f_neg()?)?;
    let _ = p.f_scatter_add_(1, targets_c, onehot_coef)?;
    if head.logit_scale != 1.0 {
        let _ = p.f_mul_scalar_(head.logit_scale)?;
    }
    Ok(p)
}

/// Where a chunk's `[n, H]` hidden-state gradient goes in the `[N, H]` result.
pub(crate) enum Rows<'a> {
    /// Rows `start..start + n`.
    Range(i64),
    /// The rows listed in this `[n]` i64 index.
    Index(&'a Tensor),
}

/// The gradient accumulators of the passes that compute gradients, in the compute dtype.
pub(crate) struct Accumulators {
    hidden: Option<Tensor>,
    weight: Option<Tensor>,
    /// `weight` is the head weight's `.grad` itself (not returned by [`Accumulators::into_grads`]).
    weight_in_place: bool,
    bias: Option<Tensor>,
    kind: Kind,
    compute: Kind,
    /// Vocabulary slice of the low-precision weight-gradient product (bounds its temporary).
    vocab_slice: i64,
}

impl Accumulators {
    /// Zeroed accumulators for what `needs` asks; the weight gradient is added to `weight_into` instead (the
    /// head weight's `.grad`, see [`super::weight_grad_target`]) when given, and then not returned.
    pub(crate) fn new(
        prep: &Prepared,
        options: &LogProbOptions,
        needs: Needs,
        weight_into: Option<Tensor>,
    ) -> Result<Self> {
        let device = prep.h_valid.device();
        let compute = prep.compute;
        let h = prep.h_valid.size()[1];
        let vocab_slice = ((options.fused_chunk_bytes / (h.max(1) as usize * prep.kind.elt_size_in_bytes()))
            .max(1) as i64)
            .min(prep.vocab);
        Ok(Self {
            hidden: match needs.hidden {
                true => Some(Tensor::f_empty([prep.tokens, h], (compute, device))?),
                false => None,
            },
            weight_in_place: weight_into.is_some(),
            weight: match (weight_into, needs.weight) {
                (Some(target), _) => Some(target),
                (None, true) => Some(Tensor::f_zeros([prep.vocab, h], (compute, device))?),
                (None, false) => None,
            },
            bias: match needs.bias {
                true => Some(Tensor::f_zeros([prep.vocab], (compute, device))?),
                false => None,
            },
            kind: prep.kind,
            compute,
            vocab_slice,
        })
    }

    /// Adds one chunk: `grad_h[rows] = g·W`, `grad_W += gᵀ·h`, `grad_b += Σ g` (`g [n, V]` in the compute
    /// dtype, `hc [n, H]` the chunk's hidden states).
    pub(crate) fn add(&mut self, g: &Tensor, hc: &Tensor, head: &LinearHead, rows: Rows<'_>) -> Result<()> {
        if let Some(gb) = self.bias.as_mut() {
            let _ = gb.f_add_(&g.f_sum_dim_intlist(0, false, self.compute)?)?;
        }
        let g_low = if self.kind == self.compute {
            g.shallow_clone()
        } else {
            g.f_to_kind(self.kind)?
        };
        self.add_products(g, &g_low, hc, head, rows)
    }

    /// [`Accumulators::add`] for a gradient `g_low` already in the inputs' dtype (not the compute dtype),
    /// without a bias gradient (the caller checked that none is needed).
    #[cfg(feature = "autograd")]
    pub(crate) fn add_low(
        &mut self,
        g_low: &Tensor,
        hc: &Tensor,
        head: &LinearHead,
        rows: Rows<'_>,
    ) -> Result<()> {
        debug_assert!(self.bias.is_none() && self.kind != self.compute);
        self.add_products(g_low, g_low, hc, head, rows)
    }

    /// The products of [`Accumulators::add`]: `g` in the compute dtype when it is the inputs' (else unused),
    /// `g_low` in the inputs' dtype.
    fn add_products(
        &mut self,
        g: &Tensor,
        g_low: &Tensor,
        hc: &Tensor,
        head: &LinearHead,
        rows: Rows<'_>,
    ) -> Result<()> {
        if let Some(gh) = self.hidden.as_mut() {
            let part = head.input_grad(g_low)?;
            match rows {
                Rows::Range(start) => {
                    gh.f_narrow(0, start, part.size()[0])?.f_copy_(&part)?;
                }
                Rows::Index(index) => {
                    let _ = gh.f_index_copy_(0, index, &part.f_to_kind(self.compute)?)?;
                }
            }
        }
        if let Some(gw) = self.weight.as_mut() {
            if self.kind == self.compute {
                let _ = gw.f_addmm_(&g.f_tr()?, hc)?;
            } else if gw.f_kind()? == self.kind {
                // The weight's own low-precision `.grad`: accumulated by the product itself (f32 inside the
                // matmul, one rounding), no `[V, H]` temporary.
                let _ = gw.f_addmm_(&g_low.f_tr()?, hc)?;
            } else {
                let vocab = gw.size()[0];
                let mut v0 = 0;
                while v0 < vocab {
                    let m = self.vocab_slice.min(vocab - v0);
                    let part = g_low.f_narrow(1, v0, m)?.f_tr()?.f_mm(hc)?;
                    let _ = gw.f_narrow(0, v0, m)?.f_add_(&part)?;
                    v0 += m;
                }
            }
        }
        Ok(())
    }

    /// The accumulated gradients.
    pub(crate) fn into_grads(self) -> Grads {
        Grads {
            hidden: self.hidden,
            weight: if self.weight_in_place { None } else { self.weight },
            bias: self.bias,
        }
    }
}

/// `Σ(x ⊙ g)` in the compute dtype, with `g` detached: its gradient w.r.t. `x` is exactly `g` (cast to `x`'s
/// dtype by autograd). Uses a dot product when the dtypes agree (no `x`-sized temporary).
pub(crate) fn inner(x: &Tensor, g: &Tensor, compute: Kind) -> Result<Tensor> {
    let g = g.f_detach()?;
    if x.f_kind()? == compute {
        Ok(x.f_reshape([-1])?.f_dot(&g.f_reshape([-1])?)?)
    } else {
        Ok(x.f_mul(&g)?.f_sum(compute)?)
    }
}
