//! # tch-prune
//!
//! PyTorch's `torch.nn.utils.prune` for [tch](https://docs.rs/tch) (libtorch): the same masks,
//! bit for bit, on the tensors of a `tch::nn::VarStore`, with the masks kept applied before every
//! forward pass and made permanent on demand.
//!
//! | PyTorch | tch-prune |
//! |---|---|
//! | `prune.l1_unstructured(m, "weight", 0.3)` | `pruner.l1_unstructured("fc1.weight", 0.3, None)` |
//! | `prune.random_unstructured`, `random_structured`, `ln_structured`, `identity`, `custom_from_mask` | the [`Pruner`] methods of the same names |
//! | `prune.global_unstructured(params, prune.L1Unstructured, amount=0.2)` | [`Pruner::global_unstructured`] |
//! | `prune.remove(m, "weight")`, `prune.is_pruned(m)` | [`Pruner::remove`], [`Pruner::is_pruned`] |
//! | a prune then `prune.remove`, for one-shot pruning | [`Pruner::prune_and_remove`], [`Pruner::global_unstructured_and_remove`] (in place) |
//! | forward pre-hooks | [`Pruner::wrap`], [`Pruner::forward`], [`Pruner::apply_masks`] |
//! | `BasePruningMethod` | the [`PruningMethod`] trait |
//! | `PruningContainer.compute_mask` | [`combine_masks`] |
//!
//! Amounts follow Python's types: `0.3` (an `f64`) is a fraction, `3` (an `i64`) a count.
//!
//! Using the crate from a binary crate (libtorch at build and run time, CUDA kept linked, the
//! `cli` feature): see the README's "Using tch-prune in your crate". [`backend::Backend`]
//! reports whether libtorch's CUDA backend is loaded.
#![warn(missing_docs)]

mod amount;
pub mod backend;
pub mod checkpoint;
mod container;
mod custom;
mod error;
mod global;
mod grad_redirect;
mod method;
mod model_file;
mod module;
pub mod plan;
mod pruner;
mod report;
mod selection;
mod state;
mod structured;
mod torchscript;
mod unstructured;

pub use amount::Amount;
pub use container::combine_masks;
pub use custom::CustomFromMask;
pub use error::{first_line, PruneError, Result};
pub use method::{PruningMethod, PruningType};
pub use model_file::ModelFile;
pub use module::{Pruned, PrunedT};
pub use pruner::{mask_name, orig_name, Pruner};
pub use report::{Report, TensorReport};
pub use structured::{LnStructured, Norm, RandomStructured};
pub use torchscript::ScriptModel;
pub use unstructured::{Identity, L1Unstructured, RandomUnstructured};

// The README's example is compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
