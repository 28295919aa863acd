//! TorchScript modules whose parameters live in a VarStore under their PyTorch names.

use crate::checkpoint::{
    atomic_write, check_torchscript_code, check_torchscript_pickles, CodePolicy,
};
use crate::error::{first_line, PruneError, Result};
use crate::ffi::{self, FfiError};
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
/// use tch_prune::Pruner;
/// use tch_prune::model::ScriptModel;
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
    /// Loads a TorchScript file onto `device`, after checking its code under
    /// [`CodePolicy::Checked`]: a file whose code libtorch would run while loading it, or that
    /// reaches files, processes or the network, is refused before libtorch sees it (see
    /// [`code_policy`](crate::checkpoint::code_policy)).
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        Self::load_with(path, device, CodePolicy::Checked)
    }

    /// [`ScriptModel::load`] under the given code policy. With [`CodePolicy::Trusted`] the file
    /// goes to libtorch unchecked, and its `__setstate__` methods run as it loads: only for
    /// files you would run as programs.
    pub fn load_with(path: impl AsRef<Path>, device: Device, policy: CodePolicy) -> Result<Self> {
        let path = path.as_ref();
        if policy == CodePolicy::Checked {
            check_torchscript_code(path)?;
        }
        // Whatever the policy: libtorch unpickles these while it loads, running the C++
        // `__setstate__` of custom classes on the file's state, and quantized models are
        // refused as unsupported (SECURITY.md, promises 1 and 10).
        check_torchscript_pickles(path)?;
        let module =
            CModule::load_on_device(path, device).map_err(|source| PruneError::TorchScript {
                path: path.to_path_buf(),
                action: "load",
                source,
            })?;
        Self::registered(module, device)
    }

    /// The module with its parameters registered in a store of their own. Parameters are
    /// registered trainable so that they can be pruned (tch can only make floating-point tensors
    /// trainable); those frozen in Python stay frozen: optimizers skip tensors without gradients.
    fn registered(module: CModule, device: Device) -> Result<Self> {
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

    /// A parameter or buffer of the module by its dotted name (`bn.running_var`): the tensor the
    /// module computes with, not a copy.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        Ok(ffi::get_tensor(&self.module, name)?)
    }

    /// The TorchScript module itself.
    pub fn module(&self) -> &CModule {
        &self.module
    }

    /// Replaces the module (after a rewrite that changed its parameters' shapes) and registers
    /// its parameters again.
    pub(crate) fn replace_module(&mut self, module: CModule) -> Result<()> {
        *self = Self::registered(module, self.vs.device())?;
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

    /// Writes the module as TorchScript, atomically, with every tensor on the CPU, whatever
    /// device the module runs on: `torch.jit.load` restores tensors to the device they were
    /// saved from and fails where it does not exist, so a file saved from a GPU would load
    /// only on a machine with that GPU (`cuda:1` on a machine with two). A module on the CPU
    /// is written as it is; one elsewhere from a copy on the CPU, made a tensor at a time
    /// (host memory: the module's size; the module itself is not touched). Pruned tensors are
    /// written with their masked values (what the module computes with); call `remove` first
    /// to make that permanent on the Rust side too.
    ///
    /// Device names written into the module's code (a traced `torch.device("cuda")`) stay as
    /// they are: only its tensors are moved.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_on(path, Device::Cpu)
    }

    /// [`ScriptModel::save`] with the tensors on `device` (the CPU or `Device::Cuda(n)`): the
    /// device `torch.jit.load` will put them on.
    pub fn save_on(&self, path: impl AsRef<Path>, device: Device) -> Result<()> {
        self.save_with(path.as_ref(), device, false)
    }

    /// The path [`ScriptModel::save`] takes for a module on another device (a copy of the
    /// module on `device`), taken whatever the module's device: for tests on machines without
    /// a GPU. Writes the same file as `save_on`.
    #[doc(hidden)]
    pub fn save_on_through_copy(&self, path: impl AsRef<Path>, device: Device) -> Result<()> {
        self.save_with(path.as_ref(), device, true)
    }

    fn save_with(&self, path: &Path, device: Device, always_copy: bool) -> Result<()> {
        let fail = |message: String| {
            PruneError::InvalidArgument(format!(
                "{}: cannot save as TorchScript: {message}",
                path.display()
            ))
        };
        let device = match device {
            Device::Cpu => None,
            Device::Cuda(i) => Some(
                std::ffi::c_int::try_from(i).map_err(|_| fail(format!("no device cuda:{i}")))?,
            ),
            other => {
                return Err(fail(format!(
                    "{other:?} is not supported: save to Cpu or Cuda(n)"
                )))
            }
        };
        atomic_write(path, |tmp| -> Result<()> {
            ffi::save_module(&self.module, tmp, device, always_copy).map_err(|e| match e {
                FfiError::Cpp(message) => fail(message),
                FfiError::Nul(_) => fail("the path holds a NUL byte".into()),
            })
        })
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
