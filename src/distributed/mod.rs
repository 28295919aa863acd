//! Process groups (public module `tch_prune::distributed`): the ranks of a data-parallel or
//! sharded job, or of a checkpoint pruned by several processes, talking through PyTorch's own
//! c10d: the `TCPStore` rendezvous that `torchrun` hosts, and Gloo.
//!
//! [`ProcessGroup::from_env`] joins the group the launcher describes, with the variables of
//! `torch.distributed`'s `env://` (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`), so that `torchrun --nproc-per-node 4 --no-python ./my-binary` works, as do
//! `mpirun`-style launchers or variables set by hand. Its collectives are Gloo's on CPU
//! tensors; CUDA tensors go through NCCL when the group is joined with [`Backend::Nccl`], else
//! they are staged through the CPU (`docs/distributed.md`).
//!
//! What the pruning calls built on it guarantee (identical masks on every rank, exact global
//! selection over tensors spread over the ranks) is written in `docs/distributed.md`.
//!
//! ```no_run
//! use tch::Tensor;
//! use tch_prune::distributed::{ProcessGroup, ReduceOp};
//! // Under `torchrun --nproc-per-node 2 --no-python ./this-binary`:
//! let group = ProcessGroup::from_env()?;
//! let t = Tensor::from_slice(&[group.rank() as f32 + 1.0]);
//! group.all_reduce(&t, ReduceOp::Sum)?;
//! assert_eq!(t.double_value(&[0]), 3.0); // 1 + 2
//! # Ok::<(), tch_prune::PruneError>(())
//! ```

mod backend;
mod config;
mod digest;
mod group;

pub use backend::Backend;
pub use config::GroupConfig;
pub use digest::mask_digest;
pub use group::{ProcessGroup, ReduceOp};
