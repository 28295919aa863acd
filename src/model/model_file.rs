//! A model file of any kind the crate reads, loaded into a VarStore: TorchScript, a `torch.save`
//! state dict, safetensors, or a `torch.export` archive (`.pt2`). What the CLI works on.

use crate::checkpoint::{self, CodePolicy, Format};
use crate::error::Result;
use crate::model::script_model::{add_dotted, ScriptModel};
use crate::prune::pruner::{mask_name, orig_name, Pruner};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// A model read from a file, its tensors in a [`VarStore`] under their PyTorch names.
///
/// Tied weights (names that share one tensor, as GPT-2's `transformer.wte.weight` and
/// `lm_head.weight`) are one tensor, as they are one `Parameter` in PyTorch: the store holds it
/// under its first name (for safetensors, the name the file holds), the others are aliases of
/// it ([`ModelFile::ties`]), pruning it prunes it once, and [`ModelFile::save`] writes the tie
/// as the format keeps ties: one storage in a `torch.save` zip and in TorchScript, one name
/// plus `safetensors.torch.save_model`'s metadata convention in safetensors.
#[derive(Debug)]
pub struct ModelFile {
    pub(super) format: Format,
    pub(super) contents: Contents,
    /// Alias -> the name the tensor is pruned under.
    pub(super) ties: HashMap<String, String>,
}

#[derive(Debug)]
pub(super) enum Contents {
    /// A TorchScript module, with its whole state dict's names in order: the parameters live in
    /// the module (and the store); `buffers` are the other entries as the file holds them.
    Script {
        model: ScriptModel,
        state_names: Vec<String>,
        buffers: HashMap<String, Tensor>,
    },
    /// A state dict: every tensor, in the file's order. Floating-point tensors are registered
    /// trainable (so they can be pruned), the others as buffers, and so are the tensors PyTorch
    /// registers as buffers by convention (see [`is_conventional_buffer`]). A tensor the file holds
    /// pruned (`<name>_orig` and `<name>_mask`, as PyTorch saves it) is registered as `<name>`
    /// and its mask kept for [`ModelFile::pruner`].
    Tensors {
        vs: VarStore,
        names: Vec<String>,
        masks: Vec<(String, Tensor)>,
        /// For a `.pt2` archive: the archive, written back around the new values.
        exported: Option<Exported>,
    },
}

/// What a `.pt2` archive adds to its tensors: which are buffers (`is_param` false in its
/// weights config), and the archive itself, whose other entries [`ModelFile::save`] carries over.
#[derive(Debug)]
pub(super) struct Exported {
    archive: checkpoint::Pt2Archive,
    buffers: HashSet<String>,
}

impl ModelFile {
    /// Reads `path`, recognising its format from its content, onto `device`. A TorchScript
    /// file's code is checked first ([`CodePolicy::Checked`]).
    pub fn open(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        Self::open_with(path, device, CodePolicy::Checked)
    }

    /// [`ModelFile::open`] under the given policy for TorchScript code (see
    /// [`ScriptModel::load_with`]).
    pub fn open_with(path: impl AsRef<Path>, device: Device, policy: CodePolicy) -> Result<Self> {
        let path = path.as_ref();
        let format = Format::detect(path)?;
        let (contents, ties) = match format {
            Format::TorchScript => {
                // The pure-Rust reader first: it runs nothing, and what it refuses as unsupported
                // (quantized tensors, whose modules define `__setstate__`) is said as such, before
                // the code policy or libtorch runs or prints anything.
                let state = checkpoint::read_torchscript_state(path);
                if policy == CodePolicy::Checked
                    && !matches!(state, Err(checkpoint::CheckpointError::Unsupported { .. }))
                {
                    checkpoint::check_torchscript_code(path)?;
                }
                let state = state?;
                // Checked above.
                let model = ScriptModel::load_with(path, device, CodePolicy::Trusted)?;
                let params: HashSet<&String> = model.parameter_names().iter().collect();
                let state_names = state.iter().map(|(n, _)| n.clone()).collect();
                let buffers = state
                    .into_iter()
                    .filter(|(n, _)| !params.contains(n))
                    .collect();
                // A module's tied parameters are one tensor in the store under each name.
                let vars = model.var_store().variables();
                let parameters: Vec<(String, Tensor)> = model
                    .parameter_names()
                    .iter()
                    .map(|n| (n.clone(), vars[n].shallow_clone()))
                    .collect();
                let ties = shared_names(&parameters);
                let contents = Contents::Script {
                    model,
                    state_names,
                    buffers,
                };
                (contents, ties)
            }
            Format::TorchZip | Format::Safetensors => {
                // The format is known: read it directly, not through `read_state_dict`'s
                // detection again.
                let mut tensors = match format {
                    Format::TorchZip => checkpoint::read_torch_zip_tied(path)?,
                    _ => checkpoint::read_safetensors(path)?,
                };
                if format == Format::Safetensors {
                    let metadata = checkpoint::read_safetensors_metadata(path)?;
                    add_saved_aliases(&mut tensors, &metadata);
                }
                state_contents(tensors, device)?
            }
            Format::Pt2 => {
                let (archive, tensors) = checkpoint::Pt2Archive::read(path)?;
                let ties = shared_names(&tensors);
                let buffers: HashSet<String> = tensors
                    .iter()
                    .map(|(n, _)| n)
                    .filter(|n| !archive.is_parameter(n))
                    .cloned()
                    .collect();
                let vs = VarStore::new(device);
                let mut names = Vec::with_capacity(tensors.len());
                for (name, tensor) in tensors {
                    if !ties.contains_key(&name) {
                        let trainable = tensor.is_floating_point() && !buffers.contains(&name);
                        let _ = add_dotted(&vs, &name, tensor.f_to_device(device)?, trainable);
                    }
                    names.push(name);
                }
                let contents = Contents::Tensors {
                    vs,
                    names,
                    masks: Vec::new(),
                    exported: Some(Exported { archive, buffers }),
                };
                (contents, ties)
            }
        };
        Ok(Self {
            format,
            contents,
            ties,
        })
    }

    /// The tied names: each alias with the name its tensor is pruned under (the first of the
    /// tie in the file's order, or for safetensors the name the file holds), in the file's order.
    /// For a report that counts a tied tensor once: `Report::with_ties(&model.tensors(&pruner),
    /// &model.ties().into_iter().collect())`.
    pub fn ties(&self) -> Vec<(String, String)> {
        self.names()
            .iter()
            .filter_map(|n| self.ties.get(n).map(|c| (n.clone(), c.clone())))
            .collect()
    }

    /// The name `name`'s tensor is pruned under: itself, or for an alias of tied weights, the
    /// name of the tie's tensor.
    pub fn canonical<'a>(&'a self, name: &'a str) -> &'a str {
        self.ties.get(name).map_or(name, String::as_str)
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

    /// The store holding the file's tensors under their dotted PyTorch names.
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
    /// floating-point tensor that is not a buffer by convention), in the file's order, with
    /// their number of dimensions. Each name of tied weights is there (see
    /// [`ModelFile::canonical`] for the one the tensor is pruned under).
    pub fn parameters(&self) -> Vec<(String, usize)> {
        let vars = self.var_store().variables();
        let names = match &self.contents {
            Contents::Script { model, .. } => model.parameter_names(),
            Contents::Tensors { names, .. } => names,
        };
        names
            .iter()
            .filter(|n| !self.is_buffer(n))
            .filter_map(|n| {
                vars.get(self.canonical(n))
                    .filter(|t| t.is_floating_point())
                    .map(|t| (n.clone(), t.dim()))
            })
            .collect()
    }

    /// The model's buffers, in the file's order: what a TorchScript module registers as one, and
    /// in a state dict the tensors PyTorch modules register as buffers by convention
    /// (`running_mean`, `running_var`, `num_batches_tracked`), in a `.pt2` archive what its
    /// weights config says is not a parameter. PyTorch cannot prune them, so
    /// neither does the CLI, whatever the format.
    pub fn buffers(&self) -> Vec<String> {
        self.names()
            .iter()
            .filter(|n| self.is_buffer(n))
            .cloned()
            .collect()
    }

    fn is_buffer(&self, name: &str) -> bool {
        match &self.contents {
            Contents::Script { buffers, .. } => buffers.contains_key(name),
            Contents::Tensors {
                exported: Some(exported),
                ..
            } => exported.buffers.contains(name),
            Contents::Tensors { .. } => is_conventional_buffer(name),
        }
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
    /// (pruned ones masked). The names of tied weights share one tensor.
    pub fn tensors(&self, pruner: &Pruner) -> Vec<(String, Tensor)> {
        let vars = self.var_store().variables();
        self.names()
            .iter()
            .map(|n| {
                let c = self.canonical(n);
                let t = pruner
                    .tensor(c)
                    .or_else(|| self.buffer(c))
                    .unwrap_or_else(|| vars[c].shallow_clone());
                (n.clone(), t.detach())
            })
            .collect()
    }

    /// The reparametrized state in the file's order, as PyTorch's `state_dict()` of the same
    /// model pruned: `<name>_orig` and `<name>_mask` in place of each pruned `<name>`. Masks are
    /// written in the dtype PyTorch would have given them (boolean masks as the weight's dtype).
    /// An alias of a pruned tied tensor holds its `_orig` values, as the other modules of a tied
    /// PyTorch model still hold the `Parameter` that became `<name>_orig`.
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
            let c = self.canonical(name);
            match (pruner.orig(c), pruner.mask(c)) {
                (Some(orig), _) if c != name => state.push((name.clone(), orig.detach(), None)),
                (Some(orig), Some(mask)) => {
                    let kind = (mask.kind() == Kind::Bool).then(|| orig.kind());
                    state.push((orig_name(name), orig.detach(), None));
                    state.push((mask_name(name), mask, kind));
                }
                _ => {
                    let t = self.buffer(c).unwrap_or_else(|| vars[c].shallow_clone());
                    state.push((name.clone(), t.detach(), None));
                }
            }
        }
        state
    }

    /// Writes the model in its own format: TorchScript as TorchScript (structure kept), a state
    /// dict as the same kind of state dict, a `.pt2` archive as the same archive with new values
    /// for its weights (every other entry carried over byte for byte). Pruned tensors are written masked; tied weights stay
    /// tied (one storage in a `torch.save` zip; in safetensors, one name and the others in the
    /// metadata as `safetensors.torch.save_model` records them). Atomic.
    pub fn save(&self, path: impl AsRef<Path>, pruner: &Pruner) -> Result<()> {
        match (&self.contents, self.format) {
            (Contents::Script { model, .. }, _) => model.save(path),
            (Contents::Tensors { .. }, Format::Safetensors) => {
                let tensors: Vec<(String, Tensor)> = self
                    .tensors(pruner)
                    .into_iter()
                    .filter(|(n, _)| !self.ties.contains_key(n))
                    .collect();
                Ok(checkpoint::write_safetensors_with_metadata(
                    path, &tensors, &self.ties,
                )?)
            }
            (
                Contents::Tensors {
                    exported: Some(exported),
                    ..
                },
                _,
            ) => Ok(exported.archive.write(path, &self.tensors(pruner))?),
            (Contents::Tensors { .. }, _) => {
                Ok(checkpoint::write_torch_zip(path, &self.tensors(pruner))?)
            }
        }
    }
}

/// A state dict's contents: `<name>_orig`/`<name>_mask` pairs taken as pruned tensors, ties
/// found, every tensor registered (see [`Contents::Tensors`]).
pub(super) fn state_contents(
    mut tensors: Vec<(String, Tensor)>,
    device: Device,
) -> Result<(Contents, HashMap<String, String>)> {
    let masks = take_masks(&mut tensors);
    let ties = shared_names(&tensors);
    let vs = VarStore::new(device);
    let mut names = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        // An alias is not a variable of its own: its canonical name stands for it.
        if !ties.contains_key(&name) {
            let trainable = tensor.is_floating_point() && !is_conventional_buffer(&name);
            let _ = add_dotted(&vs, &name, tensor.f_to_device(device)?, trainable);
        }
        names.push(name);
    }
    Ok((
        Contents::Tensors {
            vs,
            names,
            masks,
            exported: None,
        },
        ties,
    ))
}

/// Names whose tensors are one tensor (the same memory, shape, strides and dtype: tied weights):
/// each later name -> the first one.
fn shared_names(tensors: &[(String, Tensor)]) -> HashMap<String, String> {
    let mut first: HashMap<TensorIdentity, &str> = HashMap::new();
    let mut ties = HashMap::new();
    for (name, t) in tensors {
        let Some(id) = TensorIdentity::of(t) else {
            continue;
        };
        match first.get(&id) {
            Some(c) => {
                ties.insert(name.clone(), c.to_string());
            }
            None => {
                first.insert(id, name);
            }
        }
    }
    ties
}

/// What makes two tensors one: the same memory seen the same way. Empty tensors have no memory
/// to share.
#[derive(Hash, PartialEq, Eq)]
struct TensorIdentity {
    data: usize,
    device: String,
    kind: String,
    size: Vec<i64>,
    stride: Vec<i64>,
}

impl TensorIdentity {
    fn of(t: &Tensor) -> Option<Self> {
        (t.numel() > 0).then(|| TensorIdentity {
            data: t.data_ptr() as usize,
            device: format!("{:?}", t.device()),
            kind: format!("{:?}", t.kind()),
            size: t.size(),
            stride: t.stride(),
        })
    }
}

/// The names `safetensors.torch.save_model` left out of a file because they are tied to a name
/// it kept (its metadata maps each to the kept name): added back, after the kept name, as the
/// same tensor. Other metadata (`"format": "pt"`, a user's notes) names no tensor and is ignored.
pub(super) fn add_saved_aliases(
    tensors: &mut Vec<(String, Tensor)>,
    metadata: &HashMap<String, String>,
) {
    let present: HashSet<String> = tensors.iter().map(|(n, _)| n.clone()).collect();
    let mut aliases: HashMap<&str, Vec<&str>> = HashMap::new();
    for (alias, kept) in metadata {
        if present.contains(kept) && !present.contains(alias) {
            aliases.entry(kept.as_str()).or_default().push(alias);
        }
    }
    if aliases.is_empty() {
        return;
    }
    let mut out = Vec::with_capacity(tensors.len() + aliases.len());
    for (name, tensor) in tensors.drain(..) {
        let mut tied = aliases.remove(name.as_str()).unwrap_or_default();
        tied.sort_unstable();
        let shared: Vec<(String, Tensor)> = tied
            .into_iter()
            .map(|a| (a.to_string(), tensor.shallow_clone()))
            .collect();
        out.push((name, tensor));
        out.extend(shared);
    }
    *tensors = out;
}

/// The names PyTorch's own modules give their buffers (batch norm's statistics): a state dict
/// or a safetensors file does not say which tensors are buffers, but a tensor with one of these
/// names is one in every model built from `torch.nn`.
pub(crate) fn is_conventional_buffer(name: &str) -> bool {
    const BUFFERS: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];
    let leaf = name.rsplit('.').next().unwrap_or(name);
    BUFFERS.contains(&leaf)
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
