//! The selection with libtorch operations, on any device (GPU tensors, other dtypes, strided
//! views): the radix select of [`super::radix`] with each pass's histogram summed on the
//! device. One idea: the same select as the CPU path, in as few device syncs as it allows.

use super::keys::{BUCKETS, DIGIT_BITS};
use super::view::Part;
use crate::error::Result;
use tch::{Kind, Tensor};

/// What [`zero_smallest_by_ops`] did: full passes over the parts' entries, and device syncs
/// (results read on the host, each of which waits for the device to finish its queue).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OpsCounts {
    pub passes: u32,
    pub syncs: u32,
}

/// The same selection with libtorch operations, on any device: the radix select of the CPU
/// path, with each pass's histogram summed on the device over every part (a `scatter_add` of
/// the keys' next 16-bit digit) and read once. The keys are the magnitudes' bit patterns (in
/// f32, or f64 when a score is f64), which order like the magnitudes, NaN above +inf as in
/// `topk`. Then one read of each part's count of entries tied at the threshold, and a last
/// pass that zeroes, with the same tie rule. In all: 2 digit passes for f32 keys (4 for f64),
/// plus 2, and one sync per digit pass plus one, whatever the number of tensors. Memory: one
/// tensor's temporaries at a time (its keys, and an int64 index per entry).
pub(crate) fn zero_smallest_by_ops(parts: &[Part<'_>], k: i64) -> Result<OpsCounts> {
    let mut counts = OpsCounts::default();
    let Some(first) = parts.first() else {
        return Ok(counts);
    };
    if k <= 0 {
        return Ok(counts);
    }
    let device = first.out.device();
    let wide = parts.iter().any(|p| p.scores.kind() == Kind::Double);
    let (float, int, digits) = if wide {
        (Kind::Double, Kind::Int64, 4)
    } else {
        (Kind::Float, Kind::Int, 2)
    };
    let keys = |p: &Part<'_>| -> Result<(Tensor, Option<Tensor>)> {
        let key = p
            .scores
            .f_abs()?
            .f_to_kind(float)?
            .f_contiguous()?
            .f_view_dtype(int)?
            .f_reshape([-1])?;
        // `None`: every entry takes part, and nothing needs masking.
        let live = match p.live {
            Some(l) => Some(l.f_eq(1)?.f_reshape([-1])?),
            None => None,
        };
        Ok((key, live))
    };
    let and = |t: Tensor, other: Option<&Tensor>| -> Result<Tensor> {
        Ok(match other {
            Some(other) => t.f_logical_and(other)?,
            None => t,
        })
    };

    // Most significant digit first: after each pass, `prefix` holds the digits of the k-th
    // smallest key found so far and `below` how many live keys are smaller.
    let (mut prefix, mut below) = (0i64, 0i64);
    for pass in 0..digits {
        let shift = (digits - 1 - pass) * DIGIT_BITS;
        // One bucket per digit value, and one more for the keys that do not take part.
        let histogram = Tensor::f_zeros([BUCKETS as i64 + 1], (Kind::Int64, device))?;
        for p in parts {
            let (key, live) = keys(p)?;
            let digit = key
                .f_bitwise_right_shift_tensor_scalar(shift as i64)?
                .f_bitwise_and(BUCKETS as i64 - 1)?;
            // Only keys whose higher digits are the prefix found so far.
            let same_prefix = match pass {
                0 => None,
                _ => {
                    let high = shift as i64 + DIGIT_BITS as i64;
                    Some(
                        key.f_bitwise_right_shift_tensor_scalar(high)?
                            .f_eq(prefix >> high)?,
                    )
                }
            };
            let counted = match (live, same_prefix) {
                (Some(live), Some(same)) => Some(live.f_logical_and(&same)?),
                (one, other) => one.or(other),
            };
            let bucket = match counted {
                Some(c) => digit.f_where_scalarother(&c, BUCKETS as i64)?,
                None => digit,
            }
            .f_to_kind(Kind::Int64)?;
            let ones =
                Tensor::f_ones([1], (Kind::Int64, device))?.f_expand(bucket.size(), false)?;
            let _ = histogram
                .shallow_clone()
                .f_scatter_add_(0, &bucket, &ones)?;
        }
        counts.passes += 1;
        let histogram = Vec::<i64>::try_from(&histogram.f_narrow(0, 0, BUCKETS as i64)?)?;
        counts.syncs += 1;
        let mut seen = below;
        let digit = histogram
            .iter()
            .position(|&n| {
                seen += n;
                seen >= k
            })
            .unwrap_or(BUCKETS - 1);
        below = seen - histogram[digit];
        prefix |= (digit as i64) << shift;
    }
    let threshold = prefix;

    // Each part's entries tied at the threshold, read at once.
    let mut tied = Vec::with_capacity(parts.len());
    for p in parts {
        let (key, live) = keys(p)?;
        tied.push(and(key.f_eq(threshold)?, live.as_ref())?.f_sum(Kind::Int64)?);
    }
    let tied = Vec::<i64>::try_from(&Tensor::f_stack(&tied, 0)?)?;
    counts.passes += 1;
    counts.syncs += 1;

    // Everything below the threshold goes; of the entries equal to it, the first `k - below`
    // in order (earlier part, then lower index).
    let mut budget = k - below;
    for (p, n) in parts.iter().zip(tied) {
        let (key, live) = keys(p)?;
        let mut pruned = and(key.f_lt(threshold)?, live.as_ref())?;
        let take = budget.min(n);
        if take > 0 {
            let ties = and(key.f_eq(threshold)?, live.as_ref())?;
            let ties = if take == n {
                ties
            } else {
                // The first `take` of them: their running count is at most `take`.
                let first = ties.f_cumsum(0, Kind::Int64)?.f_le(take)?;
                ties.f_logical_and(&first)?
            };
            pruned = pruned.f_logical_or(&ties)?;
            budget -= take;
        }
        let _ = p.out.f_view([-1])?.f_masked_fill_(&pruned, 0)?;
    }
    counts.passes += 1;
    Ok(counts)
}
