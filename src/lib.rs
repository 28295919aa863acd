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
//! | `torch.ao.pruning.scheduler.CubicSL` (gradual pruning) | [`CubicSchedule`] with a [`GradualPruner`]; also [`LinearSchedule`], [`StepSchedule`], [`ConstantSchedule`] |
//! | `WeightNormSparsifier(sparse_block_shape=(1, 4), zeros_per_block=2)` (2:4) | [`NmSparsity`] |
//! | lottery-ticket rewinding | [`RewindPoint`] |
//! | plotting a training run | [`Recorder`] (CSV, and SVG with the `plot` feature) |
//!
//! Amounts follow Python's types: `0.3` (an `f64`) is a fraction, `3` (an `i64`) a count.
//!
//! Using the crate from a binary crate (libtorch at build and run time, CUDA kept linked, the
//! `cli` feature): see the README's "Using tch-prune in your crate". [`backend::Backend`]
//! reports whether libtorch's CUDA backend is loaded.
#![warn(missing_docs)]

// The layers, bottom up (see CONTRIBUTING.md): `checkpoint` (file formats; depends on nothing
// else in the crate), `error`, `ffi` (every call into the crate's C++), `prune` (the pruning
// core), `model` (whole model files), and `backend` (what of libtorch the process has, beside
// them). `checkpoint` and `backend` are
// public modules; everything else is re-exported here.
pub mod backend;
pub mod checkpoint;
mod error;
mod ffi;
mod model;
mod prune;

pub use checkpoint::{first_line, CodePolicy};
pub use error::{PruneError, Result};
pub use model::{
    ChannelAnalysis, ChannelGroup, GroupChange, ModelFile, Record, Recorder, Removed, Report,
    ScriptModel, ShrinkOptions, ShrinkReport, Slice, StreamReport, StreamStep, StreamedModel,
    TensorReport, WRITE_CHUNK,
};
pub use prune::amount::Amount;
pub use prune::container::combine_masks;
pub use prune::custom::CustomFromMask;
pub use prune::gradual::{GradualPruner, ScheduleStep};
pub use prune::method::{PruningMethod, PruningType};
pub use prune::module::{Pruned, PrunedT};
pub use prune::nm::NmSparsity;
pub use prune::pruner::{mask_name, orig_name, Pruner};
pub use prune::rewind::RewindPoint;
pub use prune::schedule::{
    ConstantSchedule, CubicSchedule, LinearSchedule, SparsitySchedule, StepSchedule,
};
pub use prune::structured::{LnStructured, Norm, RandomStructured};
pub use prune::unstructured::{Identity, L1Unstructured, RandomUnstructured};

// The README's example is compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
