//! The pruning-method trait (PyTorch's `BasePruningMethod`, reduced to what a method decides),
//! and the checks and default mask that all methods and the registry share.

use crate::error::{PruneError, Result};
use std::fmt::Debug;
use tch::{Device, Kind, Tensor};

/// How a method sees a tensor that is already pruned (PyTorch's `PRUNING_TYPE`), which decides
/// the slice it is handed when it composes with earlier pruning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruningType {
    /// Acts on the individual entries still unpruned, handed over as one flat vector.
    Unstructured,
    /// Acts on the channels along `dim` that still have an unpruned entry.
    Structured {
        /// The channel dimension (negative counts from the end).
        dim: i64,
    },
    /// Acts on the whole tensor at once (PyTorch's `"global"`, used by [`CustomFromMask`](crate::CustomFromMask)).
    Global,
}

/// A pruning method: the rule that turns importance scores into a mask of 1 (keep) and 0 (prune).
///
/// Implement it to write your own method; the [`Pruner`](crate::Pruner) takes care of the
/// reparametrization, of iterative pruning (your method only sees what is still unpruned, as
/// PyTorch's `PruningContainer` does) and of failures (nothing changes when you return an error).
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_prune::{PruningMethod, PruningType, Result};
///
/// /// Prunes every entry whose score is below a fixed threshold.
/// #[derive(Debug)]
/// struct Threshold(f64);
///
/// impl PruningMethod for Threshold {
///     fn pruning_type(&self) -> PruningType {
///         PruningType::Unstructured
///     }
///     fn compute_mask(&self, scores: &Tensor, default_mask: &Tensor) -> Result<Tensor> {
///         let keep = scores.f_abs()?.f_ge(self.0)?.f_to_kind(default_mask.kind())?;
///         Ok(default_mask.f_mul(&keep)?)
///     }
/// }
///
/// let t = Tensor::from_slice(&[0.1f32, -2.0, 0.5, 3.0]);
/// let pruned = Threshold(1.0).prune(&t, None, None).unwrap();
/// assert_eq!(Vec::<f32>::try_from(&pruned).unwrap(), [0.0, -2.0, 0.0, 3.0]);
/// ```
pub trait PruningMethod: Debug {
    /// How this method composes with earlier pruning of the same tensor.
    fn pruning_type(&self) -> PruningType;

    /// The new mask, given the importance scores of the units this method may prune and the
    /// mask they currently have (`default_mask`, same shape as `scores`). Entries that are 0 in
    /// `default_mask` must stay 0. Return a new tensor and leave `default_mask` alone: on a first
    /// prune it is a broadcast view of a single 1, which cannot be written in place. (The
    /// structured methods return such a view too there, one value per channel: call
    /// `contiguous()` on their mask before writing into it.)
    fn compute_mask(&self, scores: &Tensor, default_mask: &Tensor) -> Result<Tensor>;

    /// `Some(amount)` if this method prunes the `amount` entries of smallest magnitude (as
    /// [`L1Unstructured`](crate::L1Unstructured) does): iterative and global pruning then
    /// select in place, in streaming passes, instead of gathering the live entries into new
    /// tensors, and a first prune whose mask is boolean or not stored (boolean masks, pruning
    /// made permanent at once) selects it as `L1Unstructured` does, without calling
    /// [`compute_mask`](Self::compute_mask). The result is the same, ties at the boundary aside
    /// (see the crate's docs).
    fn smallest_magnitudes(&self) -> Option<crate::Amount> {
        None
    }

    /// `Some((n, m, dim))` if this method keeps the `n` largest magnitudes of every `m`
    /// consecutive entries along `dim`, exactly as [`NmSparsity`](crate::train::NmSparsity)
    /// does (its `pattern()` and `dim()`): the streamed path
    /// ([`StreamedModel`](crate::model::StreamedModel)) then prunes a tensor a block of rows at a
    /// time with `NmSparsity`'s decisions, instead of reading it whole into memory and calling
    /// [`compute_mask`](Self::compute_mask).
    fn semi_structured(&self) -> Option<(i64, i64, i64)> {
        None
    }

    /// Whether [`compute_mask`](Self::compute_mask) draws from libtorch's generator (the
    /// random methods do): who prunes part of a model must then still draw for the rest, in
    /// order, to draw what one process pruning the whole would (the streamed prune on several
    /// ranks does).
    fn draws_random(&self) -> bool {
        false
    }

    /// Prunes a tensor without any `VarStore`: `t * mask`, the mask computed from
    /// `importance_scores` (default: `t`) and `default_mask` (default: all ones).
    fn prune(
        &self,
        t: &Tensor,
        importance_scores: Option<&Tensor>,
        default_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let scores = scores_for("t", t, importance_scores)?;
        let default_mask = match default_mask {
            Some(m) => m.shallow_clone(),
            None => all_ones(t, t.kind())?,
        };
        Ok(t.f_mul(&self.compute_mask(&scores, &default_mask)?)?)
    }
}

/// PyTorch's first default mask, `ones_like(t)` (here of dtype `kind`), as one broadcast value:
/// same values, no allocation, and methods can tell it apart ([`is_all_ones`]) to skip
/// multiplying by it.
pub(crate) fn all_ones(t: &Tensor, kind: Kind) -> Result<Tensor> {
    Ok(Tensor::f_ones([], (kind, t.device()))?.f_expand(t.size(), false)?)
}

/// Whether `mask` is [`all_ones`]' broadcast 1.
pub(crate) fn is_all_ones(mask: &Tensor) -> bool {
    mask.stride().iter().all(|&s| s == 0)
        && mask.numel() > 0
        && mask
            .f_double_value(&vec![0; mask.dim()])
            .is_ok_and(|v| v == 1.0)
}

/// The scores that rank `name`'s entries: `importance_scores` if given (of `values`' shape),
/// on `values`' device, else its values. PyTorch accepts scores on another device than the
/// tensor (CPU scores for a CUDA weight); here they are moved to the tensor, so that the mask
/// is computed where it will live.
pub(crate) fn scores_for(
    name: &str,
    values: &Tensor,
    importance_scores: Option<&Tensor>,
) -> Result<Tensor> {
    match importance_scores {
        Some(s) => {
            check_shape("importance scores", name, values, s)?;
            Ok(s.f_to_device(values.device())?)
        }
        None => Ok(values.shallow_clone()),
    }
}

/// Fails with [`PruneError::ShapeMismatch`] unless `other` has the shape of `t`.
pub(crate) fn check_shape(
    what: &'static str,
    name: &str,
    t: &Tensor,
    other: &Tensor,
) -> Result<()> {
    if t.size() != other.size() {
        return Err(PruneError::ShapeMismatch {
            what,
            name: name.to_string(),
            expected: t.size(),
            got: other.size(),
        });
    }
    Ok(())
}

/// Validates a structured method's tensor and dim; returns the dim made non-negative.
pub(crate) fn checked_dim(t: &Tensor, dim: i64) -> Result<i64> {
    let ndim = t.dim() as i64;
    if ndim <= 1 {
        return Err(PruneError::NotMultidimensional { shape: t.size() });
    }
    if dim >= ndim || dim < -ndim {
        return Err(PruneError::InvalidDim {
            dim,
            shape: t.size(),
        });
    }
    Ok(if dim < 0 { dim + ndim } else { dim })
}

/// Fails unless every tensor (and score) is on one device, naming the first two that differ.
pub(crate) fn same_device(devices: &[(&str, Device)]) -> Result<()> {
    let Some(&(first, first_device)) = devices.first() else {
        return Ok(());
    };
    match devices.iter().find(|(_, d)| *d != first_device) {
        Some(&(other, other_device)) => Err(PruneError::MixedDevices {
            first: first.to_string(),
            first_device,
            other: other.to_string(),
            other_device,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_devices_are_named() {
        assert!(same_device(&[]).is_ok());
        assert!(same_device(&[("a", Device::Cpu), ("b", Device::Cpu)]).is_ok());
        let err = same_device(&[
            ("a", Device::Cpu),
            ("a", Device::Cpu),
            ("b", Device::Cuda(0)),
        ])
        .unwrap_err();
        assert!(matches!(
            &err,
            PruneError::MixedDevices { first, other, other_device: Device::Cuda(0), .. } if first == "a" && other == "b"
        ));
        assert!(err.to_string().contains("'a'") && err.to_string().contains("'b'"));
    }
}
