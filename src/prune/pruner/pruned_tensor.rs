//! One pruned tensor, the registry's equivalent of a PyTorch pruning hook: `_orig`, the mask,
//! the tensor modules compute with, and `orig * mask` written into it before a forward pass
//! when (and only when) something changed. One idea: keeping that tensor's values right.

use crate::error::Result;
use crate::ffi::GradRedirect;
use tch::{Device, Kind, Tensor};

/// One pruned tensor: the registry's equivalent of a PyTorch pruning hook.
#[derive(Debug)]
pub(super) struct PrunedTensor {
    pub(super) name: String,
    /// The tensor modules compute with; its identity never changes.
    pub(super) target: Tensor,
    pub(super) orig: Tensor,
    pub(super) mask: Tensor,
    /// The methods applied so far, oldest first (what PyTorch's `PruningContainer` lists).
    pub(super) history: Vec<String>,
    /// What `target` was last written from (see [`PrunedTensor::stamp`]): while it is
    /// unchanged, reapplying the mask would write the same values.
    pub(super) written_at: Option<Stamp>,
    /// Routes the gradient of `target` to `orig`, times the mask.
    pub(super) redirect: GradRedirect,
    /// Whether the mask is kept as booleans: `VarStore::set_kind` casts every variable, the
    /// mask included, and a boolean mask is put back as one (see [`PrunedTensor::follow_orig`]).
    pub(super) bool_mask: bool,
}

/// See [`PrunedTensor::stamp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamp {
    versions: (i64, i64, i64),
    deliveries: u64,
}

impl PrunedTensor {
    /// `mask * orig` as PyTorch's `apply_mask` computes it, in a new tensor.
    pub(super) fn masked_orig(&self) -> Result<Tensor> {
        let out = Tensor::f_empty_like(&self.orig)?;
        write_masked(&out, &self.orig, &self.mask)?;
        Ok(out)
    }

    /// Replaces the mask's values (the buffer keeps its identity); `target` is stale until the
    /// next [`write_target`](Self::write_target).
    pub(super) fn set_mask(&mut self, mask: &Tensor) -> Result<()> {
        self.mask.f_set_data(mask)?;
        self.bool_mask = mask.kind() == Kind::Bool;
        self.written_at = None;
        Ok(())
    }

    /// Whether `target` holds `orig * mask` as they are now.
    pub(super) fn is_written(&self) -> bool {
        self.written_at.is_some() && self.written_at == self.stamp() && !self.redirect.moved()
    }

    /// What `target`'s values depend on. In-place edits bump version counters, but optimizers
    /// update `orig` through `.data()`, which does not: they only update it when it has a
    /// gradient, so a gradient delivered since the last write, or one still pending, counts as
    /// a change too.
    fn stamp(&self) -> Option<Stamp> {
        if self.orig.grad().defined() {
            return None;
        }
        Some(Stamp {
            versions: (
                self.orig.internal_version(),
                self.mask.internal_version(),
                self.target.internal_version(),
            ),
            deliveries: self.redirect.deliveries(),
        })
    }

    /// Writes the masked values into `target`, unless they are there already.
    pub(super) fn write_target(&mut self) -> Result<()> {
        if self.is_written() {
            return Ok(());
        }
        tch::no_grad(|| write_masked(&self.target, &self.orig, &self.mask))?;
        self.written_at = self.stamp();
        self.redirect.mark_placed();
        Ok(())
    }

    /// Before a forward pass: the masked values in place, and the gradient route on the
    /// tensor's current accumulator.
    pub(super) fn refresh(&mut self) -> Result<()> {
        if self.target.requires_grad() {
            self.redirect.refresh()?;
        }
        self.write_target()
    }
}

/// Entries per piece of a masked multiply by a boolean mask. The streaming path multiplies the
/// same pieces where it needs libtorch's products (NaN, infinities), so that both paths make
/// each product in the same call of the same kernel (vectorized or not alike).
pub(crate) const MASK_PIECE: usize = 1 << 18;

/// `orig * mask` straight into `out` (which may be `orig` itself). A float mask of another dtype
/// is cast first, as PyTorch's `mask.to(orig.dtype) * orig` does; a boolean one multiplies
/// exactly.
pub(super) fn write_masked(out: &Tensor, orig: &Tensor, mask: &Tensor) -> Result<()> {
    // Same shapes (checked when planned): contiguous means one flat run of entries each.
    let flat = [out, orig, mask].iter().all(|t| t.is_contiguous());
    if mask.kind() == Kind::Bool && orig.device() == Device::Cpu && flat {
        // libtorch multiplies a float by a bool without vectorizing (8x slower than two floats
        // on this project's machine): cast the mask a cache-sized piece at a time instead.
        const PIECE: i64 = MASK_PIECE as i64;
        let (out, orig, mask) = (out.f_view([-1])?, orig.f_view([-1])?, mask.f_view([-1])?);
        let n = orig.numel() as i64;
        for start in (0..n).step_by(PIECE as usize) {
            let len = PIECE.min(n - start);
            let piece = mask.f_narrow(0, start, len)?.f_to_kind(orig.kind())?;
            let _ = orig
                .f_narrow(0, start, len)?
                .f_mul_out(&out.f_narrow(0, start, len)?, &piece)?;
        }
        return Ok(());
    }
    let mask = match mask.kind() {
        k if k == orig.kind() || k == Kind::Bool => mask.shallow_clone(),
        _ => mask.f_to_kind(orig.kind())?,
    };
    let _ = orig.f_mul_out(out, &mask)?;
    Ok(())
}
