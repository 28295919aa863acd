//! Modules whose forward pass reapplies the masks first: the registry as forward pre-hooks.

use crate::prune::pruner::Pruner;
use tch::nn::{Module, ModuleT};
use tch::Tensor;

/// An `nn::Module` whose every `forward` runs with the masks of its [`Pruner`] applied
/// (made by [`Pruner::wrap`]). It keeps working when tensors are pruned further or made
/// permanent through the same pruner.
#[derive(Debug)]
pub struct Pruned<M> {
    module: M,
    pruner: Pruner,
}

/// The `nn::ModuleT` counterpart of [`Pruned`] (made by [`Pruner::wrap_t`]), for models with
/// batch norm or dropout.
#[derive(Debug)]
pub struct PrunedT<M> {
    module: M,
    pruner: Pruner,
}

macro_rules! wrapper_accessors {
    ($wrapper:ident) => {
        impl<M> $wrapper<M> {
            pub(crate) fn new(module: M, pruner: Pruner) -> Self {
                Self { module, pruner }
            }

            /// The wrapped module.
            pub fn inner(&self) -> &M {
                &self.module
            }

            /// The pruner whose masks are applied.
            pub fn pruner(&self) -> &Pruner {
                &self.pruner
            }

            /// Unwraps the module.
            pub fn into_inner(self) -> M {
                self.module
            }
        }
    };
}
wrapper_accessors!(Pruned);
wrapper_accessors!(PrunedT);

impl Pruner {
    /// Wraps an `nn::Module` so that each `forward` reapplies the masks first.
    pub fn wrap<M: tch::nn::Module>(&self, module: M) -> Pruned<M> {
        Pruned::new(module, self.clone())
    }

    /// Wraps an `nn::ModuleT` (batch norm, dropout, vision models) likewise.
    pub fn wrap_t<M: tch::nn::ModuleT>(&self, module: M) -> PrunedT<M> {
        PrunedT::new(module, self.clone())
    }
}

// `nn::Module::forward` cannot return an error; reapplying a mask only fails if libtorch
// cannot allocate, which tch's own modules also turn into a panic.
const APPLY_FAILED: &str = "tch-prune: reapplying the pruning masks failed";

impl<M: Module> Module for Pruned<M> {
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.pruner
            .forward(|| self.module.forward(xs))
            .expect(APPLY_FAILED)
    }
}

impl<M: ModuleT> ModuleT for PrunedT<M> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.pruner
            .forward(|| self.module.forward_t(xs, train))
            .expect(APPLY_FAILED)
    }
}
