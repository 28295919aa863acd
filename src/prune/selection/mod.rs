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
//! (a memory-mapped file), decided entry by entry as a tensor is written; [`view`] a part's
//! memory cut into chunks; [`keys`] the keys that order the magnitudes, decoded a chunk at a
//! time; [`threads`] how a pass is spread over threads, and when it is not.

mod keys;
mod ops;
mod radix;
mod threads;
mod threshold;
mod view;

use crate::error::Result;
use radix::radix_select;
use tch::Tensor;
use view::View;

pub(crate) use ops::zero_smallest_by_ops;
pub(crate) use threshold::{smallest_threshold, RawScores, Threshold};

/// One tensor taking part in a selection.
pub(crate) struct Part<'a> {
    /// Ranked by magnitude.
    pub scores: &'a Tensor,
    /// Only entries equal to 1 here take part (PyTorch's "still unpruned"); all when `None`.
    pub live: Option<&'a Tensor>,
    /// Receives a 0 at every selected entry; nothing else is written.
    pub out: &'a Tensor,
}

/// Bits of the digit a radix pass sorts by, on the CPU and on the device alike.
const DIGIT_BITS: u32 = 16;
const BUCKETS: usize = 1 << DIGIT_BITS;

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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// A float live mask for each of `scores`: 1 where a uniform draw is above `pruned`.
    pub(super) fn live_masks(scores: &[Tensor], pruned: f64) -> Vec<Tensor> {
        scores
            .iter()
            .map(|s| {
                Tensor::rand(s.size(), (Kind::Float, Device::Cpu))
                    .gt(pruned)
                    .to_kind(Kind::Float)
            })
            .collect()
    }

    /// The parts of a selection: each of `scores` with its live mask, zeroed into its `outs`.
    pub(super) fn parts<'a>(
        scores: &'a [Tensor],
        live: &'a [Tensor],
        outs: &'a [Tensor],
    ) -> Vec<Part<'a>> {
        scores
            .iter()
            .zip(live)
            .zip(outs)
            .map(|((scores, live), out)| Part {
                scores,
                live: Some(live),
                out,
            })
            .collect()
    }

    /// The radix select on CPU and the tensor-operation path (what GPU tensors take) prune the
    /// same entries, ties included.
    #[test]
    fn both_paths_select_the_same_entries() {
        tch::manual_seed(5);
        for kinds in [
            [Kind::Float, Kind::Float],
            [Kind::Double, Kind::Float],
            [Kind::Half, Kind::BFloat16],
        ] {
            for ties in [false, true] {
                let scores: Vec<Tensor> = [[40, 30], [7, 9]]
                    .iter()
                    .zip(kinds)
                    .map(|(shape, kind)| {
                        let t = Tensor::randn(shape, (Kind::Float, Device::Cpu));
                        if ties { t.round() } else { t }.to_kind(kind)
                    })
                    .collect();
                let live = live_masks(&scores, 0.2);
                let total: i64 = live
                    .iter()
                    .map(|l| l.sum(Kind::Int64).int64_value(&[]))
                    .sum();
                for k in [1, total / 3, total / 2, total] {
                    let run = |by_ops: bool| -> Vec<Tensor> {
                        let outs: Vec<Tensor> = live.iter().map(|l| l.copy()).collect();
                        let parts = parts(&scores, &live, &outs);
                        if by_ops {
                            zero_smallest_by_ops(&parts, k).unwrap();
                        } else {
                            zero_smallest(&parts, k).unwrap();
                        }
                        outs
                    };
                    let (radix, ops) = (run(false), run(true));
                    for (a, b) in radix.iter().zip(&ops) {
                        assert!(a.equal(b), "{kinds:?} ties={ties} k={k}");
                    }
                    let pruned: i64 = live
                        .iter()
                        .zip(&radix)
                        .map(|(l, o)| (l - o).sum(Kind::Int64).int64_value(&[]))
                        .sum();
                    assert_eq!(pruned, k);
                }
            }
        }
    }

    /// Scores with NaN, infinities, signed zeros, subnormals and ties, in every float dtype;
    /// live masks as floats, booleans or absent: the tensor-operation path (what GPU tensors
    /// take) selects what the radix select selects, exactly `k` entries.
    #[test]
    fn both_paths_agree_on_special_values_and_every_live_mask() {
        tch::manual_seed(6);
        let special = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            1e-40,
            -1e-40,
            1.0,
            -1.0,
            1.0,
        ];
        for kind in [Kind::Float, Kind::Double, Kind::Half, Kind::BFloat16] {
            for live_kind in [None, Some(Kind::Float), Some(Kind::Bool)] {
                let noise = Tensor::randn([50], (Kind::Double, Device::Cpu)).round();
                let scores = Tensor::cat(&[Tensor::from_slice(&special), noise], 0)
                    .to_kind(kind)
                    .view([6, 10]);
                let live = live_kind.map(|k| {
                    Tensor::rand([6, 10], (Kind::Float, Device::Cpu))
                        .gt(0.3)
                        .to_kind(k)
                });
                let total = live.as_ref().map_or(60, |l| {
                    l.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[])
                });
                for k in [1, 2, 5, total / 2, total - 1, total] {
                    let run = |by_ops: bool| {
                        let out = Tensor::ones([6, 10], (Kind::Bool, Device::Cpu));
                        let part = Part {
                            scores: &scores,
                            live: live.as_ref(),
                            out: &out,
                        };
                        if by_ops {
                            zero_smallest_by_ops(&[part], k).unwrap();
                        } else {
                            zero_smallest(&[part], k).unwrap();
                        }
                        out
                    };
                    let (radix, ops) = (run(false), run(true));
                    assert!(radix.equal(&ops), "{kind:?} live={live_kind:?} k={k}");
                    let zeros = 60 - radix.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[]);
                    assert_eq!(zeros, k, "{kind:?} live={live_kind:?}");
                }
            }
        }
    }
}
