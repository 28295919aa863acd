//! The registry following its store to another device or dtype (`VarStore::set_device`,
//! `set_kind`, `half()` and the like, PyTorch's `model.to(...)`). One idea: every pruned
//! tensor put back where its `_orig` now is, whoever moved the store.

use super::pruned_tensor::PrunedTensor;
use super::{Pruner, State};
use crate::error::{PruneError, Result};
use std::sync::Arc;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

impl Pruner {
    /// Moves the store to `device` (`VarStore::set_device`) and every pruned tensor with it:
    /// `_orig`, the mask, the tensor modules compute with and the gradient route end up on
    /// `device`, and the memory they had before is released now. Calling `vs.set_device`
    /// directly works too (the pruner notices at its next use, e.g. the next forward pass
    /// through [`Pruner::wrap`]), but holds the old copy of each pruned tensor until then.
    ///
    /// As with any tch store, build the optimizer after moving: tch does not move optimizer
    /// state. Fails if `vs` is not the store this pruner was made for.
    ///
    /// ```
    /// use tch::{nn, Device, Kind};
    /// use tch_prune::Pruner;
    /// let mut vs = nn::VarStore::new(Device::Cpu);
    /// let fc = nn::linear(vs.root() / "fc", 4, 3, Default::default());
    /// let pruner = Pruner::new(&vs);
    /// pruner.l1_unstructured("fc.weight", 0.5, None)?;
    /// pruner.set_device(&mut vs, Device::cuda_if_available())?; // prune on CPU, train on the GPU
    /// pruner.set_kind(&mut vs, Kind::Double)?;
    /// assert_eq!(fc.ws.kind(), Kind::Double);
    /// assert_eq!(fc.ws.device(), vs.device());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_device(&self, vs: &mut VarStore, device: Device) -> Result<()> {
        self.check_store(vs)?;
        vs.set_device(device);
        self.state().map(drop)
    }

    /// Casts the store to `kind` (`VarStore::set_kind`, which casts every variable, as tch
    /// does) and every pruned tensor with it, as [`Pruner::set_device`] moves them. Boolean
    /// masks stay boolean; float masks take `kind`, as PyTorch's `model.to(dtype)` casts its
    /// mask buffers. `vs.set_kind`, `vs.half()`, `vs.float()`, `vs.bfloat16()` and
    /// `vs.double()` called directly are followed at the pruner's next use.
    pub fn set_kind(&self, vs: &mut VarStore, kind: Kind) -> Result<()> {
        self.check_store(vs)?;
        vs.set_kind(kind);
        self.state().map(drop)
    }

    fn check_store(&self, vs: &VarStore) -> Result<()> {
        if !Arc::ptr_eq(&self.lock().variables, &vs.variables_) {
            return Err(PruneError::ForeignVarStore);
        }
        Ok(())
    }
}

impl State {
    /// Every pruned tensor placed where its `_orig` is now, after the store was moved to
    /// another device or dtype (see [`PrunedTensor::follow_orig`]); written masked at once, so
    /// that a module's forward pass outside the pruner's wrappers sees the right values too.
    /// A few device and dtype checks when nothing moved.
    pub(crate) fn follow_store(&mut self) -> Result<()> {
        for entry in &mut self.tensors {
            if entry.follow_orig()? {
                entry.refresh()?;
            }
        }
        Ok(())
    }
}

impl PrunedTensor {
    /// Puts `target` where `_orig` is now. `VarStore::set_device`, `set_kind`, `half`, `float`,
    /// `bfloat16` and `double` convert the store's variables in place (`set_data`): `_orig` and
    /// `_mask` are among them, but `target`, which pruning took out of the store, is not. So
    /// `target` gets fresh memory of `_orig`'s device and dtype (the old memory is released),
    /// to be written from `_orig` and the mask at once; the mask follows `_orig`'s device if it
    /// was left behind, and a boolean mask that `set_kind` cast is a boolean again. The
    /// gradient hook holds `_orig` and the mask themselves, so it sees them moved; libtorch
    /// gives `target` a new gradient accumulator, which [`PrunedTensor::refresh`] hooks.
    /// Returns whether anything moved.
    fn follow_orig(&mut self) -> Result<bool> {
        let (device, kind) = (self.orig.device(), self.orig.kind());
        let mut moved = false;
        if self.mask.device() != device {
            self.mask.f_set_data(&self.mask.f_to_device(device)?)?;
            moved = true;
        }
        if self.bool_mask && self.mask.kind() != Kind::Bool {
            self.mask.f_set_data(&self.mask.f_ne(0)?)?;
            moved = true;
        }
        if self.target.device() != device || self.target.kind() != kind {
            // `_orig` was `target`'s memory (same strides), so this is `target`'s layout.
            self.target.f_set_data(&Tensor::f_empty_like(&self.orig)?)?;
            moved = true;
        }
        // Moved and back (`half()` then `float()`): same place, values rounded on the way.
        moved |= self.written_at.is_some() && self.redirect.moved();
        if moved {
            self.written_at = None;
        }
        Ok(moved)
    }
}
