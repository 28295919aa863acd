//! The library's error type: every message names the tensor or the value that is wrong.

pub(crate) use crate::checkpoint::first_line;
use tch::TchError;

/// Everything that can go wrong in `tch_prune`. No call panics on user input: a failing call
/// returns one of these and leaves the `VarStore` and the [`Pruner`](crate::Pruner) as they were.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// Same rule as PyTorch's `_validate_pruning_amount_init`.
    #[error("invalid amount {0}: it must be a fraction in the range [0, 1] (e.g. 0.3) or a non-negative integer count (e.g. 12)")]
    InvalidAmount(String),

    /// A count larger than the number of units (entries or channels) still unpruned.
    #[error(
        "amount={amount} should be smaller than the number of parameters to prune={available}"
    )]
    AmountTooLarge {
        /// The count asked for.
        amount: i64,
        /// The units still unpruned.
        available: i64,
    },

    /// Structured pruning of a tensor with fewer than two dimensions.
    #[error("structured pruning can only be applied to multidimensional tensors: found a tensor of shape {shape:?} with {} dims", shape.len())]
    NotMultidimensional {
        /// The tensor's shape.
        shape: Vec<i64>,
    },

    /// A dimension outside the tensor's.
    #[error("invalid dim {dim} for a tensor of shape {shape:?}: it must lie in [-{n}, {n})", n = shape.len())]
    InvalidDim {
        /// The dimension asked for.
        dim: i64,
        /// The tensor's shape.
        shape: Vec<i64>,
    },

    /// A norm that `torch.norm` rejects for this tensor (`fro` over 3+ dims, `nuc` over other than 2).
    #[error("norm {norm} is not defined over {dims} reduced dims of a tensor of shape {shape:?}")]
    InvalidNorm {
        /// The norm, as PyTorch writes it.
        norm: String,
        /// The number of dimensions reduced.
        dims: usize,
        /// The tensor's shape.
        shape: Vec<i64>,
    },

    /// A name the `VarStore` does not hold.
    #[error("unknown tensor '{0}': the VarStore has no variable of that name")]
    UnknownTensor(String),

    /// A name or glob pattern that selects no parameter of a model.
    #[error("'{pattern}' matches no parameter; the parameters are {available}")]
    NoMatch {
        /// The name or pattern.
        pattern: String,
        /// The model's parameter names, for the message.
        available: String,
    },

    /// A buffer named explicitly for pruning: PyTorch registers `running_mean`, `running_var`,
    /// `num_batches_tracked` (and what a TorchScript module marks so) as buffers, and cannot
    /// prune them.
    #[error("'{0}' is a buffer, not a parameter: PyTorch cannot prune buffers (running_mean, running_var, num_batches_tracked, and a TorchScript module's buffers); name a parameter instead")]
    Buffer(String),

    /// A glob pattern that matches buffers only, which a glob never selects.
    #[error("'{pattern}' matches only buffers ({buffers} of them), which cannot be pruned: name parameters (e.g. '*.weight')")]
    OnlyBuffers {
        /// The glob pattern.
        pattern: String,
        /// How many buffers it matches.
        buffers: usize,
    },

    /// A tensor that cannot be pruned: a buffer, or not floating-point.
    #[error("'{0}' is a buffer (not trainable) or not a floating-point tensor: only trainable parameters can be pruned")]
    NotAParameter(String),

    /// Pruning would create a `_orig` or `_mask` variable whose name is taken.
    #[error("cannot prune '{name}': the VarStore already holds a variable named '{taken}'")]
    NameTaken {
        /// The tensor to prune.
        name: String,
        /// The `_orig` or `_mask` name already in use.
        taken: String,
    },

    /// `remove` of a tensor that is not pruned.
    #[error("'{0}' is not pruned: it has to be pruned before pruning can be removed")]
    NotPruned(String),

    /// Importance scores or a custom mask whose shape differs from the tensor's.
    #[error("{what} for '{name}' have shape {got:?}, but the tensor has shape {expected:?}")]
    ShapeMismatch {
        /// "importance scores" or "mask".
        what: &'static str,
        /// The tensor's name.
        name: String,
        /// The tensor's shape.
        expected: Vec<i64>,
        /// The shape given.
        got: Vec<i64>,
    },

    /// Tensors (or scores, or masks) of one call on different devices.
    #[error("pruning needs its tensors on one device: '{first}' is on {first_device:?} but '{other}' is on {other_device:?}")]
    MixedDevices {
        /// The first tensor's name.
        first: String,
        /// Its device.
        first_device: tch::Device,
        /// A tensor on another device.
        other: String,
        /// That device.
        other_device: tch::Device,
    },

    /// Global pruning with a structured method.
    #[error("global pruning supports unstructured methods only; {0} is not one")]
    NotUnstructured(String),

    /// A call that selects no tensor.
    #[error("nothing to prune: no tensor is selected")]
    NothingToPrune,

    /// An argument out of its range, named in the message.
    #[error("{0}")]
    InvalidArgument(String),

    /// Drawing an SVG plot failed (the recorder's, or the CLI's `report --svg`).
    #[error("cannot draw {what}: {reason}")]
    Plot {
        /// What was being drawn.
        what: String,
        /// plotters' error.
        reason: String,
    },

    /// Reading or writing a file failed.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),

    /// An error from libtorch, trimmed to its first line (libtorch appends a C++ backtrace).
    #[error("libtorch: {0}")]
    Torch(String),
}

/// The `Result` type of this crate.
pub type Result<T, E = PruneError> = std::result::Result<T, E>;

impl From<TchError> for PruneError {
    fn from(err: TchError) -> Self {
        PruneError::Torch(first_line(&err.to_string()))
    }
}
