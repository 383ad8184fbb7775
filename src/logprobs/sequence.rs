//! The result types: per-token log-probs, per-sequence sums and counts, token statistics.

use crate::error::{Error, InputError, Result};
use crate::validate;
use tch::{Kind, Tensor};

/// Per-token log-probabilities and the mask of scored positions.
#[derive(Debug)]
pub struct TokenLogProbs {
    /// `[B, T']` log-probabilities (f32; f64 for f64 logits), `0` where the label is ignored.
    /// `T' = T − 1` with [`LogProbOptions::shift`](crate::LogProbOptions::shift), else `T`. Differentiable w.r.t. the logits.
    pub logps: Tensor,
    /// `[B, T']` bool, `true` where the label is scored.
    pub mask: Tensor,
    /// `[B, T']` per-token statistics (detached, `0` at ignored positions) when
    /// [`LogProbOptions::token_stats`](crate::LogProbOptions::token_stats) is on.
    pub stats: Option<TokenStats>,
}

/// Detached per-token (`[B, T']`) or per-sequence (`[B]`, summed over scored tokens) statistics of the
/// predicted distribution, in the log-probs' dtype. Ignored positions contribute `0`.
#[derive(Debug)]
pub struct TokenStats {
    /// Mean logit over the vocabulary, `(1/V)·Σ_v z_v` (TRL's `logits/chosen`, `logits/rejected`).
    pub mean_logit: Tensor,
    /// Entropy of the softmax, `−Σ_v p_v·log p_v` (TRL's `entropy`).
    pub entropy: Tensor,
    /// `1` where the arg-max of the logits is the label, else `0` (TRL's `mean_token_accuracy`).
    pub correct: Tensor,
}

impl TokenStats {
    fn map(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<TokenStats> {
        Ok(TokenStats {
            mean_logit: f(&self.mean_logit)?,
            entropy: f(&self.entropy)?,
            correct: f(&self.correct)?,
        })
    }
}

impl TokenLogProbs {
    /// Per-sequence sum and valid-token count (and the statistics summed per sequence).
    pub fn sequence(&self) -> Result<SequenceLogProbs> {
        let kind = self.logps.f_kind()?;
        let stats = match &self.stats {
            Some(s) => Some(s.map(|t| Ok(t.f_sum_dim_intlist(-1, false, kind)?))?),
            None => None,
        };
        Ok(SequenceLogProbs {
            sum: self.logps.f_sum_dim_intlist(-1, false, kind)?,
            count: self.mask.f_sum_dim_intlist(-1, false, Kind::Int64)?,
            stats,
        })
    }
}

/// Per-sequence log-probabilities: `sum[b] = Σ_t log p(y_{b,t})` over scored positions and their count.
///
/// The preference losses take one of these for a concatenated batch of `2B` rows: the `B` chosen sequences
/// followed by the `B` rejected ones (the layout of one forward pass over both).
#[derive(Debug)]
pub struct SequenceLogProbs {
    /// `[R]` summed log-probability of each sequence's scored tokens (f32 or f64), differentiable.
    pub sum: Tensor,
    /// `[R]` i64 number of scored tokens per sequence.
    pub count: Tensor,
    /// `[R]` per-sequence sums of the [`TokenStats`] when they were computed
    /// ([`LogProbOptions::token_stats`](crate::LogProbOptions::token_stats)), else `None`.
    pub stats: Option<TokenStats>,
}

/// Splits a `[2B]` tensor (chosen rows first) into its two `[B]` halves; `arg` names it in errors.
pub(crate) fn split_rows(arg: &'static str, t: &Tensor) -> Result<(Tensor, Tensor)> {
    let size = t.size();
    let n = size.first().copied().unwrap_or(0);
    if n == 0 {
        return Err(Error::Input(InputError::EmptyBatch { arg, shape: size }));
    }
    if n % 2 != 0 {
        return Err(Error::Input(InputError::Shape {
            arg,
            expected: "an even number of rows [2B]: B chosen rows followed by B rejected rows".into(),
            got: size,
        }));
    }
    let b = n / 2;
    Ok((t.f_narrow(0, 0, b)?, t.f_narrow(0, b, b)?))
}

impl SequenceLogProbs {
    /// Wraps precomputed per-sequence sums `[R]` (float) and token counts `[R]` (any integer or float dtype).
    ///
    /// # Errors
    /// [`InputError::Shape`](crate::InputError::Shape) / [`InputError::BatchMismatch`](crate::InputError::BatchMismatch) / [`InputError::EmptyBatch`](crate::InputError::EmptyBatch) for shapes, [`InputError::DType`](crate::InputError::DType) if
    /// `sum` is not floating point, [`InputError::DeviceMismatch`](crate::InputError::DeviceMismatch) if they live on different devices.
    pub fn new(sum: Tensor, count: Tensor) -> Result<Self> {
        validate::float_tensor("sum", &sum)?;
        let b = validate::per_pair("sum", &sum, "sum", None)?;
        validate::per_pair("count", &count, "sum", Some(b))?;
        validate::same_device("count", &count, "sum", &sum)?;
        let count = count.f_to_kind(Kind::Int64)?;
        Ok(Self {
            sum,
            count,
            stats: None,
        })
    }

    /// Number of sequences `R`.
    pub fn len(&self) -> i64 {
        self.sum.size().first().copied().unwrap_or(0)
    }

    /// Whether there are no sequences.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[R]` mean log-probability per scored token, `sum / count`.
    ///
    /// # Errors
    /// With `validate_inputs`, [`InputError::NoValidTokens`](crate::InputError::NoValidTokens) if a sequence has no scored token (its mean is
    /// undefined).
    pub fn mean(&self, validate_inputs: bool) -> Result<Tensor> {
        if validate_inputs {
            validate::nonzero_counts("labels", &self.count, "the per-sequence mean")?;
        }
        let count = self.count.f_to_kind(self.sum.f_kind()?)?;
        Ok(self.sum.f_div(&count)?)
    }

    /// Splits a concatenated batch `[2B]` (chosen rows first, then rejected, the layout of one concatenated
    /// forward pass) into `(chosen [B], rejected [B])`.
    ///
    /// # Errors
    /// [`InputError::Shape`](crate::InputError::Shape) if the number of rows is odd, [`InputError::EmptyBatch`](crate::InputError::EmptyBatch) if it is zero.
    pub fn split_pairs(&self) -> Result<(SequenceLogProbs, SequenceLogProbs)> {
        let (sum_c, sum_r) = split_rows("policy.sum", &self.sum)?;
        let (count_c, count_r) = split_rows("policy.count", &self.count)?;
        let (stats_c, stats_r) = match &self.stats {
            Some(s) => {
                let (m_c, m_r) = split_rows("policy.stats", &s.mean_logit)?;
                let (e_c, e_r) = split_rows("policy.stats", &s.entropy)?;
                let (a_c, a_r) = split_rows("policy.stats", &s.correct)?;
                (
                    Some(TokenStats {
                        mean_logit: m_c,
                        entropy: e_c,
                        correct: a_c,
                    }),
                    Some(TokenStats {
                        mean_logit: m_r,
                        entropy: e_r,
                        correct: a_r,
                    }),
                )
            }
            None => (None, None),
        };
        Ok((
            SequenceLogProbs {
                sum: sum_c,
                count: count_c,
                stats: stats_c,
            },
            SequenceLogProbs {
                sum: sum_r,
                count: count_r,
                stats: stats_r,
            },
        ))
    }

    /// `self` with shallow copies of `stats`.
    pub(crate) fn with_stats_of(mut self, stats: &Option<TokenStats>) -> Result<Self> {
        self.stats = match stats {
            Some(s) => Some(s.map(|t| Ok(t.shallow_clone()))?),
            None => None,
        };
        Ok(self)
    }

    /// Detached copy (no autograd history), e.g. to store reference log-probs.
    pub fn detach(&self) -> Result<SequenceLogProbs> {
        Ok(SequenceLogProbs {
            sum: self.sum.f_detach()?,
            count: self.count.f_detach()?,
            stats: match &self.stats {
                Some(s) => Some(s.map(|t| Ok(t.f_detach()?))?),
                None => None,
            },
        })
    }
}
