//! TorchScript modules whose parameters live in a VarStore under their PyTorch names.

use crate::checkpoint::atomic_write;
use crate::error::{first_line, PruneError, Result};
use std::path::Path;
use tch::nn::VarStore;
use tch::{CModule, Device, Tensor};

/// A TorchScript module (a `.pt` written by `torch.jit.save`) loaded for pruning and training.
///
/// Its parameters are registered in a [`VarStore`] under their dotted PyTorch names
/// (`layer1.0.conv1.weight`, not tch's lossy `layer1_0_conv1_weight`), and the store's tensors
/// *are* the module's parameters: prune them with a [`Pruner`](crate::Pruner) on
/// [`ScriptModel::var_store`], run `forward` through the pruner, and the TorchScript forward
/// computes with the masked weights; [`ScriptModel::save`] writes what the module holds, so after
/// `remove` a Python `torch.jit.load` gets the pruned values with the original structure.
///
/// ```no_run
/// use tch::{Device, Kind, Tensor};
/// use tch_prune::{Pruner, ScriptModel};
/// let mut model = ScriptModel::load("model.pt", Device::cuda_if_available())?;
/// let pruner = Pruner::new(model.var_store());
/// pruner.l1_unstructured("features.0.weight", 0.5, None)?;
/// let x = Tensor::randn([1, 3, 32, 32], (Kind::Float, model.var_store().device()));
/// let y = pruner.forward(|| model.forward(&x))??;
/// pruner.remove_all()?;
/// model.save("pruned.pt")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ScriptModel {
    module: CModule,
    vs: VarStore,
    names: Vec<String>,
}

impl ScriptModel {
    /// Loads a TorchScript file onto `device`.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        let path = path.as_ref();
        let module = CModule::load_on_device(path, device).map_err(|e| {
            PruneError::InvalidArgument(format!(
                "{}: cannot load as TorchScript: {}",
                path.display(),
                first_line(&e.to_string())
            ))
        })?;
        let vs = VarStore::new(device);
        let mut names = Vec::new();
        for (name, tensor) in module.named_parameters()? {
            let requires_grad = tensor.requires_grad();
            // Parameters are registered trainable so that they can be pruned (tch can only make
            // floating-point tensors trainable); those frozen in Python stay frozen: optimizers
            // skip tensors without gradients.
            let float = tensor.is_floating_point();
            let t = add_dotted(&vs, &name, tensor, float);
            if float && !requires_grad {
                let _ = t.set_requires_grad(false);
            }
            names.push(name);
        }
        Ok(Self { module, vs, names })
    }

    /// The store holding the module's parameters (the very tensors the module computes with).
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// The parameters' names, in the module's order.
    pub fn parameter_names(&self) -> &[String] {
        &self.names
    }

    /// The TorchScript module itself.
    pub fn module(&self) -> &CModule {
        &self.module
    }

    /// Replaces the module (after a rewrite that changed its parameters' shapes) and registers
    /// its parameters again.
    pub(crate) fn replace_module(&mut self, module: CModule) -> Result<()> {
        let device = self.vs.device();
        let vs = VarStore::new(device);
        let mut names = Vec::new();
        for (name, tensor) in module.named_parameters()? {
            let requires_grad = tensor.requires_grad();
            let float = tensor.is_floating_point();
            let t = add_dotted(&vs, &name, tensor, float);
            if float && !requires_grad {
                let _ = t.set_requires_grad(false);
            }
            names.push(name);
        }
        *self = Self { module, vs, names };
        Ok(())
    }

    /// Switches the module to training (`true`) or evaluation mode, as `model.train(mode)`.
    pub fn set_train(&mut self, train: bool) -> Result<()> {
        if train {
            self.module.f_set_train()?;
        } else {
            self.module.f_set_eval()?;
        }
        Ok(())
    }

    /// Runs the module's `forward` on one input.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.module.forward_ts(&[xs])?)
    }

    /// Writes the module as TorchScript, atomically. Pruned tensors are written with their
    /// masked values (what the module computes with); call `remove` first to make that permanent
    /// on the Rust side too.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        atomic_write(path, |tmp| -> Result<()> { Ok(self.module.save(tmp)?) })
    }
}

impl tch::nn::Module for ScriptModel {
    /// Panics where libtorch fails, as tch's `CModule` does; use [`ScriptModel::forward`] to get
    /// the error instead.
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.module.forward_ts(&[xs]).unwrap_or_else(|e| {
            panic!("TorchScript forward failed: {}", first_line(&e.to_string()))
        })
    }
}

/// Registers `tensor` in `vs` under a PyTorch dotted name (`features.0.weight`), the tensor
/// itself (no copy).
pub(crate) fn add_dotted(vs: &VarStore, name: &str, tensor: Tensor, trainable: bool) -> Tensor {
    let parts: Vec<&str> = name.split('.').collect();
    let (leaf, parents) = parts.split_last().expect("split yields one part at least");
    let path = parents.iter().fold(vs.root(), |p, c| p.sub(*c));
    path.add(leaf, tensor, trainable)
}
