//! [`Across`]: the collectives a selection over several processes' tensors needs, as the
//! selection sees them (the process group implements them: `crate::prune::across`).

use crate::error::Result;

/// The other ranks of a selection over tensors spread across processes
/// ([`zero_smallest_across`]): the few collectives it needs, each called by every rank in the
/// same order. Their sizes do not depend on the tensors': a histogram of 65,536 counts per
/// pass, and single numbers.
pub(crate) trait Across {
    /// Adds the other ranks' counts into `counts` (an all-reduce sum).
    fn sum(&self, counts: &mut [u64]) -> Result<()>;
    /// Whether `flag` holds on any rank.
    fn any(&self, flag: bool) -> Result<bool>;
    /// The sum of `n` over the ranks before this one.
    fn exclusive_prefix_sum(&self, n: u64) -> Result<u64>;
}
