//! Pruned checkpoints written by PyTorch, loaded so that pruning resumes where it left off.

use crate::error::{PruneError, Result};
use crate::prune::custom::CustomFromMask;
use crate::prune::method::check_shape;
use crate::prune::pruner::Pruner;
use std::collections::{HashMap, HashSet};
use tch::Tensor;

impl Pruner {
    /// Loads a state dict (`name -> tensor`, as read by
    /// [`checkpoint::read_state_dict`](crate::checkpoint::read_state_dict)) into the store,
    /// strictly, like PyTorch's `load_state_dict(strict=True)` into a pruned model: each
    /// `<name>_orig` / `<name>_mask` pair prunes the store's variable `<name>` with exactly that
    /// mask (dtype included) and those unmasked values, whether or not it was pruned before;
    /// every other entry must name an unpruned variable of the same shape, whose values it
    /// replaces. Every variable of the store must be covered.
    ///
    /// Names and shapes are checked before anything changes, so a checkpoint that does not fit
    /// the model changes nothing; a tensor that cannot be pruned at all (a buffer saved with a
    /// mask) fails when its turn comes, after the entries before it were loaded.
    pub fn load_state_dict(&self, state: &[(String, Tensor)]) -> Result<()> {
        let vars = self.variables();
        let keys: HashSet<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
        // Tensors saved pruned: both `<name>_orig` and `<name>_mask` are present.
        let pruned_in_file = |key: &str| -> Option<String> {
            [("_orig", "_mask"), ("_mask", "_orig")]
                .iter()
                .find_map(|(suffix, other)| {
                    let name = key.strip_suffix(suffix)?;
                    keys.contains(format!("{name}{other}").as_str())
                        .then(|| name.to_string())
                })
        };
        let entries: HashMap<&str, &Tensor> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut pairs = Vec::new();
        let mut plain = Vec::new();
        let mut covered = HashSet::new();
        for (key, tensor) in state {
            if let Some(name) = pruned_in_file(key) {
                covered.insert(key.clone());
                if key.ends_with("_orig") {
                    let mask = entries[format!("{name}_mask").as_str()];
                    let current = self.current_shape(&name, &vars)?;
                    check_shape("checkpoint values", &name, &current, tensor)?;
                    check_shape("checkpoint mask", &name, &current, mask)?;
                    covered.insert(name.clone());
                    pairs.push((name, tensor, mask));
                }
                continue;
            }
            if self.is_pruned(key) {
                return Err(PruneError::StateMismatch(format!(
                    "the checkpoint holds '{key}' dense but it is pruned here: remove its pruning first, or load it and re-mask it from its zeros"
                )));
            }
            let var = vars.get(key).ok_or_else(|| {
                PruneError::StateMismatch(format!(
                    "the checkpoint holds '{key}', which the model does not have"
                ))
            })?;
            check_shape("checkpoint values", key, var, tensor)?;
            covered.insert(key.clone());
            plain.push((var.shallow_clone(), tensor));
        }
        if let Some(missing) = vars.keys().find(|n| !covered.contains(*n)) {
            return Err(PruneError::StateMismatch(format!(
                "the checkpoint has no entry for '{missing}'"
            )));
        }

        for (mut var, tensor) in plain {
            tch::no_grad(|| var.f_copy_(tensor))?;
        }
        for (name, orig, mask) in pairs {
            // The unmasked values go where `_orig` is, or will be once pruned.
            let mut unmasked = self
                .orig(&name)
                .unwrap_or_else(|| vars[&name].shallow_clone());
            tch::no_grad(|| unmasked.f_copy_(orig))?;
            self.set_exact_mask(&name, mask)?;
        }
        Ok(())
    }

    /// Prunes `name` where its current values are exactly zero: re-masks a dense checkpoint
    /// whose zeros came from pruning, so that training keeps them at zero.
    pub fn mask_from_zeros(&self, name: &str) -> Result<()> {
        let (values, _) = self.current(name)?;
        self.prune(name, &CustomFromMask::new(&values.f_ne(0)?), None)
    }

    /// The shape the tensor `name` has, pruned or not.
    fn current_shape(&self, name: &str, vars: &HashMap<String, Tensor>) -> Result<Tensor> {
        match (self.orig(name), vars.get(name)) {
            (Some(orig), _) => Ok(orig),
            (None, Some(var)) => Ok(var.shallow_clone()),
            (None, None) => Err(PruneError::UnknownTensor(name.to_string())),
        }
    }
}
