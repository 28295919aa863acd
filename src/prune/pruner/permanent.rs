//! Pruning made permanent: `prune.remove` (the variable back in the store, holding the masked
//! values; `_orig` and `_mask` gone), and a prune made permanent at once, in place. One idea:
//! leaving nothing of the reparametrization behind.

use super::pruned_tensor::{write_masked, PrunedTensor};
use super::{mask_name, orig_name, Plan, Pruner, State};
use crate::error::{PruneError, Result};
use crate::prune::method::PruningMethod;
use tch::Tensor;

impl Pruner {
    /// Prunes `name` and makes it permanent at once: [`Pruner::prune`] then [`Pruner::remove`]
    /// (PyTorch's `prune.<method>(...)` then `prune.remove(...)`), for one-shot pruning before
    /// export. The result is the same, bit for bit; but a tensor not pruned before is simply
    /// multiplied by its mask in place: no `_orig` copy, no stored mask, and for structured
    /// methods (scores of the tensor's dtype) no mask of the tensor's size at all. A tensor
    /// already pruned is pruned again as usual (amounts relative to what is still unpruned),
    /// then made permanent.
    ///
    /// Being in place, it differs from `prune` then `remove` in three ways: tensors that share
    /// the variable's memory (views of it) see the pruned values too; a variable whose entries
    /// overlap in memory (an expanded tensor) is refused; and no frozen `_orig` is left in the
    /// store's trainable list. With [`Pruner::with_bool_masks`], a custom mask's values other
    /// than 0 and 1 scale the weights as in PyTorch, since no boolean mask is stored.
    ///
    /// On error nothing has changed.
    ///
    /// ```
    /// use tch::{nn, Device, Tensor};
    /// use tch_prune::{LnStructured, Pruner};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// vs.root().var_copy("w", &Tensor::from_slice(&[1f32, 1., 5., 5., -2., 2.]).view([3, 2]));
    /// let pruner = Pruner::new(&vs);
    /// pruner.prune_and_remove("w", &LnStructured::new(1, 2.0, 0)?, None)?; // the row of smallest 2-norm
    /// let w = vs.root().get("w").unwrap();
    /// assert_eq!(Vec::<f32>::try_from(&w.view([-1]))?, [0., 0., 5., 5., -2., 2.]);
    /// assert!(!pruner.is_pruned("w") && vs.root().get("w_orig").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn prune_and_remove(
        &self,
        name: &str,
        method: &dyn PruningMethod,
        importance_scores: Option<&Tensor>,
    ) -> Result<()> {
        self.prune_all(true, |state| {
            Ok(vec![state.plan(name, method, importance_scores, true)?])
        })
    }

    /// Makes the pruning of `name` permanent (`prune.remove`): the variable `name` is back in the
    /// store, trainable, holding the masked values; `_orig` and `_mask` are gone.
    ///
    /// The `_orig` tensor stays in the store's list of trainable tensors (optimizers count on
    /// that list's order) but is frozen and its storage released.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.state()?.remove(name)
    }

    /// Makes every pruning permanent, in the order the tensors were first pruned.
    pub fn remove_all(&self) -> Result<()> {
        for name in self.pruned_names() {
            self.remove(&name)?;
        }
        Ok(())
    }
}

impl State {
    /// Applies a plan and makes it permanent: `commit` then `remove`. A tensor pruned for the
    /// first time is simply multiplied by its mask in place; it never gets `_orig` or `_mask`.
    pub(crate) fn commit_permanent(&mut self, plan: Plan) -> Result<()> {
        match &plan.first {
            Some(first) => tch::no_grad(|| write_masked(&first.target, &first.target, &plan.mask)),
            // `remove` writes the masked values, once.
            None => {
                let i = self.index_of(&plan.name).expect("planned as a re-prune");
                self.tensors[i].set_mask(&plan.mask)?;
                self.remove(&plan.name)
            }
        }
    }

    /// `prune.remove`: see [`Pruner::remove`].
    fn remove(&mut self, name: &str) -> Result<()> {
        let index = self
            .index_of(name)
            .ok_or_else(|| PruneError::NotPruned(name.to_string()))?;
        self.tensors[index].write_target()?;
        // Dropping the entry removes the gradient route: `target` is a plain parameter again.
        let PrunedTensor {
            target, mut orig, ..
        } = self.tensors.remove(index);
        {
            let mut vars = self.variables.lock().expect("VarStore lock poisoned");
            vars.named_variables.remove(&orig_name(name));
            vars.named_variables.remove(&mask_name(name));
            vars.named_variables.insert(name.to_string(), target);
        }
        let _ = orig.set_requires_grad(false);
        orig.f_set_data(&Tensor::f_empty([0], (orig.kind(), orig.device()))?)?;
        Ok(())
    }
}
