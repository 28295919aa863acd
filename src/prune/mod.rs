//! The pruning core: PyTorch's `torch.nn.utils.prune` on the tensors of a `VarStore`.
//!
//! From the bottom up: [`amount`] (how much to prune), [`selection`] (which entries are the
//! smallest, as `torch.topk` picks them: the tensor operations, the radix select, the streamed
//! threshold, keys, threads), [`method`] (the `PruningMethod` trait and the checks all methods
//! share), the methods ([`unstructured`], [`structured`], [`custom`]), [`container`] (combining
//! a new mask with the previous one, as `PruningContainer` does), [`pruner`] (the registry of
//! pruned tensors: reparametrization and its names, one pruned tensor reapplied before forward,
//! PyTorch's `prune.<method>` functions, `remove` and pruning made permanent at once, following
//! the store to another device or dtype), and extensions of the registry: [`global`] pruning (over
//! the ranks of a process group too: [`across`], with the check that replicas agree),
//! [`state`] loading and the [`module`] wrappers (the gradient hook the registry installs is
//! C++: `crate::ffi::GradRedirect`). Pruning while training: [`nm`] (N:M semi-structured
//! sparsity, a method), [`schedule`] (sparsity per step), [`gradual`] (pruning up to a schedule
//! through the registry) and [`rewind`] (lottery-ticket rewinding). Pruning from what the layers
//! see: [`calibration`] (the statistics of each layer's inputs, gathered in forward passes),
//! [`sparsity`] (a fraction or an N:M pattern), the methods [`wanda`] and [`sparsegpt`], and
//! [`calibrated`] (many layers at once, one-shot or block by block). Nothing here reads or
//! writes files.

pub(crate) mod across;
pub(crate) mod amount;
pub(crate) mod calibrated;
pub(crate) mod calibration;
pub(crate) mod container;
pub(crate) mod custom;
pub(crate) mod global;
pub(crate) mod gradual;
pub(crate) mod method;
pub(crate) mod module;
pub(crate) mod nm;
pub(crate) mod pruner;
pub(crate) mod rewind;
pub(crate) mod schedule;
pub(crate) mod selection;
pub(crate) mod sparsegpt;
pub(crate) mod sparsity;
pub(crate) mod state;
pub(crate) mod structured;
pub(crate) mod unstructured;
pub(crate) mod wanda;
