//! The one-pass schedule of the built-in fused losses: log-probs and gradients from one matmul of the
//! logits per chunk instead of two.
//!
//! The two-pass schedule ([`super::engine::forward`] then [`super::engine::backward`]) computes every logit
//! twice because the coefficient `c_r = dL/d(sum of row r)` is known only once every row's sum is. The
//! built-in losses ([`crate::RpoConfig`], [`crate::DpoConfig`], [`crate::SftConfig`]) are sums of per-pair (SFT:
//! per-row) terms under normalizers fixed by the token counts and the optional [`crate::GlobalBatch`], so
//! `c_r` depends only on the sums of `r`'s own group (the pair `{i, i + B}`, or the row). A chunk made of
//! whole groups therefore knows its coefficients as soon as its own log-probs are summed: the loss is
//! evaluated on the sums so far (rows not yet scored hold 0, which does not reach the chunk's
//! coefficients), and the gradient is applied to the logits still in memory.
//!
//! A chunk holds at least one whole group, so the schedule applies only when every group's scored tokens fit
//! [`LogProbOptions::fused_chunk_bytes`]: one `[n, V]` buffer in the compute dtype, or in bf16 for bf16 inputs
//! on the CPU (the row kernels of [`super::bf16`], feature `autograd`), and two in the compute dtype with a
//! soft-cap, token statistics, a bias gradient or other low-precision inputs. Otherwise the caller uses the
//! two-pass schedule.

use super::engine::{
    chunk_grad, chunk_logits, probs_grad, Accumulators, Grads, Needs, Prepared, RowSums, Rows,
};
use super::head::LinearHead;
use crate::error::Result;
use crate::logprobs::LogProbOptions;
use crate::logprobs::{stats_given_lse, TokenStats};
use tch::{Device, Kind, Tensor};

/// Which rows' loss gradients depend on each other's log-probs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grouping {
    /// A preference batch: row `i` and row `i + B` (chosen and rejected of pair `i`).
    Pairs,
    /// An SFT batch: each row alone.
    Rows,
}

/// How a chunk's logits are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// In the compute dtype, in one shared `[n, V]` buffer that becomes the softmax, then the gradient.
    Simple,
    /// bf16 logits on the CPU in one shared `[n, V]` buffer, reduced in f32 by the row kernels
    /// ([`super::bf16`]) and overwritten with their bf16 gradient.
    #[cfg(feature = "autograd")]
    Bf16Rows,
    /// Any other case (soft-cap, token statistics, other low-precision inputs, a bias gradient): two
    /// `[n, V]` buffers in the compute dtype.
    General,
}

impl Layout {
    fn of(prep: &Prepared, head: &LinearHead, options: &LogProbOptions, needs: Needs) -> Self {
        #[cfg(feature = "autograd")]
        if super::engine::bf16_rows(prep, head, options, needs.bias) {
            return Layout::Bf16Rows;
        }
        #[cfg(not(feature = "autograd"))]
        let _ = needs;
        let plain = head.final_logit_softcap.is_none() && !options.token_stats;
        match plain && prep.kind == prep.compute {
            true => Layout::Simple,
            false => Layout::General,
        }
    }

    /// Bytes per scored token of the chunk's buffers.
    fn bytes_per_token(self, prep: &Prepared) -> usize {
        let v = prep.vocab as usize;
        match self {
            Layout::Simple => v * prep.compute.elt_size_in_bytes(),
            #[cfg(feature = "autograd")]
            Layout::Bf16Rows => v * prep.kind.elt_size_in_bytes(),
            Layout::General => 2 * v * prep.compute.elt_size_in_bytes(),
        }
    }
}

/// The token positions (into `prep`'s `[N]` scored tokens) of each chunk: whole groups, packed in order
/// while they fit `max_tokens`. `None` when a group alone does not fit.
fn plan(counts: &[i64], grouping: Grouping, max_tokens: i64) -> Option<Vec<Vec<i64>>> {
    let mut offsets = Vec::with_capacity(counts.len());
    let mut total = 0;
    for &c in counts {
        offsets.push(total);
        total += c;
    }
    let groups: Vec<Vec<usize>> = match grouping {
        Grouping::Pairs => {
            let b = counts.len() / 2;
            (0..b).map(|i| vec![i, i + b]).collect()
        }
        Grouping::Rows => (0..counts.len()).map(|i| vec![i]).collect(),
    };
    let mut chunks: Vec<Vec<i64>> = Vec::new();
    let mut current: Vec<i64> = Vec::new();
    for group in groups {
        let size: i64 = group.iter().map(|&r| counts[r]).sum();
        if size > max_tokens {
            return None;
        }
        if size == 0 {
            continue;
        }
        if current.len() as i64 + size > max_tokens {
            chunks.push(std::mem::take(&mut current));
        }
        for r in group {
            current.extend(offsets[r]..offsets[r] + counts[r]);
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    Some(chunks)
}

/// What the one pass returns: the per-row sums (compute dtype), statistics, and the gradients (`None` when
/// the loss does not depend on the log-probs).
pub(crate) struct OnePass {
    pub sums: Tensor,
    pub stats: Option<TokenStats>,
    pub grads: Option<Grads>,
}

/// Runs the one-pass schedule, or returns `Ok(None)` (having computed nothing) when a group does not fit the
/// budget. The weight gradient goes into `weight_into` when given ([`Accumulators::new`]). `coef_of(sums)`
/// evaluates the loss on `[R]` sums (compute dtype) and returns `dL/dsums [R]`, or `None` when the loss does
/// not depend on them; it must be separable over `grouping`'s groups.
pub(crate) fn run(
    prep: &Prepared,
    head: &LinearHead,
    options: &LogProbOptions,
    grouping: Grouping,
    needs: Needs,
    weight_into: Option<Tensor>,
    mut coef_of: impl FnMut(&Tensor) -> Result<Option<Tensor>>,
) -> Result<Option<OnePass>> {
    let layout = Layout::of(prep, head, options, needs);
    let per_token = layout.bytes_per_token(prep) as i64;
    let max_tokens = (options.fused_chunk_bytes as i64 / per_token.max(1)).max(1);
    let counts = Vec::<i64>::try_from(&prep.counts.f_to_device(Device::Cpu)?)?;
    let Some(chunks) = plan(&counts, grouping, max_tokens) else {
        return Ok(None);
    };
    tch::no_grad(|| {
        let device = prep.h_valid.device();
        let compute = prep.compute;
        let mut sums = RowSums::new(prep, options.token_stats)?;
        let mut acc = Accumulators::new(prep, options, needs, weight_into)?;
        let mut depends = true;
        let h_valid = prep.h_valid.f_detach()?;
        let largest = chunks.iter().map(Vec::len).max().unwrap_or(0) as i64;
        // One logits buffer for every chunk of the one-buffer layouts (no allocation, no page faults per
        // chunk).
        let buffer = match layout {
            Layout::General => None,
            _ if largest == 0 => None,
            Layout::Simple => Some(Tensor::f_empty([largest, prep.vocab], (compute, device))?),
            #[cfg(feature = "autograd")]
            Layout::Bf16Rows => Some(Tensor::f_empty([largest, prep.vocab], (prep.kind, device))?),
        };
        for positions in &chunks {
            let n = positions.len() as i64;
            let index = Tensor::from_slice(positions).f_to_device(device)?;
            let hc = h_valid.f_index_select(0, &index)?;
            let targets = prep.targets.f_index_select(0, &index)?.f_unsqueeze(1)?;
            let ids = prep.seq_ids.f_index_select(0, &index)?;
            let chunk = match (&buffer, layout) {
                #[cfg(feature = "autograd")]
                (Some(buffer), Layout::Bf16Rows) => {
                    Chunk::bf16_rows(buffer.f_narrow(0, 0, n)?, &hc, head, &targets)?
                }
                (Some(buffer), _) => Chunk::simple(buffer.f_narrow(0, 0, n)?, &hc, head, &targets)?,
                (None, _) => Chunk::general(&hc, head, &targets, compute, options.token_stats)?,
            };
            sums.add(&ids, &chunk.logp, chunk.stats.as_ref())?;
            if !depends {
                continue;
            }
            let Some(coef_rows) = coef_of(&sums.current(compute)?)? else {
                depends = false;
                continue;
            };
            let coef = coef_rows
                .f_to_kind(compute)?
                .f_index_select(0, &ids)?
                .f_unsqueeze(1)?;
            match chunk.grad(&targets, &coef, head)? {
                Grad::Compute(g) => acc.add(&g, &hc, head, Rows::Index(&index))?,
                #[cfg(feature = "autograd")]
                Grad::Low(g) => acc.add_low(&g, &hc, head, Rows::Index(&index))?,
            }
        }
        let (sums, stats) = sums.finish(compute)?;
        Ok(Some(OnePass {
            sums,
            stats,
            grads: depends.then(|| acc.into_grads()),
        }))
    })
}

/// One chunk after its log-probs: what its gradient is computed from.
struct Chunk {
    /// `[n]` log-probs of the targets.
    logp: Tensor,
    /// `[n, 3]` token statistics when asked for.
    stats: Option<Tensor>,
    state: State,
}

enum State {
    /// The softmax `[n, V]`, in the shared buffer.
    Probs(Tensor),
    /// The logits `[n, V]` and their logsumexp `[n, 1]`.
    Logits(Tensor, Tensor),
    /// The bf16 logits `[n, V]` in the shared buffer, their f32 logsumexp `[n]` and the `[n]` targets.
    #[cfg(feature = "autograd")]
    Bf16Rows(Tensor, Tensor, Tensor),
}

/// A chunk's `dL/dz`.
enum Grad {
    /// In the compute dtype.
    Compute(Tensor),
    /// In the inputs' (low-precision) dtype.
    #[cfg(feature = "autograd")]
    Low(Tensor),
}

impl Chunk {
    /// Same-dtype logits without soft-cap or statistics, in `z` (a view of the shared buffer): the softmax
    /// is formed in place, `e = exp(z − m)`, `p = e / Σe`, `lse = m + log Σe`.
    fn simple(mut z: Tensor, hc: &Tensor, head: &LinearHead, targets: &Tensor) -> Result<Self> {
        let _ = head.linear(hc, Some(&z))?;
        if head.logit_scale != 1.0 {
            let _ = z.f_mul_scalar_(head.logit_scale)?;
        }
        let target = z.f_gather(1, targets, false)?;
        let max = z.f_amax(&[-1i64][..], true)?;
        let _ = z.f_sub_(&max)?.f_exp_()?;
        let total = z.f_sum_dim_intlist(-1, true, z.kind())?;
        let _ = z.f_div_(&total)?;
        let lse = total.f_log()?.f_add_(&max)?;
        Ok(Self {
            logp: target.f_sub(&lse)?.f_squeeze_dim(1)?,
            stats: None,
            state: State::Probs(z),
        })
    }

    /// bf16 logits on the CPU in `z` (a view of the shared bf16 buffer), reduced by the row kernels.
    #[cfg(feature = "autograd")]
    fn bf16_rows(z: Tensor, hc: &Tensor, head: &LinearHead, targets: &Tensor) -> Result<Self> {
        let _ = head.linear(hc, Some(&z))?;
        let targets = targets.f_squeeze_dim(1)?.f_contiguous()?;
        let (lse, logp) = super::bf16::stats(&z, head.logit_scale, &targets)?;
        Ok(Self {
            logp,
            stats: None,
            state: State::Bf16Rows(z, lse, targets),
        })
    }

    /// Any other case: logits in their own buffer, logsumexp, optional statistics.
    fn general(hc: &Tensor, head: &LinearHead, targets: &Tensor, compute: Kind, stats: bool) -> Result<Self> {
        let z = chunk_logits(hc, head, compute)?;
        let lse = z.f_logsumexp(-1, true)?;
        let logp = z.f_gather(1, targets, false)?.f_sub(&lse)?.f_squeeze_dim(1)?;
        let stats = match stats {
            true => Some(stats_given_lse(
                &z,
                &lse.f_squeeze_dim(1)?,
                &targets.f_squeeze_dim(1)?,
                compute,
            )?),
            false => None,
        };
        Ok(Self {
            logp,
            stats,
            state: State::Logits(z, lse),
        })
    }

    /// `dL/dz` of the chunk given the coefficients `[n, 1]` (compute dtype).
    fn grad(self, targets: &Tensor, coef: &Tensor, head: &LinearHead) -> Result<Grad> {
        match self.state {
            State::Probs(p) => Ok(Grad::Compute(probs_grad(p, targets, coef, coef, head)?)),
            State::Logits(z, lse) => Ok(Grad::Compute(chunk_grad(z, &lse, targets, coef, head)?)),
            #[cfg(feature = "autograd")]
            State::Bf16Rows(z, lse, targets) => {
                let coef = coef.f_squeeze_dim(1)?.f_contiguous()?;
                let g = super::bf16::grad_in_place(z, head.logit_scale, &targets, &lse, &coef)?;
                Ok(Grad::Low(g))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{plan, Grouping};

    #[test]
    fn plan_packs_whole_pairs_and_refuses_a_pair_over_budget() {
        // Rows 0, 1 chosen; 2, 3 rejected; tokens laid out row by row.
        let counts = [2, 3, 1, 4];
        // Pair 0 = rows 0 + 2 (positions 0..2, 5..6), pair 1 = rows 1 + 3 (2..5, 6..10).
        assert_eq!(
            plan(&counts, Grouping::Pairs, 7).unwrap(),
            vec![vec![0, 1, 5], vec![2, 3, 4, 6, 7, 8, 9]]
        );
        assert_eq!(
            plan(&counts, Grouping::Pairs, 10).unwrap(),
            vec![vec![0, 1, 5, 2, 3, 4, 6, 7, 8, 9]]
        );
        assert!(plan(&counts, Grouping::Pairs, 6).is_none());
        assert_eq!(
            plan(&counts, Grouping::Rows, 4).unwrap(),
            vec![vec![0, 1], vec![2, 3, 4, 5], vec![6, 7, 8, 9]]
        );
        assert_eq!(plan(&[0, 0], Grouping::Pairs, 1).unwrap(), Vec::<Vec<i64>>::new());
    }
}
