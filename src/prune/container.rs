//! Iterative pruning: how a new method composes with the mask a tensor already has
//! (PyTorch's `PruningContainer.compute_mask` / `_combine_masks`).

use crate::error::Result;
use crate::prune::method::{check_shape, checked_dim, PruningMethod, PruningType};
use crate::prune::selection::{zero_smallest, Part};
use crate::prune::unstructured::fresh_copy_as;
use tch::{Kind, Tensor};

/// Applies `method` on top of `mask`, the mask the tensor has now, as PyTorch does when a pruned
/// tensor is pruned again: the method is handed only what is still unpruned and amounts are
/// relative to that.
///
/// * unstructured: the entries whose mask is exactly 1, as one flat vector;
/// * structured along `dim`: the channels that still have a non-zero mask entry;
/// * global: the whole tensor.
///
/// The result has the dtype of `scores`, like PyTorch's. `mask` is never modified.
///
/// ```
/// use tch::Tensor;
/// use tch_prune::{combine_masks, L1Unstructured};
/// let t = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]);
/// let mask = Tensor::from_slice(&[0f32, 0., 1., 1., 1., 1.]);
/// // 0.5 of the 4 entries that remain: round(2.0) = 2 more, the smallest of them.
/// let new = combine_masks(&L1Unstructured::new(0.5).unwrap(), &t, &mask).unwrap();
/// assert_eq!(Vec::<f32>::try_from(&new).unwrap(), [0., 0., 0., 0., 1., 1.]);
/// ```
pub fn combine_masks(method: &dyn PruningMethod, scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if method.pruning_type() == PruningType::Global {
        let partial = method.compute_mask(scores, mask)?;
        check_shape(
            "mask returned by the method",
            &format!("{method:?}"),
            mask,
            &partial,
        )?;
        // A method returns a new tensor: no need to copy it again.
        return Ok(partial.f_to_kind(scores.kind())?);
    }
    let mut new_mask = fresh_copy_as(mask, scores.kind())?;
    match method.pruning_type() {
        PruningType::Unstructured
            if method.smallest_magnitudes().is_some() && scores.size() == mask.size() =>
        {
            // Selects among the live entries in place, without gathering them.
            let amount = method.smallest_magnitudes().expect("checked");
            let live_count = mask.f_eq(1)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
            let k = amount.to_count(live_count)?;
            let part = Part {
                scores,
                live: Some(mask),
                out: &new_mask,
            };
            zero_smallest(&[part], k)?;
        }
        PruningType::Unstructured => combine_live_entries(method, scores, mask, &mut new_mask)?,
        PruningType::Structured { dim } => {
            let dim = checked_dim(mask, dim)?;
            let other_dims: Vec<i64> = (0..mask.dim() as i64).filter(|&d| d != dim).collect();
            let live = mask
                .f_sum_dim_intlist(&other_dims[..], false, None::<Kind>)?
                .f_ne(0)?
                .f_nonzero()?
                .f_reshape([-1])?;
            let partial = method.compute_mask(
                &scores.f_index_select(dim, &live)?,
                &mask.f_index_select(dim, &live)?,
            )?;
            let _ = new_mask.f_index_copy_(dim, &live, &partial.f_to_kind(new_mask.kind())?)?;
        }
        PruningType::Global => unreachable!("handled above"),
    }
    Ok(new_mask)
}

/// The unstructured rule: the method sees the live entries (mask exactly 1) as one flat vector,
/// and its mask is scattered back into `new_mask`.
fn combine_live_entries(
    method: &dyn PruningMethod,
    scores: &Tensor,
    mask: &Tensor,
    new_mask: &mut Tensor,
) -> Result<()> {
    let live = mask.f_eq(1)?;
    let partial = method.compute_mask(
        &scores.f_masked_select(&live)?,
        &mask.f_masked_select(&live)?,
    )?;
    let _ = new_mask.f_masked_scatter_(&live, &partial.f_to_kind(new_mask.kind())?)?;
    Ok(())
}
