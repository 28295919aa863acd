//! Wanda (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language
//! Models"): weights ranked by `|W| · sqrt(scaler_row)`, compared within each output row.
//! Reference: locuslab/wanda, `lib/prune.py` `prune_wanda`.

use crate::error::{PruneError, Result};
use crate::prune::calibration::{Calibration, LayerStats};
use crate::prune::method::{checked_dim, PruningMethod, PruningType};
use crate::prune::pruner::Pruner;
use crate::prune::sparsity::Sparsity;
use tch::{Kind, Tensor};

/// Wanda's selection: given the scores `|W| · sqrt(scaler_row)` (what [`Pruner::wanda`]
/// hands it), prunes per output row.
///
/// * [`Sparsity::Fraction`]: in each row, the `int(columns · fraction)` entries of smallest
///   score, by a stable ascending sort along the row (ties: the earlier column first), as
///   `prune_wanda` selects them;
/// * [`Sparsity::Pattern`] N:M: in each group of M consecutive columns, the M - N of smallest
///   score (the reference's `topk(largest=False)` on the scores in f32; ties, which `topk`
///   leaves unspecified, prune the earlier column).
///
/// On a tensor pruned before, entries already pruned count first among the pruned of their
/// row (or group), and stay pruned.
///
/// As a [`PruningMethod`] it prunes whatever scores it is given per row: with the plain
/// weights as scores ([`Pruner::prune`] without importance scores) it is per-row magnitude
/// pruning, Wanda's ablation baseline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Wanda {
    sparsity: Sparsity,
}

impl Wanda {
    /// Wanda at `sparsity` (a fraction per row, or an N:M pattern along the input columns).
    pub fn new(sparsity: Sparsity) -> Self {
        Self { sparsity }
    }

    /// The sparsity it prunes to.
    pub fn sparsity(&self) -> Sparsity {
        self.sparsity
    }
}

impl PruningMethod for Wanda {
    /// The whole tensor at once: rows and groups are compared as they lie in the tensor.
    fn pruning_type(&self) -> PruningType {
        PruningType::Global
    }

    fn compute_mask(&self, scores: &Tensor, default_mask: &Tensor) -> Result<Tensor> {
        let _ = checked_dim(scores, 1)?;
        match self.sparsity {
            Sparsity::Pattern(pattern) => {
                if pattern.dim() != 1 {
                    return Err(PruneError::InvalidConfig(format!(
                        "Wanda's N:M groups run along the input columns (dim 1), not dim {}",
                        pattern.dim()
                    )));
                }
                // The reference ranks each group's scores in f32 (`tmp = ....float()`).
                let scores = scores.f_to_kind(Kind::Float)?;
                let mask = pattern.compute_mask(&scores, default_mask)?;
                Ok(mask.f_to_kind(default_mask.kind())?)
            }
            Sparsity::Fraction(fraction) => {
                let rows = scores.f_reshape([scores.size()[0], -1])?;
                let columns = rows.size()[1];
                // `int(W_metric.shape[1] * sparsity_ratio)`: truncated.
                let k = (columns as f64 * fraction) as i64;
                let mut keep = Tensor::f_ones(rows.size(), (Kind::Bool, rows.device()))?;
                if k > 0 {
                    // Entries pruned before sort below any score (scores are >= 0).
                    let live = default_mask.f_reshape([rows.size()[0], -1])?.f_ne(0)?;
                    let ranked = rows.f_abs()?.f_masked_fill(&live.f_logical_not()?, -1.0)?;
                    let (_, order) = ranked.f_sort_stable(true, -1, false)?;
                    let _ = keep.f_scatter_value_(1, &order.f_narrow(1, 0, k)?, 0)?;
                }
                let keep = keep.f_reshape(scores.size())?;
                Ok(default_mask.f_mul(&keep.f_to_kind(default_mask.kind())?)?)
            }
        }
    }
}

/// Wanda's scores of a weight: `|W| · sqrt(scaler_row)` (one factor per input column),
/// exactly as `prune_wanda` computes `W_metric`.
pub fn wanda_scores(weight: &Tensor, stats: &LayerStats) -> Result<Tensor> {
    let row = stats.scaler_row().f_reshape([1, -1])?.f_sqrt()?;
    let row = row.f_to_device(weight.device())?;
    Ok(weight.f_abs()?.f_mul(&row)?)
}

impl Pruner {
    /// Prunes the linear weight `name` (`[out, in]`) with Wanda, from the statistics its layer
    /// gathered in `calibration` ([`Calibration`]): a `_mask` as every method gives, the
    /// weight's values untouched. Scores are computed from the weight's current (masked)
    /// values. On error nothing changes.
    pub fn wanda(&self, name: &str, calibration: &Calibration, method: &Wanda) -> Result<()> {
        let stats = calibration.stats(name)?;
        let (values, _) = self.current(name)?;
        stats.check_for(name, &values.size())?;
        let scores = tch::no_grad(|| wanda_scores(&values, &stats))?;
        self.prune(name, method, Some(&scores))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(sparsity: Sparsity, values: &[f32], shape: &[i64], prior: Option<&[f32]>) -> Vec<f32> {
        let t = Tensor::from_slice(values).view(shape);
        let default = match prior {
            Some(p) => Tensor::from_slice(p).view(shape),
            None => Tensor::ones_like(&t),
        };
        let m = Wanda::new(sparsity).compute_mask(&t, &default).unwrap();
        Vec::<f32>::try_from(&m.contiguous().view([-1])).unwrap()
    }

    #[test]
    fn rows_are_compared_on_their_own() {
        let half = Sparsity::fraction(0.5).unwrap();
        let got = mask(half, &[1., 2., 3., 4., 40., 30., 20., 10.], &[2, 4], None);
        assert_eq!(got, [0., 0., 1., 1., 1., 1., 0., 0.]);
        // int(5 * 0.5) = 2 per row; ties prune the earlier column.
        let got = mask(half, &[1., 1., 1., 1., 1.], &[1, 5], None);
        assert_eq!(got, [0., 0., 1., 1., 1.]);
    }

    #[test]
    fn entries_pruned_before_count_first() {
        let half = Sparsity::fraction(0.5).unwrap();
        let prior = [1., 1., 1., 0.];
        let got = mask(half, &[1., 2., 3., 9.], &[1, 4], Some(&prior));
        assert_eq!(got, [0., 1., 1., 0.]);
    }

    #[test]
    fn patterns_prune_within_each_group() {
        let two_four = Sparsity::pattern(2, 4).unwrap();
        let got = mask(two_four, &[4., 1., 3., 2., 1., 2., 3., 4.], &[1, 8], None);
        assert_eq!(got, [1., 0., 1., 0., 0., 0., 1., 1.]);
        assert!(Sparsity::fraction(1.0).is_err());
        let t = Tensor::from_slice(&[1f32, 2.]);
        assert!(Wanda::new(two_four)
            .compute_mask(&t, &Tensor::ones_like(&t))
            .is_err());
    }
}
