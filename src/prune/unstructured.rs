//! Methods that prune individual entries: identity, random and L1 unstructured.

use crate::error::Result;
use crate::prune::amount::Amount;
use crate::prune::method::{PruningMethod, PruningType};
use crate::prune::selection::{zero_smallest, Part};
use tch::{Kind, Tensor};

/// Prunes nothing: reparametrizes a tensor with an all-ones mask (PyTorch's `prune.identity`),
/// e.g. to load a pruned checkpoint into a model that was never pruned.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl PruningMethod for Identity {
    fn pruning_type(&self) -> PruningType {
        PruningType::Unstructured
    }

    fn compute_mask(&self, _scores: &Tensor, default_mask: &Tensor) -> Result<Tensor> {
        fresh_copy(default_mask)
    }
}

/// Prunes `amount` entries chosen uniformly at random (PyTorch's `RandomUnstructured`).
///
/// It draws one `rand_like` of the scores from the tensor's device generator and prunes the
/// entries with the largest draws, so after `tch::manual_seed(s)` it prunes exactly what
/// PyTorch prunes after `torch.manual_seed(s)`.
#[derive(Clone, Copy, Debug)]
pub struct RandomUnstructured {
    amount: Amount,
}

impl RandomUnstructured {
    /// PyTorch's `RandomUnstructured(amount)`; an invalid amount is an error.
    pub fn new(amount: impl Into<Amount>) -> Result<Self> {
        Ok(Self {
            amount: amount.into().validate()?,
        })
    }
}

impl PruningMethod for RandomUnstructured {
    fn pruning_type(&self) -> PruningType {
        PruningType::Unstructured
    }

    fn draws_random(&self) -> bool {
        true
    }

    fn compute_mask(&self, scores: &Tensor, default_mask: &Tensor) -> Result<Tensor> {
        let k = self.amount.to_count(scores.numel() as i64)?;
        let mask = fresh_copy(default_mask)?;
        if k != 0 {
            let draws = scores.f_rand_like()?;
            let (_, indices) = draws.f_reshape([-1])?.f_topk(k, -1, true, true)?;
            zero_flat(&mask, &indices)?;
        }
        Ok(mask)
    }
}

/// Prunes the `amount` entries of smallest absolute score (PyTorch's `L1Unstructured`):
/// exactly that many, even when magnitudes tie. The selection streams over the tensor (a radix
/// select on CPU, the same radix select with tensor operations elsewhere) and gives PyTorch's `topk` result
/// wherever magnitudes do not tie at the boundary; tied entries there are pruned in index order.
#[derive(Clone, Copy, Debug)]
pub struct L1Unstructured {
    amount: Amount,
}

impl L1Unstructured {
    /// PyTorch's `L1Unstructured(amount)`; an invalid amount is an error.
    pub fn new(amount: impl Into<Amount>) -> Result<Self> {
        Ok(Self {
            amount: amount.into().validate()?,
        })
    }

    /// The amount to prune, as given.
    pub fn amount(&self) -> Amount {
        self.amount
    }
}

impl PruningMethod for L1Unstructured {
    fn pruning_type(&self) -> PruningType {
        PruningType::Unstructured
    }

    fn compute_mask(&self, scores: &Tensor, default_mask: &Tensor) -> Result<Tensor> {
        let k = self.amount.to_count(scores.numel() as i64)?;
        let mask = fresh_copy(default_mask)?;
        let part = Part {
            scores,
            live: None,
            out: &mask,
        };
        // Non-contiguous scores are read in row-major order, as PyTorch reads a contiguous copy
        // (PyTorch itself fails on them in `view(-1)`).
        zero_smallest(&[part], k)?;
        Ok(mask)
    }

    fn smallest_magnitudes(&self) -> Option<Amount> {
        Some(self.amount)
    }
}

/// A new contiguous tensor with the values, dtype and device of `t`.
pub(crate) fn fresh_copy(t: &Tensor) -> Result<Tensor> {
    fresh_copy_as(t, t.kind())
}

/// A new contiguous tensor with the values and device of `t`, of dtype `kind`.
pub(crate) fn fresh_copy_as(t: &Tensor, kind: Kind) -> Result<Tensor> {
    let mut copy = Tensor::f_empty(t.size(), (kind, t.device()))?;
    copy.f_copy_(t)?;
    Ok(copy)
}

/// Sets the entries of a contiguous `mask` at flat `indices` to zero.
fn zero_flat(mask: &Tensor, indices: &Tensor) -> Result<()> {
    let _ = mask.f_view([-1])?.f_index_fill_(0, indices, 0)?;
    Ok(())
}
