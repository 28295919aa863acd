//! Pruning while training: a sparsity [schedule](SparsitySchedule) per step, a
//! [`GradualPruner`] that follows it through the [`Pruner`](crate::Pruner)'s registry,
//! [`NmSparsity`] (N:M semi-structured sparsity, a [`PruningMethod`](crate::PruningMethod)),
//! [`RewindPoint`] (lottery-ticket rewinding) and the training-curve [`Recorder`].
pub use crate::model::recorder::{Record, Recorder};
pub use crate::prune::gradual::{GradualPruner, ScheduleStep};
pub use crate::prune::nm::NmSparsity;
pub use crate::prune::rewind::RewindPoint;
pub use crate::prune::schedule::{
    ConstantSchedule, CubicSchedule, LinearSchedule, SparsitySchedule, StepSchedule,
};
