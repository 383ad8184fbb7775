//! The chunked gathering of log-probs from `[B, T, V]` logits (formulas and memory in the
//! [module docs](super)).

use super::{LogProbOptions, SequenceLogProbs, TokenLogProbs, TokenStats};
use crate::error::{Error, InputError, Result};
use crate::validate;
use tch::{Kind, Tensor};

/// Per-token log-probabilities of `labels` under `logits`.
///
/// # Arguments
/// - `logits`: `[B, T, V]`, f32, f64, bf16 or f16, any device, any strides (chunks are views).
/// - `labels`: `[B, T]` i64 on the same device; values in `[0, V)` or `options.ignore_index`.
///
/// # Returns
/// [`TokenLogProbs`] with `[B, T']` log-probs (f32, or f64 for f64 logits; `0` at ignored positions) and
/// the bool mask. Gradients flow to `logits`.
///
/// # Errors
/// - [`InputError::Shape`](crate::InputError::Shape): logits not rank 3, labels not `[B, T]` matching the logits.
/// - [`InputError::DType`](crate::InputError::DType): logits not floating point, labels not i64.
/// - [`InputError::DeviceMismatch`](crate::InputError::DeviceMismatch): labels and logits on different devices.
/// - [`InputError::EmptyBatch`](crate::InputError::EmptyBatch): `B`, `T'` or `V` is zero.
/// - [`InputError::InvalidParameter`](crate::InputError::InvalidParameter): `chunk_bytes == 0`.
/// - with `validate_inputs`: [`InputError::LabelOutOfRange`](crate::InputError::LabelOutOfRange) for a label outside `[0, V)` that is not the ignore index;
///   [`InputError::NonFinite`](crate::InputError::NonFinite) if a scored position's log-prob is not finite (NaN or +inf anywhere in that row of
///   logits, or −inf at the target). Rows whose label is ignored may hold anything: they do not affect the
///   result.
pub fn token_logprobs(logits: &Tensor, labels: &Tensor, options: &LogProbOptions) -> Result<TokenLogProbs> {
    let kind = validate::float_tensor("logits", logits)?;
    let size = validate::rank("logits", logits, 3, "[B, T, V]")?;
    let (b, t, v) = (size[0], size[1], size[2]);
    validate::int64_labels("labels", labels)?;
    let label_size = labels.size();
    if label_size != [b, t] {
        return Err(Error::Input(InputError::Shape {
            arg: "labels",
            expected: format!("[B, T] = [{b}, {t}] matching logits {size:?}"),
            got: label_size,
        }));
    }
    validate::same_device("labels", labels, "logits", logits)?;
    options.validate()?;
    let steps = if options.shift { t - 1 } else { t };
    if b == 0 || steps <= 0 || v == 0 {
        return Err(Error::Input(InputError::EmptyBatch {
            arg: "logits",
            shape: size,
        }));
    }

    let full_logits = logits;
    let (logits, labels) = if options.shift {
        (logits.f_narrow(1, 0, steps)?, labels.f_narrow(1, 1, steps)?)
    } else {
        (logits.shallow_clone(), labels.shallow_clone())
    };
    let mask = labels.f_ne(options.ignore_index)?;
    if options.validate_inputs {
        check_label_range(
            &labels,
            &mask,
            v,
            options.ignore_index,
            t,
            i64::from(options.shift),
        )?;
    }
    // Ignored positions gather a harmless in-range id; their result is overwritten below.
    let safe_labels = labels.f_masked_fill(&mask.f_logical_not()?, 0)?;

    let out_kind = validate::compute_kind(kind);
    let rows_per_chunk = (options.chunk_bytes / (v as usize * out_kind.elt_size_in_bytes())).max(1) as i64;
    // Without autograd, every chunk reuses one scratch buffer (no per-chunk allocation of chunk size), and a
    // second one for the token statistics.
    let stats_on = options.token_stats;
    let scratch = if logits.requires_grad() {
        None
    } else {
        let buffer = || Tensor::f_empty([rows_per_chunk.min(b * t), v], (out_kind, logits.device()));
        Some((buffer()?, if stats_on { Some(buffer()?) } else { None }))
    };
    let layout = Layout {
        full_logits,
        logits: &logits,
        safe_labels: &safe_labels,
        rows_per_chunk,
        shift: options.shift,
        dims: [b, t, v, steps],
    };
    // Each chunk gives `[..]` log-probs, or `[.., 4]` = (log-prob, mean logit, entropy, correct) with stats.
    let packed = layout.map(|z, y| match &scratch {
        Some((buffer, second)) => {
            tch::no_grad(|| chunk_logprobs_into(z, y, buffer, second.as_ref(), out_kind))
        }
        None => chunk_logprobs(z, y, out_kind, stats_on),
    })?;
    let logps = if stats_on {
        packed.f_select(-1, 0)?
    } else {
        packed.shallow_clone()
    };
    let not_mask = mask.f_logical_not()?;
    let logps = logps.f_masked_fill(&not_mask, 0.0)?;
    if options.validate_inputs {
        let bad = logps
            .f_isfinite()?
            .f_logical_not()?
            .f_logical_and(&mask)?
            .f_sum(Kind::Int64)?
            .f_int64_value(&[])?;
        if bad > 0 {
            return Err(Error::Input(InputError::NonFinite {
                arg: "logits",
                count: bad,
                location: "in rows with a scored label (NaN/+inf in the row or −inf at the target)",
            }));
        }
    }
    let stats = if stats_on {
        let all = packed.f_detach()?;
        let field = |i: i64| -> Result<Tensor> {
            Ok(all
                .f_select(-1, i + 1)?
                .f_masked_fill(&not_mask, 0.0)?
                .f_contiguous()?)
        };
        Some(TokenStats {
            mean_logit: field(0)?,
            entropy: field(1)?,
            correct: field(2)?,
        })
    } else {
        None
    };
    Ok(TokenLogProbs { logps, mask, stats })
}

/// Per-sequence summed log-probabilities and valid-token counts: [`token_logprobs`] followed by
/// [`TokenLogProbs::sequence`]. Shapes: logits `[B, T, V]`, labels `[B, T]` → `sum [B]`, `count [B]`.
///
/// # Errors
/// As [`token_logprobs`].
pub fn sequence_logprobs(
    logits: &Tensor,
    labels: &Tensor,
    options: &LogProbOptions,
) -> Result<SequenceLogProbs> {
    token_logprobs(logits, labels, options)?.sequence()
}

/// How [`token_logprobs`] walks the logits in chunks (views, no copy of the logits).
struct Layout<'a> {
    /// The caller's logits `[B, T, V]` (before the causal shift).
    full_logits: &'a Tensor,
    /// The (possibly shifted) logits `[B, T', V]`.
    logits: &'a Tensor,
    /// `[B, T']` in-range targets.
    safe_labels: &'a Tensor,
    rows_per_chunk: i64,
    shift: bool,
    /// `B, T, V, T'`.
    dims: [i64; 4],
}

impl Layout<'_> {
    /// Applies `f` to chunks `(z [.., V], y [..])` and returns the per-position results `[B, T', ..]`
    /// (`f` may add one trailing dimension).
    fn map(&self, f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let [b, t, v, steps] = self.dims;
        // Splits `z` and its targets `y` along `dim` into chunks of `size` and concatenates the chunk results.
        // Chunks come from `split`, not `narrow`: all pieces of a split share one autograd node, whose backward
        // assembles the logits' gradient once (a `narrow` per chunk would allocate and add a full-size zero
        // gradient per chunk in backward).
        let chunked = |z: &Tensor, y: &Tensor, size: i64, dim: i64| -> Result<Tensor> {
            let pieces = z
                .f_split(size, dim)?
                .iter()
                .zip(&y.f_split(size, dim)?)
                .map(|(z, y)| f(z, y))
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::f_cat(&pieces, dim)?)
        };
        if self.full_logits.is_contiguous() {
            // Rows of the unshifted logits as a flat [B·T, V] view, one level of chunks. With the shift, the
            // last position of each sequence gets a dummy target and is dropped from the (small) result.
            let targets = if self.shift {
                let pad = self.safe_labels.f_narrow(1, 0, 1)?.f_zeros_like()?;
                Tensor::f_cat(&[self.safe_labels, &pad], 1)?
            } else {
                self.safe_labels.shallow_clone()
            };
            let flat = chunked(
                &self.full_logits.f_view([b * t, v])?,
                &targets.f_view([b * t])?,
                self.rows_per_chunk,
                0,
            )?;
            let mut shape = vec![b, t];
            shape.extend_from_slice(&flat.size()[1..]);
            Ok(flat.f_view(shape.as_slice())?.f_narrow(1, 0, steps)?)
        } else if self.rows_per_chunk >= steps {
            // Strided logits, whole sequences per chunk: split the batch dimension.
            chunked(
                self.logits,
                self.safe_labels,
                (self.rows_per_chunk / steps).max(1),
                0,
            )
        } else {
            // Strided logits, long sequences: one sequence at a time, split over time.
            let mut rows = Vec::with_capacity(b as usize);
            for (z_row, y_row) in self
                .logits
                .f_split(1, 0)?
                .iter()
                .zip(&self.safe_labels.f_split(1, 0)?)
            {
                rows.push(chunked(z_row, y_row, self.rows_per_chunk, 1)?);
            }
            Ok(Tensor::f_cat(&rows, 0)?)
        }
    }
}

/// Statistics of one chunk (no grad) from its logits `z [.., V]` in `out_kind`, their logsumexp `lse [..]`
/// and in-range targets `y [..]`: `[.., 3]` = (mean logit, entropy, arg-max == target). Entropy is
/// `lse − Σ_v p_v·z_v`, the inner sum one batched dot product per row; one chunk-sized temporary (`p`).
pub(crate) fn stats_given_lse(z: &Tensor, lse: &Tensor, y: &Tensor, out_kind: Kind) -> Result<Tensor> {
    tch::no_grad(|| {
        let z = z.f_detach()?;
        let size = z.size();
        let v = size[size.len() - 1];
        let rows: i64 = size[..size.len() - 1].iter().product();
        let lse_col = lse.f_unsqueeze(-1)?;
        let p = z.f_sub(&lse_col)?.f_exp_()?;
        let expected_z = p
            .f_reshape([rows, 1, v])?
            .f_bmm(&z.f_reshape([rows, v, 1])?)?
            .f_reshape(lse.size().as_slice())?;
        let entropy = lse.f_sub(&expected_z)?;
        let mean = z.f_mean_dim(-1, false, out_kind)?;
        let correct = z.f_argmax(-1, false)?.f_eq_tensor(y)?.f_to_kind(out_kind)?;
        Ok(Tensor::f_stack(&[mean, entropy, correct], -1)?)
    })
}

/// Log-probs of one chunk without autograd, computed in `buffer` (`[rows, V]`, `out_kind`, at least as many
/// rows as the chunk): `z[y] − (m + log Σ exp(z − m))` with `m` the row maximum.
///
/// With a `second` buffer the token statistics come from the same chunk: with `u = z − m` and `w = e^u`,
/// mean logit `= mean(u) + m`, arg-max of `u`, entropy `= log Σw − Σ w·u / Σw` (`u` kept in `second`, the
/// inner sum one batched dot product per row). The result is then `[.., 4]` (log-prob first).
fn chunk_logprobs_into(
    z: &Tensor,
    y: &Tensor,
    buffer: &Tensor,
    second: Option<&Tensor>,
    out_kind: Kind,
) -> Result<Tensor> {
    let shape = z.size();
    let rows: i64 = shape[..shape.len() - 1].iter().product();
    let v = shape[shape.len() - 1];
    let view = |t: &Tensor| -> Result<Tensor> { Ok(t.f_narrow(0, 0, rows)?.f_view(shape.as_slice())?) };
    let mut work = view(buffer)?;
    let idx = y.f_unsqueeze(-1)?;
    // `u = z − m` lands in `work` (or, with statistics and same-dtype logits, in the second buffer, so that
    // the exponential can be written to `work` without a copy of `u`).
    let same_kind = z.f_kind()? == out_kind;
    let mut u_buf = match (second, same_kind) {
        (Some(second), true) => view(second)?,
        _ => work.shallow_clone(),
    };
    // With statistics, `max_dim` also gives the arg-max (one pass for both).
    let row_max = |t: &Tensor| -> Result<(Tensor, Option<Tensor>)> {
        if second.is_some() {
            let (values, indices) = t.f_max_dim(-1, true)?;
            Ok((values, Some(indices.f_squeeze_dim(-1)?)))
        } else {
            Ok((t.f_amax(-1, true)?, None))
        }
    };
    let (max, argmax) = if same_kind {
        let (max, argmax) = row_max(z)?;
        let _ = z.f_sub_out(&u_buf, &max)?;
        (max, argmax)
    } else {
        // Upcast into the buffer in one kernel (a mixed-dtype op would allocate a converted temporary).
        u_buf.f_copy_(z)?;
        let (max, argmax) = row_max(&u_buf)?;
        let _ = u_buf.f_sub_(&max)?;
        (max, argmax)
    };
    let target = z
        .f_gather(-1, &idx, false)?
        .f_squeeze_dim(-1)?
        .f_to_kind(out_kind)?;
    let max = max.f_squeeze_dim(-1)?;
    // `w = e^u`: in place without statistics; otherwise into the buffer `u` is not in.
    let (w, u) = match (second, same_kind) {
        (None, _) => (work.f_exp_()?, None),
        (Some(_), true) => (u_buf.f_exp_out(&work)?, Some(u_buf)),
        (Some(second), false) => {
            let w = view(second)?;
            (u_buf.f_exp_out(&w)?, Some(u_buf))
        }
    };
    let sum_w = w.f_sum_dim_intlist(-1, false, out_kind)?;
    let log_sum_w = sum_w.f_log()?;
    let lse = log_sum_w.f_add(&max)?;
    let logp = target.f_sub(&lse)?;
    match (u, argmax) {
        (Some(u), Some(argmax)) => {
            let mean = u.f_mean_dim(-1, false, out_kind)?.f_add(&max)?;
            let correct = argmax.f_eq_tensor(y)?.f_to_kind(out_kind)?;
            let wu = w
                .f_reshape([rows, 1, v])?
                .f_bmm(&u.f_reshape([rows, v, 1])?)?
                .f_reshape(sum_w.size().as_slice())?;
            let entropy = log_sum_w.f_sub(&wu.f_div(&sum_w)?)?;
            Ok(Tensor::f_stack(&[logp, mean, entropy, correct], -1)?)
        }
        _ => Ok(logp),
    }
}

/// Log-probs of one chunk with autograd: `z` `[n, m, V]` (a view of the logits), `y` `[n, m]` in-range ids.
/// With `stats`, `[.., 4]` = (log-prob, then the detached [`stats_given_lse`]).
fn chunk_logprobs(z: &Tensor, y: &Tensor, out_kind: Kind, stats: bool) -> Result<Tensor> {
    let idx = y.f_unsqueeze(-1)?;
    let kind = z.f_kind()?;
    let with_stats = |logp: Tensor, zf: &Tensor, lse: &Tensor| -> Result<Tensor> {
        if !stats {
            return Ok(logp);
        }
        let s = stats_given_lse(zf, &lse.f_detach()?, y, out_kind)?;
        Ok(Tensor::f_cat(&[&logp.f_unsqueeze(-1)?, &s], -1)?)
    };
    if kind == out_kind {
        // f32 / f64: logsumexp and gather on the view; autograd saves views only.
        let lse = z.f_logsumexp(-1, false)?;
        let target = z.f_gather(-1, &idx, false)?.f_squeeze_dim(-1)?;
        return with_stats(target.f_sub(&lse)?, z, &lse);
    }
    // bf16 / f16: the value is computed from an f32 copy of the chunk.
    let (lse, softmax, chunk_stats) =
        tch::no_grad(|| -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
            let zf = z.f_to_kind(out_kind)?;
            let lse = zf.f_logsumexp(-1, false)?;
            let softmax = if z.requires_grad() {
                Some(zf.f_sub(&lse.f_unsqueeze(-1)?)?.f_exp()?.f_to_kind(kind)?)
            } else {
                None
            };
            let chunk_stats = if stats {
                Some(stats_given_lse(&zf, &lse, y, out_kind)?)
            } else {
                None
            };
            Ok((lse, softmax, chunk_stats))
        })?;
    let target = z
        .f_gather(-1, &idx, false)?
        .f_squeeze_dim(-1)?
        .f_to_kind(out_kind)?;
    let logp = match softmax {
        None => target.f_sub(&lse)?,
        Some(p) => {
            // Surrogate with value `lse` and gradient `softmax(z)` w.r.t. z: autograd keeps only `p`, in the
            // logits' dtype, instead of the f32 chunk that differentiating logsumexp(z.to(f32)) would keep.
            let s = z.f_mul(&p)?.f_sum_dim_intlist(-1, false, out_kind)?;
            let lse = lse.f_add(&s.f_sub(&s.f_detach()?)?)?;
            target.f_sub(&lse)?
        }
    };
    match chunk_stats {
        None => Ok(logp),
        Some(s) => Ok(Tensor::f_cat(&[&logp.f_unsqueeze(-1)?, &s], -1)?),
    }
}

/// `labels` may be the shifted view; `position` is reported in the caller's `[B, T]` label tensor.
pub(crate) fn check_label_range(
    labels: &Tensor,
    mask: &Tensor,
    vocab: i64,
    ignore_index: i64,
    full_len: i64,
    col_offset: i64,
) -> Result<()> {
    let bad = labels
        .f_lt(0)?
        .f_logical_or(&labels.f_ge(vocab)?)?
        .f_logical_and(mask)?;
    if bad.f_any()?.f_int64_value(&[])? != 0 {
        let flat = bad.f_reshape([-1])?;
        let position = flat
            .f_to_kind(Kind::Int64)?
            .f_argmax(0, false)?
            .f_int64_value(&[])?;
        let size = labels.size();
        let (row, col) = (position / size[1], position % size[1]);
        let value = labels.f_int64_value(&[row, col])?;
        return Err(Error::Input(InputError::LabelOutOfRange {
            arg: "labels",
            value,
            position: row * full_len + col + col_offset,
            vocab,
            ignore_index,
        }));
    }
    Ok(())
}
