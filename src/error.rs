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
    AmountTooLarge { amount: i64, available: i64 },

    #[error("structured pruning can only be applied to multidimensional tensors: found a tensor of shape {shape:?} with {} dims", shape.len())]
    NotMultidimensional { shape: Vec<i64> },

    #[error("invalid dim {dim} for a tensor of shape {shape:?}: it must lie in [-{n}, {n})", n = shape.len())]
    InvalidDim { dim: i64, shape: Vec<i64> },

    /// A norm that `torch.norm` rejects for this tensor (`fro` over 3+ dims, `nuc` over other than 2).
    #[error("norm {norm} is not defined over {dims} reduced dims of a tensor of shape {shape:?}")]
    InvalidNorm {
        norm: String,
        dims: usize,
        shape: Vec<i64>,
    },

    #[error("unknown tensor '{0}': the VarStore has no variable of that name")]
    UnknownTensor(String),

    /// A name or glob pattern that selects no parameter of a model.
    #[error("'{pattern}' matches no parameter; the parameters are {available}")]
    NoMatch { pattern: String, available: String },

    /// A buffer named explicitly for pruning: PyTorch registers `running_mean`, `running_var`,
    /// `num_batches_tracked` (and what a TorchScript module marks so) as buffers, and cannot
    /// prune them.
    #[error("'{0}' is a buffer, not a parameter: PyTorch cannot prune buffers (running_mean, running_var, num_batches_tracked, and a TorchScript module's buffers); name a parameter instead")]
    Buffer(String),

    /// A glob pattern that matches buffers only, which a glob never selects.
    #[error("'{pattern}' matches only buffers ({buffers} of them), which cannot be pruned: name parameters (e.g. '*.weight')")]
    OnlyBuffers { pattern: String, buffers: usize },

    #[error("'{0}' is a buffer (not trainable) or not a floating-point tensor: only trainable parameters can be pruned")]
    NotAParameter(String),

    #[error("cannot prune '{name}': the VarStore already holds a variable named '{taken}'")]
    NameTaken { name: String, taken: String },

    #[error("'{0}' is not pruned: it has to be pruned before pruning can be removed")]
    NotPruned(String),

    /// Importance scores or a custom mask whose shape differs from the tensor's.
    #[error("{what} for '{name}' have shape {got:?}, but the tensor has shape {expected:?}")]
    ShapeMismatch {
        what: &'static str,
        name: String,
        expected: Vec<i64>,
        got: Vec<i64>,
    },

    #[error("pruning needs its tensors on one device: '{first}' is on {first_device:?} but '{other}' is on {other_device:?}")]
    MixedDevices {
        first: String,
        first_device: tch::Device,
        other: String,
        other_device: tch::Device,
    },

    #[error("global pruning supports unstructured methods only; {0} is not one")]
    NotUnstructured(String),

    #[error("nothing to prune: no tensor is selected")]
    NothingToPrune,

    #[error("{0}")]
    InvalidArgument(String),

    /// Drawing an SVG plot failed (the recorder's, or the CLI's `report --svg`).
    #[error("cannot draw {what}: {reason}")]
    Plot { what: String, reason: String },

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
