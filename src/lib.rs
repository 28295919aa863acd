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
//! | `torch.ao.pruning.scheduler.CubicSL` (gradual pruning) | [`train::CubicSchedule`] with a [`train::GradualPruner`]; also [`train::LinearSchedule`], [`train::StepSchedule`], [`train::ConstantSchedule`] |
//! | `WeightNormSparsifier(sparse_block_shape=(1, 4), zeros_per_block=2)` (2:4) | [`train::NmSparsity`] |
//! | Wanda's `prune_wanda`, SparseGPT's `fasterprune` (calibrated one-shot pruning of LLMs) | [`Pruner::wanda`], [`Pruner::sparsegpt`], [`Pruner::prune_calibrated`], statistics by [`Calibration`] |
//! | lottery-ticket rewinding | [`train::RewindPoint`] |
//! | plotting a training run | [`train::Recorder`] (CSV, and SVG with the `plot` feature) |
//! | `torch.jit.load`, `torch.load`, `safetensors` files | [`model::ScriptModel`], [`model::ModelFile`], [`model::StreamedModel`] (larger than memory) |
//! | Torch-Pruning's channel removal | [`model::ScriptModel::shrink`], options and reports in [`shrink`] |
//!
//! Amounts follow Python's types: `0.3` (an `f64`) is a fraction, `3` (an `i64`) a count.
//!
//! The crate root holds the pruning core, what a `torch.nn.utils.prune` user looks for. The
//! rest is grouped by job:
//!
//! | namespace | what for |
//! |---|---|
//! | [`train`] | pruning while training: schedules, gradual pruning, N:M sparsity, rewinding, the training-curve recorder |
//! | [`model`] | whole model files: TorchScript modules as a `VarStore`, any model file pruned in its own format, checkpoints larger than memory, sparsity reports |
//! | [`shrink`] | removing channels from a TorchScript model: the analysis, its options and its report |
//! | [`checkpoint`] | the file formats underneath (`torch.save` zips, safetensors, TorchScript archives, shards), read without running code and written all or nothing |
//! | [`backend`] | what of libtorch the process has (its version, whether CUDA is loaded) |
//!
//! Using the crate from a binary crate (libtorch at build and run time, CUDA kept linked, the
//! `cli` feature): see the README's "Using tch-prune in your crate".
#![warn(missing_docs)]

// The layers, bottom up (see CONTRIBUTING.md): `checkpoint` (file formats; depends on nothing
// else in the crate), `error`, `ffi` (every call into the crate's C++), `prune` (the pruning
// core), `model` (whole model files), and `backend` (what of libtorch the process has, beside
// them). `train` and `shrink` only gather what those layers define, by job.
pub mod backend;
pub mod checkpoint;
pub mod distributed;
mod error;
mod ffi;
pub mod model;
mod prune;
pub mod shrink;
pub mod train;

pub use error::{PruneError, Result};
pub use prune::amount::Amount;
pub use prune::calibrated::{CalibratedMethod, LayerReport, Order};
pub use prune::calibration::{Calibration, LayerStats, Observed};
pub use prune::container::combine_masks;
pub use prune::custom::CustomFromMask;
pub use prune::method::{PruningMethod, PruningType};
pub use prune::module::{Pruned, PrunedT};
pub use prune::pruner::{mask_name, orig_name, Pruner};
pub use prune::sparsegpt::{Solution, SparseGpt};
pub use prune::sparsity::Sparsity;
pub use prune::structured::{LnStructured, Norm, RandomStructured};
pub use prune::unstructured::{Identity, L1Unstructured, RandomUnstructured};
pub use prune::wanda::{wanda_scores, Wanda};

// The Rust blocks of the README and of the documents in docs/ are compiled and run as doc
// tests: one such struct per file that holds any.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[doc = include_str!("../docs/training.md")]
#[cfg(doctest)]
pub struct TrainingDoctests;

#[doc = include_str!("../docs/activation-aware.md")]
#[cfg(doctest)]
pub struct ActivationAwareDoctests;

#[doc = include_str!("../docs/distributed.md")]
#[cfg(doctest)]
pub struct DistributedDoctests;

#[doc = include_str!("../docs/pt2.md")]
#[cfg(doctest)]
pub struct Pt2Doctests;
