//! The library's error type: every message names the tensor or the value that is wrong.

pub(crate) use crate::checkpoint::first_line;
use tch::TchError;

/// Everything that can go wrong in `tch_prune`. No call panics on user input: a failing call
/// returns one of these and leaves the `VarStore` and the [`Pruner`](crate::Pruner) as they were.
///
/// A caller that branches matches the variant, never the message; new variants may come in a
/// minor release (`#[non_exhaustive]`). Errors from libtorch and from the file layer are kept
/// as [sources](std::error::Error::source), not flattened into text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

    /// One tensor named twice in a call that prunes several together (global or gradual).
    #[error("'{name}' is listed twice for {what} pruning")]
    ListedTwice {
        /// The tensor's name.
        name: String,
        /// "global" or "gradual".
        what: &'static str,
    },

    /// Importance scores given for a tensor the call does not prune.
    #[error("importance scores are given for '{0}', which is not among the tensors to prune")]
    ScoresForUnselected(String),

    /// A method or schedule built with values outside its domain (an N:M pattern with N >= M, a
    /// schedule whose steps or sparsities do not progress): what and why.
    #[error("{0}")]
    InvalidConfig(String),

    /// A pruned state dict that does not fit the model it is loaded into
    /// ([`Pruner::load_state_dict`](crate::Pruner::load_state_dict)).
    #[error("{0}")]
    StateMismatch(String),

    /// A boolean mask store given a mask with values other than 0 and 1.
    #[error(
        "the new mask of '{0}' has values other than 0 and 1, which boolean masks cannot hold"
    )]
    NotBinary(String),

    /// A `VarStore` other than the one the [`Pruner`](crate::Pruner) was made for.
    #[error("this VarStore is not the one the pruner was made for: move the pruner's own store")]
    ForeignVarStore,

    /// A checkpoint or a plan that the streaming path cannot prune or report exactly as the
    /// in-memory path would (see [`StreamedModel::unsupported`](crate::model::StreamedModel::unsupported)).
    #[error("{0}")]
    NotStreamable(String),

    /// A TorchScript file libtorch could not load or save.
    #[error("{}: cannot {action} as TorchScript: {}", path.display(), first_line(&source.to_string()))]
    TorchScript {
        /// The file.
        path: std::path::PathBuf,
        /// "load" or "save".
        action: &'static str,
        /// libtorch's error.
        source: TchError,
    },

    /// An error of one tensor among several, with the tensor's name (a streamed step over many
    /// tensors fails on one of them).
    #[error("'{name}': {source}")]
    InTensor {
        /// The tensor's name.
        name: String,
        /// What went wrong with it.
        source: Box<PruneError>,
    },

    /// An argument out of its range, named in the message.
    #[error("{0}")]
    InvalidArgument(String),

    /// Calibrated pruning (Wanda, SparseGPT) could not be done: calibration inputs missing,
    /// of the wrong shape or dtype, empty, or not finite, or a layer whose `H` cannot be
    /// inverted. What and what to do.
    #[error("calibration: {0}")]
    Calibration(String),

    /// Channel removal could not be done or checked (src/model/shrink/): what and why.
    #[error("shrink: {0}")]
    Shrink(String),

    /// A `torch.export` program could not be run ([`run_program`](crate::model::run_program)):
    /// the node, input or operator, and why.
    #[error("cannot run the program: {0}")]
    Program(String),

    /// Drawing an SVG plot failed (the recorder's, or the CLI's `report --svg`).
    #[error("cannot draw {what}: {reason}")]
    Plot {
        /// What was being drawn.
        what: String,
        /// plotters' error.
        reason: String,
    },

    /// A process group could not be joined, or a collective failed: what, on which rank, and
    /// which rank caused it when the group can tell
    /// ([`ProcessGroup`](crate::distributed::ProcessGroup)).
    #[error("{0}")]
    Distributed(String),

    /// The ranks of a group hold different masks
    /// ([`Pruner::check_consistent`](crate::Pruner::check_consistent)): the tensors and ranks.
    #[error("{0}")]
    Inconsistent(String),

    /// Reading or writing a file failed.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),

    /// An error from libtorch, shown by its first line (libtorch appends a C++ backtrace, which
    /// the source keeps).
    #[error("libtorch: {}", first_line(&.0.to_string()))]
    Torch(#[from] TchError),
}

impl PruneError {
    /// Names the tensor in an error that a method raised without knowing it (a method sees
    /// tensors, not names): a shape mismatch with an empty name gets `name`.
    pub(crate) fn for_tensor(self, name: &str) -> Self {
        match self {
            PruneError::ShapeMismatch {
                what,
                name: unnamed,
                expected,
                got,
            } if unnamed.is_empty() => PruneError::ShapeMismatch {
                what,
                name: name.to_string(),
                expected,
                got,
            },
            other => other,
        }
    }

    /// This error, as one of the tensor `name`'s.
    pub(crate) fn in_tensor(self, name: &str) -> Self {
        PruneError::InTensor {
            name: name.to_string(),
            source: Box::new(self),
        }
    }

    /// An error that libtorch (or our C++ over it) reported as text only.
    pub(crate) fn torch(message: impl Into<String>) -> Self {
        PruneError::Torch(TchError::Torch(message.into()))
    }
}

/// The `Result` type of this crate.
pub type Result<T, E = PruneError> = std::result::Result<T, E>;
