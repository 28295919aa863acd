//! N:M semi-structured sparsity: the N largest magnitudes kept in every block of M consecutive
//! entries (2:4 is what NVIDIA's sparse tensor cores and `torch.sparse.to_sparse_semi_structured`
//! take).

use crate::error::{PruneError, Result};
use crate::prune::method::{checked_dim, PruningMethod, PruningType};
use std::fmt;
use std::str::FromStr;
use tch::{Kind, Tensor};

/// Keeps the `n` entries of largest absolute score in every block of `m` consecutive entries
/// along the input dimension (dim 1: the columns of a `Linear` weight `[out, in]`, the input
/// channels of a convolution weight `[out, in, kh, kw]`, as NVIDIA's ASP lays them out), and
/// prunes the other `m - n`.
///
/// The masks are those of `torch.ao.pruning.WeightNormSparsifier(sparsity_level=1.0,
/// sparse_block_shape=(1, m), zeros_per_block=m - n)` on the same 2-D weights (checked against
/// PyTorch 2.13), but for ties: among entries of a block tied at the boundary, those that come
/// first are pruned (the crate's rule; `topk`'s choice is unspecified). A row whose length is
/// not a multiple of `m` ends with a partial block of `r` entries, ranked as ao ranks it (padded
/// with values that are never pruned): `min(r, m - n)` of them are pruned.
///
/// On a tensor pruned before, entries already pruned count first among the pruned of their
/// block: a block that has `m - n` zeros or more already keeps its mask. There is no global
/// ranking (each block is on its own), so `global_unstructured` refuses it: prune each tensor.
///
/// ```
/// use tch::Tensor;
/// use tch_prune::PruningMethod;
/// use tch_prune::train::NmSparsity;
/// let w = Tensor::from_slice(&[0.1f32, -3., 2., 0.5, 1., 1., -1., 4.]).view([1, 8]);
/// let pruned = NmSparsity::new(2, 4)?.prune(&w, None, None)?;
/// assert_eq!(Vec::<f32>::try_from(&pruned.view([-1]))?, [0., -3., 2., 0., 0., 0., -1., 4.]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NmSparsity {
    n: i64,
    m: i64,
    dim: i64,
}

impl NmSparsity {
    /// Keeps `n` of every `m` (`0 <= n < m`) along dim 1.
    pub fn new(n: i64, m: i64) -> Result<Self> {
        if m < 1 || n < 0 || n >= m {
            return Err(PruneError::InvalidConfig(format!(
                "invalid N:M pattern {n}:{m}: it keeps N of every M entries, so 0 <= N < M (e.g. 2:4)"
            )));
        }
        Ok(Self { n, m, dim: 1 })
    }

    /// Blocks along `dim` instead of dim 1 (negative counts from the end).
    pub fn along(self, dim: i64) -> Self {
        Self { dim, ..self }
    }

    /// `(n, m)`.
    pub fn pattern(&self) -> (i64, i64) {
        (self.n, self.m)
    }

    /// The dimension the blocks run along.
    pub fn dim(&self) -> i64 {
        self.dim
    }
}

impl fmt::Display for NmSparsity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.n, self.m)
    }
}

/// Parses `N:M` (e.g. `2:4`), as the CLI's `--pattern` takes it.
impl FromStr for NmSparsity {
    type Err = PruneError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            PruneError::InvalidConfig(format!(
                "invalid N:M pattern '{s}': write it as N:M, e.g. 2:4 (keep 2 of every 4)"
            ))
        };
        let (n, m) = s.trim().split_once(':').ok_or_else(bad)?;
        let n = n.trim().parse().map_err(|_| bad())?;
        let m = m.trim().parse().map_err(|_| bad())?;
        Self::new(n, m)
    }
}

impl PruningMethod for NmSparsity {
    /// The whole tensor at once: blocks must stay aligned, so pruned entries are not dropped
    /// out of the ranking as unstructured methods drop them.
    fn pruning_type(&self) -> PruningType {
        PruningType::Global
    }

    fn semi_structured(&self) -> Option<(i64, i64, i64)> {
        Some((self.n, self.m, self.dim))
    }

    fn compute_mask(&self, scores: &Tensor, default_mask: &Tensor) -> Result<Tensor> {
        let dim = checked_dim(scores, self.dim)?;
        let len = scores.size()[dim as usize];
        // A block longer than the row: each row is one partial block, of which min(len, m - n)
        // entries are pruned, as `len - that` of `len` prunes them. Without padding each row to
        // M entries: M is the user's (`3:4294967297` would ask for billions of NaNs per row).
        let (n, m) = if self.m > len && len > 0 {
            (len - (self.m - self.n).min(len), len)
        } else {
            (self.n, self.m)
        };
        // Magnitudes, with what is pruned already below anything live, so it counts first
        // among the pruned of its block.
        let magnitude = scores
            .f_abs()?
            .f_masked_fill(&default_mask.f_eq(0)?, -1.0)?
            .f_movedim([dim], [-1])?;
        // ao pads a partial block with NaN, which its `topk(largest=False)` ranks above every
        // magnitude; a sort puts NaN last too.
        let pad = (m - len % m) % m;
        let magnitude = if pad == 0 {
            magnitude
        } else {
            let mut shape = magnitude.size();
            *shape.last_mut().expect("2+ dims") = pad;
            let nan = Tensor::f_full(shape, f64::NAN, (magnitude.kind(), magnitude.device()))?;
            Tensor::f_cat(&[magnitude, nan], -1)?
        };
        let moved_shape = magnitude.size();
        // Row-major: every M consecutive entries along the (now last) dim form one row.
        let blocks = magnitude.f_reshape([-1, m])?;
        // A stable ascending sort: among tied magnitudes the earlier entry comes first, and is
        // pruned first.
        let (_, order) = blocks.f_sort_stable(true, -1, false)?;
        let pruned = order.f_narrow(1, 0, m - n)?;
        let mut keep = Tensor::f_ones(blocks.size(), (Kind::Bool, blocks.device()))?;
        let _ = keep.f_scatter_value_(1, &pruned, 0)?;
        let keep = keep
            .f_reshape(moved_shape)?
            .f_narrow(-1, 0, len)?
            .f_movedim([-1], [dim])?;
        Ok(default_mask.f_mul(&keep.f_to_kind(default_mask.kind())?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(method: NmSparsity, values: &[f32], shape: &[i64]) -> Vec<f32> {
        let t = Tensor::from_slice(values).view(shape);
        let ones = Tensor::ones_like(&t);
        let mask = method.compute_mask(&t, &ones).unwrap();
        Vec::<f32>::try_from(&mask.contiguous().view([-1])).unwrap()
    }

    #[test]
    fn ties_prune_the_earlier_entries() {
        let m = mask(NmSparsity::new(2, 4).unwrap(), &[1.; 8], &[2, 4]);
        assert_eq!(m, [0., 0., 1., 1., 0., 0., 1., 1.]);
    }

    #[test]
    fn a_partial_block_is_ranked_as_ao_pads_it() {
        // 6 columns, 2:4: the block [5, 6] prunes min(2, 2) = 2 entries, [1, 2, 3, 4] two.
        let m = mask(
            NmSparsity::new(2, 4).unwrap(),
            &[1., 2., 3., 4., 5., 6.],
            &[1, 6],
        );
        assert_eq!(m, [0., 0., 1., 1., 0., 0.]);
        // 1:4 on 7 columns: the last block [5, 6, 7] prunes 3.
        let m = mask(
            NmSparsity::new(1, 4).unwrap(),
            &[1., 2., 3., 4., 5., 6., 7.],
            &[1, 7],
        );
        assert_eq!(m, [0., 0., 0., 1., 0., 0., 0.]);
    }

    /// M past the row's length (from the command line, up to i64's range) pads nothing: the
    /// row is one partial block, `min(len, M - N)` of it pruned.
    #[test]
    fn a_block_longer_than_the_row_allocates_nothing_for_it() {
        let values = [1., 2., 3., 4., 5., 6.];
        let m = mask(NmSparsity::new(3, 4_294_967_297).unwrap(), &values, &[1, 6]);
        assert_eq!(m, [0.; 6]);
        let m = mask(
            NmSparsity::new(i64::MAX - 2, i64::MAX).unwrap(),
            &values,
            &[1, 6],
        );
        assert_eq!(m, [0., 0., 1., 1., 1., 1.]);
        // The same as padding: 2:8 on 6 columns prunes min(6, 6) = 6.
        assert_eq!(
            mask(NmSparsity::new(2, 8).unwrap(), &values, &[1, 6]),
            [0.; 6]
        );
        assert_eq!(
            mask(NmSparsity::new(5, 8).unwrap(), &values, &[1, 6]),
            [0., 0., 0., 1., 1., 1.]
        );
    }

    #[test]
    fn blocks_run_along_the_input_channels_of_a_convolution() {
        // [out=1, in=4, 1, 2]: blocks along dim 1 take one entry of each input channel.
        let values = [1., 10., 2., 20., 3., 30., 4., 40.];
        let m = mask(NmSparsity::new(2, 4).unwrap(), &values, &[1, 4, 1, 2]);
        assert_eq!(m, [0., 0., 0., 0., 1., 1., 1., 1.]);
    }

    #[test]
    fn entries_already_pruned_count_first() {
        let t = Tensor::from_slice(&[5f32, 6., 7., 8.]).view([1, 4]);
        let default = Tensor::from_slice(&[1f32, 1., 0., 1.]).view([1, 4]);
        let m = NmSparsity::new(2, 4)
            .unwrap()
            .compute_mask(&t, &default)
            .unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&m.view([-1])).unwrap(),
            [0., 1., 0., 1.]
        );
    }

    #[test]
    fn patterns_parse_and_bad_ones_are_refused() {
        assert_eq!("2:4".parse::<NmSparsity>().unwrap().pattern(), (2, 4));
        for bad in ["4:4", "2", "a:4", "5:4", "-1:4", "2:0"] {
            assert!(bad.parse::<NmSparsity>().is_err(), "{bad}");
        }
        let t = Tensor::from_slice(&[1f32, 2., 3., 4.]);
        assert!(NmSparsity::new(2, 4)
            .unwrap()
            .compute_mask(&t, &Tensor::ones_like(&t))
            .is_err());
    }
}
