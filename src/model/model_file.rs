//! A model file of any kind the crate reads, loaded into a VarStore: TorchScript, a `torch.save`
//! state dict, or safetensors. What the CLI works on.

use crate::checkpoint::{self, Format};
use crate::error::Result;
use crate::model::script_model::{add_dotted, ScriptModel};
use crate::prune::pruner::{mask_name, orig_name, Pruner};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// A model read from a file, its tensors in a [`VarStore`] under their PyTorch names.
#[derive(Debug)]
pub struct ModelFile {
    format: Format,
    contents: Contents,
}

#[derive(Debug)]
enum Contents {
    /// A TorchScript module, with its whole state dict's names in order: the parameters live in
    /// the module (and the store); `buffers` are the other entries as the file holds them.
    Script {
        model: ScriptModel,
        state_names: Vec<String>,
        buffers: HashMap<String, Tensor>,
    },
    /// A state dict: every tensor, in the file's order. Floating-point tensors are registered
    /// trainable (so they can be pruned), the others as buffers. A tensor the file holds
    /// pruned (`<name>_orig` and `<name>_mask`, as PyTorch saves it) is registered as `<name>`
    /// and its mask kept for [`ModelFile::pruner`].
    Tensors {
        vs: VarStore,
        names: Vec<String>,
        masks: Vec<(String, Tensor)>,
    },
}

impl ModelFile {
    /// Reads `path`, recognising its format from its content, onto `device`.
    pub fn open(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        let path = path.as_ref();
        let format = Format::detect(path)?;
        let contents = match format {
            Format::TorchScript => {
                let model = ScriptModel::load(path, device)?;
                let state = checkpoint::read_torchscript_state(path)?;
                let params: HashSet<&String> = model.parameter_names().iter().collect();
                let state_names = state.iter().map(|(n, _)| n.clone()).collect();
                let buffers = state
                    .into_iter()
                    .filter(|(n, _)| !params.contains(n))
                    .collect();
                Contents::Script {
                    model,
                    state_names,
                    buffers,
                }
            }
            Format::TorchZip | Format::Safetensors => {
                // The format is known: read it directly, not through `read_state_dict`'s
                // detection again.
                let mut tensors = match format {
                    Format::TorchZip => checkpoint::read_torch_zip(path)?,
                    _ => checkpoint::read_safetensors(path)?,
                };
                let masks = take_masks(&mut tensors);
                let vs = VarStore::new(device);
                let mut names = Vec::with_capacity(tensors.len());
                for (name, tensor) in tensors {
                    let float = tensor.is_floating_point();
                    let _ = add_dotted(&vs, &name, tensor.f_to_device(device)?, float);
                    names.push(name);
                }
                Contents::Tensors { vs, names, masks }
            }
        };
        Ok(Self { format, contents })
    }

    /// A pruner for the model's store. Tensors the file holds pruned are pruned again with
    /// exactly their masks, so pruning resumes where PyTorch left it. Otherwise its masks are
    /// boolean (a quarter of the memory): what [`ModelFile::reparametrized_state`] writes is the
    /// same either way.
    pub fn pruner(&self) -> Result<Pruner> {
        let pruner = match &self.contents {
            Contents::Tensors { masks, .. } if !masks.is_empty() => Pruner::new(self.var_store()),
            _ => Pruner::with_bool_masks(self.var_store()),
        };
        if let Contents::Tensors { masks, .. } = &self.contents {
            for (name, mask) in masks {
                pruner.set_exact_mask(name, mask)?;
            }
        }
        Ok(pruner)
    }

    /// The file's format; [`ModelFile::save`] writes the same one.
    pub fn format(&self) -> Format {
        self.format
    }

    pub fn var_store(&self) -> &VarStore {
        match &self.contents {
            Contents::Script { model, .. } => model.var_store(),
            Contents::Tensors { vs, .. } => vs,
        }
    }

    /// The TorchScript module, for a TorchScript file.
    pub fn script(&self) -> Option<&ScriptModel> {
        match &self.contents {
            Contents::Script { model, .. } => Some(model),
            Contents::Tensors { .. } => None,
        }
    }

    /// The names of the tensors that can be pruned (parameters; for a state dict, every
    /// floating-point tensor), in the file's order, with their number of dimensions.
    pub fn parameters(&self) -> Vec<(String, usize)> {
        let vars = self.var_store().variables();
        let names = match &self.contents {
            Contents::Script { model, .. } => model.parameter_names(),
            Contents::Tensors { names, .. } => names,
        };
        names
            .iter()
            .filter_map(|n| {
                vars.get(n)
                    .filter(|t| t.is_floating_point())
                    .map(|t| (n.clone(), t.dim()))
            })
            .collect()
    }

    /// Every tensor's name, in the file's order (buffers of a TorchScript module included).
    fn names(&self) -> &[String] {
        match &self.contents {
            Contents::Script { state_names, .. } => state_names,
            Contents::Tensors { names, .. } => names,
        }
    }

    /// A tensor that is not a parameter of the TorchScript module, as the file holds it.
    fn buffer(&self, name: &str) -> Option<Tensor> {
        match &self.contents {
            Contents::Script { buffers, .. } => buffers.get(name).map(Tensor::shallow_clone),
            Contents::Tensors { .. } => None,
        }
    }

    /// Every tensor under its original name, in the file's order, as modules compute with them
    /// (pruned ones masked).
    pub fn tensors(&self, pruner: &Pruner) -> Vec<(String, Tensor)> {
        let vars = self.var_store().variables();
        self.names()
            .iter()
            .map(|n| {
                let t = pruner
                    .tensor(n)
                    .or_else(|| self.buffer(n))
                    .unwrap_or_else(|| vars[n].shallow_clone());
                (n.clone(), t.detach())
            })
            .collect()
    }

    /// The reparametrized state in the file's order, as PyTorch's `state_dict()` of the same
    /// model pruned: `<name>_orig` and `<name>_mask` in place of each pruned `<name>`. Masks are
    /// written in the dtype PyTorch would have given them (boolean masks as the weight's dtype).
    ///
    /// Boolean masks are converted here, all of them at once (on the model's device); to write
    /// the state to a file, [`ModelFile::reparametrized_entries`] and
    /// [`write_safetensors_as`](checkpoint::write_safetensors_as) convert one mask at a time,
    /// as it is copied to the host.
    pub fn reparametrized_state(&self, pruner: &Pruner) -> Result<Vec<(String, Tensor)>> {
        self.reparametrized_entries(pruner)
            .into_iter()
            .map(|(name, t, kind)| {
                Ok(match kind {
                    Some(kind) => (name, t.f_to_kind(kind)?),
                    None => (name, t),
                })
            })
            .collect()
    }

    /// [`ModelFile::reparametrized_state`] before any conversion: each tensor with the dtype it
    /// is to be written as when that is not its own (a boolean mask: its weight's dtype), for
    /// [`write_safetensors_as`](checkpoint::write_safetensors_as). Nothing is copied: the
    /// entries hold the model's tensors (`_orig` detached, so it outlives
    /// [`Pruner::remove`](crate::Pruner::remove)).
    pub fn reparametrized_entries(&self, pruner: &Pruner) -> Vec<(String, Tensor, Option<Kind>)> {
        let vars = self.var_store().variables();
        let mut state = Vec::new();
        for name in self.names() {
            match (pruner.orig(name), pruner.mask(name)) {
                (Some(orig), Some(mask)) => {
                    let kind = (mask.kind() == Kind::Bool).then(|| orig.kind());
                    state.push((orig_name(name), orig.detach(), None));
                    state.push((mask_name(name), mask, kind));
                }
                _ => {
                    let t = self
                        .buffer(name)
                        .unwrap_or_else(|| vars[name].shallow_clone());
                    state.push((name.clone(), t.detach(), None));
                }
            }
        }
        state
    }

    /// Writes the model in its own format: TorchScript as TorchScript (structure kept), a state
    /// dict as the same kind of state dict. Pruned tensors are written masked. Atomic.
    pub fn save(&self, path: impl AsRef<Path>, pruner: &Pruner) -> Result<()> {
        match (&self.contents, self.format) {
            (Contents::Script { model, .. }, _) => model.save(path),
            (Contents::Tensors { .. }, Format::Safetensors) => {
                Ok(checkpoint::write_safetensors(path, &self.tensors(pruner))?)
            }
            (Contents::Tensors { .. }, _) => {
                Ok(checkpoint::write_torch_zip(path, &self.tensors(pruner))?)
            }
        }
    }
}

/// Takes the `<name>_mask` entries of tensors saved pruned out of `tensors`, renaming each
/// `<name>_orig` to `<name>` in place; returns the masks by tensor name.
fn take_masks(tensors: &mut Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let names: std::collections::HashSet<String> = tensors.iter().map(|(n, _)| n.clone()).collect();
    let pruned = |n: &str, suffix: &str, other: &str| {
        n.strip_suffix(suffix)
            .filter(|base| names.contains(&format!("{base}{other}")) && !names.contains(*base))
            .map(str::to_string)
    };
    let mut masks = Vec::new();
    tensors.retain_mut(|(name, tensor)| {
        if let Some(base) = pruned(name, "_mask", "_orig") {
            masks.push((base, tensor.shallow_clone()));
            return false;
        }
        if let Some(base) = pruned(name, "_orig", "_mask") {
            *name = base;
        }
        true
    });
    masks
}
