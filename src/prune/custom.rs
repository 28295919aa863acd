//! A mask given by the user (PyTorch's `CustomFromMask`).

use crate::error::Result;
use crate::prune::method::{check_shape, PruningMethod, PruningType};
use tch::Tensor;

/// Prunes where a given mask is 0. The mask is multiplied into the current one, so entries
/// pruned before stay pruned; values other than 0 and 1 scale the weight, as in PyTorch.
#[derive(Debug)]
pub struct CustomFromMask {
    mask: Tensor,
}

impl CustomFromMask {
    /// PyTorch's `CustomFromMask(mask)`; the mask is moved to each pruned tensor's device.
    pub fn new(mask: &Tensor) -> Self {
        Self {
            mask: mask.shallow_clone(),
        }
    }
}

impl PruningMethod for CustomFromMask {
    fn pruning_type(&self) -> PruningType {
        PruningType::Global
    }

    fn compute_mask(&self, _scores: &Tensor, default_mask: &Tensor) -> Result<Tensor> {
        check_shape("custom mask", "the tensor", default_mask, &self.mask)?;
        // Unlike PyTorch, the mask follows the tensor to its device instead of failing.
        let mask = self
            .mask
            .f_to_device(default_mask.device())?
            .f_to_kind(default_mask.kind())?;
        Ok(default_mask.f_mul(&mask)?)
    }
}
