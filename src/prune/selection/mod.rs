//! Magnitude selection at scale: the `k` smallest magnitudes among the live entries of one or
//! many tensors, found by a radix select over the magnitudes' bit patterns, streaming each tensor
//! in place. No concatenation, no sort, no index tensors: the extra memory is a few histograms,
//! whatever the model's size (PyTorch's `global_unstructured` concatenates every score and mask
//! and runs `topk` with int64 indices).
//!
//! The result is the set PyTorch's `topk(largest=False)` selects whenever the magnitudes do not
//! tie at the boundary. Where they do, exactly `k` entries are still selected, and the tie is
//! broken by order: the tied entries that come first (earlier tensor, then lower flat index) are
//! pruned first, on every device. (`topk`'s own choice among equal values is unspecified.)
//!
//! One idea a file: [`ops`] the selection with tensor operations, on any device; [`radix`] the
//! radix select over CPU memory, read in place; [`threshold`] the same select over raw data
//! (a memory-mapped file), decided entry by entry as a tensor is written; [`view`] the parts
//! taking part and their memory, cut into chunks; [`keys`] the keys that order the
//! magnitudes, decoded a chunk at a time; [`threads`] how a pass is spread over threads, and
//! when it is not. Nothing below this file uses it; `tests.rs` runs both paths side by side.

mod across;
mod keys;
mod ops;
mod radix;
mod threads;
mod threshold;
mod view;
mod window;

use crate::error::{PruneError, Result};
use radix::{radix_select, radix_select_across};
use view::View;

pub(crate) use across::Across;
pub(crate) use ops::zero_smallest_by_ops;
pub(crate) use threads::{in_memory, on_this_thread};
pub(crate) use threshold::{smallest_threshold, smallest_threshold_across, Threshold};
pub(crate) use view::{Part, RawScores};

/// Zeroes, in each part's `out`, the `k` live entries of smallest magnitude across all parts
/// (`k` at most the number of live entries). Contiguous CPU tensors of the usual float dtypes
/// go through the radix select; anything else (GPU tensors, other dtypes, strided views)
/// through [`zero_smallest_by_ops`], which selects the same entries with tensor operations.
pub(crate) fn zero_smallest(parts: &[Part<'_>], k: i64) -> Result<()> {
    if k <= 0 {
        return Ok(());
    }
    match parts.iter().map(View::of).collect::<Option<Vec<_>>>() {
        Some(views) => {
            radix_select(&views, k);
            Ok(())
        }
        None => zero_smallest_by_ops(parts, k).map(drop),
    }
}

/// [`zero_smallest`] over the parts of every rank: the `k` smallest live magnitudes of their
/// union (`k` counted over the union), in the global order: rank order, then each rank's
/// parts in order. Every rank calls it with its own parts; each zeroes its share. The parts
/// must be contiguous CPU tensors of the radix select's dtypes (the collectives carry its
/// histograms; there is no tensor-operation fallback across ranks).
pub(crate) fn zero_smallest_across(parts: &[Part<'_>], k: i64, across: &dyn Across) -> Result<()> {
    let views = parts
        .iter()
        .map(View::of)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            PruneError::InvalidArgument(
                "a selection across ranks needs contiguous CPU tensors of f32, f64, f16 or bf16 \
                 (scores and masks): move them to the CPU first"
                    .into(),
            )
        });
    // Every rank learns whether any refused its parts, so that none waits in a collective
    // the others never start. `k` is the same on every rank.
    let refused = across.any(views.is_err())?;
    match views {
        Err(e) => Err(e),
        Ok(_) if refused => Err(PruneError::Distributed(
            "another rank's tensors cannot take part in the selection (its error says why)".into(),
        )),
        Ok(views) if k > 0 => radix_select_across(&views, k, across),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests;
